"""Session 37: a rider with a job in hand who says he has no code.

"no code", "code nahi mila", "code illa", "OTP nahi aaya", "otp nahi hai" (the sender or
the recipient has no code, or it did not come) from a rider who holds a job and has no
offer open were read as a no: "To give back job 1, send CANCEL 1" (his yes a few minutes
old), else "You have no open job offer now". That points him at giving the job back. He
now hears who has the code of his step (pickup: who gives him the parcel; drop: who takes
it) and to call ops if they have none (dispatch.code_help); a locked job, to call ops. No
wrong try is counted, the job stays his.

Unchanged: CANCEL gives the job back, a bare "nahi" still gets CANCEL's hint, a real code
picks up, and a no ("no", "NO code") to an open offer declines it.

Set-ups are those of tests/test_dispatch.py (real PostgreSQL, Redis, RQ, the signed SMS
webhook; time frozen through core.clock)."""

from __future__ import annotations

import pytest

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Leg
from core.config import get_settings
from tests.test_admin import _keep_root_handlers  # noqa: F401  (autouse fixture)
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    offers,
    paid_booking,
    sms,
    start,
)
from tests.test_dispatch_s36 import _failures
from tests.test_partner_sms_s35 import _offered

NO_CODE = ["no code", "code nahi mila", "code nahi", "code illa", "OTP nahi aaya",
           "otp nahi hai", "कोड नहीं मिला"]


def _ops() -> str:
    return get_settings().ops_phone


def _status(job: int) -> str:
    with transaction() as s:
        leg = s.get(Leg, job)
        assert leg is not None
        return leg.status


def _took(client, lang: str = "hi") -> tuple[str, int]:
    """Ramesh took his one job (no offer open now): (his phone, the job)."""
    _, me, job = _offered(lang)
    sms(client, me, "1")
    assert [o.status for o in offers(job)] == ["accepted"]
    return me, job


# --- at the pickup -----------------------------------------------------------------------


@pytest.mark.db
@pytest.mark.parametrize("body", NO_CODE)
def test_no_code_at_the_pickup_says_who_has_it(client, live, frozen, body):  # noqa: F811
    """Before: "To give back job N, send CANCEL N"."""
    me, job = _took(client)
    replies = sms(client, me, body)
    assert replies == [i18n.t("dispatch.code_help_pick", "hi", job=job, ops_phone=_ops())]
    assert i18n.t("dispatch.cancel_hint", "hi", job=job) not in replies
    assert _status(job) == "assigned", "the job is no longer his"
    assert [o.status for o in offers(job)] == ["accepted"]
    assert _failures(job) == 0


@pytest.mark.db
def test_no_code_long_after_the_yes_is_no_no_offer_answer(client, live,
                                                          frozen):  # noqa: F811
    """Before: "You have no open job offer now" (his yes more than 5 minutes old)."""
    me, job = _took(client, "en")
    freeze_at(20 * 60)
    assert sms(client, me, "code nahi mila") == [
        i18n.t("dispatch.code_help_pick", "en", job=job, ops_phone=_ops())]
    assert _status(job) == "assigned"


@pytest.mark.db
def test_no_code_naming_his_job(client, live, frozen):  # noqa: F811
    """Before: "To give back job N, send CANCEL N" (the number read as the job he says
    no to)."""
    me, job = _took(client, "en")
    assert sms(client, me, f"code nahi mila {job}") == [
        i18n.t("dispatch.code_help_pick", "en", job=job, ops_phone=_ops())]


# --- at the drop -------------------------------------------------------------------------


@pytest.mark.db
@pytest.mark.parametrize("body", ["no code", "code nahi mila", "otp nahi hai"])
def test_no_code_at_the_drop_says_who_has_it(client, live, frozen, body):  # noqa: F811
    me, job = _took(client)
    sms(client, me, f"PICK {last_code(CUSTOMER)}")
    assert _status(job) == "picked_up"
    replies = sms(client, me, body)
    assert replies == [i18n.t("dispatch.code_help_drop", "hi", job=job, ops_phone=_ops())]
    assert _status(job) == "picked_up"
    assert _failures(job) == 0


@pytest.mark.db
def test_no_code_with_two_jobs_answers_each_step(client, live, frozen):  # noqa: F811
    """One job picked up, one not yet: the drop's help for the first, the pickup's for the
    second."""
    me_id, me = make_partner("Ramesh", LAXMIPUR, lang="en", max_active_legs=2)
    first = paid_booking()
    start(first)
    (carried,) = legs_of(first)
    sms(client, me, "1")
    sms(client, me, f"PICK {last_code(CUSTOMER)}")
    second = paid_booking()
    start(second)
    (waiting,) = legs_of(second)
    assert [o.partner_id for o in offers(waiting.id)] == [me_id]
    sms(client, me, "1")
    assert sms(client, me, "no code") == [
        i18n.t("dispatch.code_help_drop", "en", job=carried.id, ops_phone=_ops()),
        i18n.t("dispatch.code_help_pick", "en", job=waiting.id, ops_phone=_ops())]


@pytest.mark.db
def test_no_code_on_a_locked_job_says_to_call_ops(client, live, frozen):  # noqa: F811
    me, job = _took(client, "en")
    wrong = "0000" if last_code(CUSTOMER) != "0000" else "1111"
    for _ in range(5):
        sms(client, me, f"PICK {wrong}")
    assert _status(job) == "locked"
    assert sms(client, me, "code nahi mila") == [
        i18n.t("dispatch.otp_locked", "en", job=job, ops_phone=_ops())]


# --- unchanged ---------------------------------------------------------------------------


@pytest.mark.db
def test_cancel_still_gives_the_job_back(client, live, frozen):  # noqa: F811
    me, job = _took(client, "en")
    sms(client, me, "code nahi mila")
    assert sms(client, me, f"CANCEL {job}") == [i18n.t("dispatch.cancelled", "en", job=job)]
    assert [o.status for o in offers(job)][0] == "cancelled"


@pytest.mark.db
def test_a_bare_no_with_a_job_still_gets_cancels_hint(client, live, frozen):  # noqa: F811
    me, job = _took(client, "en")
    assert sms(client, me, "nahi") == [i18n.t("dispatch.cancel_hint", "en", job=job)]


@pytest.mark.db
def test_a_real_code_still_picks_up(client, live, frozen):  # noqa: F811
    me, job = _took(client, "en")
    sms(client, me, "code nahi mila")
    sms(client, me, f"PICK {last_code(CUSTOMER)}")
    assert _status(job) == "picked_up"


@pytest.mark.db
@pytest.mark.parametrize("body", ["no", "nahi", "NO code"])
def test_a_no_to_an_open_offer_with_a_job_in_hand_still_declines(
        client, live, frozen, body):  # noqa: F811
    me_id, me = make_partner("Ramesh", LAXMIPUR, lang="en", max_active_legs=2)
    first = paid_booking()
    start(first)
    sms(client, me, "1")
    second = paid_booking()
    start(second)
    (leg,) = legs_of(second)
    assert [(o.partner_id, o.status) for o in offers(leg.id)] == [(me_id, "open")]
    assert sms(client, me, body) == [i18n.t("dispatch.declined", "en", job=leg.id)]
    assert [o.status for o in offers(leg.id)] == ["declined"]

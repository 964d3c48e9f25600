"""Session 37: riders' SMS still misread after session 36.

1. "kaam nahi hai" (there is no work) declined his open offer: it is the complaint "kaam
   nahi mila" is (core.domain.dispatch._no_work_is), answered with his status and the
   offer's two choices. A refusal word, a lone "2" or a word for another job still make
   it a no, and "kaam nahi" (the HELP's no) and "kaam nahi karna hai" still decline.
2. "can't come, got another job" (and "cannot come", "main nahi aa sakta") was asked
   again: a refusal, with its reason or not, declines the offer (_cant_come).
3. "naa code" (Tamil "I" + code, or "no code") with a parcel in hand: not understood, the
   job stays his (no decline, no cancel); pinned here, unchanged.
4. PICK naming a job the customer cancelled ("PICK 57 4821") beside a live job read 57
   as a code typed short for the live job ("Send PICK and the 4-digit OTP"), and the
   cancelled job's code alone ("PICK 4821") was a wrong try on the live job: both say the
   job is cancelled now, and no try is counted (core.services.dispatch._cancelled_beside).

Set-ups are those of tests/test_dispatch.py (real PostgreSQL, Redis, RQ, the signed SMS
webhook; time frozen through core.clock)."""

from __future__ import annotations

import pytest

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Leg
from core.domain.dispatch import Kind, parse_command
from tests.conftest import run_jobs
from tests.test_admin import _keep_root_handlers  # noqa: F401  (autouse fixture)
from tests.test_dispatch import (
    CUSTOMER,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    offers,
    paid_booking,
    sms,
    start,
)
from tests.test_dispatch_s36 import _cancel, _failures, _taken
from tests.test_partner_sms_s35 import _offered

# --- 1. "kaam nahi hai": no work, a complaint -----------------------------------------------


@pytest.mark.parametrize("body", [
    "kaam nahi hai", "koi kaam nahi hai", "job nahi hai", "aaj kaam nahi hai",
    "mere paas kaam nahi hai", "kaam nahi h", "kaam nahi hai kya", "काम नहीं है",
    "kaam nahi hai 2 din se",
])
def test_no_work_is_a_complaint(body):
    assert parse_command(body).kind is Kind.STATUS


@pytest.mark.parametrize("body", [
    # the session 36 rule: a refusal word, a lone "2", a word for another job
    "kaam nahi hai 2", "decline kaam nahi hai", "kaam nahi hai, dusra kaam hai",
    # the HELP's no, and a no that is not said of "is" right after the word for work
    "kaam nahi", "काम नहीं", "kaam nahi karna hai", "kaam nahi chahiye hai",
])
def test_no_work_with_a_refusal_still_declines(body):
    assert parse_command(body).kind is Kind.DECLINE


@pytest.mark.db
@pytest.mark.parametrize("body", ["kaam nahi hai", "koi job nahi h", "काम नहीं है"])
def test_no_work_keeps_the_offer_and_shows_it(client, live, frozen, body):  # noqa: F811
    _, me, job = _offered()
    replies = sms(client, me, body)
    assert [o.status for o in offers(job)] == ["open"], "'no work' declined the offer"
    assert replies == [i18n.t("dispatch.status_offer", "hi", job=job)]


# --- 2. "can't come": a refusal ----------------------------------------------------------


@pytest.mark.parametrize("body", [
    "can't come, got another job", "can’t come", "cannot come", "can not come", "cant come",
    "I cannot come now", "sorry cant come", "unable to come", "nahi aa sakta",
    "nahi aa paunga", "main nahi aa sakta", "aaj nahi aa paunga", "मैं नहीं आ सकता",
    "bike kharab hai nahi aa sakta",
])
def test_cant_come_declines(body):
    assert parse_command(body).kind is Kind.DECLINE


@pytest.mark.parametrize("body", [
    "ok cant come",  # a yes too: asked again
    "cant come pick 57",  # about his pickup
    "i can come", "sorry got another job",
])
def test_cant_come_with_another_command_is_not_a_decline(body):
    assert parse_command(body).kind is not Kind.DECLINE


@pytest.mark.db
@pytest.mark.parametrize("body", ["can't come, got another job", "cannot come",
                                  "main nahi aa sakta"])
def test_cant_come_declines_the_open_offer(client, live, frozen, body):  # noqa: F811
    _, me, job = _offered()
    replies = sms(client, me, body)
    assert [o.status for o in offers(job)] == ["declined"], "the refusal left the offer open"
    assert replies == [i18n.t("dispatch.declined", "hi", job=job)]


# --- 3. "naa code" with a parcel in hand (unchanged) ----------------------------------------


@pytest.mark.db
def test_naa_code_with_a_parcel_in_hand_keeps_his_job(client, live, frozen):  # noqa: F811
    _, me, job = _offered("ta")
    sms(client, me, "1")
    sms(client, me, f"PICK {last_code(CUSTOMER)}")
    assert _status(job) == "picked_up"
    assert sms(client, me, "naa code") == [i18n.t("dispatch.unknown", "ta")]
    assert _status(job) == "picked_up"


def _status(job: int) -> str:
    with transaction() as s:
        leg = s.get(Leg, job)
        assert leg is not None
        return leg.status


# --- 4. PICK of a cancelled job beside a live one -------------------------------------------


def _cancelled_and_live(client, live_jobs: int = 1) -> tuple[str, int, str, list[int]]:
    """Ramesh took a job the customer then cancelled, and took ``live_jobs`` more: (his
    phone, the cancelled job, its pickup code, the live jobs)."""
    booking_id, phone, job, code = _taken(client, "en")
    _cancel(booking_id)
    run_jobs()
    live_legs = []
    for _ in range(live_jobs):
        booking = paid_booking()
        start(booking)
        (leg,) = legs_of(booking)
        sms(client, phone, f"1 {leg.id}")
        assert [o.status for o in offers(leg.id)] == ["accepted"]
        live_legs.append(leg.id)
    return phone, job, code, live_legs


@pytest.mark.db
@pytest.mark.parametrize("order", ["job_first", "job_alone", "code_alone"])
def test_pick_of_a_cancelled_job_beside_a_live_one(client, live, frozen,  # noqa: F811
                                                   order):
    """Before: "Send PICK and the 4-digit OTP" (job first: its number read as a code typed
    short for the live job), and the cancelled job's code alone a wrong try on it."""
    phone, job, code, (live_job,) = _cancelled_and_live(client)
    body = {"job_first": f"PICK {job} {code}", "job_alone": f"PICK {job}",
            "code_alone": f"PICK {code}"}[order]
    assert sms(client, phone, body) == [i18n.t("dispatch.job_cancelled", "en", job=job)]
    assert _failures(live_job) == 0, "a wrong try counted against the live job"
    assert _status(live_job) == "assigned"


@pytest.mark.db
def test_a_cancelled_jobs_code_beside_two_live_jobs_costs_no_try(client, live,
                                                                frozen):  # noqa: F811
    """Before: "Wrong OTP for jobs 2 3", a try counted on each."""
    phone, job, code, live_jobs = _cancelled_and_live(client, live_jobs=2)
    assert sms(client, phone, f"PICK {code}") == [
        i18n.t("dispatch.job_cancelled", "en", job=job)]
    assert [_failures(j) for j in live_jobs] == [0, 0]


@pytest.mark.db
def test_the_live_job_named_with_a_short_code_is_still_asked_the_code(client, live,
                                                                      frozen):  # noqa: F811
    """"PICK 2 1": job 2 (live) named, 1 his code typed short, though job 1 is cancelled."""
    phone, job, _, (live_job,) = _cancelled_and_live(client)
    assert sms(client, phone, f"PICK {live_job} {job}") == [
        i18n.t("dispatch.otp_format_pick", "en")]
    # A wrong code for the live job still counts.
    wrong = "0000" if last_code(CUSTOMER) != "0000" else "1111"
    assert sms(client, phone, f"PICK {live_job} {wrong}") == [
        i18n.t("dispatch.otp_wrong", "en", job=live_job, left=4)]
    assert _failures(live_job) == 1

"""Session 38: a rider's PICK/DROP codes and his "no code" help (helper hcode).

1. A relay's later rider who says he has no code ("no code", "code nahi mila") heard the
   first leg's answer: the code is "with the person who gives you the parcel". His code
   went to the rider before him (dispatch.handover_give), who brings the parcel to the
   Point: he hears that rider has it (dispatch.code_help_pick_relay). The parcel handed
   over to him already (that rider's DROP, handed_over_to), he was told to ask "the person
   who gives you the parcel", though it is in his hands and that rider has left: his code
   went to that rider; ask him, or ops (dispatch.code_help_pick_handed). The rider
   bringing the parcel to the Point hears the next rider there has his drop code
   (dispatch.code_help_drop_relay). No try is counted.
2. "PICK 3 4821" naming a job that is not his (another rider's, or none) read 3 as his
   code typed short: "Send PICK and the 4-digit OTP" (with two jobs "which job?"), as if
   his code were at fault, so he sent "PICK 4821" alone: a wrong try on his own job. He
   hears he has no job 3 (the same for another rider's job and for none: nothing about
   it is said), no code is checked, no try is counted, whatever the code.
3. Two jobs both locked after wrong codes: a code alone ("PICK 4821") answered "job N is
   locked" when it was the right code of one of them, else "which job?", at no cost: a
   free test of a locked job's code. Both answers are the same now.

Set-ups are those of tests/test_dispatch.py and tests/test_relay_review25.py (real
PostgreSQL, Redis, RQ, the signed SMS webhook; time frozen through core.clock)."""

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
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    make_point,
    offers,
    paid_booking,
    sms,
    start,
)
from tests.test_dispatch_s36 import _failures
from tests.test_relay_review import GIVE_MARK, PICK_MARK, TAKE_MARK
from tests.test_rider_words_s37 import _cancelled_and_live

pytestmark = pytest.mark.db

P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)
NO_CODE = ["no code", "code nahi mila"]


def _ops() -> str:
    return get_settings().ops_phone


def _status(job: int) -> str:
    with transaction() as s:
        leg = s.get(Leg, job)
        assert leg is not None
        return leg.status


# --- 1. "no code" on a relay ----------------------------------------------------------------


def _relay_at_the_point(client, lang: str) -> tuple[str, str, int, int]:
    """Ramesh picked up leg 1 and rides to Point A; Asha took leg 2 there: (Ramesh's phone,
    Asha's phone, leg 1, leg 2)."""
    point_a, _ = make_point("Point A", *A), make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1, lang=lang)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1, lang=lang)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    sms(client, a_phone, "1")
    leg1, leg2 = (leg.id for leg in legs_of(booking_id)[:2])
    assert (_status(leg1), _status(leg2)) == ("picked_up", "assigned")
    return r_phone, a_phone, leg1, leg2


@pytest.mark.parametrize("lang", ["en", "hi"])
@pytest.mark.parametrize("body", NO_CODE)
def test_the_next_rider_hears_the_rider_before_him_has_his_code(client, live, frozen,  # noqa: F811
                                                                lang, body):
    """Before: "the pickup code is with the person who gives you the parcel" (the first
    leg's words, the sender)."""
    _, a_phone, _, leg2 = _relay_at_the_point(client, lang)
    assert sms(client, a_phone, body) == [
        i18n.t("dispatch.code_help_pick_relay", lang, job=leg2, ops_phone=_ops())]
    assert (_status(leg2), _failures(leg2)) == ("assigned", 0)


@pytest.mark.parametrize("body", NO_CODE)
def test_the_rider_at_the_point_hears_the_next_rider_has_his_drop_code(
        client, live, frozen, body):  # noqa: F811
    r_phone, _, leg1, _ = _relay_at_the_point(client, "en")
    assert sms(client, r_phone, body) == [
        i18n.t("dispatch.code_help_drop_relay", "en", job=leg1, ops_phone=_ops())]
    assert (_status(leg1), _failures(leg1)) == ("picked_up", 0)


@pytest.mark.parametrize("lang", ["en", "hi"])
def test_a_rider_handed_the_parcel_is_not_told_to_ask_who_gives_it(client, live,
                                                                  frozen, lang):  # noqa: F811
    """Before: "the pickup code is with the person who gives you the parcel. Ask them",
    the parcel in her hands and Ramesh gone from the Point."""
    r_phone, a_phone, leg1, leg2 = _relay_at_the_point(client, lang)
    sms(client, r_phone, f"DROP {last_code(a_phone, TAKE_MARK if lang == 'hi' else 'Give code')}")
    assert (_status(leg1), _status(leg2)) == ("delivered", "assigned")
    assert sms(client, a_phone, "code nahi mila") == [
        i18n.t("dispatch.code_help_pick_handed", lang, job=leg2, ops_phone=_ops())]
    # His code still picks it up: the help changed nothing.
    sms(client, a_phone, f"PICK {last_code(r_phone, GIVE_MARK if lang == 'hi' else 'next rider')}")
    assert _status(leg2) == "picked_up"


def test_a_first_legs_rider_still_hears_the_senders_words(client, live, frozen):  # noqa: F811
    point_a, _ = make_point("Point A", *A), make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1, lang="en")
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    sms(client, r_phone, "1")
    leg1 = legs_of(booking_id)[0].id
    assert sms(client, r_phone, "no code") == [
        i18n.t("dispatch.code_help_pick", "en", job=leg1, ops_phone=_ops())]


# --- 2. PICK naming another rider's job -------------------------------------------------------


def _mine_and_vijays(client) -> tuple[str, int, str, int, str]:
    """Ramesh (full at one job) took his job; Vijay took the next one: (Ramesh's phone,
    his job, his pickup code, Vijay's job, Vijay's pickup code)."""
    _, me = make_partner("Ramesh", LAXMIPUR, lang="en", max_active_legs=1)
    vijay_id, vijay = make_partner("Vijay", LAXMIPUR, lang="en", max_active_legs=1)
    first = paid_booking()
    start(first)
    (mine,) = legs_of(first)
    sms(client, me, f"1 {mine.id}")
    my_code = last_code(CUSTOMER)
    second = paid_booking()
    start(second)
    (his,) = legs_of(second)
    assert (vijay_id, "open") in [(o.partner_id, o.status) for o in offers(his.id)]
    sms(client, vijay, f"1 {his.id}")
    assert (_status(mine.id), _status(his.id)) == ("assigned", "assigned")
    return me, mine.id, my_code, his.id, last_code(CUSTOMER)


@pytest.mark.parametrize("command", ["PICK", "DROP"])
def test_a_code_beside_another_riders_job_says_no_such_job(client, live, frozen,  # noqa: F811
                                                           command):
    """Before: "Send PICK and the 4-digit OTP, e.g. PICK 1234" (DROP: "job N is not picked
    up yet", his own job), his code blamed."""
    me, mine, my_code, vijays, vijays_code = _mine_and_vijays(client)
    wrong = next(c for c in ("4821", "1357", "2468") if c not in (my_code, vijays_code))
    # His own job's right code there is no guess that costs nothing and picks up: no code
    # is checked beside a job that is not his (a wrong one costs no try).
    for code in (wrong, vijays_code, my_code):
        assert sms(client, me, f"{command} {vijays} {code}") == [
            i18n.t("dispatch.no_such_job", "en", job=vijays)], code
    # As for a job nobody has: nothing about Vijay's is told, nor whether the code is right.
    assert sms(client, me, f"{command} 999 {wrong}") == [
        i18n.t("dispatch.no_such_job", "en", job=999)]
    assert (_status(vijays), _failures(vijays)) == ("assigned", 0)
    assert (_status(mine), _failures(mine)) == ("assigned", 0), "a try counted on his job"


def test_another_riders_job_with_two_jobs_of_his(client, live, frozen):  # noqa: F811
    """Before: "You have jobs 1 2. Add the job code after the OTP"."""
    phone, _, _, live_jobs = _cancelled_and_live(client, live_jobs=2)
    assert sms(client, phone, "PICK 999 4821") == [
        i18n.t("dispatch.no_such_job", "en", job=999)]
    assert [_failures(j) for j in live_jobs] == [0, 0]


def test_his_own_job_named_first_still_takes_its_code(client, live, frozen):  # noqa: F811
    """"PICK 057 <code>": his job 57 typed with a 0, then its code, picks it up; a wrong
    code there counts on it."""
    me, mine, my_code, _, _ = _mine_and_vijays(client)
    wrong = next(c for c in ("0000", "1111") if c != my_code)
    assert sms(client, me, f"PICK 0{mine} {wrong}") == [
        i18n.t("dispatch.otp_wrong", "en", job=mine, left=4)]
    assert _failures(mine) == 1
    sms(client, me, f"PICK 0{mine} {my_code}")
    assert _status(mine) == "picked_up"


def test_a_cancelled_job_of_his_named_first_still_says_cancelled(client, live,
                                                                frozen):  # noqa: F811
    phone, job, code, (live_job,) = _cancelled_and_live(client)
    for guess in (code, "0000", "9999"):
        assert sms(client, phone, f"PICK {job} {guess}") == [
            i18n.t("dispatch.job_cancelled", "en", job=job)]
    assert (_status(live_job), _failures(live_job)) == ("assigned", 0)


# --- 3. a code alone with every job locked -----------------------------------------------------


def test_a_code_alone_with_two_locked_jobs_tells_nothing_of_the_code(client, live,
                                                                    frozen):  # noqa: F811
    """Before: "job N is locked" for the right code of one, "which job?" for any other."""
    _, me = make_partner("Ramesh", LAXMIPUR, lang="en", max_active_legs=2)
    jobs, codes = [], []
    for _ in range(2):
        booking = paid_booking()
        start(booking)
        (leg,) = legs_of(booking)
        sms(client, me, f"1 {leg.id}")
        jobs.append(leg.id)
        codes.append(last_code(CUSTOMER))
    wrong = next(c for c in ("0000", "1111", "2222", "3333") if c not in codes)
    for job in jobs:
        for _ in range(5):
            sms(client, me, f"PICK {wrong} {job}")
    assert [_status(j) for j in jobs] == ["locked", "locked"]
    right_answer = sms(client, me, f"PICK {codes[0]}")
    wrong_answer = sms(client, me, f"PICK {next(c for c in ('4444', '5555') if c not in codes)}")
    assert right_answer == wrong_answer

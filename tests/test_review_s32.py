"""Session 32 review: a partner's own drop code, his SMS during a move, a code left behind.

1. A partner asking for his own drop code (he is the recipient of a parcel) was looked
   for before his command, in any message with a code word, a no or a question and no
   number: a rider asking about HIS JOB's code ("sender OTP nahi de raha") voided and
   renewed the drop code of a parcel coming to him (one of the leg's few codes used) and
   was answered nothing; a NO to an offer that mentions a code ("NO code") was swallowed.
   Now it is his own code only with no job in hand and no offer open, or when it names
   the parcel's reference, and never with another command's word in it (with no work,
   "code nahi mila" still renews his code: tests/test_phone_s32.py).
2. dispatch._sms_partner read his person row FOR SHARE, which waits for any write to the
   row: his STOP (row written, then his offers' legs locked) and a rival's yes to one of
   those legs (leg locked, then an SMS to him) deadlocked. It reads FOR KEY SHARE now.
3. A move to a new SIM that could make no new drop code (too many codes, the leg locked)
   left the working code with the old number, maybe a stranger's: a log line only. Ops
   are told now, once.

Set-ups are those of tests/test_dispatch.py: real PostgreSQL, Redis, RQ and the signed
SMS webhook; time frozen through core.clock. Each test failed on the code before its fix.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, PartnerProfile, Person
from core.domain.booking import Actor, LegStatus
from core.domain.errors import Conflict
from core.services import dispatch, partner_profile
from core.services.booking import move_leg
from tests.test_admin import _keep_root_handlers  # noqa: F401  (autouse fixture)
from tests.test_dispatch import (
    LAXMIPUR,
    OPS,
    bodies_to,
    frozen,  # noqa: F401  (fixture)
    legs_of,
    make_partner,
    offers,
    paid_booking,
    run_jobs,
    sms,
    start,
)
from tests.test_dispatch_s31 import _on_duty, _wait_for_lock_or_end

pytestmark = pytest.mark.db

NEW = "+919812399998"


def _reference(booking_id: int) -> str:
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None
        return booking.reference


def _drop_code_of(booking_id: int) -> str | None:
    """The hash of the parcel's working drop code (its last leg's)."""
    return legs_of(booking_id)[-1].drop_otp_hash


def _riding_with_a_parcel_coming(client) -> tuple[str, int]:
    """Ramesh holds a job (taken, then OFF: it stays his) and a parcel is coming to his
    own number, its drop code sent to him (another rider took it)."""
    me_id, me = make_partner("Ramesh", LAXMIPUR, lang="en")
    _, rider = make_partner("Suresh", LAXMIPUR, lang="en", on_duty=False)
    job = paid_booking()
    start(job)
    sms(client, me, "1")
    assert legs_of(job)[0].partner_id == me_id
    sms(client, me, "OFF")
    sms(client, rider, "ON")
    mine = paid_booking(recipient=me)
    start(mine)
    sms(client, rider, "1")
    run_jobs()
    assert _drop_code_of(mine) is not None
    return me, mine


# --- 1. his job's code is not his own parcel's ----------------------------------------------


@pytest.mark.parametrize("body", ["sender OTP nahi de raha", "customer ke paas code nahi hai",
                                  "PICK code nahi mila", "OTP?", "delivered, code nahi mila"])
def test_a_rider_asking_about_his_jobs_code_keeps_his_own_parcels_code(
        client, live, frozen, body):  # noqa: F811
    me, mine = _riding_with_a_parcel_coming(client)
    code, told = _drop_code_of(mine), len(bodies_to(me))
    replies = sms(client, me, body)
    assert _drop_code_of(mine) == code, "his own parcel's drop code was voided and renewed"
    assert not any(_reference(mine) in b for b in bodies_to(me)[told:])
    assert replies, "his question about his job got no answer"


def test_a_rider_naming_his_parcel_gets_its_code_again(client, live, frozen):  # noqa: F811
    me, mine = _riding_with_a_parcel_coming(client)
    code = _drop_code_of(mine)
    ref = _reference(mine)
    assert sms(client, me, f"code nahi mila {ref[:4]} {ref[4:]}") == []  # the code answers
    assert _drop_code_of(mine) != code
    assert ref in bodies_to(me)[-1]


@pytest.mark.parametrize("body", ["nahi jaunga, otp wala kaam", "NO code"])
def test_a_no_to_an_offer_that_mentions_a_code_declines_it(
        client, live, frozen, body):  # noqa: F811
    me_id, me = make_partner("Ramesh", LAXMIPUR, lang="en")
    job = paid_booking()
    start(job)
    leg = legs_of(job)[0]
    assert [o.partner_id for o in offers(leg.id)] == [me_id]
    paid_booking(recipient=me)  # a parcel coming to him, paid, no rider yet
    sms(client, me, body)
    assert [o.status for o in offers(leg.id)] == ["declined"]


# --- 2. his STOP against a rival's yes to the job offered to both -----------------------------


@pytest.fixture
def batches_of_two(monkeypatch):
    monkeypatch.setenv("DISPATCH_BATCH_SIZES", "2")
    dispatch.reset_config()
    yield
    monkeypatch.delenv("DISPATCH_BATCH_SIZES")
    dispatch.reset_config()


def test_his_stop_and_a_rivals_yes_to_the_same_job_do_not_deadlock(
        live, frozen, batches_of_two):  # noqa: F811
    """Asha's STOP (partner_sms._opt_out_or_in: her people row written, then set_duty OFF
    locks the legs of her open offers) while Bala says yes to the same job (accept: the
    leg locked, then the withdrawal of Asha's offer SMSes her, reading her people row).
    Read FOR SHARE, that waited for her STOP, which waited for the leg: a deadlock."""
    asha_id, _ = make_partner("Asha", LAXMIPUR)
    bala_id, _ = make_partner("Bala", (26.893, 84.489))
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert {o.partner_id for o in offers(leg.id)} == {asha_id, bala_id}
    outcome: list = []

    def bala_says_yes() -> None:
        try:
            with transaction() as s:
                outcome.append(dispatch.accept(s, s.get(PartnerProfile, bala_id), None).key)
        except BaseException as exc:  # noqa: BLE001 (the test looks at it)
            outcome.append(exc)

    errors: list[BaseException] = []
    racer = threading.Thread(target=bala_says_yes, daemon=True)
    try:
        with transaction() as stopping:
            asha = stopping.get(PartnerProfile, asha_id)
            assert asha is not None
            person = stopping.get(Person, asha.person_id)
            assert person is not None
            person.sms_opted_out = True  # what her STOP writes first
            stopping.flush()
            racer.start()
            _wait_for_lock_or_end(racer, outcome)  # his yes: waiting, or done
            dispatch.set_duty(stopping, asha, False)
    except BaseException as exc:  # noqa: BLE001 (the test looks at it)
        errors.append(exc)
    racer.join(30)
    assert not racer.is_alive()
    assert not errors and outcome == ["dispatch.accepted"], (errors, outcome)
    assert legs_of(booking_id)[0].partner_id == bala_id and not _on_duty(asha_id)


# --- 3. a move that could make no new drop code ----------------------------------------------


def _too_many_codes(leg_id: int) -> None:
    """Ops gave the leg's drop code again until no more could be made."""
    for _ in range(dispatch.OPS_CODES_PER_LEG + 1):
        with transaction() as s:
            try:
                dispatch.new_leg_code(s, leg_id, "drop", Actor.system(), send=True,
                                      reason="asked again")
            except Conflict as exc:
                assert exc.code == "too_many_codes"
                return
    raise AssertionError("the leg never ran out of codes")


def _locked(leg_id: int) -> None:
    with transaction() as s:
        leg = s.get(Leg, leg_id, with_for_update=True)
        assert leg is not None
        move_leg(s, leg, LegStatus.LOCKED, Actor.system(), "too many wrong codes")


@pytest.mark.parametrize("why", [_too_many_codes, _locked])
def test_ops_hear_once_when_the_old_number_keeps_the_drop_code(
        client, live, frozen, why):  # noqa: F811
    pid, old = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    _, rider = make_partner("Suresh", LAXMIPUR, lang="en")
    coming = paid_booking(recipient=old)
    start(coming)
    sms(client, rider, "1")
    run_jobs()  # his drop code went to the old SIM
    leg = legs_of(coming)[-1]
    why(leg.id)
    run_jobs()  # sent: one still waiting by SMS would go with the number
    code = _drop_code_of(coming)
    with transaction() as s:
        said = partner_profile.set_phone(s, pid, NEW, actor="ops:test")
    assert "1 parcel(s) coming to him follow him (0 with a new drop code)" in said.message
    assert _drop_code_of(coming) == code  # none could be made: the old SIM's still works
    alert = i18n.t("dispatch.ops_drop_code_old_number", "hi", ref=_reference(coming),
                   job=dispatch.job_code(leg))
    assert bodies_to(OPS).count(alert) == 1
    with transaction() as s:
        assert s.scalar(select(Booking.recipient_phone).where(Booking.id == coming)) == NEW

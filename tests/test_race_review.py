"""Races across channels that a concurrency review proved (session 20; each test failed on
the code it was written against).

Two actors touch one booking or one partner at the same moment, each in its own thread
and its own PostgreSQL transaction; the interleaving is forced, not hoped for: a function
between one side's read and its write is wrapped to wait for the other side (an event, or
until the other side waits for a row lock this one holds).
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Callable

import pytest

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, PartnerProfile
from core.domain.booking import Actor
from core.services import dispatch, partner_sms, payments
from core.services.inbound import InboundMessage
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    OPS,
    bodies_to,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    offers,
    paid_booking,
    sms,
    start,
)
from tests.test_dispatch_fixes import _wait_for_a_lock_waiter

pytestmark = pytest.mark.db

WAIT_S = 20


def _caller(depth: int = 2) -> str:
    return sys._getframe(depth).f_code.co_name


def _run_together(*targets: Callable[[], None]) -> list[BaseException]:
    """Run each target in its own thread; the exceptions they raised."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 (returned to the test)
            errors.append(exc)
            traceback.print_exc()

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


def _customer_cancels(booking_id: int, channel: str = "whatsapp") -> None:
    """What the chat's (or the app's) cancel does: cancel_booking, as the customer."""
    with transaction() as s:
        b = s.get(Booking, booking_id)
        payments.cancel_booking(s, b, Actor("customer", str(b.customer_id)),
                                f"customer cancelled on {channel}")


def _hold_lock_leg_of(monkeypatch, caller: str, read: threading.Event,
                      go: threading.Event) -> None:
    """``caller``'s first _lock_leg waits (having read the leg unlocked before) until
    ``go``: the other side commits in between."""
    real = dispatch._lock_leg

    def lock_leg(session, leg_id):
        if _caller() == caller and not read.is_set():
            read.set()
            assert go.wait(WAIT_S)
        return real(session, leg_id)

    monkeypatch.setattr(dispatch, "_lock_leg", lock_leg)


# --- 1. PICK with the right code as the customer cancels --------------------------------


def test_a_pick_crossing_the_customers_cancel_is_answered_not_failed(
        client, live, frozen, monkeypatch):  # noqa: F811
    # Ramesh is at the door and texts PICK with the customer's code; the customer cancels
    # on WhatsApp in the same instant. His command read his job (assigned), then waits
    # for its lock while the cancel commits. Locking it finds a newer version of the leg
    # than the one read: StaleDataError, which the SMS turn takes for a crash (not a lost
    # race to run again, as a deadlock is): he is told "something went wrong, try later",
    # ops get an error logged, and he never hears in answer to his PICK that the job is
    # off. Run again, the turn would find the job cancelled.
    ramesh, phone = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    assert sms(client, phone, "1")
    code = last_code(CUSTOMER, "पार्सल उठाने")
    job = dispatch.job_code(legs_of(booking_id)[0])

    pick_read, cancelled = threading.Event(), threading.Event()
    _hold_lock_leg_of(monkeypatch, "confirm", pick_read, cancelled)
    answers: dict[str, list[str]] = {}

    def pick() -> None:
        answers["pick"] = sms(client, phone, f"PICK {code}")

    def cancel() -> None:
        assert pick_read.wait(WAIT_S)
        try:
            _customer_cancels(booking_id)
        finally:
            cancelled.set()

    assert not _run_together(pick, cancel)
    assert legs_of(booking_id)[0].status == "cancelled"
    (reply,) = answers["pick"]
    # Run again, the turn finds the job cancelled: the answer a PICK just after the cancel
    # gets (test_dispatch_cancel, test_dispatch_s36), as the cancel's own notice says.
    assert reply == i18n.t("dispatch.job_cancelled", "hi", job=job), reply
    assert i18n.t("dispatch.job_cancelled", "hi", job=job) in bodies_to(phone)


# --- 2. YES to an offer as the customer cancels -----------------------------------------


def test_a_yes_crossing_the_customers_cancel_is_not_told_another_partner_took_it(
        client, live, frozen, monkeypatch):  # noqa: F811
    # Asha answers YES to the offer as the customer cancels. The cancel commits first:
    # the answer must say the job is cancelled (as it does when the YES comes a moment
    # later), not "Sorry, job 12 went to another partner": nobody took it.
    asha, _ = make_partner("Asha", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert [o.partner_id for o in offers(leg.id)] == [asha]

    yes_read, cancelled = threading.Event(), threading.Event()
    _hold_lock_leg_of(monkeypatch, "accept", yes_read, cancelled)
    answers: dict[str, str] = {}

    def yes() -> None:
        with transaction() as s:
            answers["yes"] = dispatch.accept(s, s.get(PartnerProfile, asha), None).key

    def cancel() -> None:
        assert yes_read.wait(WAIT_S)
        try:
            _customer_cancels(booking_id, "api")
        finally:
            cancelled.set()

    assert not _run_together(yes, cancel)
    assert legs_of(booking_id)[0].status == "cancelled"
    assert answers["yes"] == "dispatch.job_cancelled", answers


# --- 3. Ops suspend a partner as they take a job -----------------------------------------


def test_a_partner_suspended_as_they_take_a_job_does_not_keep_it(
        client, live, frozen, monkeypatch):  # noqa: F811
    # Asha said no to a job, then changes her mind (YES naming it: still free, in time).
    # Ops suspend her at that moment (a theft reported). Her acceptance holds her row;
    # block_partner looked for her jobs and offers before it committed (none), then waits
    # for her row, and sets her suspended once she has the job. The customer is told
    # Asha is coming with their pickup code, and she may not PICK: the parcel waits for
    # a rider who cannot come, until the pickup sweep takes the job back much later.
    from tests.test_api import API, sign_in

    asha, _ = make_partner("Asha", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    with transaction() as s:
        assert dispatch.decline(s, s.get(PartnerProfile, asha), str(leg.id)).key == (
            "dispatch.declined")
    assert legs_of(booking_id)[0].status == "offering"
    ops = sign_in(client, OPS, role="ops")

    real_facts = dispatch.partner_facts
    accept_holds_row = threading.Event()

    def partner_facts(session, partners, *args, **kwargs):
        if _caller() == "accept":
            accept_holds_row.set()
            _wait_for_a_lock_waiter()  # ops now wait for her row, their reads done
        return real_facts(session, partners, *args, **kwargs)

    monkeypatch.setattr(dispatch, "partner_facts", partner_facts)
    answers: dict[str, object] = {}

    def yes() -> None:
        with transaction() as s:
            answers["yes"] = dispatch.accept(s, s.get(PartnerProfile, asha), str(leg.id)).key

    def suspend() -> None:
        assert accept_holds_row.wait(WAIT_S)
        r = client.put(f"{API}/ops/partners/{asha}/kyc", headers=ops,
                       json={"status": "suspended", "note": "theft reported"})
        answers["ops"] = r.status_code

    assert not _run_together(yes, suspend)
    assert answers == {"yes": "dispatch.accepted", "ops": 200}
    with transaction() as s:
        assert s.get(PartnerProfile, asha).kyc_status == "suspended"
    after = legs_of(booking_id)[0]
    # The job is not left with a rider who may not collect it.
    assert after.partner_id != asha, (after.status, after.partner_id)


# --- 4. ON duty as ops suspend --------------------------------------------------------


def test_a_partner_going_on_duty_as_ops_suspend_them_stays_off_duty(
        client, live, frozen, monkeypatch):  # noqa: F811
    # Bala sends ON; his profile is read (kyc pending: he may work). Ops suspend him in
    # that moment and take him off duty. His ON, written after, must not put a suspended
    # partner back on duty: he would be offered every job near him (dispatch ranks on
    # duty, not KYC), each offer refused at his YES and waited out by the customer.
    from tests.test_api import API, sign_in

    bala, phone = make_partner("Bala", LAXMIPUR, on_duty=False)
    ops = sign_in(client, OPS, role="ops")

    real_set_duty = dispatch.set_duty
    on_read, suspended = threading.Event(), threading.Event()

    def set_duty(session, partner, on):
        on_read.set()  # find_partner read his profile, unlocked
        assert suspended.wait(WAIT_S)
        return real_set_duty(session, partner, on)

    monkeypatch.setattr(dispatch, "set_duty", set_duty)
    answers: dict[str, object] = {}

    def on_duty() -> None:
        msg = InboundMessage(channel="sms", sid="SMrev6on1", from_addr=phone,
                             to_addr="+15005550006", body="ON", contact=phone, phone=phone)
        with transaction() as s:
            answers["on"] = partner_sms.handle(s, msg)

    def suspend() -> None:
        assert on_read.wait(WAIT_S)
        try:
            r = client.put(f"{API}/ops/partners/{bala}/kyc", headers=ops,
                           json={"status": "suspended", "note": "documents forged"})
            answers["ops"] = r.status_code
        finally:
            suspended.set()

    assert not _run_together(on_duty, suspend)
    assert answers["ops"] == 200
    with transaction() as s:
        p = s.get(PartnerProfile, bala)
        assert p.kyc_status == "suspended"
        on = p.on_duty
    # The next job near him is not offered to a suspended partner.
    booking_id = paid_booking()
    start(booking_id)
    offered = [o.partner_id for o in offers(legs_of(booking_id)[0].id)]
    assert (on, offered) == (False, []), answers

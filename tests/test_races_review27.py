"""Races between concurrent actors on one booking, found by review 12.

Each test runs two actors in their own threads and their own PostgreSQL transactions
(real row locks); the interleaving is forced, not hoped for: a function between one
side's reads and its writes waits for the other side (an event, or until the other side
waits for a row lock this one holds). Each test asserts the correct outcome and failed
on the code it was written against.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable

import pytest
from sqlalchemy import text

from core.adapters.db import transaction
from core.services import dispatch
from tests.test_dispatch import (
    LAXMIPUR,
    OPS,
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

pytestmark = pytest.mark.db

WAIT_S = 20
API = "/api/v1"


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


def _lock_waiter_or(done: threading.Event, timeout_s: float = 10) -> bool:
    """Until some transaction of this test database waits for a row lock (True), or
    ``done`` is set first (False: the other side never had to wait)."""
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if done.is_set():
            return False
        with transaction() as s:
            if s.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                             "current_database() AND wait_event_type = 'Lock'")):
                return True
        time.sleep(0.01)
    raise AssertionError("nobody waited for a lock, and the other side did not finish")


# --- 1. A rider gives a job back in the app as the no-show sweep takes another back ------


def test_a_give_back_in_the_app_as_the_sweep_takes_a_job_back_does_not_deadlock(
        client, live, frozen, monkeypatch):  # noqa: F811
    # Asha and Bala wait at the same village, each with a job taken. Asha never went for
    # hers: the no-show sweep takes it back (pickup_late, two windows on). At that moment
    # Bala gives his back in the app. Each take-back writes its rider's own row (his
    # acceptance record, _give_back) and then, offering the job again, locks the rows of
    # the riders it may offer it to (offer_next_batch, FOR UPDATE): the sweep holds
    # Asha's row and wants Bala's, Bala's request holds his and wants Asha's. PostgreSQL
    # kills one as a deadlock: here Bala's request, which answers 503 "the service is
    # briefly unavailable" to a plain give-back, his job still his.
    from tests.test_api import sign_in

    asha, a_phone = make_partner("Asha", LAXMIPUR)
    bala, b_phone = make_partner("Bala", (26.893, 84.489), on_duty=False)
    first = paid_booking()
    start(first)
    leg1 = legs_of(first)[0].id
    assert [o.partner_id for o in offers(leg1)] == [asha]
    assert sms(client, a_phone, "1")
    # Bala takes the second job, Asha off duty for the moment (her job stays hers).
    assert sms(client, a_phone, "OFF") and sms(client, b_phone, "ON")
    second = paid_booking()
    start(second)
    leg2 = legs_of(second)[0].id
    assert [o.partner_id for o in offers(leg2)] == [bala]
    assert sms(client, b_phone, "1")
    assert sms(client, a_phone, "ON")
    assert [(leg.status, leg.partner_id) for leg in legs_of(first) + legs_of(second)] == [
        ("assigned", asha), ("assigned", bala)]
    bala_headers = sign_in(client, b_phone)
    window = dispatch.pickup_window().total_seconds()
    freeze_at(window + 60)  # Asha is late: reminded first (a take-back comes a window on)
    dispatch.pickup_late(leg1)
    freeze_at(2 * window + 120)  # Asha is a no-show

    real_find = dispatch.find_candidates
    sweep_holds_asha, app_done = threading.Event(), threading.Event()

    def find_candidates(session, *args, **kwargs):
        if threading.current_thread().name == "sweep" and not sweep_holds_asha.is_set():
            # The take-back has written Asha's row; Bala's request now runs up to the
            # lock of the rows of the riders it would offer his job to.
            sweep_holds_asha.set()
            if _lock_waiter_or(app_done):
                time.sleep(0.2)  # his request waits first: PostgreSQL picks him
        return real_find(session, *args, **kwargs)

    monkeypatch.setattr(dispatch, "find_candidates", find_candidates)
    answers: dict[str, object] = {}
    app = client.application

    def sweep() -> None:
        threading.current_thread().name = "sweep"
        answers["sweep"] = dispatch.pickup_late(leg1)

    def give_back() -> None:
        assert sweep_holds_asha.wait(WAIT_S)
        try:
            r = app.test_client().post(f"{API}/legs/{leg2}/give-back", headers=bala_headers)
            answers["app"] = (r.status_code, r.get_json())
        finally:
            app_done.set()

    errors = _run_together(sweep, give_back)
    assert not errors, errors
    assert answers["sweep"] == "taken-back", answers
    assert answers["app"][0] == 200, answers
    # Both jobs left the riders who let them go.
    assert legs_of(first)[0].partner_id != asha
    assert legs_of(second)[0].partner_id != bala
    # Bala's job was offered again as the sweep held Asha's row: she, the one rider left
    # for it, was busy that instant, not gone. Nobody was offered it, ops were not told
    # "nobody found" (there is a rider), and she is asked a moment later.
    from datetime import timedelta

    from sqlalchemy import select

    from core.adapters.models import OutboxMessage
    from tests.conftest import release_scheduled, run_jobs

    assert [o.partner_id for o in offers(leg1)] == [asha, bala]  # the sweep's, after him
    assert [o.partner_id for o in offers(leg2)] == [bala]
    with transaction() as s:
        assert not list(s.scalars(select(OutboxMessage.dedupe_key).where(
            OutboxMessage.dedupe_key.like(f"leg-{leg2}-%ops-nopartner-%"))))
    freeze_at(2 * dispatch.pickup_window().total_seconds() + 120
              + dispatch.BUSY_RETRY.total_seconds())
    release_scheduled(dispatch.BUSY_RETRY + timedelta(seconds=1))
    run_jobs()
    assert [o.partner_id for o in offers(leg2)] == [bala, asha]
    assert offers(leg2)[-1].status == "open"


# --- 2. Ops suspend the next rider of a relay as the carrier hands her the parcel -------


def test_suspending_the_next_rider_as_the_carrier_hands_over_does_not_deadlock(
        client, live, frozen, monkeypatch):  # noqa: F811
    # Ramesh brings a relay's parcel to Point A and sends DROP with the code Asha (leg 2)
    # reads out to him. Ops suspend Asha in that moment. Ramesh's DROP holds leg 1 and
    # then wants the booking; block_partner holds leg 2 and the booking, and taking
    # leg 2 back from Asha writes leg 1 too (a new handover code, _give_back), a leg it
    # never locked in order (legs first, then the booking). PostgreSQL kills one as a
    # deadlock: here ops' request, which answers 503 although Asha is suspended; the
    # parcel changed hands all the same.
    from tests.test_api import sign_in
    from tests.test_relay_noshow import Relay

    relay = Relay(client)
    ops = sign_in(client, OPS, role="ops")
    code = last_code(relay.a_phone, "पार्सल लें")
    real = dispatch._lock_leg
    drop_holds_leg1, ops_done = threading.Event(), threading.Event()

    def lock_leg(session, leg_id):
        got = real(session, leg_id)
        if _caller() == "confirm" and leg_id == relay.leg1 and not drop_holds_leg1.is_set():
            drop_holds_leg1.set()
            _lock_waiter_or(ops_done)  # ops now wait for leg 1, the booking theirs
        return got

    monkeypatch.setattr(dispatch, "_lock_leg", lock_leg)
    answers: dict[str, object] = {}
    app = client.application

    def drop() -> None:
        answers["drop"] = sms(app.test_client(), relay.r_phone, f"DROP {code}")

    def suspend() -> None:
        assert drop_holds_leg1.wait(WAIT_S)
        try:
            r = app.test_client().put(f"{API}/ops/partners/{relay.asha}/kyc", headers=ops,
                                      json={"status": "suspended", "note": "theft reported"})
            answers["ops"] = (r.status_code, r.get_json())
        finally:
            ops_done.set()

    errors = _run_together(drop, suspend)
    assert not errors, errors
    assert answers["ops"][0] == 200, answers
    (reply,) = answers["drop"]
    assert "पहुँच गया" in reply, answers  # his DROP with the right code went through
    assert relay.leg(1).status == "delivered"



def test_giving_the_next_leg_back_in_the_app_as_the_carrier_hands_over_does_not_deadlock(
        client, live, frozen, monkeypatch):  # noqa: F811
    # The same lock order broken by the rider herself: Asha taps "give back" on leg 2 in
    # the app as Ramesh sends DROP with the code she read out to him. cancel_by_partner
    # holds leg 2 and the booking and writes leg 1 (its new handover code, _give_back);
    # the DROP holds leg 1 and wants the booking. Her request is killed as a deadlock:
    # 503 "briefly unavailable", where the parcel now in her hands makes the true answer
    # 409 already_picked_up (the job is hers to carry on).
    from tests.test_api import sign_in
    from tests.test_relay_noshow import Relay

    relay = Relay(client)
    asha = sign_in(client, relay.a_phone)
    code = last_code(relay.a_phone, "पार्सल लें")
    real = dispatch._lock_leg
    drop_holds_leg1, app_done = threading.Event(), threading.Event()

    def lock_leg(session, leg_id):
        got = real(session, leg_id)
        if _caller() == "confirm" and leg_id == relay.leg1 and not drop_holds_leg1.is_set():
            drop_holds_leg1.set()
            _lock_waiter_or(app_done)  # her give-back now waits for leg 1
        return got

    monkeypatch.setattr(dispatch, "_lock_leg", lock_leg)
    answers: dict[str, object] = {}
    app = client.application

    def drop() -> None:
        answers["drop"] = sms(app.test_client(), relay.r_phone, f"DROP {code}")

    def give_back() -> None:
        assert drop_holds_leg1.wait(WAIT_S)
        try:
            r = app.test_client().post(f"{API}/legs/{relay.leg2}/give-back", headers=asha)
            answers["app"] = (r.status_code, r.get_json())
        finally:
            app_done.set()

    errors = _run_together(drop, give_back)
    assert not errors, errors
    (reply,) = answers["drop"]
    assert "पहुँच गया" in reply, answers
    status, body = answers["app"]
    assert (status, body["error"]["code"]) == (409, "already_picked_up"), answers
    assert (relay.leg(2).status, relay.leg(2).partner_id) == ("assigned", relay.asha)


# --- 3. A failed attempt's webhook as the next attempt's capture lands -----------------


def test_a_failed_attempt_is_not_told_after_the_next_attempt_paid(live, monkeypatch):
    # Sita's first UPI attempt fails; she pays again at once with the same link and it
    # goes through. Razorpay sends payment.failed and payment.captured a moment apart,
    # and two workers apply them at once. _on_payment_failed reads the booking (awaiting
    # payment) without its lock, the capture commits "payment received, we are finding a
    # rider", and then the failed attempt's notice goes out: "your payment did not go
    # through, try again with the same link". Her last word from us says she has not
    # paid: she pays a second time (given back later as an extra payment) or gives up.
    from sqlalchemy import select

    from core.adapters.models import OutboxMessage
    from core.adapters.payment_models import GatewayEvent
    from core.adapters.queue import SANDBOX_QUEUE
    from core.domain.booking import BookingStatus
    from core.services import payments
    from tests.conftest import run_jobs
    from tests.test_payments_support import booking, confirmed_booking, pay, run

    bid = confirmed_booking()
    run()  # the link is made and sent
    assert pay(bid, fail="1").status_code == 200
    assert pay(bid).status_code == 200
    run_jobs((SANDBOX_QUEUE,))  # the emulator's webhooks reach us; none applied yet
    with transaction() as s:
        rows = dict(s.execute(select(GatewayEvent.event, GatewayEvent.id)).tuples().all())
    assert {"payment.failed", "payment.captured"} <= set(rows), rows

    real = payments._link_payable
    failed_read, captured = threading.Event(), threading.Event()

    def link_payable(booking_row, link):
        if _caller() == "_on_payment_failed" and not failed_read.is_set():
            failed_read.set()  # it read the booking awaiting payment
            _lock_waiter_or(captured)
        return real(booking_row, link)

    monkeypatch.setattr(payments, "_link_payable", link_payable)

    def failed() -> None:
        payments.process_event(rows["payment.failed"])

    def capture() -> None:
        assert failed_read.wait(WAIT_S)
        try:
            payments.process_event(rows["payment.captured"])
        finally:
            captured.set()

    assert not _run_together(failed, capture)
    assert booking(bid).status == BookingStatus.PAID.value
    with transaction() as s:
        told = [key.split("-")[0] for key in s.scalars(
            select(OutboxMessage.dedupe_key).where(OutboxMessage.booking_id == bid)
            .order_by(OutboxMessage.id))]
    # "Try again" may come only before "received" (payment.received, key paid-<id>), never
    # after it.
    assert "paid" in told, told
    assert "payfail" not in told[told.index("paid"):], told


# --- 4. Ops suspend a rider as he sends PICK at the door ---------------------------------


def test_a_rider_suspended_as_he_sends_pick_does_not_get_the_parcel(
        client, live, frozen, monkeypatch):  # noqa: F811
    # Ops suspend Ramesh (a theft reported) as he stands at the sender's door and sends
    # PICK with her code. The suspension is committed first (its own transaction, so
    # that whoever checks KYC after it sees it: ops_partner_kyc); his PICK then locks
    # the leg before ops take the job back, and checks "a blocked rider gets no parcel"
    # on his profile as his turn read it before the suspension: verified. The parcel
    # goes into the hands of a rider suspended for theft; the sender is told it is on
    # its way. accept re-reads the partner's row under its lock for this reason; confirm
    # does not.
    from tests.test_api import sign_in
    from tests.test_dispatch import CUSTOMER

    ramesh, phone = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    assert sms(client, phone, "1")
    code = last_code(CUSTOMER, "पार्सल उठाने")
    ops = sign_in(client, OPS, role="ops")

    real_lock, real_block = dispatch._lock_leg, dispatch.block_partner
    pick_read, kyc_committed, pick_holds_leg = (threading.Event(), threading.Event(),
                                                threading.Event())

    def lock_leg(session, leg_id):
        if _caller() == "confirm" and not pick_read.is_set():
            pick_read.set()  # his turn has read his profile: verified
            assert kyc_committed.wait(WAIT_S)
            got = real_lock(session, leg_id)
            pick_holds_leg.set()
            return got
        return real_lock(session, leg_id)

    def block_partner(session, partner_id, actor):
        kyc_committed.set()  # the suspension is committed; the take-back starts
        assert pick_holds_leg.wait(WAIT_S)
        return real_block(session, partner_id, actor)

    monkeypatch.setattr(dispatch, "_lock_leg", lock_leg)
    monkeypatch.setattr(dispatch, "block_partner", block_partner)
    answers: dict[str, object] = {}
    app = client.application

    def pick() -> None:
        answers["pick"] = sms(app.test_client(), phone, f"PICK {code}")

    def suspend() -> None:
        assert pick_read.wait(WAIT_S)
        r = app.test_client().put(f"{API}/ops/partners/{ramesh}/kyc", headers=ops,
                                  json={"status": "suspended", "note": "theft reported"})
        answers["ops"] = r.status_code

    assert not _run_together(pick, suspend)
    assert answers["ops"] == 200, answers
    leg = legs_of(booking_id)[0]
    # A suspended rider is refused the parcel (confirm's own rule), and the job goes on.
    assert leg.status != "picked_up", (leg.status, answers)
    assert leg.partner_id != ramesh, answers

"""Reviewer r16: what the operators' phone receives (dispatch.alert_ops and its callers),
judged as the on-call operator would during an incident.

Every alert here goes out one SMS per cause per booking (alert_ops dedupes only by the
cause's own key, and never looks at what the same phone was just told, nor at the hour),
so one fault (Razorpay down, nobody on duty, a relay stuck at a Point) fills the phone;
and some money left stuck raises no alert at all.

Through RQ, the real Twilio/Razorpay clients against the sandbox emulators, real
PostgreSQL and Redis, with the clock frozen (never slept).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage, SandboxMessage
from core.adapters.payment_models import Refund
from core.domain.pricing import SpeedTier
from core.services import dispatch, outbox, payments, reconciliation
from sandbox import razorpay as emu
from tests.conftest import release_scheduled, run_jobs
from tests.test_dispatch import (
    OPS,
    bodies_to,
    booking_status,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    start,
)
from tests.test_dispatch import paid_booking as dispatch_paid_booking
from tests.test_ops_hours import hours, india  # noqa: F401  (fixture)
from tests.test_payments_refunds import OPS_PHONE, RETRY_DELAY, attempts, cancel
from tests.test_payments_support import confirmed_booking, paid_booking, run
from tests.test_relay_stuck_cancel import _ramesh_holds_leg2_nobody_takes

pytestmark = pytest.mark.db


def _ops_rows(phone: str = OPS_PHONE, booking_id: int | None = None) -> list[str]:
    """What was queued by SMS to an operator's phone (optionally about one booking)."""
    with transaction() as s:
        q = select(OutboxMessage.body).where(OutboxMessage.to_addr == phone)
        if booking_id is not None:
            q = q.where(OutboxMessage.booking_id == booking_id)
        return list(s.scalars(q.order_by(OutboxMessage.id)))


def _received(phone: str) -> list[str]:
    """What the phone actually got: the messages the Twilio emulator accepted for it."""
    with transaction() as s:
        return list(s.scalars(select(SandboxMessage.body).where(
            SandboxMessage.to_addr == phone).order_by(SandboxMessage.id)))


def _reference(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).reference


# --- 1. Razorpay down for an hour: one SMS per booking ------------------------------------


def test_razorpay_down_for_an_hour_sends_one_ops_sms_per_booking(live):
    """Razorpay's Payment Links API answers 503 for the hour: six customers book and none
    gets a link. When their payment windows close, the operator's phone gets six separate
    SMS, "Ops: booking N has no payment link: no link before the payment window closed.
    The customer was told." - one per booking, each the same fault, nothing new in any but
    the number (and 50 in a real hour). The operator should get the fault once, or one
    summary naming how many bookings it hit (fewer SMS than bookings), not a page per
    booking."""
    emu.fail_next("create_link", 10**6)  # the gateway is down for the whole window
    bids = [confirmed_booking(f"+9198123{n:05d}") for n in range(1, 7)]
    run()  # each link job meets the 503 (RQ retries later, still down)
    clock.freeze(clock.now() + payments.payment_link_ttl() + timedelta(minutes=5))
    payments.expire_unpaid()
    run()
    assert all(_status(b) == "expired" for b in bids)  # the fault did happen to each
    alerts = _ops_rows()
    assert len(alerts) < len(bids), (
        f"{len(alerts)} SMS to the ops phone for one gateway outage:\n" + "\n".join(alerts))


def _status(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).status


# --- 2. refunds failing: an SMS per booking per retry ------------------------------------


def test_a_refund_outage_pages_ops_for_every_booking_at_every_retry(live):
    """The bank fails every refund for a while (refund.failed for all): three cancelled
    bookings. The operator's phone gets, for EACH booking, "the refund failed (try 1). We
    try again in 2 min", then "(try 2). We try again", then "failed 3 times. A person must
    look at it": nine SMS for one fault, six of which ask nothing of anyone (the service
    retries by itself). One fault must not produce an alert per booking per retry: at
    most one SMS per booking (the one that needs a person), or a summary."""
    emu.control("refund_outcome", "failed")
    bids = [paid_booking(f"+9198124{n:05d}") for n in range(1, 4)]
    for bid in bids:
        cancel(bid)
    run()
    for _ in range(2):
        release_scheduled(RETRY_DELAY + timedelta(seconds=30))
        run()
    emu.control("refund_outcome", "processed")
    for bid in bids:  # the service tried three times each, as REFUND_ATTEMPTS says
        assert [a[1] for a in attempts(bid)] == ["failed"] * 3
    alerts = _ops_rows()
    assert len(alerts) <= len(bids), (
        f"{len(alerts)} SMS to the ops phone for {len(bids)} refunds:\n" + "\n".join(alerts))


# --- 3. a refund the gateway never answers: no alert, ever ------------------------------


def test_a_refund_the_gateway_never_answers_for_days_alerts_nobody(live):
    """A customer cancels; Razorpay's refund endpoint answers 503 (or nothing) for three
    days. The refund attempt stays "requested", its money reserved; the sweep sends the
    request again and again, silently. The customer waits for her money for days and the
    operators are never told (only a log line per try), while a rider unpaid for 7 days
    does get an ops SMS (OWED_LONG). Ops should hear, once, that booking N's refund has
    had no answer from the gateway for hours, naming the booking."""
    bid = paid_booking("+919812500001")
    emu.fail_next("refund", 10**6)
    cancel(bid)
    run()
    start_at = clock.now()
    for step in range(1, 13):  # three days, the sweep each six hours
        clock.freeze(start_at + timedelta(hours=6 * step))
        payments.sweep()
        release_scheduled(timedelta(hours=1))
        run()
    with transaction() as s:  # still stuck: the customer has not been refunded
        assert s.scalar(select(Refund.status).where(Refund.booking_id == bid)) == "requested"
    assert not emu._all("refund")
    alerts = _ops_rows(booking_id=bid)
    assert alerts, "no SMS to the ops phone about a refund stuck for three days"
    assert _reference(bid) in alerts[0]


# --- 4. 50 bookings fail their search at once --------------------------------------------


def test_a_wave_of_bookings_without_a_rider_pages_ops_twice_per_booking(client, live,
                                                                        frozen):  # noqa: F811
    """Nobody is on duty (a holiday, a storm): six express bookings are paid within a
    minute. The operator's phone gets "Ops: no partner yet for booking N" for each, then,
    twenty minutes later, "Ops: booking N failed, no partner. Refund started." for each:
    twelve SMS (100 for 50 bookings), the second six asking nothing of anyone (the refund
    is automatic and the customer was told). The operator should get the pattern once,
    or a summary (fewer SMS than bookings), not two pages per booking."""
    bids = [dispatch_paid_booking(tier=SpeedTier.EXPRESS) for _ in range(6)]
    for bid in bids:
        start(bid)
    freeze_at(20 * 60 + 1)
    release_scheduled(timedelta(minutes=21))
    run_jobs()
    dispatch.sweep()
    run_jobs()
    assert all(booking_status(b) == "failed" for b in bids)
    alerts = bodies_to(OPS)
    assert len(alerts) < len(bids), (
        f"{len(alerts)} SMS to the operator for one cause:\n" + "\n".join(alerts))


# --- 5. a relay stuck at a Point: the same alert twice an hour, all night ----------------


def test_a_relay_stuck_at_a_point_repeats_the_same_alerts_every_round(client, live,
                                                                      frozen):  # noqa: F811
    """Ramesh carried the parcel to Point A; nobody takes leg 2. The operator was told
    ("no partner yet for booking N, job J", then "no partner, the parcel waits at the
    Point"). The search then restarts every hour, and each round sends both SMS again, word
    for word: over the next five hours ten more SMS about one parcel, with nothing new in
    them (and through the night, as nothing stops them but an operator's cancel). The
    operator, already told, should be reminded at most once in those hours."""
    booking_id, _, _ = _ramesh_holds_leg2_nobody_takes(client)
    told = len(_ops_rows(OPS, booking_id))
    assert told >= 2  # no partner yet, then paused: the operator knows
    base = 60 * 60 + 1
    for minute in range(10, 5 * 60 + 1, 10):
        freeze_at(base + minute * 60)
        release_scheduled(timedelta(hours=2))
        run_jobs()
        dispatch.sweep()
        run_jobs()
    again = _ops_rows(OPS, booking_id)[told:]
    assert len(again) <= 1, (
        f"{len(again)} more SMS about one stuck parcel in 5 hours:\n" + "\n".join(again))


# --- 6. 3 a.m.: an alert that asks nothing of anyone -------------------------------------


def test_a_booking_failed_at_3am_wakes_the_operator_for_nothing(client, live, frozen,  # noqa: F811
                                                                hours):  # noqa: F811
    """The team works 08:00-21:00 (OPS_HOURS). At 02:45 a paid express booking finds no
    rider; at 03:05 it fails, the customer is told and her refund starts by itself. At
    03:05 the operator's phone beeps: "Ops: booking N failed, no partner. Refund started."
    Nothing can or need be done then. Such an alert should wait for the team's hours (and
    reach them, or a summary naming the booking, when they start at 08:00), not wake
    them at 3 a.m."""
    hours("08:00-21:00")
    clock.freeze(india(2, 45))
    bid = dispatch_paid_booking(tier=SpeedTier.EXPRESS)
    ref = _reference(bid)
    start(bid)
    clock.freeze(india(3, 6))
    release_scheduled(timedelta(minutes=30))
    run_jobs()
    dispatch.sweep()
    run_jobs()
    assert booking_status(bid) == "failed"
    failed = i18n.t("dispatch.ops_failed", "hi", ref=ref)  # the operator's language
    night = _received(OPS)
    assert failed not in night, "the operator got 'failed, refund started' at 3 a.m."
    clock.freeze(india(8, 5))
    outbox.sweep()
    release_scheduled(timedelta(hours=6))
    run_jobs()
    morning = _received(OPS)[len(night):]
    assert any(ref in body for body in morning), "the team never heard of it in the morning"


# --- 7. the reconciliation finds money missing: nobody is told ---------------------------


def test_reconciliation_finding_money_missing_alerts_nobody(live):
    """The hourly reconciliation finds that a payment the ledger counts as captured (the
    customer's booking went ahead, a rider will be paid out of it) does not exist at
    Razorpay, and that Razorpay holds a captured payment of Rs 123 the ledger knows
    nothing of (someone paid and got nothing). It records both as mismatches and logs a
    warning; the operators' phone gets nothing, hour after hour. Money the ledger and the
    gateway disagree on should reach an operator (once per new finding, or one summary
    SMS per run that finds new ones)."""
    emu.create_payment(12_300)  # paid at the gateway, unknown to the ledger
    missing = paid_booking("+919812600001")
    with transaction() as s:
        pid = payments._capture_payment_id(s, missing)
    emu.delete_object(pid)  # the ledger's capture is not at the gateway
    run()
    before = len(_ops_rows())
    result = reconciliation.run()
    run()
    assert result["mismatches"] >= 2
    with transaction() as s:
        assert len(reconciliation.list_mismatches(s)) >= 2
    assert len(_ops_rows()) > before, "no SMS to the ops phone about money missing"


# --- 8. our own words in English inside the operator's Hindi alert -----------------------


def test_the_no_link_alert_gives_its_reason_in_the_operators_language(live):
    """The operator's SMS is in Hindi (his language), but the reason in it is our own
    English phrase, pasted in: "Ops: बुकिंग N का पेमेंट लिंक नहीं है: no link before the
    payment window closed। ग्राहक को बता दिया है।" An operator who reads Hindi cannot read
    why. A gateway's refusal may have to be quoted as Razorpay wrote it, but a reason the
    service states itself (payments.NO_LINK_IN_TIME; likewise "unpaid N days, still
    trying" in the rider-unpaid alert) must be said in the operator's language."""
    emu.fail_next("create_link", 10**6)
    bid = confirmed_booking("+919812700001")
    run()
    clock.freeze(clock.now() + payments.payment_link_ttl() + timedelta(minutes=5))
    payments.expire_unpaid()
    run()
    (alert,) = _ops_rows(booking_id=bid)
    assert _reference(bid) in alert
    assert payments.NO_LINK_IN_TIME not in alert, alert

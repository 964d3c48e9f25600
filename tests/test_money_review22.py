"""Review 22, money: no refund under ₹1 is asked of the gateway (the remainder goes to the
customer's side where a fee can give it up); the pending-refund poll asks every refund in
turn; reconciliation asks old open payment/refund mismatches again and a reopened one is
new again; a payment (or refund) naming one of our ids is ours only with our reference.

Through RQ, the real razorpay client, the sandbox emulator and its signed webhooks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core import clock
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, OutboxMessage, PartnerProfile
from core.adapters.payment_models import (
    GatewayEvent,
    LedgerPosting,
    ReconciliationMismatch,
    Refund,
)
from core.adapters.queue import QUEUES
from core.domain.booking import Actor, BookingStatus, CancellationQuote, LegStatus
from core.domain.errors import Conflict
from core.services import ledger, payments, reconciliation
from core.services.booking import move_booking, move_leg
from sandbox import razorpay as emu
from tests.conftest import run_jobs
from tests.test_payments_support import (
    CUSTOMER,
    SYSTEM,
    advance,
    booking,
    confirmed_booking,
    failed_jobs,
    ledger_checked,
    new_partner,
    paid_booking,
    pay,
    run,
    summary,
)
from tests.test_transfer_reversal import paid_out_leg, send_reversed_event

pytestmark = pytest.mark.db
OPS = Actor("ops", "1")


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def attempts(booking_id: int) -> list[tuple[int, str, int]]:
    with transaction() as s:
        return [tuple(r) for r in s.execute(
            select(Refund.attempt, Refund.status, Refund.amount_paise)
            .where(Refund.booking_id == booking_id).order_by(Refund.attempt))]


def outcome_of(event: str) -> str | None:
    with transaction() as s:
        return s.scalar(select(GatewayEvent.outcome).where(GatewayEvent.event == event)
                        .order_by(GatewayEvent.id.desc()).limit(1))


def postings() -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(LedgerPosting)) or 0


@pytest.fixture
def fetched(monkeypatch) -> list[str]:
    """The ids of the gateway items the service asks for one by one (GET /v1/<kind>/<id>
    under the real client)."""
    asked: list[str] = []
    real = gw._TimeoutSession.request

    def request(self, method, url, *args, **kwargs):
        if method.upper() == "GET":
            asked.append(url.rstrip("/").rsplit("/", 1)[-1])
        return real(self, method, url, *args, **kwargs)

    monkeypatch.setattr(gw._TimeoutSession, "request", request)
    return asked


def paid_fare(total: int, phone: str = "+919812340001") -> int:
    """A booking whose fare is ``total`` paise, paid by its link at the gateway."""
    bid = confirmed_booking(phone)
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None
        b.total_paise, b.commission_paise = total, total // 5
        b.partner_share_paise = total - b.commission_paise
    run()  # the link, for that amount
    assert pay(bid).status_code == 200
    run()
    assert booking(bid).status == BookingStatus.PAID.value
    return bid


# --- 1. no refund under ₹1 ------------------------------------------------------------------


def test_a_cancellation_leaving_under_a_rupee_refunds_a_rupee_out_of_the_fee(live):
    """A ₹10.50 fare cancelled once a rider took it: the ₹10 fee left 50 paise to refund,
    which Razorpay refuses (at least 100 paise): the attempt was refused for good and ops
    had to step in. The customer gets ₹1 back and the rider's fee gives up the 50 paise
    it lacks; the preview said the same; the books balance, nothing stays held."""
    partner = new_partner()
    bid = paid_fare(1050)
    advance(bid, partner, to="assigned")
    with transaction() as s:
        preview = payments.cancellation_preview(s, ledger.lock_booking(s, bid))
    assert (preview.refund_paise, preview.fee_paise) == (100, 950)
    with transaction() as s:
        quote = payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    assert (quote.refund_paise, quote.fee_paise) == (100, 950)
    run()
    assert attempts(bid) == [(1, "processed", 100)]
    assert not failed_jobs()
    money = summary(bid)
    assert (money["refunded_paise"], money["fee_paise"], money["escrow_paise"],
            money["refunds_pending_paise"]) == (100, 950, 0, 0)
    assert booking(bid).status == BookingStatus.REFUNDED.value


def test_a_stuck_relay_ended_with_a_rest_under_a_rupee_refunds_a_rupee(live, monkeypatch):
    """Ops end a relay stuck for want of a rider whose rider in hand earns all but 40
    paise of the fare: 40 paise were asked of the gateway and refused. The customer gets
    ₹1 back (the rider's pay gives up 60 paise), and the books balance."""
    from core.services import dispatch

    partner = new_partner()
    bid = paid_booking()
    total = booking(bid).total_paise
    leg_id = advance(bid, partner, to="assigned")
    with transaction() as s:
        b = ledger.lock_booking(s, bid)
        leg = s.get(Leg, leg_id)
        assert leg is not None
        leg.payout_paise = total - 40
        move_leg(s, leg, LegStatus.PICKED_UP, SYSTEM, "test")
        move_booking(s, b, BookingStatus.PICKED_UP, SYSTEM, "test")

    def holder(session, b):
        return session.scalar(select(Leg).where(Leg.booking_id == b.id,
                                                Leg.status == LegStatus.PICKED_UP.value))

    monkeypatch.setattr(dispatch, "stuck_holder", holder)
    with transaction() as s:
        quote = payments.cancel_booking(s, ledger.lock_booking(s, bid), OPS, "stuck")
    assert (quote.reason_code, quote.refund_paise, quote.fee_paise) == (
        payments.STUCK_RELAY, 100, total - 100)
    run()
    assert attempts(bid) == [(1, "processed", 100)]
    assert not failed_jobs()
    money = summary(bid)
    assert (money["refunded_paise"], money["fee_paise"], money["escrow_paise"]) == (
        100, total - 100, 0)


@pytest.mark.parametrize(("refund", "fee", "after"), [
    (40, 1000, (100, 940)),   # the fee gives up what the refund lacks
    (99, 1, (100, 0)),        # all of it: a full refund of ₹1
    (60, 30, (0, 90)),        # under ₹1 in all: the rider gets it, nothing is refunded
    (100, 950, (100, 950)),   # ₹1 already
    (0, 1000, (0, 1000)),
    (50, 0, (0, 0)),          # nobody to give it to: the platform keeps it, none promised
])
def test_the_refund_floor_splits_a_quote(refund, fee, after):
    q = payments.refund_floor(CancellationQuote(True, refund, fee, "cancellation_fee"))
    assert (q.refund_paise, q.fee_paise) == after
    # Nothing is lost or made: what is not refunded nor a fee is kept (_keep_remainder).
    assert q.refund_paise + q.fee_paise == (refund + fee if fee else 0)


def test_no_refund_under_a_rupee_is_reserved_or_asked(live):
    bid = paid_booking()
    with transaction() as s:
        b = ledger.lock_booking(s, bid)
        move_booking(s, b, BookingStatus.CANCELLED, CUSTOMER, "test")
        assert payments._open_refund(s, b, 99, 0, "cancelled", "system") is None
    run()
    assert attempts(bid) == []
    # The booking's own refund under a rupee is the platform's (remainder_kept).
    assert summary(bid)["escrow_paise"] == booking(bid).total_paise - 99
    with transaction() as s:
        assert payments.remainder_kept(s, bid) == 99


def test_ops_cannot_refund_a_reversed_payout_under_a_rupee(live):
    """A 50-paise reversal held for ops: refunding it would be refused by the gateway three
    times over; ops are told at once (409 refund_too_small) to pay the rider again."""
    partner, bid, leg_id, t = paid_out_leg()
    with transaction() as s:
        p = s.get(PartnerProfile, partner)
        assert p is not None
        p.kyc_status = "verified"
    gw.client().transfer.reverse(t["id"], {"amount": 50})
    send_reversed_event(t["id"])
    with transaction() as s:
        b = ledger.lock_booking(s, bid)
        with pytest.raises(Conflict) as err:
            payments.resolve_reversed_payout(s, b, leg_id, payments.REFUND, OPS,
                                             refundable=10_000)
    assert err.value.code == "refund_too_small"
    assert attempts(bid) == []


# --- 2. the pending-refund poll asks each refund in turn -------------------------------------


def _pending_refunds(n: int) -> list[str]:
    ids = []
    for i in range(1, n + 1):
        bid = confirmed_booking(f"+91981250{i:04d}")
        with transaction() as s:
            s.add(Refund(booking_id=bid, attempt=1, payment_id=f"pay_poll{i:06d}",
                         gateway_refund_id=f"rfnd_poll{i:06d}", amount_paise=100,
                         fee_paise=0, reason="cancelled", actor="system", status="pending"))
        ids.append(f"rfnd_poll{i:06d}")
    return ids


def test_more_pending_refunds_than_a_poll_asks_about_are_each_asked_in_turn(
        live, monkeypatch, fetched):
    """The poll asked about the first 200 pending refunds by id, every time: with a
    backlog of more, the newer ones were never asked and their lost refund.processed was
    never applied. Each poll now goes on after the last one's page."""
    monkeypatch.setattr(payments, "REFUND_POLL_PAGE", 2, raising=False)
    every = _pending_refunds(3)
    clock.freeze(clock.now() + timedelta(hours=7))
    asked = fetched
    polls = []
    for _ in range(3):
        asked.clear()
        payments.poll_refunds()
        polls.append(sorted(asked))
    assert all(len(p) == 2 for p in polls), polls
    assert set(polls[0]) | set(polls[1]) == set(every), polls


def test_a_processed_refund_of_the_backlog_is_applied_by_a_later_poll(live, monkeypatch):
    """Three refunds pending, a page of two: the newest one's processed refund (its
    webhook lost) is applied by the second poll at the latest."""
    monkeypatch.setattr(payments, "REFUND_POLL_PAGE", 2, raising=False)
    bids = [paid_booking(phone) for phone in ("+919812340001", "+919812340002",
                                              "+919812340003")]
    for bid in bids:
        with transaction() as s:
            payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    run_jobs(QUEUES)  # asked of the gateway; the gateway has not settled them yet
    with transaction() as s:
        rows = list(s.scalars(select(Refund).order_by(Refund.id)))
    assert [r.status for r in rows] == ["pending"] * 3
    last = rows[-1]
    emu.set_fields(last.gateway_refund_id, status="processed")  # its webhook never comes
    clock.freeze(clock.now() + timedelta(hours=7))
    outcomes = [payments.poll_refunds(), payments.poll_refunds()]
    assert any(o.get("refunded") for o in outcomes), outcomes
    assert attempts(last.booking_id) == [(1, "processed", last.amount_paise)]


# --- 3. reconciliation: old open mismatches asked again; reopened ones are new -----------


def _mismatches(include_resolved: bool = False) -> dict[str, dict]:
    with transaction() as s:
        return {m["gateway_id"]: m for m in reconciliation.list_mismatches(
            s, include_resolved=include_resolved)}


def test_a_payment_mismatch_outside_every_window_is_asked_again_and_resolved(live):
    """The gateway could not show a captured payment on the day (missing_at_gateway); it
    shows it again two days later. The payment and its ledger entry are in no window of
    a later run: the mismatch stayed open for ever. Open mismatches are asked again."""
    start = clock.now()
    clock.freeze(start)
    bid = paid_booking()
    with transaction() as s:
        pid = payments._capture_payment_id(s, bid)
    assert pid is not None
    kept = emu.get_object(pid)
    emu.delete_object(pid)
    clock.freeze(start + timedelta(minutes=1))
    reconciliation.run()
    assert _mismatches()[pid]["kind"] == "missing_at_gateway"
    emu.put_object(kept)
    clock.freeze(start + timedelta(days=2))
    reconciliation.run()
    assert pid not in _mismatches()
    assert _mismatches(include_resolved=True)[pid]["resolved_at"] is not None


def test_a_refund_amount_corrected_after_every_window_is_asked_again(live):
    """A processed refund whose amount the gateway showed otherwise on the day
    (amount_differs), corrected at the gateway two days later: the refund and its ledger
    entry are in no later window, and the mismatch stayed open for ever."""
    start = clock.now()
    clock.freeze(start)
    bid = paid_booking()
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    run()
    (refund,) = emu._all("refund")
    emu.set_fields(refund["id"], amount=refund["amount"] - 1)
    clock.freeze(start + timedelta(minutes=1))
    reconciliation.run()
    assert _mismatches()[refund["id"]]["kind"] == "amount_differs"
    emu.set_fields(refund["id"], amount=refund["amount"])
    clock.freeze(start + timedelta(days=2))
    reconciliation.run()
    assert refund["id"] not in _mismatches()


def test_a_reopened_mismatch_is_found_anew(live):
    """A mismatch resolved and found again later was listed with its first finding's
    time: among the old ones, below where operators page from. It is new again."""
    start = clock.now()
    clock.freeze(start)
    bid = paid_booking()
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    run()
    (refund,) = emu._all("refund")
    amount = refund["amount"]
    clock.freeze(start + timedelta(minutes=1))
    emu.set_fields(refund["id"], amount=99)
    reconciliation.run()
    first = _mismatches()[refund["id"]]
    clock.freeze(start + timedelta(minutes=2))
    emu.set_fields(refund["id"], amount=amount)
    reconciliation.run()
    assert refund["id"] not in _mismatches()
    reopened_at = start + timedelta(minutes=3)
    clock.freeze(reopened_at)
    emu.set_fields(refund["id"], amount=98)
    reconciliation.run()
    again = _mismatches()[refund["id"]]
    assert again["id"] == first["id"]
    assert again["first_seen_at"] == reopened_at.isoformat()
    assert again["resolved_at"] is None
    # Found again while open, it keeps its time.
    clock.freeze(start + timedelta(minutes=4))
    reconciliation.run()
    assert _mismatches()[refund["id"]]["first_seen_at"] == reopened_at.isoformat()


def test_open_payment_mismatches_are_asked_again_a_page_a_run_in_turn(
        live, monkeypatch, fetched):
    """More open payment mismatches than a run asks about, all long out of the window:
    each run asks OPEN_ITEMS of them, going on after the last run's, so each is asked
    again every few runs (and seen again: still open, last_seen_at moved)."""
    start = clock.now()
    clock.freeze(start)
    strays = sorted(emu.create_payment(12_300 + n)["id"] for n in (1, 2, 3))
    clock.freeze(start + timedelta(minutes=1))
    reconciliation.run()
    assert set(strays) <= set(_mismatches())
    monkeypatch.setattr(reconciliation, "OPEN_ITEMS", 2)
    asked = fetched
    runs = []
    for day in (3, 4, 5):
        clock.freeze(start + timedelta(days=day))
        asked.clear()
        reconciliation.run()
        runs.append(sorted(a for a in asked if a in strays))
    assert all(len(r) == 2 for r in runs), runs
    assert set(runs[0]) | set(runs[1]) == set(strays), runs
    rows = _mismatches()
    assert all(rows[p]["kind"] == "missing_in_ledger" for p in strays)
    assert all(rows[p]["last_seen_at"] > start.isoformat() for p in strays)


def test_an_open_payment_mismatch_neither_side_knows_now_is_resolved(live):
    """Asked again, a payment neither the gateway nor the ledger has: both agree."""
    start = clock.now()
    with transaction() as s:
        s.add(ReconciliationMismatch(
            kind="missing_in_ledger", entity="payment", gateway_id="pay_gone00000001",
            detail="old", first_seen_at=start, last_seen_at=start))
    clock.freeze(start + timedelta(days=3))
    reconciliation.run()
    assert "pay_gone00000001" not in _mismatches()


# --- 4. a payment is ours by our booking id AND our reference -----------------------------


def test_a_payment_naming_our_booking_id_without_our_reference_is_not_ours(live):
    """Another system on the same Razorpay account numbers its bookings too: its payment
    whose notes say booking_id 1 (one of ours) paid our booking 1, which then went to
    dispatch. Without our reference it is no payment of ours."""
    bid = confirmed_booking()
    run()  # the link is made
    total = booking(bid).total_paise
    foreign = emu.create_payment(total, notes={"booking_id": str(bid), "reference": "X-1"})
    emu.send_webhooks([emu._event("payment.captured", {"payment": foreign})])
    run()
    assert outcome_of("payment.captured") == "unknown-payment"
    assert postings() == 0
    assert booking(bid).status == BookingStatus.AWAITING_PAYMENT.value


def test_a_payment_with_our_booking_id_and_reference_is_ours(live):
    bid = confirmed_booking()
    run()
    b = booking(bid)
    ours = emu.create_payment(b.total_paise,
                              notes={"booking_id": str(bid), "reference": b.reference})
    emu.send_webhooks([emu._event("payment.captured", {"payment": ours})])
    run()
    assert outcome_of("payment.captured") == "paid"
    assert booking(bid).status == BookingStatus.PAID.value


def test_a_failed_foreign_payment_naming_our_booking_tells_our_customer_nothing(live):
    bid = confirmed_booking()
    run()
    foreign = emu.create_payment(booking(bid).total_paise, notes={"booking_id": str(bid)})
    emu.send_webhooks([emu._event("payment.failed", {"payment": {**foreign,
                                                                 "status": "failed"}})])
    run()
    assert outcome_of("payment.failed") == "payment-failed"
    with transaction() as s:
        assert s.scalar(select(OutboxMessage.id).where(
            OutboxMessage.dedupe_key == f"payfail-{foreign['id']}")) is None


def test_a_foreign_refund_naming_our_refund_id_settles_nothing_of_ours(live):
    """Another system's refund whose notes say refund_id N (one of our rows, pending with
    a gateway refund of its own): it settled our refund with its id and amount."""
    bid = paid_booking()
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    run_jobs(QUEUES)  # asked of the gateway, pending there
    with transaction() as s:
        refund = s.scalar(select(Refund).where(Refund.booking_id == bid))
        assert refund is not None and refund.status == "pending"
        our_id = refund.id
    foreign = {"id": "rfnd_foreign000001", "entity": "refund", "amount": 100,
               "currency": "INR", "payment_id": "pay_foreign00001", "status": "processed",
               "notes": {"refund_id": str(our_id), "booking_id": "987654"},
               "created_at": int(clock.now().timestamp())}
    outcome = payments._on_refund({"event": "refund.processed",
                                   "payload": {"refund": {"entity": foreign}}}, "test")
    assert outcome == "unknown-refund"
    with transaction() as s:
        row = s.get(Refund, our_id)
        assert row is not None
        assert (row.status, row.gateway_refund_id) == ("pending", refund.gateway_refund_id)
    assert summary(bid)["refunded_paise"] == 0

"""Payments use cases: payment links, gateway events, escrow releases, refunds.

The platform holds no money: a customer pays a Razorpay payment link, the money waits at
the gateway, each delivered leg's payout goes to its partner by a Route transfer (made on
hold at assignment, counted as paid out only once the hold is released), and a
cancellation refunds by policy. Every movement is a ledger entry (core.services.ledger)
recorded once, whatever the number of webhooks, job retries or workers.

Jobs (enqueued after commit, natural job ids):
- ``workers.payments.create_payment_link(booking_id)``   ``paylink-<booking>``
- ``workers.payments.process_event(event_row_id)``         ``rzp-event-<event id>``
- ``workers.payments.release_leg(leg_id)``                 ``release-<leg>`` (dispatch)
- ``workers.payments.settle_leg_transfer(leg_id)``         ``transfer-<leg>``
- ``workers.payments.refund_booking(booking_id, reason)``  ``refund-<booking>``
- ``workers.payments.cancel_payment_link(booking_id)``     ``paylink-cancel-<booking>``
Network calls never happen inside a database transaction or inside a webhook request.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from rq import Retry
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core import clock
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, PartnerProfile, Person
from core.adapters.payment_models import GatewayEvent, LegTransfer, PaymentLink, Refund
from core.adapters.queue import after_commit, enqueue
from core.domain import ledger as rules
from core.domain.booking import (
    Actor,
    BookingStatus,
    CancellationQuote,
    LegStatus,
    cancellation_refund,
)
from core.domain.errors import Conflict, ValidationError
from core.services import ledger, notify
from core.services.booking import move_booking

log = logging.getLogger(__name__)

PAID_STATES = {BookingStatus.PAID, BookingStatus.DISPATCHING, BookingStatus.ASSIGNED,
               BookingStatus.PICKED_UP, BookingStatus.IN_TRANSIT, BookingStatus.DELIVERED}
REFUND_REASONS = ("cancelled", "no_partner", "late_payment")
GATEWAY_RETRY = Retry(max=5, interval=[10, 30, 120, 600, 1800])
SYSTEM = Actor.system()
HANDLED_EVENTS = (
    "payment_link.paid", "payment_link.expired", "payment_link.cancelled",
    "payment.captured", "payment.failed", "refund.processed", "refund.failed",
    "transfer.processed", "transfer.failed",
)


def payment_link_ttl() -> timedelta:
    """How long a payment link stays payable (``PAYMENT_LINK_TTL_MIN``, default 30)."""
    raw = os.environ.get("PAYMENT_LINK_TTL_MIN", "").strip()
    minutes = int(raw) if raw.isdigit() and int(raw) > 0 else 30
    return timedelta(minutes=minutes)


PAYMENT_LINK_TTL = payment_link_ttl()


def _enqueue_after_commit(session: Session, func_name: str, *args: Any, job_id: str,
                          retry: Retry | None = GATEWAY_RETRY) -> None:
    after_commit(session, lambda: enqueue(func_name, *args, job_id=job_id, retry=retry))


# --- contract with the bot and the API ---------------------------------------------------


def request_payment_link(session: Session, booking: Booking, actor: Actor) -> None:
    """Confirm a quoted booking: it now waits for payment; the link follows by message."""
    move_booking(session, booking, BookingStatus.AWAITING_PAYMENT, actor, "customer confirmed")
    booking.expires_at = clock.now() + payment_link_ttl()
    _enqueue_after_commit(session, "workers.payments.create_payment_link", booking.id,
                          job_id=f"paylink-{booking.id}")


def payment_url(session: Session, booking: Booking) -> str | None:
    """The booking's payment link, once created (None before, or when not payable)."""
    link = session.scalar(select(PaymentLink).where(PaymentLink.booking_id == booking.id))
    if link is None or booking.status != BookingStatus.AWAITING_PAYMENT.value:
        return None
    return link.short_url


def _paid_and_earned(session: Session, booking: Booking) -> tuple[int, int]:
    if BookingStatus(booking.status) not in PAID_STATES:
        return 0, 0
    s = ledger.booking_summary(session, booking.id)
    return s["captured_paise"], s["released_paise"]


def cancellation_preview(session: Session, booking: Booking) -> CancellationQuote:
    """What cancelling now would refund, under the cancellation policy (from the ledger)."""
    paid, earned = _paid_and_earned(session, booking)
    return cancellation_refund(BookingStatus(booking.status), paid, min(earned, paid))


def cancel_booking(session: Session, booking: Booking, actor: Actor,
                   reason: str) -> CancellationQuote:
    """Cancel a booking under the policy; the refund (if any) is made by an RQ job.

    The refund and the fee are decided and reserved in the ledger here, in the caller's
    transaction, so a later state change cannot alter what the customer was told. The
    booking's legs stop with it (dispatch.booking_cancelled): a partner on the way is told,
    open offers are withdrawn."""
    from core.services import dispatch

    dispatch.lock_legs(session, booking.id)  # legs first, then the booking: acceptance's order
    booking = ledger.lock_booking(session, booking.id)
    quote = cancellation_preview(session, booking)
    if not quote.allowed:
        raise Conflict("this booking can no longer be cancelled", code=quote.reason_code)
    was = booking.status
    fee_leg = _assigned_leg(session, booking) if quote.fee_paise else None
    move_booking(session, booking, BookingStatus.CANCELLED, actor, reason)
    dispatch.booking_cancelled(session, booking, actor)
    if was == BookingStatus.AWAITING_PAYMENT.value:
        _enqueue_after_commit(session, "workers.payments.cancel_payment_link", booking.id,
                              job_id=f"paylink-cancel-{booking.id}")
        return quote
    fee = quote.fee_paise
    if fee:
        leg = fee_leg
        if leg is None or leg.partner_id is None:
            fee = 0  # nobody to compensate: the customer gets everything back
        else:
            ledger.post(session, rules.cancellation_fee(booking.id, leg.id, leg.partner_id, fee),
                        actor=str(actor), cause=f"cancel:{booking.id}")
            _enqueue_after_commit(session, "workers.payments.settle_leg_transfer", leg.id,
                                  job_id=f"transfer-{leg.id}")
    refund_paise = quote.refund_paise + (quote.fee_paise - fee)
    if refund_paise > 0:
        _open_refund(session, booking, refund_paise, fee, "cancelled", str(actor))
    if fee != quote.fee_paise:
        quote = CancellationQuote(quote.allowed, refund_paise, fee, quote.reason_code)
    return quote


def _assigned_leg(session: Session, booking: Booking) -> Leg | None:
    return session.scalar(select(Leg).where(
        Leg.booking_id == booking.id, Leg.status == LegStatus.ASSIGNED.value,
        Leg.partner_id.is_not(None)).order_by(Leg.sequence))


def _capture_payment_id(session: Session, booking_id: int) -> str | None:
    from core.adapters.payment_models import LedgerTransaction

    return session.scalar(select(LedgerTransaction.gateway_ref).where(
        LedgerTransaction.booking_id == booking_id,
        LedgerTransaction.kind == rules.EntryKind.CAPTURE.value)
        .order_by(LedgerTransaction.id))


def _open_refund(session: Session, booking: Booking, amount: int, fee: int, reason: str,
                 actor: str) -> Refund | None:
    """Reserve a refund out of escrow and enqueue the gateway call (once per booking)."""
    existing = session.scalar(select(Refund).where(Refund.booking_id == booking.id))
    if existing is not None:
        return existing
    payment_id = _capture_payment_id(session, booking.id)
    if payment_id is None or amount <= 0:
        return None
    refund = Refund(booking_id=booking.id, payment_id=payment_id, amount_paise=amount,
                    fee_paise=fee, reason=reason, actor=actor[:60], status="requested")
    session.add(refund)
    session.flush()
    ledger.post(session, rules.refund_requested(booking.id, refund.id, amount), actor=actor,
                cause=f"refund:{reason}")
    _enqueue_after_commit(session, "workers.payments.refund_booking", booking.id, reason,
                          job_id=f"refund-{booking.id}")
    return refund


# --- payment links -------------------------------------------------------------------------


def _link_payload(booking: Booking, person: Person | None, expire_by: datetime) -> dict:
    payload: dict[str, Any] = {
        "amount": booking.total_paise,
        "currency": "INR",
        "accept_partial": False,
        "reference_id": booking.reference,
        "description": f"RideChain booking {booking.reference}",
        "expire_by": int(expire_by.timestamp()),
        "notify": {"sms": False, "email": False},  # we send the link ourselves
        "reminder_enable": False,
        "notes": {"booking_id": str(booking.id), "reference": booking.reference},
    }
    if person is not None and person.phone:
        payload["customer"] = {"contact": person.phone, **({"name": person.name}
                                                          if person.name else {})}
    return payload


def _short_url(entity: dict) -> str:
    return str(entity.get("short_url") or "")


def create_payment_link(booking_id: int) -> str:
    """Job: create the booking's payment link at the gateway (once) and send it."""
    with transaction() as session:
        booking = session.get(Booking, booking_id)
        if booking is None:
            return "missing"
        link = session.scalar(select(PaymentLink).where(PaymentLink.booking_id == booking_id))
        if link is not None:
            _send_link(session, booking, link)
            return "exists"
        if booking.status != BookingStatus.AWAITING_PAYMENT.value:
            return "not-awaiting-payment"
        now = clock.now()
        expire_by = booking.expires_at or now + payment_link_ttl()
        if expire_by <= now:
            move_booking(session, booking, BookingStatus.EXPIRED, SYSTEM,
                         "payment time ran out before the link was made")
            return "expired"
        person = session.get(Person, booking.customer_id)
        payload = _link_payload(booking, person, expire_by)
        reference = booking.reference

    c = gw.client()
    try:
        entity = c.payment_link.create(payload)
    except gw.BadRequestError as exc:
        if not gw.is_duplicate_reference(exc):
            log.warning("payment link refused", extra={"booking_id": booking_id})
            return "refused"
        # A previous attempt created it (our answer was lost): fetch it instead.
        found = c.payment_link.all({"reference_id": reference}).get("payment_links") or []
        if not found:
            raise
        entity = found[0]

    with transaction() as session:
        booking = session.get(Booking, booking_id)
        assert booking is not None
        link = session.scalar(
            insert(PaymentLink).values(
                booking_id=booking_id, gateway_id=entity["id"], reference_id=reference,
                short_url=_short_url(entity), amount_paise=int(entity["amount"]),
                status=entity.get("status") or "created",
                expire_by=datetime.fromtimestamp(int(entity.get("expire_by") or
                                                     payload["expire_by"]), UTC))
            .on_conflict_do_nothing(index_elements=["booking_id"])
            .returning(PaymentLink)
        ) or session.scalar(select(PaymentLink).where(PaymentLink.booking_id == booking_id))
        assert link is not None
        if booking.status == BookingStatus.AWAITING_PAYMENT.value:
            _send_link(session, booking, link)
    _ensure_periodic_jobs()
    log.info("payment link ready", extra={"booking_id": booking_id})
    return "created"


def _send_link(session: Session, booking: Booking, link: PaymentLink) -> None:
    if booking.status != BookingStatus.AWAITING_PAYMENT.value:
        return
    notify.notify_customer(session, booking, "pay.link", total_paise=booking.total_paise,
                           url=link.short_url, dedupe_key=f"paylink-{booking.id}")


def cancel_payment_link(booking_id: int) -> str:
    """Job: a booking cancelled before payment: cancel its link so it cannot be paid."""
    with transaction() as session:
        link = session.scalar(select(PaymentLink).where(PaymentLink.booking_id == booking_id))
        if link is None or link.status != "created":
            return "nothing-to-cancel"
        gateway_id = link.gateway_id
    try:
        entity = gw.client().payment_link.cancel(gateway_id)
    except gw.BadRequestError:
        entity = gw.client().payment_link.fetch(gateway_id)
    with transaction() as session:
        link = session.scalar(select(PaymentLink).where(PaymentLink.booking_id == booking_id)
                              .with_for_update())
        assert link is not None
        if link.status == "created":
            link.status = entity.get("status") or "cancelled"
        return link.status


# --- webhooks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookResult:
    status: str  # "accepted" | "duplicate"
    event: str


def receive_webhook(body: str, signature: str, event_id: str) -> WebhookResult:
    """Store a verified Razorpay webhook raw, once per X-Razorpay-Event-Id; process in RQ.

    The caller has checked the signature over exactly ``body``."""
    try:
        data = json.loads(body)
    except ValueError:
        raise ValidationError("the body is not JSON", code="bad_json") from None
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        raise ValidationError("the body has no event name", code="bad_event", field="event")
    if not event_id or len(event_id) > 64:
        raise ValidationError("X-Razorpay-Event-Id is required", code="missing_event_id",
                              field="X-Razorpay-Event-Id")
    event = data["event"][:40]
    with transaction() as session:
        row_id = session.scalar(
            insert(GatewayEvent).values(event_id=event_id, event=event, payload=body)
            .on_conflict_do_nothing(index_elements=["event_id"]).returning(GatewayEvent.id))
        if row_id is None:
            return WebhookResult("duplicate", event)
        after_commit(session, lambda: enqueue("workers.payments.process_event", row_id,
                                              job_id=f"rzp-event-{event_id}",
                                              retry=GATEWAY_RETRY))
    return WebhookResult("accepted", event)


def _entity(data: dict, name: str) -> dict:
    ent = ((data.get("payload") or {}).get(name) or {}).get("entity") or {}
    return ent if isinstance(ent, dict) else {}


def _note_int(entity: dict, name: str) -> int | None:
    notes = entity.get("notes")
    if not isinstance(notes, dict):
        return None
    raw = str(notes.get(name) or "")
    return int(raw) if raw.isdigit() else None


def process_event(event_row_id: int) -> str:
    """Job: apply one stored gateway event (idempotent: effects are keyed, not counted)."""
    with transaction() as session:
        row = session.get(GatewayEvent, event_row_id)
        if row is None:
            return "missing"
        data = json.loads(row.payload)
        event, cause = row.event, f"rzp:{row.event_id}"
    handler = _HANDLERS.get(event)
    outcome = handler(data, cause) if handler else "ignored"
    with transaction() as session:
        row = session.get(GatewayEvent, event_row_id, with_for_update=True)
        assert row is not None
        row.processed_at = clock.now()
        row.outcome = outcome[:80]
    log.info("gateway event processed", extra={"event": event, "outcome": outcome})
    return outcome


def _booking_for_payment(payment: dict, link: dict | None) -> int | None:
    """Which booking a payment belongs to: our notes, our link row, else ask the gateway."""
    booking_id = _note_int(link or {}, "booking_id") or _note_int(payment, "booking_id")
    if booking_id:
        return booking_id
    pid, plink = payment.get("id"), (link or {}).get("id")
    with transaction() as session:
        row = session.scalar(select(PaymentLink.booking_id).where(
            (PaymentLink.payment_id == pid) | (PaymentLink.gateway_id == plink)))
        if row is not None:
            return row
        if link and link.get("reference_id"):
            found = session.scalar(select(Booking.id).where(
                Booking.reference == str(link["reference_id"])))
            if found is not None:
                return found
    if pid:
        links = gw.client().payment_link.all({"payment_id": pid}).get("payment_links") or []
        for entity in links:
            bid = _note_int(entity, "booking_id")
            if bid:
                return bid
    return None


def _on_capture(data: dict, cause: str) -> str:
    payment, link = _entity(data, "payment"), _entity(data, "payment_link") or None
    if payment.get("status") not in (None, "captured") and data.get("event") == "payment.captured":
        return "not-captured"
    pid, amount = payment.get("id"), payment.get("amount")
    if not isinstance(pid, str) or isinstance(amount, bool) or not isinstance(amount, int) or (
            amount <= 0):
        return "bad-payload"
    booking_id = _booking_for_payment(payment, link)
    if booking_id is None:
        log.warning("captured payment of no booking of ours")
        return "unknown-payment"
    return record_capture(booking_id, pid, amount, link_status=(link or {}).get("status"),
                          cause=cause)


def record_capture(booking_id: int, payment_id: str, amount: int, *, cause: str,
                   link_status: str | None = None) -> str:
    """A captured payment goes into the booking's escrow (once); the booking is paid."""
    with transaction() as session:
        booking = ledger.lock_booking(session, booking_id)
        new = ledger.post(session, rules.capture(booking_id, payment_id, amount),
                          actor="gateway:razorpay", cause=cause)
        link = session.scalar(select(PaymentLink).where(PaymentLink.booking_id == booking_id))
        if link is not None:
            link.payment_id = link.payment_id or payment_id
            if link_status == "paid" or link.status == "created":
                link.status = "paid"
        if not new:
            return "duplicate-capture"
        status = booking.status
        if status == BookingStatus.AWAITING_PAYMENT.value and amount == booking.total_paise:
            move_booking(session, booking, BookingStatus.PAID, SYSTEM, "payment captured")
            notify.notify_customer(session, booking, "payment.received",
                                   total_paise=amount, dedupe_key=f"paid-{booking.id}")
            _enqueue_after_commit(session, "workers.dispatch.start_dispatch", booking.id,
                                  job_id=f"dispatch-{booking.id}", retry=None)
            return "paid"
        # Paid too late (expired, cancelled) or the wrong amount: give it all back.
        _open_refund(session, booking, amount, 0, "late_payment", "system")
        log.warning("payment on a booking that cannot take it; refunding",
                    extra={"booking_id": booking_id, "status": status})
        return "refund-late-payment"


def _on_link_closed(data: dict, cause: str) -> str:
    link = _entity(data, "payment_link")
    gateway_id = link.get("id")
    status = "expired" if data.get("event") == "payment_link.expired" else "cancelled"
    with transaction() as session:
        row = session.scalar(select(PaymentLink).where(PaymentLink.gateway_id == gateway_id))
        if row is None:
            return "unknown-link"
        booking = ledger.lock_booking(session, row.booking_id)
        if row.status == "created":
            row.status = status
        if booking.status != BookingStatus.AWAITING_PAYMENT.value:
            return "ignored-" + booking.status
        if ledger.booking_summary(session, booking.id)["captured_paise"]:
            return "already-paid"  # a capture came first: the money wins
        _expire(session, booking, f"payment link {status}")
        return "expired"


def _expire(session: Session, booking: Booking, reason: str) -> None:
    move_booking(session, booking, BookingStatus.EXPIRED, SYSTEM, reason)
    notify.notify_customer(session, booking, "payment.expired",
                           dedupe_key=f"payexpired-{booking.id}")


def _on_payment_failed(data: dict, cause: str) -> str:
    payment = _entity(data, "payment")
    booking_id = _note_int(payment, "booking_id")
    if booking_id is None:
        with transaction() as session:
            booking_id = session.scalar(select(PaymentLink.booking_id).where(
                PaymentLink.gateway_id == str((payment.get("notes") or {}).get("plink_id"))))
    if booking_id is None:
        return "payment-failed"
    with transaction() as session:
        booking = session.get(Booking, booking_id)
        if booking is not None and booking.status == BookingStatus.AWAITING_PAYMENT.value:
            notify.notify_customer(session, booking, "payment.failed",
                                   dedupe_key=f"payfail-{payment.get('id')}")
    return "payment-failed"


def _on_refund(data: dict, cause: str) -> str:
    entity = _entity(data, "refund")
    rid, our_id = entity.get("id"), _note_int(entity, "refund_id")
    processed = data.get("event") == "refund.processed"
    with transaction() as session:
        refund = session.scalar(select(Refund).where(
            (Refund.gateway_refund_id == rid) | (Refund.id == (our_id or -1))))
        if refund is None:
            return "unknown-refund"
        booking = ledger.lock_booking(session, refund.booking_id)
        refund.gateway_refund_id = refund.gateway_refund_id or rid
        entry = (rules.refund_processed if processed else rules.refund_failed)(
            booking.id, refund.id, refund.amount_paise, rid)
        if not ledger.post(session, entry, actor="gateway:razorpay", cause=cause):
            return "duplicate-refund-event"
        if processed:
            refund.status = "processed"
            if booking.status in (BookingStatus.CANCELLED.value, BookingStatus.FAILED.value):
                move_booking(session, booking, BookingStatus.REFUNDED, SYSTEM, "refund processed")
            notify.notify_customer(session, booking, "payment.refunded",
                                   refund_paise=refund.amount_paise,
                                   dedupe_key=f"refunded-{booking.id}")
            return "refunded"
        refund.status = "failed"
        refund.last_error = "gateway reported refund.failed"
        log.error("refund failed at the gateway", extra={"booking_id": booking.id})
        return "refund-failed"


def _on_transfer(data: dict, cause: str) -> str:
    """A leg's transfer was processed or failed at the gateway.

    Processed on hold (how every leg transfer starts) is no payout: the hold can still be
    reversed, so the ledger waits for the release (settle_leg_transfer). Processed without
    a hold is paid out: the same entry the release posts, keyed by the transfer, so once."""
    entity = _entity(data, "transfer")
    tid, leg_id = entity.get("id"), _note_int(entity, "leg_id")
    processed = data.get("event") == "transfer.processed"
    with transaction() as session:
        row = session.scalar(select(LegTransfer).where(
            (LegTransfer.transfer_id == tid) | (LegTransfer.leg_id == (leg_id or -1))))
        if row is None:
            return "unknown-transfer"
        ledger.lock_booking(session, row.booking_id)
        row = session.get(LegTransfer, row.id, with_for_update=True, populate_existing=True)
        assert row is not None
        if row.transfer_id not in (None, tid) or (
                row.transfer_id is None and entity.get("recipient") != row.account):
            return "stale-transfer"  # another partner's transfer of the leg
        row.transfer_id = tid
        if not processed:
            row.status = "failed"
            row.last_error = "gateway reported transfer.failed"
            _enqueue_after_commit(session, "workers.payments.settle_leg_transfer", row.leg_id,
                                  job_id=f"transfer-{row.leg_id}")
            return "transfer-failed"
        if entity.get("on_hold"):
            if row.status not in _SETTLED_TRANSFER:
                row.status = "on_hold"
            return "transfer-on-hold"
        if row.status == "reversed":
            return "transfer-reversed"
        amount = int(entity.get("amount") or 0) - int(entity.get("amount_reversed") or 0)
        if amount <= 0:
            return "transfer-reversed"
        if ledger.post(session, rules.transfer_processed(row.booking_id, row.leg_id,
                                                         row.partner_id, tid, amount),
                       actor="gateway:razorpay", cause=cause):
            if row.status != "released":
                row.status = "processed"
            return "transfer-processed"
        return "duplicate-transfer-event"


_HANDLERS = {
    "payment.captured": _on_capture,
    "payment_link.paid": _on_capture,
    "payment_link.expired": _on_link_closed,
    "payment_link.cancelled": _on_link_closed,
    "payment.failed": _on_payment_failed,
    "refund.processed": _on_refund,
    "refund.failed": _on_refund,
    "transfer.processed": _on_transfer,
    "transfer.failed": _on_transfer,
}


# --- releases and transfers ----------------------------------------------------------------


def release_leg(leg_id: int, actor: Actor = SYSTEM) -> str:
    """Job: a delivered leg's payout and commission leave escrow (once), then its transfer."""
    with transaction() as session:
        leg = session.get(Leg, leg_id)
        if leg is None:
            return "missing"
        booking = ledger.lock_booking(session, leg.booking_id)
        leg = session.get(Leg, leg_id, populate_existing=True)
        assert leg is not None
        if leg.status != LegStatus.DELIVERED.value or leg.partner_id is None:
            return "not-delivered"
        if ledger.recorded(session, f"release:leg:{leg_id}"):
            result = "already-released"
        else:
            legs = list(session.scalars(select(Leg).where(Leg.booking_id == booking.id)))
            released = ledger.booking_summary(session, booking.id)["commission_paise"]
            last = all(other.status == LegStatus.DELIVERED.value and (
                other.id == leg_id or ledger.recorded(session, f"release:leg:{other.id}"))
                for other in legs)
            commission = rules.leg_commission(booking.commission_paise,
                                              booking.partner_share_paise, leg.payout_paise,
                                              released, last)
            ledger.post(session, rules.release(booking.id, leg.id, leg.partner_id,
                                               leg.payout_paise, commission),
                        actor=str(actor), cause=f"leg:{leg_id}:delivered")
            result = "released"
        _enqueue_after_commit(session, "workers.payments.settle_leg_transfer", leg_id,
                              job_id=f"transfer-{leg_id}")
        return result


# A leg transfer's row in these states is not moved back to on_hold by a late event.
_SETTLED_TRANSFER = ("released", "processed", "reversed")


def _left(transfer: dict) -> int:
    """What is still on a gateway transfer: its amount less what was reversed."""
    return int(transfer.get("amount") or 0) - int(transfer.get("amount_reversed") or 0)


def _live(transfers: list[dict], leg_id: int, account: str | None = None) -> dict | None:
    """The leg's live transfer (to ``account`` when given)."""
    for t in transfers:
        if _note_int(t, "leg_id") == leg_id and t.get("status") not in ("failed", "reversed") \
                and (account is None or t.get("recipient") == account):
            return t
    return None


def _reverse_others(c, transfers: list[dict], leg_id: int, account: str | None) -> int:
    """Reverse the leg's transfers still on hold for someone else (a partner who gave the
    job back); return how many. An on-hold transfer was never posted as a payout, so its
    reversal posts nothing; a released one is paid out for good and is left alone."""
    n = 0
    for t in transfers:
        left = _left(t)
        if _note_int(t, "leg_id") == leg_id and t.get("status") not in ("failed", "reversed") \
                and t.get("on_hold") and t.get("recipient") != account and left > 0:
            c.transfer.reverse(t["id"], {"amount": left})
            n += 1
    return n


def hold_leg_transfer(leg_id: int) -> str:
    """Job: once a partner is assigned, create the leg's Route transfer to them on hold.

    The money moves to the partner's linked account only when the hold is released after
    delivery (settle_leg_transfer); until then it is reversible and the ledger shows no
    payout. A partner who gives the job back has theirs reversed when the next one is
    held. Found by our leg id in the notes, so retries never double.
    """
    with transaction() as session:
        leg = session.get(Leg, leg_id)
        if leg is None:
            return "missing"
        if leg.status not in (LegStatus.ASSIGNED.value, LegStatus.PICKED_UP.value) \
                or leg.partner_id is None:
            return "not-assigned"
        booking_id, partner_id, amount = leg.booking_id, leg.partner_id, leg.payout_paise
        payment_id = _capture_payment_id(session, booking_id)
        partner = session.get(PartnerProfile, partner_id)
        account = partner.payout_account_id if partner else None
    if payment_id is None:
        return "no-payment"
    if not account or amount <= 0:
        return "no-account" if not account else "nothing-to-hold"
    c = gw.client()
    transfers = c.payment.transfers(payment_id, {}).get("items") or []
    _reverse_others(c, transfers, leg_id, account)
    if _live(transfers, leg_id, account) is not None:
        return "already-held"
    created = c.payment.transfer(payment_id, {"transfers": [{
        "account": account, "amount": amount, "currency": "INR", "on_hold": True,
        "notes": {"leg_id": str(leg_id), "booking_id": str(booking_id)},
    }]})
    items = created.get("items") or [created]
    live = _live(items, leg_id) or items[0]
    _save_transfer(leg_id, booking_id, partner_id, payment_id, account, live, "on_hold")
    return "held"


def settle_leg_transfer(leg_id: int) -> str:
    """Job: make the gateway's Route transfer for a leg match what the ledger says it earned.

    Earned > 0: find the leg's transfer among the payment's transfers (our leg id is in
    its notes), create it on hold if missing, reverse any excess still on hold, then
    release the hold. Only then is the money the partner's for good: the ledger's
    transfer_processed entry (the amount left on the transfer, to the leg's current
    partner) is posted with the row marked released, also when a retry finds the hold
    already released. Earned 0 (cancelled before delivery): reverse what is left on a
    transfer made on hold for it, if any (nothing was posted for it)."""
    with transaction() as session:
        leg = session.get(Leg, leg_id)
        if leg is None:
            return "missing"
        booking_id, partner_id = leg.booking_id, leg.partner_id
        payment_id = _capture_payment_id(session, booking_id)
        target = ledger.leg_payable(session, leg_id)
        partner = session.get(PartnerProfile, partner_id) if partner_id else None
        account = partner.payout_account_id if partner else None
    if payment_id is None:
        return "no-payment"
    c = gw.client()
    transfers = c.payment.transfers(payment_id, {}).get("items") or []
    if account:
        _reverse_others(c, transfers, leg_id, account)
    live = _live(transfers, leg_id, account) if account else _live(transfers, leg_id)
    if target <= 0:
        if live is None:
            return "nothing-to-transfer"
        if _left(live) > 0:
            c.transfer.reverse(live["id"], {"amount": _left(live)})
        _save_transfer(leg_id, booking_id, partner_id, payment_id, account, live, "reversed")
        return "reversed"
    if partner_id is None or not account:
        _save_transfer(leg_id, booking_id, partner_id, payment_id, account, None, "pending",
                       error="partner has no linked account", amount=target)
        log.warning("leg transfer waits: partner has no linked account",
                    extra={"leg_id": leg_id})
        return "no-account"
    if live is None:
        created = c.payment.transfer(payment_id, {"transfers": [{
            "account": account, "amount": target, "currency": "INR", "on_hold": True,
            "notes": {"leg_id": str(leg_id), "booking_id": str(booking_id)},
        }]})
        items = created.get("items") or [created]
        live = _live(items, leg_id) or items[0]
        _save_transfer(leg_id, booking_id, partner_id, payment_id, account, live, "on_hold")
    paid = _left(live)
    if live.get("on_hold", True):
        # A retry after a failed release finds the excess already reversed: _left sees it.
        if paid > target:
            c.transfer.reverse(live["id"], {"amount": paid - target})
            paid = target
        released = c.transfer.edit(live["id"], {"on_hold": False})
        if "amount" in released:
            paid = _left(released)
        live = {**live, **released}
    if paid != target:
        log.warning("leg transfer released with another amount than the leg earned",
                    extra={"leg_id": leg_id, "paid_paise": paid, "earned_paise": target})
    _save_transfer(leg_id, booking_id, partner_id, payment_id, account, live, "released",
                   amount=paid, paid_out=paid)
    return "released"


def _save_transfer(leg_id: int, booking_id: int, partner_id: int | None, payment_id: str,
                   account: str | None, entity: dict | None, status: str, *,
                   error: str | None = None, amount: int | None = None,
                   paid_out: int | None = None) -> None:
    """Record the leg's transfer row; with ``paid_out`` (the hold was released), post the
    payout to ``partner_id`` in the same transaction.

    The row follows the leg's latest transfer: a new transfer id brings its partner,
    account and payment (the partner who gave the job back keeps no claim). Its status
    does not go back from released to on hold; reversed always wins."""
    if partner_id is None:
        return
    with transaction() as session:
        if paid_out is not None:
            ledger.lock_booking(session, booking_id)  # the booking before the row: as events
        row = session.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id)
                             .with_for_update())
        amt = amount if amount is not None else int((entity or {}).get("amount") or 0)
        tid = (entity or {}).get("id") or None
        if row is None:
            row = LegTransfer(leg_id=leg_id, booking_id=booking_id, partner_id=partner_id,
                              payment_id=payment_id, account=account, amount_paise=max(amt, 1),
                              status=status, attempts=0)
            session.add(row)
        elif tid is not None and tid != row.transfer_id:
            row.partner_id, row.account, row.payment_id = partner_id, account, payment_id
            row.status = status
            if amt > 0:
                row.amount_paise = amt
        row.attempts += 1
        if tid is not None:
            row.transfer_id = tid
        if amount is not None and amount > 0:
            row.amount_paise = amount
        if status in ("released", "reversed") or row.status not in ("released", "processed"):
            row.status = status
        row.last_error = error
        if paid_out is not None and paid_out > 0 and tid is not None:
            ledger.post(session, rules.transfer_processed(booking_id, leg_id, partner_id, tid,
                                                          paid_out),
                        actor=str(SYSTEM), cause=f"leg:{leg_id}:transfer-released")


# --- refunds -------------------------------------------------------------------------------


def refund_booking(booking_id: int, reason: str) -> str:
    """Job: refund a booking by policy through the gateway (once, idempotency key = our id).

    ``cancelled``: the amount was fixed by cancel_booking. ``no_partner`` / other reasons:
    whatever is still in escrow goes back. Transfers made for legs that earned nothing are
    reversed first, so the platform's balance covers the refund."""
    if reason not in REFUND_REASONS:
        raise ValidationError(f"unknown refund reason {reason!r}", field="reason")
    with transaction() as session:
        booking = ledger.lock_booking(session, booking_id)
        refund = session.scalar(select(Refund).where(Refund.booking_id == booking_id))
        if refund is None:
            escrow = ledger.balance(session, rules.escrow(booking_id))
            refund = _open_refund(session, booking, escrow, 0, reason, "system")
            if refund is None:
                return "nothing-to-refund"
        if refund.status not in ("requested",):
            return "already-" + refund.status
        refund_id, payment_id, amount = refund.id, refund.payment_id, refund.amount_paise
        legs = [leg.id for leg in session.scalars(select(Leg).where(
            Leg.booking_id == booking_id)) if ledger.leg_payable(session, leg.id) == 0]
    for leg_id in legs:
        settle_leg_transfer(leg_id)  # reverse a held transfer of an unearned leg, if any
    c = gw.client()
    try:
        entity = c.payment.refund(payment_id, {
            "amount": amount, "speed": "normal",
            "notes": {"refund_id": str(refund_id), "booking_id": str(booking_id)},
        }, headers={"X-Refund-Idempotency": f"ridechain-refund-{refund_id}"})
    except (gw.GatewayError, gw.ServerError, requests.exceptions.ConnectionError):
        raise  # outcome known-unsent or unknown: the idempotency header makes a retry safe
    with transaction() as session:
        refund = session.get(Refund, refund_id, with_for_update=True)
        assert refund is not None
        refund.gateway_refund_id = refund.gateway_refund_id or entity.get("id")
        if refund.status == "requested":
            refund.status = "pending"
    return "requested"


# --- periodic ------------------------------------------------------------------------------


def expire_unpaid(now: datetime | None = None) -> int:
    """Expire bookings still awaiting payment after their link's time (a lost webhook)."""
    now = now or clock.now()
    with transaction() as session:
        ids = list(session.scalars(select(Booking.id).where(
            Booking.status == BookingStatus.AWAITING_PAYMENT.value,
            Booking.expires_at < now - timedelta(minutes=1)).limit(200)))
    count = 0
    for booking_id in ids:
        with transaction() as session:
            booking = ledger.lock_booking(session, booking_id)
            if booking.status != BookingStatus.AWAITING_PAYMENT.value:
                continue
            if ledger.booking_summary(session, booking_id)["captured_paise"]:
                continue
            _expire(session, booking, "payment time ran out")
            link = session.scalar(select(PaymentLink).where(PaymentLink.booking_id == booking_id))
            if link is not None and link.status == "created":
                _enqueue_after_commit(session, "workers.payments.cancel_payment_link",
                                      booking_id, job_id=f"paylink-cancel-{booking_id}")
            count += 1
    return count


def _ensure_periodic_jobs() -> None:
    try:
        from workers.payments import schedule_periodic

        schedule_periodic()
    except Exception:  # scheduling is best effort; the next job tries again
        log.exception("could not schedule the payments sweep")


def unprocessed_events(session: Session, older_than: timedelta = timedelta(minutes=5)) -> list[int]:
    """Stored events whose processing job was lost (the sweep re-enqueues them)."""
    cutoff = clock.now() - older_than
    return list(session.scalars(select(GatewayEvent.id).where(
        GatewayEvent.processed_at.is_(None), GatewayEvent.received_at < cutoff)
        .order_by(GatewayEvent.id).limit(200)))


def sweep() -> dict[str, int]:
    """Expire unpaid bookings and re-enqueue events whose job was lost."""
    expired = expire_unpaid()
    with transaction() as session:
        ids = unprocessed_events(session)
        event_ids = dict(session.execute(select(GatewayEvent.id, GatewayEvent.event_id)
                                         .where(GatewayEvent.id.in_(ids))).all())
    for row_id, event_id in event_ids.items():
        enqueue("workers.payments.process_event", row_id, job_id=f"rzp-event-{event_id}",
                retry=GATEWAY_RETRY)
    return {"expired": expired, "events": len(event_ids)}


def count_events(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(GatewayEvent)) or 0)


__all__ = ["PAYMENT_LINK_TTL", "cancel_booking", "cancellation_preview", "create_payment_link",
           "payment_url", "process_event", "receive_webhook", "record_capture",
           "refund_booking", "release_leg", "request_payment_link", "settle_leg_transfer"]

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
- ``workers.payments.hold_leg_transfer(leg_id)``           ``hold-<leg>-<offer>`` (dispatch),
                                                            ``hold-<leg>-after-<id>`` once a
                                                            transfer whose reversal waited is
                                                            processed (``-after-resumed`` by
                                                            the reconciliation)
- ``workers.payments.settle_leg_transfer(leg_id)``         ``transfer-<leg>``, after a failed
                                                            transfer ``transfer-<leg>-failed-<id>``,
                                                            ``transfer-<leg>-after-<id>`` as above
- ``workers.payments.refund_booking(booking_id, reason)``  ``refund-<booking>`` (attempt 1),
                                                            ``refund-<booking>-<attempt>``
- ``workers.payments.retry_refund(booking_id, attempt)``   ``refund-retry-<booking>-<attempt>``
- ``workers.payments.cancel_payment_link(booking_id)``     ``paylink-cancel-<booking>``
Network calls never happen inside a database transaction or inside a webhook request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.exceptions import LockError, RedisError
from rq import Retry, get_current_job
from rq.timeouts import BaseTimeoutException
from sqlalchemy import any_, func, literal, select, union, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, aliased

from core import clock
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, PartnerProfile, Person
from core.adapters.payment_models import GatewayEvent, LegTransfer, PaymentLink, Refund
from core.adapters.queue import after_commit, enqueue, job_alive, queue
from core.adapters.redis_conn import redis_client
from core.config import get_settings, int_setting
from core.domain import ledger as rules
from core.domain.booking import (
    Actor,
    BookingStatus,
    CancellationQuote,
    LegStatus,
    cancellation_refund,
)
from core.domain.errors import Conflict, Unavailable, ValidationError
from core.services import ledger, notify
from core.services.booking import move_booking

log = logging.getLogger(__name__)

PAID_STATES = {BookingStatus.PAID, BookingStatus.DISPATCHING, BookingStatus.ASSIGNED,
               BookingStatus.PICKED_UP, BookingStatus.IN_TRANSIT, BookingStatus.DELIVERED}
REFUND_REASONS = ("cancelled", "no_partner", "late_payment", "reversed_payout")
GATEWAY_RETRY = Retry(max=5, interval=[10, 30, 120, 600, 1800])
SYSTEM = Actor.system()
HANDLED_EVENTS = (
    "payment_link.paid", "payment_link.expired", "payment_link.cancelled",
    "payment.captured", "payment.failed", "refund.processed", "refund.failed",
    "transfer.processed", "transfer.failed", "transfer.reversed",
)


# Razorpay refuses a link whose expire_by is less than 15 minutes away; one more minute
# covers the time the request takes.
LINK_MIN_LEAD = timedelta(minutes=16)


def payment_link_ttl() -> timedelta:
    """How long a payment link stays payable (``PAYMENT_LINK_TTL_MIN``, default 30; less
    than 16 is refused: Razorpay would refuse every link)."""
    return timedelta(minutes=int_setting("PAYMENT_LINK_TTL_MIN", 30))


def refund_retry_delay() -> timedelta:
    """How long after a failed refund attempt the next one is made (``REFUND_RETRY_MIN``;
    default 60, or 2 in the sandbox so that a demo sees the retry). A refusal for want of
    balance needs time: payouts settle, someone tops the account up."""

    return timedelta(minutes=int_setting("REFUND_RETRY_MIN",
                                      2 if get_settings().is_sandbox else 60))


def refund_attempts() -> int:
    """How many refund attempts are made before ops must step in (``REFUND_ATTEMPTS``, 3)."""
    return int_setting("REFUND_ATTEMPTS", 3)


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


def _payable(booking: Booking) -> bool:
    """Waiting for payment, and still in its time to pay: past expires_at the gateway
    refuses the link (its expire_by), though the sweep closes the booking a while later."""
    return booking.status == BookingStatus.AWAITING_PAYMENT.value and (
        booking.expires_at is None or booking.expires_at > clock.now())


def payment_url(session: Session, booking: Booking) -> str | None:
    """The booking's payment link, once created (None before, or when not payable)."""
    if not _payable(booking):
        return None
    link = session.scalar(select(PaymentLink).where(PaymentLink.booking_id == booking.id))
    return link.short_url if link is not None else None


# A customer who lost their payment link and asks where their booking is gets it again by
# SMS, at most once per this long per booking (a caller tracking it twice in one call, or
# calling back at once, is not sent the same SMS twice).
LINK_AGAIN_EVERY = timedelta(minutes=10)


def send_link_again(session: Session, booking: Booking, phone: str) -> bool:
    """Send the booking's payment link by SMS to ``phone`` again (someone tracking an unpaid
    booking, who may have lost the first one); False while there is no link to send. At
    most one per LINK_AGAIN_EVERY to a phone, counted from when the last one to it was
    queued (link_again_at): asked again before, nothing goes (True all the same; the
    caller tells them when it can go). Callers are one at a time per phone (a caller's
    turns hold their conversation's row lock), and two of one second share a dedupe key."""
    url = payment_url(session, booking)
    if url is None:
        return False
    now = clock.now()
    if link_again_at(session, booking, phone, now) is not None:
        return True
    notify.notify_phone(session, phone, "pay.link", booking_id=booking.id,
                        dedupe_key=_link_again_key(booking.id, phone, now),
                        ref=booking.reference, total_paise=booking.total_paise, url=url,
                        minutes=minutes_to_pay(booking))
    return True


# The dedupe key of a payment link sent again names the booking, the phone (its keyed
# hash, as an opt-out's) and when it went by the service's clock:
# "paylink-<booking>-again-<number's hash>-s<Unix seconds>". One written before named
# the LINK_AGAIN_EVERY slot of the clock it went in: "paylink-<booking>-again-<slot>".
_AGAIN_SENT_AT = "s"
# How the outbox says a message did not reach them: such a send does not hold the next
# one back (asked again, they get a new one), unless a copy went another way
# (outbox._by_sms_instead: "sms-for-<row id>", ...) and did not fail too.
_NOT_DELIVERED = ("failed", "undelivered")
_COPY_PREFIXES = ("sms-for-", "tpl-for-", "wa-for-")


def _link_again_prefix(booking_id: int) -> str:
    return f"paylink-{booking_id}-again-"


def _link_again_key(booking_id: int, phone: str, at: datetime) -> str:
    from core.services import outbox

    return (f"{_link_again_prefix(booking_id)}{outbox.number_hash(phone)[:16]}-"
            f"{_AGAIN_SENT_AT}{int(at.timestamp())}")


def _link_again_sent_at(key: str, number: str) -> datetime | None:
    """When the link again whose dedupe key is ``key`` went, if it went to the phone whose
    hash begins ``number``; a key of the old form (its slot's start) went to any phone;
    a key of no known form counts as just sent, to any phone."""
    to, _, tail = key.partition("-again-")[2].rpartition("-")
    if not to and tail.isdigit():  # "...-again-<slot>": before the phone was named
        return datetime.fromtimestamp(int(tail) * LINK_AGAIN_EVERY.total_seconds(), UTC)
    if not (tail.startswith(_AGAIN_SENT_AT) and tail[len(_AGAIN_SENT_AT):].isdigit()):
        return clock.now()
    if to != number:
        return None
    return datetime.fromtimestamp(int(tail[len(_AGAIN_SENT_AT):]), UTC)


def link_again_at(session: Session, booking: Booking, phone: str,
                  now: datetime | None = None) -> datetime | None:
    """When the booking's payment link asked for again (send_link_again) can next go to
    ``phone``: LINK_AGAIN_EVERY after the last one queued to it; None if it can go now.
    A send that failed or was undelivered (and went no other way) does not count."""
    from core.adapters.models import OutboxMessage
    from core.services import outbox

    now = now or clock.now()
    prefix = _link_again_prefix(booking.id)
    rows = session.execute(select(OutboxMessage.id, OutboxMessage.dedupe_key,
                                  OutboxMessage.status).where(
        OutboxMessage.booking_id == booking.id,
        OutboxMessage.dedupe_key.startswith(prefix, autoescape=True))).all()
    number = outbox.number_hash(phone)[:16]
    sent = {row.id: at for row in rows
            if (at := _link_again_sent_at(row.dedupe_key or "", number)) is not None
            and at > now - LINK_AGAIN_EVERY}
    failed = [row.id for row in rows if row.id in sent and row.status in _NOT_DELIVERED]
    if failed:
        copied = {key or "" for key in session.scalars(select(OutboxMessage.dedupe_key).where(
            OutboxMessage.dedupe_key.in_([f"{p}{i}" for p in _COPY_PREFIXES for i in failed]),
            OutboxMessage.status.not_in(_NOT_DELIVERED)))}
        for row_id in failed:
            if not any(f"{p}{row_id}" in copied for p in _COPY_PREFIXES):
                del sent[row_id]
    return max(sent.values()) + LINK_AGAIN_EVERY if sent else None


def minutes_to_pay(booking: Booking, link: PaymentLink | None = None) -> int:
    """Minutes left to pay the booking, as its payment link says them: until its
    expires_at (or the link's expire_by, if sooner), rounded up as the phone says them
    (ivr.VoicePorts.confirm), at least 1. Someone whose phone cannot open the link must
    find one that can in that time; the SMS is the only place they can read it again."""
    ends = [t for t in (booking.expires_at, link.expire_by if link is not None else None)
            if t is not None]
    if not ends:
        return max(1, math.ceil(payment_link_ttl().total_seconds() / 60))
    left = (min(ends) - clock.now()).total_seconds()
    return max(1, math.ceil(left / 60))


def payment_urls(session: Session, bookings: list[Booking]) -> dict[int, str]:
    """payment_url of many bookings in one query, by booking id (a list page would
    otherwise cost a query per row); a booking payment_url gives None for is left out."""
    waiting = [b.id for b in bookings if _payable(b)]
    if not waiting:
        return {}
    return dict(session.execute(select(PaymentLink.booking_id, PaymentLink.short_url)
                                .where(PaymentLink.booking_id.in_(waiting))).tuples().all())


def _paid_and_earned(session: Session, booking: Booking) -> tuple[int, int, int]:
    """What the customer paid for the booking (its paying payment: an extra payment is
    given back on its own), less what was refunded of it outside the service (the
    dashboard: record_outside_refund); what delivered legs earned out of it; and that
    refund made outside the service (support's refund is the platform's cost: a rider's
    cancellation fee is what it would be without it)."""
    if BookingStatus(booking.status) not in PAID_STATES:
        return 0, 0, 0
    paying = _capture_payment_id(session, booking.id)
    paid = sum(amount for pid, amount in _captures(session, booking.id) if pid == paying)
    outside = min(paid, _refunded_outside(session, booking.id).get(paying or "", 0))
    return (paid - outside, ledger.booking_summary(session, booking.id)["released_paise"],
            outside)


def refunded_outside_paise(session: Session, booking: Booking) -> int:
    """What support gave back of the booking's paying payment from the dashboard
    (record_outside_refund): 0 for a booking not paid, or not refunded outside."""
    return _paid_and_earned(session, booking)[2]


def money_coming_back(session: Session, booking_id: int) -> bool:
    """Whether any of the booking's money is still to come back to the customer: asked
    of the gateway, or held in its escrow (a failed refund's money goes back there to
    be asked again), at least the least the gateway refunds. Not so once support gave it
    all back from the dashboard (record_outside_refund), or the riders earned it."""
    return (ledger.balance(session, rules.refunds_pending(booking_id)) > 0
            or ledger.balance(session, rules.escrow(booking_id)) >= REFUND_MIN_PAISE)


def given_back_outside(session: Session, booking_id: int) -> bool:
    """Whether support gave the booking's money back from the dashboard
    (record_outside_refund) and nothing more is to come back: a booking no rider took is
    then told as one whose money was sent back already (booking.status.no_rider_no_refund),
    not as one whose money will be."""
    return (sum(_refunded_outside(session, booking_id).values()) > 0
            and not money_coming_back(session, booking_id))


def _refunded_outside(session: Session, booking_id: int) -> dict[str, int]:
    """What was refunded of each of the booking's payments outside the service (recorded
    by record_outside_refund), by payment id."""
    return {pid: int(amount) for pid, amount in session.execute(
        select(Refund.payment_id, func.sum(Refund.amount_paise)).where(
            Refund.booking_id == booking_id, Refund.reason == OUTSIDE_REFUND,
            Refund.status == "processed").group_by(Refund.payment_id))}


STUCK_RELAY = "stuck_relay"  # the reason code of ops ending a relay stuck for a rider


def _unreleased(session: Session, booking: Booking) -> list[tuple[Leg, int]]:
    """The booking's delivered legs whose release is not in the ledger yet (its job still
    to run, or lost until the sweep), in order, each with the commission its release will
    recognise (as release_leg works it out; not the last leg: a later one is undelivered)."""
    recognised = ledger.booking_summary(session, booking.id)["commission_paise"]
    escrow = ledger.balance(session, rules.escrow(booking.id))
    out = []
    for leg in session.scalars(select(Leg).where(
            Leg.booking_id == booking.id, Leg.status == LegStatus.DELIVERED.value,
            Leg.partner_id.is_not(None)).order_by(Leg.sequence)):
        if ledger.recorded(session, f"release:leg:{leg.id}"):
            continue
        commission = _release_commission(booking, leg, recognised, False, escrow)
        recognised += commission
        escrow -= leg.payout_paise + commission
        out.append((leg, commission))
    return out


def _release_commission(booking: Booking, leg: Leg, recognised: int, last: bool,
                        escrow: int) -> int:
    """The commission a delivered leg's release recognises (rules.leg_commission), no more
    than escrow (``escrow`` paise now) holds beyond the leg's payout: a refund made outside
    the service (the dashboard: record_outside_refund) took part of the booking's money,
    and the platform's commission gives way, never the partner's payout."""
    commission = rules.leg_commission(booking.commission_paise, booking.partner_share_paise,
                                      leg.payout_paise, recognised, last)
    kept = max(0, min(commission, escrow - leg.payout_paise))
    if kept < commission:
        log.warning("escrow is short of a leg's release: its commission gives way",
                    extra={"leg_id": leg.id, "commission": commission, "kept": kept})
    return kept


def _post_release(session: Session, booking: Booking, leg: Leg, commission: int,
                  actor: str) -> None:
    """Post a delivered leg's release (``commission`` from _release_commission). What
    escrow lacks of its payout (a refund made outside the service took the booking's
    money) is the platform's cost first (_platform_gives: rules.release_platform): the
    partner is paid in full, never left unpaid behind a release that cannot be posted.
    The caller holds the booking's lock."""
    assert leg.partner_id is not None
    cause = f"leg:{leg.id}:delivered"
    _platform_gives(session, booking, leg, leg.payout_paise + commission,
                    rules.release_platform, actor=actor, cause=cause)
    ledger.post(session, rules.release(booking.id, leg.id, leg.partner_id, leg.payout_paise,
                                       commission), actor=actor, cause=cause)


def _platform_gives(session: Session, booking: Booking, leg: Leg, amount: int,
                    entry: Callable[[int, int, int], rules.Entry], *, actor: str,
                    cause: str) -> None:
    """Support's refund is the platform's cost: what escrow lacks of ``amount``, paid to
    the rider of ``leg`` next (a delivered leg's release, a stuck relay's holder's fee, an
    assigned rider's cancellation fee), the platform's commission gives into escrow
    first, by ``entry`` (keyed once per leg). A shortfall no refund made outside the
    service explains is given all the same, and ops are told: the booking's money went
    somewhere the ledger cannot say. The caller holds the booking's lock."""
    from core.services.dispatch import alert_ops  # dispatch imports payments

    short = rules.shortfall(_escrow_paid_for(session, booking.id), amount)
    if not short:
        return
    unexplained = min(short, short - _outside_refunds_uncovered(session, booking.id))
    ledger.post(session, entry(booking.id, leg.id, short), actor=actor, cause=cause)
    log.warning("escrow is short of a leg's payout: the platform's cost",
                extra={"leg_id": leg.id, "platform": short})
    if unexplained > 0:
        # Ops read what the platform paid (all of the shortfall) and how much of it no
        # refund explains: the booking's numbers add up only with both.
        log.error("escrow is short of a leg's payout beyond what refunds made outside "
                  "the service took", extra={"leg_id": leg.id, "unexplained": unexplained})
        alert_ops(session, "payment.ops_escrow_short", booking_id=booking.id,
                  dedupe_key=f"leg-{leg.id}-escrow-short", ref=booking.reference,
                  leg=leg.id, short_paise=short, unexplained_paise=unexplained)


def _escrow_paid_for(session: Session, booking_id: int, refunded: str | None = None) -> int:
    """What escrow holds of the payment the booking is settled on (and of ``refunded``, a
    payment a refund is recorded of): without the extra payments (late, duplicate) whose
    money waits there to go back to their payers. A fee, a release or support's refund
    of the booking takes none of theirs: the platform gives what the rest lacks."""
    extra = _extra_unrefunded(session, booking_id, _capture_payment_id(session, booking_id))
    held = ledger.balance(session, rules.escrow(booking_id))
    return max(0, held - sum(v for pid, v in extra.items() if pid != refunded))


_PLATFORM_COST = (rules.EntryKind.OUTSIDE_REFUND_PLATFORM.value,
                  rules.EntryKind.RELEASE_PLATFORM.value)


def platform_paid(session: Session, booking_id: int) -> int:
    """What the platform's commission gave the booking's escrow: the part of a refund made
    outside the service escrow did not hold (rules.outside_refund_platform), and what
    escrow then lacked of a delivered leg's payout or of a rider's cancellation fee (a
    stuck relay's holder's, an assigned rider's: rules.release_platform,
    rules.fee_platform). Without it the booking's money does not add up: captured +
    platform_paid = released + fees + refunded + escrow + refunds pending + the
    remainder kept (remainder_kept; no payout reversed)."""
    return -_to_commission(session, booking_id, _PLATFORM_COST)


def written_off(session: Session, booking_id: int) -> int:
    """What of the booking's reversed payouts ops wrote off to the platform's commission
    (rules.reversal_written_off): under Rs 1, or after support refunded the payment in
    full, when the platform's commission had paid that refund (platform_paid)."""
    return _to_commission(session, booking_id, (rules.EntryKind.REVERSAL_WRITTEN_OFF.value,))


def remainder_kept(session: Session, booking_id: int) -> int:
    """What of the booking's payment the platform kept, being under the gateway's least
    refund (rules.remainder_kept)."""
    return _to_commission(session, booking_id, (rules.EntryKind.REMAINDER_KEPT.value,))


def _to_commission(session: Session, booking_id: int, kinds: tuple[str, ...]) -> int:
    """The net of the booking's entries of ``kinds`` into the platform's commission."""
    from core.adapters.payment_models import LedgerPosting, LedgerTransaction

    return int(session.scalar(
        select(func.coalesce(func.sum(LedgerPosting.amount_paise), 0))
        .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
        .where(LedgerTransaction.booking_id == booking_id,
               LedgerTransaction.kind.in_(kinds),
               LedgerPosting.account_kind == rules.AccountKind.PLATFORM_COMMISSION.value))
        or 0)


def _outside_refunds_uncovered(session: Session, booking_id: int) -> int:
    """What refunds made outside the service took of the booking beyond what the
    platform's commission has given for it already: the most of a leg's shortfall such a
    refund explains (all its legs' payouts and commission are no more than the customer
    paid)."""
    return sum(_refunded_outside(session, booking_id).values()) \
        - platform_paid(session, booking_id)


# Razorpay refunds 100 paise at least ("The amount must be at least INR 1.00"): a smaller
# refund is never asked of it (the attempt would only be refused, again and again).
REFUND_MIN_PAISE = 100
# Razorpay transfers 100 paise at least too ("The amount must be at least 100 paise"): a
# direct transfer of less (no hold on the payment to release it from) is refused.
TRANSFER_MIN_PAISE = 100


# The gateway's reason for a refusal, as an ops alert quotes it: the alert must fit two SMS
# parts in every language with the rest of its text (Hindi's ops_link_refused leaves about
# 65 characters); the whole reason is in the log and the row the refusal is kept on.
ALERT_ERROR_CHARS = 56


def alert_error(error: str) -> str:
    """``error`` cut to ALERT_ERROR_CHARS at a word where it can be, "…" marking the cut."""
    text = " ".join(error.split())
    if len(text) <= ALERT_ERROR_CHARS:
        return text
    cut = text[:ALERT_ERROR_CHARS - 1]
    word = cut.rsplit(" ", 1)[0]
    return (word if len(word) >= ALERT_ERROR_CHARS // 2 else cut).rstrip(" ,.;:") + "…"


def refund_floor(quote: CancellationQuote) -> CancellationQuote:
    """``quote`` with no refund under REFUND_MIN_PAISE, the same money split otherwise.

    A refund of 1..99 paise cannot be made. Where the fee can give up the paise the
    refund lacks, it does: the customer gets REFUND_MIN_PAISE back and the rider that
    much less (the customer's side first: the policy's minimum fee gives way); should
    that leave the rider a fee under TRANSFER_MIN_PAISE (which no direct transfer can
    pay), the customer gets it all back. Where even refund and fee together are under
    it, the rider gets it all as the fee: the money leaves escrow either way and the
    platform keeps none of it. With no fee at all, nothing comes back: the platform keeps
    the paise (_keep_remainder), and she is promised none."""
    short = REFUND_MIN_PAISE - quote.refund_paise
    if not quote.allowed or quote.refund_paise <= 0 or short <= 0:
        return quote
    if quote.fee_paise <= 0:
        return CancellationQuote(quote.allowed, 0, 0, quote.reason_code)
    if quote.fee_paise >= short:
        fee = quote.fee_paise - short
        if 0 < fee < TRANSFER_MIN_PAISE:
            return CancellationQuote(quote.allowed, quote.refund_paise + quote.fee_paise, 0,
                                     quote.reason_code)
        return CancellationQuote(quote.allowed, REFUND_MIN_PAISE, fee, quote.reason_code)
    return CancellationQuote(quote.allowed, 0, quote.fee_paise + quote.refund_paise,
                             quote.reason_code)


def cancellation_preview(session: Session, booking: Booking, *,
                         by_ops: bool = False) -> CancellationQuote:
    """What cancelling now would refund, under the cancellation policy (from the ledger),
    with no refund under REFUND_MIN_PAISE (refund_floor). ``by_ops``: an operator may also
    end a relay stuck for want of a rider (the parcel in a rider's hands:
    dispatch.stuck_holder), whose ride is then paid in full as the fee (_stuck_quote).
    After a refund made outside the service, an assigned rider's fee is what it would be
    without it (cancellation_refund's ``refunded_outside_paise``; what escrow lacks of it
    is the platform's cost: cancel_booking), the customer getting back what is left."""
    from core.services import dispatch

    paid, earned, outside = _paid_and_earned(session, booking)
    stuck = None
    if by_ops and booking.status in (BookingStatus.PICKED_UP.value,
                                     BookingStatus.IN_TRANSIT.value):
        holder = dispatch.stuck_holder(session, booking)
        stuck = holder.payout_paise if holder is not None else None
        # A relay leg delivered before whose release job has not run yet (or was lost)
        # earned its share all the same: none of it may be refunded.
        earned += sum(leg.payout_paise + commission
                      for leg, commission in _unreleased(session, booking))
    late = False
    if booking.status == BookingStatus.ASSIGNED.value:
        fee_leg = _fee_leg(session, booking)
        if fee_leg is None:  # nobody to compensate: the customer gets everything back
            return refund_floor(cancellation_refund(BookingStatus.PAID, paid,
                                                    min(earned, paid)))
        late = _rider_late(session, fee_leg)
    quote = cancellation_refund(BookingStatus(booking.status), paid, min(earned, paid),
                                stuck_leg_payout_paise=stuck, rider_late=late,
                                refunded_outside_paise=outside)
    if quote.reason_code == STUCK_RELAY and stuck is not None:
        return _stuck_quote(quote, stuck)
    return refund_floor(quote)


def _stuck_quote(quote: CancellationQuote, payout: int) -> CancellationQuote:
    """A stuck relay's quote: the holder's fee is his leg's ``payout`` in full (the policy
    gives him no more than escrow holds for it; what it lacks, a refund made outside the
    service having taken the booking's money, is the platform's cost: _end_stuck_relay),
    and the customer gets back only what escrow holds beyond it. Floored as any quote
    (refund_floor); where no fee is left to give way (a leg paid nothing), a refund under
    REFUND_MIN_PAISE, never asked of the gateway, is the holder's fee too, so nobody is
    promised money that will not come."""
    if payout <= 0 and 0 < quote.refund_paise < REFUND_MIN_PAISE:
        return CancellationQuote(quote.allowed, 0, quote.refund_paise, quote.reason_code)
    return refund_floor(CancellationQuote(quote.allowed, quote.refund_paise, payout,
                                          quote.reason_code))


def cancel_booking(session: Session, booking: Booking, actor: Actor,
                   reason: str, *, reasoned: bool = True) -> CancellationQuote:
    """Cancel a booking under the policy; the refund (if any) is made by an RQ job.

    The refund and the fee are decided and reserved in the ledger here, in the caller's
    transaction, so a later state change cannot alter what the customer was told. The
    booking's legs stop with it (dispatch.booking_cancelled): a partner on the way is told,
    open offers are withdrawn. Cancelled by someone else (ops), the customer is told; a
    recipient holding a delivery code is told whoever cancelled (_tell_cancelled).

    The rider's fee is paid in full also where a refund made outside the service left
    escrow short of it: support's refund is the platform's cost (_platform_gives:
    rules.fee_platform).

    Each stopped leg whose transfer row is still on hold (its rider's, or one given back)
    has its settle queued, ``transfer-<leg>``, whether or not a refund or a fee follows
    (_settle_left_holds_of): with nothing to refund, nothing else would reverse it.

    Ops may also end a relay stuck for want of a rider (_end_stuck_relay), only saying why
    (``reasoned``: 422 reason_required otherwise)."""
    from core.services import dispatch

    dispatch.lock_legs(session, booking.id)  # legs first, then the booking: acceptance's order
    booking = ledger.lock_booking(session, booking.id)
    quote = cancellation_preview(session, booking, by_ops=actor.kind == "ops")
    if not quote.allowed:
        raise Conflict("this booking can no longer be cancelled", code=quote.reason_code)
    if quote.reason_code == STUCK_RELAY:
        if not reasoned:
            raise ValidationError("say why (?reason=...): the parcel is with a rider",
                                  code="reason_required", field="reason")
        return _end_stuck_relay(session, booking, actor, reason, quote)
    was = booking.status
    fee_leg = _fee_leg(session, booking) if quote.fee_paise else None
    move_booking(session, booking, BookingStatus.CANCELLED, actor, reason)
    # The rider who had taken the job hears in one SMS not to go and the fee they get.
    dispatch.booking_cancelled(session, booking, actor,
                               fee_leg_id=fee_leg.id if fee_leg is not None else None,
                               fee_paise=quote.fee_paise)
    if was == BookingStatus.AWAITING_PAYMENT.value:
        _enqueue_after_commit(session, "workers.payments.cancel_payment_link", booking.id,
                              job_id=f"paylink-cancel-{booking.id}")
        _tell_cancelled(session, booking, actor, 0)
        return quote
    fee = quote.fee_paise
    if fee:
        leg = fee_leg
        if leg is None or leg.partner_id is None:
            fee = 0  # nobody to compensate: the customer gets everything back
        else:
            cause = f"cancel:{booking.id}"
            _platform_gives(session, booking, leg, fee, rules.fee_platform, actor=str(actor),
                            cause=cause)
            ledger.post(session, rules.cancellation_fee(booking.id, leg.id, leg.partner_id, fee),
                        actor=str(actor), cause=cause)
            _enqueue_after_commit(session, "workers.payments.settle_leg_transfer", leg.id,
                                  job_id=f"transfer-{leg.id}")
    # A rider's hold left on a stopped leg goes back, refund or not (before the refund
    # job, so the balance has it back first).
    _settle_left_holds_of(session, booking.id,
                          done={fee_leg.id} if fee and fee_leg is not None else set())
    refund_paise = quote.refund_paise + (quote.fee_paise - fee)
    if refund_paise > 0:
        _open_refund(session, booking, refund_paise, fee, "cancelled", str(actor))
    else:  # a rest under the least refund (refund_floor) is the platform's
        _keep_remainder(session, booking, _escrow_paid_for(session, booking.id), str(actor))
    if fee != quote.fee_paise:
        quote = CancellationQuote(quote.allowed, refund_paise, fee, quote.reason_code)
    _tell_cancelled(session, booking, actor, quote.refund_paise, quote.fee_paise)
    return quote


def _end_stuck_relay(session: Session, booking: Booking, actor: Actor, reason: str,
                     quote: CancellationQuote) -> CancellationQuote:
    """Ops end a relay stuck for want of a rider, the parcel in a rider's hands. The
    booking fails (the state machine lets no picked-up booking be cancelled: its delivery
    could not be finished), its later legs stop and the leg in hand fails
    (dispatch.stuck_relay_ended). The rider holding the parcel is paid his leg's payout as
    the booking's cancellation fee (_stuck_quote), in full also where a refund made
    outside the service left escrow short of it: support's refund is the platform's cost
    (_platform_gives: rules.fee_platform). The customer gets back what escrow holds
    beyond it (what delivered legs earned stays theirs); the customer and a recipient
    holding a delivery code are told, and nobody of a sum of nothing
    (dispatch.holder_cancelled_no_fee, customer_stuck_no_refund). A hold left on a leg
    stopped now (a later leg taken back from its rider) goes back by its settle, refund or
    not (_settle_left_holds_of).
    The caller holds the legs' locks, then the booking's."""
    from core.services import dispatch

    holder = dispatch.stuck_holder(session, booking)
    assert holder is not None and holder.partner_id is not None, "quoted as stuck"
    # What delivered legs earned leaves escrow first (the quote counted it as earned): the
    # refund below must not take it, or their release would later find escrow short.
    for leg, commission in _unreleased(session, booking):
        _post_release(session, booking, leg, commission, str(actor))
        _enqueue_after_commit(session, "workers.payments.settle_leg_transfer", leg.id,
                              job_id=f"transfer-{leg.id}")
    move_booking(session, booking, BookingStatus.FAILED, actor, reason)
    fee = quote.fee_paise
    dispatch.stuck_relay_ended(session, booking, holder, actor, fee_paise=fee)
    if fee:
        cause = f"cancel:{booking.id}"
        _platform_gives(session, booking, holder, fee, rules.fee_platform, actor=str(actor),
                        cause=cause)
        ledger.post(session, rules.cancellation_fee(booking.id, holder.id, holder.partner_id,
                                                    fee), actor=str(actor), cause=cause)
        _enqueue_after_commit(session, "workers.payments.settle_leg_transfer", holder.id,
                              job_id=f"transfer-{holder.id}")
    # A hold left on a leg stopped now (a later leg taken back from its rider, whose hold
    # waited for a next rider's) goes back, refund or not.
    _settle_left_holds_of(session, booking.id, done={holder.id} if fee else set())
    if quote.refund_paise > 0:
        _open_refund(session, booking, quote.refund_paise, fee, "cancelled", str(actor))
    # Nothing left to give back (support refunded her from the dashboard, or the riders
    # earned it all): she hears the delivery failed, not that Rs 0 comes back.
    key = "dispatch.customer_stuck_cancelled" if quote.refund_paise > 0 else (
        "dispatch.customer_stuck_no_refund")
    notify.notify_customer(session, booking, key, refund_paise=quote.refund_paise,
                           dedupe_key=f"cancelled-{booking.id}")
    dispatch.tell_recipient_not_coming(session, booking, "dispatch.recipient_cancelled",
                                       dedupe_key=f"cancelled-{booking.id}-recipient")
    return quote


def _tell_cancelled(session: Session, booking: Booking, actor: Actor, refund_paise: int,
                    fee_paise: int = 0) -> None:
    """A booking cancelled by someone other than its customer (ops): the customer hears it
    on their channel, with the fee kept for the rider and what comes back to them. A
    customer who cancelled was answered already (the dialog, the IVR, the app). With
    nothing to come back (support refunded her from the dashboard, the rider's fee the
    platform's cost) she hears only that it is cancelled, not that Rs 0 comes back.
    Whoever cancelled, a recipient sent a delivery code hears the booking is cancelled,
    so nobody waits for a parcel or gives the code to anyone."""
    from core.services import dispatch

    if not (actor.kind == "customer" and actor.id == str(booking.customer_id)):
        if fee_paise > 0 and refund_paise > 0:
            key = "bot.cancel.done_fee"
        else:
            key = "bot.cancel.done_refund" if refund_paise > 0 else "bot.cancel.done"
        notify.notify_customer(session, booking, key, refund_paise=refund_paise,
                               fee_paise=fee_paise, dedupe_key=f"cancelled-{booking.id}")
    # Her own words (who we are, the parcel coming to her, the code void), not the
    # customer's status line: she may not know the booking number.
    dispatch.tell_recipient_not_coming(session, booking, "dispatch.recipient_cancelled",
                                       dedupe_key=f"cancelled-{booking.id}-recipient")


# Legs of these states keep their rider's hold: riding (_RIDING), or delivered (its settle
# after the release pays it).
_HOLD_KEPT = (LegStatus.ASSIGNED.value, LegStatus.PICKED_UP.value, LegStatus.LOCKED.value,
              LegStatus.DELIVERED.value)


def _left_holds(booking_id: int | None = None) -> Any:
    """Leg transfer rows (id, leg) still on hold for a leg no rider has now (stopped by a
    cancel, failed, given back): of the booking ``booking_id``, or of any."""
    stmt = select(LegTransfer.id, LegTransfer.leg_id).join(
        Leg, Leg.id == LegTransfer.leg_id).where(
        LegTransfer.status == "on_hold", Leg.status.not_in(_HOLD_KEPT))
    return stmt if booking_id is None else stmt.where(Leg.booking_id == booking_id)


def _settle_left_holds_of(session: Session, booking_id: int, done: set[int]) -> list[int]:
    """Queue the settle (``transfer-<leg>``) of each leg of a booking that closes (a
    cancel, a stuck relay ended, a refund with nothing to ask) whose transfer row is still
    on hold, but those in ``done`` (queued already): the hold of its rider (or of one who
    gave it back, waiting for a next rider's hold that will not come) goes back. Else only
    a refund did that (refund_booking settles the legs before asking it), or a fee (its
    leg's settle): a booking that closed with neither (support refunded it all from the
    dashboard) left the platform's money on hold at the rider for good, and ops could not
    change his payout account (admin: partner_has_jobs). The leg ids queued."""
    legs = [leg_id for _, leg_id in session.execute(
        _left_holds(booking_id).order_by(LegTransfer.leg_id)) if leg_id not in done]
    for leg_id in legs:
        _enqueue_after_commit(session, "workers.payments.settle_leg_transfer", leg_id,
                              job_id=f"transfer-{leg_id}")
    return legs


# A rider's leg that earns the cancellation fee: taken, or locked at the pickup after
# wrong codes (he came to the pickup all the same).
_FEE_LEG_STATES = (LegStatus.ASSIGNED.value, LegStatus.LOCKED.value)


def _fee_leg(session: Session, booking: Booking) -> Leg | None:
    """The leg whose rider a cancellation fee would pay: the first one taken (or locked)."""
    return session.scalar(select(Leg).where(
        Leg.booking_id == booking.id, Leg.status.in_(_FEE_LEG_STATES),
        Leg.partner_id.is_not(None)).order_by(Leg.sequence).limit(1))


def _rider_late(session: Session, leg: Leg) -> bool:
    """True if the fee leg's rider is late for the pickup, by dispatch's rule for "the rider
    is late" (dispatch.pickup_late): a first leg a pickup window past its latest
    assignment, or told late for it already. A leg locked at the pickup is judged when it
    was locked (the rider was there then)."""
    from core.adapters.models import OutboxMessage, TransitionLog
    from core.services import dispatch

    if leg.sequence != 1:
        return False  # a relay's later leg: its parcel comes at a Point, not from the sender
    assigned = session.scalar(select(TransitionLog).where(
        TransitionLog.entity == "leg", TransitionLog.entity_id == leg.id,
        TransitionLog.to_status == LegStatus.ASSIGNED.value)
        .order_by(TransitionLog.id.desc()).limit(1))
    if assigned is None:
        return False
    told = session.scalar(select(OutboxMessage.id).where(
        OutboxMessage.booking_id == leg.booking_id,
        OutboxMessage.dedupe_key.like(f"leg-{leg.id}-a{assigned.id}-late-%")).limit(1))
    if told is not None:
        return True
    at = clock.now()
    if leg.status == LegStatus.LOCKED.value:
        at = session.scalar(select(func.max(TransitionLog.at)).where(
            TransitionLog.entity == "leg", TransitionLog.entity_id == leg.id,
            TransitionLog.to_status == LegStatus.LOCKED.value,
            TransitionLog.id > assigned.id)) or at
    return at - assigned.at >= dispatch.pickup_window()


def _captures(session: Session, booking_id: int) -> list[tuple[str, int]]:
    """(payment id, amount) of each payment captured for the booking, oldest first."""
    from core.adapters.payment_models import LedgerPosting, LedgerTransaction

    return [(str(pid), int(amount)) for pid, amount in session.execute(
        select(LedgerTransaction.gateway_ref, LedgerPosting.amount_paise)
        .join(LedgerPosting, LedgerPosting.transaction_id == LedgerTransaction.id)
        .where(LedgerTransaction.booking_id == booking_id,
               LedgerTransaction.kind == rules.EntryKind.CAPTURE.value,
               LedgerPosting.account_kind == rules.AccountKind.ESCROW.value)
        .order_by(LedgerTransaction.id))]


def _capture_payment_id(session: Session, booking_id: int) -> str | None:
    """The payment the booking is settled on: its partners' transfers and its refund come
    out of it. The one that paid the link (none: the link was never paid in time), else,
    without a link, the first capture not given back as an extra payment."""
    link = session.scalar(select(PaymentLink).where(PaymentLink.booking_id == booking_id))
    if link is not None:
        return link.payment_id
    extra = set(session.scalars(select(Refund.payment_id).where(
        Refund.booking_id == booking_id, Refund.reason == EXTRA_PAYMENT)))
    return next((pid for pid, _ in _captures(session, booking_id) if pid not in extra), None)


def _kept_capture(session: Session, booking_id: int) -> bool:
    """True if the booking holds a captured payment that is not being given back as an
    extra payment (late, second, or of the wrong amount): money that may pay it. One
    refunded in full does not keep the booking from expiring."""
    extra = set(session.scalars(select(Refund.payment_id).where(
        Refund.booking_id == booking_id, Refund.reason == EXTRA_PAYMENT)))
    return any(pid not in extra for pid, _ in _captures(session, booking_id))


# The refund of a payment the booking was not settled on: it goes back against its own id.
EXTRA_PAYMENT = "late_payment"
# A partner payout reversed at the gateway, given back to the customer by ops' decision:
# reserved out of the booking's reversed payouts, not its escrow (resolve_reversed_payout).
REVERSED_PAYOUT = "reversed_payout"
# A refund of one of the booking's payments made outside the service (in the Razorpay
# dashboard, without our notes): recorded as processed when the gateway says so
# (record_outside_refund); never asked of the gateway by us, never retried.
OUTSIDE_REFUND = "outside"
# Refunds that are no part of the booking's own (cancelled, no partner): each its own chain.
OWN_CHAIN_REFUNDS = (EXTRA_PAYMENT, REVERSED_PAYOUT, OUTSIDE_REFUND)
OPEN_REFUND = ("requested", "pending")


def _open_refund(session: Session, booking: Booking, amount: int, fee: int, reason: str,
                 actor: str, payment_id: str | None = None, leg_id: int | None = None
                 ) -> Refund | None:
    """Reserve a refund of ``payment_id`` (default: the paying payment) out of escrow and
    enqueue the gateway call: once per payment and kind (an extra payment's refund never
    stands in for the cancellation's; a reversed payout's is once per leg ``leg_id``). A
    booking has one open refund at a time: while another is open this one waits, and
    _open_due_refund makes it once that one settles. None under REFUND_MIN_PAISE."""
    payment_id = payment_id or _capture_payment_id(session, booking.id)
    if payment_id is None:
        return None
    existing = _chain_latest(session, booking.id, payment_id, reason, leg_id)
    if existing is not None:
        return existing
    if amount <= 0:
        return None
    if amount < REFUND_MIN_PAISE:
        if reason not in OWN_CHAIN_REFUNDS:  # the booking's own: nothing else can take it
            _keep_remainder(session, booking, amount, actor)
            return None
        # Nothing the gateway would make: it stays where it is, for a person to look at.
        log.error("refund under the gateway's minimum not asked",
                  extra={"booking_id": booking.id, "reason": reason, "amount": amount})
        return None
    if _open_row(session, booking.id) is not None:
        log.info("refund waits for the booking's open refund",
                 extra={"booking_id": booking.id, "reason": reason})
        return None
    return _reserve_attempt(session, booking, payment_id=payment_id, amount=amount, fee=fee,
                            reason=reason, actor=actor, leg_id=leg_id)


def _keep_remainder(session: Session, booking: Booking, amount: int, actor: str) -> None:
    """``amount``, what is left in a closed booking's escrow of its own payment, under the
    gateway's least refund (1-99 paise, left by support's refund of an amount not in
    whole rupees): the platform's commission takes it (rules.remainder_kept), as no
    refund can give it back and no partner earned it. Nothing for 0 or a refundable sum."""
    if 0 < amount < REFUND_MIN_PAISE and ledger.post(
            session, rules.remainder_kept(booking.id, amount), actor=actor,
            cause=f"remainder:{booking.id}"):
        log.info("the rest of a payment under the least refund kept by the platform",
                 extra={"booking_id": booking.id, "amount": amount})


def _chain(reason: str) -> Any:
    """Refund rows of the same refund as ``reason`` (an extra payment's, a reversed
    payout's, or the booking's)."""
    return (Refund.reason == reason) if reason in OWN_CHAIN_REFUNDS else (
        Refund.reason.not_in(OWN_CHAIN_REFUNDS))


def _chain_latest(session: Session, booking_id: int, payment_id: str, reason: str,
                  leg_id: int | None = None) -> Refund | None:
    """The latest attempt of one refund (of ``payment_id``, of the kind of ``reason``; a
    reversed payout's, of the leg ``leg_id``: each leg's reversed payout is its own)."""
    stmt = select(Refund).where(
        Refund.booking_id == booking_id, Refund.payment_id == payment_id, _chain(reason))
    if reason == REVERSED_PAYOUT:
        assert leg_id is not None, "a reversed payout's refund names its leg"
        stmt = stmt.where(_of_leg(leg_id))
    return session.scalar(stmt.order_by(Refund.attempt.desc()).limit(1))


def _of_leg(leg_id: int) -> Any:
    """Refund rows whose reservation (a reversed payout's refund) names the leg."""
    from core.adapters.payment_models import LedgerPosting, LedgerTransaction

    return func.concat("refund:", Refund.id, ":requested").in_(
        select(LedgerTransaction.idempotency_key)
        .join(LedgerPosting, LedgerPosting.transaction_id == LedgerTransaction.id)
        .where(LedgerTransaction.kind == rules.EntryKind.REVERSAL_REFUND_ASKED.value,
               LedgerPosting.leg_id == leg_id))


def _cut() -> Any:
    """Refund rows of attempts _cut_attempt ended (refused for more than the payment had
    left, asked again at once for the rest): no try, as its docstring says. Known by the
    cause of their settling entry (under its unique key), which nothing rewrites."""
    from core.adapters.payment_models import LedgerTransaction

    settled = aliased(LedgerTransaction)  # not the caller's own join of the ledger
    return select(settled.id).where(
        settled.idempotency_key == func.concat("refund:", Refund.id, ":settled"),
        settled.cause == func.concat("refund:", Refund.id, ":cut")).exists()


def _tries(session: Session, refund: Refund) -> int:
    """How many attempts the refund ``refund`` belongs to has had (a cut attempt is none).
    A reversed payout's refund is one ops decision (_decision_tries), not every refund of
    its kind."""
    if refund.reason == REVERSED_PAYOUT:
        return _decision_tries(session, refund)
    return int(session.scalar(select(func.count()).select_from(Refund).where(
        Refund.booking_id == refund.booking_id, Refund.payment_id == refund.payment_id,
        _chain(refund.reason), Refund.attempt <= refund.attempt, ~_cut())) or 0)


def _decision_cause(leg_id: int) -> str:
    """The ledger cause of the first attempt of ops' decision to refund a leg's reversed
    payout (resolve_reversed_payout); its retries' say ``refund:...:attempt-N``."""
    return f"leg:{leg_id}:reversal:refund"


def _decision_tries(session: Session, refund: Refund) -> int:
    """How many attempts the ops decision a REVERSED_PAYOUT refund attempt belongs to has
    had: the attempts of its leg since (and with) the decision's first, whose reservation
    has the decision's cause, less the cut ones (_cut). Earlier decisions (processed or
    given up) are not counted."""
    from core.adapters.payment_models import LedgerPosting, LedgerTransaction

    rows = session.execute(
        select(Refund.attempt, LedgerPosting.leg_id, LedgerTransaction.cause,
               _cut().label("cut")).distinct()
        .join(LedgerTransaction, LedgerTransaction.idempotency_key
              == func.concat("refund:", Refund.id, ":requested"))
        .join(LedgerPosting, LedgerPosting.transaction_id == LedgerTransaction.id)
        .where(Refund.booking_id == refund.booking_id, Refund.payment_id == refund.payment_id,
               Refund.reason == REVERSED_PAYOUT, Refund.attempt <= refund.attempt,
               LedgerPosting.leg_id.is_not(None))
        .order_by(Refund.attempt.desc())).all()
    leg_id = _refund_leg(session, refund)
    tries = 0
    for _attempt, leg, cause, cut in rows:
        if leg != leg_id:
            continue
        tries += 0 if cut else 1
        if cause == _decision_cause(leg_id):
            break
    return tries


def _open_row(session: Session, booking_id: int) -> Refund | None:
    """The booking's open refund attempt (at most one: uq_payment_refunds_booking_open)."""
    return session.scalar(select(Refund).where(Refund.booking_id == booking_id,
                                               Refund.status.in_(OPEN_REFUND)))


def _latest_refund(session: Session, booking_id: int) -> Refund | None:
    """The booking's latest refund attempt."""
    return session.scalar(select(Refund).where(Refund.booking_id == booking_id)
                          .order_by(Refund.attempt.desc()).limit(1))


def _extra_unrefunded(session: Session, booking_id: int, paying: str | None
                      ) -> dict[str, int]:
    """Extra payments (not the paying one) whose money is still in escrow: no refund of
    theirs is open or processed (ours, or one made outside the service). Payment id ->
    amount."""
    gone = dict(session.execute(
        select(Refund.payment_id, func.sum(Refund.amount_paise)).where(
            Refund.booking_id == booking_id,
            Refund.reason.in_((EXTRA_PAYMENT, OUTSIDE_REFUND)),
            Refund.status.in_((*OPEN_REFUND, "processed"))).group_by(Refund.payment_id)).all())
    return {pid: amount - int(gone.get(pid) or 0)
            for pid, amount in _captures(session, booking_id)
            if pid != paying and amount > int(gone.get(pid) or 0)}


def _open_main_refund(session: Session, booking: Booking, reason: str, actor: str
                      ) -> Refund | None:
    """The booking's own refund (cancelled, no partner): what is left in escrow of its
    paying payment (extra payments go back on their own)."""
    paying = _capture_payment_id(session, booking.id)
    amount = ledger.balance(session, rules.escrow(booking.id)) - sum(
        _extra_unrefunded(session, booking.id, paying).values())
    fee = ledger.booking_summary(session, booking.id)["fee_paise"]
    return _open_refund(session, booking, amount, fee, reason, actor, payment_id=paying)


def _open_due_refund(session: Session, booking: Booking) -> Refund | None:
    """Once no refund of the booking is open, start the next that waits (see _open_refund):
    an extra payment not given back yet, else the refund of a cancelled or failed booking.
    The caller holds the booking's lock."""
    if _open_row(session, booking.id) is not None:
        return None
    paying = _capture_payment_id(session, booking.id)
    for pid, amount in _extra_unrefunded(session, booking.id, paying).items():
        if _chain_latest(session, booking.id, pid, EXTRA_PAYMENT) is None:
            return _open_refund(session, booking, amount, 0, EXTRA_PAYMENT, "system",
                                payment_id=pid)
    reason = {BookingStatus.CANCELLED.value: "cancelled",
              BookingStatus.FAILED.value: "no_partner"}.get(booking.status)
    if reason is None or paying is None:
        return None
    return _open_main_refund(session, booking, reason, "system")


def _refund_job_id(booking_id: int, attempt: int) -> str:
    return f"refund-{booking_id}" if attempt == 1 else f"refund-{booking_id}-{attempt}"


def _reserve_attempt(session: Session, booking: Booking, *, payment_id: str, amount: int,
                     fee: int, reason: str, actor: str, leg_id: int | None = None,
                     cause: str | None = None) -> Refund:
    """A new attempt row (numbered across all the booking's refunds), its reservation out
    of escrow (of the leg's reversed payouts for a REVERSED_PAYOUT refund) under
    ``cause`` (default: the reason and attempt), and its gateway call after commit."""
    last = _latest_refund(session, booking.id)
    attempt = last.attempt + 1 if last is not None else 1
    refund = Refund(booking_id=booking.id, attempt=attempt, payment_id=payment_id,
                    amount_paise=amount, fee_paise=fee, reason=reason, actor=actor[:60],
                    status="requested")
    session.add(refund)
    session.flush()
    if reason == REVERSED_PAYOUT:
        assert leg_id is not None, "a reversed payout's refund names its leg"
        entry = rules.reversal_refund_asked(booking.id, refund.id, amount, leg_id)
    else:
        entry = rules.refund_requested(booking.id, refund.id, amount)
    ledger.post(session, entry, actor=actor, cause=cause or (
        f"refund:{reason}" + (f":attempt-{attempt}" if attempt > 1 else "")))
    _enqueue_after_commit(session, "workers.payments.refund_booking", booking.id, reason,
                          job_id=_refund_job_id(booking.id, attempt))
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
            # The job ran after the payment window (workers down, gateway retries): the
            # customer never had a link, so they hear that, not "the time to pay is over".
            _close_unlinked(session, booking, "payment time ran out before the link was made")
            return "expired"
        if expire_by < now + LINK_MIN_LEAD:
            # The job ran late: the customer still gets a link they have time to pay (and
            # one Razorpay accepts).
            expire_by = booking.expires_at = now + LINK_MIN_LEAD
        person = session.get(Person, booking.customer_id)
        payload = _link_payload(booking, person, expire_by)
        reference = booking.reference

    c = gw.client()
    outcome = "created"
    try:
        entity = c.payment_link.create(payload)
    except gw.BadRequestError as exc:
        # A previous attempt may have created it (our answer was lost): Razorpay refuses
        # the reference again, in words that may change, so any refusal looks first.
        found = c.payment_link.all({"reference_id": reference}).get("payment_links") or []
        if not found:
            if gw.is_duplicate_reference(exc):
                raise  # not listed yet: the retry finds it
            _link_refused(booking_id, str(exc))
            return "refused"
        entity = found[0]
        if gw.note_int(entity, "booking_id") != booking_id or (
                entity.get("amount") != payload["amount"]):
            # The reference is taken by a link that is not this booking's (another system
            # on the same account): sending it would ask the customer to pay for that.
            _link_refused(booking_id, f"reference {reference} is taken by another link")
            return "refused"
        entity, closed = _give_found_link_time(c, booking_id, entity, payload["expire_by"])
        if closed:
            outcome = "refused"

    with transaction() as session:
        booking = ledger.lock_booking(session, booking_id)  # against a cancel meanwhile
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
        elif link.status == "created":
            # Closed while the link was being made (cancelled, or closed by the sweep): its
            # cancel job found no link to cancel, and nobody may pay this one.
            _enqueue_after_commit(session, "workers.payments.cancel_payment_link", booking_id,
                                  job_id=f"paylink-cancel-{booking_id}")
    _ensure_periodic_jobs()
    log.info("payment link ready", extra={"booking_id": booking_id, "outcome": outcome})
    return outcome


# The least time to pay a link found from a lost attempt may leave her, when the gateway
# will not give it the booking's window (_give_found_link_time): enough to open the link
# and pay by UPI. With less she is not sent it: the booking closes as one without a link.
FOUND_LINK_MIN_LEFT = timedelta(minutes=5)


def _link_expire_by(entity: dict) -> int:
    raw = entity.get("expire_by")
    return raw if isinstance(raw, int) and not isinstance(raw, bool) else 0


def _give_found_link_time(c, booking_id: int, entity: dict, expire_by: int
                          ) -> tuple[dict, bool]:
    """A link found from a lost attempt (create_payment_link) has that attempt's expire_by:
    a job late again (a worker backlog) would send it with a minute left, and its expiry
    would close the booking that gave her the LINK_MIN_LEAD she was promised. Less time
    left than the booking's window (``expire_by``, unix time): the link is given it
    (Update Standard Payment Link, PATCH /v1/payment_links/{id}). Refused (it expired or
    was paid meanwhile, or the gateway would not), the booking's time to pay follows the
    link's as the gateway now shows it, if FOUND_LINK_MIN_LEFT is left; else the booking
    closes as one whose link could not be made (_link_refused: she is told to book again,
    ops hear why) and the link, saved, is cancelled by the caller's path for a booking
    closed meanwhile. A paid link is kept as it is: its payment is hers. Returns the link
    as it is now, and whether the booking was closed. A gateway error other than a
    refusal raises: the job's retry finds the link again."""
    if entity.get("status") in ("paid", "partially_paid") or (
            entity.get("status") == "created" and _link_expire_by(entity) >= expire_by):
        return entity, False
    error = f"the link found from a lost attempt is {entity.get('status')}"
    if entity.get("status") == "created":
        try:
            edited = c.payment_link.edit(entity["id"], {"expire_by": expire_by})
        except gw.BadRequestError as exc:
            error = f"the link found from a lost attempt could not be given more time: {exc}"
            entity = c.payment_link.fetch(entity["id"])
        else:
            log.warning("a link found from a lost attempt was given the booking's window",
                        extra={"booking_id": booking_id})
            return edited, False
    if entity.get("status") in ("paid", "partially_paid"):
        return entity, False
    left = _link_expire_by(entity) - int(clock.now().timestamp())
    if entity.get("status") == "created" and left >= FOUND_LINK_MIN_LEFT.total_seconds():
        with transaction() as session:
            booking = ledger.lock_booking(session, booking_id)
            if booking.status == BookingStatus.AWAITING_PAYMENT.value:
                booking.expires_at = datetime.fromtimestamp(_link_expire_by(entity), UTC)
        log.warning("a link found from a lost attempt keeps its time: so does the booking",
                    extra={"booking_id": booking_id, "left_s": left})
        return entity, False
    _link_refused(booking_id, error)
    return entity, True


def _link_refused(booking_id: int, error: str) -> None:
    """The gateway refused the booking's link (no retry changes a 400): the booking cannot
    be paid, so it closes; the customer is told to book again or call, and ops hear why."""
    log.error("payment link refused", extra={"booking_id": booking_id})
    with transaction() as session:
        booking = ledger.lock_booking(session, booking_id)
        if booking.status != BookingStatus.AWAITING_PAYMENT.value:
            return
        _close_unlinked(session, booking, "the gateway refused the payment link", error)


NO_LINK_IN_TIME = "no link before the payment window closed"


def _close_unlinked(session: Session, booking: Booking, reason: str,
                    error: str = NO_LINK_IN_TIME) -> None:
    """Close a booking awaiting payment that never got its link (refused, or not made in
    its payment window): the customer hears the link could not be made (never "the time
    to pay is over"), ops hear why; each once, whichever path closes it."""
    from core.services.dispatch import alert_ops  # dispatch imports payments

    move_booking(session, booking, BookingStatus.EXPIRED, SYSTEM, reason)
    notify.notify_customer(session, booking, "payment.link_failed",
                           dedupe_key=f"paylink-{booking.id}-failed")
    if error == NO_LINK_IN_TIME:  # our own reason: said in the operator's language
        alert_ops(session, "payment.ops_link_timeout", booking_id=booking.id,
                  dedupe_key=f"paylink-{booking.id}-refused", ref=booking.reference)
        return
    alert_ops(session, "payment.ops_link_refused", booking_id=booking.id,
              dedupe_key=f"paylink-{booking.id}-refused", ref=booking.reference,
              error=alert_error(error))


def _send_link(session: Session, booking: Booking, link: PaymentLink) -> None:
    if booking.status != BookingStatus.AWAITING_PAYMENT.value:
        return
    notify.notify_customer(session, booking, "pay.link", total_paise=booking.total_paise,
                           url=link.short_url, minutes=minutes_to_pay(booking, link),
                           dedupe_key=f"paylink-{booking.id}")


def cancel_payment_link(booking_id: int) -> str:
    """Job: a booking cancelled or expired before payment: cancel its link so it cannot be
    paid. A link the gateway says is paid (paid just before, its webhook late or lost) has
    its payment recorded as the webhook would: record_capture gives back what the closed
    booking cannot take."""
    with transaction() as session:
        link = session.scalar(select(PaymentLink).where(PaymentLink.booking_id == booking_id))
        if link is None or link.status != "created":
            return "nothing-to-cancel"
        gateway_id = link.gateway_id
    try:
        entity = gw.client().payment_link.cancel(gateway_id)
    except gw.BadRequestError:
        entity = gw.client().payment_link.fetch(gateway_id)
    if entity.get("status") == "paid":
        return _record_link_payments(booking_id, entity, f"link-cancel:{gateway_id}")
    with transaction() as session:
        link = session.scalar(select(PaymentLink).where(PaymentLink.booking_id == booking_id)
                              .with_for_update())
        assert link is not None
        if link.status == "created":
            link.status = entity.get("status") or "cancelled"
        return link.status


LINK_WITHOUT_PAYMENT = "paid-link-without-payment"


def _record_link_payments(booking_id: int, entity: dict, cause: str) -> str:
    """The gateway says the booking's link is paid: record its captured payments through
    record_capture, the webhooks' path (keyed by the payment: once, whichever comes first).
    Returns the last outcome, or LINK_WITHOUT_PAYMENT if the link lists no captured one."""
    outcome = LINK_WITHOUT_PAYMENT
    for p in entity.get("payments") or []:
        if not isinstance(p, dict) or p.get("status") != "captured":
            continue
        # A payment whose id or amount our columns cannot hold is malformed, not recorded
        # (it would fail its job on every retry); the reconciliation reports it.
        pid, amount = p.get("payment_id"), _paise(p, "amount")
        if not isinstance(pid, str) or not 0 < len(pid) <= GATEWAY_ID_MAX or not amount:
            continue
        outcome = record_capture(booking_id, pid, amount, cause=cause, link_status="paid",
                                 paid_at=_paid_at(p))
    if outcome == LINK_WITHOUT_PAYMENT:
        log.error("the gateway says a link is paid but lists no captured payment",
                  extra={"booking_id": booking_id})
    else:
        log.warning("a paid link was recorded from the gateway, not from its webhook",
                    extra={"booking_id": booking_id, "outcome": outcome})
    return outcome


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
    except (ValueError, RecursionError):  # RecursionError: a body nested thousands deep
        raise ValidationError("the body is not JSON", code="bad_json") from None
    if not isinstance(data, dict) or not isinstance(data.get("event"), str) \
            or not data["event"].isprintable():  # a NUL cannot be stored in a text column
        raise ValidationError("the body has no event name", code="bad_event", field="event")
    if not event_id or len(event_id) > 64 or not event_id.isprintable():
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
                                              job_id=event_job_id(event_id),
                                              retry=GATEWAY_RETRY))
    return WebhookResult("accepted", event)


_JOB_ID_SAFE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def event_job_id(event_id: str) -> str:
    """The job id of a stored event: ``rzp-event-<event id>``. The header is not signed and
    RQ takes only letters, digits, "_" and "-" in an id: any other id is named by its hash
    (still one job per event)."""
    if _JOB_ID_SAFE.fullmatch(event_id):
        return f"rzp-event-{event_id}"
    return "rzp-event-h" + hashlib.sha256(event_id.encode()).hexdigest()[:32]


def _entity(data: dict, name: str) -> dict:
    """``payload.<name>.entity`` of an event; {} where any level is missing or no object
    (the body is signed, but a malformed event must settle with an outcome, not crash its
    job on every retry)."""
    ent: object = data
    for level in ("payload", name, "entity"):
        ent = ent.get(level) if isinstance(ent, dict) else None
    return ent if isinstance(ent, dict) else {}


def _gateway_id(entity: dict) -> str | None:
    """The gateway's id of an entity ("rfnd_...", "trf_..."): a printable string that fits
    our columns, else None (nothing to key an effect on; a NUL cannot be stored)."""
    raw = entity.get("id")
    return raw if isinstance(raw, str) and 0 < len(raw) <= GATEWAY_ID_MAX \
        and raw.isprintable() else None


GATEWAY_ID_MAX = 40  # gateway ids in our tables (String(40)); Razorpay's are 18-20


def _note_str(entity: dict, name: str) -> str | None:
    notes = entity.get("notes")
    raw = notes.get(name) if isinstance(notes, dict) else None
    return raw if isinstance(raw, str) and 0 < len(raw) <= GATEWAY_ID_MAX else None


# The largest amount we take from the gateway: ₹10 crore, the largest sum the service
# takes anywhere (a parcel's declared value, api.schemas), thousands of times any fare.
# Beyond it an event is malformed: its amount could break the ledger's BIGINT (or, added
# up, its balances) and fail its job on every retry. A real payment beyond it is not lost
# unseen: it is logged, and the reconciliation reports it missing in the ledger.
GATEWAY_AMOUNT_MAX = 10_00_00_000_00


def _paise(entity: dict, name: str) -> int | None:
    """An amount in paise as the gateway sends it (a whole number from 0 to
    GATEWAY_AMOUNT_MAX), else None."""
    raw = entity.get(name)
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= GATEWAY_AMOUNT_MAX:
        return raw
    return None


def _bad_amount(entity: dict, *names: str) -> bool:
    """The entity has one of ``names`` but not as an amount we take."""
    return any(entity.get(n) is not None and _paise(entity, n) is None for n in names)


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
    """Which booking of ours a payment belongs to: our notes, our link row, else ask the
    gateway. A booking id in notes counts only with that booking's reference beside it
    (_named_booking): another system on the same Razorpay account names bookings of its
    own numbering. A link's reference_id alone names none either: that system's link may
    carry the reference of a booking of ours that never got a link (a quote not
    confirmed), and Razorpay refuses a reference only once it is taken. Our links carry
    our notes, and have our row by their id."""
    booking_id = _named_booking([link or {}, payment])
    if booking_id:
        return booking_id
    pid, plink = _gateway_id(payment), _gateway_id(link or {})
    with transaction() as session:
        row = session.scalar(select(PaymentLink.booking_id).where(
            (PaymentLink.payment_id == pid) | (PaymentLink.gateway_id == plink)))
        if row is not None:
            return row
    if pid:
        links = gw.client().payment_link.all({"payment_id": pid}).get("payment_links") or []
        return _named_booking([e for e in links if isinstance(e, dict)])
    return None


def _named_booking(entities: list[dict]) -> int | None:
    """The first booking of ours an entity names (one query), else None: its notes'
    booking_id with that booking's reference beside it (our links and their payments
    carry both in their notes; a link also as its reference_id). A booking id alone is
    not ours: another system on the account numbers its bookings too."""
    return next((b for b in named_bookings(entities) if b is not None), None)


def named_bookings(entities: list[dict]) -> list[int | None]:
    """For each entity, the booking of ours it names by _named_booking's rule (its notes'
    booking_id with that booking's reference beside it), else None; one query for them
    all (the reconciliation asks it of a day's payments)."""
    named: list[tuple[int, set[str]] | None] = []
    for entity in entities:
        booking_id = gw.note_int(entity, "booking_id")
        link_ref = entity.get("reference_id")  # a malformed event's may be a list: unhashable
        refs = {_note_str(entity, "reference"), link_ref if isinstance(link_ref, str) else None}
        named.append(None if booking_id is None else
                     (booking_id, {r for r in refs if isinstance(r, str) and r}))
    ids = {n[0] for n in named if n is not None}
    if not ids:
        return [None] * len(named)
    with transaction() as session:
        ours = dict(session.execute(select(Booking.id, Booking.reference).where(
            Booking.id.in_(ids))).tuples().all())
    return [n[0] if n is not None and ours.get(n[0]) in n[1] else None for n in named]


def _on_capture(data: dict, cause: str) -> str:
    payment, link = _entity(data, "payment"), _entity(data, "payment_link") or None
    if payment.get("status") not in (None, "captured") and data.get("event") == "payment.captured":
        return "not-captured"
    pid, amount = _gateway_id(payment), _paise(payment, "amount")
    if pid is None or not amount:
        log.warning("payment event without a usable id or amount")
        return "bad-payload"
    booking_id = _booking_for_payment(payment, link)
    if booking_id is None:
        log.warning("captured payment of no booking of ours")
        return "unknown-payment"
    return record_capture(booking_id, pid, amount, link_status=(link or {}).get("status"),
                          cause=cause, fee=_fee(payment, amount), paid_at=_paid_at(payment))


def _paid_at(payment: dict) -> datetime | None:
    """When the gateway took the payment (its ``created_at``, unix time), if it says."""
    raw = payment.get("created_at")
    if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
        return None
    return datetime.fromtimestamp(raw, UTC)


def _fee(payment: dict, amount: int) -> int | None:
    """Razorpay's fee on a captured payment (``fee``: paise, its GST ``tax`` included),
    None where the payment says none (an older payload: null) or one we cannot take (more
    than the payment, or not an amount): logged, the reconciliation sees the rest."""
    fee = _paise(payment, "fee")
    if fee is None or fee > amount:
        if payment.get("fee") is not None:
            log.error("captured payment with a fee we cannot take", extra={"amount": amount})
        return None
    return fee


def _book_fee(session: Session, booking_id: int, payment_id: str, fee: int | None,
              cause: str) -> None:
    """The platform's cost of a captured payment: Razorpay's fee (rules.gateway_fee),
    once per payment whichever path tells it first; nothing for a fee of 0 or none. A fee
    told otherwise than the one booked is logged (by ledger.post) and left to the
    reconciliation (``fee_differs``): it must not keep the payment from being recorded."""
    if fee:
        try:
            ledger.post(session, rules.gateway_fee(booking_id, payment_id, fee),
                        actor="gateway:razorpay", cause=cause)
        except rules.EntryConflict:
            pass


def record_fee(payment: dict, cause: str) -> bool:
    """The reconciliation found a captured payment of ours recorded without its fee (its
    webhook lost: the link's own list of payments has no fee): the fee is booked as the
    webhook would have. True if an entry was made now."""
    pid, amount = _gateway_id(payment), _paise(payment, "amount")
    if pid is None or not amount:
        return False
    fee = _fee(payment, amount)
    if not fee:
        return False
    from core.adapters.payment_models import LedgerTransaction

    with transaction() as session:
        booking_id = session.scalar(select(LedgerTransaction.booking_id).where(
            LedgerTransaction.idempotency_key == f"capture:{pid}"))
        if booking_id is None:  # not captured here (yet): its capture books both
            return False
        ledger.lock_booking(session, booking_id)
        try:
            return ledger.post(session, rules.gateway_fee(booking_id, pid, fee),
                               actor="gateway:razorpay", cause=cause)
        except rules.EntryConflict:  # booked since, told otherwise: fee_differs says so
            return False


def record_capture(booking_id: int, payment_id: str, amount: int, *, cause: str,
                   link_status: str | None = None, fee: int | None = None,
                   paid_at: datetime | None = None) -> str:
    """A captured payment goes into the booking's escrow (once); the booking is paid.
    Razorpay's ``fee`` on it, when told, is booked beside it (_book_fee): also for a
    payment recorded before by a path that did not know its fee. ``paid_at``: when the
    gateway took it (a payment made in time, whose word came after the booking expired,
    is not called late: _refused_payment_notice)."""
    with transaction() as session:
        booking = ledger.lock_booking(session, booking_id)
        new = ledger.post(session, rules.capture(booking_id, payment_id, amount),
                          actor="gateway:razorpay", cause=cause)
        _book_fee(session, booking_id, payment_id, fee, cause)
        link = session.scalar(select(PaymentLink).where(PaymentLink.booking_id == booking_id))
        status = booking.status
        pays = new and status == BookingStatus.AWAITING_PAYMENT.value and (
            amount == booking.total_paise)
        # The link is paid when the gateway says so, or by the payment that pays the
        # booking; not by a wrong amount given back (the link still takes the right one).
        if link is not None and (link_status == "paid" or (pays and link.status == "created")):
            link.status = "paid"
        if not new:
            return "duplicate-capture"
        if pays:
            if link is not None:
                link.payment_id = payment_id  # the paying payment (_capture_payment_id)
            move_booking(session, booking, BookingStatus.PAID, SYSTEM, "payment captured")
            notify.notify_customer(session, booking, "payment.received",
                                   total_paise=amount, dedupe_key=f"paid-{booking.id}")
            _enqueue_after_commit(session, "workers.dispatch.start_dispatch", booking.id,
                                  job_id=f"dispatch-{booking.id}", retry=None)
            return "paid"
        # Paid too late (expired, cancelled), twice or the wrong amount: give it all back,
        # out of this very payment.
        _open_refund(session, booking, amount, 0, EXTRA_PAYMENT, "system",
                     payment_id=payment_id)
        log.warning("payment on a booking that cannot take it; refunding",
                    extra={"booking_id": booking_id, "status": status})
        # The customer hears now why the money goes back, not only days later when the
        # refund settles (payment.refunded): once per payment.
        notice = _refused_payment_notice(session, booking, link, paid_at)
        if notice is not None:
            notify.notify_customer(session, booking, notice, refund_paise=amount,
                                   total_paise=booking.total_paise,
                                   dedupe_key=f"late-pay-{payment_id}")
        return "refund-late-payment"


# A wrong amount's notice asks for the right one by the same link only while the link
# has at least this long to run: the customer must have time to read it and pay.
PAY_AGAIN_MIN_LEFT = timedelta(minutes=5)


def _link_payable(booking: Booking, link: PaymentLink | None) -> bool:
    """True if the customer may still be asked to pay by ``link``: it is open, for the
    booking's price, and has PAY_AGAIN_MIN_LEFT to run at least."""
    return (link is not None and link.status == "created"
            and link.amount_paise == booking.total_paise
            and (link.expire_by is None
                 or link.expire_by > clock.now() + PAY_AGAIN_MIN_LEFT))


def _refused_payment_notice(session: Session, booking: Booking, link: PaymentLink | None,
                            paid_at: datetime | None = None) -> str | None:
    """The catalog key telling the customer why their payment goes back (the booking's
    status as the payment came), or None where no payment could be expected (a draft)."""
    status = BookingStatus(booking.status)
    if status is BookingStatus.CANCELLED:
        if _made_before(session, booking, paid_at, BookingStatus.CANCELLED):
            # Made before the cancel (pending at her bank as she cancelled), its word
            # came after: "paid after the booking was cancelled" is not true.
            return "payment.expired_unconfirmed"
        return "payment.after_cancel"  # the link was paid as (or after) it was cancelled
    if status is BookingStatus.EXPIRED:
        if _made_before_closing(session, booking, paid_at):
            # Made in time, but its word came after the booking closed: pending at her
            # bank when the gateway said the link was not paid, or its webhooks held back
            # by an outage while the sweep closed the booking unasked. Not late.
            return "payment.expired_unconfirmed"
        return "payment.after_expiry"  # after the time to pay was over
    if status is BookingStatus.AWAITING_PAYMENT:
        # Not the booking's price. The link (accept_partial off, its amount the price) is
        # not paid by it and still takes the right amount, unless it has closed meanwhile.
        payable = _link_payable(booking, link)
        return "payment.wrong_amount" if payable else "payment.wrong_amount_no_link"
    if status in PAID_STATES or status in (BookingStatus.REFUNDED, BookingStatus.FAILED):
        return "payment.extra"  # paid before (refunded or failed ones too)
    return None


def _made_before_closing(session: Session, booking: Booking,
                         paid_at: datetime | None) -> bool:
    """Whether a payment on the expired ``booking`` was made in its time to pay and before
    it closed (closed early: its link cancelled at the gateway). ``paid_at`` is the
    payment's own time at the gateway (_paid_at: whole seconds), not when its word came: a
    payment in the second the booking closed, or with no time, is not known to be."""
    if paid_at is None or booking.expires_at is None or paid_at > booking.expires_at:
        return False
    return _made_before(session, booking, paid_at, BookingStatus.EXPIRED)


def _made_before(session: Session, booking: Booking, paid_at: datetime | None,
                 closed: BookingStatus) -> bool:
    """Whether a payment made at ``paid_at`` (the gateway's time, whole seconds) was made
    before ``booking`` last moved to ``closed``, a whole second at least."""
    if paid_at is None:
        return False
    from core.adapters.models import TransitionLog

    closed_at = session.scalar(select(func.max(TransitionLog.at)).where(
        TransitionLog.entity == "booking", TransitionLog.entity_id == booking.id,
        TransitionLog.to_status == closed.value))
    return closed_at is None or paid_at + timedelta(seconds=1) <= closed_at


def _on_link_closed(data: dict, cause: str) -> str:
    link = _entity(data, "payment_link")
    gateway_id = _gateway_id(link)
    status = "expired" if data.get("event") == "payment_link.expired" else "cancelled"
    of_link = select(PaymentLink).where(PaymentLink.gateway_id == gateway_id)
    with transaction() as session:
        booking_id = session.scalar(of_link.with_only_columns(PaymentLink.booking_id))
        if booking_id is None:
            return "unknown-link"
        booking = ledger.lock_booking(session, booking_id)
        # The row as it is now, under the booking's lock (record_capture marks the link
        # paid under it, and the lock order is booking, then link): a capture committed
        # since the read above leaves it "paid", never overwritten as closed.
        row = session.scalar(of_link.with_for_update()
                             .execution_options(populate_existing=True))
        assert row is not None  # a link row is never deleted
        if row.status == "created":
            row.status = status
        if booking.status != BookingStatus.AWAITING_PAYMENT.value:
            return "ignored-" + booking.status
        if _kept_capture(session, booking.id):
            return "already-paid"  # a capture came first: the money wins
        if status == "cancelled":
            _close_link_cancelled(session, booking)
        else:
            _expire(session, booking, "payment link expired")
        return "expired"


# The reason a booking closed by _close_link_cancelled carries in its transition: tracking
# reads it (conversation._told) to say the link was stopped, not that time ran out.
LINK_CANCELLED_REASON = "payment link cancelled"


def _close_link_cancelled(session: Session, booking: Booking) -> None:
    """Close a booking awaiting payment whose link was cancelled at the gateway (from
    Razorpay's dashboard: the service cancels only closed bookings' links). Her booking
    has one link, so none is sent again: she hears the link was stopped and the booking
    closed with nothing to pay, not "the time to pay is over" (she may be inside it)."""
    move_booking(session, booking, BookingStatus.EXPIRED, SYSTEM, LINK_CANCELLED_REASON)
    notify.notify_customer(session, booking, "payment.link_cancelled",
                           dedupe_key=f"payexpired-{booking.id}")


def _expire(session: Session, booking: Booking, reason: str) -> None:
    move_booking(session, booking, BookingStatus.EXPIRED, SYSTEM, reason)
    notify.notify_customer(session, booking, "payment.expired",
                           dedupe_key=f"payexpired-{booking.id}")


def _on_payment_failed(data: dict, cause: str) -> str:
    payment = _entity(data, "payment")
    # A link's payment may carry the link's notes as we gave them (they name the booking;
    # Razorpay adds no link id to them), or none: samples disagree whether a link's notes
    # are copied to its payments. Then the payment's order (a link's attempts are all
    # payments of the link's order) names the link.
    booking_id = _named_booking([payment]) or _booking_of_order(payment)
    if booking_id is None:
        return "payment-failed"
    with transaction() as session:
        # Under the booking's lock, as the capture of a next attempt takes it: "try again"
        # is queued before its "payment received", or not at all (the booking is paid).
        booking = ledger.lock_booking(session, booking_id)
        if booking.status != BookingStatus.AWAITING_PAYMENT.value:
            return "payment-failed"
        link = session.scalar(select(PaymentLink).where(PaymentLink.booking_id == booking.id))
        # "Try again with the same link" only while that link can still be paid; past it,
        # the expiry notice (the sweep, or the link's own webhook) says what to do.
        if _link_payable(booking, link):
            # A link sent to another mobile too may have failed there (or on hers): she
            # hears it may be tried again from either phone (payment.failed_other).
            key = "payment.failed_other" if notify.link_payers(session, booking) else (
                "payment.failed")
            notify.notify_customer(session, booking, key,
                                   dedupe_key=f"payfail-{_gateway_id(payment)}")
    return "payment-failed"


def _booking_of_order(payment: dict) -> int | None:
    """The booking whose link made the payment's order, else None. The order (GET
    /v1/orders/<id>, asked in the event's job, never in the webhook) carries the link's
    notes (our booking_id beside its reference: _named_booking's rule), which decide
    first; else its ``receipt`` as the link's reference_id, only a link of our
    payment_links table counting and only for the link's own amount (receipts are not
    unique on an account: another system's order could carry one of our references). An
    order the gateway does not know is nobody's."""
    order_id = payment.get("order_id")
    if not isinstance(order_id, str) or not 0 < len(order_id) <= GATEWAY_ID_MAX:
        return None
    try:
        order = gw.client().order.fetch(order_id)
    except gw.BadRequestError:
        log.warning("a failed payment's order is unknown to the gateway")
        return None
    if not isinstance(order, dict):
        return None
    named = _named_booking([order])
    if named is not None:
        return named
    receipt = order.get("receipt")
    if not isinstance(receipt, str) or not receipt:
        return None
    with transaction() as session:
        return session.scalar(select(PaymentLink.booking_id).where(
            PaymentLink.reference_id == receipt,
            PaymentLink.amount_paise == _paise(order, "amount")))


def _on_refund(data: dict, cause: str) -> str:
    entity = _entity(data, "refund")
    rid, our_id = _gateway_id(entity), gw.note_int(entity, "refund_id")
    processed = data.get("event") == "refund.processed"
    if rid is None:
        # Nothing to key the refund's outcome on, and no refund of ours to match: "id IS
        # NULL" would take any refund not yet asked of the gateway for this one.
        log.warning("refund event without an id", extra={"refund_id": our_id})
        return "refund-without-id"
    with transaction() as session:
        refund = session.scalar(select(Refund).where(Refund.gateway_refund_id == rid))
        if refund is None and our_id is not None:
            # Named by our row id only (our request's answer was lost): ours only if no
            # other gateway refund is known for it and its booking is named too, as our
            # requests do; another system on the account numbers its refunds too.
            refund = session.scalar(select(Refund).where(
                Refund.id == our_id, Refund.gateway_refund_id.is_(None),
                Refund.booking_id == (gw.note_int(entity, "booking_id") or -1)))
        if refund is not None:
            return _settle_refund_row(session, refund, rid, processed, cause)
    # None of our attempts: a refund of one of our payments made outside the service (the
    # dashboard) is recorded as the booking's; any other is not ours.
    return record_outside_refund(entity, cause) if processed else "unknown-refund"


def _settle_refund_row(session: Session, refund: Refund, rid: str, processed: bool,
                       cause: str) -> str:
    """_on_refund of one of our refund attempts (``refund``), in its transaction."""
    booking = ledger.lock_booking(session, refund.booking_id)
    refund.gateway_refund_id = refund.gateway_refund_id or rid
    entry = rules.refund_processed(booking.id, refund.id, refund.amount_paise, rid) \
        if processed else _refund_failed_entry(session, booking.id, refund, rid)
    # A refund settles one way only (one key for both outcomes): settled before, either
    # way, this event is a repeat or a late word (the ledger refuses the other outcome's
    # entry under that key, so it is not offered).
    if ledger.recorded(session, entry.idempotency_key) or not ledger.post(
            session, entry, actor="gateway:razorpay", cause=cause):
        if processed and refund.status == "failed":
            # Settled as failed before (refused, given up): the reconciliation reports
            # the refund the ledger does not show; a person must look at the booking.
            log.error("refund processed after its attempt failed",
                      extra={"booking_id": booking.id, "attempt": refund.attempt})
        return "duplicate-refund-event"
    if processed:
        refund.status = "processed"
        if refund.reason not in OWN_CHAIN_REFUNDS and booking.status in (
                BookingStatus.CANCELLED.value, BookingStatus.FAILED.value):
            move_booking(session, booking, BookingStatus.REFUNDED, SYSTEM, "refund processed")
        _tell_refunded(session, booking, refund.id, refund.amount_paise)
        _open_due_refund(session, booking)
        return "refunded"
    refund.status = "failed"
    refund.last_error = "gateway reported refund.failed"
    _attempt_failed(session, booking, refund)
    _open_due_refund(session, booking)
    return "refund-failed"


def _tell_refunded(session: Session, booking: Booking, refund_id: int, amount: int) -> None:
    """A refund processed (``refund_id`` of ``amount`` paise): the customer hears it goes
    back to the account it was paid from, not "to you": a phone booking's link may have
    been paid from another mobile (ivr send_link_to: a son's UPI), whose account Razorpay
    refunds. Each mobile the link went to hears it too, in a short SMS of its own
    (payment.refunded_payer: the booking, the sum, when), once per refund and number."""
    notify.notify_customer(session, booking, "payment.refunded", refund_paise=amount,
                           dedupe_key=f"refund-{refund_id}-processed")
    notify.notify_link_payers(session, booking, "payment.refunded_payer", refund_paise=amount,
                              dedupe_key=f"refund-{refund_id}-payer")


def record_outside_refund(refund: dict, cause: str) -> str:
    """A refund processed at the gateway that is none of our attempts, of a payment
    captured in our ledger (found by its payment id: a refund made in the Razorpay
    dashboard carries none of our notes) is recorded as a refund of that booking, once
    per gateway refund id: a processed attempt row of its own kind (OUTSIDE_REFUND) and
    its money out of the booking's escrow (refund_requested, refund_processed: immutable
    entries, keyed by that row). The booking's own refund (a cancellation) is then of
    what is left (_paid_and_earned), and the customer hears of it. From refund.processed
    or the reconciliation, whichever sees it first.

    Support's refund is the platform's cost: of one that escrow holds less than (delivered
    legs were paid out of it; Razorpay took the refund from the platform's balance all
    the same), escrow gives what it holds and the platform's commission the rest
    (rules.outside_refund_platform, keyed by the same row).

    Not recorded (logged; the reconciliation lists it until it is): a payment that is
    not ours ("unknown-refund"), a refund whose notes name one of our attempts (that one
    is settled by its own id, never recorded twice), or one escrow holds less than while
    a refund of ours reserved out of escrow is still open (_asked_from_escrow): refused
    for more than the payment has left, that one is cut (refund_booking), and accepted it
    may still fail (refund.failed; support often refunds by hand the refund the bank
    refused); either way its reservation comes back to escrow, so the platform would pay
    what the booking still holds. A later run records it once that refund is answered:
    processed, the platform pays what escrow lacks; failed, escrow pays it all."""
    from core.adapters.payment_models import LedgerTransaction

    rid, amount, pid = _gateway_id(refund), _paise(refund, "amount"), refund.get("payment_id")
    if rid is None or not amount or not isinstance(pid, str) or not (
            0 < len(pid) <= GATEWAY_ID_MAX) or refund.get("status", "processed") != "processed":
        return "unknown-refund"
    with transaction() as session:
        booking_id = session.scalar(select(LedgerTransaction.booking_id).where(
            LedgerTransaction.idempotency_key == f"capture:{pid}"))
        if booking_id is None:
            return "unknown-refund"
        booking = ledger.lock_booking(session, booking_id)
        if session.scalar(select(Refund.id).where(Refund.gateway_refund_id == rid)) is not None:
            return "duplicate-refund-event"
        our_id = gw.note_int(refund, "refund_id")
        if our_id is not None and session.get(Refund, our_id) is not None:
            return "unknown-refund"  # named by our attempt: settled by it, if ever
        escrow = ledger.balance(session, rules.escrow(booking_id))
        short = rules.shortfall(_escrow_paid_for(session, booking_id, pid), amount)
        if short and _asked_from_escrow(session, booking_id):
            log.warning("a refund made outside the service is more than escrow holds while "
                        "a refund of ours is open; recorded once that one is answered",
                        extra={"booking_id": booking_id, "amount": amount, "escrow": escrow})
            return "outside-refund-unrecorded"
        last = _latest_refund(session, booking_id)
        row = Refund(booking_id=booking_id, attempt=last.attempt + 1 if last else 1,
                     payment_id=pid, amount_paise=amount, fee_paise=0, reason=OUTSIDE_REFUND,
                     actor="gateway:razorpay", status="processed", gateway_refund_id=rid)
        session.add(row)
        session.flush()
        platform = [rules.outside_refund_platform(booking_id, row.id, short)] if short else []
        for entry in (*platform, rules.refund_requested(booking_id, row.id, amount),
                      rules.refund_processed(booking_id, row.id, amount, rid)):
            ledger.post(session, entry, actor="gateway:razorpay", cause=cause)
        if short:
            log.warning("a refund made outside the service is more than escrow held: the "
                        "rest is the platform's cost",
                        extra={"booking_id": booking_id, "amount": amount, "platform": short})
        if booking.status in (BookingStatus.CANCELLED.value, BookingStatus.FAILED.value) \
                and escrow <= amount and _open_row(session, booking_id) is None:
            # It gave back all the closed booking still held (support refunded it by hand).
            move_booking(session, booking, BookingStatus.REFUNDED, SYSTEM,
                         "refunded outside the service")
        _tell_refunded(session, booking, row.id, amount)
        log.warning("a refund made outside the service was recorded",
                    extra={"booking_id": booking_id, "amount": amount})
        return "outside-refund"


def _asked_from_escrow(session: Session, booking_id: int) -> bool:
    """Whether a refund attempt of the booking reserved out of escrow is still open: asked
    (it may yet be cut) or accepted by the gateway (pending: the bank may still refuse it,
    refund.failed). Either way its reservation may come back to escrow."""
    return session.scalar(select(Refund.id).where(
        Refund.booking_id == booking_id, Refund.status.in_(OPEN_REFUND),
        Refund.reason != REVERSED_PAYOUT).limit(1)) is not None


def _noted_leg(entity: dict) -> int | None:
    """The leg of ours a transfer's notes name: their leg_id, with that leg's booking id
    beside it as booking_id (our transfers carry both), else None. A leg id alone is no
    proof, as the reconciliation holds too (_our_bookings): another system on the same
    Razorpay account may number what it pays in its transfers' notes."""
    leg_id, booking_id = gw.note_int(entity, "leg_id"), gw.note_int(entity, "booking_id")
    if leg_id is None or booking_id is None:
        return None
    with transaction() as session:
        owner = session.scalar(select(Leg.booking_id).where(Leg.id == leg_id))
    return leg_id if owner == booking_id else None


def processed_fee(transfer: dict) -> int | None:
    """Route's fee on a transfer the gateway processed (``fees``, its GST included), None
    for one not processed (on its way, failed) or told without a fee."""
    fees = transfer.get("fees")
    if transfer.get("status") == "failed" or not transfer.get("processed_at") \
            or isinstance(fees, bool) or not isinstance(fees, int) or fees <= 0:
        return None
    return fees


def _book_transfer_fee(session: Session, booking_id: int, transfer: dict, cause: str) -> bool:
    """Route's fee on a transfer of the booking the gateway processed: the platform's cost
    (rules.transfer_fee), once per transfer whichever path tells it first; one told
    otherwise than booked is left to the reconciliation (fee_differs). The caller holds
    the booking's lock. True if booked now."""
    tid, fee = _gateway_id(transfer), processed_fee(transfer)
    if tid is None or fee is None:
        return False
    try:
        return ledger.post(session, rules.transfer_fee(booking_id, tid, fee),
                           actor="gateway:razorpay", cause=cause)
    except rules.EntryConflict:
        return False


def record_transfer_fee(transfer: dict, cause: str) -> bool:
    """Book Route's fee on a transfer of ours (its notes name our leg) the gateway
    processed, as its transfer.processed does: the reconciliation's way to book one whose
    event was lost. True if booked now."""
    leg_id = _noted_leg(transfer)
    if leg_id is None or processed_fee(transfer) is None:
        return False
    with transaction() as session:
        booking_id = session.scalar(select(Leg.booking_id).where(Leg.id == leg_id))
        if booking_id is None:
            return False
        ledger.lock_booking(session, booking_id)
        if ledger.recorded(session, f"transfer:{_gateway_id(transfer)}:failed"):
            # A late processed event of a transfer that failed since: processed_fee books
            # none for a failed transfer, and the reconciliation compares none.
            return False
        return _book_transfer_fee(session, booking_id, transfer, cause)


def _on_transfer(data: dict, cause: str) -> str:
    """A leg's transfer was processed or failed at the gateway.

    Processed on hold (how every leg transfer starts) is no payout: the hold can still be
    reversed, so the ledger waits for the release (settle_leg_transfer). Processed without
    a hold (released while the gateway was still processing it) is paid out: the same
    entry the release posts, keyed by the transfer, so once."""
    entity = _entity(data, "transfer")
    tid, leg_id = _gateway_id(entity), _noted_leg(entity)
    processed = data.get("event") == "transfer.processed"
    if tid is None:
        # Nothing to key a payout or a failure on: a malformed event, not a transfer.
        log.warning("transfer event without an id", extra={"leg_id": leg_id})
        return "transfer-without-id"
    if processed and _bad_amount(entity, "amount", "amount_reversed"):
        # An amount no ledger entry can take: a malformed event, nothing changed by it.
        log.warning("transfer event with a bad amount", extra={"leg_id": leg_id})
        return "bad-payload"
    if processed:  # charged however the transfer ends: the platform's cost at once
        record_transfer_fee(entity, cause)
    if _is_repay(entity) and leg_id is not None:
        return _on_repay_transfer(entity, str(tid), leg_id, processed, cause)
    with transaction() as session:
        row = session.scalar(select(LegTransfer).where(
            (LegTransfer.transfer_id == tid) | (LegTransfer.leg_id == (leg_id or -1))))
        if row is None:
            if not processed and leg_id is not None and session.get(Leg, leg_id) is not None:
                # Failed before the job that made it saved it (or that job died): without
                # its row nothing else would hear of it, so ask the gateway about the leg.
                _resettle_after_failure(session, leg_id, tid, entity)
                return "unknown-transfer-failed"
            return "unknown-transfer"
        ledger.lock_booking(session, row.booking_id)
        row = session.get(LegTransfer, row.id, with_for_update=True, populate_existing=True)
        assert row is not None
        # A reversal of the leg's transfers waited for the gateway to process one: now
        # it can be made (or, failed, it is not needed), by the leg's job.
        redo = _after_reversal_wait(session, row.leg_id, str(tid)) \
            if row.last_error == REVERSAL_WAITS else None
        stale = row.transfer_id not in (None, tid) or (
            row.transfer_id is None and entity.get("recipient") != row.account)
        if not processed and stale:
            # Another transfer of the leg than the row names (a replacement whose row is
            # not saved yet, or an old one). Posted as paid out: owed again. Either way an
            # earning leg is re-derived from the gateway; a leg still on its way is not
            # (that would reverse its current partner's hold).
            voided = _void_payout(session, str(tid), cause)
            if voided or ledger.leg_payable(session, row.leg_id) > 0:
                _resettle_after_failure(session, row.leg_id, tid, entity)
                return "paid-transfer-failed" if voided else "stale-transfer-failed"
        if stale:
            return "stale-transfer"  # another partner's transfer of the leg
        row.transfer_id = tid
        if not processed:
            row.status = "failed"
            row.last_error = ("gateway reported transfer.failed: "
                              f"{_transfer_failed_reason(entity)}")[:200]
            # Released and posted as paid out already: the partner is owed it again.
            _void_payout(session, str(tid), cause)
            if redo != "hold":  # a rider's leg: its hold job (above) makes his hold
                _resettle_after_failure(session, row.leg_id, tid, entity)
            return "transfer-failed"
        if row.status == "failed" or ledger.recorded(session, f"transfer:{tid}:failed"):
            return "transfer-failed-before"  # a late processed event of a failed transfer
        if entity.get("on_hold"):
            if row.status not in _SETTLED_TRANSFER:
                row.status = "on_hold"
            return "transfer-on-hold"
        if row.status == "reversed":
            return "transfer-reversed"
        amount = (_paise(entity, "amount") or 0) - (_paise(entity, "amount_reversed") or 0)
        if amount <= 0:
            return "transfer-reversed"
        if _payout_differs(session, str(tid), amount, row.leg_id):
            return "transfer-processed-before"
        if ledger.post(session, rules.transfer_processed(row.booking_id, row.leg_id,
                                                         row.partner_id, str(tid), amount),
                       actor="gateway:razorpay", cause=cause):
            _transfer_went_through(row.leg_id)
            if row.status != "released":
                row.status = "processed"
            return "transfer-processed"
        return "duplicate-transfer-event"


def _on_transfer_reversed(data: dict, cause: str) -> str:
    """A leg's transfer was reversed at the gateway (all or part of it): if it had been
    posted as paid out, what came back is recorded (record_transfer_reversal)."""
    return record_transfer_reversal(_entity(data, "transfer"), cause)


def record_transfer_reversal(transfer: dict, cause: str) -> str:
    """A transfer posted as paid out to a partner has less left on it at the gateway than
    the ledger paid out (reversed since: ops in the dashboard, a partial reversal): the
    difference goes from the partner's side to the booking's reversed payouts
    (rules.transfer_reversed), once per reversal, and ops hear of it once, to pay the
    partner again or refund the customer. From the transfer.reversed event or the
    reconciliation (whichever sees it first; the other finds it recorded). A reversal of
    a transfer still on hold, or of one never posted as paid out, records nothing."""
    from core.adapters.payment_models import LedgerTransaction
    from core.services.dispatch import alert_ops  # dispatch imports payments

    tid = _gateway_id(transfer)
    if tid is None:
        log.warning("transfer reversal without an id")
        return "transfer-without-id"
    if _bad_amount(transfer, "amount", "amount_reversed") or _paise(transfer, "amount") is None:
        log.warning("transfer reversal with a bad amount")
        return "bad-payload"
    if transfer.get("status") == "failed":
        return "transfer-failed"  # no money moved: _on_transfer voids what was posted
    total = _paise(transfer, "amount") or 0
    gone = _paise(transfer, "amount_reversed") or 0
    with transaction() as session:
        booking_id = session.scalar(select(LedgerTransaction.booking_id).where(
            LedgerTransaction.idempotency_key == f"transfer:{tid}:processed"))
        if booking_id is None:
            return "no-payout"  # a hold given back, or a transfer that is not ours
        booking = ledger.lock_booking(session, booking_id)
        entry = ledger.transfer_reversal(session, tid, total - gone, gone)
        if entry is None:
            return "no-reversal"  # no more came back than is recorded
        if not ledger.post(session, entry, actor="gateway:razorpay", cause=cause):
            return "duplicate-reversal"
        leg_id = entry.postings[0].leg_id
        back = -entry.delta(rules.GATEWAY)
        row = session.scalar(select(LegTransfer).where(LegTransfer.transfer_id == tid)
                             .with_for_update())
        if row is not None and total - gone <= 0:
            row.status = "reversed"
        log.warning("a paid leg transfer was reversed; ops decide where the money goes",
                    extra={"leg_id": leg_id, "reversed_paise": back})
        alert_ops(session, "payment.ops_transfer_reversed", booking_id=booking.id,
                  dedupe_key=f"transfer-{tid}-reversed-{gone}", ref=booking.reference,
                  leg=leg_id, reversed_paise=back)
        return "transfer-reversed"


def _payout_differs(session: Session, transfer_id: str, amount: int, leg_id: int) -> bool:
    """True if the transfer's payout (its transfer_processed entry) is recorded already for
    another amount than ``amount``: then nothing more is posted (the same key with another
    amount is an EntryConflict, failing the event's job on every retry). The settle job
    posts what is left on a transfer after a partial reversal made in the dashboard; a
    late transfer.processed is a snapshot from before it, with the full amount. The
    ledger's entry is the net payout already (the reversed part never counted as paid
    out), so the difference is only logged."""
    from core.adapters.payment_models import LedgerPosting, LedgerTransaction

    recorded = session.scalar(
        select(LedgerPosting.amount_paise)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
        .where(LedgerTransaction.idempotency_key == f"transfer:{transfer_id}:processed",
               LedgerPosting.account_kind == rules.AccountKind.PARTNER_PAYABLE.value))
    if recorded is None or -int(recorded) == amount:
        return False
    log.warning("a transfer's payout is recorded already for another amount; kept as it is",
                extra={"leg_id": leg_id, "recorded_paise": -int(recorded),
                       "told_paise": amount, "difference_paise": amount + int(recorded)})
    return True


def _void_payout(session: Session, transfer_id: str, cause: str) -> int:
    """A transfer failed: if its payout was posted (its hold was released), void it once, so
    the partner is owed it again. Return the amount voided (0 if nothing was posted)."""
    entry = ledger.transfer_payout(session, transfer_id)
    if entry is None:
        return 0
    ledger.post(session, entry, actor="gateway:razorpay", cause=cause)
    log.warning("a released leg transfer failed; its payout is owed again",
                extra={"leg_id": entry.postings[0].leg_id})
    return -entry.delta(rules.GATEWAY)


# A leg's transfers failed this many times in a row (a linked account suspended or closed
# fails every transfer to it): the next is made by the sweep, backing off, not at once.
TRANSFER_FAILS_AT_ONCE = 3
TRANSFER_FAILS_KEEP = timedelta(days=7)  # a streak of failures is forgotten this long after


def _failures_key(leg_id: int) -> str:
    return f"payments:transfer-failures:{leg_id}"


def _transfer_failed_reason(transfer: dict) -> str:
    """What the gateway says of a failed transfer (its ``error``), else that it gave none."""
    error = transfer.get("error")
    if isinstance(error, dict):
        said = [str(error[k]) for k in ("description", "reason")
                if isinstance(error.get(k), str) and error[k] and error[k] != "NA"]
        if said:
            return ": ".join(dict.fromkeys(said))[:160]
    return "no reason given"


def _transfer_went_through(leg_id: int) -> None:
    """A leg's payout was posted: a streak of its transfers failing has ended."""
    try:
        redis_client().delete(_failures_key(leg_id))
    except RedisError:
        log.warning("payments: a leg's failed transfers were not forgotten",
                    extra={"leg_id": leg_id})


def _resettle_after_failure(session: Session, leg_id: int, transfer_id: object,
                            transfer: dict | None = None) -> None:
    """Re-derive a leg's transfer from the gateway after one of its transfers failed. Its
    own job id: ``transfer-<leg>`` may be the very job still making that transfer, and an
    enqueue under a running job's id is dropped; the leg's lock puts this one after it.

    Once TRANSFER_FAILS_AT_ONCE of the leg's transfers failed in a row (counted by
    transfer id in Redis, so a repeated event counts once; forgotten when a payout of the
    leg is posted), no new one is made at once: each would fail as the last did, one
    webhook each, hammering the gateway. The sweep makes it, less and less often
    (_settle_due), and ops hear once, with the gateway's reason."""
    tid = str(transfer_id)[:40]
    try:
        r, key = redis_client(), _failures_key(leg_id)
        r.sadd(key, tid)
        r.expire(key, int(TRANSFER_FAILS_KEEP.total_seconds()))
        failed = int(r.scard(key))
    except RedisError:
        failed = 1  # not counted: made again at once, as a first failure is
    if failed < TRANSFER_FAILS_AT_ONCE:
        _enqueue_after_commit(session, "workers.payments.settle_leg_transfer", leg_id,
                              job_id=f"transfer-{leg_id}-failed-{tid}")
        return
    log.error("a leg's transfers keep failing; the sweep makes the next, backing off",
              extra={"leg_id": leg_id, "failed": failed})
    if failed == TRANSFER_FAILS_AT_ONCE:  # the streak's alert, once (a retry: same tid)
        _tell_transfers_failing(session, leg_id, tid, failed,
                                _transfer_failed_reason(transfer or {}))


def _tell_transfers_failing(session: Session, leg_id: int, transfer_id: str, failed: int,
                            reason: str) -> None:
    """Ops hear that a leg's transfers keep failing at the gateway (its rider's linked
    account cannot take them): a person must look at the account. The sweep goes on
    trying, less and less often."""
    from core.services.dispatch import alert_ops  # dispatch imports payments

    leg = session.get(Leg, leg_id)
    booking = session.get(Booking, leg.booking_id) if leg is not None else None
    if booking is None:
        return
    owed = ledger.leg_payable(session, leg_id) - ledger.leg_paid_out(session, leg_id)
    alert_ops(session, "payment.ops_transfer_refused", booking_id=booking.id,
              dedupe_key=f"transfer-{leg_id}-failing-{transfer_id}", ref=booking.reference,
              leg=leg_id, payout_paise=max(owed, 0),
              error=alert_error(f"{failed} failed in a row: {reason}"))


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
    "transfer.reversed": _on_transfer_reversed,
}


# --- releases and transfers ----------------------------------------------------------------


def release_leg(leg_id: int, actor: Actor = SYSTEM) -> str:
    """Job: a delivered leg's payout and commission leave escrow (once), then its transfer.
    Escrow short of the payout does not stop it (_post_release: the platform's cost)."""
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
            commission = _release_commission(
                booking, leg, released, last, ledger.balance(session, rules.escrow(booking.id)))
            _post_release(session, booking, leg, commission, str(actor))
            result = "released"
        _enqueue_after_commit(session, "workers.payments.settle_leg_transfer", leg_id,
                              job_id=f"transfer-{leg_id}")
        return result


# A leg transfer's row in these states is not moved back to on_hold by a late event.
_SETTLED_TRANSFER = ("released", "processed", "reversed")
# A Route transfer starts "pending" (or "created"): Razorpay processes it asynchronously,
# and only once "processed" has the money left the platform's account for the linked
# account (transfer.processed). A partial reversal after that makes it
# "partially_reversed": what is left on it stays moved.
_MOVED_TRANSFER = ("processed", "partially_reversed")
_UNPROCESSED_TRANSFER = ("created", "pending")


def _moved(transfer: dict) -> bool:
    """Whether the gateway has processed the transfer (the money reached the account)."""
    return transfer.get("status") in _MOVED_TRANSFER


def _released_before(transfers: list[dict], leg_id: int, account: str | None) -> dict | None:
    """The leg's transfer released from its hold (or made without one) to another account
    than ``account`` (one the partner had before ops changed it), not failed, not
    reversed, with money left on it: the leg's payout, paid there or on its way there.
    Processed or not, no new transfer is made while it stands (it would pay the leg
    twice). A transfer paying a reversed payout again is not one (_repay_reversed)."""
    return next((t for t in transfers if gw.note_int(t, "leg_id") == leg_id
                 and t.get("recipient") != account
                 and t.get("status") not in ("failed", "reversed")
                 and not t.get("on_hold", True) and not _is_repay(t) and _left(t) > 0), None)


def _left(transfer: dict) -> int:
    """What is still on a gateway transfer: its amount less what was reversed."""
    return int(transfer.get("amount") or 0) - int(transfer.get("amount_reversed") or 0)


def _live(transfers: list[dict], leg_id: int, account: str | None = None) -> dict | None:
    """The leg's live transfer (to ``account`` when given)."""
    for t in transfers:
        if gw.note_int(t, "leg_id") == leg_id and t.get("status") not in ("failed", "reversed") \
                and (account is None or t.get("recipient") == account):
            return t
    return None


def _reverse_others(c, transfers: list[dict], leg_id: int, account: str | None) -> int:
    """Reverse the leg's transfers still on hold for someone else (a partner who gave the
    job back); return how many. An on-hold transfer was never posted as a payout, so its
    reversal posts nothing; a released one is paid out for good and is left alone. One
    the gateway has not processed yet waits for it (_reverse)."""
    n = 0
    for t in transfers:
        left = _left(t)
        if gw.note_int(t, "leg_id") == leg_id and t.get("status") not in ("failed", "reversed") \
                and t.get("on_hold") and t.get("recipient") != account and left > 0:
            n += _reverse(c, t, left, leg_id)
    return n


# Our note on a leg's transfer row while a reversal of one of the leg's transfers waits for
# the gateway to process that transfer (_reverse): its transfer.processed (or .failed)
# then runs the leg's job again (_after_reversal_wait).
REVERSAL_WAITS = "a reversal waits until the gateway processes the transfer"
# The transfers whose reversal waits, of the leg whose lock this job holds (one set a lock).
_waiting: ContextVar[set[str] | None] = ContextVar("reversals_waiting", default=None)


def _reverse(c, transfer: dict, amount: int, leg_id: int) -> bool:
    """Reverse ``amount`` of a gateway transfer (our copy of it follows: what is left on
    it, reversed once nothing is). Razorpay refuses the reversal of a transfer it has not
    processed yet (a 400: nothing is in the linked account to take back): then False, and
    the reversal waits, noted on the leg's row (_leg_transfer_lock), for the transfer's
    transfer.processed to run the leg's job again (_after_reversal_wait). Another
    refusal is raised (and the note goes: no rerun would change it)."""
    try:
        c.transfer.reverse(transfer["id"], {"amount": amount})
    except gw.BadRequestError:
        if transfer.get("status") not in _UNPROCESSED_TRANSFER or \
                c.transfer.fetch(transfer["id"]).get("status") not in _UNPROCESSED_TRANSFER:
            raise
        log.info("a reversal waits until the gateway processes its transfer",
                 extra={"leg_id": leg_id})
        waiting = _waiting.get()
        if waiting is not None:
            waiting.add(str(transfer["id"]))
        return False
    transfer["amount_reversed"] = int(transfer.get("amount_reversed") or 0) + amount
    if _left(transfer) <= 0:
        transfer["status"] = "reversed"
    return True


def _keep_reversal_waiting(leg_id: int) -> None:
    """Note on the leg's row that a reversal of its transfers waits (REVERSAL_WAITS), after
    the job's own saves: the next save of the row (a later job that got further), or a
    job of the leg that ends with none waiting (_end_reversal_wait), clears it. A leg
    without a row (its hold job died before saving it) is reversed at its next settle
    instead."""
    with transaction() as session:
        row = session.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id)
                             .with_for_update())
        if row is None:
            log.warning("a reversal waits for a leg without a transfer row",
                        extra={"leg_id": leg_id})
            return
        row.last_error = REVERSAL_WAITS


def _end_reversal_wait(leg_id: int) -> None:
    """A job of the leg ended with no reversal waiting: a note of one (REVERSAL_WAITS) left
    by an earlier job goes (a path that reversed without saving the row, a reversal made
    by another job), or the reconciliation would run the leg's job every hour for good."""
    with transaction() as session:
        session.execute(update(LegTransfer).where(
            LegTransfer.leg_id == leg_id, LegTransfer.last_error == REVERSAL_WAITS)
            .values(last_error=None))


def _look_again(leg_id: int, waiting: set[str]) -> None:
    """Once the note of a waiting reversal is committed, ask the gateway about the
    transfers once more: one processed (or failed) between its refusal and the note had
    its transfer.processed handled with no note to find. The leg's job then runs at once,
    under the id that event would have given it (so the two make one job). A gateway
    that does not answer now leaves it to the event or the reconciliation."""
    c = gw.client()
    for tid in sorted(waiting):
        try:
            status = c.transfer.fetch(tid).get("status")
        except Exception:  # the job's outcome stands; the event or the reconciliation acts
            log.warning("a waiting reversal's transfer was not asked about again",
                        extra={"leg_id": leg_id})
            return
        if status not in _UNPROCESSED_TRANSFER:
            with transaction() as session:
                _after_reversal_wait(session, leg_id, tid)
            return  # the leg's job reverses every transfer of it that can go


def resume_waiting_reversals() -> int:
    """The reconciliation's way to finish reversals whose transfer.processed was lost:
    each leg whose row still notes a waiting reversal (REVERSAL_WAITS), whatever the row's
    status or transfer (the waiting transfer may be another rider's than the one the row
    names: a settle saves the leg's own), runs its job again (_after_reversal_wait), as
    the event would have. The job notes it again if it still waits, and clears it once
    nothing does. One job a leg however often this runs (``-resumed``). How many."""
    with transaction() as session:
        waiting = list(session.scalars(select(LegTransfer.leg_id).where(
            LegTransfer.last_error == REVERSAL_WAITS)))
        for leg_id in waiting:
            _after_reversal_wait(session, leg_id, "resumed")
    return len(waiting)


# Bookings closed for good: no rider will have their legs again, nor a refund settle them.
_CLOSED_BOOKINGS = (BookingStatus.CANCELLED.value, BookingStatus.FAILED.value,
                    BookingStatus.REFUNDED.value, BookingStatus.EXPIRED.value)
LEFT_HOLDS_PAGE = 200  # rows looked at a run, in turn
LEFT_HOLDS_CURSOR_KEY = "payments:left-holds-after"


def settle_left_holds() -> int:
    """The reconciliation's safety net for holds left on closed bookings: each leg of a
    cancelled, failed or refunded booking that no rider has (_left_holds) whose transfer
    row is still on hold has its settle queued (``transfer-<leg>``), which reverses what
    the leg did not earn and pays what it did (a fee). A cancel queues that settle itself
    (_settle_left_holds_of); this finds those whose job was lost, and any left before.

    A row noting a reversal that waits for the gateway to process the transfer
    (REVERSAL_WAITS) is left to its transfer.processed, or to resume_waiting_reversals:
    a settle now would only note it again. Nor is a leg whose settle is queued or running
    asked again, and one asked lately waits its back-off (_settle_due: a leg the gateway
    keeps refusing is not asked every run). LEFT_HOLDS_PAGE rows a run, in turn
    (_in_turn). How many settles were queued."""
    with transaction() as session:
        base = _left_holds().join(Booking, Booking.id == Leg.booking_id).where(
            Booking.status.in_(_CLOSED_BOOKINGS),
            LegTransfer.last_error.is_distinct_from(REVERSAL_WAITS))
        legs = [leg_id for _, leg_id in _in_turn(session, base, LegTransfer.id,
                                                 LEFT_HOLDS_CURSOR_KEY, LEFT_HOLDS_PAGE)]
    queued = 0
    for leg_id in legs:
        job_id = f"transfer-{leg_id}"
        if _job_alive(job_id) or not _settle_due(leg_id):
            continue
        log.warning("a hold left on a closed booking's leg: its settle is queued",
                    extra={"leg_id": leg_id})
        enqueue("workers.payments.settle_leg_transfer", leg_id, job_id=job_id,
                retry=GATEWAY_RETRY)
        queued += 1
    return queued


def hold_payments(booking_ids: set[int]) -> dict[str, int]:
    """The payment each booking's holds are made on (_capture_payment_id), by payment id:
    those the reconciliation lists the transfers of (unrecorded holds)."""
    out: dict[str, int] = {}
    with transaction() as session:
        for booking_id in sorted(booking_ids):
            payment_id = _capture_payment_id(session, booking_id)
            if payment_id is not None:
                out[payment_id] = booking_id
    return out


def unrecorded_holds(booking_id: int, transfers: list[dict]) -> list[dict]:
    """Of a booking's payment's transfers (GET /payments/{id}/transfers), the holds still
    on it that name a leg of the booking in their notes and that no transfer row of ours
    names: made by a hold job that died (its worker killed) between the gateway's answer
    and the row's commit, and never retried. No comparison shows them (a hold is no
    payout), nor does any sweep of the rows."""
    held = {str(t["id"]): t for t in transfers
            if isinstance(t.get("id"), str) and t.get("on_hold") and _left(t) > 0
            and t.get("status") not in ("failed", "reversed")
            and gw.note_int(t, "leg_id") is not None
            and gw.note_int(t, "booking_id") == booking_id and not _is_repay(t)}
    if not held:
        return []
    with transaction() as session:
        known = set(session.scalars(select(LegTransfer.transfer_id).where(
            LegTransfer.transfer_id.in_(set(held)))))
        legs = set(session.scalars(select(Leg.id).where(
            Leg.booking_id == booking_id,
            Leg.id.in_({gw.note_int(t, "leg_id") for t in held.values()}))))
    return [t for tid, t in held.items() if tid not in known and gw.note_int(t, "leg_id") in legs]


def adopt_unrecorded_hold(transfer: dict, booking_id: int) -> str:
    """The reconciliation found a hold of a leg of ours that no row names (unrecorded_holds):
    recorded as the leg's hold (``adopted``), as its job would have, when it is the hold
    of the leg's rider now (to his payout account now) and the leg is his or earned
    something (a delivered leg, a fee: its settle is queued, and releases it); else it
    goes back (``reversed``; ``reversal-waits`` while the gateway has not processed it: a
    later run finds it again). ``recorded`` (a retry of its job saved it meanwhile),
    ``settled`` (no longer on hold), ``busy`` (a job of the leg runs: next run),
    ``waits`` (a reversal of the leg waits already: its event runs the leg's job).
    Under the leg's lock, as its jobs."""
    leg_id, tid = gw.note_int(transfer, "leg_id"), transfer.get("id")
    if leg_id is None or not isinstance(tid, str):
        return "not-ours"
    with transaction() as session:
        if session.scalar(select(LegTransfer.id).where(
                LegTransfer.leg_id == leg_id, LegTransfer.last_error == REVERSAL_WAITS)):
            return "waits"  # the lock's end would clear the note: left to its event
    try:
        with _leg_transfer_lock(leg_id):
            return _adopt_unrecorded_hold(leg_id, booking_id, tid)
    except LegBusy:
        return "busy"


def _adopt_unrecorded_hold(leg_id: int, booking_id: int, tid: str) -> str:
    with transaction() as session:
        if session.scalar(select(LegTransfer.id).where(LegTransfer.transfer_id == tid)):
            return "recorded"
        leg = session.get(Leg, leg_id)
        if leg is None or leg.booking_id != booking_id:
            return "not-ours"
        if session.scalar(select(LegTransfer.id).where(
                LegTransfer.leg_id == leg_id, LegTransfer.last_error == REVERSAL_WAITS)):
            waiting = _waiting.get()
            if waiting is not None:
                waiting.add(tid)  # the note stays (_leg_transfer_lock)
            return "waits"
        payment_id = _capture_payment_id(session, booking_id)
        partner_id = leg.partner_id
        partner = session.get(PartnerProfile, partner_id) if partner_id else None
        account = partner.payout_account_id if partner else None
        riding = partner_id is not None and leg.status in _RIDING
        earns = ledger.leg_payable(session, leg_id) > ledger.leg_paid_out(session, leg_id)
    if payment_id is None:
        return "not-ours"
    c = gw.client()
    transfers = c.payment.transfers(payment_id, {}).get("items") or []
    found = next((t for t in transfers if t.get("id") == tid), None)
    if found is None or gw.note_int(found, "leg_id") != leg_id:
        return "not-ours"
    if not found.get("on_hold") or found.get("status") in ("failed", "reversed") \
            or _left(found) <= 0:
        return "settled"
    if account and found.get("recipient") == account and (riding or earns) \
            and _live(transfers, leg_id, account) is found:
        _save_transfer(leg_id, booking_id, partner_id, payment_id, account, found, "on_hold")
        if not riding and not _job_alive(f"transfer-{leg_id}"):
            enqueue("workers.payments.settle_leg_transfer", leg_id,
                    job_id=f"transfer-{leg_id}", retry=GATEWAY_RETRY)
        log.warning("an unrecorded hold is recorded as the leg's", extra={"leg_id": leg_id})
        return "adopted"
    log.warning("an unrecorded hold of a rider who does not have the leg goes back",
                extra={"leg_id": leg_id})
    return "reversed" if _reverse(c, found, _left(found), leg_id) else "reversal-waits"


# --- one leg settled by hand (ops, after an incident) ---------------------------------------


@dataclass(frozen=True)
class LegSettled:
    """What an operator's settle of one leg did (settle_leg_by_hand)."""

    leg_id: int
    reference: str
    outcome: str  # released | reversed | already_settled | transfer_pending
    changed: bool  # False: nothing left to settle; nothing was done (nor audited)
    message: str


SETTLE_REASON_MIN, SETTLE_REASON_MAX = 3, 300
# settle_leg_transfer's outcome -> (outcome, changed, what the operator reads)
_BY_HAND = {
    "released": ("released", True, "the hold is released: the rider is paid"),
    "released-pending": ("released", True, "the hold is released: the rider is paid once "
                                           "the gateway has processed the transfer"),
    "reversed": ("reversed", True, "the hold went back: the rider does not have the leg"),
    "already-paid": ("already_settled", False, "the leg is paid already; nothing was done"),
    "nothing-to-transfer": ("already_settled", False,
                            "nothing is held for the leg; nothing was done"),
    "repaid": ("released", True, "the payout ops chose to pay again is paid"),
    "repay-pending": ("released", True, "the payout ops chose to pay again is on its way"),
    "transfer-pending": ("transfer_pending", False,
                         "a transfer of the leg is on its way at the gateway: its outcome "
                         "decides (a failed one is made again); nothing was done"),
}


def settle_leg_by_hand(leg_id: int, actor: Actor, reason: str, *,
                       booking_id: int | None = None) -> LegSettled:
    """Ops settle one leg now (after an incident): its rider's hold released if the leg
    earned it, or given back if no rider has the leg. Through the leg's own settle job
    (settle_leg_transfer, run here under the leg's lock; a delivered leg's payout first
    leaves escrow as release_leg posts it, with ops as the actor): never a second money
    path, and a repeat finds it settled (``changed`` False, not audited). Audited
    ``leg.settle`` with ``actor``. Refused (Conflict): leg_in_progress (a rider has the
    leg: his hold stays), no_payment, partner_no_account, reversal_waits (the gateway has
    not processed the hold yet: it goes back by itself once it has), leg_busy (a job of
    the leg is running), transfer_refused; Unavailable gateway_unavailable."""
    from core.adapters.api_models import AuditEntry
    from core.domain.errors import NotFound
    from core.logs import mask_note

    reason = (reason or "").strip()
    if not SETTLE_REASON_MIN <= len(reason) <= SETTLE_REASON_MAX:
        raise ValidationError(f"give a reason of {SETTLE_REASON_MIN} to {SETTLE_REASON_MAX} "
                              "characters: the audit log keeps it", code="bad_reason",
                              field="reason")
    with transaction() as session:
        # A number past PostgreSQL's integer names no leg (and is no query's error).
        leg = session.get(Leg, leg_id) if 1 <= leg_id <= 2**31 - 1 else None
        if leg is None or (booking_id is not None and leg.booking_id != booking_id):
            raise NotFound(f"no leg {leg_id}" + (" on this booking" if booking_id else ""),
                           code="not_found", field="leg_id")
        booking = session.get(Booking, leg.booking_id)
        assert booking is not None
        reference = booking.reference
        if leg.partner_id is not None and leg.status in _RIDING:
            raise Conflict(f"leg {leg_id} of booking {reference} is its rider's "
                           f"({leg.status}): his hold stays until the leg is delivered or "
                           "stopped", code="leg_in_progress", field="leg_id")
        if _capture_payment_id(session, leg.booking_id) is None:
            raise Conflict(f"booking {reference} has no payment: nothing is held for the "
                           "leg", code="no_payment", field="leg_id")
        if session.scalar(select(LegTransfer.id).where(
                LegTransfer.leg_id == leg_id, LegTransfer.last_error == REVERSAL_WAITS)):
            raise _reversal_waits(leg_id)
        unreleased = leg.status == LegStatus.DELIVERED.value and not ledger.recorded(
            session, f"release:leg:{leg_id}")
        partner = session.get(PartnerProfile, leg.partner_id) if leg.partner_id else None
        has_account = bool(partner and partner.payout_account_id)
        owed = unreleased or ledger.leg_payable(session, leg_id) > ledger.leg_paid_out(
            session, leg_id)
    if owed and leg.partner_id is not None and not has_account:
        raise Conflict(f"the rider of leg {leg_id} has no payout account: set-payout-account "
                       "first (what he is owed is paid then)", code="partner_no_account",
                       field="leg_id")
    if unreleased:
        release_leg(leg_id, actor)  # the payout leaves escrow as the automatic release does
    try:
        result = settle_leg_transfer(leg_id)
    except (LegBusy, AccountChanged) as exc:
        raise Conflict(f"a job of leg {leg_id} is working on its transfer now: try again in "
                       "a minute", code="leg_busy", field="leg_id") from exc
    except gw.BadRequestError as exc:
        raise Conflict(f"the gateway refused: {str(exc)[:200]}", code="transfer_refused",
                       field="leg_id") from exc
    except (gw.ServerError, gw.GatewayError, OSError) as exc:
        # requests' errors are OSErrors: the gateway did not answer.
        raise Unavailable("the payment gateway did not answer: try again in a minute",
                          code="gateway_unavailable") from exc
    if result == "reversal-waits":
        raise _reversal_waits(leg_id)
    if result == "refused":
        raise Conflict("the gateway refused the transfer (ops were told why)",
                       code="transfer_refused", field="leg_id")
    if result == "no-account":
        raise Conflict(f"the rider of leg {leg_id} has no payout account",
                       code="partner_no_account", field="leg_id")
    if result == "no-payment":
        raise Conflict("the booking has no payment: nothing is held for the leg",
                       code="no_payment", field="leg_id")
    if result not in _BY_HAND:  # "missing": the leg went meanwhile
        raise Conflict(f"leg {leg_id} was not settled ({result})", code="not_settled",
                       field="leg_id")
    outcome, changed, message = _BY_HAND[result]
    if changed:
        with transaction() as session:
            session.add(AuditEntry(actor=str(actor), action="leg.settle",
                                   target=f"leg:{leg_id}",
                                   details={"booking": reference, "outcome": outcome,
                                            "reason": mask_note(reason)}))
    log.info("leg settled by hand", extra={"leg_id": leg_id, "outcome": outcome})
    return LegSettled(leg_id, reference, outcome, changed, message)


def _reversal_waits(leg_id: int) -> Conflict:
    return Conflict(f"a hold of leg {leg_id} cannot go back before the gateway has processed "
                    "it: it goes back by itself once it has", code="reversal_waits",
                    field="leg_id")


# A leg in these states is its rider's: his hold is kept (or made) and others' go back.
_RIDING = (LegStatus.ASSIGNED.value, LegStatus.PICKED_UP.value, LegStatus.LOCKED.value)


def _after_reversal_wait(session: Session, leg_id: int, after: str) -> str | None:
    """A transfer of a leg whose reversal waited was processed (or failed) at the gateway:
    the leg's job runs again and reverses what must go, after the commit; which one it is
    ("hold", "transfer"). Its job id names what it runs after (``after``: the transfer's
    id, or ``resumed`` by the reconciliation). A leg a rider has (assigned, picked up, or
    locked at pickup): its hold job, which reverses the holds of others and keeps or makes
    his (a settle would reverse his too, unearned yet). Any other: its settle."""
    leg = session.get(Leg, leg_id)
    if leg is None:
        return None
    riding = leg.partner_id is not None and leg.status in _RIDING
    func = "hold_leg_transfer" if riding else "settle_leg_transfer"
    job = "hold" if riding else "transfer"
    _enqueue_after_commit(session, f"workers.payments.{func}", leg_id,
                          job_id=f"{job}-{leg_id}-after-{after}"[:120])
    return job


class LegBusy(RuntimeError):
    """Another job is working on this leg's transfers; RQ runs this one again later."""


# The lock outlives the few gateway calls made under it (15 s timeout each), and a job
# waits that long for it before giving way to RQ's retry.
LEG_LOCK_TTL_S = 300
LEG_LOCK_WAIT_S = 30
BUSY_RETRY_INTERVALS = (5, 30, 120)


@contextmanager
def _leg_transfer_lock(leg_id: int) -> Iterator[None]:
    """Serialise the jobs that read a leg and list its transfers before creating one
    (hold_leg_transfer, settle_leg_transfer): two at once would each find none and each
    create one. Raises LegBusy when another job keeps it past LEG_LOCK_WAIT_S."""
    lock = redis_client().lock(f"lock:leg-transfer:{leg_id}", timeout=LEG_LOCK_TTL_S,
                               blocking_timeout=LEG_LOCK_WAIT_S)
    if not lock.acquire():
        job = get_current_job()
        if job is not None and job.retries_left is None:
            # Enqueued without a Retry (dispatch's hold-<leg>-<offer>): give it one, or
            # this raise would end it for good.
            job.retries_left = len(BUSY_RETRY_INTERVALS)
            job.retry_intervals = list(BUSY_RETRY_INTERVALS)
        raise LegBusy(f"leg {leg_id}: another job is working on its transfer")
    token = _waiting.set(set())
    ended = False
    try:
        yield
        ended = True
    except gw.BadRequestError as exc:
        # Refused (a reversal of a processed transfer, say): no rerun of ours changes
        # that, so no note may keep the reconciliation running the job every hour; RQ's
        # retries, then its failed jobs, are where it ends.
        ended = not gw.is_in_progress(exc)
        raise
    finally:
        waiting = _waiting.get() or set()
        try:
            if waiting:
                _keep_reversal_waiting(leg_id)
            elif ended:
                _end_reversal_wait(leg_id)
        finally:
            _waiting.reset(token)
            try:
                lock.release()
            except LockError:
                log.warning("leg transfer lock expired before its job ended",
                            extra={"leg_id": leg_id})
        if waiting:
            _look_again(leg_id, waiting)


class AccountChanged(RuntimeError):
    """The partner's payout account is no longer the one the job read: ops changed or
    cleared it since (_paying_to). The job starts again, with the account now."""


@contextmanager
def _paying_to(partner_id: int | None, account: str) -> Iterator[None]:
    """Around a gateway call that sends money to a partner's payout account (a hold made,
    released, a direct transfer): read the account again, its row held FOR KEY SHARE until
    the call returns. Changed or cleared since the job read it: AccountChanged, and no
    call. An UPDATE of payout_account_id (a column with a unique index) conflicts with
    that lock, as do ops' set_payout_account and clear_payout_account (their FOR UPDATE):
    so no transfer is made to an account after a change of it has committed, and a change
    made while a transfer to the old one is being made waits for the call (at most the
    gateway's timeout). Other writes of the row (duty, offers) do not wait. Nothing else
    is done under the lock: the job's other transactions must never wait for one that
    waits for it."""
    with transaction() as session:
        now = session.scalar(select(PartnerProfile.payout_account_id).where(
            PartnerProfile.id == partner_id).with_for_update(read=True, key_share=True)) \
            if partner_id is not None else None
        if now != account:
            log.warning("partner's payout account changed while paying them; the job "
                        "starts again with the account now", extra={"partner_id": partner_id})
            raise AccountChanged(f"partner {partner_id}: payout account changed")
        yield


def _again_if_account_changed(job: Callable[[int], str], leg_id: int) -> str:
    """Run a leg's job (under its lock); once more if the partner's payout account changed
    while it ran (AccountChanged): it reads everything again, the account too. Changed
    again: raised, for RQ's retry."""
    try:
        return job(leg_id)
    except AccountChanged:
        return job(leg_id)


def hold_leg_transfer(leg_id: int) -> str:
    """Job: once a partner is assigned, create the leg's Route transfer to them on hold.

    The money moves to the partner's linked account only when the hold is released after
    delivery (settle_leg_transfer); until then it is reversible and the ledger shows no
    payout. A partner who gives the job back has theirs reversed when the next one is
    held. Found by our leg id in the notes, so retries never double; under the leg's lock,
    so neither does a settle_leg_transfer running at the same time.
    """
    with _leg_transfer_lock(leg_id):
        return _again_if_account_changed(_hold_leg_transfer, leg_id)


def _hold_leg_transfer(leg_id: int) -> str:
    with transaction() as session:
        leg = session.get(Leg, leg_id)
        if leg is None:
            return "missing"
        if leg.status not in _RIDING or leg.partner_id is None:
            return "not-assigned"  # a leg locked at pickup is still its rider's
        booking_id, partner_id, amount = leg.booking_id, leg.partner_id, leg.payout_paise
        payment_id = _capture_payment_id(session, booking_id)
        partner = session.get(PartnerProfile, partner_id)
        account = partner.payout_account_id if partner else None
        refunded = payment_id is not None and _refund_asked(session, payment_id)
        row_transfer = session.scalar(select(LegTransfer.transfer_id).where(
            LegTransfer.leg_id == leg_id))
    if payment_id is None:
        return "no-payment"
    c = gw.client()
    if not account:
        # No hold for him (his pay waits for set-payout-account), but the holds of the
        # riders before him go back now all the same, not at the leg's settle.
        _reverse_given_back(c, leg_id, booking_id, payment_id, row_transfer)
        return "no-account"
    if amount <= 0:
        return "nothing-to-hold"
    transfers = c.payment.transfers(payment_id, {}).get("items") or []
    _reverse_others(c, transfers, leg_id, account)
    held = _live(transfers, leg_id, account)
    if held is not None:
        if held.get("id") != row_transfer and held.get("on_hold"):
            # Made by a run that died (its worker killed) between the gateway's answer and
            # the row's commit: no twin is made, and it is recorded now as that run would
            # have, or no sweep would know of the money held (set_payout_account, a
            # cancel's settle of left holds go by the row).
            _save_transfer(leg_id, booking_id, partner_id, payment_id, account, held,
                           "on_hold")
            log.warning("a hold made by a run that died is recorded now",
                        extra={"leg_id": leg_id})
            return "held-found"
        return "already-held"
    if _waiting.get():
        # The last rider's hold cannot go back before the gateway processed it, and the
        # payment may not carry both: his is reversed and this one made once it is.
        return "reversal-waits"
    if refunded:
        return _no_hold_after_refund(leg_id)
    try:
        with _paying_to(partner_id, account):
            created = c.payment.transfer(payment_id, {"transfers": [{
                "account": account, "amount": amount, "currency": "INR", "on_hold": True,
                "notes": {"leg_id": str(leg_id), "booking_id": str(booking_id)},
            }]})
    except gw.BadRequestError as exc:
        if not _takes_no_transfer(c, payment_id, exc):
            raise
        return _no_hold_after_refund(leg_id)  # a refund we did not know of (the dashboard)
    items = created.get("items") or [created]
    live = _live(items, leg_id) or items[0]
    _save_transfer(leg_id, booking_id, partner_id, payment_id, account, live, "on_hold")
    return "held"


def _reverse_given_back(c, leg_id: int, booking_id: int, payment_id: str,
                        row_transfer: str | None, transfers: list[dict] | None = None) -> None:
    """The leg's rider has no payout account: every hold still on the leg is for a rider
    before him (who gave the job back), and goes back now (_reverse_others: one the
    gateway has not processed yet waits for it, noted on the leg's row). The row, naming
    the last of them, says it is reversed: else it would show a payout on hold to that
    rider (set_payout_account refuses to change his account while it does)."""
    if transfers is None:
        transfers = c.payment.transfers(payment_id, {}).get("items") or []
    if not _reverse_others(c, transfers, leg_id, None):
        return
    ended = next((t for t in transfers if row_transfer is not None
                  and t.get("id") == row_transfer and t.get("status") == "reversed"), None)
    if ended is not None:
        _save_transfer(leg_id, booking_id, None, payment_id, None, ended, "reversed")


def _no_hold_after_refund(leg_id: int) -> str:
    """A refund of the booking's payment was asked: Razorpay takes no transfer on it, so
    no hold is made. What the leg is owed (a fee, a delivered leg) is paid as
    settle_leg_transfer pays it then (a direct transfer); nothing owed yet, nothing now:
    the leg's settle after delivery pays it. The caller holds the leg's lock."""
    with transaction() as session:
        owed = ledger.leg_payable(session, leg_id) > ledger.leg_paid_out(session, leg_id)
    if owed:
        return _settle_leg_transfer(leg_id)
    log.info("no hold on a refunded payment; the leg is paid when it earns",
             extra={"leg_id": leg_id})
    return "refund-asked"


def settle_leg_transfer(leg_id: int) -> str:
    """Job: make the gateway's Route transfer for a leg match what the ledger says it earned.

    Earned > 0: find the leg's transfer among the payment's transfers (our leg id is in
    its notes), create it on hold if missing, reverse any excess still on hold, then
    release the hold. Only then is the money the partner's for good: the ledger's
    transfer_processed entry (the amount left on the transfer, to the leg's current
    partner) is posted with the row marked released, also when a retry finds the hold
    already released, if the gateway has processed the transfer; a transfer still pending
    there has moved no money yet, and its transfer.processed (or the sweep's next settle)
    posts the payout. Earned 0 (cancelled before delivery): reverse what is left on a
    transfer made on hold for it, if any (nothing was posted for it). Under the leg's lock
    (see hold_leg_transfer).

    Razorpay takes no new transfer on a payment once a refund of it was asked (a
    cancellation fee owed to a partner who had no linked account when the refund of the
    rest went): what the leg is still owed is then paid by a direct transfer from the
    platform's balance, with no hold, found again by the same notes (GET /v1/transfers)
    and made under an X-Transfer-Idempotency key, so a retry whose answer was lost pays
    once. Ops hear of it only if that one is refused too.

    A transfer released for more than the leg earned (its hold released in the Razorpay
    dashboard before a cancellation fee cut the leg's earnings) cannot be cut any more:
    the payout is recorded as the gateway made it, and ops hear of the excess once.

    Each call that sends money to the partner's account reads it again under a lock of
    their row (_paying_to): ops' change of it waits for the call, and one committed since
    the job read it starts the job again, with the account now. A transfer of the leg
    released to the account they had before is the leg's payout all the same: processed,
    it is posted (its transfer.processed late or lost); still on its way, it is waited
    for; no transfer is made to the new account while it stands (_paid_before)."""
    with _leg_transfer_lock(leg_id):
        return _again_if_account_changed(_settle_leg_transfer, leg_id)


def _settle_leg_transfer(leg_id: int) -> str:
    with transaction() as session:
        leg = session.get(Leg, leg_id)
        if leg is None:
            return "missing"
        booking_id, partner_id = leg.booking_id, leg.partner_id
        payment_id = _capture_payment_id(session, booking_id)
        target = ledger.leg_payable(session, leg_id)
        paid_out = ledger.leg_paid_out(session, leg_id)
        partner = session.get(PartnerProfile, partner_id) if partner_id else None
        account = partner.payout_account_id if partner else None
        row = session.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        since = row.created_at if row is not None else clock.now()
        row_transfer = row.transfer_id if row is not None else None
        row_status = row.status if row is not None else None
        direct = payment_id is not None and _refund_asked(session, payment_id)
    if payment_id is None:
        return "no-payment"
    c = gw.client()
    transfers = c.payment.transfers(payment_id, {}).get("items") or []
    if direct or (row_transfer is not None
                  and row_transfer not in {t.get("id") for t in transfers}):
        # The payment takes no new transfer (a refund of it was asked), or the leg's row
        # names a transfer not made on it (a direct one): the leg's direct transfers
        # count as its transfers too. The one the row names, fetched by its id, when it
        # is still the partner's; else every transfer since the row is looked through.
        known = _named_direct(c, leg_id, row_transfer, account, transfers)
        transfers += known if known is not None else _direct_transfers(c, leg_id, since,
                                                                       transfers)
    failed = [str(t["id"]) for t in transfers
              if gw.note_int(t, "leg_id") == leg_id and t.get("status") == "failed"]
    if failed:
        # A payout posted for a transfer that failed since (its webhook lost or not yet
        # here) is owed again before anything is compared.
        with transaction() as session:
            paid_out -= sum(_void_payout(session, tid, f"leg:{leg_id}:transfer-failed")
                            for tid in failed)
    if target > 0 and paid_out >= target:
        # Released and recorded already. Looking again by account would miss that payout
        # if the partner's linked account changed since, and pay the leg a second time.
        # Owed still: ops chose to pay a payout reversed since again (reversal_repaid).
        with transaction() as session:
            owed = ledger.leg_owed(session, leg_id)
            since = ledger.leg_repaid_since(session, leg_id) or since
            seq = ledger.leg_repaid_count(session, leg_id)
        if owed > 0 and seq > 0:
            return _repay_reversed(c, leg_id, booking_id, partner_id, account, owed,
                                   since, seq, transfers)
        if account:
            # Paid: a hold still left for someone else (one whose reversal waited until
            # the gateway processed it) goes back now. A released transfer is not touched.
            _reverse_others(c, transfers, leg_id, account)
        return "already-paid"
    if account:
        _reverse_others(c, transfers, leg_id, account)
    elif partner_id is not None and target > 0:
        # His pay waits for an account (the row says so below); the holds of the riders
        # before him go back.
        _reverse_given_back(c, leg_id, booking_id, payment_id, None, transfers)
    live = _live(transfers, leg_id, account) if account else _live(transfers, leg_id)
    if target <= 0:
        if live is None:
            # Reversed already (by a run that stopped before saving it, or in the
            # dashboard): the row says so too, whoever has the leg now.
            ended = next((t for t in transfers if row_transfer is not None
                          and t.get("id") == row_transfer and t.get("status") == "reversed"),
                         None)
            if ended is not None and row_status != "reversed":
                _save_transfer(leg_id, booking_id, partner_id, payment_id, account, ended,
                               "reversed")
            return "nothing-to-transfer"
        if _left(live) > 0:
            _reverse(c, live, _left(live), leg_id)
        # Every hold still made for the leg goes back, not only the first the gateway
        # lists: with no rider (or one without an account) all of them; with one, his
        # own second hold (a job past its lock; the others' went above).
        _reverse_others(c, [t for t in transfers if t is not live
                            and (not account or t.get("recipient") == account)],
                        leg_id, None)
        # The row follows its own transfer (reversed now), whichever was listed first.
        live = next((t for t in transfers if row_transfer is not None
                     and t.get("id") == row_transfer and t.get("on_hold")
                     and t.get("status") != "failed"), live)
        if live.get("status") != "reversed":
            # Not processed yet at the gateway: the row stays on hold until its reversal.
            return "reversal-waits"
        _save_transfer(leg_id, booking_id, partner_id, payment_id, account, live, "reversed")
        return "reversal-waits" if _waiting.get() else "reversed"
    if partner_id is None or not account:
        _save_transfer(leg_id, booking_id, partner_id, payment_id, account, None, "pending",
                       error=NO_ACCOUNT_ERROR, amount=target)
        log.warning("leg transfer waits: partner has no linked account",
                    extra={"leg_id": leg_id})
        return "no-account"
    if live is not None and live.get("on_hold", True) and _left(live) < target:
        # Held for less than the leg earned (a cancellation fee above the leg's payout): a
        # transfer cannot grow, so the hold goes back and one for the target is made.
        if not _reverse(c, live, _left(live), leg_id):
            return "reversal-waits"
        live = None
    if live is None and _waiting.get():
        # Another rider's hold goes back only once the gateway has processed it, and the
        # payment may not carry both (a new transfer refused, ops told for nothing) or
        # the leg would have two: the leg is paid by the job its processing runs.
        return "reversal-waits"
    if live is None:
        before = _released_before(transfers, leg_id, account)
        if before is not None:
            # Released already to an account the partner had before ops changed it: his
            # payout, paid there or on its way there; none is made to the new account.
            return _paid_before(leg_id, booking_id, partner_id, payment_id, before)
    if live is None and not direct:
        try:
            with _paying_to(partner_id, account):
                created = c.payment.transfer(payment_id, {"transfers": [{
                    "account": account, "amount": target, "currency": "INR",
                    "on_hold": True,
                    "notes": {"leg_id": str(leg_id), "booking_id": str(booking_id)},
                }]})
        except gw.BadRequestError as exc:  # no retry will change it: a person must act
            if not _takes_no_transfer(c, payment_id, exc):
                _transfer_refused(leg_id, booking_id, partner_id, payment_id, account,
                                  target, str(exc))
                return "refused"
            # A refund of the payment was asked: it takes no transfer now. Look for a
            # direct transfer of the leg (made by a run that lost its answer) first.
            direct = True
            found = _direct_transfers(c, leg_id, since, transfers)
            transfers += found
            live = _live(found, leg_id, account)
            before = _released_before(found, leg_id, account) if live is None else None
            if before is not None:
                return _paid_before(leg_id, booking_id, partner_id, payment_id, before)
        else:
            items = created.get("items") or [created]
            live = _live(items, leg_id) or items[0]
            _save_transfer(leg_id, booking_id, partner_id, payment_id, account, live,
                           "on_hold")
    if live is None:
        # The payment can carry no transfer: the platform's balance pays what the leg is
        # still owed (the refund took only the rest of the payment), with no hold.
        _save_transfer(leg_id, booking_id, partner_id, payment_id, account, None, "pending",
                       error="direct transfer asked", amount=target)
        try:
            with _paying_to(partner_id, account):
                live = c.transfer.create({
                    "account": account, "amount": target, "currency": "INR",
                    "notes": {"leg_id": str(leg_id), "booking_id": str(booking_id),
                              "partner_id": str(partner_id)},
                }, headers={"X-Transfer-Idempotency": _direct_key(transfers, leg_id)})
        except gw.BadRequestError as exc:
            if gw.is_in_progress(exc):  # a twin request may make it: ask again later
                raise
            _transfer_refused(leg_id, booking_id, partner_id, payment_id, account, target,
                              str(exc))
            return "refused"
    paid = _left(live)
    if live.get("on_hold", True):
        # A retry after a failed release finds the excess already reversed: _left sees it.
        if paid > target:
            if not _reverse(c, live, paid - target, leg_id):
                return "reversal-waits"  # released once the excess went back
            paid = target
        with _paying_to(partner_id, account):
            released = c.transfer.edit(live["id"], {"on_hold": False})
        if "amount" in released:
            paid = _left(released)
        live = {**live, **released}
    if paid != target:
        log.warning("leg transfer released with another amount than the leg earned",
                    extra={"leg_id": leg_id, "paid_paise": paid, "earned_paise": target})
    if paid > target:
        # Released for more than the leg earned (its hold released in the dashboard
        # before a cancellation fee cut what it earned): the excess is no longer on hold
        # to reverse. Ops hear of it once, before the payout is recorded (a retry then
        # finds the leg paid and would not tell them).
        _transfer_overpaid(leg_id, booking_id, paid, paid - target)
    if not _moved(live):
        # Released, but the gateway has not processed the transfer yet: no money moved,
        # so no payout is posted. transfer.processed posts it (without a hold now: the
        # same entry, keyed by the transfer), or the sweep's next settle of the unpaid
        # leg does; transfer.failed makes the transfer again.
        _save_transfer(leg_id, booking_id, partner_id, payment_id, account, live, "released",
                       amount=paid)
        return "released-pending"
    _save_transfer(leg_id, booking_id, partner_id, payment_id, account, live, "released",
                   amount=paid, paid_out=paid)
    return "released"


def _paid_before(leg_id: int, booking_id: int, partner_id: int, payment_id: str,
                 transfer: dict) -> str:
    """The leg's transfer released to an account its partner had before (_released_before)
    is its payout. Processed at the gateway (its transfer.processed late, or lost): posted
    now as that event posts it, to the partner the leg's row names for it, for what is
    left on it, keyed by the transfer (so once, whichever comes first), the row naming
    it and its own account. Not processed yet: its outcome decides (processed: its event
    posts the payout; failed: the leg's transfer is made again, to the account now)."""
    if not _moved(transfer):
        return "transfer-pending"
    tid, left = str(transfer["id"]), _left(transfer)
    with transaction() as session:
        row = session.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        if row is not None and row.transfer_id == tid and row.partner_id is not None:
            partner_id = row.partner_id  # whom it was made for
        differs = _payout_differs(session, tid, left, leg_id)
    if not differs:
        _save_transfer(leg_id, booking_id, partner_id, payment_id,
                       transfer.get("recipient"), transfer, "released", amount=left,
                       paid_out=left)
    log.warning("a leg's payout was released to an account its partner had before; it is "
                "the leg's payout, none is made to the account now",
                extra={"leg_id": leg_id, "paid_paise": left})
    return "paid-before"


DIRECT_LOOKBACK = timedelta(hours=1)  # before the leg's row: clocks and the row's commit
DIRECT_PAGES = 20  # of 100 transfers, newest first


def _refund_asked(session: Session, payment_id: str) -> bool:
    """Whether a refund of the payment is known to have reached the gateway: Razorpay
    takes no new transfer on a payment once a refund of it was asked."""
    return session.scalar(select(Refund.id).where(
        Refund.payment_id == payment_id,
        Refund.gateway_refund_id.is_not(None) | Refund.status.in_(("pending", "processed")),
    ).limit(1)) is not None


def _takes_no_transfer(c, payment_id: str, exc: Exception) -> bool:
    """Whether the gateway refused a transfer on the payment because a refund of it was
    asked (say, one whose answer was lost, or made from the dashboard)."""
    if "refund" in str(exc).lower():
        return True
    payment = c.payment.fetch(payment_id)
    return bool(payment.get("amount_refunded") or payment.get("refund_status"))


def _is_direct(transfer: dict) -> bool:
    """A direct transfer: its source is the platform's account, not a payment or order."""
    return not str(transfer.get("source") or "").startswith(("pay_", "order_"))


def _direct_transfers(c, leg_id: int, since: datetime, known: list[dict]) -> list[dict]:
    """The leg's direct transfers (found by our leg id in their notes, as the payment's
    are) made since its row was: the gateway lists every transfer, newest first."""
    start = int((since - DIRECT_LOOKBACK).timestamp())
    seen = {t.get("id") for t in known}
    found: list[dict] = []
    for page in range(DIRECT_PAGES):
        items = c.transfer.all({"from": start, "count": 100, "skip": page * 100}
                               ).get("items") or []
        for t in items:  # a page may repeat one of the last (new transfers push them on)
            if gw.note_int(t, "leg_id") == leg_id and _is_direct(t) and t.get("id") not in seen:
                seen.add(t.get("id"))
                found.append(t)
        if len(items) < 100:
            return found
    log.warning("leg's direct transfers: not every page of transfers was looked at",
                extra={"leg_id": leg_id})
    return found


def _named_direct(c, leg_id: int, transfer_id: str | None, account: str | None,
                  known: list[dict]) -> list[dict] | None:
    """The leg's direct transfer its row names, fetched by id, if it is still live and to
    the partner's account now: it is then the leg's transfer, and the other direct ones
    (failed before it) change nothing. None when that is not so: look through them all."""
    if transfer_id is None or not account or transfer_id in {t.get("id") for t in known}:
        return None
    try:
        t = c.transfer.fetch(transfer_id)
    except gw.BadRequestError:
        return None
    if gw.note_int(t, "leg_id") != leg_id or not _is_direct(t) or (
            _live([t], leg_id, account) is None):
        return None
    return [t]


def _direct_key(transfers: list[dict], leg_id: int) -> str:
    """X-Transfer-Idempotency of the leg's next direct transfer: the same for a retry
    whose first request's answer was lost, a new one after a transfer of it failed."""
    ended = sum(1 for t in transfers if gw.note_int(t, "leg_id") == leg_id and _is_direct(t)
                and t.get("status") in ("failed", "reversed"))
    return f"ridechain-leg-{leg_id}-{ended}"


def _transfer_refused(leg_id: int, booking_id: int, partner_id: int, payment_id: str,
                      account: str, amount: int, error: str) -> None:
    """The gateway refused a leg's transfer (a linked account not activated, say): the
    row says so and ops hear of it once; the sweep tries again, less and less often."""
    from core.services.dispatch import alert_ops  # dispatch imports payments

    log.error("leg transfer refused by the gateway", extra={"leg_id": leg_id})
    _save_transfer(leg_id, booking_id, partner_id, payment_id, account, None, "failed",
                   error=f"refused: {error}"[:200], amount=amount)
    with transaction() as session:
        booking = session.get(Booking, booking_id)
        assert booking is not None
        alert_ops(session, "payment.ops_transfer_refused", booking_id=booking_id,
                  dedupe_key=f"transfer-{leg_id}-refused", ref=booking.reference,
                  leg=leg_id, payout_paise=amount, error=alert_error(error))


def _transfer_overpaid(leg_id: int, booking_id: int, paid: int, over: int) -> None:
    """Tell ops once that a leg's transfer left its rider ``over`` paise more than the
    leg earned (``paid`` in all): a person must get it back or let it be."""
    from core.services.dispatch import alert_ops  # dispatch imports payments

    with transaction() as session:
        booking = session.get(Booking, booking_id)
        assert booking is not None
        alert_ops(session, "payment.ops_transfer_overpaid", booking_id=booking_id,
                  dedupe_key=f"transfer-{leg_id}-overpaid", ref=booking.reference,
                  leg=leg_id, paid_paise=paid, over_paise=over)


def _save_transfer(leg_id: int, booking_id: int, partner_id: int | None, payment_id: str,
                   account: str | None, entity: dict | None, status: str, *,
                   error: str | None = None, amount: int | None = None,
                   paid_out: int | None = None) -> None:
    """Record the leg's transfer row; with ``paid_out`` (the hold was released), post the
    payout to ``partner_id`` in the same transaction.

    The row follows the leg's latest transfer: a new transfer id brings its partner,
    account and payment (the partner who gave the job back keeps no claim). Its status
    does not go back from released to on hold; reversed always wins.

    A leg with no partner now (the job given back) makes no row and hands none over, but
    the row still records what the gateway says of the transfer it names (the hold of
    the partner who gave the job back, reversed): else it would show a payout on hold to
    them for good (set_payout_account refuses to change their account while it does)."""
    with transaction() as session:
        if paid_out is not None:
            ledger.lock_booking(session, booking_id)  # the booking before the row: as events
        row = session.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id)
                             .with_for_update())
        amt = amount if amount is not None else int((entity or {}).get("amount") or 0)
        tid = (entity or {}).get("id") or None
        if partner_id is None:  # given back: only the row's own transfer, as the gateway says
            if row is None or tid is None or tid != row.transfer_id or paid_out is not None:
                return
            partner_id = row.partner_id  # the row keeps its partner (nothing is handed over)
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
            _book_transfer_fee(session, booking_id, entity or {},
                               f"leg:{leg_id}:transfer-released")
            _transfer_went_through(leg_id)


# --- reversed payouts: ops decide ----------------------------------------------------------


def _is_repay(transfer: dict) -> bool:
    """A direct transfer that pays a reversed payout again (ops' decision)."""
    notes = transfer.get("notes")
    return isinstance(notes, dict) and bool(notes.get("repay"))


def _on_repay_transfer(entity: dict, tid: str, leg_id: int, processed: bool,
                       cause: str) -> str:
    """The gateway processed (or failed) a transfer paying a reversed payout again: the
    payout is posted once for what is left on it; a failure voids what was posted and the
    leg's settle makes it anew (under a new idempotency key). A late event, a snapshot
    from before a partial reversal the settle posted the rest of, posts nothing
    (_payout_differs), as for a leg's own transfer."""
    with transaction() as session:
        leg = session.get(Leg, leg_id)
        if leg is None or leg.partner_id is None:
            return "unknown-transfer"
        ledger.lock_booking(session, leg.booking_id)
        if not processed:
            _void_payout(session, tid, cause)
            _resettle_after_failure(session, leg_id, tid, entity)
            return "repay-failed"
        if ledger.recorded(session, f"transfer:{tid}:failed") or _left(entity) <= 0:
            return "transfer-failed-before"
        if _payout_differs(session, tid, _left(entity), leg_id):
            return "transfer-processed-before"
        partner_id = gw.note_int(entity, "partner_id") or leg.partner_id
        if ledger.post(session, rules.transfer_processed(leg.booking_id, leg_id, partner_id,
                                                         tid, _left(entity)),
                       actor="gateway:razorpay", cause=cause):
            _transfer_went_through(leg_id)
            return "repay-processed"
        return "duplicate-transfer-event"


def _repay_reversed(c, leg_id: int, booking_id: int, partner_id: int | None,
                    account: str | None, owed: int, since: datetime, seq: int,
                    known: list[dict]) -> str:
    """Pay the leg's partner what ops chose to pay again of a reversed payout, by a direct
    transfer from the platform's balance (where the reversal put the money), under an
    X-Transfer-Idempotency key: the same for a retry whose answer was lost, a new one for
    a new decision or after a repay transfer failed. One already made and processed is
    posted (its event lost), as its event posts it; one posted already is left as it is,
    also when the gateway shows less on it now (part of it reversed since: that reversal
    is its own entry, and what ops chose to pay again of it is ``owed``); one still
    pending is waited for. The caller holds the leg's lock."""
    if partner_id is None or not account:
        log.warning("reversed payout to pay again waits: partner has no linked account",
                    extra={"leg_id": leg_id})
        return "no-account"
    found = [t for t in _direct_transfers(c, leg_id, since, known) if _is_repay(t)]
    for t in found:
        if _moved(t) and _left(t) > 0:
            with transaction() as session:
                ledger.lock_booking(session, booking_id)
                if _payout_differs(session, str(t["id"]), _left(t), leg_id):
                    continue  # posted before the partial reversal: the ledger has it all
                if ledger.post(session, rules.transfer_processed(
                        booking_id, leg_id, gw.note_int(t, "partner_id") or partner_id,
                        str(t["id"]), _left(t)),
                        actor=str(SYSTEM), cause=f"leg:{leg_id}:repaid"):
                    owed -= _left(t)
    if any(t.get("status") in _UNPROCESSED_TRANSFER for t in found):
        return "transfer-pending"
    if owed <= 0:
        return "repaid"
    ended = sum(1 for t in found if t.get("status") in ("failed", "reversed"))
    try:
        with _paying_to(partner_id, account):
            t = c.transfer.create({
                "account": account, "amount": owed, "currency": "INR",
                "notes": {"leg_id": str(leg_id), "booking_id": str(booking_id),
                          "partner_id": str(partner_id), "repay": str(seq)},
            }, headers={"X-Transfer-Idempotency": f"rc-repay-{leg_id}-{seq}-{ended}"})
    except gw.BadRequestError as exc:
        if gw.is_in_progress(exc):
            raise
        from core.services.dispatch import alert_ops  # dispatch imports payments

        log.error("transfer paying a reversed payout again refused", extra={"leg_id": leg_id})
        with transaction() as session:
            booking = session.get(Booking, booking_id)
            assert booking is not None
            alert_ops(session, "payment.ops_transfer_refused", booking_id=booking_id,
                      dedupe_key=f"repay-{leg_id}-{seq}-refused", ref=booking.reference,
                      leg=leg_id, payout_paise=owed, error=alert_error(str(exc)))
        return "refused"
    if not _moved(t):
        return "repay-pending"  # its transfer.processed posts it, or the next settle does
    with transaction() as session:
        ledger.lock_booking(session, booking_id)
        ledger.post(session, rules.transfer_processed(booking_id, leg_id, partner_id,
                                                      str(t["id"]), _left(t)),
                    actor=str(SYSTEM), cause=f"leg:{leg_id}:repaid")
    _transfer_went_through(leg_id)
    return "repaid"


PAY_AGAIN, REFUND, WRITE_OFF = "pay_again", "refund", "write_off"
# Under this, a reversed payout can be neither paid again nor refunded: ops write it off.
WRITE_OFF_UNDER_PAISE = min(TRANSFER_MIN_PAISE, REFUND_MIN_PAISE)


@dataclass(frozen=True)
class Resolution:
    """What resolving a leg's reversed payout does (or would do, in a dry run)."""

    action: str
    leg_id: int
    held_paise: int  # held for ops for the leg before
    amount_paise: int  # paid again, refunded, or written off
    still_held_paise: int  # held for ops for the leg after
    partner_id: int | None = None  # pay_again: whom
    refundable_paise: int | None = None  # refund: what the payment can still give back
    refund_attempt: int | None = None  # refund: the attempt made


def refund_payment_id(session: Session, booking_id: int) -> str | None:
    """The payment a reversed payout's refund goes back against: the booking's own."""
    return _capture_payment_id(session, booking_id)


def refundable_left(payment_id: str) -> int:
    """What the gateway can still refund of the payment (Razorpay refuses more): its
    amount less what was refunded, from the gateway (a refund from the dashboard
    counts), less our refunds of it not yet asked of the gateway. A network call: never
    inside a transaction."""
    payment = gw.client().payment.fetch(payment_id)
    left = int(payment.get("amount") or 0) - int(payment.get("amount_refunded") or 0)
    with transaction() as session:
        waiting = int(session.scalar(select(func.coalesce(func.sum(Refund.amount_paise), 0))
                                     .where(Refund.payment_id == payment_id,
                                            Refund.status == "requested",
                                            Refund.gateway_refund_id.is_(None))) or 0)
    return max(left - waiting, 0)


def resolve_reversed_payout(session: Session, booking: Booking, leg_id: int, action: str,
                            actor: Actor, *, dry_run: bool = False,
                            refundable: int | None = None,
                            gateway_down: bool = False) -> Resolution:
    """Ops: move a leg's reversed payout (held in the booking's reversed payouts) out, as
    they decide: ``pay_again`` makes it the partner's payable again and the leg's settle
    pays it by direct transfer; ``refund`` reserves it for a refund of the booking's
    payment (at most ``refundable``, what the gateway can still give back: the rest stays
    held); ``write_off`` ends one under WRITE_OFF_UNDER_PAISE, which the gateway would
    neither transfer nor refund: it becomes the platform's (its commission account), by
    an entry that says so (rules.reversal_written_off). Immutable entries; the caller's
    transaction (and its audit). A dry run checks and computes the same, and changes
    nothing.

    Raises NotFound (the leg is not the booking's), Conflict ``nothing_to_resolve`` (no
    payout of the leg was reversed), ``already_resolved`` (none held now),
    ``payout_too_small`` (pay_again under TRANSFER_MIN_PAISE: write it off),
    ``partner_blocked`` / ``partner_no_account`` / ``no_partner`` (pay_again to someone
    who cannot be paid), ``refund_open`` / ``payment_refunded`` / ``no_payment`` /
    ``refund_too_small`` (refund: under REFUND_MIN_PAISE, which the gateway refuses),
    ``write_off_too_large`` (write_off of what can be paid or refunded). Each refusal
    names the action that works instead (_instead).

    ``write_off`` also ends a reversed payout of Rs 1 or more once the customer's payment
    can give nothing back (``refundable`` 0: support refunded it in full from the
    dashboard, the platform's cost): the money can then only go to the partner again
    (pay_again, when ops decide they earned it) or to the platform, which paid the
    customer's refund; held for ever it would be no one's. Not while a refund of ours is
    open (``refund_open``: the gateway may have made it, and counted it in ``refundable``
    already), nor when the gateway could not say (``gateway_down``: 503
    ``gateway_unavailable``, for ops to retry)."""
    from core.domain.errors import NotFound
    from core.services.dispatch import VERIFIED_KYC  # dispatch imports payments

    if action not in (PAY_AGAIN, REFUND, WRITE_OFF):
        raise ValidationError(f"unknown action {action!r}", field="action")
    booking = ledger.lock_booking(session, booking.id)
    leg = session.get(Leg, leg_id, populate_existing=True)
    if leg is None or leg.booking_id != booking.id:
        raise NotFound("this booking has no such leg", code="not_found")
    came, held, out = ledger.leg_reversed_payouts(session, leg_id)
    if came <= 0:
        raise Conflict("no payout of this leg was reversed", code="nothing_to_resolve")
    if held <= 0:
        raise Conflict("this leg's reversed payout was resolved already",
                       code="already_resolved")
    refunded_in_full = refundable is not None and refundable <= 0
    if action == WRITE_OFF:
        if held >= WRITE_OFF_UNDER_PAISE and gateway_down:
            raise Unavailable("the payment gateway did not say whether the customer's "
                              "payment is refunded in full: try again in a minute",
                              code="gateway_unavailable")
        if held >= WRITE_OFF_UNDER_PAISE and _open_row(session, booking.id) is not None:
            raise Conflict("a refund of this booking is still under way: try when it has "
                           "settled", code="refund_open")
        if held >= WRITE_OFF_UNDER_PAISE and not refunded_in_full:
            raise Conflict(f"{held} paise can be paid: pay the partner again (pay_again) "
                           "or refund the customer (refund); write_off takes Rs 1 or more "
                           "only once the customer's payment is refunded in full",
                           code="write_off_too_large")
        done = Resolution(WRITE_OFF, leg_id, held, held, 0, refundable_paise=refundable)
        if not dry_run:
            _drop_planned_retries(session, booking.id, leg_id)
            ledger.post(session, rules.reversal_written_off(
                booking.id, leg_id, held, out + held,
                refunded_in_full=held >= WRITE_OFF_UNDER_PAISE),
                actor=str(actor), cause=f"leg:{leg_id}:reversal:write-off")
        return done
    if action == PAY_AGAIN:
        if held < TRANSFER_MIN_PAISE:
            raise Conflict(f"a transfer of {held} paise is under the gateway's minimum "
                           f"({TRANSFER_MIN_PAISE}): {_instead(held)}",
                           code="payout_too_small")
        partner = session.get(PartnerProfile, leg.partner_id) if leg.partner_id else None
        if partner is None:
            raise Conflict("the leg has no partner to pay", code="no_partner")
        if partner.kyc_status != VERIFIED_KYC:
            raise Conflict(f"partner {partner.id} is {partner.kyc_status}: they cannot be "
                           "paid; refund the customer, or verify them first",
                           code="partner_blocked")
        if not partner.payout_account_id:
            raise Conflict(f"partner {partner.id} has no payout account: give them one "
                           "first, or refund the customer", code="partner_no_account")
        done = Resolution(PAY_AGAIN, leg_id, held, held, 0, partner_id=partner.id)
        if dry_run:
            return done
        _drop_planned_retries(session, booking.id, leg_id)
        ledger.post(session, rules.reversal_repaid(booking.id, leg_id, partner.id, held,
                                                   out + held),
                    actor=str(actor), cause=f"leg:{leg_id}:reversal:pay-again")
        seq = ledger.leg_repaid_count(session, leg_id)
        _enqueue_after_commit(session, "workers.payments.settle_leg_transfer", leg_id,
                              job_id=f"transfer-{leg_id}-repay-{seq}")
        return done
    payment_id = _capture_payment_id(session, booking.id)
    if payment_id is None:
        raise Conflict("the booking has no captured payment to refund", code="no_payment")
    if _open_row(session, booking.id) is not None:
        raise Conflict("another refund of this booking is still under way: try when it "
                       "has settled", code="refund_open")
    left = held if refundable is None else refundable
    if left <= 0:
        raise Conflict("the booking's payment is refunded in full already: "
                       f"{_instead(held, refunded_in_full=True)}", code="payment_refunded")
    amount = min(held, left)
    if amount < REFUND_MIN_PAISE:
        raise Conflict(f"a refund of {amount} paise is under the gateway's minimum "
                       f"({REFUND_MIN_PAISE}): {_instead(held)}", code="refund_too_small")
    if dry_run:
        return Resolution(REFUND, leg_id, held, amount, held - amount, refundable_paise=left)
    _drop_planned_retries(session, booking.id, leg_id)
    refund = _reserve_attempt(session, booking, payment_id=payment_id, amount=amount, fee=0,
                              reason=REVERSED_PAYOUT, actor=str(actor), leg_id=leg_id,
                              cause=_decision_cause(leg_id))
    return Resolution(REFUND, leg_id, held, amount, held - amount, refundable_paise=left,
                      refund_attempt=refund.attempt)


def _instead(held: int, *, refunded_in_full: bool = False) -> str:
    """What ops can do with ``held`` paise of a leg's reversed payout when the action they
    asked for cannot be made: pay the partner again, or, under WRITE_OFF_UNDER_PAISE
    (which the gateway neither transfers nor refunds) or once the customer's payment is
    refunded in full, write it off."""
    if held < WRITE_OFF_UNDER_PAISE:
        return (f"{held} paise can be neither transferred nor refunded: write it off "
                "instead (action write_off: it becomes platform revenue)")
    if refunded_in_full:
        return ("pay the partner again instead (action pay_again), or, if they are not "
                "owed it, write it off (action write_off: the customer has all her money "
                "back, the platform paid it; it becomes platform revenue)")
    return "pay the partner again instead (action pay_again)"


def _drop_planned_retries(session: Session, booking_id: int, leg_id: int) -> None:
    """Ops decided anew about a leg's reversed payout: a retry planned of an earlier
    decision's failed refund is not made (it would refund, unasked, whatever of the leg
    is held then, or count with the new decision's tries). The caller holds the lock."""
    for r in session.scalars(select(Refund).where(
            Refund.booking_id == booking_id, Refund.reason == REVERSED_PAYOUT,
            Refund.status == "failed", Refund.retry_at.is_not(None))):
        if _refund_leg(session, r) == leg_id:
            r.retry_at = None


# --- refunds -------------------------------------------------------------------------------


def refund_booking(booking_id: int, reason: str) -> str:
    """Job: ask the gateway for the booking's open refund attempt.

    ``cancelled``: the amount was fixed by cancel_booking. ``no_partner`` / other reasons:
    whatever is still in escrow goes back. The legs' transfers are settled first
    (settle_leg_transfer): holds made for legs that earned nothing are reversed, so the
    platform's balance covers the refund, and legs owed a payout (a cancellation fee) are
    paid on the payment, which takes no new transfer once a refund of it was asked. A
    hold the gateway has not processed yet cannot be reversed: its reversal waits (the
    settle says "reversal-waits") and the refund is asked all the same; the hold goes
    back when the gateway processes it, and a fee of such a leg is paid then, by a direct
    transfer from the platform's balance. X-Refund-Idempotency is the attempt's row id:
    the same for every retry of an attempt, new for the next one.

    With nothing to ask (``nothing-to-refund``; ``already-<status>``: support refunded it
    all from the dashboard before a booking failed for want of a rider, or a retry), the
    holds left on the booking's legs go back all the same: their settles are queued
    (_settle_left_holds_of; not for an extra payment's or a reversed payout's refund).

    A refusal (4xx: the refund does not exist, e.g. the balance is too low after payouts)
    is raised for RQ to try again; on the job's last try it ends the attempt instead (the
    money goes back to escrow, the next attempt follows later: _attempt_failed). Ops hear
    at once of a balance too low, unless a hold whose reversal waits is still taken out
    of it: its reversal gives the balance back, and no top-up is needed for it (if the
    retries run out all the same, payment.ops_refund_stuck still comes). Any other error
    may have reached the gateway, so it only ever repeats this attempt."""
    if reason not in REFUND_REASONS:
        raise ValidationError(f"unknown refund reason {reason!r}", field="reason")
    with transaction() as session:
        booking = ledger.lock_booking(session, booking_id)
        refund = _open_row(session, booking_id)
        if refund is None and reason not in OWN_CHAIN_REFUNDS:
            refund = _open_main_refund(session, booking, reason, "system")
        refund = refund or _latest_refund(session, booking_id)
        if refund is None or refund.status not in ("requested",):
            # Nothing to ask (support refunded it all from the dashboard, or a retry finds
            # it asked): the holds left on the booking's legs go back all the same, as
            # they would before a refund. Not for an extra payment's or a reversed
            # payout's refund: the booking's legs are not theirs.
            if reason not in OWN_CHAIN_REFUNDS:
                _settle_left_holds_of(session, booking_id, set())
            return "nothing-to-refund" if refund is None else "already-" + refund.status
        refund_id, payment_id, amount = refund.id, refund.payment_id, refund.amount_paise
        # A reversed payout's refund is of money back in the platform's balance: the
        # booking's legs are left as they are (a relay's next leg keeps its hold).
        legs = [] if refund.reason in OWN_CHAIN_REFUNDS else [
            leg.id for leg in session.scalars(select(Leg).where(Leg.booking_id == booking_id))
            if _settle_before_refund(session, leg.id)]
    if amount < REFUND_MIN_PAISE:  # reserved before the floor: the gateway would refuse it
        _end_refused_attempt(refund_id, f"under the gateway's minimum of {REFUND_MIN_PAISE}"
                             " paise; not asked")
        return "refused"
    # A hold still taken out of the balance until the gateway processes it and it goes back.
    waits = [leg_id for leg_id in legs if settle_leg_transfer(leg_id) == "reversal-waits"]
    c = gw.client()
    try:
        entity = c.payment.refund(payment_id, {
            "amount": amount, "speed": "normal",
            "notes": {"refund_id": str(refund_id), "booking_id": str(booking_id)},
        }, headers={"X-Refund-Idempotency": f"ridechain-refund-{refund_id}"})
    except gw.BadRequestError as exc:
        if gw.is_in_progress(exc):  # a twin request may make it: as an unknown outcome
            _note_refund_error(refund_id, f"in progress: {exc}")
            raise
        left = _refundable_at_gateway(c, payment_id)
        if left is not None and left < amount:
            # More than the payment has left (a refund made in the dashboard took part of
            # it): no retry changes that. Refused, so nothing was made under this key.
            return _cut_attempt(refund_id, left, str(exc))
        if _low_balance(exc) and not waits:
            try:
                _tell_low_balance(refund_id)
            except Exception:  # the alert must not keep the attempt from ending
                log.exception("low-balance refund alert failed",
                              extra={"refund_id": refund_id})
        job = get_current_job()
        if job is None or not job.should_retry:
            _end_refused_attempt(refund_id, str(exc))
            return "refused"
        _note_refund_error(refund_id, f"refused: {exc}")
        raise
    except Exception as exc:  # outcome unknown: the idempotency header makes a retry safe
        _note_refund_error(refund_id, f"no answer: {type(exc).__name__}")
        raise
    with transaction() as session:
        refund = session.get(Refund, refund_id, with_for_update=True)
        assert refund is not None
        refund.gateway_refund_id = refund.gateway_refund_id or entity.get("id")
        refund.last_error = None
        if refund.status == "requested":
            refund.status = "pending"
    return "requested"


def _settle_before_refund(session: Session, leg_id: int) -> bool:
    """Whether a leg's transfer is settled before its booking's refund is asked: an
    unearned leg's hold goes back (the balance must cover the refund), and an earning leg
    (a cancellation fee) that no hold covers needs a new transfer, which Razorpay refuses
    on a payment once a refund of it was asked. A hold that covers it is released later."""
    target = ledger.leg_payable(session, leg_id)
    if target == 0:
        return True
    if target <= ledger.leg_paid_out(session, leg_id):
        return False
    row = session.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
    if row is None or row.status != "on_hold" or row.amount_paise < target:
        return True
    # A hold covers it only if it is the leg's partner's, on their account now: any other
    # is reversed by the settling and a new transfer made, which the refund would block.
    leg = session.get(Leg, leg_id)
    partner = session.get(PartnerProfile, leg.partner_id) if leg and leg.partner_id else None
    return partner is None or (row.partner_id, row.account) != (
        partner.id, partner.payout_account_id)


def _refundable_at_gateway(c, payment_id: str) -> int | None:
    """What the gateway can still refund of the payment (its amount less what was
    refunded of it, ours or not); None if it cannot say now."""
    try:
        payment = c.payment.fetch(payment_id)
    except (gw.BadRequestError, gw.ServerError, gw.GatewayError):
        return None
    amount, refunded = _paise(payment, "amount"), _paise(payment, "amount_refunded") or 0
    return None if amount is None else max(amount - refunded, 0)


def _cut_attempt(refund_id: int, left: int, error: str) -> str:
    """The gateway refused a refund attempt for more than its payment has left (part of
    it was refunded outside the service, in the dashboard): nothing was refunded, so the
    attempt ends, its reservation back where it came from (as a refusal), and a new
    attempt at once asks what the payment has left: the customer gets the rest. No try
    is counted and ops are not alerted: no retry would change the payment. The rest of
    the reservation stays where it came from (escrow: record_outside_refund takes the
    refund made outside from there; a reversed payout's: held for ops). Under
    REFUND_MIN_PAISE left, the gateway would refund nothing: logged, nothing asked."""
    with transaction() as session:
        row = session.get(Refund, refund_id)
        assert row is not None
        booking = ledger.lock_booking(session, row.booking_id)
        refund = session.get(Refund, refund_id, with_for_update=True, populate_existing=True)
        assert refund is not None
        if refund.status != "requested":
            return "already-" + refund.status  # settled meanwhile: nothing to undo
        ledger.post(session, _refund_failed_entry(session, booking.id, refund, None),
                    actor="gateway:razorpay", cause=f"refund:{refund.id}:cut")
        refund.status, refund.retry_at = "failed", None
        refund.last_error = (f"cut: the payment has {left} paise left at the gateway; "
                             f"refused: {error}")[:200]
        amount = min(left, refund.amount_paise)
        if amount < REFUND_MIN_PAISE:
            log.error("refund attempt refused: its payment has less left than the gateway "
                      "refunds", extra={"booking_id": booking.id, "left": left})
            _open_due_refund(session, booking)
            return "refused"
        leg_id = _refund_leg(session, refund) if refund.reason == REVERSED_PAYOUT else None
        _reserve_attempt(session, booking, payment_id=refund.payment_id, amount=amount,
                         fee=refund.fee_paise, reason=refund.reason, actor=refund.actor,
                         leg_id=leg_id)
        log.warning("refund attempt cut to what its payment has left",
                    extra={"booking_id": booking.id, "amount": amount})
        return "cut"


def _low_balance(exc: Exception) -> bool:
    """Razorpay's refusal of a refund (or transfer) the platform's balance cannot cover
    ("Your account does not have enough balance to carry out the refund operation."; its
    words are not part of the API: any refusal that speaks of the balance counts)."""
    said = str(exc).lower()
    return isinstance(exc, gw.BadRequestError) and "balance" in said and (
        "enough" in said or "insufficient" in said or "low" in said)


def _tell_low_balance(refund_id: int) -> None:
    """Ops hear at the first refusal of a refund attempt for want of balance: only a
    person can top the account up, and the retries alone (GATEWAY_RETRY, then
    refund_attempts() attempts refund_retry_delay() apart) would tell them hours later,
    at the last (payment.ops_refund_stuck, which still comes if nothing changes). Once per
    attempt (the outbox's dedupe key names it): its retries are refused alike."""
    from core.services.dispatch import alert_ops  # dispatch imports payments

    log.error("refund refused: the platform's balance is too low",
              extra={"refund_id": refund_id})
    with transaction() as session:
        refund = session.get(Refund, refund_id)
        booking = session.get(Booking, refund.booking_id) if refund is not None else None
        if refund is None or booking is None or refund.status != "requested":
            return
        alert_ops(session, "payment.ops_refund_no_balance", booking_id=booking.id,
                  dedupe_key=f"refund-{refund.id}-balance", ref=booking.reference,
                  refund_paise=refund.amount_paise)


def _note_refund_error(refund_id: int, error: str) -> None:
    with transaction() as session:
        refund = session.get(Refund, refund_id, with_for_update=True)
        if refund is not None and refund.status == "requested":
            refund.last_error = error[:200]


def _end_refused_attempt(refund_id: int, error: str) -> None:
    """The gateway refused the attempt to the last try: nothing was refunded, so its
    reservation goes back to escrow (the same entry as refund.failed) and the next
    attempt is planned."""
    with transaction() as session:
        row = session.get(Refund, refund_id)
        assert row is not None
        booking = ledger.lock_booking(session, row.booking_id)
        refund = session.get(Refund, refund_id, with_for_update=True, populate_existing=True)
        assert refund is not None
        if refund.status != "requested":
            return  # settled meanwhile (a webhook of a twin request): nothing to undo
        ledger.post(session, _refund_failed_entry(session, booking.id, refund, None),
                    actor="gateway:razorpay", cause=f"refund:{refund.id}:refused")
        refund.status = "failed"
        refund.last_error = f"refused: {error}"[:200]
        _attempt_failed(session, booking, refund)
        _open_due_refund(session, booking)


def _refund_failed_entry(session: Session, booking_id: int, refund: Refund,
                         gateway_refund_id: str | None) -> rules.Entry:
    """The entry of a failed refund attempt: its reservation goes back where it came from
    (escrow; a reversed payout's, to the booking's reversed payouts)."""
    if refund.reason == REVERSED_PAYOUT:
        return rules.reversal_refund_failed(booking_id, refund.id, refund.amount_paise,
                                            gateway_refund_id, _refund_leg(session, refund))
    return rules.refund_failed(booking_id, refund.id, refund.amount_paise, gateway_refund_id)


def _refund_leg(session: Session, refund: Refund) -> int:
    """The leg whose reversed payout a REVERSED_PAYOUT refund attempt gives back (its
    reservation's postings name it)."""
    from core.adapters.payment_models import LedgerPosting, LedgerTransaction

    leg_id = session.scalar(
        select(LedgerPosting.leg_id)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
        .where(LedgerTransaction.idempotency_key == f"refund:{refund.id}:requested",
               LedgerPosting.leg_id.is_not(None)).limit(1))
    assert leg_id is not None, f"refund {refund.id}: its reservation names no leg"
    return int(leg_id)


def _attempt_failed(session: Session, booking: Booking, refund: Refund) -> None:
    """A refund attempt failed and its money is back in escrow: the next attempt is
    planned after refund_retry_delay(); after the last, a person must act (ops hear of it:
    ops action POST /ops/bookings/<ref>/refund/retry)."""
    from core.services.dispatch import alert_ops  # dispatch imports payments

    tries = _tries(session, refund)
    log.error("refund attempt failed", extra={"booking_id": booking.id, "attempt": tries})
    if tries >= refund_attempts():
        alert_ops(session, "payment.ops_refund_stuck", booking_id=booking.id,
                  dedupe_key=f"refund-{refund.id}-stuck", ref=booking.reference,
                  refund_paise=refund.amount_paise, attempts=tries)
        return
    # No alert for a try the service makes again by itself: it asks nothing of anyone
    # (one outage would page ops per booking per try); the last try's alert does.
    delay = refund_retry_delay()
    refund.retry_at = clock.now() + delay
    job_id = f"refund-retry-{booking.id}-{refund.attempt + 1}"
    args = (booking.id, refund.attempt + 1)

    def schedule() -> None:
        q = queue("default")
        if q.fetch_job(job_id) is None:
            q.enqueue_in(delay, "workers.payments.retry_refund", *args, job_id=job_id,
                         result_ttl=3600, failure_ttl=7 * 86400)

    after_commit(session, schedule)  # the sweep makes it too, should this job be lost


def retry_refund(booking_id: int, attempt: int) -> str:
    """Job: make the attempt after the booking's failed attempt ``attempt - 1``, once it is
    due (once: a second call finds it made). While another refund of the booking is open
    it stays due, and the sweep tries again."""
    with transaction() as session:
        booking = ledger.lock_booking(session, booking_id)
        last = session.scalar(select(Refund).where(Refund.booking_id == booking_id,
                                                   Refund.attempt == attempt - 1))
        if last is None or last.status != "failed" or last.retry_at is None:
            return "not-due"
        if _open_row(session, booking_id) is not None:
            return "waits-for-open-refund"
        return "retried" if _next_attempt(session, booking, last, str(SYSTEM)) else (
            "nothing-to-refund")


class WhichRefund(Conflict):
    """More than one failed refund of a booking could be the one to try again, and none
    was named (or the one named is none of them): ``refunds`` lists those ops may name."""

    code = "which_refund"

    def __init__(self, message: str, refunds: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.refunds = refunds


@dataclass(frozen=True)
class _Failed:
    """A failed refund: its latest attempt, and the leg (id, sequence) whose reversed
    payout it gives back, if it is such a refund."""

    refund: Refund
    leg_id: int | None
    leg: int | None

    def shown(self) -> dict[str, Any]:
        r = self.refund
        return {"attempt": r.attempt, "leg": self.leg, "leg_id": self.leg_id,
                "amount_paise": r.amount_paise, "reason": r.reason,
                "retry_at": r.retry_at.isoformat() if r.retry_at is not None else None}

    def said(self) -> str:
        leg = f", leg {self.leg}" if self.leg is not None else ""
        return (f"attempt {self.refund.attempt} ({self.refund.reason}{leg}, "
                f"{self.refund.amount_paise} paise)")


def retry_refund_now(session: Session, booking: Booking, actor: Actor, *,
                     leg: int | None = None, attempt: int | None = None) -> Refund:
    """Ops: try a failed refund of a booking again now (also after the last attempt,
    once the cause, such as the balance, is fixed). The caller's transaction.

    A booking may hold several (each leg's reversed payout's, the cancellation's, an
    extra payment's): ``leg`` (a leg's sequence: its reversed payout's refund) or
    ``attempt`` names one. Named none, one that gave up is taken before ones that will
    retry by themselves; between two alike nothing is guessed: WhichRefund lists them."""
    booking = ledger.lock_booking(session, booking.id)
    failed = _failed_refunds(session, booking.id)
    # Not one a later ops decision about its leg replaced.
    retryable = [f for f in failed if not _decided_since(session, f.refund)]
    if leg is not None or attempt is not None:
        last = _named_refund(failed, retryable, leg, attempt)
    else:
        last = _only_refund(failed, retryable)
    if _open_row(session, booking.id) is not None:
        raise Conflict("another refund of this booking is still under way",
                       code="refund_open")
    refund = _next_attempt(session, booking, last, str(actor))
    if refund is None:
        raise Conflict("nothing is left in escrow to refund", code="nothing_to_refund")
    return refund


def _failed_refunds(session: Session, booking_id: int) -> list[_Failed]:
    """Each refund of the booking (a payment's, of its kind; a reversed payout's, of its
    leg) whose latest attempt failed: ones that gave up (no retry planned) first, then
    the latest first."""
    found: list[_Failed] = []
    for r in session.scalars(
            select(Refund).where(Refund.booking_id == booking_id, Refund.status == "failed")
            .order_by(Refund.retry_at.is_not(None), Refund.attempt.desc())):
        leg_id = _refund_leg(session, r) if r.reason == REVERSED_PAYOUT else None
        if _chain_latest(session, booking_id, r.payment_id, r.reason, leg_id) is r:
            sequence = session.scalar(select(Leg.sequence).where(Leg.id == leg_id)) \
                if leg_id is not None else None
            found.append(_Failed(r, leg_id, sequence))
    return found


def _decided_since_error() -> Conflict:
    return Conflict("ops decided about this reversed payout again since its refund "
                    "failed: that decision stands; decide again to refund it",
                    code="decided_since")


def _named_refund(failed: list[_Failed], retryable: list[_Failed], leg: int | None,
                  attempt: int | None) -> Refund:
    """The failed refund ``leg`` (a leg's sequence) and ``attempt`` name (each one given
    must match). One they do not name, or name ambiguously: WhichRefund, listing those
    that may be tried again (Conflict ``no_failed_refund`` when none may)."""
    named = [f for f in failed if (leg is None or f.leg == leg)
             and (attempt is None or f.refund.attempt == attempt)]
    if len(named) == 1:
        if named[0].refund.id not in {f.refund.id for f in retryable}:
            raise _decided_since_error()
        return named[0].refund
    what = " and ".join(x for x in (f"leg {leg}" if leg is not None else "",
                                    f"attempt {attempt}" if attempt is not None else "") if x)
    if not retryable:
        raise Conflict(f"{what}: this booking has no failed refund to try again",
                       code="no_failed_refund")
    why = "is more than one" if named else "is none"
    raise WhichRefund(f"{what} {why} of this booking's failed refunds "
                      f"({', '.join(f.said() for f in retryable)}): name one by its "
                      "attempt", [f.shown() for f in retryable])


def _only_refund(failed: list[_Failed], retryable: list[_Failed]) -> Refund:
    """The failed refund to try again when none was named: the one that gave up, else
    the one that will retry by itself; WhichRefund when there are more than one."""
    if not retryable and failed:
        raise _decided_since_error()
    if not retryable:
        raise Conflict("this booking has no failed refund to try again",
                       code="no_failed_refund")
    gave_up = [f for f in retryable if f.refund.retry_at is None] or retryable
    if len(gave_up) > 1:
        raise WhichRefund(f"this booking has {len(retryable)} failed refunds "
                          f"({', '.join(f.said() for f in retryable)}): name the one to "
                          "try again by its leg or its attempt",
                          [f.shown() for f in retryable])
    return gave_up[0].refund


def _decided_since(session: Session, refund: Refund) -> bool:
    """Whether ops decided again about the leg whose reversed payout ``refund`` (a failed
    attempt) gives back, after it was asked: paid the partner again, or a new refund
    decision. A retry belongs to its decision: once replaced, it would refund money (what
    came back of the leg since) that nobody decided to refund."""
    from core.adapters.payment_models import LedgerPosting, LedgerTransaction

    if refund.reason != REVERSED_PAYOUT:
        return False
    leg_id = _refund_leg(session, refund)
    asked = select(LedgerTransaction.id).where(
        LedgerTransaction.idempotency_key == f"refund:{refund.id}:requested"
    ).scalar_subquery()
    return session.scalar(
        select(LedgerTransaction.id)
        .join(LedgerPosting, LedgerPosting.transaction_id == LedgerTransaction.id)
        .where(LedgerPosting.leg_id == leg_id, LedgerTransaction.id > asked,
               LedgerTransaction.kind.in_((rules.EntryKind.REVERSAL_REPAID.value,
                                           rules.EntryKind.REVERSAL_WRITTEN_OFF.value))
               | ((LedgerTransaction.kind == rules.EntryKind.REVERSAL_REFUND_ASKED.value)
                  & (LedgerTransaction.cause == _decision_cause(leg_id))))
        .limit(1)) is not None


def _next_attempt(session: Session, booking: Booking, last: Refund, actor: str
                  ) -> Refund | None:
    """The attempt after ``last`` (failed): the same refund, for what is back in escrow.
    The caller holds the booking's lock and has seen no refund of it open."""
    last.retry_at = None
    leg_id = _refund_leg(session, last) if last.reason == REVERSED_PAYOUT else None
    left = ledger.leg_reversed_payouts(session, leg_id)[1] if leg_id is not None \
        else ledger.balance(session, rules.escrow(booking.id))
    amount = min(last.amount_paise, left)
    if amount < REFUND_MIN_PAISE:
        log.error("failed refund has nothing left in escrow the gateway would refund",
                  extra={"booking_id": booking.id, "left": left})
        return None
    return _reserve_attempt(session, booking, payment_id=last.payment_id, amount=amount,
                            fee=last.fee_paise, reason=last.reason, actor=actor, leg_id=leg_id)


# --- periodic ------------------------------------------------------------------------------


# How long past its time a booking with a link waits for the gateway to say whether the
# link was paid. Past it the booking expires unasked: a payment whose webhook and link
# checks all failed for an hour is then refunded as a late one when its webhook comes (the
# money is never kept), and the hourly reconciliation shows it meanwhile.
LINK_CHECK_GRACE = timedelta(hours=1)
# The reason of a booking the sweep closed without the gateway's word on its link (no
# answer for LINK_CHECK_GRACE): a payment made in time may still come (_made_before_closing).
EXPIRED_UNASKED_REASON = "payment time ran out; the gateway did not answer"
EXPIRE_BATCH = 200


def expire_unpaid(now: datetime | None = None) -> int:
    """Close bookings still awaiting payment a minute after their time (a lost webhook).

    A booking with a link expires only once the gateway says the link was not paid: one
    paid in time whose webhook is late is recorded as paid here (record_capture, the
    webhook's path), not expired and then refunded. No answer: asked again next sweep, up
    to LINK_CHECK_GRACE. A booking whose link was never made is closed as such
    (_close_unlinked). Returns how many were closed."""
    now = now or clock.now()
    with transaction() as session:
        rows = session.execute(
            select(Booking.id, Booking.expires_at, PaymentLink.gateway_id)
            .outerjoin(PaymentLink, PaymentLink.booking_id == Booking.id)
            .where(Booking.status == BookingStatus.AWAITING_PAYMENT.value,
                   Booking.expires_at < now - timedelta(minutes=1))
            .order_by(Booking.expires_at).limit(EXPIRE_BATCH)).tuples().all()
    count = 0
    gateway_down = False
    for booking_id, expires_at, gateway_id in rows:
        entity: dict | None = None
        if gateway_id is not None and not gateway_down:
            try:
                entity = gw.client().payment_link.fetch(gateway_id)
            except gw.BadRequestError:
                log.error("the gateway would not show a booking's link",
                          extra={"booking_id": booking_id})
            except BaseTimeoutException:
                raise
            except Exception:
                # Unreachable (a timeout is 15 s): the other links wait for the next
                # sweep too, so a gateway outage cannot stretch this one out.
                gateway_down = True
                log.warning("gateway unreachable; unpaid links are checked next sweep",
                            exc_info=True)
        try:
            unasked_ok = expires_at is not None and now - expires_at > LINK_CHECK_GRACE
            count += _expire_if_unpaid(booking_id, gateway_id, entity, unasked_ok=unasked_ok)
        except BaseTimeoutException:
            raise
        except Exception:  # one booking's trouble must not stop the sweep for the others
            log.exception("could not close an unpaid booking", extra={"booking_id": booking_id})
    return count


def _expire_if_unpaid(booking_id: int, gateway_id: str | None, entity: dict | None, *,
                      unasked_ok: bool) -> bool:
    """One booking of expire_unpaid, with the gateway's view of its link (``entity``, None
    if it could not be had); True if it was closed."""
    if entity is not None and entity.get("status") == "paid":
        if _record_link_payments(booking_id, entity,
                                 f"link-check:{gateway_id}") != LINK_WITHOUT_PAYMENT:
            return False
        entity = None  # a paid link without its payment: no answer to go by
    if gateway_id is not None and entity is None and not unasked_ok:
        return False
    with transaction() as session:
        booking = ledger.lock_booking(session, booking_id)
        if booking.status != BookingStatus.AWAITING_PAYMENT.value:
            return False
        if _kept_capture(session, booking_id):
            return False
        link = session.scalar(select(PaymentLink).where(PaymentLink.booking_id == booking_id))
        if link is None:
            _close_unlinked(session, booking, "payment time ran out before the link was made")
            return True
        if gateway_id is None:
            return False  # the link was made meanwhile: the next sweep asks the gateway
        _expire(session, booking, "payment time ran out" if entity is not None
                else EXPIRED_UNASKED_REASON)
        if link.status == "created":
            _enqueue_after_commit(session, "workers.payments.cancel_payment_link",
                                  booking_id, job_id=f"paylink-cancel-{booking_id}")
        return True


# A link job has this long to make its link before the sweep takes it for lost.
LINK_JOB_GRACE = timedelta(minutes=1)
LINK_REQUEUE_BATCH = 50


def bookings_without_link(session: Session, now: datetime | None = None) -> list[int]:
    """Bookings awaiting payment for over LINK_JOB_GRACE, still in their payment window,
    with no link: their ``paylink-<booking>`` job lived only in Redis (a flush, a failover,
    an enqueue that failed after the commit) or is still retrying."""
    now = now or clock.now()
    # expires_at is the confirmation time plus the link's TTL until a link is made.
    confirmed_before = now - LINK_JOB_GRACE + payment_link_ttl()
    has_link = select(PaymentLink.id).where(PaymentLink.booking_id == Booking.id).exists()
    return list(session.scalars(select(Booking.id).where(
        Booking.status == BookingStatus.AWAITING_PAYMENT.value,
        Booking.expires_at > now, Booking.expires_at < confirmed_before, ~has_link)
        .order_by(Booking.id).limit(EXPIRE_BATCH)))


def _requeue_link_jobs(booking_ids: list[int]) -> int:
    """Enqueue the link job of bookings without a link whose job is gone; how many."""
    enqueued = 0
    for booking_id in booking_ids:
        if enqueued >= LINK_REQUEUE_BATCH:
            break
        job_id = f"paylink-{booking_id}"
        if _job_alive(job_id):
            continue
        log.warning("booking without a payment link lost its job; enqueued again",
                    extra={"booking_id": booking_id})
        enqueue("workers.payments.create_payment_link", booking_id, job_id=job_id,
                retry=GATEWAY_RETRY)
        enqueued += 1
    return enqueued


def _ensure_periodic_jobs() -> None:
    try:
        from workers.payments import schedule_periodic

        schedule_periodic()
    except Exception:  # scheduling is best effort; the next job tries again
        log.exception("could not schedule the payments sweep")


def _const(value: str) -> Any:
    """A constant written into the statement, not bound: a partial index (migration 0016)
    serves a query only if its condition can be proven from the statement itself, which a
    prepared statement's generic plan cannot do with a bound value."""
    return literal(value, literal_execute=True)


EVENTS_PAGE = 200  # events re-enqueued a sweep at most
EVENTS_CURSOR_KEY = "payments:unprocessed-events-after"


def unprocessed_events(session: Session, older_than: timedelta = timedelta(minutes=5)) -> list[int]:
    """Stored events whose processing job was lost (the sweep re-enqueues them); from the
    partial index of the events not processed yet (migration 0016), not all of them.

    At most EVENTS_PAGE a sweep, taking up after the last sweep's page (by id, from the
    first again after the last): events whose handler keeps failing stay unprocessed, and
    200 of them, always first by id, would keep every newer lost event from its turn."""
    cutoff = clock.now() - older_than
    base = select(GatewayEvent.id).where(
        GatewayEvent.processed_at.is_(None), GatewayEvent.received_at < cutoff)
    return [row[0] for row in _in_turn(session, base, GatewayEvent.id, EVENTS_CURSOR_KEY,
                                       EVENTS_PAGE)]


def _in_turn(session: Session, base: Any, id_col: Any, cursor_key: str, size: int
             ) -> list[Any]:
    """At most ``size`` rows of ``base`` (a select whose first column is ``id_col``), by
    id, taking up after the last call's page (its place kept in Redis at ``cursor_key``),
    from the first again after the last: rows that stay (failing events, refunds the
    gateway keeps pending) cannot keep the ones after them from their turn for good.
    Without Redis, from the first."""
    base = base.order_by(id_col)
    try:
        after = int(redis_client().get(cursor_key) or 0)
    except (RedisError, ValueError):
        after = 0
    rows = list(session.execute(base.where(id_col > after).limit(size)).all())
    if len(rows) < size and after:  # the end: on from the first
        rows += session.execute(base.where(id_col <= after).limit(size - len(rows))).all()
        nxt = rows[-1][0] if rows else 0
    else:
        nxt = rows[-1][0] if len(rows) == size else 0
    try:
        redis_client().set(cursor_key, nxt)
    except RedisError:
        log.warning("payments: a page's place was not kept", extra={"key": cursor_key})
    return rows


def due_refund_retries(session: Session) -> list[tuple[int, int]]:
    """(booking, next attempt) of failed refund attempts whose retry is due."""
    return [(b, a + 1) for b, a in session.execute(
        select(Refund.booking_id, Refund.attempt).where(
            Refund.status == "failed", Refund.retry_at <= clock.now())
        .order_by(Refund.id).limit(200)).tuples()]


def stale_refund_requests(session: Session, older_than: timedelta = timedelta(minutes=5)
                          ) -> list[tuple[int, int, str]]:
    """(booking, attempt, reason) of refund attempts still not answered by the gateway."""
    cutoff = clock.now() - older_than
    return list(session.execute(
        select(Refund.booking_id, Refund.attempt, Refund.reason).where(
            Refund.status == "requested", Refund.updated_at < cutoff)
        .order_by(Refund.id).limit(200)).tuples())


# A refund attempt the gateway has not answered this long (503s, silence) is an ops
# matter: the customer waits for her money while the sweep asks again (once per attempt).
REFUND_UNANSWERED = timedelta(hours=6)


def _alert_unanswered_refunds() -> None:
    """Ops hear once of each refund attempt still "requested" REFUND_UNANSWERED after it
    was made (the dedupe key refund-<id>-unanswered keeps it to one)."""
    from core.adapters.payment_models import LedgerTransaction
    from core.services.dispatch import alert_ops  # dispatch imports payments

    with transaction() as session:
        # Made when its reservation was posted (the ledger's time is the service's clock).
        rows = session.execute(
            select(Refund.id, Refund.amount_paise, Booking.id, Booking.reference)
            .join(Booking, Booking.id == Refund.booking_id)
            .join(LedgerTransaction, LedgerTransaction.idempotency_key == func.concat(
                "refund:", Refund.id, ":requested"))
            .where(Refund.status == "requested",
                   LedgerTransaction.created_at < clock.now() - REFUND_UNANSWERED)
            .order_by(Refund.id).limit(50)).tuples().all()
        for refund_id, amount, booking_id, ref in rows:
            alert_ops(session, "payment.ops_refund_unanswered", booking_id=booking_id,
                      dedupe_key=f"refund-{refund_id}-unanswered", ref=ref,
                      refund_paise=amount, hours=int(REFUND_UNANSWERED.total_seconds() // 3600))


def waiting_refunds(session: Session, within: timedelta = timedelta(days=30)) -> list[int]:
    """Bookings whose next refund may wait for an earlier one to settle (_open_refund), or
    whose refund was never started (a failed booking's refund job lost): a refund of theirs
    settled lately, or they failed or were cancelled lately; none is open, and escrow
    still holds money (REFUND_MIN_PAISE at least: less is nothing the gateway refunds)."""
    from core.adapters.payment_models import LedgerPosting

    since = clock.now() - within
    open_now = select(Refund.booking_id).where(Refund.status.in_(OPEN_REFUND))
    settled = select(Refund.booking_id.label("id")).where(Refund.updated_at > since)
    closed = select(Booking.id).where(
        Booking.status.in_((BookingStatus.FAILED.value, BookingStatus.CANCELLED.value)),
        Booking.updated_at > since)
    # A booking whose latest refund attempt failed is the retries' and ops' (it would only
    # find that refund again): left out, so such bookings never crowd out the others.
    latest = select(Refund.booking_id, func.max(Refund.attempt).label("attempt")).group_by(
        Refund.booking_id).subquery()
    failed_last = select(Refund.booking_id).join(
        latest, (latest.c.booking_id == Refund.booking_id)
        & (latest.c.attempt == Refund.attempt)).where(Refund.status == "failed")
    # The few bookings settled or closed lately first, then their postings by booking_id
    # (indexed): asked of every posting ("in settled or in closed"), that read them all.
    candidates = union(settled, closed).subquery("candidates")
    return list(session.scalars(
        select(LedgerPosting.booking_id)
        .join(candidates, candidates.c.id == LedgerPosting.booking_id)
        .where(candidates.c.id.not_in(open_now), candidates.c.id.not_in(failed_last),
               LedgerPosting.account_kind == rules.AccountKind.ESCROW.value)
        .group_by(LedgerPosting.booking_id)
        # Less than the gateway refunds is nothing to start (_open_refund): left out, so
        # such bookings never crowd out the others.
        .having(func.sum(LedgerPosting.amount_paise) >= REFUND_MIN_PAISE)
        .order_by(LedgerPosting.booking_id).limit(100)))


def _start_waiting_refunds(ids: list[int]) -> int:
    """Start the refunds waiting in these bookings; how many new attempts were made."""
    started = 0
    for booking_id in ids:
        try:
            with transaction() as session:
                booking = ledger.lock_booking(session, booking_id)
                last = _latest_refund(session, booking_id)
                refund = _open_due_refund(session, booking)
                started += refund is not None and (
                    last is None or refund.attempt > last.attempt)
        except BaseTimeoutException:
            raise
        except Exception:  # one booking's trouble must not stop the sweep for the others
            log.exception("could not start a waiting refund", extra={"booking_id": booking_id})
    return started


# How far back the sweep looks for delivered legs without a release. A release job
# retries for about 43 minutes (GATEWAY_RETRY) and the sweep looks every minute; a week
# also covers workers or Redis down over a long weekend. Each leg looked at costs an
# index probe: 30 days were 17k legs a minute at a year's volume, a week is 4k.
RELEASE_LOOKBACK = timedelta(days=7)


def unreleased_legs(session: Session) -> list[int]:
    """Delivered legs whose release is not in the ledger (its job lost or failed), among
    those delivered in the last RELEASE_LOOKBACK."""
    from core.adapters.payment_models import LedgerTransaction

    # Materialized: from the partial index of delivered legs (migration 0016). Otherwise,
    # expecting to find its 100 legs soon, PostgreSQL walks every leg in id order.
    recent = select(Leg.id).where(
        Leg.status == _const(LegStatus.DELIVERED.value), Leg.partner_id.is_not(None),
        Leg.delivered_at > clock.now() - RELEASE_LOOKBACK,
    ).cte("recent_deliveries").prefix_with("MATERIALIZED")
    released = select(LedgerTransaction.id).where(
        LedgerTransaction.idempotency_key == func.concat("release:leg:", recent.c.id))
    return list(session.scalars(select(recent.c.id).where(~released.exists())
                                .order_by(recent.c.id).limit(100)))


_PAYABLE_KINDS = (rules.EntryKind.RELEASE.value, rules.EntryKind.CANCELLATION_FEE.value,
                  rules.EntryKind.TRANSFER_PROCESSED.value,
                  rules.EntryKind.TRANSFER_FAILED.value,
                  rules.EntryKind.REVERSAL_REPAID.value)


def unpaid_legs(session: Session, within: timedelta = timedelta(days=30)) -> list[int]:
    """Legs whose partner earned more than was paid out to them (ledger_payable above
    leg_paid_out), with a payable entry in the last ``within`` (those owed for longer
    come from owed_legs_in_turn, a range of legs a sweep).

    The legs with a payable entry lately come first, from their partial index (migration
    0016), then only their own payable postings, from theirs (migration 0017): the cost
    follows the legs paid lately, not every payable posting ever made."""
    from core.adapters.payment_models import LedgerPosting

    # Both partial indexes hold only these postings; _const lets the planner see it.
    payable = (LedgerPosting.account_kind == _const(rules.AccountKind.PARTNER_PAYABLE.value),
               LedgerPosting.leg_id.is_not(None))
    recent = select(LedgerPosting.leg_id).where(
        *payable, LedgerPosting.created_at > clock.now() - within)
    # Only partners with a linked account: a leg waiting for one cannot be paid, and many
    # such would fill the batch ahead of legs that can (the back-off is per leg, later).
    # In the sum's FILTER, the partners are hashed once rather than looked up per posting.
    can_be_paid = select(PartnerProfile.id).where(PartnerProfile.payout_account_id.is_not(None))
    # "= ANY(ARRAY(recent))", not "IN (recent)": an IN is joined by hashing every payable
    # posting; the array is looked up in the index, leg by leg (sorted, each leg once).
    # No join to the entries to keep those of _PAYABLE_KINDS: no other kind posts to a
    # partner's payable (test_sweep_queries checks), and looking up each posting's entry
    # was 60% of the pages the query read at a year's volume.
    return list(session.scalars(
        select(LedgerPosting.leg_id)
        .where(*payable, LedgerPosting.leg_id == any_(func.array(recent.scalar_subquery())))
        .group_by(LedgerPosting.leg_id)
        .having(func.sum(LedgerPosting.amount_paise).filter(
            LedgerPosting.partner_id.in_(can_be_paid)) > 0)
        .order_by(LedgerPosting.leg_id).limit(UNPAID_SCAN)))


SETTLE_BATCH = 20
UNPAID_SCAN = 5000  # legs looked at per sweep; those backing off are skipped in Redis
SETTLE_BACKOFF_MIN = (5, 360)  # first wait, longest wait (doubling in between)
# Legs owed for longer than unpaid_legs looks back (a transfer refused until a linked
# account is activated weeks later) are found by owed_legs_in_turn: OWED_SCAN_LEGS leg
# ids a sweep, in turn. At 1,000 legs a day, a year's legs are looked through in about 75
# sweeps (75 minutes), each reading the payable postings of 5,000 legs from their index.
OWED_SCAN_LEGS = 5000
OWED_CURSOR_KEY = "payments:owed-legs-after"
# A leg still owed this long after it was last owed (its release, fee, failed transfer):
# ops hear of it once (the refusal's alert came on the first try), the sweep goes on.
OWED_LONG = timedelta(days=7)


def owed_legs_in_turn(session: Session) -> list[int]:
    """Legs whose partner (with a linked account) is still owed, as unpaid_legs finds
    them, whenever they were last paid or refused: the legs of the next OWED_SCAN_LEGS leg
    ids after the last sweep's (their place kept in Redis; from the first again after the
    last leg). unpaid_legs sees the legs with a payable entry lately only: without this,
    a leg whose transfer was refused for longer than that was never tried again.

    One range of leg ids of the payable postings' index (migration 0017): the work is
    bounded whatever is owed (a page of the owed legs themselves, found by a scan in leg
    id order, could read every payable posting ever made to find a few)."""
    from core.adapters.payment_models import LedgerPosting

    try:
        after = int(redis_client().get(OWED_CURSOR_KEY) or 0)
    except (RedisError, ValueError):
        after = 0
    last = session.scalar(select(func.max(Leg.id))) or 0
    if after >= last:
        after = 0
    upto = after + OWED_SCAN_LEGS
    try:
        redis_client().set(OWED_CURSOR_KEY, upto if upto < last else 0)
    except RedisError:
        log.warning("payments: the owed legs' place was not kept")
    payable = (LedgerPosting.account_kind == _const(rules.AccountKind.PARTNER_PAYABLE.value),
               LedgerPosting.leg_id.is_not(None))
    can_be_paid = select(PartnerProfile.id).where(PartnerProfile.payout_account_id.is_not(None))
    return list(session.scalars(
        select(LedgerPosting.leg_id)
        .where(*payable, LedgerPosting.leg_id > after, LedgerPosting.leg_id <= upto)
        .group_by(LedgerPosting.leg_id)
        .having(func.sum(LedgerPosting.amount_paise).filter(
            LedgerPosting.partner_id.in_(can_be_paid)) > 0)
        .order_by(LedgerPosting.leg_id)))


OWED_NO_ACCOUNT_CURSOR_KEY = "payments:owed-without-account-after"


def owed_without_account(session: Session, within: timedelta = timedelta(days=30),
                         after: int = 0) -> list[int]:
    """Legs still owed to a partner with no linked account, owed lately (a payable entry
    in the last ``within``): unpaid_legs and owed_legs_in_turn leave them out (no transfer
    can pay them), so without this ops never heard that a rider waits for want of one
    (_tell_owed_long, once OWED_LONG on). Found as unpaid_legs finds its legs: the recent
    payable postings of those partners, then only those legs' postings.

    At most SETTLE_BATCH, the oldest leg first, of the legs after ``after``: the sweep
    takes them in turn (owed_without_account_in_turn)."""
    from core.adapters.payment_models import LedgerPosting

    payable = (LedgerPosting.account_kind == _const(rules.AccountKind.PARTNER_PAYABLE.value),
               LedgerPosting.leg_id.is_not(None))
    no_account = select(PartnerProfile.id).where(PartnerProfile.payout_account_id.is_(None))
    recent = select(LedgerPosting.leg_id).where(
        *payable, LedgerPosting.created_at > clock.now() - within,
        LedgerPosting.partner_id.in_(no_account))
    owed_long = (
        select(LedgerPosting.leg_id)
        .where(*payable, LedgerPosting.leg_id == any_(func.array(recent.scalar_subquery())))
        .group_by(LedgerPosting.leg_id)
        .having(func.sum(LedgerPosting.amount_paise).filter(
            LedgerPosting.partner_id.in_(no_account)) > 0)
        # Owed OWED_LONG already: younger legs would take places, told of too early.
        .having(func.max(LedgerPosting.created_at).filter(LedgerPosting.amount_paise > 0)
                <= clock.now() - OWED_LONG))
    return list(session.scalars(owed_long.where(LedgerPosting.leg_id > after)
                                .order_by(LedgerPosting.leg_id).limit(SETTLE_BATCH)))


def owed_without_account_in_turn(session: Session) -> list[int]:
    """owed_without_account's legs, taking up after the last sweep's (their place kept in
    Redis; from the first again after the last, or without Redis): legs told already stay
    owed, and the same first ones every sweep would keep the others from ever being told
    (with the most lately owed first, the oldest were told only as others got paid)."""
    try:
        after = int(redis_client().get(OWED_NO_ACCOUNT_CURSOR_KEY) or 0)
    except (RedisError, ValueError):
        after = 0
    legs = owed_without_account(session, after=after)
    if len(legs) < SETTLE_BATCH and after:  # the end: on from the first
        legs += [g for g in owed_without_account(session) if g <= after][
            :SETTLE_BATCH - len(legs)]
        nxt = legs[-1] if legs else 0
    else:
        nxt = legs[-1] if len(legs) == SETTLE_BATCH else 0
    try:
        redis_client().set(OWED_NO_ACCOUNT_CURSOR_KEY, nxt)
    except RedisError:
        log.warning("payments: the owed legs' place was not kept")
    return legs


# How a leg transfer's last_error quotes the gateway (_transfer_refused, _on_transfer);
# its other notes are our own English words, which an operator's SMS does not quote.
_GATEWAY_SAID = ("refused: ", "gateway reported transfer.failed: ")
# Our own note on a leg transfer waiting for the partner's linked account.
NO_ACCOUNT_ERROR = "partner has no linked account"


def _gateway_words(last_error: str | None) -> str | None:
    """The gateway's own words in a leg transfer's ``last_error``, None if it has none."""
    for prefix in _GATEWAY_SAID:
        if last_error and last_error.startswith(prefix) and last_error[len(prefix):].strip():
            return last_error[len(prefix):]
    return None


def _tell_owed_long(leg_id: int) -> None:
    """Ops hear once of a leg still owed OWED_LONG after it was last owed (its release,
    cancellation fee, failed transfer or repaid reversal), as its transfer is tried
    again: the refusal's alert came on the first try only, and a rider waits."""
    from core.adapters.payment_models import LedgerPosting
    from core.services.dispatch import alert_ops  # dispatch imports payments

    with transaction() as session:
        since = session.scalar(select(func.max(LedgerPosting.created_at)).where(
            LedgerPosting.account_kind == _const(rules.AccountKind.PARTNER_PAYABLE.value),
            LedgerPosting.leg_id == leg_id, LedgerPosting.amount_paise > 0))
        if since is None or clock.now() - since < OWED_LONG:
            return
        # Once per time it was owed (the outbox's dedupe key holds it too; this spares a
        # query and the log's "reached nobody" on every later try).
        told = f"payments:owed-long-told:{leg_id}:{int(since.timestamp())}"
        try:
            if redis_client().exists(told):
                return
        except RedisError:
            pass
        leg = session.get(Leg, leg_id)
        booking = session.get(Booking, leg.booking_id) if leg else None
        if booking is None:
            return
        owed = ledger.leg_payable(session, leg_id) - ledger.leg_paid_out(session, leg_id)
        row = session.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        days = (clock.now() - since).days
        log.error("a leg is still owed to its partner", extra={"leg_id": leg_id, "days": days})
        # Our own words in each operator's language (alert_ops: lang=None); the gateway's
        # last refusal, when there is one, quoted as it said it; a partner without a linked
        # account (ops must add one) by its own text.
        error = _gateway_words(row.last_error if row is not None else None)
        partner = session.get(PartnerProfile, leg.partner_id) if leg and leg.partner_id \
            else None
        # Judged by the partner now, not by the row's note (stale once an account is added).
        no_account = partner is not None and not partner.payout_account_id
        key = ("payment.ops_owed_long_no_account" if no_account else
               "payment.ops_owed_long_error" if error else "payment.ops_owed_long")
        alert_ops(session, key,
                  booking_id=booking.id,
                  dedupe_key=f"transfer-{leg_id}-owed-{int(since.timestamp())}",
                  ref=booking.reference, leg=leg_id, payout_paise=owed, days=days,
                  **({"error": alert_error(error)} if error else {}))
    try:
        redis_client().set(told, 1, ex=400 * 86400)
    except RedisError:
        log.warning("payments: a leg owed long was not marked told", extra={"leg_id": leg_id})


def _settle_due(leg_id: int) -> bool:
    """Whether the sweep may try an unpaid leg's transfer now; if so, the next try is
    pushed back (5 min, 10, 20 ... up to 6 h), so a leg the gateway refuses for good is
    not asked for every minute."""
    key = _backoff_key(leg_id)
    r = redis_client()
    raw = r.get(key)
    state = json.loads(raw) if raw else {"n": 0, "next": 0}
    now = clock.now().timestamp()
    if state["next"] > now:
        return False
    first, longest = SETTLE_BACKOFF_MIN
    wait = min(first * 2 ** state["n"], longest) * 60
    r.set(key, json.dumps({"n": state["n"] + 1, "next": now + wait}), ex=7 * 86400)
    return True


def _backoff_key(leg_id: int) -> str:
    return f"payments:settle-backoff:{leg_id}"


def pay_owed_now(session: Session, partner_id: int, account: str) -> list[int]:
    """Ops gave a partner a payout account, or a new one after Razorpay refused the old:
    the legs still owed to them are paid now, not at the sweep's back-off (up to 6 hours
    after refused transfers, SETTLE_BACKOFF_MIN). Once this commits, their back-off and
    failure streak are forgotten and a transfer job is queued for each (named by the
    account, so a job still alive for the old one does not swallow it). The leg ids, at
    most SETTLE_BATCH (the sweep takes any others)."""
    from core.adapters.payment_models import LedgerPosting

    owed = [leg_id for leg_id in session.scalars(
        select(LedgerPosting.leg_id).where(
            LedgerPosting.account_kind == rules.AccountKind.PARTNER_PAYABLE.value,
            LedgerPosting.partner_id == partner_id, LedgerPosting.leg_id.is_not(None))
        .group_by(LedgerPosting.leg_id).having(func.sum(LedgerPosting.amount_paise) > 0)
        .order_by(LedgerPosting.leg_id).limit(SETTLE_BATCH)) if leg_id is not None]
    if not owed:
        return []

    def forget_backoff() -> None:
        try:
            redis_client().delete(*[k for leg_id in owed
                                    for k in (_backoff_key(leg_id), _failures_key(leg_id))])
        except RedisError:  # the transfers are made all the same; the sweep's wait stays
            log.warning("payments: a leg's back-off was not reset", extra={"legs": len(owed)})

    after_commit(session, forget_backoff)
    for leg_id in owed:
        _enqueue_after_commit(session, "workers.payments.settle_leg_transfer", leg_id,
                              job_id=f"transfer-{leg_id}-to-{account}")
    return owed


def _resettle_unpaid(leg_ids: list[int]) -> int:
    """Enqueue the transfer of unpaid legs that no job is working on and that are due."""
    enqueued = 0
    for leg_id in leg_ids:
        if enqueued >= SETTLE_BATCH:
            break
        job_id = f"transfer-{leg_id}"
        if _job_alive(job_id) or not _settle_due(leg_id):
            continue
        log.warning("unpaid leg: its transfer is made again", extra={"leg_id": leg_id})
        enqueue("workers.payments.settle_leg_transfer", leg_id, job_id=job_id,
                retry=GATEWAY_RETRY)
        enqueued += 1
        try:
            _tell_owed_long(leg_id)
        except BaseTimeoutException:
            raise
        except Exception:  # telling ops must not stop the sweep for the other legs
            log.exception("could not tell ops of a leg owed long", extra={"leg_id": leg_id})
    return enqueued


REFUND_POLL_AFTER = timedelta(hours=6)
REFUND_POLL_PAGE = 200  # pending refunds asked about a poll at most
REFUND_POLL_CURSOR_KEY = "payments:pending-refunds-after"


def poll_refunds(older_than: timedelta = REFUND_POLL_AFTER) -> dict[str, int]:
    """Ask the gateway about refunds still pending here after ``older_than`` and apply
    the settled ones as their webhook would (_on_refund: idempotent). A normal refund
    settles days later; its refund.processed may be lost, and nothing else would see it.

    At most REFUND_POLL_PAGE a poll, taking up after the last poll's page (_in_turn): a
    backlog of refunds the gateway keeps pending, always first by id, would otherwise
    keep every newer one from being asked."""
    with transaction() as session:
        base = select(Refund.id, Refund.gateway_refund_id).where(
            Refund.status == "pending", Refund.gateway_refund_id.is_not(None),
            Refund.created_at < clock.now() - older_than)
        pending = [rid for _, rid in _in_turn(session, base, Refund.id,
                                               REFUND_POLL_CURSOR_KEY, REFUND_POLL_PAGE)]
    c = gw.client()
    outcomes: dict[str, int] = {}
    for rid in pending:
        try:
            entity = c.refund.fetch(rid)
        except gw.BadRequestError:
            log.error("a pending refund is unknown to the gateway", extra={"refund": rid})
            continue
        except (gw.ServerError, gw.GatewayError) as exc:
            # The gateway's trouble with this one refund: the others are still asked (no
            # connection at all raises on: the hourly job still reconciles, and ends failed).
            log.warning("could not ask the gateway about a pending refund",
                        extra={"refund": rid, "error": str(exc)[:200]})
            outcomes["not-asked"] = outcomes.get("not-asked", 0) + 1
            continue
        outcome = apply_settled_refund(entity, f"poll:{rid}")
        if outcome is not None:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def apply_settled_refund(entity: dict, cause: str) -> str | None:
    """Apply a refund the gateway shows settled (processed or failed), fetched by its id,
    as its refund.processed / refund.failed would (_on_refund: once, whoever comes first:
    the poll, the reconciliation, the webhook); None while it is still pending."""
    status = entity.get("status")
    if status not in ("processed", "failed"):
        return None
    return _on_refund({"event": f"refund.{status}", "payload": {"refund": {"entity": entity}}},
                      cause)


def outside_refund_bookings(refunds: list[dict]) -> dict[str, int]:
    """Of these gateway refunds, those made outside the service (none of our attempts: no
    row of ours has its id, nor do its notes name one, as record_outside_refund holds) of
    a payment captured in our ledger: gateway refund id -> that booking. The others (ours,
    or of a payment not ours) are left out. Three queries, however many refunds."""
    from core.adapters.payment_models import LedgerTransaction

    found = {rid: r for r in refunds if (rid := _gateway_id(r)) is not None
             and isinstance(r.get("payment_id"), str)
             and 0 < len(r["payment_id"]) <= GATEWAY_ID_MAX}
    if not found:
        return {}
    named = {n for r in found.values() if (n := gw.note_int(r, "refund_id")) is not None}
    with transaction() as session:
        known = set(session.scalars(select(Refund.gateway_refund_id).where(
            Refund.gateway_refund_id.in_(set(found)))))
        ours = set(session.scalars(select(Refund.id).where(Refund.id.in_(named)))) \
            if named else set()
        captured = dict(session.execute(
            select(LedgerTransaction.idempotency_key, LedgerTransaction.booking_id).where(
                LedgerTransaction.idempotency_key.in_(
                    {f"capture:{r['payment_id']}" for r in found.values()}))).tuples().all())
    out: dict[str, int] = {}
    for rid, r in found.items():
        booking_id = captured.get(f"capture:{r['payment_id']}")
        if rid not in known and gw.note_int(r, "refund_id") not in ours \
                and booking_id is not None:
            out[rid] = booking_id
    return out


def _job_alive(job_id: str) -> bool:
    # A job a killed worker left "started" is not alive: queue.job_alive fails it first.
    return job_alive(job_id)


def sweep() -> dict[str, int]:
    """Expire unpaid bookings (after asking the gateway about their links), make payment
    links whose job was lost, re-enqueue events whose job was lost, make refund attempts
    that are due (should their scheduled job be lost), re-enqueue refund requests
    whose job died (a worker killed, RQ's retries spent without an answer: the same
    attempt again, whose idempotency key makes that safe), start refunds that waited
    for another of their booking (should the settling event not have started them),
    release delivered legs whose release was lost and make again the transfers of legs
    still owed to their partner (a job out of retries, a refusal: with a back-off, until
    paid however long that takes; ops hear of a leg owed OWED_LONG)."""
    expired = expire_unpaid()
    with transaction() as session:
        unlinked = bookings_without_link(session)
        ids = unprocessed_events(session)
        event_ids = dict(session.execute(select(GatewayEvent.id, GatewayEvent.event_id)
                                         .where(GatewayEvent.id.in_(ids))).all())
        due = due_refund_retries(session)
        stale = stale_refund_requests(session)
        waiting = waiting_refunds(session)
        unreleased = unreleased_legs(session)
        # Owed lately first (unpaid_legs), then those owed for longer, in turn.
        unpaid = list(dict.fromkeys(unpaid_legs(session) + owed_legs_in_turn(session)))
        waiting_account = owed_without_account_in_turn(session)
    for leg_id in unreleased:
        enqueue("workers.payments.release_leg", leg_id, job_id=f"release-{leg_id}",
                retry=GATEWAY_RETRY)
    for row_id, event_id in event_ids.items():
        enqueue("workers.payments.process_event", row_id, job_id=event_job_id(event_id),
                retry=GATEWAY_RETRY)
    retried = 0
    for booking_id, attempt in due:
        try:
            retried += retry_refund(booking_id, attempt) == "retried"
        except BaseTimeoutException:
            raise
        except Exception:  # one booking's trouble must not stop the sweep for the others
            log.exception("could not make a due refund attempt", extra={"booking_id": booking_id})
    _alert_unanswered_refunds()
    for leg_id in waiting_account:  # no transfer to make: ops add the account
        try:
            _tell_owed_long(leg_id)
        except BaseTimeoutException:
            raise
        except Exception:  # telling ops must not stop the sweep
            log.exception("could not tell ops of a leg owed long", extra={"leg_id": leg_id})
    requeued = 0
    for booking_id, attempt, reason in stale:
        job_id = _refund_job_id(booking_id, attempt)
        if not _job_alive(job_id):
            log.warning("refund request lost its job; enqueued again",
                        extra={"booking_id": booking_id, "attempt": attempt})
            enqueue("workers.payments.refund_booking", booking_id, reason, job_id=job_id,
                    retry=GATEWAY_RETRY)
            requeued += 1
    return {"expired": expired, "links_requeued": _requeue_link_jobs(unlinked),
            "events": len(event_ids), "refund_retries": retried,
            "refunds_requeued": requeued, "refunds_started": _start_waiting_refunds(waiting),
            "releases": len(unreleased), "transfers": _resettle_unpaid(unpaid)}


def count_events(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(GatewayEvent)) or 0)


__all__ = ["cancel_booking", "cancellation_preview", "create_payment_link",
           "hold_leg_transfer", "payment_url", "process_event", "receive_webhook",
           "record_capture", "record_outside_refund", "refund_booking", "release_leg",
           "request_payment_link", "retry_refund", "retry_refund_now", "settle_leg_transfer"]

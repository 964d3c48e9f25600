"""Payments use cases (issue 5 fills these in; the signatures are the contract).

- request_payment_link: quoted -> awaiting_payment; the link is created by an RQ job
  (`workers.payments.create_payment_link`, job id `paylink-<booking_id>`) and sent to the
  customer as a message when ready. Never a network call inside a webhook.
- cancellation_preview / cancel_booking: what a cancellation refunds, and doing it.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from core import clock
from core.adapters.models import Booking
from core.adapters.queue import after_commit, enqueue
from core.domain.booking import Actor, BookingStatus, CancellationQuote, cancellation_refund
from core.domain.errors import Conflict
from core.services.booking import move_booking

PAYMENT_LINK_TTL = timedelta(minutes=30)
PAID_STATES = {BookingStatus.PAID, BookingStatus.DISPATCHING, BookingStatus.ASSIGNED,
               BookingStatus.PICKED_UP, BookingStatus.IN_TRANSIT, BookingStatus.DELIVERED}


def request_payment_link(session: Session, booking: Booking, actor: Actor) -> None:
    """Confirm a quoted booking: it now waits for payment; the link follows by message."""
    move_booking(session, booking, BookingStatus.AWAITING_PAYMENT, actor, "customer confirmed")
    booking.expires_at = clock.now() + PAYMENT_LINK_TTL
    booking_id = booking.id
    after_commit(session, lambda: enqueue("workers.payments.create_payment_link", booking_id,
                                          job_id=f"paylink-{booking_id}"))


def cancellation_preview(session: Session, booking: Booking) -> CancellationQuote:
    """What cancelling now would refund, under the cancellation policy."""
    status = BookingStatus(booking.status)
    paid = booking.total_paise if status in PAID_STATES else 0
    return cancellation_refund(status, paid)


def cancel_booking(session: Session, booking: Booking, actor: Actor,
                   reason: str) -> CancellationQuote:
    """Cancel a booking under the policy; a refund (if any) is made by an RQ job."""
    quote = cancellation_preview(session, booking)
    if not quote.allowed:
        raise Conflict("this booking can no longer be cancelled", code=quote.reason_code)
    move_booking(session, booking, BookingStatus.CANCELLED, actor, reason)
    if quote.refund_paise > 0:
        booking_id = booking.id
        after_commit(session, lambda: enqueue("workers.payments.refund_booking", booking_id,
                                              "cancelled", job_id=f"refund-{booking_id}"))
    return quote

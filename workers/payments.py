"""Payment jobs (thin: ids in, call core.services.payments / reconciliation).

Job ids are natural keys: ``paylink-<booking>``, ``rzp-event-<event id>``,
``release-<leg>``, ``transfer-<leg>`` (``transfer-<leg>-failed-<transfer>`` after a
transfer.failed; ``transfer-<leg>-after-<transfer>`` once a transfer whose reversal
waited is processed), ``hold-<leg>-<offer>`` (``hold-<leg>-after-<transfer>`` likewise;
``hold-<leg>-after-resumed`` and ``transfer-<leg>-after-resumed`` from the hourly
reconciliation, which also queues ``transfer-<leg>`` for a hold left on a closed
booking's leg, and for a hold no row named that it records on a leg that earned
something), ``refund-<booking>`` (``refund-<booking>-<attempt>``
from the second attempt), ``refund-retry-<booking>-<attempt>``, ``paylink-cancel-<booking>``,
``payments-sweep-<minute>``, ``reconcile-<hour>``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from rq.timeouts import BaseTimeoutException

from core import clock
from core.services import payments, reconciliation

SWEEP_EVERY_S = 60
RECONCILE_EVERY_S = 3600


def create_payment_link(booking_id: int) -> str:
    """Create the booking's payment link at the gateway and send it to the customer."""
    return payments.create_payment_link(booking_id)


def process_event(event_row_id: int) -> str:
    """Apply one stored Razorpay webhook event."""
    return payments.process_event(event_row_id)


def release_leg(leg_id: int) -> str:
    """A leg was delivered: release its payout from escrow (enqueued by dispatch)."""
    return payments.release_leg(leg_id)


def settle_leg_transfer(leg_id: int) -> str:
    """Make the leg's Route transfer match what the ledger says the partner earned."""
    return payments.settle_leg_transfer(leg_id)


def hold_leg_transfer(leg_id: int) -> str:
    """A partner was assigned: create the leg's Route transfer to them, on hold."""
    return payments.hold_leg_transfer(leg_id)


def refund_booking(booking_id: int, reason: str) -> str:
    """Refund a booking by policy (``cancelled``, ``no_partner``, ``late_payment``)."""
    return payments.refund_booking(booking_id, reason)


def retry_refund(booking_id: int, attempt: int) -> str:
    """Make the next attempt of a booking's failed refund, once its delay has passed."""
    return payments.retry_refund(booking_id, attempt)


def cancel_payment_link(booking_id: int) -> str:
    """Cancel the link of a booking cancelled or expired before payment (a link found paid
    has its payment recorded, and refunded)."""
    return payments.cancel_payment_link(booking_id)


def sweep() -> dict[str, int]:
    """Expire unpaid bookings (once the gateway says their link was not paid), make links
    whose job was lost, re-enqueue lost events and refunds, make due refund attempts and
    waiting refunds, release and pay legs left unpaid; then schedule the next sweep."""
    try:
        return payments.sweep()
    finally:
        schedule_periodic()  # one failed run (the database restarting) must not end the chain


def reconcile() -> dict[str, int]:
    """Apply refunds the gateway settled whose webhook never came, compare the ledger
    with the gateway (the last day, and what is still open), settle the holds left on
    closed bookings' legs; then schedule the next run.

    One part failing does not keep the other from running (the gateway refusing the
    poll's questions must not cost the hour its comparison): the reconciliation runs, and
    the poll's error is raised after it, so the job ends failed and RQ logs it, once. Both
    failing: the reconciliation's error is raised, the poll's chained to it in the same
    traceback. The job's time running out (RQ's timeout, raised inside the poll) is
    raised at once: the reconciliation would run with no time limit left."""
    try:
        try:
            payments.poll_refunds()
        except BaseTimeoutException:
            raise
        except Exception:
            reconciliation.run()
            raise
        return reconciliation.run()
    finally:
        schedule_periodic()


def _schedule_once(func: str, every_s: int, prefix: str, now: datetime) -> str:
    """Schedule ``func`` at the next slot, once. Never at or before the slot of the run
    scheduling it (its job id names it): a run a second early by this worker's clock (a
    skew the scheduler allows, a clock stepped back) would name itself, which exists, and
    the chain would end."""
    from core.adapters.queue import queue

    slot = int(now.timestamp()) // every_s * every_s
    next_at = max(slot, _own_slot(prefix) or 0) + every_s
    job_id = f"{prefix}-{next_at}"
    q = queue("default")
    if q.fetch_job(job_id) is None:
        q.enqueue_at(datetime.fromtimestamp(next_at, UTC), func, job_id=job_id,
                     result_ttl=600, failure_ttl=86400)
    return job_id


def schedule_periodic(now: datetime | None = None) -> list[str]:
    """Schedule the next sweep (every minute) and reconciliation (every hour), once each.

    The job ids name the slot, so several workers join one chain instead of starting many.
    """
    now = now or clock.now()
    return [
        _schedule_once("workers.payments.sweep", SWEEP_EVERY_S, "payments-sweep", now),
        _schedule_once("workers.payments.reconcile", RECONCILE_EVERY_S, "reconcile", now),
    ]


def _own_slot(prefix: str) -> int | None:
    """The slot the running job was scheduled for, if it is one of ``prefix``'s chain."""
    from rq import get_current_job

    job = get_current_job()
    name, _, at = (job.id if job is not None else "").rpartition("-")
    return int(at) if name == prefix and at.isdigit() else None

"""Dispatch jobs (thin: ids in, call core.services.dispatch).

Job ids are natural keys: ``dispatch-<booking>``, ``offer-timeout-<offer>``,
``offer-unreached-<offer>``, ``dispatch-reached-<partner event>``,
``dispatch-deadline-<leg>-<round>``, ``dispatch-retry-<leg>-<round>-<pass>``,
``drop-code-morning-<leg>-<tag>``,
``dispatch-sweep-<minute>``, ``ops-summary-<key>-<time>``, ``ops-deferred-<dedupe key>``
(both with retries; a night's alert is also kept in PostgreSQL and sent by the sweep if
its job did not); the sweep also re-schedules lost rating questions
(``rate-ask-<booking>-<try>``, core.services.rating) and tells ops of handoffs nobody
answered in time (core.services.handoff.alert_unanswered).
"""

from __future__ import annotations

from datetime import UTC, datetime

from core import clock
from core.services import dispatch, handoff, rating

SWEEP_EVERY_S = 60


def start_dispatch(booking_id: int) -> str:
    """A booking was paid: plan its legs and offer the first (enqueued by payments)."""
    result = dispatch.start_dispatch(booking_id)
    schedule_sweep()  # make sure the safety-net sweep is running
    return result


def offer_timeout(offer_id: int) -> str:
    """An offer's time is up: expire it unless it was answered, then move the cascade on."""
    return dispatch.offer_timeout(offer_id)


def offer_unreached(offer_id: int) -> str:
    """An offer's SMS never reached its rider: the offer stops holding the job."""
    return dispatch.offer_unreached(offer_id)


def back_on_reached(partner_id: int, event_id: int) -> str:
    """A rider put OFF for offers that never reached him sent an SMS: back ON."""
    return dispatch.back_on_reached(partner_id, event_id)


def unreached_probe(partner_id: int, event_id: int, n: int) -> str:
    """A rider put OFF for offers that never reached him is told so, later, by SMS."""
    return dispatch.unreached_probe(partner_id, event_id, n)


def continue_search(leg_id: int) -> str:
    """Search again after the candidate list ran dry."""
    return dispatch.continue_search(leg_id)


def search_deadline(leg_id: int, round_no: int) -> str:
    """The tier's deadline for finding a partner has passed."""
    return dispatch.search_deadline(leg_id, round_no)


def resume_search(leg_id: int, round_no: int) -> str:
    """A relay leg paused for want of a partner starts a new round of its search."""
    return dispatch.resume_search(leg_id, round_no)


def morning_drop_code(leg_id: int) -> str:
    """The night is over: the recipient's drop code kept from it goes now."""
    return dispatch.morning_drop_code(leg_id)


def sweep() -> dict[str, int]:
    """Expire offers whose timeout job was lost, move stalled searches on, chase taken jobs
    not picked up or delivered in time (a relay leg's rider not come to the Point for the
    parcel too), ask again for the ratings of deliveries whose try was lost
    (core.services.rating), tell ops of people waiting for a person past the reply we
    promised (core.services.handoff); then reschedule."""
    try:
        try:
            done = dispatch.sweep()
        finally:
            # The ratings' sweep and the handoffs' check run even when dispatch's failed
            # (one bad leg must not leave customers unasked or unanswered); a failure of
            # their own fails the job as before.
            try:
                asks = rating.sweep()
            finally:
                waiting = handoff.alert_unanswered()
        return {**done, "rating_asks": asks, "handoffs_unanswered": waiting}
    finally:
        # One failed run (the database restarting) must not end the chain; the next run
        # is the minute after this one's, whatever this worker's clock says.
        schedule_sweep(after=_own_minute())


def schedule_sweep(now: datetime | None = None, *, after: int | None = None) -> str:
    """Schedule the sweep at the next whole minute, once (the job id names that minute, so
    several workers join one chain instead of starting several); with ``after`` (the
    minute of the run scheduling it) never at or before that minute: a run a second early
    by this worker's clock would name itself, which exists, and the chain would end."""
    from core.adapters.queue import queue

    now = now or clock.now()
    minute = int(now.timestamp()) // SWEEP_EVERY_S * SWEEP_EVERY_S
    next_at = max(minute, after or 0) + SWEEP_EVERY_S
    job_id = f"dispatch-sweep-{next_at}"
    q = queue("default")
    if q.fetch_job(job_id) is None:
        q.enqueue_at(datetime.fromtimestamp(next_at, UTC), "workers.dispatch.sweep",
                     job_id=job_id, result_ttl=600, failure_ttl=86400)
    return job_id


def fetch_pod_photo(leg_id: int, partner_id: int, url: str, content_type: str,
                    before_drop: bool = False) -> str:
    """Download a partner's WhatsApp photo and store it with the leg: its proof of delivery
    if sent after the drop, else a pickup photo (a job queued without ``before_drop``, by
    an older release, is filed by the leg's state when it runs)."""
    return dispatch.fetch_pod_photo(leg_id, partner_id, url, content_type, before_drop)


def _own_minute() -> int | None:
    """The minute the running sweep job was scheduled for (its id names it), None when
    run otherwise (by hand, a test)."""
    from rq import get_current_job

    job = get_current_job()
    name, _, at = (job.id if job is not None else "").rpartition("-")
    return int(at) if name == "dispatch-sweep" and at.isdigit() else None


def ops_alert_summary(key: str, first_ref: str) -> int:
    """An ops alert window ended: one SMS for the alerts of that key held in it."""
    return dispatch.send_alert_summary(key, first_ref)


def ops_deferred_alert(key: str, dedupe_key: str, booking_id: int | None,
                       params: dict[str, object]) -> int:
    """A daytime ops alert kept from the night: the team's hours began."""
    return dispatch.send_deferred_alert(key, dedupe_key, booking_id, params)

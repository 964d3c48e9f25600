"""Jobs that deliver the outbox."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime

from rq import Retry
from rq.timeouts import BaseTimeoutException

from core import clock
from core.services import outbox

SWEEP_EVERY_S = 60
# What each sweep does, in order: (module, function), imported when the sweep runs.
_SWEEP_PARTS = (
    ("core.services.outbox", "sweep"),
    ("workers.inbound", "sweep"),
    ("core.services.outbox", "kick_statuses"),
    ("core.services.handoff", "expire_idle"),
    ("core.services.retention", "redact_saved_codes"),
)


def deliver(outbox_id: int) -> str | Retry:
    """Send one outbox row (job id ``outbox-<id>``; RQ retries a failed try with backoff).

    A row that could not go yet, untried (its address's turn busy, an earlier message
    first), comes back as this same job: a Retry returned, not raised, has RQ run it again
    after the pause without using one of the job's retries (RQ counts returned Retries
    apart, in number_of_retries, bounded by the returned max; retries_left is untouched).
    """
    outcome = outbox.deliver(outbox_id)
    if isinstance(outcome, outbox.ComeBack):
        return Retry(max=outbox.COME_BACK_MAX, interval=outcome.after_s)
    return outcome


def apply_statuses() -> int:
    """Apply the status callbacks the webhook queued, in batches, until none are left."""
    return outbox.apply_statuses()


def sweep() -> int:
    """Re-enqueue outbox rows (and drain inboxes, and apply status reports) whose job was
    lost, close handoffs idle too long, take ops' codes out of saved API answers past
    their replay window (core.services.retention); schedule the next."""
    try:
        # Each part on its own: PostgreSQL away must not keep the Redis-only parts (the
        # inboxes, the status queue) from running, nor the reverse. The first error is
        # raised once all have run. Each part's module is imported in its own try too: one
        # that cannot be imported (workers.inbound imports the bots and the web's helpers)
        # must neither keep the others from running nor end the chain.
        count, failed = 0, None
        for module, name in _SWEEP_PARTS:
            try:
                count += int(getattr(importlib.import_module(module), name)())
            except BaseTimeoutException:
                raise  # the job's time is up: the rest waits for the next minute's run
            except Exception as exc:  # noqa: BLE001 (raised below, after the others ran)
                failed = failed or exc
        if failed is not None:
            raise failed
        return count
    finally:
        # One failed run (the database restarting) must not end the chain; the next run
        # is the minute after this one's, whatever this worker's clock says.
        schedule_sweep(after=_own_minute())


def schedule_sweep(now: datetime | None = None, *, after: int | None = None) -> str:
    """Schedule the sweep at the next whole minute, once.

    The job id names that minute, so a restarted worker (or two workers) joining the chain
    schedules the same job instead of starting a second chain. With ``after`` (the minute
    of the run scheduling it) never at or before that minute: a run a second early by this
    worker's clock would name itself, which exists, and the chain would end.
    """
    from core.adapters.queue import queue

    now = now or clock.now()
    minute = int(now.timestamp()) // SWEEP_EVERY_S * SWEEP_EVERY_S
    next_at = max(minute, after or 0) + SWEEP_EVERY_S
    job_id = f"outbox-sweep-{next_at}"
    q = queue("outbox")
    if q.fetch_job(job_id) is None:
        q.enqueue_at(datetime.fromtimestamp(next_at, UTC), "workers.outbox.sweep",
                     job_id=job_id, result_ttl=600, failure_ttl=86400)
    return job_id


def _own_minute() -> int | None:
    """The minute the running sweep job was scheduled for (its id names it), None when
    run otherwise (by hand, a test)."""
    from rq import get_current_job

    job = get_current_job()
    name, _, at = (job.id if job is not None else "").rpartition("-")
    return int(at) if name == "outbox-sweep" and at.isdigit() else None

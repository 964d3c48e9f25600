"""Jobs that deliver the outbox."""

from __future__ import annotations

from datetime import timedelta

from core.services import outbox

SWEEP_EVERY_S = 60


def deliver(outbox_id: int) -> str:
    """Send one outbox row (job id ``outbox-<id>``; RQ retries it with backoff)."""
    return outbox.deliver(outbox_id)


def sweep() -> int:
    """Re-enqueue outbox rows whose delivery job was lost, then schedule the next sweep."""
    from core.adapters.queue import queue

    count = outbox.sweep()
    queue("outbox").enqueue_in(timedelta(seconds=SWEEP_EVERY_S), "workers.outbox.sweep",
                               job_id="outbox-sweep")
    return count

"""The daily retention job (core.services.retention): job id ``retention-<slot>``."""

from __future__ import annotations

from datetime import UTC, datetime

from core import clock
from core.services import retention

DAY_S = 86400
# 21:30 UTC is 03:00 in India: the quietest hour of the day for messages and bookings.
RUN_AT_S = 21 * 3600 + 30 * 60


def run() -> dict[str, int]:
    """Prune and redact what is past its keeping time; then schedule the next day's run."""
    try:
        return retention.run()
    finally:
        schedule()  # one failed run (the database restarting) must not end the chain


def schedule(now: datetime | None = None) -> str:
    """Schedule the next run (the next 03:00 in India), once.

    The job id names that day's slot, so every worker joining the chain (core.cli
    join_sweeps) schedules the same job instead of starting a second chain."""
    from core.adapters.queue import queue

    now = now or clock.now()
    next_at = ((int(now.timestamp()) - RUN_AT_S) // DAY_S + 1) * DAY_S + RUN_AT_S
    job_id = f"retention-{next_at}"
    q = queue("default")
    if q.fetch_job(job_id) is None:
        # The run stops itself after RETENTION_RUN_SECONDS; RQ's default 180 s timeout
        # would cut a longer one short.
        q.enqueue_at(datetime.fromtimestamp(next_at, UTC), "workers.retention.run",
                     job_id=job_id, job_timeout=retention.MAX_RUN_SECONDS + 60,
                     result_ttl=2 * DAY_S, failure_ttl=7 * DAY_S)
    return job_id


def delete_photos() -> int:
    """Delete the photo files an erasure left after its commit (core.services.retention);
    raises while the store is away, so RQ tries again."""
    return retention.photo_job()

"""The periodic sweeps are self-rescheduling chains: one run that raises (PostgreSQL
restarting for a few seconds, one bad row) must not end the chain for good."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from rq.registry import ScheduledJobRegistry
from sqlalchemy.exc import OperationalError

from core import clock
from core.adapters.queue import queue
from tests.conftest import run_jobs

pytestmark = pytest.mark.db


def scheduled(name: str, prefix: str) -> list[str]:
    return [j for j in ScheduledJobRegistry(queue=queue(name)).get_job_ids()
            if j.startswith(prefix)]


def run_at_its_minute(job_id: str) -> None:
    """The scheduler's part: at the job's minute, move it (only it: the hourly
    reconciliation may fall due in the same minutes of the wall clock) into its queue."""
    from core.adapters.queue import QUEUES

    clock.freeze(datetime.fromtimestamp(int(job_id.rsplit("-", 1)[1]), UTC))
    moved = 0
    for name in QUEUES:
        q = queue(name)
        registry = ScheduledJobRegistry(queue=q)
        if job_id in registry.get_job_ids():
            registry.remove(job_id)
            q._enqueue_job(q.fetch_job(job_id))
            moved += 1
    assert moved == 1


def next_minute(job_id: str) -> str:
    prefix, at = job_id.rsplit("-", 1)
    return f"{prefix}-{int(at) + 60}"


def test_the_outbox_sweep_chain_survives_a_run_without_the_database(clean_db, monkeypatch):
    from core import config
    from core.adapters import db as db_adapter
    from workers.outbox import schedule_sweep

    first = schedule_sweep()
    assert scheduled("outbox", "outbox-sweep-") == [first]
    run_at_its_minute(first)
    dead = replace(config.get_settings(),
                   database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    monkeypatch.setattr("core.adapters.db.get_settings", lambda: dead)
    db_adapter.dispose_all()
    assert run_jobs(("outbox",)) == 1  # the sweep ran and failed
    monkeypatch.undo()
    db_adapter.dispose_all()
    assert scheduled("outbox", "outbox-sweep-") == [next_minute(first)], "the chain ended"


def test_the_dispatch_sweep_chain_survives_a_failed_run(clean_db, monkeypatch):
    from core.services import dispatch
    from workers.dispatch import schedule_sweep

    def blip() -> dict[str, int]:
        raise OperationalError("SELECT 1", {}, Exception("the database system is starting up"))

    first = schedule_sweep()
    run_at_its_minute(first)
    monkeypatch.setattr(dispatch, "sweep", blip)
    assert run_jobs(("default",)) == 1
    monkeypatch.undo()
    assert scheduled("default", "dispatch-sweep-") == [next_minute(first)], "the chain ended"


def test_the_payments_sweep_chain_survives_a_failed_run(clean_db, monkeypatch):
    from core.services import payments
    from workers.payments import schedule_periodic

    def blip() -> dict[str, int]:
        raise OperationalError("SELECT 1", {}, Exception("the database system is starting up"))

    first = schedule_periodic()[0]
    run_at_its_minute(first)
    monkeypatch.setattr(payments, "sweep", blip)
    assert run_jobs(("default",)) == 1
    monkeypatch.undo()
    assert next_minute(first) in scheduled("default", "payments-sweep-"), "the chain ended"

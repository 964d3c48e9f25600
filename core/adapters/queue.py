"""RQ queues, and enqueueing that waits for the database commit (outbox discipline)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from rq import Queue, Retry, SimpleWorker, Worker
from rq.serializers import JSONSerializer
from sqlalchemy import event
from sqlalchemy.orm import Session

from core import clock
from core.adapters.redis_conn import redis_client

log = logging.getLogger(__name__)

QUEUES = ("outbox", "inbound", "default")
# The emulators' own work (Twilio's status callbacks, Razorpay's webhooks): in production
# Twilio and Razorpay do it, so in sandbox mode a separate worker does, not ours.
SANDBOX_QUEUE = "sandbox"


def queue(name: str = "default") -> Queue:
    """An RQ queue on the shared Redis, JSON-serialised (jobs take ids and plain values)."""
    return Queue(name, connection=redis_client(), serializer=JSONSerializer)


class _JobIdLogging:
    """Bind the job id to every log line the job writes."""

    def perform_job(self, job, queue, execution):
        from core import logs

        token = logs.job_id.set(job.id)
        try:
            return super().perform_job(job, queue, execution)  # type: ignore[misc]
        finally:
            logs.job_id.reset(token)


class _Periodic:
    """Run ``periodic`` (set by the caller) about every ``periodic_every_s``, busy or idle.

    The worker loop asks ``should_run_maintenance_tasks`` before every job and after every
    dequeue timeout, so that is the hook; RQ's own maintenance (registry cleaning, every
    10 minutes) runs only when it is due itself. An idle worker waits in its dequeue for
    ``worker_ttl - 15`` s (405 by default): here at most ``periodic_every_s``. The
    interval follows core.clock, so tests move it by moving the clock.
    """

    periodic: Callable[[], object] | None = None
    periodic_every_s = 60
    _periodic_at: datetime | None = None

    def _periodic_due(self) -> bool:
        if self.periodic is None:
            return False
        last = self._periodic_at
        return last is None or abs(clock.now() - last) >= timedelta(
            seconds=self.periodic_every_s)

    @property
    def dequeue_timeout(self) -> int:
        return min(super().dequeue_timeout, self.periodic_every_s)  # type: ignore[misc]

    @property
    def should_run_maintenance_tasks(self) -> bool:
        return self._periodic_due() or super().should_run_maintenance_tasks  # type: ignore[misc]

    def run_maintenance_tasks(self) -> None:
        if self._periodic_due():
            self._periodic_at = clock.now()
            try:
                assert self.periodic is not None
                self.periodic()
            except Exception:  # RQ's loop would end the worker; try again next time
                log.exception("periodic worker task failed")
        if super().should_run_maintenance_tasks:  # type: ignore[misc]
            super().run_maintenance_tasks()  # type: ignore[misc]


class JobLoggingWorker(_Periodic, _JobIdLogging, Worker):
    """RQ's forking worker: each job in a fresh child process (isolation, fork cost)."""


class JobLoggingSimpleWorker(_Periodic, _JobIdLogging, SimpleWorker):
    """Jobs run in the worker process itself: no fork, and connection pools live on.

    Our jobs are short and I/O-bound (send a message, post a ledger entry), so a fork and
    a new PostgreSQL connection per job would cost more than the job itself.
    """


def enqueue(
    func: str,
    *args: Any,
    queue_name: str = "default",
    job_id: str | None = None,
    retry: Retry | None = None,
    at_front: bool = False,
    known_new: bool = False,
) -> None:
    """Enqueue ``func`` (dotted path) now; a natural-key job_id makes repeats harmless.

    ``known_new``: the caller knows no job with this id exists (skips a round trip).
    """
    q = queue(queue_name)
    if job_id is not None and not known_new:
        existing = q.fetch_job(job_id)
        if existing is not None and existing.get_status(refresh=True) in (
            "queued", "started", "scheduled", "deferred",
        ):
            return
    q.enqueue(func, *args, job_id=job_id, retry=retry, at_front=at_front,
              result_ttl=3600, failure_ttl=7 * 86400)


def after_commit(session: Session, action: Callable[[], object]) -> None:
    """Run ``action`` once this session's transaction commits (never if it rolls back).

    An action registered inside a savepoint waits for the outermost commit too (releasing
    a savepoint commits nothing), and is dropped if that savepoint rolls back, without
    the actions registered before it. Actions run once the session has given its
    connection back to the pool.
    """
    session.info.setdefault("after_commit", []).append(action)


@event.listens_for(Session, "after_transaction_create")
def _mark_savepoint(session: Session, transaction: Any) -> None:
    if transaction.nested:  # what was registered before it survives its rollback
        session.info.setdefault("after_commit_marks", {})[id(transaction)] = len(
            session.info.get("after_commit", []))


@event.listens_for(Session, "after_rollback")
def _drop_after_commit(session: Session) -> None:
    savepoint = session.get_nested_transaction()
    if savepoint is not None:  # ROLLBACK TO SAVEPOINT: only what it registered goes
        mark = session.info.get("after_commit_marks", {}).get(id(savepoint))
        if mark is not None:
            del session.info.get("after_commit", [])[mark:]
        return
    session.info.pop("after_commit", None)


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released (SQLAlchemy calls that a commit too): not yet
    # Not run yet: the session still holds its connection here. An action that opens a
    # transaction of its own (sending a reply, then recording the outcome) would take a
    # second connection per thread, past the pool's size with four drain threads: a new
    # PostgreSQL backend, and its start-up, for every overflow.
    session.info["committed"] = session.info.pop("after_commit", [])


@event.listens_for(Session, "after_transaction_end")
def _run_after_commit(session: Session, transaction: Any) -> None:
    if transaction.nested:
        session.info.get("after_commit_marks", {}).pop(id(transaction), None)
        return
    if transaction.parent is not None:
        return
    # Whatever is still registered belongs to a transaction that ended without a commit
    # (rolled back with a savepoint open, say): it must not run at the session's next one.
    session.info.pop("after_commit", None)
    session.info.pop("after_commit_marks", None)
    actions = session.info.pop("committed", [])
    for action in actions:  # the connection is back in the pool by now
        try:
            action()
        except Exception:  # the row is saved; the sweeper will pick it up later
            log.exception("after-commit action failed; the periodic sweep will retry it")

"""RQ queues, and enqueueing that waits for the database commit (outbox discipline)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from redis.exceptions import RedisError
from rq import Queue, Retry, SimpleWorker, Worker
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import as_text, current_timestamp
from sqlalchemy import event
from sqlalchemy.orm import Session

from core import clock
from core.adapters.redis_conn import redis_client

log = logging.getLogger(__name__)

# The IVR's prompt renders (ivr_flows.audio): cosmetic (a prompt without audio is said
# with <Say>) and slow while Google cannot be reached, so on a queue of their own that
# every worker listens to last. A payment link or a dispatch offer never waits behind them.
RENDER_QUEUE = "prompts"
# The service's queues, in the order a worker takes from them (the first that has a job).
QUEUES = ("outbox", "inbound", "default", RENDER_QUEUE)
# The emulators' own work (Twilio's status callbacks, Razorpay's webhooks): in production
# Twilio and Razorpay do it, so in sandbox mode a separate worker does, not ours.
SANDBOX_QUEUE = "sandbox"

# A job in one of these states runs (again) without our help: enqueueing it would
# duplicate it. A "started" one counts only while a live worker runs it (_abandoned), a
# "queued" one only while it is in its queue or was just taken from it (_lost).
PENDING = ("queued", "started", "scheduled", "deferred")
# How long the caller that fails an abandoned job keeps others from doing it too.
ABANDONED_CLAIM_S = 30
# How long a "queued" job may be out of its queue before it counts as lost: a worker
# that took it marks it started milliseconds later (fetch, log, heartbeat), seconds when
# Redis or the worker is slow. Counted from the first caller that saw it out (core.clock).
LOST_GRACE_S = 30
# How long the first sighting is kept (real seconds): past it, a job is first seen again.
LOST_SEEN_TTL_S = 86400


def queue(name: str = "default") -> Queue:
    """An RQ queue on the shared Redis, JSON-serialised (jobs take ids and plain values)."""
    return Queue(name, connection=redis_client(), serializer=JSONSerializer)


class _JobIdLogging:
    """Bind the job id to every log line the job writes; never log a job's arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A job's description is its call with its arguments (a Razorpay payload, a photo
        # URL, a spoken text): RQ logs it with every job taken and done unless this is
        # False, whoever builds the worker. (The arguments RQ puts on a failed try's
        # record are dropped by core.logs.JsonFormatter.)
        self.log_job_description = False

    def bootstrap(self, logging_level: str | None = "INFO", *args: Any, **kwargs: Any) -> None:
        """Our JSON logs before RQ looks for a handler: started other than by core.cli
        (RQ's CLI, a script), RQ would give its loggers plain-text handlers, which a
        forked job's process inherits. Already configured (core.cli), this changes no
        level, and still drops RQ's job result line (core.logs)."""
        from core import logs

        if logs.configured():
            logs.configure(logging.getLevelName(logging.getLogger().level))
        else:
            logs.configure(logging_level or "INFO")
        super().bootstrap(logging_level, *args, **kwargs)  # type: ignore[misc]

    def perform_job(self, job, queue, execution):
        from core import logs

        token = logs.job_id.set(job.id)
        try:
            return super().perform_job(job, queue, execution)  # type: ignore[misc]
        finally:
            logs.job_id.reset(token)


class _ForgetsOldFailure:
    """A job that succeeds leaves no entry of its id in its queue's FailedJobRegistry.

    Our job ids are natural keys (``transfer-<leg>``, ``rzp-event-<id>``): a job failed
    for good is enqueued again under the same id (the sweep, ops). RQ (3.0) keeps the
    failed entry through that new run's success (handle_job_success cleans the started
    registry only), so /metrics' rq_failed_jobs counted a failure made good since, for
    the registry's failure_ttl (7 days)."""

    def handle_job_success(self, job, queue, started_job_registry, execution):
        super().handle_job_success(job, queue, started_job_registry, execution)  # type: ignore[misc]
        try:
            queue.failed_job_registry.remove(job.id)
        except RedisError:  # the gauge overstates until the entry expires; the job is done
            log.warning("a succeeded job's old failure was not forgotten")


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
    # The scheduler (work(with_scheduler=True)) runs in a process of its own, which exits
    # on the first Redis error its client's retries do not cover (a Redis restart, a
    # failover). RQ starts a new one only in its 10-minute maintenance: no scheduled job
    # (offer timeouts, outbox retries, the sweeps) would run meanwhile. Ours that died is
    # started again at the next wake-up after Redis answers (at most periodic_every_s
    # later); one another worker ran is looked for (its lock) once a periodic_every_s.
    _scheduler_tried_at: datetime | None = None
    _scheduler_seen_dead: object = None
    # A burst worker (work(burst=True)) runs what is queued and exits. With a scheduler,
    # RQ moves the jobs due at its start and starts no scheduler process; neither may we:
    # its exit would SIGTERM that process, and a SIGTERM landing before the process
    # installed its handlers is lost, so the worker waited for it (join) for ever.
    _burst = False

    def work(self, *args: Any, **kwargs: Any) -> bool:
        self._burst = bool(kwargs.get("burst", args[0] if args else False))
        return cast(bool, super().work(*args, **kwargs))  # type: ignore[misc]

    def _scheduler_due(self) -> bool:
        scheduler = getattr(self, "scheduler", None)
        if scheduler is None:
            return False  # a worker without a scheduler
        if self._burst:
            return False  # see _burst
        if getattr(self, "_stop_requested", False):
            return False  # a warm shutdown stopped it; a new one would outlive the worker
        process = scheduler._process
        if process is not None and process.is_alive():  # a waitpid, no Redis
            return False
        if process is not None and process is not self._scheduler_seen_dead:
            return True  # ours has just died: at once
        last = self._scheduler_tried_at
        return last is None or abs(clock.now() - last) >= timedelta(
            seconds=self.periodic_every_s)

    def _restart_scheduler(self) -> None:
        """Start a scheduler again if no live one holds the queues' locks. RQ's own call
        (its maintenance does the same): the locks are taken by this worker's scheduler
        name, so a dead one's lock is ours again and another worker's live scheduler
        keeps its queues; a process is started only when this worker's is not alive."""
        scheduler = self.scheduler  # type: ignore[attr-defined]
        dead = scheduler._process
        self._scheduler_tried_at = clock.now()
        try:
            started = scheduler.acquire_locks(auto_start=True)
        except RedisError as exc:  # still away: tried again at the next wake-up
            log.warning("scheduler not restarted yet", extra={"reason": type(exc).__name__})
            return
        self._scheduler_seen_dead = dead
        if dead is not None and started:
            log.warning("scheduler process had died; started again",
                        extra={"queues": sorted(started)})

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
        return (self._periodic_due() or self._scheduler_due()
                or super().should_run_maintenance_tasks)  # type: ignore[misc]

    def _shutdown(self) -> None:
        """RQ's answer to the first SIGTERM/SIGINT. Idle, it raises StopRequested out of
        the signal handler, wherever the worker was: landing in a log call (a job just
        taken is logged), logging's emit catches it and prints "Logging error", and the
        worker never stops (a stop then hung until SIGKILL). The flag makes the worker
        loop stop at its next turn whatever became of the raise."""
        self._stop_requested = True
        super()._shutdown()  # type: ignore[misc]

    def run_maintenance_tasks(self) -> None:
        if getattr(self, "_stop_requested", False):
            # A warm shutdown: the worker loop runs maintenance after the job, before it
            # looks at the stop. RQ's own (when its ten minutes are due) would start the
            # stopped scheduler again, a process that outlives the worker and hangs the
            # stop; and a stopping worker starts no sweep. The next worker does them.
            return
        if self._scheduler_due():
            self._restart_scheduler()
        if self._periodic_due():
            self._periodic_at = clock.now()
            try:
                assert self.periodic is not None
                self.periodic()
            except Exception:  # RQ's loop would end the worker; try again next time
                log.exception("periodic worker task failed")
        if super().should_run_maintenance_tasks:  # type: ignore[misc]
            if self._burst:
                # RQ's would start a scheduler process for a burst that lasts past its
                # 10 minutes (see _burst); the one it started with has done its work.
                setattr(self, "scheduler", None)  # noqa: B010 (RQ's attribute, not ours)
            super().run_maintenance_tasks()  # type: ignore[misc]


class JobLoggingWorker(_Periodic, _ForgetsOldFailure, _JobIdLogging, Worker):
    """RQ's forking worker: each job in a fresh child process (isolation, fork cost)."""


class JobLoggingSimpleWorker(_Periodic, _ForgetsOldFailure, _JobIdLogging, SimpleWorker):
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
        if _pending(q, job_id):
            return
        forget_earlier_run(q, job_id)
    q.enqueue(func, *args, job_id=job_id, retry=retry, at_front=at_front,
              result_ttl=3600, failure_ttl=7 * 86400)


# What an earlier job of the same id counted of its retries. RQ saves a job by writing its
# fields over the hash under its id, which an earlier job of that id left (for its
# result_ttl or failure_ttl) and which is not cleared: a field the new job does not write
# is the old one's. Its count of returned Retries (number_of_retries, written only once
# set) would end the new job's come-backs early (outbox.ComeBack), and an old exception
# retry budget (retries_left, retry_intervals; not written by a job enqueued without a
# Retry) would retry a job that was to have none.
_EARLIER_RUN_FIELDS = ("number_of_retries", "retries_left", "retry_intervals")


def forget_earlier_run(q: Queue, job_id: str) -> None:
    """Before a job is enqueued under the natural key ``job_id`` of one that is no longer
    pending: clear what the earlier one counted of its retries (its result stays)."""
    with q.connection.pipeline(transaction=False) as p:
        p.hdel(Job.key_for(job_id), *_EARLIER_RUN_FIELDS)
        p.delete(_LOST_SEEN + job_id)
        p.execute()


def job_alive(job_id: str, queue_name: str = "default") -> bool:
    """True if the job with this id waits or runs, so enqueueing it again would run it
    twice. One a dead worker left "started" is failed first (or retried by its Retry),
    as RQ's own maintenance would do minutes later."""
    return _pending(queue(queue_name), job_id)


def pending_ids(job_ids: list[str]) -> set[str]:
    """Those of ``job_ids`` whose job waits (queued, scheduled for a retry, deferred) or
    runs, on whichever queue: one round trip for them all; a "started" one is then looked
    at as ``job_alive`` does (a dead worker's is failed or retried, and not counted)."""
    if not job_ids:
        return set()
    r = redis_client()
    with r.pipeline(transaction=False) as p:
        for job_id in job_ids:
            p.hmget(Job.key_for(job_id), ["status", "origin"])
        replies = p.execute()
    pending: set[str] = set()
    queued: list[tuple[str, str]] = []
    for job_id, (raw_status, raw_origin) in zip(job_ids, replies, strict=True):
        status = as_text(raw_status) if raw_status is not None else None
        if status == "started":
            if raw_origin is None or _pending(queue(as_text(raw_origin)), job_id):
                pending.add(job_id)
        elif status == "queued" and raw_origin is not None:
            queued.append((job_id, as_text(raw_origin)))
        elif status in PENDING:
            pending.add(job_id)
    lost = _lost(r, queued)
    pending.update(job_id for job_id, _ in queued if job_id not in lost)
    return pending


def _pending(q: Queue, job_id: str) -> bool:
    job = q.fetch_job(job_id)
    if job is None:
        return False
    status = job.get_status(refresh=False)  # fetch_job has just read it
    if status == "started" and _abandoned(job):  # extra round trips only here
        if not _fail_abandoned(job):
            return True  # another caller is failing it, and enqueues it again
        status = job.get_status(refresh=True)  # failed, or queued/scheduled by its Retry
    if status == "queued" and job.origin:
        return not _lost(q.connection, [(job_id, job.origin)])
    return status in PENDING


# A "queued" job no queue holds. RQ writes the job's hash and pushes its id in one
# MULTI/EXEC (Queue._enqueue_async_job; the scheduler's and a Retry's moves too), so a
# queued job is in its queue until a worker pops it (BLPOP over our four queues; LMOVE
# into "<queue>:intermediate" for a worker of one queue), which marks it "started"
# moments later. A worker that stops in between (a deploy's SIGTERM while RQ thinks it
# idle raises StopRequested there), dies there, or whose BLPOP reply is lost leaves it
# "queued" for ever, in no queue: nothing would run it, and every enqueue of its natural
# id was skipped as "waiting". So: out of its queue, it is first seen (its enqueued_at
# and the time, under _LOST_SEEN); seen out again LOST_GRACE_S later, under the same
# enqueued_at, it is lost, and one caller enqueues it again: a claim held for
# ABANDONED_CLAIM_S by the thread that found it (it asks job_alive, then enqueues, which
# asks again), while the others are told it waits.
_LOST_SEEN = "queue:lost-seen:"
_LOST_CLAIM = "queue:lost-claim:"


def _claimant() -> str:
    """Who claims a lost job: this thread, which asks job_alive and then enqueues."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def _lost(r: Any, jobs: list[tuple[str, str]]) -> set[str]:
    """Those of ``jobs`` (id, origin queue) that are lost: in neither
    their queue nor its intermediate queue since LOST_GRACE_S, and claimed by this caller
    (two round trips for them all; a third only for ones seen out for the first time)."""
    if not jobs:
        return set()
    with r.pipeline(transaction=False) as p:
        for job_id, origin in jobs:
            key = Queue.redis_queue_namespace_prefix + origin
            p.lpos(key, job_id)
            p.lpos(IntermediateQueue.get_intermediate_queue_key(key), job_id)
            p.hget(Job.key_for(job_id), "enqueued_at")  # which enqueue of the id
            p.get(_LOST_SEEN + job_id)
        replies = p.execute()
    now = clock.now().timestamp()
    first_seen: dict[str, str] = {}
    due: list[tuple[str, str]] = []
    for i, (job_id, _) in enumerate(jobs):
        in_queue, in_intermediate, raw_enqueued, seen = replies[4 * i: 4 * i + 4]
        if in_queue is not None or in_intermediate is not None:
            continue
        enqueued = as_text(raw_enqueued or b"")
        seen_enqueued, _, seen_at = as_text(seen or b"").rpartition("|")
        if seen is None or seen_enqueued != enqueued:  # first seen out (this enqueue)
            first_seen[job_id] = f"{enqueued}|{now}"
        elif now - float(seen_at) >= LOST_GRACE_S:
            due.append((job_id, enqueued))
    if first_seen or due:
        with r.pipeline(transaction=False) as p:
            for job_id, value in first_seen.items():
                p.set(_LOST_SEEN + job_id, value, ex=LOST_SEEN_TTL_S)
            me = _claimant()
            for job_id, enqueued in due:
                claim = f"{_LOST_CLAIM}{job_id}|{enqueued}"
                p.set(claim, me, nx=True, ex=ABANDONED_CLAIM_S)
                p.get(claim)
            claims = p.execute()[len(first_seen) + 1::2]
        lost = {job_id for (job_id, _), holder in zip(due, claims, strict=True)
                if as_text(holder or b"") == me}
    else:
        lost = set()
    if lost:
        log.warning("queued jobs in no queue (a worker stopped as it took them): "
                    "enqueued again", extra={"jobs": sorted(lost)})
    return lost


# What RQ 3.0.0 does with a job whose worker dies under it (SIGKILL: the OOM killer, a
# deploy's kill -9, a reboot):
# - Our worker is a SimpleWorker: the job runs in the worker's process, so nothing is
#   written when it dies. The job keeps status "started" and its worker_name; its entry
#   "<job id>:<execution id>" in the queue's StartedJobRegistry is scored start + job
#   timeout + 60 s (240 s by default: a SimpleWorker sends no heartbeat during a job),
#   and the worker's key rq:worker:<name> expires at that same moment.
#   With RQ_FORK_PER_JOB (rq's Worker), a killed work horse alone is seen at once by its
#   parent, which fails the job (Retry honoured); if the parent dies, its heartbeats (every
#   30 s, ttl <= 90 s) stop and both lapse within 90 s. A parent killed alone leaves its
#   horse running the job (own process group) until the job's timeout. A cold shutdown (a
#   second SIGINT/SIGTERM, a second or more after the first) kills the horse and records
#   the worker's death ("death" in its key, kept 60 s), the job still "started".
# - Only StartedJobRegistry.cleanup() ends that state, and only for entries scored before
#   now. A worker runs it in its maintenance, for the queues it listens on, one worker per
#   queue (a lock): at its start, then when 10 minutes have passed since its last round
#   (checked between jobs and after each idle wait, 60 s for ours); reading a registry's
#   count or ids (rq info, dashboards) runs it too. So the job stays "started" for the
#   240 s and then until the next round: up to about 15 minutes, forever if no worker
#   listens on its queue. A worker restarted after the crash cleans at its start, seconds after the
#   kill, before the entry lapses: it is left for that worker's round 10 minutes later.
# - cleanup() then calls the job's failure callback with AbandonedJobError (one that
#   raises is logged and ignored) and the worker's exception handlers; with retries left
#   (Retry), it uses one: the job is queued again, or scheduled after its next interval;
#   else it marks it failed, in the FailedJobRegistry for failure_ttl with a failure
#   Result "Moved to FailedJobRegistry, due to AbandonedJobError, at <time>", and
#   enqueues its dependents and sends its "failed" webhooks. Then the entries go.
# Until then every enqueue of its id found it "started" and did nothing. So a "started"
# job counts as running while its worker's key is there without a death and one of its
# entries is still scored ahead of now (RQ's own test, on RQ's clock, which wrote the
# score), or, that lapsed, while its own timeout (plus RQ's 60 s) since it started has
# not passed: a forking worker's horse outlives its parent killed alone. A recorded death
# or a job past its time is failed now, by that same cleanup(), for it alone.


def _abandoned(job: Job) -> bool:
    """True if no live worker runs this "started" job (one round trip)."""
    key = Worker.redis_worker_namespace_prefix + (job.worker_name or "")
    with job.connection.pipeline(transaction=False) as p:
        p.zrange(job.started_job_registry.key, 0, -1, withscores=True)
        p.exists(key)
        p.hexists(key, "death")
        entries, worker_there, worker_died = p.execute()
    if worker_died:  # a cold shutdown: its work horse was killed with it
        return True
    now = current_timestamp()
    running = any(score > now for entry, score in entries if _job_of(entry) == job.id)
    if worker_there and running:
        return False
    # The worker's key or entry lapsed. A SimpleWorker's both lapse when the job's time
    # is up; a forking worker's parent killed alone lapses within 90 s, while its horse
    # (own process group) runs the job on until the job's own timeout kills it.
    return not _may_still_run(job, now)


def _may_still_run(job: Job, now: int) -> bool:
    """True until the job's timeout (plus RQ's 60 s) since it started; a job without a
    timeout (-1) may run for ever: only a recorded death ends it."""
    timeout = job.timeout if job.timeout is not None else Queue.DEFAULT_TIMEOUT
    if timeout < 0:
        return True
    if job.started_at is None:
        return False
    return job.started_at.timestamp() + timeout + 60 > now


def _fail_abandoned(job: Job) -> bool:
    """Fail (or retry) an abandoned job as RQ's maintenance would; False if another
    caller got there first."""
    r = job.connection
    if not r.set(f"queue:abandoned:{job.id}", job.worker_name or "", nx=True,
                 ex=ABANDONED_CLAIM_S):
        return False
    registry = _OneJobStartedRegistry(job)
    entries = [e for e in cast("list[bytes]", r.zrange(registry.key, 0, -1))
               if _job_of(e) == job.id]
    if entries:  # lapsed now, so that cleanup() takes them out with the job's new state
        r.zadd(registry.key, dict.fromkeys(entries, 0), xx=True)
    log.warning("a dead worker's job: failed (or retried) now, as RQ would later",
                extra={"job": job.id, "worker": job.worker_name})
    registry.cleanup(timestamp=0)
    return True


class _OneJobStartedRegistry(StartedJobRegistry):
    """RQ's handling of abandoned jobs (StartedJobRegistry.cleanup), for one job.

    cleanup() takes every job whose entry has lapsed; we know this one is abandoned before
    its entry lapses, while the others may still be running.
    """

    def __init__(self, job: Job) -> None:
        super().__init__(job.origin, job.connection, job_class=type(job),
                         serializer=job.serializer)
        self.job_id = job.id

    def get_expired_job_ids(self, timestamp: float | None = None) -> list[str]:
        return [self.job_id]


def _job_of(entry: bytes | str) -> str:
    """The job id in a StartedJobRegistry entry ("<job id>:<execution id>")."""
    return as_text(entry).rsplit(":", 1)[0]


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

"""A job a worker popped but never marked started (a deploy's SIGTERM in between, a lost
BLPOP reply) stays "queued" in no queue: core.adapters.queue counts it as waiting only for
LOST_GRACE_S after it is first seen out of its queue, then enqueues it again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from rq import SimpleWorker
from rq.serializers import JSONSerializer
from sqlalchemy import func, select

from core import clock
from core.adapters.db import transaction
from core.adapters.payment_models import LedgerTransaction
from core.adapters.queue import LOST_GRACE_S, QUEUES, enqueue, job_alive, pending_ids, queue
from core.adapters.redis_conn import redis_client
from core.config import ROOT

pytestmark = pytest.mark.db

COUNT = "tests.test_queue_s39.count"
WAIT_S = 30  # a bound on each handshake, not a time anything waits for

# The Procfile's worker (core.cli service_worker), burst, whose dequeue stops just after
# RQ popped a job (before the job is marked started) until a signal comes: the test's
# SIGTERM, a deploy's warm stop, lands in that window.
WORKER = """
import signal
from rq import Queue
from core.adapters.redis_conn import redis_client

_orig = Queue.dequeue_any.__func__

def _held(cls, *args, **kwargs):
    result = _orig(cls, *args, **kwargs)
    if result is not None:
        redis_client().rpush("test:s39:popped", result[0].id)
        while True:
            signal.pause()  # RQ's handler raises StopRequested out of here
    return result

Queue.dequeue_any = classmethod(_held)

from core.cli import service_worker
w = service_worker()
w.periodic = None
w.work(burst=True, logging_level="WARNING")
"""


def count(tag: str) -> str:
    """RQ job: count a run."""
    redis_client().incr(f"test:s39:runs:{tag}")
    return tag


def runs(tag: str) -> int:
    return int(redis_client().get(f"test:s39:runs:{tag}") or 0)


def work() -> None:
    SimpleWorker([queue(n) for n in QUEUES], connection=redis_client(),
                 serializer=JSONSerializer).work(burst=True, logging_level="WARNING")


def pop(job_id: str, queue_name: str = "default") -> None:
    """What a worker's BLPOP does, and then nothing: the worker stopped there."""
    assert redis_client().lrem(queue(queue_name).key, 1, job_id) == 1


def later(seconds: float) -> None:
    clock.freeze(clock.now() + timedelta(seconds=seconds))


def in_a_queue(job_id: str) -> bool:
    return any(job_id in queue(n).get_job_ids() for n in QUEUES)


def _stop_worker_after_pop(tmp_path: Path) -> str:
    """A real service worker takes the queued job; a SIGTERM lands after RQ's pop, before
    the job is marked started. Returns the popped job id."""
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        p = subprocess.Popen([sys.executable, "-c", WORKER], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out,
                             stderr=subprocess.STDOUT)
    try:
        got = redis_client().blpop(["test:s39:popped"], timeout=WAIT_S)
        assert got is not None, log.read_text()
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=WAIT_S) == 0, log.read_text()  # a clean, warm stop
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return got[1].decode()


def test_a_release_popped_by_a_stopping_worker_is_enqueued_again_by_the_sweep(live, tmp_path):
    from core.services import payments
    from tests.test_payments_support import advance, new_partner, paid_booking, run

    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="delivered")
    job_id = f"release-{leg_id}"
    enqueue("workers.payments.release_leg", leg_id, job_id=job_id,
            retry=payments.GATEWAY_RETRY)
    assert _stop_worker_after_pop(tmp_path) == job_id
    job = queue().fetch_job(job_id)
    assert job is not None and job.get_status() == "queued"
    assert not in_a_queue(job_id)

    def released() -> int:
        with transaction() as s:
            return s.scalar(select(func.count(LedgerTransaction.id)).where(
                LedgerTransaction.idempotency_key == f"release:leg:{leg_id}")) or 0

    clock.freeze(clock.now())
    assert payments.sweep()["releases"] == 1  # first seen out of its queue: may be starting
    run()
    assert released() == 0
    later(LOST_GRACE_S)  # the sweeps' next minute
    assert payments.sweep()["releases"] == 1
    assert in_a_queue(job_id)  # enqueued again
    run()
    assert released() == 1
    assert queue().fetch_job(job_id).get_status() == "finished"
    later(60)
    assert payments.sweep()["releases"] == 0


def test_pending_ids_counts_a_queued_id_out_of_its_queue_only_for_the_grace(clean_db):
    clock.freeze(clock.now())
    enqueue(COUNT, "a", job_id="count-a")
    enqueue(COUNT, "b", job_id="count-b", queue_name="outbox")
    enqueue(COUNT, "c", job_id="count-c")
    pop("count-a")
    pop("count-b", "outbox")
    ids = ["count-a", "count-b", "count-c", "count-none"]

    assert pending_ids(ids) == {"count-a", "count-b", "count-c"}  # a worker may be starting them
    later(LOST_GRACE_S - 1)
    assert pending_ids(ids) == {"count-a", "count-b", "count-c"}
    later(1)
    assert pending_ids(ids) == {"count-c"}  # lost; count-c waits in its queue, at any age


def test_a_lost_job_is_enqueued_again_by_one_caller_and_runs_once(clean_db):
    clock.freeze(clock.now())
    enqueue(COUNT, "a", job_id="count-a")
    pop("count-a")
    enqueue(COUNT, "a", job_id="count-a")  # within the grace: skipped
    assert not in_a_queue("count-a")
    later(LOST_GRACE_S)

    assert pending_ids(["count-a"]) == set()  # this caller enqueues it again...
    assert not job_alive("count-a")  # (asking again on its way)
    other: list[bool] = []
    t = threading.Thread(target=lambda: other.append(job_alive("count-a")))
    t.start()
    t.join()
    assert other == [True]  # ...so another is told it waits
    enqueue(COUNT, "a", job_id="count-a")
    assert job_alive("count-a")  # queued, in its queue
    assert queue().get_job_ids().count("count-a") == 1
    work()
    assert runs("a") == 1
    assert not job_alive("count-a")


def test_job_alive_finds_a_popped_job_lost_after_the_grace(clean_db):
    clock.freeze(clock.now())
    enqueue(COUNT, "a", job_id="count-a")
    pop("count-a")
    assert job_alive("count-a")
    later(LOST_GRACE_S)
    assert not job_alive("count-a")
    enqueue(COUNT, "a", job_id="count-a")
    work()
    assert runs("a") == 1


def test_an_id_enqueued_again_and_lost_again_gets_a_grace_of_its_own(clean_db):
    clock.freeze(clock.now())
    enqueue(COUNT, "a", job_id="count-a")
    pop("count-a")
    assert job_alive("count-a")
    later(LOST_GRACE_S)
    enqueue(COUNT, "a", job_id="count-a")  # lost: enqueued again
    assert in_a_queue("count-a")
    later(1)  # a new enqueued_at (RQ's own clock), though the test clock barely moved
    pop("count-a")  # taken again, and lost again
    assert job_alive("count-a")  # the first sighting was the earlier enqueue's
    later(LOST_GRACE_S)
    assert not job_alive("count-a")


def test_a_job_in_its_queue_or_a_single_queue_workers_intermediate_queue_waits(clean_db):
    clock.freeze(clock.now())
    enqueue(COUNT, "a", job_id="count-a")
    enqueue(COUNT, "b", job_id="count-b", queue_name="sandbox")
    r = redis_client()
    q = queue("sandbox")
    assert r.lmove(q.key, q.intermediate_queue_key) == b"count-b"  # RQ's LMOVE
    for _ in range(2):
        assert pending_ids(["count-a", "count-b"]) == {"count-a", "count-b"}
        assert job_alive("count-a") and job_alive("count-b", "sandbox")
        later(LOST_GRACE_S * 10)

"""A job whose worker was killed under it (OOM killer, kill -9, a reboot) is enqueued again
by its natural-key id at once, instead of being skipped as "started" until RQ's own
maintenance gives up on it minutes later; a job a live worker runs is never doubled.

The workers here are real: the service's worker class in a process of its own, killed
with SIGKILL while it is inside the job (the job says so through Redis, and waits there
for the test's go).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from rq import Queue, Retry
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.utils import current_timestamp, utcformat
from rq.utils import now as rq_now

from core import clock
from core.adapters.queue import enqueue, job_alive, queue
from core.adapters.redis_conn import redis_client
from core.config import ROOT

# Not `from tests.conftest import ...` up here: the worker process imports this module for
# its job, and conftest would claim a test slot of its own there.

pytestmark = pytest.mark.db

HOLD = "tests.test_queue_abandoned.hold"
JOB_ID = "release-41"
WAIT_S = 30  # a bound on each handshake, not a time anything waits for

# The Procfile's worker (core.cli service_worker: same class, queues, serializer), burst,
# and without joining the sweep chains, which are not this file's business.
WORKER = """
from core.cli import service_worker
w = service_worker()
w.periodic = None
w.work(burst=True, logging_level="WARNING")
"""


def hold(tag: str) -> str:
    """RQ job: say it has started, wait for the test's go, count a finished run."""
    r = redis_client()
    r.rpush(f"test:started:{tag}", os.getpid())
    if r.blpop([f"test:go:{tag}"], timeout=WAIT_S) is None:
        raise RuntimeError("the test never said go")
    r.incr(f"test:done:{tag}")
    r.rpush(f"test:finished:{tag}", os.getpid())
    return tag


def finished_runs(tag: str) -> int:
    return int(redis_client().get(f"test:done:{tag}") or 0)


def go(tag: str) -> None:
    redis_client().rpush(f"test:go:{tag}", 1)


@pytest.fixture
def start_worker(clean_db: None, tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen]]:
    """Start worker processes; any still alive is killed before Redis is emptied."""
    started: list[subprocess.Popen] = []

    def start(fork: bool = False) -> subprocess.Popen:
        code = WORKER.replace("service_worker()", "service_worker(fork=True)") if fork \
            else WORKER
        with open(tmp_path / f"worker{len(started)}.log", "w") as out:
            process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                                       env=dict(os.environ), stdout=out,
                                       stderr=subprocess.STDOUT)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=WAIT_S)


def inside_the_job(tag: str, worker: subprocess.Popen, logs: Path) -> None:
    """Wait (bounded) for the worker to say it is running the job."""
    if redis_client().blpop([f"test:started:{tag}"], timeout=WAIT_S) is None:
        worker.kill()
        worker.wait(timeout=WAIT_S)
        pytest.fail("the worker never started the job:\n"
                    + "".join(p.read_text() for p in logs.glob("worker*.log")))


def kill_inside_the_job(tag: str, start_worker, logs: Path) -> str:
    """Run JOB_ID in a real worker and SIGKILL the worker in the middle of it; return the
    dead worker's name (RQ leaves the job "started" by it)."""
    worker = start_worker()
    inside_the_job(tag, worker, logs)
    worker.kill()
    assert worker.wait(timeout=WAIT_S) == -9
    job = queue().fetch_job(JOB_ID)
    assert job.get_status() == "started"  # what the worker left behind
    assert redis_client().exists(f"rq:worker:{job.worker_name}")  # for up to 240 s
    return job.worker_name


def time_is_up() -> None:
    """What the passing of the job's timeout (plus RQ's 60 s) does to its start: long ago."""
    job = queue().fetch_job(JOB_ID)
    timeout = job.timeout if job.timeout is not None else Queue.DEFAULT_TIMEOUT
    redis_client().hset(job.key, "started_at", utcformat(
        rq_now() - timedelta(seconds=timeout + 61)))


def worker_key_expired(worker: str) -> None:
    """What the key's TTL does when the dead worker's last heartbeat runs out: at the
    job's timeout plus 60 s since it started (a SimpleWorker sends none during a job)."""
    redis_client().delete(f"rq:worker:{worker}")
    time_is_up()


def entry_lapsed() -> None:
    """The job's entry in the StartedJobRegistry scored in the past (RQ's own test for an
    abandoned job)."""
    r = redis_client()
    key = StartedJobRegistry(queue=queue()).key
    mine = [e for e in r.zrange(key, 0, -1) if e.decode().startswith(f"{JOB_ID}:")]
    assert mine
    r.zadd(key, dict.fromkeys(mine, current_timestamp() - 1), xx=True)


def heartbeat_lapsed(worker: str) -> None:
    """What the passing of time does to the job's entry. In RQ 3.0.0 it lapses with the
    worker's key; here the key stays, so that this test alone decides."""
    entry_lapsed()
    time_is_up()


def death_recorded(worker: str) -> None:
    """What a cold shutdown of a forking worker leaves: its death recorded, the key kept
    for 60 s, the job still "started" (register_death)."""
    r = redis_client()
    r.hset(f"rq:worker:{worker}", "death", "2026-01-01T00:00:00.000000Z")
    r.expire(f"rq:worker:{worker}", 60)


@pytest.mark.parametrize("lapse", [worker_key_expired, heartbeat_lapsed, death_recorded])
def test_a_job_whose_worker_was_killed_is_enqueued_again_and_runs_once(start_worker,
                                                                      tmp_path, lapse):
    from tests.conftest import run_jobs

    enqueue(HOLD, "a", job_id=JOB_ID)
    lapse(kill_inside_the_job("a", start_worker, tmp_path))

    enqueue(HOLD, "a", job_id=JOB_ID)  # the sweep that re-drives the payout

    q = queue()
    job = q.fetch_job(JOB_ID)
    assert job.get_status() == "queued", "the dead worker's job blocked its own retry"
    assert q.job_ids == [JOB_ID]
    assert StartedJobRegistry(queue=q).get_job_ids(cleanup=False) == []
    # Failed the way RQ's maintenance fails it, where operators look.
    assert JOB_ID in FailedJobRegistry(queue=q)
    assert any("AbandonedJobError" in (r.exc_string or "") for r in job.results())
    go("a")
    assert run_jobs(("default",)) == 1
    assert job.get_status() == "finished"
    assert finished_runs("a") == 1
    assert run_jobs() == 0


def test_an_abandoned_job_with_retries_left_is_retried_by_rq_not_doubled(start_worker,
                                                                         tmp_path):
    from tests.conftest import run_jobs

    enqueue(HOLD, "b", job_id=JOB_ID, retry=Retry(max=2))
    worker_key_expired(kill_inside_the_job("b", start_worker, tmp_path))

    # How the payments sweep asks before it enqueues: RQ's cleanup spent a retry on it.
    assert job_alive(JOB_ID)
    enqueue(HOLD, "b", job_id=JOB_ID, retry=Retry(max=2))

    q = queue()
    job = q.fetch_job(JOB_ID)
    assert (job.get_status(), job.retries_left) == ("queued", 1)
    assert q.job_ids == [JOB_ID]  # once
    assert JOB_ID not in FailedJobRegistry(queue=q)
    go("b")
    assert run_jobs(("default",)) == 1
    assert (job.get_status(), finished_runs("b")) == ("finished", 1)


def test_a_job_a_live_worker_runs_is_not_enqueued_again(start_worker, tmp_path):
    enqueue(HOLD, "c", job_id=JOB_ID)
    worker = start_worker()
    inside_the_job("c", worker, tmp_path)
    name = queue().fetch_job(JOB_ID).worker_name
    # The test clock a day ahead changes nothing: the worker's heartbeat is RQ's, in RQ's
    # time.
    clock.freeze(clock.now() + timedelta(days=1))

    assert job_alive(JOB_ID)
    enqueue(HOLD, "c", job_id=JOB_ID)

    q = queue()
    job = q.fetch_job(JOB_ID)
    assert (job.get_status(), job.worker_name) == ("started", name)
    assert q.job_ids == []
    assert JOB_ID not in FailedJobRegistry(queue=q)
    go("c")
    assert worker.wait(timeout=WAIT_S) == 0  # burst: the job done, nothing else to run
    assert (job.get_status(), finished_runs("c")) == ("finished", 1)
    assert q.job_ids == []


def _queued() -> str:
    enqueue(HOLD, "first", job_id=JOB_ID)
    return "queued"


def _scheduled() -> str:
    queue().enqueue_in(timedelta(minutes=5), HOLD, "first", job_id=JOB_ID)
    return "scheduled"


def _deferred() -> str:
    queue().enqueue(HOLD, "parent", job_id="release-40")
    queue().enqueue(HOLD, "first", job_id=JOB_ID, depends_on="release-40")
    return "deferred"


@pytest.mark.parametrize("waiting", [_queued, _scheduled, _deferred])
def test_a_waiting_job_is_not_enqueued_again(clean_db, waiting):
    status = waiting()
    jobs_before = queue().job_ids

    enqueue(HOLD, "second", job_id=JOB_ID)

    job = queue().fetch_job(JOB_ID)
    assert (job.get_status(), job.args) == (status, ["first"])
    assert queue().job_ids == jobs_before


def test_a_job_the_horse_of_a_killed_forking_worker_still_runs_is_not_doubled(start_worker,
                                                                              tmp_path):
    """RQ_FORK_PER_JOB: the work horse has a process group of its own, so the parent
    killed alone (the OOM killer picks the biggest) leaves it running the job; the parent's
    key and entry lapse within 90 s, long before the job's timeout ends the horse."""
    from tests.conftest import run_jobs

    enqueue(HOLD, "f", job_id=JOB_ID)
    parent = start_worker(fork=True)
    got = redis_client().blpop(["test:started:f"], timeout=WAIT_S)
    assert got is not None, "".join(p.read_text() for p in tmp_path.glob("worker*.log"))
    horse = int(got[1])
    assert horse != parent.pid
    parent.kill()
    assert parent.wait(timeout=WAIT_S) == -9
    job = queue().fetch_job(JOB_ID)
    # 91 s later: the parent's key and entry have lapsed; the job's 180 s have not.
    redis_client().delete(f"rq:worker:{job.worker_name}")
    entry_lapsed()
    redis_client().hset(job.key, "started_at", utcformat(rq_now() - timedelta(seconds=91)))

    enqueue(HOLD, "f", job_id=JOB_ID)  # a sweep re-driving it while the horse runs it

    assert job.get_status(refresh=True) == "started"
    assert queue().job_ids == []
    go("f")
    finished = redis_client().blpop(["test:finished:f"], timeout=WAIT_S)
    assert finished is not None and int(finished[1]) == horse
    assert run_jobs(("default",)) == 0
    assert finished_runs("f") == 1

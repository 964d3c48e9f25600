"""Runtime operations as an SRE taking the service to production meets them: the failure
metric, readiness against the schema, process settings, the scheduler after a Redis
restart, and gunicorn's access lines.

The docstrings tell what an operator saw before each was fixed.
The process tests start real processes (a worker, gunicorn) on ports and Redis sockets
of their own, never the default ones of a running `./run serve`, and stop them after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from core.config import ROOT, ConfigError, load_settings

# Not `from tests.conftest import ...` up here: the worker process of the scheduler test
# imports this module for its job, and conftest would claim a test slot there.

BOUND_S = 60  # a bound on waiting for real processes, not a time anything waits for
RAN_KEY = "ops-runtime:scheduled-job-ran"


def mark(tag: str) -> str:
    """RQ job: say it ran (on the Redis the worker uses)."""
    from core.adapters.redis_conn import redis_client

    redis_client().rpush(RAN_KEY, tag)
    return tag


# --------------------------------------------------------------------------- metrics


def _metric(client, line_start: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{line_start} is not in /metrics:\n{text}")


def test_the_daily_retention_run_does_not_make_old_failures_count_as_failed_in_the_last_hour(
        client):
    """`outbox_messages_failed_last_hour` counts failed rows by `updated_at`, which the
    ORM's onupdate=now() bumps on every UPDATE. The daily retention job (03:00 India)
    redacts the bodies of messages older than RETENTION_MESSAGE_DAYS with an UPDATE, so
    every message that failed 90 days ago is counted as "failed in the last hour" at 03:00
    each night: the sending-is-broken alert fires on messages nobody sent today."""
    from sqlalchemy import text

    from core import clock
    from core.adapters.db import transaction
    from core.adapters.models import OutboxMessage
    from core.services import retention

    long_ago = clock.now() - timedelta(days=100)
    with transaction() as s:
        for n in range(3):
            s.add(OutboxMessage(channel="sms", to_addr=f"+9198123000{n:02d}",
                                from_addr="+15005550006", body="your parcel is on its way",
                                status="failed", error_code="30003", created_at=long_ago,
                                dedupe_key=f"old-failure-{n}"))
    with transaction() as s:  # failed 100 days ago, untouched since
        s.execute(text("UPDATE outbox_messages SET updated_at = now() - interval '100 days'"))
    series = 'outbox_messages_failed_last_hour{status="failed"}'
    assert _metric(client, series) == 0  # none failed lately

    done = retention.run()
    assert done["outbox_messages"] == 3  # their texts were redacted, nothing was sent

    assert _metric(client, series) == 0, (
        "the retention run's redaction made three 100-day-old failures count as "
        "messages that failed in the last hour")


def test_a_message_failing_now_counts_once_as_failed_in_the_last_hour(client):
    """The other side: a status callback saying a message failed moves it into the last
    hour's failures (failed_at, set by the database), and a later report or update does
    not set a new time."""
    from sqlalchemy import select, text

    from core.adapters.db import transaction
    from core.adapters.models import OutboxMessage
    from core.services import outbox

    with transaction() as s:
        message = OutboxMessage(channel="sms", to_addr="+919812300001",
                                from_addr="+15005550006", body="your parcel is on its way",
                                status="queued", provider_sid="SMfailsnow0001",
                                dedupe_key="fails-now")
        s.add(message)
        s.flush()
        outbox_id = message.id
    series = 'outbox_messages_failed_last_hour{status="undelivered"}'
    assert _metric(client, series) == 0
    assert outbox.record_status(outbox_id=outbox_id, message_sid="SMfailsnow0001",
                                status="undelivered", error_code="30003")
    assert _metric(client, series) == 1
    with transaction() as s:
        failed_at = s.scalar(select(OutboxMessage.failed_at)
                             .where(OutboxMessage.id == outbox_id))
        assert failed_at is not None
        s.execute(text("UPDATE outbox_messages SET body = '', status = 'undelivered'"))
    with transaction() as s:
        assert s.scalar(select(OutboxMessage.failed_at)
                        .where(OutboxMessage.id == outbox_id)) == failed_at


def test_migration_0025_counts_failures_by_their_own_index(database):
    """0025 replaces 0016's partial index of failures by updated_at with one by failed_at."""
    from sqlalchemy import text

    from core.adapters.db import transaction

    with transaction() as s:
        defs = dict(s.execute(text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'outbox_messages'"
            " AND indexname LIKE 'ix_outbox_messages_failed%'")).all())
    assert set(defs) == {"ix_outbox_messages_failed_at"}
    assert "(failed_at)" in defs["ix_outbox_messages_failed_at"]
    assert "'undelivered'" in defs["ix_outbox_messages_failed_at"]


# --------------------------------------------------------------------------- readiness


def test_readyz_is_not_ready_while_the_database_is_behind_the_code_s_migrations(client):
    """/readyz checks that PostgreSQL and Redis answer, not that the schema is the one the
    code needs. A web started against a database whose release did not run (or failed
    part-way: `release` is a separate process type) reports ready, the load balancer sends
    it traffic, and every request touching the newest table or column fails with a 500."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from core.adapters import db

    scripts = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    head = scripts.get_current_head()
    assert head is not None
    previous = scripts.get_revision(head).down_revision
    assert isinstance(previous, str)
    with db.engine().begin() as conn:
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == head
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": previous})
    try:
        r = client.get("/readyz")
    finally:
        with db.engine().begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
    assert r.status_code == 503, (
        f"/readyz answered {r.status_code} {r.get_json()} with the database at {previous}, "
        f"one migration behind the code's {head}")


def test_readyz_is_ready_with_the_database_ahead_of_the_code(client):
    """A rolling deploy: the new release migrated, this (previous) release still serves
    against a schema made to keep it working, so it stays ready."""
    from sqlalchemy import text

    from core.adapters import db

    with db.engine().begin() as conn:
        head = conn.scalar(text("SELECT version_num FROM alembic_version"))
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    try:
        r = client.get("/readyz")
    finally:
        with db.engine().begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["checks"]["schema"] == "ok"


# --------------------------------------------------------------------------- settings


def _sandbox_env(**extra: str) -> dict[str, str]:
    return {"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/ridechain",
            "REDIS_URL": "redis://127.0.0.1:6379/0", **extra}


@pytest.mark.parametrize("name, value", [
    ("WORKER_NICE", "high"),      # every worker exits at start: "WORKER_NICE must be ..."
    ("WORKER_NICE", "25"),
    ("WEB_THREADS", "four"),      # gunicorn exits with its usage text
    ("WEB_CONCURRENCY", "0"),     # gunicorn listens with no worker: requests hang
])
def test_a_bad_process_setting_stops_the_release_naming_it(name, value):
    """README, Configuration: a bad number "stops the start (`./run serve`, `python -m
    core.cli`, gunicorn, the workers) with a line naming the variable", every problem at
    once. These rows of its table are checked by no one at start: `python -m core.cli
    release` passes, the deploy goes on, and then the workers exit at once (WORKER_NICE,
    each restart the same), gunicorn exits with its usage (WEB_THREADS), or, worst,
    gunicorn binds the port with no worker to answer (WEB_CONCURRENCY=0), so every request
    and every health check hangs while nothing has failed."""
    with pytest.raises(ConfigError) as err:
        load_settings(_sandbox_env(**{name: value}))
    assert name in str(err.value)


def test_every_bad_process_setting_is_a_line_of_its_own_and_the_limits_pass():
    with pytest.raises(ConfigError) as err:
        load_settings(_sandbox_env(WORKER_NICE="-1", WEB_THREADS="33", WEB_CONCURRENCY="65"))
    lines = str(err.value).splitlines()
    for name in ("WORKER_NICE", "WEB_THREADS", "WEB_CONCURRENCY"):
        assert sum(name in line for line in lines) == 1, lines
    load_settings(_sandbox_env(WORKER_NICE="0", WEB_THREADS="1", WEB_CONCURRENCY="1"))
    load_settings(_sandbox_env(WORKER_NICE="19", WEB_THREADS="32", WEB_CONCURRENCY="64"))


# --------------------------------------------------------------------------- scheduler

WORKER = """
from core.cli import service_worker
w = service_worker()
w.periodic = None  # the sweep chains are not this test's business
w.work(with_scheduler=True, logging_level="INFO")
"""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=BOUND_S)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator:
    """A Redis server of this test's own (the embedded one `./run serve` uses), so that it
    can be stopped and started empty without touching the suite's."""
    from ops import embedded

    server = embedded.EmbeddedRedis(tmp_path / "redis")
    server.start()
    holder = {"server": server}
    yield holder
    holder["server"].stop()


def _scheduler_of(worker: subprocess.Popen, r, log: Path):
    """The worker's scheduler process, once it holds the default queue's lock."""
    import psutil

    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:  # waiting for a real process to start
        if worker.poll() is not None:
            break
        if r.exists("rq:scheduler-lock:default"):
            children = psutil.Process(worker.pid).children()
            if children:
                return children[0]
        time.sleep(0.2)
    pytest.fail("the worker's scheduler did not start:\n" + log.read_text()[-3000:])


def test_the_scheduler_comes_back_after_redis_restarts(own_redis, tmp_path):
    """RQ runs the scheduler (which moves every job due at a time into its queue: offer
    timeouts, outbox retries, the minute sweeps, the rating tries) in a process of its
    own, and that process exits on the first Redis error its client's retries do not
    cover. The worker itself waits for Redis and goes on, but starts a new scheduler only
    in RQ's maintenance, every 10 minutes; `./run serve` does not see it (the worker
    lives). So after Redis restarts (a managed Redis's failover or upgrade, a few seconds
    down), no scheduled job runs for up to 10 minutes: offers expire 10 minutes late,
    failed sends are not retried, the sweeps README says are "back within a minute or
    two" are not."""
    import psutil
    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    from ops import embedded

    server = own_redis["server"]
    url = server.url()
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen([sys.executable, "-c", WORKER], cwd=ROOT,
                                  env=dict(os.environ, REDIS_URL=url, PYTHONUNBUFFERED="1"),
                                  stdout=out, stderr=subprocess.STDOUT, process_group=0)
    try:
        scheduler = _scheduler_of(worker, redis.Redis.from_url(url), log)

        server.stop()  # Redis goes away, and comes back empty
        for name in ("appendonly.aof", "dump.rdb", "appendonlydir"):
            path = server.directory / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        deadline = time.monotonic() + BOUND_S / 2
        while time.monotonic() < deadline:  # the outage lasts until the scheduler noticed
            try:
                if scheduler.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.2)
        server = own_redis["server"] = embedded.EmbeddedRedis(server.directory)
        server.start()

        r = redis.Redis.from_url(url)
        q = Queue("default", connection=r, serializer=JSONSerializer)
        q.enqueue_in(timedelta(seconds=1), "tests.test_ops_runtime.mark", "after-restart")
        ran, deadline = None, time.monotonic() + BOUND_S
        while ran is None and time.monotonic() < deadline and worker.poll() is None:
            ran = r.blpop([RAN_KEY], timeout=1)  # waiting for a real worker's job
        assert worker.poll() is None, "the worker exited:\n" + log.read_text()[-3000:]
        assert ran is not None, (
            f"a job due 1 s after Redis came back had not run {BOUND_S} s later (RQ's "
            "scheduler process died with the connection; the worker restarts it only "
            "in its 10-minute maintenance):\n" + log.read_text()[-3000:])
    finally:
        _kill_group(worker)


# --------------------------------------------------------------------------- logs


def _web_command() -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("the Procfile has no web process")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_web_s_request_lines_are_json_with_their_request_id(database, tmp_path):
    """README: "Logs are JSON lines on stdout with request and job ids". The Procfile's
    gunicorn writes its access log to stdout (`--access-logfile -`) in a plain format
    without the request id: a log pipeline parsing JSON drops (or chokes on) one line per
    request, and the request an operator finds in the access log cannot be joined to the
    application's lines about it (the X-Request-Id the service answers with is nowhere)."""
    import requests

    port = _free_port()
    env = dict(os.environ, PORT=str(port), WEB_CONCURRENCY="1", WEB_THREADS="2",
               GUNICORN_CMD_ARGS="--no-control-socket", PYTHONUNBUFFERED="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out_path = tmp_path / "web.out"
    with open(out_path, "w") as out:
        web = subprocess.Popen(["/bin/sh", "-c", _web_command()], cwd=ROOT, env=env,
                               stdout=out, stderr=subprocess.DEVNULL, process_group=0)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + BOUND_S
        while True:  # waiting for a real server to start
            try:
                if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if web.poll() is not None or time.monotonic() > deadline:
                pytest.fail("gunicorn did not start")
            time.sleep(0.2)
        answer = requests.get(f"{base}/healthz?token=hushhush123&to=%2B919812345678",
                              headers={"X-Request-Id": "opsreq0001"}, timeout=10)
        assert answer.headers["X-Request-Id"] == "opsreq0001"
    finally:
        try:
            os.killpg(web.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        stop_by = time.monotonic() + 30
        while _group_alive(web.pid) and time.monotonic() < stop_by:  # gunicorn's own exit
            time.sleep(0.05)
        _kill_group(web)  # whatever is left of it
    lines = [line for line in out_path.read_text().splitlines() if "/healthz" in line]
    assert lines, "no line on stdout says the request came"
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"a request's line on stdout is not JSON: {line!r}") from None
        assert record.get("request_id") == "opsreq0001", line
        assert record.get("status") == 200, line
        assert "hushhush123" not in line and "919812345678" not in line, line


def test_an_erasure_s_withdrawn_messages_are_not_failures_of_the_last_hour(client):
    """An erasure marks the person's messages not sent yet as failed ("erased before
    sending": never sent now), and the trigger set their failed_at: the metric counted
    them as messages that failed in the last hour, and an erasure on request fired the
    sending-is-broken alert. They are withdrawn, not failed to send: no failed_at."""
    from sqlalchemy import select

    from core.adapters.db import transaction
    from core.adapters.models import OutboxMessage, Person
    from core.services import retention

    with transaction() as s:
        person = Person(phone="+919812300077", name="Meena", role="customer")
        s.add(person)
        s.flush()
        for n in range(2):
            s.add(OutboxMessage(channel="sms", to_addr=person.phone, from_addr="+15005550006",
                                body="your parcel is on its way", status="pending",
                                dedupe_key=f"to-erase-{n}"))
        pid = person.id
    series = 'outbox_messages_failed_last_hour{status="failed"}'
    assert _metric(client, series) == 0
    with transaction() as s:
        assert retention.erase_person(s, pid).changed
    with transaction() as s:
        statuses = list(s.scalars(select(OutboxMessage.status)))
    assert statuses == ["failed", "failed"]  # never sent now
    assert _metric(client, series) == 0, "an erasure's withdrawn messages counted as failures"

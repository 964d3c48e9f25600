"""`./run serve`'s runtime: a crashed child is started again after a growing pause, and the
supervisor gives up (stopping everything, exit 1) only after too many crashes in a
window; a stop gives a job under way STOP_GRACE_S to finish (RQ's warm shutdown on the
one SIGTERM) before SIGKILL; gunicorn's own log lines (its error log) are JSON with phone
numbers masked, like every other line.

Processes here are small shell or Python commands; every wait on one is a poll with a
bound, and every test kills what it started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import embedded
from ops.supervisor import Child, Output, Server

ROOT = Path(__file__).resolve().parent.parent
BOUND_S = 30.0  # a bound on waiting for real processes, not a time anything waits for


class Lines(Output):
    """The supervisor's output, kept for the test to read."""

    def __init__(self) -> None:
        super().__init__(["web", "worker"])
        self.lines: list[tuple[str, str]] = []

    def line(self, name: str, text: str) -> None:
        self.lines.append((name, text))

    def text(self) -> str:
        return "\n".join(f"{n} | {t}" for n, t in list(self.lines))


def _server(**restart: float) -> Server:
    server = Server(ROOT / "Procfile")
    server.raise_on_signal = False
    server.output = Lines()
    for key, value in restart.items():
        setattr(server, key, value)
    return server


def _wait_for(check, what: str, server: Server | None = None) -> None:
    deadline = time.monotonic() + BOUND_S
    while not check():
        if time.monotonic() > deadline:
            said = server.output.text() if server and isinstance(server.output, Lines) else ""
            raise AssertionError(f"{what}: not within {BOUND_S:.0f} s\n{said}")
        time.sleep(0.02)


class Watching:
    """The supervisor's watch loop on a thread, over the children the test started."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.result: list[int] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(
                server._watch(embedded.Services(env={}), 1, False)),
            daemon=True)

    def __enter__(self) -> Watching:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.stop_requested = True
        self.thread.join(5)
        for child in list(self.server.children):
            child.kill()
            child.process.wait()


@pytest.fixture
def started() -> Iterator[list[Child]]:
    """Children a test started itself; killed (whole group) at the end."""
    children: list[Child] = []
    yield children
    for child in children:
        child.kill()
        child.process.wait()


# --------------------------------------------------------------------------- restarts


FAST = dict(restart_delay_s=0.05, restart_max_delay_s=0.2, restart_limit=3,
            restart_window_s=60.0)


def test_a_crashed_worker_is_started_again_and_the_web_stays_up(tmp_path, started):
    """A worker that dies (an OOM kill, a bug in a job) took the web down with it: the
    supervisor stopped everything on the first death of any child."""
    server = _server(**FAST)
    flag = tmp_path / "crashed"
    env = dict(os.environ)
    web = Child.start("web", "exec sleep 60", env, server.output)
    worker = Child.start(
        "worker", f"if [ -e '{flag}' ]; then exec sleep 60; fi; touch '{flag}'; exit 3",
        env, server.output)
    started += [web, worker]
    server.children += [web, worker]
    with Watching(server) as watching:

        def worker_back() -> bool:
            assert watching.result == [], f"serve stopped:\n{server.output.text()}"
            now = {c.name: c for c in server.children}["worker"]
            return now.process.pid != worker.process.pid and now.poll() is None

        _wait_for(worker_back, "the worker started again", server)
        # The watch loop puts the new child in the list before it says so: wait for the
        # line too (a busy machine ran this test's check between the two).
        _wait_for(lambda: "started worker again (pid" in server.output.text(),
                  "the restart was said", server)
        assert watching.result == []
        assert [c for c in server.children if c.name == "web"] == [web]
        assert web.poll() is None, "the web was stopped"
        text = server.output.text()
        assert "worker stopped unexpectedly (exit code 3); starting it again in 0.05 s" in text


def test_a_worker_crashing_over_and_over_stops_serve_with_a_clear_message(tmp_path):
    """Starting again a child that cannot start (a port taken, a broken setting) would
    loop for ever: after restart_limit crashes in the window, serve stops all (exit 1)."""
    server = _server(**FAST)
    starts = tmp_path / "starts"
    env = dict(os.environ)
    server.children += [Child.start("web", "exec sleep 60", env, server.output),
                        Child.start("worker", f"echo x >> '{starts}'; exit 3", env,
                                    server.output)]
    with Watching(server) as watching:
        _wait_for(lambda: watching.result != [], "serve gave up", server)
        assert watching.result == [1]
        text = server.output.text()
        assert starts.read_text().count("x") == 3, text
        # The pause doubles: 0.05 s, then 0.1 s; the third crash in 60 s ends it.
        assert "starting it again in 0.05 s" in text and "starting it again in 0.1 s" in text
        assert "worker crashed 3 times in 60 s (last: exit code 3); giving up, stopping all" \
            in text


def test_the_pause_grows_and_old_crashes_are_forgotten():
    """Each crash within the window doubles the pause (up to its ceiling); crashes older
    than the window no longer count, so a process crashing once a day runs for ever."""
    server = _server(restart_delay_s=1.0, restart_max_delay_s=4.0, restart_limit=5,
                     restart_window_s=300.0)
    assert [server._crash_delay("worker", t) for t in (0.0, 10.0, 20.0, 30.0)] == [
        1.0, 2.0, 4.0, 4.0]
    assert server._crash_delay("worker", 40.0) is None  # 5 in 300 s: give up
    assert server._crash_delay("web", 40.0) == 1.0  # counted per process
    assert server._crash_delay("worker", 1000.0) == 1.0  # the others are long past


# --------------------------------------------------------------------------- stop grace


# A process that traps SIGTERM like an RQ worker in the middle of a job (warm shutdown):
# it goes on for `delay` seconds, then exits 0. Files say where it got to.
JOB = """
import pathlib, signal, sys, time
where, delay = pathlib.Path(sys.argv[1]), float(sys.argv[2])
def finish(signum, _frame):
    (where / "term").write_text(signal.Signals(signum).name)
    time.sleep(delay)  # the rest of the job
    (where / "done").write_text("x")
    sys.exit(0)
signal.signal(signal.SIGTERM, finish)
(where / "ready").write_text("x")
time.sleep(60)
"""


def _job_child(tmp_path: Path, server: Server, delay: float) -> Child:
    command = f"exec '{sys.executable}' -c '{JOB}' '{tmp_path}' {delay}"
    child = Child.start("worker", command, dict(os.environ), server.output)
    server.children.append(child)
    _wait_for(lambda: (tmp_path / "ready").exists(), "the job process is ready", server)
    return child


def test_a_stop_waits_stop_grace_s_and_no_longer(tmp_path, monkeypatch, started):
    """The grace was a fixed 10 s, whatever the operator set: STOP_GRACE_S decides it."""
    monkeypatch.setenv("STOP_GRACE_S", "1")
    server = _server()
    started.append(_job_child(tmp_path, server, delay=5.0))
    begun = time.monotonic()
    server._stop_children()
    took = time.monotonic() - begun
    assert (tmp_path / "term").read_text() == "SIGTERM"
    assert not (tmp_path / "done").exists()
    assert took < 4.0, took
    assert "worker did not stop in 1 s (STOP_GRACE_S): SIGKILL" in server.output.text()


def test_a_job_under_way_finishes_on_sigterm_within_the_grace(tmp_path, monkeypatch, started):
    monkeypatch.setenv("STOP_GRACE_S", "30")
    server = _server()
    child = _job_child(tmp_path, server, delay=0.5)
    started.append(child)
    server._stop_children()
    assert (tmp_path / "done").exists()
    assert child.process.returncode == 0
    text = server.output.text()
    assert "SIGKILL" not in text and "worker stopped (exit code 0)" in text


def test_the_default_grace_covers_the_daily_retention_run(monkeypatch):
    """The retention job works up to RETENTION_RUN_SECONDS (120 s by default, 600 at
    most): a 10 s grace SIGKILLed a worker in the middle of it at every stop."""
    from core.services import retention

    monkeypatch.delenv("STOP_GRACE_S", raising=False)
    monkeypatch.delenv("RETENTION_RUN_SECONDS", raising=False)
    assert _server().stop_grace_s > retention.DEFAULT_RUN_SECONDS + 10
    monkeypatch.setenv("RETENTION_RUN_SECONDS", "600")
    assert _server().stop_grace_s > 600 + 10
    monkeypatch.setenv("STOP_GRACE_S", "45")
    assert _server().stop_grace_s == 45


def test_a_bad_stop_grace_is_refused_naming_it(monkeypatch):
    from ops.supervisor import stop_grace

    for bad in ("soon", "0", "-5", "nan", "inf", "1e9"):
        monkeypatch.setenv("STOP_GRACE_S", bad)
        with pytest.raises(ValueError, match="STOP_GRACE_S"):
            stop_grace()
    monkeypatch.setenv("STOP_GRACE_S", " 2.5 ")
    assert stop_grace() == 2.5


def test_a_worker_stopping_after_its_job_does_not_start_its_scheduler_again():
    """A warm shutdown stops the worker's scheduler process at once; the worker's
    maintenance after the job then took it for a crashed one and forked a new one, which
    got the worker's SIGTERM handler, lived on, and kept the worker waiting for it at its
    exit: a stop during a job hung until the supervisor's SIGKILL (seen in `./run serve`'s
    smoke test: the 60 s it allows passed)."""
    from types import SimpleNamespace

    from core.cli import service_worker

    class Dead:
        def is_alive(self) -> bool:
            return False

    w = service_worker()
    w.scheduler = SimpleNamespace(_process=Dead())
    assert w._scheduler_due()  # a scheduler that died under a running worker: at once
    w._stop_requested = True  # SIGTERM during a job (rq's warm shutdown)
    assert not w._scheduler_due()


def job_waiting_for(where: str) -> str:
    """RQ job: say it started, then work until the test says go (bounded), say it is done."""
    folder = Path(where)
    (folder / "started").write_text("x")
    deadline = time.monotonic() + BOUND_S
    while not (folder / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # the job's work, as long as the test wants
    (folder / "done").write_text("x")
    return "done"


WORKER = """
from core.cli import service_worker
w = service_worker()
w.periodic = None  # the sweep chains are not this test's business
w.work(with_scheduler=True, logging_level="INFO")
"""


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test's own (the embedded one), so that a worker here takes
    no job of another test's."""
    server = embedded.EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        yield server.url()
    finally:
        server.stop()


def test_one_sigterm_during_a_job_lets_a_real_worker_finish_it_and_exit(own_redis, tmp_path):
    """What `./run serve`'s stop does to an RQ worker with its scheduler in the middle of a
    job: one SIGTERM to its process group. The job must finish, and the worker exit by
    itself soon after, leaving no process behind."""
    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    r = redis.Redis.from_url(own_redis)
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen([sys.executable, "-c", WORKER], cwd=ROOT,
                                  env=dict(os.environ, REDIS_URL=own_redis, PYTHONUNBUFFERED="1"),
                                  stdout=out, stderr=subprocess.STDOUT, process_group=0)
    try:
        def running(check) -> bool:
            assert worker.poll() is None, "the worker exited:\n" + log.read_text()[-3000:]
            return bool(check())

        _wait_for(lambda: running(lambda: r.exists("rq:scheduler-lock:default")),
                  "the worker's scheduler runs")
        Queue("default", connection=r, serializer=JSONSerializer).enqueue(
            "tests.test_runtime_more.job_waiting_for", str(tmp_path))
        _wait_for(lambda: running((tmp_path / "started").exists), "the job started")
        os.killpg(worker.pid, signal.SIGTERM)
        _wait_for(lambda: running(lambda: "warm shut down requested" in log.read_text()),
                  "the worker took the SIGTERM")
        (tmp_path / "go").write_text("x")
        deadline = time.monotonic() + BOUND_S
        # poll() reaps the worker (a zombie still counts in its group), then what is left.
        while ((worker.poll() is None or _group_alive(worker.pid))
               and time.monotonic() < deadline):
            time.sleep(0.05)  # a real worker finishing its job and exiting
        text = log.read_text()
        assert worker.poll() is not None and not _group_alive(worker.pid), (
            "still running:\n" + text[-3000:])
        assert (tmp_path / "done").exists(), text[-3000:]
        assert "started again" not in text, text[-3000:]
        assert worker.wait(BOUND_S) == 0, text[-3000:]
    finally:
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.wait(BOUND_S)


# --------------------------------------------------------------------------- gunicorn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _web_command() -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("the Procfile has no web process")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_gunicorn_s_own_lines_are_json_with_phone_numbers_masked(database, tmp_path):
    """gunicorn's error log (its start, its workers, a bad request) was plain text on
    stderr while everything else logs JSON: a log pipeline parsing JSON dropped the very
    lines that say the web is in trouble, and a bad request line was logged with the
    number in it as it came."""
    port = _free_port()
    env = dict(os.environ, PORT=str(port), WEB_CONCURRENCY="1", WEB_THREADS="2",
               GUNICORN_CMD_ARGS="--no-control-socket", PYTHONUNBUFFERED="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    err_path = tmp_path / "web.err"
    with open(err_path, "w") as err:
        web = subprocess.Popen(["/bin/sh", "-c", _web_command()], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=err, process_group=0)
    try:
        def answers() -> bool:
            assert web.poll() is None, f"gunicorn exited:\n{err_path.read_text()}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return "Booting worker" in err_path.read_text()
            except OSError:
                return False

        _wait_for(answers, "gunicorn answers")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET /healthz?to=+919812345678\r\n\r\n")  # no HTTP version
            conn.recv(4096)  # gunicorn's 400, after it logged the bad request
        _wait_for(lambda: "Invalid request" in err_path.read_text(), "the bad request logged")
    finally:
        try:
            os.killpg(web.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        stop_by = time.monotonic() + BOUND_S
        while _group_alive(web.pid) and time.monotonic() < stop_by:  # gunicorn's own exit
            time.sleep(0.05)
        try:
            os.killpg(web.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        web.wait(timeout=BOUND_S)
    lines = [line for line in err_path.read_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a gunicorn line is not JSON: {line!r}") from None
    said = [r["msg"] for r in records if r.get("logger") == "gunicorn.error"]
    for start in ("Starting gunicorn", "Listening at", "Booting worker with pid",
                  "Shutting down"):
        assert any(msg.startswith(start) for msg in said), (start, said)
    bad = [r for r in records if r["msg"].startswith("Invalid request")]
    assert bad and bad[0]["level"] == "warning" and isinstance(bad[0].get("pid"), int), bad
    assert "919812345678" not in err_path.read_text()
    assert "+91******5678" in bad[0]["msg"], bad


def test_a_worker_crashing_while_its_redis_is_away_is_waited_for_not_given_up(tmp_path):
    """An external Redis restarting (or a database failing over) makes the worker crash
    at each start; after restart_limit crashes serve used to stop everything, the web
    too, 15 s into the outage. While the server a process needs does not answer, serve
    keeps starting it again at the longest pause; a crash loop with the servers up is
    still given up."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens there once closed
    server = _server(**FAST)
    env = dict(os.environ)
    starts = tmp_path / "starts"
    server.children += [Child.start("web", "exec sleep 60", env, server.output),
                        Child.start("worker", f"echo x >> '{starts}'; exit 3", env,
                                    server.output)]
    services = embedded.Services(env={"REDIS_URL": f"redis://127.0.0.1:{closed}/0"})
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(server._watch(services, 1, False)),
                              daemon=True)
    thread.start()
    try:
        _wait_for(lambda: starts.exists() and starts.read_text().count("x") >= 5,
                  "the worker started again past the limit", server)
        assert result == [], server.output.text()  # serve did not give up
        text = server.output.text()
        assert (f"worker stopped unexpectedly (exit code 3) while Redis at 127.0.0.1:{closed} "
                "does not answer; starting it again in 0.2 s (serve waits for it)") in text
        assert "giving up" not in text
        web = next(c for c in server.children if c.name == "web")
        assert web.poll() is None
    finally:
        server.stop_requested = True
        thread.join(5)
        for child in list(server.children):
            child.kill()
            child.process.wait()

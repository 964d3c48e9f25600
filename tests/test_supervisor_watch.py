"""./run serve stops everything (exit 1) when something it runs dies: a child, the
embedded Redis, or the embedded PostgreSQL (else the web answers 503s with no word on the
console)."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from ops import embedded
from ops.supervisor import Child, Output, Server


def watch(services: embedded.Services, limit_s: float = 10.0) -> list[int]:
    """Run the supervisor's watch loop over a live web child; what it returned, if it did
    within ``limit_s`` (it checks every quarter second)."""
    server = Server(Path("Procfile"))
    server.raise_on_signal = False
    server.output = Output(["web"])
    child = Child.start("web", "sleep 60", dict(os.environ), server.output)
    server.children.append(child)
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(server._watch(services, 1, False)),
                         daemon=True)
    try:
        t.start()
        t.join(limit_s)
    finally:
        server.stop_requested = True
        t.join(5)
        child.kill()
        child.process.wait()
    return out


def test_a_dead_embedded_postgres_stops_serve(tmp_path: Path):
    pgdata = tmp_path / "pg"  # started once, its postmaster gone: no live pid file
    pgdata.mkdir()
    (pgdata / "postmaster.pid").write_text("999999999\n")
    pg = embedded.EmbeddedPostgres(pgdata)
    assert watch(embedded.Services(env={}, postgres=pg)) == [1]


def test_a_dead_embedded_redis_stops_serve(tmp_path: Path):
    redis = embedded.EmbeddedRedis(tmp_path / "redis")
    redis.process = subprocess.Popen(["true"])
    redis.process.wait()
    assert watch(embedded.Services(env={}, redis=redis)) == [1]


def test_serve_keeps_running_while_everything_lives(tmp_path: Path):
    assert watch(embedded.Services(env={}), limit_s=1.0) == [0]  # stopped by the test


def test_the_embedded_postgres_starts_in_a_path_with_a_space(tmp_path: Path):
    """A clone in "~/My Projects/ridechain": pgserver gives pg_ctl the socket directory
    unquoted, so the data directory is reached through a link without the space."""
    import psycopg

    pg = embedded.EmbeddedPostgres(tmp_path / "My Projects" / "var" / "pg")
    try:
        pg.start()
        with psycopg.connect(pg.url()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert pg.alive()
    finally:
        pg.stop()
    assert not pg.alive() and pg._live_postmaster() is None


def test_a_hang_up_stops_serve_and_what_it_runs(tmp_path: Path):
    """A closed terminal (SIGHUP) stops the children too: they run in process groups of
    their own and would otherwise outlive the supervisor, holding the port."""
    import queue
    import signal
    import sys

    procfile = tmp_path / "Procfile"
    procfile.write_text("sleeper: sleep 300\n")
    script = ("import sys; from pathlib import Path; from ops.supervisor import Server; "
              f"sys.exit(Server(Path({str(procfile)!r})).run())")
    env = {**os.environ, "APP_ENV": "production", "DATA_DIR": str(tmp_path / "data"),
           "PYTHONUNBUFFERED": "1"}
    sup = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, process_group=0, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert sup.stdout is not None
        for line in sup.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    child = None
    try:
        while child is None:
            try:
                line = lines.get(timeout=60)  # a bound for a broken start, not a wait
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            if "started sleeper (pid" in line:
                child = int(line.split("pid ")[1].split(")")[0])
        assert child, f"the supervisor did not start its process: {''.join(seen)[-2000:]}"
        os.kill(sup.pid, signal.SIGHUP)
        try:
            code = sup.wait(60)
        except subprocess.TimeoutExpired:
            code = None
        while not lines.empty():
            seen.append(lines.get() or "")
        assert code == 0, f"after SIGHUP: {code}; {''.join(seen)[-2000:]}"
        # The supervisor waits for each child to exit before it does (_stop_children):
        # by now the sleeper's group is gone.
        try:
            os.killpg(child, 0)
        except ProcessLookupError:
            pass
        else:
            raise AssertionError("the supervisor exited and left its child running")
    finally:
        if child:
            try:
                os.killpg(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if sup.poll() is None:
            sup.kill()
            sup.wait()


# A signal delivered while the main thread is inside Output.line(), as when a hang-up
# lands just as the supervisor prints "started ...": its handler prints too.
SIGNAL_WHILE_PRINTING = """
import os, signal, sys
from ops.supervisor import Output
out = Output(["system"])
signal.signal(signal.SIGUSR1, lambda *_: out.system("SIGUSR1 received, stopping"))
real_write = sys.stdout.write
def write(text):
    if "started" in text:
        os.kill(os.getpid(), signal.SIGUSR1)  # handled before this write returns
    return real_write(text)
sys.stdout.write = write
out.system("started web (pid 1)")
"""


def test_a_signal_while_printing_does_not_hang_the_supervisor():
    import sys

    done = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_PRINTING],
                          cwd=Path(__file__).parent.parent, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "SIGUSR1 received, stopping" in done.stdout
    assert "started web (pid 1)" in done.stdout

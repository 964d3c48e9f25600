"""Session 36's review of the processes around the service:

- PROMETHEUS_MULTIPROC_DIR, which README says may be set for every process, failed every
  inbound drain job of an RQ worker where the directory did not exist (the job imports
  the web's helpers, whose module-level Counters open <dir>/counter_<pid>.db), and put
  the worker's files into the web's directory where it did; the outbox's minute sweep
  failed on that import before scheduling its next run.
- `./run serve` counted a worker's crashes while an external Redis/PostgreSQL was away
  against its restart limit: one more crash within 5 minutes of the outage stopped all.
- `./run`'s install lock lived in .venv, which `python -m venv --clear` empties: two
  first runs at once both installed into the same venv.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from rq.job import Job

from core.adapters.queue import SANDBOX_QUEUE, queue
from core.adapters.redis_conn import redis_client
from core.config import ROOT
from ops import embedded
from ops.supervisor import Child
from tests.conftest import run_jobs
from tests.test_runtime_more import FAST, _server, _wait_for
from tests.test_sweep_chains import next_minute, run_at_its_minute, scheduled

BOUND_S = 180

# ------------------------------------------------------------ PROMETHEUS_MULTIPROC_DIR


def _cli(*argv: str, metrics: Path) -> subprocess.CompletedProcess[str]:
    """`python -m core.cli <argv>` as the Procfile runs it, with the web's metrics
    directory in its environment (set for every process, as README allows)."""
    return subprocess.run([sys.executable, "-m", "core.cli", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=BOUND_S,
                          env={**os.environ, "APP_ENV": "sandbox", "LOG_LEVEL": "WARNING",
                               "WORKER_NICE": "0", "PROMETHEUS_MULTIPROC_DIR": str(metrics)})


@pytest.mark.db
@pytest.mark.parametrize("made", [False, True], ids=["dir-not-made", "webs-dir"])
def test_the_workers_drain_job_runs_and_writes_nothing_for_the_webs_metrics(clean_db,
                                                                          tmp_path, made):
    """A worker on its own machine (or started before gunicorn made the directory): every
    inbound message's drain job failed with FileNotFoundError. Where the directory was
    made, the worker's counter files were added into the web's /metrics."""
    metrics = tmp_path / "metrics"
    if made:
        metrics.mkdir()
    drain = queue("inbound").enqueue("workers.inbound.drain")
    env_seen = queue("default").enqueue("os.getenv", "PROMETHEUS_MULTIPROC_DIR")
    done = _cli("worker", "--burst", metrics=metrics)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-1500:]
    assert "FileNotFoundError" not in said, said[-1500:]
    drain = Job.fetch(drain.id, connection=redis_client(), serializer=drain.serializer)
    assert drain.get_status() == "finished", said[-1500:]
    if made:
        assert sorted(p.name for p in metrics.iterdir()) == []
    else:
        assert not metrics.exists()
    env_seen = Job.fetch(env_seen.id, connection=redis_client(), serializer=env_seen.serializer)
    assert env_seen.get_status() == "finished"
    assert env_seen.return_value() is None  # its jobs do not see the setting


@pytest.mark.db
def test_the_sandbox_worker_s_jobs_do_not_see_the_webs_metrics_dir(clean_db, tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    env_seen = queue(SANDBOX_QUEUE).enqueue("os.getenv", "PROMETHEUS_MULTIPROC_DIR")
    done = _cli("sandbox-worker", "--burst", metrics=metrics)
    assert done.returncode == 0, (done.stdout + done.stderr)[-1500:]
    env_seen = Job.fetch(env_seen.id, connection=redis_client(), serializer=env_seen.serializer)
    assert env_seen.get_status() == "finished"
    assert env_seen.return_value() is None
    assert list(metrics.iterdir()) == []


def test_core_cli_imports_no_prometheus_client_before_main_drops_the_setting():
    """core.cli's main drops the setting first; that is in time only while importing
    core.cli itself loads no prometheus_client (its mode is fixed at import)."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, core.cli\n"
         "print(sorted(m for m in sys.modules if m.startswith('prometheus_client')))"],
        cwd=ROOT, capture_output=True, text=True, timeout=BOUND_S,
        env={**os.environ, "APP_ENV": "sandbox"})
    assert done.returncode == 0, done.stderr[-800:]
    assert done.stdout.strip() == "[]"


@pytest.mark.db
def test_the_outbox_sweep_schedules_its_next_run_when_a_part_cannot_be_imported(
        clean_db, monkeypatch):
    """The sweep imported workers.inbound (the bots, the web's helpers) before its
    try/finally: an import that failed (the metrics directory missing) ended the chain,
    and no outbox row whose job was lost went out again. Now that part fails alone: the
    others run and the next minute's sweep is scheduled."""
    import workers
    from core.services import handoff
    from core.services import outbox as outbox_service
    from workers.outbox import schedule_sweep

    ran: list[str] = []
    monkeypatch.setattr(outbox_service, "sweep", lambda: ran.append("outbox") or 0)
    monkeypatch.setattr(handoff, "expire_idle", lambda: ran.append("handoff") or 0)
    # workers.inbound cannot be imported (as with FileNotFoundError at its import).
    monkeypatch.setitem(sys.modules, "workers.inbound", None)
    monkeypatch.delattr(workers, "inbound", raising=False)
    first = schedule_sweep()
    run_at_its_minute(first)
    assert run_jobs(("outbox",)) == 1  # the sweep ran and failed
    monkeypatch.undo()
    assert scheduled("outbox", "outbox-sweep-") == [next_minute(first)], "the chain ended"
    assert ran == ["outbox", "handoff"]


# ------------------------------------------------- serve: crashes while a server is away


def test_one_crash_after_an_outage_ended_does_not_stop_serve(tmp_path):
    """An external Redis restarting makes the worker crash at each start (about 5 in
    15 s). Those crashes were counted: once Redis was back, one crash of the worker (an
    OOM kill, a failover's second blip) within 5 minutes stopped serve, web and all."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]  # not listening yet: Redis is away
    server = _server(**FAST)
    env = dict(os.environ)
    starts, up, once = tmp_path / "starts", tmp_path / "up", tmp_path / "once"
    runs = tmp_path / "runs"
    worker = (f"echo x >> '{starts}'; "
              f"if [ -e '{once}' ]; then touch '{runs}'; exec sleep 60; fi; "
              f"if [ -e '{up}' ]; then touch '{once}'; exit 3; fi; exit 3")
    server.children += [Child.start("web", "exec sleep 60", env, server.output),
                        Child.start("worker", worker, env, server.output)]
    services = embedded.Services(env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(server._watch(services, 1, False)),
                              daemon=True)
    thread.start()
    try:
        # More crashes while away than restart_limit (3) allows.
        _wait_for(lambda: starts.exists() and starts.read_text().count("x") >= 4,
                  "the worker crashed while Redis was away", server)
        listener.listen()  # Redis is back
        up.touch()
        # Its next start crashes with Redis up (touching `once`), the one after runs.
        _wait_for(lambda: result or runs.exists(),
                  "the worker started again after its one crash with Redis up", server)
        assert result == [], server.output.text()  # serve gave up: web stopped
        text = server.output.text()
        assert "giving up" not in text
        assert "worker stopped unexpectedly (exit code 3); starting it again in 0.05 s" in text
        web = next(c for c in server.children if c.name == "web")
        assert web.poll() is None
    finally:
        server.stop_requested = True
        thread.join(5)
        for child in list(server.children):
            child.kill()
            child.process.wait()
        listener.close()


def test_crashes_while_away_wait_at_growing_pauses_and_count_for_nothing():
    """The pause while a server is away grows as for any crash (a Redis restart of a
    second or two keeps the workers out about as long, not 30 s), and none of those
    crashes brings the limit nearer."""
    server = _server(restart_delay_s=1.0, restart_max_delay_s=4.0, restart_limit=5,
                     restart_window_s=300.0)
    assert [server._away_delay("worker", t) for t in range(0, 60, 10)] == [
        1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert [server._crash_delay("worker", t) for t in (100.0, 110.0, 120.0, 130.0)] == [
        1.0, 2.0, 4.0, 4.0]
    assert server._crash_delay("worker", 140.0) is None  # the fifth real crash


# ------------------------------------------------------------------ ./run's install lock


def _repo_with_run(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "ops").mkdir(parents=True)
    shutil.copy(ROOT / "run", repo / "run")
    (repo / "requirements.txt").write_text("")
    (repo / "requirements-dev.txt").write_text("-r requirements.txt\n")
    (repo / "ops" / "__init__.py").write_text("")
    (repo / "ops" / "supervisor.py").write_text("")
    return repo


def test_two_runs_at_first_use_install_one_after_the_other(tmp_path: Path):
    """The first ./run made the venv with `venv --clear`, which deleted the lock file it
    held, and took a new one: the second ./run, waiting on the old file, got its lock
    too and installed into the same venv at the same time (one failed, "No module named
    pip")."""
    repo = _repo_with_run(tmp_path)
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "PYTHON": sys.executable,
           "HOME": str(tmp_path), "PIP_NO_INDEX": "1"}
    procs = []
    for _ in range(2):
        procs.append(subprocess.Popen(["bash", str(repo / "run"), "serve"], cwd=repo, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    said = [p.communicate(timeout=BOUND_S)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), said
    assert sum(err.count("installing requirements.txt") for err in said) == 1, said
    assert sum(err.count("creating .venv") for err in said) == 1, said
    # The lock file is beside the venv (venv --clear keeps it), and not committed.
    assert (repo / ".venv.install.lock").exists()
    assert not (repo / ".venv" / ".install.lock").exists()
    assert ".venv.install.lock" in (ROOT / ".gitignore").read_text().splitlines()

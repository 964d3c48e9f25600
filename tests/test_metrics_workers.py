"""/metrics under gunicorn adds up every web worker's request metrics (the Procfile's web
command, with core.web.gunicorn_conf), instead of reporting whichever worker answered."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from core.config import ROOT

HEALTHZ = re.compile(r'^http_requests_total\{endpoint="/healthz",method="GET",status="200"\} '
                     r'(\S+)$', re.M)


def _web_command() -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("the Procfile has no web process")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(metrics_dir: Path | None, **extra: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ, PORT=str(port), WEB_CONCURRENCY="2", WEB_THREADS="4",
               GUNICORN_CMD_ARGS="--no-control-socket",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
               **extra)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    web = subprocess.Popen(["/bin/sh", "-c", _web_command()], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           process_group=0)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # waiting for a real server to start, not for time to pass
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                return web, base
        except requests.RequestException:
            pass
        if web.poll() is not None or time.monotonic() > deadline:
            _stop(web)
            pytest.fail("gunicorn did not start")
        time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(web: subprocess.Popen) -> None:
    """SIGTERM the whole group, and wait until gunicorn's master (not only the shell
    that started it) has finished shutting down."""
    try:
        os.killpg(web.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    web.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _group_alive(web.pid):  # waiting for real processes to exit
        if time.monotonic() > deadline:
            os.killpg(web.pid, signal.SIGKILL)
            break
        time.sleep(0.05)


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    path = tmp_path / "metrics"
    path.mkdir()
    return path


@pytest.fixture
def web(metrics_dir: Path, database: str) -> Iterator[str]:
    proc, base = _start(metrics_dir)
    yield base
    _stop(proc)


def _healthz_count(base: str) -> float:
    # A new connection each time: any worker may answer.
    found = HEALTHZ.findall(requests.get(f"{base}/metrics", headers={"Connection": "close"},
                                         timeout=10).text)
    return float(found[0]) if found else 0.0


def _hit(base: str, n: int) -> None:
    def one(_: int) -> int:
        return requests.get(f"{base}/healthz", headers={"Connection": "close"},
                            timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(n))) == {200}


def test_every_scrape_counts_the_requests_of_all_workers(web: str, metrics_dir: Path):
    # Until both workers have answered some (each writes its own file), so that a scrape
    # of one worker's counters alone could not report them all. The kernel hands the
    # connections out as it likes: one worker may take the first few dozen.
    sent = 0
    while len(list(metrics_dir.glob("counter_*.db"))) < 2:
        if sent >= 4000:
            pytest.fail("one gunicorn worker took all of 4000 requests")
        _hit(web, 40)
        sent += 40
    assert [_healthz_count(web) for _ in range(8)] == [float(sent)] * 8


def test_counts_left_from_an_earlier_run_are_not_added(metrics_dir: Path, database: str):
    earlier = ("from core.web.ops import REQUESTS\n"
               "REQUESTS.labels('GET', '/healthz', '200').inc(1000)\n")
    subprocess.run([sys.executable, "-c", earlier], cwd=ROOT, check=True, timeout=60,
                   env=dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)))
    assert list(metrics_dir.glob("counter_*.db"))
    proc, base = _start(metrics_dir)
    try:
        _hit(base, 5)
        assert _healthz_count(base) == 5.0
    finally:
        _stop(proc)


def test_without_a_directory_gunicorn_makes_its_own_and_removes_it(tmp_path: Path,
                                                                   database: str):
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc, base = _start(None, TMPDIR=str(temp))
    try:
        made = list(temp.glob("ridechain-metrics-*"))
        assert len(made) == 1
        _hit(base, 40)
        assert [_healthz_count(base) for _ in range(4)] == [40.0] * 4
    finally:
        _stop(proc)
    assert not made[0].exists()

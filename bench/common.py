"""Shared plumbing for benchmarks: databases, processes, percentiles, result files."""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psutil
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ops import redis_slots

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_REDIS: dict[str, str] = {}


def _bench_redis(redis_url: str) -> str:
    """The benchmarks' Redis database, claimed once a process as test runs claim theirs
    (ops/redis_slots.py), so that neither empties the other's keys midway. Given the bench's
    own database (an environment bench_env made), that one: no second claim."""
    if redis_url in _REDIS.values():
        return redis_url
    if redis_url not in _REDIS:
        _REDIS[redis_url] = redis_slots.with_db(redis_url, redis_slots.claim(redis_url,
                                                                            "the bench"))
    return _REDIS[redis_url]


def bench_env(port: int) -> dict[str, str]:
    """Environment for the service under test: its own database and Redis db, sandbox."""
    base_db = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/ridechain"
    url = make_url(base_db.replace("postgres://", "postgresql://", 1))
    name = url.database or "ridechain"
    # Already the bench's database (this process's environment pointed at it): the same one,
    # not "<name>_bench_bench" and its template beside it.
    db_url = url if name.endswith("_bench") else url.set(database=f"{name}_bench")
    redis_bench = _bench_redis(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": db_url.render_as_string(hide_password=False),
        "REDIS_URL": redis_bench,
        "APP_ENV": "sandbox",
        "PORT": str(port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "LOG_LEVEL": "WARNING",
        # A load generator is one "contact" per virtual user; keep the flood guard out of
        # the way of the measurement (it is measured by its own tests).
        "INBOUND_RATE_LIMIT": "100000",
        # Its scripted customers send each answer on a clock, not after reading the
        # question: under load "yes, book it" reaches the service before the summary it
        # answers is made, which the chat takes as a message sent twice and asks again
        # (conversation._unseen_answer). No person can; the guard costs a comparison.
        "CHAT_READ_FIRST_MS": "0",
    })
    return env


@contextmanager
def pointed_at(env: dict[str, str]):
    """This process's own settings, database pool and Redis clients on ``env``'s database
    and Redis for the block (for benchmarks that run the product's code in-process), then
    back on what they were, so the next benchmark's bench_env starts from the base URLs."""
    from core.adapters import db
    from core.adapters.redis_conn import reset_clients
    from core.config import reset_settings

    keys = ("DATABASE_URL", "REDIS_URL")
    saved = {k: os.environ.get(k) for k in keys}

    def reset() -> None:
        reset_settings()
        db.dispose_all()
        reset_clients()

    os.environ.update({k: env[k] for k in keys})
    reset()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset()


def cpu_ns(pid: int) -> int:
    """Nanoseconds ``pid``'s live threads have run on a core, by the scheduler's own count
    (/proc/<pid>/task/<tid>/schedstat): /proc/<pid>/stat counts in 10 ms ticks, too coarse
    for a few turns' worth. Threads that ended are not in it, so it suits processes that
    keep theirs (a PostgreSQL backend has one); 0 when the process is gone or elsewhere."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return total


# Templates migrated and seeded by this process: the first reset of a run builds one
# (`core.cli release`, about 5 s here), the others copy it (CREATE DATABASE ... TEMPLATE).
_TEMPLATES: set[str] = set()


def reset_database(env: dict[str, str]) -> None:
    """Drop and re-create the bench database, migrated and seeded, and empty its Redis."""
    url = make_url(env["DATABASE_URL"])
    template = f"{url.database}_template"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        if template not in _TEMPLATES:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)'))
    if template not in _TEMPLATES:
        built = url.set(database=template).render_as_string(hide_password=False)
        subprocess.run([sys.executable, "-m", "core.cli", "release"], cwd=ROOT,
                       env=dict(env, DATABASE_URL=built), check=True,
                       stdout=subprocess.DEVNULL)
        _TEMPLATES.add(template)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{url.database}" TEMPLATE "{template}"'))
    admin.dispose()
    import redis

    redis.Redis.from_url(env["REDIS_URL"]).flushdb()


@contextmanager
def processes(commands: Sequence[tuple[str, list[str]]], env: dict[str, str]):
    """Start named processes (own process groups); stop them all at the end.

    Like `./run serve`'s supervisor, each gets a process group of its own but stays in
    this session: with autogroup scheduling a new session would be a scheduling group of
    its own, and a niced worker there would compete with the web as an equal."""
    started: dict[str, subprocess.Popen] = {}
    try:
        for name, argv in commands:
            started[name] = subprocess.Popen(argv, cwd=ROOT, env=env, process_group=0,
                                             stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL)
        yield started
    finally:
        for proc in started.values():
            try:
                os.killpg(proc.pid, 15)
            except ProcessLookupError:
                pass
        for proc in started.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


def gunicorn(app: str, port: int, workers: int = 2, threads: int = 4) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--config", "python:core.web.gunicorn_conf",
            "--bind", f"127.0.0.1:{port}", "--workers",
            str(workers), "--threads", str(threads), "--worker-class", "gthread",
            "--timeout", "30", "--log-level", "warning", app]


def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)  # waiting for a real server to start, not for time to pass
    raise RuntimeError(f"{url} did not become ready in {timeout:.0f} s")


def rss_mb(pid: int, *, children: bool = True) -> dict[str, float]:
    """Resident memory of a process (and, separately, each of its children) in MB."""
    proc = psutil.Process(pid)
    out = {f"{proc.name()}:{pid}": proc.memory_info().rss / 2**20}
    if children:
        for child in proc.children(recursive=True):
            try:
                out[f"{child.name()}:{child.pid}"] = child.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                pass
    return out


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest-rank) of values; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    # rank = ceil(p/100 * n), rounded first so that 0.95 * 300 (284.99999999999997 or
    # 285.00000000000006 in floats) is rank 285, not 286.
    rank = max(1, min(len(ordered), math.ceil(round(p / 100 * len(ordered), 9))))
    return ordered[rank - 1]


def machine() -> dict[str, object]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "memory_gb": round(psutil.virtual_memory().total
                                                                 / 2**30, 1),
            "speed_probe_s": speed_probe()}


def speed_probe(steps: int = 3_000_000) -> float:
    """Seconds one core takes for a fixed Python loop, now: a yardstick of the machine's
    phase (on a shared host the same run can be twice as fast an hour later), saved with
    every result so figures from different runs can be told apart."""
    t0 = time.perf_counter()
    total = 0
    for i in range(steps):
        total += i
    return round(time.perf_counter() - t0, 3)


def save(name: str, data: dict[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{name}-{stamp}.json"
    payload = {"benchmark": name, "at": stamp, "machine": machine(), **data}
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    (RESULTS / f"{name}-latest.json").write_text(json.dumps(payload, indent=2,
                                                            ensure_ascii=False))
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table for the terminal."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"
    return str(value)

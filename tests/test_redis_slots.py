"""The benchmarks claim their Redis database as test runs do (ops/redis_slots.py), so a
benchmark never empties the database of a test run going on at the same time (found by
a review, session 21: the bench used database 13, which the third test run claims)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from core.config import get_settings
from ops import redis_slots

ROOT = Path(__file__).resolve().parent.parent


def _db_of(url: str) -> int:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return int(parse_qs(parts.query)["db"][0])
    return int(parts.path.strip("/") or 0)


def _held(live_only: bool = False) -> set[int]:
    """The databases claimed; ``live_only``: by a process still running (a run killed
    with SIGKILL leaves its claim for 12 hours, which the next claim takes over)."""
    import redis

    admin = redis.Redis.from_url(redis_slots.with_db(get_settings().redis_url, 0))
    owners = {n: admin.get(f"ridechain:test-slot:{n}") for n in redis_slots.SLOTS}
    return {n for n, owner in owners.items()
            if owner and (not live_only or redis_slots._pid_alive(int(owner)))}


def test_the_bench_takes_a_database_no_other_run_holds_and_gives_it_back():
    base = redis_slots.with_db(get_settings().redis_url, 0)
    held_before = _held(live_only=True)  # a killed run's claim is free to take over
    ours = _db_of(get_settings().redis_url)  # this test run's own claim
    assert ours in held_before
    # A bench process: its database, and the claims while it runs (printed before it exits).
    code = ("import json; from bench.common import bench_env; "
            "from tests.test_redis_slots import _db_of, _held; "
            "print(json.dumps([_db_of(bench_env(8000)['REDIS_URL']), sorted(_held())]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, text=True,
                         capture_output=True, env={**os.environ, "REDIS_URL": base}).stdout
    bench_db, held_during = json.loads(out)
    assert bench_db not in held_before  # never a running test's database
    assert bench_db in held_during  # claimed while the bench runs
    assert bench_db not in _held()  # given back when it ends

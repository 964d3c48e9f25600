"""Outbox: messages delivered per second by one RQ worker to the sandbox Twilio emulator,
against the same worker running no-op jobs (RQ's own cost per job), at two sizes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench import common


def _run_worker(env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "core.cli", "worker", "--burst"], cwd=common.ROOT,
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _in_child(env: dict[str, str], code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=common.ROOT, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


QUEUE_MESSAGES = """
import sys
from core.adapters.db import transaction
from core.services import outbox
n = int(sys.argv[1]) if len(sys.argv) > 1 else {n}
with transaction() as s:
    for i in range(n):
        outbox.queue_message(s, channel="sms", to=f"+9171{{i:08d}}", body=f"Bench {{i}}")
"""

QUEUE_NOOPS = """
from core.adapters.queue import queue
q = queue("default")
for i in range({n}):
    q.enqueue("bench.noop.noop", i)
"""

# Delivered to the emulator: Twilio took the message (with no status callbacks in this
# bench it stays "queued") or reported it sent or delivered; "failed" and "undelivered"
# rows are not delivered, nor are rows still waiting.
DELIVERED = ("queued", "sent", "delivered", "read")

SPAN = f"""
from sqlalchemy import func, select
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage
M = OutboxMessage
with transaction() as s:
    done = s.scalar(select(func.count()).where(M.status.in_({DELIVERED!r})))
    first, last = s.execute(select(func.min(M.sent_at), func.max(M.sent_at))).one()
print(done, (last - first).total_seconds() if first and last else 0)
"""


def measure(quick: bool) -> dict[str, object]:
    sizes = (100,) if quick else (300, 1500)  # a smoke run: one size, its start-up dominates
    port = common.free_port()
    env = common.bench_env(port)
    rows = []
    import redis

    for n in sizes:
        redis.Redis.from_url(env["REDIS_URL"]).flushdb()  # no-op jobs need only Redis
        _in_child(env, QUEUE_NOOPS.format(n=n))
        noop_s = _run_worker(env)
        common.reset_database(env)
        # The emulator's web starts after the reset: a pool still holding connections to
        # the dropped database would fail the first send (503, retried after the run).
        with common.processes([("web", common.gunicorn("core.app:create_app()", port))], env):
            common.wait_ready(f"http://127.0.0.1:{port}/readyz")
            _in_child(env, QUEUE_MESSAGES.format(n=n))
            total_s = _run_worker(env)
        done, span = _in_child(env, SPAN).split()
        rows.append({"messages": n, "delivered": int(done),
                     "outbox_per_s": round(int(done) / total_s, 1),
                     "noop_jobs_per_s": round(n / noop_s, 1),
                     "ratio": round((int(done) / total_s) / (n / noop_s), 3),
                     "send_span_s": float(span)})
    print("\nOutbox: one RQ worker (burst, incl. start-up) delivering to the sandbox emulator "
          "(msg/s: the messages it took, failed ones not counted)")
    print(common.table(["messages", "delivered", "msg/s", "no-op jobs/s", "ratio"],
                       [[r["messages"], r["delivered"], r["outbox_per_s"],
                         r["noop_jobs_per_s"], r["ratio"]] for r in rows]))
    fork = os.environ.get("RQ_FORK_PER_JOB", "")
    result = {"sizes": rows, "quick": quick,
              "worker": "forking (RQ_FORK_PER_JOB)" if fork else "simple (no fork)"}
    common.save("outbox", result)
    return result

"""Memory: the whole `./run serve` (web workers, RQ worker, embedded PostgreSQL and Redis)
after a load run, per process (RSS) and in total (PSS, so shared pages count once)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psutil

from bench import common
from bench.loadgen import Signer, closed_loop
from bench.webhooks import WA_SCRIPT, wait_idle
from ops.embedded import read_state


def _role(proc: psutil.Process) -> str:
    cmd = " ".join(proc.cmdline())
    if "gunicorn" in cmd:
        return "web"
    if "core.cli worker" in cmd:
        return "worker"
    if "core.cli sandbox-worker" in cmd:
        return "sandbox emulators"
    if "postgres" in proc.name() or "postgres" in cmd:
        return "postgres"
    if "redis" in proc.name():
        return "redis"
    return "supervisor"


def _processes(root: psutil.Process, data_dir: str) -> list[psutil.Process]:
    found = {root.pid: root}
    for child in root.children(recursive=True):
        found[child.pid] = child
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if data_dir in " ".join(proc.info["cmdline"] or []):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def measure(quick: bool) -> dict[str, object]:
    port = common.free_port()
    data_dir = tempfile.mkdtemp(prefix="ridechain-bench-mem-")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(PORT=str(port), DATA_DIR=data_dir, LOG_LEVEL="WARNING",
               INBOUND_RATE_LIMIT="100000")
    token = env.get("TWILIO_AUTH_TOKEN", "sandbox-twilio-auth-token")
    serve = subprocess.Popen([str(common.ROOT / "run"), "serve"], cwd=common.ROOT, env=env,
                             start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        common.wait_ready(f"{base}/readyz", timeout=240)
        run = asyncio.run(closed_loop(base, "/webhooks/whatsapp", WA_SCRIPT,
                                      Signer(token, base),
                                      concurrency=16, max_requests=400 if quick else 4000,
                                      max_seconds=20 if quick else 60, label="serve"))
        if run.failed:
            raise RuntimeError(f"the load run's answers were not all 2xx: {run.statuses}, "
                               f"{run.errors} without an answer")
        # Measured once the worker has drained what the load queued (the turns, replies,
        # payment links, status callbacks): no job, message or callback left waiting in the
        # serve's own Redis (embedded, as its state file in DATA_DIR names it).
        drained = wait_idle(read_state(Path(data_dir).resolve())["redis_url"], timeout=300)
        rows = []
        for proc in _processes(psutil.Process(serve.pid), data_dir):
            try:
                info = proc.memory_full_info()
                rows.append({"pid": proc.pid, "role": _role(proc),
                             "rss_mb": round(info.rss / 2**20, 1),
                             "pss_mb": round(info.pss / 2**20, 1)})
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)
    rows.sort(key=lambda r: (r["role"], r["pid"]))
    web = [r["rss_mb"] for r in rows if r["role"] == "web"]
    total_pss = round(sum(r["pss_mb"] for r in rows), 1)
    print(f"\nMemory of ./run serve after {run.count} WhatsApp messages, drained in "
          f"{drained:.1f} s (RSS per process; total as PSS)")
    print(common.table(["role", "pid", "RSS MB", "PSS MB"],
                       [[r["role"], r["pid"], r["rss_mb"], r["pss_mb"]] for r in rows]))
    print(f"largest web process: {max(web, default=0):.0f} MB RSS (target < 200); "
          f"whole serve: {total_pss:.0f} MB PSS (target < 1024)")
    result = {"processes": rows, "largest_web_rss_mb": max(web, default=0),
              "total_pss_mb": total_pss, "messages": run.count,
              "drained_after_s": round(drained, 2), "quick": quick}
    common.save("memory", result)
    return result

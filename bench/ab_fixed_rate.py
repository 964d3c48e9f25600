"""A/B of the WhatsApp fixed-rate run alone: CPU per message by role and reply latency.

The full `./run bench` measures this once, after every other WhatsApp and IVR level, on
whatever the host's phase is that day; a figure that moved between two days' runs may be
the code or the host. This runs only that part, as webhooks.measure runs it (the same
processes, warm-up, dialog and counters, imported from the checkout it runs in), a few
rounds in one set of processes, so that two commits can be run in turns on one day:

    git worktree add --detach /tmp/ab/old <commit>; ln -s "$PWD/.venv" /tmp/ab/old/.venv
    cd /tmp/ab/old && DATABASE_URL=postgresql://postgres@127.0.0.1:5432/ridechain_ab \\
        REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python "$OLDPWD/bench/ab_fixed_rate.py"

and the same in the head's checkout, alternating, two rounds or more each. It uses the
bench's database beside DATABASE_URL's (``<name>_bench``, made again from its template)
and needs the checkout's bench/webhooks.py to have the fixed-rate helpers (session 29 on).

Options by environment: AB_RATE (messages/s, 80), AB_SECONDS (20), AB_ROUNDS (2),
AB_SPY=<file>: py-spy (on PATH, or AB_PY_SPY) records the first RQ worker through the
first round, raw collapsed stacks, idle threads included.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

# The checkout this runs in is the one measured, wherever this file lives.
sys.path.insert(0, os.getcwd())

from sqlalchemy import create_engine  # noqa: E402

from bench import common  # noqa: E402
from bench import webhooks as w  # noqa: E402
from bench.loadgen import Signer, open_loop  # noqa: E402


def main() -> int:
    rate = int(os.environ.get("AB_RATE", "80"))
    seconds_asked = float(os.environ.get("AB_SECONDS", "20"))
    rounds = int(os.environ.get("AB_ROUNDS", "2"))
    spy_to = os.environ.get("AB_SPY")
    svc_port, emulator_port = common.free_port(), common.free_port()
    env = common.bench_env(svc_port)
    emulators = f"http://127.0.0.1:{emulator_port}/sandbox"
    env["TWILIO_API_BASE"] = f"{emulators}/twilio"
    env["RAZORPAY_API_BASE"] = f"{emulators}/razorpay"
    from core.cli import DEFAULT_WORKER_NICE

    nice = os.environ.get("WORKER_NICE", str(DEFAULT_WORKER_NICE))
    common.reset_database(env)
    token = env.get("TWILIO_AUTH_TOKEN", "sandbox-twilio-auth-token")
    svc = f"http://127.0.0.1:{svc_port}"
    engine = create_engine(
        env["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1),
        connect_args={"application_name": w.BENCH_APP})
    redis_pid = w.redis_server_pid(env["REDIS_URL"])
    with common.processes([
        ("web", common.gunicorn("core.app:create_app()", svc_port, workers=w.WEB_WORKERS)),
        *[(f"worker{i}", [sys.executable, "-m", "core.cli", "worker"]) for i in range(2)],
        ("sandbox", ["env", f"PGAPPNAME={w.EMULATION_APP}", sys.executable, "-m", "core.cli",
                     "sandbox-worker"]),
        ("emulators", ["env", f"PGAPPNAME={w.EMULATION_APP}", "nice", "-n", nice,
                       *common.gunicorn("core.app:create_app()", emulator_port, workers=1,
                                        threads=8)]),
    ], env) as procs:
        common.wait_ready(f"{svc}/readyz")
        common.wait_ready(f"http://127.0.0.1:{emulator_port}/readyz")
        w.wait_handled(engine, w.warm_up(svc, token, 90_000, 300), 120)
        w.wait_idle(env["REDIS_URL"])
        user_base = 0
        for n in range(rounds):
            users, seconds = w.fixed_rate_plan(rate, seconds_asked)
            spy = None
            if spy_to and n == 0:
                spy = subprocess.Popen(
                    [os.environ.get("AB_PY_SPY", "py-spy"), "record", "-p",
                     str(procs["worker0"].pid), "-d", str(int(seconds) + 5), "-r", "200",
                     "-f", "raw", "--idle", "-o", spy_to],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sent_at: dict[str, float] = {}
            before = w.cpu_seconds(procs, engine, redis_pid)
            run = asyncio.run(open_loop(svc, "/webhooks/whatsapp", w.WA_SCRIPT,
                                        Signer(token, svc), rate=rate, seconds=seconds,
                                        users=users, label=f"ab@{rate}/s",
                                        user_offset=user_base, sent_at=sent_at))
            user_base += users
            replies = w.reply_latency(engine, sent_at, 180)
            w.wait_idle(env["REDIS_URL"])
            cpu = w.cpu_per_message(before, w.cpu_seconds(procs, engine, redis_pid),
                                    max(len(sent_at), 1))
            if spy is not None:
                spy.wait()
            print(json.dumps({"round": n, "rate": rate, "messages": len(sent_at),
                              "cpu_ms_per_message": cpu, "webhook": run.summary(),
                              "replies": replies,
                              "speed_probe_s": common.speed_probe()}), flush=True)
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())

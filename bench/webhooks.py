"""Webhook throughput and latency: the service vs a bare signed endpoint, same gunicorn.

Both run as the production process model (gunicorn gthread workers; the service also with
PostgreSQL, Redis and RQ workers). The load generator walks many distinct phones through
whole booking dialogs (each pass through the script a new customer's booking, to the
booking made); the headline is service/bare throughput at each concurrency, plus latency
at fixed rates of 80 (WhatsApp's default sender limit) and 200 messages/s, where every
customer sends the whole dialog once.

WhatsApp is answered the courier way (the webhook accepts, a drain job runs the turn and
the reply leaves through the outbox), so the webhook figures alone would flatter it. For
every WhatsApp run this also waits until every accepted message was handled and reports
the turns per second from the first request to the last turn committed, and at the fixed
rates how long each message took until its reply was written (turn done) and until the
reply was handed to the Twilio emulator (sent).

One WhatsApp level runs again with the RQ workers held (SIGSTOP): the webhook measured
alone, as if the jobs ran elsewhere; the turns it accepted are drained once the workers go
on. Where a run leaves nothing behind for the next to pay for (the held level, the IVR),
the service and the bare endpoint are measured in alternating slices, so that a drift of
this shared machine hits both alike. Every run opens its connections before its clock
starts.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

import requests
from sqlalchemy import create_engine, text

from bench import common
from bench.loadgen import (
    TIMEOUT_S,
    Run,
    Signer,
    closed_loop,
    ivr_closed_loop,
    merged,
    open_loop,
    pass_phone,
)
from bench.loadgen import even as loadgen_even

WA_FROM = "whatsapp:+14155238886"
# A new customer's whole booking, one message per turn, to the booking made (the path of
# conversation_fixtures/hinglish_pincode.yaml): greeting, Hindi, send a parcel, pickup
# pincode, its village, a landmark, drop pincode, its village, a landmark, the receiver's
# name and mobile, food, fits in a bag, up to 5 kg, not fragile, worth up to ₹2,000,
# normal speed, "yes, book it". The booking's payment link and its message follow in jobs.
WA_TEXTS = ("hi", "1", "1", "845450", "1", "kuan ke paas", "845438", "1", "school ke paas",
            "Ramesh Kumar", "9876512345", "2", "1", "1", "2", "2", "2", "1")
EMULATION_APP = "ridechain-emulation"  # the emulators' PostgreSQL application_name
BENCH_APP = "ridechain-bench"  # the bench's own PostgreSQL connections (polling, counting)
RATES = (80, 200)  # WhatsApp's default sender limit, and the target's rate
# A new caller booking by keypad (the path of conversation_fixtures/ivr_hindi_booking.yaml):
# Hindi, book, pickup pincode and village, drop pincode, a village, recipient's mobile,
# size, weight, speed, confirm.
IVR_DIGITS = ("1", "1", "845438#", "2", "1", "845450#", "7", "1", "9876543210#", "1", "1",
              "2", "2", "1", "1")


def wa_phone(user: int, turn: int) -> str:
    """The customer a virtual user is at ``turn``: each walk through WA_TEXTS is a new
    phone, so every pass is a first booking (the same phone again would be offered its
    last draft back, or refused for too many unpaid bookings)."""
    return pass_phone("+917", user, turn // len(WA_TEXTS))


def wa_step(turn_text: str):
    def step(user: int, turn: int) -> dict[str, str]:
        phone = wa_phone(user, turn)
        return {"MessageSid": f"SMb{user:08d}{turn:06d}", "AccountSid": "ACbench",
                "From": f"whatsapp:{phone}", "To": WA_FROM, "Body": turn_text,
                "NumMedia": "0", "WaId": phone[1:], "ProfileName": "Bench"}
    return step


WA_SCRIPT = [wa_step(t) for t in WA_TEXTS]


def ivr_turn(user: int, turn: int) -> dict[str, str]:
    """The bare endpoint's voice turn: the same parameters a keypad turn carries."""
    return {"CallSid": f"CAb{user:08d}", "AccountSid": "ACbench", "From": f"+9170{user:08d}",
            "To": "+15005550006", "CallStatus": "in-progress", "Digits": "1"}


HANDLED = text("SELECT count(*) FROM inbound_events WHERE channel = 'whatsapp'")
BOOKED = text("SELECT count(*) FROM bookings WHERE channel = 'whatsapp'")
REPLY_TIMES = text("""
    SELECT split_part(dedupe_key, ':', 2), extract(epoch FROM created_at),
           extract(epoch FROM sent_at)
    FROM outbox_messages WHERE dedupe_key LIKE :pattern
""").bindparams(pattern="reply:%:0")


def booked(engine) -> int:
    """WhatsApp bookings made so far: each customer's dialog ends in one."""
    with engine.connect() as conn:
        return conn.execute(BOOKED).scalar_one()


def fixed_rate_plan(rate: int, seconds: float) -> tuple[int, float]:
    """(customers, seconds) for a fixed-rate run of about ``seconds``: each customer sends
    WA_SCRIPT once, whole, so the run is customers x len(WA_SCRIPT) messages at ``rate``."""
    users = max(1, int(rate * seconds) // len(WA_SCRIPT))
    return users, users * len(WA_SCRIPT) / rate


def wait_handled(engine, target: int, timeout: float) -> tuple[int, float]:
    """Poll until ``target`` WhatsApp messages were handled; return (handled, seconds)."""
    t0 = time.perf_counter()
    handled = 0
    while time.perf_counter() - t0 < timeout:
        with engine.connect() as conn:
            handled = conn.execute(HANDLED).scalar_one()
        if handled >= target:
            break
        time.sleep(0.05)  # polling the system under test from outside, not a test wait
    return handled, time.perf_counter() - t0


def wait_idle(redis_url: str, timeout: float = 120.0) -> float:
    """Wait until no RQ job is queued or running and no message or status callback waits
    for one (callbacks wait out their batching window), so the next measurement does not
    share the cores with the last one's leftovers, and CPU per message counts them all."""
    import redis

    from core.services import inbound, outbox
    from sandbox.twilio import STATUS_QUEUE

    r = redis.Redis.from_url(redis_url)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        busy = sum(r.llen(k) for k in r.keys("rq:queue:*"))
        busy += sum(r.zcard(k) for k in r.keys("rq:wip:*"))
        busy += r.llen(outbox.STATUS_INBOX) + r.llen(STATUS_QUEUE) + r.scard(inbound.INBOXES)
        if not busy:
            break
        time.sleep(0.1)
    return time.perf_counter() - t0


@contextmanager
def held(procs: dict[str, object], names: tuple[str, ...]):
    """Stop the named processes' groups (SIGSTOP) for the block, then let them go on: the
    webhook measured alone, as if the jobs ran on another machine."""
    groups = [p.pid for n, p in procs.items() if n.startswith(names)]  # type: ignore[attr-defined]
    for pid in groups:
        os.killpg(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in groups:
            os.killpg(pid, signal.SIGCONT)


WEB_WORKERS = 2  # gunicorn workers of the service and of the bare endpoint, as in production
SLICES = 3  # alternating slices per side where the two are measured in turns

_STATUS_TAKEN = re.compile(r'^http_requests_total\{endpoint="/webhooks/twilio/status",'
                           r'method="POST",status="\d+"\} (\S+)$', re.M)


def status_callbacks_taken(base: str) -> float:
    """Status callbacks the service's web has answered so far, all workers together (its
    /metrics adds up every gunicorn worker's counts)."""
    return sum(float(v) for v in _STATUS_TAKEN.findall(
        requests.get(f"{base}/metrics", timeout=30).text))


_IN_APP = re.compile(r'^http_request_duration_seconds_(sum|count)\{endpoint="/webhooks/whatsapp"\} '
                     r'(\S+)$', re.M)


def whatsapp_time_in_app(base: str) -> tuple[float, float]:
    """Seconds the service's Flask app has spent in WhatsApp webhooks so far, and how many
    it answered (all workers): from the first line of our code to the last, without
    gunicorn's accept and hand-off, the kernel's queues or the load generator."""
    got = {kind: float(v) for kind, v in _IN_APP.findall(
        requests.get(f"{base}/metrics", timeout=30).text)}
    return got.get("sum", 0.0), got.get("count", 0.0)


def side_by_side(service: Callable[..., Run], bare: Callable[..., Run],
                 slices: int) -> tuple[Run, Run]:
    """Run the service's and the bare endpoint's measurement in ``slices`` alternating
    parts, each part taking its share of the bounds; return each side as one run."""
    runs: tuple[list[Run], list[Run]] = ([], [])
    for i in range(slices):
        runs[0].append(service(i))
        runs[1].append(bare(i))
    return merged(runs[0]), merged(runs[1])


def warm_up(target: str, token: str, user_offset: int, requests: int) -> int:
    """A few conversations first: a new process's first requests pay for lazy imports,
    first connections and script loads, which no later request pays."""
    run = asyncio.run(closed_loop(target, "/webhooks/whatsapp", WA_SCRIPT,
                                  Signer(token, target), concurrency=8, max_requests=requests,
                                  max_seconds=10.0, label="warm-up", user_offset=user_offset))
    return run.statuses.get(200, 0)


FAILURES_NOTE = ("(fail %: requests without a 2xx answer; msg/s counts 2xx answers only; a "
                 f"request without any answer counts in the percentiles at the {TIMEOUT_S:.0f} "
                 "s timeout)")


def _jobs(row: dict[str, object]) -> str:
    """What the RQ workers did while the webhook was measured."""
    if row["channel"] != "whatsapp":
        return "-"
    return "held" if row["workers_held"] else "draining"


BACKENDS = text("""
    SELECT pid, application_name = :emulation FROM pg_stat_activity
    WHERE datname = current_database() AND application_name <> :bench
""").bindparams(emulation=EMULATION_APP, bench=BENCH_APP)


def redis_server_pid(redis_url: str) -> int | None:
    """The pid of the Redis server behind ``redis_url`` (INFO server), if it runs here."""
    import redis

    pid = int(redis.Redis.from_url(redis_url).info("server").get("process_id", 0))
    return pid if pid and os.path.exists(f"/proc/{pid}") else None


def cpu_seconds(procs: dict[str, object], engine, redis_pid: int | None
                ) -> dict[str, dict[int, float]]:
    """CPU seconds (user + system) used so far by each process of the system under test,
    by role: our processes and their children; the PostgreSQL backends connected to the
    bench's database (the emulators' connections, named by PGAPPNAME, apart as
    "emulator_pg"; the bench's own polling left out); the Redis server at ``redis_pid``.
    Only the bench's own servers: not every postgres or redis-server on the machine (other
    databases' backends, another Redis). The PostgreSQL server's shared processes (WAL
    writer, checkpointer) serve every database and are not counted."""
    import psutil

    out: dict[str, dict[int, float]] = {}
    with engine.connect() as conn:
        backends = {pid: emulated for pid, emulated in conn.execute(BACKENDS)}

    def add(role: str, proc: psutil.Process) -> None:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            return
        out.setdefault(role, {})[proc.pid] = t.user + t.system

    for name, popen in procs.items():
        role = "workers" if name.startswith("worker") else name
        try:
            parent = psutil.Process(popen.pid)  # type: ignore[attr-defined]
            family = [parent, *parent.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in family:
            add(role, proc)
    add("loadgen", psutil.Process())
    for pid, emulated in backends.items():
        try:
            proc = psutil.Process(pid)
            if proc.name().startswith("postgres"):  # not a server elsewhere's pid
                add("emulator_pg" if emulated else "postgres", proc)
        except psutil.Error:
            continue  # ended
    if redis_pid is not None:
        try:
            add("redis", psutil.Process(redis_pid))
        except psutil.Error:
            pass
    return out


def runqueue_wait(pid: int, children: bool = True) -> float:
    """Seconds the threads of ``pid`` (and of its children) have waited, runnable, for a
    core (the scheduler's own count, /proc/<pid>/task/<tid>/schedstat)."""
    import psutil

    family = [pid]
    if children:
        try:
            family += [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return 0.0
    waited = 0
    for p in family:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/schedstat") as f:
                    waited += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return waited / 1e9


def _per_request(seconds: float, run: Run) -> float:
    return round(seconds / max(run.count, 1) * 1000, 2)


def draining_level(service: Callable[..., Run], bare: Callable[..., Run],
                   drained: Callable[[Run], tuple[int, int, float]],
                   sample: Callable[[bool], dict], bare_waits: Callable[[], tuple[float, float]],
                   slices: int) -> tuple[Run, Run, dict[str, object]]:
    """A WhatsApp level with the RQ workers draining meanwhile, in ``slices`` parts: a
    service part, its turns drained, a bare part. Counters are read when each part's
    clock starts (connections open and spread) and when it stops: the CPU each role used,
    the status callbacks the web took besides the messages (Twilio's share of the web
    while the drain runs), the time the app spent on the messages, and how long the web's
    and the load generator's threads waited for a core (the bare's too)."""
    parts: tuple[list[Run], list[Run]] = ([], [])
    totals = {"accepted": 0, "done": 0, "drain_after_s": 0.0, "callbacks": 0.0,
              "app_s": 0.0, "app_n": 0.0, "web": 0.0, "loadgen": 0.0, "bare_web": 0.0,
              "bare_loadgen": 0.0}
    cpu: dict[str, float] = {}
    for i in range(slices):
        start: dict[str, object] = {}
        run = service(i, at_start=lambda into=start: into.update(sample(True)))
        end = sample(False)
        accepted, done, waited = drained(run)
        bare_start: list[tuple[float, float]] = []
        bare_run = bare(i, at_start=lambda into=bare_start: into.append(bare_waits()))
        bare_end = bare_waits()
        parts[0].append(run)
        parts[1].append(bare_run)
        for role, cores in cores_used(start["cpu"], end["cpu"], run.seconds).items():
            cpu[role] = cpu.get(role, 0.0) + cores * run.seconds
        totals["accepted"] += accepted
        totals["done"] += done
        totals["drain_after_s"] += waited
        totals["callbacks"] += end["callbacks"] - start["callbacks"]
        totals["app_s"] += end["app"][0] - start["app"][0]
        totals["app_n"] += end["app"][1] - start["app"][1]
        totals["web"] += end["waits"][0] - start["waits"][0]
        totals["loadgen"] += end["waits"][1] - start["waits"][1]
        totals["bare_web"] += bare_end[0] - bare_start[0][0]
        totals["bare_loadgen"] += bare_end[1] - bare_start[0][1]
    s, b = merged(parts[0]), merged(parts[1])
    seconds = max(s.seconds, 1e-9)
    return s, b, {
        "accepted": totals["accepted"], "done": totals["done"],
        "drain_after_s": totals["drain_after_s"],
        "status_callbacks_per_s": round(totals["callbacks"] / seconds, 1),
        "cpu_cores": {role: round(v / seconds, 2) for role, v in cpu.items()},
        "in_app_mean_ms": round(totals["app_s"] / totals["app_n"] * 1000, 2)
        if totals["app_n"] else None,
        "core_waits_ms": {"web": _per_request(totals["web"], s),
                          "loadgen": _per_request(totals["loadgen"], s),
                          "bare_web": _per_request(totals["bare_web"], b),
                          "bare_loadgen": _per_request(totals["bare_loadgen"], b)}}


def cores_used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]],
               seconds: float) -> dict[str, float]:
    """CPU used by role over ``seconds`` of wall time, in cores (2.0: both cores all the
    time); "loadgen" is this process, which runs the load generator."""
    out = {role: round(sum(max(0.0, secs - before.get(role, {}).get(pid, 0.0))
                           for pid, secs in pids.items()) / seconds, 2)
           for role, pids in after.items()} if seconds else {}
    return out


def cpu_per_message(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]],
                    messages: int) -> dict[str, float]:
    """Milliseconds of CPU per message, by role, and the service's total (the Twilio and
    Razorpay emulators and the status reporter stand in for Twilio and Razorpay and are
    counted apart). A process
    that ended in between is not counted (PostgreSQL backends of closed connections): the
    figures can only be low, never negative."""
    per: dict[str, float] = {}
    for role, pids in after.items():
        used = sum(max(0.0, secs - before.get(role, {}).get(pid, 0.0))
                   for pid, secs in pids.items())
        per[role] = round(used / messages * 1000, 2)
    per["service_total"] = round(sum(v for k, v in per.items()
                                     if k in ("web", "workers", "postgres", "redis")), 2)
    per["emulation_total"] = round(per.get("emulators", 0.0) + per.get("sandbox", 0.0)
                                   + per.get("emulator_pg", 0.0), 2)
    return per


def reply_latency(engine, sent_at: dict[str, float], timeout: float) -> dict[str, object]:
    """Per message: scheduled send -> reply row written / reply handed to Twilio (ms)."""
    deadline = time.perf_counter() + timeout
    while True:
        with engine.connect() as conn:
            rows = [r for r in conn.execute(REPLY_TIMES) if r[0] in sent_at]
        if sum(1 for r in rows if r[2] is not None) >= len(sent_at) or (
                time.perf_counter() > deadline):
            break
        time.sleep(0.2)
    written = [(float(c) - sent_at[sid]) * 1000 for sid, c, _ in rows]
    sent = [(float(x) - sent_at[sid]) * 1000 for sid, _, x in rows if x is not None]

    def stats(values: list[float]) -> dict[str, object]:
        return {"count": len(values),
                **{f"p{p}_ms": round(common.percentile(values, p), 1) if values else None
                   for p in (50, 95, 99)}}

    return {"messages": len(sent_at), "turn_done": stats(written), "sent": stats(sent)}


def measure(quick: bool) -> dict[str, object]:
    levels = (8, 32) if quick else (8, 32, 64)
    max_requests = 200 if quick else 3000
    max_seconds = 5.0 if quick else 25.0
    svc_port, bare_port, emulator_port = (common.free_port() for _ in range(3))
    env = common.bench_env(svc_port)
    # The Twilio and Razorpay emulators stand in for Twilio's and Razorpay's own servers
    # (every booking makes a payment link): they get their own gunicorn at the background
    # jobs' CPU priority, so their work is not billed to the web under test (the status
    # callbacks sent back are, as Twilio's would be).
    emulators = f"http://127.0.0.1:{emulator_port}/sandbox"
    env["TWILIO_API_BASE"] = f"{emulators}/twilio"
    env["RAZORPAY_API_BASE"] = f"{emulators}/razorpay"
    from core.cli import DEFAULT_WORKER_NICE

    emulator_nice = os.environ.get("WORKER_NICE", str(DEFAULT_WORKER_NICE))
    common.reset_database(env)
    bare_env = dict(env, PUBLIC_BASE_URL=f"http://127.0.0.1:{bare_port}")
    token = env.get("TWILIO_AUTH_TOKEN", "sandbox-twilio-auth-token")
    svc = f"http://127.0.0.1:{svc_port}"
    bare = f"http://127.0.0.1:{bare_port}"
    rows: list[dict[str, object]] = []
    workers = int(os.environ.get("WORKER_PROCESSES", "2"))  # as `./run serve` runs them
    engine = create_engine(env["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1),
                           connect_args={"application_name": BENCH_APP})
    redis_pid = redis_server_pid(env["REDIS_URL"])
    handled_before = 0
    with common.processes([
        ("web", common.gunicorn("core.app:create_app()", svc_port, workers=WEB_WORKERS)),
        *[(f"worker{i}", [sys.executable, "-m", "core.cli", "worker"]) for i in range(workers)],
        ("sandbox", ["env", f"PGAPPNAME={EMULATION_APP}", sys.executable, "-m", "core.cli",
                     "sandbox-worker"]),
        ("emulators", ["env", f"PGAPPNAME={EMULATION_APP}", "nice", "-n", emulator_nice,
                       *common.gunicorn("core.app:create_app()", emulator_port, workers=1,
                                        threads=8)]),
    ], env) as procs, common.processes([
        ("bare", common.gunicorn("bench.bare_app:create_app()", bare_port,
                                 workers=WEB_WORKERS)),
    ], bare_env) as bare_procs:
        common.wait_ready(f"{svc}/readyz")
        common.wait_ready(f"http://127.0.0.1:{emulator_port}/readyz")
        common.wait_ready(f"{bare}/healthz")
        warm = 100 if quick else 300
        warm_up(bare, token, 0, warm)
        handled_before, _ = wait_handled(engine, warm_up(svc, token, 90_000, warm), 120)
        wait_idle(env["REDIS_URL"])
        user_base = 0

        def sample(at_start: bool) -> dict[str, object]:
            # The CPU and wait counters are read nearest the clock, so the scrapes of the
            # web's /metrics (CPU of the web's and of this process) stay out of the window.
            def counters() -> dict[str, object]:
                return {"cpu": cpu_seconds(procs, engine, redis_pid),
                        "waits": (runqueue_wait(procs["web"].pid),
                                  runqueue_wait(os.getpid(), children=False))}

            first = {} if at_start else counters()
            scraped = {"callbacks": status_callbacks_taken(svc),
                       "app": whatsapp_time_in_app(svc)}
            return {**first, **scraped, **(counters() if at_start else {})}

        def bare_waits() -> tuple[float, float]:
            return (runqueue_wait(bare_procs["bare"].pid),
                    runqueue_wait(os.getpid(), children=False))

        plan = [("whatsapp", c, False) for c in levels]
        plan.append(("whatsapp", levels[-1] if quick else 32, True))
        plan += [("voice", c, False) for c in (levels[:1] if quick else levels)]  # smoke: one
        for channel, c, workers_held in plan:
            # The two endpoints are measured in alternating parts, so a drift of the machine
            # hits both alike. In a draining level each service part's turns are drained
            # before the bare part runs, on quiet cores as every bare part does.
            # In a full run a draining part is half a level: a much shorter one would mostly
            # measure the drain starting up, a longer one makes the run long (each part's
            # turns are drained before the next). A smoke run measures a draining level in
            # one part, to stay short.
            draining = channel == "whatsapp" and not workers_held
            slices = 1 if draining and quick else SLICES
            share = (1 if quick else 2) if draining else slices
            part = {"concurrency": c, "max_requests": max_requests // share,
                    "max_seconds": max_seconds / share, "spread_over": WEB_WORKERS}
            turns: dict[str, object] = {}
            if channel == "whatsapp":
                def service(i: int, c: int = c, part: dict = part, base: int = user_base,
                            at_start: Callable[[], None] | None = None):
                    return asyncio.run(closed_loop(svc, "/webhooks/whatsapp", WA_SCRIPT,
                                                   Signer(token, svc), label="service",
                                                   user_offset=base + i * c, at_start=at_start,
                                                   **part))

                def baseline(i: int, part: dict = part,
                             at_start: Callable[[], None] | None = None):
                    return asyncio.run(closed_loop(bare, "/webhooks/whatsapp", WA_SCRIPT,
                                                   Signer(token, bare), label="bare",
                                                   at_start=at_start, **part))

                def drained(run: Run) -> tuple[int, int, float]:
                    """Wait until every message ``run`` got accepted is handled."""
                    nonlocal handled_before
                    accepted = run.statuses.get(200, 0)
                    handled, waited = wait_handled(engine, handled_before + accepted, 300)
                    done, handled_before = handled - handled_before, handled
                    wait_idle(env["REDIS_URL"])
                    return accepted, done, waited

                if workers_held:
                    with held(procs, ("worker", "sandbox")):
                        s, b = side_by_side(service, baseline, slices)
                    accepted, done, waited = drained(s)
                else:
                    s, b, draining = draining_level(service, baseline, drained, sample,
                                                    bare_waits, slices)
                    accepted, done, waited = (draining.pop("accepted"), draining.pop("done"),
                                              draining.pop("drain_after_s"))
                    turns.update(draining)
                turns = {"accepted": accepted, "handled": done, "drain_after_s": round(waited, 2),
                         "per_second": round(done / (s.seconds + waited), 1), **turns}
            else:
                def service(i: int, c: int = c, part: dict = part, base: int = user_base):
                    run = asyncio.run(ivr_closed_loop(svc, IVR_DIGITS, Signer(token, svc),
                                                      label="service",
                                                      user_offset=base + i * c, **part))
                    wait_idle(env["REDIS_URL"])  # its SMS and jobs, before the bare slice
                    return run

                def baseline(i: int, part: dict = part):
                    return asyncio.run(closed_loop(bare, "/webhooks/voice", [ivr_turn],
                                                   Signer(token, bare), label="bare", **part))

                s, b = side_by_side(service, baseline, slices)
            user_base += c * slices
            ss, bs = s.summary(), b.summary()
            row = {"channel": channel, "concurrency": c, "workers_held": workers_held,
                   "service": ss, "bare": bs,
                   "ratio": round(ss["per_second"] / bs["per_second"], 3)
                   if bs["per_second"] else None}
            if turns:
                row["turns"] = turns
            rows.append(row)
        # Fixed rates: WhatsApp's default sender limit (80 messages/s), and the target's 200.
        fixed: list[dict[str, object]] = []
        for rate in RATES:
            # Every customer sends the whole booking, so both rates send the same dialog
            # (the same mix of cheap and dear turns): as many customers as whole dialogs
            # fit in the run, its length rounded down to a whole number of them.
            users, seconds = fixed_rate_plan(rate, 1 if quick else 20)
            sent_at: dict[str, float] = {}
            booked_before = booked(engine)
            cpu_before = cpu_seconds(procs, engine, redis_pid)
            run = asyncio.run(open_loop(svc, "/webhooks/whatsapp", WA_SCRIPT, Signer(token, svc),
                                        rate=rate, seconds=seconds, users=users,
                                        label=f"service@{rate}/s", user_offset=user_base,
                                        sent_at=sent_at))
            user_base += users
            replies = reply_latency(engine, sent_at, 180)
            wait_idle(env["REDIS_URL"])
            cpu = cpu_per_message(cpu_before, cpu_seconds(procs, engine, redis_pid),
                                  max(len(sent_at), 1))
            fixed.append({"rate": rate, "customers": users, "seconds": seconds,
                          "bookings": booked(engine) - booked_before, "webhook": run.summary(),
                          "replies": replies, "cpu_ms_per_message": cpu})
        memory = common.rss_mb(procs["web"].pid)
    engine.dispose()
    result = {"levels": rows, "fixed_rates": fixed, "web_rss_mb": memory,
              "emulator_nice": int(emulator_nice),
              "rq_workers": workers, "quick": quick}
    print("\nWebhooks: service vs bare signed endpoint (same gunicorn, 2 workers x 4 threads; "
          f"{workers} RQ workers drain WhatsApp turns meanwhile, or are held (SIGSTOP) while "
          "the webhook is measured alone; the Twilio and Razorpay emulators run in their own "
          "gunicorn at "
          f"nice {emulator_nice}; both endpoints warmed up first; the held and voice rows "
          f"measure service and bare in {SLICES} alternating slices each)")
    print(common.table(
        ["channel", "jobs", "conc", "svc msg/s", "bare msg/s", "ratio", "svc p50", "svc p95",
         "svc p99", "svc fail %", "bare p99", "bare fail %", "turns/s", "drain s",
         "callbacks/s"],
        [[r["channel"], _jobs(r), r["concurrency"], r["service"]["per_second"],
          r["bare"]["per_second"],
          r["ratio"], r["service"]["p50_ms"], r["service"]["p95_ms"], r["service"]["p99_ms"],
          r["service"]["error_pct"], r["bare"]["p99_ms"], r["bare"]["error_pct"],
          r.get("turns", {}).get("per_second", "-"), r.get("turns", {}).get("drain_after_s",
                                                                            "-"),
          r.get("turns", {}).get("status_callbacks_per_s", "-")]
         for r in rows]))
    print("(callbacks/s: the replies' status callbacks the service's web answered during a "
          "draining level, besides the messages it was measured on)")
    print(FAILURES_NOTE)
    uneven = [f"{r['channel']} {r['concurrency']} {side} {'/'.join(map(str, split))}"
              for r in rows for side in ("service", "bare")
              for split in r[side]["connections_per_process"]
              if not loadgen_even(split, WEB_WORKERS)]
    print(f"(every measured part had its connections spread over the {WEB_WORKERS} gunicorn "
          "workers evenly, give or take an eighth)" if not uneven else
          "(connections NOT spread evenly over the gunicorn workers in: " + "; ".join(uneven)
          + ")")
    draining = [r for r in rows if r.get("turns", {}).get("cpu_cores")]
    if draining:
        roles = ("web", "workers", "postgres", "redis", "emulators", "sandbox", "emulator_pg",
                 "loadgen")
        print("\nCPU during the draining levels, in cores (of 2): who takes the cores while "
              "the webhook is measured")
        print(common.table(["conc", *roles, "total"],
                           [[r["concurrency"],
                             *(r["turns"]["cpu_cores"].get(k, "-") for k in roles),
                             round(sum(r["turns"]["cpu_cores"].get(k, 0.0) for k in roles), 2)]
                            for r in draining]))
        print("\nWhere a WhatsApp webhook's time goes while the drain runs, mean ms: in the "
              "app (Flask, first to last line of our code) and as the load generator saw it")
        print(common.table(["conc", "in app", "seen by client", "outside the app",
                            "web's threads waited for a core", "load generator waited",
                            "bare: client", "bare: web waited", "bare: load gen. waited"],
                           [[r["concurrency"], r["turns"]["in_app_mean_ms"],
                             r["service"]["mean_ms"],
                             round(r["service"]["mean_ms"] - r["turns"]["in_app_mean_ms"], 2)
                             if r["turns"]["in_app_mean_ms"] is not None else "-",
                             r["turns"]["core_waits_ms"]["web"],
                             r["turns"]["core_waits_ms"]["loadgen"], r["bare"]["mean_ms"],
                             r["turns"]["core_waits_ms"]["bare_web"],
                             r["turns"]["core_waits_ms"]["bare_loadgen"]]
                            for r in draining]))
    print("\nWhatsApp at fixed rates, each customer a whole booking dialog of "
          f"{len(WA_SCRIPT)} messages: the webhook's answer, and each message until its reply "
          "was written (turn done) and handed to Twilio (sent), ms")
    print(common.table(
        ["msg/s", "customers", "booked", "requests", "web p50", "web p99", "web fail %",
         "turn p50", "turn p99", "sent p50", "sent p95", "sent p99", "replies"],
        [[f["rate"], f["customers"], f["bookings"], f["webhook"]["requests"],
          f["webhook"]["p50_ms"], f["webhook"]["p99_ms"], f["webhook"]["error_pct"],
          f["replies"]["turn_done"]["p50_ms"], f["replies"]["turn_done"]["p99_ms"],
          f["replies"]["sent"]["p50_ms"], f["replies"]["sent"]["p95_ms"],
          f["replies"]["sent"]["p99_ms"], f["replies"]["sent"]["count"]] for f in fixed]))
    print(FAILURES_NOTE + "; turn and sent: over the replies that came (see replies)")
    short = [f"{f['rate']} msg/s: {f['bookings']} of {f['customers']}" for f in fixed
             if f["bookings"] != f["customers"]]
    if short:
        print("(NOT one booking per customer's dialog at " + "; ".join(short) + ")")
    print("\nCPU per WhatsApp message at the fixed rates, ms (user + system, every message "
          "handled and its reply's status callbacks applied); the Twilio and Razorpay "
          "emulators and the status reporter (and their PostgreSQL backends) stand in for "
          "Twilio and Razorpay; postgres: the bench database's backends, redis: the bench's "
          "Redis server (shared with whatever else uses that server)")
    parts = ("web", "workers", "postgres", "redis", "service_total", "emulators", "sandbox",
             "emulator_pg")
    print(common.table(["msg/s", *parts],
                       [[f["rate"], *(f["cpu_ms_per_message"].get(k, "-") for k in parts)]
                        for f in fixed]))
    print("web RSS (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in memory.items()))
    common.save("webhooks", result)
    return result

"""Conversation turns: CPU a turn costs the service, and how it grows with the number of
active Points (village hubs) that every pickup and drop is checked against.

In-process, one fresh interpreter against the bench database: a WhatsApp turn is what a
drain job runs for one message (claim, the dialog in one transaction, the answer stored;
the reply is not sent), over the booking dialog that `webhooks` drives; an IVR turn is a
whole signed `/webhooks/voice` request through Flask's test client, over the keypad booking
that `webhooks` drives. Extra Points lie far from the callers (Karnataka and Kerala), so
every dialog takes the same path at every size. The sizes are measured in turns (the extra
Points are inserted, measured, deleted; the order rotates from one repeat to the next), so
a drift of the machine hits them alike. CPU is counted in the service's process and in
the database's PostgreSQL backends (the scheduler's count in /proc: the server must be on
this machine, as the embedded one is), so work moved into PostgreSQL is not hidden. The
WhatsApp dialog is webhooks' whole booking, so a conversation ends in a booking (its
payment link is a job, not run here).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from bench import common

FAR_NAME = "bench-far-point"


def _child(sizes: list[int], repeats: int, conversations: int, calls: int) -> dict:
    """Run in the child process: {size: {"whatsapp": [ms...], "voice": [ms...]}}."""
    import html
    import random
    import re
    import time

    from sqlalchemy import delete, func, insert, select, text

    from bench.loadgen import Signer
    from bench.webhooks import IVR_DIGITS, WA_TEXTS
    from bots.whatsapp import handle
    from core.adapters.db import autocommit, transaction
    from core.adapters.models import Booking, Point
    from core.app import create_app
    from core.config import get_settings
    from core.services import inbound
    from core.services.inbound import InboundMessage

    app = create_app()
    client = app.test_client()
    base = get_settings().public_base_url.rstrip("/")
    signer = Signer(get_settings().twilio_auth_token, base)
    action = re.compile(r'<Gather[^>]*\baction="([^"]+)"')
    rng = random.Random(5)
    serial = iter(range(10**9))

    def whatsapp_conversation() -> int:
        n = next(serial)
        phone = f"+9172{n:08d}"
        for i, body in enumerate(WA_TEXTS):
            inbound.process(InboundMessage(
                channel="whatsapp", sid=f"SMt{n:08d}{i:03d}", from_addr=f"whatsapp:{phone}",
                to_addr="whatsapp:+14155238886", body=body, contact=phone[1:], phone=phone),
                handle)
        return len(WA_TEXTS)

    def call() -> int:
        n = next(serial)
        form = {"CallSid": f"CAt{n:08d}", "AccountSid": "ACbench", "From": f"+9173{n:08d}",
                "To": "+15005550006", "CallStatus": "in-progress"}
        path, turns = "/webhooks/voice", 0
        for keys in ("", *IVR_DIGITS):
            data = dict(form, Digits=keys) if keys else dict(form)
            r = client.post(path, data=data,
                            headers={"X-Twilio-Signature": signer.sign(path, data)})
            assert r.status_code == 200, r.status_code
            turns += 1
            found = action.search(r.get_data(as_text=True))
            if found is None:
                break
            path = html.unescape(found.group(1)).removeprefix(base)
        return turns

    def database_cpu() -> dict[int, float]:
        """CPU seconds of this database's PostgreSQL backends (a local server), from the
        scheduler's nanoseconds: /proc/<pid>/stat's 10 ms ticks are too coarse for a few
        conversations (a sample of 3 calls is about 0.1 s of a backend's CPU)."""
        with transaction() as s:
            pids = list(s.scalars(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend'")))
        cpu = {}
        for pid in pids:
            ns = common.cpu_ns(pid)
            if ns:  # else not on this machine, or gone
                cpu[pid] = ns / 1e9
        return cpu

    def cpu_ms_per_turn(run, times: int) -> tuple[float, float]:
        """(this process's, PostgreSQL's) CPU ms a turn."""
        db0, t0 = database_cpu(), time.process_time()
        turns = sum(run() for _ in range(times))
        spent, db1 = time.process_time() - t0, database_cpu()
        db = sum(v - db0.get(pid, 0.0) for pid, v in db1.items())
        return spent * 1000 / turns, db * 1000 / turns

    def set_extra_points(n: int) -> int:
        with transaction() as s:
            s.execute(delete(Point).where(Point.name == FAR_NAME))
            if n:
                s.execute(insert(Point), [
                    {"name": FAR_NAME, "lat": rng.uniform(8.5, 15.5),
                     "lng": rng.uniform(74.5, 77.5), "pincode": "560001", "active": True}
                    for _ in range(n)])
        # As autovacuum would soon: the deleted Points' index entries would otherwise be
        # walked by every nearest-Point scan that needs more Points than are left near.
        with autocommit() as conn:
            conn.execute(text("VACUUM ANALYZE points"))
        with transaction() as s:
            return int(s.scalar(select(func.count()).where(Point.active.is_(True))) or 0)

    def bookings() -> int:
        with transaction() as s:
            return int(s.scalar(select(func.count()).select_from(Booking).where(
                Booking.channel == "whatsapp")) or 0)

    # Warm: imports, the pincode index, prepared statements. And the dialog measured must
    # be the booking it claims to be: a conversation makes one.
    before = bookings()
    whatsapp_conversation(), call()
    assert bookings() == before + 1, "the bench's WhatsApp conversation did not book"
    out: dict[str, dict[str, list[float]]] = {}
    for rep in range(repeats):
        # The order rotates, so the growing tables (people, conversations, bookings) do
        # not always meet the largest size last.
        for size in sizes[rep % len(sizes):] + sizes[:rep % len(sizes)]:
            active = set_extra_points(size)
            row = out.setdefault(str(size), {key: [] for key in (
                "whatsapp", "whatsapp_db", "voice", "voice_db", "active")})
            row["active"].append(active)
            for channel, run, times in (("whatsapp", whatsapp_conversation, conversations),
                                        ("voice", call, calls)):
                app_ms, db_ms = cpu_ms_per_turn(run, times)
                row[channel].append(app_ms)
                row[f"{channel}_db"].append(db_ms)
    set_extra_points(0)
    return out


def measure(quick: bool) -> dict[str, object]:
    sizes = [0, 1_000] if quick else [0, 1_000, 10_000]
    repeats, conversations, calls = (1, 4, 3) if quick else (3, 10, 6)
    port = common.free_port()
    env = common.bench_env(port)
    env["APP_ENV"] = "sandbox"
    common.reset_database(env)
    code = ("import json, sys; from bench.turns import _child; "
            f"print(json.dumps(_child({sizes!r}, {repeats}, {conversations}, {calls})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=common.ROOT, env=env, check=True,
                          capture_output=True, text=True)
    samples = json.loads(done.stdout.strip().splitlines()[-1])
    rows, result = [], []
    base: dict[str, float] = {}
    for size in sizes:
        s = samples[str(size)]
        med = {key: statistics.median(s[key]) for key in
               ("whatsapp", "whatsapp_db", "voice", "voice_db")}
        wa, voice = med["whatsapp"] + med["whatsapp_db"], med["voice"] + med["voice_db"]
        base.setdefault("whatsapp", wa)
        base.setdefault("voice", voice)
        result.append({"extra_points": size, "active_points": max(s["active"]),
                       **{f"{key}_cpu_ms": round(v, 2) for key, v in med.items()},
                       "whatsapp_vs_smallest": round(wa / base["whatsapp"], 2),
                       "voice_vs_smallest": round(voice / base["voice"], 2),
                       "samples": s})
        rows.append([max(s["active"]), round(med["whatsapp"], 2), round(med["whatsapp_db"], 2),
                     round(wa / base["whatsapp"], 2), round(med["voice"], 2),
                     round(med["voice_db"], 2), round(voice / base["voice"], 2)])
    print("\nConversation turns in-process: CPU ms a turn in the service's process and in "
          f"PostgreSQL (median of {repeats} samples in turns) against the number of active "
          "Points; x: both together against the smallest")
    print(common.table(["active Points", "WhatsApp ms", "+ PG ms", "x", "IVR ms", "+ PG ms",
                        "x"], rows))
    data = {"quick": quick, "sizes": result, "conversations": conversations, "calls": calls,
            "repeats": repeats}
    common.save("turns", data)
    return data

"""A small loopback load generator for signed Twilio webhooks (asyncio + aiohttp).

Closed loop: N virtual users, each a distinct phone walking its own conversation script,
send as fast as answers come back (throughput at a concurrency). Open loop: requests are
released at a fixed rate and latency is measured from the scheduled send time, so a slow
server cannot hide its queueing (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import html
import itertools
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import aiohttp
import psutil
from twilio.request_validator import RequestValidator

from bench.common import percentile

# A script step: form parameters for one webhook, given the virtual user's number.
Step = Callable[[int, int], dict[str, str]]  # (user, turn) -> params

# Every request's time limit. A request that fails without an answer (a timeout, a refused
# or dropped connection) is counted at this latency in the percentiles: leaving it out
# would make a run that lost requests look faster than one that served them.
TIMEOUT_S = 15.0


@dataclass
class Run:
    """One measurement: a latency for every request sent (a failed one at TIMEOUT_S), the
    answers' statuses, and ``errors``, the requests that got no answer."""

    label: str
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    seconds: float = 0.0
    # Per measured part: its connections as the server's processes took them (see spread).
    splits: list[list[int]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    @property
    def ok(self) -> int:
        """Requests answered 2xx: the messages the server took."""
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def failed(self) -> int:
        """Requests without an answer, or answered with anything but 2xx (a 403 for a
        bad signature, a 429, a 500, a 503)."""
        return self.errors + sum(self.statuses.values()) - self.ok

    def summary(self) -> dict[str, float | int | str]:
        sent = self.count
        return {
            "label": self.label, "concurrency": self.concurrency, "requests": sent,
            "seconds": round(self.seconds, 3),
            "per_second": round(self.ok / self.seconds, 1) if self.seconds else 0.0,
            "mean_ms": round(sum(self.latencies_ms) / self.count, 2) if self.count else 0.0,
            "p50_ms": round(percentile(self.latencies_ms, 50), 2),
            "p95_ms": round(percentile(self.latencies_ms, 95), 2),
            "p99_ms": round(percentile(self.latencies_ms, 99), 2),
            "errors": self.failed,
            "error_pct": round(self.failed / sent * 100, 2) if sent else 0.0,
            "no_answer": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "connections_per_process": self.splits,
        }


def merged(runs: Sequence[Run]) -> Run:
    """Slices of one measurement (taken in turns with another's) as one run."""
    out = Run(runs[0].label, runs[0].concurrency)
    for run in runs:
        out.latencies_ms += run.latencies_ms
        for status, count in run.statuses.items():
            out.statuses[status] = out.statuses.get(status, 0) + count
        out.errors += run.errors
        out.seconds += run.seconds
        out.splits += run.splits
    return out


class Signer:
    def __init__(self, token: str, public_base: str):
        self.validator = RequestValidator(token)
        self.base = public_base.rstrip("/")

    def sign(self, path: str, params: dict[str, str]) -> str:
        return self.validator.compute_signature(self.base + path, params)


async def _send(session: aiohttp.ClientSession, target: str, path: str, params: dict[str, str],
                signer: Signer, run: Run, started: float) -> None:
    headers = {"X-Twilio-Signature": signer.sign(path, params),
               "Content-Type": "application/x-www-form-urlencoded"}
    try:
        async with session.post(target + path, data=urlencode(params), headers=headers) as r:
            await r.read()
            run.statuses[r.status] = run.statuses.get(r.status, 0) + 1
    except (TimeoutError, aiohttp.ClientError):
        run.errors += 1
        run.latencies_ms.append(TIMEOUT_S * 1000)
        return
    run.latencies_ms.append((time.perf_counter() - started) * 1000)


async def open_connections(session: aiohttp.ClientSession, target: str, count: int) -> None:
    """Open (about) ``count`` kept-alive connections with GET /healthz before a clock
    starts: connecting is not what is measured, and a short run would pay it in full."""
    async def ping() -> None:
        async with session.get(target + "/healthz") as r:
            await r.read()

    await asyncio.gather(*(ping() for _ in range(count)))


# A closed loop keeps a few connections, and the kernel gives each to whichever gunicorn
# worker wins the accept: 8 connections landed anywhere from 4/4 to 8/0 on two workers,
# which moved one endpoint's throughput between 1,200 and 2,100 msg/s within one run (one
# worker, one GIL, took the load of both). Twilio's many connections over a day spread
# evenly, so a measured part starts only once its connections do: they are opened again
# until every worker holds its share, give or take an eighth.
SPREAD_TRIES = 40


def _connections(port: int) -> list[int]:
    """This process's connections to ``port`` on loopback, counted by the server process
    holding the other end (fewest first)."""
    ours = {c.laddr.port for c in psutil.Process().net_connections("tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port == port}
    held = Counter(c.pid for c in psutil.net_connections("tcp")
                   if c.pid and c.status == psutil.CONN_ESTABLISHED and c.laddr
                   and c.laddr.port == port and c.raddr and c.raddr.port in ours)
    return sorted(held.values())


def even(split: list[int], processes: int) -> bool:
    return (len(split) == processes
            and split[-1] - split[0] <= max(1, sum(split) // (4 * processes)))


async def spread_session(target: str, count: int, spread_over: int,
                         timeout: aiohttp.ClientTimeout
                         ) -> tuple[aiohttp.ClientSession, list[int]]:
    """A session holding ``count`` open connections to ``target``, spread evenly over the
    server's ``spread_over`` worker processes (0: as the accepts fell); and the split."""
    port = urlsplit(target).port
    for attempt in range(SPREAD_TRIES):
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=count),
                                        timeout=timeout)
        await open_connections(session, target, count)
        if not spread_over:
            return session, []
        split = _connections(port)
        if even(split, spread_over) or attempt == SPREAD_TRIES - 1:
            return session, split
        await session.close()
    raise AssertionError("unreachable")


async def closed_loop(target: str, path: str, script: Sequence[Step], signer: Signer, *,
                      concurrency: int, max_requests: int, max_seconds: float,
                      label: str, user_offset: int = 0, spread_over: int = 0,
                      at_start: Callable[[], None] | None = None) -> Run:
    """Each of ``concurrency`` users sends its script in a loop until a bound is hit;
    ``at_start`` is called when the connections are open, just before the clock starts."""
    run = Run(label, concurrency)
    budget = itertools.count()
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)

    async def user(u: int, session: aiohttp.ClientSession) -> None:
        turn = 0
        while time.perf_counter() < deadline and next(budget) < max_requests:
            params = script[turn % len(script)](user_offset + u, turn)
            await _send(session, target, path, params, signer, run, time.perf_counter())
            turn += 1

    session, split = await spread_session(target, concurrency, spread_over, timeout)
    run.splits.append(split)
    async with session:
        if at_start is not None:
            at_start()
        t0 = time.perf_counter()
        deadline = t0 + max_seconds
        await asyncio.gather(*(user(u, session) for u in range(concurrency)))
        run.seconds = time.perf_counter() - t0
    return run


async def open_loop(target: str, path: str, script: Sequence[Step], signer: Signer, *,
                    rate: float, seconds: float, users: int, label: str,
                    user_offset: int = 0, sent_at: dict[str, float] | None = None) -> Run:
    """Release requests at ``rate`` per second for ``seconds`` from ``users`` phones.

    ``sent_at``, if given, receives each MessageSid's scheduled send time (Unix seconds),
    to measure what happens after the answer (the reply leaving through the outbox).
    """
    run = Run(label, users)
    total = round(rate * seconds)
    turns = [0] * users
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout) as session:
        t0 = time.perf_counter()
        tasks = []
        for i in range(total):
            scheduled = t0 + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the generator, not waiting on the SUT
            u = i % users
            params = script[turns[u] % len(script)](user_offset + u, turns[u])
            turns[u] += 1
            if sent_at is not None and "MessageSid" in params:
                sent_at[params["MessageSid"]] = time.time() + (scheduled - time.perf_counter())
            tasks.append(asyncio.create_task(
                _send(session, target, path, params, signer, run, scheduled)))
        await asyncio.gather(*tasks)
        run.seconds = time.perf_counter() - t0
    return run


def pass_phone(prefix: str, user: int, conversation: int) -> str:
    """The phone of a virtual user's ``conversation``-th walk through its script (E.164, an
    Indian mobile after ``prefix``, "+917" or "+918"): a new customer each time, so every
    walk is a whole first conversation, not a resumed one or a repeat customer's."""
    if not (0 <= user < 100_000 and 0 <= conversation < 10_000):
        raise ValueError(f"user {user} / conversation {conversation} out of the phone plan")
    return f"{prefix}{user:05d}{conversation:04d}"


_ACTION = re.compile(r'<Gather[^>]*\baction="([^"]+)"')


async def ivr_closed_loop(target: str, digits: Sequence[str], signer: Signer, *,
                          concurrency: int, max_requests: int, max_seconds: float,
                          label: str, user_offset: int = 0, spread_over: int = 0) -> Run:
    """Callers walking a keypad script, each turn posted to the action URL that the
    previous TwiML named (as Twilio does); a call that ends is dialled again."""
    run = Run(label, concurrency)
    budget = itertools.count()
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)

    async def caller(u: int, session: aiohttp.ClientSession) -> None:
        call_no = 0
        while time.perf_counter() < deadline:
            call_no += 1
            # Each call a new caller, as the WhatsApp script's passes are new customers: a
            # caller who booked a few times already is refused (too many unpaid bookings).
            params = {"CallSid": f"CAb{user_offset + u:08d}{call_no:05d}",
                      "AccountSid": "ACbench", "From": pass_phone("+918", user_offset + u,
                                                                   call_no),
                      "To": "+15005550006", "CallStatus": "in-progress"}
            path = "/webhooks/voice"
            for keys in ("", *digits):
                if time.perf_counter() >= deadline or next(budget) >= max_requests:
                    return
                form = dict(params, Digits=keys) if keys else dict(params)
                started = time.perf_counter()
                headers = {"X-Twilio-Signature": signer.sign(path, form),
                           "Content-Type": "application/x-www-form-urlencoded"}
                try:
                    async with session.post(target + path, data=urlencode(form),
                                            headers=headers) as r:
                        body = await r.text()
                        run.statuses[r.status] = run.statuses.get(r.status, 0) + 1
                except (aiohttp.ClientError, TimeoutError):
                    run.errors += 1
                    run.latencies_ms.append(TIMEOUT_S * 1000)
                    break
                run.latencies_ms.append((time.perf_counter() - started) * 1000)
                found = _ACTION.search(body)
                if found is None:
                    break  # the call ended
                path = html.unescape(found.group(1)).removeprefix(signer.base)

    session, split = await spread_session(target, concurrency, spread_over, timeout)
    run.splits.append(split)
    async with session:
        t0 = time.perf_counter()
        deadline = t0 + max_seconds
        await asyncio.gather(*(caller(u, session) for u in range(concurrency)))
        run.seconds = time.perf_counter() - t0
    return run

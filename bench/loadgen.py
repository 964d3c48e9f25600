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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp
from twilio.request_validator import RequestValidator

from bench.common import percentile

# A script step: form parameters for one webhook, given the virtual user's number.
Step = Callable[[int, int], dict[str, str]]  # (user, turn) -> params


@dataclass
class Run:
    label: str
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    def summary(self) -> dict[str, float | int | str]:
        return {
            "label": self.label, "concurrency": self.concurrency, "requests": self.count,
            "seconds": round(self.seconds, 3),
            "per_second": round(self.count / self.seconds, 1) if self.seconds else 0.0,
            "mean_ms": round(sum(self.latencies_ms) / self.count, 2) if self.count else 0.0,
            "p50_ms": round(percentile(self.latencies_ms, 50), 2),
            "p95_ms": round(percentile(self.latencies_ms, 95), 2),
            "p99_ms": round(percentile(self.latencies_ms, 99), 2),
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
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
        return
    run.latencies_ms.append((time.perf_counter() - started) * 1000)


async def open_connections(session: aiohttp.ClientSession, target: str, count: int) -> None:
    """Open (about) ``count`` kept-alive connections with GET /healthz before a clock
    starts: connecting is not what is measured, and a short run would pay it in full."""
    async def ping() -> None:
        async with session.get(target + "/healthz") as r:
            await r.read()

    await asyncio.gather(*(ping() for _ in range(count)))


async def closed_loop(target: str, path: str, script: Sequence[Step], signer: Signer, *,
                      concurrency: int, max_requests: int, max_seconds: float,
                      label: str, user_offset: int = 0) -> Run:
    """Each of ``concurrency`` users sends its script in a loop until a bound is hit."""
    run = Run(label, concurrency)
    budget = itertools.count()
    deadline = time.perf_counter() + max_seconds
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=15)

    async def user(u: int, session: aiohttp.ClientSession) -> None:
        turn = 0
        while time.perf_counter() < deadline and next(budget) < max_requests:
            params = script[turn % len(script)](user_offset + u, turn)
            await _send(session, target, path, params, signer, run, time.perf_counter())
            turn += 1

    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        await open_connections(session, target, concurrency)
        t0 = time.perf_counter()
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
    total = int(rate * seconds)
    turns = [0] * users
    timeout = aiohttp.ClientTimeout(total=15)
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


_ACTION = re.compile(r'<Gather[^>]*\baction="([^"]+)"')


async def ivr_closed_loop(target: str, digits: Sequence[str], signer: Signer, *,
                          concurrency: int, max_requests: int, max_seconds: float,
                          label: str, user_offset: int = 0) -> Run:
    """Callers walking a keypad script, each turn posted to the action URL that the
    previous TwiML named (as Twilio does); a call that ends is dialled again."""
    run = Run(label, concurrency)
    budget = itertools.count()
    deadline = time.perf_counter() + max_seconds
    timeout = aiohttp.ClientTimeout(total=15)

    async def caller(u: int, session: aiohttp.ClientSession) -> None:
        call_no = 0
        while time.perf_counter() < deadline:
            call_no += 1
            params = {"CallSid": f"CAb{user_offset + u:08d}{call_no:05d}",
                      "AccountSid": "ACbench", "From": f"+9170{user_offset + u:08d}",
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
                    break
                run.latencies_ms.append((time.perf_counter() - started) * 1000)
                found = _ACTION.search(body)
                if found is None:
                    break  # the call ended
                path = html.unescape(found.group(1))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=timeout) as session:
        await open_connections(session, target, concurrency)
        t0 = time.perf_counter()
        await asyncio.gather(*(caller(u, session) for u in range(concurrency)))
        run.seconds = time.perf_counter() - t0
    return run

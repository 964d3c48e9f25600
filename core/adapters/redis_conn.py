"""Redis connections and the small Redis-backed primitives (rate limits)."""

from __future__ import annotations

import os
import threading
from typing import Any

import redis

from core import clock
from core.config import get_settings

_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}


def redis_client() -> redis.Redis:
    """The shared Redis client for REDIS_URL (bytes in, bytes out; RQ needs that)."""
    url = get_settings().redis_url
    with _lock:
        if url not in _clients:
            _clients[url] = redis.Redis.from_url(
                url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
            )
        return _clients[url]


def redis_down(exc: BaseException) -> bool:
    """Redis cannot serve us now: unreachable, or (after a failover, while it loads its
    data, when full) refusing writes. Not a command error of ours (WRONGTYPE, a script's
    error): retrying those changes nothing."""
    e = redis.exceptions
    if isinstance(exc, e.ConnectionError | e.TimeoutError | e.ReadOnlyError
                  | e.BusyLoadingError | e.OutOfMemoryError | e.MasterDownError
                  | e.TryAgainError):
        return True
    # Codes redis-py has no class for (MISCONF) come as a plain ResponseError that starts
    # with the code; Redis 6.2 reports a refusal inside a script (our accept script on a
    # replica after a failover) as the script's error, the server's own code in its text.
    text = str(exc)
    return isinstance(exc, e.ResponseError) and any(
        text.startswith(f"{code} ") or f"-{code} " in text for code in _AWAY_CODES)


# The error codes of a server that cannot serve us now (as redis_down's classes), and
# MISCONF: a server that cannot save its snapshot refuses every write until it can.
_AWAY_CODES = ("READONLY", "MASTERDOWN", "LOADING", "OOM", "TRYAGAIN", "MISCONF")


# The key /readyz writes to know that Redis takes writes: its own, gone seconds after.
WRITE_PROBE_KEY = "readyz:write-probe"
WRITE_PROBE_TTL_MS = 10_000


def write_state(client: redis.Redis) -> str:
    """"ok" if ``client``'s server takes writes, else what it is; raises what Redis
    refused the write with, or if it does not answer. One round trip: ROLE, as a replica
    whose master is gone still answers it (and PING) while it refuses every write
    (READONLY, MASTERDOWN), and a small SET with a short expiry on a key of its own, as
    a master that is full (maxmemory with noeviction: OOM) or loading answers ROLE too
    and refuses every write."""
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("ROLE")
    pipe.set(WRITE_PROBE_KEY, b"1", px=WRITE_PROBE_TTL_MS)
    pipe.delete(WRITE_PROBE_KEY)  # nothing left behind (the expiry is for a lost DEL)
    role, wrote, _ = pipe.execute(raise_on_error=False)
    if isinstance(role, redis.exceptions.ResponseError):
        if redis_down(role):
            raise role
        role = None  # a proxy or managed service without ROLE: the write tells
    if role is not None:
        name = role[0] if role else b""
        name = name.decode() if isinstance(name, bytes) else str(name)
        if name != "master":
            return f"read_only: {name or 'unknown role'}"  # "slave" (a replica), "sentinel"
    if isinstance(wrote, Exception):
        raise wrote  # OOM, LOADING, READONLY: down (redis_down), as the webhooks see it
    return "ok"


def reset_clients() -> None:
    """Drop cached clients (after a fork, and when tests switch Redis databases)."""
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()


_scripts: dict[str, Any] = {}


def run_script(r: redis.Redis, source: str, keys: list[str], args: list[Any]) -> Any:
    """Run a Lua script on ``r`` by its SHA (computed once per process, not per call)."""
    script = _scripts.get(source)
    if script is None:
        script = _scripts[source] = r.register_script(source)
    return script(keys=keys, args=args, client=r)


def hit_rate_limit(key: str, limit: int, window_s: int) -> tuple[bool, int]:
    """Count one event in a fixed window; return (over_limit, count_so_far)."""
    client = redis_client()
    pipe = client.pipeline()
    full = f"ratelimit:{key}"
    # SET NX EX then INCR: the window starts with the first event (Redis 6.2 has no
    # EXPIRE NX, and the embedded server is 6.2).
    pipe.set(full, 0, ex=window_s, nx=True)
    pipe.incr(full)
    count = int(pipe.execute()[1])
    return count > limit, count


# Sliding windows: each key is the log of its window's events (a sorted set, scored by
# their times in ms). Events as old as the window fall out, so no window of that length
# ever holds more than ``limit`` of them (a fixed window lets twice as many through
# around its end). An event is counted in every window or, if one of them is full, in
# none: a refused try costs nothing, and a window stays at most ``limit`` long. A key
# that is still a fixed window's counter (a string, from before) starts over.
# KEYS: the windows. ARGV: now (ms), the event's unique member, then per key its limit
# and window (ms). Returns 0 (counted), or the ms until every full window has room.
_SLIDING_LUA = """
local now = tonumber(ARGV[1])
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i + 1])
  local window = tonumber(ARGV[2 * i + 2])
  if redis.call('TYPE', key)['ok'] == 'string' then redis.call('DEL', key) end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  if limit < 1 then
    wait = math.max(wait, window)
  elseif count >= limit then
    local oldest = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + window - now, 1)
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[2])
  redis.call('PEXPIRE', key, ARGV[2 * i + 2])
end
return 0
"""


def hit_sliding_limits(rules: list[tuple[str, int, int]]) -> int:
    """Count one event in sliding windows, ``rules`` of (key, limit, window_s), all or
    none: 0 if counted, else the seconds until every window that refused it has room.
    Times are the service clock's (core.clock); the keys are "ratelimit:<key>"."""
    now_ms = int(clock.now().timestamp() * 1000)
    args: list[Any] = [now_ms, f"{now_ms}-{os.urandom(6).hex()}"]
    for _, limit, window_s in rules:
        args += [limit, window_s * 1000]
    wait_ms = int(run_script(redis_client(), _SLIDING_LUA,
                             [f"ratelimit:{key}" for key, _, _ in rules], args))
    return -(-wait_ms // 1000)

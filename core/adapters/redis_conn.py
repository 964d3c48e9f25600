"""Redis connections and the small Redis-backed primitives (rate limits)."""

from __future__ import annotations

import threading
from typing import Any

import redis

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
    # Redis 6.2 reports a refusal inside a script (our accept script on a replica after a
    # failover) as the script's error, the server's own error code in its text.
    return isinstance(exc, e.ResponseError) and any(
        f"-{code} " in str(exc) for code in _AWAY_CODES)


# The error codes of a server that cannot serve us now (as redis_down's classes).
_AWAY_CODES = ("READONLY", "MASTERDOWN", "LOADING", "OOM", "TRYAGAIN")


def write_state(client: redis.Redis) -> str:
    """"ok" if ``client``'s server takes writes (a master), else what it is; raises if
    it does not answer. One ROLE, which a replica whose master is gone still answers, as
    it does PING, while it refuses every write (READONLY, MASTERDOWN)."""
    try:
        role = client.execute_command("ROLE")
    except redis.exceptions.ResponseError as err:
        if redis_down(err):
            raise
        # A proxy or managed service without ROLE: its answering is all we can know.
        client.ping()
        return "ok"
    name = role[0] if role else b""
    name = name.decode() if isinstance(name, bytes) else str(name)
    if name == "master":
        return "ok"
    return f"read_only: {name or 'unknown role'}"  # "slave" (a replica), "sentinel"


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

"""Redis databases shared by the runs on one machine: test runs and benchmarks.

Several runs may share one Redis (developers, helpers, CI, a benchmark): each claims a
database number from 15 down to 1 (0 is ``./run serve``'s) and empties it. The claim is a
key in database 0 holding the claiming process's pid, for 12 hours; a dead owner's claim
is taken over; the claim is given back when the process exits.
"""

from __future__ import annotations

import atexit
import os
from urllib.parse import urlsplit, urlunsplit

SLOTS = range(15, 0, -1)
CLAIM_S = 12 * 3600


def with_db(redis_url: str, n: int) -> str:
    """``redis_url`` pointed at database ``n``."""
    parts = urlsplit(redis_url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}?db={n}"
    return urlunsplit(parts._replace(path=f"/{n}", query=""))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(redis_url: str, what: str = "tests") -> int:
    """Claim a free database number for this process, emptied; RuntimeError if none."""
    import redis

    admin = redis.Redis.from_url(with_db(redis_url, 0))
    me = str(os.getpid())
    for n in SLOTS:
        key = f"ridechain:test-slot:{n}"
        won = bool(admin.set(key, me, nx=True, ex=CLAIM_S))
        if not won:
            owner = admin.get(key)
            if owner is None or _pid_alive(int(owner)):
                continue
            won = admin.getset(key, me) == owner  # the takeover is ours
            if won:
                admin.expire(key, CLAIM_S)
        if won:
            # Ours now: whatever an earlier run (or a stray process) left in it goes.
            redis.Redis.from_url(with_db(redis_url, n)).flushdb()
            atexit.register(admin.delete, key)
            return n
    raise RuntimeError(f"no free Redis database for {what} ({len(SLOTS)} runs at once?)")

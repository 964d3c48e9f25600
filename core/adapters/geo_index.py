"""Where partners are, in Redis GEO sets, for "who is near this pickup".

Two sets:

* ``dispatch:geo:live`` — positions sent by the partner app, each with the time it was
  seen (``dispatch:geo:seen``); a position older than the freshness limit is ignored.
* ``dispatch:geo:home`` — SMS-only partners (no app, so no live position) placed at their
  home Point. Rebuilt from PostgreSQL when its marker key has expired, so a flushed or
  restarted Redis heals itself within minutes.

A partner with a fresh live position is found there; a partner without one is found at
home only if they have no app. Duty, vehicle and the rest are checked in PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from core.adapters.redis_conn import redis_client

LIVE_KEY = "dispatch:geo:live"
SEEN_KEY = "dispatch:geo:seen"
HOME_KEY = "dispatch:geo:home"
APP_KEY = "dispatch:geo:has_app"
HOME_BUILT_KEY = "dispatch:geo:home:built"
HOME_REBUILD_S = 300


@dataclass(frozen=True)
class Nearby:
    partner_id: int
    distance_m: int
    source: str  # "live" or "home"


def update_location(partner_id: int, lat: float, lng: float, at: datetime) -> None:
    """Record a live position (from the partner app) seen at ``at``."""
    pipe = redis_client().pipeline()
    pipe.geoadd(LIVE_KEY, (lng, lat, str(partner_id)))
    pipe.hset(SEEN_KEY, str(partner_id), int(at.timestamp()))
    pipe.sadd(APP_KEY, str(partner_id))
    pipe.execute()


def place_at_home(partner_id: int, lat: float, lng: float, *, has_app: bool) -> None:
    """Put a partner at their home Point (used for SMS-only partners)."""
    pipe = redis_client().pipeline()
    pipe.geoadd(HOME_KEY, (lng, lat, str(partner_id)))
    if has_app:
        pipe.sadd(APP_KEY, str(partner_id))
    else:
        pipe.srem(APP_KEY, str(partner_id))
    pipe.execute()


def remove(partner_id: int) -> None:
    """Forget a partner's positions (they went off duty or left)."""
    pipe = redis_client().pipeline()
    pipe.zrem(LIVE_KEY, str(partner_id))
    pipe.zrem(HOME_KEY, str(partner_id))
    pipe.hdel(SEEN_KEY, str(partner_id))
    pipe.execute()


def ensure_homes(load: Callable[[], Iterable[tuple[int, float, float, bool]]]) -> bool:
    """Rebuild the home set from ``load()`` (partner id, lat, lng, has_app) unless it was
    rebuilt within HOME_REBUILD_S; True if it rebuilt."""
    r = redis_client()
    if not r.set(HOME_BUILT_KEY, 1, nx=True, ex=HOME_REBUILD_S):
        return False
    rows = list(load())
    pipe = r.pipeline()
    pipe.delete(HOME_KEY)
    for partner_id, lat, lng, has_app in rows:
        pipe.geoadd(HOME_KEY, (lng, lat, str(partner_id)))
        if has_app:
            pipe.sadd(APP_KEY, str(partner_id))
    pipe.execute()
    return True


def invalidate_homes() -> None:
    """Make the next search rebuild the home set (after partners or Points change)."""
    redis_client().delete(HOME_BUILT_KEY)


def _parse(rows: list) -> list[tuple[int, int]]:
    out = []
    for member, dist_km in rows:
        name = member.decode() if isinstance(member, bytes) else str(member)
        out.append((int(name), int(round(float(dist_km) * 1000))))
    return out


def nearby(lat: float, lng: float, radius_km: float, *, max_age_s: int,
           now: datetime, limit: int | None = None) -> list[Nearby]:
    """Partners within ``radius_km`` of a point, nearest first, one entry per partner.

    Two round trips: both searches together, then freshness and app flags together. With
    ``limit``, Redis returns only the nearest few (three times the limit, room for stale
    positions); if that was not enough after the freshness check, search again in full.
    """
    r = redis_client()
    fetch = limit * 3 if limit else None
    pipe = r.pipeline(transaction=False)
    for key in (LIVE_KEY, HOME_KEY):
        pipe.geosearch(key, longitude=lng, latitude=lat, radius=radius_km, unit="km",
                       withdist=True, sort="ASC", count=fetch)
    live_rows, home_rows = pipe.execute()
    live, homes = _parse(live_rows), _parse(home_rows)
    found: dict[int, Nearby] = {}
    if not live and not homes:
        return []
    pipe = r.pipeline(transaction=False)
    if live:
        pipe.hmget(SEEN_KEY, [str(pid) for pid, _ in live])
    if homes:
        pipe.smismember(APP_KEY, [str(pid) for pid, _ in homes])
    answers = iter(pipe.execute())
    if live:
        seen = next(answers)
        cutoff = now.timestamp() - max_age_s
        for (pid, dist), ts in zip(live, seen, strict=True):
            if ts is not None and float(ts) >= cutoff:
                found[pid] = Nearby(pid, dist, "live")
    if homes:
        app_flags = next(answers)
        for (pid, dist), has_app in zip(homes, app_flags, strict=True):
            if pid not in found and not has_app:
                found[pid] = Nearby(pid, dist, "home")
    truncated = fetch is not None and (len(live) == fetch or len(homes) == fetch)
    if truncated and limit is not None and len(found) < limit:
        return nearby(lat, lng, radius_km, max_age_s=max_age_s, now=now)
    return sorted(found.values(), key=lambda n: (n.distance_m, n.partner_id))

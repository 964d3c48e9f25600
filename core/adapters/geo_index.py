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

from core.adapters.redis_conn import redis_client, run_script

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


# Both searches, the freshness of live positions and the app flag of home ones, in one
# round trip; answers [live found, homes found, id, metres, source, id, metres, ...] with
# only the usable entries (fresh live positions, homes of partners without the app).
_NEARBY_LUA = """
local function search(key)
  if tonumber(ARGV[4]) > 0 then
    return redis.call('GEOSEARCH', key, 'FROMLONLAT', ARGV[1], ARGV[2], 'BYRADIUS',
                      ARGV[3], 'km', 'ASC', 'COUNT', ARGV[4], 'WITHDIST')
  end
  return redis.call('GEOSEARCH', key, 'FROMLONLAT', ARGV[1], ARGV[2], 'BYRADIUS',
                    ARGV[3], 'km', 'ASC', 'WITHDIST')
end
local live, homes = search(KEYS[1]), search(KEYS[3])
local out = {#live, #homes}
local cutoff = tonumber(ARGV[5])
for first = 1, #live, 1000 do  -- in chunks: unpack() has a limit
  local ids = {}
  for i = first, math.min(first + 999, #live) do ids[#ids + 1] = live[i][1] end
  local seen = redis.call('HMGET', KEYS[2], unpack(ids))
  for j = 1, #ids do
    local ts = seen[j]
    if ts and tonumber(ts) >= cutoff then
      local row = live[first + j - 1]
      out[#out + 1] = row[1]; out[#out + 1] = row[2]; out[#out + 1] = 'l'
    end
  end
end
for _, row in ipairs(homes) do
  if redis.call('SISMEMBER', KEYS[4], row[1]) == 0 then
    out[#out + 1] = row[1]; out[#out + 1] = row[2]; out[#out + 1] = 'h'
  end
end
return out
"""


def nearby(lat: float, lng: float, radius_km: float, *, max_age_s: int,
           now: datetime, limit: int | None = None) -> list[Nearby]:
    """Partners within ``radius_km`` of a point, nearest first, one entry per partner.

    One round trip (a script: both searches, then freshness and app flags). With
    ``limit``, Redis returns only the nearest few (three times the limit, room for stale
    positions); if that was not enough after the freshness check, search again in full.
    """
    fetch = limit * 3 if limit else 0
    answer = run_script(redis_client(), _NEARBY_LUA,
                        [LIVE_KEY, SEEN_KEY, HOME_KEY, APP_KEY],
                        [lng, lat, radius_km, fetch, now.timestamp() - max_age_s])
    live_n, home_n = int(answer[0]), int(answer[1])
    found: dict[int, Nearby] = {}
    for i in range(2, len(answer), 3):
        pid = int(answer[i])
        if pid not in found:  # a fresh live position comes first and wins over home
            source = "live" if answer[i + 2] in (b"l", "l") else "home"
            found[pid] = Nearby(pid, int(round(float(answer[i + 1]) * 1000)), source)
    truncated = fetch > 0 and (live_n == fetch or home_n == fetch)
    if truncated and limit is not None and len(found) < limit:
        return nearby(lat, lng, radius_km, max_age_s=max_age_s, now=now)
    return sorted(found.values(), key=lambda n: (n.distance_m, n.partner_id))

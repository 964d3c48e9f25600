"""Where partners are, in Redis GEO sets, for "who is near this pickup".

The sets:

* ``dispatch:geo:live`` — positions sent by the partner app, each with the time it was
  seen (``dispatch:geo:seen``); a position older than the freshness limit is ignored.
* ``dispatch:geo:has_app`` — partners whose profile says they have the app (kept by
  ``place_at_home`` and rebuilt with the home set); a live position does not add to it.
* ``dispatch:geo:home`` — SMS-only partners (no app, so no live position) placed at their
  home Point while they are on duty (ON places them, OFF or a suspension takes them out).
  Rebuilt from PostgreSQL (partners on duty) when its marker key has expired, so a flushed
  or restarted Redis heals itself within minutes.

A partner with a fresh live position is found there and only there (never at home, even
when that position is outside the search radius); a partner without one is found at
home only if they have no app. Duty, vehicle and the rest come from PostgreSQL, cached
here per partner (``FACTS_KEY``, see "cached eligibility facts" below) so that a search
near partners whose rows did not change makes no database round trip.
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
FACTS_KEY = "dispatch:facts"  # partner id -> packed eligibility facts (see below)
FACTS_GEN_KEY = "dispatch:facts:gen"  # partner id -> generation, bumped on each change


@dataclass(frozen=True)
class Nearby:
    partner_id: int
    distance_m: int
    source: str  # "live" or "home"
    facts: str | None = None  # cached facts (with_facts), None when not cached
    gen: int = 0  # their generation, for storing them after a database read


def update_location(partner_id: int, lat: float, lng: float, at: datetime) -> None:
    """Record a live position (from the partner app) seen at ``at``."""
    pipe = redis_client().pipeline()
    pipe.geoadd(LIVE_KEY, (lng, lat, str(partner_id)))
    pipe.hset(SEEN_KEY, str(partner_id), int(at.timestamp()))
    # Not into APP_KEY: whether a partner has the app is their profile's word
    # (place_at_home, the home rebuild), not a position's. An SMS partner who tried the
    # app once is still found at home once that position is stale.
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


def remove_home(partner_id: int) -> None:
    """Take a partner out of the home set (they went off duty): a busy Point where many
    partners live then holds only those who may be offered a job."""
    redis_client().zrem(HOME_KEY, str(partner_id))


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
    _rebuild_homes(load())
    return True


def _rebuild_homes(rows: Iterable[tuple[int, float, float, bool]]) -> None:
    pipe = redis_client().pipeline()
    pipe.delete(HOME_KEY)
    pipe.delete(APP_KEY)  # rebuilt from the profiles too: a flag turned off heals here
    for partner_id, lat, lng, has_app in rows:
        pipe.geoadd(HOME_KEY, (lng, lat, str(partner_id)))
        if has_app:
            pipe.sadd(APP_KEY, str(partner_id))
    pipe.execute()


def invalidate_homes() -> None:
    """Make the next search rebuild the home set (after partners or Points change)."""
    redis_client().delete(HOME_BUILT_KEY)


# Both searches, the freshness of live positions and the app flag of home ones, in one
# round trip. Answers [live found, homes found, then per usable entry: id, metres, source,
# facts, generation], nearest first per source: fresh live positions, homes of partners
# without the app, at most ARGV[6] of each (0: all). Facts and generation are the cached
# eligibility facts (KEYS[5]) and their generation (KEYS[6]), when ARGV[7] is 1.
# A home entry of a partner with a fresh live position is left out even when that
# position is outside the radius: he is there, not at home.
# With a home marker key (KEYS[7]) the script first claims the home set's rebuild: the
# answer is {-1} when the caller must rebuild it and ask again.
_NEARBY_LUA = """
if #KEYS >= 7 and redis.call('SET', KEYS[7], 1, 'NX', 'EX', ARGV[8]) then
  return {-1}
end
local function search(key)
  if tonumber(ARGV[4]) > 0 then
    return redis.call('GEOSEARCH', key, 'FROMLONLAT', ARGV[1], ARGV[2], 'BYRADIUS',
                      ARGV[3], 'km', 'ASC', 'COUNT', ARGV[4], 'WITHDIST')
  end
  return redis.call('GEOSEARCH', key, 'FROMLONLAT', ARGV[1], ARGV[2], 'BYRADIUS',
                    ARGV[3], 'km', 'ASC', 'WITHDIST')
end
local keep = tonumber(ARGV[6])
if keep <= 0 then keep = math.huge end
local live, homes = search(KEYS[1]), search(KEYS[3])
local out = {#live, #homes}
local ids = {}
local cutoff = tonumber(ARGV[5])
local kept = 0
for first = 1, #live, 1000 do  -- in chunks: unpack() has a limit
  if kept >= keep then break end
  local chunk = {}
  for i = first, math.min(first + 999, #live) do chunk[#chunk + 1] = live[i][1] end
  local seen = redis.call('HMGET', KEYS[2], unpack(chunk))
  for j = 1, #chunk do
    local ts = seen[j]
    if ts and tonumber(ts) >= cutoff then
      local row = live[first + j - 1]
      out[#out + 1] = row[1]; out[#out + 1] = row[2]; out[#out + 1] = 'l'
      out[#out + 1] = false; out[#out + 1] = false
      ids[#ids + 1] = row[1]
      kept = kept + 1
      if kept >= keep then break end
    end
  end
end
kept = 0
for _, row in ipairs(homes) do
  if kept >= keep then break end
  -- A partner whose app sent a fresh position is where that says, inside the radius or
  -- not (then the live search found him, or he is too far): never at home as well.
  local ts = redis.call('HGET', KEYS[2], row[1])
  if (not ts or tonumber(ts) < cutoff)
     and redis.call('SISMEMBER', KEYS[4], row[1]) == 0 then
    out[#out + 1] = row[1]; out[#out + 1] = row[2]; out[#out + 1] = 'h'
    out[#out + 1] = false; out[#out + 1] = false
    ids[#ids + 1] = row[1]
    kept = kept + 1
  end
end
if ARGV[7] == '1' then
  for first = 1, #ids, 1000 do
    local chunk = {}
    for i = first, math.min(first + 999, #ids) do chunk[#chunk + 1] = ids[i] end
    local facts = redis.call('HMGET', KEYS[5], unpack(chunk))
    local gens = redis.call('HMGET', KEYS[6], unpack(chunk))
    for j = 1, #chunk do
      local at = 2 + (first + j - 2) * 5
      out[at + 4] = facts[j]; out[at + 5] = gens[j]
    end
  end
end
return out
"""


def nearby(lat: float, lng: float, radius_km: float, *, max_age_s: int,
           now: datetime, limit: int | None = None, with_facts: bool = False,
           homes: Callable[[], Iterable[tuple[int, float, float, bool]]] | None = None,
           ) -> list[Nearby]:
    """Partners within ``radius_km`` of a point, nearest first, one entry per partner.

    One round trip (a script: both searches, then freshness and app flags). With
    ``limit``, Redis looks at only the nearest few (three times the limit, room for stale
    positions) and answers at most ``limit`` usable ones of each set; if that was not
    enough after the freshness check, search again in full. ``with_facts`` brings each
    partner's cached facts (see ``cached_facts``) in the same round trip. With ``homes``
    (a loader as for ``ensure_homes``) the same round trip also finds out whether the home
    set is due to be rebuilt.
    """
    return nearby_capped(lat, lng, radius_km, max_age_s=max_age_s, now=now, limit=limit,
                         with_facts=with_facts, homes=homes)[0]


def nearby_capped(lat: float, lng: float, radius_km: float, *, max_age_s: int,
                  now: datetime, limit: int | None = None, with_facts: bool = False,
                  homes: Callable[[], Iterable[tuple[int, float, float, bool]]] | None = None,
                  ) -> tuple[list[Nearby], bool]:
    """``nearby``, and whether ``limit`` may have left out partners within the radius (a
    set gave ``limit`` usable entries, or Redis looked at only the nearest of a set): a
    caller that finds too few of them fit can ask again with a larger limit."""
    fetch = limit * 3 if limit else 0
    keys = [LIVE_KEY, SEEN_KEY, HOME_KEY, APP_KEY, FACTS_KEY, FACTS_GEN_KEY]
    if homes is not None:
        keys.append(HOME_BUILT_KEY)
    args = [lng, lat, radius_km, fetch, now.timestamp() - max_age_s, limit or 0,
            1 if with_facts else 0, HOME_REBUILD_S]
    answer = run_script(redis_client(), _NEARBY_LUA, keys, args)
    if homes is not None and int(answer[0]) == -1:
        _rebuild_homes(homes())
        answer = run_script(redis_client(), _NEARBY_LUA, keys[:6], args)
    live_n, home_n = int(answer[0]), int(answer[1])
    found: dict[int, Nearby] = {}
    kept = {"live": 0, "home": 0}
    for i in range(2, len(answer), 5):
        pid = int(answer[i])
        source = "live" if answer[i + 2] in (b"l", "l") else "home"
        kept[source] += 1
        if pid not in found:  # a fresh live position comes first and wins over home
            facts, gen = answer[i + 3], answer[i + 4]
            found[pid] = Nearby(pid, int(round(float(answer[i + 1]) * 1000)), source,
                                facts.decode() if isinstance(facts, bytes) else facts,
                                int(gen) if gen else 0)
    truncated = fetch > 0 and (live_n == fetch or home_n == fetch)
    if truncated and limit is not None and len(found) < limit:
        return nearby_capped(lat, lng, radius_km, max_age_s=max_age_s, now=now,
                             with_facts=with_facts)
    capped = limit is not None and (truncated or max(kept.values()) >= limit)
    return sorted(found.values(), key=lambda n: (n.distance_m, n.partner_id)), capped


# --- cached eligibility facts ---------------------------------------------------------
# Dispatch keeps each partner's eligibility and ranking facts (PostgreSQL's, packed by
# core.services.dispatch) in FACTS_KEY, so a search needs no database round trip when
# nothing about its partners changed. PostgreSQL stays the truth:
#
# * every committed change to a partner, their vehicles or their legs bumps the
#   partner's generation and drops the cached facts (core.adapters.facts_watch);
# * a search that reads the database for missing facts stores them only if the
#   generation it saw before reading is still current, so facts read before a change
#   committed never overwrite the change's invalidation;
# * the packed facts carry when they were read, and readers ignore old ones (a change
#   made outside the application, by hand in psql, heals within that age).

_STORE_FACTS_LUA = """
for i = 1, #ARGV, 3 do
  local gen = redis.call('HGET', KEYS[2], ARGV[i]) or '0'
  if gen == ARGV[i + 1] then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2]) end
end
return 1
"""


def store_facts(entries: Iterable[tuple[int, int, str]]) -> None:
    """Cache packed facts: (partner id, generation seen before reading them, facts)."""
    args: list[object] = []
    for partner_id, gen, packed in entries:
        args += [partner_id, gen, packed]
    if args:
        run_script(redis_client(), _STORE_FACTS_LUA, [FACTS_KEY, FACTS_GEN_KEY], args)


def invalidate_facts(partner_ids: Iterable[int]) -> None:
    """Drop these partners' cached facts and bump their generation (atomically)."""
    ids = sorted({int(p) for p in partner_ids})
    if not ids:
        return
    pipe = redis_client().pipeline(transaction=True)
    for pid in ids:
        pipe.hincrby(FACTS_GEN_KEY, str(pid), 1)
    pipe.hdel(FACTS_KEY, *[str(p) for p in ids])
    pipe.execute()

"""Matching: time to rank the candidates for a leg among 1k / 10k / 100k on-duty partners
with live positions in Redis GEO, against a raw GEOSEARCH of the same radius (ratio).

Partners are spread evenly over a 100 km x 100 km rural district around Bettiah; the
pickup is in the middle; the radius is dispatch's first step. The product path is
core.services.dispatch.find_candidates: GEOSEARCH of live and home positions, freshness
and the nearest partners' cached eligibility facts in one Redis script, PostgreSQL for
the facts not cached, and the documented score. Timed with every fact cached (the steady
state), with a few partners changed since the last search, and with nothing cached.
"""

from __future__ import annotations

import random
import statistics
import time
from datetime import UTC, datetime

from sqlalchemy import text

from bench import common

CENTRE = (26.80228, 84.51522)
SPAN_DEG = 0.9  # about 100 km in each direction at this latitude
# Partners whose facts changed between two searches in the middle row (a batch of offers
# touches a few: each offer counts on the partner's offers received).
CHANGED = 5

PARTNERS_SQL = """
INSERT INTO people (id, phone, role, opted_out)
  SELECT 1000 + g, '+9172' || lpad(g::text, 8, '0'), 'partner', false
  FROM generate_series(CAST(:a AS int), CAST(:b AS int)) g;
INSERT INTO partner_profiles (id, person_id, first_name, on_duty, has_app, rating_x100,
    offers_received, offers_accepted, trust_tier, max_active_legs, kyc_status,
    payout_account_id)
  SELECT g, 1000 + g, 'P' || g, true, true, 300 + (g * 7) % 200, 10 + g % 20, g % 10, 1 + g % 3,
    2, 'verified', 'acc_bench' || lpad(g::text, 8, '0')
  FROM generate_series(CAST(:a AS int), CAST(:b AS int)) g;
INSERT INTO vehicles (partner_id, type, payload_kg, max_size, active)
  SELECT g, (ARRAY['bicycle','motorcycle','e_rickshaw','auto','pickup','cart'])[1 + g % 6],
    (ARRAY[20, 20, 150, 180, 700, 300])[1 + g % 6],
    (ARRAY['box','box','sack','sack','vehicle','vehicle'])[1 + g % 6], true
  FROM generate_series(CAST(:a AS int), CAST(:b AS int)) g
"""


def _grow(engine, redis, have: int, want: int, rng: random.Random) -> None:
    """Add partners have+1..want: rows in PostgreSQL and live positions in Redis GEO."""
    from core.adapters import geo_index

    with engine.begin() as conn:
        for stmt in PARTNERS_SQL.split(";\n"):
            conn.execute(text(stmt), {"a": have + 1, "b": want})
    now = int(time.time())
    pipe = redis.pipeline(transaction=False)
    for pid in range(have + 1, want + 1):
        lat = CENTRE[0] + rng.uniform(-SPAN_DEG / 2, SPAN_DEG / 2)
        lng = CENTRE[1] + rng.uniform(-SPAN_DEG / 2, SPAN_DEG / 2)
        pipe.geoadd(geo_index.LIVE_KEY, (lng, lat, str(pid)))
        pipe.hset(geo_index.SEEN_KEY, str(pid), now)
        pipe.sadd(geo_index.APP_KEY, str(pid))
        if pid % 5000 == 0:
            pipe.execute()
    pipe.execute()


def _medians(variants: dict[str, tuple], repeat: int) -> dict[str, float]:
    """Median ms of each variant's ``run``, sampled in turns (so a drift of the machine
    hits every variant alike); each variant's ``before`` runs first, untimed."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for before, run in variants.values():  # warm caches and connections
        before()
        run()
    for _ in range(repeat):
        for name, (before, run) in variants.items():
            before()
            t0 = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) * 1000 for name, v in samples.items()}


def measure(quick: bool) -> dict[str, object]:
    env = common.bench_env(common.free_port())
    common.reset_database(env)
    with common.pointed_at(env):
        return _measure(quick)


def _measure(quick: bool) -> dict[str, object]:
    from core.adapters import db, geo_index
    from core.adapters.redis_conn import redis_client
    from core.domain import dispatch as rules
    from core.services import dispatch

    db.wipe_all_tables()
    r = redis_client()
    r.flushdb()
    r.set(geo_index.HOME_BUILT_KEY, 1)  # every bench partner has the app: no home set
    cfg = dispatch.config()
    radius = cfg.radii_km[0]
    load = rules.Load("bag", "w5", 0)
    repeat = 30 if quick else 200
    rng = random.Random(7)
    pick = random.Random(11)  # its own: the partners' layout stays that of rng alone
    rows, have = [], 0
    for n in (1_000, 10_000, 100_000):
        _grow(db.engine(), r, have, n, rng)
        have = n
        with db.autocommit() as conn:
            # Its own transaction: inside connect()'s, the statistics rolled back unseen
            # and the planner guessed 500 vehicles per partner.
            conn.execute(text("ANALYZE"))

        def rank() -> None:
            with db.transaction() as session:
                dispatch.find_candidates(session, CENTRE[0], CENTRE[1], load, radius)

        def raw() -> None:
            r.geosearch(geo_index.LIVE_KEY, longitude=CENTRE[1], latitude=CENTRE[0],
                        radius=radius, unit="km", withdist=True, sort="ASC")

        in_radius = len(r.geosearch(geo_index.LIVE_KEY, longitude=CENTRE[1],
                                    latitude=CENTRE[0], radius=radius, unit="km"))
        with db.transaction() as session:
            ranked = dispatch.find_candidates(session, CENTRE[0], CENTRE[1], load, radius)
        # Partners nobody may offer a job to would time a search that ranks nothing: the
        # bench's partners must be ones dispatch takes (on duty, payable, a fitting vehicle).
        assert ranked or not in_radius, "no partner in the radius is a candidate"
        examined = [n.partner_id for n in geo_index.nearby(
            CENTRE[0], CENTRE[1], radius, max_age_s=cfg.location_max_age_s,
            now=datetime.now(UTC), limit=cfg.max_candidates * 3)]
        changed = min(CHANGED, len(examined))

        def nothing() -> None:
            pass

        def some_changed(examined: list[int] = examined, changed: int = changed) -> None:
            # What a commit touching these partners leaves behind (facts_watch).
            geo_index.invalidate_facts(pick.sample(examined, changed))

        def none_cached() -> None:
            r.delete(geo_index.FACTS_KEY)

        ms = _medians({"raw": (nothing, raw), "cached": (nothing, rank),
                       "some": (some_changed, rank), "cold": (none_cached, rank)}, repeat)
        rows.append({"partners": n, "in_radius": in_radius, "ranked": len(ranked),
                     "examined": len(examined), "changed": changed,
                     "rank_ms": round(ms["cached"], 3), "geosearch_ms": round(ms["raw"], 3),
                     "ratio": round(ms["cached"] / ms["raw"], 2),
                     "rank_some_changed_ms": round(ms["some"], 3),
                     "ratio_some_changed": round(ms["some"] / ms["raw"], 2),
                     "rank_uncached_ms": round(ms["cold"], 3),
                     "ratio_uncached": round(ms["cold"] / ms["raw"], 2)})
    db.dispose_all()
    print(f"\nMatching: rank candidates within {radius} km vs raw GEOSEARCH (median of "
          f"{repeat}, sampled in turns); the partners' facts all cached (the steady "
          f"state), some of the examined partners changed since the last search ({CHANGED}, or "
          "all of them where fewer are examined; one database round trip for theirs), none "
          "cached (every fact from PostgreSQL)")
    print(common.table(
        ["partners", "in radius", "examined", "ranked", "GEOSEARCH ms", "cached ms", "x",
         "changed", "some changed ms", "x", "uncached ms", "x"],
        [[x["partners"], x["in_radius"], x["examined"], x["ranked"], x["geosearch_ms"],
          x["rank_ms"], x["ratio"], f"{x['changed']} of {x['examined']}",
          x["rank_some_changed_ms"], x["ratio_some_changed"],
          x["rank_uncached_ms"], x["ratio_uncached"]] for x in rows]))
    result = {"radius_km": radius, "sizes": rows, "quick": quick}
    common.save("matching", result)
    return result

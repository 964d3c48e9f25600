"""Dispatch's cached partner facts: a search asks PostgreSQL only for what is not cached,
and every committed change to a partner, a vehicle or a leg reaches the next search.

Real PostgreSQL and Redis; statements are counted on the engine; time is frozen.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, select

from core import clock
from core.adapters import db, geo_index
from core.adapters.db import transaction
from core.adapters.models import Leg, PartnerProfile, Vehicle
from core.adapters.redis_conn import redis_client
from core.domain import dispatch as rules
from core.domain.booking import Actor, LegStatus
from core.domain.pricing import SizeBucket, WeightBucket
from core.services import dispatch
from core.services.booking import move_leg
from tests.test_dispatch import LAXMIPUR, T0, make_partner, paid_booking

pytestmark = pytest.mark.db
ROOT = Path(__file__).resolve().parent.parent
LOAD = rules.Load(SizeBucket.BAG, WeightBucket.W5, 0)


@pytest.fixture
def frozen(clean_db: None) -> Iterator[None]:
    clock.freeze(T0)
    yield
    clock.freeze(None)


@contextmanager
def statements() -> Iterator[list[str]]:
    """The SQL statements run on the engine inside the block."""
    seen: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        seen.append(statement)

    engine = db.engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def partner_near(name: str, metres_east: int, **kw) -> int:  # noqa: ANN003
    """A partner with the app and a fresh live position ``metres_east`` of Laxmipur."""
    pid, _ = make_partner(name, LAXMIPUR, has_app=True, **kw)
    geo_index.update_location(pid, LAXMIPUR[0], LAXMIPUR[1] + metres_east / 100_000,
                              clock.now())
    return pid


def search() -> list[dispatch.Ranked]:
    with transaction() as s:
        return dispatch.find_candidates(s, *LAXMIPUR, LOAD, 3)


def ids(ranked: list[dispatch.Ranked]) -> list[int]:
    return [r.candidate.partner_id for r in ranked]


def cached(pid: int) -> str | None:
    raw = redis_client().hget(geo_index.FACTS_KEY, str(pid))
    return raw.decode() if raw is not None else None


def test_a_second_search_asks_only_redis(frozen):
    a, b = partner_near("Ramesh", 100), partner_near("Suresh", 300)
    with statements() as first:
        assert ids(search()) == [a, b]
    assert first  # the facts came from PostgreSQL once
    assert cached(a) and cached(b)
    with statements() as second:
        again = search()
    assert second == []
    assert ids(again) == [a, b]
    assert [r.score for r in again] == [r.score for r in search()]


def _off_duty(s, pid: int) -> None:
    s.get(PartnerProfile, pid).on_duty = False


def _vehicle_retired(s, pid: int) -> None:
    s.scalar(select(Vehicle).where(Vehicle.partner_id == pid)).active = False


def _vehicle_deleted(s, pid: int) -> None:
    s.delete(s.scalar(select(Vehicle).where(Vehicle.partner_id == pid)))


def _leg_assigned(s, pid: int) -> None:
    booking_id = paid_booking()
    leg = s.scalar(select(Leg).where(Leg.booking_id == booking_id))
    leg.partner_id, leg.status = pid, LegStatus.ASSIGNED.value


def test_legs_delivered_before_migration_0013_take_their_delivery_time(frozen):
    import importlib.util

    from sqlalchemy import text

    spec = importlib.util.spec_from_file_location(
        "m0013", ROOT / "migrations" / "versions" / "0013_legs_delivered_at.py")
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    a = partner_near("Ramesh", 100)
    deliver_for(a, T0 - timedelta(days=1))
    with transaction() as s:  # as the leg was before the column existed
        leg = s.scalar(select(Leg).where(Leg.partner_id == a))
        leg.delivered_at, leg.pod_photo_url = None, "https://example.test/pod.jpg"
    with transaction() as s:
        s.execute(text(migration.BACKFILL))
    with transaction() as s:
        assert s.scalar(select(Leg.delivered_at).where(Leg.partner_id == a)) == \
            T0 - timedelta(days=1)


@pytest.mark.parametrize("change", [_off_duty, _vehicle_retired, _vehicle_deleted,
                                    _leg_assigned])
def test_a_committed_change_reaches_the_next_search(frozen, change):
    a = partner_near("Ramesh", 100, max_active_legs=1)
    b = partner_near("Suresh", 300)
    assert ids(search()) == [a, b]
    with transaction() as s:
        change(s, a)
    assert cached(a) is None and cached(b)
    with statements() as seen:
        assert ids(search()) == [b]
    assert len(seen) == 1  # only the changed partner's facts were read again


def deliver_for(partner_id: int, at) -> int:  # noqa: ANN001
    """A leg of a new booking delivered by ``partner_id`` at ``at``; its payout."""
    booking_id = paid_booking()
    clock.freeze(at)
    with transaction() as s:
        leg = s.scalar(select(Leg).where(Leg.booking_id == booking_id))
        leg.partner_id = partner_id
        for to in (LegStatus.OFFERING, LegStatus.ASSIGNED, LegStatus.PICKED_UP,
                   LegStatus.DELIVERED):
            move_leg(s, leg, to, Actor.system(), "test")
        payout = leg.payout_paise
    clock.freeze(T0)
    assert payout > 0
    return payout


def test_earnings_today_and_offers_made_reach_the_ranking(frozen):
    a = partner_near("Ramesh", 100)
    assert search()[0].candidate.earned_today_paise == 0
    # Delivered yesterday (India's day), its photo sent just now: not today's earnings.
    deliver_for(a, T0 - timedelta(days=1))
    with transaction() as s:
        leg = s.scalar(select(Leg).where(Leg.partner_id == a))
        leg.pod_photo_url = "https://example.test/pod.jpg"
    assert search()[0].candidate.earned_today_paise == 0
    payout = deliver_for(a, T0 - timedelta(minutes=5))
    assert search()[0].candidate.earned_today_paise == payout
    with transaction() as s:
        s.get(PartnerProfile, a).offers_received = PartnerProfile.offers_received + 3
    assert search()[0].candidate.offers_received == 3


def test_a_leg_handed_to_another_partner_refreshes_both(frozen):
    a = partner_near("Ramesh", 100, max_active_legs=1)
    b = partner_near("Suresh", 300, max_active_legs=1)
    booking_id = paid_booking()
    with transaction() as s:
        leg = s.scalar(select(Leg).where(Leg.booking_id == booking_id))
        leg.partner_id, leg.status = a, LegStatus.ASSIGNED.value
    assert ids(search()) == [b]
    with transaction() as s:
        s.scalar(select(Leg).where(Leg.booking_id == booking_id)).partner_id = b
    assert ids(search()) == [a]


def test_an_uncommitted_change_counts_only_inside_its_transaction(frozen):
    a, b = partner_near("Ramesh", 100), partner_near("Suresh", 300)
    assert ids(search()) == [a, b]
    before = cached(a)
    with pytest.raises(RuntimeError), transaction() as s:
        s.get(PartnerProfile, a).on_duty = False  # not flushed yet: the search flushes it
        assert ids(dispatch.find_candidates(s, *LAXMIPUR, LOAD, 3)) == [b]
        raise RuntimeError("roll back")
    assert cached(a) == before  # the uncommitted facts were not cached for others
    with statements() as seen:
        assert ids(search()) == [a, b]
    assert seen == []


def test_facts_read_before_a_change_do_not_overwrite_it(frozen):
    a = partner_near("Ramesh", 100)
    now = clock.now()
    [hit] = geo_index.nearby(*LAXMIPUR, 3, max_age_s=900, now=now, with_facts=True)
    assert hit.facts is None
    before = hit.gen  # creating the partner bumped it already
    geo_index.invalidate_facts([a])  # a change committed while the search read PostgreSQL
    geo_index.store_facts([(a, hit.gen, "read before the change")])
    assert cached(a) is None
    [hit] = geo_index.nearby(*LAXMIPUR, 3, max_age_s=900, now=now, with_facts=True)
    assert hit.gen == before + 1
    geo_index.store_facts([(a, hit.gen, "read after the change")])
    assert cached(a) == "read after the change"


@pytest.mark.parametrize("later", [
    timedelta(seconds=dispatch.FACTS_MAX_AGE_S + 1),  # too old
    timedelta(hours=18, minutes=31),  # 06:00 UTC + 18:31 is past midnight in India
])
def test_old_facts_and_yesterdays_earnings_are_read_again(frozen, later):
    a = partner_near("Ramesh", 100)
    search()
    clock.freeze(T0 + later)
    geo_index.update_location(a, *LAXMIPUR, clock.now())
    with statements() as seen:
        assert ids(search()) == [a]
    assert len(seen) == 1


def test_unreadable_cached_facts_are_read_again(frozen):
    a = partner_near("Ramesh", 100)
    search()
    redis_client().hset(geo_index.FACTS_KEY, str(a), "1|oops|2026-11-24|x")
    with statements() as seen:
        assert ids(search()) == [a]
    assert len(seen) == 1
    assert cached(a) != "1|oops|2026-11-24|x"


def test_a_search_rebuilds_the_home_set_in_its_own_round_trip(frozen):
    calls = []

    def homes():
        calls.append(1)
        return [(5, *LAXMIPUR, False), (6, *LAXMIPUR, True)]

    now = clock.now()
    first = geo_index.nearby(*LAXMIPUR, 3, max_age_s=900, now=now, homes=homes)
    second = geo_index.nearby(*LAXMIPUR, 3, max_age_s=900, now=now, homes=homes)
    assert [(h.partner_id, h.source) for h in first] == [(5, "home")] == [
        (h.partner_id, h.source) for h in second]
    assert calls == [1]


def test_the_limited_search_keeps_only_as_many_as_asked_of_each_set(frozen):
    pipe = redis_client().pipeline(transaction=False)
    for pid in range(1, 101):
        pipe.geoadd(geo_index.LIVE_KEY, (LAXMIPUR[1] + pid * 1e-5, LAXMIPUR[0], str(pid)))
        pipe.hset(geo_index.SEEN_KEY, str(pid), int(clock.now().timestamp()))
    pipe.execute()
    hits = geo_index.nearby(*LAXMIPUR, 3, max_age_s=900, now=clock.now(), limit=7)
    assert [h.partner_id for h in hits] == list(range(1, 8))


# The watch sees ORM flushes only: a Core UPDATE, DELETE or INSERT on these tables would
# change a partner's facts without dropping them from the cache.
CORE_WRITE = re.compile(
    r"\b(?:update|delete|insert)\(\s*(?:PartnerProfile|Vehicle|Leg)\b"
    r"|\b(?:UPDATE|DELETE\s+FROM|INSERT\s+INTO)\s+(?:partner_profiles|vehicles|legs)\b",
    re.IGNORECASE)


def test_the_application_writes_partner_facts_only_through_the_orm():
    offenders = []
    for folder in ("core", "workers", "bots", "ivr_flows", "sandbox"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if CORE_WRITE.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_core_write_pattern_catches_what_it_is_for():
    for line in ("session.execute(update(Leg).where(Leg.id == 1).values(status='x'))",
                 "conn.execute(text('UPDATE legs SET status = 1'))",
                 "delete(Vehicle).where(Vehicle.id == 2)",
                 "INSERT INTO partner_profiles (id) VALUES (1)"):
        assert CORE_WRITE.search(line), line
    assert not CORE_WRITE.search("session.execute(update(DispatchOffer).values(x=1))")

"""Redis GEO index of partner positions: radius, freshness, home Points for SMS partners."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.adapters import geo_index

pytestmark = pytest.mark.db
NOW = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)
PICKUP = (26.8927, 84.48813)


def test_live_positions_within_radius_nearest_first(clean_db):
    geo_index.update_location(1, 26.8927, 84.49813, NOW)  # ~1 km east
    geo_index.update_location(2, 26.8927, 84.48913, NOW)  # ~100 m
    geo_index.update_location(3, 26.8927, 84.58813, NOW)  # ~10 km
    hits = geo_index.nearby(*PICKUP, 3, max_age_s=900, now=NOW)
    assert [(h.partner_id, h.source) for h in hits] == [(2, "live"), (1, "live")]
    assert 900 < hits[1].distance_m < 1100
    wider = geo_index.nearby(*PICKUP, 12, max_age_s=900, now=NOW)
    assert [h.partner_id for h in wider] == [2, 1, 3]


def test_stale_live_position_is_ignored(clean_db):
    geo_index.update_location(1, *PICKUP, NOW - timedelta(minutes=20))
    assert geo_index.nearby(*PICKUP, 3, max_age_s=900, now=NOW) == []
    geo_index.update_location(1, *PICKUP, NOW - timedelta(minutes=5))
    assert [h.partner_id for h in geo_index.nearby(*PICKUP, 3, max_age_s=900, now=NOW)] == [1]


def test_sms_only_partners_are_found_at_home_app_partners_only_live(clean_db):
    rebuilt = geo_index.ensure_homes(lambda: [(5, *PICKUP, False), (6, *PICKUP, True)])
    assert rebuilt
    hits = geo_index.nearby(*PICKUP, 3, max_age_s=900, now=NOW)
    assert [(h.partner_id, h.source) for h in hits] == [(5, "home")]
    # Once rebuilt, the loader is not called again until the marker expires.
    assert not geo_index.ensure_homes(lambda: pytest.fail("rebuilt twice"))
    geo_index.invalidate_homes()
    assert geo_index.ensure_homes(lambda: [])
    assert geo_index.nearby(*PICKUP, 3, max_age_s=900, now=NOW) == []


def test_fresh_live_position_wins_over_home(clean_db):
    geo_index.place_at_home(7, 26.80228, 84.51522, has_app=False)  # home in Bettiah
    geo_index.update_location(7, *PICKUP, NOW)
    hits = geo_index.nearby(*PICKUP, 3, max_age_s=900, now=NOW)
    assert [(h.partner_id, h.source) for h in hits] == [(7, "live")]
    geo_index.remove(7)
    assert geo_index.nearby(*PICKUP, 20, max_age_s=900, now=NOW) == []


def test_limited_search_falls_back_when_the_nearest_are_all_stale(clean_db):
    # Ten stale positions right at the pickup, two fresh ones a little further out.
    for pid in range(1, 11):
        geo_index.update_location(pid, 26.8927, 84.48813 + pid * 1e-5,
                                  NOW - timedelta(hours=1))
    geo_index.update_location(50, 26.8927, 84.49813, NOW)  # ~1 km
    geo_index.update_location(51, 26.8927, 84.50813, NOW)  # ~2 km
    hits = geo_index.nearby(*PICKUP, 3, max_age_s=900, now=NOW, limit=2)
    assert [h.partner_id for h in hits] == [50, 51]
    # With plenty of fresh ones near, the limited search returns the nearest.
    for pid in range(60, 70):
        geo_index.update_location(pid, 26.8927, 84.48813 + (pid - 59) * 1e-5, NOW)
    near = geo_index.nearby(*PICKUP, 3, max_age_s=900, now=NOW, limit=2)
    assert [h.partner_id for h in near][:2] == [60, 61]


def test_thousands_in_the_radius_keep_only_the_fresh_nearest_first(clean_db):
    from core.adapters.redis_conn import redis_client

    pipe = redis_client().pipeline(transaction=False)
    for pid in range(1, 2501):  # more than one chunk of freshness look-ups
        lng = PICKUP[1] + pid * 0.00001  # a line eastwards, about 1 m apart
        pipe.geoadd(geo_index.LIVE_KEY, (lng, PICKUP[0], str(pid)))
        seen = NOW if pid % 2 else NOW - timedelta(hours=1)  # odd ids fresh, even stale
        pipe.hset(geo_index.SEEN_KEY, str(pid), int(seen.timestamp()))
    pipe.execute()
    hits = geo_index.nearby(*PICKUP, 5, max_age_s=900, now=NOW)
    assert [h.partner_id for h in hits] == list(range(1, 2501, 2))
    assert all(h.source == "live" for h in hits)
    limited = geo_index.nearby(*PICKUP, 5, max_age_s=900, now=NOW, limit=10)
    assert [h.partner_id for h in limited][:10] == list(range(1, 21, 2))

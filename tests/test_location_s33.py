"""The partner app's positions and the speed check (session 33): a coarse first fix (the
phone's network fix "accurate to 2.5 km", 2 km off) was taken, and every precise GPS fix
of the next minute was refused 422 impossible_jump while dispatch placed the rider where
the coarse fix said, because the check allowed slack for the new fix's accuracy only. Now
the last fix keeps its accuracy; a spoofed jump is still refused."""
from __future__ import annotations

from datetime import timedelta

import pytest

from core import clock
from core.adapters import geo_index
from core.adapters.redis_conn import redis_client
from core.domain.errors import ValidationError
from core.domain.geo import haversine_m
from core.services import partner_app
from tests.test_dispatch import LAXMIPUR, freeze_at, frozen, make_partner  # noqa: F401
from tests.test_partner_app_review import _app_partner

pytestmark = pytest.mark.db
API = "/api/v1"
KM_NORTH = 1000 / 111_195  # degrees of latitude in 1 km


def _north(km: float) -> tuple[float, float]:
    return LAXMIPUR[0] + km * KM_NORTH, LAXMIPUR[1]


def _put(client, headers, where: tuple[float, float], accuracy_m: float):
    return client.put(f"{API}/partners/me/location", headers=headers, json={
        "lat": where[0], "lng": where[1], "accuracy_m": accuracy_m,
        "timestamp": (clock.now() - timedelta(seconds=1)).isoformat()})


def _dispatch_sees(partner_id: int) -> tuple[float, float]:
    (lng, lat), = redis_client().geopos(geo_index.LIVE_KEY, str(partner_id))
    return lat, lng


def test_precise_fixes_after_a_coarse_first_fix_are_taken(client, live, frozen):  # noqa: F811
    pid, _, h = _app_partner(client)  # a fix at Laxmipur, time 0
    freeze_at(600)  # ten minutes later the app wakes up again: a cell fix, 2.2 km off
    r = _put(client, h, (LAXMIPUR[0] + 0.02, LAXMIPUR[1]), 2500)
    assert r.status_code == 200, r.get_json()
    refused = []
    for s in range(5, 65, 5):  # GPS locks on: a precise fix every 5 s, where he is
        freeze_at(600 + s)
        r = _put(client, h, LAXMIPUR, 8)
        if r.status_code != 200:
            refused.append((s, r.status_code, r.get_json()["error"]["code"]))
    assert refused == [], f"precise fixes refused for {len(refused) * 5} s: {refused}"
    # Dispatch and the customer's map place him where he is, not where the cell fix said.
    assert haversine_m(*_dispatch_sees(pid), *LAXMIPUR) < 5
    fix = partner_app.last_fix(pid)
    assert fix is not None and (fix.lat, fix.lng, fix.accuracy_m) == (*LAXMIPUR, 8)


def test_a_precise_jump_after_a_precise_fix_is_still_refused(client, live,
                                                             frozen):  # noqa: F811
    pid, _, h = _app_partner(client)
    freeze_at(5)
    jump = _put(client, h, _north(2), 8)  # 2 km in 5 seconds, "accurate to 8 m"
    assert jump.status_code == 422
    assert jump.get_json()["error"]["code"] == "impossible_jump"
    assert haversine_m(*_dispatch_sees(pid), *LAXMIPUR) < 5


def test_a_precise_fix_beyond_a_coarse_fixs_width_is_refused(live, frozen):  # noqa: F811
    pid, _ = make_partner("Ramesh", LAXMIPUR, has_app=True)
    partner_app.record_location(pid, *_north(2), 2500, clock.now())  # the wake-up fix
    freeze_at(5)
    with pytest.raises(ValidationError) as refused:  # 6 km from it, 3.5 km past its width
        partner_app.record_location(pid, *_north(-4), 8, clock.now())
    assert refused.value.code == "impossible_jump"
    partner_app.record_location(pid, *LAXMIPUR, 8, clock.now())  # within its width: taken


def test_a_coarse_fix_agreeing_with_a_recent_precise_one_leaves_him_there(
        client, live, frozen):  # noqa: F811
    # GPS lost for a moment under a roof: the phone sends its network fix, 2.2 km off. It
    # was refused 422; it is taken, and he stays at the precise fix.
    pid, _, h = _app_partner(client)
    freeze_at(5)
    r = _put(client, h, _north(2.2), 2500)
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["lat"], r.get_json()["lng"]) == LAXMIPUR
    assert haversine_m(*_dispatch_sees(pid), *LAXMIPUR) < 5
    fix = partner_app.last_fix(pid)
    assert fix is not None and (fix.lat, fix.lng, fix.accuracy_m) == (*LAXMIPUR, 10)


def test_coarse_and_precise_fixes_by_turns_cannot_walk_a_partner_off(live,
                                                                     frozen):  # noqa: F811
    # A spoofer's app sends a fix "accurate to 5 km" 600 m ahead (within the speed check's
    # slack), then a precise one 5.5 km ahead: were the coarse one taken, the precise one
    # would be inside its width, and the two again and again would walk him anywhere.
    pid, _ = make_partner("Ramesh", LAXMIPUR, has_app=True)
    partner_app.record_location(pid, *LAXMIPUR, 8, clock.now())
    freeze_at(1)
    kept = partner_app.record_location(pid, *_north(0.6), 5000, clock.now())
    assert (kept.lat, kept.lng) == LAXMIPUR
    freeze_at(2)
    with pytest.raises(ValidationError) as refused:
        partner_app.record_location(pid, *_north(5.5), 8, clock.now())
    assert refused.value.code == "impossible_jump"
    assert haversine_m(*_dispatch_sees(pid), *LAXMIPUR) < 5


def test_a_last_fix_stored_before_the_accuracy_was_kept_is_still_read(live,
                                                                    frozen):  # noqa: F811
    # Written by the code before this deploy: "lat,lng,time", no accuracy (read as 0).
    pid, _ = make_partner("Ramesh", LAXMIPUR, has_app=True)
    redis_client().hset(partner_app.LAST_FIX_KEY, str(pid),
                        f"{LAXMIPUR[0]},{LAXMIPUR[1]},{clock.now().timestamp()}")
    old = partner_app.last_fix(pid)
    assert old == partner_app.Fix(*LAXMIPUR, clock.now(), 0.0)
    freeze_at(5)
    with pytest.raises(ValidationError) as refused:  # it still bounds the next fix
        partner_app.record_location(pid, *_north(2), 8, clock.now())
    assert refused.value.code == "impossible_jump"
    partner_app.record_location(pid, *_north(0.05), 8, clock.now())  # 50 m in 5 s
    raw = redis_client().hget(partner_app.LAST_FIX_KEY, str(pid))
    assert raw is not None and float(raw.decode().split(",")[3]) == 8
    fix = partner_app.last_fix(pid)
    assert fix is not None and fix.accuracy_m == 8 and fix.at == clock.now()

"""The partner app's positions, session 34: a faked app covered any distance with many
quick fixes. Each fix was checked against the last one only, with up to 1.1 km of slack
(GPS jitter and the accuracies) each time, so steps a moment apart added up to any speed;
a fix stamped up to a minute ahead of the server's clock was credited that minute; and
``PUT /partners/me/location`` took any number of fixes. Now every fix is checked against
the fixes of the last five minutes (the trail), none is credited time past now, the app
may send a fix every few seconds (more is 429 with Retry-After), and nothing stored
changes on a refused fix. The answer says whether the fix was taken."""
from __future__ import annotations

from datetime import timedelta

import pytest

from core import clock
from core.adapters import geo_index
from core.adapters.redis_conn import redis_client
from core.domain.errors import ValidationError
from core.domain.geo import haversine_m
from core.services import dispatch, partner_app
from tests.test_dispatch import LAXMIPUR, freeze_at, frozen, make_partner  # noqa: F401
from tests.test_partner_app_review import _app_partner

pytestmark = pytest.mark.db
API = "/api/v1"
KM_NORTH = 1000 / 111_195  # degrees of latitude in 1 km


def _north(km: float) -> tuple[float, float]:
    return LAXMIPUR[0] + km * KM_NORTH, LAXMIPUR[1]


def _put(client, headers, where: tuple[float, float], accuracy_m: float = 10,
         ahead_s: float = 0):
    return client.put(f"{API}/partners/me/location", headers=headers, json={
        "lat": where[0], "lng": where[1], "accuracy_m": accuracy_m,
        "timestamp": (clock.now() + timedelta(seconds=ahead_s)).isoformat()})


def _dispatch_sees(partner_id: int) -> tuple[float, float]:
    (lng, lat), = redis_client().geopos(geo_index.LIVE_KEY, str(partner_id))
    return lat, lng


def _stored(partner_id: int) -> tuple[bytes | None, bytes | None, object]:
    """All that a fix changes: the last fix (and trail), dispatch's position and its time."""
    r = redis_client()
    return (r.hget(partner_app.LAST_FIX_KEY, str(partner_id)),
            r.hget(geo_index.SEEN_KEY, str(partner_id)),
            r.geopos(geo_index.LIVE_KEY, str(partner_id)))


def _found(partner_id: int) -> bool:
    found = geo_index.nearby(*LAXMIPUR, 5, max_age_s=dispatch.config().location_max_age_s,
                             now=clock.now())
    return partner_id in [n.partner_id for n in found]


def test_many_small_steps_cannot_add_up_to_an_impossible_speed(live, frozen):  # noqa: F811
    # Each step is 260 m in 3 s, "accurate to 20 m": within the slack and speed of the
    # fix before (120 m past 140 m of slack in 3 s: 144 km/h), a fix every 3 s as a real
    # app sends. Twenty of them were 5.2 km in a minute (312 km/h), every one taken.
    pid, _ = make_partner("Ramesh", LAXMIPUR, has_app=True)
    partner_app.record_location(pid, *LAXMIPUR, 20, clock.now())
    refused = None
    for i in range(1, 21):
        freeze_at(3 * i)
        before = _stored(pid)
        try:
            partner_app.record_location(pid, *_north(0.26 * i), 20, clock.now())
        except ValidationError as e:
            refused = (i, e.code)
            assert _stored(pid) == before  # nothing stored changed
            break
    assert refused is not None, "5.2 km in a minute was taken"
    assert refused[1] == "impossible_jump"
    # Where dispatch places him is within a single slack and the speed of where he was.
    assert haversine_m(*_dispatch_sees(pid), *LAXMIPUR) < 140 + 150 / 3.6 * 3 * refused[0]


def test_fixes_a_moment_apart_cannot_each_take_the_whole_slack(live, frozen):  # noqa: F811
    # Fixes 0.2 s apart, each 1 km on and "accurate to 500 m": each within the slack of the
    # one before (1.1 km), 10 km in two seconds.
    pid, _ = make_partner("Ramesh", LAXMIPUR, has_app=True)
    partner_app.record_location(pid, *LAXMIPUR, 500, clock.now())
    with pytest.raises(ValidationError) as refused:
        for i in range(1, 11):
            freeze_at(0.2 * i)
            partner_app.record_location(pid, *_north(i), 500, clock.now())
    assert refused.value.code == "impossible_jump"
    assert haversine_m(*_dispatch_sees(pid), *LAXMIPUR) <= 1100 + 1


def test_a_real_rider_at_speed_with_gps_jitter_is_taken(live, frozen):  # noqa: F811
    # 60 km/h for five minutes, a fix every 3 s, each up to 40 m off to either side and
    # "accurate to 15 m" (the window check must not refuse a real ride).
    pid, _ = make_partner("Ramesh", LAXMIPUR, has_app=True)
    for i in range(100):
        freeze_at(3 * i)
        jitter = 0.04 if i % 2 else -0.04
        partner_app.record_location(pid, *_north(0.05 * i + jitter), 15, clock.now())
    assert haversine_m(*_dispatch_sees(pid), *_north(0.05 * 99 + 0.04)) < 1
    raw = redis_client().hget(partner_app.LAST_FIX_KEY, str(pid))
    assert raw is not None
    assert len(raw.decode().split(",")) <= 4 * partner_app.TRAIL_MAX  # the trail is bounded


def test_a_fix_stamped_ahead_of_the_server_clock_gains_no_time(live, frozen):  # noqa: F811
    pid, _ = make_partner("Ramesh", LAXMIPUR, has_app=True)
    partner_app.record_location(pid, *LAXMIPUR, 10, clock.now())
    freeze_at(1)
    before = _stored(pid)
    # 2.4 km a second later, stamped 60 s ahead: 140 km/h by its stamp, 8600 by the clock.
    with pytest.raises(ValidationError) as refused:
        partner_app.record_location(pid, *_north(2.4), 10, clock.now() + timedelta(seconds=60))
    assert refused.value.code == "impossible_jump"
    assert _stored(pid) == before
    # Too far ahead, or too old, is refused outright, and changes nothing.
    for at, code in ((clock.now() + timedelta(seconds=61), "future_timestamp"),
                     (clock.now() - timedelta(minutes=5, seconds=1), "stale_location")):
        with pytest.raises(ValidationError) as refused:
            partner_app.record_location(pid, *LAXMIPUR, 10, at)
        assert refused.value.code == code
        assert _stored(pid) == before
    # A phone whose clock is a little ahead is taken, as of now (fresh for dispatch no
    # longer than a fix taken now), and its next fixes are not refused as out of order.
    fix = partner_app.record_location(pid, *_north(0.01), 10, clock.now() + timedelta(seconds=30))
    assert fix.at == clock.now()
    assert partner_app.last_fix(pid) == fix
    assert int(redis_client().hget(geo_index.SEEN_KEY, str(pid))) == int(clock.now().timestamp())
    freeze_at(5)
    partner_app.record_location(pid, *_north(0.02), 10, clock.now())
    assert partner_app.last_fix(pid).at == clock.now()


def test_positions_sent_too_often_are_refused_429_and_change_nothing(client, live,
                                                                    frozen):  # noqa: F811
    pid, _, h = _app_partner(client)  # one fix at time 0
    for i in range(1, 5):  # a burst: 5 fixes within 10 s are let through
        freeze_at(i * 0.5)
        assert _put(client, h, LAXMIPUR).status_code == 200
    before = _stored(pid)
    freeze_at(2.5)
    r = _put(client, h, _north(0.05))
    assert r.status_code == 429, r.get_json()
    assert r.get_json()["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) == 8  # the fix at time 0 leaves the window at 10 s
    assert _stored(pid) == before
    assert _found(pid)  # dispatch still finds him where he was
    freeze_at(10)
    r = _put(client, h, _north(0.05))
    assert r.status_code == 200, r.get_json()


def test_an_app_sending_every_three_seconds_is_never_refused(client, live,
                                                             frozen):  # noqa: F811
    pid, _, h = _app_partner(client)
    for i in range(1, 61):  # three minutes, moving at 30 km/h
        freeze_at(3 * i)
        r = _put(client, h, _north(0.025 * i))
        assert r.status_code == 200, (i, r.get_json())
    # Beyond 20 in a minute is refused: one more a second later.
    freeze_at(181)
    r = _put(client, h, _north(1.5))
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "rate_limited"
    assert _found(pid)


def test_the_answer_says_whether_the_fix_was_taken(client, live, frozen):  # noqa: F811
    pid, _, h = _app_partner(client)
    freeze_at(5)
    # GPS lost under a roof: the network fix, 2.2 km off, agrees with the precise one.
    r = _put(client, h, _north(2.2), 2500)
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"accepted": True, "taken": False,
                            "lat": LAXMIPUR[0], "lng": LAXMIPUR[1]}
    freeze_at(10)
    r = _put(client, h, _north(0.05), 8)
    assert r.get_json() == {"accepted": True, "taken": True,
                            "lat": _north(0.05)[0], "lng": LAXMIPUR[1]}
    doc = client.get(f"{API}/openapi.json").get_json()
    put = doc["paths"]["/api/v1/partners/me/location"]["put"]
    props = put["responses"]["200"]["content"]["application/json"]["schema"]["properties"]
    assert "kept" in props["lat"]["description"] and "taken" in props
    assert "Retry-After" in put["responses"]["429"]["headers"]

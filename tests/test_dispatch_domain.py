"""Pure dispatch rules: eligibility matrix, score and ranking, cascade sizes, config, relay."""

from __future__ import annotations

import pytest

from core.domain import dispatch as d
from core.domain.geo import haversine_m
from core.domain.pricing import SizeBucket, SpeedTier, VehicleType, WeightBucket

V = VehicleType


def partner(vehicle: VehicleType, payload: int, max_size: SizeBucket, **kw) -> d.PartnerFacts:
    base = dict(partner_id=1, on_duty=True, active_legs=0, max_active_legs=2, trust_tier=1)
    base.update(kw)
    return d.PartnerFacts(vehicles=(d.VehicleFacts(vehicle, payload, max_size),), **base)


# vehicle, payload kg, its largest size, parcel size, parcel weight bucket, eligible?
MATRIX = [
    (V.BICYCLE, 20, SizeBucket.BOX, SizeBucket.BAG, WeightBucket.W5, True),
    (V.BICYCLE, 20, SizeBucket.BOX, SizeBucket.BOX, WeightBucket.W20, True),
    (V.BICYCLE, 15, SizeBucket.BOX, SizeBucket.BOX, WeightBucket.W20, False),  # own payload
    (V.BICYCLE, 20, SizeBucket.BOX, SizeBucket.SACK, WeightBucket.W20, False),
    (V.BICYCLE, 50, SizeBucket.BOX, SizeBucket.BAG, WeightBucket.W50, False),  # type capacity
    (V.MOTORCYCLE, 20, SizeBucket.BOX, SizeBucket.BOX, WeightBucket.W20, True),
    (V.E_RICKSHAW, 150, SizeBucket.SACK, SizeBucket.SACK, WeightBucket.W50, True),
    (V.E_RICKSHAW, 150, SizeBucket.SACK, SizeBucket.SACK, WeightBucket.W200, False),
    (V.AUTO, 200, SizeBucket.SACK, SizeBucket.SACK, WeightBucket.W200, True),
    (V.AUTO, 200, SizeBucket.SACK, SizeBucket.VEHICLE, WeightBucket.W200, False),
    (V.PICKUP, 750, SizeBucket.VEHICLE, SizeBucket.SACK, WeightBucket.W200, True),
    (V.PICKUP, 750, SizeBucket.VEHICLE, SizeBucket.VEHICLE, WeightBucket.W750, True),
    (V.CART, 300, SizeBucket.VEHICLE, SizeBucket.VEHICLE, WeightBucket.W200, True),
    (V.CART, 300, SizeBucket.VEHICLE, SizeBucket.VEHICLE, WeightBucket.W750, False),
]


@pytest.mark.parametrize(("vehicle", "payload", "vmax", "size", "weight", "ok"), MATRIX)
def test_eligibility_matrix(vehicle, payload, vmax, size, weight, ok):
    p = partner(vehicle, payload, vmax)
    reason = d.ineligible_reason(p, d.Load(size, weight, 0))
    assert (reason is None) is ok, reason
    if not ok:
        assert reason == "vehicle"


def test_duty_capacity_and_trust_are_checked_in_order():
    load = d.Load(SizeBucket.BAG, WeightBucket.W5, 10_000_00)  # Rs 10,000 declared
    bike = (V.BICYCLE, 20, SizeBucket.BOX)
    assert d.ineligible_reason(partner(*bike, on_duty=False), load) == "off_duty"
    assert d.ineligible_reason(partner(*bike, active_legs=2), load) == "at_capacity"
    assert d.ineligible_reason(partner(*bike, trust_tier=1), load) == "trust_tier"
    assert d.ineligible_reason(partner(*bike, trust_tier=2), load) is None
    assert d.trust_allows(3, 10**12) and not d.trust_allows(0, 1_000_01)


def test_inactive_vehicle_does_not_count():
    p = d.PartnerFacts(1, True, 0, 2, 1, (d.VehicleFacts(V.BICYCLE, 20, SizeBucket.BOX, False),))
    assert d.ineligible_reason(p, d.Load(SizeBucket.BAG, WeightBucket.W5)) == "vehicle"


def test_direct_reach_by_vehicle_and_tier():
    assert d.can_do_direct(V.BICYCLE, 14_000, 8)
    assert not d.can_do_direct(V.BICYCLE, 16_000, 8)  # beyond a bicycle's range
    assert not d.can_do_direct(V.CART, 9_000, 1)  # 6 km/h: too slow for one hour
    assert d.can_do_direct(V.PICKUP, 100_000, 3)


W = d.Weights()


def test_nearer_partner_ranks_first():
    near, far = d.Candidate(1, 500), d.Candidate(2, 2500)
    assert [c.partner_id for c in d.rank([far, near], W, 3000)] == [1, 2]


def test_at_equal_distance_who_earned_least_today_comes_first():
    rich = d.Candidate(1, 1000, earned_today_paise=50_000)
    poor = d.Candidate(2, 1000, earned_today_paise=0)
    assert [c.partner_id for c in d.rank([rich, poor], W, 3000)] == [2, 1]


def test_rating_and_acceptance_break_near_ties():
    good = d.Candidate(1, 1000, rating_x100=490, offers_received=10, offers_accepted=9)
    poor = d.Candidate(2, 900, rating_x100=300, offers_received=10, offers_accepted=1)
    assert [c.partner_id for c in d.rank([poor, good], W, 3000)] == [1, 2]
    # With distance alone weighted, the nearer one wins again.
    only_distance = d.Weights(distance=1, rating=0, acceptance=0, fairness=0)
    assert [c.partner_id for c in d.rank([good, poor], only_distance, 3000)] == [2, 1]


def test_score_is_the_documented_formula():
    c = d.Candidate(7, 1500, rating_x100=400, offers_received=8, offers_accepted=5,
                    earned_today_paise=2_000)
    expected = (50 * 0.5 + 20 * 0.2 + 15 * (1 - 6 / 10) + 15 * (2_000 / 4_000)) / 100
    assert d.score(c, W, 3000, 4_000) == pytest.approx(expected)
    assert d.acceptance_rate(0, 0) == 0.5


def test_batches_repeat_the_last_size():
    cfg = d.DispatchConfig(batch_sizes=(1, 3))
    assert [cfg.batch_size(i) for i in range(4)] == [1, 3, 3, 3]


def test_config_from_environment():
    cfg = d.from_env({"DISPATCH_BATCH_SIZES": "2,4", "DISPATCH_WEIGHT_DISTANCE": "70",
                      "DISPATCH_RADII_KM": "10, 2.5", "DISPATCH_SEARCH_DEADLINE_MIN":
                      "express=10", "DISPATCH_OFFER_TIMEOUT_S": "45"})
    assert cfg.batch_sizes == (2, 4) and cfg.weights.distance == 70
    assert cfg.radii_km == (2.5, 10.0)
    assert cfg.search_deadline_s[SpeedTier.EXPRESS] == 600
    assert cfg.search_deadline_s[SpeedTier.STANDARD] == 3600
    assert cfg.offer_timeout_s == 45


@pytest.mark.parametrize("env", [
    {"DISPATCH_BATCH_SIZES": "1,x"},
    {"DISPATCH_BATCH_SIZES": "0"},
    {"DISPATCH_WEIGHT_RATING": "-1"},
    {"DISPATCH_WEIGHT_DISTANCE": "0", "DISPATCH_WEIGHT_RATING": "0",
     "DISPATCH_WEIGHT_ACCEPTANCE": "0", "DISPATCH_WEIGHT_FAIRNESS": "0"},
    {"DISPATCH_SEARCH_DEADLINE_MIN": "rocket=5"},
    {"DISPATCH_OFFER_TIMEOUT_S": "soon"},
])
def test_bad_config_is_refused(env):
    with pytest.raises(d.DispatchConfigError):
        d.from_env(env)


def _dist(a: d.Stop, b: d.Stop) -> int:
    return haversine_m(a.lat, a.lng, b.lat, b.lng)


def test_relay_goes_through_the_points_nearest_each_end():
    p, drop = d.Stop(26.85, 84.40), d.Stop(26.85, 84.64)
    points = [d.Stop(26.85, 84.57, 2), d.Stop(26.85, 84.47, 1), d.Stop(27.5, 85.0, 3)]
    stops = d.plan_relay(p, drop, points, _dist)
    assert [s.point_id for s in stops] == [None, 1, 2, None]


def test_no_relay_when_it_would_not_shorten_any_leg():
    p, drop = d.Stop(26.85, 84.40), d.Stop(26.85, 84.45)
    assert d.plan_relay(p, drop, [d.Stop(26.85, 84.60, 1)], _dist) is None
    assert d.plan_relay(p, drop, [], _dist) is None
    assert d.plan_relay(p, drop, [d.Stop(26.85, 84.40, 1)], _dist) is None  # Point at pickup

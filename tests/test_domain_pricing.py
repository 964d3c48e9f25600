"""Pricing: buckets, capacity, rate card, hand-computed fares and fare properties."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.domain.errors import ValidationError
from core.domain.pricing import (
    DEFAULT_RATE_CARD,
    VEHICLE_CAPACITY,
    FareBreakdown,
    FareLine,
    RateCard,
    SizeBucket,
    SpeedTier,
    VehicleRate,
    VehicleType,
    WeightBucket,
    can_carry,
    choose_vehicle,
    mul_bp,
    quote,
    quote_tiers,
    road_distance_m,
    split_by_weights,
)

CARD = DEFAULT_RATE_CARD


def lines_of(fare: FareBreakdown) -> dict[str, int]:
    return {line.code: line.amount_paise for line in fare.lines}


# --- buckets and capacity -------------------------------------------------------------------


def test_bucket_order() -> None:
    assert [s.rank for s in (SizeBucket.BAG, SizeBucket.BOX, SizeBucket.SACK)] == [0, 1, 2]
    assert SizeBucket.VEHICLE.rank == 3
    # string order would put "bag" < "box" < "sack" < "vehicle" by luck; weights prove rank is used
    assert WeightBucket.W200.rank > WeightBucket.W50.rank
    assert WeightBucket.W750.max_grams == 750_000


@pytest.mark.parametrize(
    ("grams", "bucket"),
    [
        (0, "w5"),
        (5_000, "w5"),
        (5_001, "w20"),
        (20_000, "w20"),
        (20_001, "w50"),
        (50_000, "w50"),
        (50_001, "w200"),
        (200_000, "w200"),
        (200_001, "w750"),
        (750_000, "w750"),
    ],
)
def test_weight_for_grams(grams: int, bucket: str) -> None:
    assert WeightBucket.for_grams(grams) == bucket


def test_weight_for_grams_rejects() -> None:
    with pytest.raises(ValidationError) as err:
        WeightBucket.for_grams(750_001)
    assert err.value.field == "weight"
    with pytest.raises(ValidationError):
        WeightBucket.for_grams(-1)


def test_capacity_matrix() -> None:
    assert can_carry("bicycle", "box", "w20")
    assert not can_carry("bicycle", "sack", "w5")
    assert not can_carry("motorcycle", "bag", "w50")
    assert can_carry("e_rickshaw", "sack", "w200")
    assert not can_carry("auto", "vehicle", "w5")
    assert not can_carry("auto", "bag", "w750")
    assert can_carry("cart", "vehicle", "w750") and can_carry("pickup", "vehicle", "w750")
    assert set(VEHICLE_CAPACITY) == set(VehicleType)


@pytest.mark.parametrize(
    ("size", "weight", "vehicle"),
    [
        # minimum fares: bicycle ₹25 < motorcycle ₹35 < e_rickshaw ₹50 < auto ₹60 < cart ₹80
        ("bag", "w5", "bicycle"),
        ("box", "w20", "bicycle"),
        ("bag", "w50", "e_rickshaw"),
        ("sack", "w200", "e_rickshaw"),
        ("vehicle", "w5", "cart"),
        ("box", "w750", "cart"),
    ],
)
def test_choose_vehicle(size: str, weight: str, vehicle: str) -> None:
    assert choose_vehicle(SizeBucket(size), WeightBucket(weight), CARD) == vehicle


def test_choose_vehicle_respects_the_card() -> None:
    data = CARD.to_dict()
    del data["vehicles"]["bicycle"]
    del data["vehicles"]["cart"]
    card = RateCard.from_dict(data)
    assert choose_vehicle("bag", "w5", card) == "motorcycle"
    assert choose_vehicle("vehicle", "w200", card) == "pickup"
    # same minimum: the lower per-km wins (₹10/km beats ₹13/km)
    data = CARD.to_dict()
    data["vehicles"]["auto"]["minimum_paise"] = 5000
    data["vehicles"]["auto"]["per_km_paise"] = 1000
    assert choose_vehicle("sack", "w50", RateCard.from_dict(data)) == "auto"
    only_bike = RateCard.from_dict(
        {**CARD.to_dict(), "vehicles": {"bicycle": data["vehicles"]["bicycle"]}}
    )
    with pytest.raises(ValidationError) as err:
        choose_vehicle("sack", "w50", only_bike)
    assert err.value.code == "too_big_for_vehicle"


# --- arithmetic helpers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "bp", "expected"),
    [
        (1, 5000, 1),  # 0.5 -> 1 (half-up, not banker's 0)
        (3, 5000, 2),  # 1.5 -> 2
        (5, 5000, 3),  # 2.5 -> 3 (banker's would give 2)
        (149, 100, 1),  # 1.49 -> 1
        (150, 100, 2),  # 1.50 -> 2
        (6794, 10000, 6794),
        (6700, 14000, 9380),
        (-3, 5000, -2),  # -1.5 -> -2, half away from zero
        (0, 12345, 0),
    ],
)
def test_mul_bp(amount: int, bp: int, expected: int) -> None:
    assert mul_bp(amount, bp) == expected


@pytest.mark.parametrize(
    ("straight", "road"),
    [
        (7400, 9990),  # 7400 x 1.35 = 9990
        (10, 14),  # 13.5 -> 14 (half-up)
        (1, 1),  # 1.35 -> 1
        (2, 3),  # 2.70 -> 3
        (0, 0),
    ],
)
def test_road_distance(straight: int, road: int) -> None:
    assert road_distance_m(straight, CARD) == road


def test_road_distance_rejects_negative() -> None:
    with pytest.raises(ValidationError):
        road_distance_m(-1, CARD)


# --- known fares (computed by hand) ---------------------------------------------------------


def test_fare_bicycle_standard() -> None:
    # 7.4 km straight -> 9990 m road. base 2000 (incl 2 km) + 600/km x 7.990 km = 4794
    # subtotal 6794, x1.00, above min 2500; rounds half-up to 6800 (+6)
    # commission 12 % of 6800 = 816; partner 5984
    f = quote(
        CARD,
        distance_m=road_distance_m(7400, CARD),
        vehicle="bicycle",
        size="bag",
        weight="w5",
        tier="standard",
    )
    assert lines_of(f) == {"base": 2000, "distance": 4794, "rounding": 6}
    assert (f.total_paise, f.commission_paise, f.partner_share_paise) == (6800, 816, 5984)
    assert f.distance_m == 9990 and f.vehicle == "bicycle" and f.tier == "standard"
    assert f.surge_bp == 10000


def test_fare_minimum() -> None:
    # 1.5 km is inside the 2 km base: base 2000, distance 0; below min 2500 -> minimum +500
    # commission 12 % of 2500 = 300; partner 2200
    f = quote(CARD, distance_m=1500, vehicle="bicycle", size="bag", weight="w5", tier="standard")
    assert lines_of(f) == {"base": 2000, "minimum": 500}
    assert (f.total_paise, f.commission_paise, f.partner_share_paise) == (2500, 300, 2200)


def test_fare_express() -> None:
    # motorcycle 5 km: base 3000 + 900 x 3.000 = 2700; box 500; w20 500 -> subtotal 6700
    # express x1.40 = 9380 (tier +2680); rounds to 9400 (+20)
    # commission 12 % of 9400 = 1128; partner 8272
    f = quote(CARD, distance_m=5000, vehicle="motorcycle", size="box", weight="w20", tier="express")
    assert lines_of(f) == {
        "base": 3000,
        "distance": 2700,
        "size": 500,
        "weight": 500,
        "tier": 2680,
        "rounding": 20,
    }
    assert (f.total_paise, f.commission_paise, f.partner_share_paise) == (9400, 1128, 8272)


def test_fare_economy_with_half_paisa_distance() -> None:
    # e_rickshaw 12345 m: extra 10345 m x 1100/km = 11379.5 -> 11380 (half-up)
    # base 4000 + 11380 + sack 1500 + w50 1500 = 18380; economy x0.85 = 15623 (tier -2757)
    # rounds to 15600 (-23); commission 12 % of 15600 = 1872; partner 13728
    f = quote(
        CARD, distance_m=12345, vehicle="e_rickshaw", size="sack", weight="w50", tier="economy"
    )
    assert lines_of(f) == {
        "base": 4000,
        "distance": 11380,
        "size": 1500,
        "weight": 1500,
        "tier": -2757,
        "rounding": -23,
    }
    assert (f.total_paise, f.commission_paise, f.partner_share_paise) == (15600, 1872, 13728)


def test_fare_surge_clamped_at_cap() -> None:
    # auto 20 km: base 5000 + 1300 x 18.000 = 23400; sack 1500; w200 4000 -> 33900
    # surge asked x2.00, cap x1.50: 50850 (surge +16950); 50850 rounds half-up to 50900 (+50)
    # commission 12 % of 50900 = 6108; partner 44792
    f = quote(
        CARD,
        distance_m=20000,
        vehicle="auto",
        size="sack",
        weight="w200",
        tier="standard",
        surge_bp=20000,
    )
    assert lines_of(f) == {
        "base": 5000,
        "distance": 23400,
        "size": 1500,
        "weight": 4000,
        "surge": 16950,
        "rounding": 50,
    }
    assert (f.total_paise, f.commission_paise, f.partner_share_paise) == (50900, 6108, 44792)
    assert f.surge_bp == 15000


def test_fare_fragile() -> None:
    # cart 3 km: base 6000 + 1000 x 1.000 = 1000; vehicle 4000; w750 10000; fragile 1000
    # = 22000, already whole rupees; commission 2640; partner 19360
    f = quote(
        CARD,
        distance_m=3000,
        vehicle="cart",
        size="vehicle",
        weight="w750",
        tier="standard",
        fragile=True,
    )
    assert lines_of(f) == {
        "base": 6000,
        "distance": 1000,
        "size": 4000,
        "weight": 10000,
        "fragile": 1000,
    }
    assert (f.total_paise, f.commission_paise, f.partner_share_paise) == (22000, 2640, 19360)


def test_fare_economy_falls_to_minimum() -> None:
    # bicycle 1 km: base 2000; economy x0.85 = 1700 (tier -300); min 2500 -> minimum +800
    f = quote(CARD, distance_m=1000, vehicle="bicycle", size="bag", weight="w5", tier="economy")
    assert lines_of(f) == {"base": 2000, "tier": -300, "minimum": 800}
    assert f.total_paise == 2500


def test_fare_pickup_minimum_after_fractional_distance() -> None:
    # pickup 3049 m, 3 km included: 49 m x 2200/km = 107.8 -> 108; 15108 < min 20000 (+4892)
    f = quote(CARD, distance_m=3049, vehicle="pickup", size="bag", weight="w5", tier="standard")
    assert lines_of(f) == {"base": 15000, "distance": 108, "minimum": 4892}
    assert (f.total_paise, f.commission_paise) == (20000, 2400)


@pytest.mark.parametrize(
    ("distance_m", "total", "rounding"),
    [
        # bicycle: extra 4915 m x 0.6 = 2949 -> 4949 -> 4900 (-49)
        (6915, 4900, -49),
        # extra 4916 m x 0.6 = 2949.6 -> 2950 -> 4950 -> 5000 (+50: exactly half rounds up)
        (6916, 5000, 50),
    ],
)
def test_rounding_to_rupees_half_up(distance_m: int, total: int, rounding: int) -> None:
    f = quote(
        CARD, distance_m=distance_m, vehicle="bicycle", size="bag", weight="w5", tier="standard"
    )
    assert f.total_paise == total
    assert lines_of(f)["rounding"] == rounding


def test_surge_below_one_is_ignored() -> None:
    plain = quote(CARD, distance_m=5000, vehicle="auto", size="bag", weight="w5", tier="standard")
    low = quote(
        CARD,
        distance_m=5000,
        vehicle="auto",
        size="bag",
        weight="w5",
        tier="standard",
        surge_bp=5000,
    )
    assert low == plain and low.surge_bp == 10000


def test_commission_rounds_half_up() -> None:
    # commission 3.33 %: 6800 x 0.0333 = 226.44 -> 226; 1500 x 0.0333 = 49.95 -> 50
    card = RateCard.from_dict({**CARD.to_dict(), "commission_bp": 333})
    f = quote(card, distance_m=9990, vehicle="bicycle", size="bag", weight="w5", tier="standard")
    assert (f.commission_paise, f.partner_share_paise) == (226, 6574)
    assert mul_bp(1500, 333) == 50


def test_quote_rejects() -> None:
    with pytest.raises(ValidationError):
        quote(CARD, distance_m=-1, vehicle="bicycle", size="bag", weight="w5", tier="standard")
    with pytest.raises(ValidationError) as err:
        quote(CARD, distance_m=100, vehicle="bicycle", size="sack", weight="w5", tier="standard")
    assert err.value.code == "too_big_for_vehicle"
    with pytest.raises(ValidationError) as err:
        quote(CARD, distance_m=100, vehicle="motorcycle", size="bag", weight="w200", tier="economy")
    assert err.value.code == "too_big_for_vehicle"


def test_quote_tiers() -> None:
    fares = quote_tiers(CARD, distance_m=5000, vehicle="motorcycle", size="box", weight="w20")
    assert list(fares) == [SpeedTier.EXPRESS, SpeedTier.STANDARD, SpeedTier.ECONOMY]
    # subtotal 6700 (see test_fare_express): x1.40 -> 9400, x1.00 -> 6700, x0.85 = 5695 -> 5700
    assert [f.total_paise for f in fares.values()] == [9400, 6700, 5700]


def test_breakdown_round_trip_and_invariants() -> None:
    f = quote(CARD, distance_m=12345, vehicle="auto", size="box", weight="w50", tier="express")
    data = json.loads(json.dumps(f.to_dict()))
    assert FareBreakdown.from_dict(data) == f
    assert data["vehicle"] == "auto" and data["tier"] == "express"
    with pytest.raises(ValueError):
        FareBreakdown(
            (FareLine("base", 100),), 200, 0, 200, 0, VehicleType.AUTO, SpeedTier.STANDARD
        )
    with pytest.raises(ValueError):
        FareLine("tip", 100)


# --- rate card ------------------------------------------------------------------------------


def test_default_rate_card_values() -> None:
    assert CARD.vehicles[VehicleType.BICYCLE] == VehicleRate(2000, 2000, 600, 2500)
    assert CARD.vehicles[VehicleType.PICKUP] == VehicleRate(15000, 3000, 2200, 20000)
    assert CARD.size_surcharge_paise[SizeBucket.SACK] == 1500
    assert CARD.weight_surcharge_paise[WeightBucket.W750] == 10000
    assert CARD.tier_multiplier_bp[SpeedTier.ECONOMY] == 8500
    assert (CARD.surge_cap_bp, CARD.commission_bp, CARD.detour_factor_bp) == (15000, 1200, 13500)


def test_rate_card_json_round_trip() -> None:
    text = json.dumps(CARD.to_dict())
    assert RateCard.from_dict(json.loads(text)) == CARD


@pytest.mark.parametrize(
    "change",
    [
        {"commission_bp": 10000},
        {"surge_cap_bp": 9999},
        {"fragile_surcharge_paise": -1},
        {"detour_factor_bp": 9000},
        {"size_surcharge_paise": {"bag": 0, "box": 500, "sack": 1500}},  # vehicle missing
        {"weight_surcharge_paise": {"w5": 0, "w20": 5, "w50": 1, "w200": 1, "w750": -5}},
        {"tier_multiplier_bp": {"express": 1, "standard": 1, "warp": 1}},
        {"vehicles": {}},
        {"vehicles": {"bicycle": {"base_fare_paise": 1}}},
        {"vehicles": {"rocket": CARD.to_dict()["vehicles"]["bicycle"]}},
        {"commission_bp": 12.5},
        {"unexpected": 1},
    ],
)
def test_rate_card_validation(change: dict) -> None:
    with pytest.raises(ValidationError) as err:
        RateCard.from_dict({**CARD.to_dict(), **change})
    assert err.value.code == "bad_rate_card"


def test_rate_card_is_immutable() -> None:
    with pytest.raises(TypeError):
        CARD.vehicles[VehicleType.BICYCLE] = VehicleRate(0, 0, 0, 100)  # type: ignore[index]


def test_vehicle_not_on_card() -> None:
    card = RateCard.from_dict(
        {**CARD.to_dict(), "vehicles": {"bicycle": CARD.to_dict()["vehicles"]["bicycle"]}}
    )
    with pytest.raises(ValidationError) as err:
        quote(card, distance_m=100, vehicle="auto", size="bag", weight="w5", tier="standard")
    assert err.value.code == "vehicle_not_offered"


# --- split ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        (100, [1, 1, 1], [34, 33, 33]),  # 33.33 each; tie on remainder -> lowest index gets +1
        # 5984 x 3000/9990 = 1796.997, x 6990/9990 = 4187.003: first has the larger remainder
        (5984, [3000, 6990], [1797, 4187]),
        (10, [0, 5], [0, 10]),
        (0, [2, 3], [0, 0]),
        (7, [1, 2, 4], [1, 2, 4]),
        (5, [1, 1], [3, 2]),
    ],
)
def test_split_by_weights_examples(total: int, weights: list[int], expected: list[int]) -> None:
    assert split_by_weights(total, weights) == expected


def test_split_rejects() -> None:
    for total, weights in ((100, []), (100, [0, 0]), (-1, [1]), (100, [1, -1])):
        with pytest.raises(ValidationError):
            split_by_weights(total, weights)


# --- properties -----------------------------------------------------------------------------

vehicles = st.sampled_from(list(VehicleType))
sizes = st.sampled_from(list(SizeBucket))
weights_b = st.sampled_from(list(WeightBucket))
tiers = st.sampled_from(list(SpeedTier))
distances = st.integers(min_value=0, max_value=300_000)
surges = st.integers(min_value=0, max_value=40_000)


@given(
    v=vehicles,
    size=sizes,
    weight=weights_b,
    tier=tiers,
    d=distances,
    fragile=st.booleans(),
    surge=surges,
)
def test_fare_invariants(v, size, weight, tier, d, fragile, surge) -> None:
    if not can_carry(v, size, weight):
        return
    f = quote(
        CARD,
        distance_m=d,
        vehicle=v,
        size=size,
        weight=weight,
        tier=tier,
        fragile=fragile,
        surge_bp=surge,
    )
    assert sum(line.amount_paise for line in f.lines) == f.total_paise
    assert f.total_paise % 100 == 0
    assert f.commission_paise + f.partner_share_paise == f.total_paise
    assert f.total_paise >= CARD.vehicles[v].minimum_paise
    assert 10000 <= f.surge_bp <= CARD.surge_cap_bp
    assert all(isinstance(line.amount_paise, int) for line in f.lines)


@given(
    v=vehicles,
    size=sizes,
    weight=weights_b,
    tier=tiers,
    d=distances,
    extra=st.integers(min_value=0, max_value=50_000),
    surge=surges,
)
def test_fare_monotonic_in_distance(v, size, weight, tier, d, extra, surge) -> None:
    if not can_carry(v, size, weight):
        return
    kw = dict(vehicle=v, size=size, weight=weight, tier=tier, surge_bp=surge)
    near = quote(CARD, distance_m=d, **kw)
    far = quote(CARD, distance_m=d + extra, **kw)
    assert near.total_paise <= far.total_paise


@given(
    total=st.integers(min_value=0, max_value=10**9),
    weights=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=8).filter(
        lambda ws: sum(ws) > 0
    ),
)
def test_split_sums_exactly(total: int, weights: list[int]) -> None:
    shares = split_by_weights(total, weights)
    assert sum(shares) == total
    assert len(shares) == len(weights)
    denom = sum(weights)
    for share, w in zip(shares, weights, strict=True):
        # each share is its exact proportion rounded down or up by at most one paisa
        assert share * denom - total * w > -denom and share * denom - total * w < denom
        assert share >= 0

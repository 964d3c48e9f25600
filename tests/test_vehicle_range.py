"""The vehicle a fare is quoted for can ride the trip: choose_vehicle with a distance.

Fares below are worked out by hand from DEFAULT_RATE_CARD at the standard tier (x1.00):
base + per_km x (distance - base distance) + size + weight surcharges, at least the minimum.
"""

from __future__ import annotations

import pytest

from core.domain import dispatch as d
from core.domain import pricing
from core.domain.errors import ValidationError
from core.domain.pricing import (
    DEFAULT_RATE_CARD,
    VEHICLE_CAPACITY,
    RateCard,
    SizeBucket,
    SpeedTier,
    VehicleType,
    WeightBucket,
    choose_vehicle,
)

CARD = DEFAULT_RATE_CARD
V = VehicleType


def card_with(changes: dict[str, dict[str, int]], drop: tuple[str, ...] = ()) -> RateCard:
    data = CARD.to_dict()
    for vehicle, fields in changes.items():
        data["vehicles"][vehicle].update(fields)
    for vehicle in drop:
        del data["vehicles"][vehicle]
    return RateCard.from_dict(data)


def test_the_range_tables_live_in_pricing_and_dispatch_still_has_them() -> None:
    assert d.VEHICLE_RANGE_KM is pricing.VEHICLE_RANGE_KM
    assert d.VEHICLE_SPEED_KMH is pricing.VEHICLE_SPEED_KMH
    assert pricing.VEHICLE_RANGE_KM[V.CART] == 10 and pricing.VEHICLE_SPEED_KMH[V.CART] == 6


def test_a_heavy_parcel_over_30_km_is_not_quoted_as_a_cart() -> None:
    # A cart is cheaper (₹60 + ₹10/km) but goes 10 km at most; the pickup goes 150 km.
    assert choose_vehicle("vehicle", "w750", CARD, 30_000) == V.PICKUP
    assert choose_vehicle(SizeBucket.BOX, WeightBucket.W750, CARD, distance_m=30_000) \
        == V.PICKUP
    # The call without a distance still answers as before.
    assert choose_vehicle("vehicle", "w750", CARD) == V.CART


@pytest.mark.parametrize("metres", [1_000, 5_000, 10_000])
def test_a_short_heavy_trip_is_still_a_cart(metres: int) -> None:
    # 10 km: cart 6000 + 1000 x 8 + 4000 + 10000 = 28000; pickup 15000 + 2200 x 7 + 14000
    # = 44400. Shorter is cheaper still for the cart.
    assert choose_vehicle("vehicle", "w750", CARD, metres) == V.CART


def test_one_metre_past_the_carts_range_is_a_pickup() -> None:
    assert choose_vehicle("vehicle", "w750", CARD, 10_001) == V.PICKUP


def test_a_bag_over_40_km_goes_on_a_vehicle_that_goes_that_far() -> None:
    # Bicycle (15 km) and e-rickshaw (25 km) cannot; motorcycle 3000 + 900 x 38 = 37200,
    # auto 5000 + 1300 x 38 = 54400, pickup 15000 + 2200 x 37 = 96400.
    assert choose_vehicle("bag", "w5", CARD, 40_000) == V.MOTORCYCLE
    assert choose_vehicle("bag", "w5", CARD, 14_000) == V.BICYCLE


def test_the_cheapest_fare_at_the_distance_beats_the_lowest_minimum() -> None:
    # The auto has the higher minimum (₹60 against ₹50) but ₹5/km against ₹11/km.
    card = card_with({"auto": {"base_fare_paise": 5000, "per_km_paise": 500,
                               "minimum_paise": 6000}})
    # 20 km, sack of 50 kg (surcharges 1500 + 1500): e-rickshaw 4000 + 1100 x 18 + 3000
    # = 26800; auto 5000 + 500 x 18 + 3000 = 17000.
    assert choose_vehicle("sack", "w50", card, 20_000) == V.AUTO
    # 2 km: e-rickshaw 4000 + 3000 = 7000, auto 5000 + 3000 = 8000.
    assert choose_vehicle("sack", "w50", card, 2_000) == V.E_RICKSHAW
    # Without a distance: the lowest minimum, as before.
    assert choose_vehicle("sack", "w50", card) == V.E_RICKSHAW


def test_a_lower_per_km_is_not_the_cheaper_fare_on_a_short_trip() -> None:
    # Same minimum; the auto has the lower per-km (₹10 against ₹11) but the higher base.
    card = card_with({"auto": {"minimum_paise": 5000, "per_km_paise": 1000}})
    # 3 km: e-rickshaw 4000 + 1100 + 3000 = 8100, auto 5000 + 1000 + 3000 = 9000.
    assert choose_vehicle("sack", "w50", card, 3_000) == V.E_RICKSHAW
    # 20 km: e-rickshaw 4000 + 19800 + 3000 = 26800, auto 5000 + 18000 + 3000 = 26000.
    assert choose_vehicle("sack", "w50", card, 20_000) == V.AUTO
    assert choose_vehicle("sack", "w50", card) == V.AUTO  # no distance: as before


def test_equal_fares_fall_back_to_minimum_then_per_km_then_type_order() -> None:
    same = {"base_fare_paise": 4000, "base_distance_m": 2000, "per_km_paise": 1100}
    # Both 26800 at 20 km: the auto's lower minimum wins though it comes later in order.
    card = card_with({"e_rickshaw": {**same, "minimum_paise": 6000},
                      "auto": {**same, "minimum_paise": 5000}})
    assert choose_vehicle("sack", "w50", card, 20_000) == V.AUTO
    # Identical rates: the earlier type.
    card = card_with({"e_rickshaw": {**same, "minimum_paise": 5000},
                      "auto": {**same, "minimum_paise": 5000}})
    assert choose_vehicle("sack", "w50", card, 20_000) == V.E_RICKSHAW


def test_when_nothing_covers_the_distance_the_longest_range_is_quoted() -> None:
    assert choose_vehicle("vehicle", "w750", CARD, 200_000) == V.PICKUP
    assert choose_vehicle("bag", "w5", CARD, 200_000) == V.PICKUP
    no_pickup = card_with({}, drop=("pickup",))
    # Only the cart carries it: a relay of carts, as before.
    assert choose_vehicle("vehicle", "w750", no_pickup, 30_000) == V.CART
    # A bicycle would be cheaper (2000 + 600 x 98 against 3000 + 900 x 98), but the
    # motorcycle's 60 km is the longest range on the card.
    assert choose_vehicle("bag", "w5", no_pickup, 100_000) == V.MOTORCYCLE
    # Sack: e-rickshaw 25 km, auto 40 km.
    assert choose_vehicle("sack", "w200", no_pickup, 45_000) == V.AUTO


def test_a_bad_distance_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as err:
        choose_vehicle("bag", "w5", CARD, -1)
    assert err.value.code == "bad_distance"
    with pytest.raises(ValidationError) as err:
        choose_vehicle("sack", "w50", card_with({}, drop=tuple(
            v for v in CARD.to_dict()["vehicles"] if v != "bicycle")), 5_000)
    assert err.value.code == "too_big_for_vehicle"


PARCELS = [("bag", "w5"), ("box", "w20"), ("bag", "w50"), ("sack", "w200"),
           ("vehicle", "w5"), ("box", "w750"), ("vehicle", "w750")]
DISTANCES = [1_000, 5_000, 9_999, 10_000, 12_000, 16_000, 24_000, 30_000, 40_000, 59_000,
             100_000]


@pytest.mark.parametrize(("size", "weight"), PARCELS)
@pytest.mark.parametrize("metres", DISTANCES)
def test_dispatch_can_give_the_quoted_vehicle_the_whole_trip(size: str, weight: str,
                                                              metres: int) -> None:
    vehicle = choose_vehicle(size, weight, CARD, metres)
    hours = d.DispatchConfig().delivery_hours
    for tier in SpeedTier:
        assert d.can_do_direct(vehicle, metres, hours[tier]), (vehicle, tier)
    cap = VEHICLE_CAPACITY[vehicle]
    own = d.VehicleFacts(vehicle, cap.max_weight.max_grams // 1000, cap.max_size)
    assert d.vehicle_fits(own, d.Load(size, weight, ride_m=metres)), vehicle

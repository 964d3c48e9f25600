"""The vehicle a trip is quoted on is chosen by the fare as it will be quoted (review
rprice, session 39): choose_vehicle compared fares without the parcel's fragile surcharge
and without the surge, so on an ops card where a vehicle cheaper per km has the lower
minimum, a flat extra or a multiplier that lifts it over the other's minimum left the
customer priced on the dearer vehicle (fragile 1 km bag: bicycle Rs 40 sold, motorcycle
Rs 35; surge x1.5: bicycle Rs 45 sold, motorcycle Rs 35).
"""

from __future__ import annotations

import pytest

from core.adapters import surge
from core.adapters.db import transaction
from core.adapters.models import RateCardRow
from core.domain.pricing import (
    DEFAULT_RATE_CARD,
    ParcelCategory,
    RateCard,
    SizeBucket,
    SpeedTier,
    VehicleType,
    WeightBucket,
    choose_vehicle,
    quote,
)
from core.services.booking import ParcelSpec, Place, quote_trip

BIKE, MOTO = VehicleType.BICYCLE, VehicleType.MOTORCYCLE


def _card(base_distance_m: int = 2000, **overrides: dict[str, int]) -> RateCard:
    d = DEFAULT_RATE_CARD.to_dict()
    # Bicycle: a higher base, a low minimum; motorcycle: a cheap base, a higher minimum.
    # Both carry a 5 kg bag and both have the range for the trips below.
    d["vehicles"] = {
        "bicycle": {"base_fare_paise": 3000, "base_distance_m": base_distance_m,
                    "per_km_paise": 600, "minimum_paise": 2500},
        "motorcycle": {"base_fare_paise": 2000, "base_distance_m": base_distance_m,
                       "per_km_paise": 900, "minimum_paise": 3500},
    }
    for v, fields in overrides.items():
        d["vehicles"][v].update(fields)
    return RateCard.from_dict(d)


def _fare(card: RateCard, v: VehicleType, *, tier: SpeedTier = SpeedTier.STANDARD,
          fragile: bool = False, surge_bp: int = 10000, metres: int = 1000) -> int:
    return quote(card, distance_m=metres, vehicle=v, size=SizeBucket.BAG,
                 weight=WeightBucket.W5, tier=tier, fragile=fragile,
                 surge_bp=surge_bp).total_paise


def test_a_fragile_parcel_is_quoted_on_the_cheaper_vehicle() -> None:
    card = _card()
    assert (_fare(card, BIKE), _fare(card, MOTO)) == (3000, 3500)
    assert (_fare(card, BIKE, fragile=True), _fare(card, MOTO, fragile=True)) == (4000, 3500)
    assert choose_vehicle(SizeBucket.BAG, WeightBucket.W5, card, 1000) == BIKE
    assert choose_vehicle(SizeBucket.BAG, WeightBucket.W5, card, 1000, fragile=True) == MOTO


def test_a_surged_trip_is_quoted_on_the_cheaper_vehicle() -> None:
    card = _card()
    assert (_fare(card, BIKE, surge_bp=15000), _fare(card, MOTO, surge_bp=15000)) \
        == (4500, 3500)
    assert choose_vehicle(SizeBucket.BAG, WeightBucket.W5, card, 1000,
                          surge_bp=15000) == MOTO


def test_a_known_tier_is_compared_at_that_tier() -> None:
    card = _card()
    # Express x1.40: bicycle Rs 42, motorcycle Rs 35 (its minimum); economy x0.85:
    # bicycle Rs 26, motorcycle Rs 35.
    assert _fare(card, BIKE, tier=SpeedTier.EXPRESS) == 4200
    assert _fare(card, MOTO, tier=SpeedTier.EXPRESS) == 3500
    assert choose_vehicle("bag", "w5", card, 1000, tier="express") == MOTO
    assert choose_vehicle("bag", "w5", card, 1000, tier=SpeedTier.ECONOMY) == BIKE
    assert choose_vehicle("bag", "w5", card, 1000, tier=SpeedTier.STANDARD) == BIKE


def test_every_tier_shown_at_once_gets_the_vehicle_cheapest_at_every_tier() -> None:
    """Both Rs 25 at standard and economy (the bicycle's fare, the motorcycle's minimum),
    but express is Rs 35 by bicycle and Rs 28 by motorcycle: the old tie-break (the lower
    per-km) quoted the bicycle, Rs 7 dearer for an express customer."""
    card = _card(bicycle={"base_fare_paise": 2500}, motorcycle={"minimum_paise": 2500})
    fares = {v: [_fare(card, v, tier=t) for t in SpeedTier] for v in (BIKE, MOTO)}
    assert fares == {BIKE: [3500, 2500, 2500], MOTO: [2800, 2500, 2500]}
    assert choose_vehicle("bag", "w5", card, 1000) == MOTO


def test_beyond_every_range_the_longest_ranged_vehicle_is_still_chosen() -> None:
    # 70 km: beyond both ranges (15, 60 km); the motorcycle goes farthest, though the
    # bicycle would be cheaper, since dispatch relays it on legs within that range.
    card = _card()
    assert _fare(card, BIKE, metres=70_000) < _fare(card, MOTO, metres=70_000)
    assert choose_vehicle("bag", "w5", card, 70_000, fragile=True, surge_bp=15000) == MOTO


# --- through quote_trip: the active card, the parcel, the pickup's surge ----------------

LAXMIPUR = Place(26.8927, 84.48813, pincode="845450", post_office="Laxmipur BO")
BETTIAH = Place(26.80228, 84.51522, pincode="845438", post_office="Bettiah HO")


def _bag(fragile: bool) -> ParcelSpec:
    return ParcelSpec(ParcelCategory.DOCUMENTS, SizeBucket.BAG, WeightBucket.W5,
                      fragile=fragile)


def _activate(card: RateCard) -> None:
    with transaction() as s:
        s.add(RateCardRow(name="s39-bike-motorcycle", card=card.to_dict(), active=True))


@pytest.mark.db
def test_quote_trip_prices_a_fragile_parcel_on_the_cheaper_vehicle(clean_db) -> None:
    # 20 km covered by the base fare: the ~13.6 road km trip costs what 1 km does above.
    _activate(_card(base_distance_m=20_000))
    with transaction() as s:
        plain = quote_trip(s, LAXMIPUR, BETTIAH, _bag(False))
        fragile = quote_trip(s, LAXMIPUR, BETTIAH, _bag(True))
    assert plain.vehicle == "bicycle" and plain.distance_m < 15_000
    assert plain.fares[SpeedTier.STANDARD].total_paise == 3000
    assert fragile.vehicle == "motorcycle"
    assert fragile.fares[SpeedTier.STANDARD].total_paise == 3500  # not the bicycle's Rs 40
    assert fragile.fares[SpeedTier.EXPRESS].total_paise == 4200  # not the bicycle's Rs 56


@pytest.mark.db
def test_quote_trip_prices_a_surged_trip_on_the_cheaper_vehicle(clean_db) -> None:
    _activate(_card(base_distance_m=20_000))
    surge.set_surge_bp("845450", 15000)
    with transaction() as s:
        surged = quote_trip(s, LAXMIPUR, BETTIAH, _bag(False))
        elsewhere = quote_trip(s, BETTIAH, LAXMIPUR, _bag(False))  # no surge at Bettiah
    assert surged.vehicle == "motorcycle"
    assert surged.fares[SpeedTier.STANDARD].total_paise == 3500  # not the bicycle's Rs 45
    assert elsewhere.vehicle == "bicycle"
    assert elsewhere.fares[SpeedTier.STANDARD].total_paise == 3000


def test_a_relay_of_legs_of_no_length_splits_alike() -> None:
    """Review rprice: relay_payouts raised on legs all of zero length (stops at one spot);
    they share alike, the sum still the share."""
    from core.domain.dispatch import MIN_LEG_PAYOUT_PAISE, relay_payouts

    assert relay_payouts(301, [0, 0]) == [151, 150] or relay_payouts(301, [0, 0]) == [150, 151]
    assert sum(relay_payouts(301, [0, 0, 0]) or []) == 301
    assert relay_payouts(2 * MIN_LEG_PAYOUT_PAISE - 1, [0, 0]) is None

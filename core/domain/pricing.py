"""Fares: parcel buckets, which vehicle can carry what, rate cards and integer-paise quotes.

Every amount is an integer number of paise; multipliers are basis points (10000 = x1.00)
and every rounding is half-up, so a quote is reproducible to the paisa on any machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from core.domain.errors import ValidationError
from core.domain.money import format_inr

BP = 10000  # basis points in 1.00


class VehicleType(StrEnum):
    """What a partner rides or drives."""

    BICYCLE = "bicycle"
    MOTORCYCLE = "motorcycle"
    E_RICKSHAW = "e_rickshaw"
    AUTO = "auto"
    PICKUP = "pickup"
    CART = "cart"


class SizeBucket(StrEnum):
    """Parcel size as a villager would describe it, smallest first (compare by ``rank``)."""

    BAG = "bag"  # fits in a shopping bag
    BOX = "box"
    SACK = "sack"
    VEHICLE = "vehicle"  # needs a vehicle of its own

    @property
    def rank(self) -> int:
        """Position from smallest (0); string order of the values is not size order."""
        return _SIZE_ORDER.index(self)


_SIZE_ORDER: tuple[SizeBucket, ...] = tuple(SizeBucket)


class WeightBucket(StrEnum):
    """Weight band named by its upper bound in kg."""

    W5 = "w5"
    W20 = "w20"
    W50 = "w50"
    W200 = "w200"
    W750 = "w750"

    @property
    def max_grams(self) -> int:
        """Heaviest parcel (grams, inclusive) this bucket holds."""
        return int(self.value[1:]) * 1000

    @property
    def rank(self) -> int:
        """Position from lightest (0)."""
        return _WEIGHT_ORDER.index(self)

    @classmethod
    def for_grams(cls, grams: int) -> WeightBucket:
        """Smallest bucket that holds ``grams``; ValidationError if negative or above 750 kg."""
        if isinstance(grams, bool) or not isinstance(grams, int) or grams < 0:
            raise ValidationError("weight must be a non-negative number of grams", field="weight")
        for bucket in _WEIGHT_ORDER:
            if grams <= bucket.max_grams:
                return bucket
        raise ValidationError("parcel is heavier than 750 kg", code="too_heavy", field="weight")


_WEIGHT_ORDER: tuple[WeightBucket, ...] = tuple(WeightBucket)


class SpeedTier(StrEnum):
    """How soon the customer wants it; priced by a multiplier on the rate card."""

    EXPRESS = "express"
    STANDARD = "standard"
    ECONOMY = "economy"


class ParcelCategory(StrEnum):
    """What is inside, for handling and for the partner's message."""

    DOCUMENTS = "documents"
    FOOD = "food"
    CLOTHES = "clothes"
    MEDICINE = "medicine"
    GRAIN_PRODUCE = "grain_produce"
    ELECTRONICS = "electronics"
    HOUSEHOLD = "household"
    OTHER = "other"


# The most a parcel may be declared worth, one rule for every channel (the app's API, the
# chat, which asks it in rupees): ₹10 lakh. Beyond it, talk to ops.
MAX_DECLARED_VALUE_PAISE = 10_00_000_00


def check_declared_value(paise: int) -> None:
    """ValidationError ``bad_value`` (field declared_value_paise) for a declared value
    below nothing or above MAX_DECLARED_VALUE_PAISE."""
    if paise < 0:
        raise ValidationError("declared value cannot be negative", code="bad_value",
                              field="declared_value_paise")
    if paise > MAX_DECLARED_VALUE_PAISE:
        raise ValidationError(f"a parcel may be declared worth at most "
                              f"{format_inr(MAX_DECLARED_VALUE_PAISE)}: for more, talk to us",
                              code="bad_value", field="declared_value_paise")


@dataclass(frozen=True)
class Capacity:
    """Largest size and weight bucket a vehicle type can take."""

    max_size: SizeBucket
    max_weight: WeightBucket


VEHICLE_CAPACITY: Mapping[VehicleType, Capacity] = MappingProxyType(
    {
        VehicleType.BICYCLE: Capacity(SizeBucket.BOX, WeightBucket.W20),
        VehicleType.MOTORCYCLE: Capacity(SizeBucket.BOX, WeightBucket.W20),
        VehicleType.E_RICKSHAW: Capacity(SizeBucket.SACK, WeightBucket.W200),
        VehicleType.AUTO: Capacity(SizeBucket.SACK, WeightBucket.W200),
        VehicleType.CART: Capacity(SizeBucket.VEHICLE, WeightBucket.W750),
        VehicleType.PICKUP: Capacity(SizeBucket.VEHICLE, WeightBucket.W750),
    }
)


# Average rural speed (km/h) and the longest single leg (km) a vehicle type is asked to do.
# Dispatch checks a leg against these; a quote picks a vehicle whose range covers the trip.
VEHICLE_SPEED_KMH: Mapping[VehicleType, int] = {
    VehicleType.BICYCLE: 12, VehicleType.MOTORCYCLE: 30, VehicleType.E_RICKSHAW: 15,
    VehicleType.AUTO: 25, VehicleType.PICKUP: 35, VehicleType.CART: 6,
}
VEHICLE_RANGE_KM: Mapping[VehicleType, int] = {
    VehicleType.BICYCLE: 15, VehicleType.MOTORCYCLE: 60, VehicleType.E_RICKSHAW: 25,
    VehicleType.AUTO: 40, VehicleType.PICKUP: 150, VehicleType.CART: 10,
}


def can_carry(
    vehicle: VehicleType | str, size: SizeBucket | str, weight: WeightBucket | str
) -> bool:
    """True if this vehicle type may be offered a parcel of this size and weight."""
    cap = VEHICLE_CAPACITY[VehicleType(vehicle)]
    return (
        SizeBucket(size).rank <= cap.max_size.rank
        and WeightBucket(weight).rank <= cap.max_weight.rank
    )


def mul_bp(amount: int, bp: int) -> int:
    """``amount * bp / 10000`` rounded half-up (half away from zero for negatives), exactly."""
    n = amount * bp
    q = (abs(n) + BP // 2) // BP
    return -q if n < 0 else q


def _check_int(name: str, value: Any, *, code: str = "validation_error") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(f"{name} must be a non-negative integer", code=code, field=name)
    return value


@dataclass(frozen=True)
class VehicleRate:
    """Per-vehicle tariff: base fare covering ``base_distance_m``, then ``per_km_paise``."""

    base_fare_paise: int
    base_distance_m: int
    per_km_paise: int
    minimum_paise: int

    def __post_init__(self) -> None:
        for name in ("base_fare_paise", "base_distance_m", "per_km_paise", "minimum_paise"):
            _check_int(name, getattr(self, name), code="bad_rate_card")
        # Fares are charged in whole rupees: a minimum that is not one would be rounded
        # below itself, and none (with no base fare) would price a ride at nothing.
        if self.minimum_paise < 100 or self.minimum_paise % 100:
            raise ValidationError(
                f"minimum_paise must be whole rupees, at least 100 (got {self.minimum_paise})",
                code="bad_rate_card", field="minimum_paise")


def _frozen_map(enum_type: type[StrEnum], raw: Mapping[Any, Any], name: str, *,
                complete: bool) -> Any:
    try:
        out = {enum_type(k): v for k, v in raw.items()}
    except (ValueError, AttributeError, TypeError) as exc:
        raise ValidationError(f"{name}: {exc}", code="bad_rate_card", field=name) from exc
    if complete and set(out) != set(enum_type):
        missing = sorted(str(m) for m in set(enum_type) - set(out))
        raise ValidationError(f"{name}: missing {missing}", code="bad_rate_card", field=name)
    return MappingProxyType(out)


@dataclass(frozen=True)
class RateCard:
    """Everything a quote depends on; stored as JSON via ``to_dict``/``from_dict``.

    ``vehicles`` may omit types not offered in a region; every size, weight and tier must be
    priced. ``detour_factor_bp`` turns straight-line distance into road distance.
    """

    vehicles: Mapping[VehicleType, VehicleRate]
    size_surcharge_paise: Mapping[SizeBucket, int]
    weight_surcharge_paise: Mapping[WeightBucket, int]
    fragile_surcharge_paise: int
    tier_multiplier_bp: Mapping[SpeedTier, int]
    surge_cap_bp: int
    commission_bp: int
    detour_factor_bp: int = 13500

    def __post_init__(self) -> None:
        fix = object.__setattr__
        fix(self, "vehicles", _frozen_map(VehicleType, self.vehicles, "vehicles", complete=False))
        if not self.vehicles:
            raise ValidationError("rate card prices no vehicle", code="bad_rate_card")
        for v, rate in self.vehicles.items():
            if not isinstance(rate, VehicleRate):
                raise ValidationError(f"vehicles.{v} is not a VehicleRate", code="bad_rate_card")
        for name, enum_type in (
            ("size_surcharge_paise", SizeBucket),
            ("weight_surcharge_paise", WeightBucket),
            ("tier_multiplier_bp", SpeedTier),
        ):
            mapping = _frozen_map(enum_type, getattr(self, name), name, complete=True)
            for key, value in mapping.items():
                _check_int(f"{name}.{key}", value, code="bad_rate_card")
            fix(self, name, mapping)
        for name in (
            "fragile_surcharge_paise",
            "surge_cap_bp",
            "commission_bp",
            "detour_factor_bp",
        ):
            _check_int(name, getattr(self, name), code="bad_rate_card")
        if self.commission_bp >= BP:
            raise ValidationError("commission must be below 100 %", code="bad_rate_card")
        if self.surge_cap_bp < BP:
            raise ValidationError("surge cap must be at least x1.00", code="bad_rate_card")
        if self.detour_factor_bp < BP:
            raise ValidationError("detour factor below x1.00", code="bad_rate_card")
        if any(m == 0 for m in self.tier_multiplier_bp.values()):
            raise ValidationError("tier multiplier of zero", code="bad_rate_card")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (string keys, ints only)."""
        return {
            "vehicles": {
                str(v): {
                    "base_fare_paise": r.base_fare_paise,
                    "base_distance_m": r.base_distance_m,
                    "per_km_paise": r.per_km_paise,
                    "minimum_paise": r.minimum_paise,
                }
                for v, r in self.vehicles.items()
            },
            "size_surcharge_paise": {str(k): v for k, v in self.size_surcharge_paise.items()},
            "weight_surcharge_paise": {str(k): v for k, v in self.weight_surcharge_paise.items()},
            "fragile_surcharge_paise": self.fragile_surcharge_paise,
            "tier_multiplier_bp": {str(k): v for k, v in self.tier_multiplier_bp.items()},
            "surge_cap_bp": self.surge_cap_bp,
            "commission_bp": self.commission_bp,
            "detour_factor_bp": self.detour_factor_bp,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RateCard:
        """Inverse of ``to_dict``; ValidationError (code ``bad_rate_card``) on any bad field."""
        expected = set(cls.__dataclass_fields__)
        keys = set(data)
        if keys - expected or (expected - {"detour_factor_bp"}) - keys:
            raise ValidationError(
                f"rate card keys: unexpected {sorted(keys - expected)}, "
                f"missing {sorted((expected - {'detour_factor_bp'}) - keys)}",
                code="bad_rate_card",
            )
        try:
            vehicles = {k: VehicleRate(**dict(v)) for k, v in dict(data["vehicles"]).items()}
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"vehicles: {exc}", code="bad_rate_card") from exc
        kwargs = {k: data[k] for k in keys if k != "vehicles"}
        for name in ("size_surcharge_paise", "weight_surcharge_paise", "tier_multiplier_bp"):
            if not isinstance(kwargs[name], Mapping):
                raise ValidationError(f"{name} must be an object", code="bad_rate_card")
        return cls(vehicles=vehicles, **kwargs)


def _rupees(r: int) -> int:
    return r * 100


DEFAULT_RATE_CARD = RateCard(
    vehicles={
        VehicleType.BICYCLE: VehicleRate(_rupees(20), 2000, _rupees(6), _rupees(25)),
        VehicleType.MOTORCYCLE: VehicleRate(_rupees(30), 2000, _rupees(9), _rupees(35)),
        VehicleType.E_RICKSHAW: VehicleRate(_rupees(40), 2000, _rupees(11), _rupees(50)),
        VehicleType.AUTO: VehicleRate(_rupees(50), 2000, _rupees(13), _rupees(60)),
        VehicleType.CART: VehicleRate(_rupees(60), 2000, _rupees(10), _rupees(80)),
        VehicleType.PICKUP: VehicleRate(_rupees(150), 3000, _rupees(22), _rupees(200)),
    },
    size_surcharge_paise={
        SizeBucket.BAG: 0,
        SizeBucket.BOX: _rupees(5),
        SizeBucket.SACK: _rupees(15),
        SizeBucket.VEHICLE: _rupees(40),
    },
    weight_surcharge_paise={
        WeightBucket.W5: 0,
        WeightBucket.W20: _rupees(5),
        WeightBucket.W50: _rupees(15),
        WeightBucket.W200: _rupees(40),
        WeightBucket.W750: _rupees(100),
    },
    fragile_surcharge_paise=_rupees(10),
    tier_multiplier_bp={
        SpeedTier.EXPRESS: 14000,
        SpeedTier.STANDARD: 10000,
        SpeedTier.ECONOMY: 8500,
    },
    surge_cap_bp=15000,
    commission_bp=1200,
    detour_factor_bp=13500,
)


def choose_vehicle(
    size: SizeBucket | str,
    weight: WeightBucket | str,
    card: RateCard = DEFAULT_RATE_CARD,
    distance_m: int | None = None,
    *,
    fragile: bool = False,
    surge_bp: int = BP,
    tier: SpeedTier | str | None = None,
) -> VehicleType:
    """Cheapest vehicle on ``card`` able to carry the parcel.

    Without ``distance_m``: by minimum fare, then per-km, then ``VehicleType`` order.
    With ``distance_m`` (road metres): among the able vehicles whose range
    (``VEHICLE_RANGE_KM``) covers the trip, the one whose fare (``quote``) is lowest, ties
    as above; if none covers it, the able vehicle with the longest range (dispatch then
    carries it by relay), ties by that same fare.

    The fare compared is the one the customer will be quoted: with the parcel's
    ``fragile`` surcharge and the ``surge_bp`` at the pickup, since a flat extra or a
    multiplier can push a fare over another vehicle's minimum and change which is cheaper.
    ``tier``: the speed tier being sold, compared at that tier; None (a quote showing every
    tier from one vehicle) compares standard, then express, then economy, so the vehicle
    cheapest at every tier is chosen whenever there is one (otherwise the one cheapest at
    standard: minimums do not scale with the tier, so on some cards no vehicle is).
    """
    able = [v for v in card.vehicles if can_carry(v, size, weight)]
    if not able:
        raise ValidationError(
            "no vehicle on this rate card can carry the parcel",
            code="too_big_for_vehicle",
            field="size",
        )
    order = list(VehicleType)

    def by_card(v: VehicleType) -> tuple[int, int, int]:
        return card.vehicles[v].minimum_paise, card.vehicles[v].per_km_paise, order.index(v)

    if distance_m is None:
        return min(able, key=by_card)
    _check_int("distance_m", distance_m, code="bad_distance")
    trip_m = distance_m
    tiers = (SpeedTier.STANDARD, SpeedTier.EXPRESS, SpeedTier.ECONOMY) if tier is None \
        else (SpeedTier(tier),)

    def fares(v: VehicleType) -> tuple[int, ...]:
        return tuple(quote(card, distance_m=trip_m, vehicle=v, size=size, weight=weight,
                           tier=t, fragile=fragile, surge_bp=surge_bp).total_paise
                     for t in tiers)

    in_range = [v for v in able if trip_m <= VEHICLE_RANGE_KM[v] * 1000]
    if in_range:
        return min(in_range, key=lambda v: (*fares(v), *by_card(v)))
    return min(able, key=lambda v: (-VEHICLE_RANGE_KM[v], *fares(v), *by_card(v)))


def road_distance_m(straight_m: int, card: RateCard = DEFAULT_RATE_CARD) -> int:
    """Straight-line metres times the card's detour factor (half-up): rural roads wind."""
    _check_int("distance_m", straight_m, code="bad_distance")
    return mul_bp(straight_m, card.detour_factor_bp)


FARE_LINE_CODES = frozenset(
    {"base", "distance", "size", "weight", "fragile", "tier", "surge", "minimum", "rounding"}
)


@dataclass(frozen=True)
class FareLine:
    """One line of a fare; tier/surge/minimum/rounding hold what they add (or subtract)."""

    code: str
    amount_paise: int

    def __post_init__(self) -> None:
        if self.code not in FARE_LINE_CODES:
            raise ValueError(f"unknown fare line {self.code!r}")


@dataclass(frozen=True)
class FareBreakdown:
    """A priced ride: lines sum exactly to the total; commission + partner share == total."""

    lines: tuple[FareLine, ...]
    total_paise: int
    commission_paise: int
    partner_share_paise: int
    distance_m: int
    vehicle: VehicleType
    tier: SpeedTier
    surge_bp: int = BP

    def __post_init__(self) -> None:
        if sum(line.amount_paise for line in self.lines) != self.total_paise:
            raise ValueError("fare lines do not sum to the total")
        if self.commission_paise + self.partner_share_paise != self.total_paise:
            raise ValueError("commission and partner share do not sum to the total")

    def line(self, code: str) -> int:
        """Amount of the line with this code, 0 if the fare has no such line."""
        return sum(line.amount_paise for line in self.lines if line.code == code)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict, e.g. to keep the exact quote on the booking."""
        return {
            "lines": [{"code": ln.code, "amount_paise": ln.amount_paise} for ln in self.lines],
            "total_paise": self.total_paise,
            "commission_paise": self.commission_paise,
            "partner_share_paise": self.partner_share_paise,
            "distance_m": self.distance_m,
            "vehicle": str(self.vehicle),
            "tier": str(self.tier),
            "surge_bp": self.surge_bp,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FareBreakdown:
        """Inverse of ``to_dict`` (re-checks the invariants)."""
        return cls(
            lines=tuple(FareLine(d["code"], int(d["amount_paise"])) for d in data["lines"]),
            total_paise=int(data["total_paise"]),
            commission_paise=int(data["commission_paise"]),
            partner_share_paise=int(data["partner_share_paise"]),
            distance_m=int(data["distance_m"]),
            vehicle=VehicleType(data["vehicle"]),
            tier=SpeedTier(data["tier"]),
            surge_bp=int(data["surge_bp"]),
        )


def quote(
    card: RateCard,
    *,
    distance_m: int,
    vehicle: VehicleType | str,
    size: SizeBucket | str,
    weight: WeightBucket | str,
    tier: SpeedTier | str,
    fragile: bool = False,
    surge_bp: int = BP,
) -> FareBreakdown:
    """Price one ride over ``distance_m`` road metres, all in integer paise, half-up.

    1. distance = per_km x max(0, distance_m - base_distance_m) / 1000
    2. subtotal = base + distance + size + weight (+ fragile)
    3. tier line = subtotal x tier_bp - subtotal
    4. surge line = that x clamp(surge_bp, 10000, surge_cap_bp) - that
    5. minimum line tops the fare up to the vehicle's minimum; where it does, the surge
       line is left out (it changes nothing) and the minimum line tops up step 3's fare
    6. rounding line brings it to whole rupees (half-up); that is the total
    7. commission = total x commission_bp; partner share = total - commission
    Zero lines are left out, except ``base``.
    """
    _check_int("distance_m", distance_m, code="bad_distance")
    _check_int("surge_bp", surge_bp)
    v, sz, wt, tr = VehicleType(vehicle), SizeBucket(size), WeightBucket(weight), SpeedTier(tier)
    if not can_carry(v, sz, wt):
        raise ValidationError(
            f"a {v} cannot carry a {sz} parcel of {wt}", code="too_big_for_vehicle", field="size"
        )
    rate = card.vehicles.get(v)
    if rate is None:
        raise ValidationError(
            f"{v} is not offered on this rate card", code="vehicle_not_offered", field="vehicle"
        )

    extra_m = max(0, distance_m - rate.base_distance_m)
    lines: list[FareLine] = [FareLine("base", rate.base_fare_paise)]

    def add(code: str, amount: int) -> None:
        if amount:
            lines.append(FareLine(code, amount))

    add("distance", (rate.per_km_paise * extra_m + 500) // 1000)
    add("size", card.size_surcharge_paise[sz])
    add("weight", card.weight_surcharge_paise[wt])
    add("fragile", card.fragile_surcharge_paise if fragile else 0)
    subtotal = sum(line.amount_paise for line in lines)

    after_tier = mul_bp(subtotal, card.tier_multiplier_bp[tr])
    add("tier", after_tier - subtotal)
    effective_surge = min(max(surge_bp, BP), card.surge_cap_bp)
    after_surge = mul_bp(after_tier, effective_surge)
    if after_surge < rate.minimum_paise:
        # The minimum fare is charged, busy time or not: no "Busy time extra" line that
        # the "Minimum fare" line under it would cancel.
        fare = rate.minimum_paise
        add("minimum", fare - after_tier)
    else:
        fare = after_surge
        add("surge", after_surge - after_tier)
    total = (fare + 50) // 100 * 100
    add("rounding", total - fare)

    commission = mul_bp(total, card.commission_bp)
    return FareBreakdown(
        lines=tuple(lines),
        total_paise=total,
        commission_paise=commission,
        partner_share_paise=total - commission,
        distance_m=distance_m,
        vehicle=v,
        tier=tr,
        surge_bp=effective_surge,
    )


def quote_tiers(
    card: RateCard,
    *,
    distance_m: int,
    vehicle: VehicleType | str,
    size: SizeBucket | str,
    weight: WeightBucket | str,
    fragile: bool = False,
    surge_bp: int = BP,
) -> dict[SpeedTier, FareBreakdown]:
    """One quote per speed tier (express, standard, economy), for the customer to pick."""
    return {
        tier: quote(
            card,
            distance_m=distance_m,
            vehicle=vehicle,
            size=size,
            weight=weight,
            tier=tier,
            fragile=fragile,
            surge_bp=surge_bp,
        )
        for tier in SpeedTier
    }


def split_by_weights(total_paise: int, weights: Sequence[int]) -> list[int]:
    """Split ``total_paise`` in proportion to ``weights`` (largest remainder, ties by index).

    Shares sum exactly to the total; used to split a partner share over relay legs by distance.
    """
    _check_int("total_paise", total_paise)
    if not weights:
        raise ValidationError("nothing to split between", field="weights")
    for w in weights:
        _check_int("weights", w)
    denom = sum(weights)
    if denom == 0:
        raise ValidationError("weights must not all be zero", field="weights")
    shares = [total_paise * w // denom for w in weights]
    leftover = total_paise - sum(shares)
    by_remainder = sorted(
        range(len(weights)), key=lambda i: (-(total_paise * weights[i] % denom), i)
    )
    for i in by_remainder[:leftover]:
        shares[i] += 1
    return shares

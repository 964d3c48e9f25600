"""Dispatch rules: who may carry a parcel, how candidates rank, how offers cascade, and
what a partner's SMS means. Pure: no Flask, SQLAlchemy or Redis.

Eligibility (every condition must hold; ``ineligible_reason`` names the first that fails):

* on duty;
* payable: KYC verified and a Razorpay linked account to pay the leg's payout to (a
  partner who cannot be paid is never offered a job);
* fewer active legs (assigned, picked up, locked) than the partner's ``max_active_legs``;
* trust tier allowed for the parcel's declared value (``TRUST_LIMIT_PAISE``);
* one active vehicle that can carry it: the vehicle type's capacity
  (``core.domain.pricing.VEHICLE_CAPACITY``: a bicycle takes up to a box of 20 kg, a pickup
  a 750 kg load), the vehicle's own largest size, and its payload at least the heaviest
  parcel the weight bucket allows (a 15 kg bicycle never gets a "up to 20 kg" parcel);
* serving the area: found near the pickup in the geo index (live position or home Point).

Score (lower is better, 0..1), each term normalised to 0..1 and weighted by
``DISPATCH_WEIGHT_*`` (defaults 50/20/15/15):

* distance: metres to the pickup / current search radius (capped at 1);
* rating: 1 - rating/5;
* acceptance: 1 - (accepted + 1) / (offered + 2) (a new partner starts at 50 %); an offer
  the platform withdrew (taken by another partner, booking closed) is not counted as
  offered;
* fairness: today's earnings / the highest earnings among the candidates.

Ties break on lower earnings today, then distance, then partner id, so at equal distance
the partner who earned least today comes first.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time
from enum import StrEnum
from functools import lru_cache

from core.domain.otp import OTP_DIGITS
from core.domain.pricing import (
    VEHICLE_RANGE_KM,
    VEHICLE_SPEED_KMH,
    SizeBucket,
    SpeedTier,
    VehicleType,
    WeightBucket,
    can_carry,
    split_by_weights,
)


class DispatchConfigError(ValueError):
    """A DISPATCH_* environment variable is malformed."""


# --- configuration --------------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    """Score weights (non-negative integers, not all zero)."""

    distance: int = 50
    rating: int = 20
    acceptance: int = 15
    fairness: int = 15

    @property
    def total(self) -> int:
        return self.distance + self.rating + self.acceptance + self.fairness


@dataclass(frozen=True)
class DispatchConfig:
    """Everything dispatch reads from the environment (see ``from_env`` for the names)."""

    batch_sizes: tuple[int, ...] = (1, 3)
    offer_timeout_s: int = 90
    offer_grace_s: int = 30
    radii_km: tuple[float, ...] = (3.0, 6.0, 10.0, 20.0)
    location_max_age_s: int = 900
    retry_s: int = 120
    search_deadline_s: Mapping[SpeedTier, int] = field(default_factory=lambda: {
        SpeedTier.EXPRESS: 20 * 60, SpeedTier.STANDARD: 60 * 60, SpeedTier.ECONOMY: 180 * 60,
    })
    delivery_hours: Mapping[SpeedTier, int] = field(default_factory=lambda: {
        SpeedTier.EXPRESS: 3, SpeedTier.STANDARD: 8, SpeedTier.ECONOMY: 24,
    })
    weights: Weights = Weights()
    max_candidates: int = 20
    otp_max_failures: int = 5
    # The recipient's night (minutes after midnight, India time: from, until), when her
    # drop code waits for the morning or the pickup; None: sent at any hour.
    drop_code_night: tuple[int, int] | None = (21 * 60, 7 * 60)

    def batch_size(self, batch_no: int) -> int:
        """Offers in batch ``batch_no`` (0-based): the last configured size repeats."""
        return self.batch_sizes[min(batch_no, len(self.batch_sizes) - 1)]


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise DispatchConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise DispatchConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _list(env: Mapping[str, str], name: str, default: tuple, cast) -> tuple:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        values = tuple(cast(x.strip()) for x in raw.split(",") if x.strip())
    except ValueError:
        raise DispatchConfigError(f"{name} must be a comma-separated list, got {raw!r}") from None
    # inf and nan parse as floats: a search radius of inf would offer a job to partners
    # anywhere, and nan compares false with every distance.
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise DispatchConfigError(f"{name} needs positive finite values, got {raw!r}")
    return values


def _night(env: Mapping[str, str], name: str,
           default: tuple[int, int] | None) -> tuple[int, int] | None:
    """``HH:MM-HH:MM`` (from, until; past midnight), or ``off``."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw == "off":
        return None
    bounds: list[int] = []
    for part in raw.split("-"):
        hours, sep, minutes = part.strip().partition(":")
        if not (sep and hours.isdigit() and minutes.isdigit() and len(minutes) == 2
                and int(hours) < 24 and int(minutes) < 60):
            bounds = []
            break
        bounds.append(int(hours) * 60 + int(minutes))
    if len(bounds) != 2 or bounds[0] == bounds[1]:
        raise DispatchConfigError(f"{name} must look like 21:00-07:00 or be off, got {raw!r}")
    return bounds[0], bounds[1]


def _per_tier(env: Mapping[str, str], name: str, default: Mapping[SpeedTier, int],
              scale: int) -> dict[SpeedTier, int]:
    raw = env.get(name, "").strip()
    out = dict(default)
    if not raw:
        return out
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        try:
            tier = SpeedTier(key.strip().lower())
            number = int(value.strip())
        except ValueError:
            raise DispatchConfigError(
                f"{name} must look like express=20,standard=60; got {raw!r}") from None
        if not sep or number <= 0:
            raise DispatchConfigError(f"{name}: {item!r} needs a positive number")
        out[tier] = number * scale
    return out


def from_env(env: Mapping[str, str]) -> DispatchConfig:
    """Parse and validate the DISPATCH_* variables (defaults in ``DispatchConfig``).

    DISPATCH_BATCH_SIZES (1,3), DISPATCH_OFFER_TIMEOUT_S (90), DISPATCH_OFFER_GRACE_S (30),
    DISPATCH_RADII_KM (3,6,10,20), DISPATCH_LOCATION_MAX_AGE_S (900), DISPATCH_RETRY_S (120),
    DISPATCH_SEARCH_DEADLINE_MIN (express=20,standard=60,economy=180),
    DISPATCH_DELIVERY_HOURS (express=3,standard=8,economy=24), DISPATCH_WEIGHT_DISTANCE (50),
    DISPATCH_WEIGHT_RATING (20), DISPATCH_WEIGHT_ACCEPTANCE (15), DISPATCH_WEIGHT_FAIRNESS
    (15), DISPATCH_MAX_CANDIDATES (20), DISPATCH_OTP_MAX_FAILURES (5),
    DISPATCH_DROP_CODE_NIGHT (21:00-07:00 India time, or off).
    """
    d = DispatchConfig()
    weights = Weights(
        distance=_int(env, "DISPATCH_WEIGHT_DISTANCE", d.weights.distance, 0),
        rating=_int(env, "DISPATCH_WEIGHT_RATING", d.weights.rating, 0),
        acceptance=_int(env, "DISPATCH_WEIGHT_ACCEPTANCE", d.weights.acceptance, 0),
        fairness=_int(env, "DISPATCH_WEIGHT_FAIRNESS", d.weights.fairness, 0),
    )
    if weights.total == 0:
        raise DispatchConfigError("DISPATCH_WEIGHT_*: at least one weight must be positive")
    radii = tuple(sorted(_list(env, "DISPATCH_RADII_KM", d.radii_km, float)))
    return DispatchConfig(
        batch_sizes=_list(env, "DISPATCH_BATCH_SIZES", d.batch_sizes, int),
        offer_timeout_s=_int(env, "DISPATCH_OFFER_TIMEOUT_S", d.offer_timeout_s, 5),
        offer_grace_s=_int(env, "DISPATCH_OFFER_GRACE_S", d.offer_grace_s, 0),
        radii_km=radii,
        location_max_age_s=_int(env, "DISPATCH_LOCATION_MAX_AGE_S", d.location_max_age_s, 1),
        retry_s=_int(env, "DISPATCH_RETRY_S", d.retry_s, 1),
        search_deadline_s=_per_tier(env, "DISPATCH_SEARCH_DEADLINE_MIN", d.search_deadline_s,
                                    60),
        delivery_hours=_per_tier(env, "DISPATCH_DELIVERY_HOURS", d.delivery_hours, 1),
        weights=weights,
        max_candidates=_int(env, "DISPATCH_MAX_CANDIDATES", d.max_candidates, 1),
        otp_max_failures=_int(env, "DISPATCH_OTP_MAX_FAILURES", d.otp_max_failures, 1),
        drop_code_night=_night(env, "DISPATCH_DROP_CODE_NIGHT", d.drop_code_night),
    )


# --- eligibility ----------------------------------------------------------------------

# Highest declared value (paise) each trust tier may carry; tier 3 is unlimited.
TRUST_LIMIT_PAISE: Mapping[int, int | None] = {0: 1_000_00, 1: 5_000_00, 2: 25_000_00, 3: None}

# VEHICLE_SPEED_KMH and VEHICLE_RANGE_KM (imported above) live in pricing, which picks a
# vehicle whose range covers the trip; they stay importable from here as before.
_RANGE_M = {str(vt): km * 1000 for vt, km in VEHICLE_RANGE_KM.items()}


@dataclass(frozen=True)
class VehicleFacts:
    type: VehicleType | str
    payload_kg: int
    max_size: SizeBucket | str
    active: bool = True


@dataclass(frozen=True)
class PartnerFacts:
    """What eligibility needs to know about one partner."""

    partner_id: int
    on_duty: bool
    active_legs: int
    max_active_legs: int
    trust_tier: int
    vehicles: tuple[VehicleFacts, ...]
    # KYC verified and a payout (linked) account: the leg's payout can reach them.
    payable: bool = True


@dataclass(frozen=True)
class Load:
    """The parcel(s) of a leg as dispatch sees them."""

    size: SizeBucket | str
    weight: WeightBucket | str
    declared_value_paise: int = 0
    ride_m: int = 0  # the leg to ride, when known: a vehicle must have the range for it


def vehicle_fits(v: VehicleFacts, load: Load) -> bool:
    """True if this vehicle may carry the load (type capacity, own size and payload) as
    far as the leg goes (its type's range)."""
    return v.active and _fits(str(v.type), v.payload_kg, str(v.max_size), str(load.size),
                              str(load.weight)) \
        and load.ride_m <= _RANGE_M[str(v.type)]


@lru_cache(maxsize=4096)
def _fits(vehicle_type: str, payload_kg: int, max_size: str, size_name: str,
          weight_name: str) -> bool:
    # A ranking asks this for every vehicle of some 60 partners; the answer depends on
    # a few dozen combinations, so it is worked out once per process.
    size, weight = SizeBucket(size_name), WeightBucket(weight_name)
    return (
        can_carry(vehicle_type, size, weight)
        and size.rank <= SizeBucket(max_size).rank
        and weight.max_grams <= payload_kg * 1000
    )


def trust_allows(tier: int, declared_value_paise: int) -> bool:
    limit = TRUST_LIMIT_PAISE.get(tier, 0)
    return limit is None or declared_value_paise <= limit


def ineligible_reason(p: PartnerFacts, load: Load) -> str | None:
    """None if the partner may be offered the load, else why not (a stable code)."""
    if not p.on_duty:
        return "off_duty"
    if not p.payable:
        return "unpayable"
    if p.active_legs >= p.max_active_legs:
        return "at_capacity"
    if not trust_allows(p.trust_tier, load.declared_value_paise):
        return "trust_tier"
    if not any(vehicle_fits(v, load) for v in p.vehicles):
        return "vehicle"
    return None


def can_do_direct(vehicle: VehicleType | str, distance_m: int, delivery_hours: int) -> bool:
    """True if one ride on this vehicle type covers ``distance_m`` within the tier's time."""
    vt = VehicleType(vehicle)
    if distance_m > VEHICLE_RANGE_KM[vt] * 1000:
        return False
    return distance_m * 3600 <= VEHICLE_SPEED_KMH[vt] * 1000 * delivery_hours * 3600


# --- ranking --------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    partner_id: int
    distance_m: int
    rating_x100: int = 450
    offers_received: int = 0
    offers_accepted: int = 0
    earned_today_paise: int = 0


def acceptance_rate(received: int, accepted: int) -> float:
    """Smoothed acceptance rate (Laplace): a new partner counts as 50 %."""
    return (max(accepted, 0) + 1) / (max(received, 0) + 2)


def score(c: Candidate, w: Weights, radius_m: int, max_earned_paise: int) -> float:
    """The documented score (module docstring); lower is better, between 0 and 1."""
    d = min(c.distance_m / radius_m, 1.0) if radius_m > 0 else 0.0
    r = 1.0 - min(max(c.rating_x100, 0), 500) / 500
    a = 1.0 - acceptance_rate(c.offers_received, c.offers_accepted)
    f = c.earned_today_paise / max_earned_paise if max_earned_paise > 0 else 0.0
    total = (w.distance * d + w.rating * r + w.acceptance * a + w.fairness * f) / w.total
    return round(total, 9)


def rank(cands: Iterable[Candidate], w: Weights, radius_m: int) -> list[Candidate]:
    """Candidates best first (score, then earned today, distance, partner id)."""
    items = list(cands)
    top = max((c.earned_today_paise for c in items), default=0)
    return sorted(items, key=lambda c: (score(c, w, radius_m, top), c.earned_today_paise,
                                        c.distance_m, c.partner_id))


# --- relay planning -------------------------------------------------------------------


# A customer's place this close (by road) to the relay's first or last Point is served from
# there: the rider of the next leg rides it in a minute or two, far less than a rider of
# its own, an OTP handover and a payout would cost. Pincode and post-office pickups sit
# exactly on a Point (both use the post office's coordinates), so without this the relay
# would start with a 0 m leg.
RELAY_MERGE_RADIUS_M = 300
# The longest a relay may be, in percent of the direct trip. A Point a few km off the road
# adds less; more means the parcel goes the long way round, late, and the riders share a
# partner share priced on the direct distance over that many more km.
RELAY_MAX_LENGTH_PCT = 130
# The least a relay leg is paid: Razorpay refuses Route transfers under 100 paise, so a
# leg paid less could never be settled to its rider.
MIN_LEG_PAYOUT_PAISE = 100


@dataclass(frozen=True)
class Stop:
    lat: float
    lng: float
    point_id: int | None = None


# How many of the Points nearest each end a relay may go through (plan_relay): the
# nearest first; the next ones when no relay through it holds (it lies behind the pickup,
# say). A few pairs, each a road distance or two, and no more riders asked about than
# the Points they start from.
RELAY_POINT_CHOICES = 3


def plan_relay(pickup: Stop, drop: Stop, points: Sequence[Stop], dist,
               max_leg_m: int | Callable[[Stop], int | None] | None = None,
               ) -> list[Stop] | None:
    """Stops of a relay pickup -> Point A -> Point B -> drop, or None if no useful relay.

    A is the Point nearest the pickup, B the one nearest the drop (the same Point gives a
    two-leg relay). ``dist(a, b)`` returns metres. A Point within ``RELAY_MERGE_RADIUS_M``
    of the stop before it, or of the drop, is left out rather than given a leg that short:
    the neighbouring leg starts (ends) at the customer's own place, where the parcel
    really changes hands. A relay is only useful if every leg is shorter than the direct
    trip and within ``max_leg_m`` (the range of the vehicles that would ride it, when
    known: one figure for every leg, or a function of the leg's start, since the riders
    of a leg are those near where it starts), and the whole is at most
    ``RELAY_MAX_LENGTH_PCT`` of the direct trip.

    When the relay through those two is no use (the Point nearest the pickup lies behind
    it, away from the drop, and makes a leg nobody can ride), A and B are taken among the
    ``RELAY_POINT_CHOICES`` Points nearest each end, and the shortest relay that is of use
    is kept (at equal length, the one through the nearer Points).
    """
    if not points:
        return None
    near_pickup = sorted(points, key=lambda p: (dist(pickup, p), p.point_id or 0))
    near_drop = sorted(points, key=lambda p: (dist(drop, p), p.point_id or 0))
    direct = dist(pickup, drop)
    best: tuple[tuple[int, int, int], list[Stop]] | None = None
    for i, a in enumerate(near_pickup[:RELAY_POINT_CHOICES]):
        for j, b in enumerate(near_drop[:RELAY_POINT_CHOICES]):
            stops = _relay_through(pickup, drop, a, b, dist)
            if stops is None:
                continue
            legs = [dist(x, y) for x, y in zip(stops, stops[1:], strict=False)]
            key = (sum(legs), i + j, i)
            if best is not None and key >= best[0]:
                continue
            if _relay_of_use(stops, legs, direct, max_leg_m):
                if (i, j) == (0, 0):
                    return stops  # through the Points nearest each end, as ever
                best = key, stops
    return best[1] if best is not None else None


def _relay_through(pickup: Stop, drop: Stop, a: Stop, b: Stop, dist) -> list[Stop] | None:
    """pickup -> a -> b -> drop, Points beside the stop before them or the drop left out
    (plan_relay); None when no Point is left."""
    route = [pickup]
    for point in [a] + ([b] if b.point_id != a.point_id else []):
        if dist(route[-1], point) > RELAY_MERGE_RADIUS_M:
            route.append(point)
    if len(route) > 1 and dist(route[-1], drop) <= RELAY_MERGE_RADIUS_M:
        route.pop()
    if len(route) == 1:
        return None
    return route + [drop]


def _relay_of_use(stops: list[Stop], legs: list[int], direct: int,
                  max_leg_m: int | Callable[[Stop], int | None] | None) -> bool:
    """Every leg shorter than the direct trip and within the range where it starts, the
    whole at most RELAY_MAX_LENGTH_PCT of it (plan_relay)."""
    if max(legs) > direct - 1 or sum(legs) * 100 > direct * RELAY_MAX_LENGTH_PCT:
        return False
    for start, metres in zip(stops, legs, strict=False):
        limit = max_leg_m(start) if callable(max_leg_m) else max_leg_m
        if limit is not None and metres > limit:
            return False  # nobody where this leg starts could ride it
    return True


def relay_payouts(share_paise: int, distances: Sequence[int]) -> list[int] | None:
    """The partner share split over relay legs by distance, every leg paid at least
    ``MIN_LEG_PAYOUT_PAISE``; None if the share cannot pay every leg that much.

    A leg under the minimum gets exactly the minimum and the other legs split the rest by
    distance, so the longest leg gives up most of it and the payouts still sum to the share.
    """
    if share_paise < MIN_LEG_PAYOUT_PAISE * len(distances):
        return None
    floored: set[int] = set()
    while True:
        rest = [i for i in range(len(distances)) if i not in floored]
        # Legs of no length at all (stops merged onto one spot) share alike.
        weights = [distances[i] for i in rest]
        shares = split_by_weights(share_paise - MIN_LEG_PAYOUT_PAISE * len(floored),
                                  weights if any(weights) else [1] * len(weights))
        short = {i for i, paid in zip(rest, shares, strict=True) if paid < MIN_LEG_PAYOUT_PAISE}
        if not short:
            paid_by_leg = dict(zip(rest, shares, strict=True))
            return [paid_by_leg.get(i, MIN_LEG_PAYOUT_PAISE) for i in range(len(distances))]
        floored |= short


# --- offers ---------------------------------------------------------------------------


class OfferStatus(StrEnum):
    OPEN = "open"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    CANCELLED = "cancelled"  # the partner accepted, then gave the job back


class SearchStatus(StrEnum):
    ACTIVE = "active"
    DONE = "done"
    FAILED = "failed"
    PAUSED = "paused"


# --- partner SMS commands -------------------------------------------------------------


class Kind(StrEnum):
    ON = "on"
    OFF = "off"
    ACCEPT = "accept"
    DECLINE = "decline"
    PICK = "pick"
    DROP = "drop"
    STATUS = "status"
    HELP = "help"
    CANCEL = "cancel"
    EARN = "earn"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Command:
    """A parsed partner SMS: the command and the numbers that followed it, in order."""

    kind: Kind
    numbers: tuple[str, ...] = ()
    words: tuple[str, ...] = ()


# Yes and no in the other catalog languages, in their scripts and as typed in Latin
# letters: partners are offered jobs in their language and answer in it.
_YES_ELSEWHERE = frozenset({
    # mr ("हो" alone: _YES_ALONE); "घ्यायचं" (I want to take it): HELP's "काम घ्यायचं"
    "होय", "hoy", "ठीक आहे", "बरं", "घ्यायचं", "घ्यायचे", "घ्यायचा", "ghyaycha",
    "হ্যাঁ", "হাঁ", "হ্যা", "ঠিক আছে", "ঠিক", "ওকে",  # bn
    # ta; not "aam" (Tamil's "ஆம்" in Latin letters is Hindi's "mango" and "common")
    "ஆம்", "ஆமா", "ஆமாம்", "aama", "aamaam", "aamam", "சரி", "sari", "ஓகே",
    "అవును", "avunu", "సరే", "sare", "ఓకే",  # te
    "હા", "હાં", "ઠીક છે", "ઠીક", "બરાબર", "ઓકે",  # gu
    "ಹೌದು", "houdu", "haudu", "ಸರಿ", "ಆಯ್ತು", "aytu", "ಓಕೆ",  # kn
})
_NO_ELSEWHERE = frozenset({
    "नाही", "नको", "nako", "naahi",  # mr
    # bn: a no, and the negated verbs as riders type them in one word ("পারবনা": I
    # cannot, "যাবনা": I will not go, "নেবনা": I will not take, "লাগবেনা": not needed,
    # "চাইনা": I do not want); written apart ("পারব না") their "না" says it.
    "না", "নাহ", "নাই", "পারবনা", "পারবোনা", "যাবনা", "যাবোনা", "নেবনা", "নেবোনা", "নিবনা",
    "করবনা", "করবোনা", "লাগবেনা", "চাইনা", "parbona", "parbo na", "jabona", "jabo na",
    "nebona", "nebo na", "korbona", "korbo na", "lagbena", "lagbe na",
    # ta: "முடியாது" (cannot), "மாட்டேன்" (I will not), and the spoken "இல்ல", "வேணாம்"
    "இல்லை", "இல்ல", "வேண்டாம்", "வேணாம்", "முடியாது", "முடியல", "மாட்டேன்",
    "வரமாட்டேன்", "வரமுடியாது", "illai", "vendam", "vendaam", "venaam", "mudiyathu",
    "mudiyadhu", "mudiyaathu", "mudiyaadhu", "mudiyala", "maatten", "varamaatten",
    "இல்லீங்க", "இல்லைங்க", "வேண்டாங்க", "illinga", "illeenga",  # ta, politely
    # te: "రాను" (I will not come), "రాలేను" (I cannot come), "కుదరదు" (not possible),
    # "చేయను" (I will not do it), "తీసుకోను" (I will not take it), and the polite "-అండి"
    "కాదు", "వద్దు", "లేదు", "వద్దండి", "లేదండి", "రాను", "రాలేను", "లేను", "కుదరదు",
    "కుదరదండి", "చేయను", "చేయలేను", "తీసుకోను", "vaddu", "vaddhu", "vaddandi", "ledu",
    "ledandi", "kaadu", "raanu", "raalenu", "kudaradu", "kudaradhu", "kudaradandi",
    "ledhu", "kadu", "ledhandi", "kaadandi", "కాదండి",
    # gu: "નથી" (is not: "નથી જોઈતું", "આવીશ નથી"), "નહીં"
    "ના", "નથી", "નહીં", "નહિ", "nathi", "ના જી",
    # kn: "ಆಗಲ್ಲ" (cannot), "ಬರಲ್ಲ" (I will not come), "ಮಾಡಲ್ಲ" (I will not do it)
    "ಇಲ್ಲ", "ಇಲ್ಲಾ", "ಬೇಡ", "ಬೇಡಾ", "ಆಗಲ್ಲ", "ಆಗೋದಿಲ್ಲ", "ಆಗುವುದಿಲ್ಲ", "ಬರಲ್ಲ",
    "ಬರೋದಿಲ್ಲ", "ಬರುವುದಿಲ್ಲ", "ಮಾಡಲ್ಲ", "illa", "beda", "bedaa", "aagalla", "agalla",
    "aagodilla", "baralla", "barodilla", "madalla", "maadalla",
})

# Yes only as the whole message: Marathi's short "हो" is Hindi's "be" in every "हो गया"
# (done): "डिलीवर हो गया" is no yes to an open offer.
_YES_ALONE = frozenset({"हो"})

# The commands in the other catalog languages, in their scripts: the English word as
# their keyboards spell it ("ஆன்", "পিক"), their own word for help and cancel (the one
# our texts use: "ரத்து", "বাতিল"), and the verbs of the partner HELP ("ON - কাজ চালু",
# "PICK + OTP - பார்சல் எடுத்தேன்"). Their words for "work" ("কাজ", "வேலை") are not
# STATUS words: "வேலை வேண்டாம்" (no job) stays a no, as HELP's "2 or NO" line gives it.
_COMMANDS_ELSEWHERE: Mapping[Kind, frozenset[str]] = {
    Kind.ON: frozenset({
        "सुरू", "सुरु",  # mr
        "অন", "চালু",  # bn
        "ஆன்", "தொடங்கு",  # ta
        "ఆన్", "మొదలు",  # te
        "ઓન", "ઑન", "ચાલુ",  # gu
        "ಆನ್", "ಶುರು",  # kn
    }),
    Kind.OFF: frozenset({
        "অফ", "বন্ধ",  # bn
        "ஆஃப்", "ஆப்", "நிறுத்து",  # ta
        "ఆఫ్", "ఆపు",  # te
        "ઑફ", "ઓફ", "બંધ",  # gu
        "ಆಫ್", "ಬಂದ್",  # kn
    }),
    Kind.PICK: frozenset({
        "घेतलं", "घेतले", "घेतला",  # mr
        "পিক", "নিয়েছি",  # bn
        "பிக்", "எடுத்தேன்",  # ta
        "పిక్", "తీసుకున్నా",  # te
        "પિક", "લીધું",  # gu
        "ಪಿಕ್", "ತಗೊಂಡೆ",  # kn
    }),
    Kind.DROP: frozenset({
        "पोहोचवलं", "पोहोचवले", "पोहोचवला",  # mr
        "ড্রপ", "পৌঁছে",  # bn
        "டிராப்", "ட்ராப்", "கொடுத்தேன்",  # ta
        "డ్రాప్", "ఇచ్చేశా",  # te
        "ડ્રોપ", "પહોંચાડ્યું",  # gu
        "ಡ್ರಾಪ್", "ಕೊಟ್ಟೆ",  # kn
    }),
    Kind.STATUS: frozenset({
        "স্ট্যাটাস", "ஸ்டேட்டஸ்", "స్టేటస్", "સ્ટેટસ", "ಸ್ಟೇಟಸ್",  # the English word
        "स्थिती", "অবস্থা", "நிலை", "స్థితి", "સ્થિતિ", "ಸ್ಥಿತಿ",  # their own ("state")
    }),
    Kind.HELP: frozenset({"मदत", "সাহায্য", "உதவி", "సహాయం", "મદદ", "ಸಹಾಯ"}),
    Kind.CANCEL: frozenset({"বাতিল", "ரத்து", "రద్దు", "રદ", "રદ્દ", "ರದ್ದು"}),
    Kind.EARN: frozenset({
        "আয়", "টাকা",  # bn (typed either way, the nukta is read as one: normalize_text)
        "வருமானம்", "சம்பளம்", "பணம்",  # ta
        "సంపాదన", "డబ్బు", "డబ్బులు",  # te
        "કમાણી", "પૈસા",  # gu
        "ಗಳಿಕೆ", "ಹಣ", "ದುಡ್ಡು",  # kn
    }),
}

# Words in English, Hindi (Devanagari) and Hinglish (Latin), the commands and yes/no in
# the other languages. Matched after casefold/NFC.
_WORDS: dict[Kind, frozenset[str]] = {
    Kind.ON: frozenset({"on", "chalu", "chaalu", "chalo", "shuru", "start", "चालू", "चालु",
                        "शुरू", "शुरु", "ऑन", "ओन"}),
    # "stop work" (the English HELP's words for OFF), not "stop" alone: that is Twilio's
    # opt-out, and "STOP 57" no OFF.
    Kind.OFF: frozenset({"off", "stop work", "band", "bandh", "bund", "बंद", "बन्द", "ऑफ",
                         "ओफ"}),
    # "take"/"refuse": the English HELP's "take the job", "refuse the job".
    Kind.ACCEPT: frozenset({"yes", "y", "haan", "han", "ha", "haa", "haan ji", "haanji",
                            "hanji", "ji", "ok", "okay", "accept", "accepted", "take",
                            "hn", "theek", "thik", "हाँ", "हां",
                            "हा", "जी", "ठीक", "यस", "ओके"}) | _YES_ELSEWHERE,
    # "skip": the offer's own SMS says "2 to skip". Not "naa": a no only alone (_NO_ALONE).
    Kind.DECLINE: frozenset({"no", "n", "nope", "nahi", "nahin", "nai", "na", "nhi",
                             "decline", "reject", "refuse", "skip", "skip it", "नहीं", "नही",
                             "ना", "नो", "ji nahi", "ji nahin", "जी नहीं", "जी नही"}
                            ) | _NO_ELSEWHERE,
    # The everyday words as partners text them, in Latin letters as in Devanagari ("le
    # liya" as "लिया", "pahunch gaya" as "पहुंच गया"), and their common misspellings.
    Kind.PICK: frozenset({"pick", "pickup", "picked", "pik", "pikup", "uthaya", "uthaa", "utha",
                          "liya", "le liya", "पिक", "पिकअप", "उठाया", "उठा", "लिया"}),
    Kind.DROP: frozenset({"drop", "dropped", "droped", "deliver", "delivered", "deliverd",
                          "delivred", "delivery", "done", "pahucha", "pahuncha", "pahuchaya",
                          "pahunchaya", "pahunch", "pahuch", "pahunch gaya", "pahuch gaya",
                          "diya", "ड्रॉप", "ड्रोप", "डिलीवर", "डिलिवर", "डिलीवरी",
                          "पहुँच गया", "पहुंच गया", "पहुँचा", "पहुंचा", "पहुँचाया", "पहुंचाया",
                          "दिया"}),
    Kind.STATUS: frozenset({"status", "sthiti", "kaam", "job", "jobs", "स्थिति", "स्टेटस",
                            "काम"}),
    Kind.HELP: frozenset({"help", "madad", "sahayata", "?", "मदद", "सहायता", "हेल्प"}),
    Kind.CANCEL: frozenset({"cancel", "radd", "rad", "chhod", "chod", "रद्द", "रद", "कैंसल",
                            "छोड़", "छोड"}),
    # What he earned (a feature phone has no app to look): asked as riders ask it,
    # "paisa kab milega", "mera hisab", "कमाई" (Marathi's too).
    Kind.EARN: frozenset({"earn", "earned", "earning", "earnings", "kamai", "kamaai",
                          "kamayi", "paisa", "paise", "payment", "hisab", "hisaab", "कमाई",
                          "पैसा", "पैसे", "हिसाब"}),
}
WORDS: Mapping[Kind, frozenset[str]] = {
    kind: words | _COMMANDS_ELSEWHERE.get(kind, frozenset()) for kind, words in _WORDS.items()}
# "No problem" and its like say yes to an offer, yet begin with a no ("no", "nahi",
# "இல்லை"): the phrase is left out before the message is read, so it is never a decline,
# and its no negates nothing. What else the message says decides: "koi baat nahi, haan"
# takes the job, "No problem, I will take it" is not understood (the offer stays open;
# taking a job on a guess would cost the partner a CANCEL on their record).
NO_PROBLEM = frozenset({
    "no problem", "no problems", "no issue", "no issues", "no worries", "no tension",
    "नो प्रॉब्लम", "नो प्रोब्लम", "नो टेंशन",  # hi, English in Devanagari
    "koi baat nahi", "koi baat nahin", "koi baat nhi", "koi bat nahi", "koi dikkat nahi",
    "koi dikkat nahin", "koi problem nahi", "koi problem nahin",
    "कोई बात नहीं", "कोई बात नही", "कोई दिक्कत नहीं", "कोई दिक्कत नही",  # hi
    "काही हरकत नाही", "हरकत नाही", "kahi harkat nahi", "harkat nahi",  # mr
    "பிரச்சனை இல்லை", "prachanai illai", "problem illai",  # ta
    "సమస్య లేదు", "problem ledu", "samasya ledu",  # te
    "பிரச்சனை இல்ல", "prachanai illa",  # ta, spoken
    "ఇబ్బంది లేదు", "ibbandi ledu",  # te
    # gu: "વાંધો નથી" (no objection) is Gujarati's "no problem"
    "વાંધો નથી", "કોઈ વાંધો નથી", "વાંધો નહીં", "ચિંતા નથી", "તકલીફ નથી", "vandho nathi",
    "vaandho nathi", "koi vandho nathi", "vandho nahi", "chinta nathi", "problem nathi",
    "ತೊಂದರೆ ಇಲ್ಲ", "problem illa", "tondare illa",  # kn
    "ತೊಂದರೆ ಆಗಲ್ಲ", "ಪ್ರಾಬ್ಲಮ್ ಇಲ್ಲ", "ಪ್ರಾಬ್ಲಮ್ ಆಗಲ್ಲ", "problem aagalla",  # kn
    "tondare aagalla",
})
_LOOKUP: dict[str, Kind] = {}
_NO_PROBLEM: list[tuple[str, ...]] = []  # as tokens, longest first
# A word that turns a command around ("ok nahi", "cancel mat karo", "can't accept"): with
# one of these, anything but a refusal is not taken as said; the partner is asked again.
# Not "naa": in Latin-letter Tamil it is "I" ("naa varen": I will come), so it turns
# nothing around (_NO_ALONE).
NEGATORS = frozenset({"no", "nope", "not", "nahi", "nahin", "nai", "nhi", "na", "mat",
                      "never", "cannot", "cant", "dont", "wont", "नहीं", "नही", "ना", "मत",
                      "मना"}) | _NO_ELSEWHERE
_NEGATED_PAIRS = frozenset({("can", "t"), ("don", "t"), ("won", "t")})  # can't -> can, t

# A code word: "code nahi mila" asks for a code (core.services.partner_sms), no refusal.
CODE_WORDS = frozenset({
    "code", "otp", "kod", "कोड", "ओटीपी", "কোড", "ওটিপি", "கோட்", "கோடு", "ஓடிபி",
    "కోడ్", "ఓటీపీ", "કોડ", "ઓટીપી", "ಕೋಡ್", "ಒಟಿಪಿ", "ಓಟಿಪಿ",
})
# A code or a job "not come" ("code nahi mila", "कोड मिळाला नाही", "no code received",
# "kaam nahi mila"): with one of these the message's no says what did not come, not no
# to an offer. In each catalog language, in its script and as typed in Latin letters;
# none is a command word.
RECEIVED_WORDS = frozenset({
    "got", "get", "getting", "received", "receive", "recieved", "came", "come", "coming",
    "arrived", "reached",  # en
    "mila", "mili", "mile", "milla", "milaa", "aaya", "aya", "aayi", "ayi", "aai", "aaye",
    "mil", "milta", "milti", "milte", "milega", "milegi", "milenge",
    "मिला", "मिली", "मिले", "आया", "आयी", "आई", "आए", "आये",
    "मिल", "मिलता", "मिलती", "मिलते", "मिलेगा", "मिलेगी", "मिलेंगे",  # hi
    "मिळाला", "मिळाली", "मिळालं", "मिळाले", "आला", "आली", "आलं", "milala", "milali",
    "aala", "मिळत",  # mr
    "পেলাম", "পাইনি", "পাই", "আসেনি", "এল", "এলো", "এসেছে", "paini",  # bn
    "வரவில்லை", "வரலை", "வரல", "கிடைக்கவில்லை", "கிடைக்கல", "வந்தது", "கிடைத்தது",
    "varala", "kidaikala",  # ta
    "రాలేదు", "అందలేదు", "వచ్చింది", "అందింది", "raledu", "andaledu",  # te
    "મળ્યો", "મળ્યું", "મળી", "આવ્યો", "આવ્યું", "આવી", "malyo", "aavyo",  # gu
    "ಬಂದಿಲ್ಲ", "ಬರಲಿಲ್ಲ", "ಸಿಕ್ಕಿಲ್ಲ", "ಸಿಗಲಿಲ್ಲ", "ಬಂತು", "ಸಿಕ್ಕಿತು", "bandilla",
    "sikkilla",  # kn
})


def normalize_text(raw: str) -> str:
    """NFC, casefolded, any script's decimal digits turned into ASCII (१२३ -> 123)."""
    text = unicodedata.normalize("NFC", raw or "")
    out = []
    for ch in text:
        value = unicodedata.decimal(ch, None)
        out.append(str(value) if value is not None else ch)
    return "".join(out).casefold()


def _class(ch: str) -> str:
    if ch in "0123456789":
        return "d"
    cat = unicodedata.category(ch)
    # Letters and combining marks: Devanagari vowel signs and viramas (Mn/Mc) are part of
    # the word, which a plain \\w regex would split ("नहीं" -> "नह").
    if cat[0] in "LM" or ch == "\u200d" or ch == "\u200c":
        return "w"
    return "?" if ch == "?" else " "


def tokens(raw: str) -> list[str]:
    """Words and digit runs ("YES57" -> yes, 57); punctuation and extra spaces dropped."""
    out: list[str] = []
    current, kind = "", " "
    for ch in normalize_text(raw):
        c = _class(ch)
        if c != kind or c == "?":
            if kind != " " and current:
                out.append(current.replace("\u200d", "").replace("\u200c", ""))
            current, kind = "", c
        if c != " ":
            current += ch
    if kind != " " and current:
        out.append(current.replace("\u200d", "").replace("\u200c", ""))
    return [t for t in out if t]


def _build_lookup() -> None:
    for kind, words in WORDS.items():
        for word in words:
            # Same normalisation as the input, so "छोड़" typed either way matches.
            _LOOKUP[" ".join(tokens(word))] = kind
    _NO_PROBLEM.extend(sorted({tuple(tokens(p)) for p in NO_PROBLEM}, key=len, reverse=True))


def _without_no_problem(toks: list[str]) -> list[str]:
    """The tokens with every "no problem" phrase (``NO_PROBLEM``) left out."""
    out: list[str] = []
    i = 0
    while i < len(toks):
        phrase = next((p for p in _NO_PROBLEM if tuple(toks[i:i + len(p)]) == p), None)
        if phrase is None:
            out.append(toks[i])
            i += 1
        else:
            i += len(phrase)
    return out


# "Job No. 57": "no" between one of these and a number is the number's abbreviation
# (as India writes it), no refusal that would turn "DROP 4821 job no. 57" around.
_NUMBER_NAMED = frozenset({"job", "jobs", "जॉब"})
_NUMBER_SIGN = frozenset({"no", "नं"})
# "हो ना", "घेतो ना", "le lunga na": after other words a last "ना"/"na" is the tag of a
# sure answer ("yes, sure"), as often as a late no. It refuses nothing on its own: such a
# message is not understood (the partner is asked again, the offer named). It still
# turns any other command around, as every no does ("ok na", "PICK 4821 na").
_TAG_NO = frozenset({"ना", "na"})


def _without_number_sign(toks: list[str]) -> list[str]:
    """The tokens without a "no" that abbreviates a job's number (``_NUMBER_SIGN``)."""
    return [t for i, t in enumerate(toks)
            if not (t in _NUMBER_SIGN and 0 < i < len(toks) - 1
                    and toks[i - 1] in _NUMBER_NAMED and toks[i + 1].isdigit())]


def _tag_no_alone(words: Sequence[str]) -> bool:
    """True if the one no of these words is a last ``_TAG_NO`` after other words."""
    return len(words) >= 2 and words[-1] in _TAG_NO and not any(
        _LOOKUP.get(w) is Kind.DECLINE for w in words[:-1]) and not any(
        _LOOKUP.get(f"{a} {b}") is Kind.DECLINE for a, b in zip(words, words[1:],
                                                                  strict=False))


def parse_command(raw: str, at: time | None = None) -> Command:
    """What a partner's SMS asks for. ``1``/``2`` alone are accept/decline. ``at``: the
    time of day where he is (India time) when he sent it, if known: "raat ko aaunga" (I
    will come at night) said at night is no coming hours later (_coming_hours_later)."""
    toks = _without_number_sign(_without_no_problem(tokens(raw)))
    signs = [i for i, t in enumerate(toks)
             if t in _NUMBER_SIGN and i + 1 < len(toks) and toks[i + 1].isdigit()]
    if signs:
        return _with_number_sign(toks, signs, at)
    return _parse(toks, at)


# What a message says once a "No." before a number is read as the number's sign ("No.57
# PICK 4821", "DONE 4567 No.57"): a command of its own, so the no is no refusal.
_AFTER_NUMBER_SIGN = frozenset({Kind.PICK, Kind.DROP, Kind.CANCEL, Kind.STATUS, Kind.EARN,
                                Kind.HELP})


def _with_number_sign(toks: list[str], signs: Sequence[int], at: time | None) -> Command:
    """A message with "no"/"नं" right before a number (``signs``: their places). "नं" is
    only ever the sign. "No" may be the sign or a no ("no 57": no to job 57): it is the
    sign when the rest names another command ("No.57 PICK 4821"); with a yes beside it
    ("No.57 yes", "No 57 haan", "No.57 1") or ON/OFF the message says both, and is not
    understood (the partner is asked again, the offer named); else it is a no, as always."""
    rest = [t for i, t in enumerate(toks) if i not in signs]
    said = _parse(rest, at)
    if all(toks[i] not in _LOOKUP for i in signs):
        return said
    if said.kind in _AFTER_NUMBER_SIGN and said.words != ("?",):
        return said
    named = {i + 1 for i in signs}
    answer = [t for i, t in enumerate(toks) if t.isdigit() and i not in named]
    whole = _parse(toks, at)
    if (answer == ["1"] if not said.words else said.kind in (Kind.ACCEPT, Kind.ON, Kind.OFF)):
        return Command(Kind.UNKNOWN, whole.numbers, whole.words)
    return whole


# "Chalo" is "let's go" (ON) as much as "alright": with a yes ("chalo theek hai", "chalo
# 1", "haan chalo") it is the yes's "alright", as "चलो ठीक है" always was ("चलो" is no
# command word), and the offer is taken.
_ALRIGHT = frozenset({"chalo"})
# ON/OFF's words after another word ("duty on", "kaam band", "কাজ চালু"): with a word
# that says work, or with only words we know; "phone band tha" (my phone was off), "raasta
# band hai" (the road is closed) put nobody off duty.
_DUTY_WORDS = frozenset({"duty", "ड्यूटी", "ड्युटी", "kaam", "kam", "काम", "কাজ", "வேலை",
                         "పని", "કામ", "ಕೆಲಸ"})
# "Please on", "sir off kar do": the words of a polite request, which leave ON/OFF as it
# is (ON/OFF after another word needs a duty word or only words we know: _DUTY_WORDS).
# Not "ji": that is a yes ("on ji" is asked again, as "on haan").
_POLITE = frozenset({
    "please", "pls", "plz", "plzz", "plss", "pliz", "kindly", "sir", "bhai", "bhaiya",
    "madam", "mam", "kar", "karo", "kardo", "karde", "karein", "kare", "kijiye", "kijie",
    "dijiye", "do", "प्लीज", "प्लीज़", "कृपया", "सर", "भाई", "भैया", "कर", "करो", "करें",
    "करदो", "कीजिए", "कीजिये", "दीजिए", "दीजिये", "दो",
})
# "Kaam nahi mila" (I got no work), "job nahi aaya", "no job received", "কাজ পাইনি": a
# complaint, no refusal of the offer; STATUS answers it (on duty or not, the offer open).
# The words for work, offer and job, and RECEIVED_WORDS but those that say he will not
# come ("no, can't come for this job" refuses it).
_WORK_WORDS = _DUTY_WORDS | frozenset({"job", "jobs", "जॉब", "work", "offer", "offers",
                                       "ऑफर"})
_GOT_WORDS = frozenset(" ".join(tokens(w)) for w in RECEIVED_WORDS
                       - {"come", "coming", "get", "receive", "reached"})
_CODE_WORDS = frozenset(" ".join(tokens(w)) for w in CODE_WORDS)
# "Skip" turned around ("don't skip", "skip mat karo", "skip nahi karunga"): not
# understood, the offer named again (_skip_turned).
_SKIP = frozenset({"skip"})
# What makes a word for work with one for "came" a refusal with its reason, no complaint
# (_no_work_came): a word that refuses ("decline, got another job", "reject, got other
# offer"; a plain no is no such word, "kaam nahi mila" has one), a lone "2" (the offer's
# "2 to skip"; not "2 din se": two days), or a word for another job ("no, I got another
# job", "nahi, dusra kaam mil gaya", "অন্য কাজ পেলাম").
_REFUSAL_WORDS = frozenset({"decline", "reject", "refuse", "skip"})
_OTHER_WORDS = frozenset(" ".join(tokens(w)) for w in {
    "other", "another", "others", "dusra", "dusri", "dusre", "doosra", "doosri", "doosre",
    "दूसरा", "दूसरी", "दूसरे", "दुसरा", "दुसरी", "दुसरे", "दुसरं",  # hi, mr
    "অন্য", "வேற", "வேறு", "వేరే", "બીજું", "બીજો", "બીજી", "ಬೇರೆ",
})
_TIME_WORDS = frozenset({
    "din", "dino", "dinon", "day", "days", "ghanta", "ghante", "ghanton", "hour", "hours",
    "hr", "hrs", "hafta", "hafte", "week", "weeks", "mahina", "mahine", "month", "months",
    "baar", "bar", "time", "times", "baje", "minute", "minutes", "min", "mins",
    "दिन", "दिनों", "घंटा", "घंटे", "हफ्ता", "हफ्ते", "हफ़्ते", "महीना", "महीने", "बार", "बजे",
    "मिनट",
})
# The words for "came" that carry their own "not" ("কাজ পাইনি", "வேலை வரவில்லை").
_GOT_NOT = _GOT_WORDS & frozenset(" ".join(tokens(w)) for w in {
    "পাইনি", "আসেনি", "paini", "வரவில்லை", "வரலை", "வரல", "கிடைக்கவில்லை", "கிடைக்கல",
    "varala", "kidaikala", "రాలేదు", "అందలేదు", "raledu", "andaledu", "ಬಂದಿಲ್ಲ",
    "ಬರಲಿಲ್ಲ", "ಸಿಕ್ಕಿಲ್ಲ", "ಸಿಗಲಿಲ್ಲ", "bandilla", "sikkilla",
})
# "Mil gaya" (it came): after "no job mil" the no is a no to the offer ("no, job mil
# gaya": I got a job), not what did not come.
_CAME_DONE = frozenset({"gaya", "gayi", "gaye", "gya", "gyi", "gye", "गया", "गयी", "गई",
                        "गए", "गये"})
# "Kaam nahi hai" (there is no work), "koi job nahi h", "काम नहीं है": a no said of
# "is" right after a word for work is the same complaint as "kaam nahi mila" (_no_work_is).
# "Kaam nahi" alone stays the HELP's no, and "kaam nahi karna hai" (I will not do the work),
# "kaam nahi chahiye hai" a no: the no is not right before "hai", or no work word before it.
_IS_WORDS = frozenset({"hai", "hain", "h", "he", "hae", "है", "हैं"})
# The words for work and job that "nahi hai" is said of ("kaam nahi hai": there is no
# work). Not duty ("duty nahi hai": I am not on duty) nor offer ("offer nahi hai"): a no.
_JOB_WORDS = _WORK_WORDS - {"duty", "ड्यूटी", "ड्युटी", "offer", "offers", "ऑफर"}
# "Job nahi hai mere liye" (this job is not for me), "kaam nahi hai mere area ka", "job
# nahi hai for me": a no to the offer, no complaint that no work came. Not with "koi"
# before the word for work or offer ("koi kaam nahi hai mere area me", "koi job nahi hai
# mere liye", "koi offer nahi hai": there is none at all, a complaint: _ANY_WORDS).
_FOR_ME = frozenset((me, what) for me in ("mere", "mera", "meri", "mujhe", "मेरे", "मेरा",
                                          "मेरी")
                    for what in ("liye", "liya", "lie", "area", "लिए", "लिये", "एरिया")) \
    | {("for", "me"), ("for", "my")}
_ANY_WORDS = frozenset({"koi", "koy", "kuch", "कोई", "कुछ"})
_ANY_OF = _JOB_WORDS | frozenset({"offer", "offers", "ऑफर"})
# "Can't come", "cannot come", "main nahi aa sakta", "aaj nahi aa paunga": he will not come
# for the offer, a refusal whatever his reason ("can't come, got another job"), as "nahi"
# is (_cant_come). Kept as token runs ("can't" is "can", "t").
_HI_NO = ("nahi", "nahin", "nhi", "nai", "नहीं", "नही")
_HI_ABLE = ("sakta", "sakti", "sakte", "skta", "skti", "paunga", "paungi", "paaunga",
            "paaungi", "payenge", "सकता", "सकती", "सकते", "पाऊंगा", "पाऊँगा", "पाउंगा",
            "पाऊंगी", "पाऊँगी", "पाउंगी")
_CANT_COME = frozenset(tuple(tokens(" ".join(phrase))) for phrase in (
    {(cant, come) for cant in ("can't", "cant", "cannot", "can not", "cnt", "unable to")
     for come in ("come", "cum")}
    | {(no, aa, able) for no in _HI_NO for aa in ("aa", "a", "आ") for able in _HI_ABLE}
    | {(aa, no, able) for aa in ("aa", "आ") for no in _HI_NO for able in _HI_ABLE}
    | {(no, will) for no in _HI_NO
       for will in ("aaunga", "aaungi", "aunga", "aungi", "आऊंगा", "आऊँगा", "आउंगा",
                    "आऊंगी", "आऊँगी")}))
_WILL_COME = frozenset(" ".join(tokens(w)) for w in (
    "aaunga", "aaungi", "aunga", "aungi", "आऊंगा", "आऊँगा", "आउंगा", "आऊंगी", "आऊँगी"))
_CANT_COME_LENGTHS = frozenset(len(phrase) for phrase in _CANT_COME)
# What makes "can't come" no refusal of the offer (_not_a_refusal): a "not now, in a few
# minutes" ("cant come now, will come in 10 min", "abhi nahi aa sakta, baad me aaunga"):
# a word for now or minutes (_NOW_WORDS) with a delay word or a "will come" that is no
# "won't come"; a day, hours or being busy alone is no delay ("aaj nahi aa sakta, kal
# aaunga", "can't come, busy for 2 hours", "can't come, traffic jam": refusals with their
# reason); a "won't be late" ("main aa raha hu late nahi aaunga"); a problem on the way or
# at the door of a job he holds ("gate pe guard hai andar nahi aa sakta", "address nahi
# mil raha, aage nahi aa sakta"); or a question ("kyu nahi aa sakta", "nahi aa sakta?";
# not "kya karu": what can I do). Such a message is asked again, as before "can't come"
# declined.
_MINUTE_WORDS = frozenset(" ".join(tokens(w)) for w in {
    "min", "mins", "minute", "minutes", "minat", "मिनट", "sec", "second", "seconds",
})
_NOW_WORDS = _MINUTE_WORDS | frozenset(" ".join(tokens(w)) for w in {
    "abhi", "abi", "abhhi", "now", "अभी",
})
_DELAY_WORDS = _MINUTE_WORDS | frozenset(" ".join(tokens(w)) for w in {
    "ghanta", "ghante", "ghnte", "hour", "hours", "hr", "hrs", "घंटा", "घंटे", "baje", "बजे",
    "late", "लेट", "der", "dair", "देर", "baad", "bad", "बाद", "later", "thodi", "थोड़ी",
    "wait", "ruko", "rukiye", "rukna", "रुको", "रुकिए", "coming", "way", "traffic", "jam",
    "ट्रैफिक", "जाम", "aata", "aati", "ata", "ati", "आता", "आती", "raha", "rahi", "rha",
    "rhi", "रहा", "रही", "pahunch", "pahuch", "पहुंच", "पहुँच",
})
# Coming, only late: these say it alone ("can't come, running late", "time pe nahi aa
# sakta, late ho jaunga", "can't come yet, wait", "cant come, coming in 10", "will reach
# soon"), with no word for now; hours, "baad", traffic or a day need one (above).
_ON_MY_WAY = frozenset(" ".join(tokens(w)) for w in {
    "late", "लेट", "der", "dair", "देर", "wait", "ruko", "rukiye", "rukna", "रुको", "रुकिए",
    "coming", "reach", "soon", "yet", "pahunch", "pahuch", "pahunchta", "पहुंच", "पहुँच",
    "thoda", "thodi", "थोड़ा", "थोड़ी",
})
# "Late nahi aaunga", "der nahi karunga": the no is said of being late, no "won't come".
_LATE_WORDS = frozenset(" ".join(tokens(w)) for w in {
    "late", "लेट", "der", "dair", "देर"})
_PLACE_WORDS = frozenset(" ".join(tokens(w)) for w in {
    "gate", "guard", "security", "andar", "ander", "inside", "aage", "age", "upar",
    "address", "location", "loc", "building", "society", "lift", "floor", "entry",
    "parking", "gali", "raasta", "rasta", "road", "wahan", "waha", "vaha", "vahan",
    "गेट", "गार्ड", "अंदर", "अन्दर", "आगे", "ऊपर", "एड्रेस", "पता", "लोकेशन", "गली", "रास्ता",
    "वहाँ", "वहां",
})
_ASKING_WORDS = frozenset(" ".join(tokens(w)) for w in {
    "?", "kyu", "kyun", "kyon", "kyo", "kiyu", "why", "क्यों", "क्यूं", "क्यूँ",
})
# "Itna late nahi aa sakta", "can't come that late": the late is the hour of the offer,
# not his delay; the late word after one of these is read as neither (_not_a_refusal).
_SO_WORDS = frozenset(" ".join(tokens(w)) for w in {
    "itna", "itni", "itne", "itnaa", "इतना", "इतनी", "इतने", "that"})
_LATE_HOUR = frozenset(" ".join(tokens(w)) for w in {"late", "लेट"})
# "Abhi nahi aa sakta, kal aaunga", "can't come now, coming tomorrow": his coming is
# another day's, a refusal of the offer whatever else he says of it.
_DAY_WORDS = frozenset(" ".join(tokens(w)) for w in {
    "kal", "kall", "tomorrow", "tmrw", "tmr", "tomorow", "tommorow", "tommorrow", "parso",
    "parson", "parsho", "कल", "परसों", "परसो"})
# "Abhi nahi aa sakta, 2 ghante busy hu", "5 baje tak busy hu", "thoda busy hu": with
# being busy, hours and "a little" say how long he is busy, no delay of his coming.
_BUSY_WORDS = frozenset(" ".join(tokens(w)) for w in {
    "busy", "bizy", "bussy", "vyast", "व्यस्त", "बिजी", "बीजी"})
_BUSY_FOR = frozenset(" ".join(tokens(w)) for w in {
    "ghanta", "ghante", "ghnte", "hour", "hours", "hr", "hrs", "घंटा", "घंटे", "baje", "बजे",
    "thoda", "thodi", "थोड़ा", "थोड़ी"})
# "Will be there in 5", "10 me aata hu": a number with "in" before it or "me" after it,
# no word for hours, days or work after it, is minutes (not a job's: "job 5 me").
_IN_BEFORE = frozenset({"in"})
# What a number counts that is no minutes: "I am in 3 km", "stuck in 2 deliveries".
_COUNTED = frozenset({"km", "kms", "kilometer", "kilometers", "kilometre", "kilometres",
                      "delivery", "deliveries", "parcel", "parcels", "order", "orders",
                      "किमी", "किलोमीटर", "पार्सल", "डिलीवरी"})
_IN_AFTER = frozenset(" ".join(tokens(w)) for w in {"me", "mein", "mai", "mei", "में"})
# "Naa": Hindi's no, and in Latin-letter Tamil "I" ("naa varen": I will come, "naa ok",
# "naa pick pannuren", "naa on duty"). A no only when every word of the message is one
# ("naa", "naa naa", "naa ji", "naa nahi"), no number with it. Else it refuses nothing
# and turns nothing around: the message is read without it ("naa on duty" is ON, "naa,
# nahi chahiye" a no either way), but a yes there ("naa ok", "1 naa") is not understood
# (asked again, the offer named): Hindi's "naa" would turn it around.
_NO_ALONE = frozenset({"naa"})
_WITH_A_NO = frozenset({"ji", "जी", "sir", "सर", "bhai", "भाई", "bhaiya", "भैया", "madam",
                        "mam"})


def _parse(toks: list[str], at: time | None = None) -> Command:
    if not toks:
        return Command(Kind.UNKNOWN)
    if len(toks) == 2 and toks[0] == "0" and toks[1] in ("n", "ff"):
        # "0N", "0FF": a zero typed for the letter O, which it looks like on a small
        # screen and on the printed card. Read as "decline job 0" it could never mean
        # anything (no job has code 0), and the partner would not be put on duty.
        toks = ["o" + toks[1]]
    numbers = tuple(t for t in toks if t.isdigit())
    words = tuple(t for t in toks if not t.isdigit())
    if len(words) == 1 and words[0] in {" ".join(tokens(w)) for w in _YES_ALONE}:
        return Command(Kind.ACCEPT, numbers, words)
    if not words:
        if numbers[0] == "1":
            return Command(Kind.ACCEPT, numbers[1:])
        if numbers[0] == "2":
            return Command(Kind.DECLINE, numbers[1:])
        return Command(Kind.UNKNOWN, numbers)
    if _NO_ALONE.intersection(words):
        if _only_no(words, numbers):  # "naa", "naa ji", "nahi naa"; "skip naa" as "skip na"
            return Command(Kind.UNKNOWN if _skip_turned(words) else Kind.DECLINE, (), words)
        said = _parse([t for t in toks if t not in _NO_ALONE], at)
        if said.kind in (Kind.ACCEPT, Kind.UNKNOWN):
            return Command(Kind.UNKNOWN, numbers, words)
        return Command(said.kind, said.numbers, words)
    if _ALRIGHT.intersection(words) and len(toks) > 1:
        said = _parse([t for t in toks if t not in _ALRIGHT], at)
        if said.kind is Kind.ACCEPT:
            return Command(Kind.ACCEPT, said.numbers, words)
    kinds = {_LOOKUP[w] for w in words if w in _LOOKUP}
    if _only_acknowledged(toks, words):
        # "accha, nahi aa sakta, shaam ko aaunga", "sure but coming in the evening": the
        # yes-like word only acknowledges; the message is read without it (a no).
        said = _parse([t for t in toks if t not in _YES_LIKE], at)
        return Command(said.kind, said.numbers, words)
    if _yes_and_later_today(toks, words):
        # "ok shaam ko aaunga", "sure, coming this evening": a yes, but to an evening, and
        # the offer is for now: neither taken nor refused, the partner is asked again.
        return Command(Kind.UNKNOWN, numbers, words)
    # A "can't come" is a refusal unless _not_a_refusal says it is none; then the message
    # is read as its words say ("nahi aa sakta, raasta kharab hai": its "nahi" declines,
    # as it always did), except that a coming in minutes ("nahi aa sakta, 10 min me aata
    # hu", "nahi aa sakta, late ho jaunga": _coming_soon) refuses nothing whatever no it
    # begins with: asked again, as "abhi nahi aa sakta, 10 min me aata hu" is.
    cant = _cant_come(toks, words)
    if cant and not _not_a_refusal(toks, words, at):
        return Command(Kind.DECLINE, numbers, words)
    delayed = cant and _coming_soon(toks)
    if _coming_hours_later(toks, words, at):
        return Command(Kind.DECLINE, numbers, words)
    if _no_work_came(toks, words):
        return Command(Kind.STATUS, numbers, words)
    kind = _LOOKUP.get(f"{words[0]} {words[1]}") if len(words) >= 2 else None
    if kind is None:
        kind = _LOOKUP.get(words[0])
    led = kind
    if kind in (Kind.STATUS, Kind.ACCEPT):
        kind = _action_after(kind, words, numbers)  # "Job 57 delivered 4821", "ok off"
    elif Kind.STATUS in kinds and len(kinds) == 2 and kinds & {Kind.ON, Kind.OFF}:
        kind = (kinds - {Kind.STATUS}).pop()  # "mera kaam band", "duty job off"
    elif kind is None and len(kinds) == 1 and len(
            asked := [w for w in words if w not in _POLITE]) <= 3:
        kind = next(iter(kinds))  # "duty on", "ok yes": a known word in a short message
        if kind in (Kind.ON, Kind.OFF) and not _DUTY_WORDS.intersection(words) and not all(
                w in _LOOKUP for w in asked):
            kind = None  # "phone band tha", "raasta band hai": no word for his duty
    if kind in (Kind.ON, Kind.OFF) and led not in (Kind.STATUS, Kind.ACCEPT) and (
            kinds & {Kind.ACCEPT, Kind.DECLINE} or {"1", "2"}.intersection(numbers)):
        # "on 1", "start haan", "band 2": ON/OFF, or an answer to an offer? As after a
        # leading yes (_action_after: "haan start"), the partner is asked again, the
        # offer named. After a yes, _action_after decided ("ok off" is OFF).
        kind = None
    # A no turns a command around, but not a question about his money: "paisa nahi
    # mila" (the money did not come) asks for his earnings all the more.
    if kind is None or (kind not in (Kind.DECLINE, Kind.EARN) and _negated(words)) or (
            kind is Kind.DECLINE and (_tag_no_alone(words) or _skip_turned(words) or delayed)):
        return Command(Kind.UNKNOWN, numbers, words)
    return Command(kind, numbers, words)


# What a partner asks for when a yes or a STATUS word ("job", "kaam") comes first and
# another command's word follows: that command (_action_after).
_ACTIONS = frozenset({Kind.ON, Kind.OFF, Kind.PICK, Kind.DROP, Kind.CANCEL})


def _kinds_in(words: Sequence[str]) -> list[Kind]:
    """The command kinds the words carry, in order; a two-word phrase ("ji nahi", "पहुँच
    गया") counts as one. A lone "?" is left out: "ok?" is no call for HELP."""
    out: list[Kind] = []
    i = 0
    while i < len(words):
        pair = _LOOKUP.get(f"{words[i]} {words[i + 1]}") if i + 1 < len(words) else None
        if pair is not None:
            out.append(pair)
            i += 2
            continue
        if words[i] != "?" and words[i] in _LOOKUP:
            out.append(_LOOKUP[words[i]])
        i += 1
    return out


def _action_after(lead: Kind, words: Sequence[str], numbers: Sequence[str]) -> Kind:
    """The command of a message led by a yes or a STATUS word: the other command its words
    name wins ("Job 57 delivered 4821", "kaam band", "OK delivered 4821", "ok off").

    After STATUS, one other command alone wins, as ON/OFF always did, a yes or a no too
    (the HELP's "काम नको", "काम घ्यायचं", "kaam nahi"); anything else stays STATUS (a
    list, no guess). After a yes the message is no yes to an offer once it names
    another command: OFF, CANCEL and HELP win ("ok off", "haan chhod do"); PICK and DROP
    win with a number (the code: "haan pahuncha diya 4821"), while without one they may
    as well agree to the offer ("haan utha lunga": yes, I will pick it up), and ON may
    ("haan start"; "haan chalo" is a yes: _ALRIGHT), so those, a no ("ok decline") and
    two commands at once are not understood: the partner is asked again, the offer
    named."""
    others = set(_kinds_in(words)) - {lead, Kind.STATUS}
    if not others:
        return lead
    if lead is Kind.STATUS:
        return others.pop() if len(others) == 1 and others <= _ACTIONS | {
            Kind.ACCEPT, Kind.DECLINE} else lead
    if len(others) > 1:
        return Kind.UNKNOWN
    other = others.pop()
    if other in (Kind.OFF, Kind.CANCEL, Kind.HELP) or (
            other in (Kind.PICK, Kind.DROP) and numbers):
        return other
    return Kind.UNKNOWN


def _no_work_came(toks: Sequence[str], words: Sequence[str]) -> bool:
    """Whether the message says no work (no job, no offer) came: "kaam nahi mila", "aaj
    koi job nahi aaya", "no job received", "কাজ পাইনি". A word for work and one for
    "came" that a no is said of (_not_came), no code word ("job ka code nahi mila" asks
    for a code), no command but STATUS and a no among them, and nothing that makes it a
    refusal with its reason ("decline, got another job", "no, I got another job", "na
    kaam mil gaya": _REFUSAL_WORDS, _OTHER_WORDS, a lone "2")."""
    if not (_WORK_WORDS.intersection(words) and (_GOT_WORDS | _IS_WORDS).intersection(words)
            and not _CODE_WORDS.intersection(words)
            and set(_kinds_in(words)) <= {Kind.STATUS, Kind.DECLINE}):
        return False
    if _REFUSAL_WORDS.intersection(words) or _OTHER_WORDS.intersection(words) or any(
            t == "2" and not _TIME_WORDS.intersection(toks[i + 1:i + 2])
            for i, t in enumerate(toks)):
        return False
    return any(_not_came(words, i) for i, w in enumerate(words) if w in _GOT_WORDS) \
        or any(_no_work_is(words, i) for i, w in enumerate(words) if w in _IS_WORDS)


def _no_work_is(words: Sequence[str], i: int) -> bool:
    """Whether the "is" word at ``i`` says there is no work: a no right before it and a
    word for work or job right before the no ("kaam nahi hai", "koi job nahi h"; not
    "duty nahi hai", "offer nahi hai": _JOB_WORDS), not said of him ("job nahi hai mere
    liye": the job is not for him, _FOR_ME); with "koi" before it any word for work or
    offer, for him or not ("koi offer nahi hai", "koi kaam nahi hai mere area me":
    _ANY_WORDS)."""
    if i < 2 or words[i - 1] not in NEGATORS:
        return False
    if words[i - 2] in _ANY_OF and _ANY_WORDS.intersection(words[max(i - 4, 0):i - 2]):
        return True
    return words[i - 2] in _JOB_WORDS and tuple(words[i + 1:i + 3]) not in _FOR_ME


def _cant_come(toks: Sequence[str], words: Sequence[str]) -> bool:
    """Whether the message says he cannot come (_CANT_COME: "can't come", "main nahi aa
    sakta"), with nothing but words for work and refusals among its commands ("can't come,
    got another job"; not "ok, can't come": a yes too, asked again) and no code word
    ("code nahi aa sakta" is about a code). A refusal unless _not_a_refusal says it is
    none (then it declines nothing, whatever no it begins with: asked again)."""
    return _says_cant_come(toks) and not _CODE_WORDS.intersection(words) \
        and set(_kinds_in(words)) <= {Kind.STATUS, Kind.DECLINE}


def _says_cant_come(toks: Sequence[str]) -> bool:
    """Whether a "can't come" (_CANT_COME) is among the words, whatever else is said."""
    runs = {tuple(toks[i:i + n]) for n in _CANT_COME_LENGTHS for i in range(len(toks) - n + 1)}
    return bool(runs & _CANT_COME)


def _not_a_refusal(toks: Sequence[str], words: Sequence[str], at: time | None) -> bool:
    """Whether a "can't come" is said of a "not now, in a few minutes", a "won't be late",
    a problem on the way or at a job's door, or asked (_NOW_WORDS with _DELAY_WORDS or a
    "will come", _LATE_WORDS, _PLACE_WORDS, _ASKING_WORDS): "cant come now, will come in
    10 min", "can't come, will be there in 5", "abhi nahi aa sakta, baad me aaunga", "main
    aa raha hu late nahi aaunga", "gate pe guard hai andar nahi aa sakta", "kyu nahi aa
    sakta". Not "aaj nahi aa sakta, kal aaunga", "can't come, traffic jam": no word for now
    or minutes; not "abhi nahi aa sakta, kal aaunga": another day (_DAY_WORDS); not "abhi
    nahi aa sakta, 2 ghante busy hu": how long he is busy (_BUSY_FOR); not "itna late nahi
    aa sakta": the offer's hour (_SO_WORDS)."""
    if (_PLACE_WORDS | _ASKING_WORDS).intersection(toks):
        return True
    toks = [t for i, t in enumerate(toks)
            if not (t in _LATE_HOUR and i and toks[i - 1] in _SO_WORDS)]
    words = [t for t in toks if not t.isdigit()]
    if any(w in _LATE_WORDS and words[i + 1:i + 2] and words[i + 1] in _HI_NO
           for i, w in enumerate(words)):
        return True
    if _DAY_WORDS.intersection(toks) and (_coming_another_day(toks) or not (
            _MINUTE_WORDS.intersection(toks) or _in_minutes(toks))):
        return False  # another day; a day not of his coming beside minutes is no refusal
    part = _day_part_of_coming(toks)
    if part is not None and _hours_away(part, toks, at):
        return False  # "abhi nahi aa sakta, shaam ko aaunga": hours later, no minutes
    if _BUSY_WORDS.intersection(toks):
        toks = [t for t in toks if t not in _BUSY_FOR]
        words = [t for t in toks if not t.isdigit()]
    if _ON_MY_WAY.intersection(toks):  # "can't come, running late", "will reach soon"
        return True
    if _in_minutes(toks):
        return True
    if not _NOW_WORDS.intersection(toks):
        return False
    return bool(_DELAY_WORDS.intersection(toks)) or any(
        w in _WILL_COME and (i == 0 or words[i - 1] not in _HI_NO)
        for i, w in enumerate(words))


# The words of his coming that tie a day to it: "kal aaunga", "kal subah aata hu", "will
# come tomorrow", "coming tomorrow" (not "kal wala parcel", "kal bhi aaya tha": a day
# said of something else).
_COMING_ON = _WILL_COME | frozenset(" ".join(tokens(w)) for w in {
    "aata", "aati", "ata", "ati", "आता", "आती", "come", "coming", "reach", "pahunchunga",
    "पहुंचूंगा", "पहुँचूँगा"})


def _coming_another_day(toks: Sequence[str]) -> bool:
    """Whether a day word is said of his coming: a coming word right before it, or within
    the three words after it ("kal 10 baje aaunga")."""
    return any(t in _DAY_WORDS and (
        (i and toks[i - 1] in _COMING_ON) or _COMING_ON.intersection(toks[i + 1:i + 4]))
        for i, t in enumerate(toks))


# "Aaj shaam ko aaunga" (I will come this evening), "raat ko aaunga", "dopahar tak aa
# jaunga", "will come in the evening", "shaam 6 baje tak aa jaunga": an offer is for now,
# so his coming hours later refuses it, unless minutes are said too (_coming_hours_later).
# The time of day is tied to a coming word when only _AT_WORDS (and hours: "6 baje")
# stand between them, or the coming word is within three words after it ("shaam ko pakka
# aaunga"); not "abhi aata hu, shaam ko free" (coming now, free in the evening). "Jaunga"
# is "I will go": a coming only after "aa" or "pahunch" ("aa jaunga"), not "shaam ko ghar
# jaunga" (he goes home in the evening). Each time of day begins at its hour, India time
# (_DAY_PARTS): once it has begun, "shaam ko aaunga" (said at 17:00) may be soon, so
# it is asked again, not refused; so is "raat ko aaunga" before dawn (still the night),
# but not "shaam ko aaunga" at 03:00 (_NIGHT: the night words only). With a clock hour
# ("shaam 7 baje aaunga", "will come at 7 in the evening") that hour decides instead, read
# in the time of day's hours (_DAY_PARTS: 7 in the evening is 19:00, "raat 1 baje" 01:00
# of the night): an hour or more after he said it (_HOURS_LATER) is hours later.
@dataclass(frozen=True)
class _DayPart:
    begins: int  # its hour, India time
    hours: tuple[int, int]  # the hours (from, to; past midnight as 24 and on) a clock hour
    # said with it falls in: "dopahar 3 baje" 15:00, "raat 11 baje" 23:00, "raat 1 baje" 25:00


_NIGHT = _DayPart(20, (18, 30))
_DAY_PARTS: Mapping[str, _DayPart] = {" ".join(tokens(w)): part for words, part in (
    (("dopahar", "dupahar", "dophar", "dopehar", "afternoon", "दोपहर"), _DayPart(12, (11, 18))),
    (("shaam", "sham", "shaamko", "evening", "शाम"), _DayPart(16, (15, 22))),
    (("tonight", "raat", "night", "रात"), _NIGHT),
) for w in words}
_DAWN = time(5)
_HOURS_LATER = 60  # minutes from when he said it to the clock hour he names: hours later
# What after a number makes it a clock hour ("7 baje", "7 pm", "7 o clock"); before it
# ("at 7", "around 7", "by 7", "shaam 7"): _clock_hour.
_CLOCK_WORDS = frozenset(" ".join(tokens(w)) for w in {
    "baje", "bje", "pm", "am", "oclock", "बजे"})
_CLOCK_BEFORE = frozenset({"at", "around", "by"})
_GO_WORDS = frozenset(" ".join(tokens(w)) for w in {
    "jaunga", "jaungi", "jaaunga", "jaaungi", "जाऊंगा", "जाऊँगा", "जाउंगा", "जाऊंगी",
    "जाऊँगी"})
_COME_THEN_GO = frozenset(" ".join(tokens(w)) for w in {
    "aa", "a", "आ", "pahunch", "pahuch", "पहुंच", "पहुँच"})
_AT_WORDS = frozenset(" ".join(tokens(w)) for w in {
    "in", "the", "this", "at", "by", "ko", "tak", "aaj", "today", "baje", "bje", "pm",
    "around", "aa", "को", "तक", "आज", "बजे", "आ"})
# "Sure", "accha" (all right), "chalo": yes-like words that are no yes to an offer of
# their own, but with a coming later today say both: asked again (_yes_and_later_today).
# They only acknowledge beside a no, a can't-come, the key "2", a "but" or an "only"
# (_BUT_WORDS, _ONLY_WORDS): "accha, nahi aa sakta, shaam ko aaunga", "sure but coming in
# the evening", "fine, will come in the evening only" are read without them
# (_only_acknowledged): refusals. A yes ("ok", "haan", "1") with these is asked again.
_YES_LIKE = frozenset(" ".join(tokens(w)) for w in {
    "sure", "accha", "acha", "achha", "achcha", "achchha", "alright", "fine", "अच्छा"}
    ) | _ALRIGHT
_BUT_WORDS = frozenset(" ".join(tokens(w)) for w in {
    "but", "however", "lekin", "lekn", "lkn", "magar", "par", "pr", "लेकिन", "मगर", "पर"})
# "Only" said of the time of day: "only", "sirf" anywhere; "hi" right after the time of
# day or its "ko", "baje" ("shaam ko hi aaunga"), not the greeting "hi".
_ONLY_WORDS = frozenset(" ".join(tokens(w)) for w in {"only", "sirf", "सिर्फ", "सिर्फ़"})
_HI_ONLY = frozenset({"hi", "ही"})


def _comings(toks: Sequence[str]) -> list[str]:
    """The words of the message without numbers, a "jaunga" after "aa" or "pahunch" read
    as a coming ("aaunga"): a lone "jaunga" is a going."""
    return ["aaunga" if t in _GO_WORDS and i and toks[i - 1] in _COME_THEN_GO else t
            for i, t in enumerate(toks) if not t.isdigit()]


def _day_part_of_coming(toks: Sequence[str]) -> str | None:
    """The time of day (_DAY_PARTS) his coming is tied to, when no minutes, code word or
    question is said with it: "shaam ko aaunga" -> "shaam"; None for "abhi aata hu, shaam
    ko free hu", "shaam ko aaunga, 10 min me", "shaam ko aaunga?"."""
    if (_MINUTE_WORDS.intersection(toks) or _in_minutes(toks)
            or (_CODE_WORDS | _ASKING_WORDS).intersection(toks)):
        return None
    said = [t for t in _comings(toks) if t not in _AT_WORDS or t in _DAY_PARTS]
    for i, t in enumerate(said):
        if t in _DAY_PARTS and (_COMING_ON.intersection(said[i + 1:i + 4])
                                or (i and said[i - 1] in _COMING_ON)):
            return t
    return None


def _clock_hour(toks: Sequence[str], i: int) -> bool:
    """Whether the number at ``i`` is a clock hour: 1 to 24 with a clock word after it ("7
    baje", "7 pm", "7 30 pm" for 7:30 pm, "7 o clock"), or "at", "around", "by" or a time
    of day before it ("at 7", "shaam 7"), or "in the evening" after it ("7 in the
    evening"). Not "2 shaam ko aaunga": "2" is the offer's no."""
    t = toks[i]
    if not (t.isascii() and t.isdigit() and 1 <= int(t) <= 24):
        return False
    after = list(toks[i + 1:i + 4])
    if after[:1] and after[0].isdigit() and len(after[0]) == 2 and int(after[0]) < 60:
        after = after[1:]  # "7 30 baje": the minutes
    if (after[:1] and after[0] in _CLOCK_WORDS) or after[:2] == ["o", "clock"]:
        return True
    if i and (toks[i - 1] in _CLOCK_BEFORE or toks[i - 1] in _DAY_PARTS):
        return True
    return after[:1] == ["in"] and bool(_DAY_PARTS.keys() & set(after[1:3]))


def _said_hour(toks: Sequence[str], part: str) -> int | None:
    """The clock time said with the time of day ``part`` (a clock hour within three words
    of it: "shaam 7 baje", "7 baje shaam ko", "at 7 in the evening"), in minutes from the
    midnight before, in that time of day's hours (_DayPart.hours): "shaam 7 baje" 1140,
    "raat 1 baje" 1500; None when no hour is said."""
    where = toks.index(part)
    for i in range(max(where - 3, 0), min(where + 4, len(toks))):
        if not _clock_hour(toks, i):
            continue
        hour = int(toks[i])
        said = toks[i + 1] if i + 1 < len(toks) else ""
        minutes = int(said) if said.isdigit() and len(said) == 2 and int(said) < 60 else 0
        low, high = _DAY_PARTS[part].hours
        if hour <= 12:
            hour = next((h for h in (hour, hour + 12, hour + 24) if low <= h < high),
                        hour + 12 if hour < 12 else hour)
        return hour * 60 + minutes
    return None


def _hours_away(part: str, toks: Sequence[str], at: time | None) -> bool:
    """Whether his coming at the time of day ``part`` is hours after ``at`` (unknown: it
    is): the clock hour said with it an hour or more later (_said_hour, _HOURS_LATER); with
    none, or one already gone by ("shaam 5 baje" at 18:00: no sure reading), the time of
    day still to begin. Before dawn the night words are the night
    now ("raat ko aaunga" at 02:00 may be soon), the others hours away ("shaam ko aaunga"
    at 03:00)."""
    if at is None:
        return True
    now = at.hour * 60 + at.minute
    if _DAY_PARTS[part] is _NIGHT and at < _DAWN:
        now += 24 * 60
    said = _said_hour(toks, part)
    if said is not None and said >= now:
        return said - now >= _HOURS_LATER
    return now < _DAY_PARTS[part].begins * 60  # no hour, or one gone by: the time of day


def _coming_hours_later(toks: Sequence[str], words: Sequence[str], at: time | None) -> bool:
    """Whether the message says he comes later today (_day_part_of_coming), with no
    command words but refusals: "shaam ko aaunga", "nahi, shaam ko aaunga", at a time
    still hours away at ``at`` (_hours_away), or whatever the hour with the offer's "2"
    ("2 shaam ko aaunga" at 17:30: a no, as "nahi, shaam ko aaunga" is). Not with a yes
    (_yes_and_later_today), a "1" ("1 shaam ko aaunga"; not "shaam 1 baje"), nor a word
    for work ("job 57 shaam ko aaunga" asks about job 57, as "job 57 kal aaunga" does:
    STATUS)."""
    part = _day_part_of_coming(toks)
    return part is not None and (_hours_away(part, toks, at) or _key(toks, "2")) \
        and set(_kinds_in(words)) <= {Kind.DECLINE} and not _a_yes(toks, words)


def _key(toks: Sequence[str], key: str) -> bool:
    """Whether the offer's key ``key`` ("1" yes, "2" no) is said: the number, not as an
    hour or a count ("shaam 1 baje", "2 baje", "at 2", "2 din")."""
    return any(t == key and not _TIME_WORDS.intersection(toks[i + 1:i + 2])
               and not _clock_hour(toks, i) for i, t in enumerate(toks))


def _a_yes(toks: Sequence[str], words: Sequence[str]) -> bool:
    """Whether a yes is said: a yes word, a yes-like one (_YES_LIKE), or a "1" (_key)."""
    return Kind.ACCEPT in _kinds_in(words) or bool(_YES_LIKE.intersection(words)) \
        or _key(toks, "1")


def _only_acknowledged(toks: Sequence[str], words: Sequence[str]) -> bool:
    """Whether a coming at a time of day (_day_part_of_coming) is said with yes-like words
    (_YES_LIKE) that only acknowledge: no yes ("ok", "haan", "1") beside them, and a no
    word, a can't-come, the key "2", a "but" after them or an "only" ("accha, nahi aa
    sakta, shaam ko aaunga", "accha nahi, shaam ko aaunga", "sure but coming in the
    evening", "fine, will come in the evening only", "accha shaam ko hi aaunga")."""
    like = [i for i, t in enumerate(toks) if t in _YES_LIKE]
    if not like or _day_part_of_coming(toks) is None or _key(toks, "1") or Kind.ACCEPT in \
            _kinds_in([w for w in words if w not in _YES_LIKE]):
        return False
    return (Kind.DECLINE in _kinds_in(words) or _says_cant_come(toks) or _key(toks, "2")
            or bool(_BUT_WORDS.intersection(toks[like[0] + 1:]))
            or bool(_ONLY_WORDS.intersection(toks))
            or any(t in _HI_ONLY and i and (toks[i - 1] in _DAY_PARTS or toks[i - 1] in _AT_WORDS)
                   for i, t in enumerate(toks)))


def _yes_and_later_today(toks: Sequence[str], words: Sequence[str]) -> bool:
    """Whether a yes (_a_yes) is said with a coming at a time of day (_day_part_of_coming,
    whether or not it has begun): "ok shaam ko aaunga", "haan raat ko aaunga", "sure,
    coming this evening", "accha shaam ko aata hu", "1 shaam ko aaunga". The offer is for
    now: this is no yes to it, nor a no; with no other command ("ok off, shaam ko aaunga"
    is OFF, as before). A yes-like word beside a no is read without it first
    (_only_acknowledged)."""
    return _day_part_of_coming(toks) is not None and _a_yes(toks, words) and set(
        _kinds_in([w for w in words if w not in _ALRIGHT])) <= {
        Kind.ACCEPT, Kind.STATUS, Kind.DECLINE}


_ARRIVING = frozenset(" ".join(tokens(w)) for w in {
    "pahunch", "pahuch", "pahunchta", "pahunchti", "पहुंच", "पहुँच", "पहुंचता", "पहुँचता"})


def _coming_soon(toks: Sequence[str]) -> bool:
    """Whether a coming in minutes or late is said ("10 min me aata hu", "5 minute me
    aaunga", "coming in 10", "late ho jaunga", "thoda late aaunga"): minutes or a late word
    with a coming word. Not "10 min se khana kha raha hu" (no coming), "bahut late ho
    gaya" (it has got late)."""
    said = _comings(toks)
    coming = bool((_COMING_ON | _ARRIVING).intersection(said))
    minutes = bool(_MINUTE_WORDS.intersection(toks)) or _in_minutes(toks)
    late = bool(_LATE_WORDS.intersection(toks)) and (coming or bool(_GO_WORDS.intersection(toks)))
    return (coming and minutes) or late


def _in_minutes(toks: Sequence[str]) -> bool:
    """Whether a number is said as minutes without the word ("will be there in 5", "10 me
    aata hu": _IN_BEFORE, _IN_AFTER): at most 60, no job's ("job 5 me"), and no word for
    hours, days or work after it ("in 2 hours")."""
    for i, t in enumerate(toks):
        if not (t.isascii() and t.isdigit() and int(t) <= 60):
            continue
        after = toks[i + 1:i + 3]
        if (i and toks[i - 1] in _NUMBER_NAMED) or (
                after and after[0] in _TIME_WORDS | _WORK_WORDS | _COUNTED) or (
                after[1:] == ["se"] and after[0] in _IN_AFTER):  # "5 me se 3": of five
            continue
        if (i and toks[i - 1] in _IN_BEFORE) or (after and after[0] in _IN_AFTER):
            return True
    return False


def _not_came(words: Sequence[str], i: int) -> bool:
    """Whether the "came" word at ``i`` is said not to have come: it carries its own not
    ("পাইনি", "வரவில்லை", "రాలేదు"), a no is right before or after it ("kaam nahi mila",
    "kaam milta nahi", "काम मिळालं नाही"), or "no" is right before the word for work
    before it ("no job received"; not "no, job mil gaya": I got a job)."""
    if words[i] in _GOT_NOT or any(w in NEGATORS for w in [*words[i - 1:i], *words[i + 1:i + 2]]):
        return True
    return any(words[j] == "no" and words[j + 1] in _WORK_WORDS for j in range(i - 1)) \
        and not _CAME_DONE.intersection(words[i + 1:i + 2])


def _only_no(words: Sequence[str], numbers: Sequence[str]) -> bool:
    """Whether a message is no words but refusals and a "ji" or "sir" ("naa", "naa naa",
    "naa ji", "ji nahi"), no number with them."""
    i = 0
    while i < len(words):
        if i + 1 < len(words) and _LOOKUP.get(f"{words[i]} {words[i + 1]}") is Kind.DECLINE:
            i += 2
        elif _LOOKUP.get(words[i]) is Kind.DECLINE or words[i] in _NO_ALONE | _WITH_A_NO:
            i += 1
        else:
            return False
    return not numbers


def _skip_turned(words: Sequence[str]) -> bool:
    """Whether a "skip" is turned around: by any no after it ("skip nahi karunga": I will
    not skip it, "skip na karo", "skip nahi, le lunga"), or by a "not" anywhere that is
    no refusal of its own ("don't skip", "skip mat karo"). A no before it is a no twice
    ("nahi, skip")."""
    first = next((i for i, w in enumerate(words) if w in _SKIP), None)
    if first is None:
        return False
    return (any(w in NEGATORS or w in _NO_ALONE for w in words[first + 1:])
            or any(w in NEGATORS and _LOOKUP.get(w) is not Kind.DECLINE for w in words)
            or any(pair in _NEGATED_PAIRS for pair in zip(words, words[1:], strict=False)))


def _negated(words: Sequence[str]) -> bool:
    return any(w in NEGATORS for w in words) or any(
        pair in _NEGATED_PAIRS for pair in zip(words, words[1:], strict=False))


def split_otp_and_job(numbers: Sequence[str], job_codes: Iterable[str]) -> tuple[str | None,
                                                                                str | None]:
    """(otp, job) from the numbers after PICK/DROP: the OTP comes first, the job code second,
    but a number that is one of the partner's job codes is taken as the job either way
    (alone too: "PICK 57" names the job, and is not a wrong code that costs a try).

    An OTP typed in parts ("PICK 62 04") is one OTP when the numbers that are not job codes
    make OTP_DIGITS digits together: a job code is never split, so the reading is sure.
    Numbers that are neither (no job code, and the first is not OTP_DIGITS long: "PICK 62
    0") are taken as a malformed OTP, so the answer shows the right form instead of "you
    have no job 0".

    Two numbers of a code's length, neither his job, are read in the order our texts teach
    (dispatch.which_job: "Add the job code after the OTP"): the code, then the job. "PICK
    4821 9989" (his code, then job 9998 mistyped) answers "you have no job 9989", not his
    code named as a job; no code is checked for a job not his."""
    codes = set(job_codes)
    if not numbers:
        return None, None
    if len(numbers) == 1:
        return (None, numbers[0]) if numbers[0] in codes else (numbers[0], None)
    jobs = [n for n in numbers if n in codes]
    parts = [n for n in numbers if n not in codes]
    if len(parts) >= 2 and len(jobs) <= 1 and len("".join(parts)) == OTP_DIGITS:
        return "".join(parts), (jobs[0] if jobs else None)
    if not jobs and len(numbers[0]) != OTP_DIGITS:
        return numbers[0], None
    a, b = numbers[0], numbers[1]
    if a in codes and b not in codes:
        return b, a
    return a, b


def lone_code_or_job(numbers: Sequence[str], job_codes: Iterable[str]) -> str | None:
    """The lone number after PICK/DROP that split_otp_and_job takes as a job but that is
    OTP_DIGITS digits long, so it may as well be the code (job codes are leg ids: job 4821
    and a code 4821 look alike): the caller tries it as the code of the job waiting for
    one. None for anything else."""
    if len(numbers) != 1:
        return None
    number = numbers[0]
    if number in set(job_codes) and len(number) == OTP_DIGITS and number.isascii() \
            and number.isdigit():
        return number
    return None


_build_lookup()

"""Booking use cases: quote, create, move through the state machine, issue leg OTPs.

Each function works inside the caller's transaction (a Session) so a channel can make a
booking and queue its messages atomically; concurrency is guarded by row locks and the
version columns on bookings and legs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NoReturn

from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import clock
from core.adapters import distance, points, surge
from core.adapters.models import Booking, Leg, Parcel, Person, RateCardRow, TransitionLog
from core.config import get_settings, int_setting
from core.domain import dispatch as dispatch_rules
from core.domain import otp as otp_rules
from core.domain.booking import (
    BOOKING,
    LEG,
    Actor,
    BookingStatus,
    LegStatus,
    StateMachine,
    transition,
)
from core.domain.errors import Conflict, DomainError, NotFound, ValidationError
from core.domain.geo import haversine_m, same_place, validate_lat_lng
from core.domain.money import format_inr
from core.domain.phone import is_indian_mobile, normalize_phone
from core.domain.pricing import (
    DEFAULT_RATE_CARD,
    VEHICLE_RANGE_KM,
    VEHICLE_SPEED_KMH,
    FareBreakdown,
    ParcelCategory,
    RateCard,
    SizeBucket,
    SpeedTier,
    VehicleType,
    WeightBucket,
    can_carry,
    check_declared_value,
    choose_vehicle,
    quote_tiers,
)
from core.domain.reference import new_reference, normalize_reference

log = logging.getLogger(__name__)

DEFAULT_SERVICE_RADIUS_KM = 25


@dataclass(frozen=True)
class Place:
    """A pickup or drop place as the customer gave it."""

    lat: float
    lng: float
    pincode: str | None = None
    post_office: str | None = None
    landmark: str | None = None
    # The position is the customer's own (a map pin), not their post office's spot on our
    # map: two pins near each other are one place whichever offices are nearest them.
    pinned: bool = False


@dataclass(frozen=True)
class ParcelSpec:
    category: ParcelCategory
    size: SizeBucket
    weight: WeightBucket
    declared_value_paise: int = 0
    fragile: bool = False
    description: str | None = None


@dataclass(frozen=True)
class Quote:
    distance_m: int
    distance_source: str
    vehicle: str
    fares: dict[SpeedTier, FareBreakdown]
    # What each tier promises, so its label says it: delivered within these hours
    # (DISPATCH_DELIVERY_HOURS), and how long a paid booking waits for a rider before it
    # is cancelled and refunded (DISPATCH_SEARCH_DEADLINE_MIN). ``fares`` has only the
    # tiers whose hours can be kept over this trip; ``hours`` has every tier (to say which
    # one is not offered).
    hours: dict[SpeedTier, int]
    search_minutes: dict[SpeedTier, int]
    # The first ride dispatch offers: the whole trip, or (a trip longer than any vehicle
    # able to carry the parcel goes) the relay's first leg, from the pickup to a Point.
    # A rider counts as free near the pickup only if his vehicle has the range for it.
    ride_m: int = 0
    # The tiers not offered because on this trip they cost no less than a faster one
    # (economy at standard's minimum fare), each with that faster tier: a booking asking
    # for one is told so, not that its hours cannot be kept.
    not_cheaper: dict[SpeedTier, SpeedTier] = field(default_factory=dict)


@dataclass(frozen=True)
class Area:
    """A position against the service area: its nearest active Point (None when no Point
    is active), how far that is (-1 then), and whether a partner there would carry it."""

    point: str | None
    distance_m: int
    served: bool


def service_radius_m() -> int:
    """Farthest a pickup or drop may be from an active Point (SERVICE_RADIUS_KM, km)."""
    return int_setting("SERVICE_RADIUS_KM", DEFAULT_SERVICE_RADIUS_KM) * 1000


def service_areas(session: Session, spots: list[tuple[float, float]]) -> list[Area]:
    """Each (lat, lng) inside the service area (near enough to an active Point) or not, in
    one round trip for all of them: every channel refuses what no partner would carry."""
    radius = service_radius_m()
    areas = []
    for (lat, lng), found in zip(spots, points.nearest(session, spots), strict=True):
        ranked = [(haversine_m(lat, lng, p.lat, p.lng), p.id, p.name) for p in found]
        d, _, name = min(ranked, default=(-1, 0, None))  # a tie: the older Point
        areas.append(Area(name, d, name is not None and d <= radius))
    return areas


def check_service_area(session: Session, pickup: Place, drop: Place) -> None:
    """ValidationError ``outside_service_area`` (naming the place, its nearest Point and
    how far it is) unless both places lie inside the service area."""
    places = {"pickup": pickup, "drop": drop}
    areas = service_areas(session, [(p.lat, p.lng) for p in places.values()])
    for name, area in zip(places, areas, strict=True):
        if area.served:
            continue
        if area.point is None:
            message = f"we do not serve the {name} place yet: no Point is open"
        else:
            message = (f"we do not serve the {name} place yet: the nearest Point, "
                       f"{area.point}, is {area.distance_m / 1000:.1f} km away (we go up "
                       f"to {service_radius_m() // 1000} km from one)")
        raise ValidationError(message, code="outside_service_area", field=name)


def active_rate_card(session: Session) -> RateCard:
    """The newest active rate card in the database (the built-in default if none).

    Read once per transaction: a phone turn that quotes and then looks for a free rider
    asks twice. A card activated in the same transaction is not seen by a later call in
    it (ops activate cards in transactions of their own)."""
    tx = session.get_transaction()
    held = session.info.get(_RATE_CARD_KEY)
    if held is not None and tx is not None and held[0] is tx:
        return held[1]
    row = session.scalar(
        select(RateCardRow).where(RateCardRow.active.is_(True)).order_by(RateCardRow.id.desc())
    )
    card = RateCard.from_dict(row.card) if row is not None else DEFAULT_RATE_CARD
    if tx is not None:
        session.info[_RATE_CARD_KEY] = (tx, card)
    return card


_RATE_CARD_KEY = "ridechain.rate_card"


def quote_trip(session: Session, pickup: Place, drop: Place, parcel: ParcelSpec) -> Quote:
    """Fares between two places for one parcel, for each speed tier whose hours can be
    kept over the trip (_keepable: a long one has no express). ValidationError
    ``same_place`` if they are one place: the minimum fare for carrying nothing;
    ``position_needed`` if they are two post offices India Post puts at one spot, often
    their pincode's centre: not one place, but no distance to price by without a pin
    (asked for the one not pinned: the drop's when neither is); two pins near each other
    are one place, whichever offices are nearest them; ``too_far`` if nothing we have
    can carry the parcel that far (_legs_m), or not within any tier's hours."""
    validate_lat_lng(pickup.lat, pickup.lng)
    validate_lat_lng(drop.lat, drop.lng)
    if same_place((pickup.lat, pickup.lng), (drop.lat, drop.lng)):
        if two_offices(pickup, drop) and not (pickup.pinned and drop.pinned):
            _position_needed(pickup, drop)
        raise ValidationError("pickup and drop are the same place: there is nothing to carry",
                              code="same_place", field="drop")
    card, dist, vehicle, legs = _route(session, pickup, drop, parcel)
    fares = quote_tiers(card, distance_m=dist.metres, vehicle=vehicle, size=parcel.size,
                        weight=parcel.weight, fragile=parcel.fragile,
                        surge_bp=surge.surge_bp(pickup.pincode))
    # A tier is sold only where its hours can be kept (_keepable).
    hours = {t: tier_hours(t) for t in fares}
    fares = {t: f for t, f in fares.items() if _keepable(card, parcel, legs, hours[t])}
    slow, normal = fares.get(SpeedTier.ECONOMY), fares.get(SpeedTier.STANDARD)
    not_cheaper: dict[SpeedTier, SpeedTier] = {}
    if slow is not None and normal is not None and slow.total_paise >= normal.total_paise:
        # "Cheap" at the price of "Normal" (both the minimum fare) is no cheaper, only
        # slower: not offered.
        del fares[SpeedTier.ECONOMY]
        not_cheaper[SpeedTier.ECONOMY] = SpeedTier.STANDARD
    if not fares:
        raise ValidationError(
            f"we cannot deliver this parcel within any of our times: it is "
            f"{dist.metres / 1000:.1f} km by road; choose a nearer drop",
            code="too_far", field="drop")
    from core.services import dispatch  # it imports this module

    return Quote(dist.metres, dist.source, vehicle.value, fares, hours=hours,
                 search_minutes={t: dispatch.config().search_deadline_s[t] // 60
                                 for t in fares},
                 ride_m=legs[0], not_cheaper=not_cheaper)


def _position_needed(pickup: Place, drop: Place) -> NoReturn:
    """ValidationError ``position_needed`` for two post offices India Post puts at one
    spot (or an office at a pin's spot): it asks for the position of a place given by
    its office, the drop's when both are, the pickup's when only the drop is pinned."""
    if drop.pinned:
        raise ValidationError(
            f"the pickup's post office, {pickup.post_office} ({pickup.pincode}), is at the "
            "drop's spot on our map, so the distance is not known: send the pickup's "
            "position as lat and lng (a location pin)",
            code="position_needed", field="pickup.lat")
    if pickup.pinned:
        raise ValidationError(
            f"the drop's post office, {drop.post_office} ({drop.pincode}), is at the "
            "pickup's spot on our map, so the distance is not known: send the drop's "
            "position as lat and lng (a location pin)",
            code="position_needed", field="drop.lat")
    raise ValidationError(
        f"{drop.post_office} ({drop.pincode}) and {pickup.post_office} "
        f"({pickup.pincode}) are at one spot on our map, so the distance is not "
        "known: send the drop's position as lat and lng (a location pin)",
        code="position_needed", field="drop.lat")


def _route(session: Session, pickup: Place, drop: Place, parcel: ParcelSpec
           ) -> tuple[RateCard, distance.DistanceResult, VehicleType, list[int]]:
    """The active rate card, the trip's road distance, the vehicle it is quoted on and
    the rides the parcel goes by (_legs_m)."""
    card = active_rate_card(session)
    dist = distance.road_distance_m((pickup.lat, pickup.lng), (drop.lat, drop.lng),
                                    detour_factor_bp=card.detour_factor_bp,
                                    osrm_url=get_settings().osrm_url)
    # Chosen by the fare as quote_trip will quote it (fragile, the pickup's surge, every
    # tier): a cheaper per-km vehicle can cost more once a surcharge meets a minimum.
    vehicle = choose_vehicle(parcel.size, parcel.weight, card, dist.metres,
                             fragile=parcel.fragile,
                             surge_bp=surge.surge_bp(pickup.pincode))
    return card, dist, vehicle, _legs_m(session, pickup, drop, vehicle, card, dist.metres)


def _keepable(card: RateCard, parcel: ParcelSpec, legs: list[int], hours: int) -> bool:
    """Whether a tier's ``hours`` can be kept over these rides, as dispatch reckons it
    (can_do_direct, for every type able to carry the parcel when nobody is near): some
    vehicle type on the card that carries the parcel has the range for the longest ride
    and rides them all within the hours at its average speed (VEHICLE_SPEED_KMH). Not a
    pickup van's 134 km in 3 hours (35 km/h: 3 h 50 min)."""
    return any(VEHICLE_RANGE_KM[v] * 1000 >= max(legs)
               and sum(legs) * 3600 <= VEHICLE_SPEED_KMH[v] * 1000 * hours * 3600
               for v in card.vehicles if can_carry(v, parcel.size, parcel.weight))


def _legs_m(session: Session, pickup: Place, drop: Place, vehicle: VehicleType,
            card: RateCard, direct_m: int) -> list[int]:
    """The rides (road metres) a trip of ``direct_m`` goes by, quoted on ``vehicle``
    (choose_vehicle: one whose range covers the trip, if any able to carry the parcel
    does; else the longest-ranged able one); the first is the one dispatch offers first.

    Within its range: the trip, in one ride. Beyond it, the relay dispatch would plan
    (plan_relay: pickup -> the Point nearest it -> the Point nearest the drop -> drop),
    each leg within that range; ValidationError ``too_far`` when there is none, since
    nobody would ever be offered the parcel and its money would come back hours later."""
    reach_m = VEHICLE_RANGE_KM[vehicle] * 1000
    if direct_m <= reach_m:
        return [direct_m]
    from core.services import dispatch  # it imports this module

    osrm = get_settings().osrm_url
    cache: dict[tuple[float, float, float, float], int] = {}

    def dist(a: dispatch_rules.Stop, b: dispatch_rules.Stop) -> int:
        key = (a.lat, a.lng, b.lat, b.lng)
        if key not in cache:
            cache[key] = distance.road_distance_m(
                (a.lat, a.lng), (b.lat, b.lng), detour_factor_bp=card.detour_factor_bp,
                osrm_url=osrm).metres
        return cache[key]

    start = dispatch_rules.Stop(pickup.lat, pickup.lng)
    end = dispatch_rules.Stop(drop.lat, drop.lng)
    near = {s.point_id: s for place in (start, end)
            for s in dispatch._road_nearest_candidates(session, place, dist)}
    stops = dispatch_rules.plan_relay(start, end, sorted(near.values(),
                                                         key=lambda s: s.point_id or 0),
                                      dist, reach_m)
    if stops is None:
        raise ValidationError(
            f"we cannot carry this parcel {direct_m / 1000:.1f} km: none of our vehicles "
            f"for it rides more than {reach_m // 1000} km, and no relay through our Points "
            "covers the trip; choose a nearer drop, or call us",
            code="too_far", field="drop")
    return [dist(a, b) for a, b in zip(stops, stops[1:], strict=False)]


def two_offices(a: Place, b: Place) -> bool:
    """``a`` and ``b`` name two different post offices (whatever their positions)."""
    if not (a.post_office and b.post_office and a.pincode and b.pincode):
        return False
    return (a.pincode, a.post_office.casefold()) != (b.pincode, b.post_office.casefold())


def tier_hours(tier: SpeedTier | str) -> int:
    """The hours a speed tier promises delivery within (DISPATCH_DELIVERY_HOURS), which
    its label says wherever it is shown."""
    from core.services import dispatch  # it imports this module

    return dispatch.config().delivery_hours[SpeedTier(tier)]


def rider_free_near(session: Session, pickup: Place, parcel: ParcelSpec, *,
                    customer_id: int | None = None,
                    recipient_phone: str | None = None,
                    ride_m: int | None = None, drop: Place | None = None) -> bool:
    """Whether a partner who could take this parcel right now (on duty, a vehicle that
    carries it as far as the first ride goes, room for one more job) is within dispatch's
    widest radius of the pickup. The customer (``customer_id``) and the recipient
    (``recipient_phone``, once known) are no such partner, though on duty themselves:
    dispatch never offers anyone a parcel of their own.

    The first ride is ``ride_m`` (a Quote's ``ride_m``), else worked out from ``drop``
    (quote_trip's way: a road distance, a relay's first leg beyond every range); with
    neither it is not known, and any vehicle that carries the parcel counts.

    When none is (at night, say), a booking paid now waits out its tier's search and is
    then refunded, so every channel says so before the customer pays. Not knowing (Redis
    away) counts as yes: we do not warn of what we cannot see."""
    from core.services import dispatch  # it imports this module

    if ride_m is None and drop is not None:
        try:
            ride_m = _route(session, pickup, drop, parcel)[3][0]
        except ValidationError:
            ride_m = None  # not sold at all: the quote says so, not this
    load = dispatch_rules.Load(parcel.size, parcel.weight, parcel.declared_value_paise,
                               ride_m or 0)
    try:
        exclude = dispatch.parties(session, customer_id, recipient_phone)
        return bool(dispatch.find_candidates(session, pickup.lat, pickup.lng, load,
                                             dispatch.config().radii_km[-1], exclude=exclude))
    except RedisError:
        log.warning("rider lookup failed; quoting without the no-rider notice")
        return True


def record(session: Session, entity: str, entity_id: int, frm: str | None, to: str,
           actor: Actor, reason: str) -> None:
    """Check a transition on its state machine and append it to the history."""
    # Statuses come as plain text here: the machine picked at run time checks them.
    machine: StateMachine[Any] = BOOKING if entity == "booking" else LEG
    t = transition(machine, entity_id, frm, to, actor, reason, clock.now())
    session.add(TransitionLog(entity=entity, entity_id=entity_id, from_status=t.from_status,
                              to_status=t.to_status, actor=str(actor)[:40],
                              reason=t.reason[:200], at=t.at))


DEFAULT_MAX_UNPAID = 3


def max_unpaid() -> int:
    """How many bookings one customer may have waiting for payment (UNPAID_BOOKINGS_MAX)."""
    return int_setting("UNPAID_BOOKINGS_MAX", DEFAULT_MAX_UNPAID)


def unpaid_bookings(session: Session, customer_id: int, *, lock: bool = False) -> int:
    """The customer's bookings waiting for payment; ``lock``: under their person row's
    lock, so two bookings made at once count each other."""
    if lock:
        session.execute(select(Person.id).where(Person.id == customer_id).with_for_update())
    return int(session.scalar(select(func.count()).select_from(Booking).where(
        Booking.customer_id == customer_id,
        Booking.status == BookingStatus.AWAITING_PAYMENT.value)) or 0)


DEFAULT_MAX_CANCELLED = 10
CANCELLED_WINDOW_S = 3600


def max_cancelled() -> int:
    """How many unpaid bookings one customer may cancel within an hour
    (CANCELLED_BOOKINGS_MAX) before a new booking is refused until the hour moves on."""
    return int_setting("CANCELLED_BOOKINGS_MAX", DEFAULT_MAX_CANCELLED)


class TooManyCancelled(DomainError):
    """The customer cancelled ``max_cancelled()`` unpaid bookings within the last hour:
    book then cancel, in a loop, would cost a payment link made and cancelled at the
    gateway and an SMS each time. ``retry_after``: seconds until the oldest of them
    leaves the hour. Counting cancels, not bookings, leaves a busy shop's many parcels
    alone: each one booked and paid costs no cancel."""

    code = "too_many_cancelled"
    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__("you cancelled too many unpaid bookings within the hour: please "
                         "book again later")
        self.retry_after = retry_after


def check_cancel_loop(session: Session, customer_id: int) -> None:
    """TooManyCancelled when the customer cancelled ``max_cancelled()`` bookings before
    paying them within the last hour (a sliding window on the transitions' times). Her
    own cancels only (chat, IVR and API cancel as her): ops clearing a shop's mistaken
    bookings is not her loop."""
    limit = max_cancelled()
    now = clock.now()
    oldest = session.scalar(
        select(TransitionLog.at).join(Booking, Booking.id == TransitionLog.entity_id).where(
            Booking.customer_id == customer_id,
            Booking.status == BookingStatus.CANCELLED.value,
            TransitionLog.entity == "booking",
            TransitionLog.to_status == BookingStatus.CANCELLED.value,
            TransitionLog.actor == str(Actor("customer", str(customer_id))),
            TransitionLog.from_status.in_((BookingStatus.DRAFT.value, BookingStatus.QUOTED.value,
                                           BookingStatus.AWAITING_PAYMENT.value)),
            TransitionLog.at > now - timedelta(seconds=CANCELLED_WINDOW_S))
        .order_by(TransitionLog.at.desc()).offset(limit - 1).limit(1))
    if oldest is not None:
        left = (oldest + timedelta(seconds=CANCELLED_WINDOW_S) - now).total_seconds()
        raise TooManyCancelled(max(1, math.ceil(left)))


class PriceChanged(Conflict):
    """The fare is no longer the total the customer agreed to (the rate card or the
    surge moved since it was shown): nothing is booked; ``total_paise`` is the fare now."""

    code = "price_changed"

    def __init__(self, total_paise: int, agreed_total_paise: int) -> None:
        super().__init__(f"the price has changed since it was shown: it is now "
                         f"{format_inr(total_paise)}, not {format_inr(agreed_total_paise)}",
                         field="quoted_total_paise")
        self.total_paise = total_paise


def _language_now(session: Session, customer_id: int) -> str:
    """The customer's language as the booking is made, the one its first messages (its
    payment link) go in: its messages keep it, whoever on the same phone chooses another
    later. One who never chose gets the default language, and keeps it too: a relative
    choosing Tamil later must not turn the rest of her booking's news into Tamil."""
    from core.services.notify import language_of  # notify's rule: the link goes by it

    return language_of(session.get(Person, customer_id))


def create_booking(
    session: Session,
    *,
    customer_id: int,
    channel: str,
    pickup: Place,
    drop: Place,
    parcel: ParcelSpec,
    tier: SpeedTier,
    recipient_name: str | None,
    recipient_phone: str | None,
    actor: Actor,
    agreed_total_paise: int | None = None,
) -> Booking:
    """Price and save a booking in state ``quoted`` with one direct leg.

    Conflict ``too_many_unpaid`` when the customer already has ``max_unpaid()`` bookings
    waiting for payment: each booking costs a payment link at the gateway and a message,
    so a loop of them is refused (they pay or cancel one, or it expires); TooManyCancelled
    (429) when they cancelled ``max_cancelled()`` unpaid ones within the hour.

    ``agreed_total_paise``: the total the customer was shown and said yes to. The fare is
    worked out afresh here (the one quote of the booking); when its total is another,
    PriceChanged (Conflict ``price_changed``, the new total with it) and nothing is saved:
    a booking is made only at the price its customer agreed to."""
    waiting = unpaid_bookings(session, customer_id, lock=True)
    if waiting >= max_unpaid():
        raise Conflict(f"you have {waiting} bookings waiting for payment: pay or cancel "
                       "one first", code="too_many_unpaid")
    check_cancel_loop(session, customer_id)
    check_declared_value(parcel.declared_value_paise)  # one rule for every channel
    phone = recipient_mobile(recipient_phone) if recipient_phone else None
    q = quote_trip(session, pickup, drop, parcel)
    fare = q.fares.get(SpeedTier(tier))
    if fare is None and SpeedTier(tier) in q.not_cheaper:
        faster = q.not_cheaper[SpeedTier(tier)]
        raise ValidationError(
            f"on this trip {tier} costs no less than {faster}, which is faster: "
            f"choose {faster}", code="tier_not_offered", field="tier")
    if fare is None:
        offered = ", ".join(str(t) for t in q.fares)
        raise ValidationError(
            f"we cannot deliver {q.distance_m / 1000:.1f} km within the {tier} tier's "
            f"{tier_hours(tier)} hours: choose {offered}", code="tier_not_offered",
            field="tier")
    if agreed_total_paise is not None and fare.total_paise != agreed_total_paise:
        raise PriceChanged(fare.total_paise, agreed_total_paise)
    booking = Booking(
        reference=_unused_reference(session), customer_id=customer_id, channel=channel,
        status=BookingStatus.DRAFT.value,
        pickup_lat=pickup.lat, pickup_lng=pickup.lng, pickup_pincode=pickup.pincode,
        pickup_post_office=pickup.post_office, pickup_landmark=pickup.landmark,
        drop_lat=drop.lat, drop_lng=drop.lng, drop_pincode=drop.pincode,
        drop_post_office=drop.post_office, drop_landmark=drop.landmark,
        recipient_name=recipient_name, recipient_phone=phone, speed_tier=SpeedTier(tier).value,
        vehicle_type=q.vehicle, distance_m=q.distance_m, fare=fare.to_dict(),
        total_paise=fare.total_paise, commission_paise=fare.commission_paise,
        partner_share_paise=fare.partner_share_paise,
        language=_language_now(session, customer_id),
    )
    session.add(booking)
    session.flush()
    record(session, "booking", booking.id, None, BookingStatus.DRAFT, actor, "booking started")
    session.add(Parcel(booking_id=booking.id, category=ParcelCategory(parcel.category).value,
                       size_bucket=SizeBucket(parcel.size).value,
                       weight_bucket=WeightBucket(parcel.weight).value,
                       declared_value_paise=parcel.declared_value_paise,
                       fragile=parcel.fragile, description=parcel.description))
    leg = Leg(booking_id=booking.id, sequence=1, status=LegStatus.PENDING.value,
              from_lat=pickup.lat, from_lng=pickup.lng, to_lat=drop.lat, to_lng=drop.lng,
              distance_m=q.distance_m, payout_paise=fare.partner_share_paise, otp_failures=0)
    session.add(leg)
    session.flush()
    record(session, "leg", leg.id, None, LegStatus.PENDING, actor, "leg planned")
    move_booking(session, booking, BookingStatus.QUOTED, actor, "fare quoted")
    return booking


def recipient_mobile(raw: str) -> str:
    """The recipient's number in E.164, only an Indian mobile (ValidationError ``bad_phone``
    otherwise): their drop OTP goes by SMS, which we send only to Indian mobiles."""
    try:
        phone = normalize_phone(raw)
    except ValidationError as exc:
        exc.field = "recipient.phone"
        raise
    if not is_indian_mobile(phone):
        raise ValidationError("the recipient needs an Indian mobile number", code="bad_phone",
                              field="recipient.phone")
    return phone


def _unused_reference(session: Session, attempts: int = 20) -> str:
    for _ in range(attempts):
        ref = new_reference()
        if session.scalar(select(Booking.id).where(Booking.reference == ref)) is None:
            return ref
    raise RuntimeError("could not find an unused booking reference")  # 10^7 space: never


def get_booking(session: Session, reference: str, *, for_update: bool = False) -> Booking:
    """A booking by its reference (as typed or spoken); NotFound if none."""
    ref = normalize_reference(reference)
    if ref is None:
        raise NotFound("no booking with that reference", code="unknown_booking",
                       field="reference")
    stmt = select(Booking).where(Booking.reference == ref)
    if for_update:
        stmt = stmt.with_for_update()
    booking = session.scalar(stmt)
    if booking is None:
        raise NotFound("no booking with that reference", code="unknown_booking",
                       field="reference")
    return booking


def move_booking(session: Session, booking: Booking, to: BookingStatus, actor: Actor,
                 reason: str) -> None:
    """Move a booking to ``to`` (InvalidTransition if the state machine forbids it)."""
    record(session, "booking", booking.id, booking.status, to, actor, reason)
    booking.status = BookingStatus(to).value


def move_leg(session: Session, leg: Leg, to: LegStatus, actor: Actor, reason: str) -> None:
    """Move a leg to ``to`` (InvalidTransition if the state machine forbids it)."""
    record(session, "leg", leg.id, leg.status, to, actor, reason)
    leg.status = LegStatus(to).value
    if leg.status == LegStatus.DELIVERED.value:
        leg.delivered_at = clock.now()


def issue_leg_otps(leg: Leg) -> tuple[str, str]:
    """New pickup and drop OTPs for a leg: hashes saved, plain codes returned to send once."""
    key = get_settings().otp_key
    pickup, drop = otp_rules.generate_otp(), otp_rules.generate_otp()
    leg.pickup_otp_hash = otp_rules.hash_otp(pickup, key=key, context=f"leg:{leg.id}:pickup")
    leg.drop_otp_hash = otp_rules.hash_otp(drop, key=key, context=f"leg:{leg.id}:drop")
    leg.otp_failures = 0
    return pickup, drop


def check_leg_otp(leg: Leg, kind: str, code: str) -> bool:
    """True if ``code`` is the leg's current pickup/drop OTP."""
    hashed = leg.pickup_otp_hash if kind == "pickup" else leg.drop_otp_hash
    if hashed is None:
        return False
    return otp_rules.verify_otp(code, hashed, key=get_settings().otp_key,
                                context=f"leg:{leg.id}:{kind}")


__all__ = ["IntegrityError", "Area", "Place", "ParcelSpec", "Quote", "check_service_area",
           "create_booking", "get_booking", "move_booking", "move_leg", "issue_leg_otps",
           "check_leg_otp", "PriceChanged", "quote_trip", "rider_free_near", "service_areas",
           "service_radius_m", "tier_hours"]

"""Booking use cases: quote, create, move through the state machine, issue leg OTPs.

Each function works inside the caller's transaction (a Session) so a channel can make a
booking and queue its messages atomically; concurrency is guarded by row locks and the
version columns on bookings and legs.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import clock
from core.adapters import distance, surge
from core.adapters.models import Booking, Leg, Parcel, RateCardRow, TransitionLog
from core.config import get_settings
from core.domain import otp as otp_rules
from core.domain.booking import BOOKING, LEG, Actor, BookingStatus, LegStatus, transition
from core.domain.errors import NotFound, ValidationError
from core.domain.geo import validate_lat_lng
from core.domain.phone import normalize_phone
from core.domain.pricing import (
    DEFAULT_RATE_CARD,
    FareBreakdown,
    ParcelCategory,
    RateCard,
    SizeBucket,
    SpeedTier,
    WeightBucket,
    choose_vehicle,
    quote_tiers,
)
from core.domain.reference import new_reference, normalize_reference


@dataclass(frozen=True)
class Place:
    """A pickup or drop place as the customer gave it."""

    lat: float
    lng: float
    pincode: str | None = None
    post_office: str | None = None
    landmark: str | None = None


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


def active_rate_card(session: Session) -> RateCard:
    """The newest active rate card in the database (the built-in default if none)."""
    row = session.scalar(
        select(RateCardRow).where(RateCardRow.active.is_(True)).order_by(RateCardRow.id.desc())
    )
    return RateCard.from_dict(row.card) if row is not None else DEFAULT_RATE_CARD


def quote_trip(session: Session, pickup: Place, drop: Place, parcel: ParcelSpec) -> Quote:
    """Fares for every speed tier between two places for one parcel."""
    validate_lat_lng(pickup.lat, pickup.lng)
    validate_lat_lng(drop.lat, drop.lng)
    card = active_rate_card(session)
    settings = get_settings()
    dist = distance.road_distance_m((pickup.lat, pickup.lng), (drop.lat, drop.lng),
                                    detour_factor_bp=card.detour_factor_bp,
                                    osrm_url=settings.osrm_url)
    vehicle = choose_vehicle(parcel.size, parcel.weight, card)
    fares = quote_tiers(card, distance_m=dist.metres, vehicle=vehicle, size=parcel.size,
                        weight=parcel.weight, fragile=parcel.fragile,
                        surge_bp=surge.surge_bp(pickup.pincode))
    return Quote(dist.metres, dist.source, vehicle.value, fares)


def record(session: Session, entity: str, entity_id: int, frm: str | None, to: str,
           actor: Actor, reason: str) -> None:
    """Check a transition on its state machine and append it to the history."""
    machine = BOOKING if entity == "booking" else LEG
    t = transition(machine, entity_id, frm, to, actor, reason, clock.now())
    session.add(TransitionLog(entity=entity, entity_id=entity_id, from_status=t.from_status,
                              to_status=t.to_status, actor=str(actor)[:40],
                              reason=t.reason[:200], at=t.at))


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
) -> Booking:
    """Price and save a booking in state ``quoted`` with one direct leg."""
    if parcel.declared_value_paise < 0:
        raise ValidationError("declared value cannot be negative", code="bad_value",
                              field="declared_value_paise")
    phone = normalize_phone(recipient_phone) if recipient_phone else None
    q = quote_trip(session, pickup, drop, parcel)
    fare = q.fares[SpeedTier(tier)]
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


__all__ = ["IntegrityError", "Place", "ParcelSpec", "Quote", "create_booking", "get_booking",
           "move_booking", "move_leg", "issue_leg_otps", "check_leg_otp", "quote_trip"]

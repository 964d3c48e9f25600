"""Where a booking's parcel is now, and roughly when it arrives (for the track views)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import clock
from core.adapters.dispatch_models import DispatchSearch
from core.adapters.models import Booking, Leg, Parcel, Vehicle
from core.domain.booking import LegStatus
from core.domain.dispatch import VEHICLE_SPEED_KMH, SearchStatus
from core.domain.geo import haversine_m
from core.domain.pricing import VehicleType, can_carry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Whereabouts:
    position: dict[str, float] | None  # {"lat": .., "lng": ..} of the carrying partner
    eta_minutes: int | None


def _speed_kmh(session: Session, booking: Booking, partner_id: int) -> float:
    """The rural average speed of the carrying partner's vehicle (the slowest of their
    active ones able to carry the parcel: a promise kept rather than beaten); the quoted
    vehicle's if none is known. Dispatch offers a job to any vehicle able to carry it, so
    a bag quoted on a bicycle may go by motorcycle."""
    quoted = VEHICLE_SPEED_KMH.get(VehicleType(booking.vehicle_type), 15)
    parcel = session.scalar(select(Parcel).where(Parcel.booking_id == booking.id).limit(1))
    if parcel is None:
        return quoted
    speeds = [VEHICLE_SPEED_KMH.get(VehicleType(v.type), quoted) for v in session.scalars(
        select(Vehicle).where(Vehicle.partner_id == partner_id, Vehicle.active.is_(True)))
        if can_carry(v.type, parcel.size_bucket, parcel.weight_bucket)]
    return min(speeds) if speeds else quoted


def _search_paused(session: Session, legs: list[Leg]) -> bool:
    """Whether the rider search of any of these legs ran out of time: paused now, or in a
    new round after a pause (a pause is a moment of each round; dispatch.stuck_holder
    counts both as stuck)."""
    from core.services.dispatch import _paused_before

    if not legs:
        return False
    statuses = dict(session.execute(select(DispatchSearch.leg_id, DispatchSearch.status).where(
        DispatchSearch.leg_id.in_([x.id for x in legs]))).tuples().all())
    return any(statuses.get(x.id) == SearchStatus.PAUSED.value or (
        statuses.get(x.id) == SearchStatus.ACTIVE.value and _paused_before(session, x))
        for x in legs)


def holding_leg(session: Session, booking: Booking) -> Leg | None:
    """The leg whose rider has the parcel, or is on his way to collect it: the first leg
    not delivered, when a rider has it (assigned: coming to collect it, or handed it at
    the Point; picked up) or holds it locked with the parcel in hand (dispatch._carrying,
    the holder rule). None otherwise: that leg locked before its pickup (the parcel is
    where it was), nobody has it yet, or the booking is over. Never a later leg's rider
    (a relay's next rider taking his leg, waiting at the Point) while an earlier one's
    carrier still holds it."""
    from core.services.dispatch import _carrying

    for leg in booking.legs:  # in sequence order
        if leg.status == LegStatus.DELIVERED.value:
            continue
        if leg.partner_id is None:
            return None
        if leg.status in (LegStatus.ASSIGNED.value, LegStatus.PICKED_UP.value):
            return leg
        if leg.status == LegStatus.LOCKED.value and _carrying(session, leg):
            return leg
        return None
    return None


def position_and_eta(session: Session, booking: Booking) -> Whereabouts:
    """Last known position of the partner carrying the parcel (``holding_leg``), and an ETA
    if we have one.

    The ETA is the straight distance still to go (to the pickup, then to the drop, and
    any relay legs after) at the vehicle's rural average speed: rough, and said so in
    the app. A position older than the dispatch's location max age is not shown.
    """
    from core.services.dispatch import config as dispatch_config
    from core.services.partner_app import last_fix

    leg = holding_leg(session, booking)
    if leg is None or leg.partner_id is None:
        return Whereabouts(position=None, eta_minutes=None)
    try:
        fix = last_fix(leg.partner_id)
    except RedisError:
        # Positions live in Redis: without it the booking is still shown, without a pin.
        log.warning("no rider position: Redis unavailable")
        return Whereabouts(position=None, eta_minutes=None)
    max_age = timedelta(seconds=dispatch_config().location_max_age_s)
    if fix is None or fix.at < clock.now() - max_age:
        # No position, or one too old to say where they are now: none rather than a
        # confident pin and ETA from hours ago.
        return Whereabouts(position=None, eta_minutes=None)
    if leg.status == LegStatus.LOCKED.value:
        # Wrong codes locked his leg with the parcel in his hands: it waits for ops to
        # free it, so where it is, but no arrival time.
        return Whereabouts(position={"lat": fix.lat, "lng": fix.lng}, eta_minutes=None)
    if leg.status == LegStatus.ASSIGNED.value:
        to_go = haversine_m(fix.lat, fix.lng, leg.from_lat, leg.from_lng) + leg.distance_m
    else:
        to_go = haversine_m(fix.lat, fix.lng, leg.to_lat, leg.to_lng)
    # A relay: the legs after this one are still to ride too.
    later = [x for x in booking.legs if x.sequence > leg.sequence
             and x.status not in (LegStatus.CANCELLED.value, LegStatus.FAILED.value)]
    if _search_paused(session, [x for x in later if x.partner_id is None]):
        # Nobody took a later leg in time (the customer was told "still looking"): an
        # arrival time would promise a rider nobody knows of. Where the parcel is, still.
        return Whereabouts(position={"lat": fix.lat, "lng": fix.lng}, eta_minutes=None)
    to_go += sum(x.distance_m for x in later)
    speed = _speed_kmh(session, booking, leg.partner_id)
    eta = max(1, round(to_go / 1000 / speed * 60))
    return Whereabouts(position={"lat": fix.lat, "lng": fix.lng}, eta_minutes=eta)

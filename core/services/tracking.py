"""Where a booking's parcel is now, and roughly when it arrives (for the track views)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from core.adapters.models import Booking, Leg
from core.domain.booking import LegStatus
from core.domain.dispatch import VEHICLE_SPEED_KMH
from core.domain.geo import haversine_m
from core.domain.pricing import VehicleType


@dataclass(frozen=True)
class Whereabouts:
    position: dict[str, float] | None  # {"lat": .., "lng": ..} of the carrying partner
    eta_minutes: int | None


def position_and_eta(session: Session, booking: Booking) -> Whereabouts:
    """Last known position of the partner carrying the parcel, and an ETA if we have one.

    The ETA is the straight distance still to go (to the pickup, then to the drop) at
    the vehicle's rural average speed: rough, and said so in the app.
    """
    from core.services.partner_app import last_fix

    leg: Leg | None = next((x for x in booking.legs if x.partner_id is not None and x.status
                            in (LegStatus.ASSIGNED.value, LegStatus.PICKED_UP.value)), None)
    if leg is None or leg.partner_id is None:
        return Whereabouts(position=None, eta_minutes=None)
    fix = last_fix(leg.partner_id)
    if fix is None:
        return Whereabouts(position=None, eta_minutes=None)
    if leg.status == LegStatus.ASSIGNED.value:
        to_go = haversine_m(fix.lat, fix.lng, leg.from_lat, leg.from_lng) + leg.distance_m
    else:
        to_go = haversine_m(fix.lat, fix.lng, leg.to_lat, leg.to_lng)
    speed = VEHICLE_SPEED_KMH.get(VehicleType(booking.vehicle_type), 15)
    eta = max(1, round(to_go / 1000 / speed * 60))
    return Whereabouts(position={"lat": fix.lat, "lng": fix.lng}, eta_minutes=eta)

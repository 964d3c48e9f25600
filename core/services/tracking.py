"""Where a booking's parcel is now, and roughly when it arrives (for the track views)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from core.adapters.models import Booking


@dataclass(frozen=True)
class Whereabouts:
    position: dict[str, float] | None  # {"lat": .., "lng": ..} of the carrying partner
    eta_minutes: int | None


def position_and_eta(session: Session, booking: Booking) -> Whereabouts:
    """Last known position of the partner carrying the parcel, and an ETA if we have one."""
    return Whereabouts(position=None, eta_minutes=None)

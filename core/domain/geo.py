"""Coordinates: validation, great-circle distance, and a rough "is this in India" check."""

from __future__ import annotations

import math

from core.domain.errors import ValidationError

EARTH_RADIUS_M = 6371008.8  # IUGG mean radius

# Rough bounding box of India: cheap sanity check for pins shared on WhatsApp.
INDIA_LAT = (6.5, 37.5)
INDIA_LNG = (68.0, 97.5)


def validate_lat_lng(lat: float, lng: float) -> tuple[float, float]:
    """``(lat, lng)`` as floats; ValidationError ``bad_location`` if non-numeric, NaN/inf or out
    of range, so a garbled WhatsApp pin never reaches matching."""
    try:
        if isinstance(lat, bool) or isinstance(lng, bool):
            raise TypeError("booleans are not coordinates")
        la, ln = float(lat), float(lng)
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            "location must be two numbers", code="bad_location", field="location"
        ) from exc
    if not (math.isfinite(la) and math.isfinite(ln) and -90 <= la <= 90 and -180 <= ln <= 180):
        raise ValidationError(
            "latitude must be within ±90 and longitude within ±180",
            code="bad_location",
            field="location",
        )
    return la, ln


def haversine_m(lat1: float, lng1: float, lat2: float, lng2: float) -> int:
    """Great-circle distance in whole metres (half-up) on a spherical earth."""
    la1, ln1 = validate_lat_lng(lat1, lng1)
    la2, ln2 = validate_lat_lng(lat2, lng2)
    phi1, phi2 = math.radians(la1), math.radians(la2)
    dphi = phi2 - phi1
    dlmb = math.radians(ln2 - ln1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    c = 2 * math.asin(min(1.0, math.sqrt(a)))
    return math.floor(EARTH_RADIUS_M * c + 0.5)


def in_india(lat: float, lng: float) -> bool:
    """True if the point falls inside India's rough bounding box (False for invalid input)."""
    try:
        la, ln = validate_lat_lng(lat, lng)
    except ValidationError:
        return False
    return INDIA_LAT[0] <= la <= INDIA_LAT[1] and INDIA_LNG[0] <= ln <= INDIA_LNG[1]


SAME_PLACE_M = 100  # pickup and drop nearer than this are one place: nothing to carry


def same_place(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True if two (lat, lng) are one place: a trip between them would cost the minimum
    fare for carrying nothing (the dialog and the booking service refuse it alike)."""
    return haversine_m(a[0], a[1], b[0], b[1]) < SAME_PLACE_M

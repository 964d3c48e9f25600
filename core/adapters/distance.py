"""Road distance between two points: OSRM when configured, else straight line x detour.

Quoting must never fail because a routing server is down, so every OSRM problem (network,
HTTP status, odd JSON) degrades to the haversine estimate with a warning in the log.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import requests

from core.domain.geo import haversine_m, validate_lat_lng

log = logging.getLogger(__name__)

BP = 10_000  # basis points in 1.00

# How much shorter than the straight line a road route may be: OSRM snaps each end to
# the nearest road, which can shorten a trip by a little, never by kilometres.
SNAP_ALLOWANCE_M = 500


@dataclass(frozen=True)
class DistanceResult:
    """A road distance in whole metres and where it came from (quotes record the source)."""

    metres: int
    source: Literal["osrm", "haversine"]


class _OsrmFailed(Exception):
    """Internal: OSRM gave no usable answer (reason in the message, never coordinates)."""


def estimate_m(a: tuple[float, float], b: tuple[float, float], detour_factor_bp: int) -> int:
    """Straight-line metres times the detour factor, rounded half up in integer arithmetic."""
    if isinstance(detour_factor_bp, bool) or not isinstance(detour_factor_bp, int):
        raise TypeError("detour_factor_bp must be an int (basis points)")
    if detour_factor_bp < BP:
        raise ValueError("detour_factor_bp below 10000: roads are never shorter than a line")
    straight = haversine_m(a[0], a[1], b[0], b[1])
    return (straight * detour_factor_bp + BP // 2) // BP


def _osrm_metres(
    osrm_url: str, a: tuple[float, float], b: tuple[float, float], timeout_s: float
) -> int:
    """Driving distance from OSRM's route service; raises _OsrmFailed on any problem."""
    (lat1, lng1), (lat2, lng2) = a, b
    # OSRM wants lng,lat; fixed 6 decimals (~0.1 m) avoids scientific notation like 1e-05.
    coords = f"{lng1:.6f},{lat1:.6f};{lng2:.6f},{lat2:.6f}"
    url = f"{osrm_url.rstrip('/')}/route/v1/driving/{coords}"
    try:
        resp = requests.get(url, params={"overview": "false"}, timeout=timeout_s)
    except requests.RequestException as exc:
        # Exception text contains the URL (hence the coordinates): log the class only.
        raise _OsrmFailed(f"request failed ({type(exc).__name__})") from None
    if resp.status_code != 200:
        raise _OsrmFailed(f"HTTP {resp.status_code}")
    try:
        body = resp.json()
    except ValueError:
        raise _OsrmFailed("response is not JSON") from None
    if not isinstance(body, dict) or body.get("code") != "Ok":
        code = body.get("code") if isinstance(body, dict) else None
        raise _OsrmFailed(f"code {str(code)[:40]!r}")
    routes = body.get("routes")
    if not isinstance(routes, list) or not routes or not isinstance(routes[0], dict):
        raise _OsrmFailed("no routes")
    distance = routes[0].get("distance")
    if (
        isinstance(distance, bool)
        or not isinstance(distance, int | float)
        or not math.isfinite(distance)
        or distance < 0
    ):
        raise _OsrmFailed("route has no valid distance")
    return math.floor(distance + 0.5)


def road_distance_m(
    a: tuple[float, float],
    b: tuple[float, float],
    *,
    detour_factor_bp: int,
    osrm_url: str | None,
    timeout_s: float = 2.0,
) -> DistanceResult:
    """Road metres from ``a`` to ``b`` (each ``(lat, lng)``).

    Uses OSRM at ``osrm_url`` if given, falling back to haversine x ``detour_factor_bp``
    on any network/server trouble. Invalid coordinates raise ValidationError
    ``bad_location``; network problems never raise."""
    a = validate_lat_lng(*a)
    b = validate_lat_lng(*b)
    estimate = estimate_m(a, b, detour_factor_bp)  # also validates the factor up front
    if osrm_url:
        try:
            metres = _osrm_metres(osrm_url, a, b, timeout_s)
            straight = haversine_m(*a, *b)
            # No road is shorter than the straight line (less a little for the ends'
            # snapping to the nearest road); one far longer is no route we would price.
            if metres < straight - SNAP_ALLOWANCE_M or metres > straight * 10 + 20_000:
                raise _OsrmFailed(f"route of {metres} m for {straight:.0f} m in a line")
            return DistanceResult(metres, "osrm")
        except _OsrmFailed as exc:
            log.warning(
                "OSRM route failed, using haversine estimate: %s",
                exc,
                extra={"osrm_host": urlsplit(osrm_url).netloc},
            )
    return DistanceResult(estimate, "haversine")

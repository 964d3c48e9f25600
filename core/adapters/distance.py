"""Road distance between two points: OSRM when configured, else straight line x detour.

Quoting must never fail because a routing server is down, so every OSRM problem (network,
HTTP status, odd JSON) degrades to the haversine estimate with a warning in the log.

A server that does not answer (a timeout, a refused or dropped connection) costs each
request its whole timeout, and one relay quote measures dozens of pairs of places: so a
circuit breaker, one per OSRM URL and process, skips OSRM for BREAKER_OPEN_S after such a
failure (the estimate is used meanwhile), then lets one request through to try it again.
It runs on the service clock (core.clock), so tests move it without sleeping.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit

import requests

from core import clock
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
    """Internal: OSRM gave no usable answer (reason in the message, never coordinates).

    ``answered``: the server answered, only not with a route we can use (an HTTP error, a
    NoRoute, odd JSON): it is up, so the breaker stays closed. Anything else (a timeout,
    no connection) counts as the server being away and opens it."""

    def __init__(self, reason: str, *, answered: bool = False) -> None:
        super().__init__(reason)
        self.answered = answered


# How long OSRM is skipped after it failed to answer: long enough that a quote (or a
# dispatch round) does not wait out one timeout after another, short enough that routes
# come back soon after the server does.
BREAKER_OPEN_S = 30


@dataclass
class _Breaker:
    """One OSRM URL's state: skipped until ``open_until`` (None: closed)."""

    open_until: datetime | None = None


_breakers: dict[str, _Breaker] = {}
_breakers_lock = threading.Lock()


def _may_ask(osrm_url: str, timeout_s: float) -> bool:
    """Whether to send this request to OSRM now: yes while the breaker is closed; while
    it is open, no, except one request once BREAKER_OPEN_S is over (the others keep
    skipping while that one finds out, for as long as its timeout may take)."""
    now = clock.now()
    with _breakers_lock:
        state = _breakers.get(osrm_url)
        if state is None or state.open_until is None:
            return True
        # A clock set back (tests freeze it) must not hold the breaker open for ever.
        if now < state.open_until <= now + timedelta(seconds=BREAKER_OPEN_S + timeout_s):
            return False
        state.open_until = now + timedelta(seconds=timeout_s + 1)  # this one tries it
        return True


def _answered(osrm_url: str) -> None:
    """The server answered: close its breaker if it was open (and say so, once)."""
    with _breakers_lock:
        state = _breakers.get(osrm_url)
        if state is None or state.open_until is None:
            return
        state.open_until = None
    log.info("OSRM answers again: routes come from it again",
             extra={"osrm_host": urlsplit(osrm_url).netloc})


def _away(osrm_url: str, exc: _OsrmFailed) -> None:
    """The server did not answer: open its breaker for BREAKER_OPEN_S (log once when it
    opens, not at every try while it stays open)."""
    with _breakers_lock:
        state = _breakers.setdefault(osrm_url, _Breaker())
        was_open = state.open_until is not None
        state.open_until = clock.now() + timedelta(seconds=BREAKER_OPEN_S)
    if was_open:
        log.info("OSRM still does not answer (%s): using the haversine estimate for "
                 "another %d s", exc, BREAKER_OPEN_S,
                 extra={"osrm_host": urlsplit(osrm_url).netloc})
    else:
        log.warning("OSRM does not answer (%s): using the haversine estimate for %d s "
                    "before trying it again", exc, BREAKER_OPEN_S,
                    extra={"osrm_host": urlsplit(osrm_url).netloc})


def reset_breakers() -> None:
    """Close every breaker (tests: no state left over from another test)."""
    with _breakers_lock:
        _breakers.clear()


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
        # A timeout or no connection is a server away (the breaker opens); a URL requests
        # cannot even send to fails at once, every time: nothing to wait out.
        away = isinstance(exc, requests.Timeout | requests.ConnectionError)
        raise _OsrmFailed(f"request failed ({type(exc).__name__})",
                          answered=not away) from None
    if resp.status_code != 200:
        raise _OsrmFailed(f"HTTP {resp.status_code}", answered=True)
    try:
        body = resp.json()
    except ValueError:
        raise _OsrmFailed("response is not JSON", answered=True) from None
    if not isinstance(body, dict) or body.get("code") != "Ok":
        code = body.get("code") if isinstance(body, dict) else None
        raise _OsrmFailed(f"code {str(code)[:40]!r}", answered=True)
    routes = body.get("routes")
    if not isinstance(routes, list) or not routes or not isinstance(routes[0], dict):
        raise _OsrmFailed("no routes", answered=True)
    distance = routes[0].get("distance")
    if (
        isinstance(distance, bool)
        or not isinstance(distance, int | float)
        or not math.isfinite(distance)
        or distance < 0
    ):
        raise _OsrmFailed("route has no valid distance", answered=True)
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
    on any network/server trouble, and without asking it while its breaker is open (it
    did not answer within the last BREAKER_OPEN_S). Invalid coordinates raise
    ValidationError ``bad_location``; network problems never raise."""
    a = validate_lat_lng(*a)
    b = validate_lat_lng(*b)
    estimate = estimate_m(a, b, detour_factor_bp)  # also validates the factor up front
    if osrm_url and _may_ask(osrm_url, timeout_s):
        try:
            metres = _osrm_metres(osrm_url, a, b, timeout_s)
        except _OsrmFailed as exc:
            if exc.answered:
                _answered(osrm_url)
                _route_failed(osrm_url, exc)
            else:
                _away(osrm_url, exc)
            return DistanceResult(estimate, "haversine")
        _answered(osrm_url)
        straight = haversine_m(*a, *b)
        # No road is shorter than the straight line (less a little for the ends' snapping
        # to the nearest road); one far longer is no route we would price.
        if metres < straight - SNAP_ALLOWANCE_M or metres > straight * 10 + 20_000:
            _route_failed(osrm_url, f"route of {metres} m for {straight:.0f} m in a line")
            return DistanceResult(estimate, "haversine")
        return DistanceResult(metres, "osrm")
    return DistanceResult(estimate, "haversine")


def _route_failed(osrm_url: str, reason: object) -> None:
    log.warning("OSRM route failed, using haversine estimate: %s", reason,
                extra={"osrm_host": urlsplit(osrm_url).netloc})

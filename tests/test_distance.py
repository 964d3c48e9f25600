"""Road distance: haversine x detour, and OSRM against a real local HTTP server."""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.adapters.distance import DistanceResult, estimate_m, road_distance_m
from core.domain.errors import ValidationError

BETTIAH = (26.80228, 84.51522)  # (lat, lng) Bettiah HO
MOTIHARI = (26.64469, 84.90172)  # (lat, lng) Motihari HO
DETOUR = 13_500


def hand_haversine_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Textbook haversine on the mean earth radius, written out independently."""
    r = 6371008.8
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp, dl = p2 - p1, math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(h))


# --- haversine path -----------------------------------------------------------------------


def test_haversine_with_detour_matches_hand_computation() -> None:
    straight = hand_haversine_m(BETTIAH, MOTIHARI)
    assert 42_000 < straight < 43_000  # ~42.3 km as the crow flies
    expected = math.floor(math.floor(straight + 0.5) * 1.35 + 0.5)
    result = road_distance_m(BETTIAH, MOTIHARI, detour_factor_bp=DETOUR, osrm_url=None)
    assert result == DistanceResult(expected, "haversine")
    assert isinstance(result.metres, int)


def test_detour_rounds_half_up_in_integers() -> None:
    # Two points on the equator 10 m apart, so the products below are exact decimals.
    a, b = (0.0, 0.0), (0.0, 0.00009)
    assert math.floor(hand_haversine_m(a, b) + 0.5) == 10
    assert estimate_m(a, b, 10_000) == 10
    assert estimate_m(a, b, 10_050) == 10  # 10.05 -> 10
    assert estimate_m(a, b, 10_500) == 11  # 10.5 -> 11 (half up)
    assert estimate_m(a, b, 10_499) == 10  # 10.499 -> 10


def test_same_point_is_zero() -> None:
    assert road_distance_m(BETTIAH, BETTIAH, detour_factor_bp=DETOUR, osrm_url=None) == (
        DistanceResult(0, "haversine")
    )


def test_bad_coordinates_raise_bad_location() -> None:
    with pytest.raises(ValidationError) as exc:
        road_distance_m((math.nan, 84.5), MOTIHARI, detour_factor_bp=DETOUR, osrm_url=None)
    assert exc.value.code == "bad_location"


@pytest.mark.parametrize("bp", [9_999, 0, -1])
def test_detour_factor_below_one_rejected(bp: int) -> None:
    with pytest.raises(ValueError):
        road_distance_m(BETTIAH, MOTIHARI, detour_factor_bp=bp, osrm_url=None)


# --- a real local OSRM stand-in -----------------------------------------------------------


@dataclass
class FakeOsrm:
    """What the server answers and what it saw."""

    url: str
    status: int = 200
    body: bytes = b""
    paths: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    hang: bool = False

    def answer(self, payload: object, status: int = 200) -> None:
        self.status = status
        self.body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()


def _handler(state: Callable[[], FakeOsrm]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            srv = state()
            srv.paths.append(self.path)
            if srv.hang:
                srv.release.wait(10)  # released by the fixture teardown, not a sleep
            self.send_response(srv.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(srv.body)))
            self.end_headers()
            self.wfile.write(srv.body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


@pytest.fixture(scope="module")
def _osrm_server() -> Iterator[tuple[str, list[FakeOsrm]]]:
    """One real HTTP server per module (shutdown is slow-ish); state is swapped per test."""
    holder: list[FakeOsrm] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(lambda: holder[-1]))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}", holder
    finally:
        for state in holder:
            state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def osrm(_osrm_server: tuple[str, list[FakeOsrm]]) -> Iterator[FakeOsrm]:
    url, holder = _osrm_server
    holder.append(FakeOsrm(url=url))
    try:
        yield holder[-1]
    finally:
        holder[-1].release.set()


OK_ROUTE = {
    "code": "Ok",
    "routes": [{"distance": 51234.6, "duration": 4000.2, "legs": []}],
    "waypoints": [],
}


def test_osrm_route_used_and_lng_lat_order(osrm: FakeOsrm) -> None:
    osrm.answer(OK_ROUTE)
    result = road_distance_m(BETTIAH, MOTIHARI, detour_factor_bp=DETOUR, osrm_url=osrm.url)
    assert result == DistanceResult(51235, "osrm")  # 51234.6 rounded half up
    assert osrm.paths == [
        "/route/v1/driving/84.515220,26.802280;84.901720,26.644690?overview=false"
    ]


def test_osrm_url_with_trailing_slash_and_prefix(osrm: FakeOsrm) -> None:
    osrm.answer({"code": "Ok", "routes": [{"distance": 0.5, "duration": 0}]})
    result = road_distance_m(
        BETTIAH, BETTIAH, detour_factor_bp=DETOUR, osrm_url=osrm.url + "/osrm/"
    )
    assert result == DistanceResult(1, "osrm")
    assert osrm.paths[0].startswith("/osrm/route/v1/driving/84.515220,26.802280;")


def _fallback(osrm_url: str, caplog: pytest.LogCaptureFixture, **kw: float) -> DistanceResult:
    caplog.set_level(logging.WARNING, logger="core.adapters.distance")
    result = road_distance_m(BETTIAH, MOTIHARI, detour_factor_bp=DETOUR, osrm_url=osrm_url, **kw)
    expected = road_distance_m(BETTIAH, MOTIHARI, detour_factor_bp=DETOUR, osrm_url=None)
    assert result == expected and result.source == "haversine"
    warnings = [r for r in caplog.records if r.name == "core.adapters.distance"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    text = warnings[0].getMessage()
    for coordinate in ("84.5", "26.8", "84.9", "26.6"):  # no customer location in logs
        assert coordinate not in text
    return result


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"message": "boom"}, 500),
        (OK_ROUTE, 503),
        ({"code": "NoRoute", "message": "Impossible route between points"}, 200),
        ({"code": "InvalidQuery"}, 400),
        ({"code": "Ok", "routes": []}, 200),
        ({"code": "Ok"}, 200),
        ({"code": "Ok", "routes": [{"duration": 3}]}, 200),
        ({"code": "Ok", "routes": [{"distance": "far"}]}, 200),
        ({"code": "Ok", "routes": [{"distance": -5.0}]}, 200),
        ({"code": "Ok", "routes": [None]}, 200),
        ([1, 2, 3], 200),
        (b"<html>garbage</html>", 200),
        (b"", 200),
        (b'{"code": "Ok", "routes": [{"distance": NaN}]}', 200),
    ],
)
def test_osrm_trouble_falls_back_to_haversine(
    osrm: FakeOsrm, caplog: pytest.LogCaptureFixture, payload: object, status: int
) -> None:
    osrm.answer(payload, status)
    _fallback(osrm.url, caplog)
    assert len(osrm.paths) == 1


def test_connection_refused_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    _fallback(f"http://127.0.0.1:{port}", caplog)


def test_timeout_falls_back(osrm: FakeOsrm, caplog: pytest.LogCaptureFixture) -> None:
    osrm.answer(OK_ROUTE)
    osrm.hang = True  # the server holds the request until the fixture releases it
    _fallback(osrm.url, caplog, timeout_s=0.2)


def test_malformed_osrm_url_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    _fallback("not a url", caplog)

"""Quotes and booking creation (session 34, reviewer R6).

- OSRM configured but hanging: one relay quote asked it for every pair of places it
  measured, each a fresh 2 s timeout (34 of them, past gunicorn's 30 s, with POST
  /bookings holding the customer's row lock). A circuit breaker in road_distance_m skips
  OSRM for BREAKER_OPEN_S after it failed to answer, on the service clock.
- Two map pins were answered 422 ``position_needed`` ("send the drop's position"),
  though both were pins: two pins near each other are ``same_place``; a pickup by
  pincode at a drop pin's spot asks for the PICKUP's pin.
- POST /bookings with economy on a short trip (economy no cheaper than standard, so not
  offered) was told "we cannot deliver 1.0 km within the economy tier's 24 hours": it is
  told economy costs no less than standard there (same code, ``tier_not_offered``).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from core import clock
from core.adapters import distance
from core.adapters.db import transaction
from core.adapters.models import Booking, Point
from core.config import reset_settings
from tests.test_api import API, PARCEL, _bettiah_point, book, sign_in  # noqa: F401

pytestmark = pytest.mark.db

T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
OSRM = "http://osrm.internal:5000"
BETTIAH = (26.80228, 84.51522)
MOTIHARI = (26.64469, 84.90172)
DETOUR = 13_500


@pytest.fixture(autouse=True)
def _fresh_breakers() -> Iterator[None]:
    distance.reset_breakers()
    yield
    distance.reset_breakers()
    clock.freeze(None)


class FakeOsrm(list):
    """The OSRM requests made (each one's ``mode`` then), answered as ``mode`` says: a
    timeout (the server hangs), a NoRoute, or a 52 km route."""

    mode = "hang"


@pytest.fixture
def osrm_calls(monkeypatch) -> Iterator[FakeOsrm]:
    """OSRM_URL set; ``_osrm_metres`` replaced by a FakeOsrm."""
    monkeypatch.setenv("OSRM_URL", OSRM)
    reset_settings()
    calls = FakeOsrm()

    def fake(url, a, b, timeout_s):  # noqa: ANN001, ANN202
        calls.append(calls.mode)
        if calls.mode == "hang":  # each one: timeout_s (2 s) of waiting in real life
            raise distance._OsrmFailed("request failed (ReadTimeout)")
        if calls.mode == "no_route":
            raise distance._OsrmFailed("code 'NoRoute'", answered=True)
        return 52_000

    monkeypatch.setattr(distance, "_osrm_metres", fake)
    yield calls
    reset_settings()


def _measure() -> distance.DistanceResult:
    return distance.road_distance_m(BETTIAH, MOTIHARI, detour_factor_bp=DETOUR, osrm_url=OSRM)


# --- 1. OSRM hanging ------------------------------------------------------------------------

WEST_END = {"lat": 26.80, "lng": 83.82}  # 18 km west of Point A
EAST_END = {"lat": 26.80, "lng": 85.28}  # 18 km east of Point B: 196 road km in all


def test_a_relay_quote_with_osrm_hanging_asks_it_once_not_dozens_of_times(client,
                                                                           osrm_calls):
    """The reviewer's test: a relay quote measures dozens of pairs of places; with OSRM
    hanging each was a fresh 2 s wait, far past gunicorn's 30 s."""
    with transaction() as s:
        s.add(Point(name="A", lat=26.80, lng=84.00, pincode="274001", active=True))
        s.add(Point(name="B", lat=26.80, lng=85.10, pincode="845401", active=True))
        for i in range(6):  # a few more Points around, as a district has
            s.add(Point(name=f"W{i}", lat=26.45 + 0.12 * i, lng=83.60, pincode="274001",
                        active=True))
            s.add(Point(name=f"E{i}", lat=26.45 + 0.12 * i, lng=85.55, pincode="845401",
                        active=True))
    h = sign_in(client)
    r = client.post(f"{API}/quotes", json={"pickup": WEST_END, "drop": EAST_END,
                                           "parcel": PARCEL}, headers=h)
    assert r.status_code == 200, r.get_json()
    assert len(osrm_calls) * 2 < 30, f"{len(osrm_calls)} OSRM requests of 2 s each"
    assert len(osrm_calls) == 1


def test_the_breaker_tries_osrm_again_after_30_s_and_closes_when_it_answers(
        osrm_calls, caplog):
    caplog.set_level(logging.INFO, logger="core.adapters.distance")
    clock.freeze(T0)
    assert _measure().source == "haversine"
    assert _measure().source == "haversine"
    assert len(osrm_calls) == 1  # the second one skipped it
    opened = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(opened) == 1 and "does not answer" in opened[0].getMessage()

    clock.freeze(T0 + timedelta(seconds=distance.BREAKER_OPEN_S - 1))
    assert _measure().source == "haversine"
    assert len(osrm_calls) == 1  # still open

    clock.freeze(T0 + timedelta(seconds=distance.BREAKER_OPEN_S))
    assert _measure().source == "haversine"  # one try: still hanging, open again
    assert len(osrm_calls) == 2
    assert _measure().source == "haversine"
    assert len(osrm_calls) == 2
    # Still failing is no new warning: one when it opened, that is all.
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

    osrm_calls.mode = "ok"
    clock.freeze(T0 + timedelta(seconds=2 * distance.BREAKER_OPEN_S + 1))
    assert _measure() == distance.DistanceResult(52_000, "osrm")
    assert _measure() == distance.DistanceResult(52_000, "osrm")
    assert len(osrm_calls) == 4  # closed: every request asks it
    closed = [r for r in caplog.records if "answers again" in r.getMessage()]
    assert len(closed) == 1
    for record in caplog.records:  # no customer location in the log
        assert "26.8" not in record.getMessage() and "84.5" not in record.getMessage()


def test_a_route_osrm_has_not_does_not_open_the_breaker(osrm_calls):
    """A NoRoute (or an HTTP error) is the server answering: the next pair asks it."""
    osrm_calls.mode = "no_route"
    assert _measure().source == "haversine"
    assert _measure().source == "haversine"
    assert len(osrm_calls) == 2


def test_while_one_request_tries_osrm_again_the_others_skip_it(osrm_calls):
    clock.freeze(T0)
    _measure()  # opens
    clock.freeze(T0 + timedelta(seconds=distance.BREAKER_OPEN_S))
    assert distance._may_ask(OSRM, 2.0) is True  # this one tries it
    assert distance._may_ask(OSRM, 2.0) is False  # the others meanwhile do not
    assert distance._may_ask("http://other-osrm:5000", 2.0) is True  # one per URL


def test_a_clock_set_back_does_not_hold_the_breaker_open(osrm_calls):
    clock.freeze(T0 + timedelta(days=1))
    _measure()  # opens until a day and 30 s after T0
    clock.freeze(T0)
    assert _measure() == distance.DistanceResult(
        distance.estimate_m(BETTIAH, MOTIHARI, DETOUR), "haversine")
    assert len(osrm_calls) == 2


# --- 2. map pins ----------------------------------------------------------------------------

# Two pins 61 m apart in Bettiah, on either side of the line between Bettiah HO and
# Bettiah RS SO: each one's nearest post office is another.
PIN_A = {"lat": 26.8030344, "lng": 84.51867}
PIN_B = {"lat": 26.8031656, "lng": 84.51927}


def test_two_pins_61m_apart_are_one_place_not_position_needed(client):
    h = sign_in(client)
    r = client.post(f"{API}/quotes", json={"pickup": PIN_A, "drop": PIN_B, "parcel": PARCEL},
                    headers=h)
    assert r.status_code == 422, r.get_json()
    err = r.get_json()["error"]
    assert (err["code"], err["field"]) == ("same_place", "drop"), err


def test_a_pinned_drop_is_not_asked_for_its_pin_again(client):
    """Pickup by pincode: Chanpatia R S SO (845449), which India Post puts at Bettiah HO's
    very spot; drop: a pin 20 m from there. It is the pickup that has no position of its
    own: its pin is asked for."""
    h = sign_in(client)
    r = client.post(f"{API}/quotes", json={
        "pickup": {"pincode": "845449", "post_office": "Chanpatia R S"},
        "drop": {"lat": 26.80246, "lng": 84.51522}, "parcel": PARCEL}, headers=h)
    assert r.status_code == 422, r.get_json()
    err = r.get_json()["error"]
    assert (err["code"], err["field"]) == ("position_needed", "pickup.lat"), err
    assert "send the pickup's position" in err["message"], err
    # Booking it is answered alike, and books nothing.
    made = book(client, h, key="k-pin-1",
                pickup={"pincode": "845449", "post_office": "Chanpatia R S"},
                drop={"lat": 26.80246, "lng": 84.51522})
    assert made.status_code == 422, made.get_json()
    assert made.get_json()["error"]["field"] == "pickup.lat", made.get_json()


def test_a_pinned_pickup_asks_for_the_drops_pin(client):
    h = sign_in(client)
    r = client.post(f"{API}/quotes", json={
        "pickup": {"lat": 26.80246, "lng": 84.51522},
        "drop": {"pincode": "845449", "post_office": "Chanpatia R S"}, "parcel": PARCEL},
        headers=h)
    err = r.get_json()["error"]
    assert (err["code"], err["field"]) == ("position_needed", "drop.lat"), err
    assert "the drop's post office, Chanpatia R S" in err["message"], err


# --- 3. economy on a short trip ---------------------------------------------------------------

HO = {"lat": 26.80228, "lng": 84.51522}
RS = {"lat": 26.80392, "lng": 84.52272}  # Bettiah RS SO, 770 m away


def test_economy_refused_on_a_short_trip_says_why(client):
    """On a 1 km trip economy costs the minimum fare, as standard does, so it is not
    offered: a booking asking for it was told it "cannot deliver 1.0 km within 24 hours"."""
    h = sign_in(client)
    q = client.post(f"{API}/quotes", json={"pickup": HO, "drop": RS, "parcel": PARCEL},
                    headers=h).get_json()
    assert [f["tier"] for f in q["fares"]] == ["express", "standard"], q
    r = book(client, h, pickup=HO, drop=RS, tier="economy")
    assert r.status_code == 422, r.get_json()
    err = r.get_json()["error"]
    assert (err["code"], err["field"]) == ("tier_not_offered", "tier"), err
    assert "cannot deliver" not in err["message"], err
    assert err["message"] == ("on this trip economy costs no less than standard, which is "
                              "faster: choose standard"), err
    with transaction() as s:
        assert s.query(Booking).count() == 0

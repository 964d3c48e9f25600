"""The service area: is a pickup or drop near enough to an active Point, and which Point is
nearest. Checked against a brute-force haversine scan over real PostgreSQL, with many
Points, and by how much PostgreSQL reads for it (a turn's cost must not grow with the
number of Points)."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import event, insert, text

from core.adapters.db import engine, transaction
from core.adapters.models import Point
from core.adapters.points import CANDIDATES
from core.domain.geo import haversine_m
from core.services.booking import service_areas, service_radius_m
from core.services.conversation import SessionPorts

pytestmark = pytest.mark.db


def _points(rng: random.Random, n: int) -> list[dict]:
    """Points over Bihar and its neighbours, about a fifth of them closed."""
    return [{"name": f"P{i}", "lat": rng.uniform(24.0, 28.0), "lng": rng.uniform(82.0, 88.0),
             "pincode": "845438", "active": rng.random() > 0.2} for i in range(n)]


def _brute(points: list[dict], lat: float, lng: float) -> tuple[str | None, int]:
    best: tuple[str | None, int] = (None, -1)
    for p in points:
        if p["active"]:
            d = haversine_m(lat, lng, p["lat"], p["lng"])
            if best[0] is None or d < best[1]:
                best = (p["name"], d)
    return best


def _ports(session) -> SessionPorts:
    return SessionPorts(session, None, None)  # the area checks use only the session


def test_nearest_point_matches_a_full_scan_with_many_points(clean_db):
    rng = random.Random(7)
    points = _points(rng, 2_000)
    with transaction() as s:
        s.execute(insert(Point), points)
    spots = [(rng.uniform(23.5, 28.5), rng.uniform(81.5, 88.5)) for _ in range(300)]
    with transaction() as s:
        got = [(a.point, a.distance_m) for a in service_areas(s, spots)]
    assert got == [_brute(points, lat, lng) for lat, lng in spots]


def test_areas_of_many_places_take_one_statement_that_reads_a_few_points(clean_db):
    rng = random.Random(11)
    points = _points(rng, 3_000)
    with transaction() as s:
        s.execute(insert(Point), points)
    places = [{"lat": rng.uniform(24.5, 27.5), "lng": rng.uniform(82.5, 87.5),
               "name": f"village {i}"} for i in range(25)]
    places.append({"lat": None, "lng": None, "name": "no position"})
    statements, rows = [], []

    def before(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    def after(conn, cursor, statement, params, context, executemany) -> None:
        rows.append(cursor.rowcount)

    event.listen(engine(), "before_cursor_execute", before)
    event.listen(engine(), "after_cursor_execute", after)
    try:
        with transaction() as s:
            results = _ports(s)._check_areas(places)
    finally:
        event.remove(engine(), "before_cursor_execute", before)
        event.remove(engine(), "after_cursor_execute", after)
    assert len(statements) == 1 and rows[0] <= CANDIDATES * 25
    # ... and PostgreSQL reads them from the index, not by sorting every Point.
    from core.adapters.points import _NEAREST

    with transaction() as s:
        plan = "\n".join(s.execute(text("EXPLAIN " + _NEAREST.text), {
            "lats": [26.0], "lngs": [85.0], "k": CANDIDATES}).scalars())
    assert "Index Scan using ix_points_active_position" in plan, plan
    radius = service_radius_m()
    for place, result in zip(places[:-1], results[:-1], strict=True):
        name, dist = _brute(points, place["lat"], place["lng"])
        if dist <= radius:
            assert result.kind == "ok", (place, name, dist)
        else:
            assert (result.kind, result.point, result.km) == ("outside", name,
                                                              f"{dist / 1000:.1f}")
    assert results[-1].kind == "error" and results[-1].code == "pincode_not_located"


def test_closed_points_do_not_serve_and_no_point_at_all_is_outside(clean_db):
    with transaction() as s:
        s.execute(insert(Point), [
            {"name": "Closed", "lat": 26.80, "lng": 84.50, "pincode": "845438",
             "active": False},
            {"name": "Far", "lat": 25.60, "lng": 85.10, "pincode": "800001", "active": True}])
    here = {"lat": 26.80, "lng": 84.51, "name": "Bettiah"}
    with transaction() as s:
        result = _ports(s).check_area(here)
    assert (result.kind, result.point) == ("outside", "Far")
    with transaction() as s:
        s.query(Point).filter(Point.name == "Far").update({"active": False})
    with transaction() as s:
        result = _ports(s).check_area(here)
    assert (result.kind, result.point, result.km) == ("outside", None, None)

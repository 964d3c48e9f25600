"""Nearest active Points (village hubs), whatever their number.

A nearest-neighbour scan of the GiST index on the active Points' positions (``point(lng,
lat)``, migration 0010) reads a few rows per place, in one round trip for all the places
asked about. The index orders by distance in degrees, in which a degree of longitude
counts as much as one of latitude; callers rank the candidates again by what they mean by
near (haversine metres, road metres). The true nearest could be missed only if
``CANDIDATES`` Points lay closer in degrees yet farther in metres, all within 1/cos(latitude)
of it (1.2x in India); one of them is answered then.
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import text
from sqlalchemy.orm import Session

CANDIDATES = 16

_NEAREST = text("""
    SELECT q.i, p.id, p.name, p.lat, p.lng
    FROM unnest(CAST(:lats AS float8[]), CAST(:lngs AS float8[])) WITH ORDINALITY
         AS q(lat, lng, i)
    CROSS JOIN LATERAL (
        SELECT id, name, lat, lng FROM points WHERE active
        ORDER BY point(lng, lat) <-> point(q.lng, q.lat) LIMIT :k) AS p
""")


class PointRow(NamedTuple):
    id: int
    name: str
    lat: float
    lng: float


def nearest(session: Session, spots: list[tuple[float, float]], k: int = CANDIDATES
            ) -> list[list[PointRow]]:
    """For each (lat, lng), up to ``k`` active Points near it in degrees, in no order
    (the caller ranks them); an empty list for each when no Point is active."""
    found: list[list[PointRow]] = [[] for _ in spots]
    if not spots:
        return found
    rows = session.execute(_NEAREST, {"lats": [float(lat) for lat, _ in spots],
                                      "lngs": [float(lng) for _, lng in spots], "k": k})
    for i, point_id, name, lat, lng in rows:
        found[i - 1].append(PointRow(point_id, name, lat, lng))
    return found


__all__ = ["CANDIDATES", "PointRow", "nearest"]

"""Addressing helpers for the apps: a pincode's post offices, and a position's nearest."""

from __future__ import annotations

from pydantic import BaseModel, Field

from core.adapters.pincode import PostOffice, nearest, normalize_pincode, post_offices
from core.api import bp
from core.api.customer import _PART_NAMES
from core.api.spec import Strict, endpoint
from core.domain.errors import DomainError


class PostOfficeOut(BaseModel):
    pincode: str
    name: str
    office_name: str
    office_type: str
    district: str
    state: str
    lat: float | None
    lng: float | None
    is_village: bool


class PincodeOut(BaseModel):
    pincode: str
    post_offices: list[PostOfficeOut]


class ReverseQuery(Strict):
    lat: float = Field(ge=-90, le=90)
    lng: float = Field(ge=-180, le=180)


def _out(o: PostOffice) -> PostOfficeOut:
    return PostOfficeOut(pincode=o.pincode, name=o.name, office_name=o.office_name,
                         office_type=o.office_type, district=o.district, state=o.state,
                         lat=o.lat, lng=o.lng, is_village=o.is_village)


@endpoint(bp, "GET", "/pincodes/<pin>", summary="Post offices (villages first) of a pincode",
          roles=None, response=PincodeOut, tags=("addressing",), errors=(404, 422))
def pincode(pin: str) -> PincodeOut:
    clean = normalize_pincode(pin)
    return PincodeOut(pincode=clean, post_offices=[_out(o) for o in post_offices(clean)])


@endpoint(bp, "GET", "/geo/reverse", summary="Nearest post office to a position", roles=None,
          query=ReverseQuery, response=PostOfficeOut, tags=("addressing",), errors=(404,))
def reverse(query: ReverseQuery) -> PostOfficeOut:
    try:
        return _out(nearest(query.lat, query.lng))
    except DomainError as exc:
        # nearest names the chat's "location"; this query has lat and lng (as POST /quotes
        # names a position's lat).
        exc.field = _PART_NAMES.get(exc.field or "", exc.field)
        raise

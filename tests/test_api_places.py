"""Where the REST API lets a trip go, and to whom: the same rules as WhatsApp and the IVR
(the service area, a pincode's post office, pickup and drop apart, an Indian mobile for the
recipient), each refusal naming its field."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.adapters.db import transaction
from core.adapters.models import Booking, Point
from core.domain.booking import Actor
from core.domain.errors import ValidationError
from core.domain.geo import haversine_m
from core.domain.pricing import SpeedTier
from core.services.booking import create_booking
from tests.test_api import API, BETTIAH, LAXMIPUR, PARCEL, book, sign_in
from tests.test_booking_service import BAG, _customer
from tests.test_booking_service import BETTIAH as SERVICE_BETTIAH
from tests.test_booking_service import LAXMIPUR as SERVICE_LAXMIPUR

pytestmark = pytest.mark.db

BETTIAH_HO = (26.80228, 84.51522)
FAR_SOUTH = {"lat": 26.50, "lng": 84.515}  # Bihar, about 33 km south of Bettiah


@pytest.fixture
def bettiah_point(clean_db) -> None:
    """The one active Point: Bettiah (a closed one nearer the far place must not count)."""
    with transaction() as s:
        s.add(Point(name="Bettiah", lat=BETTIAH_HO[0], lng=BETTIAH_HO[1], pincode="845438",
                    active=True))
        s.add(Point(name="Closed", lat=26.51, lng=84.515, pincode="841405", active=False))


def quote(client, headers, pickup, drop):
    return client.post(f"{API}/quotes", json={"pickup": pickup, "drop": drop, "parcel": PARCEL},
                       headers=headers)


def error(r) -> dict:
    return r.get_json()["error"]


def bookings() -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(Booking))


# --- the service area ------------------------------------------------------------------


def test_a_trip_inside_the_area_is_quoted_and_booked(client, bettiah_point):
    headers = sign_in(client)
    assert quote(client, headers, LAXMIPUR, BETTIAH).status_code == 200
    assert book(client, headers).status_code == 201


@pytest.mark.parametrize("far", ["pickup", "drop"])
def test_a_place_beyond_the_area_is_refused_naming_it_and_the_nearest_point(
        client, bettiah_point, far):
    headers = sign_in(client)
    places = {"pickup": LAXMIPUR, "drop": BETTIAH, far: FAR_SOUTH}
    km = f"{haversine_m(*BETTIAH_HO, FAR_SOUTH['lat'], FAR_SOUTH['lng']) / 1000:.1f}"
    for r in (quote(client, headers, places["pickup"], places["drop"]),
              book(client, headers, key=f"far-{far}", **places)):
        assert r.status_code == 422, r.get_json()
        err = error(r)
        assert (err["code"], err["field"]) == ("outside_service_area", far)
        assert "Bettiah" in err["message"] and f"{km} km" in err["message"], err
    assert bookings() == 0
    # The key was not used up by the refusal: the same key books a trip inside the area.
    assert book(client, headers, key=f"far-{far}").status_code == 201


def test_with_no_active_point_nothing_is_served(client, clean_db):
    headers = sign_in(client)
    r = quote(client, headers, LAXMIPUR, BETTIAH)
    assert r.status_code == 422 and error(r)["code"] == "outside_service_area"
    assert error(r)["field"] == "pickup" and "no Point" in error(r)["message"]
    assert book(client, headers).status_code == 422 and bookings() == 0


# --- a pincode's post office -----------------------------------------------------------

PATNA = (25.61, 85.14)  # a Point for the Patna pincodes of one post office each


def test_a_pincode_of_several_offices_without_one_named_is_asked_about(client, bettiah_point):
    """845438 has five offices up to 16 km apart: the app is told which ones to ask about."""
    headers = sign_in(client)
    bettiah_pin = {"pincode": "845438"}
    for r in (quote(client, headers, bettiah_pin, LAXMIPUR),
              book(client, headers, pickup=bettiah_pin)):
        assert r.status_code == 422, r.get_json()
        err = error(r)
        assert (err["code"], err["field"]) == ("ambiguous_pincode", "pickup.post_office")
        assert err["offices"] == ["Belbagh", "Bettiah", "Bettiah RS", "Lal Bazar Bettiah",
                                  "Meena Bazar Bettiah"]
        assert "Bettiah RS" in err["message"]
    assert bookings() == 0
    named = book(client, headers, pickup={**bettiah_pin, "post_office": "Bettiah RS"})
    assert named.status_code == 201, named.get_json()
    assert named.get_json()["pickup"]["post_office"] == "Bettiah RS SO"


def test_a_pincode_of_one_office_needs_no_name(client, clean_db):
    with transaction() as s:
        s.add(Point(name="Patna", lat=PATNA[0], lng=PATNA[1], pincode="800001", active=True))
    headers = sign_in(client)
    r = book(client, headers, pickup={"pincode": "800003"}, drop={"pincode": "800005"})
    assert r.status_code == 201, r.get_json()
    b = r.get_json()
    assert (b["pickup"]["post_office"], b["drop"]["post_office"]) == ("Kadamkuan SO",
                                                                      "Patna University SO")


# --- pickup and drop apart -------------------------------------------------------------

BETTIAH_OFFICE = {"pincode": "845438", "post_office": "Bettiah"}
BETTIAH_PIN = {"lat": BETTIAH_HO[0], "lng": BETTIAH_HO[1]}


@pytest.mark.parametrize("drop", [
    BETTIAH_OFFICE,  # the same post office
    BETTIAH_PIN,  # the same position (Bettiah HO's own)
    {"lat": 26.8027, "lng": 84.5157},  # 60 m away
], ids=["office", "position", "60m"])
def test_a_drop_at_the_pickup_place_is_refused(client, bettiah_point, drop):
    headers = sign_in(client)
    for r in (quote(client, headers, BETTIAH_OFFICE, drop),
              book(client, headers, pickup=BETTIAH_OFFICE, drop=drop)):
        assert r.status_code == 422, r.get_json()
        assert (error(r)["code"], error(r)["field"]) == ("same_place", "drop")
    assert bookings() == 0


def test_a_drop_a_little_way_off_is_booked(client, bettiah_point):
    headers = sign_in(client)
    r = book(client, headers, pickup=BETTIAH_OFFICE, drop={"lat": 26.8033, "lng": 84.5152})
    assert r.status_code == 201, r.get_json()  # 120 m: a short trip, not the same place


# --- the recipient ---------------------------------------------------------------------


@pytest.mark.parametrize("phone", ["+14155550123", "+447700900123", "+8613800138000"])
def test_a_foreign_recipient_phone_is_refused(client, bettiah_point, phone):
    """The drop OTP goes to the recipient by SMS: only to an Indian mobile, as in the chat."""
    headers = sign_in(client)
    r = book(client, headers, recipient={"name": "Sita", "phone": phone})
    assert r.status_code == 422, r.get_json()
    assert (error(r)["code"], error(r)["field"]) == ("bad_phone", "recipient.phone")
    assert bookings() == 0


def test_a_malformed_recipient_phone_names_the_recipient(client, bettiah_point):
    headers = sign_in(client)
    r = book(client, headers, recipient={"name": "Sita", "phone": "12345678"})
    assert (error(r)["code"], error(r)["field"]) == ("bad_phone", "recipient.phone")


def test_every_channel_books_only_an_indian_mobile_recipient(clean_db):
    cid = _customer()
    for channel in ("whatsapp", "voice", "sms"):
        with pytest.raises(ValidationError) as info, transaction() as s:
            create_booking(s, customer_id=cid, channel=channel, pickup=SERVICE_LAXMIPUR,
                           drop=SERVICE_BETTIAH, parcel=BAG, tier=SpeedTier.STANDARD,
                           recipient_name="Sita", recipient_phone="+447700900123",
                           actor=Actor.system())
        assert (info.value.code, info.value.field) == ("bad_phone", "recipient.phone")
    assert bookings() == 0


# --- which place an error is about -----------------------------------------------------


@pytest.mark.parametrize(("drop", "status", "code", "field"), [
    # 110073 (New Delhi) is in the directory, but no office of it has a known position.
    ({"pincode": "110073", "post_office": "Issapur"}, 404, "pincode_not_located",
     "drop.pincode"),
    ({"lat": 15.0, "lng": 70.0}, 404, "no_post_office_near", "drop.lat"),  # Arabian Sea
    ({"pincode": "110073"}, 422, "ambiguous_pincode", "drop.post_office"),
    ({"pincode": "845438", "post_office": "Atlantis"}, 404, "unknown_post_office",
     "drop.post_office"),
    ({"lat": 51.5, "lng": -0.12}, 422, "outside_india", "drop.lat"),
])
def test_a_place_error_names_the_place_it_is_about(client, bettiah_point, drop, status, code,
                                                   field):
    headers = sign_in(client)
    r = quote(client, headers, LAXMIPUR, drop)
    assert r.status_code == status, r.get_json()
    assert (error(r)["code"], error(r)["field"]) == (code, field)

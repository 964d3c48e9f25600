"""The customer API reads its inputs as the chat does, and no looser (s35): a phone typed
in Indian digits or pasted with direction marks is a phone; money and stars are JSON
integers only; a retry that writes the reference otherwise is the same request; a cancel's
reason of invisible characters is no reason."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.adapters.db import transaction
from core.adapters.models import Booking, TransitionLog
from tests.test_api import (  # noqa: F401 (_bettiah_point: the service area, autouse)
    API,
    BETTIAH,
    LAXMIPUR,
    PARCEL,
    PHONE,
    _bettiah_point,
    book,
    last_otp,
    sign_in,
)
from tests.test_whatsapp_rating import (
    CUSTOMER,
    chat,  # noqa: F401  (fixture)
    delivered_booking,
    stars_of,
)

pytestmark = pytest.mark.db

DEVANAGARI = str.maketrans("0123456789", "०१२३४५६७८९")
BENGALI = str.maketrans("0123456789", "০১২৩৪৫৬৭৮৯")
LTR_EMBEDDING, POP = "\u202a", "\u202c"  # how Android's contacts wrap a copied number


def error(r) -> dict:
    return r.get_json()["error"]


def bookings() -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(Booking))


# --- 1. phones as typed ----------------------------------------------------------------


@pytest.mark.parametrize("typed", [
    "9876543210".translate(DEVANAGARI),
    "+91 98765 43210".translate(BENGALI),
    f"{LTR_EMBEDDING}+91 98765 43210{POP}",
    "\u200e098765\u221243210",  # a left-to-right mark, a minus sign for the dash
])
def test_a_recipient_phone_typed_in_indian_digits_or_pasted_is_read(client, typed):
    headers = sign_in(client)
    r = book(client, headers, recipient={"name": "Sita", "phone": typed})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["recipient_phone_masked"] == "+91******3210"
    with transaction() as s:
        assert s.scalar(select(Booking.recipient_phone)) == "+919876543210"


@pytest.mark.parametrize("typed", ["12345678".translate(DEVANAGARI), "phone no 98"])
def test_what_is_no_phone_stays_bad_phone(client, typed):
    headers = sign_in(client)
    r = book(client, headers, recipient={"name": "Sita", "phone": typed})
    assert r.status_code == 422, r.get_json()
    assert (error(r)["code"], error(r)["field"]) == ("bad_phone", "recipient.phone")
    assert bookings() == 0


def test_signing_in_with_a_phone_in_indian_digits_or_pasted(client):
    sent = client.post(f"{API}/auth/otp", json={"phone": PHONE.translate(DEVANAGARI)})
    assert sent.status_code == 202, sent.get_json()
    assert sent.get_json()["phone"] == PHONE
    pasted = f"{LTR_EMBEDDING}+91 98123 00001{POP}"
    r = client.post(f"{API}/auth/verify", json={"phone": pasted, "otp": last_otp(PHONE)})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["role"] == "customer"
    bengali = client.post(f"{API}/auth/otp", json={"phone": "98123 00001".translate(BENGALI)})
    assert bengali.status_code == 202 and bengali.get_json()["phone"] == PHONE
    bad = client.post(f"{API}/auth/otp", json={"phone": "12345678".translate(DEVANAGARI)})
    assert bad.status_code == 422 and error(bad)["code"] == "bad_phone"


# --- 2. money and stars are JSON integers -----------------------------------------------


@pytest.mark.parametrize("sent", ["9200", 9200.0, "9200.00"])
def test_a_quoted_total_in_text_or_a_decimal_is_refused(client, sent):
    headers = sign_in(client)
    r = book(client, headers, quoted_total_paise=sent)
    assert r.status_code == 422, r.get_json()
    assert (error(r)["code"], error(r)["field"]) == ("validation_error", "quoted_total_paise")
    assert "JSON integer" in error(r)["message"]
    assert bookings() == 0


@pytest.mark.parametrize("sent", ["500", 500.0])
def test_a_declared_value_in_text_or_a_decimal_is_refused(client, sent):
    headers = sign_in(client)
    parcel = {**PARCEL, "declared_value_paise": sent}
    q = client.post(f"{API}/quotes", json={"pickup": LAXMIPUR, "drop": BETTIAH,
                                           "parcel": parcel}, headers=headers)
    assert q.status_code == 422, q.get_json()
    assert error(q)["field"] == "parcel.declared_value_paise"
    r = book(client, headers, parcel=parcel)
    assert r.status_code == 422, r.get_json()
    assert (error(r)["code"], error(r)["field"]) == ("validation_error",
                                                     "parcel.declared_value_paise")
    assert bookings() == 0


def test_integers_are_still_taken(client):
    headers = sign_in(client)
    parcel = {**PARCEL, "declared_value_paise": 500}
    total = client.post(f"{API}/quotes", json={"pickup": LAXMIPUR, "drop": BETTIAH,
                                               "parcel": parcel}, headers=headers)
    assert total.status_code == 200, total.get_json()
    fare = next(f for f in total.get_json()["fares"] if f["tier"] == "standard")
    r = book(client, headers, parcel=parcel, quoted_total_paise=fare["total_paise"])
    assert r.status_code == 201, r.get_json()


def test_the_document_still_shows_the_bounds(client):
    doc = client.get(f"{API}/openapi.json").get_json()["components"]["schemas"]
    stars = doc["RatingIn"]["properties"]["stars"]
    assert (stars["type"], stars["minimum"], stars["maximum"]) == ("integer", 1, 5)
    quoted = doc["BookingRequest"]["properties"]["quoted_total_paise"]["anyOf"][0]
    assert quoted == {"type": "integer", "minimum": 0}


@pytest.mark.parametrize("sent", ["5", 5.0])
def test_stars_in_text_or_a_decimal_are_refused(chat, sent):  # noqa: F811
    booking, ref, _ = delivered_booking(channel="app")
    headers = sign_in(chat, CUSTOMER)
    r = chat.post(f"{API}/bookings/{ref}/rating", json={"stars": sent}, headers=headers)
    assert r.status_code == 422, r.get_json()
    assert (error(r)["code"], error(r)["field"]) == ("validation_error", "stars")
    assert stars_of(booking) == []


# --- 3. a retry may write the reference otherwise ---------------------------------------


def spaced(ref: str) -> str:
    return f"{ref[:4]} {ref[4:]}"


def test_a_cancel_retried_with_the_reference_spaced_answers_the_first(client):
    headers = sign_in(client)
    ref = book(client, headers).get_json()["reference"]
    h = dict(headers, **{"Idempotency-Key": "cancel-s35"})
    first = client.post(f"{API}/bookings/{ref}/cancel", headers=h)
    assert first.status_code == 200, first.get_json()
    again = client.post(f"{API}/bookings/{spaced(ref)}/cancel", headers=h)
    assert again.status_code == 200, again.get_json()
    assert again.get_json() == first.get_json()
    # Another booking's cancel with the key is still another request.
    other = book(client, headers).get_json()["reference"]
    r = client.post(f"{API}/bookings/{other}/cancel", headers=h)
    assert r.status_code == 422 and error(r)["code"] == "idempotency_key_reused"


def test_a_rating_retried_with_the_reference_spaced_answers_the_first(chat):  # noqa: F811
    booking, ref, _ = delivered_booking(channel="app")
    headers = dict(sign_in(chat, CUSTOMER), **{"Idempotency-Key": "rate-s35"})
    first = chat.post(f"{API}/bookings/{ref}/rating", json={"stars": 4}, headers=headers)
    assert first.status_code == 201, first.get_json()
    again = chat.post(f"{API}/bookings/{spaced(ref)}/rating", json={"stars": 4},
                      headers=headers)
    assert again.status_code == 201, again.get_json()
    assert again.get_json() == first.get_json() == {"reference": ref, "stars": 4}
    assert stars_of(booking) == [4]


# --- 4. a reason one can see -------------------------------------------------------------


@pytest.mark.parametrize("reason", ["\u200b\u200b\u200b", "\u200c\u200d\u200c",
                                    "\u202e \u2066 \u200b", "ok\u200b\u200b"])
def test_a_cancel_reason_of_invisible_characters_is_no_reason(client, reason):
    headers = sign_in(client)
    ref = book(client, headers).get_json()["reference"]
    r = client.post(f"{API}/bookings/{ref}/cancel", query_string={"reason": reason},
                    headers=headers)
    assert r.status_code == 422, r.get_json()
    assert (error(r)["code"], error(r)["field"]) == ("validation_error", "reason")
    with transaction() as s:
        assert s.scalar(select(Booking.status)) == "awaiting_payment"


def test_a_cancel_reason_is_kept_as_read(client):
    headers = sign_in(client)
    ref = book(client, headers).get_json()["reference"]
    r = client.post(f"{API}/bookings/{ref}/cancel",
                    query_string={"reason": "\u200bno  longer\u202e needed"}, headers=headers)
    assert r.status_code == 200, r.get_json()
    with transaction() as s:
        said = s.scalars(select(TransitionLog.reason)).all()
    assert "cancelled in the app: no longer needed" in said

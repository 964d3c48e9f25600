"""REST API v1 through Flask's test client against real PostgreSQL and Redis."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, update

from core import clock
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, OutboxMessage, Person, Point
from core.domain.booking import Actor, LegStatus
from core.domain.reference import is_valid_reference
from core.services.booking import move_leg

API = "/api/v1"
PHONE = "+919812300001"

LAXMIPUR = {"pincode": "845450", "post_office": "Laxmipur"}
BETTIAH = {"lat": 26.80228, "lng": 84.51522, "landmark": "near the HO"}
PARCEL = {"category": "documents", "size": "bag", "weight": "w5"}


@pytest.fixture(autouse=True)
def _bettiah_point(clean_db) -> None:
    """An active Point at Bettiah: the API quotes and books only inside the service area."""
    with transaction() as s:
        s.add(Point(name="Bettiah", lat=26.80228, lng=84.51522, pincode="845438", active=True))


def last_otp(phone: str) -> str:
    with transaction() as s:
        body = s.scalar(select(OutboxMessage.body).where(OutboxMessage.to_addr == phone)
                        .order_by(OutboxMessage.id.desc()))
    assert body is not None
    found = re.search(r"\d{6}", body)
    assert found, "no 6-digit code in the SMS"
    return found.group(0)


def sign_in(client, phone: str = PHONE, role: str | None = None) -> dict[str, str]:
    if role is not None:
        with transaction() as s:
            if s.scalar(select(Person).where(Person.phone == phone)) is None:
                s.add(Person(phone=phone, role=role))
    assert client.post(f"{API}/auth/otp", json={"phone": phone}).status_code == 202
    r = client.post(f"{API}/auth/verify", json={"phone": phone, "otp": last_otp(phone)})
    assert r.status_code == 200, r.get_json()
    return {"Authorization": f"Bearer {r.get_json()['token']}"}


def book(client, headers, key: str | None = None, **overrides):
    body = {"pickup": LAXMIPUR, "drop": BETTIAH, "parcel": PARCEL, "tier": "standard",
            "recipient": {"name": "Sita", "phone": "98765 43210"}}
    body.update(overrides)
    h = dict(headers)
    if key:
        h["Idempotency-Key"] = key
    return client.post(f"{API}/bookings", json=body, headers=h)


def carrying_partner(client, legs: int = 1) -> tuple[dict[str, str], list[int]]:
    """A signed-in partner carrying ``legs`` paid bookings' legs (assigned and picked up,
    as dispatch would have done it)."""
    from tests.test_dispatch import LAXMIPUR as AT
    from tests.test_dispatch import make_partner, paid_booking

    partner_id, phone = make_partner("Ramesh", AT)
    leg_ids = []
    for _ in range(legs):
        booking_id = paid_booking()
        with transaction() as s:
            leg = s.scalar(select(Leg).where(Leg.booking_id == booking_id))
            leg.partner_id = partner_id
            for to in (LegStatus.OFFERING, LegStatus.ASSIGNED, LegStatus.PICKED_UP):
                move_leg(s, leg, to, Actor.system(), "as dispatch does")
            leg_ids.append(leg.id)
    return sign_in(client, phone), leg_ids


def test_sign_in_with_an_sms_code(client):
    r = client.post(f"{API}/auth/otp", json={"phone": "098123 00001"})
    assert r.status_code == 202 and r.get_json()["phone"] == PHONE
    code = last_otp(PHONE)
    wrong = "000000" if code != "000000" else "111111"
    bad = client.post(f"{API}/auth/verify", json={"phone": PHONE, "otp": wrong})
    assert bad.status_code == 401 and bad.get_json()["error"]["code"] == "otp_invalid"
    ok = client.post(f"{API}/auth/verify", json={"phone": PHONE, "otp": code})
    assert ok.status_code == 200
    assert ok.get_json()["role"] == "customer"
    # A code works once.
    again = client.post(f"{API}/auth/verify", json={"phone": PHONE, "otp": code})
    assert again.status_code == 401


def test_codes_lock_after_five_wrong_tries(client):
    client.post(f"{API}/auth/otp", json={"phone": PHONE})
    code = last_otp(PHONE)
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        assert client.post(f"{API}/auth/verify",
                           json={"phone": PHONE, "otp": wrong}).status_code == 401
    r = client.post(f"{API}/auth/verify", json={"phone": PHONE, "otp": code})
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "otp_locked"


def test_code_sends_are_rate_limited_per_phone(client):
    for _ in range(3):
        assert client.post(f"{API}/auth/otp", json={"phone": PHONE}).status_code == 202
    r = client.post(f"{API}/auth/otp", json={"phone": PHONE})
    assert r.status_code == 429
    with transaction() as s:
        sent = s.scalars(select(OutboxMessage.id).where(OutboxMessage.to_addr == PHONE)).all()
    assert len(sent) == 3


def test_sign_out_revokes_the_token(client):
    headers = sign_in(client)
    assert client.get(f"{API}/bookings", headers=headers).status_code == 200
    assert client.post(f"{API}/auth/logout", headers=headers).status_code == 204
    r = client.get(f"{API}/bookings", headers=headers)
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "invalid_token"


def test_401_without_token_and_403_for_the_wrong_role(client):
    assert client.get(f"{API}/bookings").status_code == 401
    bad = client.get(f"{API}/bookings", headers={"Authorization": "Bearer nonsense"})
    assert bad.status_code == 401
    partner = sign_in(client, "+919812300002", role="partner")
    r = client.post(f"{API}/quotes", json={"pickup": LAXMIPUR, "drop": BETTIAH,
                                           "parcel": PARCEL}, headers=partner)
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "forbidden"


def test_quote_gives_every_tier_with_lines_that_add_up(client):
    headers = sign_in(client)
    r = client.post(f"{API}/quotes", json={"pickup": LAXMIPUR, "drop": BETTIAH,
                                           "parcel": PARCEL}, headers=headers)
    assert r.status_code == 200, r.get_json()
    fares = {f["tier"]: f for f in r.get_json()["fares"]}
    assert set(fares) == {"express", "standard", "economy"}
    for f in fares.values():
        assert sum(line["amount_paise"] for line in f["lines"]) == f["total_paise"]
        assert f["total_paise"] % 100 == 0
    assert fares["express"]["total_paise"] > fares["standard"]["total_paise"]


@pytest.mark.parametrize(
    ("payload", "status", "code", "field"),
    [
        ({"pickup": {"pincode": "84545"}, "drop": BETTIAH, "parcel": PARCEL}, 422,
         "validation_error", "pickup.pincode"),
        ({"pickup": {"pincode": "999999"}, "drop": BETTIAH, "parcel": PARCEL}, 404,
         "unknown_pincode", "pickup.pincode"),
        ({"pickup": {"pincode": "845450", "post_office": "Atlantis"}, "drop": BETTIAH,
          "parcel": PARCEL}, 404, "unknown_post_office", "pickup.post_office"),
        ({"pickup": LAXMIPUR, "drop": {"lat": 51.5, "lng": -0.12}, "parcel": PARCEL}, 422,
         "outside_india", "drop.lat"),
        ({"pickup": LAXMIPUR, "drop": BETTIAH, "parcel": {**PARCEL, "size": "crate"}}, 422,
         "validation_error", "parcel.size"),
        ({"pickup": LAXMIPUR, "drop": BETTIAH, "parcel": PARCEL, "extra": 1}, 422,
         "validation_error", "extra"),
        ({"pickup": {"lat": 26.8}, "drop": BETTIAH, "parcel": PARCEL}, 422,
         "validation_error", "pickup"),
    ],
)
def test_bad_quotes_get_precise_errors(client, payload, status, code, field):
    headers = sign_in(client)
    r = client.post(f"{API}/quotes", json=payload, headers=headers)
    assert r.status_code == status, r.get_json()
    err = r.get_json()["error"]
    assert (err["code"], err["field"]) == (code, field)


def test_malformed_bodies(client):
    headers = sign_in(client)
    r = client.post(f"{API}/quotes", data="{not json", headers={
        **headers, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_json"
    r = client.post(f"{API}/quotes", data="a=b", headers=headers)
    assert r.status_code == 415
    r = client.post(f"{API}/quotes", json=[1, 2], headers=headers)
    assert r.status_code == 400
    big = client.post(f"{API}/quotes", data="x" * (2 * 1024 * 1024), headers={
        **headers, "Content-Type": "application/json"})
    assert big.status_code == 413 and big.is_json


def test_booking_is_idempotent_by_key(client):
    headers = sign_in(client)
    first = book(client, headers, key="k-1")
    assert first.status_code == 201, first.get_json()
    b = first.get_json()
    assert is_valid_reference(b["reference"])
    assert b["status"] == "awaiting_payment"
    assert b["recipient_phone_masked"] == "+91******3210"
    again = book(client, headers, key="k-1")
    assert again.status_code == 201 and again.get_json() == b
    other = book(client, headers, key="k-1", tier="express")
    assert other.status_code == 422
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    no_key = book(client, headers)
    assert no_key.get_json()["reference"] != b["reference"]
    with transaction() as s:
        assert len(s.scalars(select(Booking.id)).all()) == 2


def test_other_peoples_bookings_are_not_found(client):
    mine = sign_in(client)
    ref = book(client, mine).get_json()["reference"]
    theirs = sign_in(client, "+919812300003")
    for method, path in [("get", f"/bookings/{ref}"), ("get", f"/bookings/{ref}/track"),
                         ("post", f"/bookings/{ref}/cancel?dry_run=1")]:
        r = getattr(client, method)(f"{API}{path}", headers=theirs)
        assert r.status_code == 404, path
    assert client.get(f"{API}/bookings/{ref}", headers=mine).status_code == 200
    ops = sign_in(client, "+919812300004", role="ops")
    assert client.get(f"{API}/bookings/{ref}", headers=ops).status_code == 200


def test_list_is_paginated_newest_first(client):
    headers = sign_in(client)
    refs = [book(client, headers).get_json()["reference"] for _ in range(3)]
    page1 = client.get(f"{API}/bookings?limit=2", headers=headers).get_json()
    assert [b["reference"] for b in page1["items"]] == refs[::-1][:2]
    assert page1["next_offset"] == 2
    page2 = client.get(f"{API}/bookings?limit=2&offset=2", headers=headers).get_json()
    assert [b["reference"] for b in page2["items"]] == [refs[0]]
    assert page2["next_offset"] is None
    assert client.get(f"{API}/bookings?limit=0", headers=headers).status_code == 422


def test_cancel_shows_the_refund_first_then_cancels(client):
    headers = sign_in(client)
    ref = book(client, headers).get_json()["reference"]
    dry = client.post(f"{API}/bookings/{ref}/cancel?dry_run=1", headers=headers).get_json()
    assert dry["cancelled"] is False and dry["allowed"] is True
    assert dry["status"] == "awaiting_payment"
    done = client.post(f"{API}/bookings/{ref}/cancel", headers=headers).get_json()
    assert done["cancelled"] is True and done["status"] == "cancelled"
    again = client.post(f"{API}/bookings/{ref}/cancel", headers=headers)
    assert again.status_code == 409


def test_only_delivered_bookings_can_be_rated(client):
    headers = sign_in(client)
    ref = book(client, headers).get_json()["reference"]
    r = client.post(f"{API}/bookings/{ref}/rating", json={"stars": 5}, headers=headers)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "not_delivered"
    bad = client.post(f"{API}/bookings/{ref}/rating", json={"stars": 6}, headers=headers)
    assert bad.status_code == 422 and bad.get_json()["error"]["field"] == "stars"


def test_addressing_helpers(client):
    r = client.get(f"{API}/pincodes/845450")
    assert r.status_code == 200
    names = [o["name"] for o in r.get_json()["post_offices"]]
    assert "Laxmipur" in names
    assert client.get(f"{API}/pincodes/84545x").status_code == 422
    assert client.get(f"{API}/pincodes/999999").status_code == 404
    r = client.get(f"{API}/geo/reverse?lat=26.8927&lng=84.48813")
    assert r.status_code == 200 and r.get_json()["state"].lower() == "bihar"
    assert client.get(f"{API}/geo/reverse?lat=abc&lng=1").status_code == 422


def test_openapi_describes_every_route_and_nothing_else(app):
    doc = app.test_client().get(f"{API}/openapi.json").get_json()
    documented = {(path, method.upper()) for path, ops in doc["paths"].items()
                  for method in ops}
    routed = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(API) or rule.rule.endswith("/openapi.json"):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routed.add((path, method))
    assert documented == routed


def test_openapi_declares_the_wrong_code_answer_of_verify(client):
    """A wrong or expired sign-in code, the commonest error of /auth/verify, is a 401:
    the document says so, as for the endpoints that need a token."""
    assert client.post(f"{API}/auth/otp", json={"phone": PHONE}).status_code == 202
    r = client.post(f"{API}/auth/verify", json={"phone": PHONE, "otp": "000000"
                                                if last_otp(PHONE) != "000000" else "111111"})
    assert r.status_code == 401
    doc = client.get(f"{API}/openapi.json").get_json()
    assert "401" in doc["paths"][f"{API}/auth/verify"]["post"]["responses"]


def test_ids_beyond_the_database_range_are_not_found(client):
    partner = sign_in(client, "+919812300005", role="partner")
    r = client.post(f"{API}/legs/43815135771/pickup", json={"otp": "1234"}, headers=partner)
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    r = client.post(f"{API}/offers/{2**31}/accept", headers=partner)
    assert r.status_code == 404


def test_earnings_count_each_delivery_on_its_indian_day(client):
    """Today starts at midnight in India (18:30 UTC), and a delivery belongs to the moment
    it was delivered, not to the leg's last change (a photo sent days later)."""
    now = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)  # 25 Nov, 01:30 in India
    clock.freeze(now)
    partner, legs = carrying_partner(client, legs=4)
    delivered_at = [
        datetime(2026, 11, 24, 19, 0, tzinfo=UTC),  # 25 Nov 00:30 IST: today
        datetime(2026, 11, 24, 10, 0, tzinfo=UTC),  # 24 Nov 15:30 IST: yesterday (UTC: today)
        datetime(2026, 11, 20, 9, 0, tzinfo=UTC),  # this week; its photo came just now
        datetime(2026, 11, 2, 9, 0, tzinfo=UTC),  # weeks ago; touched again just now
    ]
    last_change = [delivered_at[0], delivered_at[1], now, now]
    with transaction() as s:
        for leg_id, at, changed in zip(legs, delivered_at, last_change, strict=True):
            clock.freeze(at)
            leg = s.get(Leg, leg_id)
            move_leg(s, leg, LegStatus.DELIVERED, Actor.system(), "dropped")
            s.flush()
            s.execute(update(Leg).where(Leg.id == leg_id).values(updated_at=changed))
        payouts = [s.get(Leg, leg_id).payout_paise for leg_id in legs]
    clock.freeze(now)
    r = client.get(f"{API}/partners/me/earnings", headers=partner)
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"today_paise": payouts[0], "week_paise": sum(payouts[:3]),
                            "total_paise": sum(payouts), "delivered_legs": 4,
                            "fees_paise": 0}

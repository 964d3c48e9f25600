"""The apps' whole journey through the REST API alone: quote, book, pay via the sandbox
link, partner accepts, pickup, drop, rating; then the ops console sees it all."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import requests
from sqlalchemy import select

from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage, Person
from core.services.seed import DEMO_PARTNERS, seed_demo
from tests.conftest import run_jobs
from tests.test_api import API, BETTIAH, LAXMIPUR, PARCEL, sign_in

CUSTOMER = "+919812300011"
RECIPIENT = "+919812300012"


def last_code_to(phone: str) -> str:
    with transaction() as s:
        bodies = s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr.in_([phone, f"whatsapp:{phone}"]))
            .order_by(OutboxMessage.id.desc())).all()
    for body in bodies:
        codes = re.findall(r"(?<!\d)\d{4}(?!\d)", body)
        if codes:
            return codes[-1]
    raise AssertionError(f"no code was sent to {phone}")


def test_quote_book_pay_accept_pickup_drop_rate(client, live):
    seed_demo()
    customer = sign_in(client, CUSTOMER)
    quote = client.post(f"{API}/quotes", json={"pickup": LAXMIPUR, "drop": BETTIAH,
                                               "parcel": PARCEL}, headers=customer)
    standard = next(f for f in quote.get_json()["fares"] if f["tier"] == "standard")

    made = client.post(f"{API}/bookings", headers={**customer, "Idempotency-Key": "j-1"},
                       json={"pickup": LAXMIPUR, "drop": BETTIAH, "parcel": PARCEL,
                             "tier": "standard",
                             "recipient": {"name": "Gita", "phone": RECIPIENT}})
    assert made.status_code == 201
    ref = made.get_json()["reference"]
    assert made.get_json()["total_paise"] == standard["total_paise"]

    run_jobs()  # the payment link is made and sent
    booking = client.get(f"{API}/bookings/{ref}", headers=customer).get_json()
    url = booking["payment_url"]
    assert url and "/sandbox/payment_links/" in url
    assert requests.post(url + "/pay", timeout=10).status_code == 200
    run_jobs()  # webhooks -> capture -> paid -> dispatch -> offer to the nearest partner
    assert client.get(f"{API}/bookings/{ref}", headers=customer).get_json()["status"] == \
        "dispatching"

    ramesh = sign_in(client, DEMO_PARTNERS[0][1])
    offers = client.get(f"{API}/partners/me/offers", headers=ramesh).get_json()
    assert [o["booking_reference"] for o in offers] == [ref]
    accepted = client.post(f"{API}/offers/{offers[0]['id']}/accept", headers=ramesh)
    assert accepted.status_code == 200, accepted.get_json()
    leg_id = accepted.get_json()["leg_id"]
    assert client.post(f"{API}/offers/{offers[0]['id']}/accept",
                       headers=ramesh).status_code == 409

    now = datetime.now(UTC)
    loc = client.put(f"{API}/partners/me/location", headers=ramesh, json={
        "lat": 26.8927, "lng": 84.48813, "accuracy_m": 20, "timestamp": now.isoformat()})
    assert loc.status_code == 200
    track = client.get(f"{API}/bookings/{ref}/track", headers=customer).get_json()
    assert track["status"] == "assigned" and track["partner_first_name"] == "Ramesh"
    assert track["last_position"] == {"lat": 26.8927, "lng": 84.48813}
    assert track["eta_minutes"] >= 1

    wrong = "0000" if last_code_to(CUSTOMER) != "0000" else "1111"
    bad = client.post(f"{API}/legs/{leg_id}/pickup", json={"otp": wrong}, headers=ramesh)
    assert bad.status_code == 422 and bad.get_json()["error"]["code"] == "otp_wrong"
    picked = client.post(f"{API}/legs/{leg_id}/pickup", json={"otp": last_code_to(CUSTOMER)},
                         headers=ramesh)
    assert picked.status_code == 200 and picked.get_json()["leg_status"] == "picked_up"
    photo = client.post(f"{API}/legs/{leg_id}/photo", data=b"\xff\xd8\xff\xe0fakejpeg",
                        headers={**ramesh, "Content-Type": "image/jpeg"})
    assert photo.status_code == 201, photo.get_json()
    dropped = client.post(f"{API}/legs/{leg_id}/drop", json={"otp": last_code_to(RECIPIENT)},
                          headers=ramesh)
    assert dropped.status_code == 200 and dropped.get_json()["leg_status"] == "delivered"
    run_jobs()  # the payout is released

    earnings = client.get(f"{API}/partners/me/earnings", headers=ramesh).get_json()
    assert earnings["delivered_legs"] == 1 and earnings["today_paise"] > 0
    assert client.post(f"{API}/bookings/{ref}/rating", json={"stars": 5},
                       headers=customer).status_code == 201
    assert client.post(f"{API}/bookings/{ref}/rating", json={"stars": 4},
                       headers=customer).status_code == 409
    assert client.get(f"{API}/bookings/{ref}", headers=customer).get_json()["status"] == \
        "delivered"

    ops = sign_in(client, "+919000000099")  # the seeded operator
    listed = client.get(f"{API}/ops/bookings?status=delivered", headers=ops).get_json()
    assert [b["reference"] for b in listed["items"]] == [ref]
    ledger = client.get(f"{API}/ops/bookings/{ref}/ledger", headers=ops)
    assert ledger.status_code == 200
    assert ledger.get_json()["escrow_paise"] == 0
    assert client.get(f"{API}/ops/reconciliation/mismatches", headers=ops).get_json() == {
        "items": [], "next_offset": None, "next_after": None}
    assert client.get(f"{API}/ops/bookings", headers=customer).status_code == 403


def test_location_updates_are_checked(client, live):
    seed_demo()
    ramesh = sign_in(client, DEMO_PARTNERS[0][1])
    now = datetime.now(UTC)

    def put(lat, lng, at):
        return client.put(f"{API}/partners/me/location", headers=ramesh, json={
            "lat": lat, "lng": lng, "accuracy_m": 10, "timestamp": at.isoformat()})

    assert put(26.8927, 84.48813, now - timedelta(seconds=30)).status_code == 200
    stale = put(26.8927, 84.48813, now - timedelta(minutes=10))
    assert stale.status_code == 422 and stale.get_json()["error"]["code"] == "stale_location"
    future = put(26.8927, 84.48813, now + timedelta(minutes=5))
    assert future.get_json()["error"]["code"] == "future_timestamp"
    jump = put(19.61856, 74.66252, now)  # Bihar to Maharashtra in 30 seconds
    assert jump.status_code == 422 and jump.get_json()["error"]["code"] == "impossible_jump"
    assert put(26.8930, 84.4885, now).status_code == 200  # 40 m in 30 s is fine


def test_ops_kyc_change_is_audited(client, live):
    seed_demo()
    ops = sign_in(client, "+919000000099")
    partners = client.get(f"{API}/ops/partners", headers=ops).get_json()["items"]
    target = partners[0]["id"]
    r = client.put(f"{API}/ops/partners/{target}/kyc", headers=ops,
                   json={"status": "suspended", "note": "documents expired"})
    assert r.status_code == 200 and r.get_json()["kyc_status"] == "suspended"
    assert r.get_json()["on_duty"] is False
    with transaction() as s:
        entry, block = s.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        ops_id = s.scalar(select(Person.id).where(Person.phone == "+919000000099"))
        assert (entry.action, entry.target, entry.actor) == (
            "partner.kyc", f"partner:{target}", f"ops:{ops_id}")
        assert entry.details["after"] == "suspended"
        # The take-back of their jobs that follows is its own entry.
        assert (block.action, block.target) == ("partner.block", f"partner:{target}")
        assert block.details["parcels_in_hand"] == []
    bad = client.put(f"{API}/ops/partners/{target}/kyc", headers=ops,
                     json={"status": "maybe", "note": "x"})
    assert bad.status_code == 422


def test_ops_answer_and_close_a_conversation_waiting_for_a_person(client, live):
    from tests.conftest import send_whatsapp

    seed_demo()
    phone = "+919812300021"

    def wa(body: str, sid: str) -> str:
        params = {"MessageSid": sid, "From": f"whatsapp:{phone}", "To": "whatsapp:+1415",
                  "Body": body, "WaId": phone[1:], "NumMedia": "0"}
        return send_whatsapp(client, params)

    wa("hello", "SMh1")
    wa("1", "SMh2")  # yes, English is fine / first language choice
    wa("4", "SMh3")  # talk to a person
    wa("is anyone there?", "SMh4")
    ops = sign_in(client, "+919000000099")
    page = client.get(f"{API}/ops/handoffs", headers=ops).get_json()
    assert page["next_offset"] is None
    waiting = page["items"]
    assert len(waiting) == 1 and waiting[0]["phone_masked"] != phone
    assert any(m["body"] == "is anyone there?" for m in waiting[0]["messages"])
    hid = waiting[0]["id"]
    # To call them back, an operator may see the full number; that look is audited.
    r = client.get(f"{API}/ops/handoffs/{hid}/phone", headers=ops)
    assert r.status_code == 200 and r.get_json() == {"phone": phone}
    with transaction() as s:
        assert s.scalar(select(AuditEntry.action).where(
            AuditEntry.target == f"handoff:{hid}")) == "handoff.phone"
    customer = sign_in(client, phone)
    assert client.get(f"{API}/ops/handoffs/{hid}/phone", headers=customer).status_code == 403
    assert client.post(f"{API}/ops/handoffs/{hid}/reply", json={"body": "Yes, how can I help?"},
                       headers=ops).status_code == 200
    assert client.post(f"{API}/ops/handoffs/{hid}/close", headers=ops).status_code == 200
    assert client.get(f"{API}/ops/handoffs", headers=ops).get_json()["items"] == []
    assert client.get(f"{API}/ops/handoffs/{hid}/phone", headers=ops).status_code == 409
    assert client.post(f"{API}/ops/handoffs/{hid}/close", headers=ops).status_code == 409
    with transaction() as s:
        bodies = s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == f"whatsapp:{phone}")).all()
    assert "Yes, how can I help?" in bodies

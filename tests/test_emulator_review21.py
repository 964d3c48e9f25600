"""Review 21: the Razorpay and Twilio emulators answer as the real providers document
(refund idempotency key and minimum amount, a failed message's callbacks). Each test
drives the emulator through the real client the product uses."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import clock
from core.adapters import razorpay_gateway as gw
from core.adapters import twilio_gateway
from core.adapters.redis_conn import redis_client
from core.config import get_settings
from sandbox import jobs as twilio_jobs
from sandbox import razorpay as emu

pytestmark = pytest.mark.db


def _refund(payment_id: str, body: dict, key: str) -> dict:
    return gw.client().payment.refund(payment_id, body, headers={"X-Refund-Idempotency": key})


# --- refunds ------------------------------------------------------------------------------


def test_refund_same_idempotency_key_with_another_amount_is_refused(live):
    payment = emu.create_payment(10_000)
    first = _refund(payment["id"], {"amount": 3_000, "speed": "normal"}, "rev21-refund-key-1")
    assert first["amount"] == 3_000
    with pytest.raises(gw.BadRequestError) as refused:
        _refund(payment["id"], {"amount": 5_000, "speed": "normal"}, "rev21-refund-key-1")
    assert "Different request with the same idempotency key" in str(refused.value)
    # Nothing more was refunded: only the first refund exists.
    assert gw.client().payment.fetch(payment["id"])["amount_refunded"] == 3_000


def test_refund_retried_with_the_same_key_and_body_answers_the_first_refund(live):
    payment = emu.create_payment(10_000)
    body = {"amount": 3_000, "speed": "normal", "notes": {"refund_id": "7"}}
    first = _refund(payment["id"], body, "rev21-refund-key-2")
    again = _refund(payment["id"], dict(body), "rev21-refund-key-2")
    assert again["id"] == first["id"]
    assert gw.client().payment.fetch(payment["id"])["amount_refunded"] == 3_000


@pytest.mark.parametrize("amount", [1, 50, 99])
def test_refund_below_one_rupee_is_refused(live, amount):
    payment = emu.create_payment(10_000)
    with pytest.raises(gw.BadRequestError) as refused:
        _refund(payment["id"], {"amount": amount, "speed": "normal"}, "rev21-refund-key-3")
    assert "at least INR 1.00" in str(refused.value)
    assert gw.client().payment.fetch(payment["id"])["amount_refunded"] == 0


def test_refund_of_exactly_one_rupee_is_made(live):
    payment = emu.create_payment(10_000)
    assert _refund(payment["id"], {"amount": 100, "speed": "normal"},
                   "rev21-refund-key-4")["amount"] == 100


@pytest.mark.parametrize("key", ["refund #42: booking 7", "refund 42 booking", "rfnd.0000042",
                                 "short-key"])
def test_refund_idempotency_key_with_other_characters_is_refused(live, key):
    payment = emu.create_payment(10_000)
    with pytest.raises(gw.BadRequestError):
        _refund(payment["id"], {"amount": 1_000, "speed": "normal"}, key)
    assert gw.client().payment.fetch(payment["id"])["amount_refunded"] == 0


def test_the_products_refund_key_shape_is_taken(live):
    payment = emu.create_payment(10_000)
    assert _refund(payment["id"], {"amount": 1_000, "speed": "normal"},
                   "ridechain-refund-42")["amount"] == 1_000


# --- Twilio: a failed message was never sent -------------------------------------------------


def _callbacks_for(monkeypatch, to: str, setting: str) -> tuple[str, list[dict[str, str]]]:
    redis_client().hset(twilio_jobs.UNDELIVERED_TO_KEY, to, setting)
    posted: list[dict[str, str]] = []

    def record(self, url, params, headers):  # noqa: ANN001 (the emulator's own signature)
        posted.append(dict(params))
        return 200

    monkeypatch.setattr(twilio_jobs._Callbacks, "post", record)
    sent = twilio_gateway.send_message(
        to=to, from_=get_settings().twilio_sms_from, body="Your code is on its way",
        media_url=None,
        status_callback=f"{get_settings().public_base_url}/webhooks/twilio/status?outbox_id=1")
    twilio_jobs.report_statuses()
    return sent.sid, [p for p in posted if p["MessageSid"] == sent.sid]


def test_failed_message_is_not_reported_sent_first(live, monkeypatch):
    _, posted = _callbacks_for(monkeypatch, "+919812300418", "failed:30008")
    assert [p["MessageStatus"] for p in posted] == ["failed"]
    assert posted[-1].get("ErrorCode") == "30008"


def test_undelivered_message_is_still_sent_first(live, monkeypatch):
    _, posted = _callbacks_for(monkeypatch, "+919812300419", "undelivered:30003")
    assert [p["MessageStatus"] for p in posted] == ["sent", "undelivered"]
    assert "ErrorCode" not in posted[0] and posted[1]["ErrorCode"] == "30003"
# --- a payment link past its expire_by ------------------------------------------------------


def _expiring_link(start, reference: str) -> dict:
    return gw.client().payment_link.create({
        "amount": 25_000, "currency": "INR", "reference_id": reference,
        "expire_by": int((start + timedelta(minutes=20)).timestamp()),
        "notify": {"sms": False, "email": False}})


def test_payment_link_past_its_expire_by_is_expired(live):
    start = clock.now()
    clock.freeze(start)
    try:
        c = gw.client()
        link = _expiring_link(start, "REV21-EXP-1")
        assert c.payment_link.fetch(link["id"])["status"] == "created"  # before: payable
        clock.freeze(start + timedelta(hours=1, minutes=20))
        fetched = c.payment_link.fetch(link["id"])
    finally:
        clock.freeze(None)
    assert fetched["status"] == "expired"
    assert fetched["expired_at"] == link["expire_by"]


def test_an_expired_link_says_so_once_by_webhook_and_cannot_be_cancelled(live, monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(emu, "send_webhooks",
                        lambda events: sent.extend(e["event"] for e in events))
    start = clock.now()
    clock.freeze(start)
    try:
        c = gw.client()
        link = _expiring_link(start, "REV21-EXP-2")
        clock.freeze(start + timedelta(hours=1))
        listed = c.payment_link.all({"reference_id": "REV21-EXP-2"})["payment_links"]
        assert [x["status"] for x in listed] == ["expired"]
        assert c.payment_link.fetch(link["id"])["status"] == "expired"
        with pytest.raises(gw.BadRequestError):
            c.payment_link.cancel(link["id"])
    finally:
        clock.freeze(None)
    assert sent == ["payment_link.expired"]


def test_a_link_past_its_expire_by_cannot_be_paid(live, client):
    start = clock.now()
    clock.freeze(start)
    try:
        link = _expiring_link(start, "REV21-EXP-3")
        clock.freeze(start + timedelta(hours=1))
        answer = client.post(f"/sandbox/payment_links/{link['id']}/pay")
        page = client.get(f"/sandbox/payment_links/{link['id']}").get_data(as_text=True)
    finally:
        clock.freeze(None)
    assert answer.status_code == 400
    assert "This link is expired" in page
    assert emu.get_object(link["id"])["status"] == "expired"



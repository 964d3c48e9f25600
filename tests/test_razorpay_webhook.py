"""POST /webhooks/razorpay: signature over the raw body, raw storage by event id, dedupe,
clean 4xx on bad input, processing deferred to RQ."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from core.adapters.db import transaction
from core.adapters.payment_models import GatewayEvent
from core.adapters.queue import queue
from core.adapters.razorpay_gateway import verify_webhook
from sandbox.razorpay_jobs import sign
from tests.test_payments_support import ledger_checked

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


# Deliberately not what json.dumps would produce: spacing and key order must survive.
BODY = ('{"entity":"event", "event":"payment.failed","contains":["payment"],'
        '"payload":{"payment":{"entity":{"id":"pay_x1","amount":5000,"notes":{}}}}}')


def post(client, body: str = BODY, *, event_id: str = "evt_1", signature: str | None = None):
    return client.post("/webhooks/razorpay", data=body.encode(), headers={
        "Content-Type": "application/json", "X-Razorpay-Event-Id": event_id,
        "X-Razorpay-Signature": sign(body) if signature is None else signature})


def stored() -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(GatewayEvent))


def test_a_verified_event_is_stored_raw_and_processed_later(client):
    r = post(client)
    assert r.status_code == 200 and r.get_json()["status"] == "accepted"
    with transaction() as s:
        ev = s.scalar(select(GatewayEvent))
        assert ev is not None
        assert (ev.event_id, ev.event, ev.payload) == ("evt_1", "payment.failed", BODY)
        assert ev.processed_at is None  # nothing done inline
    assert queue().fetch_job("rzp-event-evt_1") is not None


def test_a_duplicate_event_id_changes_nothing(client):
    assert post(client).status_code == 200
    queue().empty()
    r = post(client)
    assert r.status_code == 200 and r.get_json()["status"] == "duplicate"
    assert stored() == 1
    assert queue().count == 0


@pytest.mark.parametrize("signature", ["", "deadbeef", sign(BODY, "another-secret"),
                                       sign(json.dumps(json.loads(BODY)))])
def test_a_forged_webhook_is_rejected_and_nothing_is_recorded(client, signature):
    r = post(client, signature=signature)
    assert r.status_code == 403
    assert r.get_json()["error"]["code"] == "forbidden"
    assert stored() == 0
    assert queue().count == 0


def test_the_signature_is_checked_over_the_raw_bytes_not_reserialised_json():
    assert verify_webhook(BODY, sign(BODY))
    assert not verify_webhook(json.dumps(json.loads(BODY)), sign(BODY))


@pytest.mark.parametrize("body,event_id,code", [
    ("not json", "evt_2", "bad_json"),
    ('["a list"]', "evt_3", "bad_event"),
    ('{"event": 5}', "evt_4", "bad_event"),
    (BODY, "", "missing_event_id"),
])
def test_bad_input_gets_a_precise_json_error(client, body, event_id, code):
    r = post(client, body, event_id=event_id)
    assert r.status_code == 422
    assert r.get_json()["error"]["code"] == code
    assert stored() == 0


def test_invalid_utf8_and_oversized_bodies_are_refused(client):
    r = client.post("/webhooks/razorpay", data=b"\xff\xfe", headers={
        "X-Razorpay-Event-Id": "evt_5", "X-Razorpay-Signature": "x"})
    assert r.status_code == 400 and r.is_json
    big = "x" * (70 * 1024)
    r = post(client, big, event_id="evt_6")
    assert r.status_code == 413 and r.is_json
    assert stored() == 0

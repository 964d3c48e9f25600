"""Odd input from outside (session 36 review): each gave a 500, or a job that raised on
every retry. Razorpay events are signed, so these are bodies another system on the same
account (or a malformed event) could send; Twilio's are signed form posts."""
from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import InboundEvent, SandboxMessage
from core.adapters.payment_models import GatewayEvent
from core.services import payments
from tests.conftest import post_twilio

BIG = "99999999999"  # an 11-digit number: past our integer ids (bookings, legs, refunds)


def _post_rzp(client, body: str, event_id: str = "evt_s36a"):
    from sandbox.razorpay_jobs import sign

    return client.post("/webhooks/razorpay", data=body.encode(), headers={
        "Content-Type": "application/json", "X-Razorpay-Event-Id": event_id,
        "X-Razorpay-Signature": sign(body)})


def _process(body: str, event: str) -> str:
    """Store an event as the webhook does and run its job once: it must settle (an
    exception here is RQ's retry, then the sweep's re-enqueue, for ever)."""
    with transaction() as s:
        rid = s.scalar(insert(GatewayEvent).values(event_id="evt_s36p", event=event,
                                                   payload=body).returning(GatewayEvent.id))
    payments.process_event(rid)
    with transaction() as s:
        row = s.get(GatewayEvent, rid)
        assert row.processed_at is not None
        return row.outcome


# --- 1. ids past our integer columns in an event's notes ------------------------------------

@pytest.mark.parametrize("raw,expected", [
    ("2147483647", 2**31 - 1), (2147483647, 2**31 - 1), ("42", 42),
    ("2147483648", None), (2**31, None), (BIG, None), (int(BIG), None),
    ("000000000000042", None),  # longer than any id of ours: not how we write one
    ("0", None), ("²", None),
])
def test_note_int_takes_only_ids_that_fit_our_columns(raw, expected):
    assert gw.note_int({"notes": {"booking_id": raw}}, "booking_id") == expected


@pytest.mark.parametrize("event,kind,notes", [
    ("payment.captured", "payment", {"booking_id": BIG, "reference": "ORD-1"}),
    ("payment.failed", "payment", {"booking_id": BIG, "reference": "ORD-1"}),
    ("transfer.processed", "transfer", {"leg_id": BIG, "booking_id": BIG}),
    ("refund.processed", "refund", {"refund_id": BIG, "booking_id": BIG}),
    ("refund.failed", "refund", {"refund_id": BIG, "booking_id": BIG}),
])
def test_a_foreign_event_with_a_big_note_id_settles(live, event, kind, notes):
    body = json.dumps({"entity": "event", "event": event, "payload": {kind: {"entity": {
        "id": f"{kind[:3]}_other1", "amount": 5000, "status": "captured", "notes": notes}}}})
    assert _process(body, event)  # was: DataError "integer out of range" on every retry


def test_reconciliation_survives_a_foreign_payment_with_a_big_booking_number(live):
    from core import clock
    from core.services import reconciliation
    from sandbox import razorpay as emu
    from tests.test_payments_support import paid_booking

    start = clock.now()
    clock.freeze(start)
    paid_booking()
    emu.create_payment(5_000, notes={"booking_id": BIG, "reference": "ORD-9"})
    clock.freeze(start + timedelta(minutes=1))
    result = reconciliation.run()  # was: DataError, the whole run lost
    assert "skipped" not in result
    assert result["payments"] == 2
    with transaction() as s:  # the foreign payment is reported as the gateway's alone
        found = reconciliation.list_mismatches(s)
    assert [(m["kind"], m["entity"], m["booking_id"]) for m in found] == [
        ("missing_in_ledger", "payment", None)]


# --- 2. signed Razorpay bodies of an odd shape -----------------------------------------------

def test_razorpay_event_name_with_a_nul_is_refused_not_a_500(client):
    body = json.dumps({"entity": "event", "event": "payment.\u0000captured", "payload": {}})
    r = _post_rzp(client, body)
    assert r.status_code == 422, r.get_data(as_text=True)
    assert r.get_json()["error"]["code"] == "bad_event"
    with transaction() as s:
        assert s.scalar(select(GatewayEvent.id)) is None


def test_razorpay_deeply_nested_body_is_refused_not_a_500(client):
    body = '{"event":"payment.captured","payload":' + "[" * 30000 + "]" * 30000 + "}"
    r = _post_rzp(client, body)  # was: RecursionError, a 500 Razorpay retries
    assert r.status_code == 422, r.get_data(as_text=True)[:300]  # the refusal of bad JSON
    assert r.get_json()["error"]["code"] == "bad_json"


def test_razorpay_plain_event_still_accepted(client):
    body = json.dumps({"entity": "event", "event": "payment.failed", "payload": {}})
    r = _post_rzp(client, body, event_id="evt_s36ok")
    assert r.status_code == 200 and r.get_json() == {"status": "accepted",
                                                     "event": "payment.failed"}


# --- 3. entity ids and reference ids of an odd type ---------------------------------------

@pytest.mark.parametrize("event,kind", [("payment.captured", "payment"),
                                        ("refund.processed", "refund"),
                                        ("transfer.processed", "transfer"),
                                        ("payment_link.expired", "payment_link")])
def test_an_event_with_a_nul_in_its_entity_id_settles(live, event, kind):
    body = json.dumps({"entity": "event", "event": event, "payload": {kind: {"entity": {
        "id": "x_\u0000y", "amount": 5000, "status": "captured", "notes": {}}}}})
    assert _process(body, event)  # was: the NUL in a query on every retry


@pytest.mark.parametrize("ref", [[], {"a": 1}, 7])
def test_an_event_with_a_reference_id_not_a_string_settles(live, ref):
    body = json.dumps({"entity": "event", "event": "payment.failed", "payload": {"payment": {
        "entity": {"id": "pay_s36r1", "amount": 5000, "reference_id": ref,
                   "notes": {"booking_id": "5", "reference": "ORD-1"}}}}})
    assert _process(body, "payment.failed")  # was: TypeError unhashable (a list, a dict)


# --- 4. Twilio message webhooks -----------------------------------------------------------------

def test_sms_sid_with_a_nul_is_refused(client):
    r = post_twilio(client, "/webhooks/sms", {"MessageSid": "SM1\x002", "From": "+919000000001",
                                              "To": "+911234567890", "Body": "1"})
    assert r.status_code == 400, r.get_data(as_text=True)  # was: 500 at inbound_events
    with transaction() as s:
        assert s.scalar(select(InboundEvent.id)) is None


@pytest.mark.parametrize("params", [
    {"MessageSid": "SM1\x002", "From": "whatsapp:+919000000001", "WaId": "919000000001"},
    {"MessageSid": "SMs36w1", "From": "whatsapp:+9190\x0000001", "WaId": "919000000001"},
    {"MessageSid": "SMs36w2", "From": "whatsapp:" + "9" * 90, "WaId": "919000000001"},
])
def test_whatsapp_odd_sid_or_from_is_refused(client, params):
    r = post_twilio(client, "/webhooks/whatsapp",
                    {**params, "To": "whatsapp:+14155238886", "Body": "hi"})
    assert r.status_code == 400, r.get_data(as_text=True)  # was: accepted, then dead-lettered


# --- 5. the Twilio emulator (sandbox) ------------------------------------------------------------

@pytest.mark.parametrize("qs", ["since=%C2%B2", "since=99999999999999999999", "to=a%00b"])
def test_sandbox_outbox_odd_query_is_a_400(client, qs):
    r = client.get(f"/sandbox/outbox?{qs}")
    assert r.status_code == 400, r.get_data(as_text=True)[:200]
    assert r.get_json()["error"]["field"] in ("since", "to")


def test_sandbox_outbox_since_still_pages(client):
    with transaction() as s:
        ids = [s.scalar(insert(SandboxMessage).values(
            sid=f"SMs36o{i}", account_sid="AC1", to_addr="+919000000001", from_addr="+1",
            body=f"m{i}", channel="sms", status="sent").returning(SandboxMessage.id))
            for i in range(2)]
    r = client.get(f"/sandbox/outbox?since={ids[0]}")
    assert [m["body"] for m in r.get_json()] == ["m1"]


def _twilio_get(client, path_and_query: str):
    from core.config import get_settings

    s = get_settings()
    auth = base64.b64encode(f"{s.twilio_account_sid}:{s.twilio_auth_token}".encode()).decode()
    return client.get(f"/sandbox/twilio/2010-04-01/Accounts/{s.twilio_account_sid}/"
                      f"{path_and_query}", headers={"Authorization": "Basic " + auth})


@pytest.mark.parametrize("qs", ["PageToken=PA%C2%B2", "PageToken=PA99999999999999999999",
                                "To=a%00b", "From=a%00b"])
def test_twilio_emulator_list_odd_query_is_twilios_400(client, qs):
    r = _twilio_get(client, f"Messages.json?{qs}")
    assert r.status_code == 400, r.get_data(as_text=True)[:200]
    assert r.get_json()["code"] == 20001 and r.get_json()["status"] == 400


@pytest.mark.parametrize("qs", ["DateSent=9999-12-31", "DateSent%3C=9999-12-31"])
def test_twilio_emulator_lists_the_last_day(client, qs):
    r = _twilio_get(client, f"Messages.json?{qs}")  # was: OverflowError on day + 1
    assert r.status_code == 200, r.get_data(as_text=True)[:200]
    assert r.get_json()["messages"] == []


def test_twilio_emulator_fetch_of_a_sid_with_a_nul_is_a_404(client):
    r = _twilio_get(client, "Messages/SM%00x.json")
    assert r.status_code == 404, r.get_data(as_text=True)[:200]


@pytest.mark.parametrize("form,code", [
    ({"To": "+919000000001", "From": "+15005550006", "Body": "a\x00b"}, 20001),
    ({"To": "whatsapp:ab\x00", "From": "whatsapp:+14155238886", "Body": "hi"}, 20001),
    ({"To": "whatsapp:" + "a" * 90, "From": "whatsapp:+14155238886", "Body": "hi"}, 21211),
    ({"To": "+919000000001", "From": "+1" + "5" * 90, "Body": "hi"}, 21212),
])
def test_twilio_emulator_create_refuses_what_it_cannot_store(client, form, code):
    from core.config import get_settings

    s = get_settings()
    auth = base64.b64encode(f"{s.twilio_account_sid}:{s.twilio_auth_token}".encode()).decode()
    r = client.post(f"/sandbox/twilio/2010-04-01/Accounts/{s.twilio_account_sid}/Messages.json",
                    data=form, headers={"Authorization": "Basic " + auth})
    assert r.status_code == 400, r.get_data(as_text=True)[:200]
    assert r.get_json()["code"] == code

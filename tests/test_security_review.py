"""Security and privacy review (session 19): defects proved by a test each (sign-in limits, the
staff look-up behind foreign numbers, Twilio's body hash on JSON webhooks)."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from core.adapters.db import transaction
from core.adapters.models import OutboxMessage, Person
from core.adapters.redis_conn import redis_client
from core.config import get_settings
from core.services import auth
from tests.test_api import API, PHONE


def _send(client, phone: str, ip: str = "203.0.113.7"):
    return client.post(f"{API}/auth/otp", json={"phone": phone},
                       environ_base={"REMOTE_ADDR": ip})


# --- 1. the staff look-up behind a foreign number is an unlimited oracle -----------------

def test_probing_foreign_numbers_is_rate_limited_per_ip_like_any_code_request(client):
    """A foreign number gets a code only if it is an operator's or a partner's: 422 for
    anyone else, 202 for staff. That answer tells who is staff, so the probes must be
    counted like any request for a code (SENDS_PER_IP an hour). Today the per-IP limit is
    counted only after the staff look-up, so one address may probe without end."""
    with transaction() as s:
        s.add(Person(phone="+447700900999", name="Ops abroad", role="ops"))
    limit = auth.SENDS_PER_IP[0]
    answers = [_send(client, f"+4477009{i:05d}").status_code for i in range(limit + 5)]
    assert 429 in answers, (
        f"{limit + 5} foreign numbers probed from one address, none refused: {answers}")
    # ... and once the address is over its limit, the oracle is closed to it too.
    assert _send(client, "+447700900999").status_code == 429


# --- 2. no daily cap on the codes one phone is sent --------------------------------------

def test_a_phone_is_sent_a_bounded_number_of_codes_in_a_day(client):
    """3 codes per 10 minutes is the only per-phone limit on sends: from a few addresses,
    anyone can have 432 SMS a day sent to a stranger's phone (SMS bombing, at our cost),
    as long as no code is tried. A phone should get a handful of codes a day at most
    (the wrong-code budget of the day is 10: more codes than that help nobody)."""
    per_window = auth.SENDS_PER_PHONE[0]
    sent = 0
    for window in range(8):  # 80 minutes: 8 of the per-phone 10-minute windows
        redis_client().delete(f"ratelimit:otp-send-phone:{PHONE}")  # the window is over
        for i in range(per_window):
            r = _send(client, PHONE, ip=f"198.51.100.{window * per_window + i + 1}")
            if r.status_code == 202:
                sent += 1
    with transaction() as s:
        rows = s.scalar(select(func.count()).select_from(OutboxMessage)
                        .where(OutboxMessage.to_addr == PHONE))
    assert rows == sent
    daily = get_settings().otp_failures_per_day
    assert sent <= daily, (
        f"{sent} sign-in codes sent to one phone within 80 minutes")


# --- 3. a JSON webhook's body is not checked against the bodySHA256 Twilio signed --------

def test_a_json_webhook_whose_body_is_not_the_signed_one_is_refused(client):
    """For a JSON body Twilio signs the URL only, with the body's SHA-256 in its
    bodySHA256 query parameter; the receiver must check the body against that hash
    (twilio's RequestValidator does, given the raw body). Ours passes request.form (empty
    for JSON), so any body rides on a signed URL: a replayed or altered request passes the
    signature check and reaches the view."""
    signed_body = json.dumps({"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered"})
    digest = hashlib.sha256(signed_body.encode()).hexdigest()
    path = f"/webhooks/twilio/status?bodySHA256={digest}"
    s = get_settings()
    signature = RequestValidator(s.twilio_auth_token).compute_signature(
        s.public_base_url + path, {})
    # The genuine body: the signature and the hash agree, so it gets past the check.
    genuine = client.post(path, data=signed_body, content_type="application/json",
                          headers={"X-Twilio-Signature": signature})
    assert genuine.status_code != 403
    tampered = json.dumps({"MessageSid": "SM" + "b" * 32, "MessageStatus": "failed"})
    r = client.post(path, data=tampered, content_type="application/json",
                    headers={"X-Twilio-Signature": signature})
    assert r.status_code == 403, (r.status_code, r.get_data(as_text=True))

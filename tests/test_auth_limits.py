"""Sign-in limits: a phone's wrong codes over a day, the code's check and count as one
step, and per-IP limits that see the client's address behind our proxies."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import redis

from core.adapters.redis_conn import redis_client
from core.config import get_settings
from core.services import auth
from tests.conftest import post_twilio
from tests.test_api import API, PHONE, last_otp

DAY_S = 24 * 3600


def send(client, phone: str = PHONE, headers: dict[str, str] | None = None):
    return client.post(f"{API}/auth/otp", json={"phone": phone}, headers=headers or {})


def verify(client, otp: str, phone: str = PHONE):
    return client.post(f"{API}/auth/verify", json={"phone": phone, "otp": otp})


def wrong(code: str) -> str:
    return "000000" if code != "000000" else "111111"


def test_wrong_codes_are_counted_per_phone_across_new_codes(client, caplog):
    assert get_settings().otp_failures_per_day == 10
    for tries in (4, 4):  # under each code's own limit of 5
        assert send(client).status_code == 202
        code = last_otp(PHONE)
        for _ in range(tries):
            assert verify(client, wrong(code)).status_code == 401
    assert send(client).status_code == 202
    code = last_otp(PHONE)
    assert verify(client, wrong(code)).status_code == 401
    assert verify(client, wrong(code)).status_code == 401  # the 10th wrong code today
    caplog.set_level(logging.INFO)
    r = verify(client, code)  # even the right code: the guessing has to stop
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "rate_limited"
    key = auth._failures_key(PHONE)
    assert 0 < redis_client().ttl(key) <= DAY_S  # until the first failure is a day old
    logged = [(rec.getMessage(), vars(rec)) for rec in caplog.records]
    assert any(extra.get("phone") == "+91******0001" for _, extra in logged)
    assert not any(PHONE in str(x) or code in str(x) for x in logged)

    redis_client().delete(key)  # a day later
    assert verify(client, code).status_code == 200


def test_a_right_code_is_not_a_failure(client):
    r = redis_client()
    for _ in range(2):
        assert send(client).status_code == 202
        code = last_otp(PHONE)
        assert verify(client, wrong(code)).status_code == 401
        assert verify(client, code).status_code == 200
    assert int(r.get(auth._failures_key(PHONE))) == 2


def test_no_code_is_sent_while_the_phones_wrong_codes_are_spent(client):
    redis_client().set(auth._failures_key(PHONE), 10, ex=DAY_S)
    r = send(client)
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "rate_limited"


def test_a_code_gone_between_check_and_count_leaves_no_immortal_key(client, monkeypatch):
    """The code expires (or a concurrent verify uses it) just after it was read: the
    count must not re-create it without its TTL, and later tries must not crash."""
    assert send(client).status_code == 202
    code = last_otp(PHONE)
    r = redis_client()
    key = auth._otp_key(PHONE)
    real = redis.Redis.execute_command
    gone: list[object] = []

    def expire_after_first_look(self, *args, **options):
        result = real(self, *args, **options)
        if not gone and (key in args or key.encode() in args):
            gone.append(args[0])
            real(self, "DEL", key)
        return result

    monkeypatch.setattr(redis.Redis, "execute_command", expire_after_first_look)
    assert verify(client, wrong(code)).status_code == 401
    monkeypatch.undo()
    assert gone, "the verify never looked at the code"
    assert all(r.ttl(k) > 0 for k in r.keys("auth:*")), "a key without a TTL"
    again = verify(client, code)  # expired: invalid, not a 500
    assert again.status_code == 401 and again.get_json()["error"]["code"] == "otp_invalid"


def test_a_broken_code_record_is_an_invalid_code_not_a_500(client):
    # What the old check-then-count left behind: attempts only, no hash and no TTL.
    r = redis_client()
    r.hset(auth._otp_key(PHONE), "attempts", 1)
    res = verify(client, "123456")
    assert res.status_code == 401 and res.get_json()["error"]["code"] == "otp_invalid"
    assert not r.exists(auth._otp_key(PHONE))


# --- per-IP limits behind the proxy --------------------------------------------------


@pytest.fixture
def proxied(clean_db):
    """The app as deployed behind one proxy (PROXY_HOPS=1)."""
    from core.app import create_app

    app = create_app(dataclasses.replace(get_settings(), proxy_hops=1))
    app.config["TESTING"] = True
    return app.test_client()


def test_behind_the_proxy_the_limit_counts_the_clients_address(proxied, monkeypatch):
    monkeypatch.setattr(auth, "SENDS_PER_IP", (2, 3600))
    alice = {"X-Forwarded-For": "203.0.113.7"}
    assert send(proxied, "+919812300101", alice).status_code == 202
    assert send(proxied, "+919812300102", alice).status_code == 202
    assert send(proxied, "+919812300103", alice).status_code == 429
    # Another client behind the same proxy is not punished for Alice.
    bob = {"X-Forwarded-For": "198.51.100.9"}
    assert send(proxied, "+919812300103", bob).status_code == 202
    # Only the hop our proxy appended counts: what a client wrote before it does not.
    mallory = {"X-Forwarded-For": "1.2.3.4, 203.0.113.7"}
    assert send(proxied, "+919812300104", mallory).status_code == 429
    assert redis_client().exists(f"ratelimit:otp-send-ip:{auth._ip_tag('203.0.113.7')}")


def test_connected_directly_a_forwarded_header_is_ignored(client, monkeypatch):
    assert get_settings().proxy_hops == 0
    monkeypatch.setattr(auth, "SENDS_PER_IP", (2, 3600))
    for i, spoofed in enumerate(("203.0.113.1", "203.0.113.2")):
        r = send(client, f"+91981230020{i}", {"X-Forwarded-For": spoofed})
        assert r.status_code == 202
    r = send(client, "+919812300209", {"X-Forwarded-For": "203.0.113.3"})
    assert r.status_code == 429
    assert redis_client().exists(f"ratelimit:otp-send-ip:{auth._ip_tag('127.0.0.1')}")


def test_twilio_signatures_still_check_behind_the_proxy(proxied):
    """The proxy forwards its own host and scheme; Twilio signed PUBLIC_BASE_URL."""
    params = {"MessageSid": "SMproxy1", "From": "whatsapp:+919812300301",
              "WaId": "919812300301", "To": "whatsapp:+14155238886", "Body": "hi"}
    forwarded = {"X-Forwarded-For": "54.172.60.1", "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": "ridechain.example.in"}
    assert post_twilio(proxied, "/webhooks/whatsapp", params, headers=forwarded).status_code \
        == 200
    forged = post_twilio(proxied, "/webhooks/whatsapp", {**params, "Body": "bye"},
                         signature="bad", headers=forwarded)
    assert forged.status_code == 403


@pytest.mark.parametrize("foreign", ["+447700900123", "+12025550123", "+911123456789"])
def test_a_sign_in_code_goes_only_to_an_indian_mobile(client, foreign):
    """Anyone may ask for a code: to a foreign or premium number that is SMS pumping."""
    r = send(client, foreign)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["error"]["code"] == "bad_phone"
    assert redis_client().keys("auth:otp:*") == []


def test_an_operator_with_a_foreign_number_still_gets_a_code(client):
    from core.adapters.db import transaction
    from core.adapters.models import Person

    with transaction() as s:
        s.add(Person(phone="+447700900123", name="Ops abroad", role="ops"))
    assert send(client, "+447700900123").status_code == 202

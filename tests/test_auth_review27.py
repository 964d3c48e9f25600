"""Reviewer r2: sign-in and sessions (OTP request/verify, limits, tokens, roles).

Each test states the correct behaviour and fails on the code as reviewed."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock
from core.adapters.db import transaction
from core.adapters.models import SandboxMessage
from core.adapters.redis_conn import redis_client
from core.config import get_settings
from core.services import auth
from sandbox.twilio import FAIL_NEXT_KEY
from tests.conftest import release_scheduled, run_jobs
from tests.test_api import API, last_otp

PHONE = "+919812300451"


def _ask(client, phone: str = PHONE, ip: str = "203.0.113.50", headers=None):
    return client.post(f"{API}/auth/otp", json={"phone": phone}, headers=headers or {},
                       environ_base={"REMOTE_ADDR": ip})


def _codes_handed_to_twilio(phone: str) -> list[str]:
    """The sign-in codes in the SMS the Twilio emulator took for ``phone``, in order."""
    with transaction() as s:
        bodies = s.scalars(select(SandboxMessage.body).where(SandboxMessage.to_addr == phone)
                           .order_by(SandboxMessage.id)).all()
    return [m.group(0) for b in bodies if (m := re.search(r"\d{6}", b))]


# --- 1. a sign-in code that no longer works is still sent, and holds the live one back --

def test_a_replaced_sign_in_code_is_not_sent_after_it_stopped_working(client, live):
    """The first code's SMS failed a try (Twilio 503) and waits for its retry; the person
    asks again, which replaces that code (request_otp deletes it in Redis). The retry
    still delivers the dead code, first: the person types it and loses one of the day's
    10 tries. With production's retry intervals (10 s ... 30 min) such SMS also arrive
    long after the code's 5 minutes. An SMS whose code cannot work must not be sent."""
    redis_client().set(FAIL_NEXT_KEY, 1)  # Twilio refuses the first try only
    assert _ask(client).status_code == 202
    run_jobs()
    dead = last_otp(PHONE)
    assert _ask(client).status_code == 202
    live_code = last_otp(PHONE)
    assert dead != live_code
    run_jobs()
    release_scheduled(timedelta(seconds=45))  # every retry the test config has
    run_jobs()
    sent = _codes_handed_to_twilio(PHONE)
    assert live_code in sent, sent
    assert dead not in sent, f"the replaced code {dead} was sent after it stopped working"
    # ... and the dead code cannot sign in (it is the SMS that is wrong, not the check).
    r = client.post(f"{API}/auth/verify", json={"phone": PHONE, "otp": dead})
    assert r.status_code == 401


def test_a_new_sign_in_code_is_not_held_back_behind_the_replaced_ones_retry(client, live):
    """Someone whose code did not come asks for another: the new SMS is held back
    ("held back behind an earlier message waiting for a retry") until the dead code's
    retry, and in production gets the outbox's backoff (its next try up to 10 minutes
    later), beyond the 5 minutes the new code lives. It should go at once."""
    redis_client().set(FAIL_NEXT_KEY, 1)
    assert _ask(client).status_code == 202
    run_jobs()
    assert _ask(client).status_code == 202
    live_code = last_otp(PHONE)
    run_jobs()  # Twilio answers again; no retry is due yet
    assert live_code in _codes_handed_to_twilio(PHONE), (
        "the new code waits behind the retry of the code it replaced")


def test_a_sign_in_code_whose_life_ended_while_its_sms_waited_is_not_sent(client, live):
    """The code's SMS failed a try and its retry comes after the code's 5 minutes (in
    production the retries back off up to 30 min): the code cannot sign in any more, so
    its SMS must not go; the row says why, and keeps no code."""
    from core.adapters.models import OutboxMessage
    from core.services import outbox

    redis_client().set(FAIL_NEXT_KEY, 1)
    assert _ask(client).status_code == 202
    run_jobs()
    code = last_otp(PHONE)
    clock.freeze(clock.now() + auth.OTP_TTL + timedelta(seconds=1))
    release_scheduled(timedelta(seconds=45))
    run_jobs()
    assert code not in _codes_handed_to_twilio(PHONE)
    with transaction() as s:
        row = s.scalars(select(OutboxMessage).where(OutboxMessage.to_addr == PHONE)).one()
        assert (row.status, row.last_error) == ("failed", outbox.CODE_EXPIRED)
        assert code not in row.body


# --- 2. a forwarded address with a port escapes the per-IP limits ------------------------

@pytest.fixture
def proxied(clean_db):
    """The app as deployed behind one proxy (PROXY_HOPS=1)."""
    from core.app import create_app

    app = create_app(dataclasses.replace(get_settings(), proxy_hops=1))
    app.config["TESTING"] = True
    return app.test_client()


@pytest.mark.parametrize("forwarded", ["203.0.113.7:{port}", "[2001:db8:5:6::7]:{port}"])
def test_the_per_ip_limit_counts_a_forwarded_client_whatever_its_source_port(
        proxied, monkeypatch, forwarded):
    """Some load balancers (Azure Application Gateway, for one) append the client as
    "address:port" to X-Forwarded-For. client_of could not parse that and counted the
    text as it was, so each new connection (a new source port) got a fresh budget: the
    per-IP limits on codes (SMS bombing) and on verifies did nothing."""
    monkeypatch.setattr(auth, "SENDS_PER_IP", (2, 3600))
    answers = [proxied.post(f"{API}/auth/otp", json={"phone": f"+91981230046{i}"},
                            headers={"X-Forwarded-For": forwarded.format(port=40001 + i)}
                            ).status_code for i in range(3)]
    assert answers == [202, 202, 429]


# --- 3. the per-phone send limit is a fixed window: twice its codes in 10 minutes --------

def _time_passes(seconds: int) -> None:
    """``seconds`` go by: for the service clock, and for the limits' keys in Redis (their
    TTLs shrink; one whose time is up is gone), as they would."""
    clock.freeze(clock.now() + timedelta(seconds=seconds))
    r = redis_client()
    for key in r.scan_iter("ratelimit:*"):
        left = r.pttl(key)
        if left > seconds * 1000:
            r.pexpire(key, left - seconds * 1000)
        elif left > 0:
            r.delete(key)


def test_a_phone_is_sent_at_most_three_codes_in_any_ten_minutes(client):
    """README: "a phone is sent at most 3 codes in 10 minutes". The window started with
    the first code and forgot everything when it ended: codes 2 and 3 sent in its last
    second and codes 4, 5 and 6 right after it made 5 codes within two seconds (the same
    fixed windows let 20 codes a day through, and 40 an hour from one address)."""
    clock.freeze(clock.now())
    assert _ask(client, ip="198.51.100.1").status_code == 202  # t0
    _time_passes(599)  # t0 + 9 min 59 s: the first code's 10 minutes have a second left
    assert _ask(client, ip="198.51.100.2").status_code == 202
    assert _ask(client, ip="198.51.100.3").status_code == 202
    _time_passes(1)  # t0 + 10 min: the first code is 10 minutes old
    later = [_ask(client, ip=f"198.51.100.{i}").status_code for i in (4, 5)]
    # Codes 2 and 3 went 1 s ago: one more may go within their 10 minutes, not two.
    assert later.count(202) <= 1, f"codes 4 and 5 answered {later}"
    assert later[0] == 202, "the first code's 10 minutes are over: one more may go"


# --- 4. an erased person's number stays in Redis for a day ------------------------------

def test_an_erasure_leaves_the_number_in_no_sign_in_key(client):
    """README: on erasure "their name, number and WhatsApp id go" (dead letters in Redis
    included). The sign-in limits and the wrong-code count are Redis keys named by the
    number in clear (auth:otp-failures:+91..., ratelimit:otp-send-phone-day:+91...),
    kept up to a day after the erasure. They can keep counting (a lockout must not be
    undone) under a keyed hash of the number, as opt-outs outlive a person."""
    from core.adapters.models import Person
    from core.services import retention

    assert _ask(client).status_code == 202
    code = last_otp(PHONE)
    wrong = "000000" if code != "000000" else "111111"
    verify = client.post(f"{API}/auth/verify", json={"phone": PHONE, "otp": wrong})
    assert verify.status_code == 401
    ok = client.post(f"{API}/auth/verify", json={"phone": PHONE, "otp": code})
    assert ok.status_code == 200
    token = {"Authorization": f"Bearer {ok.get_json()['token']}"}
    with transaction() as s:
        pid = s.scalar(select(Person.id).where(Person.phone == PHONE))
        assert retention.erase_person(s, pid).changed
    assert client.get(f"{API}/me", headers=token).status_code == 401  # the sign-in ended
    digits = PHONE[-10:]
    named = sorted(k.decode() for k in redis_client().scan_iter() if digits in k.decode())
    assert named == [], f"Redis keys still name the erased number: {len(named)}"

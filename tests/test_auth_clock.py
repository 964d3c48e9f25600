"""Sign-in tokens and the wrong-code budget follow the service clock and the first failure."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import clock
from core.adapters.redis_conn import redis_client
from core.services import auth
from tests.test_api import API, last_otp
from tests.test_auth_limits import send, verify, wrong

pytestmark = pytest.mark.db
PHONE = "+919812300077"


def sign_in(client) -> str:
    assert client.post(f"{API}/auth/otp", json={"phone": PHONE}).status_code == 202
    r = client.post(f"{API}/auth/verify", json={"phone": PHONE, "otp": last_otp(PHONE)})
    assert r.status_code == 200
    return r.get_json()["token"]


def test_a_token_made_with_the_clock_ahead_of_the_host_is_valid(client):
    # A web host whose clock is ahead of another's: the token's iat is in the other's
    # future. (PyJWT checked iat and exp against the host's own clock.)
    clock.freeze(clock.now() + timedelta(hours=1))
    assert auth.authenticate(sign_in(client)).person_id > 0


def test_a_token_lives_its_thirty_days_by_the_service_clock(client):
    start = clock.now() - timedelta(days=31)
    clock.freeze(start)
    token = sign_in(client)
    assert auth.authenticate(token).person_id > 0
    clock.freeze(start + auth.SESSION_TTL - timedelta(minutes=1))
    assert auth.authenticate(token).person_id > 0
    clock.freeze(start + auth.SESSION_TTL + timedelta(minutes=1))
    with pytest.raises(auth.AuthError) as err:
        auth.authenticate(token)
    assert err.value.status == 401


def test_the_wrong_code_window_runs_from_the_first_failure_not_a_sign_in(client):
    r = redis_client()
    key = auth._failures_key(PHONE)
    assert send(client, PHONE).status_code == 202
    assert verify(client, last_otp(PHONE), PHONE).status_code == 200
    # A good sign-in leaves no window behind (it would close a day from the sign-in,
    # whatever the failures after it).
    assert r.exists(key) == 0
    assert send(client, PHONE).status_code == 202
    assert verify(client, wrong(last_otp(PHONE)), PHONE).status_code == 401
    assert r.ttl(key) > 23 * 3600
    # A right code after a failure keeps that failure, and its window.
    assert verify(client, last_otp(PHONE), PHONE).status_code == 200
    assert int(r.get(key)) == 1

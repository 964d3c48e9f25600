"""Rotating Twilio's auth token without refusing webhooks: with
TWILIO_AUTH_TOKEN_SECONDARY set, a webhook signed with either token passes (Twilio signs
with its primary, which becomes the secondary's value the moment it is promoted), and the
REST API is still called with TWILIO_AUTH_TOKEN alone."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from core.adapters import twilio_gateway
from core.config import ConfigError, get_settings, load_settings, reset_settings
from tests.conftest import post_twilio, replies_to, run_jobs
from tests.test_config_urls import production_env
from tests.test_twilio_shared_key import PATH, sign, wa

SECONDARY = "f9e8d7c6b5a4938271605f4e3d2c1b0a"


@pytest.fixture
def secondary(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN_SECONDARY", SECONDARY)
    reset_settings()
    yield
    monkeypatch.undo()
    reset_settings()


def test_a_webhook_signed_with_the_secondary_token_passes_while_it_is_set(client,
                                                                          secondary: None):
    params = wa("hi", "SMrotate1")
    r = post_twilio(client, PATH, params, signature=sign(SECONDARY, hashlib.sha1, params))
    assert r.status_code == 200, r.get_data(as_text=True)
    params = wa("hello", "SMrotate2")  # the auth token's signature still passes
    r = post_twilio(client, PATH, params,
                    signature=sign(get_settings().twilio_auth_token, hashlib.sha1, params))
    assert r.status_code == 200
    run_jobs(("inbound",))
    assert replies_to("SMrotate1") and replies_to("SMrotate2")  # both turns were taken
    # The REST API is called with the auth token, not the secondary.
    assert twilio_gateway.client().password == get_settings().twilio_auth_token


def test_without_it_the_secondary_tokens_signature_is_refused(client):
    params = wa("hi", "SMrotate3")
    r = post_twilio(client, PATH, params, signature=sign(SECONDARY, hashlib.sha1, params))
    assert r.status_code == 403
    assert run_jobs(("inbound",)) == 0


@pytest.mark.parametrize("value", ["short", "f0e1d2c3b4a5968778695a4b3c2d1e0f",
                                   " " + SECONDARY])
def test_production_refuses_a_secondary_token_that_is_short_the_same_or_padded(value):
    env = production_env(TWILIO_AUTH_TOKEN_SECONDARY=value)  # the 2nd: the auth token's
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert "TWILIO_AUTH_TOKEN_SECONDARY" in str(info.value)


def test_production_takes_a_secondary_token():
    from datetime import timedelta

    from core import clock

    s = load_settings(production_env(
        TWILIO_AUTH_TOKEN_SECONDARY=SECONDARY,
        TWILIO_AUTH_TOKEN_SECONDARY_UNTIL=(clock.now() + timedelta(days=1)).isoformat()))
    assert s.twilio_auth_token_secondary == (SECONDARY,)

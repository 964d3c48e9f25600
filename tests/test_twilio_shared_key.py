"""Webhooks that a Twilio Webhook Setting signs with its SharedKey (HMAC-SHA256, named in
X-Twilio-Webhooks-Signature-Settings) instead of the auth token (HMAC-SHA1)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Iterator

import pytest

from core.config import get_settings, reset_settings
from tests.conftest import post_twilio, replies_to, run_jobs

SHARED_KEY = "test-webhook-shared-key-secret"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
PATH = "/webhooks/whatsapp"


def wa(body: str, sid: str) -> dict[str, str]:
    return {"MessageSid": sid, "AccountSid": "ACtest", "From": "whatsapp:+919812345670",
            "To": "whatsapp:+14155238886", "Body": body, "NumMedia": "0",
            "WaId": "919812345670", "ProfileName": "Asha"}


def sign(secret: str, digest, params: dict[str, str], path: str = PATH) -> str:
    """Twilio's scheme, written out: the URL, then each parameter's name and value in
    name order, HMAC'd with the secret, base64."""
    text = get_settings().public_base_url + path + "".join(
        name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(secret.encode(), text.encode(), digest).digest()).decode()


def header(algorithm: str = "HMAC_SHA256") -> dict[str, str]:
    return {SETTINGS_HEADER: f"key=webhooks_sharedkey_01test,algorithm={algorithm}"}


@pytest.fixture
def shared_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TWILIO_WEBHOOK_SHARED_KEY", SHARED_KEY)
    reset_settings()
    yield
    monkeypatch.undo()
    reset_settings()


def test_a_webhook_signed_with_the_shared_key_is_taken(client, shared_key: None):
    params = wa("hi", "SMshared1")
    r = post_twilio(client, PATH, params, signature=sign(SHARED_KEY, hashlib.sha256, params),
                    headers=header())
    assert r.status_code == 200
    assert run_jobs(("inbound",)) == 1
    assert replies_to("SMshared1")


def test_the_settings_header_means_the_shared_key_and_nothing_else(client, shared_key: None):
    params = wa("hi", "SMshared2")
    token = get_settings().twilio_auth_token
    for secret, digest in ((token, hashlib.sha1), (token, hashlib.sha256),
                           (SHARED_KEY, hashlib.sha1)):
        r = post_twilio(client, PATH, params, signature=sign(secret, digest, params),
                        headers=header())
        assert r.status_code == 403
    assert run_jobs(("inbound",)) == 0


def test_an_algorithm_twilio_does_not_use_is_refused(client, shared_key: None):
    """Whatever the signature was made with, an unknown algorithm never falls back."""
    params = wa("hi", "SMshared3")
    for digest in (hashlib.md5, hashlib.sha1, hashlib.sha256):
        r = post_twilio(client, PATH, params, signature=sign(SHARED_KEY, digest, params),
                        headers=header("HMAC_MD5"))
        assert r.status_code == 403


@pytest.mark.parametrize("settings_header", ["key=webhooks_sharedkey_01test", "", ",,="])
def test_settings_that_name_no_algorithm_are_not_twilios(client, shared_key: None,
                                                         settings_header: str):
    params = wa("hi", "SMshared7")
    for digest in (hashlib.sha1, hashlib.sha256):
        r = post_twilio(client, PATH, params, signature=sign(SHARED_KEY, digest, params),
                        headers={SETTINGS_HEADER: settings_header})
        assert r.status_code == 403


def test_the_algorithms_name_is_read_in_any_case(client, shared_key: None):
    params = wa("hi", "SMshared8")
    r = post_twilio(client, PATH, params, signature=sign(SHARED_KEY, hashlib.sha256, params),
                    headers=header("hmac_sha256"))
    assert r.status_code == 200


def test_while_a_key_is_rotated_either_secret_is_taken(client, monkeypatch):
    monkeypatch.setenv("TWILIO_WEBHOOK_SHARED_KEY", f"new-secret, {SHARED_KEY}")
    reset_settings()
    try:
        for secret, sid in (("new-secret", "SMrot1"), (SHARED_KEY, "SMrot2")):
            params = wa("hi", sid)
            r = post_twilio(client, PATH, params, headers=header(),
                            signature=sign(secret, hashlib.sha256, params))
            assert r.status_code == 200
        params = wa("hi", "SMrot3")
        assert post_twilio(client, PATH, params, headers=header(),
                           signature=sign("old-gone", hashlib.sha256, params)).status_code == 403
    finally:
        monkeypatch.undo()
        reset_settings()


def test_a_tampered_parameter_fails_the_shared_key_check(client, shared_key: None):
    params = wa("hi", "SMshared4")
    signature = sign(SHARED_KEY, hashlib.sha256, params)
    params["Body"] = "tampered"
    assert post_twilio(client, PATH, params, signature=signature,
                       headers=header()).status_code == 403


def test_without_the_header_the_auth_token_still_signs(client, shared_key: None):
    params = wa("hi", "SMshared5")
    r = post_twilio(client, PATH, params,
                    signature=sign(get_settings().twilio_auth_token, hashlib.sha1, params))
    assert r.status_code == 200


def test_a_shared_key_webhook_without_a_configured_key_is_refused_and_says_why(
        client, caplog: pytest.LogCaptureFixture):
    assert get_settings().twilio_webhook_shared_key is None
    params = wa("hi", "SMshared6")
    token = get_settings().twilio_auth_token
    with caplog.at_level(logging.WARNING):
        # Not even the auth token stands in for the missing key.
        for secret, digest in ((token, hashlib.sha256), (token, hashlib.sha1),
                               (SHARED_KEY, hashlib.sha256)):
            r = post_twilio(client, PATH, params, signature=sign(secret, digest, params),
                            headers=header())
            assert r.status_code == 403
    assert any("TWILIO_WEBHOOK_SHARED_KEY is not set" in rec.getMessage()
               for rec in caplog.records)


def test_status_callbacks_take_the_shared_key_too(client, shared_key: None):
    path = "/webhooks/twilio/status"
    params = {"MessageSid": "SMnone", "MessageStatus": "delivered", "AccountSid": "ACtest"}
    good = post_twilio(client, path, params, headers=header(),
                       signature=sign(SHARED_KEY, hashlib.sha256, params, path))
    bad = post_twilio(client, path, params, headers=header(),
                      signature=sign(get_settings().twilio_auth_token, hashlib.sha1, params,
                                     path))
    assert (good.status_code, bad.status_code) == (204, 403)


def test_repeated_parameters_are_signed_on_the_shared_key_path_too(client, shared_key: None):
    from urllib.parse import urlencode

    pairs = [*wa("hi", "SMshared9").items(), ("Extra", "b"), ("Extra", "a")]
    text = get_settings().public_base_url + PATH + "".join(n + v for n, v in sorted(pairs))
    signature = base64.b64encode(hmac.new(SHARED_KEY.encode(), text.encode(),
                                          hashlib.sha256).digest()).decode()
    r = client.post(PATH, data=urlencode(pairs), headers={
        "X-Twilio-Signature": signature, **header(),
        "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200

"""Operations hardening: /metrics behind a bearer token in production (and /readyz telling
strangers only ready or not), a bound on OTP_FAILURES_PER_DAY, a warning when a proxy's
X-Forwarded-For arrives while PROXY_HOPS=0, and the app customer's own language."""

from __future__ import annotations

import dataclasses
import hmac
import logging

import pytest
from sqlalchemy import select

from core.adapters import db
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage, Person
from core.config import get_settings, load_settings
from core.web import ops
from tests.test_api import API, PHONE, last_otp, sign_in
from tests.test_config_production import SECRET_KEY, production_env, refusal

TOKEN = "metrics-Vq7Lr2Xw9Kd4Bn6Hs1Zt8Pm3Yc5Gf0"  # 36 characters


def production_app(**changes: object):
    from core.app import create_app

    settings = dataclasses.replace(get_settings(), app_env="production", **changes)
    app = create_app(settings)
    app.config["TESTING"] = True
    return app.test_client()


# --- 1. /metrics and /readyz --------------------------------------------------------------


def test_production_refuses_to_start_without_a_metrics_token():
    env = production_env()
    env.pop("METRICS_TOKEN", None)
    env.pop("METRICS_PUBLIC", None)
    lines = refusal(env)
    assert any(line.startswith("METRICS_TOKEN is required in production") and
               "METRICS_PUBLIC=1" in line for line in lines), lines


def test_production_takes_a_metrics_token_or_an_explicit_public_metrics():
    env = production_env(METRICS_TOKEN=TOKEN)
    assert load_settings(env).metrics_token == TOKEN
    env = production_env(METRICS_PUBLIC="1")
    env.pop("METRICS_TOKEN", None)
    s = load_settings(env)
    assert s.metrics_token is None and s.metrics_public


@pytest.mark.parametrize(("value", "line"), [
    ("short-token", "METRICS_TOKEN is too short: at least 32 characters"),
    (SECRET_KEY, "METRICS_TOKEN is the same as SECRET_KEY; give each its own"),
    (f" {TOKEN}", "METRICS_TOKEN starts or ends with a space or line break; remove it"),
])
def test_production_refuses_a_weak_metrics_token_without_naming_it(value, line):
    lines = refusal(production_env(METRICS_TOKEN=value))
    assert line in lines
    assert not any(value.strip() in x for x in lines)


def test_metrics_public_must_say_yes_or_no():
    env = production_env(METRICS_PUBLIC="maybe")
    env.pop("METRICS_TOKEN", None)
    assert "METRICS_PUBLIC must be 1 or 0 (true/false, yes/no), got 'maybe'" in refusal(env)


def test_in_production_metrics_need_the_bearer_token(clean_db):
    client = production_app(metrics_token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong-token"},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        r = client.get("/metrics", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert r.get_json()["error"]["code"] in ("unauthenticated", "invalid_token")
        assert b"http_requests_total" not in r.data
    r = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert b"rq_queue_depth" in r.data
    r = client.get("/metrics", headers={"Authorization": f"bearer  {TOKEN} "})
    assert r.status_code == 200  # the scheme in any case, spaces around the token


def test_the_metrics_token_is_compared_in_constant_time(clean_db, monkeypatch):
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(ops.hmac, "compare_digest", spy)
    client = production_app(metrics_token=TOKEN)
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert compared and TOKEN.encode() in compared[-1]


def test_public_metrics_need_no_token_and_the_sandbox_stays_open(client, clean_db):
    assert client.get("/metrics").status_code == 200  # sandbox, no token set
    public = production_app(metrics_token=None, metrics_public=True)
    assert public.get("/metrics").status_code == 200
    # A production app with neither (the config refuses it; a hand-built one) is closed.
    closed = production_app(metrics_token=None, metrics_public=False)
    r = closed.get("/metrics")
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "metrics_closed"


def test_readyz_tells_strangers_only_ready_or_not(clean_db, monkeypatch, caplog):
    client = production_app(metrics_token=TOKEN)
    r = client.get("/readyz")
    assert r.status_code == 200 and r.get_json() == {"status": "ready"}

    def down() -> None:
        raise ConnectionRefusedError

    from core.web import ops

    monkeypatch.setitem(ops._not_ready_logged, "checks", None)  # not one logged just now
    monkeypatch.setattr(db, "ping", down)
    caplog.set_level(logging.WARNING)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.get_json() == {"status": "not_ready"}
    # Operators still learn why, from the logs and from a probe that sends the token.
    assert any("ConnectionRefusedError" in str(vars(rec)) for rec in caplog.records)
    r = client.get("/readyz", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 503
    assert r.get_json()["checks"]["postgres"] == "down: ConnectionRefusedError"


def test_a_not_ready_state_is_logged_when_it_changes_not_at_every_probe(clean_db, monkeypatch,
                                                                        caplog):
    """A load balancer probes every few seconds: the same not-ready state is logged once a
    minute at most; a change (another check failing, or ready again then down) at once."""
    from datetime import UTC, datetime, timedelta

    from core import clock
    from core.web import ops

    client = production_app(metrics_token=TOKEN)
    monkeypatch.setitem(ops._not_ready_logged, "checks", None)
    t0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    clock.freeze(t0)

    def down() -> None:
        raise ConnectionRefusedError

    monkeypatch.setattr(db, "ping", down)
    caplog.set_level(logging.WARNING)

    def logged() -> int:
        return sum(rec.getMessage() == "not ready" for rec in caplog.records)

    for _ in range(5):
        assert client.get("/readyz").status_code == 503
    assert logged() == 1
    clock.freeze(t0 + timedelta(seconds=59))
    client.get("/readyz")
    assert logged() == 1
    clock.freeze(t0 + timedelta(seconds=61))
    client.get("/readyz")
    assert logged() == 2

    def down_otherwise() -> None:
        raise TimeoutError

    monkeypatch.setattr(db, "ping", down_otherwise)
    client.get("/readyz")
    assert logged() == 3


# --- 2. OTP_FAILURES_PER_DAY bounded -------------------------------------------------------


def test_otp_failures_per_day_has_an_upper_bound():
    """100000 wrong codes a day, a typo for 10, would let a 6-digit code be guessed."""
    lines = refusal(production_env(METRICS_TOKEN=TOKEN, OTP_FAILURES_PER_DAY="100000"))
    assert "OTP_FAILURES_PER_DAY must be <= 50, got 100000" in lines
    s = load_settings(production_env(METRICS_TOKEN=TOKEN, OTP_FAILURES_PER_DAY="50"))
    assert s.otp_failures_per_day == 50


# --- 3. PROXY_HOPS=0 behind a proxy ------------------------------------------------------------


def _ignored() -> float:
    return ops.REGISTRY.get_sample_value("http_forwarded_for_ignored_total") or 0.0


def test_a_forwarded_header_with_proxy_hops_0_warns_once_without_addresses(clean_db, caplog):
    client = production_app(metrics_token=TOKEN, proxy_hops=0)
    before = _ignored()
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        r = client.get("/healthz", headers={"X-Forwarded-For": "203.0.113.7, 10.0.0.2"},
                       environ_base={"REMOTE_ADDR": "10.0.0.9"})
        assert r.status_code == 200
    warnings = [rec for rec in caplog.records if "PROXY_HOPS" in rec.getMessage()]
    assert len(warnings) == 1
    said = str(vars(warnings[0]))
    assert not any(addr in said for addr in ("203.0.113.7", "10.0.0.2", "10.0.0.9"))
    assert _ignored() - before == 3
    text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).data
    assert b"http_forwarded_for_ignored_total" in text


def test_no_warning_when_the_proxy_hops_are_set_or_no_header_comes(clean_db, caplog):
    caplog.set_level(logging.WARNING)
    behind = production_app(metrics_token=TOKEN, proxy_hops=1)
    before = _ignored()
    assert behind.get("/healthz", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 200
    direct = production_app(metrics_token=TOKEN, proxy_hops=0)
    assert direct.get("/healthz").status_code == 200
    assert not [rec for rec in caplog.records if "PROXY_HOPS" in rec.getMessage()]
    assert _ignored() == before


def _short() -> float:
    return ops.REGISTRY.get_sample_value("http_forwarded_for_short_total") or 0.0


def test_proxy_hops_above_the_real_proxies_is_counted_and_said_once(clean_db, caplog):
    """Wrong: PROXY_HOPS=2 behind one proxy (one address forwarded) was silently ignored
    by the proxy fix, so every client had the proxy's address, as with 0 behind one, and
    nothing said so. Should: counted and, in production, said once, without addresses;
    a balancer's probe of /healthz without the header is not counted."""
    client = production_app(metrics_token=TOKEN, proxy_hops=2)
    before = _short()
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        r = client.get("/api/v1/openapi.json", headers={"X-Forwarded-For": "203.0.113.7"},
                       environ_base={"REMOTE_ADDR": "10.0.0.9"})
        assert r.status_code == 200
    assert client.get("/healthz").status_code == 200  # the balancer's own probe
    warnings = [rec for rec in caplog.records if "PROXY_HOPS=2" in rec.getMessage()]
    assert len(warnings) == 1
    assert not any(a in str(vars(warnings[0])) for a in ("203.0.113.7", "10.0.0.9"))
    assert _short() - before == 3
    # Through the two proxies it was told of: nothing more.
    r = client.get("/api/v1/openapi.json",
                   headers={"X-Forwarded-For": "203.0.113.7, 10.0.0.2"})
    assert r.status_code == 200 and _short() - before == 3


# --- 4. the app customer's language ------------------------------------------------------------


def test_a_customer_sets_their_language_and_later_sms_use_it(client):
    headers = sign_in(client)
    r = client.get(f"{API}/me", headers=headers)
    assert r.status_code == 200
    me = r.get_json()
    assert me["language"] == "hi" and me["phone"] == PHONE
    assert set(me["languages"]) == {"hi", "en", "bn", "gu", "mr", "ta", "te", "kn"}

    r = client.patch(f"{API}/me", json={"language": "TA "}, headers=headers)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["language"] == "ta"
    assert client.get(f"{API}/me", headers=headers).get_json()["language"] == "ta"
    with transaction() as s:
        assert s.scalar(select(Person.preferred_language)
                        .where(Person.phone == PHONE)) == "ta"
    # The next SMS to that person (a sign-in code here) is in Tamil.
    assert client.post(f"{API}/auth/otp", json={"phone": PHONE}).status_code == 202
    code = last_otp(PHONE)
    with transaction() as s:
        body = s.scalar(select(OutboxMessage.body).where(OutboxMessage.to_addr == PHONE)
                        .order_by(OutboxMessage.id.desc()))
    assert body == f"உங்கள் RideChain கோடு {code}. இதை யாரிடமும் சொல்லாதீர்கள்."


@pytest.mark.parametrize("body", [{"language": "fr"}, {"language": ""},
                                  {"language": "hindi"}])
def test_an_unknown_language_is_a_422_listing_the_ones_we_speak(client, body):
    headers = sign_in(client)
    r = client.patch(f"{API}/me", json=body, headers=headers)
    assert r.status_code == 422
    err = r.get_json()["error"]
    assert err["code"] == "unsupported_language" and err["field"] == "language"
    assert "hi, en, bn, mr, ta, te, gu, kn" in err["message"]
    assert client.get(f"{API}/me", headers=headers).get_json()["language"] == "hi"


@pytest.mark.parametrize("body", [{}, {"language": 5}, {"language": None},
                                  {"language": "ta", "name": "x"}])
def test_a_malformed_profile_change_is_a_precise_422(client, body):
    headers = sign_in(client)
    r = client.patch(f"{API}/me", json=body, headers=headers)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["error"]["code"] == "validation_error"


def test_the_profile_needs_a_signed_in_customer(client):
    assert client.get(f"{API}/me").status_code == 401
    assert client.patch(f"{API}/me", json={"language": "ta"}).status_code == 401
    partner = sign_in(client, "+919812300077", role="partner")
    assert client.patch(f"{API}/me", json={"language": "ta"}, headers=partner).status_code \
        == 403
    assert "/api/v1/me" in client.get(f"{API}/openapi.json").get_json()["paths"]

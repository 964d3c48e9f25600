"""Settings from the environment: sandbox defaults, production refusals, URL fixing."""

from __future__ import annotations

import os
import re

import pytest

from core.config import (
    SANDBOX_TWILIO_AUTH_TOKEN,
    ConfigError,
    load_settings,
)

DB = "postgresql://postgres@127.0.0.1:5432/ridechain"
REDIS = "redis://127.0.0.1:6379/0"
SECRETS = (
    "SECRET_KEY",
    "OTP_KEY",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "RAZORPAY_KEY_ID",
    "RAZORPAY_KEY_SECRET",
    "RAZORPAY_WEBHOOK_SECRET",
)


def sandbox_env(**extra: str) -> dict[str, str]:
    return {"DATABASE_URL": DB, "REDIS_URL": REDIS, **extra}


def production_env(**extra: str) -> dict[str, str]:
    env = {
        "APP_ENV": "production",
        "DATABASE_URL": DB,
        "REDIS_URL": REDIS,
        "PUBLIC_BASE_URL": "https://ridechain.example.in",
        "SECRET_KEY": "9f2c1e7a-prod-secret-key-5d0b3a8e6c41",
        "OTP_KEY": "4b8e0d13-prod-otp-key-a7c2e9f05b16d3",
        "TWILIO_ACCOUNT_SID": "AC" + "0123456789abcdef" * 2,
        "TWILIO_AUTH_TOKEN": "f0e1d2c3b4a5968778695a4b3c2d1e0f",
        "RAZORPAY_KEY_ID": "rzp_live_AbCdEf123456",
        "RAZORPAY_KEY_SECRET": "live-razorpay-secret-xyz",
        "RAZORPAY_WEBHOOK_SECRET": "live-webhook-secret-xyz-0c9d8e7f6a5b",
        "OPS_PHONE": "+919812300999",
        "TWILIO_WHATSAPP_FROM": "whatsapp:+919812300998",
        "TWILIO_SMS_FROM": "+919812300998",
        "TWILIO_VOICE_NUMBER": "+918012300998",
        "METRICS_TOKEN": "metrics-Hn4Tq8Wz1Lc6Pv3Kx9Bd2Rm7Yf5Gs0",
    }
    env.update(extra)
    return env


def test_sandbox_defaults_fill_every_secret_and_point_at_the_emulators():
    s = load_settings(sandbox_env(PUBLIC_BASE_URL="http://127.0.0.1:9001/"))
    assert s.app_env == "sandbox" and s.is_sandbox and not s.is_production
    for value in (
        s.secret_key,
        s.twilio_account_sid,
        s.twilio_auth_token,
        s.razorpay_key_id,
        s.razorpay_key_secret,
        s.razorpay_webhook_secret,
    ):
        assert isinstance(value, str) and value
    assert s.otp_key and isinstance(s.otp_key, bytes)
    assert s.twilio_account_sid.startswith("AC") and len(s.twilio_account_sid) == 34
    assert s.public_base_url == "http://127.0.0.1:9001"  # trailing slash dropped
    assert s.twilio_api_base == "http://127.0.0.1:9001/sandbox/twilio"
    assert s.razorpay_api_base == "http://127.0.0.1:9001/sandbox/razorpay"
    assert s.port == 8000


def test_sandbox_public_base_url_defaults_to_the_port():
    s = load_settings(sandbox_env(PORT="8123"))
    assert s.port == 8123
    assert s.twilio_api_base == "http://127.0.0.1:8123/sandbox/twilio"


def test_production_without_secrets_names_each_missing_one():
    env = production_env()
    for name in SECRETS:
        del env[name]
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = str(info.value)
    for name in SECRETS:
        assert f"{name} is required in production" in message


def test_production_missing_one_secret_names_just_that_one():
    env = production_env()
    del env["RAZORPAY_WEBHOOK_SECRET"]
    with pytest.raises(ConfigError, match="RAZORPAY_WEBHOOK_SECRET") as info:
        load_settings(env)
    assert "TWILIO_AUTH_TOKEN" not in str(info.value)


def test_production_refuses_the_sandbox_default_token():
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN is the sandbox default"):
        load_settings(production_env(TWILIO_AUTH_TOKEN=SANDBOX_TWILIO_AUTH_TOKEN))


def test_production_with_real_secrets_loads_without_sandbox_bases():
    s = load_settings(production_env())
    assert s.is_production
    assert s.twilio_api_base is None and s.razorpay_api_base is None
    assert s.twilio_auth_token == "f0e1d2c3b4a5968778695a4b3c2d1e0f"
    assert s.otp_key == b"4b8e0d13-prod-otp-key-a7c2e9f05b16d3"


@pytest.mark.parametrize("name", ["TWILIO_API_BASE", "RAZORPAY_API_BASE"])
def test_production_never_gets_a_sandbox_base(name):
    with pytest.raises(ConfigError, match=f"{name} points at a sandbox emulator"):
        load_settings(production_env(**{name: "https://ridechain.example.in/sandbox/twilio"}))


@pytest.mark.parametrize("port", ["eighty", "0", "-1", "80.5"])
def test_bad_port_raises(port):
    with pytest.raises(ConfigError, match="PORT"):
        load_settings(sandbox_env(PORT=port))


@pytest.mark.parametrize("app_env", ["staging", "prod", "dev"])
def test_bad_app_env_raises(app_env):
    with pytest.raises(ConfigError, match="APP_ENV"):
        load_settings(sandbox_env(APP_ENV=app_env))


def test_app_env_is_case_insensitive():
    assert load_settings(production_env(APP_ENV=" Production ")).is_production


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db:5432/rc", "postgresql+psycopg://u:p@db:5432/rc"),
        ("postgresql://u@db/rc", "postgresql+psycopg://u@db/rc"),
        ("postgresql+psycopg://u@db/rc", "postgresql+psycopg://u@db/rc"),
    ],
)
def test_database_url_uses_the_psycopg_driver(given, expected):
    assert load_settings(sandbox_env(DATABASE_URL=given)).database_url == expected


def test_missing_database_and_redis_urls_raise():
    with pytest.raises(ConfigError) as info:
        load_settings({})
    assert "DATABASE_URL" in str(info.value) and "REDIS_URL" in str(info.value)


@pytest.fixture
def production_app(database):
    from core.app import create_app

    settings = load_settings(
        production_env(
            DATABASE_URL=os.environ["DATABASE_URL"],
            REDIS_URL=os.environ["REDIS_URL"],
            LOG_LEVEL="WARNING",
        )
    )
    app = create_app(settings)
    app.config["TESTING"] = True
    return app


def test_production_app_mounts_no_sandbox_route(production_app):
    rules = [rule.rule for rule in production_app.url_map.iter_rules()]
    assert rules  # the channel webhooks are there
    assert not [r for r in rules if r.startswith("/sandbox")]


def test_production_sandbox_outbox_is_a_json_404(production_app):
    resp = production_app.test_client().get("/sandbox/outbox")
    assert resp.status_code == 404
    assert resp.is_json
    assert resp.get_json()["error"]["code"] == "not_found"


def test_sandbox_app_does_mount_the_emulators(app):
    # The counterpart: the check above would pass vacuously if nothing were ever mounted.
    assert any(r.rule.startswith("/sandbox") for r in app.url_map.iter_rules())


def test_drain_linger_and_status_window_have_defaults_and_bounds():
    s = load_settings(sandbox_env())
    assert (s.drain_linger_ms, s.status_window_ms) == (500, 1000)
    s = load_settings(sandbox_env(DRAIN_LINGER_MS="0", STATUS_WINDOW_MS="0"))
    assert (s.drain_linger_ms, s.status_window_ms) == (0, 0)
    # The linger is a blocking Redis pop: it must end before the client's socket timeout.
    with pytest.raises(ConfigError, match="DRAIN_LINGER_MS must be <= 4000"):
        load_settings(sandbox_env(DRAIN_LINGER_MS="10000"))
    with pytest.raises(ConfigError, match="STATUS_WINDOW_MS must be >= 0"):
        load_settings(sandbox_env(STATUS_WINDOW_MS="-1"))


@pytest.mark.parametrize(("name", "value", "says"), [
    ("PUBLIC_BASE_URL", "", "public https URL"),
    ("PUBLIC_BASE_URL", "http://ridechain.example.in", "public https URL"),
    ("PUBLIC_BASE_URL", "https://127.0.0.1:8000", "public https URL"),
    ("OPS_PHONE", "", "OPS_PHONE is required"),
    ("OPS_PHONE", "+919000000099", "sandbox's +919000000099"),
    ("OPS_PHONE", "9812300999", "E.164"),
    ("TWILIO_SMS_FROM", "+15005550006", "sandbox's +15005550006"),
    ("TWILIO_WHATSAPP_FROM", "", "TWILIO_WHATSAPP_FROM is required"),
    ("TWILIO_VOICE_NUMBER", "+15005550006", "sandbox's"),
    # a sender Twilio would refuse, or use for the wrong channel
    ("TWILIO_WHATSAPP_FROM", "+918069451234", "whatsapp:+<E.164 number>"),
    ("TWILIO_WHATSAPP_FROM", "whatsapp:08069451234", "whatsapp:+<E.164 number>"),
    ("TWILIO_SMS_FROM", "RIDECH", "TWILIO_SMS_FROM must be an E.164 number"),
    ("TWILIO_VOICE_NUMBER", "080 6945 1234", "TWILIO_VOICE_NUMBER must be an E.164 number"),
])
def test_production_refuses_demo_urls_numbers_and_phones(name, value, says):
    env = production_env()
    if value:
        env[name] = value
    else:
        del env[name]
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_settings(env)


@pytest.mark.parametrize(("name", "value", "read"), [
    ("SERVICE_RADIUS_KM", "7.5", "core.services.booking:service_radius_m"),
    ("SERVICE_RADIUS_KM", "0", "core.services.booking:service_radius_m"),
    ("HANDOFF_REPLY_MINUTES", "5m", "core.services.handoff:reply_minutes"),
    ("HANDOFF_IDLE_HOURS", "-3", "core.services.handoff:idle_hours"),
])
def test_an_area_setting_with_a_bad_value_is_an_error_not_its_default(
        monkeypatch, name, value, read):
    import importlib

    module, function = read.split(":")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        getattr(importlib.import_module(module), function)()
    monkeypatch.setenv(name, "3")
    assert getattr(importlib.import_module(module), function)() in (3, 3000)


def test_a_port_past_65535_is_refused():
    with pytest.raises(ConfigError, match="PORT must be <= 65535, got 70000"):
        load_settings(sandbox_env(PORT="70000"))
    assert load_settings(sandbox_env(PORT="65535")).port == 65535


@pytest.mark.parametrize(("name", "value", "says"), [
    ("DRAIN_THREADS", "0", "DRAIN_THREADS must be >= 1, got 0"),
    ("DRAIN_THREADS", "17", "DRAIN_THREADS must be <= 16, got 17"),
    ("DRAIN_THREADS", "four", "DRAIN_THREADS must be an integer, got 'four'"),
    ("PAYMENT_LINK_TTL_MIN", "15", "PAYMENT_LINK_TTL_MIN must be >= 16, got 15"),
    ("PAYMENT_LINK_TTL_MIN", "half an hour", "PAYMENT_LINK_TTL_MIN must be an integer"),
    ("REFUND_ATTEMPTS", "0", "REFUND_ATTEMPTS must be >= 1, got 0"),
    ("REFUND_RETRY_MIN", "1h", "REFUND_RETRY_MIN must be an integer, got '1h'"),
    ("DISPATCH_PICKUP_MINUTES", "0", "DISPATCH_PICKUP_MINUTES must be >= 1, got 0"),
    ("RETENTION_RUN_SECONDS", "601", "RETENTION_RUN_SECONDS must be <= 600, got 601"),
    ("DISPATCH_OFFER_TIMEOUT_S", "2", "DISPATCH_OFFER_TIMEOUT_S must be >= 5, got 2"),
    ("DISPATCH_RADII_KM", "3,x", "DISPATCH_RADII_KM must be a comma-separated list"),
    ("POD_MAX_BYTES", "512", "POD_MAX_BYTES must be an integer >= 1024"),
    ("POD_STORAGE", "ftp", "POD_STORAGE must be 'local' or 's3'"),
])
def test_a_bad_setting_of_any_part_stops_the_start(name, value, says):
    """These were read only when a part first needed them: DRAIN_THREADS=17 or
    REFUND_ATTEMPTS=0 silently became the default, PAYMENT_LINK_TTL_MIN=15 failed every
    booking's link and a bad DISPATCH_* every search, long after the service started."""
    with pytest.raises(ConfigError) as err:
        load_settings(sandbox_env(**{name: value}))
    assert says in str(err.value).splitlines()[0] and len(str(err.value).splitlines()) == 1


def test_bad_settings_of_several_parts_are_named_together():
    with pytest.raises(ConfigError) as err:
        load_settings(sandbox_env(DRAIN_THREADS="0", POD_MAX_BYTES="1", PORT="0",
                                  DISPATCH_RETRY_S="0"))
    lines = str(err.value).splitlines()
    assert len(lines) == 4
    for name in ("DRAIN_THREADS", "POD_MAX_BYTES", "PORT", "DISPATCH_RETRY_S"):
        assert sum(name in line for line in lines) == 1


@pytest.mark.parametrize(("name", "value", "read"), [
    ("DRAIN_THREADS", "17", "core.services.inbound:drain_threads"),
    ("PAYMENT_LINK_TTL_MIN", "abc", "core.services.payments:payment_link_ttl"),
    ("REFUND_ATTEMPTS", "0", "core.services.payments:refund_attempts"),
    ("REFUND_RETRY_MIN", "-5", "core.services.payments:refund_retry_delay"),
])
def test_a_part_reading_a_bad_setting_names_it_instead_of_its_default(
        monkeypatch, name, value, read):
    import importlib

    module, function = read.split(":")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        getattr(importlib.import_module(module), function)()

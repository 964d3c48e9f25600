"""Production refuses sandbox and test values the first checks missed, each with a line
naming the setting and never the secret; a bad LOG_LEVEL is a config error; and
`python -m core.cli` reports a config error in those lines, not as a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import (
    SANDBOX_OTP_KEY,
    SANDBOX_RAZORPAY_KEY_SECRET,
    SANDBOX_SECRET_KEY,
    SANDBOX_TWILIO_AUTH_TOKEN,
    ConfigError,
    load_settings,
)

REPO = Path(__file__).resolve().parent.parent
SECRET_KEY = "Jm3vQ9x-kT2pW7rB5nY8cF1hL4sD6gA0eZ"  # 34 characters
OTP_KEY = "otp-7Hq2Lw9Zx4Kc1Vb8Nm5Rt3Yp6Ge0Sd"


def production_env(**extra: str) -> dict[str, str]:
    return {
        "APP_ENV": "production",
        "DATABASE_URL": "postgresql://rc@db.internal/ridechain",
        "REDIS_URL": "redis://redis.internal:6379/0",
        "PUBLIC_BASE_URL": "https://ridechain.example.in",
        "SECRET_KEY": SECRET_KEY,
        "OTP_KEY": OTP_KEY,
        "TWILIO_ACCOUNT_SID": "AC" + "0123456789abcdef" * 2,
        "TWILIO_AUTH_TOKEN": "f0e1d2c3b4a5968778695a4b3c2d1e0f",
        "RAZORPAY_KEY_ID": "rzp_live_AbCdEf123456",
        "RAZORPAY_KEY_SECRET": "Lw8Kc2Vb9Nm4Rt7Yp1Ge5Sd3",  # 24, as Razorpay issues them
        "RAZORPAY_WEBHOOK_SECRET": "hook-Qz5Xw8Ce2Rv6Tb9Yn3Um7Ik1Ol4Pa0",
        "OPS_PHONE": "+919812300999",
        "TWILIO_WHATSAPP_FROM": "whatsapp:+919812300998",
        "TWILIO_SMS_FROM": "+919812300998",
        "TWILIO_VOICE_NUMBER": "+918012300998",
        "METRICS_TOKEN": "metrics-Hn4Tq8Wz1Lc6Pv3Kx9Bd2Rm7Yf5Gs0",
        **extra,
    }


def ends_soon(name: str) -> dict[str, str]:
    """The end production asks for with an old secret (core.config.OLD_SECRETS)."""
    from datetime import timedelta

    from core import clock
    from core.config import OLD_SECRETS

    return ({f"{name}_UNTIL": (clock.now() + timedelta(days=1)).isoformat()}
            if name in OLD_SECRETS else {})


def refusal(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return str(info.value).splitlines()


def test_the_real_values_load():
    s = load_settings(production_env(RAZORPAY_API_BASE="https://api.razorpay.com/v1",
                                     TWILIO_API_BASE="https://api.twilio.com"))
    assert s.is_production and s.secret_key == SECRET_KEY
    assert s.razorpay_api_base == "https://api.razorpay.com/v1"


@pytest.mark.parametrize(("name", "value", "says"), [
    # A test-mode key takes no money: every payment link would be a dummy.
    ("RAZORPAY_KEY_ID", "rzp_test_AbCdEf123456", "must be a live-mode key id (rzp_live_"),
    ("RAZORPAY_KEY_ID", "AbCdEf123456789012", "must be a live-mode key id (rzp_live_"),
    # Any setting's sandbox default, published in core/config.py, in any secret.
    ("OTP_KEY", SANDBOX_SECRET_KEY, "another setting's sandbox default"),
    ("SECRET_KEY", SANDBOX_OTP_KEY, "another setting's sandbox default"),
    ("RAZORPAY_WEBHOOK_SECRET", SANDBOX_RAZORPAY_KEY_SECRET,
     "another setting's sandbox default"),
    ("TWILIO_AUTH_TOKEN", " " + SANDBOX_TWILIO_AUTH_TOKEN, "is the sandbox default"),
    ("SECRET_KEY", SANDBOX_SECRET_KEY + "\n", "is the sandbox default"),
    # One secret for two settings: one leak gives both away.
    ("OTP_KEY", SECRET_KEY, "OTP_KEY is the same as SECRET_KEY"),
    ("SECRET_KEY", "x", "too short: at least 32 characters"),
    ("SECRET_KEY", SECRET_KEY[:31], "too short: at least 32 characters"),
    ("OTP_KEY", "changeme", "too short: at least 32 characters"),
    ("RAZORPAY_WEBHOOK_SECRET", "hook-secret", "too short: at least 32 characters"),
    ("RAZORPAY_KEY_SECRET", "secret", "too short: at least 16 characters"),
    ("TWILIO_AUTH_TOKEN", "token", "too short: at least 16 characters"),
    # Pasted with a line break or a space: refused, not stripped (README: Configuration).
    ("SECRET_KEY", SECRET_KEY + "\n", "starts or ends with a space or line break"),
    ("TWILIO_AUTH_TOKEN", " f0e1d2c3b4a5968778695a4b3c2d1e0f",
     "starts or ends with a space or line break"),
    # The credentials go with every call: never over plain http.
    ("RAZORPAY_API_BASE", "http://api.razorpay.com/v1", "must be an https URL"),
    ("RAZORPAY_API_BASE", "http://127.0.0.1:9000/v1", "must be an https URL"),
    ("TWILIO_API_BASE", "http://api.twilio.com", "must be an https URL"),
    ("TWILIO_API_BASE", "api.twilio.com", "must be an https URL"),
    ("OPS_PHONE", "+919000000001", "a demo partner's number"),
])
def test_production_refuses_a_sandbox_or_test_value_in_a_line_naming_it(name, value, says):
    lines = refusal(production_env(**{name: value}))
    assert [line for line in lines if line.startswith(f"{name} ") and says in line], lines
    if len(value.strip()) >= 8:  # (a shorter one could be part of a word)
        assert value.strip() not in "\n".join(lines)  # a value is never shown


def test_a_secret_shared_by_two_settings_names_both():
    lines = refusal(production_env(RAZORPAY_WEBHOOK_SECRET=SECRET_KEY))
    assert lines == ["RAZORPAY_WEBHOOK_SECRET is the same as SECRET_KEY; give each its own"]


def test_a_secret_of_exactly_32_characters_is_long_enough():
    assert load_settings(production_env(SECRET_KEY=SECRET_KEY[:32])).secret_key


def test_each_problem_is_a_line_of_its_own():
    lines = refusal(production_env(SECRET_KEY="x", RAZORPAY_KEY_ID="rzp_test_AbCdEf123456",
                                   TWILIO_API_BASE="http://api.twilio.com"))
    assert [line.split()[0] for line in lines] == [
        "SECRET_KEY", "RAZORPAY_KEY_ID", "TWILIO_API_BASE"]


def test_the_sandbox_keeps_its_defaults_and_plain_http_emulators():
    s = load_settings({"DATABASE_URL": "postgresql://u@127.0.0.1/rc",
                       "REDIS_URL": "redis://127.0.0.1:6379/0",
                       "TWILIO_API_BASE": "http://127.0.0.1:8000/sandbox/twilio",
                       "RAZORPAY_API_BASE": "http://127.0.0.1:8000/sandbox/razorpay"})
    assert s.is_sandbox and s.secret_key == SANDBOX_SECRET_KEY
    assert s.razorpay_key_id.startswith("rzp_test_")
    assert s.twilio_api_base == "http://127.0.0.1:8000/sandbox/twilio"


@pytest.mark.parametrize(("given", "level"), [("", "INFO"), ("warning", "WARNING"),
                                              (" Debug ", "DEBUG"), ("ERROR", "ERROR"),
                                              ("warn", "WARNING"), ("FATAL", "CRITICAL")])
def test_log_level_names_a_level(given, level):
    assert load_settings(production_env(LOG_LEVEL=given)).log_level == level


@pytest.mark.parametrize("app_env", ["sandbox", "production"])
def test_an_unknown_log_level_is_a_config_error_not_a_crash_later(app_env):
    """It passed before, and logging.setLevel raised ValueError when the logs were set up."""
    lines = refusal(production_env(APP_ENV=app_env, LOG_LEVEL="verbose"))
    assert lines == ["LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, "
                     "got 'verbose'"]


def cli(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m core.cli <argv>`` with only ``env`` (and PATH) in its environment."""
    return subprocess.run([sys.executable, "-m", "core.cli", *argv], cwd=REPO,
                          env={"PATH": os.environ.get("PATH", ""), **env},
                          capture_output=True, text=True, timeout=120)


def test_the_cli_names_a_missing_setting_without_a_traceback():
    done = cli("migrate", APP_ENV="production")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == ("python -m core.cli migrate: the environment is not a usable "
                        "configuration (README: Configuration):")
    assert "  DATABASE_URL is required (./run serve sets it for the embedded server)" in lines
    assert "  SECRET_KEY is required in production" in lines


def test_the_cli_refuses_an_unknown_log_level_without_a_traceback():
    env = production_env(LOG_LEVEL="verbose", SECRET_KEY="s3cr3t")
    done = cli("release", **env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "s3cr3t" not in done.stderr + done.stdout
    assert done.stderr.splitlines()[1:] == [
        "  SECRET_KEY is too short: at least 32 characters",
        "  LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'verbose'"]


def test_the_web_names_a_missing_setting_once_without_a_traceback(tmp_path):
    """gunicorn's master checks the settings before any worker boots: one message, exit 2
    (each worker used to print a traceback, then the master "Worker failed to boot")."""
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    done = subprocess.run(
        [gunicorn, "--config", "python:core.web.gunicorn_conf", "--bind", "127.0.0.1:0",
         "--workers", "1", "core.app:create_app()"], cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "APP_ENV": "production",
             "DATA_DIR": str(tmp_path)},
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.count("web: the environment is not a usable configuration") == 1
    assert "  SECRET_KEY is required in production" in done.stderr.splitlines()


def test_every_bad_number_is_named_at_once():
    """A bad whole-number setting used to stop the check at the first one: an operator
    fixed PORT, restarted, and only then heard about PROXY_HOPS."""
    lines = refusal(production_env(PORT="eighty", PROXY_HOPS="9", SECRET_KEY="short"))
    assert "PORT must be an integer, got 'eighty'" in lines
    assert "PROXY_HOPS must be <= 5, got 9" in lines
    assert "SECRET_KEY is too short: at least 32 characters" in lines


@pytest.mark.parametrize(("keys", "line"), [
    ("tooshort", "TWILIO_WEBHOOK_SHARED_KEY is too short: at least 16 characters each"),
    (f"{'k' * 20}, {SECRET_KEY}",
     "TWILIO_WEBHOOK_SHARED_KEY is the same as another secret; give each its own"),
])
def test_the_shared_webhook_key_gets_the_secret_checks(keys, line):
    lines = refusal(production_env(TWILIO_WEBHOOK_SHARED_KEY=keys))
    assert lines == [line] and keys.split(",")[-1].strip() not in "\n".join(lines)


def test_a_sandbox_secret_as_shared_webhook_key_is_refused():
    from core.config import SANDBOX_SECRETS

    sandbox = sorted(SANDBOX_SECRETS)[0]
    lines = refusal(production_env(TWILIO_WEBHOOK_SHARED_KEY=sandbox))
    assert lines == ["TWILIO_WEBHOOK_SHARED_KEY holds a sandbox default; set a real secret"]


def test_two_good_shared_webhook_keys_while_rotating_load():
    keys = f"{'a1' * 10},{'b2' * 10}"
    assert load_settings(production_env(TWILIO_WEBHOOK_SHARED_KEY=keys)
                         ).twilio_webhook_shared_key == keys


def test_the_previous_razorpay_webhook_secret_is_not_a_sandbox_default_nor_the_current():
    from core.config import SANDBOX_RAZORPAY_WEBHOOK_SECRET

    env = production_env()
    for previous in (SANDBOX_RAZORPAY_WEBHOOK_SECRET, env["RAZORPAY_WEBHOOK_SECRET"]):
        with pytest.raises(ConfigError, match="RAZORPAY_WEBHOOK_SECRET_PREVIOUS"):
            load_settings({**env, "RAZORPAY_WEBHOOK_SECRET_PREVIOUS": previous})
    fine = load_settings({**env, "RAZORPAY_WEBHOOK_SECRET_PREVIOUS": "the-old-one-7f6e5d4c3b2a1",
                          **ends_soon("RAZORPAY_WEBHOOK_SECRET_PREVIOUS")})
    assert fine.razorpay_webhook_previous == ("the-old-one-7f6e5d4c3b2a1",)


@pytest.mark.parametrize("name", ["TWILIO_WEBHOOK_SHARED_KEY", "RAZORPAY_WEBHOOK_SECRET_PREVIOUS"])
@pytest.mark.parametrize("pad", [" ", "\n", "\t"])
def test_a_padded_list_of_secrets_is_refused_not_trimmed(name, pad):
    """A single secret with a space or line break around it was refused while these lists
    were trimmed: a pasted-wrong value passed here and nowhere else."""
    keys = f"{'a1' * 10},{'b2' * 10}"
    for value in (keys + pad, pad + keys):
        lines = refusal(production_env(**{name: value}))
        assert lines == [f"{name} starts or ends with a space or line break; remove it"]
        assert "a1a1" not in "\n".join(lines)
    # A space next to the comma separates; it is not part of a secret.
    assert load_settings(production_env(**{name: keys.replace(",", ", ")}, **ends_soon(name)))


@pytest.mark.parametrize("other", ["SECRET_KEY", "OTP_KEY", "TWILIO_AUTH_TOKEN",
                                   "RAZORPAY_KEY_SECRET", "RAZORPAY_WEBHOOK_SECRET"])
def test_the_previous_webhook_secret_is_no_other_settings_secret(other):
    """It was compared only with the current webhook secret: the previous one being the
    sign-in key or the auth token passed, one leaked secret giving away another."""
    env = production_env()
    lines = refusal({**env, "RAZORPAY_WEBHOOK_SECRET_PREVIOUS": f"old-one-0123456789,{env[other]}"})
    assert lines == ["RAZORPAY_WEBHOOK_SECRET_PREVIOUS is the same as another secret; give "
                     "each its own"]


def test_a_short_previous_webhook_secret_may_be_rotated_away_from():
    """The secret a rotation replaces may be one set up before the length rule."""
    assert load_settings(production_env(RAZORPAY_WEBHOOK_SECRET_PREVIOUS="old12345",
                                        **ends_soon("RAZORPAY_WEBHOOK_SECRET_PREVIOUS")))\
        .razorpay_webhook_previous == ("old12345",)

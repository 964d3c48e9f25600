"""An operator's first day in production, README's "Setting up production" and "Running in
production" followed to the letter (review r10): settings the checks let through that break
the service silently, and a README setting that stops the release with a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from core.config import ConfigError, load_settings
from tests.test_config_urls import production_env

ROOT = Path(__file__).resolve().parent.parent
BOUND_S = 120  # a bound for a broken run, never a wait the test relies on


def _refused_or(env: dict[str, str], name: str):
    """The settings ``env`` loads to, or None when they are refused with a line naming
    ``name`` (either is a fix; taking the value as it is, is not)."""
    try:
        return load_settings(env)
    except ConfigError as err:
        assert name in str(err), str(err)
        return None


# ------------------------------------------------------------------ values pasted with padding


@pytest.mark.parametrize("value", ["https://ridechain.example.in\n",
                                   "https://ridechain.example.in ",
                                   " https://ridechain.example.in"])
def test_a_public_base_url_pasted_with_a_space_or_line_break_is_refused_or_trimmed(value):
    """An operator sets PUBLIC_BASE_URL from a file or a secret store that keeps the line
    break (`kubectl create secret --from-file`, `heroku config:set X="$(cat f)"` of a file
    an editor ended with a newline). core/config.py refuses a padded secret, but takes
    this URL as it is: urlsplit drops the line break when checking it, while the value
    kept still has it. Every Twilio signature is then checked against
    "https://ridechain.example.in\\n/webhooks/whatsapp" (core/web/twilio_request.py
    public_url), so every WhatsApp message, partner SMS and call is answered 403, and
    every status callback, Gather action URL and payment link we hand out carries the
    line break. The operator should be told at start (a line naming PUBLIC_BASE_URL), or
    the value trimmed, as LOG_LEVEL, APP_ENV and OPS_PHONE are."""
    settings = _refused_or(production_env(PUBLIC_BASE_URL=value), "PUBLIC_BASE_URL")
    if settings is not None:
        assert settings.public_base_url == "https://ridechain.example.in"


@pytest.mark.parametrize("value", ["postgresql://rc@db.internal/ridechain\n",
                                   " postgresql://rc@db.internal/ridechain"])
def test_a_database_url_pasted_with_a_space_or_line_break_is_refused_or_trimmed(value):
    """DATABASE_URL (it usually carries the password, so it comes from the same secret
    store) pasted with a trailing line break passes the checks, and SQLAlchemy reads the
    database name as "ridechain\\n". The release's migrate does not find that database,
    so ensure_database (core/cli.py) CREATES a new, empty one named "ridechain\\n" beside
    the real one, migrates it and exits 0: the web and workers then serve an empty
    database (no operators, Points or partners; bookings of yesterday gone from sight),
    with nothing in the logs but "created database". A leading space instead ends the
    release in a traceback (sqlalchemy's ArgumentError "Could not parse SQLAlchemy URL"),
    not the configuration message. Either should be refused at start naming
    DATABASE_URL, or trimmed."""
    settings = _refused_or(production_env(DATABASE_URL=value), "DATABASE_URL")
    if settings is not None:
        assert settings.database_url == settings.database_url.strip()
        assert make_url(settings.database_url).database == "ridechain"


# ------------------------------------------------------------------ a URL Twilio cannot reach


@pytest.mark.parametrize("value", ["https://127.0.1.1", "https://10.0.0.5",
                                   "https://192.168.1.20", "https://[::ffff:127.0.0.1]"])
def test_a_public_base_url_on_a_loopback_or_private_address_is_refused_in_production(value):
    """README: production needs "PUBLIC_BASE_URL (https, public)" and refuses a default;
    core/config.py refuses only the four spellings in LOOPBACK_HOSTS. 127.0.1.1 (where
    Debian and Ubuntu put the machine's own name), any other 127.x, an IPv4-mapped
    loopback and the private ranges (the load balancer's inside address) are taken: Twilio
    and Razorpay can reach none of them, so every Gather action URL (the second turn of
    every call), status callback and payment link's callback fails, and Twilio's
    signatures on the public URL never match. Production should refuse a loopback or
    private address with the same line as a loopback one."""
    with pytest.raises(ConfigError) as info:
        load_settings(production_env(PUBLIC_BASE_URL=value))
    assert "PUBLIC_BASE_URL" in str(info.value)


# ------------------------------------------------------------------ OPS_PHONE is ours


@pytest.mark.parametrize("number_of", ["TWILIO_SMS_FROM", "TWILIO_VOICE_NUMBER"])
def test_ops_phone_that_is_one_of_our_twilio_numbers_is_refused(number_of):
    """A newcomer reading "OPS_PHONE: operators' mobile ... people are told to call it"
    next to "our Twilio numbers" may well set OPS_PHONE to the service's own number
    (the one people call). Then every ops alert is an SMS from TWILIO_SMS_FROM to itself,
    which Twilio refuses (error 21266, 'To' and 'From' cannot be the same): ops never
    hear of a code that reached nobody or a stuck refund. With the voice number,
    "talk to a person" dials our own IVR, which answers the screening call with the
    booking menu instead of an operator. Production should refuse an OPS_PHONE that is
    one of our Twilio numbers, naming OPS_PHONE."""
    env = production_env()
    with pytest.raises(ConfigError) as info:
        load_settings({**env, "OPS_PHONE": env[number_of]})
    assert "OPS_PHONE" in str(info.value)


# ------------------------------------------------------------------ PROMETHEUS_MULTIPROC_DIR


def _cli(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m core.cli <argv>` with this run's settings, ``env`` on top."""
    return subprocess.run([sys.executable, "-m", "core.cli", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=BOUND_S,
                          env={**os.environ, "APP_ENV": "sandbox", "LOG_LEVEL": "WARNING",
                               **env})


@pytest.mark.parametrize("argv", [("migrate",), ("add-operator", "--phone", "+919812300071")])
def test_a_metrics_directory_gunicorn_has_not_made_yet_does_not_stop_the_release(
        clean_db, tmp_path, argv):
    """README's Configuration table offers PROMETHEUS_MULTIPROC_DIR ("where the web
    workers keep their request metrics"), so an operator sets it in the environment all
    processes share (a platform's config vars, a systemd EnvironmentFile). Only gunicorn
    makes the directory (core/web/gunicorn_conf.py on_starting), and README says to run
    `release` first: migrate (and every set-up command, through check_schema) imports
    core.web.ops, whose module-level Counter makes prometheus_client open
    <dir>/counter_<pid>.db at import. The release dies with FileNotFoundError and a
    traceback, the deploy stops, and on a platform whose release runs on a fresh
    filesystem (Heroku's release phase) it fails on every deploy. Migrate and the set-up
    commands should work whatever that directory's state (make it, or not count in files
    outside gunicorn)."""
    metrics = tmp_path / "metrics"
    done = _cli(*argv, PROMETHEUS_MULTIPROC_DIR=str(metrics))
    said = done.stdout + done.stderr
    assert "Traceback" not in said, said[-1500:]
    assert done.returncode == 0, said[-1500:]
    # Fixed by core.adapters.schema: the commands no longer import the web's metrics, so
    # they count nothing into the web's directory (nor make it).
    assert not metrics.exists()

"""Session 34, deployment safety: a deploy with production settings but no APP_ENV is
refused (it would start a public sandbox); the sandbox's routes answer this machine only
unless SANDBOX_PUBLIC=1; the emulator's Pay button clicked twice pays once."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
import requests

from core.config import (
    SANDBOX_SECRET_KEY,
    SANDBOX_TWILIO_AUTH_TOKEN,
    ConfigError,
    get_settings,
    load_settings,
)
from tests.test_config_production import production_env

BASE = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/ridechain",
        "REDIS_URL": "redis://127.0.0.1:6379/0"}


# --- 1. production settings without APP_ENV ------------------------------------------------

def test_production_settings_without_app_env_are_refused_in_one_line():
    """Every production value set, APP_ENV forgotten (its default is sandbox): the web
    would bind 0.0.0.0 with /sandbox/outbox showing every sign-in code, the release would
    seed a demo operator, and messages and payments would go to the emulators."""
    env = production_env()
    del env["APP_ENV"]
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = str(info.value)
    assert message.splitlines() == [message]  # one clear line, not a list of problems
    assert message.startswith("APP_ENV is not set but production settings were given")
    assert "set APP_ENV=production, or APP_ENV=sandbox for a demo" in message
    for name in ("PUBLIC_BASE_URL", "RAZORPAY_KEY_ID", "TWILIO_AUTH_TOKEN", "SECRET_KEY"):
        assert name in message
    for name in ("SECRET_KEY", "TWILIO_AUTH_TOKEN", "RAZORPAY_KEY_SECRET", "METRICS_TOKEN"):
        assert env[name] not in message  # names, never values


@pytest.mark.parametrize("setting", [
    {"RAZORPAY_KEY_ID": "rzp_live_AbCdEf123456"},
    {"PUBLIC_BASE_URL": "https://ridechain.example.in"},
    {"TWILIO_AUTH_TOKEN": "f0e1d2c3b4a5968778695a4b3c2d1e0f"},
    {"SECRET_KEY": "a-real-secret-key-of-forty-characters-xx"},
    {"RAZORPAY_WEBHOOK_SECRET_PREVIOUS": "old-hook-secret"},
])
def test_any_one_production_setting_without_app_env_is_refused(setting):
    with pytest.raises(ConfigError, match=f"APP_ENV is not set.*{next(iter(setting))}"):
        load_settings({**BASE, **setting})


@pytest.mark.parametrize("setting", [
    {},  # ./run serve: nothing configured
    {"PUBLIC_BASE_URL": "http://127.0.0.1:8000", "PORT": "8000"},  # ./run test, bench
    {"PUBLIC_BASE_URL": "https://10.0.0.5:8443"},  # this machine's network, not public
    {"PUBLIC_BASE_URL": "http://demo.example.in"},  # not https: production refuses it
    {"SECRET_KEY": SANDBOX_SECRET_KEY, "TWILIO_AUTH_TOKEN": SANDBOX_TWILIO_AUTH_TOKEN,
     "RAZORPAY_KEY_ID": "rzp_test_sandbox"},  # the sandbox's own values, written out
])
def test_a_sandbox_without_app_env_still_starts(setting):
    assert load_settings({**BASE, **setting}).is_sandbox


def test_an_explicit_sandbox_keeps_a_tunnelled_demo_working():
    """APP_ENV=sandbox said: a public https URL (a tunnel) and real-looking secrets load."""
    env = production_env(APP_ENV="sandbox", PUBLIC_BASE_URL="https://abc123.ngrok-free.app")
    assert load_settings(env).is_sandbox


def test_the_ci_smoke_environment_still_starts(tmp_path: Path):
    """ops.smoke runs `./run serve` with this process's environment less APP_ENV (and the
    service URLs): it is the sandbox, as before."""
    from ops.smoke import serve_env

    env = serve_env(8123, tmp_path)
    assert "APP_ENV" not in env
    assert load_settings({**env, **BASE}).is_sandbox


def test_the_release_refuses_production_settings_without_app_env(monkeypatch, capsys):
    """The Procfile's release: it would have migrated and seeded a demo operator (who can
    sign in) into the production database. It stops first, exit 2, saying why."""
    from core import cli
    from core.config import reset_settings

    monkeypatch.delenv("APP_ENV")
    monkeypatch.setenv("RAZORPAY_KEY_ID", "rzp_live_AbCdEf123456")
    reset_settings()
    try:
        code = cli.main(["release"])
    finally:
        monkeypatch.undo()
        reset_settings()
    assert code == 2
    assert "APP_ENV is not set but production settings were given (RAZORPAY_KEY_ID)" \
        in capsys.readouterr().err


def test_sandbox_public_is_an_on_off_setting():
    assert load_settings(BASE).sandbox_public is False
    assert load_settings({**BASE, "SANDBOX_PUBLIC": "1"}).sandbox_public is True
    with pytest.raises(ConfigError, match="SANDBOX_PUBLIC must be on or off"):
        load_settings({**BASE, "SANDBOX_PUBLIC": "maybe"})


# --- 2. the sandbox's routes answer this machine only ---------------------------------------

STRANGER = "203.0.113.9"


@pytest.mark.db
@pytest.mark.parametrize("path", ["/sandbox/outbox", "/sandbox/payment_links/plink_x",
                                  "/sandbox/twilio/2010-04-01/Accounts/AC1/Messages.json"])
def test_the_sandbox_refuses_a_client_of_another_machine(client, path):
    """/sandbox/outbox shows every sign-in code, with no sign-in: from another machine
    (a sandbox reachable on a network) anyone could sign in as anyone, ops too."""
    r = client.get(path, environ_base={"REMOTE_ADDR": STRANGER})
    assert r.status_code == 403
    assert r.get_json()["error"]["code"] == "sandbox_local_only"
    assert "SANDBOX_PUBLIC=1" in r.get_json()["error"]["message"]


@pytest.mark.db
@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.1.1", "::1"])
def test_the_sandbox_answers_this_machine(client, address):
    r = client.get("/sandbox/outbox", environ_base={"REMOTE_ADDR": address})
    assert r.status_code == 200, r.get_data(as_text=True)


@pytest.mark.db
def test_the_sandbox_refuses_a_stranger_forwarded_by_a_proxy_here(clean_db):
    """A tunnel's agent or a proxy on this machine (PROXY_HOPS=1): the client is the one
    it forwarded, not the proxy's loopback address."""
    from core.app import create_app

    app = create_app(dataclasses.replace(get_settings(), proxy_hops=1))
    r = app.test_client().get("/sandbox/outbox", headers={"X-Forwarded-For": STRANGER})
    assert r.status_code == 403


@pytest.mark.db
def test_sandbox_public_opens_the_sandbox_to_other_machines(client, monkeypatch):
    from sandbox import access

    opened = dataclasses.replace(get_settings(), sandbox_public=True)
    monkeypatch.setattr(access, "get_settings", lambda: opened)
    r = client.get("/sandbox/outbox", environ_base={"REMOTE_ADDR": STRANGER})
    assert r.status_code == 200


# --- 3. the Pay button clicked twice -------------------------------------------------------

@pytest.mark.db
def test_a_double_click_on_the_sandbox_pay_button_captures_once(live, monkeypatch):
    """Two POSTs /sandbox/payment_links/<id>/pay together: both read the link "created";
    the emulator captured two payments (and sent two payment.captured / payment_link.paid
    pairs) where Razorpay pays a link once. The first click is held in its capture while
    the second arrives."""
    import sandbox.razorpay as emu
    from core.adapters import razorpay_gateway as gw

    link = gw.client().payment_link.create({"amount": 5000, "currency": "INR",
                                            "reference_id": "S34-DOUBLE-1"})
    real = emu._attempt
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def held(link_obj, status):
        calls.append(status)
        if len(calls) == 1:  # the first click waits, inside its capture, for the second
            entered.set()
            release.wait(timeout=10)
        return real(link_obj, status)

    monkeypatch.setattr(emu, "_attempt", held)
    first: list[requests.Response] = []
    click = threading.Thread(target=lambda: first.append(
        requests.post(link["short_url"] + "/pay", timeout=15)))
    click.start()
    try:
        assert entered.wait(timeout=10), "the first click never reached its capture"
        second = requests.post(link["short_url"] + "/pay", timeout=15)
    finally:
        release.set()
        click.join(timeout=15)
    assert first and first[0].status_code == 200, first
    assert second.status_code == 400, second.text
    assert second.json()["error"]["description"] == "Payment Link is paid"
    captured = [p for p in emu._all("payment") if p["status"] == "captured"]
    assert len(captured) == 1
    assert emu.get_object(link["id"])["status"] == "paid"
    # Clicked again later: paid, as before.
    again = requests.post(link["short_url"] + "/pay", timeout=15)
    assert again.status_code == 400
    assert again.json()["error"]["description"] == "Payment Link is paid"

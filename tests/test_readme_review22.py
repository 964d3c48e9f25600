"""What a walk through the README found: the sign-in code's sandbox address as printed
(an unencoded "+"), an empty Idempotency-Key (`$(uuidgen)` where uuidgen is missing)
taken as none, and `./run chat` showing follow-ups only after the next typed line. Each
test failed on the code before its fix."""

from __future__ import annotations

import threading

import pytest
import requests

from core.adapters.db import transaction
from core.adapters.models import SandboxMessage
from core.config import get_settings
from ops import chat as chat_tool
from tests.test_api import API, book, sign_in

pytestmark = pytest.mark.db

PHONE = "+919812345678"  # the README's number


def test_the_sandbox_outbox_as_the_readme_prints_it_finds_the_sign_in_code(client, live):
    assert client.post(f"{API}/auth/otp", json={"phone": PHONE}).status_code == 202
    from tests.conftest import run_jobs

    run_jobs()
    # curl sends the "+" unencoded, which a query string reads as a space.
    r = requests.get(f"{live.base_url}/sandbox/outbox?to=+919812345678", timeout=5)
    assert r.status_code == 200
    assert [m for m in r.json() if m["to"] == PHONE], r.json()


def test_an_empty_idempotency_key_is_refused_not_taken_as_none(client, live):
    from core.services.seed import seed_demo

    seed_demo()
    headers = sign_in(client, PHONE)
    r = book(client, {**headers, "Idempotency-Key": ""})
    assert r.status_code == 422, r.get_json()
    error = r.get_json()["error"]
    assert error["field"] == "Idempotency-Key" and "empty" in error["message"]
    r = book(client, {**headers, "Idempotency-Key": "   "})
    assert r.status_code == 422
    r = book(client, headers)
    assert r.status_code == 201, r.get_json()  # no header at all: as before


def _message(to: str, body: str) -> None:
    with transaction() as s:
        s.add(SandboxMessage(sid=f"SMrw{abs(hash(body)) % 10**28:028d}", account_sid="AC",
                             channel="whatsapp", to_addr=to, from_addr="whatsapp:+14155238886",
                             body=body, status="delivered"))


def test_chat_shows_a_follow_up_without_waiting_for_the_next_line(live, capsys):
    phone = "+919812399997"
    chat = chat_tool.Chat(live.base_url, phone, get_settings().twilio_auth_token, "Chat")
    chat.skip_old_messages()
    _message(f"whatsapp:{phone}", "We got your payment of Rs 64.")
    assert chat_tool.watch_once(chat) == ["We got your payment of Rs 64."]
    out = capsys.readouterr().out
    assert "We got your payment of Rs 64." in out and out.rstrip().endswith("you>")
    assert chat_tool.watch_once(chat) == []  # shown once

    # While a typed line is answered, its own reading shows what comes: the watcher waits.
    _message(f"whatsapp:{phone}", "Your rider is on the way.")
    with chat.lock:
        assert chat_tool.watch_once(chat) == []
    assert chat.follow_ups() == ["Your rider is on the way."]


def test_chat_starts_its_watcher_only_on_a_terminal(live, monkeypatch):
    watching = threading.Event()
    monkeypatch.setattr(chat_tool, "_watch", lambda chat, stop: watching.set())
    monkeypatch.setattr("builtins.input", lambda prompt="": "/quit")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    assert chat_tool.main(["--url", live.base_url, "--phone", "+919812399996"]) == 0
    assert not watching.is_set()  # piped input: no watcher
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    assert chat_tool.main(["--url", live.base_url, "--phone", "+919812399996"]) == 0
    assert watching.wait(10), "no watcher on a terminal"

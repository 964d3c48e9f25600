"""Reviewer r5: the README's promises against the code (and the OpenAPI document the
service serves against what its routes answer). Each test fails on the code as reviewed."""

from __future__ import annotations

import re

import pytest
import redis
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import Person, SandboxMessage
from tests.conftest import run_jobs
from tests.test_api import API, sign_in

pytestmark = pytest.mark.db

PHONE = "+919812345678"  # the README's number


def _ask_code(client, phone: str, ip: str):
    return client.post(f"{API}/auth/otp", json={"phone": phone},
                       environ_base={"REMOTE_ADDR": ip})


# --- 1. an ask the phone's own limit refused still uses up the address's hour ---------

def test_an_ask_refused_by_the_phones_limit_does_not_count_against_the_address(client):
    """README (OTP_FAILURES_PER_DAY): "one address may ask for 20 in any hour (refused
    foreign numbers count; sliding windows, a refused ask counts in none)". The per-IP
    count is taken before the phone's 3-in-10-minutes limit is checked, so every "resend"
    the phone's limit refuses (429) still uses up the address's 20: one impatient user
    behind a shared (carrier NAT) address locks everyone there out of sign-in for an hour."""
    ip = "203.0.113.77"
    first = [_ask_code(client, "+919812300601", ip).status_code for _ in range(3)]
    assert first == [202, 202, 202]
    refused = [_ask_code(client, "+919812300601", ip).status_code for _ in range(17)]
    assert set(refused) == {429}  # the phone's own limit: 3 codes in 10 minutes
    # Only 3 asks of this address were counted: another phone there may still sign in.
    r = _ask_code(client, "+919812300602", ip)
    assert r.status_code == 202, (
        f"after 3 codes sent and 17 asks refused, the address is refused: {r.get_json()}")


# --- 2. the erasures' 503 is not in the OpenAPI document --------------------------------

def test_every_status_the_erase_routes_answer_is_in_the_openapi_document(client, monkeypatch):
    """An erasure refuses to go on while the chat queue (Redis) is away: 503
    queue_unavailable, "nothing was erased; try again" (retention._erase_dead_letters,
    for a person, a partner and a recipient). The OpenAPI document lists 404/409/422 for
    these routes, not 503: a client generated from it treats the retryable answer as an
    undocumented failure (the photo and reversed-payout routes list their 503)."""
    from core.services import inbound

    headers = sign_in(client, "+919812300699", role="ops")
    with transaction() as s:
        person = Person(phone="+919812300698", name="Meena", role="customer")
        s.add(person)
        s.flush()
        person_id = person.id
    away = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    monkeypatch.setattr(inbound, "redis_client", lambda: away)
    r = client.post(f"{API}/ops/people/{person_id}/erase", json={"reason": "her request"},
                    headers=headers)
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "queue_unavailable"
    r2 = client.post(f"{API}/ops/recipients/erase",
                     json={"phone": "+919812300697", "reason": "her request"}, headers=headers)
    monkeypatch.undo()
    doc = client.get(f"{API}/openapi.json").get_json()["paths"]
    answered = {("/api/v1/ops/people/{person_id}/erase", r.status_code),
                ("/api/v1/ops/recipients/erase", r2.status_code)}
    missing = [(path, status) for path, status in sorted(answered)
               if str(status) not in doc[path]["post"]["responses"]]
    assert not missing, f"answered but not documented: {missing}"


# --- 3. the sandbox outbox the README points at hides the newest messages --------------

def test_the_sandbox_outbox_shows_the_newest_sign_in_code_after_a_long_chat(client, live):
    """README: read the sign-in code "at GET /sandbox/outbox?to=+919812345678". The
    outbox answers the oldest 200 messages to that number (WhatsApp replies included),
    so after a long chat the code just sent is not in the answer, and the oldest code
    shown is one that no longer works."""
    import requests

    with transaction() as s:
        for i in range(200):
            s.add(SandboxMessage(sid=f"SMrev5{i:026d}", account_sid="AC", channel="whatsapp",
                                 to_addr=f"whatsapp:{PHONE}", from_addr="whatsapp:+14155238886",
                                 body=f"Reply {i} of a long chat.", status="delivered"))
    assert client.post(f"{API}/auth/otp", json={"phone": PHONE}).status_code == 202
    run_jobs()
    with transaction() as s:
        sent = s.scalar(select(SandboxMessage.body).where(SandboxMessage.to_addr == PHONE)
                        .order_by(SandboxMessage.id.desc()).limit(1))
    code = re.search(r"\d{6}", sent or "")
    assert code, "the sign-in SMS reached the emulator"
    shown = requests.get(f"{live.base_url}/sandbox/outbox?to=+919812345678", timeout=10).json()
    assert any(code.group(0) in (m["body"] or "") for m in shown), (
        f"{len(shown)} messages shown, the newest sign-in code not among them")


# --- 4. behind a proxy at a path, the OpenAPI document sends clients to the host root ---

def test_the_openapi_servers_url_keeps_a_public_base_urls_path(client, monkeypatch):
    """README: PUBLIC_BASE_URL "may have a path (https://host/rc)", the app behind a proxy
    there (the IVR's URLs are built on it, test_ivr_gaps). The API is "described at
    /api/v1/openapi.json", whose servers entry is "/": resolved against the document's
    public URL it is the host's root, so a client generated from the document calls
    https://host/api/v1/... , outside the service, instead of https://host/rc/api/v1/..."""
    from urllib.parse import urljoin

    from core.config import get_settings, reset_settings

    monkeypatch.setenv("PUBLIC_BASE_URL", "https://ridechain.example/rc")
    reset_settings()
    try:
        base = get_settings().public_base_url
        doc = client.get(f"{API}/openapi.json").get_json()
        documented = f"{base}{API}/openapi.json"  # where the client fetched it
        assert "/api/v1/quotes" in doc["paths"]
        server = urljoin(documented, doc["servers"][0]["url"])
        called = server.rstrip("/") + "/api/v1/quotes"
        assert called == f"{base}/api/v1/quotes", (
            f"a generated client would call {called}")
    finally:
        monkeypatch.undo()
        reset_settings()


# --- 5. a search radius of inf or nan is taken at start ---------------------------------

@pytest.mark.parametrize("value", ["3,6,inf", "nan", "Infinity"])
def test_a_radius_that_is_not_a_finite_number_stops_the_start(value):
    """DISPATCH_RADII_KM is read as floats and refused only when <= 0: "inf" (a search
    that offers a job to partners anywhere) and "nan" (no distance is within it, nor
    beyond it) were accepted at start. The start refuses them, naming the setting."""
    from core.config import ConfigError, load_settings
    from tests.test_config import sandbox_env

    with pytest.raises(ConfigError) as err:
        load_settings(sandbox_env(DISPATCH_RADII_KM=value))
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and "DISPATCH_RADII_KM" in lines[0], lines

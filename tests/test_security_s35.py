"""Security fixes after review 35 (session 35).

1. Ops could not end a partner's sign-in: a partner's phone stolen, his token stayed good
   for 30 days, and suspending him and verifying him again made the thief's token a full
   partner token again. A KYC move to suspended or rejected now ends all his sessions
   (audited with it), and POST /api/v1/ops/people/<id>/sign-out (and `sign-out-person`)
   signs anyone out everywhere.
2. sandbox.access.local_only trusted any loopback address, even a request a tunnel's
   agent (ngrok, cloudflared: connecting from 127.0.0.1) forwarded with X-Forwarded-For:
   with PROXY_HOPS=0 anyone on the internet read every sign-in code at /sandbox/outbox.
3. The Razorpay emulator's Basic auth compared str with secrets.compare_digest, which
   raises TypeError on non-ASCII text: a 500 where a 401 belongs.
"""

from __future__ import annotations

import base64
import dataclasses

import pytest
from sqlalchemy import select

from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage, PartnerProfile, Person
from core.config import get_settings
from tests.test_admin import _keep_root_handlers, run  # noqa: F401  (autouse fixture)
from tests.test_api import API, PHONE, sign_in

pytestmark = pytest.mark.db

OPS_PHONE = "+919000000099"  # the demo operator (seed_demo)
STRANGER = "203.0.113.9"


def _audits(action: str) -> list[AuditEntry]:
    with transaction() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action)
                              .order_by(AuditEntry.id)))


def _demo_partner(index: int = 1) -> tuple[int, int, str]:
    """A demo partner's (partner id, person id, phone)."""
    from core.services.seed import DEMO_PARTNERS

    phone = DEMO_PARTNERS[index][1]
    with transaction() as s:
        pid, person_id = s.execute(select(PartnerProfile.id, Person.id).join(Person).where(
            Person.phone == phone)).one()
    return pid, person_id, phone


def _duty(client, headers) -> int:
    return client.put(f"{API}/partners/me/duty", headers=headers,
                      json={"on_duty": False}).status_code


def _me(client, headers) -> int:
    return client.get(f"{API}/me", headers=headers).status_code


# --- 1. ops end a partner's (or anyone's) sign-in ----------------------------------------

@pytest.mark.parametrize("blocked", ["suspended", "rejected"])
def test_a_suspended_then_reverified_partner_s_old_token_is_dead(client, blocked):
    """Stolen partner phone: ops suspend him (the thief's token ends at once) and verify
    him again once he has his phone back; the thief's token stays dead."""
    from core.services.seed import seed_demo

    seed_demo()
    ops = sign_in(client, OPS_PHONE)
    pid, person_id, phone = _demo_partner()
    stolen = sign_in(client, phone)
    other_pid, _, other_phone = _demo_partner(0)
    other = sign_in(client, other_phone)
    assert _duty(client, stolen) == 200
    r = client.put(f"{API}/ops/partners/{pid}/kyc", headers=ops,
                   json={"status": blocked, "note": "phone stolen, call from +919812300001"})
    assert r.status_code == 200, r.get_json()
    assert _duty(client, stolen) == 401  # signed out at once, not at verify
    r = client.put(f"{API}/ops/partners/{pid}/kyc", headers=ops,
                   json={"status": "verified", "note": "phone found again"})
    assert r.status_code == 200, r.get_json()
    assert _duty(client, stolen) == 401
    assert _duty(client, other) == 200  # another partner is untouched
    assert client.get(f"{API}/ops/bookings", headers=ops).status_code == 200
    kyc = [e for e in _audits("partner.kyc") if e.target == f"partner:{pid}"]
    assert [e.details["after"] for e in kyc] == [blocked, "verified"]
    assert kyc[0].details["sessions_ended"] == 1
    assert "sessions_ended" not in kyc[1].details
    assert "+919812300001" not in str(kyc[0].details)
    # He signs in again with a new code, a partner still.
    assert _duty(client, sign_in(client, phone)) == 200
    assert other_pid != pid and person_id


def test_a_kyc_move_to_pending_or_the_same_status_signs_nobody_out(client):
    from core.services.seed import seed_demo

    seed_demo()
    ops = sign_in(client, OPS_PHONE)
    pid, _, phone = _demo_partner()
    token = sign_in(client, phone)
    for status in ("pending", "verified", "verified"):
        r = client.put(f"{API}/ops/partners/{pid}/kyc", headers=ops,
                       json={"status": status, "note": "docs again"})
        assert r.status_code == 200, r.get_json()
    assert _duty(client, token) == 200


def test_ops_sign_a_person_out_everywhere(client):
    from core.services.seed import seed_demo

    seed_demo()
    ops = sign_in(client, OPS_PHONE)
    laptop, phone = sign_in(client, PHONE), sign_in(client, PHONE)  # a customer, 2 devices
    with transaction() as s:
        person_id = s.scalar(select(Person.id).where(Person.phone == PHONE))
    r = client.post(f"{API}/ops/people/{person_id}/sign-out", headers=ops,
                    json={"note": "phone stolen, he called from +919812300002"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"person_id": person_id, "role": "customer", "sessions_ended": 2}
    assert _me(client, laptop) == _me(client, phone) == 401
    assert client.get(f"{API}/ops/bookings", headers=ops).status_code == 200
    (entry,) = _audits("person.sign_out")
    with transaction() as s:
        ops_id = s.scalar(select(Person.id).where(Person.phone == OPS_PHONE))
    assert (entry.actor, entry.target) == (f"ops:{ops_id}", f"person:{person_id}")
    assert entry.details["sessions_ended"] == 2 and entry.details["role"] == "customer"
    assert "+919812300002" not in str(entry.details) and PHONE not in str(entry.details)
    # Again: none open, nothing changed, nothing audited.
    r = client.post(f"{API}/ops/people/{person_id}/sign-out", headers=ops, json={})
    assert r.status_code == 200 and r.get_json()["sessions_ended"] == 0
    assert len(_audits("person.sign_out")) == 1
    # A partner, by his person id; the role stays.
    _, partner_person, partner_phone = _demo_partner()
    token = sign_in(client, partner_phone)
    r = client.post(f"{API}/ops/people/{partner_person}/sign-out", headers=ops, json={})
    assert r.get_json() == {"person_id": partner_person, "role": "partner",
                            "sessions_ended": 1}
    assert _duty(client, token) == 401
    assert _duty(client, sign_in(client, partner_phone)) == 200


def test_the_sign_out_route_answers_bad_requests_precisely(client):
    from core.services.seed import seed_demo

    seed_demo()
    ops = sign_in(client, OPS_PHONE)
    customer = sign_in(client, PHONE)
    with transaction() as s:
        person_id = s.scalar(select(Person.id).where(Person.phone == PHONE))
    url = f"{API}/ops/people/{person_id}/sign-out"
    for missing in (999_999, 2**40):
        r = client.post(f"{API}/ops/people/{missing}/sign-out", headers=ops, json={})
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    r = client.post(url, headers=ops, json={"note": "x"})
    assert r.status_code == 422, r.get_json()
    r = client.post(url, headers=ops, json={"why": "stolen"})
    assert r.status_code == 422, r.get_json()
    r = client.post(url, headers=ops, data="note", content_type="text/plain")
    assert r.status_code == 415 and r.get_json()["error"]["code"] == "unsupported_media_type"
    r = client.post(url, headers=ops, data="{", content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_json"
    assert client.post(url, json={}).status_code == 401
    assert client.post(url, headers=customer, json={}).status_code == 403  # ops only
    assert _me(client, customer) == 200
    assert _audits("person.sign_out") == []


def test_sign_out_person_on_the_command_line(client, capsys):
    from core.services.seed import seed_demo

    seed_demo()
    token = sign_in(client, PHONE)
    code, out, err = run(capsys, "sign-out-person", "--phone", "98123 00001",
                         "--note", "lost phone")
    assert code == 0, err
    assert PHONE not in out + err and "+91******0001" in out and "1 session" in out
    assert _me(client, token) == 401
    (entry,) = _audits("person.sign_out")
    assert entry.actor == "cli" and entry.details["note"] == "lost phone"
    with transaction() as s:
        person_id = s.scalar(select(Person.id).where(Person.phone == PHONE))
    code, out, err = run(capsys, "sign-out-person", "--person", str(person_id))
    assert code == 0 and "nothing changed" in out
    assert len(_audits("person.sign_out")) == 1
    code, _, err = run(capsys, "sign-out-person", "--phone", "+919812377719")
    assert code == 2 and "nobody has" in err
    code, _, err = run(capsys, "sign-out-person", "--person", "99999999999")
    assert code == 2 and "no person has id" in err


def test_run_knows_sign_out_person():
    from ops import supervisor

    assert "sign-out-person" in supervisor.CLI_COMMANDS
    assert "sign-out-person" in supervisor.USAGE


# --- 2. a tunnel's forwarded request is not this machine's --------------------------------

@pytest.mark.parametrize("header", [
    {"X-Forwarded-For": STRANGER},
    {"Forwarded": f"for={STRANGER};proto=https"},
    {"CF-Connecting-IP": STRANGER},
    {"X-Forwarded-For": "127.0.0.1"},  # a stranger may say so: nothing takes it at 0
])
@pytest.mark.parametrize("path", ["/sandbox/outbox",
                                  "/sandbox/twilio/2010-04-01/Accounts/AC1/Messages.json"])
def test_a_request_a_tunnel_forwarded_is_refused_with_proxy_hops_0(client, header, path):
    """ngrok / cloudflared on this machine: the agent connects from 127.0.0.1 and adds
    X-Forwarded-For (or Forwarded, CF-Connecting-IP) with the internet client's address."""
    assert get_settings().proxy_hops == 0
    r = client.get(path, headers=header)
    assert r.status_code == 403, r.get_data(as_text=True)
    error = r.get_json()["error"]
    assert error["code"] == "sandbox_local_only"
    assert "PROXY_HOPS" in error["message"] and "SANDBOX_PUBLIC=1" in error["message"]


def test_this_machine_and_the_service_own_calls_still_reach_the_emulators(client, live):
    """No forwarding header: the outbox answers, and the service's own clients (Twilio's
    and Razorpay's, to PUBLIC_BASE_URL's 127.0.0.1) reach the emulators over HTTP."""
    from core.adapters import razorpay_gateway as gw
    from tests.conftest import run_jobs

    assert client.post(f"{API}/auth/otp", json={"phone": PHONE}).status_code == 202
    run_jobs()  # the SMS goes through the Twilio client to the emulator
    with transaction() as s:
        status = s.scalar(select(OutboxMessage.status).where(OutboxMessage.to_addr == PHONE))
    assert status not in ("pending", "failed"), status
    link = gw.client().payment_link.create({"amount": 5000, "currency": "INR",
                                            "reference_id": "S35-LOCAL-1"})
    assert link["id"].startswith("plink_")
    assert client.get("/sandbox/outbox").status_code == 200


def test_proxy_hops_takes_the_forwarded_client(clean_db):
    """With PROXY_HOPS set, the client is the one forwarded: this machine's passes, a
    request with fewer forwarded addresses than PROXY_HOPS (its client not taken) not."""
    from core.app import create_app

    one = create_app(dataclasses.replace(get_settings(), proxy_hops=1)).test_client()
    assert one.get("/sandbox/outbox", headers={"X-Forwarded-For": STRANGER}).status_code == 403
    assert one.get("/sandbox/outbox",
                   headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 200
    assert one.get("/sandbox/outbox").status_code == 200  # nothing forwarded
    two = create_app(dataclasses.replace(get_settings(), proxy_hops=2)).test_client()
    r = two.get("/sandbox/outbox", headers={"X-Forwarded-For": STRANGER})
    assert r.status_code == 403 and "PROXY_HOPS" in r.get_json()["error"]["message"]
    assert two.get("/sandbox/outbox",
                   headers={"CF-Connecting-IP": STRANGER}).status_code == 403


# --- 3. the Razorpay emulator's Basic auth ------------------------------------------------

@pytest.mark.parametrize("login", ["é:x", "{key}:é", "ключ:秘密"])
def test_a_non_ascii_basic_auth_login_is_401_not_500(client, login):
    """A non-ASCII login, or the right key id with a non-ASCII secret."""
    login = login.format(key=get_settings().razorpay_key_id)
    cred = base64.b64encode(login.encode()).decode()
    r = client.get("/sandbox/razorpay/v1/payments", headers={"Authorization": f"Basic {cred}"})
    assert r.status_code == 401, r.status_code

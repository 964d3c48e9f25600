"""Ops tools (review s37): `./run retention` with Redis away answers in one line; a
partner signed up twice is 409 partner_exists; a person's name with a phone number in it
is refused (add-partner, add-operator, POST /ops/partners), as a Point's name is."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core.adapters.models import PartnerProfile, Person
from tests.test_admin import (  # noqa: F401 (fixtures)
    BODY,
    LAXMIPUR,
    OPERATOR,
    _keep_root_handlers,
    count,
    operator,
    partner_args,
    run,
)
from tests.test_api import API
from tests.test_dispatch import frozen  # noqa: F401 (fixture)

pytestmark = pytest.mark.db

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEAD_REDIS = "redis://127.0.0.1:6390/0"  # nothing listens there


def test_retention_with_redis_away_says_so_in_one_line(database):
    """The database steps run, then one line on stderr (what failed, their counts, which
    Redis), exit 1: not the Redis error's traceback and the RetentionIncomplete's."""
    done = subprocess.run([sys.executable, "-m", "core.cli", "retention"], cwd=ROOT,
                          env={**os.environ, "DATABASE_URL": database,
                               "REDIS_URL": DEAD_REDIS},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr[-1500:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "the Redis steps failed" in lines[0] and '"status_events": 0' in lines[0]
    assert "127.0.0.1:6390" in lines[0]


def test_a_partner_signed_up_twice_is_partner_exists(client, operator):  # noqa: F811
    headers, _ = operator
    assert client.post(f"{API}/ops/partners", json=BODY, headers=headers).status_code == 201
    again = client.post(f"{API}/ops/partners", json=BODY, headers=headers)
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "partner_exists"
    doc = client.get(f"{API}/openapi.json").get_json()
    assert "partner_exists" in doc["paths"][f"{API}/ops/partners"]["post"]["summary"]


def test_ops_refuse_a_partner_name_with_a_phone_number(client, operator):  # noqa: F811
    headers, _ = operator
    r = client.post(f"{API}/ops/partners", json={**BODY, "name": "Sunita 9812345678"},
                    headers=headers)
    assert r.status_code == 422, r.get_json()
    error = r.get_json()["error"]
    assert (error["code"], error["field"]) == ("bad_name", "name")
    assert "9812345678" not in error["message"]
    assert count(PartnerProfile) == 0


def test_add_partner_refuses_a_name_with_a_phone_number(clean_db, capsys):
    assert run(capsys, *LAXMIPUR)[0] == 0
    code, out, err = run(capsys, *partner_args(**{"--name": "Raju 9812345678"}))
    assert code == 2 and "has a phone number in it" in err, err
    assert "9812345678" not in out + err
    assert count(PartnerProfile) == 0


@pytest.mark.parametrize("name", ["Asha 9812345678", "Asha +91 98123 45678"])
def test_add_operator_refuses_a_name_with_a_phone_number(clean_db, capsys, name):
    code, out, err = run(capsys, "add-operator", "--phone", OPERATOR, "--name", name)
    assert code == 2 and "has a phone number in it" in err, err
    assert "45678" not in out + err
    assert count(Person) == 0


def test_add_operator_keeps_a_plain_name(clean_db, capsys):
    assert run(capsys, "add-operator", "--phone", OPERATOR, "--name", "Asha Rani")[0] == 0
    assert count(Person) == 1


# --- POST /ops/legs/<id>/unlock: an optional note saying why -------------------------------


def _locked_leg(client) -> int:
    """A paid booking's leg, taken, then locked by five wrong pickup codes."""
    from tests.test_code_delivery import taken
    from tests.test_dispatch import CUSTOMER, last_code, paid_booking, sms
    from tests.test_notice_review import customer_speaks, leg_of

    booking_id = paid_booking()
    customer_speaks("en")
    rider = taken(client, booking_id)
    old = last_code(CUSTOMER, "at pickup")
    for n in range(5):
        sms(client, rider, f"PICK {(int(old) + 1 + n) % 10000:04d}")
    return leg_of(booking_id)


def _unlock_audits() -> list[dict]:
    from sqlalchemy import select

    from core.adapters.api_models import AuditEntry
    from core.adapters.db import transaction

    with transaction() as s:
        return [e.details for e in s.scalars(select(AuditEntry).where(
            AuditEntry.action == "leg.unlock").order_by(AuditEntry.id))]


def test_unlock_audits_the_operators_note_masked(client, live, frozen):  # noqa: F811
    from tests.test_api import sign_in
    from tests.test_dispatch import OPS

    leg_id = _locked_leg(client)
    ops = sign_in(client, OPS)
    short = client.post(f"{API}/ops/legs/{leg_id}/unlock", headers=ops, json={"note": "x"})
    assert short.status_code == 422 and short.get_json()["error"]["field"] == "note"
    r = client.post(f"{API}/ops/legs/{leg_id}/unlock", headers=ops,
                    json={"note": "sender called from 9812345678, rider mistyped"})
    assert r.status_code == 200, r.get_json()
    (details,) = _unlock_audits()
    assert "mistyped" in details["note"] and "9812345678" not in details["note"]
    assert details["booking"] == r.get_json()["booking_reference"]


@pytest.mark.parametrize("send", [{}, {"json": {}}, {"data": "{}"}])
def test_unlock_without_a_note_still_works(client, live, frozen, send):  # noqa: F811
    from tests.test_api import sign_in
    from tests.test_dispatch import OPS

    leg_id = _locked_leg(client)
    r = client.post(f"{API}/ops/legs/{leg_id}/unlock", headers=sign_in(client, OPS), **send)
    assert r.status_code == 200, r.get_json()
    (details,) = _unlock_audits()
    assert "note" not in details


def test_unlock_documents_its_optional_body(client):
    doc = client.get(f"{API}/openapi.json").get_json()
    op = doc["paths"][f"{API}/ops/legs/{{leg_id}}/unlock"]["post"]
    assert op["requestBody"]["required"] is False
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(schema["properties"]) == {"note"} and not schema.get("required")

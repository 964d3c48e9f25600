"""Setting production up: seed refused there, migrate without the maintenance database, the
set-up commands (add-operator, add-point, rate-card --default, add-partner) and
POST /api/v1/ops/partners. Each command is audited and safe to run twice."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from core import cli
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import PartnerProfile, Person, Point, RateCardRow, Vehicle
from core.config import get_settings
from core.domain.pricing import DEFAULT_RATE_CARD, RateCard
from tests.test_api import API, sign_in

pytestmark = pytest.mark.db

REPO = Path(__file__).resolve().parent.parent
OPERATOR = "+919812377701"
RIDER = "+919812377702"
LAXMIPUR = ["add-point", "--pincode", "845450", "--office", "Laxmipur BO"]


@pytest.fixture(autouse=True)
def _keep_root_handlers() -> Iterator[None]:
    """main() adds its JSON handler to the root logger, on this test's captured stdout:
    take it off again, so later tests do not write to a closed stream."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in before:
            root.removeHandler(handler)
    root.setLevel(level)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``python -m core.cli <argv>`` in-process: exit code, stdout, stderr."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def count(model) -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(model))


def audit_rows() -> list[tuple[str, str, str]]:
    with transaction() as s:
        return [(a.actor, a.action, a.target) for a in s.scalars(
            select(AuditEntry).order_by(AuditEntry.id))]


def partner_args(phone: str = RIDER, **over: str) -> list[str]:
    flags = {"--phone": phone, "--name": "Ramesh Kumar", "--language": "hi",
             "--vehicle": "bicycle", "--payload-kg": "20", "--point": "Laxmipur"}
    flags.update(over)
    return ["add-partner", *[x for pair in flags.items() for x in pair]]


# --- seed -------------------------------------------------------------------------------


def test_seed_refuses_production(clean_db, capsys, monkeypatch):
    """Demo partners with fake payout accounts and a demo operator who can sign in have
    no place in production: seed stops with 2 and says why, adding nothing."""
    production = dataclasses.replace(get_settings(), app_env="production")
    monkeypatch.setattr(cli, "get_settings", lambda: production)
    code, out, err = run(capsys, "seed")
    assert code == 2
    assert "demo data" in err and "APP_ENV=production" in err
    assert count(Person) == 0 and count(Point) == 0 and count(RateCardRow) == 0


def test_seed_still_loads_the_sandbox_demo(clean_db, capsys):
    code, _, _ = run(capsys, "seed")
    assert code == 0
    assert count(PartnerProfile) == 8


# --- migrate: the maintenance database only to create a missing one ---------------------


@pytest.fixture
def deployer(database: str, monkeypatch) -> Iterator[tuple[str, str]]:
    """A least-privilege deploying role (``<db>_deployer``) owning its own database, and a
    stand-in for the maintenance database that it may not connect to (CONNECT revoked
    from PUBLIC), which every engine on ``postgres`` made in core.cli reaches instead:
    the real ``postgres`` database's privileges are shared with everyone on the server.
    Yields (the deployer's URL, its database's name); drops all three afterwards."""
    su = make_url(database)
    role, target, guarded = (f"{su.database}_deployer", f"{su.database}_deployed",
                             f"{su.database}_maint")
    admin = create_engine(su.set(database="postgres"), isolation_level="AUTOCOMMIT")

    def drop() -> None:
        with admin.connect() as conn:
            for name in (target, guarded):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))

    drop()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(text(f'CREATE DATABASE "{target}" OWNER "{role}"'))
        conn.execute(text(f'CREATE DATABASE "{guarded}"'))
        conn.execute(text(f'REVOKE CONNECT ON DATABASE "{guarded}" FROM PUBLIC'))
    real_create_engine = cli.create_engine

    def engine_without_maintenance(url, **kw):
        url = make_url(url)
        if url.database == "postgres":
            url = url.set(database=guarded)
        return real_create_engine(url, **kw)

    monkeypatch.setattr(cli, "create_engine", engine_without_maintenance)
    deployer_url = su.set(username=role, password=None, database=target)
    try:
        yield deployer_url.render_as_string(hide_password=False), target
    finally:
        drop()
        admin.dispose()


def test_migrate_needs_no_maintenance_database_when_its_own_exists(deployer):
    """The old code connected to ``postgres`` first, and a role without CONNECT there
    could not deploy at all."""
    url, _ = deployer
    assert cli.ensure_database(url) is False


def test_missing_database_without_maintenance_access_says_what_to_do(deployer, database):
    url, target = deployer
    admin = create_engine(make_url(database).set(database="postgres"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{target}" WITH (FORCE)'))
    admin.dispose()
    with pytest.raises(SystemExit) as exc:
        cli.ensure_database(url)
    message = str(exc.value)
    assert f'database "{target}" does not exist' in message
    assert 'maintenance database "postgres"' in message
    assert "CREATE DATABASE" in message


def test_migrate_creates_a_missing_database(database):
    """With a role that may create databases, a missing one is still made (and found the
    next time)."""
    url = make_url(database)
    fresh = url.set(database=f"{url.database}_fresh")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        assert cli.ensure_database(fresh.render_as_string(hide_password=False)) is True
        assert cli.ensure_database(fresh.render_as_string(hide_password=False)) is False
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{fresh.database}" WITH (FORCE)'))
        admin.dispose()


# --- add-operator -------------------------------------------------------------------------


def test_add_operator_creates_an_ops_person_once(clean_db, capsys):
    code, out, err = run(capsys, "add-operator", "--phone", "98123 77701", "--name", "Asha")
    assert code == 0, err
    assert OPERATOR not in out + err and "+91******7701" in out
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == OPERATOR))
        assert person is not None and person.role == "ops" and person.name == "Asha"
        person_id = person.id
    assert audit_rows() == [("cli", "operator.add", f"person:{person_id}")]

    code, out, _ = run(capsys, "add-operator", "--phone", OPERATOR)
    assert code == 0 and "already an operator" in out and OPERATOR not in out
    assert count(Person) == 1 and len(audit_rows()) == 1


def test_add_operator_promotes_a_customer_and_refuses_a_partner(clean_db, capsys):
    with transaction() as s:
        s.add(Person(phone=OPERATOR, role="customer", name="Asha"))
        s.add(Person(phone=RIDER, role="partner", name="Ramesh"))
    assert run(capsys, "add-operator", "--phone", OPERATOR)[0] == 0
    code, out, err = run(capsys, "add-operator", "--phone", RIDER)
    assert code == 2
    assert "is a partner" in err and RIDER not in out + err
    with transaction() as s:
        roles = dict(s.execute(select(Person.phone, Person.role)).all())
    assert roles == {OPERATOR: "ops", RIDER: "partner"}
    assert [a[1] for a in audit_rows()] == ["operator.add"]


def test_add_operator_refuses_a_bad_phone(clean_db, capsys):
    code, _, err = run(capsys, "add-operator", "--phone", "12345")
    assert code == 2 and "phone" in err
    assert count(Person) == 0


def test_run_passes_the_set_up_commands_to_the_cli(clean_db):
    """`./run add-operator ...` works as README says, with the service's URLs (here the
    test database): the supervisor hands the set-up commands to core.cli."""
    done = subprocess.run([str(REPO / "run"), "add-operator", "--phone", OPERATOR],
                          cwd=REPO, env=os.environ.copy(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert OPERATOR not in done.stdout + done.stderr
    with transaction() as s:
        assert s.scalar(select(Person.role).where(Person.phone == OPERATOR)) == "ops"


# --- add-point ----------------------------------------------------------------------------


def test_add_point_from_the_india_post_directory_once(clean_db, capsys):
    code, out, err = run(capsys, *LAXMIPUR)
    assert code == 0, err
    with transaction() as s:
        (point,) = s.scalars(select(Point)).all()
        assert (point.name, point.pincode, point.post_office) == ("Laxmipur", "845450",
                                                                  "Laxmipur BO")
        assert point.active and point.state == "Bihar"
        assert abs(point.lat - 26.8927) < 1e-4 and abs(point.lng - 84.48813) < 1e-4
        point_id = point.id
    assert audit_rows() == [("cli", "point.add", f"point:{point_id}")]
    code, out, _ = run(capsys, *LAXMIPUR)
    assert code == 0 and "already exists" in out
    assert count(Point) == 1 and len(audit_rows()) == 1


@pytest.mark.parametrize("pincode, office, expect", [
    ("845450", "Bettiah HO", ["not an office of pincode 845450", "Laxmipur BO",
                              "Jado Chhapar BO"]),
    # Dhansa S.O (Delhi) has no trustworthy position in the directory, nor its pincode.
    ("110073", "Dhansa S.O", ["has no coordinates"]),
    ("999999", "Anything BO", ["no post office has pincode 999999"]),
])
def test_add_point_refuses_what_it_cannot_place(clean_db, capsys, pincode, office, expect):
    code, _, err = run(capsys, "add-point", "--pincode", pincode, "--office", office)
    assert code == 2
    for words in expect:
        assert words in err
    assert count(Point) == 0 and audit_rows() == []


# --- rate-card --default ------------------------------------------------------------------


def test_rate_card_default_activates_the_built_in_card_once(clean_db, capsys):
    code, _, err = run(capsys, "rate-card", "--default")
    assert code == 0, err
    with transaction() as s:
        (row,) = s.scalars(select(RateCardRow)).all()
        assert row.active and RateCard.from_dict(row.card) == DEFAULT_RATE_CARD
        row_id = row.id
    assert audit_rows() == [("cli", "rate_card.activate", f"rate_card:{row_id}")]
    code, out, _ = run(capsys, "rate-card", "--default")
    assert code == 0 and "active already" in out
    assert count(RateCardRow) == 1 and len(audit_rows()) == 1


def test_rate_card_default_leaves_an_active_card_alone(clean_db, capsys):
    with transaction() as s:
        s.add(RateCardRow(name="negotiated-2027", card=DEFAULT_RATE_CARD.to_dict(),
                          active=True))
    code, out, _ = run(capsys, "rate-card", "--default")
    assert code == 0 and "negotiated-2027" in out
    assert count(RateCardRow) == 1 and audit_rows() == []


# --- add-partner --------------------------------------------------------------------------


def test_add_partner_makes_person_profile_and_vehicle_once(clean_db, capsys):
    assert run(capsys, *LAXMIPUR)[0] == 0
    code, out, err = run(capsys, *partner_args(**{"--payout-account": "acc_N1x2y3z4w5v6u7"}),
                         "--app")
    assert code == 0, err
    assert RIDER not in out + err and "+91******7702" in out
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == RIDER))
        assert person is not None and person.role == "partner"
        assert person.preferred_language == "hi" and person.name == "Ramesh Kumar"
        p = person.partner
        assert p is not None and p.first_name == "Ramesh"
        assert p.kyc_status == "pending" and p.on_duty is False and p.has_app is True
        assert p.payout_account_id == "acc_N1x2y3z4w5v6u7"
        (home,) = p.points
        assert p.home_point_id == home.id and home.name == "Laxmipur"
        (v,) = p.vehicles
        assert (v.type, v.payload_kg, v.max_size, v.active) == ("bicycle", 20, "box", True)
        partner_id = p.id
    assert audit_rows()[-1] == ("cli", "partner.add", f"partner:{partner_id}")

    code, out, _ = run(capsys, *partner_args())
    assert code == 0 and "already partner" in out and RIDER not in out
    assert count(PartnerProfile) == 1 and count(Vehicle) == 1 and len(audit_rows()) == 2


def test_add_partner_by_point_id_and_from_a_customer(clean_db, capsys):
    assert run(capsys, *LAXMIPUR)[0] == 0
    with transaction() as s:
        point_id = s.scalar(select(Point.id))
        s.add(Person(phone=RIDER, role="customer", preferred_language="en"))
    code, _, err = run(capsys, *partner_args(**{"--point": str(point_id),
                                                "--vehicle": "pickup",
                                                "--payload-kg": "700"}))
    assert code == 0, err
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == RIDER))
        assert person.role == "partner" and person.partner.home_point_id == point_id
        assert [(v.type, v.max_size) for v in person.partner.vehicles] == [("pickup",
                                                                          "vehicle")]


@pytest.mark.parametrize("override, words", [
    ({"--phone": "+91 12345"}, "phone"),
    ({"--language": "fr"}, "language must be one of"),
    ({"--vehicle": "tractor"}, "vehicle must be one of"),
    ({"--payload-kg": "21"}, "a bicycle carries 5 to 20 kg"),
    ({"--payload-kg": "0"}, "a bicycle carries 5 to 20 kg"),
    ({"--point": "Bettiah"}, "no active Point is called 'Bettiah'"),
    ({"--point": "4242"}, "no active Point has id 4242"),
    ({"--payout-account": "bank-1234"}, "acc_"),
])
def test_add_partner_refuses_bad_fields(clean_db, capsys, override, words):
    assert run(capsys, *LAXMIPUR)[0] == 0
    code, out, err = run(capsys, *partner_args(**override))
    assert code == 2 and words in err, err
    assert count(PartnerProfile) == 0 and count(Person) == 0 and len(audit_rows()) == 1


def test_add_partner_refuses_an_operator(clean_db, capsys):
    assert run(capsys, *LAXMIPUR)[0] == 0
    assert run(capsys, "add-operator", "--phone", RIDER)[0] == 0
    code, out, err = run(capsys, *partner_args())
    assert code == 2 and "is an operator" in err and RIDER not in out + err
    assert count(PartnerProfile) == 0


# --- POST /api/v1/ops/partners ------------------------------------------------------------


@pytest.fixture
def operator(client, capsys) -> tuple[dict[str, str], int]:
    """Laxmipur open, and an operator added by the CLI, signed in: (headers, person id)."""
    assert run(capsys, *LAXMIPUR)[0] == 0
    assert run(capsys, "add-operator", "--phone", OPERATOR)[0] == 0
    with transaction() as s:
        ops_id = s.scalar(select(Person.id).where(Person.phone == OPERATOR))
    return sign_in(client, OPERATOR), ops_id


BODY = {"phone": "98123 77702", "name": "Sunita Devi", "language": "mr",
        "vehicle": "e_rickshaw", "payload_kg": 150, "point": "Laxmipur BO"}


def test_ops_sign_a_partner_up(client, operator):
    headers, ops_id = operator
    r = client.post(f"{API}/ops/partners", json=BODY, headers=headers)
    assert r.status_code == 201, r.get_json()
    row = r.get_json()
    assert row["first_name"] == "Sunita" and row["phone_masked"] == "+91******7702"
    assert row["kyc_status"] == "pending" and row["on_duty"] is False
    assert row["has_app"] is False and row["vehicles"] == ["e_rickshaw"]
    assert RIDER not in r.get_data(as_text=True)
    assert audit_rows()[-1] == (f"ops:{ops_id}", "partner.add", f"partner:{row['id']}")
    listed = client.get(f"{API}/ops/partners", headers=headers).get_json()["items"]
    assert [p["id"] for p in listed] == [row["id"]]
    with transaction() as s:
        v = s.scalar(select(Vehicle))
        assert (v.partner_id, v.payload_kg, v.max_size) == (row["id"], 150, "sack")

    again = client.post(f"{API}/ops/partners", json={**BODY, "phone": RIDER},
                        headers=headers)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "partner_exists"
    assert count(PartnerProfile) == 1 and len(audit_rows()) == 3  # point, operator, partner


@pytest.mark.parametrize("change, field", [
    ({"phone": "12345678"}, "phone"),
    ({"language": "xx"}, "language"),
    ({"vehicle": "tractor"}, "vehicle"),
    ({"payload_kg": 201}, "payload_kg"),
    ({"point": "Nowhere"}, "point"),
    ({"point": 2**40}, "point"),
    ({"payout_account": "acc_?"}, "payout_account"),
    ({"colour": "red"}, "colour"),
])
def test_ops_partner_sign_up_refuses_bad_fields(client, operator, change, field):
    headers, _ = operator
    r = client.post(f"{API}/ops/partners", json={**BODY, **change}, headers=headers)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["error"]["field"] == field
    assert count(PartnerProfile) == 0


def test_ops_partner_sign_up_is_for_operators_and_documented(client, operator):
    customer = sign_in(client, "+919812377703")
    assert client.post(f"{API}/ops/partners", json=BODY, headers=customer).status_code == 403
    doc = client.get(f"{API}/openapi.json").get_json()
    responses = doc["paths"][f"{API}/ops/partners"]["post"]["responses"]
    assert {"201", "409", "422", "403"} <= set(responses)

"""Reviewer r1 (ops): defects found in the operators' tools. Each test fails on the code
as reviewed."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff
from core.adapters.models import Person
from tests.test_admin import _keep_root_handlers, run  # noqa: F401  (autouse fixture)
from tests.test_api import API, sign_in
from tests.test_care_review import caller_waiting
from tests.test_dispatch import (
    LAXMIPUR,
    OPS,
    frozen,  # noqa: F401  (fixture)
    make_partner,
    make_point,
)

pytestmark = pytest.mark.db

OPS_A = "+919000000181"
OPS_B = "+919000000182"
CALLER = "+919812300181"


def test_a_second_operator_cannot_close_a_person_another_is_answering(client, live):
    """A reply or a call to a person another operator is answering is refused (409
    taken_by_other unless take_over). Closing is not: operator B ends the conversation
    operator A is in the middle of (the person is told the bot is back), and the handoff
    row still names A as the one who had it, with no audit entry of B's action."""
    hid = caller_waiting(CALLER)
    ops_a, ops_b = sign_in(client, OPS_A, role="ops"), sign_in(client, OPS_B, role="ops")
    r = client.post(f"{API}/ops/handoffs/{hid}/reply", json={"body": "Ravi here. Which booking?"},
                    headers=ops_a)
    assert r.status_code == 200, r.get_json()
    r = client.post(f"{API}/ops/handoffs/{hid}/close", headers=ops_b)
    with transaction() as s:
        h = s.get(Handoff, hid)
        status, operator = h.status, h.operator
    assert r.status_code == 409, (r.status_code, r.get_json(), status, operator)
    assert r.get_json()["error"]["code"] == "taken_by_other"
    assert status == "waiting"


def test_add_operator_with_a_long_name_is_refused_clearly(clean_db, capsys):
    """add-operator --name takes any length; people.name holds 120 characters, so a
    longer one ends the command with a DataError traceback (exit 1) instead of the
    set-up commands' one-line refusal and exit 2 (add-partner checks its name)."""
    code, out, err = run(capsys, "add-operator", "--phone", "+919812377791",
                         "--name", "R" * 130)
    assert code == 2, (code, out, err)
    assert "name" in err
    with transaction() as s:
        assert s.scalar(select(Person).where(Person.phone == "+919812377791")) is None


def test_close_point_run_again_by_name_says_closed_already(clean_db, capsys):
    """close-point promises, as every set-up command does, that a second run finds what
    is there, says so and exits 0. Named by id it does; named by its name (as operators
    type it, and as the README shows) the second run fails (exit 2) with "no active
    Point is called ... (add-point adds one)"."""
    point_id = make_point("Sirisia", 26.85, 84.47)
    code, out, err = run(capsys, "close-point", "--point", "Sirisia", "--note", "shop shut")
    assert code == 0, err
    code, out, err = run(capsys, "close-point", "--point", "Sirisia")
    assert code == 0, err
    assert "closed already" in out and str(point_id) in out
    with transaction() as s:
        assert len(s.scalars(select(AuditEntry).where(
            AuditEntry.action == "point.close")).all()) == 1


def test_suspending_a_suspended_partner_changes_and_audits_nothing(client, live, frozen):  # noqa: F811
    """Every other ops change (payout account, home Point, close, move, rename) says
    "nothing changed" and writes no audit entry when asked for what is already so. A
    second suspension writes a second partner.kyc entry "suspended -> suspended" and a
    second partner.block take-back: the audit log reads as two suspensions."""
    partner_id, _ = make_partner("Ramesh", LAXMIPUR)
    ops = sign_in(client, OPS)
    body = {"status": "suspended", "note": "fraud report"}
    assert client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                      json=body).status_code == 200
    r = client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                   json={"status": "suspended", "note": "again, by a second operator"})
    assert r.status_code in (200, 409), r.get_json()
    with transaction() as s:
        kyc = [(a.details["before"], a.details["after"]) for a in s.scalars(
            select(AuditEntry).where(AuditEntry.action == "partner.kyc")
            .order_by(AuditEntry.id))]
        blocks = s.scalars(select(AuditEntry).where(AuditEntry.action == "partner.block")).all()
    assert kyc == [("verified", "suspended")], kyc
    assert len(blocks) == 1

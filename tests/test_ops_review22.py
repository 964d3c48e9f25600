"""Ops tools a review found missing: a list of the Points (their ids were only in the
add-point output), and two operators answering one person at once (two answers to one
question). Each test failed on the code before its fix."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage, Point
from tests.test_api import API, sign_in
from tests.test_care_review import caller_waiting
from tests.test_dispatch import make_partner, make_point

pytestmark = pytest.mark.db

OPS_A = "+919000000081"
OPS_B = "+919000000082"
PHONE = "+919812300081"


# --- the Points list ------------------------------------------------------------------------


def test_ops_list_points_open_or_closed_by_pincode_with_their_partners(client, live):
    a = make_point("Alpha", 26.84, 84.47)
    b = make_point("Beta", 26.90, 84.50)
    c = make_point("Gamma", 26.95, 84.52)
    with transaction() as s:
        s.get(Point, c).active = False
        s.get(Point, b).pincode = "845401"
    pid, _ = make_partner("Ravi", (26.84, 84.47), point_id=a)
    ops = sign_in(client, OPS_A, role="ops")

    r = client.get(f"{API}/ops/points", headers=ops)
    assert r.status_code == 200, r.get_json()
    rows = {p["id"]: p for p in r.get_json()["items"]}
    assert {a, b, c} <= set(rows)
    assert rows[a]["home_partner_ids"] == [pid] and rows[a]["active"] is True
    assert rows[c]["active"] is False and rows[b]["pincode"] == "845401"

    open_ids = [p["id"] for p in client.get(f"{API}/ops/points?active=true",
                                            headers=ops).get_json()["items"]]
    assert a in open_ids and b in open_ids and c not in open_ids
    closed = client.get(f"{API}/ops/points?active=false", headers=ops).get_json()["items"]
    assert [p["id"] for p in closed] == [c]
    by_pin = client.get(f"{API}/ops/points?pincode=845401", headers=ops).get_json()["items"]
    assert [p["id"] for p in by_pin] == [b]


def test_the_points_list_pages_by_cursor_and_refuses_bad_filters(client, live):
    ids = [make_point(f"P{i}", 26.8 + i / 100, 84.4) for i in range(5)]
    ops = sign_in(client, OPS_A, role="ops")
    seen: list[int] = []
    url = f"{API}/ops/points?limit=2"
    while url:
        body = client.get(url, headers=ops).get_json()
        seen += [p["id"] for p in body["items"]]
        url = f"{API}/ops/points?limit=2&after={body['next_after']}" \
            if body["next_after"] else ""
    assert [i for i in seen if i in ids] == ids and len(seen) == len(set(seen))
    r = client.get(f"{API}/ops/points?pincode=84540", headers=ops)
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "pincode"
    assert client.get(f"{API}/ops/points", headers=sign_in(client, PHONE)).status_code == 403


# --- two operators, one person ----------------------------------------------------------------


def _audits(action: str) -> list[AuditEntry]:
    with transaction() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def _sent(text: str) -> int:
    with transaction() as s:
        return len(s.scalars(select(OutboxMessage.id).where(
            OutboxMessage.body == text)).all())


def test_a_second_operator_cannot_answer_a_person_another_is_answering(client, live):
    hid = caller_waiting(PHONE)
    ops_a, ops_b = sign_in(client, OPS_A, role="ops"), sign_in(client, OPS_B, role="ops")
    r = client.post(f"{API}/ops/handoffs/{hid}/reply", json={"body": "Ravi here. Which booking?"},
                    headers=ops_a)
    assert r.status_code == 200, r.get_json()
    row = next(h for h in client.get(f"{API}/ops/handoffs", headers=ops_b).get_json()["items"]
               if h["id"] == hid)
    with transaction() as s:
        from core.adapters.models import Person
        a_id = s.scalar(select(Person.id).where(Person.phone == OPS_A))
    assert row["taken_by"] == a_id  # the list says who has them

    r = client.post(f"{API}/ops/handoffs/{hid}/reply", json={"body": "Hello, Meena here."},
                    headers=ops_b)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "taken_by_other"
    assert _sent("Hello, Meena here.") == 0  # the person got one answer, not two

    # The first operator goes on as before.
    r = client.post(f"{API}/ops/handoffs/{hid}/reply", json={"body": "I am checking it."},
                    headers=ops_a)
    assert r.status_code == 200 and _sent("I am checking it.") == 1


def test_an_operator_may_take_a_person_over_and_it_is_audited(client, live):
    hid = caller_waiting(PHONE)
    ops_a, ops_b = sign_in(client, OPS_A, role="ops"), sign_in(client, OPS_B, role="ops")
    assert client.post(f"{API}/ops/handoffs/{hid}/reply", json={"body": "Ravi here."},
                       headers=ops_a).status_code == 200
    r = client.post(f"{API}/ops/handoffs/{hid}/reply",
                    json={"body": "Meena here, Ravi's shift ended.", "take_over": True},
                    headers=ops_b)
    assert r.status_code == 200, r.get_json()
    assert _sent("Meena here, Ravi's shift ended.") == 1
    (entry,) = _audits("handoff.take_over")
    assert entry.target == f"handoff:{hid}"
    # Now the first operator is the other one.
    r = client.post(f"{API}/ops/handoffs/{hid}/reply", json={"body": "Ravi again."},
                    headers=ops_a)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "taken_by_other"


def test_a_person_nobody_answers_yet_is_anyones_and_take_over_alone_changes_nothing(
        client, live):
    hid = caller_waiting(PHONE)
    ops_b = sign_in(client, OPS_B, role="ops")
    row = next(h for h in client.get(f"{API}/ops/handoffs", headers=ops_b).get_json()["items"]
               if h["id"] == hid)
    assert row["taken_by"] is None
    r = client.post(f"{API}/ops/handoffs/{hid}/reply",
                    json={"body": "Meena here.", "take_over": True}, headers=ops_b)
    assert r.status_code == 200 and _audits("handoff.take_over") == []


def test_a_second_operator_cannot_call_a_person_another_is_answering(client, live):
    """A call is an answer too: the number of a person another operator is answering is
    not handed out (two people calling her about one question) unless taken over."""
    hid = caller_waiting(PHONE)
    ops_a, ops_b = sign_in(client, OPS_A, role="ops"), sign_in(client, OPS_B, role="ops")
    r = client.get(f"{API}/ops/handoffs/{hid}/phone", headers=ops_a)
    assert r.status_code == 200 and r.get_json()["phone"] == PHONE
    r = client.get(f"{API}/ops/handoffs/{hid}/phone", headers=ops_b)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "taken_by_other"
    assert PHONE not in r.get_data(as_text=True)
    # Operator A's own reply is still his.
    assert client.post(f"{API}/ops/handoffs/{hid}/reply", json={"body": "Calling you now."},
                       headers=ops_a).status_code == 200
    r = client.get(f"{API}/ops/handoffs/{hid}/phone?take_over=true", headers=ops_b)
    assert r.status_code == 200 and r.get_json()["phone"] == PHONE
    (entry,) = _audits("handoff.take_over")
    assert entry.target == f"handoff:{hid}"
    r = client.post(f"{API}/ops/handoffs/{hid}/reply", json={"body": "Ravi again."},
                    headers=ops_a)
    assert r.status_code == 409  # B has her now

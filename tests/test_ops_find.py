"""Operators find the right person: a caller's bookings by their number or the booking's
reference (each row says whose booking it is), and an erasure by the id the console shows
erases that partner and says whom it erased, never an unrelated customer."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from sqlalchemy import event, select

from core.adapters import db
from core.adapters.db import transaction
from core.adapters.models import Conversation, PartnerProfile, Person
from core.services import handoff
from core.services.seed import OPS_PERSON, seed_demo
from tests.test_api import API, BETTIAH, LAXMIPUR, PARCEL, sign_in
from tests.test_dispatch import make_partner

pytestmark = pytest.mark.db

MEENA = "+919812366601"
RAVI = "+919812366602"
GITA = "+919812366603"  # only ever a recipient


def book(client, headers: dict[str, str], recipient: str) -> str:
    r = client.post(f"{API}/bookings", headers=headers, json={
        "pickup": LAXMIPUR, "drop": BETTIAH, "parcel": PARCEL, "tier": "standard",
        "recipient": {"name": "Gita", "phone": recipient}})
    assert r.status_code == 201, r.get_json()
    return r.get_json()["reference"]


def ops_list(client, ops: dict[str, str], **filters: str):
    return client.get(f"{API}/ops/bookings?{urlencode(filters)}", headers=ops)


def found(client, ops: dict[str, str], **filters: str) -> list[str]:
    r = ops_list(client, ops, **filters)
    assert r.status_code == 200, r.get_json()
    return [b["reference"] for b in r.get_json()["items"]]


def person_id(phone: str) -> int:
    with transaction() as s:
        pid = s.scalar(select(Person.id).where(Person.phone == phone))
    assert pid is not None
    return pid


# --- finding a caller's bookings -----------------------------------------------------------


def test_ops_find_a_callers_bookings_by_their_number_or_the_reference(client):
    seed_demo()  # the demo Points and operator
    meena, ravi = sign_in(client, MEENA), sign_in(client, RAVI)
    meena_to_gita = book(client, meena, GITA)
    ravi_to_meena = book(client, ravi, MEENA)  # a parcel on its way to Meena
    ravi_to_gita = book(client, ravi, GITA)
    ops = sign_in(client, OPS_PERSON[1])

    # Meena calls: her own booking and the one sent to her, however the number is typed.
    for typed in (MEENA, "98123 66601", "+91 98123-66601", "09812366601", "919812366601"):
        assert found(client, ops, phone=typed) == [ravi_to_meena, meena_to_gita], typed
    assert found(client, ops, phone="98123 66603") == [ravi_to_gita, meena_to_gita]  # Gita
    assert found(client, ops, phone="98123 66609") == []  # nobody we know
    assert found(client, ops, phone=RAVI, status="awaiting_payment") == [ravi_to_gita,
                                                                         ravi_to_meena]
    assert found(client, ops, phone=RAVI, status="delivered") == []
    spaced = f"{ravi_to_meena[:4]} {ravi_to_meena[4:]}"  # as it is printed and read out
    assert found(client, ops, reference=spaced) == [ravi_to_meena]
    assert found(client, ops, reference=ravi_to_meena, phone=GITA) == []
    assert found(client, ops, reference="12345678") == []

    # Each row says whose booking it is, the number masked as everywhere in the console.
    (row,) = ops_list(client, ops, reference=ravi_to_meena).get_json()["items"]
    assert row["customer_id"] == person_id(RAVI)
    assert row["customer_phone_masked"] == "+91******6602"
    assert row["recipient_phone_masked"] == "+91******6601"
    # A customer's own answers are as they were: nothing about the customer in them.
    mine = client.get(f"{API}/bookings", headers=ravi).get_json()["items"]
    alone = client.get(f"{API}/bookings/{ravi_to_meena}", headers=ravi).get_json()
    for answer in (*mine, alone):
        assert "customer_id" not in answer and "customer_phone_masked" not in answer
    assert {k: v for k, v in row.items() if not k.startswith("customer_")} == alone


def test_a_bad_number_or_reference_gets_a_precise_error(client):
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    for phone in ("98123 6660", "12345678", "+91 58123 666011", "98123abcde"):
        r = ops_list(client, ops, phone=phone)
        assert r.status_code == 422, (phone, r.get_json())
        assert r.get_json()["error"]["field"] == "phone"
        assert r.get_json()["error"]["code"] == "bad_phone"
        assert phone not in r.get_json()["error"]["message"]
    assert ops_list(client, ops, phone="9812").get_json()["error"]["field"] == "phone"
    for ref in ("1234567", "1234-567x", "123456789"):
        r = ops_list(client, ops, reference=ref)
        assert r.status_code == 422, (ref, r.get_json())
        assert r.get_json()["error"] == {"code": "bad_reference", "field": "reference",
                                         "message": "not a booking reference: 8 digits"}
    assert client.get(f"{API}/ops/bookings?phone={MEENA}",
                      headers=sign_in(client, MEENA)).status_code == 403


def statements(client, ops: dict[str, str], **filters: str) -> tuple[int, list[str]]:
    """How many SQL statements the ops list sent, and the one that found the bookings."""
    seen: list[tuple[str, object]] = []

    def note(conn, cursor, statement, parameters, *args) -> None:  # noqa: ANN001
        seen.append((statement, parameters))

    event.listen(db.engine(), "before_cursor_execute", note)
    try:
        assert ops_list(client, ops, **filters).status_code == 200
    finally:
        event.remove(db.engine(), "before_cursor_execute", note)
    listing = [(s, p) for s, p in seen if "bookings.recipient_phone = " in s]
    return len(seen), listing


def test_the_phone_filter_costs_no_more_statements_and_reads_bookings_by_index(client):
    seed_demo()
    meena, ravi = sign_in(client, MEENA), sign_in(client, RAVI)
    book(client, meena, GITA)
    book(client, ravi, MEENA)
    ops = sign_in(client, OPS_PERSON[1])
    plain, _ = statements(client, ops)
    assert statements(client, ops, phone=MEENA, status="awaiting_payment")[0] == plain
    filtered, ((sql, params),) = statements(client, ops, phone=MEENA)
    assert filtered == plain
    # With sequential scans priced out, a plan that still reads every booking has no index
    # to use for one side of the phone match (the recipient's, before migration 0018).
    # Plain index scans too: on a table this small, walking the primary key backwards for
    # the page's order (reading every booking at worst) would otherwise win on cost.
    with db.engine().connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        conn.exec_driver_sql("SET enable_indexscan = off")
        plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {sql}", params))
        conn.rollback()
    assert "Seq Scan on bookings" not in plan, plan
    assert "ix_bookings_recipient_phone" in plan and "ix_bookings_customer_id" in plan, plan


# --- erasing the person the operator means -------------------------------------------------


def test_erasing_partner_1_as_the_console_shows_them_erases_that_partner(client):
    with transaction() as s:  # a customer first: person 1 is not the partner's person
        s.add(Person(phone="+919812355501", name="Kamla", role="customer",
                     preferred_language="hi"))
    kamla = person_id("+919812355501")
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    partner_id, phone = make_partner("Ramesh", (26.88, 84.6))
    (row,) = [p for p in client.get(f"{API}/ops/partners?limit=100", headers=ops)
              .get_json()["items"] if p["id"] == partner_id]
    assert row["person_id"] == person_id(phone) != row["id"]
    erase = {"reason": "Ramesh asked us to erase his data"}

    # Still on duty: refused, and nothing is erased.
    r = client.post(f"{API}/ops/partners/{partner_id}/erase", headers=ops, json=erase)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "active_partner"
    assert client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                      json={"status": "suspended", "note": "asked to be erased"}
                      ).status_code == 200
    r = client.post(f"{API}/ops/partners/{partner_id}/erase", headers=ops, json=erase)
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    assert (out["person_id"], out["role"], out["partner_id"], out["erased"]) == (
        row["person_id"], "partner", partner_id, True)
    assert out["phone_masked"] == row["phone_masked"] == f"+91******{phone[-4:]}"
    with transaction() as s:
        assert s.get(Person, row["person_id"]).phone is None
        assert s.get(PartnerProfile, partner_id).first_name == ""
        assert s.get(Person, kamla).phone == "+919812355501"  # the customer is untouched
    again = client.post(f"{API}/ops/partners/{partner_id}/erase", headers=ops, json=erase)
    assert again.get_json()["erased"] is False and again.get_json()["role"] == "partner"
    assert client.post(f"{API}/ops/partners/{2**31 - 1}/erase", headers=ops,
                       json=erase).status_code == 404

    # By person id, the answer says whom: a customer, and which number.
    r = client.post(f"{API}/ops/people/{kamla}/erase", headers=ops,
                    json={"reason": "Kamla asked by phone"})
    assert r.status_code == 200, r.get_json()
    assert {k: r.get_json()[k] for k in ("person_id", "role", "partner_id", "phone_masked")} \
        == {"person_id": kamla, "role": "customer", "partner_id": None,
            "phone_masked": "+91******5501"}
    assert client.post(f"{API}/ops/people/{2**31 - 1}/erase", headers=ops,
                       json=erase).status_code == 404


def test_ops_see_the_person_id_of_a_caller_they_need_to_erase(client):
    """A customer found by their number, or waiting in a handoff, shows the person id the
    erasure takes; the new route and filters are in the OpenAPI document."""
    seed_demo()
    meena = sign_in(client, MEENA)
    ref = book(client, meena, GITA)
    with transaction() as s:
        conv = Conversation(channel="whatsapp", contact=f"whatsapp:{MEENA}",
                            person_id=person_id(MEENA))
        s.add(conv)
        handoff.request(s, conv, "asked")
    ops = sign_in(client, OPS_PERSON[1])
    (row,) = ops_list(client, ops, phone=MEENA).get_json()["items"]
    assert row["reference"] == ref and row["customer_id"] == person_id(MEENA)
    (waiting,) = client.get(f"{API}/ops/handoffs", headers=ops).get_json()["items"]
    assert waiting["person_id"] == person_id(MEENA)
    doc = client.get(f"{API}/openapi.json").get_json()
    assert "post" in doc["paths"][f"{API}/ops/partners/{{partner_id}}/erase"]
    listed = doc["paths"][f"{API}/ops/bookings"]["get"]
    assert {"phone", "reference", "status"} <= {p["name"] for p in listed["parameters"]}

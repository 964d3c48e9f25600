"""Ops tools and privacy (session 38).

1. POST /ops/legs/{id}/unlock took no Idempotency-Key: a retry after a lost answer was 409
   not_locked for the leg it had just unlocked (or, the leg locked again meanwhile,
   unlocked it again and sent new codes again). It takes the key as the other ops POSTs
   do: the same key and body answer the first answer; the key of another request is 422
   idempotency_key_reused. The OpenAPI document declares the header for it.
2. `./run remove-operator` exited 0 for a number that is not an operator's (a customer's,
   one removed already): a script meaning to cut someone off read it as done. Now one line
   on stderr and exit 2; a removal still exits 0.
3. A customer's cancel reason in the booking's history masked phone numbers only: a bank
   account or Aadhaar number typed in it was kept whole, for good. Cut to its last 4
   (logs.mask_note), as ops' reasons are.
4. The retention run's redacted_errors pass read every failed message ever kept, every
   night, to find the few errors left to mask: now by a partial index of exactly those
   (migration 0053), which the planner uses.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import event, func, select

from core.adapters import db
from core.adapters.api_models import AuditEntry, IdempotencyRecord
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage, Person
from core.api.customer import history_reason
from core.services import retention
from tests.test_admin import _keep_root_handlers, run  # noqa: F401  (autouse fixture)
from tests.test_api import API, book, sign_in
from tests.test_customer_api_review27 import _history, bettiah  # noqa: F401  (fixture)
from tests.test_dispatch import frozen  # noqa: F401  (fixture)
from tests.test_ops_s37 import _locked_leg, _unlock_audits
from tests.test_privacy_s37 import (
    ACCOUNT,
    MASKED,
    REFUSED,
    TYPED,
    assert_kept_masked,
    last_errors,
    old_message,
)
from tests.test_retention_scale import FEW, MANY, many_messages, reads, sql  # noqa: F401
from tests.test_retention_scale import NOW as SCALE_NOW

pytestmark = pytest.mark.db


# --- 1. POST /ops/legs/{id}/unlock with an Idempotency-Key --------------------------------


def _unlock(client, ops: dict[str, str], leg_id: int, key: str | None,  # noqa: ANN001
            **send):  # noqa: ANN003
    headers = dict(ops)
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(f"{API}/ops/legs/{leg_id}/unlock", headers=headers, **send)


def _messages() -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(OutboxMessage))


@pytest.fixture
def locked(client, live, frozen) -> Iterator[tuple[int, dict[str, str]]]:  # noqa: F811
    from tests.test_dispatch import OPS

    leg_id = _locked_leg(client)
    yield leg_id, sign_in(client, OPS)


def test_a_retried_unlock_answers_the_first_answer_and_does_nothing_again(client, locked):
    leg_id, ops = locked
    first = _unlock(client, ops, leg_id, "unlock-1", json={"note": "rider mistyped"})
    assert first.status_code == 200, first.get_json()
    sent = _messages()
    again = _unlock(client, ops, leg_id, "unlock-1", json={"note": "rider mistyped"})
    assert again.status_code == 200, again.get_json()  # was 409 not_locked
    assert again.get_json() == first.get_json()
    assert _messages() == sent  # no new codes sent again
    assert len(_unlock_audits()) == 1
    # A new key is a new request: the leg is not locked any more.
    fresh = _unlock(client, ops, leg_id, "unlock-2", json={"note": "rider mistyped"})
    assert fresh.status_code == 409 and fresh.get_json()["error"]["code"] == "not_locked"


def test_an_unlock_without_a_body_is_the_same_request_as_one_with_none(client, locked):
    leg_id, ops = locked
    assert _unlock(client, ops, leg_id, "unlock-empty").status_code == 200
    again = _unlock(client, ops, leg_id, "unlock-empty", json={})
    assert again.status_code == 200, again.get_json()
    assert len(_unlock_audits()) == 1


def test_the_same_key_with_another_note_is_refused_and_does_nothing(client, locked):
    leg_id, ops = locked
    assert _unlock(client, ops, leg_id, "unlock-k", json={"note": "rider mistyped"}) \
        .status_code == 200
    other = _unlock(client, ops, leg_id, "unlock-k", json={"note": "sender asked again"})
    assert other.status_code == 422, other.get_json()
    error = other.get_json()["error"]
    assert (error["code"], error["field"]) == ("idempotency_key_reused", "Idempotency-Key")
    assert len(_unlock_audits()) == 1
    # The key used for another endpoint (a new code for this leg) is refused too.
    code = client.post(f"{API}/ops/legs/{leg_id}/new-code",
                       headers={**ops, "Idempotency-Key": "unlock-k"},
                       json={"kind": "drop", "reason": "rider mistyped"})
    assert code.status_code == 422 and code.get_json()["error"]["code"] == \
        "idempotency_key_reused"


def test_a_refused_unlock_keeps_no_answer(client, locked):
    leg_id, ops = locked
    missing = _unlock(client, ops, leg_id + 1000, "unlock-r")
    assert missing.status_code == 404
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0
    assert _unlock(client, ops, leg_id, "unlock-r").status_code == 200


def test_the_document_declares_the_unlocks_idempotency_key(client):
    doc = client.get(f"{API}/openapi.json").get_json()
    for path in ("/ops/legs/{leg_id}/unlock", "/ops/legs/{leg_id}/new-code"):
        params = doc["paths"][f"{API}{path}"]["post"]["parameters"]
        headers = {p["name"]: p for p in params if p["in"] == "header"}
        assert "Idempotency-Key" in headers, (path, params)
        assert headers["Idempotency-Key"]["required"] is False


# --- 2. remove-operator for someone who is not an operator -------------------------------


ASHA = "+919812377721"
RAVI = "+919812377722"
CUSTOMER = "+919812377723"


def test_remove_operator_refuses_a_number_that_is_no_operators(clean_db, capsys):
    assert run(capsys, "add-operator", "--phone", RAVI)[0] == 0
    assert run(capsys, "add-operator", "--phone", ASHA)[0] == 0
    with transaction() as s:
        s.add(Person(phone=CUSTOMER, role="customer"))
    code, out, err = run(capsys, "remove-operator", "--phone", CUSTOMER)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "not an operator" in lines[0], err
    assert lines[0].startswith("remove-operator: ") and out == ""
    assert CUSTOMER not in out + err and "+91******7723" in err
    # A removal still exits 0; the same removal run again is refused as above.
    assert run(capsys, "remove-operator", "--phone", ASHA)[0] == 0
    code, out, err = run(capsys, "remove-operator", "--phone", ASHA)
    assert code == 2 and "not an operator" in err and out == "", (out, err)
    code, out, err = run(capsys, "remove-operator", "--phone", "+919812377729")  # nobody's
    assert code == 2 and "nobody has" in err
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == "operator.remove")) == 1


# --- 3. a customer's cancel reason in the history ----------------------------------------


def test_history_reason_keeps_an_account_number_as_its_last_4():
    why = history_reason("cancelled in the app", TYPED)
    assert why.startswith("cancelled in the app: she gave a/c ")
    assert_kept_masked(why)
    assert history_reason("cancelled by ops", "booking 12345678 sent twice") == \
        "cancelled by ops: booking 12345678 sent twice"  # our references stay


def test_a_customers_cancel_reason_keeps_an_account_number_as_its_last_4(
        client, bettiah):  # noqa: F811
    headers = sign_in(client)
    ref = book(client, headers).get_json()["reference"]
    r = client.post(f"{API}/bookings/{ref}/cancel", headers=headers,
                    query_string={"reason": TYPED})
    assert r.status_code == 200, r.get_json()
    why = _history(ref)[-1]
    assert why.startswith("cancelled in the app: "), why
    assert_kept_masked(why)
    assert ACCOUNT not in str(_history(ref))


# --- 4. the redacted_errors pass reads by its own index ----------------------------------


def test_the_masking_of_old_errors_reads_only_the_errors_left_to_mask(
        clean_db, reads, monkeypatch):  # noqa: F811
    """Many failures long redacted and masked since: the pass reads the few left, not
    every failure, and the planner takes the index of migration 0053 for it."""
    many_messages(retention.REDACTED, oldest_days=700, newest_days=100)
    sql("INSERT INTO outbox_messages (channel, to_addr, from_addr, body, status, attempts,"
        " created_at, last_error) SELECT 'sms', '+919812300051', '+14155238886', :redacted,"
        " 'failed', 1, :now - interval '200 days' - g * interval '1 hour', :error"
        " FROM generate_series(1, :n) g", n=MANY // 4, error=MASKED)
    left = [old_message(retention.REDACTED, REFUSED, days=300) for _ in range(3)]
    sql("ANALYZE outbox_messages")
    monkeypatch.setattr(retention, "BATCH", 2)  # the walk goes on from batch to batch

    plans: list[str] = []
    engine = db.engine()

    def explain(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT") and "~*" in statement \
                and "outbox_messages.last_error" in statement:
            cursor.execute("EXPLAIN " + statement, parameters)
            plans.append("\n".join(row[0] for row in cursor.fetchall()))

    event.listen(engine, "before_cursor_execute", explain)
    try:
        done = retention.run(SCALE_NOW)
    finally:
        event.remove(engine, "before_cursor_execute", explain)
    assert done["redacted_errors"] == 3 and not done["unfinished"], done
    assert last_errors(*left) == [MASKED] * 3
    assert plans and all("ix_outbox_messages_unmasked_errors" in p for p in plans), plans
    assert reads["outbox_messages"] < FEW, reads

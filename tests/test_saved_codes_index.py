"""The sweeps that remove ops' new codes from saved API answers read only those answers.

POST /ops/legs/{id}/new-code sent with an Idempotency-Key saves its answer, a live code,
for a retry; the minute sweep (retention.redact_saved_codes) and the daily run
(retention's saved_codes pass) remove the code after CODE_REPLAY. They found those
answers among every keyed API answer of their window (two hours, a week), read one by
one; and the daily run never looked past a week, so codes saved before the sweeps
existed stayed until their answers were deleted at 90 days. A partial index (migration
0038) holds only the answers still holding a code: the sweeps read those, and the daily
run looks back without a bound. Rows read are counted by PostgreSQL itself
(test_retention_scale's ``reads``).
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, text

from core.adapters import db
from core.adapters.api_models import IdempotencyRecord
from core.adapters.db import transaction
from core.services import retention
from tests.test_retention_scale import FEW, MANY, NOW, _now, analyze, reads, sql  # noqa: F401

pytestmark = pytest.mark.db

CODE = "4821"


def person() -> int:
    (row_id,) = sql("INSERT INTO people (phone, role, opted_out) "
                    "VALUES ('+919812300077', 'ops', false) RETURNING id")
    return row_id


def many_answers(owner: int, *, within: str) -> None:
    """MANY keyed app answers (no code) spread over the last ``within``."""
    sql("INSERT INTO idempotency_records (person_id, key, request_hash, status, response,"
        " created_at) SELECT :owner, 'k-' || :within || g, 'h', 201,"
        " CAST('{\"reference\": \"70001234\", \"status\": \"awaiting_payment\"}' AS jsonb),"
        " :now - CAST(:within AS interval) * g / :n FROM generate_series(1, :n) g",
        owner=owner, within=within, n=MANY)


def code_answer(owner: int, key: str, **age: float) -> int:
    answer = {"leg_id": 98765, "kind": "drop", "code": CODE, "reason": "rider lost it"}
    (row_id,) = sql("INSERT INTO idempotency_records (person_id, key, request_hash, status,"
                    " response, created_at) VALUES (:owner, :key, 'h', 200,"
                    " CAST(:answer AS jsonb), :now - CAST(:age AS interval)) RETURNING id",
                    owner=owner, key=key, answer=json.dumps(answer),
                    age=" ".join(f"{v} {k}" for k, v in age.items()))
    return row_id


def codes(*ids: int) -> list[str]:
    with transaction() as s:
        found = dict(s.execute(select(IdempotencyRecord.id, IdempotencyRecord.response)
                               .where(IdempotencyRecord.id.in_(ids))).tuples().all())
    return [found[i]["code"] for i in ids]


def test_the_minute_sweep_reads_the_answers_holding_a_code_not_every_answer(reads):  # noqa: F811
    owner = person()
    many_answers(owner, within="2 hours")  # the app's keyed requests of the sweep's window
    due = code_answer(owner, "k-due", minutes=20)
    analyze("idempotency_records")

    assert retention.redact_saved_codes(NOW) == 1
    assert codes(due) == [retention.REDACTED]
    assert reads["idempotency_records"] < FEW, reads


def test_the_daily_run_removes_a_code_saved_long_ago(reads):  # noqa: F811
    """A code saved a month ago (before the sweeps were, or both were stopped for long):
    the daily run removes it, reading the answers that hold a code, not the month's."""
    owner = person()
    many_answers(owner, within="60 days")
    old = code_answer(owner, "k-old", days=30)
    analyze("idempotency_records")

    done = retention.run(NOW)
    assert done["saved_codes"] == 1, done
    assert codes(old) == [retention.REDACTED]
    assert reads["idempotency_records"] < FEW, reads


def test_the_index_holds_what_the_sweeps_ask_for(clean_db) -> None:
    """The index's predicate names the mark of a removed code: another mark would keep
    every removed code in it (and the sweeps would read them all again)."""
    with db.engine().connect() as conn:
        (definition,) = conn.execute(text(
            "SELECT indexdef FROM pg_indexes WHERE indexname ="
            " 'ix_idempotency_records_holding_code'")).scalars().all()
    assert f"'{retention.REDACTED}'::text" in definition, definition

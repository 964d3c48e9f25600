"""Ops' new pickup/drop code did not stay in the database for the whole retention window.

POST /ops/legs/{id}/new-code answers a new code for ops to read out on the phone; sent with
an Idempotency-Key, its answer was saved for a retry, code and all, in idempotency_records
until the retention run deleted API answers (RETENTION_MESSAGE_DAYS): anyone reading that
table (a backup, a support query) saw a live code for days. Now the saved answer keeps the
code CODE_REPLAY (15 minutes), and only while it works:

- a retry within the window answers the first answer, code included, as before; after it
  (or once a newer code replaced it) 409 code_shown_already, still making nothing;
- the stored code is removed on that read, by the minute sweep (workers.outbox.sweep)
  without any retry, at once when ops make a newer code for the leg, and by the daily run
  for what a stopped sweep left.

Real API (Flask test client, an ops token), PostgreSQL and Redis; time from core.clock.
"""

from __future__ import annotations

from datetime import timedelta
from itertools import count

import pytest
from sqlalchemy import select

from core import clock
from core.adapters.api_models import IdempotencyRecord
from core.adapters.db import transaction
from core.adapters.queue import queue
from core.domain import otp
from core.services import retention
from tests.conftest import run_jobs
from tests.test_api import sign_in
from tests.test_dispatch import OPS, frozen, sms  # noqa: F401  (fixture)
from tests.test_drop_two_parcels import _codes_given, _new_code, _new_code_texts, _two_jobs

pytestmark = pytest.mark.db

WINDOW = timedelta(minutes=15)


def saved(key: str) -> dict:
    """The answer saved for the ops request sent with ``key``."""
    with transaction() as s:
        record = s.scalar(select(IdempotencyRecord).where(IdempotencyRecord.key == key))
        assert record is not None, key
        return dict(record.response)


def without_code(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "code"}


def gone(answer: dict, first: dict) -> bool:
    """The saved ``answer`` no longer holds the code ``first`` answered, and still holds
    the rest of it."""
    return answer["code"] != first["code"] and without_code(answer) == without_code(first)


def refused_as_shown(response) -> bool:
    body = response.get_json()
    return response.status_code == 409 and body["error"]["code"] == "code_shown_already"


def run_minute_sweep(name: str) -> None:
    queue("outbox").enqueue("workers.outbox.sweep", job_id=f"sweep-{name}")
    run_jobs(("outbox",))


def test_a_retry_shows_the_code_within_the_window_and_not_after(client, live, frozen):  # noqa: F811
    rider, bookings, legs = _two_jobs(client, picked=False)
    ops = sign_in(client, OPS)
    t0 = clock.now()
    first = _new_code(client, ops, legs[0], "k-window")
    assert first.status_code == 200, first.get_json()
    answer = first.get_json()
    assert saved("k-window") == answer  # kept for a retry

    clock.freeze(t0 + WINDOW - timedelta(seconds=1))
    again = _new_code(client, ops, legs[0], "k-window")
    assert again.status_code == 200 and again.get_json() == answer

    clock.freeze(t0 + WINDOW)
    late = _new_code(client, ops, legs[0], "k-window")
    assert refused_as_shown(late), late.get_json()
    assert answer["code"] not in late.get_data(as_text=True)
    # The read took the code out of storage; the rest of the answer stays.
    assert gone(saved("k-window"), answer)
    # Still a replay: no new code made, nothing sent again; the key of another request is
    # refused as before.
    assert _codes_given(legs[0]) == 1 and len(_new_code_texts(bookings[0])) == 1
    other = _new_code(client, ops, legs[1], "k-window")
    assert other.status_code == 422
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    # Redacting the saved answer leaves the code itself working.
    assert "picked up" in sms(client, rider, f"PICK {answer['code']} {legs[0]}")[0]


def test_the_minute_sweep_takes_the_code_out_without_a_retry(client, live, frozen):  # noqa: F811
    _, _, legs = _two_jobs(client, picked=False)
    ops = sign_in(client, OPS)
    t0 = clock.now()
    old = _new_code(client, ops, legs[0], "k-old").get_json()
    clock.freeze(t0 + timedelta(minutes=10))
    recent = _new_code(client, ops, legs[1], "k-recent").get_json()

    clock.freeze(t0 + WINDOW + timedelta(minutes=1))
    run_minute_sweep("1")
    assert gone(saved("k-old"), old)
    assert saved("k-recent") == recent  # its window is not over: a retry may still come

    clock.freeze(t0 + timedelta(minutes=10) + WINDOW + timedelta(minutes=1))
    run_minute_sweep("2")
    assert gone(saved("k-recent"), recent)
    late = _new_code(client, ops, legs[1], "k-recent")
    assert refused_as_shown(late), late.get_json()


def test_a_newer_code_for_the_leg_takes_the_older_out_at_once(client, live, frozen,  # noqa: F811
                                                              monkeypatch):
    _, _, legs = _two_jobs(client, picked=False)
    ops = sign_in(client, OPS)
    # Codes all different (a random new code may equal the old one, which then works on).
    serial = count(1000)
    monkeypatch.setattr(otp, "generate_otp",
                        lambda digits=4, rng=None: f"{next(serial):0{digits}d}")
    first = _new_code(client, ops, legs[0], "k-1").get_json()
    second = _new_code(client, ops, legs[0], "k-2", reason="she called again").get_json()
    assert second["code"] != first["code"]
    # The first code no longer works: not kept, not shown to a retry (same minute).
    assert gone(saved("k-1"), first)
    retry = _new_code(client, ops, legs[0], "k-1")
    assert refused_as_shown(retry), retry.get_json()
    # A new drop code leaves the pickup code working, and so in its answer.
    drop = _new_code(client, ops, legs[0], "k-3", kind="drop")
    assert drop.status_code == 200, drop.get_json()
    assert saved("k-2") == second
    again = _new_code(client, ops, legs[0], "k-2", reason="she called again")
    assert again.status_code == 200 and again.get_json() == second


def test_the_daily_run_takes_out_what_a_stopped_sweep_left(client, live, frozen):  # noqa: F811
    _, _, legs = _two_jobs(client, picked=False)
    ops = sign_in(client, OPS)
    t0 = clock.now()
    answer = _new_code(client, ops, legs[0], "k-daily").get_json()
    # No sweep ran (the workers were down for a day).
    done = retention.run(t0 + timedelta(days=1))
    assert done["saved_codes"] == 1
    assert gone(saved("k-daily"), answer)
    assert retention.run(t0 + timedelta(days=2))["saved_codes"] == 0

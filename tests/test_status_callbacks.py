"""Twilio status callbacks the courier way: the webhook queues, one job applies many."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from core.adapters.db import transaction
from core.adapters.models import MessageStatusEvent, OutboxMessage
from core.adapters.redis_conn import redis_client
from core.services import outbox
from tests.conftest import post_twilio, release_scheduled, run_jobs

STATUS = "/webhooks/twilio/status"


def rows(*sids: str) -> list[OutboxMessage]:
    """Outbox rows already handed to Twilio (provider sid known, status "queued")."""
    made = []
    with transaction() as s:
        for n, sid in enumerate(sids):
            r = OutboxMessage(channel="whatsapp", to_addr=f"whatsapp:+9198765000{n:02d}",
                              from_addr="whatsapp:+14155238886", body="hi", status="queued",
                              attempts=1, provider_sid=sid)
            s.add(r)
            s.flush()
            made.append(r.id)
    return made


def status_of(oid: int) -> str:
    with transaction() as s:
        return s.get(OutboxMessage, oid).status


def history() -> list[tuple[int | None, str]]:
    with transaction() as s:
        return [(e.outbox_id, e.status) for e in s.scalars(
            select(MessageStatusEvent).order_by(MessageStatusEvent.id))]


def test_many_callbacks_are_applied_by_one_job_in_order(client):
    a, b = rows("SMa", "SMb")
    for sid, oid, status in (("SMa", a, "sent"), ("SMb", b, "sent"), ("SMa", a, "delivered"),
                             ("SMb", None, "read"), ("SMzz", None, "delivered")):
        path = f"{STATUS}?outbox_id={oid}" if oid else STATUS
        assert post_twilio(client, path, {"MessageSid": sid, "MessageStatus": sid and status}
                           ).status_code == 204
    assert (status_of(a), status_of(b)) == ("queued", "queued")  # nothing applied yet
    assert redis_client().llen(outbox.STATUS_INBOX) == 5
    assert run_jobs() == 1  # one job for the five callbacks
    assert (status_of(a), status_of(b)) == ("delivered", "read")
    # Every callback is history, the unknown sid too (not linked to a row).
    assert history() == [(a, "sent"), (b, "sent"), (a, "delivered"), (b, "read"),
                         (None, "delivered")]
    assert redis_client().llen(outbox.STATUS_INBOX) == 0
    assert not redis_client().exists(outbox.STATUS_JOB_FLAG)


@pytest.fixture
def window(monkeypatch) -> Iterator[None]:
    """The production batching window (tests otherwise apply callbacks at once)."""
    from core.config import reset_settings

    monkeypatch.setenv("STATUS_WINDOW_MS", "1000")
    reset_settings()
    yield
    monkeypatch.undo()
    reset_settings()


def test_callbacks_wait_out_the_window_then_one_job_applies_them(client, window):
    a, b = rows("SMa", "SMb")
    for sid, status in (("SMa", "sent"), ("SMb", "sent"), ("SMa", "delivered")):
        post_twilio(client, STATUS, {"MessageSid": sid, "MessageStatus": status})
    assert run_jobs() == 0  # nothing to run yet: the job waits for the window to end
    assert (status_of(a), status_of(b)) == ("queued", "queued")
    assert release_scheduled(timedelta(seconds=2)) == 1  # one job for the three
    assert run_jobs() == 1
    assert (status_of(a), status_of(b)) == ("delivered", "sent")
    assert not redis_client().exists(outbox.STATUS_JOB_FLAG)


def test_with_a_window_a_callback_arriving_during_the_job_waits_for_the_next_one(
        client, window, monkeypatch):
    (a,) = rows("SMa")
    real = outbox.apply_reports
    calls: list[int] = []

    def apply_and_meanwhile(reports):
        calls.append(len(reports))
        if len(calls) == 1:
            post_twilio(client, STATUS, {"MessageSid": "SMa", "MessageStatus": "delivered"})
        return real(reports)

    monkeypatch.setattr(outbox, "apply_reports", apply_and_meanwhile)
    post_twilio(client, STATUS, {"MessageSid": "SMa", "MessageStatus": "sent"})
    release_scheduled(timedelta(seconds=2))
    assert run_jobs() == 1 and calls == [1]  # the job did not loop on a trickle
    assert status_of(a) == "sent"
    assert release_scheduled(timedelta(seconds=2)) == 1  # the next window's job
    assert run_jobs() == 1 and calls == [1, 1]
    assert status_of(a) == "delivered"


def test_a_backlog_is_worked_off_by_one_job_in_full_batches(clean_db, window):
    a, b = rows("SMa", "SMb")
    r = redis_client()
    r.rpush(outbox.STATUS_INBOX, *[json.dumps([a, "SMa", "sent", None])] * 5,
            json.dumps([b, "SMb", "delivered", None]))
    assert outbox.apply_statuses(batch=2) == 6  # three full batches, no new job between
    assert r.llen(outbox.STATUS_INBOX) == 0 and run_jobs() == 0
    assert release_scheduled(timedelta(seconds=5)) == 0
    assert (status_of(a), status_of(b)) == ("sent", "delivered")


def test_a_callback_arriving_while_the_job_runs_is_applied_by_that_job(client, monkeypatch):
    (a,) = rows("SMa")
    real = outbox.apply_reports
    calls: list[int] = []

    def apply_and_meanwhile(reports):
        calls.append(len(reports))
        if len(calls) == 1:  # a callback comes in while the first batch is applied
            post_twilio(client, STATUS, {"MessageSid": "SMa", "MessageStatus": "delivered"})
        return real(reports)

    monkeypatch.setattr(outbox, "apply_reports", apply_and_meanwhile)
    post_twilio(client, STATUS, {"MessageSid": "SMa", "MessageStatus": "sent"})
    assert run_jobs() == 1
    assert calls == [1, 1]
    assert status_of(a) == "delivered"


def test_webhook_applies_the_callback_itself_when_redis_is_away(client, monkeypatch):
    (a,) = rows("SMa")
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    monkeypatch.setattr(outbox, "redis_client", lambda: dead)
    r = post_twilio(client, f"{STATUS}?outbox_id={a}",
                    {"MessageSid": "SMa", "MessageStatus": "delivered"})
    assert r.status_code == 204
    assert status_of(a) == "delivered"  # nothing was lost


def test_a_failed_batch_stays_queued_and_the_sweep_restarts_it(client, monkeypatch):
    (a,) = rows("SMa")

    def database_away(_reports):
        raise OperationalError("UPDATE", {}, Exception("server closed the connection"))

    monkeypatch.setattr(outbox, "apply_reports", database_away)
    post_twilio(client, STATUS, {"MessageSid": "SMa", "MessageStatus": "delivered"})
    run_jobs()  # the job fails
    assert redis_client().llen(outbox.STATUS_INBOX) == 1
    monkeypatch.undo()
    assert outbox.kick_statuses() is False  # the flag still says a job is on it
    redis_client().delete(outbox.STATUS_JOB_FLAG)  # ... until it expires
    assert outbox.kick_statuses() is True
    assert run_jobs() == 1
    assert status_of(a) == "delivered"


def test_a_report_the_database_refuses_does_not_jam_the_others(clean_db):
    a, b = rows("SMa", "SMb")
    r = redis_client()
    r.rpush(outbox.STATUS_INBOX,
            json.dumps([a, "SMa", "delivered", None]),
            b"not json",
            json.dumps([b, "SMb", "failed", "E" * 40]),  # too long for the column
            json.dumps([b, "SMb", "delivered", None]))
    assert outbox.apply_statuses() == 3
    assert (status_of(a), status_of(b)) == ("delivered", "delivered")
    assert history() == [(a, "delivered"), (b, "delivered")]
    assert r.llen(outbox.STATUS_INBOX) == 0


@pytest.mark.parametrize("outbox_id", ["%C2%B2", "99999999999999999999", "-3", "abc"])
def test_an_odd_id_in_the_url_falls_back_to_the_sid(client, outbox_id):
    (a,) = rows("SMa")
    r = post_twilio(client, f"{STATUS}?outbox_id={outbox_id}",
                    {"MessageSid": "SMa", "MessageStatus": "delivered", "ErrorCode": "X" * 99})
    assert r.status_code == 204
    run_jobs()
    assert status_of(a) == "delivered"

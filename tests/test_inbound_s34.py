"""A WhatsApp message that comes while Redis is away is parked, not lost (session 34).

Twilio does not retry a messaging webhook answered 5xx (its retry policy covers failed
connections only, and a 5xx goes to the Fallback URL if one is set), so the webhook's 503
while Redis restarted lost the customer's message. It is now parked in PostgreSQL and
answered 200; the minute sweep, and each drain job before it starts, queue the parked
messages through the accept script, in the order they were written.
"""
from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import pytest
import redis as redis_lib
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from core import clock
from core.adapters.db import engine, transaction
from core.adapters.models import InboundEvent, InboundParked, OutboxMessage
from core.services import inbound
from tests.conftest import post_twilio, replies_to, run_jobs
from workers import outbox as outbox_jobs

pytestmark = pytest.mark.db

T0 = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def _dead_redis() -> redis_lib.Redis:
    """A client of a Redis that is not there (a restart, a failover): connection refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return redis_lib.Redis(port=port, socket_connect_timeout=0.2)


def wa(phone: str, body: str, sid: str) -> dict[str, str]:
    return {"MessageSid": sid, "AccountSid": "ACsandbox", "From": f"whatsapp:{phone}",
            "To": "whatsapp:+14155238886", "Body": body, "NumMedia": "0",
            "WaId": phone.lstrip("+"), "ProfileName": "Asha"}


def _post_while_redis_away(client, monkeypatch, params: dict[str, str]) -> int:
    real = inbound.redis_client
    monkeypatch.setattr(inbound, "redis_client", _dead_redis)
    try:
        return post_twilio(client, "/webhooks/whatsapp", params).status_code
    finally:
        monkeypatch.setattr(inbound, "redis_client", real)


def _parked() -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(InboundParked.sid).order_by(InboundParked.id)))


def _first_reply_id(sid: str) -> int:
    with transaction() as s:
        found = s.scalar(select(func.min(OutboxMessage.id))
                         .where(OutboxMessage.dedupe_key.like(f"reply:{sid}:%")))
    assert found is not None, f"no reply to {sid}"
    return found


def _claims() -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(InboundEvent.external_id).order_by(InboundEvent.id)))


def test_a_whatsapp_message_answered_503_while_redis_is_away_is_not_lost(client,
                                                                        monkeypatch):
    """The reviewer's case (R8): Redis away for a moment; the message must be answered
    once Redis is back and the workers ran their jobs and sweeps."""
    first = _post_while_redis_away(client, monkeypatch,
                                   wa("+919817170011", "hi", "SMr8lost0001"))
    assert first == 200
    assert _parked() == ["SMr8lost0001"]
    run_jobs()
    outbox_jobs.sweep()
    run_jobs()
    assert replies_to("SMr8lost0001"), "the parked message was never answered"
    assert _parked() == []
    outbox_jobs.sweep()  # the next minute: nothing is handled again
    run_jobs()
    assert len(replies_to("SMr8lost0001")) == 1
    assert _claims() == ["SMr8lost0001"]


def test_a_parked_message_is_handled_once_and_before_the_contacts_later_one(client,
                                                                           monkeypatch):
    """She writes "hi" while Redis restarts (parked), then "1" once it is back (queued
    straight into Redis). The drain job queues the parked one first, in its place: "hi"
    is answered before "1", each once, and no sweep handles either again."""
    clock.freeze(T0)
    assert _post_while_redis_away(client, monkeypatch,
                                  wa("+919817170012", "hi", "SMpark0001")) == 200
    clock.freeze(T0 + timedelta(seconds=5))
    later = post_twilio(client, "/webhooks/whatsapp", wa("+919817170012", "1", "SMpark0002"))
    assert later.status_code == 200
    run_jobs()
    assert _claims() == ["SMpark0001", "SMpark0002"], "the later message overtook"
    assert _first_reply_id("SMpark0001") < _first_reply_id("SMpark0002")
    assert _parked() == []
    answered = (replies_to("SMpark0001"), replies_to("SMpark0002"))
    outbox_jobs.sweep()
    run_jobs()
    assert (replies_to("SMpark0001"), replies_to("SMpark0002")) == answered
    assert _claims() == ["SMpark0001", "SMpark0002"]


def test_the_sweep_puts_a_parked_message_before_a_later_one_still_waiting(client,
                                                                         monkeypatch):
    """The parked message's place in the inbox is by when it was written: a later message
    still waiting in Redis (no drain job ran yet) is handled after it."""
    clock.freeze(T0)
    assert _post_while_redis_away(client, monkeypatch,
                                  wa("+919817170015", "hi", "SMpark0021")) == 200
    clock.freeze(T0 + timedelta(seconds=5))
    assert post_twilio(client, "/webhooks/whatsapp",
                       wa("+919817170015", "1", "SMpark0022")).status_code == 200
    assert inbound.unpark() == 1  # the minute sweep's step, before any drain job ran
    run_jobs()
    assert _claims() == ["SMpark0021", "SMpark0022"]


def test_a_parked_message_whose_retry_got_through_is_handled_once(client, monkeypatch):
    """Redis away: the message is parked, and again when retried (one row). Redis back: a
    retry of it (the Fallback URL, or the same sid again) is queued and answered; the
    sweep then finds the parked copy a duplicate and drops it, nothing answered twice."""
    params = wa("+919817170013", "hi", "SMpark0011")
    assert _post_while_redis_away(client, monkeypatch, params) == 200
    assert _post_while_redis_away(client, monkeypatch, params) == 200
    assert _parked() == ["SMpark0011"]
    # The retry reaches the webhook with Redis back; its drain job runs before any sweep,
    # with the parked row's queueing made to fail, as if it ran on a Redis just gone away.
    real_unpark_if_any = inbound.unpark_if_any
    monkeypatch.setattr(inbound, "unpark_if_any", lambda: 0)
    assert post_twilio(client, "/webhooks/whatsapp", params).status_code == 200
    run_jobs()
    monkeypatch.setattr(inbound, "unpark_if_any", real_unpark_if_any)
    answer = replies_to("SMpark0011")
    assert len(answer) == 1
    assert _parked() == ["SMpark0011"]
    outbox_jobs.sweep()
    run_jobs()
    assert _parked() == []
    assert replies_to("SMpark0011") == answer
    assert _claims() == ["SMpark0011"]


def test_a_parked_message_past_the_dedupe_hour_is_still_handled_once(client, monkeypatch):
    """Redis lost its data (a failover without the last writes): the parked message's sid
    is no longer known there, though its retry was handled. The turn's claim on the sid
    keeps it from being answered twice."""
    params = wa("+919817170016", "hi", "SMpark0031")
    assert _post_while_redis_away(client, monkeypatch, params) == 200
    assert post_twilio(client, "/webhooks/whatsapp", params).status_code == 200
    monkeypatch.setattr(inbound, "unpark_if_any", lambda: 0)
    run_jobs()
    answer = replies_to("SMpark0031")
    inbound.redis_client().delete("inbound:seen:whatsapp:SMpark0031")  # Redis forgot it
    inbound.unpark()
    run_jobs()
    assert _parked() == []
    assert replies_to("SMpark0031") == answer and len(answer) == 1


def test_redis_and_the_database_both_away_is_a_503(client, monkeypatch):
    """Nowhere to keep the message: the webhook answers 503 (Retry-After), not 500, and
    not 200 for a message it did not keep."""
    def database_away(msg):  # noqa: ANN001, ANN202
        raise OperationalError("INSERT", {}, Exception("connection refused"))

    monkeypatch.setattr(inbound, "park", database_away)
    status = _post_while_redis_away(client, monkeypatch,
                                    wa("+919817170014", "hi", "SMpark0041"))
    assert status == 503


def test_the_webhook_does_no_database_work_while_redis_is_up(client):
    """The normal path is unchanged: one Redis script, no statement to PostgreSQL."""
    statements: list[str] = []

    def seen(conn, cursor, statement, *args):  # noqa: ANN001, ANN202
        statements.append(statement)

    eng = engine()
    event.listen(eng, "before_cursor_execute", seen)
    try:
        r = post_twilio(client, "/webhooks/whatsapp", wa("+919817170017", "hi", "SMpark0051"))
    finally:
        event.remove(eng, "before_cursor_execute", seen)
    assert r.status_code == 200
    assert statements == []
    assert _parked() == []


def test_the_fallback_url_set_to_the_same_webhook_is_accepted_and_deduplicated(client):
    """README: the WhatsApp sender's Fallback URL is the webhook itself. Twilio signs the
    fallback request for that URL, with ErrorCode and ErrorUrl added: it passes the
    signature check, and a message the first request had queued is not handled twice."""
    params = wa("+919817170018", "hi", "SMpark0061")
    assert post_twilio(client, "/webhooks/whatsapp", params).status_code == 200
    fallback = {**params, "ErrorCode": "11200",
                "ErrorUrl": "https://example.test/webhooks/whatsapp"}
    assert post_twilio(client, "/webhooks/whatsapp", fallback).status_code == 200
    run_jobs()
    assert len(replies_to("SMpark0061")) == 1
    assert _claims() == ["SMpark0061"]

"""The inbound pipeline under failures: PostgreSQL lost mid-turn, a drainer killed, a
send that failed once, an enqueue that failed after the count, Redis read-only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import psycopg
import pytest
import redis
from sqlalchemy import event, select

from core import i18n
from core.adapters.db import engine, transaction
from core.adapters.models import InboundEvent
from core.adapters.queue import queue
from core.adapters.redis_conn import redis_client
from core.services import inbound
from tests.conftest import post_twilio, release_scheduled, replies_to, run_jobs


def wa(phone: str, body: str, sid: str) -> dict[str, str]:
    return {"MessageSid": sid, "AccountSid": "ACsandbox", "From": f"whatsapp:{phone}",
            "To": "whatsapp:+14155238886", "Body": body, "NumMedia": "0",
            "WaId": phone.lstrip("+"), "ProfileName": "Asha"}


@contextmanager
def db_fails_once(starts_with: str, error: Exception) -> Iterator[list[str]]:
    """The PostgreSQL driver raises ``error`` once, for the first statement that starts
    with ``starts_with`` (as psycopg does when the server goes away under a statement)."""
    hit: list[str] = []

    def before(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
        if not hit and statement.lstrip().upper().startswith(starts_with.upper()):
            hit.append(statement)
            raise error
        return statement, params

    eng = engine()
    event.listen(eng, "before_cursor_execute", before, retval=True)
    try:
        yield hit
    finally:
        event.remove(eng, "before_cursor_execute", before)


def drain_like_rq() -> None:
    """The drainer job as RQ runs it, then its retry (RQ's Retry: after 2 s) if it failed."""
    run_jobs(("inbound",))
    release_scheduled(timedelta(seconds=3))
    run_jobs(("inbound",))


def test_database_lost_mid_turn_reruns_the_turn_instead_of_apologising(client):
    """PostgreSQL drops the connection under the turn's UPDATE of the conversation: the
    drain should keep the message and RQ re-run the turn (inbound.py's promise), so the
    user gets the real answer once, not 'try later' for a message we could have handled."""
    sid = "SMrev17db"
    assert post_twilio(client, "/webhooks/whatsapp",
                       wa("+919817000001", "hi", sid)).status_code == 200
    lost = psycopg.OperationalError("server closed the connection unexpectedly")
    with db_fails_once("UPDATE conversations", lost) as hit:
        drain_like_rq()
    assert hit, "the failure was not injected"
    replies = replies_to(sid)
    assert replies != [i18n.t("common.error_try_later", "hi")], \
        "a lost connection was answered with the apology; the turn was not re-run"
    assert len(replies) == 1 and "हिंदी" in replies[0]  # the language list, once


def test_a_drainer_killed_mid_turn_is_taken_up_by_the_minute_sweep(client):
    """What a SIGKILLed drainer leaves: the contact popped from READY, its lock held (60 s
    TTL), its job gone. Once the lock lapsed, the minute sweep (README: "takes up contacts
    and drainers lost with a killed worker") should get the contact drained; it waits for
    the 600 s scheduled flag instead, and the contact's new messages wait with it."""
    phone = "+919817000002"
    assert post_twilio(client, "/webhooks/whatsapp",
                       wa(phone, "hi", "SMrev17k1")).status_code == 200
    r = redis_client()
    inbox, _scheduled, lock = inbound._keys("whatsapp", phone.lstrip("+"))
    # The drainer job took the contact and its lock, then was killed (nothing cleaned up).
    assert r.lpop(inbound.READY) == f"whatsapp:{phone.lstrip('+')}".encode()
    r.set(lock, "token-of-the-dead-drainer", ex=inbound.LOCK_TTL_S)
    queue("inbound").empty()
    # A minute later: the lock and the dead job's drainer count have lapsed (TTL 60 s).
    r.delete(lock, inbound.DRAINER_COUNT)
    assert post_twilio(client, "/webhooks/whatsapp",
                       wa(phone, "2", "SMrev17k2")).status_code == 200
    inbound.sweep_inboxes()  # the minute sweep
    run_jobs(("inbound",))
    assert r.llen(inbox) == 0, "the killed drainer's contact was not taken up by the sweep"
    assert replies_to("SMrev17k1") and replies_to("SMrev17k2")


def test_replies_to_one_contact_go_out_in_order_when_a_send_fails_once(client, live):
    """Two messages of one contact drained in one go; Twilio refuses the first reply once
    (a 503). The second reply must not overtake it: the user would read the answer to
    "2" (English menu) before the language list it answers."""
    from core.adapters.models import SandboxMessage
    from sandbox.twilio import FAIL_NEXT_KEY

    phone = "+919817000003"
    post_twilio(client, "/webhooks/whatsapp", wa(phone, "hi", "SMrev17o1"))
    post_twilio(client, "/webhooks/whatsapp", wa(phone, "2", "SMrev17o2"))
    redis_client().set(FAIL_NEXT_KEY, 1)  # the emulator answers 503 once
    run_jobs(("inbound",))
    release_scheduled(timedelta(seconds=11))
    run_jobs(("outbox",))
    first, second = replies_to("SMrev17o1"), replies_to("SMrev17o2")
    assert first and second
    with transaction() as s:
        sent = list(s.scalars(select(SandboxMessage.body)
                              .where(SandboxMessage.to_addr == f"whatsapp:{phone}")
                              .order_by(SandboxMessage.id)))
    assert sent == first + second, "the second reply overtook the first"


def test_a_failed_drainer_enqueue_does_not_strand_the_message(client, monkeypatch):
    """Redis drops the connection just after the accept script queued the message, while
    RQ enqueues the drainer: the webhook parks it in PostgreSQL and answers 200 (session
    34: Twilio does not retry a 503), and a retry of it is a duplicate (200).
    The message is in the inbox and the contact in READY, but no drainer exists and the
    drainer count says one does: neither the retry, nor the next jobs, nor the minute
    sweep get it answered."""
    from redis.client import Pipeline

    real_execute = Pipeline.execute
    failed: list[bool] = []

    def execute_fails_once(self, *args, **kwargs):  # noqa: ANN001, ANN202
        if not failed:
            failed.append(True)
            raise redis.exceptions.ConnectionError("Connection reset by peer")
        return real_execute(self, *args, **kwargs)

    def decr_fails(self, *args, **kwargs):  # noqa: ANN001, ANN202
        raise redis.exceptions.ConnectionError("Connection reset by peer")

    params = wa("+919817000004", "hi", "SMrev17q")
    monkeypatch.setattr(Pipeline, "execute", execute_fails_once)
    monkeypatch.setattr(redis.Redis, "decr", decr_fails)  # nor can the count be undone
    first = post_twilio(client, "/webhooks/whatsapp", params)
    monkeypatch.undo()
    assert failed and first.status_code == 200
    assert post_twilio(client, "/webhooks/whatsapp", params).status_code == 200  # retry
    r = redis_client()
    assert r.llen("inbox:whatsapp:919817000004") == 1  # queued by the first try
    assert int(r.get(inbound.DRAINER_COUNT) or 0) == 1  # counted, though never enqueued
    run_jobs(("inbound",))
    inbound.sweep_inboxes()  # the minute sweep
    run_jobs(("inbound",))
    assert replies_to("SMrev17q"), \
        "accepted message stranded: no drainer, and a phantom drainer count blocks the sweep"


def test_redis_read_only_after_a_failover_parks_the_message_not_a_500(client, monkeypatch):
    """After a failover the old primary answers READONLY to the accept script: the
    webhook treats it as any Redis outage, never 500 with an 'unhandled error' traceback:
    the message is parked in PostgreSQL and the answer is 200 (Twilio does not retry a
    messaging webhook answered 5xx)."""
    from sqlalchemy import select

    from core.adapters.db import transaction
    from core.adapters.models import InboundParked

    def read_only(self, *args, **kwargs):  # noqa: ANN001, ANN202
        raise redis.exceptions.ReadOnlyError("You can't write against a read only replica.")

    monkeypatch.setattr(redis.Redis, "evalsha", read_only)
    r = post_twilio(client, "/webhooks/whatsapp", wa("+919817000005", "hi", "SMrev17ro"))
    monkeypatch.undo()
    assert r.status_code == 200, r.get_data(as_text=True)
    with transaction() as s:
        assert list(s.scalars(select(InboundParked.sid))) == ["SMrev17ro"]


def test_a_deadlock_mid_turn_is_retried_and_answered_once(client):
    """Control (expected to pass): a deadlock under the turn runs the turn again."""
    sid = "SMrev17dl"
    post_twilio(client, "/webhooks/whatsapp", wa("+919817000006", "hi", sid))
    with db_fails_once("UPDATE conversations",
                       psycopg.errors.DeadlockDetected("deadlock detected")) as hit:
        run_jobs(("inbound",))
    assert hit
    replies = replies_to(sid)
    assert len(replies) == 1 and "हिंदी" in replies[0]
    with transaction() as s:
        assert list(s.scalars(select(InboundEvent.external_id))) == [sid]


def test_a_drainer_count_for_an_enqueue_that_failed_is_undone(client, monkeypatch):
    """The enqueue fails after the accept script counted a drainer: the count is undone,
    so the next contact's message starts a drainer as if none were about (one that
    drains the first contact too)."""
    from redis.client import Pipeline

    real_execute = Pipeline.execute
    failed: list[bool] = []

    def execute_fails_once(self, *args, **kwargs):  # noqa: ANN001, ANN202
        if not failed:
            failed.append(True)
            raise redis.exceptions.ConnectionError("Connection reset by peer")
        return real_execute(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "execute", execute_fails_once)
    first = post_twilio(client, "/webhooks/whatsapp", wa("+919817000005", "hi", "SMr17u1"))
    monkeypatch.undo()
    assert failed and first.status_code == 200  # parked (session 34)
    assert int(redis_client().get(inbound.DRAINER_COUNT) or 0) == 0
    assert post_twilio(client, "/webhooks/whatsapp",
                       wa("+919817000006", "hi", "SMr17u2")).status_code == 200
    run_jobs(("inbound",))
    assert replies_to("SMr17u1") and replies_to("SMr17u2")


def test_the_minute_sweep_takes_up_inboxes_while_postgresql_is_away(client):
    """The minute sweep's parts run each on its own: PostgreSQL failing the outbox's part
    must not keep the inboxes' (Redis only) from taking up a contact nobody is on."""
    import workers.outbox as outbox_jobs

    phone = "+919817000007"
    assert post_twilio(client, "/webhooks/whatsapp",
                       wa(phone, "hi", "SMr17w1")).status_code == 200
    r = redis_client()
    _inbox, scheduled, _lock = inbound._keys("whatsapp", phone.lstrip("+"))
    r.delete(inbound.READY, scheduled, inbound.DRAINER_COUNT)  # a lost drainer's state
    queue("inbound").empty()
    away = psycopg.OperationalError("the database system is starting up")
    with db_fails_once("SELECT", away) as hit:
        with pytest.raises(Exception, match="starting up"):
            outbox_jobs.sweep()
    assert hit
    assert r.llen(inbound.READY) == 1, "the inboxes' part did not run"
    run_jobs(("inbound",))
    assert replies_to("SMr17w1")

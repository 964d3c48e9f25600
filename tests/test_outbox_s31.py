"""Session 31: one person's messages reach Twilio in the order they were written, with two
or more workers on the outbox queue (each address's messages go in its turn, a PostgreSQL
advisory lock); and notify hands the person it holds to the outbox, which reads their
opt-outs from it instead of reading them again (issue 8)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from rq import SimpleWorker
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from sqlalchemy import select, text

from core import clock
from core.adapters import twilio_gateway
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage, Person, SandboxMessage
from core.adapters.queue import queue
from core.adapters.redis_conn import redis_client
from core.services import notify, outbox
from tests.conftest import run_jobs
from tests.test_ivr_cost_s30 import statements

pytestmark = pytest.mark.db

RAMESH = "+919817000031"


def _to_ramesh(body: str) -> int:
    with transaction() as s:
        row_id = outbox.queue_message(s, channel="sms", to=RAMESH, body=body, work=True)
    assert row_id is not None
    return row_id


def _at_twilio() -> list[str]:
    """What the Twilio emulator took for Ramesh, in the order it took it."""
    with transaction() as s:
        return list(s.scalars(select(SandboxMessage.body)
                              .where(SandboxMessage.to_addr == RAMESH)
                              .order_by(SandboxMessage.id)))


def _row(row_id: int) -> OutboxMessage:
    with transaction() as s:
        row = s.get(OutboxMessage, row_id)
        assert row is not None
        s.expunge(row)
        return row


def _run_retry_of(row_id: int) -> None:
    """Its scheduled retry comes due (the scheduler's part), and a worker runs it."""
    q = queue("outbox")
    registry = ScheduledJobRegistry(queue=q)
    job_id = f"outbox-{row_id}"
    assert job_id in registry.get_job_ids(), "no retry scheduled"
    registry.remove(job_id)
    job = q.fetch_job(job_id)
    assert job is not None
    q._enqueue_job(job)
    run_jobs(("outbox",))


class _ThreadWorker(SimpleWorker):
    """An RQ worker run in a thread (signals belong to the main thread: job timeouts by
    a timer instead)."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


def _worker() -> threading.Thread:
    w = _ThreadWorker([queue("outbox")], connection=redis_client(),
                      serializer=JSONSerializer)
    return threading.Thread(target=w.work, daemon=True, kwargs={
        "burst": True, "with_scheduler": False, "logging_level": "WARNING"})


def _waiting_for_a_turn() -> bool:
    """Whether a sender of this database waits for an address's turn (pg_locks)."""
    with transaction() as s:
        return bool(s.scalar(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND classid = :key AND database = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())"), {"key": outbox.TURN_LOCK_KEY}))


# --- 1. two workers, two messages to one person -----------------------------------------


def test_two_workers_hand_one_persons_messages_to_twilio_in_order(live, monkeypatch):
    """Two RQ workers on the outbox queue. "Rider on the way" and then "delivered" are
    written for Ramesh; worker A takes the first and is slow in its call to Twilio (the
    network), worker B takes the second meanwhile. Before, B handed "delivered" to Twilio
    at once, before "on the way". Now B waits for Ramesh's turn, which A holds: A sends
    "on the way", then the message waiting after it, and B finds it sent."""
    first, second = "1. Rider on the way.", "2. Parcel delivered."
    in_flight, go_on = threading.Event(), threading.Event()
    real_send = twilio_gateway.send_message

    def slow_first(**kw):  # noqa: ANN003 (the gateway's own keywords)
        if kw["body"] == first:
            in_flight.set()
            assert go_on.wait(30), "the test never let the first send go on"
        return real_send(**kw)

    monkeypatch.setattr(twilio_gateway, "send_message", slow_first)
    one, two = _to_ramesh(first), _to_ramesh(second)
    a = _worker()
    a.start()
    assert in_flight.wait(30), "worker A never called Twilio"
    b = _worker()
    b.start()
    # B either sends at once and ends (the old way) or waits for Ramesh's turn.
    deadline = time.monotonic() + 30
    while b.is_alive() and not _waiting_for_a_turn():
        assert time.monotonic() < deadline, "worker B neither sent nor waited"
        b.join(0.02)
    go_on.set()
    a.join(30)
    b.join(30)
    assert not a.is_alive() and not b.is_alive()
    assert _at_twilio() == [first, second], "the later message reached Twilio first"
    assert {_row(one).status, _row(two).status} <= {"queued", "sent", "delivered"}
    assert _row(two).attempts == 1  # sent once, by A's turn; B's job found it sent


def test_a_later_messages_job_run_first_sends_the_earlier_one_first(live):
    """Worker A has taken the first message's job but not started it; worker B runs the
    second's. Before, the second went first. Now B's turn sends Ramesh's earlier waiting
    message first, then the second; A's job then finds the first sent."""
    one = _to_ramesh("1. Your payment link: pay Rs 120.")
    _to_ramesh("2. Reminder: your payment link is waiting.")
    queue("outbox").remove(f"outbox-{one}")  # in worker A's hands, not started
    run_jobs(("outbox",))
    assert _at_twilio() == ["1. Your payment link: pay Rs 120.",
                            "2. Reminder: your payment link is waiting."]
    assert outbox.deliver(one) == "already-queued"  # A's job, at last
    assert len(_at_twilio()) == 2


# --- 2. a message waiting for its retry ------------------------------------------------


def test_messages_held_behind_a_retry_go_as_soon_as_it_goes(live):
    """Twilio refuses the first message once (503): it waits for its retry, and the
    second waits behind it (held back, untried). When the first one's retry goes, the
    second goes right after it in the same turn, not at its own later retry."""
    from sandbox.twilio import FAIL_NEXT_KEY

    redis_client().set(FAIL_NEXT_KEY, 1)
    one = _to_ramesh("1. Your job is ready.")
    run_jobs(("outbox",))
    two = _to_ramesh("2. Pickup at 10:30.")
    run_jobs(("outbox",))
    assert _at_twilio() == []
    assert (_row(two).status, _row(two).attempts, _row(two).last_error) == (
        "pending", 0, outbox.HELD_BACK)
    _run_retry_of(one)
    assert _at_twilio() == ["1. Your job is ready.", "2. Pickup at 10:30."]
    _run_retry_of(two)  # its own retry finds it sent
    assert len(_at_twilio()) == 2


def test_a_message_that_failed_for_good_stops_holding_the_others_back(live):
    """The first message fails every try (Twilio answers 503 three times: its first try
    and both retries, OUTBOX_RETRY_INTERVALS=10,30). The second waits behind it until its
    last try fails; then it goes at once, in that turn."""
    from sandbox.twilio import FAIL_NEXT_KEY

    redis_client().set(FAIL_NEXT_KEY, 3)
    one = _to_ramesh("1. Your job is ready.")
    run_jobs(("outbox",))
    _to_ramesh("2. Pickup at 10:30.")
    run_jobs(("outbox",))
    _run_retry_of(one)  # the second try fails: still waiting
    assert _at_twilio() == []
    _run_retry_of(one)  # the last try fails: it will never go
    assert _row(one).status == "failed"
    assert _at_twilio() == ["2. Pickup at 10:30."]


def test_a_retry_holds_the_later_messages_back_for_ten_minutes_at_most(live):
    """A message Twilio keeps refusing must not hold a person's later ones for long: past
    IN_ORDER_FOR after it was written, a new message goes at once; the old one's own
    retries send it after."""
    from sandbox.twilio import FAIL_NEXT_KEY

    redis_client().set(FAIL_NEXT_KEY, 1)
    one = _to_ramesh("1. Your job is ready.")
    run_jobs(("outbox",))
    assert _row(one).status == "pending"
    clock.freeze(datetime.now(UTC) + outbox.IN_ORDER_FOR + timedelta(minutes=1))
    _to_ramesh("2. Reply HELP to talk to us.")
    run_jobs(("outbox",))
    assert _at_twilio() == ["2. Reply HELP to talk to us."]
    _run_retry_of(one)
    assert _at_twilio() == ["2. Reply HELP to talk to us.", "1. Your job is ready."]


# --- 3. notify hands over the person it holds (issue 8) -----------------------------------


def _person(phone: str, **flags: bool) -> int:
    with transaction() as s:
        person = Person(phone=phone, name="Ramesh", role="partner", preferred_language="en",
                        **flags)
        s.add(person)
        s.flush()
        return person.id


def test_notify_known_phone_does_not_read_the_opt_outs_again(clean_db):
    """notify_known_phone holds the person: the outbox takes their opt-outs from it. The
    whole call is the row's INSERT, one statement (two before: a SELECT of the person's
    opt-outs by the number first)."""
    person_id = _person(RAMESH)
    with transaction() as s:
        person = s.get(Person, person_id)
        assert person is not None
        with statements() as sql:
            row_id = notify.notify_known_phone(s, person, "dispatch.duty_on", sms_only=True)
    assert row_id is not None
    assert len(sql) == 1, "\n".join(sql)
    assert sql[0].startswith("INSERT INTO outbox_messages")


@pytest.mark.parametrize(("flags", "sms_only"), [
    ({"sms_opted_out": True}, True),  # STOP by SMS: no SMS, a work SMS neither
    ({"opted_out": True}, False),  # STOP on WhatsApp: no SMS they do not need
], ids=["sms-stop", "whatsapp-stop"])
def test_a_stopped_person_held_by_the_caller_gets_nothing(clean_db, flags, sms_only):
    person_id = _person(RAMESH, **flags)
    with transaction() as s:
        person = s.get(Person, person_id)
        assert person is not None
        assert notify.notify_known_phone(s, person, "dispatch.duty_on",
                                         sms_only=sms_only) is None
        assert s.scalar(select(OutboxMessage.id)) is None


def test_a_reply_waits_for_its_turn_a_bounded_time_then_goes_back_to_its_job(
        client, live, monkeypatch):
    """Review: a reply sent at once (send_now) runs in a drainer's thread, which RQ's job
    timeout does not reach, holding the contact's inbox lock: it waited for the address's
    turn without end. It waits TURN_WAIT_MS, then is given back untried to its job, which
    sends it once the turn is free."""
    monkeypatch.setattr(outbox, "TURN_WAIT_MS", 50)
    from core.adapters.db import engine

    with engine().connect().execution_options(isolation_level="AUTOCOMMIT") as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k, hashtext(:a))"),
                       {"k": outbox.TURN_LOCK_KEY, "a": RAMESH})
        with transaction() as s:
            row_id = outbox.queue_message(s, channel="sms", to=RAMESH, body="1. Hello",
                                          send_after_commit=True)
        assert row_id is not None
        row = _row(row_id)
        assert (row.status, row.attempts, row.last_error) == ("pending", 0, outbox.HELD_BACK)
        assert _at_twilio() == []
        holder.execute(text("SELECT pg_advisory_unlock(:k, hashtext(:a))"),
                       {"k": outbox.TURN_LOCK_KEY, "a": RAMESH})
    _run_retry_of(row_id)
    assert _at_twilio() == ["1. Hello"]
    with engine().connect() as conn:  # the pool's connections wait as long as before
        assert conn.scalar(text("SHOW lock_timeout")) == "0"

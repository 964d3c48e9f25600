"""Session 32: one person's messages in the order they were written, the cases review left.

A chat reply claimed as it is written, not tried yet, is an earlier message like any
(a later message's turn sends it first); a delivery job waits a bounded time for its
address's turn and comes back later without using a retry; more earlier messages than a
turn reads still go before ours; messages held behind a retry go when it stops holding
them back, not at a retry of their own."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select, text

from core import clock
from core.adapters import twilio_gateway
from core.adapters.db import engine, transaction
from core.adapters.models import SandboxMessage
from core.adapters.queue import queue
from core.adapters.redis_conn import redis_client
from core.config import get_settings
from core.services import outbox
from tests.conftest import run_jobs
from tests.test_outbox_s31 import RAMESH, _at_twilio, _row, _run_retry_of, _to_ramesh, _worker

pytestmark = pytest.mark.db

SITA = "+919817000032"
SENT = ("queued", "sent", "delivered")


def _reply_to_ramesh(body: str) -> int:
    """A chat reply, claimed as it is written and sent by the drainer after the commit."""
    with transaction() as s:
        row_id = outbox.queue_message(s, channel="sms", to=RAMESH, body=body, reply=True,
                                      send_after_commit=True)
    assert row_id is not None
    return row_id


# --- 1. a reply claimed as it is written, not tried yet --------------------------------


@pytest.mark.parametrize("drainer", ["goes-on", "died"])
def test_a_reply_not_sent_yet_goes_before_a_later_message(live, monkeypatch, drainer):
    """Review: a drainer's reply is written already claimed ("sending"); between its
    commit and its send, a status notice written after it by another worker went first
    (its turn read only "pending" rows). Now the notice's turn sends the reply first, then
    the notice; the drainer, going on, finds its reply taken over and sends nothing (or,
    dead, leaves nothing unsent)."""
    paused: list[object] = []
    real_send_now = outbox.send_now
    # The drainer between its commit and its turn.
    monkeypatch.setattr(outbox, "send_now", paused.append)
    reply = _reply_to_ramesh("1. Your booking RC-1 is confirmed.")
    notice = _to_ramesh("2. A rider is on the way.")
    run_jobs(("outbox",))  # the notice's job, on another worker
    if drainer == "goes-on":
        assert len(paused) == 1
        real_send_now(paused[0])  # type: ignore[arg-type]
    assert _at_twilio() == ["1. Your booking RC-1 is confirmed.",
                            "2. A rider is on the way."], "the later message went first"
    assert (_row(reply).status in SENT, _row(reply).attempts) == (True, 1)
    assert _row(notice).status in SENT


def test_a_reply_taken_over_whose_try_fails_gets_its_retry_and_keeps_its_place(
        live, monkeypatch):
    """The later message's turn takes the reply over and Twilio refuses it once (503): the
    reply, which had no job of its own, gets its retrying job, and the later message waits
    behind it; the reply's retry sends both, in order. The drainer, going on, sends
    nothing."""
    from sandbox.twilio import FAIL_NEXT_KEY

    paused: list[object] = []
    real_send_now = outbox.send_now
    monkeypatch.setattr(outbox, "send_now", paused.append)
    reply = _reply_to_ramesh("1. Your booking RC-1 is confirmed.")
    notice = _to_ramesh("2. A rider is on the way.")
    redis_client().set(FAIL_NEXT_KEY, 1)
    run_jobs(("outbox",))
    assert _at_twilio() == []
    assert (_row(reply).status, _row(reply).attempts) == ("pending", 1)
    assert (_row(notice).status, _row(notice).attempts) == ("pending", 0)
    assert real_send_now(paused[0]) == "taken-over"  # type: ignore[arg-type]
    _run_retry_of(reply)
    assert _at_twilio() == ["1. Your booking RC-1 is confirmed.",
                            "2. A rider is on the way."]
    _run_retry_of(notice)  # its job finds it sent
    assert len(_at_twilio()) == 2


def test_a_reply_tried_with_its_outcome_unknown_holds_nothing_back(live, monkeypatch):
    """A reply whose try timed out is "sending" with its outcome unknown: Twilio most
    likely holds it. A later message goes at once, and the reply is not sent again by its
    turn (its reconcile settles it). (Also true before this session: a guard for the
    claim that is now told apart from a try.)"""
    real_send = twilio_gateway.send_message

    def times_out_on_the_reply(**kw):  # noqa: ANN003 (the gateway's own keywords)
        if kw["body"].startswith("1."):
            raise requests.exceptions.ReadTimeout("read timed out")
        return real_send(**kw)

    monkeypatch.setattr(twilio_gateway, "send_message", times_out_on_the_reply)
    reply = _reply_to_ramesh("1. Your booking RC-1 is confirmed.")
    assert (_row(reply).status, _row(reply).attempts) == ("sending", 1)
    _to_ramesh("2. A rider is on the way.")
    run_jobs(("outbox",))
    assert _at_twilio() == ["2. A rider is on the way."]
    assert (_row(reply).status, _row(reply).attempts) == ("sending", 1)


def test_a_reply_its_drainer_never_tried_is_given_back_unasked(live, monkeypatch):
    """A reply whose drainer died before its turn, with no later message to send it, is
    found by the sweep as a lost outcome is; never tried, it is sent without asking Twilio
    (which cannot hold it, and whose list may hold a twin of its text)."""
    paused: list[object] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(outbox, "send_now", paused.append)
        reply = _reply_to_ramesh("1. Your booking RC-1 is confirmed.")
    monkeypatch.setattr(twilio_gateway, "messages_since",
                        lambda **kw: pytest.fail("twilio was asked about a row never tried"))
    clock.freeze(datetime.now(UTC) + outbox.STALE_SENDING + timedelta(minutes=1))
    assert outbox.reconcile(reply) == "given-back"
    run_jobs(("outbox",))
    assert _at_twilio() == ["1. Your booking RC-1 is confirmed."]


# --- 2. a delivery job's wait for a busy turn -------------------------------------------


def _hold_the_turn(conn, to_addr: str, *, take: bool) -> None:  # noqa: ANN001
    what = "pg_advisory_lock" if take else "pg_advisory_unlock"
    conn.execute(text(f"SELECT {what}(:k, hashtext(:a))"),
                 {"k": outbox.TURN_LOCK_KEY, "a": to_addr})


def test_jobs_for_a_busy_address_do_not_hold_the_workers(live, monkeypatch):
    """Review: a delivery job waited for its address's turn without end, so several jobs
    for one busy address could hold every outbox worker while a sign-in code's job waited
    behind them. Now a job waits TURN_WAIT_MS, then ends without sending and comes back
    later as the same job, the row untried and none of its retries used; the worker goes
    on to the sign-in code."""
    monkeypatch.setattr(outbox, "TURN_WAIT_MS", 50)
    bodies = ["1. Your job is ready.", "2. Pickup at 10:30.", "3. Drop at MG Road."]
    with engine().connect().execution_options(isolation_level="AUTOCOMMIT") as holder:
        _hold_the_turn(holder, RAMESH, take=True)
        try:
            rows = [_to_ramesh(body) for body in bodies]
            with transaction() as s:
                code = outbox.queue_message(s, channel="sms", to=SITA,
                                            body="Your RideChain code is 482913.",
                                            dedupe_key=outbox.sign_in_key(), needed=True)
            assert code is not None
            worker = _worker()
            worker.start()
            worker.join(10)
            stuck = worker.is_alive()
        finally:
            _hold_the_turn(holder, RAMESH, take=False)
        worker.join(30)
    assert not stuck, "the worker waited for a busy turn without end"
    with transaction() as s:
        assert list(s.scalars(select(SandboxMessage.body).where(
            SandboxMessage.to_addr == SITA))) == ["Your RideChain code is 482913."]
    assert _at_twilio() == []
    for row_id in rows:
        row = _row(row_id)
        assert (row.status, row.attempts) == ("pending", 0)
        job = queue("outbox").fetch_job(f"outbox-{row_id}")
        assert job is not None and job.get_status() == "scheduled"
        assert job.retries_left == get_settings().outbox_max_retries, "a retry was used"
    _run_retry_of(rows[0])  # its turn sends the later ones too
    assert _at_twilio() == bodies
    for row_id in rows[1:]:
        _run_retry_of(row_id)  # they find their rows sent
    assert _at_twilio() == bodies


# --- 3. more earlier messages than a turn reads -----------------------------------------


@pytest.mark.parametrize("at_once", [False, True], ids=["by-its-job", "sent-after-commit"])
def test_more_earlier_messages_than_a_turn_reads_still_go_first(live, monkeypatch, at_once):
    """Review: a turn reads IN_ORDER_SCAN waiting rows; with that many or more written
    before ours, ours went after the ones read and ahead of the rest. Now the ones read go,
    and ours comes back (its job) to go after the rest. (IN_ORDER_SCAN made 3 here.)"""
    monkeypatch.setattr(outbox, "IN_ORDER_SCAN", 3)
    bodies = [f"{i}. Message {i}." for i in range(1, 6)]
    earlier = [_to_ramesh(body) for body in bodies[:4]]
    for row_id in earlier:  # their jobs are in other workers' hands, not started
        queue("outbox").remove(f"outbox-{row_id}")
    if at_once:
        mine = _reply_to_ramesh(bodies[4])
    else:
        mine = _to_ramesh(bodies[4])
        run_jobs(("outbox",))
    assert _at_twilio() == bodies[:3], "ours went ahead of earlier messages"
    assert (_row(mine).status, _row(mine).attempts) == ("pending", 0)
    _run_retry_of(mine)
    assert _at_twilio() == bodies


def test_earlier_messages_past_their_hold_do_not_fill_a_turns_scan(live, monkeypatch):
    """Earlier messages that failed a try and were written over IN_ORDER_FOR ago hold
    nothing back (their own retries send them): however many, they must not fill the
    scan and keep ours waiting for them. (Also true before this session: a guard for the
    full scan's wait.)"""
    from sandbox.twilio import FAIL_NEXT_KEY

    monkeypatch.setattr(outbox, "IN_ORDER_SCAN", 2)
    redis_client().set(FAIL_NEXT_KEY, 2)
    _to_ramesh("1. Your job is ready.")
    run_jobs(("outbox",))
    clock.freeze(datetime.now(UTC) + outbox.IN_ORDER_FOR + timedelta(minutes=1))
    _to_ramesh("2. Pickup at 10:30.")
    run_jobs(("outbox",))
    assert _at_twilio() == []  # both failed a try; both wait for their retries
    _to_ramesh("3. Reply HELP to talk to us.")
    run_jobs(("outbox",))
    assert _at_twilio() == ["3. Reply HELP to talk to us."]


# --- 4. a message held behind a retry, when the retry stops holding it -------------------


def _runs_in(job_id: str) -> float:
    """How many seconds from now the scheduled job runs (RQ's clock: the wall's)."""
    registry = ScheduledJobRegistry(queue=queue("outbox"))
    at = redis_client().zscore(registry.key, job_id)
    assert at is not None, "no run scheduled"
    return max(0.0, at - time.time())


def test_a_message_held_behind_a_retry_goes_when_the_hold_ends(live, monkeypatch):
    """Review: a message held behind an earlier one waiting for its retries went only at
    its own next retry once IN_ORDER_FOR had passed: with the default intervals (10, 30,
    120, 600 s) its fourth, 760 s (12.7 min) after its first try, four of its five retries
    used up by waiting. Now its job comes back when the hold ends (or sooner), using none,
    and it goes then. The scheduler is played by moving the clock to each scheduled run;
    the retries are the default ones (the tests' are 10 and 30 s)."""
    from sandbox.twilio import FAIL_NEXT_KEY

    defaults = dataclasses.replace(get_settings(), outbox_max_retries=5,
                                   outbox_retry_intervals=(10, 30, 120, 600, 1800))
    monkeypatch.setattr(outbox, "get_settings", lambda: defaults)
    t0 = datetime.now(UTC)
    clock.freeze(t0)
    redis_client().set(FAIL_NEXT_KEY, 1)
    _to_ramesh("1. Your job is ready.")
    run_jobs(("outbox",))
    # (Its retries at +10 s, +40 s, +160 s and +760 s fail as well: left unrun here.)
    held = _to_ramesh("2. Pickup at 10:30.")
    run_jobs(("outbox",))
    while not _at_twilio() and clock.now() < t0 + timedelta(minutes=20):
        clock.freeze(clock.now() + timedelta(seconds=_runs_in(f"outbox-{held}")))
        _run_retry_of(held)
    assert _at_twilio() == ["2. Pickup at 10:30."]
    went = clock.now() - t0
    assert went <= outbox.IN_ORDER_FOR + timedelta(seconds=5), f"went {went} after"
    job = queue("outbox").fetch_job(f"outbox-{held}")
    assert job is not None and job.retries_left == 5


# --- the cost of a free turn -------------------------------------------------------------


@pytest.mark.parametrize("sender", ["its-job", "sent-after-commit"])
def test_a_free_turn_is_taken_in_one_statement(live, monkeypatch, sender):
    """Session 32: the bounded wait (set lock_timeout, take the turn, set it back) cost
    every delivery job and every chat reply three statements for a turn that is nearly
    always free. The turn is asked for without waiting first: one statement when free (the
    wait only when another sender holds it, tests above); the message still goes."""
    from sqlalchemy import event

    seen: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # noqa: ANN001 (SQLAlchemy's event)
        seen.append(" ".join(statement.split()))

    event.listen(engine(), "before_cursor_execute", count)
    try:
        if sender == "its-job":
            row = _to_ramesh("1. A rider is on the way.")
            run_jobs(("outbox",))
        else:
            row = _reply_to_ramesh("1. A rider is on the way.")
    finally:
        event.remove(engine(), "before_cursor_execute", count)
    assert _at_twilio() == ["1. A rider is on the way."]
    assert _row(row).status in SENT
    turn = [s for s in seen if "advisory_lock" in s and "unlock" not in s]
    assert len(turn) == 1, turn
    assert not [s for s in seen if "lock_timeout" in s], "a free turn waited as a busy one"


# --- review of the above (session 32) ---------------------------------------------------


def _due_now(job_id: str) -> None:
    """A scheduled job's time has come (RQ's scheduler, run by hand)."""
    q = queue("outbox")
    registry = ScheduledJobRegistry(queue=q)
    assert job_id in registry.get_job_ids(), f"{job_id} is not scheduled"
    registry.remove(job_id)
    job = q.fetch_job(job_id)
    assert job is not None
    q._enqueue_job(job)


def test_a_new_job_under_an_old_jobs_id_starts_its_own_come_backs(live, monkeypatch):
    """Review: RQ saves a job over the hash an earlier job of its id left, so the sweep's
    new job for a row whose job had used up its come-backs started with that count and
    failed at its first come-back (the row then went once a sweep minute). A new job
    under the id starts its own count."""
    monkeypatch.setattr(outbox, "TURN_WAIT_MS", 20)
    monkeypatch.setattr(outbox, "COME_BACK_MAX", 2)
    q = queue("outbox")
    with engine().connect().execution_options(isolation_level="AUTOCOMMIT") as holder:
        _hold_the_turn(holder, RAMESH, take=True)
        try:
            row = _to_ramesh("1. Your job is ready.")
            job_id = f"outbox-{row}"
            run_jobs(("outbox",))  # come-back 1
            _due_now(job_id)
            run_jobs(("outbox",))  # come-back 2
            _due_now(job_id)
            run_jobs(("outbox",))  # past COME_BACK_MAX: failed
            failed = q.fetch_job(job_id)
            assert failed is not None and failed.get_status() == "failed"
            clock.freeze(datetime.now(UTC) + timedelta(minutes=2))
            outbox.sweep()  # the still pending row's new job
            run_jobs(("outbox",))  # the turn still busy: its first come-back
            again = q.fetch_job(job_id)
            assert again is not None and again.get_status() == "scheduled", \
                "the sweep's new job inherited the old one's come-backs"
        finally:
            _hold_the_turn(holder, RAMESH, take=False)
    _due_now(job_id)
    run_jobs(("outbox",))
    assert _at_twilio() == ["1. Your job is ready."]


def test_a_reply_given_back_for_a_busy_turn_comes_back_soon_with_all_its_retries(
        live, monkeypatch):
    """Review: a chat reply given back untried (its address's turn busy) got a job that
    first ran after the first retry interval, with one retry fewer, though it was never
    tried. It comes back after TURN_AGAIN_S, as a delivery job does, every retry kept."""
    monkeypatch.setattr(outbox, "TURN_WAIT_MS", 20)
    with engine().connect().execution_options(isolation_level="AUTOCOMMIT") as holder:
        _hold_the_turn(holder, RAMESH, take=True)
        try:
            reply = _reply_to_ramesh("1. Your booking RC-1 is confirmed.")
        finally:
            _hold_the_turn(holder, RAMESH, take=False)
    assert (_row(reply).status, _row(reply).attempts) == ("pending", 0)
    job = queue("outbox").fetch_job(f"outbox-{reply}")
    assert job is not None and job.retries_left == get_settings().outbox_max_retries
    assert _runs_in(f"outbox-{reply}") <= outbox.TURN_AGAIN_S
    _due_now(f"outbox-{reply}")
    run_jobs(("outbox",))
    assert _at_twilio() == ["1. Your booking RC-1 is confirmed."]


def test_a_reply_its_drainer_never_tried_is_given_back_while_lookups_pause(
        live, monkeypatch):
    """Review: a reply whose drainer died before its try needs no look-up (Twilio cannot
    hold it), but the sweep gave it no reconcile job while look-ups paused for another
    row's failed look-up: it waited out the pause, unsent."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(outbox, "send_now", lambda claimed: None)
        reply = _reply_to_ramesh("1. Your booking RC-1 is confirmed.")
    assert (_row(reply).status, _row(reply).attempts) == ("sending", 0)  # never tried
    clock.freeze(datetime.now(UTC) + outbox.STALE_SENDING + timedelta(minutes=1))
    until = int((clock.now() + timedelta(minutes=10)).timestamp())
    redis_client().set(outbox.LOOKUP_PAUSE_KEY, f"{until} 1")
    outbox.sweep()
    run_jobs(("outbox",))  # its reconcile gives it back; its delivery job sends it
    assert _at_twilio() == ["1. Your booking RC-1 is confirmed."]

"""The rating question is owed in the database, not only in Redis (core.services.rating).

A customer busy when their parcel is delivered is asked later by a chain of RQ jobs, each
scheduling the next. RQ's scheduled jobs live only in Redis: a flush or a failover, or a
try that failed on the database, ended the chain and the customer was never asked. Now a
``rating_asks`` row says the booking is still to be asked, and the dispatch sweep (every
minute) schedules a try anew when its job is gone: once, never after the window, never a
second try beside a waiting one, in a few statements however many rows there are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from rq.registry import ScheduledJobRegistry
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import OperationalError

from core import clock
from core.adapters import db
from core.adapters.api_models import RatingAsk
from core.adapters.db import transaction
from core.adapters.models import Person
from core.adapters.queue import queue
from core.adapters.redis_conn import redis_client
from core.services import dispatch, notify, rating
from tests.conftest import run_jobs
from tests.test_conversations import START
from tests.test_rating_more import asked, deliver_while_chatting, waiting_asks
from tests.test_whatsapp_rating import (
    chat,  # noqa: F401  (fixture)
    sent_to_customer,
    step,
    t,
    wa,
)

pytestmark = pytest.mark.db


def lose_redis() -> None:
    """Redis loses its data (a flush, a failover to a replica behind): this test's own
    database only, as every test has one."""
    redis_client().flushdb()


def sweep_at(when: datetime) -> None:
    """The dispatch sweep at ``when``, run through RQ with every job it starts now."""
    clock.freeze(when)
    queue("default").enqueue("workers.dispatch.sweep")
    assert run_jobs(("default",)) >= 1


def ask_rows(booking_id: int) -> int:
    """The booking's rating_asks rows (1 while it is owed a question)."""
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(RatingAsk)
                        .where(RatingAsk.booking_id == booking_id)) or 0


def ask_questions(ref: str) -> list[str]:
    """The rating questions about booking ``ref`` sent to the customer."""
    return [b for b in sent_to_customer() if b == t("bot.rate.ask", ref=ref)]


def run_waiting_try(booking_id: int, at: datetime) -> str:
    """At ``at``, RQ's scheduler moves the booking's waiting try into the queue and a
    worker runs it; its status after."""
    clock.freeze(at)
    (job_id,) = waiting_asks(booking_id)
    q = queue("default")
    ScheduledJobRegistry(queue=q).remove(job_id)
    q._enqueue_job(q.fetch_job(job_id))
    run_jobs(("default",))
    return q.fetch_job(job_id).get_status()


def test_a_try_redis_lost_is_made_again_by_the_sweep_and_asks_once(chat):  # noqa: F811
    bid, ref, _ = deliver_while_chatting(chat)  # wrote at START, delivered a minute later
    assert waiting_asks(bid) == [f"rate-ask-{bid}-2"]
    # Past the try's time while its job still waits (a busy worker): no second try.
    sweep_at(START + timedelta(minutes=13))
    assert waiting_asks(bid) == [f"rate-ask-{bid}-2"] and not asked(bid)
    lose_redis()
    assert waiting_asks(bid) == []
    sweep_at(START + timedelta(minutes=14))  # quiet 14 minutes: asked now
    assert asked(bid) and step() == "rate"
    assert ask_questions(ref) == [t("bot.rate.ask", ref=ref)]
    assert ask_rows(bid) == 0 and waiting_asks(bid) == []
    for later in (timedelta(minutes=15), timedelta(hours=5), timedelta(days=1)):
        sweep_at(START + later)
    assert ask_questions(ref) == [t("bot.rate.ask", ref=ref)] and waiting_asks(bid) == []
    assert t("bot.rate.thanks", ref=ref, stars="⭐" * 5) in wa(chat, "5")


def test_redis_lost_before_the_try_is_due_the_sweep_waits_for_its_time(chat):  # noqa: F811
    bid, ref, _ = deliver_while_chatting(chat)
    lose_redis()
    sweep_at(START + timedelta(minutes=5))  # the try is due at START + 11 minutes
    assert waiting_asks(bid) == [] and not asked(bid) and ask_rows(bid) == 1
    sweep_at(START + timedelta(minutes=12))
    assert asked(bid) and ask_questions(ref) == [t("bot.rate.ask", ref=ref)]


def test_a_try_that_failed_on_the_database_is_tried_again_by_the_sweep(chat, monkeypatch):  # noqa: F811
    bid, ref, _ = deliver_while_chatting(chat)

    def database_gone(*args: Any, **kw: Any) -> None:
        raise OperationalError("INSERT INTO outbox_messages", {},
                               Exception("the database system is shutting down"))

    monkeypatch.setattr(notify, "send_to_person", database_gone)
    assert run_waiting_try(bid, START + timedelta(minutes=12)) == "failed"
    monkeypatch.undo()
    assert not asked(bid) and waiting_asks(bid) == [] and ask_rows(bid) == 1
    sweep_at(START + timedelta(minutes=13))
    assert asked(bid) and step() == "rate"
    assert ask_questions(ref) == [t("bot.rate.ask", ref=ref)]
    assert ask_rows(bid) == 0 and waiting_asks(bid) == []


def test_a_try_a_killed_worker_left_started_is_made_again_by_the_sweep(chat):  # noqa: F811
    from rq.job import JobStatus
    from rq.utils import now as rq_now

    bid, ref, _ = deliver_while_chatting(chat)
    (job_id,) = waiting_asks(bid)
    q = queue("default")
    ScheduledJobRegistry(queue=q).remove(job_id)
    # A worker took the try and was SIGKILLed in it long ago: "started" by a worker that
    # is gone, its time up (what RQ leaves until its maintenance, minutes later).
    job = q.fetch_job(job_id)
    job.worker_name = "killed-worker"
    job.started_at = rq_now() - timedelta(seconds=(job.timeout or q.DEFAULT_TIMEOUT) + 61)
    job.set_status(JobStatus.STARTED)
    job.save()
    sweep_at(START + timedelta(minutes=13))
    assert asked(bid) and ask_questions(ref) == [t("bot.rate.ask", ref=ref)]
    assert ask_rows(bid) == 0


def test_a_try_made_again_finds_the_customer_busy_and_the_chain_goes_on(chat):  # noqa: F811
    bid, ref, _ = deliver_while_chatting(chat)
    lose_redis()
    clock.freeze(START + timedelta(minutes=20))
    wa(chat, "hi")  # busy again when the sweep comes
    sweep_at(START + timedelta(minutes=21))
    assert not asked(bid)
    # The sweep's try (3) found them busy and scheduled the next (4): one, as ever.
    assert waiting_asks(bid) == [f"rate-ask-{bid}-4"]
    assert run_waiting_try(bid, START + timedelta(minutes=70)) == "finished"
    assert asked(bid) and ask_questions(ref) == [t("bot.rate.ask", ref=ref)]


def test_no_question_after_the_window_even_when_a_try_was_lost(chat):  # noqa: F811
    bid, ref, delivered = deliver_while_chatting(chat)
    ends = delivered + rating.RATING_WINDOW
    lose_redis()
    # Just before the window ends the customer is busy: the sweep's try finds them so and
    # leaves the last try for a minute before the end.
    clock.freeze(ends - timedelta(minutes=5))
    wa(chat, "hi")
    sweep_at(ends - timedelta(minutes=4))
    assert waiting_asks(bid) == [f"rate-ask-{bid}-4"] and not asked(bid)
    # The workers were away until well after the end; the customer has been quiet since.
    sweep_at(ends + timedelta(minutes=20))
    assert ask_rows(bid) == 0  # forgotten: too late
    assert run_waiting_try(bid, ends + timedelta(minutes=20)) == "finished"
    lose_redis()
    sweep_at(ends + timedelta(minutes=21))
    assert not asked(bid) and ask_questions(ref) == [] and step() == "menu"
    assert waiting_asks(bid) == []


# --- cost: a few statements whatever the number of rows --------------------------------

@contextmanager
def statements() -> Iterator[list[tuple[str, Any]]]:
    """The SQL statements (and parameters) run on the engine inside the block."""
    seen: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        seen.append((statement, parameters))

    engine = db.engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


NOW = START + timedelta(days=1)
NOT_DUE, DUE, WAITING, OVER = 5000, 60, 30, 40


def owed_in_bulk() -> dict[str, list[int]]:
    """A busy two days: NOT_DUE bookings whose try is still to come, DUE ones whose try
    Redis lost, WAITING ones whose try is late but still waits in RQ, OVER ones whose
    window has ended (booking ids by kind)."""
    kinds = [("not_due", NOT_DUE), ("due", DUE), ("waiting", WAITING), ("over", OVER)]
    with transaction() as s:
        person = Person(phone="+917000000001", role="customer")
        s.add(person)
        s.flush()
        s.execute(text(
            """INSERT INTO bookings (reference, customer_id, channel, status, pickup_lat,
                   pickup_lng, drop_lat, drop_lng, speed_tier, vehicle_type, distance_m,
                   fare, total_paise, commission_paise, partner_share_paise, version,
                   created_at, updated_at)
               SELECT 'R' || lpad(g::text, 7, '0'), :person, 'whatsapp', 'delivered', 26.8,
                      84.5, 26.9, 84.6, 'standard', 'bicycle', 5000, '{}', 10000, 2000, 8000,
                      3, :now, :now
               FROM generate_series(1, :n) g"""),
            {"person": person.id, "now": NOW, "n": sum(n for _, n in kinds)})
        ids = list(s.scalars(text("SELECT id FROM bookings ORDER BY id")))
        out: dict[str, list[int]] = {}
        for kind, n in kinds:
            out[kind], ids = ids[:n], ids[n:]
        due_at = {"not_due": NOW + timedelta(hours=1), "due": NOW - timedelta(minutes=5),
                  "waiting": NOW - timedelta(minutes=5), "over": NOW - timedelta(minutes=2)}
        ends_at = {"over": NOW - timedelta(minutes=1)}
        s.execute(RatingAsk.__table__.insert(), [
            {"booking_id": b, "tries": 3, "due_at": due_at[kind],
             "ends_at": ends_at.get(kind, NOW + timedelta(hours=12))}
            for kind, bids in out.items() for b in bids])
    with db.engine().begin() as conn:  # as autovacuum would
        conn.execute(text("ANALYZE rating_asks"))
    clock.freeze(NOW - timedelta(minutes=6))
    for b in out["waiting"]:  # try 3 of these waits in RQ, as the chain left it
        rating._schedule(b, 3, timedelta(hours=1))
    return out


def test_the_sweep_reads_the_due_rows_only_in_a_few_statements(clean_db):
    owed = owed_in_bulk()
    clock.freeze(NOW)
    with statements() as dispatch_alone:
        dispatch.sweep()
    from workers import dispatch as dispatch_jobs

    with statements() as seen:
        done = dispatch_jobs.sweep()
    assert done["rating_asks"] == DUE
    ours = [(sql, params) for sql, params in seen if "rating_asks" in sql]
    # And the check for handoffs nobody answered in time (handoff.alert_unanswered): one.
    handoffs = [sql for sql, _ in seen if "FROM handoffs" in sql]
    assert [sql.split()[0] for sql in handoffs] == ["SELECT"]
    assert len(seen) == len(dispatch_alone) + len(ours) + len(handoffs)
    assert [sql.split()[0] for sql, _ in ours] == ["SELECT", "DELETE", "UPDATE"]
    # Each lost try is scheduled again, now; the waiting ones are left alone; the ended
    # ones forgotten; those still to come untouched.
    q = queue("default")
    queued = set(q.get_job_ids())
    assert {f"rate-ask-{b}-4" for b in owed["due"]} <= queued
    assert not {f"rate-ask-{b}-4" for b in owed["waiting"] + owed["not_due"]} & queued
    assert all(waiting_asks(b) == [f"rate-ask-{b}-3"] for b in owed["waiting"])
    with transaction() as s:
        left = dict(s.execute(select(RatingAsk.tries, func.count())
                              .group_by(RatingAsk.tries)).all())
    assert left == {3: NOT_DUE + WAITING, 4: DUE}
    # PostgreSQL's plan for the statement the sweep sent: the due-time index, from the
    # start of the range, not a read of the whole table.
    select_sql, params = ours[0]
    with db.engine().connect() as conn:
        plan = "\n".join(conn.exec_driver_sql("EXPLAIN " + select_sql, params).scalars())
    assert "ix_rating_asks_due_at" in plan and "Seq Scan" not in plan, plan
    # A minute later nothing is due: one statement.
    clock.freeze(NOW + timedelta(minutes=1))
    with statements() as again:
        assert rating.sweep() == 0
    assert len(again) == 1


def test_the_ratings_sweep_runs_when_dispatch_s_sweep_fails(chat, monkeypatch):  # noqa: F811
    bid, ref, _ = deliver_while_chatting(chat)
    lose_redis()

    def dispatch_fails() -> dict[str, int]:
        raise OperationalError("SELECT 1", {}, Exception("one bad leg"))

    monkeypatch.setattr(dispatch, "sweep", dispatch_fails)
    sweep_at(START + timedelta(minutes=14))
    assert asked(bid) and ask_questions(ref) == [t("bot.rate.ask", ref=ref)]

"""Session 34, ops alerts sent later (helper H17).

A daytime alert raised at night ("no partner for RC1" at 23:00) waits for the team's
opening; a window's later alerts wait for its summary. Their jobs retry with backoff (a
run that meets PostgreSQL restarting is not the alert's only chance), a job failed for
good is scheduled again by a later raise of its cause, and the night's alert is kept in
PostgreSQL so the dispatch sweep sends it even when Redis lost its job. A summary's held
refs are dropped only once it is in the outbox.

Through RQ (run_jobs / release_scheduled); the clock is controlled, never slept.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import OpsDeferredAlert, OutboxMessage
from core.adapters.queue import queue
from core.adapters.redis_conn import redis_client
from core.services import dispatch
from tests.conftest import release_scheduled, run_jobs
from tests.test_ops_hours import hours, india  # noqa: F401 (fixture)

pytestmark = pytest.mark.db


def _blip() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("server closed the connection"))


def night_alert(key: str) -> int:
    """ "No partner for RC1" raised at 23:00 (the team's hours 08:00-21:00)."""
    clock.freeze(india(23))
    with transaction() as s:
        return dispatch.alert_ops(s, "dispatch.ops_no_partner", dedupe_key=key,
                                  ref="RC1", job=1)


def sent(key: str) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.dedupe_key.like(f"{key}-%")).order_by(OutboxMessage.id)))


def kept() -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(OpsDeferredAlert)) or 0


def dispatch_sweep_at(when) -> None:  # noqa: ANN001
    """The dispatch sweep job at ``when``, through RQ, with the messages it queues."""
    clock.freeze(when)
    queue("default").enqueue("workers.dispatch.sweep")
    run_jobs()


def test_a_night_alert_whose_morning_run_meets_a_database_blip_still_reaches_ops(
        clean_db, hours, monkeypatch):  # noqa: F811
    """Reviewer R8: the job at 08:00 fails once (PostgreSQL restarting); its retry sends."""
    hours("08:00-21:00")
    assert night_alert("r8-night-1") == 0  # kept for the morning
    real = dispatch.send_deferred_alert
    tries: list[int] = []

    def blip_once(*args, **kwargs):  # noqa: ANN002,ANN003
        tries.append(1)
        if len(tries) == 1:
            raise _blip()
        return real(*args, **kwargs)

    monkeypatch.setattr(dispatch, "send_deferred_alert", blip_once)
    clock.freeze(india(8, 1, day=2))
    release_scheduled(timedelta(hours=10))
    run_jobs()
    # The morning goes on: every retry due in the next two hours runs (no sweep here).
    clock.freeze(india(10, day=2))
    release_scheduled(timedelta(hours=12))
    run_jobs()
    assert sent("r8-night-1"), f"tried {len(tries)} time(s); ops never told"
    assert len(tries) == 2
    assert kept() == 0  # its row went with the SMS


def test_a_night_alert_whose_job_failed_for_good_is_scheduled_again_by_a_later_raise(
        clean_db, hours, monkeypatch):  # noqa: F811
    """Every try of the morning job fails (an outage longer than its retries): the job is
    kept "failed" for 7 days. The booking is still without a partner that night and the
    alert is raised again: its job is scheduled again, not skipped as "already there"."""
    assert night_alert("h17-failed-1") == 0

    def always_down(*args, **kwargs):  # noqa: ANN002,ANN003
        raise _blip()

    monkeypatch.setattr(dispatch, "send_deferred_alert", always_down)
    clock.freeze(india(8, 1, day=2))
    for _ in range(7):  # the first run and its 5 retries
        release_scheduled(timedelta(hours=12))
        run_jobs()
    job = queue("default").fetch_job("ops-deferred-h17-failed-1")
    assert job is not None and job.get_status() == "failed"
    monkeypatch.undo()
    clock.freeze(india(23, day=2))
    with transaction() as s:
        assert dispatch.alert_ops(s, "dispatch.ops_no_partner", dedupe_key="h17-failed-1",
                                  ref="RC1", job=1) == 0
    job = queue("default").fetch_job("ops-deferred-h17-failed-1")
    assert job is not None and job.get_status() == "scheduled"
    assert job.retries_left == 5  # a fresh budget, not the spent one
    clock.freeze(india(8, 1, day=3))
    release_scheduled(timedelta(hours=12))
    run_jobs()
    assert sent("h17-failed-1")


def test_a_night_alert_lost_with_redis_is_sent_by_the_morning_sweep(
        clean_db, hours):  # noqa: F811
    """Redis is flushed overnight (README, "Losing Redis": it never holds the only copy of
    a message we must send): the job is gone, the alert's row is not; the sweep sends it
    a few minutes after the opening, once."""
    assert night_alert("h17-flush-1") == 0
    redis_client().flushdb()
    dispatch_sweep_at(india(8, 2, day=2))
    assert sent("h17-flush-1") == []  # its job may still come: the sweep waits a little
    dispatch_sweep_at(india(8, 6, day=2))
    told = sent("h17-flush-1")
    assert told and kept() == 0
    dispatch_sweep_at(india(8, 10, day=2))
    assert sent("h17-flush-1") == told  # once


def test_a_night_alert_sent_by_its_job_is_not_sent_again_by_the_sweep(
        clean_db, hours):  # noqa: F811
    assert night_alert("h17-once-1") == 0
    assert kept() == 1
    clock.freeze(india(8, 0, day=2))
    release_scheduled(timedelta(hours=12))
    run_jobs()
    told = sent("h17-once-1")
    assert told and kept() == 0
    dispatch_sweep_at(india(8, 30, day=2))
    assert sent("h17-once-1") == told


def test_a_summary_whose_run_meets_a_database_blip_still_names_the_held_alerts(
        clean_db, hours, monkeypatch):  # noqa: F811
    """In the team's hours "no partner" for RC1 goes at once and opens a window; RC2 and
    RC3 are held for its summary. The summary's run meets PostgreSQL restarting: its
    retry still names RC2 and RC3 (they were not dropped by the failed run)."""
    clock.freeze(india(10))
    for n in (1, 2, 3):
        clock.freeze(india(10, n))
        with transaction() as s:
            told = dispatch.alert_ops(s, "dispatch.ops_no_partner",
                                      dedupe_key=f"h17-sum-{n}", ref=f"RC{n}", job=n)
        assert (told > 0) == (n == 1)
    real = dispatch.alert_ops
    tries: list[int] = []

    def blip_once(session, key, **kwargs):  # noqa: ANN001,ANN003
        if key == "dispatch.ops_more_like":
            tries.append(1)
            if len(tries) == 1:
                raise _blip()
        return real(session, key, **kwargs)

    monkeypatch.setattr(dispatch, "alert_ops", blip_once)
    clock.freeze(india(10, 17))
    release_scheduled(timedelta(minutes=16))
    run_jobs()
    assert len(tries) == 1
    release_scheduled(timedelta(hours=2))
    run_jobs()
    assert len(tries) == 2
    lang = i18n.DEFAULT_LANGUAGE
    with transaction() as s:
        bodies = list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.dedupe_key.like("ops-summary-%"))))
    assert bodies == [i18n.t("dispatch.ops_more_like", lang, n=2, first="RC1",
                             refs="RC2, RC3")]
    assert redis_client().llen(dispatch.ALERT_HELD_KEY.format(
        key="dispatch.ops_no_partner")) == 0

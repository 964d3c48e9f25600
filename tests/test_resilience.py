"""What a worker does when Redis loses its data under it (a flush, a restart without its
last writes, a failover to a replica behind), and when PostgreSQL aborts a turn to break
a deadlock: nothing accepted is lost, and nobody hears "try later" for a lock conflict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rq import Queue
from rq.exceptions import DequeueTimeout, StopRequested
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select, text

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import InboundEvent, OutboxMessage, PartnerProfile
from core.adapters.queue import queue
from core.adapters.redis_conn import redis_client
from core.services import outbox
from tests.conftest import post_twilio, release_scheduled, replies_to, run_jobs, send_whatsapp
from tests.test_inbound_drain import handled_sids, wa

pytestmark = pytest.mark.db

CHAINS = {"outbox-sweep", "dispatch-sweep", "payments-sweep", "reconcile", "retention"}


def chains() -> set[str]:
    """The periodic chains scheduled now (job ids without their slot)."""
    return {job_id.rsplit("-", 1)[0] for name in ("outbox", "default")
            for job_id in ScheduledJobRegistry(queue=queue(name)).get_job_ids()}


def redis_loses_its_data() -> None:
    """RQ job: Redis restarts empty while the worker runs; two minutes go by."""
    redis_client().flushdb()
    clock.freeze(clock.now() + timedelta(minutes=2))


# --- the sweep chains -------------------------------------------------------------------

def test_a_busy_worker_rejoins_the_sweep_chains_and_a_lost_message_goes_out(live,
                                                                           monkeypatch):
    from core import cli

    monkeypatch.setattr(cli, "lower_priority", lambda: 0)  # not the test process's nice
    clock.freeze(datetime.now(UTC))
    with transaction() as s:
        row_id = outbox.queue_message(s, channel="sms", to="+919812340077", body="your code")
    # Before its delivery job runs, Redis loses everything: that job and the chains.
    queue("outbox").enqueue("tests.test_resilience.redis_loses_its_data", at_front=True)
    cli.worker(burst=True)  # the Procfile's worker, its loop going on past the loss
    assert chains() == CHAINS, "the worker did not join the sweep chains again"
    # The outbox sweep runs at its minute and sends the message whose job was lost.
    (slot,) = ScheduledJobRegistry(queue=queue("outbox")).get_job_ids()
    clock.freeze(datetime.fromtimestamp(int(slot.rsplit("-", 1)[1]), UTC))
    release_scheduled(timedelta(minutes=10), periodic=True)
    run_jobs()
    with transaction() as s:
        assert s.get(OutboxMessage, row_id).status in ("queued", "sent", "delivered")


def test_an_idle_worker_wakes_within_a_minute_and_rejoins_the_chains(clean_db, monkeypatch):
    from core.cli import service_worker

    clock.freeze(datetime.now(UTC))
    waits: list[int | None] = []
    seen: list[set[str]] = []

    def dequeue_any(cls, queues, timeout, connection, **kwargs):  # noqa: ANN001 (RQ's)
        waits.append(timeout)
        if len(waits) == 1:
            assert chains() == CHAINS  # joined as the worker started
            redis_client().flushdb()  # Redis restarts empty while the worker waits
            clock.freeze(clock.now() + timedelta(seconds=timeout))  # the wait runs out
            raise DequeueTimeout(timeout, queues)
        seen.append(chains())
        raise StopRequested()

    monkeypatch.setattr(Queue, "dequeue_any", classmethod(dequeue_any))
    service_worker().work(burst=False)
    assert waits[0] is not None and waits[0] <= 60, waits
    assert seen == [CHAINS], "an idle worker did not join the chains again"


def test_the_worker_joins_the_chains_once_a_minute_not_per_job(clean_db, monkeypatch):
    from core import cli

    calls: list[datetime] = []
    monkeypatch.setattr(cli, "join_sweeps", lambda: calls.append(clock.now()))
    clock.freeze(datetime(2026, 11, 24, 10, 0, 30, tzinfo=UTC))
    w = cli.service_worker()
    for _ in range(3):
        queue("default").enqueue("os.getpid")
    w.work(burst=True)
    assert len(calls) == 1
    clock.freeze(clock.now() + timedelta(seconds=61))
    queue("default").enqueue("os.getpid")
    w.work(burst=True)
    assert len(calls) == 2


# --- the drainer and the status inbox after Redis lost its data ------------------------

def test_a_message_accepted_after_a_flush_is_not_popped_by_the_drainer_of_an_older_one(
        client, monkeypatch):
    """(Found by a reviewer.) The drainer was mid-turn when Redis lost its data; a newer
    message then made a new inbox. The old turn must not pop that message unhandled."""
    import workers.inbound as jobs

    monkeypatch.setenv("DRAIN_THREADS", "1")
    phone = "+919812340321"
    assert post_twilio(client, "/webhooks/whatsapp", wa(phone, "hi", "SMold")).status_code == 200
    real = jobs.HANDLERS["whatsapp"]
    done: list[int] = []

    def turn(session, msg):
        if not done:
            done.append(1)
            redis_client().flushdb()  # mid-turn: Redis restarts empty
            r = post_twilio(client, "/webhooks/whatsapp", wa(phone, "2", "SMnew"))
            assert r.status_code == 200
        return real(session, msg)

    monkeypatch.setitem(jobs.HANDLERS, "whatsapp", turn)
    run_jobs(("inbound",))
    assert handled_sids() == ["SMold", "SMnew"]
    assert "English" in replies_to("SMnew")[0]  # "2" answered the language list
    r = redis_client()
    assert r.llen("inbox:whatsapp:919812340321") == 0
    assert not r.exists("inbox:whatsapp:919812340321:lock")


def test_a_drainer_that_lost_its_contact_to_another_leaves_the_inbox_alone(client,
                                                                          monkeypatch):
    import workers.inbound as jobs

    monkeypatch.setenv("DRAIN_THREADS", "1")
    phone = "+919812340322"
    inbox, lock = "inbox:whatsapp:919812340322", "inbox:whatsapp:919812340322:lock"
    post_twilio(client, "/webhooks/whatsapp", wa(phone, "hi", "SMfirst"))
    real = jobs.HANDLERS["whatsapp"]

    def turn(session, msg):
        r = redis_client()
        if msg.sid == "SMfirst":
            # The lock lapsed mid-turn (a flush); another drainer took the contact and a
            # second message arrived for it.
            r.set(lock, "another-drainer")
            post_twilio(client, "/webhooks/whatsapp", wa(phone, "2", "SMsecond"))
        return real(session, msg)

    monkeypatch.setitem(jobs.HANDLERS, "whatsapp", turn)
    run_jobs(("inbound",))
    r = redis_client()
    assert handled_sids() == ["SMfirst"]
    # Both messages are left to the lock's holder (the first is a duplicate by its claim).
    assert r.llen(inbox) == 2 and r.get(lock) == b"another-drainer"


def test_a_status_callback_accepted_after_a_flush_is_not_trimmed_unapplied(client,
                                                                          monkeypatch):
    with transaction() as s:
        row = OutboxMessage(channel="sms", to_addr="+919812340323", from_addr="+15005550006",
                            body="hi", status="queued", attempts=1, provider_sid="SMst1")
        s.add(row)
        s.flush()
        oid = row.id
    real = outbox._apply_or_isolate
    done: list[int] = []

    def apply(reports):
        real(reports)
        if not done:
            done.append(1)
            redis_client().flushdb()  # Redis restarts empty, then Twilio calls again
            outbox.accept_status(outbox.StatusReport(oid, "SMst1", "delivered"))

    monkeypatch.setattr(outbox, "_apply_or_isolate", apply)
    outbox.accept_status(outbox.StatusReport(oid, "SMst1", "sent"))
    run_jobs(("outbox",))
    with transaction() as s:
        assert s.get(OutboxMessage, oid).status == "delivered"
    assert redis_client().llen(outbox.STATUS_INBOX) == 0


# --- deadlocks: the turn runs again ------------------------------------------------------

def _deadlock_once(real):
    """``real`` preceded, on its first call, by PostgreSQL aborting the transaction as
    the loser of a deadlock (SQLSTATE 40P01), as it does when two turns lock rows in
    crossing order."""
    fired: list[int] = []

    def wrapper(session, *args, **kwargs):
        if not fired:
            fired.append(1)
            session.execute(text("DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' "
                                 "USING ERRCODE = '40P01'; END $$"))
        return real(session, *args, **kwargs)

    return wrapper, fired


def test_a_partner_command_that_lost_a_deadlock_runs_again(client, live, monkeypatch):
    from core.services import dispatch
    from tests.test_dispatch import LAXMIPUR, make_partner, sms

    partner_id, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    wrapper, fired = _deadlock_once(dispatch.set_duty)
    monkeypatch.setattr(dispatch, "set_duty", wrapper)
    replies = sms(client, phone, "OFF")
    assert fired == [1]
    assert replies != [i18n.t("common.error_try_later", "en")] and "OFF duty" in replies[0]
    with transaction() as s:
        assert s.get(PartnerProfile, partner_id).on_duty is False


def test_a_command_that_keeps_deadlocking_is_left_for_twilio_to_retry(client, live,
                                                                     monkeypatch):
    from core.services import dispatch
    from tests.test_dispatch import LAXMIPUR, make_partner

    partner_id, phone = make_partner("Ramesh", LAXMIPUR, lang="en")

    def always(session, partner, on):
        session.execute(text("DO $$ BEGIN RAISE EXCEPTION 'serialization failure' "
                             "USING ERRCODE = '40001'; END $$"))

    monkeypatch.setattr(dispatch, "set_duty", always)
    r = post_twilio(client, "/webhooks/sms", {"MessageSid": "SMdl1", "From": phone,
                                              "To": "+15005550006", "Body": "OFF"})
    assert r.status_code == 503  # Twilio retries; the command is not answered "try later"
    with transaction() as s:
        assert s.scalar(select(InboundEvent).where(InboundEvent.external_id == "SMdl1")) is None
        assert s.get(PartnerProfile, partner_id).on_duty is True


def test_a_whatsapp_turn_that_lost_a_deadlock_runs_again(client, monkeypatch):
    from core.services import conversation

    wrapper, fired = _deadlock_once(conversation.dialog_turn)
    monkeypatch.setattr(conversation, "dialog_turn", wrapper)
    reply = send_whatsapp(client, wa("+919812340324", "hi", "SMdl2"))
    assert fired == [1]
    assert reply and i18n.t("common.error_try_later", "en") not in reply
    assert "English" in reply  # the language list, as for any first "hi"

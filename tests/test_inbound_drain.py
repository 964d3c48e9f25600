"""The courier path's machinery: how many drainer jobs exist, order per contact, lost jobs
taken up again by the sweep, a poison message set aside, a long queue handed over."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import InboundEvent
from core.adapters.queue import queue
from core.adapters.redis_conn import redis_client
from core.services import inbound
from tests.conftest import post_twilio, replies_to, run_jobs


def wa(phone: str, body: str, sid: str) -> dict[str, str]:
    return {"MessageSid": sid, "AccountSid": "ACsandbox", "From": f"whatsapp:{phone}",
            "To": "whatsapp:+14155238886", "Body": body, "NumMedia": "0",
            "WaId": phone.lstrip("+"), "ProfileName": "Asha"}


def handled_sids() -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(InboundEvent.external_id).order_by(InboundEvent.id)))


def test_many_contacts_share_a_few_drainer_jobs_and_each_keeps_its_order(client):
    phones = [f"+9198123400{i:02d}" for i in range(10)]
    for turn in range(3):
        for p in phones:
            body = ("hi", "2", "menu")[turn]
            assert post_twilio(client, "/webhooks/whatsapp",
                               wa(p, body, f"SM{p[-2:]}t{turn}")).status_code == 200
    assert queue("inbound").count == inbound.DRAINERS  # not one job per message
    run_jobs(("inbound",))
    order = handled_sids()
    assert len(order) == 30
    for p in phones:
        mine = [sid for sid in order if sid.startswith(f"SM{p[-2:]}t")]
        assert mine == [f"SM{p[-2:]}t0", f"SM{p[-2:]}t1", f"SM{p[-2:]}t2"]
        assert "English" in replies_to(f"SM{p[-2:]}t1")[0]  # "2" was read after "hi"
    r = redis_client()
    assert r.llen(inbound.READY) == 0 and int(r.get(inbound.DRAINER_COUNT) or 0) == 0
    assert r.scard(inbound.INBOXES) == 0


def test_a_drainer_lost_with_its_worker_is_replaced_by_the_sweep(client):
    post_twilio(client, "/webhooks/whatsapp", wa("+919812340100", "hi", "SMlost1"))
    queue("inbound").empty()  # the job vanished (a worker killed, a Redis failover)
    r = redis_client()
    r.delete(inbound.DRAINER_COUNT)  # ... and its count lapsed
    assert run_jobs(("inbound",)) == 0
    assert inbound.sweep_inboxes() == 0  # the contact is still waiting in READY
    assert run_jobs(("inbound",)) == 1
    assert replies_to("SMlost1")


def test_a_contact_whose_flag_was_lost_is_put_back_by_the_sweep(client):
    post_twilio(client, "/webhooks/whatsapp", wa("+919812340101", "hi", "SMflag1"))
    queue("inbound").empty()
    r = redis_client()
    r.delete(inbound.DRAINER_COUNT, inbound.READY, "inbox:whatsapp:919812340101:scheduled")
    assert inbound.sweep_inboxes() == 1
    assert run_jobs(("inbound",)) == 1
    assert replies_to("SMflag1")
    assert inbound.sweep_inboxes() == 0 and r.scard(inbound.INBOXES) == 0


def test_a_message_that_breaks_the_turn_is_set_aside_and_the_next_one_handled(client,
                                                                              monkeypatch):
    from bots import whatsapp

    real = whatsapp.handle
    calls: list[str] = []

    def flaky(session, msg):
        calls.append(msg.sid)
        if msg.sid == "SMbad":
            raise ValueError("a bug in a dialog step")
        return real(session, msg)

    monkeypatch.setitem(__import__("workers.inbound").inbound.HANDLERS, "whatsapp", flaky)
    post_twilio(client, "/webhooks/whatsapp", wa("+919812340102", "hi", "SMbad"))
    post_twilio(client, "/webhooks/whatsapp", wa("+919812340102", "hi", "SMgood"))
    run_jobs(("inbound",))
    assert calls == ["SMbad", "SMgood"]
    assert handled_sids() == ["SMgood"]  # the failed turn rolled back whole
    dead = redis_client().lrange(inbound.DEAD_LETTER, 0, -1)
    assert [inbound.decode(d).sid for d in dead] == ["SMbad"]


def test_a_long_queue_is_handed_over_to_fresh_jobs(client, monkeypatch):
    monkeypatch.setattr(inbound, "DRAINER_BUDGET_S", 0.0)
    monkeypatch.setattr(inbound, "DRAINERS", 1)
    monkeypatch.setenv("DRAIN_THREADS", "1")  # one contact at a time: one per job here
    for i in range(3):
        post_twilio(client, "/webhooks/whatsapp", wa(f"+91981234020{i}", "hi", f"SMh{i}"))
    assert queue("inbound").count == 1
    assert run_jobs(("inbound",)) == 3  # one contact per job, each job enqueued the next
    assert len(handled_sids()) == 3


def test_a_reply_twilio_refused_once_is_retried_after_the_backoff_and_sent_once(client, live):
    from datetime import timedelta

    from core.adapters.models import OutboxMessage, SandboxMessage
    from sandbox.twilio import FAIL_NEXT_KEY
    from tests.conftest import release_scheduled

    redis_client().set(FAIL_NEXT_KEY, 1)  # the emulator answers 503 once
    post_twilio(client, "/webhooks/whatsapp", wa("+919812340300", "hi", "SMretry"))
    run_jobs(("inbound",))
    with transaction() as s:
        row = s.scalar(select(OutboxMessage).where(OutboxMessage.dedupe_key == "reply:SMretry:0"))
        assert (row.status, row.attempts, row.provider_sid) == ("pending", 1, None)
    assert run_jobs(("outbox",)) == 0  # not before the first interval
    assert release_scheduled(timedelta(seconds=11)) == 1
    run_jobs(("outbox",))
    with transaction() as s:
        row = s.scalar(select(OutboxMessage).where(OutboxMessage.dedupe_key == "reply:SMretry:0"))
        assert row.status in ("queued", "sent", "delivered") and row.attempts == 2
        sent = s.scalars(select(SandboxMessage.body)
                         .where(SandboxMessage.to_addr == "whatsapp:+919812340300")).all()
    assert sent == [row.body]


def test_one_drainer_works_on_several_contacts_at_once(client, monkeypatch):
    """While one contact's turn waits (on PostgreSQL, on Twilio), another's goes ahead."""
    import threading

    from bots import whatsapp

    real = whatsapp.handle
    second_started = threading.Event()

    def slow_first(session, msg):
        if msg.sid == "SMpar0":
            # Finishes only once the other contact's turn has begun beside it.
            assert second_started.wait(timeout=30), "the drainer ran the contacts one by one"
        else:
            second_started.set()
        return real(session, msg)

    post_twilio(client, "/webhooks/whatsapp", wa("+919812340300", "hi", "SMpar0"))
    post_twilio(client, "/webhooks/whatsapp", wa("+919812340301", "hi", "SMpar1"))
    handlers = {"whatsapp": slow_first}
    assert inbound.drain_ready(handlers.__getitem__, threads=2) == 2
    assert sorted(handled_sids()) == ["SMpar0", "SMpar1"]
    assert replies_to("SMpar0") and replies_to("SMpar1")


def test_an_outage_met_by_one_drain_thread_fails_the_job_and_keeps_the_message(client):
    from sqlalchemy.exc import OperationalError

    from bots import whatsapp

    down = {"SMout0"}
    other_done = threading.Event()

    def outage(session, msg):
        if msg.sid in down:
            # Fail only once the other thread has its contact (else it could take this
            # contact again from READY, where the failed thread put it back first).
            other_done.wait(timeout=10)
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        replies = whatsapp.handle(session, msg)
        other_done.set()
        return replies

    post_twilio(client, "/webhooks/whatsapp", wa("+919812340310", "hi", "SMout0"))
    post_twilio(client, "/webhooks/whatsapp", wa("+919812340311", "hi", "SMout1"))
    handlers = {"whatsapp": outage}
    try:
        inbound.drain_ready(handlers.__getitem__, threads=2)
    except OperationalError:
        pass
    else:
        raise AssertionError("the outage was swallowed: RQ would not retry the job")
    r = redis_client()
    assert r.lrange(inbound.READY, 0, -1) == [b"whatsapp:919812340310"]  # first in line
    assert r.llen("inbox:whatsapp:919812340310") == 1  # the message is still there
    assert "SMout0" not in handled_sids()

    down.clear()  # PostgreSQL is back: RQ's retry runs the drainer again
    inbound.drain_ready(handlers.__getitem__, threads=2)
    assert sorted(handled_sids()) == ["SMout0", "SMout1"]
    assert r.llen(inbound.READY) == 0 and r.scard(inbound.INBOXES) == 0


def test_a_dialog_turn_that_fails_midway_keeps_nothing_and_apologises(client, monkeypatch):
    from sqlalchemy import text

    from core import i18n
    from core.adapters.models import Conversation, Person
    from core.services import conversation

    phone = "+919812340177"
    post_twilio(client, "/webhooks/whatsapp", wa(phone, "hi", "SMhi"))
    run_jobs()
    with transaction() as s:
        step = s.scalar(select(Conversation.step).where(Conversation.contact == phone[1:]))
    real = conversation.dialog_turn

    def breaks_after_writing(session, *args, **kwargs):
        outs = real(session, *args, **kwargs)  # the dialog moved on ...
        session.add(Person(phone="+919812340999", role="customer"))
        session.flush()  # ... and wrote a row ...
        session.execute(text("SELECT 1 / 0"))  # ... then the database refused a statement
        return outs

    monkeypatch.setattr(conversation, "dialog_turn", breaks_after_writing)
    post_twilio(client, "/webhooks/whatsapp", wa(phone, "1", "SMboom"))
    run_jobs()
    assert replies_to("SMboom") == [i18n.t("common.error_try_later", "hi")]
    with transaction() as s:
        assert s.scalar(select(Conversation.step)
                        .where(Conversation.contact == phone[1:])) == step
        assert s.scalar(select(Person.id).where(Person.phone == "+919812340999")) is None
    assert "SMboom" in handled_sids()  # handled once, with the apology: not redone
    monkeypatch.undo()
    post_twilio(client, "/webhooks/whatsapp", wa(phone, "1", "SMagain"))
    run_jobs()
    assert replies_to("SMagain") and replies_to("SMagain") != replies_to("SMboom")
    with transaction() as s:
        assert s.scalar(select(Conversation.step)
                        .where(Conversation.contact == phone[1:])) != step


@pytest.fixture
def linger(monkeypatch) -> Iterator[None]:
    """The longest linger there is (the message that ends it comes well before)."""
    from core.config import reset_settings

    monkeypatch.setenv("DRAIN_LINGER_MS", "4000")
    reset_settings()
    yield
    monkeypatch.undo()
    reset_settings()


def test_a_drainer_waits_a_moment_for_the_next_contact_instead_of_leaving(client, app,
                                                                          monkeypatch, linger):
    """Real threads: the drainer job (run by RQ here) has emptied READY and waits on it;
    a message arriving then is drained by that same job, not by a job of its own."""
    waiting = threading.Event()
    real_wait = inbound._next_contact_within
    waits: list[float] = []

    def wait_once(r, seconds):  # the first wait is real; after it, nobody else comes
        waits.append(seconds)
        if len(waits) > 1:
            return None
        waiting.set()  # READY was found empty: the job would have left here
        return real_wait(r, seconds)

    monkeypatch.setattr(inbound, "_next_contact_within", wait_once)
    handled: list[int] = []
    real_drain = inbound.drain_ready
    monkeypatch.setattr(inbound, "drain_ready",
                        lambda *a, **kw: handled.append(real_drain(*a, **kw)) or handled[-1])
    post_twilio(client, "/webhooks/whatsapp", wa("+919812340300", "hi", "SMwait1"))

    def second_message_once_the_drainer_waits() -> None:
        assert waiting.wait(15)
        post_twilio(app.test_client(), "/webhooks/whatsapp",
                    wa("+919812340301", "hi", "SMwait2"))

    sender = threading.Thread(target=second_message_once_the_drainer_waits)
    sender.start()
    try:
        run_jobs(("inbound",))
    finally:
        sender.join(15)
    assert 3.0 < waits[0] <= 4.0  # the linger, within the job's budget
    assert handled[0] == 2  # the waiting job drained the second contact too
    assert sum(handled) == 2  # the job its message enqueued found nothing left
    assert replies_to("SMwait1") and replies_to("SMwait2")
    r = redis_client()
    assert r.llen(inbound.READY) == 0 and int(r.get(inbound.DRAINER_COUNT) or 0) == 0

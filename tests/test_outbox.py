"""Outbound messages: outbox row -> RQ job -> real twilio client -> sandbox emulator."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from sqlalchemy import func, select

from core.adapters.db import transaction
from core.adapters.models import MessageStatusEvent, OutboxMessage, Person, SandboxMessage
from core.adapters.queue import queue
from core.adapters.redis_conn import redis_client
from core.services import outbox
from sandbox.twilio import FAIL_NEXT_KEY
from tests.conftest import never_reached, post_twilio, release_scheduled, run_jobs

TO = "+919876500001"


def sandbox_count(to: str | None = None) -> int:
    with transaction() as s:
        stmt = select(func.count()).select_from(SandboxMessage)
        if to:
            stmt = stmt.where(SandboxMessage.to_addr == to)
        return s.scalar(stmt)


def row(outbox_id: int) -> OutboxMessage:
    with transaction() as s:
        r = s.get(OutboxMessage, outbox_id)
        assert r is not None
        return r


def queue_one(**kw) -> int:
    with transaction() as s:
        oid = outbox.queue_message(s, channel=kw.pop("channel", "whatsapp"),
                                   to=kw.pop("to", TO), body=kw.pop("body", "Namaste"), **kw)
    assert oid is not None
    return oid


def test_message_is_delivered_once_through_the_emulator_with_status_callbacks(live):
    oid = queue_one()
    assert queue("outbox").count == 1  # enqueued after the commit
    run_jobs()  # delivery, then the emulator's status callbacks
    r = row(oid)
    assert r.provider_sid and r.provider_sid.startswith("SM")
    assert r.status == "delivered"
    assert sandbox_count(f"whatsapp:{TO}") == 1
    with transaction() as s:
        statuses = list(s.scalars(select(MessageStatusEvent.status)
                                  .order_by(MessageStatusEvent.id)))
    assert statuses == ["sent", "delivered"]
    # Running the job again (a duplicate enqueue, a retried job) sends nothing more.
    assert outbox.deliver(oid) == "already-delivered"
    assert sandbox_count() == 1


def test_sandbox_outbox_lists_what_was_sent(live):
    queue_one(body="first")
    queue_one(channel="sms", to="+919876500002", body="second")
    run_jobs()
    all_msgs = requests.get(f"{live.base_url}/sandbox/outbox", timeout=5).json()
    assert [m["body"] for m in all_msgs] == ["first", "second"]
    only = requests.get(f"{live.base_url}/sandbox/outbox",
                        params={"to": "+919876500002"}, timeout=5).json()
    assert [(m["body"], m["channel"], m["to"]) for m in only] == [
        ("second", "sms", "+919876500002")]
    wa = requests.get(f"{live.base_url}/sandbox/outbox", params={"to": f"whatsapp:{TO}"},
                      timeout=5).json()
    assert [m["body"] for m in wa] == ["first"]
    since = requests.get(f"{live.base_url}/sandbox/outbox",
                         params={"since": all_msgs[0]["id"]}, timeout=5).json()
    assert [m["body"] for m in since] == ["second"]
    bad = requests.get(f"{live.base_url}/sandbox/outbox", params={"since": "x"}, timeout=5)
    assert bad.status_code == 400


def test_nothing_is_queued_when_the_cause_rolls_back(live):
    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction() as s:
        outbox.queue_message(s, channel="sms", to=TO, body="never")
        raise Boom
    assert queue("outbox").count == 0
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 0


def test_dedupe_key_makes_a_retried_cause_harmless(live):
    first = queue_one(dedupe_key="booking-1-created")
    with transaction() as s:
        again = outbox.queue_message(s, channel="whatsapp", to=TO, body="Namaste",
                                     dedupe_key="booking-1-created")
    assert again is None
    run_jobs()
    assert row(first).status == "delivered"
    assert sandbox_count() == 1


def test_transient_failure_is_retried_with_backoff(live):
    redis_client().set(FAIL_NEXT_KEY, 1)  # the emulator answers 503 once
    oid = queue_one()
    run_jobs()
    r = row(oid)
    assert (r.status, r.attempts, r.provider_sid) == ("pending", 1, None)
    assert "503" in (r.last_error or "")
    assert sandbox_count() == 0
    # Not due yet: nothing moves before the first interval (10 s) has passed.
    assert release_scheduled(timedelta(seconds=5)) == 0
    assert release_scheduled(timedelta(seconds=11)) == 1
    run_jobs()
    r = row(oid)
    assert (r.status, r.attempts) == ("delivered", 2)
    assert sandbox_count() == 1


def test_gives_up_after_the_last_retry(live):
    redis_client().set(FAIL_NEXT_KEY, 10)
    oid = queue_one()
    run_jobs()
    release_scheduled(timedelta(seconds=11))
    run_jobs()
    release_scheduled(timedelta(seconds=31))
    run_jobs()
    r = row(oid)
    assert (r.status, r.attempts) == ("failed", 3)  # first try + 2 retries (test config)
    assert sandbox_count() == 0
    assert release_scheduled(timedelta(days=1)) == 0


def test_permanent_refusal_is_not_retried(live):
    oid = queue_one(channel="sms", to="+15005550001")  # Twilio's magic invalid number
    run_jobs()
    r = row(oid)
    assert (r.status, r.error_code, r.attempts) == ("failed", "21211", 1)
    assert release_scheduled(timedelta(days=1)) == 0


def test_unreachable_twilio_is_retried(live, monkeypatch):
    from core.adapters import twilio_gateway

    def refused(**_kw):  # as requests raises it: no connection was ever made
        import urllib3

        cause = urllib3.exceptions.NewConnectionError(None, "[Errno 111] Connection refused")
        raise requests.exceptions.ConnectionError(
            urllib3.exceptions.MaxRetryError(None, "/Messages.json", cause))

    monkeypatch.setattr(twilio_gateway, "send_message", refused)
    oid = queue_one()
    run_jobs()
    assert row(oid).status == "pending"
    assert release_scheduled(timedelta(seconds=11)) == 1


def test_unknown_outcome_is_not_resent_blindly(live, monkeypatch):
    from core.adapters import twilio_gateway

    def timeout(**_kw):
        raise requests.exceptions.ReadTimeout("read timed out")

    monkeypatch.setattr(twilio_gateway, "send_message", timeout)
    oid = queue_one()
    run_jobs()
    assert row(oid).status == "sending"
    assert release_scheduled(timedelta(days=1)) == 0  # no automatic resend
    # Twilio did take it after all: its status callback names our row and settles it.
    client_params = {"MessageSid": "SMlate", "MessageStatus": "delivered"}
    from core.app import create_app

    r = post_twilio(create_app().test_client(), f"/webhooks/twilio/status?outbox_id={oid}",
                    client_params)
    assert r.status_code == 204
    assert row(oid).status == "sending"  # queued for the status job, not applied inline
    assert run_jobs() == 1
    assert (row(oid).status, row(oid).provider_sid) == ("delivered", "SMlate")


def test_status_callback_never_regresses_and_stop_opts_out(client, live):
    with transaction() as s:
        s.add(Person(phone=TO, role="customer"))
    oid = queue_one()
    run_jobs()
    sid = row(oid).provider_sid
    assert row(oid).status == "delivered"
    late = post_twilio(client, f"/webhooks/twilio/status?outbox_id={oid}",
                       {"MessageSid": sid, "MessageStatus": "sent"})
    assert late.status_code == 204
    run_jobs()
    assert row(oid).status == "delivered"
    stop = post_twilio(client, "/webhooks/twilio/status",
                       {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": "21610"})
    assert stop.status_code == 204
    run_jobs()
    assert row(oid).status == "delivered"  # a late failure is kept in its history only
    with transaction() as s:
        assert s.scalar(select(Person.opted_out).where(Person.phone == TO)) is True
        assert outbox.queue_message(s, channel="whatsapp", to=TO, body="again") is None


def test_status_callback_needs_a_valid_signature(client, live):
    oid = queue_one()
    r = post_twilio(client, f"/webhooks/twilio/status?outbox_id={oid}",
                    {"MessageSid": "SMx", "MessageStatus": "delivered"}, signature="bad")
    assert r.status_code == 403
    assert redis_client().llen(outbox.STATUS_INBOX) == 0
    assert row(oid).status == "pending"


def test_sweep_requeues_rows_whose_enqueue_was_lost(live):
    from core import clock

    oid = queue_one()
    queue("outbox").empty()  # the enqueue after commit was lost (Redis blinked)
    clock.freeze(clock.now() + timedelta(minutes=5))
    assert outbox.sweep() == 1
    clock.freeze(None)
    run_jobs()
    assert row(oid).status == "delivered"


def test_sweep_chain_is_scheduled_once_per_minute(clean_db):
    from datetime import UTC, datetime

    from rq.registry import ScheduledJobRegistry

    from workers.outbox import schedule_sweep

    t = datetime(2026, 11, 24, 10, 0, 30, tzinfo=UTC)
    first = schedule_sweep(t)
    second = schedule_sweep(t.replace(second=59))  # a second worker starting
    assert first == second == f"outbox-sweep-{int(t.replace(minute=1, second=0).timestamp())}"
    registry = ScheduledJobRegistry(queue=queue("outbox"))
    assert registry.get_job_ids() == [first]


def test_template_rows_go_out_as_content_sid_with_variables(live):
    from core.adapters.dialog_models import WhatsappTemplateSend

    with transaction() as s:
        oid = outbox.queue_message(s, channel="whatsapp", to=TO, body="Booking 12345678 ...")
        s.add(WhatsappTemplateSend(outbox_id=oid, content_sid="HXabc123",
                                   content_variables={"1": "बुकिंग 12345678"}))
    run_jobs()
    assert row(oid).status == "delivered"
    with transaction() as s:
        sent = s.scalar(select(SandboxMessage.body))
    assert sent.startswith("[template HXabc123]")
    assert "बुकिंग 12345678" in sent and "Booking 12345678 ..." not in sent


def test_stop_holds_for_a_whatsapp_user_known_only_by_their_whatsapp_id(clean_db):
    # Meta's user ids without a phone number: STOP (or Twilio's 21610) marks the person,
    # and nothing but replies reaches them afterwards.
    wa_id = "IN.13491234abcd"
    with transaction() as s:
        s.add(Person(phone=None, wa_id=wa_id, role="customer"))
    outbox._mark_opted_out(f"whatsapp:{wa_id}")  # as a 21610 status does
    with transaction() as s:
        assert s.scalar(select(Person.opted_out).where(Person.wa_id == wa_id)) is True
        assert outbox.queue_message(s, channel="whatsapp", to=wa_id, body="offer") is None
        assert outbox.queue_message(s, channel="whatsapp", to=wa_id, body="ok, stopped",
                                    reply=True) is not None


@pytest.mark.parametrize("code", ["63016", "63018"])
def test_a_whatsapp_message_refused_for_the_window_or_the_limit_goes_by_sms(client, live, code):
    # 63016: queued as free-form inside the 24 hours, but a retry sent it after they
    # ended. 63018: our sender's WhatsApp messaging limit (it resets within a day). The
    # same text goes by SMS, once.
    with transaction() as s:
        s.add(Person(phone=TO, role="customer"))
    oid = queue_one(body="Booking 12345678: pay with this link")
    run_jobs()
    sid = row(oid).provider_sid
    never_reached(sid)
    for _ in range(2):  # Twilio may report it twice
        r = post_twilio(client, "/webhooks/twilio/status",
                        {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": code})
        assert r.status_code == 204
        run_jobs()
    assert row(oid).status == "failed"
    with transaction() as s:
        sms = s.scalars(select(OutboxMessage).where(OutboxMessage.channel == "sms",
                                                    OutboxMessage.to_addr == TO)).all()
    assert [(m.body, m.status) for m in sms] == [
        ("Booking 12345678: pay with this link", "delivered")]


def test_stop_reported_by_twilio_holds_for_a_whatsapp_id_without_a_number(client, live):
    wa_id = "IN.13499876wxyz"
    with transaction() as s:
        s.add(Person(phone=None, wa_id=wa_id, role="customer"))
    oid = queue_one(to=wa_id, body="Namaste")
    run_jobs()
    r = post_twilio(client, "/webhooks/twilio/status",
                    {"MessageSid": row(oid).provider_sid, "MessageStatus": "failed",
                     "ErrorCode": "21610"})
    assert r.status_code == 204
    run_jobs()
    with transaction() as s:
        assert s.scalar(select(Person.opted_out).where(Person.wa_id == wa_id)) is True

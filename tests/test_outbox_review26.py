"""Reviewer r6 (outbox): how messages leave the service. Each test shows one defect."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import OutboxMessage, Person, SandboxMessage
from core.adapters.redis_conn import redis_client
from core.services import notify
from sandbox.twilio import FAIL_NEXT_KEY
from tests.conftest import release_scheduled, run_jobs, send_whatsapp

pytestmark = pytest.mark.db

NUMBER = "+919876500601"
NEWS = "Your parcel is on its way."


def wa(number: str, body: str, sid: str) -> dict[str, str]:
    return {"MessageSid": sid, "From": f"whatsapp:{number}", "WaId": number.lstrip("+"),
            "To": "whatsapp:+14155238886", "Body": body}


def sent_to(address: str) -> list[str]:
    """What the Twilio emulator accepted for ``address``, oldest first."""
    with transaction() as s:
        return list(s.scalars(select(SandboxMessage.body).where(
            SandboxMessage.to_addr == address).order_by(SandboxMessage.created_at,
                                                        SandboxMessage.sid)))


def test_a_message_waiting_for_a_retry_is_not_sent_on_whatsapp_after_stop(client, live):
    """A WhatsApp message queued while she chats with us hits a Twilio 503 and waits 10 s
    for its retry; meanwhile she sends STOP (and is told "you will get no more messages").
    The retry sends it anyway: the opt-out is checked only when a row is written
    (queue_message), never when deliver() claims it, so whatever was queued or waiting for
    a retry, held back behind one, or given back by a reconcile hours later still reaches
    someone who sent STOP. Twilio does not enforce a WhatsApp STOP for us."""
    assert send_whatsapp(client, wa(NUMBER, "hi", "SMr6stop0001"))
    run_jobs()
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == NUMBER))
        assert person is not None
        oid = notify.send_to_person(s, person, NEWS)
    assert oid is not None
    redis_client().set(FAIL_NEXT_KEY, 1)  # Twilio answers 503 once
    run_jobs(("outbox",))
    with transaction() as s:
        row = s.get(OutboxMessage, oid)
        assert row is not None and (row.status, row.attempts) == ("pending", 1)

    send_whatsapp(client, wa(NUMBER, "STOP", "SMr6stop0002"))
    with transaction() as s:
        assert s.scalar(select(Person.opted_out).where(Person.phone == NUMBER)) is True
    for _ in range(3):  # the retry's back-off passes (and the STOP answer held behind it)
        release_scheduled(timedelta(seconds=12))
        run_jobs()
    got = sent_to(f"whatsapp:{NUMBER}")
    assert got.count(NEWS) == 0, "sent on WhatsApp after her STOP: " + NEWS


def test_a_booking_notice_refused_on_whatsapp_for_her_block_still_goes_by_sms(client, live):
    """README: a block (Twilio 63014) ends the WhatsApp messages we start, as STOP does,
    and "what a booking they made or receive needs (its link, details, codes, status,
    refund) ... still go, by SMS". The notice whose refusal revealed the block is lost:
    an SMS refused for STOP (21610) is sent again on WhatsApp (_on_whatsapp_instead), a
    WhatsApp message refused for the window or the limit goes by SMS (_by_sms_instead),
    but a WhatsApp message refused for 63014 goes nowhere. Here the customer's "your
    money has been returned" never reaches her, and nobody is told."""
    from core.adapters.models import Booking
    from sandbox.jobs import UNDELIVERED_TO_KEY
    from tests.test_dispatch import CUSTOMER, paid_booking

    assert send_whatsapp(client, wa(CUSTOMER, "hi", "SMr6blk0001"))
    run_jobs()
    booking_id = paid_booking()
    # WhatsApp answers our next message to her "failed", 63014: she blocked our number.
    redis_client().hset(UNDELIVERED_TO_KEY, f"whatsapp:{CUSTOMER}", "failed:63014")
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None
        oid = notify.notify_customer(s, booking, "booking.status.refunded",
                                     dedupe_key=f"r6-refunded-{booking_id}")
    assert oid is not None
    run_jobs()
    with transaction() as s:
        row = s.get(OutboxMessage, oid)
        assert row is not None
        assert (row.channel, row.status, row.error_code) == ("whatsapp", "failed", "63014")
        body = row.body
        person = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        assert person is not None and person.opted_out and person.wa_blocked
        by_sms = list(s.scalars(select(OutboxMessage.status).where(
            OutboxMessage.channel == "sms", OutboxMessage.to_addr == CUSTOMER,
            OutboxMessage.body == body)))
    assert by_sms, "the refund notice refused for her block never went by SMS"


# --- fixer f6: the opt-out asked again when a row is sent, and at her STOP ---------------


def test_a_message_queued_before_twilio_revealed_her_block_is_not_sent(client, live):
    """A news message waits in the outbox when Twilio refuses another of ours for her
    block (63014): the sender asks again when it claims the row (no STOP turn here)."""
    from core.services import outbox

    assert send_whatsapp(client, wa(NUMBER, "hi", "SMf6blk0001"))
    run_jobs()
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == NUMBER))
        assert person is not None
        oid = notify.send_to_person(s, person, NEWS)
    assert oid is not None
    outbox._mark_opted_out(f"whatsapp:{NUMBER}", outbox.WHATSAPP_BLOCKED_CODE)
    run_jobs()
    assert NEWS not in sent_to(f"whatsapp:{NUMBER}")
    with transaction() as s:
        row = s.get(OutboxMessage, oid)
        assert row is not None
        assert (row.status, row.last_error, row.failed_at) == (
            "failed", outbox.OPTED_OUT_SINCE, None)  # not counted as a failure to send


def test_an_sms_she_no_longer_needs_after_stop_is_not_sent_a_work_sms_is(client, live):
    """Queued by SMS before her WhatsApp STOP: a plain SMS goes no more, a work SMS (a
    partner's job message, an ops alert) still goes, as queue_message decides."""
    assert send_whatsapp(client, wa(NUMBER, "hi", "SMf6sms0001"))
    run_jobs()
    from core.services import outbox

    with transaction() as s:
        plain = outbox.queue_message(s, channel="sms", to=NUMBER, body="A plain note.")
        work = outbox.queue_message(s, channel="sms", to=NUMBER, body="A job for you.",
                                    work=True)
    assert plain is not None and work is not None
    send_whatsapp(client, wa(NUMBER, "STOP", "SMf6sms0002"))
    run_jobs()
    got = sent_to(NUMBER)
    assert "A plain note." not in got
    assert "A job for you." in got


def test_a_booking_notice_waiting_at_her_stop_goes_by_sms(client, live):
    """A refund notice queued for her WhatsApp, not sent yet, when she sends STOP: it
    goes by SMS, as notify would have sent it after the STOP."""
    from core.adapters.models import Booking
    from core.services import outbox
    from tests.test_dispatch import CUSTOMER, paid_booking

    assert send_whatsapp(client, wa(CUSTOMER, "hi", "SMf6bk0001"))
    run_jobs()
    booking_id = paid_booking()
    run_jobs()
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None
        oid = notify.notify_customer(s, booking, "booking.status.refunded",
                                     dedupe_key=f"f6-refunded-{booking_id}")
    assert oid is not None
    send_whatsapp(client, wa(CUSTOMER, "STOP", "SMf6bk0002"))
    run_jobs()
    with transaction() as s:
        row = s.get(OutboxMessage, oid)
        assert row is not None
        assert (row.channel, row.status, row.last_error) == (
            "whatsapp", "failed", outbox.OPTED_OUT_SINCE)
        body = row.body
    assert body not in sent_to(f"whatsapp:{CUSTOMER}")
    assert sent_to(CUSTOMER).count(body) == 1


def test_a_reply_waiting_for_a_retry_at_her_stop_is_taken_back(client, live):
    """The answer to her "hi" hits a 503 and waits for its retry; she sends STOP. The
    welcome is not sent after "you will get no more messages", and that answer goes at
    once, not held behind the retry."""
    redis_client().set(FAIL_NEXT_KEY, 1)  # Twilio answers 503 once: the welcome waits
    send_whatsapp(client, wa(NUMBER, "hi", "SMf6rp0001"))
    with transaction() as s:
        waiting = s.scalar(select(OutboxMessage).where(
            OutboxMessage.dedupe_key == "reply:SMf6rp0001:0"))
        assert waiting is not None and (waiting.status, waiting.attempts) == ("pending", 1)
        welcome = waiting.body
    send_whatsapp(client, wa(NUMBER, "STOP", "SMf6rp0002"))
    got = sent_to(f"whatsapp:{NUMBER}")
    assert len(got) == 1 and welcome not in got  # the STOP answer, sent at once
    release_scheduled(timedelta(seconds=30))
    run_jobs()
    assert sent_to(f"whatsapp:{NUMBER}") == got


def test_a_whatsapp_id_only_user_outside_the_window_gets_the_default_template(
        client, live, monkeypatch):
    """Known only by her WhatsApp id (no number to text), 2 days since she wrote, her
    language (Tamil) without a template: the default language's template carries the
    text (in Tamil), rather than nothing at all."""
    from core import clock
    from core.adapters.dialog_models import WhatsappTemplateSend
    from core.adapters.models import Conversation

    hx = "HX0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("WHATSAPP_TEMPLATE_HI", hx)
    monkeypatch.delenv("WHATSAPP_TEMPLATE_TA", raising=False)
    notify.reset_templates()
    wa_id = "IN.13491234f6ta"
    try:
        with transaction() as s:
            person = Person(phone=None, wa_id=wa_id, role="customer", preferred_language="ta")
            s.add(person)
            s.flush()
            s.add(Conversation(channel="whatsapp", contact=wa_id, person_id=person.id,
                               last_inbound_at=clock.now() - timedelta(days=2)))
        with transaction() as s:
            person = s.scalar(select(Person).where(Person.wa_id == wa_id))
            assert person is not None
            oid = notify.send_to_person(s, person, NEWS)
        assert oid is not None, "nothing was sent to her"
        run_jobs()
        with transaction() as s:
            template = s.get(WhatsappTemplateSend, oid)
            assert template is not None and template.content_sid == hx
            row = s.get(OutboxMessage, oid)
            assert row is not None and row.status == "delivered"
    finally:
        monkeypatch.delenv("WHATSAPP_TEMPLATE_HI")
        notify.reset_templates()

"""A WhatsApp block (Twilio 63014) is not a STOP.

Twilio refusing a WhatsApp message with 63014 (the recipient blocked our number) closed
her WhatsApp with the flag her own STOP sets, so when she unblocked us and wrote again she
was only told to send START, whatever she asked. Twilio's rule is to stop sending until
she re-engages: her next WhatsApp message reopens the channel and is answered as any. A
STOP she typed still needs START, and a STOP after a block is a STOP.
"""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters import twilio_gateway
from core.adapters.db import transaction
from core.adapters.models import NumberOptOut, OutboxMessage, Person
from core.services import outbox
from tests.conftest import post_twilio, run_jobs, send_whatsapp

pytestmark = pytest.mark.db

BLOCKER = "+919876500411"  # blocked our number, then unblocked and wrote
STOPPER = "+919876500422"  # typed STOP herself
CONTROL = "+919876500433"  # never closed anything: what anyone is answered
BLOCKED = outbox.WHATSAPP_BLOCKED_CODE


def wa(number: str, body: str, sid: str) -> dict[str, str]:
    return {"MessageSid": sid, "From": f"whatsapp:{number}", "WaId": number.lstrip("+"),
            "To": "whatsapp:+14155238886", "Body": body}


def customer(number: str) -> None:
    with transaction() as s:
        s.add(Person(phone=number, role="customer", preferred_language="en"))


def queued(number: str) -> int | None:
    """A WhatsApp message we start (not a reply): None if her WhatsApp is closed."""
    with transaction() as s:
        return outbox.queue_message(s, channel="whatsapp", to=number,
                                    body="Your parcel is on its way")


def refused_by_callback(client, number: str, code: str = BLOCKED) -> None:
    """A WhatsApp message to ``number`` that Twilio takes, then reports with ``code``."""
    oid = queued(number)
    assert oid is not None
    run_jobs()
    with transaction() as s:
        sid = s.get(OutboxMessage, oid).provider_sid
    assert sid
    r = post_twilio(client, "/webhooks/twilio/status",
                    {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": code})
    assert r.status_code == 204
    run_jobs()


def refused_at_send(monkeypatch, number: str) -> None:
    """A WhatsApp message to ``number`` that Twilio refuses when it is sent (63014)."""
    def refuse(**_kw: object) -> None:
        raise twilio_gateway.SendRejected(400, BLOCKED, "blocked by the recipient")

    monkeypatch.setattr(twilio_gateway, "send_message", refuse)
    assert queued(number) is not None
    run_jobs(("outbox",))
    monkeypatch.undo()


def closed(number: str) -> tuple[bool, bool]:
    """(opted_out, wa_blocked) of the person at ``number``."""
    with transaction() as s:
        row = s.execute(select(Person.opted_out, Person.wa_blocked)
                        .where(Person.phone == number)).one()
        return bool(row[0]), bool(row[1])


def kept() -> list[NumberOptOut]:
    with transaction() as s:
        return list(s.scalars(select(NumberOptOut)))


HINT = i18n.t("bot.optout.hint", "en")
# What a person made by her message hears (no language yet): the default language's.
NEW_HINT = i18n.t("bot.optout.hint", i18n.DEFAULT_LANGUAGE)


def test_a_person_who_blocked_us_and_writes_again_is_answered_and_open_again(
        client, live, caplog):
    customer(BLOCKER)
    customer(CONTROL)
    refused_by_callback(client, BLOCKER)
    assert closed(BLOCKER) == (True, True)
    assert queued(BLOCKER) is None  # while she blocks us, nothing we start goes
    with caplog.at_level(logging.INFO, logger="core.services.conversation"):
        reply = send_whatsapp(client, wa(BLOCKER, "hi", "SMblk1"))
    assert HINT not in reply
    assert i18n.t("menu.main", "en") in reply, reply
    assert closed(BLOCKER) == (False, False)
    assert queued(BLOCKER) is not None  # her parcel's news go on WhatsApp again
    # What she asks next is answered as anyone's is.
    send_whatsapp(client, wa(CONTROL, "hi", "SMctl1"))
    assert send_whatsapp(client, wa(BLOCKER, "1", "SMblk2")) == send_whatsapp(
        client, wa(CONTROL, "1", "SMctl2"))
    reopened = [r for r in caplog.records if "open again" in r.getMessage()]
    assert len(reopened) == 1
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert BLOCKER[-10:] not in logged  # no phone number in the logs


def test_a_block_seen_when_the_message_is_sent_ends_the_same_way(client, live,
                                                                   monkeypatch):
    customer(BLOCKER)
    refused_at_send(monkeypatch, BLOCKER)
    assert closed(BLOCKER) == (True, True)
    reply = send_whatsapp(client, wa(BLOCKER, "hi", "SMblk3"))
    assert HINT not in reply and i18n.t("menu.main", "en") in reply, reply
    assert closed(BLOCKER) == (False, False)


def test_a_stop_she_typed_still_needs_start_even_when_a_block_is_reported_after_it(
        client, live):
    customer(BLOCKER)
    customer(STOPPER)
    send_whatsapp(client, wa(STOPPER, "STOP", "SMstp1"))
    # A reply still goes to her (the bot answers what she writes): Twilio reports it
    # blocked. Her STOP stands: a block does not make it one she can end by writing.
    with transaction() as s:
        oid = outbox.queue_message(s, channel="whatsapp", to=STOPPER, body="answer",
                                   reply=True)
    assert oid is not None
    run_jobs()
    with transaction() as s:
        sid = s.get(OutboxMessage, oid).provider_sid
    post_twilio(client, "/webhooks/twilio/status",
                {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": BLOCKED})
    run_jobs()
    refused_by_callback(client, BLOCKER)
    assert closed(STOPPER) == (True, False)
    assert send_whatsapp(client, wa(STOPPER, "hi", "SMstp2")) == HINT
    assert closed(STOPPER) == (True, False)
    assert HINT not in send_whatsapp(client, wa(BLOCKER, "hi", "SMblk4"))
    assert send_whatsapp(client, wa(STOPPER, "START", "SMstp3")).startswith(
        i18n.t("bot.optout.started", "en"))
    assert closed(STOPPER) == (False, False)


def test_a_stop_typed_after_a_block_is_a_stop(client, live):
    customer(BLOCKER)
    customer(STOPPER)
    refused_by_callback(client, STOPPER)
    # Her first message after the block is STOP itself: that is what she wants.
    assert send_whatsapp(client, wa(STOPPER, "STOP", "SMstp4")) == i18n.t(
        "bot.optout.stopped", "en")
    assert closed(STOPPER) == (True, False)
    assert send_whatsapp(client, wa(STOPPER, "hi", "SMstp5")) == HINT
    refused_by_callback(client, BLOCKER)
    assert HINT not in send_whatsapp(client, wa(BLOCKER, "hi", "SMblk5"))
    send_whatsapp(client, wa(BLOCKER, "STOP", "SMblk6"))
    assert closed(BLOCKER) == (True, False)
    # blocked again later (she may block us too): the STOP she typed still stands
    with transaction() as s:
        oid = outbox.queue_message(s, channel="whatsapp", to=BLOCKER, body="x", reply=True)
    run_jobs()
    with transaction() as s:
        sid = s.get(OutboxMessage, oid).provider_sid
    post_twilio(client, "/webhooks/twilio/status",
                {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": BLOCKED})
    run_jobs()
    assert send_whatsapp(client, wa(BLOCKER, "hi", "SMblk7")) == HINT
    assert closed(BLOCKER) == (True, False)


def test_a_number_nobody_holds_that_blocked_us_is_answered_when_it_writes(client, live):
    refused_by_callback(client, BLOCKER)
    [row] = kept()
    assert (row.number_hash, row.whatsapp, row.sms, row.wa_blocked) == (
        outbox.number_hash(BLOCKER), True, False, True)
    assert queued(BLOCKER) is None
    reply = send_whatsapp(client, wa(BLOCKER, "hi", "SMnew1"))
    # Answered as a first message from a number we never closed is.
    assert reply == send_whatsapp(client, wa(CONTROL, "hi", "SMnew2")) != NEW_HINT
    assert kept() == []  # the person made for her holds it now, and it ended
    assert closed(BLOCKER) == (False, False)
    assert queued(BLOCKER) is not None


def test_a_kept_stop_is_not_turned_into_a_block_by_a_later_refusal(client, live):
    with transaction() as s:  # an erased person's STOP, kept for her number
        outbox.keep_opt_out(s, [STOPPER], whatsapp=True, sms=False)
    refused_by_callback(client, BLOCKER)  # and a block from another number nobody holds
    with transaction() as s:
        oid = outbox.queue_message(s, channel="whatsapp", to=STOPPER, body="x", reply=True)
    run_jobs()
    with transaction() as s:
        sid = s.get(OutboxMessage, oid).provider_sid
    post_twilio(client, "/webhooks/twilio/status",
                {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": BLOCKED})
    run_jobs()
    assert {(r.number_hash, r.wa_blocked) for r in kept()} == {
        (outbox.number_hash(STOPPER), False), (outbox.number_hash(BLOCKER), True)}
    assert NEW_HINT not in send_whatsapp(client, wa(BLOCKER, "hi", "SMkpt1"))
    assert send_whatsapp(client, wa(STOPPER, "hi", "SMkpt2")) == NEW_HINT
    assert closed(STOPPER) == (True, False)


def test_an_erased_person_s_block_kept_for_her_number_ends_when_it_writes(client, live):
    with transaction() as s:
        outbox.keep_opt_out(s, [BLOCKER], whatsapp=True, sms=False, wa_blocked=True)
    reply = send_whatsapp(client, wa(BLOCKER, "hi", "SMers1"))
    assert reply == send_whatsapp(client, wa(CONTROL, "hi", "SMers2")) != NEW_HINT
    assert closed(BLOCKER) == (False, False)


def test_erasing_a_person_who_blocked_us_keeps_it_a_block(client, live):
    """Her erasure keeps her opt-outs under her number's hash: a block was kept as a STOP,
    so when she (or whoever has the number) writes again she was told to send START."""
    from core.services import retention

    customer(BLOCKER)
    refused_by_callback(client, BLOCKER)
    with transaction() as s:
        pid = s.scalar(select(Person.id).where(Person.phone == BLOCKER))
        assert retention.erase_person(s, pid).changed
    assert [(r.number_hash, r.whatsapp, r.wa_blocked) for r in kept()] == [
        (outbox.number_hash(BLOCKER), True, True)]
    reply = send_whatsapp(client, wa(BLOCKER, "hi", "SMers3"))
    assert reply == send_whatsapp(client, wa(CONTROL, "hi", "SMers4")) != NEW_HINT

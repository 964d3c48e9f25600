"""Review of 397b275 (a WhatsApp block, Twilio 63014, is not a STOP: her next WhatsApp
message reopens WhatsApp and is answered as a normal turn; migration 0037).

1. A 63014 refusal of a message sent BEFORE her latest WhatsApp message still closes her
   WhatsApp: a callback reported again, or a lost send outcome that the reconcile finds
   refused 15 minutes later, closes the chat she reopened by writing, and her booking's
   news stop coming there.
2. The rating question refused by her block leaves the chat on the rating step. Before,
   only START (which goes to the menu) reopened it; now the first message after the
   block is answered at that step, so the menu's "1" is a 1-star rating of a delivery
   she was never asked about.
3. The IVR treats a block as a STOP (VoicePorts.reach): a caller who stopped our SMS
   and blocked our WhatsApp is told the link cannot reach her and to send START, not
   that writing to us on WhatsApp gets it, which it now does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters import twilio_gateway
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage, Person
from core.adapters.redis_conn import redis_client
from core.services import outbox
from sandbox.jobs import UNDELIVERED_TO_KEY
from tests.conftest import post_twilio, run_jobs, send_whatsapp
from tests.test_ivr import book_in_hindi, phone, prompts, t  # noqa: F401
from tests.test_ivr_more import chats_on_whatsapp, jobs, stops_sms, track_first
from tests.test_outbox_reconcile import STALE, line, lost_outcome, sweep_at  # noqa: F401
from tests.test_whatsapp_rating import (
    CUSTOMER,
    ask,
    chat,  # noqa: F401  (fixture)
    delivered_booking,
    form,
    partner_rating,
    stars_of,
)

pytestmark = pytest.mark.db

BLOCKER = "+919876500511"
BLOCKED = outbox.WHATSAPP_BLOCKED_CODE


def wa(number: str, body: str, sid: str) -> dict[str, str]:
    return {"MessageSid": sid, "From": f"whatsapp:{number}", "WaId": number.lstrip("+"),
            "To": "whatsapp:+14155238886", "Body": body}


def customer(number: str) -> None:
    with transaction() as s:
        s.add(Person(phone=number, role="customer", preferred_language="en"))


def queued(number: str) -> int | None:
    """A WhatsApp message we start (a booking's news): None if her WhatsApp is closed."""
    with transaction() as s:
        return outbox.queue_message(s, channel="whatsapp", to=number,
                                    body="Your parcel is on its way")


def closed(number: str) -> tuple[bool, bool]:
    with transaction() as s:
        row = s.execute(select(Person.opted_out, Person.wa_blocked)
                        .where(Person.phone == number)).one()
        return bool(row[0]), bool(row[1])


def blocks_us(number: str, blocked: bool = True) -> None:
    """She blocks our WhatsApp number (or unblocks it): the Twilio emulator reports each
    message to her sent, then undelivered with 63014, as Twilio does."""
    if blocked:
        redis_client().hset(UNDELIVERED_TO_KEY, f"whatsapp:{number}", f"undelivered:{BLOCKED}")
    else:
        redis_client().hdel(UNDELIVERED_TO_KEY, f"whatsapp:{number}")


def sid_of(oid: int) -> str:
    with transaction() as s:
        sid = s.get(OutboxMessage, oid).provider_sid
    assert sid
    return sid


def refused(client, sid: str) -> None:  # noqa: ANN001
    """Twilio's status callback (posted again): the message ``sid`` refused for her block."""
    r = post_twilio(client, "/webhooks/twilio/status",
                    {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": BLOCKED})
    assert r.status_code == 204
    run_jobs()


# --- 1. a refusal older than her last message ---------------------------------------------

def test_a_block_reported_again_after_she_wrote_does_not_close_her_whatsapp_again(
        client, live):
    """The same 63014 callback applied twice (Twilio posting it again, or a status batch
    applied again after its job died: apply_statuses says that changes nothing but the
    history) closes again the WhatsApp her message reopened: her booking's news stop
    going there until she writes once more. A refusal of a message sent before her latest
    WhatsApp message is old news: she has unblocked us since. outbox._stopped_at (or
    apply_reports) should skip a block for a message older than her chat's
    last_inbound_at."""
    customer(BLOCKER)
    blocks_us(BLOCKER)
    oid = queued(BLOCKER)
    assert oid is not None
    run_jobs()  # sent, then Twilio's callback: undelivered, 63014
    assert closed(BLOCKER) == (True, True)
    blocks_us(BLOCKER, False)
    clock.freeze(clock.now() + timedelta(minutes=5))
    assert i18n.t("menu.main", "en") in send_whatsapp(client, wa(BLOCKER, "hi", "SMrb1"))
    assert closed(BLOCKER) == (False, False)
    refused(client, sid_of(oid))  # the same report, again
    assert closed(BLOCKER) == (False, False)
    assert queued(BLOCKER) is not None


def test_a_lost_send_found_refused_after_she_wrote_does_not_close_her_whatsapp(
        client, line, monkeypatch):  # noqa: F811
    """A message to her whose send outcome was lost (and its callbacks: our web was down)
    stays "sending"; meanwhile she writes to us and is answered. The reconcile, at least
    STALE_SENDING later (hours while Twilio cannot be asked), finds the message at Twilio
    refused with 63014 and applies it as the lost callback: her WhatsApp is closed while
    she is chatting with us, and what we start for her (her parcel's news) is dropped or
    goes by SMS. The block was before her message; it is over."""
    real = twilio_gateway.messages_since

    def listed_refused(**kw):  # noqa: ANN003 (messages_since's keywords)
        return [twilio_gateway.ListedMessage(m.sid, m.body, "undelivered", BLOCKED,
                                             m.date_created) for m in real(**kw)]

    monkeypatch.setattr(twilio_gateway, "messages_since", listed_refused)
    customer(BLOCKER)
    start = datetime.now(UTC).replace(microsecond=0)  # rows are dated by the database
    clock.freeze(start)
    oid = lost_outcome(line, "Your rider is on the way", to=BLOCKER)
    clock.freeze(start + timedelta(minutes=3))  # she writes: answered, her chat is open
    assert i18n.t("menu.main", "en") in send_whatsapp(client, wa(BLOCKER, "hi", "SMrb2"))
    assert closed(BLOCKER) == (False, False)
    sweep_at(start + STALE)
    with transaction() as s:
        row = s.get(OutboxMessage, oid)
        assert (row.status, row.error_code) == ("undelivered", BLOCKED)  # it was adopted
    assert closed(BLOCKER) == (False, False)
    assert queued(BLOCKER) is not None


# --- 2. the rating question she never got -------------------------------------------------

def test_the_menu_choice_after_a_block_is_not_taken_as_stars_for_a_question_refused(
        chat, live):  # noqa: F811
    """The rating question after her delivery is refused (63014: she blocked us). The
    chat stays on the rating step (the refusal of a question is handled for 63016/63018
    by rating.question_refused, not for a block). Before this change only START reopened
    her WhatsApp, and START goes to the menu; now her first message is answered at the
    rating step, so the menu's "1" (to book) rates the rider 1 star for a question she
    never saw. A refused rating question should leave the rating step for a block too
    (outbox: call rating.question_refused for a STOP code on the question's row)."""
    bid, _, partner = delivered_booking()
    before = partner_rating(partner)
    blocks_us(CUSTOMER)
    assert ask(bid)
    run_jobs()  # the question is sent, and refused: 63014
    with transaction() as s:
        assert s.scalar(select(OutboxMessage.status).where(
            OutboxMessage.booking_id == bid,
            OutboxMessage.dedupe_key.like("rate-ask-%"))) == "undelivered"
    assert closed(CUSTOMER) == (True, True)
    blocks_us(CUSTOMER, False)
    clock.freeze(clock.now() + timedelta(hours=1))  # she unblocks us and wants to book
    reply = send_whatsapp(chat, form("1"))
    assert closed(CUSTOMER) == (False, False)
    assert stars_of(bid) == []
    assert partner_rating(partner) == before
    assert i18n.t("bot.pickup.ask", "en") in reply, reply


# --- 3. the IVR's word on how the link reaches a caller -----------------------------------

def test_a_caller_who_stopped_sms_and_blocked_whatsapp_is_told_to_write_on_whatsapp(
        client, live, phone):  # noqa: F811
    """VoicePorts.reach reads opted_out alone: a block is "none", so the caller hears
    "the payment link cannot reach you; reply START to an SMS from us". Her WhatsApp
    opens again when she writes there (this change), which is the "chat" case: "write to
    us on WhatsApp and choose 2 to track this booking" (ivr.reach.stopped_chat). reach
    should return "chat" for opted_out with wa_blocked (and a WhatsApp chat)."""
    book_in_hindi(phone)
    phone.hang_up()
    jobs()  # the link is made and sent by SMS
    stops_sms(phone.phone)
    chats_on_whatsapp(phone.phone, idle=timedelta(hours=2))
    blocks_us(phone.phone)
    with transaction() as s:
        oid = outbox.queue_message(s, channel="whatsapp", to=phone.phone, body="Booking news")
    assert oid is not None
    jobs()  # sent, and refused: 63014
    assert closed(phone.phone) == (True, True)
    heard = track_first(phone)
    assert t("ivr.reach.stopped") not in heard.text, heard.text
    assert t("ivr.reach.stopped_chat") in heard.text, heard.text

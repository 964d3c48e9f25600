"""What a recipient is told when they answer our SMS, and which WhatsApp questions never
go by SMS (review 10 of customer notices, defects 3 and 4; see test_zz_rev10_notices).

A recipient who texts our SMS number about the parcel coming to them hears where it is
(core.services.partner_sms), not how to book. A question only the chat can take the
answer of (the rating question, a chat reply ending in numbered choices) is not sent
again by SMS when WhatsApp refuses it (core.services.outbox._by_sms_instead): the rating
question is asked again on WhatsApp later (core.services.rating.question_refused); a
payment link, a code, a refund notice still go by SMS."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage, Person
from core.config import get_settings
from core.services import outbox, rating
from tests.conftest import post_twilio, release_scheduled, run_jobs
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    bodies_to,
    frozen,  # noqa: F401  (fixture)
    make_partner,
    paid_booking,
    sms,
    start,
)
from tests.test_outbox import queue_one, row
from tests.test_whatsapp_rating import CUSTOMER as WA_CUSTOMER
from tests.test_whatsapp_rating import (  # noqa: F401 (fixture)
    ask,
    chat,
    delivered_booking,
    stars_of,
    step,
    t,
    wa,
)

pytestmark = pytest.mark.db

CODE = re.compile(r"(?<!\d)\d{4}(?!\d)")


def ref_of(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).reference


def pickup_code() -> str:
    (code,) = [c for b in bodies_to(CUSTOMER) if "at pickup" in b for c in CODE.findall(b)]
    return code


# --- 3. a recipient asking about the parcel by SMS ----------------------------------------


def test_a_recipient_texting_about_their_parcel_is_not_told_how_to_book(client, live,
                                                                        frozen):  # noqa: F811
    """Sita got "a parcel (booking X) is coming to you, give code N" by SMS and answers it:
    "parcel kab aayega?". Our SMS number tells her how to book a parcel and how to become
    a rider, as for a stranger; a customer texting the same number is told about their
    booking under way (sms.customer_help). She should hear about the parcel coming to her
    (its reference at least), in her language."""
    _, rider = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    assert sms(client, rider, "1")
    assert len(bodies_to(RECIPIENT)) == 1  # her drop code
    reply = sms(client, RECIPIENT, "parcel kab aayega?")
    how_to_book = i18n.t("sms.not_partner", "hi", ops_phone=get_settings().ops_phone)
    assert reply != [how_to_book], "the recipient of a parcel under way was told how to book"
    assert reply and ref_of(booking_id) in reply[0]


def test_a_recipient_hears_the_parcel_is_on_the_way_once_picked_up(client, live,
                                                                   frozen):  # noqa: F811
    # Guard: the answer follows the parcel (before pickup: not picked up yet), in Hindi
    # for a recipient we know nothing of; and once a day, as for anyone texting us.
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    with transaction() as s:  # the sender reads English, the recipient is unknown to us
        s.scalar(select(Person).where(Person.phone == CUSTOMER)).preferred_language = "en"
    start(booking_id)
    assert sms(client, rider, "1")
    ref = ref_of(booking_id)
    assert sms(client, RECIPIENT, "kab?") == [i18n.t("sms.recipient_coming", "hi", ref=ref)]
    assert sms(client, RECIPIENT, "kab?") == []  # once a day
    assert "picked up" in sms(client, rider, f"PICK {pickup_code()}")[0]
    clock.freeze(clock.now() + timedelta(days=1))
    assert sms(client, RECIPIENT, "kab?") == [
        i18n.t("sms.recipient_on_the_way", "hi", ref=ref)]


def test_no_parcel_news_before_it_is_paid_nor_once_delivered(client, live,
                                                             frozen):  # noqa: F811
    # Guard: nothing is coming before payment (nothing was promised to her), nor after
    # the delivery: she is a stranger to our SMS number then.
    booking_id = paid_booking()
    with transaction() as s:
        s.get(Booking, booking_id).status = "awaiting_payment"
    how_to_book = i18n.t("sms.not_partner", "hi", ops_phone=get_settings().ops_phone)
    assert sms(client, RECIPIENT, "hello") == [how_to_book]
    with transaction() as s:
        s.get(Booking, booking_id).status = "delivered"
    clock.freeze(clock.now() + timedelta(days=1))
    assert sms(client, RECIPIENT, "hello") == [how_to_book]


def test_a_recipient_with_a_booking_of_her_own_hears_of_what_we_last_texted(
        client, live, frozen):  # noqa: F811
    """Sita awaits Meena's parcel and has a booking of her own under way. She answers the
    SMS she got last: the drop code (her own booking's news goes on WhatsApp), so she
    hears of the parcel; once we last texted her about her own booking, of that one."""
    _, rider = make_partner("Ramesh", LAXMIPUR)
    parcel_id = paid_booking()
    own_id = paid_booking(recipient="+919876500031")
    with transaction() as s:
        sita = Person(phone=RECIPIENT, name="Sita", role="customer", preferred_language="en")
        s.add(sita)
        s.flush()
        s.get(Booking, own_id).customer_id = sita.id
    start(parcel_id)
    assert sms(client, rider, "1")
    assert sms(client, RECIPIENT, "when?") == [
        i18n.t("sms.recipient_coming", "en", ref=ref_of(parcel_id))]
    with transaction() as s:
        assert outbox.queue_message(s, channel="sms", to=RECIPIENT, body="about her own",
                                    booking_id=own_id) is not None
    clock.freeze(clock.now() + timedelta(days=1))
    assert sms(client, RECIPIENT, "when?") == [
        i18n.t("sms.customer_help", "en", ref=ref_of(own_id))]


# --- 4. a WhatsApp question sent by SMS ---------------------------------------------------


def refuse(client, sid: str, code: str) -> None:
    """Twilio reports that WhatsApp refused the message ``sid`` (error ``code``)."""
    r = post_twilio(client, "/webhooks/twilio/status",
                    {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": code})
    assert r.status_code == 204
    run_jobs()


def sms_to(phone: str) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.channel == "sms", OutboxMessage.to_addr == phone)))


@pytest.mark.parametrize("code", ["63018", "63016"])
def test_a_rating_question_whatsapp_refused_does_not_go_by_sms(chat, live, code):  # noqa: F811
    """The "how was it? send 1 to 5" question is asked on WhatsApp only, because "an SMS
    reply reaches the riders' number" (rating._ask). When WhatsApp refuses it (63018: our
    sender's messaging limit; 63016: the window closed before it went, no template), the
    outbox sends the same question by SMS: the customer's "5" then lands on the partner
    SMS number, is answered with how to book, and no rating is stored."""
    bid, ref, _ = delivered_booking()
    assert ask(bid)
    run_jobs()
    question = i18n.t("bot.rate.ask", "en", ref=ref)
    with transaction() as s:
        row_ = s.scalar(select(OutboxMessage).where(
            OutboxMessage.dedupe_key == f"rate-ask-{bid}"))
        assert row_.channel == "whatsapp" and row_.body == question and row_.provider_sid
        sid = row_.provider_sid
    refuse(chat, sid, code)
    assert question not in sms_to(WA_CUSTOMER), (
        "a question only WhatsApp can take the answer of went by SMS")


def test_a_refused_rating_question_is_asked_again_on_whatsapp(chat, live):  # noqa: F811
    # Guard: the question that never arrived leaves the chat at the menu (a "1" there
    # books, it is no star), and is asked again on WhatsApp once the chat is quiet; its
    # answer is stored. A late second report of the first refusal changes nothing.
    bid, ref, _ = delivered_booking()
    assert ask(bid)
    run_jobs()
    with transaction() as s:
        sid = s.scalar(select(OutboxMessage.provider_sid).where(
            OutboxMessage.dedupe_key == f"rate-ask-{bid}"))
    refuse(chat, sid, "63018")
    assert step() == "menu"
    clock.freeze(clock.now() + rating.QUIET + timedelta(seconds=5))
    assert release_scheduled(rating.QUIET + timedelta(seconds=5)) >= 1
    run_jobs()
    question = i18n.t("bot.rate.ask", "en", ref=ref)
    with transaction() as s:
        again = s.scalar(select(OutboxMessage).where(
            OutboxMessage.dedupe_key == f"rate-ask-{bid}-again-1"))
        assert again is not None and again.channel == "whatsapp" and again.body == question
    assert step() == "rate"
    refuse(chat, sid, "63018")  # Twilio reports the first one twice
    assert step() == "rate"
    assert t("bot.rate.thanks", ref=ref, stars="⭐" * 5) in wa(chat, "5")
    assert stars_of(bid) == [5]
    assert question not in sms_to(WA_CUSTOMER)


TO = "+919876500001"  # tests.test_outbox.TO
MENU_REPLY = "Which booking? Send its number:\n1. 48217730\n2. 48217731\n(0 = menu)"


@pytest.mark.parametrize(("key", "body", "by_sms"), [
    # What the person must have still reaches them.
    ("paylink-1", "Booking 48217730: please pay ₹120 here: https://rzp.io/i/AbCd", True),
    ("leg-1-dropotp-a", "RideChain: a parcel (booking 48217730) is coming to you. "
                        "Give code 4821 to the rider on delivery.", True),
    ("refund-1-processed", "Booking 48217730: ₹120 is sent back to you.", True),
    ("reply:SMx1:0", "Booking 48217730: the parcel is on the way.", True),
    ("reply:SMx2:0", "To pay ₹120, open this link: https://rzp.io/i/AbCd\n1. Pay\n2. Menu",
     True),
    # A question only the chat takes the answer of does not.
    ("reply:SMx3:0", MENU_REPLY, False),
    ("rate-ask-999", "Booking 48217730: how was it?\n5 = very good\n1 = very bad\n"
                     "(0 = menu)", False),
])
def test_which_whatsapp_messages_go_by_sms_when_refused(client, live, key, body, by_sms):
    with transaction() as s:
        s.add(Person(phone=TO, role="customer"))
    oid = queue_one(body=body, dedupe_key=key)
    run_jobs()
    refuse(client, row(oid).provider_sid, "63018")
    assert (body in sms_to(TO)) is by_sms

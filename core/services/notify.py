"""Tell people what happened, in their language, on the channel they use.

Customers who wrote to us on WhatsApp get WhatsApp messages; everyone else (IVR callers,
partners, recipients) gets SMS. Messages go through the outbox in the caller's transaction.

WhatsApp's 24-hour rule: a free-form message is allowed only within 24 hours of the
user's last message to us. Outside that window we send the approved template configured
for the user's language (``WHATSAPP_TEMPLATE_<LANG>=<ContentSid>``, one generic "update"
template per language whose variable ``{{1}}`` carries our text), and without one we fall
back to SMS. Where no SMS can go (a user known only by her WhatsApp id, SMS stopped), the
default language's template carries our text, in her language, rather than nothing.

STOP on WhatsApp ends the WhatsApp messages we start. What a person needs for a booking
they made or receive (its link, details, codes, status, refund), and a sign-in code they
asked for, still reaches them, by SMS (core.services.outbox.queue_message decides what
an opted-out person needs). START on WhatsApp brings WhatsApp back.
"""

from __future__ import annotations

import functools
import logging
import os
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import clock, i18n
from core.adapters.dialog_models import WhatsappTemplateSend
from core.adapters.models import Booking, Conversation, OutboxMessage, Person
from core.services import outbox

log = logging.getLogger(__name__)

WHATSAPP_WINDOW = timedelta(hours=24)
# A message tried by SMS even after an SMS opt-out: a sign-in code, which they just asked
# for (they may have opted in again where we could not see; Twilio refuses it otherwise).
NEEDED_KEYS = frozenset({"auth.otp"})


@functools.cache
def whatsapp_templates() -> dict[str, str]:
    """ContentSid of the "update" template per language, from WHATSAPP_TEMPLATE_<LANG>."""
    found: dict[str, str] = {}
    for lang in i18n.LANGUAGES:
        sid = os.environ.get(f"WHATSAPP_TEMPLATE_{lang.upper()}", "").strip()
        if sid:
            found[lang] = sid
    return found


def whatsapp_template(person: Person | None, *, only_way: bool = False,
                      lang: str | None = None) -> str | None:
    """ContentSid of the "update" template in the text's language ``lang`` (the person's
    when not given); ``only_way`` (no SMS can carry the text), else the default
    language's: its few words of its own in that language, our text (its variable) in
    hers."""
    templates = whatsapp_templates()
    sid = templates.get(lang or language_of(person))
    return sid or (templates.get(i18n.DEFAULT_LANGUAGE) if only_way else None)


def reset_templates() -> None:
    """Forget the template configuration (tests change the environment)."""
    whatsapp_templates.cache_clear()


def language_of(person: Person | None) -> str:
    """The person's language: for what is not about one booking (a sign-in code, the
    menu, a new conversation); a booking's news goes in booking_language."""
    return (person.preferred_language if person else None) or i18n.DEFAULT_LANGUAGE


def booking_language(booking: Booking, person: Person | None) -> str:
    """The language of a message to ``booking``'s customer ``person`` about it: the one
    it was made in. A phone is often a family's: another caller on it may have chosen
    another language since, and this booking's customer may not read that one. A booking
    made before it kept its language (NULL) goes in the person's, as before."""
    return booking.language or language_of(person)


def _whatsapp_conversation(session: Session, person: Person) -> Conversation | None:
    return session.scalar(
        select(Conversation).where(Conversation.person_id == person.id,
                                   Conversation.channel == "whatsapp")
        .order_by(Conversation.last_inbound_at.desc().nulls_last()).limit(1)
    )


def customer_channel(session: Session, person: Person) -> tuple[str, str]:
    """(channel, address) for a customer: WhatsApp if they chat with us, else SMS."""
    conv = _whatsapp_conversation(session, person)
    if conv is not None:
        return "whatsapp", person.phone or conv.contact
    if person.phone is None:
        raise ValueError("customer has neither WhatsApp nor a phone number")
    return "sms", person.phone


def in_whatsapp_window(conv: Conversation | None) -> bool:
    """True if a free-form WhatsApp message may go to this conversation now."""
    return (conv is not None and conv.last_inbound_at is not None
            and clock.now() - conv.last_inbound_at < WHATSAPP_WINDOW)


def send_to_person(session: Session, person: Person, body: str, *,
                   dedupe_key: str | None = None, booking_id: int | None = None,
                   sms_only: bool = False, whatsapp_only: bool = False,
                   lang: str | None = None) -> int | None:
    """Queue ``body`` to a customer on the right channel for now; the outbox row id.

    WhatsApp free-form inside the 24-hour window, else the language's approved template,
    else SMS. ``sms_only`` (a phone booking's news, promised by SMS) and a STOP on
    WhatsApp mean SMS, unless the person stopped SMS and still chats with us on WhatsApp.
    ``whatsapp_only``: never SMS (an SMS to them just failed). None if nothing can be sent
    (both channels stopped, retried cause, no address). ``lang``: the language ``body`` is
    in, when not the person's (a booking's news), for the template around it."""
    sms_open = person.phone is not None and not person.sms_opted_out
    conv = None if person.opted_out or (sms_only and sms_open) else _whatsapp_conversation(
        session, person)
    if conv is not None:
        to = person.phone or conv.contact
        if in_whatsapp_window(conv):
            return outbox.queue_message(session, channel="whatsapp", to=to, body=body,
                                        dedupe_key=dedupe_key, booking_id=booking_id,
                                        person=person)
        sid = whatsapp_template(person, only_way=whatsapp_only or not sms_open, lang=lang)
        if sid and outbox.fits_template(body):
            row_id = outbox.queue_message(session, channel="whatsapp", to=to, body=body,
                                          dedupe_key=dedupe_key, booking_id=booking_id,
                                          person=person)
            if row_id is not None:
                session.add(WhatsappTemplateSend(outbox_id=row_id, content_sid=sid,
                                                 content_variables={"1": body}))
            return row_id
    if whatsapp_only:
        return None
    if person.phone is None:
        log.warning("no phone number to reach the customer by SMS")
        return None
    return outbox.queue_message(session, channel="sms", to=person.phone, body=body,
                                dedupe_key=dedupe_key, booking_id=booking_id, person=person)


def notify_customer(session: Session, booking: Booking, key: str, *,
                    dedupe_key: str | None = None, **params: object) -> int | None:
    """Queue catalog message ``key`` to the booking's customer (``ref`` is filled in).

    A booking made by phone call is followed up by SMS, even for a caller who also chats
    with us on WhatsApp: that is what the call promised ("we will send you an SMS").
    In the language the booking was made in (booking_language), not whatever its phone's
    person chose since."""
    person = session.get(Person, booking.customer_id)
    assert person is not None
    lang = booking_language(booking, person)
    body = i18n.t(key, lang, ref=booking.reference, **params)
    return send_to_person(session, person, body, dedupe_key=dedupe_key, booking_id=booking.id,
                          sms_only=booking.channel == "voice", lang=lang)


def _phone_language(session: Session, person: Person | None, booking_id: int | None,
                    sms_only: bool) -> str:
    """The language of a message to a phone whose language the caller left to us: the
    booking's when it goes to that booking's own customer (its payment link sent again),
    else the phone's person's. A work message (``sms_only``: an operator's alert, a
    partner's job) is in their own, whoever made the booking."""
    if person is not None and booking_id is not None and not sms_only:
        booking = session.get(Booking, booking_id)
        if booking is not None and booking.customer_id == person.id:
            return booking_language(booking, person)
    return language_of(person)


def notify_phone(session: Session, phone: str, key: str, *, lang: str | None = None,
                 dedupe_key: str | None = None, booking_id: int | None = None,
                 sms_only: bool = False, **params: object) -> int | None:
    """Queue catalog message ``key`` by SMS to a phone (recipients, partners); by
    WhatsApp to someone who stopped SMS and chats with us there (a drop code must reach
    the recipient). ``sms_only``: a partner's job messages and ops alerts, which are
    answered by SMS, never go another way, and a STOP on WhatsApp does not end them (only
    an SMS opt-out does). ``lang`` None: the phone's own (_phone_language)."""
    person = session.scalar(select(Person).where(Person.phone == phone))
    return _to_phone(session, phone, person, key, lang, dedupe_key, booking_id, sms_only,
                     params)


def notify_known_phone(session: Session, person: Person, key: str, *,
                       lang: str | None = None, dedupe_key: str | None = None,
                       booking_id: int | None = None, sms_only: bool = False,
                       **params: object) -> int | None:
    """notify_phone to the phone of ``person``, whom the caller holds already (a caller's
    turn, a partner's job): the person is not read again by the number."""
    assert person.phone, "a person to write to has a phone"
    return _to_phone(session, person.phone, person, key, lang, dedupe_key, booking_id,
                     sms_only, params)


def _to_phone(session: Session, phone: str, person: Person | None, key: str,
              lang: str | None, dedupe_key: str | None, booking_id: int | None,
              sms_only: bool, params: dict[str, object]) -> int | None:
    if lang is None:
        lang = _phone_language(session, person, booking_id, sms_only)
    body = i18n.t(key, lang, **params)
    if person is not None and person.sms_opted_out and not sms_only and key not in NEEDED_KEYS:
        return send_to_person(session, person, body, dedupe_key=dedupe_key,
                              booking_id=booking_id, lang=lang)
    return outbox.queue_message(session, channel="sms", to=phone, body=body,
                                dedupe_key=dedupe_key, booking_id=booking_id,
                                needed=key in NEEDED_KEYS, work=sms_only, person=person)


# A phone booking's payment link sent to another mobile (ivr.VoicePorts.send_link_to: a
# son's, a shopkeeper's, who pays from his own UPI) is an outbox row about the booking
# keyed "paylink-<booking>-other-<number's hash>-s<Unix seconds>".
def link_other_prefix(booking_id: int | str) -> str:
    """How the dedupe key of a booking's payment link sent to another mobile starts: the
    one place its form is written (ivr.VoicePorts.send_link_to builds the key, link_payers
    finds it). ``"%"`` for any booking's, in a LIKE pattern."""
    return f"paylink-{booking_id}-other-"


# A link SMS that never reached the number: nobody paid from it.
_NOT_DELIVERED = ("failed", "undelivered")


def link_payers(session: Session, booking: Booking) -> list[str]:
    """The other mobiles (E.164) the booking's payment link was sent to, in the order it
    went, each once: any of them may have paid it, from their own account. Not the
    customer's own number, nor one whose link SMS failed or whose address was erased."""
    customer = session.get(Person, booking.customer_id)
    own = customer.phone if customer is not None else None
    rows = session.scalars(select(OutboxMessage.to_addr).where(
        OutboxMessage.booking_id == booking.id,
        OutboxMessage.dedupe_key.like(f"{link_other_prefix(booking.id)}%"),
        OutboxMessage.status.not_in(_NOT_DELIVERED)).order_by(OutboxMessage.id))
    found: list[str] = []
    for addr in rows:
        phone = addr.removeprefix("whatsapp:")
        if phone.startswith("+") and phone != own and phone not in found:
            found.append(phone)
    return found


def notify_link_payers(session: Session, booking: Booking, key: str, *, dedupe_key: str,
                       **params: object) -> int:
    """Queue catalog message ``key`` (``ref`` is filled in) to each other mobile the
    booking's payment link went to (link_payers), once each under ``dedupe_key`` and the
    number's hash; how many were queued. In the number's own language when we know it,
    else the booking's (the link went in its caller's)."""
    customer = session.get(Person, booking.customer_id)
    lang = booking_language(booking, customer)
    queued = 0
    for phone in link_payers(session, booking):
        person = session.scalar(select(Person).where(Person.phone == phone))
        own = person.preferred_language if person is not None else None
        key_of = f"{dedupe_key}-{outbox.number_hash(phone)[:16]}"
        if _to_phone(session, phone, person, key, own or lang, key_of, booking.id, False,
                     {"ref": booking.reference, **params}) is not None:
            queued += 1
    return queued

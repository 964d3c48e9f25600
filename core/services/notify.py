"""Tell people what happened, in their language, on the channel they use.

Customers who wrote to us on WhatsApp get WhatsApp messages; everyone else (IVR callers,
partners, recipients) gets SMS. Messages go through the outbox in the caller's transaction.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import i18n
from core.adapters.models import Booking, Conversation, Person
from core.services import outbox


def language_of(person: Person | None) -> str:
    return (person.preferred_language if person else None) or i18n.DEFAULT_LANGUAGE


def customer_channel(session: Session, person: Person) -> tuple[str, str]:
    """(channel, address) for a customer: WhatsApp if they chat with us, else SMS."""
    wa_contact = session.scalar(
        select(Conversation.contact).where(Conversation.person_id == person.id,
                                           Conversation.channel == "whatsapp")
    )
    if wa_contact is not None:
        return "whatsapp", person.phone or wa_contact
    if person.phone is None:
        raise ValueError("customer has neither WhatsApp nor a phone number")
    return "sms", person.phone


def notify_customer(session: Session, booking: Booking, key: str, *,
                    dedupe_key: str | None = None, **params: object) -> int | None:
    """Queue catalog message ``key`` to the booking's customer (``ref`` is filled in)."""
    person = session.get(Person, booking.customer_id)
    assert person is not None
    channel, to = customer_channel(session, person)
    body = i18n.t(key, language_of(person), ref=booking.reference, **params)
    return outbox.queue_message(session, channel=channel, to=to, body=body,
                                dedupe_key=dedupe_key, booking_id=booking.id)


def notify_phone(session: Session, phone: str, key: str, *, lang: str | None = None,
                 dedupe_key: str | None = None, booking_id: int | None = None,
                 **params: object) -> int | None:
    """Queue catalog message ``key`` by SMS to a phone (recipients, partners)."""
    if lang is None:
        lang = language_of(session.scalar(select(Person).where(Person.phone == phone)))
    body = i18n.t(key, lang, **params)
    return outbox.queue_message(session, channel="sms", to=phone, body=body,
                                dedupe_key=dedupe_key, booking_id=booking_id)

"""Contacts and the first steps of a WhatsApp conversation (language, main menu).

The full booking dialog (issue 3) grows from here; this module already keeps the
contact, its language and its place in the conversation in PostgreSQL, so a restart
loses nothing.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import clock, i18n
from core.adapters.models import Conversation, PartnerProfile, Person
from core.config import get_settings
from core.services.inbound import InboundMessage

MENU_WORDS = {"0", "menu", "मेनू", "मेन्यू", "main menu"}
LANGUAGE_WORDS = {"language", "bhasha", "भाषा", "lang"}


def contact_for(session: Session, msg: InboundMessage) -> tuple[Person, Conversation]:
    """The person and conversation behind an inbound message, created on first contact."""
    conv = session.scalar(
        select(Conversation)
        .where(Conversation.channel == msg.channel, Conversation.contact == msg.contact)
        .with_for_update()
    )
    person: Person | None = None
    if conv is not None and conv.person_id is not None:
        person = session.get(Person, conv.person_id)
    if person is None:
        if msg.phone:
            person = session.scalar(select(Person).where(Person.phone == msg.phone))
        if person is None and msg.channel == "whatsapp":
            person = session.scalar(select(Person).where(Person.wa_id == msg.contact))
        if person is None:
            person = Person(phone=msg.phone, role="customer", name=msg.profile_name,
                            wa_id=msg.contact if msg.channel == "whatsapp" else None)
            session.add(person)
            session.flush()
    if conv is None:
        conv = Conversation(channel=msg.channel, contact=msg.contact, person_id=person.id,
                            step="start", state={}, misses=0)
        session.add(conv)
    conv.person_id = person.id
    conv.last_inbound_at = clock.now()
    return person, conv


def _language_choice(text: str) -> str | None:
    text = text.strip().lower()
    if text.isdigit() and 1 <= int(text) <= len(i18n.LANGUAGES):
        return i18n.LANGUAGES[int(text) - 1]
    for code, name in i18n.LANGUAGE_NAMES.items():
        if text in (code, name.lower()):
            return code
    return None


def whatsapp_turn(session: Session, msg: InboundMessage) -> list[str]:
    """Answer one WhatsApp message: choose a language, then the numbered main menu."""
    person, conv = contact_for(session, msg)
    lang = person.preferred_language or i18n.DEFAULT_LANGUAGE
    text = msg.body.strip()
    if conv.handoff:
        return []  # an operator owns this conversation; the bot stays quiet
    if msg.num_media and not text:
        return [i18n.t("common.unsupported_media", lang)]

    if person.preferred_language is None or conv.step == "choose_language":
        choice = _language_choice(text) if conv.step == "choose_language" else None
        if choice is None:
            conv.step = "choose_language"
            return [i18n.t("lang.menu", lang)]
        person.preferred_language = choice
        conv.step = "main_menu"
        conv.misses = 0
        return [
            i18n.t("lang.saved", choice, language=i18n.LANGUAGE_NAMES[choice]),
            i18n.t("menu.main", choice),
        ]

    lowered = text.lower()
    if lowered in LANGUAGE_WORDS:
        conv.step = "choose_language"
        return [i18n.t("lang.menu", lang)]
    if lowered in MENU_WORDS or conv.step != "main_menu":
        conv.step = "main_menu"
        conv.misses = 0
        return [i18n.t("menu.main", lang)]
    if lowered == "5" or lowered in {"help", "madad", "मदद"}:
        return [i18n.t("menu.help", lang)]
    if lowered in {"1", "2", "3", "4"}:
        return [i18n.t("common.coming_soon", lang), i18n.t("menu.main", lang)]
    conv.misses += 1
    return [i18n.t("common.not_understood", lang), i18n.t("menu.main", lang)]


def partner_sms_turn(session: Session, msg: InboundMessage) -> list[str]:
    """Answer a partner's SMS: strangers get one line on how to join; partners the help."""
    person = session.scalar(select(Person).where(Person.phone == msg.phone))
    partner = (
        session.scalar(select(PartnerProfile).where(PartnerProfile.person_id == person.id))
        if person is not None else None
    )
    lang = (person.preferred_language if person else None) or i18n.DEFAULT_LANGUAGE
    if partner is None:
        return [i18n.t("sms.not_partner", lang, ops_phone=get_settings().ops_phone)]
    return [i18n.t("sms.help", lang)]

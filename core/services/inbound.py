"""What every inbound Twilio message goes through: rate limit, dedupe, one transaction.

A retried webhook (same MessageSid) gets the reply it got the first time and changes
nothing; the claim on the sid and the handler's changes commit together.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Conversation, InboundEvent, Person
from core.adapters.redis_conn import hit_rate_limit
from core.config import get_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InboundMessage:
    """A Twilio message webhook, reduced to what the core needs (channel-neutral)."""

    channel: str  # "whatsapp" or "sms"
    sid: str
    from_addr: str  # as Twilio gave it, e.g. "whatsapp:+919876543210"
    to_addr: str
    body: str
    contact: str  # stable key: WaId for WhatsApp, E.164 phone for SMS
    phone: str | None  # E.164 when Twilio gave a phone number
    profile_name: str | None = None
    num_media: int = 0
    media_types: tuple[str, ...] = ()
    media_urls: tuple[str, ...] = ()  # Twilio-hosted; fetched (with auth) only in jobs
    latitude: float | None = None
    longitude: float | None = None
    button_payload: str | None = None


@dataclass
class Outcome:
    replies: list[str] = field(default_factory=list)
    duplicate: bool = False
    rate_limited: bool = False


Handler = Callable[[Session, InboundMessage], list[str]]


def process(msg: InboundMessage, handler: Handler) -> Outcome:
    """Run ``handler`` once per MessageSid, inside one transaction, under a rate limit."""
    settings = get_settings()
    over, count = hit_rate_limit(f"{msg.channel}:{msg.contact}", settings.inbound_rate_limit,
                                 settings.inbound_rate_window_s)
    if over:
        # Say it once per window; after that stay silent so a flood costs us nothing.
        if count == settings.inbound_rate_limit + 1:
            lang = _language_of(msg)
            return Outcome([i18n.t("common.too_many_messages", lang)], rate_limited=True)
        return Outcome(rate_limited=True)

    for attempt in (1, 2):
        try:
            return _process_once(msg, handler)
        except IntegrityError:
            # Two first messages from one new contact raced to create it; the loser's
            # transaction rolled back whole, and on the second try it finds the contact.
            if attempt == 2:
                raise
            log.info("retrying inbound message after a creation race")
    raise AssertionError("unreachable")


def _process_once(msg: InboundMessage, handler: Handler) -> Outcome:
    with transaction() as session:
        claimed = session.scalar(
            insert(InboundEvent)
            .values(provider="twilio", external_id=msg.sid, channel=msg.channel)
            .on_conflict_do_nothing(constraint="uq_inbound_events_provider_external")
            .returning(InboundEvent.id)
        )
        if claimed is None:
            stored = session.scalar(
                select(InboundEvent.response_body).where(
                    InboundEvent.provider == "twilio", InboundEvent.external_id == msg.sid
                )
            )
            log.info("duplicate webhook answered from record", extra={"channel": msg.channel})
            return Outcome(json.loads(stored) if stored else [], duplicate=True)
        replies = handler(session, msg)
        session.execute(update(InboundEvent).where(InboundEvent.id == claimed)
                        .values(response_body=json.dumps(replies, ensure_ascii=False)))
    return Outcome(replies)


def _language_of(msg: InboundMessage) -> str:
    with transaction() as session:
        lang = session.scalar(
            select(Person.preferred_language)
            .join(Conversation, Conversation.person_id == Person.id)
            .where(Conversation.channel == msg.channel, Conversation.contact == msg.contact)
        )
    return lang or i18n.DEFAULT_LANGUAGE

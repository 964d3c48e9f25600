"""Tables owned by the dialog area (added to the shared metadata by core.adapters.models).

- ``handoffs``: a conversation handed to a person (waiting list for operators); while one
  is open the bot stays quiet on that conversation.
- ``handoff_messages``: what the user and the operator said during a handoff.
- ``whatsapp_template_sends``: outbox rows that must go out as an approved WhatsApp
  template (outside the 24-hour window): Twilio ContentSid and variables.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from core.adapters.models import Base, created_col

HANDOFF_STATUSES = ("waiting", "closed")
HANDOFF_REASONS = ("asked", "not_understood", "callback")


class Handoff(Base):
    """A request to talk to a person, from one conversation, until an operator closes it."""

    __tablename__ = "handoffs"
    __table_args__ = (
        CheckConstraint("status IN ('waiting', 'closed')", name="status"),
        CheckConstraint("reason IN ('asked', 'not_understood', 'callback')", name="reason"),
        # The ops list of waiting handoffs, paged by cursor (migration 0019).
        Index("ix_handoffs_waiting_created_at", "created_at", "id",
              postgresql_where=text("status = 'waiting'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"), index=True)
    channel: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(10), default="waiting", index=True)
    step: Mapped[str | None] = mapped_column(String(40))  # where the user was in the dialog
    operator: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = created_col()
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class HandoffMessage(Base):
    """One message of a handed-off conversation: ``in`` from the user, ``out`` from ops."""

    __tablename__ = "handoff_messages"
    __table_args__ = (
        CheckConstraint("direction IN ('in', 'out')", name="direction"),
        # The retention run redacts them by age (migration 0036): the texts not redacted
        # yet (retention.REDACTED).
        Index("ix_handoff_messages_unredacted_created_at", "created_at", "id",
              postgresql_where=text("body <> '[removed]'")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    handoff_id: Mapped[int] = mapped_column(ForeignKey("handoffs.id"), index=True)
    direction: Mapped[str] = mapped_column(String(3))
    body: Mapped[str] = mapped_column(Text)
    operator: Mapped[str | None] = mapped_column(String(80))
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox_messages.id"))
    created_at: Mapped[datetime] = created_col()


class WhatsappTemplateSend(Base):
    """The approved template an outbox row must be sent as (outside the 24-hour window)."""

    __tablename__ = "whatsapp_template_sends"

    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox_messages.id"), primary_key=True)
    content_sid: Mapped[str] = mapped_column(String(64))
    content_variables: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = created_col()

"""Tables of the REST API: sign-in sessions, idempotency records, ratings (and the chat's
questions still to ask for them), audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from core.adapters.models import Base, created_col


class ApiSession(Base):
    """A signed-in device: the bearer token names it, sign-out revokes it."""

    __tablename__ = "api_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), index=True)
    created_at: Mapped[datetime] = created_col()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # An operator's session: when it was last used, on the service clock, written at most
    # every few minutes (core.services.auth: it ends after OPS_SESSION_IDLE_HOURS unused).
    # NULL for the other roles' sessions (migration 0054).
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# A saved answer of POST /ops/legs/{id}/new-code whose code is still in it (no other
# endpoint's answer has a leg_id and a pickup or drop kind; retention.REDACTED is the mark
# of a removed code). SQL written out, so that PostgreSQL sees its partial index's
# predicate in the queries of retention's sweeps (a parameter's value a generic plan
# cannot see).
HOLDS_CODE = ("(response ->> 'leg_id') IS NOT NULL"
              " AND (response ->> 'kind') IN ('pickup', 'drop')"
              " AND (response ->> 'code') <> '[removed]'")


class IdempotencyRecord(Base):
    """The first answer to a request with an Idempotency-Key, replayed on a retry."""

    __tablename__ = "idempotency_records"
    __table_args__ = (
        UniqueConstraint("person_id", "key", name="uq_idempotency_person_key"),
        # The retention run deletes them by age (migration 0036).
        Index("ix_idempotency_records_created_at", "created_at", "id"),
        # Ops' new-code answers still holding their code, for the sweeps that remove it
        # (migration 0038; retention.HOLDS_CODE says the same).
        Index("ix_idempotency_records_holding_code", "created_at", "id",
              postgresql_where=text(HOLDS_CODE)),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"))
    key: Mapped[str] = mapped_column(String(100))
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = created_col()


class BookingRating(Base):
    __tablename__ = "booking_ratings"
    __table_args__ = (CheckConstraint("stars BETWEEN 1 AND 5", name="stars"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), unique=True)
    stars: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = created_col()


class RatingAsk(Base):
    """A delivered WhatsApp booking whose customer is still to be asked for a rating
    (core.services.rating): the try due next and when. Gone once they are asked, the
    booking is rated or is not to be asked, or the window ends. Redis holds only the job
    of the next try; a sweep re-schedules one that Redis lost or that failed."""

    __tablename__ = "rating_asks"

    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), primary_key=True)
    tries: Mapped[int] = mapped_column(Integer)  # the number of the try due next
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # no ask after


class AuditEntry(Base):
    """What an operator did to money or KYC, and why. Append-only (database trigger)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    actor: Mapped[str] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(60))
    target: Mapped[str] = mapped_column(String(80))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    at: Mapped[datetime] = created_col()

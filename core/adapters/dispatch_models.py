"""Tables owned by the dispatch area (added to the shared metadata by core.adapters.models).

Mirrored by hand in migrations/versions/0003_dispatch.py.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.adapters.models import Base, one_of
from core.domain.dispatch import OfferStatus, SearchStatus

OTP_KINDS = ("pickup", "drop")
PARTNER_EVENT_KINDS = ("duty_on", "duty_off", "cancelled_after_accept", "auto_off",
                       "taken_back_by_ops", "pickup_reminded")


class DispatchSearch(Base):
    """The partner search for one leg: its deadline, radius step, batch and pass counters.

    ``round`` grows each time the search (re)starts (paid, partner gave the job back);
    ``pass_no`` grows each time the candidate list ran dry and the search started over.
    """

    __tablename__ = "dispatch_searches"
    __table_args__ = (CheckConstraint(one_of("status", SearchStatus), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    leg_id: Mapped[int] = mapped_column(ForeignKey("legs.id"), unique=True)
    status: Mapped[str] = mapped_column(String(10), index=True)
    round: Mapped[int] = mapped_column(Integer, default=1)
    pass_no: Mapped[int] = mapped_column(Integer, default=1)
    radius_step: Mapped[int] = mapped_column(Integer, default=0)
    batch_no: Mapped[int] = mapped_column(Integer, default=0)
    deadline_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_try_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    exhausted_pass: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class DispatchOffer(Base):
    """One job offer to one partner; at most one per leg is ever ``accepted``."""

    __tablename__ = "dispatch_offers"
    __table_args__ = (
        CheckConstraint(one_of("status", OfferStatus), name="status"),
        # The database, not only the code, guarantees a single winner per leg ...
        Index("uq_dispatch_offers_leg_accepted", "leg_id", unique=True,
              postgresql_where=text("status = 'accepted'")),
        # ... and a single open offer per partner and leg.
        Index("uq_dispatch_offers_leg_partner_open", "leg_id", "partner_id", unique=True,
              postgresql_where=text("status = 'open'")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    leg_id: Mapped[int] = mapped_column(ForeignKey("legs.id"), index=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partner_profiles.id"), index=True)
    status: Mapped[str] = mapped_column(String(10), index=True)
    round: Mapped[int] = mapped_column(Integer)
    pass_no: Mapped[int] = mapped_column(Integer)
    batch_no: Mapped[int] = mapped_column(Integer)
    distance_m: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    offered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    responded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OtpAttempt(Base):
    """Every PICK/DROP code a partner keyed in (right or wrong), for the lockout and audit."""

    __tablename__ = "dispatch_otp_attempts"
    __table_args__ = (CheckConstraint(one_of("kind", OTP_KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    leg_id: Mapped[int] = mapped_column(ForeignKey("legs.id"), index=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partner_profiles.id"))
    kind: Mapped[str] = mapped_column(String(10))
    ok: Mapped[bool] = mapped_column(Boolean)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PartnerEvent(Base):
    """Things that shape a partner's record: duty changes, jobs given back after accepting,
    reminders that a job waits for its pickup (the take-back counts from them)."""

    __tablename__ = "dispatch_partner_events"
    __table_args__ = (CheckConstraint(one_of("kind", PARTNER_EVENT_KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partner_profiles.id"), index=True)
    leg_id: Mapped[int | None] = mapped_column(ForeignKey("legs.id"))
    kind: Mapped[str] = mapped_column(String(30))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PodPhoto(Base):
    """A proof-of-delivery photo, stored through core.adapters.storage."""

    __tablename__ = "dispatch_pod_photos"
    __table_args__ = (
        CheckConstraint("size_bytes > 0", name="size"),
        # The retention run deletes them by age (migration 0036).
        Index("ix_dispatch_pod_photos_created_at", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    leg_id: Mapped[int] = mapped_column(ForeignKey("legs.id"), index=True)
    partner_id: Mapped[int | None] = mapped_column(ForeignKey("partner_profiles.id"))
    storage_uri: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(40))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class PodPhotoDeletion(Base):
    """A stored photo file to delete: its row went in an erasure's or the retention job's
    transaction; the file goes after the commit (core.services.retention), this row with it.
    A file the store could not delete yet keeps its row for the next try (migration 0028)."""

    __tablename__ = "pod_photo_deletions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    storage_uri: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )

"""Tables owned by the payment area (added to the shared metadata by core.adapters.models).

The two ledger tables are append-only in the database (migration 0002 adds triggers that
refuse UPDATE and DELETE); every other table here tracks the gateway's side of things and
may change as the gateway reports progress.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.adapters.models import Base, one_of
from core.domain.ledger import AccountKind, EntryKind

LINK_STATUSES = ("created", "partially_paid", "paid", "cancelled", "expired")
TRANSFER_STATUSES = ("pending", "on_hold", "released", "processed", "failed", "reversed")
REFUND_STATUSES = ("requested", "pending", "processed", "failed")
# fee_differs: Razorpay's fee on a payment is not the ledger's (migration 0045).
MISMATCH_KINDS = ("missing_in_ledger", "missing_at_gateway", "amount_differs", "fee_differs")
MISMATCH_ENTITIES = ("payment", "refund", "transfer")


def _now_col() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class LedgerTransaction(Base):
    """One journal entry; its postings sum to zero. Append-only."""

    __tablename__ = "ledger_transactions"
    __table_args__ = (
        CheckConstraint(one_of("kind", EntryKind), name="kind"),
        # Reconciliation's window (migration 0016): a day of entries, not a year of them.
        Index("ix_ledger_transactions_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(120), unique=True)
    kind: Mapped[str] = mapped_column(String(24))
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"), index=True)
    gateway_ref: Mapped[str | None] = mapped_column(String(40), index=True)
    actor: Mapped[str] = mapped_column(String(60))  # who or what caused it (audit trail)
    cause: Mapped[str | None] = mapped_column(String(120))  # e.g. the webhook's event id
    memo: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LedgerPosting(Base):
    """One line of a journal entry: signed integer paise into or out of an account."""

    __tablename__ = "ledger_postings"
    __table_args__ = (
        CheckConstraint(one_of("account_kind", AccountKind), name="account_kind"),
        CheckConstraint("amount_paise <> 0", name="nonzero"),
        # The payments sweep's legs with a payable entry lately (migration 0016): only the
        # partner_payable postings of legs (a quarter of the rows at a year's volume).
        Index("ix_ledger_postings_payable_created_at", "created_at",
              postgresql_where=text("account_kind = 'partner_payable' AND leg_id IS NOT NULL")),
        # A leg's payable postings, for payments.unpaid_legs' sums (migration 0017).
        Index("ix_ledger_postings_payable_leg_id", "leg_id",
              postgresql_include=["partner_id", "amount_paise"],
              postgresql_where=text("account_kind = 'partner_payable' AND leg_id IS NOT NULL")),
        # The few bookings holding reversed payouts, for ops (migration 0029).
        Index("ix_ledger_postings_reversed_payouts", "booking_id",
              postgresql_where=text("account_kind = 'reversed_payouts'")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    transaction_id: Mapped[int] = mapped_column(ForeignKey("ledger_transactions.id"),
                                                index=True)
    account: Mapped[str] = mapped_column(String(60), index=True)
    account_kind: Mapped[str] = mapped_column(String(24))
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"), index=True)
    partner_id: Mapped[int | None] = mapped_column(ForeignKey("partner_profiles.id"), index=True)
    leg_id: Mapped[int | None] = mapped_column(ForeignKey("legs.id"), index=True)
    amount_paise: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PaymentLink(Base):
    """The gateway payment link of a booking (one per booking: reference_id is unique)."""

    __tablename__ = "payment_links"
    __table_args__ = (CheckConstraint(one_of("status", LINK_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), unique=True)
    gateway_id: Mapped[str] = mapped_column(String(40), unique=True)
    reference_id: Mapped[str] = mapped_column(String(40))
    short_url: Mapped[str] = mapped_column(Text)
    amount_paise: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    payment_id: Mapped[str | None] = mapped_column(String(40), unique=True)
    expire_by: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now_col()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class GatewayEvent(Base):
    """Every verified Razorpay webhook, stored raw, keyed by X-Razorpay-Event-Id."""

    __tablename__ = "razorpay_events"
    __table_args__ = (
        # The sweep's events whose job was lost (migration 0016): the few not processed yet.
        Index("ix_razorpay_events_unprocessed", "id",
              postgresql_where=text("processed_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    event: Mapped[str] = mapped_column(String(40))
    payload: Mapped[str] = mapped_column(Text)  # the raw body exactly as signed
    received_at: Mapped[datetime] = _now_col()
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(String(80))


class LegTransfer(Base):
    """The Route transfer paying one leg's partner out of the booking's payment."""

    __tablename__ = "payment_transfers"
    __table_args__ = (
        CheckConstraint(one_of("status", TRANSFER_STATUSES), name="status"),
        CheckConstraint("amount_paise > 0", name="amount"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    leg_id: Mapped[int] = mapped_column(ForeignKey("legs.id"), unique=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), index=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partner_profiles.id"), index=True)
    payment_id: Mapped[str] = mapped_column(String(40))
    account: Mapped[str | None] = mapped_column(String(40))
    transfer_id: Mapped[str | None] = mapped_column(String(40), unique=True)
    amount_paise: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = _now_col()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Refund(Base):
    """One attempt at refunding a booking's payment; our row id goes to the gateway as the
    idempotency key, so retries of an attempt are one refund and each attempt a new one.

    A failed attempt is never reopened: the next one is a new row (``attempt`` + 1), made
    ``retry_at`` (core.services.payments). At most one attempt of a booking is open
    (requested or pending) at a time."""

    __tablename__ = "payment_refunds"
    __table_args__ = (
        CheckConstraint(one_of("status", REFUND_STATUSES), name="status"),
        CheckConstraint("amount_paise > 0", name="amount"),
        CheckConstraint("fee_paise >= 0", name="fee"),
        CheckConstraint("attempt >= 1", name="attempt"),
        UniqueConstraint("booking_id", "attempt", name="uq_payment_refunds_booking_attempt"),
        Index("uq_payment_refunds_booking_open", "booking_id", unique=True,
              postgresql_where=text("status IN ('requested', 'pending')")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"))
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    payment_id: Mapped[str] = mapped_column(String(40))
    amount_paise: Mapped[int] = mapped_column(BigInteger)
    fee_paise: Mapped[int] = mapped_column(BigInteger, default=0)
    reason: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(60))
    status: Mapped[str] = mapped_column(String(10))
    gateway_refund_id: Mapped[str | None] = mapped_column(String(40), unique=True)
    last_error: Mapped[str | None] = mapped_column(String(200))
    # A failed attempt with attempts left: when the next one is due (cleared once made).
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now_col()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class ReconciliationMismatch(Base):
    """A difference between the ledger and the gateway, for operators to look at."""

    __tablename__ = "reconciliation_mismatches"
    __table_args__ = (
        CheckConstraint(one_of("kind", MISMATCH_KINDS), name="kind"),
        CheckConstraint(one_of("entity", MISMATCH_ENTITIES), name="entity"),
        UniqueConstraint("kind", "entity", "gateway_id", name="uq_reconciliation_mismatches_key"),
        # The ops list, paged by cursor newest found first, on a key no run changes (not
        # last_seen_at); open ones are its default view (0019).
        Index("ix_reconciliation_mismatches_first_seen_at", "first_seen_at", "id"),
        Index("ix_reconciliation_mismatches_open_first_seen_at", "first_seen_at", "id",
              postgresql_where=text("resolved_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    entity: Mapped[str] = mapped_column(String(10))
    gateway_id: Mapped[str] = mapped_column(String(60))
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"), index=True)
    ledger_amount_paise: Mapped[int | None] = mapped_column(BigInteger)
    gateway_amount_paise: Mapped[int | None] = mapped_column(BigInteger)
    detail: Mapped[str] = mapped_column(String(200))
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

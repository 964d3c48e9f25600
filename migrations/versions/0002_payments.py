"""payments: append-only double-entry ledger, payment links, gateway events, transfers,
refunds, reconciliation mismatches

Hand-written to mirror core/adapters/payment_models.py. The ledger is enforced by the
database itself:
- UPDATE and DELETE on ledger_transactions / ledger_postings are refused by triggers
  (forbid_history_change() from 0001); corrections are new entries.
- a deferred constraint trigger checks at COMMIT that each transaction's postings sum to
  zero, and that no escrow or refunds-pending account of a booking is below zero.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ENTRY_KINDS = ("'capture', 'release', 'cancellation_fee', 'refund_requested', "
               "'refund_processed', 'refund_failed', 'transfer_processed'")
ACCOUNT_KINDS = ("'gateway_clearing', 'escrow', 'partner_payable', 'platform_commission', "
                 "'refunds_pending'")


def _ts(name: str, nullable: bool = False, default: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable,
                     server_default=sa.text("now()") if default else None)


def upgrade() -> None:
    op.create_table(
        "ledger_transactions",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=120), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("booking_id", sa.Integer(), nullable=True),
        sa.Column("gateway_ref", sa.String(length=40), nullable=True),
        sa.Column("actor", sa.String(length=60), nullable=False),
        sa.Column("cause", sa.String(length=120), nullable=True),
        sa.Column("memo", sa.String(length=200), nullable=False),
        _ts("created_at"),
        sa.CheckConstraint(f"kind IN ({ENTRY_KINDS})", name=op.f("ck_ledger_transactions_kind")),
        sa.ForeignKeyConstraint(["booking_id"], ["bookings.id"],
                                name=op.f("fk_ledger_transactions_booking_id_bookings")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_transactions")),
        sa.UniqueConstraint("idempotency_key",
                            name=op.f("uq_ledger_transactions_idempotency_key")),
    )
    op.create_index(op.f("ix_ledger_transactions_booking_id"), "ledger_transactions",
                    ["booking_id"])
    op.create_index(op.f("ix_ledger_transactions_gateway_ref"), "ledger_transactions",
                    ["gateway_ref"])

    op.create_table(
        "ledger_postings",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("transaction_id", sa.BigInteger(), nullable=False),
        sa.Column("account", sa.String(length=60), nullable=False),
        sa.Column("account_kind", sa.String(length=24), nullable=False),
        sa.Column("booking_id", sa.Integer(), nullable=True),
        sa.Column("partner_id", sa.Integer(), nullable=True),
        sa.Column("leg_id", sa.Integer(), nullable=True),
        sa.Column("amount_paise", sa.BigInteger(), nullable=False),
        _ts("created_at"),
        sa.CheckConstraint(f"account_kind IN ({ACCOUNT_KINDS})",
                           name=op.f("ck_ledger_postings_account_kind")),
        sa.CheckConstraint("amount_paise <> 0", name=op.f("ck_ledger_postings_nonzero")),
        sa.ForeignKeyConstraint(["transaction_id"], ["ledger_transactions.id"],
                                name=op.f("fk_ledger_postings_transaction_id_ledger_transactions")),
        sa.ForeignKeyConstraint(["booking_id"], ["bookings.id"],
                                name=op.f("fk_ledger_postings_booking_id_bookings")),
        sa.ForeignKeyConstraint(["partner_id"], ["partner_profiles.id"],
                                name=op.f("fk_ledger_postings_partner_id_partner_profiles")),
        sa.ForeignKeyConstraint(["leg_id"], ["legs.id"],
                                name=op.f("fk_ledger_postings_leg_id_legs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_postings")),
    )
    for col in ("transaction_id", "account", "booking_id", "partner_id", "leg_id"):
        op.create_index(op.f(f"ix_ledger_postings_{col}"), "ledger_postings", [col])

    op.create_table(
        "payment_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("booking_id", sa.Integer(), nullable=False),
        sa.Column("gateway_id", sa.String(length=40), nullable=False),
        sa.Column("reference_id", sa.String(length=40), nullable=False),
        sa.Column("short_url", sa.Text(), nullable=False),
        sa.Column("amount_paise", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("payment_id", sa.String(length=40), nullable=True),
        _ts("expire_by", nullable=True),
        _ts("created_at", default=True),
        _ts("updated_at", default=True),
        sa.CheckConstraint(
            "status IN ('created', 'partially_paid', 'paid', 'cancelled', 'expired')",
            name=op.f("ck_payment_links_status")),
        sa.ForeignKeyConstraint(["booking_id"], ["bookings.id"],
                                name=op.f("fk_payment_links_booking_id_bookings")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_links")),
        sa.UniqueConstraint("booking_id", name=op.f("uq_payment_links_booking_id")),
        sa.UniqueConstraint("gateway_id", name=op.f("uq_payment_links_gateway_id")),
        sa.UniqueConstraint("payment_id", name=op.f("uq_payment_links_payment_id")),
    )

    op.create_table(
        "razorpay_events",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=40), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        _ts("received_at", default=True),
        _ts("processed_at", nullable=True),
        sa.Column("outcome", sa.String(length=80), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_razorpay_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_razorpay_events_event_id")),
    )

    op.create_table(
        "payment_transfers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("leg_id", sa.Integer(), nullable=False),
        sa.Column("booking_id", sa.Integer(), nullable=False),
        sa.Column("partner_id", sa.Integer(), nullable=False),
        sa.Column("payment_id", sa.String(length=40), nullable=False),
        sa.Column("account", sa.String(length=40), nullable=True),
        sa.Column("transfer_id", sa.String(length=40), nullable=True),
        sa.Column("amount_paise", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        _ts("created_at", default=True),
        _ts("updated_at", default=True),
        sa.CheckConstraint(
            "status IN ('pending', 'on_hold', 'released', 'processed', 'failed', 'reversed')",
            name=op.f("ck_payment_transfers_status")),
        sa.CheckConstraint("amount_paise > 0", name=op.f("ck_payment_transfers_amount")),
        sa.ForeignKeyConstraint(["leg_id"], ["legs.id"],
                                name=op.f("fk_payment_transfers_leg_id_legs")),
        sa.ForeignKeyConstraint(["booking_id"], ["bookings.id"],
                                name=op.f("fk_payment_transfers_booking_id_bookings")),
        sa.ForeignKeyConstraint(["partner_id"], ["partner_profiles.id"],
                                name=op.f("fk_payment_transfers_partner_id_partner_profiles")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_transfers")),
        sa.UniqueConstraint("leg_id", name=op.f("uq_payment_transfers_leg_id")),
        sa.UniqueConstraint("transfer_id", name=op.f("uq_payment_transfers_transfer_id")),
    )
    op.create_index(op.f("ix_payment_transfers_booking_id"), "payment_transfers", ["booking_id"])
    op.create_index(op.f("ix_payment_transfers_partner_id"), "payment_transfers", ["partner_id"])

    op.create_table(
        "payment_refunds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("booking_id", sa.Integer(), nullable=False),
        sa.Column("payment_id", sa.String(length=40), nullable=False),
        sa.Column("amount_paise", sa.BigInteger(), nullable=False),
        sa.Column("fee_paise", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=20), nullable=False),
        sa.Column("actor", sa.String(length=60), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("gateway_refund_id", sa.String(length=40), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        _ts("created_at", default=True),
        _ts("updated_at", default=True),
        sa.CheckConstraint("status IN ('requested', 'pending', 'processed', 'failed')",
                           name=op.f("ck_payment_refunds_status")),
        sa.CheckConstraint("amount_paise > 0", name=op.f("ck_payment_refunds_amount")),
        sa.CheckConstraint("fee_paise >= 0", name=op.f("ck_payment_refunds_fee")),
        sa.ForeignKeyConstraint(["booking_id"], ["bookings.id"],
                                name=op.f("fk_payment_refunds_booking_id_bookings")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_refunds")),
        sa.UniqueConstraint("booking_id", name=op.f("uq_payment_refunds_booking_id")),
        sa.UniqueConstraint("gateway_refund_id",
                            name=op.f("uq_payment_refunds_gateway_refund_id")),
    )

    op.create_table(
        "reconciliation_mismatches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("entity", sa.String(length=10), nullable=False),
        sa.Column("gateway_id", sa.String(length=60), nullable=False),
        sa.Column("booking_id", sa.Integer(), nullable=True),
        sa.Column("ledger_amount_paise", sa.BigInteger(), nullable=True),
        sa.Column("gateway_amount_paise", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.String(length=200), nullable=False),
        _ts("first_seen_at"),
        _ts("last_seen_at"),
        _ts("resolved_at", nullable=True),
        sa.CheckConstraint(
            "kind IN ('missing_in_ledger', 'missing_at_gateway', 'amount_differs')",
            name=op.f("ck_reconciliation_mismatches_kind")),
        sa.CheckConstraint("entity IN ('payment', 'refund', 'transfer')",
                           name=op.f("ck_reconciliation_mismatches_entity")),
        sa.ForeignKeyConstraint(["booking_id"], ["bookings.id"],
                                name=op.f("fk_reconciliation_mismatches_booking_id_bookings")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_mismatches")),
        sa.UniqueConstraint("kind", "entity", "gateway_id",
                            name="uq_reconciliation_mismatches_key"),
    )
    op.create_index(op.f("ix_reconciliation_mismatches_booking_id"),
                    "reconciliation_mismatches", ["booking_id"])

    # The ledger is append-only: the database refuses to rewrite history.
    for table in ("ledger_transactions", "ledger_postings"):
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION forbid_history_change()"
        )
    # Balanced entries and non-negative escrow, checked at commit (all postings are in).
    op.execute(
        """
        CREATE FUNCTION ledger_check_posting() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            total bigint;
            balance bigint;
        BEGIN
            SELECT COALESCE(SUM(amount_paise), 0) INTO total
              FROM ledger_postings WHERE transaction_id = NEW.transaction_id;
            IF total <> 0 THEN
                RAISE EXCEPTION 'ledger transaction % does not balance (% paise)',
                    NEW.transaction_id, total USING ERRCODE = 'check_violation';
            END IF;
            IF NEW.account_kind IN ('escrow', 'refunds_pending') THEN
                SELECT COALESCE(SUM(amount_paise), 0) INTO balance
                  FROM ledger_postings WHERE account = NEW.account;
                IF balance < 0 THEN
                    RAISE EXCEPTION 'account % would go below zero (% paise)',
                        NEW.account, balance USING ERRCODE = 'check_violation';
                END IF;
            END IF;
            RETURN NULL;
        END $$;
        """
    )
    op.execute(
        "CREATE CONSTRAINT TRIGGER ledger_postings_balanced AFTER INSERT ON ledger_postings "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_posting()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS ledger_postings_balanced ON ledger_postings")
    op.execute("DROP FUNCTION IF EXISTS ledger_check_posting()")
    for table in ("ledger_transactions", "ledger_postings"):
        op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
    op.drop_index(op.f("ix_reconciliation_mismatches_booking_id"),
                  table_name="reconciliation_mismatches")
    op.drop_table("reconciliation_mismatches")
    op.drop_table("payment_refunds")
    op.drop_index(op.f("ix_payment_transfers_partner_id"), table_name="payment_transfers")
    op.drop_index(op.f("ix_payment_transfers_booking_id"), table_name="payment_transfers")
    op.drop_table("payment_transfers")
    op.drop_table("razorpay_events")
    op.drop_table("payment_links")
    for col in ("leg_id", "partner_id", "booking_id", "account", "transaction_id"):
        op.drop_index(op.f(f"ix_ledger_postings_{col}"), table_name="ledger_postings")
    op.drop_table("ledger_postings")
    op.drop_index(op.f("ix_ledger_transactions_gateway_ref"), table_name="ledger_transactions")
    op.drop_index(op.f("ix_ledger_transactions_booking_id"), table_name="ledger_transactions")
    op.drop_table("ledger_transactions")

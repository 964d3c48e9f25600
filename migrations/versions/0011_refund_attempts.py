"""payment_refunds: a booking's refund may be attempted again after a failure

Revision ID: 0011
Revises: 0010

A refund that failed at the gateway (refund.failed, or refused outright, e.g. for want of
balance after payouts) was a dead end: one refund row per booking, and that row failed.
Now each attempt is its own row, numbered per booking, with its own idempotency key and
ledger entries; the database still allows a single open (requested or pending) attempt
per booking. ``retry_at`` is when the next attempt after a failed one is due.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The default stays: the previous release, still serving during the deploy, inserts
    # refunds without an attempt (and makes one per booking: the first).
    op.add_column("payment_refunds", sa.Column("attempt", sa.Integer(), nullable=False,
                                               server_default="1"))
    op.add_column("payment_refunds",
                  sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
    op.create_check_constraint(op.f("ck_payment_refunds_attempt"), "payment_refunds",
                               "attempt >= 1")
    op.drop_constraint("uq_payment_refunds_booking_id", "payment_refunds", type_="unique")
    op.create_unique_constraint("uq_payment_refunds_booking_attempt", "payment_refunds",
                                ["booking_id", "attempt"])
    op.create_index("uq_payment_refunds_booking_open", "payment_refunds", ["booking_id"],
                    unique=True, postgresql_where=sa.text("status IN ('requested', 'pending')"))


def downgrade() -> None:
    # One row per booking again: refuse rather than delete the record of later attempts
    # (the ledger's entries name them).
    conn = op.get_bind()
    if conn.scalar(sa.text("SELECT count(*) FROM payment_refunds WHERE attempt > 1")):
        raise RuntimeError("payment_refunds holds second attempts; cannot go back to 0010")
    op.drop_index("uq_payment_refunds_booking_open", table_name="payment_refunds")
    op.drop_constraint("uq_payment_refunds_booking_attempt", "payment_refunds", type_="unique")
    op.create_unique_constraint("uq_payment_refunds_booking_id", "payment_refunds",
                                ["booking_id"])
    op.drop_constraint(op.f("ck_payment_refunds_attempt"), "payment_refunds", type_="check")
    op.drop_column("payment_refunds", "retry_at")
    op.drop_column("payment_refunds", "attempt")

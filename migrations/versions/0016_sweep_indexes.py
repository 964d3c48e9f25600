"""sweeps and /metrics: indexes so their cost follows the work left, not a year of rows

Revision ID: 0016
Revises: 0015

The payments sweep (each minute), reconciliation and every /metrics scrape read whole
tables: every partner-payable posting, every Razorpay event, every delivered leg, a year
of ledger entries by created_at, every outbox row. Each index below serves one of them;
the partial ones hold only the rows those queries look for. On the ledger tables (the
benchmarked write path) there are two: the postings one holds only the partner_payable
postings of legs, and entries' created_at grows with time (always the rightmost page).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.live import create_index_concurrently

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # payments.unpaid_legs: the legs with a payable entry lately.
    create_index_concurrently("ix_ledger_postings_payable_created_at", "ledger_postings",
                              ["created_at"], postgresql_where=sa.text(
                                  "account_kind = 'partner_payable' AND leg_id IS NOT NULL"))
    # reconciliation: the entries of its window.
    create_index_concurrently("ix_ledger_transactions_created_at", "ledger_transactions",
                              ["created_at"])
    # payments.unprocessed_events: events whose job was lost.
    create_index_concurrently("ix_razorpay_events_unprocessed", "razorpay_events", ["id"],
                              postgresql_where=sa.text("processed_at IS NULL"))
    # payments.unreleased_legs: delivered legs of the last days.
    create_index_concurrently("ix_legs_delivered_at_with_partner", "legs", ["delivered_at"],
                              postgresql_where=sa.text(
                                  "status = 'delivered' AND partner_id IS NOT NULL"))
    # /metrics: messages that failed lately.
    create_index_concurrently("ix_outbox_messages_failed_updated_at", "outbox_messages",
                              ["updated_at"],
                              postgresql_where=sa.text("status IN ('failed', 'undelivered')"))


def downgrade() -> None:
    op.drop_index("ix_outbox_messages_failed_updated_at", table_name="outbox_messages")
    op.drop_index("ix_legs_delivered_at_with_partner", table_name="legs")
    op.drop_index("ix_razorpay_events_unprocessed", table_name="razorpay_events")
    op.drop_index("ix_ledger_transactions_created_at", table_name="ledger_transactions")
    op.drop_index("ix_ledger_postings_payable_created_at", table_name="ledger_postings")

"""ops lists: page handoffs and reconciliation mismatches by cursor without a sort

Revision ID: 0019
Revises: 0018

The ops lists page by cursor (`?after=`, the last row's sort key): the waiting handoffs
by (created_at, id), oldest first; the mismatches by (first_seen_at, id), newest found
first. Not by last_seen_at: each reconciliation run sets it on every open mismatch it
finds again, which would move the rows an operator has not read yet above their cursor.
Without an index on those keys each page read every waiting handoff (ix_handoffs_status)
or every mismatch (a sequential scan) and sorted them; with one, a page is an index range
scan from the cursor. Unresolved mismatches, the default view, get their own partial index.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.live import create_index_concurrently

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_index_concurrently("ix_handoffs_waiting_created_at", "handoffs",
                              ["created_at", "id"],
                              postgresql_where=sa.text("status = 'waiting'"))
    create_index_concurrently("ix_reconciliation_mismatches_first_seen_at",
                              "reconciliation_mismatches", ["first_seen_at", "id"])
    create_index_concurrently("ix_reconciliation_mismatches_open_first_seen_at",
                              "reconciliation_mismatches", ["first_seen_at", "id"],
                              postgresql_where=sa.text("resolved_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_reconciliation_mismatches_open_first_seen_at",
                  table_name="reconciliation_mismatches")
    op.drop_index("ix_reconciliation_mismatches_first_seen_at",
                  table_name="reconciliation_mismatches")
    op.drop_index("ix_handoffs_waiting_created_at", table_name="handoffs")

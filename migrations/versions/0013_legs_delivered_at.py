"""legs: delivered_at, the time the drop was confirmed

Revision ID: 0013
Revises: 0012

A day's earnings (the partner app, and dispatch's fairness term) were counted by a leg's
updated_at, which moves with any later change: a proof-of-delivery photo sent the next
morning moved yesterday's delivery into today. delivered_at is set once, with the move to
delivered; existing legs take it from their transition into delivered.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


# Delivered legs without the time take it from their transition into delivered.
BACKFILL = """
    UPDATE legs SET delivered_at = t.at
    FROM (SELECT entity_id, max(at) AS at FROM transitions
          WHERE entity = 'leg' AND to_status = 'delivered' GROUP BY entity_id) AS t
    WHERE t.entity_id = legs.id AND legs.status = 'delivered' AND legs.delivered_at IS NULL
"""


def upgrade() -> None:
    op.add_column("legs", sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(BACKFILL)
    op.create_index("ix_legs_partner_delivered_at", "legs", ["partner_id", "delivered_at"],
                    postgresql_where=sa.text("delivered_at IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_legs_partner_delivered_at", table_name="legs")
    op.drop_column("legs", "delivered_at")

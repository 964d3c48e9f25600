"""transitions: an index on (entity, entity_id)

Revision ID: 0015
Revises: 0014

A booking's or leg's history was read by scanning every transition ever recorded, and the
dispatch sweep now asks each minute when still-paid bookings were paid.
"""

from __future__ import annotations

from alembic import op

from migrations.live import create_index_concurrently

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_index_concurrently("ix_transitions_entity_entity_id", "transitions",
                              ["entity", "entity_id"])


def downgrade() -> None:
    op.drop_index("ix_transitions_entity_entity_id", table_name="transitions")

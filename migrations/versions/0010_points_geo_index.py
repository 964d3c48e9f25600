"""points: a GiST index on the active Points' positions, for nearest-Point look-ups

Revision ID: 0010
Revises: 0009

A conversation checks every pickup and drop (and every post office of a pincode) against
the nearest active Point. Reading all Points for that made a turn's cost grow with their
number (a WhatsApp turn took about 4x the CPU with 1,000 Points); a nearest-neighbour
scan of this index reads a few.
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX ix_points_active_position ON points USING gist (point(lng, lat)) "
               "WHERE active")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_points_active_position")

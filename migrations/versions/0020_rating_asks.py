"""rating_asks: the delivered WhatsApp bookings whose customer is still to be asked

Revision ID: 0020
Revises: 0019

The chat asks for a rating after a delivery; a busy customer is tried again later, each
try an RQ job scheduled by the one before. Those jobs live only in Redis: a flush or a
failover, or one try that failed on the database, ended the chain, and the customer was
never asked. A row here says a booking is still to be asked, which try is due and when,
so that the dispatch sweep re-schedules a try whose job is gone. Rows live for the
two-day rating window at most; the sweep reads the due ones by ix_rating_asks_due_at.

A new table, unused by the previous release. The foreign key takes a brief lock on
bookings (lock_timeout, env.py, retries it). The index is built CONCURRENTLY like every
index since 0013 (on an empty table it costs nothing), which commits the table first:
run again after a lock timeout, the migration finds both there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.live import create_index_concurrently

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rating_asks",
        sa.Column("booking_id", sa.Integer(), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["booking_id"], ["bookings.id"],
                                name=op.f("fk_rating_asks_booking_id_bookings")),
        sa.PrimaryKeyConstraint("booking_id", name=op.f("pk_rating_asks")),
        if_not_exists=True,
    )
    create_index_concurrently(op.f("ix_rating_asks_due_at"), "rating_asks", ["due_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_rating_asks_due_at"), table_name="rating_asks")
    op.drop_table("rating_asks")

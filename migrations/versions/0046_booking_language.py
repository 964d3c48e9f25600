"""bookings: language, the language a booking was made in

Revision ID: 0046
Revises: 0045

A phone is often a family's, and its person one row: a booking's messages (its payment
link, rider, pickup, delivery, refund) went in the person's language at the time each was
sent, so after a second caller on the same phone chose another language, the first
caller's booking was told in a language she may not read. A booking now keeps the
language it was made in, and its messages to its customer go in that.

A nullable column without a default: PostgreSQL adds it to the catalog only, no table
rewrite, the lock held for that one statement. No backfill: a booking made before this
column (or by the previous release during a deploy) has NULL, and its messages go in the
person's language, as before; the language it was made in is known nowhere else. Safe to
run again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0046"
down_revision = "0045"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("bookings", sa.Column("language", sa.String(5), nullable=True),
                  if_not_exists=True)


def downgrade() -> None:
    # The previous release tells a booking's news in its person's language.
    op.drop_column("bookings", "language", if_exists=True)

"""ops: find a caller's bookings by the recipient's number without reading every booking

Revision ID: 0018
Revises: 0017

GET /ops/bookings?phone= matches the customer's number (people.phone is unique, then
ix_bookings_customer_id) or the recipient's: bookings.recipient_phone had no index, so
each search read the whole bookings table. Erasure on request looks up the bookings sent
to a number the same way, and gains from it too.
"""

from __future__ import annotations

from alembic import op

from migrations.live import create_index_concurrently

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_index_concurrently(op.f("ix_bookings_recipient_phone"), "bookings",
                              ["recipient_phone"])


def downgrade() -> None:
    op.drop_index(op.f("ix_bookings_recipient_phone"), table_name="bookings")

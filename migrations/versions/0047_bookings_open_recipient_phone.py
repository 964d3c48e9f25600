"""bookings: an index of the open bookings by recipient_phone

Revision ID: 0047
Revises: 0046

Two lookups run on a message from a number: which parcel under way comes to it
(partner_sms._parcel_coming, an SMS from a recipient; conversation._coming_to_me, the
chat's and the call's "parcels coming to you"). Both ask for the bookings to that number
in the five open statuses a parcel is on its way in (paid, dispatching, assigned,
picked_up, in_transit). ix_bookings_recipient_phone holds every booking ever made to the
number: for a shop or a hub that receives parcels every day, thousands, all read and
dropped for their status to find the one or two under way. On 309,006 bookings with 3,002
to one number (EXPLAIN ANALYZE, session 31): 231 buffers through that index (the
prepared statement's generic plan), 28 with a bitmap AND of it and ix_bookings_status
(a custom plan; that grows with every open booking of the service), 4 through this one;
a number with five bookings, 8 and 7.

This partial index holds the open bookings only (a booking leaves it when it is delivered,
cancelled, expired, refunded or failed), so it stays as small as the bookings in flight
(136 kB against 5.6 MB). PostgreSQL uses it only where it sees the statuses in the
query: psycopg prepares a statement on its 5th run, and a generic plan cannot prove the
index's predicate from bound values, so the two lookups write them into the SQL
(bindparam(..., expanding=True, literal_execute=True)). The other lookups by
recipient_phone (ops' search, erasure, retention) ask for every status and keep the full
index. Built CONCURRENTLY (bookings take writes all day); run again, the migration finds
it there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.live import create_index_concurrently

revision = "0047"
down_revision = "0046"
branch_labels = None
depends_on = None

NAME = "ix_bookings_open_recipient_phone"
# As it was when built (the Booking model's index says the same).
OPEN = "status IN ('paid', 'dispatching', 'assigned', 'picked_up', 'in_transit')"


def upgrade() -> None:
    create_index_concurrently(NAME, "bookings", ["recipient_phone"],
                              postgresql_where=sa.text(OPEN))


def downgrade() -> None:
    # The previous release reads ix_bookings_recipient_phone, still there.
    with op.get_context().autocommit_block():
        op.drop_index(NAME, table_name="bookings", postgresql_concurrently=True,
                      if_exists=True)

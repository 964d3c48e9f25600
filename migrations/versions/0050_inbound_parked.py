"""inbound_parked: a WhatsApp message that came while Redis was away, kept until it is queued

Revision ID: 0050
Revises: 0049

The WhatsApp webhook queues each message in Redis (core.services.inbound.accept). While
Redis restarts or fails over it used to answer 503, and Twilio does not retry a messaging
webhook answered 5xx (only a connection that failed, by default): the message was lost.
Now the webhook parks it here in one statement and answers 200; the minute sweep (and
each drain job, before it starts) moves the parked messages into their contacts' Redis
inboxes, oldest first, through the same accept script (dedupe, rate limit, order), and
deletes each row once Redis took it.

A new table, unused by the previous release; the MessageSid is unique (a retry of a
parked message is parked once). No other index: the table is empty but for the minutes of
an outage (the sweep sorts what it holds by received_at). No functions. Safe to run again (if_not_exists). Its downgrade drops it only when empty:
a parked message is a customer's unanswered message, and the previous release never
reads this table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0050"
down_revision = "0049"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound_parked",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("contact", sa.String(length=80), nullable=False),
        sa.Column("sid", sa.String(length=80), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_parked")),
        sa.UniqueConstraint("sid", name="uq_inbound_parked_sid"),
        if_not_exists=True,
    )


def downgrade() -> None:
    # Refused while messages wait: dropped, they would be lost for good (the previous
    # release never moves them). Run the sweep (any worker, a minute) and downgrade again.
    op.execute("""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM inbound_parked) THEN
                RAISE EXCEPTION 'inbound_parked holds messages not yet queued: let a worker '
                                'run its minute sweep, then downgrade again';
            END IF;
        END $$;
    """)
    op.drop_table("inbound_parked")

"""erasure: find the messages to a number without reading every message

Revision ID: 0022
Revises: 0021

An erasure on request finds the messages sent to the person (their number and WhatsApp
address), to the recipients of their bookings, and, for an erased recipient, to the
senders who named them, by ``outbox_messages.to_addr``. It had no index: each erasure
read the whole table, a year of messages. The outbox's check for an earlier message to
the same address waiting for its retry gains from it too. The addresses are compared as
stored (``+9198...``, ``whatsapp:+9198...``): a plain index on the column.
"""

from __future__ import annotations

from alembic import op

from migrations.live import create_index_concurrently

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_index_concurrently(op.f("ix_outbox_messages_to_addr"), "outbox_messages",
                              ["to_addr"])


def downgrade() -> None:
    op.drop_index(op.f("ix_outbox_messages_to_addr"), table_name="outbox_messages")

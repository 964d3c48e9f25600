"""outbox_messages: kind, what a STOP leaves of a message

Revision ID: 0040
Revises: 0039

A STOP was honoured only when a message was written: one already queued, waiting for a
retry, held back behind one, or given back by a reconcile hours later still reached
someone who had said STOP on WhatsApp since. The sender now asks again when it claims a
row, and for that the row says what it is, as its writer told queue_message: "reply" (an
answer to her own message: the dialog decided), "needed" (a sign-in code she asked for),
"asked" (an operator's answer to her call for help), "work" (a partner's job message, an
ops alert) or "plain" (a booking's message by its booking_id). A WhatsApp STOP ends what
is "plain" without a booking on SMS; anything on WhatsApp but a reply.

A nullable column without a default: PostgreSQL adds it to the catalog only, no table
rewrite, the lock held for that one statement. NULL: a row written before this column
(or by the previous release during a deploy): its SMS is sent as before, unchecked; on
WhatsApp, a row whose dedupe key is no reply's is checked. Safe to run again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0040"
down_revision = "0039"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox_messages", sa.Column("kind", sa.String(8), nullable=True),
                  if_not_exists=True)


def downgrade() -> None:
    # The previous release checks an opt-out when a row is written only.
    op.drop_column("outbox_messages", "kind", if_exists=True)

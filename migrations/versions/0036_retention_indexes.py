"""retention: each pass of the daily run reads by an index of the rows it can still change

Revision ID: 0036
Revises: 0035

The daily retention run walked each table by id from its first row, filtering on a time,
with no index for that time. The rows stay after their texts are redacted (they record
that a message went or came), so every night it read again every message, handoff message
and call answer since the service began (tens of millions at a year's volume), and every
status event, API answer and photo not due yet; the code pass, looking one week back,
read the whole outbox. RETENTION_RUN_SECONDS ran out on it, night after night.

Each pass now walks (its time, id) along an index holding only the rows it can still
change: the texts not yet redacted ('[removed]', retention.REDACTED) by age, the week's
codes by when their message went (coalesce(sent_at, created_at), the texts not redacted),
the stored answers by age, and by age the rows it deletes. A redacted text or a cleared
answer leaves its index; a run skipped or cut short leaves its rows at the head of it.

Built CONCURRENTLY (the tables take writes with every message), each committed as it is
built: run again, the migration finds those already there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.live import create_index_concurrently

revision = "0036"
down_revision = "0035"
branch_labels = None
depends_on = None

UNREDACTED = "body <> '[removed]'"

# name, table, columns, the rows it holds (None: all)
INDEXES: list[tuple[str, str, list, str | None]] = [
    ("ix_outbox_messages_unredacted_created_at", "outbox_messages", ["created_at", "id"],
     f"{UNREDACTED} OR media_url IS NOT NULL"),
    ("ix_outbox_messages_unredacted_sent_at", "outbox_messages",
     [sa.text("coalesce(sent_at, created_at)"), "id"], UNREDACTED),
    ("ix_handoff_messages_unredacted_created_at", "handoff_messages", ["created_at", "id"],
     UNREDACTED),
    ("ix_inbound_events_answered_received_at", "inbound_events", ["received_at", "id"],
     "response_body IS NOT NULL"),
    ("ix_message_status_events_received_at", "message_status_events", ["received_at", "id"],
     None),
    ("ix_idempotency_records_created_at", "idempotency_records", ["created_at", "id"], None),
    ("ix_dispatch_pod_photos_created_at", "dispatch_pod_photos", ["created_at", "id"], None),
]


def upgrade() -> None:
    for name, table, columns, where in INDEXES:
        create_index_concurrently(name, table, columns,
                                  postgresql_where=sa.text(where) if where else None)


def downgrade() -> None:
    # Concurrently too: a plain DROP INDEX locks the busy outbox and inbound tables.
    with op.get_context().autocommit_block():
        for name, table, _, _ in reversed(INDEXES):
            op.drop_index(name, table_name=table, postgresql_concurrently=True,
                          if_exists=True)

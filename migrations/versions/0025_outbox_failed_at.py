"""outbox_messages: failed_at, the time a message failed

Revision ID: 0025
Revises: 0024

/metrics counted the messages "failed in the last hour" by updated_at, which every later
UPDATE moves: the daily retention run (03:00 India) blanks the text of old messages, so
every message that failed RETENTION_MESSAGE_DAYS ago counted as failed lately each night,
and an erasure did the same to a person's old failures. failed_at is set once, by the
database, when a row's status turns failed or undelivered from another status.

Written to run while the previous release serves (migrations/README.md): the trigger sets
it for every writer, that release's too; a row that fails again after going back to
another status takes the new time. Rows that failed before this migration take their
updated_at if it is within the last day (the metric looks one hour back); older failures
keep NULL (their time is not known: updated_at may have moved since). A few hundred rows
at most, found by the partial index of failures (0016): one UPDATE. The new partial index
replaces that one. Safe to run again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.live import create_index_concurrently

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

FAILURES = "('failed', 'undelivered')"

SET_ON_FAILURE = f"""
    CREATE OR REPLACE FUNCTION outbox_messages_set_failed_at() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        NEW.failed_at := now();
        RETURN NEW;
    END $$;
    DROP TRIGGER IF EXISTS outbox_messages_set_failed_at ON outbox_messages;
    CREATE TRIGGER outbox_messages_set_failed_at BEFORE UPDATE OF status ON outbox_messages
        FOR EACH ROW
        WHEN (NEW.status IN {FAILURES} AND OLD.status NOT IN {FAILURES})
        EXECUTE FUNCTION outbox_messages_set_failed_at();
"""

BACKFILL = f"""
    UPDATE outbox_messages SET failed_at = updated_at
    WHERE status IN {FAILURES} AND failed_at IS NULL
      AND updated_at > now() - interval '1 day'
"""


def upgrade() -> None:
    op.add_column("outbox_messages",
                  sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
                  if_not_exists=True)
    op.execute(SET_ON_FAILURE)
    op.execute(BACKFILL)
    create_index_concurrently("ix_outbox_messages_failed_at", "outbox_messages", ["failed_at"],
                              postgresql_where=sa.text(f"status IN {FAILURES}"))
    with op.get_context().autocommit_block():
        op.drop_index("ix_outbox_messages_failed_updated_at", table_name="outbox_messages",
                      postgresql_concurrently=True, if_exists=True)


def downgrade() -> None:
    create_index_concurrently("ix_outbox_messages_failed_updated_at", "outbox_messages",
                              ["updated_at"], postgresql_where=sa.text(f"status IN {FAILURES}"))
    op.drop_index("ix_outbox_messages_failed_at", table_name="outbox_messages", if_exists=True)
    op.execute("DROP TRIGGER IF EXISTS outbox_messages_set_failed_at ON outbox_messages")
    op.execute("DROP FUNCTION IF EXISTS outbox_messages_set_failed_at()")
    op.drop_column("outbox_messages", "failed_at")

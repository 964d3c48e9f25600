"""retention: an index of the redacted messages whose last error still shows a number

Revision ID: 0053
Revises: 0052

The daily run's ``redacted_errors`` pass (session 37) masks the last errors of messages
whose texts were redacted before their errors were masked with them (Twilio's refusal text
names the number it refused). It found them by status alone (the status index): every
night it read every failed and undelivered message ever kept (the rows stay for good) and
ran its regular expression on each error, to find none in the end: 60,000 failures took
0.9 s of a night's run on a test copy, and the failures only grow.

This partial index holds exactly the rows that pass looks for (its WHERE, with
retention._UNMASKED_ERROR written out here as it was when built): a masked error leaves
it, and new errors are masked as they are written (outbox: logs.scrub), so it is nearly
always empty and the pass reads only what it changes. The pass writes the expression into
its statement (retention._UNMASKED_ERROR_SQL) so that the planner sees it is this one;
tests/test_ops_s38.py checks that the planner uses the index. A changed expression in the
code needs a new index to match it.

Built CONCURRENTLY (the table takes writes with every message); run again, the migration
finds it there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.live import create_index_concurrently

revision = "0053"
down_revision = "0052"
branch_labels = None
depends_on = None

NAME = "ix_outbox_messages_unmasked_errors"
_GAP = "[-[:space:]().\u2010-\u2015]{0,2}"
UNMASKED_ERROR = (rf"(\+|%2b)[0-9]({_GAP}[0-9]){{7}}|[6-9]({_GAP}[0-9]){{9}}"
                  r"""|wa_?id["']?[[:space:]]*[:=][[:space:]]*["']?[0-9]{7}"""
                  r"|detail: (?!\(values hidden\))"
                  r"|x-amz-|signature=|awsaccesskeyid=|security-token=")
# As the pass's statement says it (retention._redacted_errors); the expression a SQL
# string literal, its quotes doubled (the DDL takes the text as written: no bind names).
WHERE = ("status IN ('failed', 'undelivered') AND body = '[removed]'"
         " AND last_error IS NOT NULL AND last_error ~* '"
         + UNMASKED_ERROR.replace("'", "''") + "'")


def upgrade() -> None:
    create_index_concurrently(NAME, "outbox_messages", ["id"],
                              postgresql_where=sa.text(WHERE))


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(NAME, table_name="outbox_messages", postgresql_concurrently=True,
                      if_exists=True)

"""outbox_messages: code_spans, where a message says its one-time code

Revision ID: 0033
Revises: 0032

A delivered code is masked in the stored text minutes later. The masking found the code
by matching the text against today's catalog texts, so a code text reworded by a release
(a word, the grammar) matched no message sent before it: their codes stayed readable
until the texts were redacted months later. The outbox now records, when it writes a
row, where the code is in its body (character offsets: the text was just made from the
catalog then), and masks by that record. Rows written before this column keep NULL and
are matched against the catalog, as before.

A nullable column without a default: PostgreSQL adds it to the catalog only, no table
rewrite, the lock held for that one statement. The previous release never names it (its
inserts leave it NULL: those rows are matched as before). Safe to run again
(if_not_exists).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0033"
down_revision = "0032"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox_messages",
                  sa.Column("code_spans", postgresql.JSONB(), nullable=True),
                  if_not_exists=True)


def downgrade() -> None:
    # The records go: the previous code masks by matching the catalog alone.
    op.drop_column("outbox_messages", "code_spans", if_exists=True)

"""api_sessions: last_used_at, when an operator's session was last used

Revision ID: 0054
Revises: 0053

An operator's token sees customers' data, refunds and unlocks legs: it lived 30 days, as
a customer's, however long it lay unused on a shared or lost phone. An operator's
session now ends after OPS_SESSION_IDLE_HOURS (12) without use, and OPS_SESSION_DAYS (7)
after its sign-in whatever its use (core.services.auth). The web writes the session's
last use here, at most every 5 minutes, for operators' sessions only.

api_sessions takes a row at every sign-in and is read by every API request. A nullable
column without a default: PostgreSQL adds it to the catalog only (no table rewrite, no
scan), under an ACCESS EXCLUSIVE lock held for that one statement; env.py's lock_timeout
makes it give up (and run again) rather than queue the requests behind a long
transaction. No backfill: an operator's session made before this release (NULL) counts
its idle time from its created_at, and lives at most OPS_SESSION_DAYS from it; the
previous release writes sessions without it (NULL, the same). Safe to run again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0054"
down_revision = "0053"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_sessions",
                  sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
                  if_not_exists=True)


def downgrade() -> None:
    # The previous release never reads it: operators' sessions made since end at their
    # expires_at (OPS_SESSION_DAYS), no longer when idle; new ones live 30 days again.
    op.drop_column("api_sessions", "last_used_at", if_exists=True)

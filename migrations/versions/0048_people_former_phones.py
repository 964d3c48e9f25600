"""people: former_phones, the numbers a person was moved off

Revision ID: 0048
Revises: 0047

Ops move a partner to a new SIM (PUT /api/v1/ops/partners/<id>/phone): the old number
is let go, yet the messages sent to it, its chats and the parcels sent to it before the
move were his, and his erasure found them only by his current number. The old numbers
are kept here, each with when it stopped being his, for the erasure.

people is read by every message and call. A nullable column without a default:
PostgreSQL adds it to the catalog only (no table rewrite, no scan), under an ACCESS
EXCLUSIVE lock held for that one statement; env.py's lock_timeout makes it give up
(and run again) rather than queue every read of people behind a long transaction
(tests/test_migrations_live.py). No backfill: a move made before this release kept the
old number nowhere (the audit log masks both numbers); what went to such a number is
erased by the number itself (POST /api/v1/ops/recipients/erase: no account holds it
now). The previous release writes people without it: NULL, no former number. Safe to
run again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0048"
down_revision = "0047"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("people", sa.Column("former_phones", JSONB, nullable=True),
                  if_not_exists=True)


def downgrade() -> None:
    # The previous release never reads it; the numbers are lost with it (an erasure after
    # the downgrade misses what was a moved partner's at his old number, as before).
    op.drop_column("people", "former_phones", if_exists=True)

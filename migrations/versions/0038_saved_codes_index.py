"""retention: an index of the saved new-code answers still holding their code

Revision ID: 0038
Revises: 0037

Ops' POST /ops/legs/{id}/new-code, sent with an Idempotency-Key, saves its answer (a live
pickup or drop code) for a retry; the minute sweep and the daily retention run remove the
code once CODE_REPLAY has passed. Both found those answers by reading every API answer of
their window (two hours, a week) by the created_at index: every app request with a key,
to find a handful of codes. The daily run looked one week back, so answers saved before
those sweeps existed and older than a week kept their codes until the answers went (90
days).

This partial index holds only the answers still holding a code (api_models.HOLDS_CODE,
written out here as it was when built): a removed code leaves it. The sweeps read those
rows and no others, and the daily run now looks back without a bound: its first run after
this migration removes the old codes too. Built CONCURRENTLY (the table takes a write with
every keyed app request); run again, the migration finds it there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.live import create_index_concurrently

revision = "0038"
down_revision = "0037"
branch_labels = None
depends_on = None

NAME = "ix_idempotency_records_holding_code"
HOLDS_CODE = ("(response ->> 'leg_id') IS NOT NULL"
              " AND (response ->> 'kind') IN ('pickup', 'drop')"
              " AND (response ->> 'code') <> '[removed]'")


def upgrade() -> None:
    create_index_concurrently(NAME, "idempotency_records", ["created_at", "id"],
                              postgresql_where=sa.text(HOLDS_CODE))


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(NAME, table_name="idempotency_records", postgresql_concurrently=True,
                      if_exists=True)

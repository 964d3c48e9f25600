"""ops_deferred_alerts: a night-time ops alert kept in PostgreSQL until the team's opening

Revision ID: 0051
Revises: 0050

A daytime alert (dispatch.ops_no_partner, dispatch.ops_failed) raised outside OPS_HOURS
waits for the next opening. It was kept only as a scheduled RQ job: a run that failed
once (PostgreSQL or Redis restarting at 08:00) or a Redis flush overnight lost it for
good. Now a row here keeps it, written in the transaction that raised the alert; its RQ
job (with retries) sends it at the opening and the dispatch sweep sends any still here a
few minutes past its due_at; the row is deleted in the transaction that queues its SMS.

A new table, unused by the previous release (whose jobs already scheduled still run: a job
that finds no row sends its alert unless its SMS are already in the outbox). No other
index: it holds a night's alerts at most. No functions. Safe to run again
(if_not_exists). Its downgrade drops it only when empty: a row is an alert ops have not
heard yet.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0051"
down_revision = "0050"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ops_deferred_alerts",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=120), nullable=False),
        sa.Column("key", sa.String(length=80), nullable=False),
        sa.Column("booking_id", sa.BigInteger(), nullable=True),
        sa.Column("params", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ops_deferred_alerts")),
        sa.UniqueConstraint("dedupe_key", name="uq_ops_deferred_alerts_dedupe_key"),
        if_not_exists=True,
    )


def downgrade() -> None:
    # Refused while alerts wait: dropped, they would never be sent (the previous release
    # never reads this table). Let the team's opening pass (the sweep sends them), then
    # downgrade again.
    op.execute("""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM ops_deferred_alerts) THEN
                RAISE EXCEPTION 'ops_deferred_alerts holds ops alerts not yet sent: let the '
                                'team''s opening pass (the dispatch sweep sends them), then '
                                'downgrade again';
            END IF;
        END $$;
    """)
    op.drop_table("ops_deferred_alerts")

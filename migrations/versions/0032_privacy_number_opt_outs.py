"""number_opt_outs: a STOP kept past the erasure of the person who sent it

Revision ID: 0032
Revises: 0031

A person's opt-outs (people.opted_out, people.sms_opted_out) went with their erasure, and
a new person made later for the same number could be written to again. An erasure now
keeps them here, under a keyed hash of the number (HMAC-SHA256 with OTP_KEY), never the
number: the outbox honours them for a number nobody holds, and a person made anew for
the number starts with them (core.services.outbox.NumberOptOut).

A new table, unused by the previous release; its primary key is its only index. Safe to
run again (if_not_exists). Its downgrade leaves it, rows and all: it is the only record
of those STOPs, the previous release never reads it, and the upgrade after finds it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0032"
down_revision = "0031"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "number_opt_outs",
        sa.Column("number_hash", sa.String(length=64), nullable=False),
        sa.Column("whatsapp", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("sms", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.PrimaryKeyConstraint("number_hash", name=op.f("pk_number_opt_outs")),
        if_not_exists=True,
    )


def downgrade() -> None:
    # The table stays. Dropped, its STOPs would be lost for good: upgraded again, a person
    # made anew for an erased number would be written to. Refusing while it holds rows
    # (as the ledger's downgrades do) would bar going back past 0032 on any service that
    # ever erased someone who had said STOP, to protect rows the old code cannot harm.
    pass

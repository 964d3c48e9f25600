"""number_opt_outs: a STOP kept past the erasure of the person who sent it

Revision ID: 0032
Revises: 0031

A person's opt-outs (people.opted_out, people.sms_opted_out) went with their erasure, and
a new person made later for the same number could be written to again. An erasure now
keeps them here, under a keyed hash of the number (HMAC-SHA256 with OTP_KEY), never the
number: the outbox honours them for a number nobody holds, and a person made anew for
the number starts with them (core.services.outbox.NumberOptOut).

A new table, unused by the previous release; its primary key is its only index. Safe to
run again (if_not_exists).
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
    # The kept opt-outs go: a number whose person was erased may be written to again.
    op.drop_table("number_opt_outs")

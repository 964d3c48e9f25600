"""payments sweep: the payable postings of a leg, without its other postings

Revision ID: 0017
Revises: 0016

payments.unpaid_legs sums the partner_payable postings of each leg paid lately (12k legs
a minute at a year's volume). Found through ix_ledger_postings_leg_id, each leg's other
postings (escrow, commission, gateway) were read too, then dropped: 60% of the rows read.
This partial index holds only the partner_payable postings of legs, with the columns the
sum needs: once vacuum has marked their pages all-visible, the table is not read at all.
Like 0016's, it is written for payable postings only, not for every posting of the
ledger's write path.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.live import create_index_concurrently

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_index_concurrently("ix_ledger_postings_payable_leg_id", "ledger_postings", ["leg_id"],
                              postgresql_include=["partner_id", "amount_paise"],
                              postgresql_where=sa.text(
                                  "account_kind = 'partner_payable' AND leg_id IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_ledger_postings_payable_leg_id", table_name="ledger_postings")

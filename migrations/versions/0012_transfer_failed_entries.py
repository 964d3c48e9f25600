"""ledger_transactions: a payout whose transfer failed after all is voided by an entry

Revision ID: 0012
Revises: 0011

A leg's payout is posted (transfer_processed) when its Route transfer's hold is released.
Should that transfer fail afterwards, the partner never got the money, yet the ledger
said they had, and the leg was never paid again. The new entry kind ``transfer_failed``
moves the amount back into the partner's payable (once per transfer), so the leg's
transfer is made anew and the books match the gateway.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

OLD_KINDS = ("'capture', 'release', 'cancellation_fee', 'refund_requested', "
             "'refund_processed', 'refund_failed', 'transfer_processed'")
NEW_KINDS = OLD_KINDS + ", 'transfer_failed'"


def upgrade() -> None:
    op.drop_constraint(op.f("ck_ledger_transactions_kind"), "ledger_transactions", type_="check")
    op.create_check_constraint(op.f("ck_ledger_transactions_kind"), "ledger_transactions",
                               f"kind IN ({NEW_KINDS})")


def downgrade() -> None:
    # The ledger is append-only: refuse rather than drop entries the old schema can't hold.
    conn = op.get_bind()
    if conn.scalar(sa.text("SELECT count(*) FROM ledger_transactions "
                           "WHERE kind = 'transfer_failed'")):
        raise RuntimeError("the ledger holds transfer_failed entries; cannot go back to 0011")
    op.drop_constraint(op.f("ck_ledger_transactions_kind"), "ledger_transactions", type_="check")
    op.create_check_constraint(op.f("ck_ledger_transactions_kind"), "ledger_transactions",
                               f"kind IN ({OLD_KINDS})")

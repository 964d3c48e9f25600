"""ledger: ops resolve a reversed payout (pay the partner again, or refund the customer)

Revision ID: 0029
Revises: 0028

Money a reversal brought back (``reversed_payouts:b<id>``, migration 0027) waited for ops
with no way out. Three entry kinds move it: ``reversal_repaid`` (to the partner's payable
again; a direct transfer pays it), ``reversal_refund_asked`` (reserved for a refund
to the customer) and ``reversal_refund_failed`` (that refund failed: back where it came
from). The entry kind CHECK is replaced by one that takes them, added NOT VALID in the
same transaction as the drop of the old one, validated after a commit (as 0027). A
partial index (built concurrently) finds the few bookings holding reversed payouts for
the ops list. It commits part-way: run again from its start, it goes through.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.live import create_index_concurrently

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None

OLD_ENTRY_KINDS = ("'capture', 'release', 'cancellation_fee', 'refund_requested', "
                   "'refund_processed', 'refund_failed', 'transfer_processed', "
                   "'transfer_failed', 'transfer_reversed'")
NEW_ENTRY_KINDS = OLD_ENTRY_KINDS + (", 'reversal_repaid', 'reversal_refund_asked', "
                                     "'reversal_refund_failed'")
CHECK = "ck_ledger_transactions_kind"
INDEX = "ix_ledger_postings_reversed_payouts"


def _replace(kinds: str) -> None:
    op.execute(f"ALTER TABLE ledger_transactions DROP CONSTRAINT IF EXISTS {CHECK}")
    op.execute(f"ALTER TABLE ledger_transactions ADD CONSTRAINT {CHECK} "
               f"CHECK (kind IN ({kinds})) NOT VALID")
    # After a commit: VALIDATE reads the rows under a lock that neither readers nor writers
    # wait for; inside the ADD's transaction the ADD's lock would still be held.
    with op.get_context().autocommit_block():
        op.execute(f"ALTER TABLE ledger_transactions VALIDATE CONSTRAINT {CHECK}")


def upgrade() -> None:
    _replace(NEW_ENTRY_KINDS)
    create_index_concurrently(INDEX, "ledger_postings", ["booking_id"],
                              postgresql_where=sa.text("account_kind = 'reversed_payouts'"))


def downgrade() -> None:
    # The ledger is append-only: refuse rather than drop entries the old check can't hold.
    bind = op.get_bind()
    if bind.exec_driver_sql(
            "SELECT 1 FROM ledger_transactions WHERE kind IN ('reversal_repaid', "
            "'reversal_refund_asked', 'reversal_refund_failed') LIMIT 1"
    ).scalar() is not None:
        raise RuntimeError("the ledger holds resolved reversed payouts; cannot go back to 0028")
    op.drop_index(INDEX, table_name="ledger_postings", if_exists=True)
    _replace(OLD_ENTRY_KINDS)

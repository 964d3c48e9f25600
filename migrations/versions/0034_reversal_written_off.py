"""ledger: a reversed payout under the gateway's minimum written off by ops

Revision ID: 0034
Revises: 0033

A reversed payout under 100 paise can be neither paid again (Razorpay's smallest
transfer) nor refunded (its smallest refund): ops write it off to the platform's
commission account. Its own entry kind, ``reversal_written_off``, says so in the
immutable ledger (until now such an entry could only have borrowed ``reversal_repaid``,
which means the partner is owed it). The entry kind CHECK is replaced by one that takes
it, added NOT VALID in the drop's transaction and validated after a commit (as 0029).
Safe to run again.
"""

from __future__ import annotations

from alembic import op

revision = "0034"
down_revision = "0033"
branch_labels = None
depends_on = None

OLD_ENTRY_KINDS = ("'capture', 'release', 'cancellation_fee', 'refund_requested', "
                   "'refund_processed', 'refund_failed', 'transfer_processed', "
                   "'transfer_failed', 'transfer_reversed', 'reversal_repaid', "
                   "'reversal_refund_asked', 'reversal_refund_failed'")
NEW_ENTRY_KINDS = OLD_ENTRY_KINDS + ", 'reversal_written_off'"
CHECK = "ck_ledger_transactions_kind"


def _replace(kinds: str) -> None:
    op.execute(f"ALTER TABLE ledger_transactions DROP CONSTRAINT IF EXISTS {CHECK}")
    op.execute(f"ALTER TABLE ledger_transactions ADD CONSTRAINT {CHECK} "
               f"CHECK (kind IN ({kinds})) NOT VALID")
    # After a commit: VALIDATE takes a lock neither readers nor writers wait for.
    with op.get_context().autocommit_block():
        op.execute(f"ALTER TABLE ledger_transactions VALIDATE CONSTRAINT {CHECK}")


def upgrade() -> None:
    _replace(NEW_ENTRY_KINDS)


def downgrade() -> None:
    # The ledger is append-only: refuse rather than drop entries the old check can't hold.
    if op.get_bind().exec_driver_sql(
            "SELECT 1 FROM ledger_transactions WHERE kind = 'reversal_written_off' LIMIT 1"
    ).scalar() is not None:
        raise RuntimeError("the ledger holds written-off reversed payouts; cannot go back "
                           "to 0033")
    _replace(OLD_ENTRY_KINDS)

"""ledger: the rest of a payment under the gateway's least refund is kept (an entry kind)

Revision ID: 0039
Revises: 0038

Support's refund in the Razorpay dashboard of an amount not in whole rupees can leave a
booking's escrow 1-99 paise of its payment; cancelled with no rider's fee, the customer
was told that sum would come back, but the gateway refunds Rs 1 at least: nothing was
asked, and the paise stayed in escrow for good. Now ``remainder_kept`` moves them to the
platform's commission and the customer is promised nothing. The entry kind CHECK is
replaced by one that takes it, NOT VALID in the drop's transaction and validated after a
commit (as 0029, 0034, 0035). Safe to run again.
"""

from __future__ import annotations

from alembic import op

revision = "0039"
down_revision = "0038"
branch_labels = None
depends_on = None

OLD_ENTRY_KINDS = ("'capture', 'release', 'cancellation_fee', 'refund_requested', "
                   "'refund_processed', 'refund_failed', 'transfer_processed', "
                   "'transfer_failed', 'transfer_reversed', 'reversal_repaid', "
                   "'reversal_refund_asked', 'reversal_refund_failed', "
                   "'reversal_written_off', 'outside_refund_platform', 'release_platform'")
NEW_ENTRY_KINDS = OLD_ENTRY_KINDS + ", 'remainder_kept'"
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
            "SELECT 1 FROM ledger_transactions WHERE kind = 'remainder_kept' LIMIT 1"
    ).scalar() is not None:
        raise RuntimeError("the ledger holds remainders kept by the platform; cannot go "
                           "back to 0038")
    _replace(OLD_ENTRY_KINDS)

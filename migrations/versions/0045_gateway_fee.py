"""ledger: Razorpay's fee on a captured payment is an entry of its own (and an account)

Revision ID: 0045
Revises: 0044

Razorpay keeps its fee (GST included) on each captured payment out of the platform's
balance, and the ledger booked the whole payment to escrow: the platform's balance at
Razorpay was lower than the ledger said, by every fee. The new entry kind
``gateway_fee`` moves a payment's fee from the platform's commission to the new account
``gateway_fees`` (money gone to the gateway); escrow and payouts do not change.

The three CHECKs that list ledger kinds (the entry's kind, the posting's account kind, the
account's shape of 0023) are replaced by ones that also take the new kinds, and so is the
reconciliation's mismatch kind CHECK, which takes ``fee_differs`` (Razorpay's fee on a
payment is not the ledger's): added NOT VALID in the same transaction as the drop of the
old ones (nothing is ever unchecked), validated after a commit, as 0027 does. Run again
from its start, it drops what its first run added and adds it again. Going back is
refused while the ledger holds a fee.
"""

from __future__ import annotations

from alembic import op

revision = "0045"
down_revision = "0044"
branch_labels = None
depends_on = None

OLD_ENTRY_KINDS = ("'capture', 'release', 'cancellation_fee', 'refund_requested', "
                   "'refund_processed', 'refund_failed', 'transfer_processed', "
                   "'transfer_failed', 'transfer_reversed', 'reversal_repaid', "
                   "'reversal_refund_asked', 'reversal_refund_failed', "
                   "'reversal_written_off', 'outside_refund_platform', 'release_platform', "
                   "'remainder_kept'")
NEW_ENTRY_KINDS = OLD_ENTRY_KINDS + ", 'gateway_fee'"
OLD_ACCOUNT_KINDS = ("'gateway_clearing', 'escrow', 'partner_payable', "
                     "'platform_commission', 'refunds_pending', 'reversed_payouts'")
NEW_ACCOUNT_KINDS = OLD_ACCOUNT_KINDS + ", 'gateway_fees'"
OLD_MISMATCH_KINDS = "'missing_in_ledger', 'missing_at_gateway', 'amount_differs'"
NEW_MISMATCH_KINDS = OLD_MISMATCH_KINDS + ", 'fee_differs'"


def _shape(unowned: str) -> str:
    # Run through text(): the colons of ':b' and ':p' are escaped, else they read as binds.
    return rf"""
    (account_kind IN ('escrow', 'refunds_pending', 'reversed_payouts')
        AND booking_id IS NOT NULL AND partner_id IS NULL
        AND account = account_kind || '\:b' || booking_id::text)
    OR (account_kind = 'partner_payable' AND partner_id IS NOT NULL
        AND account = account_kind || '\:p' || partner_id::text)
    OR (account_kind IN ({unowned})
        AND partner_id IS NULL AND account = account_kind)
"""


OLD_SHAPE = _shape("'gateway_clearing', 'platform_commission'")
NEW_SHAPE = _shape("'gateway_clearing', 'platform_commission', 'gateway_fees'")


def _checks(entry_kinds: str, account_kinds: str, shape: str, mismatch_kinds: str
            ) -> list[tuple[str, str, str]]:
    return [("ledger_transactions", "ck_ledger_transactions_kind", f"kind IN ({entry_kinds})"),
            ("ledger_postings", "ck_ledger_postings_account_kind",
             f"account_kind IN ({account_kinds})"),
            ("ledger_postings", "ck_ledger_postings_account_shape", shape),
            ("reconciliation_mismatches", "ck_reconciliation_mismatches_kind",
             f"kind IN ({mismatch_kinds})")]


def _replace(checks: list[tuple[str, str, str]]) -> None:
    for table, name, condition in checks:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID")
    # After a commit: VALIDATE reads the rows under a lock that neither readers nor writers
    # wait for; inside the ADD's transaction the ADD's lock would still be held.
    with op.get_context().autocommit_block():
        for table, name, _ in checks:
            op.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")


def upgrade() -> None:
    _replace(_checks(NEW_ENTRY_KINDS, NEW_ACCOUNT_KINDS, NEW_SHAPE, NEW_MISMATCH_KINDS))


def downgrade() -> None:
    # The ledger is append-only: refuse rather than drop entries the old checks can't hold.
    bind = op.get_bind()
    if bind.exec_driver_sql(
            "SELECT 1 FROM ledger_transactions WHERE kind = 'gateway_fee' LIMIT 1"
    ).scalar() is not None:
        raise RuntimeError("the ledger holds gateway fees; cannot go back to 0044")
    # A fee mismatch is a finding of this revision's: it goes with it.
    op.execute("DELETE FROM reconciliation_mismatches WHERE kind = 'fee_differs'")
    _replace(_checks(OLD_ENTRY_KINDS, OLD_ACCOUNT_KINDS, OLD_SHAPE, OLD_MISMATCH_KINDS))

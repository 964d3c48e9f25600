"""ledger: a payout reversed after it was made is an entry of its own

Revision ID: 0027
Revises: 0026

A leg's transfer released to its partner (posted ``transfer_processed``) and reversed
later (ops in the Razorpay dashboard, a partial reversal) brought the money back to the
platform's balance, and the ledger still said the partner had it. The new entry kind
``transfer_reversed`` moves what came back out of the gateway's clearing account into the
booking's ``reversed_payouts`` account: money the platform holds for nobody yet, owed
again to the partner or back to the customer, as ops decide. One entry per reversal.

The three CHECKs that list kinds (the entry's kind, the posting's account kind, and the
account's shape of 0023) are replaced by ones that also take the new kinds: added NOT
VALID in the same transaction as the drop of the old ones (nothing is ever unchecked),
validated after a commit, as 0023 does. Run again from its start, it drops what its first
run added and adds it again.
"""

from __future__ import annotations

from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

OLD_ENTRY_KINDS = ("'capture', 'release', 'cancellation_fee', 'refund_requested', "
                   "'refund_processed', 'refund_failed', 'transfer_processed', "
                   "'transfer_failed'")
NEW_ENTRY_KINDS = OLD_ENTRY_KINDS + ", 'transfer_reversed'"
OLD_ACCOUNT_KINDS = ("'gateway_clearing', 'escrow', 'partner_payable', "
                     "'platform_commission', 'refunds_pending'")
NEW_ACCOUNT_KINDS = OLD_ACCOUNT_KINDS + ", 'reversed_payouts'"


def _shape(per_booking: str) -> str:
    # Run through text(): the colons of ':b' and ':p' are escaped, else they read as binds.
    return rf"""
    (account_kind IN ({per_booking}) AND booking_id IS NOT NULL
        AND partner_id IS NULL AND account = account_kind || '\:b' || booking_id::text)
    OR (account_kind = 'partner_payable' AND partner_id IS NOT NULL
        AND account = account_kind || '\:p' || partner_id::text)
    OR (account_kind IN ('gateway_clearing', 'platform_commission')
        AND partner_id IS NULL AND account = account_kind)
"""


OLD_SHAPE = _shape("'escrow', 'refunds_pending'")
NEW_SHAPE = _shape("'escrow', 'refunds_pending', 'reversed_payouts'")


def _checks(entry_kinds: str, account_kinds: str, shape: str) -> list[tuple[str, str, str]]:
    return [("ledger_transactions", "ck_ledger_transactions_kind", f"kind IN ({entry_kinds})"),
            ("ledger_postings", "ck_ledger_postings_account_kind",
             f"account_kind IN ({account_kinds})"),
            ("ledger_postings", "ck_ledger_postings_account_shape", shape)]


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
    _replace(_checks(NEW_ENTRY_KINDS, NEW_ACCOUNT_KINDS, NEW_SHAPE))


def downgrade() -> None:
    # The ledger is append-only: refuse rather than drop entries the old checks can't hold.
    bind = op.get_bind()
    if bind.exec_driver_sql("SELECT 1 FROM ledger_transactions WHERE kind = "
                            "'transfer_reversed' LIMIT 1").scalar() is not None:
        raise RuntimeError("the ledger holds transfer_reversed entries; cannot go back to 0026")
    _replace(_checks(OLD_ENTRY_KINDS, OLD_ACCOUNT_KINDS, OLD_SHAPE))

"""ledger: support's refund is the platform's cost (two entry kinds)

Revision ID: 0035
Revises: 0034

A refund made in the Razorpay dashboard of a booking whose legs were paid out is more
than its escrow holds: it was never recorded, and the reconciliation listed it for good,
though the money had left. A leg delivered after one could not be released (escrow short
of its payout): its partner was never paid. Now the platform's commission gives what
escrow lacks, each by an entry kind that says so: ``outside_refund_platform`` (the part
of such a refund escrow did not hold) and ``release_platform`` (the part of a leg's
payout). The entry kind CHECK is replaced by one that takes them, added NOT VALID in the
drop's transaction and validated after a commit (as 0029, 0034). Safe to run again.
"""

from __future__ import annotations

from alembic import op

revision = "0035"
down_revision = "0034"
branch_labels = None
depends_on = None

OLD_ENTRY_KINDS = ("'capture', 'release', 'cancellation_fee', 'refund_requested', "
                   "'refund_processed', 'refund_failed', 'transfer_processed', "
                   "'transfer_failed', 'transfer_reversed', 'reversal_repaid', "
                   "'reversal_refund_asked', 'reversal_refund_failed', "
                   "'reversal_written_off'")
NEW_ENTRY_KINDS = OLD_ENTRY_KINDS + ", 'outside_refund_platform', 'release_platform'"
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
            "SELECT 1 FROM ledger_transactions WHERE kind IN ('outside_refund_platform', "
            "'release_platform') LIMIT 1"
    ).scalar() is not None:
        raise RuntimeError("the ledger holds the platform's cost of refunds made outside "
                           "the service; cannot go back to 0034")
    _replace(OLD_ENTRY_KINDS)

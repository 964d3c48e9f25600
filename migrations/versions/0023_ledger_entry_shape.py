"""ledger: a posting's account matches its kind, and an entry has postings

Revision ID: 0023
Revises: 0022

The commit-time checks trusted what they were told. A posting to ``escrow:b12`` labelled
``platform_commission`` escaped the non-negative check (asked of postings labelled escrow)
while every balance is read by the account's name: a correction written by hand could
take a booking's escrow below zero. And an entry written with no postings committed (the
check fires per posting), taking its idempotency key: the real entry of that cause (a
payment's capture) was then "recorded already" and never booked.

Now a CHECK ties the account's name to its kind and ids (escrow and refunds pending per
booking, a partner's payable per partner, the two shared accounts by their kind alone),
added NOT VALID and validated after a commit, so nobody waits on the ledger while the
existing rows are read; and a deferred constraint trigger on ``ledger_transactions``
asks at commit that each new entry has at least two postings. ``ledger_post()`` always
wrote entries of this shape: nothing it does changes.
"""

from __future__ import annotations

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

# Run through text(): the colons of ':b' and ':p' are escaped, else they read as binds.
ACCOUNT_SHAPE = r"""
    (account_kind IN ('escrow', 'refunds_pending') AND booking_id IS NOT NULL
        AND partner_id IS NULL AND account = account_kind || '\:b' || booking_id::text)
    OR (account_kind = 'partner_payable' AND partner_id IS NOT NULL
        AND account = account_kind || '\:p' || partner_id::text)
    OR (account_kind IN ('gateway_clearing', 'platform_commission')
        AND partner_id IS NULL AND account = account_kind)
"""

CHECK_ENTRY = """
    CREATE FUNCTION ledger_check_entry() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        postings integer;
    BEGIN
        SELECT count(*) INTO postings FROM ledger_postings WHERE transaction_id = NEW.id;
        IF postings < 2 THEN
            RAISE EXCEPTION 'ledger transaction % has % posting(s): an entry needs two or more',
                NEW.id, postings USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$;
"""


def upgrade() -> None:
    # Each step short, and the migration safe to run again from its start (it commits
    # part-way: a run stopped by a lock timeout or a killed release is simply run again).
    op.execute(CHECK_ENTRY.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute("DROP TRIGGER IF EXISTS ledger_transactions_have_postings ON ledger_transactions")
    op.execute(
        "CREATE CONSTRAINT TRIGGER ledger_transactions_have_postings AFTER INSERT ON "
        "ledger_transactions DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
        "EXECUTE FUNCTION ledger_check_entry()")
    bind = op.get_bind()
    if bind.exec_driver_sql(
            "SELECT 1 FROM pg_constraint WHERE conname = 'ck_ledger_postings_account_shape'"
    ).scalar() is None:
        # NOT VALID: new rows are checked from the commit on, and the lock the ADD takes
        # (which every reader of the ledger waits for) lasts no longer than the ADD.
        op.execute("ALTER TABLE ledger_postings ADD CONSTRAINT ck_ledger_postings_account_shape "
                   f"CHECK ({ACCOUNT_SHAPE}) NOT VALID")
    # After a commit: VALIDATE reads every posting under a lock that neither readers nor
    # writers wait for; inside the ADD's transaction the ADD's lock would still be held.
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE ledger_postings VALIDATE CONSTRAINT "
                   "ck_ledger_postings_account_shape")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS ledger_transactions_have_postings ON ledger_transactions")
    op.execute("DROP FUNCTION IF EXISTS ledger_check_entry()")
    op.execute("ALTER TABLE ledger_postings DROP CONSTRAINT IF EXISTS "
               "ck_ledger_postings_account_shape")

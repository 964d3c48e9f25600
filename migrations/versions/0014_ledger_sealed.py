"""ledger and transitions: no TRUNCATE, and no postings added to an entry once written

Revision ID: 0014
Revises: 0013

The append-only triggers were row-level BEFORE UPDATE OR DELETE only. Two ways around
them were left: TRUNCATE (a statement, which fires no row trigger), and a later
transaction inserting balanced postings into an old entry (the commit-time check only
asked that each entry sum to zero), which turned a 500-rupee capture into 40,500 of
escrow under the same idempotency key. Now TRUNCATE is refused on the three history
tables, and the commit-time check also asks that every posting of an entry was written
by the (sub)transaction that wrote the entry (same xmin): ledger_post() writes both in
one statement. Test and benchmark set-up empty the tables as a superuser in the replica
role, which skips ordinary triggers as a restore does.
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

HISTORY = ("transitions", "ledger_transactions", "ledger_postings")

CHECK_POSTING = """
    CREATE OR REPLACE FUNCTION ledger_check_posting() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        total bigint;
        sealed boolean;
        balance bigint;
    BEGIN
        SELECT COALESCE(SUM(p.amount_paise), 0), bool_and(p.xmin = t.xmin)
          INTO total, sealed
          FROM ledger_postings p JOIN ledger_transactions t ON t.id = p.transaction_id
         WHERE p.transaction_id = NEW.transaction_id;
        IF total <> 0 THEN
            RAISE EXCEPTION 'ledger transaction % does not balance (% paise)',
                NEW.transaction_id, total USING ERRCODE = 'check_violation';
        END IF;
        IF NOT sealed THEN
            RAISE EXCEPTION 'ledger transaction % was written already: post a new entry',
                NEW.transaction_id USING ERRCODE = 'restrict_violation';
        END IF;
        IF NEW.account_kind IN ('escrow', 'refunds_pending') THEN
            SELECT COALESCE(SUM(amount_paise), 0) INTO balance
              FROM ledger_postings WHERE account = NEW.account;
            IF balance < 0 THEN
                RAISE EXCEPTION 'account % would go below zero (% paise)',
                    NEW.account, balance USING ERRCODE = 'check_violation';
            END IF;
        END IF;
        RETURN NULL;
    END $$;
"""

OLD_CHECK_POSTING = """
    CREATE OR REPLACE FUNCTION ledger_check_posting() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        total bigint;
        balance bigint;
    BEGIN
        SELECT COALESCE(SUM(amount_paise), 0) INTO total
          FROM ledger_postings WHERE transaction_id = NEW.transaction_id;
        IF total <> 0 THEN
            RAISE EXCEPTION 'ledger transaction % does not balance (% paise)',
                NEW.transaction_id, total USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.account_kind IN ('escrow', 'refunds_pending') THEN
            SELECT COALESCE(SUM(amount_paise), 0) INTO balance
              FROM ledger_postings WHERE account = NEW.account;
            IF balance < 0 THEN
                RAISE EXCEPTION 'account % would go below zero (% paise)',
                    NEW.account, balance USING ERRCODE = 'check_violation';
            END IF;
        END IF;
        RETURN NULL;
    END $$;
"""


def upgrade() -> None:
    for table in HISTORY:
        op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION forbid_history_change()")
    op.execute(CHECK_POSTING)


def downgrade() -> None:
    op.execute(OLD_CHECK_POSTING)
    for table in HISTORY:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")

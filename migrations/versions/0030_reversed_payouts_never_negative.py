"""ledger: the commit-time check keeps ``reversed_payouts`` from going below zero too

Revision ID: 0030
Revises: 0029

``ledger_post()`` refuses an entry that would take a non-negative account below zero
(escrow, refunds pending, and since 0027 reversed payouts), under the booking's lock. The
commit-time trigger (0002, 0014) is the backstop for a writer that goes around it (a
hand-written INSERT, a bug in the guarded list): it checked escrow and refunds pending
only. Now it checks reversed payouts as well. The function is replaced in place
(``CREATE OR REPLACE``): no lock on the tables beyond the catalog's, nothing to backfill
(an account below zero today would already be refused by ``ledger_post()``).
"""

from __future__ import annotations

from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None

# The function as 0014 wrote it, with the account kinds it keeps from going below zero
# filled in (str.replace of our own constants, never input).
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
        IF NEW.account_kind IN ({kinds}) THEN
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

OLD_KINDS = "'escrow', 'refunds_pending'"
NEW_KINDS = OLD_KINDS + ", 'reversed_payouts'"


def upgrade() -> None:
    op.execute(CHECK_POSTING.replace("{kinds}", NEW_KINDS))


def downgrade() -> None:
    op.execute(CHECK_POSTING.replace("{kinds}", OLD_KINDS))

"""ledger_post(): a key recorded before is "exists" only for the very same entry

Revision ID: 0044
Revises: 0043

An idempotency key makes a retry harmless: the same entry again is "exists". But
ledger_post() (0009) answered "exists" whatever was sent under a known key: a capture
recorded for 10,000 paise and told again as 12,000 was taken as a retry, the 2,000 in
no book and no log. Now a known key is compared with what is sent, as TigerBeetle does
(exists_with_different_*): the same kind and the same postings (account, leg, amount, in
any order) is "exists"; anything else is "conflict|<what differs>|<the kind recorded>",
which core.services.ledger.post() raises. Same signature, a new body: nothing to migrate.
"""

from __future__ import annotations

from alembic import op

revision = "0044"
down_revision = "0043"
branch_labels = None
depends_on = None

HEAD = """
    CREATE OR REPLACE FUNCTION ledger_post(
        p_booking_id bigint, p_key text, p_kind text, p_gateway_ref text, p_actor text,
        p_cause text, p_memo text, p_at timestamptz, p_postings jsonb, p_guarded jsonb
    ) RETURNS text LANGUAGE plpgsql AS $$
"""

LEDGER_POST = HEAD + """
    DECLARE
        g record;
        bal bigint;
        tx_id bigint;
        old_kind text;
    BEGIN
        IF p_booking_id IS NOT NULL THEN
            PERFORM 1 FROM bookings WHERE id = p_booking_id FOR UPDATE;
        END IF;
        SELECT id, kind INTO tx_id, old_kind
          FROM ledger_transactions WHERE idempotency_key = p_key;
        IF tx_id IS NULL THEN
            FOR g IN SELECT key AS account, value::bigint AS delta
                     FROM jsonb_each_text(p_guarded) LOOP
                SELECT COALESCE(SUM(amount_paise), 0) INTO bal
                  FROM ledger_postings WHERE account = g.account;
                IF bal + g.delta < 0 THEN
                    RETURN 'insufficient|' || g.account || '|' || (bal + g.delta);
                END IF;
            END LOOP;
            INSERT INTO ledger_transactions (idempotency_key, kind, booking_id, gateway_ref,
                                             actor, cause, memo, created_at)
            VALUES (p_key, p_kind, p_booking_id, p_gateway_ref, p_actor, p_cause, p_memo, p_at)
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING id INTO tx_id;
            IF tx_id IS NOT NULL THEN
                INSERT INTO ledger_postings (transaction_id, account, account_kind, booking_id,
                                             partner_id, leg_id, amount_paise, created_at)
                SELECT tx_id, p.account, p.account_kind, p.booking_id, p.partner_id, p.leg_id,
                       p.amount_paise, p_at
                FROM jsonb_to_recordset(p_postings) AS p(account text, account_kind text,
                     booking_id bigint, partner_id bigint, leg_id bigint, amount_paise bigint);
                RETURN 'posted';
            END IF;
            -- A concurrent twin committed the key first (ON CONFLICT waited for it).
            SELECT id, kind INTO tx_id, old_kind
              FROM ledger_transactions WHERE idempotency_key = p_key;
        END IF;
        -- Recorded before: a retry only if it is the very same entry.
        IF old_kind IS DISTINCT FROM p_kind THEN
            RETURN 'conflict|kind|' || old_kind;
        END IF;
        IF EXISTS (
            (SELECT account, leg_id, amount_paise FROM ledger_postings
              WHERE transaction_id = tx_id
             EXCEPT ALL
             SELECT p.account, p.leg_id, p.amount_paise
               FROM jsonb_to_recordset(p_postings) AS p(account text, leg_id bigint,
                                                         amount_paise bigint))
            UNION ALL
            (SELECT p.account, p.leg_id, p.amount_paise
               FROM jsonb_to_recordset(p_postings) AS p(account text, leg_id bigint,
                                                         amount_paise bigint)
             EXCEPT ALL
             SELECT account, leg_id, amount_paise FROM ledger_postings
              WHERE transaction_id = tx_id)) THEN
            RETURN 'conflict|postings|' || old_kind;
        END IF;
        RETURN 'exists';
    END $$;
"""

# 0009's body, restored by the downgrade.
OLD_LEDGER_POST = HEAD + """
    DECLARE
        g record;
        bal bigint;
        tx_id bigint;
    BEGIN
        IF p_booking_id IS NOT NULL THEN
            PERFORM 1 FROM bookings WHERE id = p_booking_id FOR UPDATE;
        END IF;
        IF EXISTS (SELECT 1 FROM ledger_transactions WHERE idempotency_key = p_key) THEN
            RETURN 'exists';
        END IF;
        FOR g IN SELECT key AS account, value::bigint AS delta
                 FROM jsonb_each_text(p_guarded) LOOP
            SELECT COALESCE(SUM(amount_paise), 0) INTO bal
              FROM ledger_postings WHERE account = g.account;
            IF bal + g.delta < 0 THEN
                RETURN 'insufficient|' || g.account || '|' || (bal + g.delta);
            END IF;
        END LOOP;
        INSERT INTO ledger_transactions (idempotency_key, kind, booking_id, gateway_ref,
                                         actor, cause, memo, created_at)
        VALUES (p_key, p_kind, p_booking_id, p_gateway_ref, p_actor, p_cause, p_memo, p_at)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id INTO tx_id;
        IF tx_id IS NULL THEN
            RETURN 'exists';
        END IF;
        INSERT INTO ledger_postings (transaction_id, account, account_kind, booking_id,
                                     partner_id, leg_id, amount_paise, created_at)
        SELECT tx_id, p.account, p.account_kind, p.booking_id, p.partner_id, p.leg_id,
               p.amount_paise, p_at
        FROM jsonb_to_recordset(p_postings) AS p(account text, account_kind text,
             booking_id bigint, partner_id bigint, leg_id bigint, amount_paise bigint);
        RETURN 'posted';
    END $$;
"""


def upgrade() -> None:
    op.execute(LEDGER_POST)


def downgrade() -> None:
    op.execute(OLD_LEDGER_POST)

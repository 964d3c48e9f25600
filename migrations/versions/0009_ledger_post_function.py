"""ledger_post(): lock, check and record a journal entry in one call

Revision ID: 0009
Revises: 0008

The product's core.services.ledger.post() calls this. Inside a PL/pgSQL function every
statement reads a fresh snapshot, so taking the booking's row lock first and only then
reading the guarded balances is correct under READ COMMITTED, in one round trip. The
table triggers from 0002 still check every entry at commit.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION ledger_post(
            p_booking_id bigint, p_key text, p_kind text, p_gateway_ref text, p_actor text,
            p_cause text, p_memo text, p_at timestamptz, p_postings jsonb, p_guarded jsonb
        ) RETURNS text LANGUAGE plpgsql AS $$
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
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS ledger_post(bigint, text, text, text, text, text, "
               "text, timestamptz, jsonb, jsonb)")

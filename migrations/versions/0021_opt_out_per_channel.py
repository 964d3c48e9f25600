"""people.sms_opted_out, and one partner per payout account

Revision ID: 0021
Revises: 0020

An opt-out was one flag for both channels: an SMS STOP (or Twilio refusing an SMS with
21610) also ended the WhatsApp messages, and a customer who sent STOP to the WhatsApp bot
had their booking news sent by SMS, which was right, but so would a customer who had
stopped SMS, which Twilio refuses. ``opted_out`` now means WhatsApp and
``sms_opted_out`` SMS.

The new column has a server default, so the previous release's inserts are unaffected.
Who stopped which channel is not recorded for the rows already flagged: a person flagged
who never chatted with us on WhatsApp can only have stopped SMS, and is moved to the SMS
flag; one who chatted keeps the WhatsApp flag (the SMS flag is learnt at the first SMS
Twilio refuses, 21610). That backfill runs after the ALTER TABLE's commit, on the few
flagged rows.

The unique index on ``partner_profiles.payout_account_id`` (the operators' tools refuse a
shared account since session 16) is built CONCURRENTLY. Two partners already sharing one
would make it fail: the migration stops first, naming the partners, for ops to set one
of them their own account.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.live import create_index_concurrently

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # IF NOT EXISTS: run again after a stop part-way (the backfill commits on its own).
    op.execute("ALTER TABLE people ADD COLUMN IF NOT EXISTS sms_opted_out boolean"
               " NOT NULL DEFAULT false")
    with op.get_context().autocommit_block():
        bind = op.get_bind()
        bind.execute(sa.text(
            "UPDATE people p SET sms_opted_out = true, opted_out = false"
            " WHERE p.opted_out AND NOT EXISTS (SELECT 1 FROM conversations c"
            " WHERE c.person_id = p.id AND c.channel = 'whatsapp')"))
        shared = bind.execute(sa.text(
            "SELECT payout_account_id, array_agg(id ORDER BY id) FROM partner_profiles"
            " WHERE payout_account_id IS NOT NULL GROUP BY payout_account_id"
            " HAVING count(*) > 1")).all()
    if shared:
        named = "; ".join(f"partners {ids} share one account" for _, ids in shared)
        raise RuntimeError(f"two partners hold one payout account ({named}): set each"
                           " partner's own (partner_profiles.payout_account_id), then run"
                           " the migration again")
    create_index_concurrently("uq_partner_profiles_payout_account_id", "partner_profiles",
                              ["payout_account_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_partner_profiles_payout_account_id", table_name="partner_profiles")
    op.execute("UPDATE people SET opted_out = true WHERE sms_opted_out")
    op.drop_column("people", "sms_opted_out")

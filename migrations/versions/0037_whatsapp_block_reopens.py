"""people.wa_blocked, number_opt_outs.wa_blocked: a WhatsApp block is not a STOP

Revision ID: 0037
Revises: 0036

Twilio refusing a WhatsApp message with 63014 (the recipient blocked our business
number) closed her WhatsApp with the flag her own STOP sets (people.opted_out, or a kept
number_opt_outs.whatsapp for a number nobody holds), so when she unblocked us and wrote
again she was only told to send START, whatever she asked. Twilio's rule is to stop
sending until she re-engages: her writing is that. A STOP she typed is consent withdrawn,
and still needs START. The flag now says why WhatsApp is closed: ``wa_blocked`` true
beside the opt-out is a block, which her next WhatsApp message ends
(core.services.conversation._unblocked).

Both columns have a constant server default: PostgreSQL adds them without rewriting or
scanning the table (a short ACCESS EXCLUSIVE lock, under env.py's lock_timeout), and the
previous release's inserts and updates are unaffected (its refusals are recorded as a
STOP, as it always did). No backfill: who was closed by a block before this release is
not recorded, and taking a STOP for a block would write to someone who said no; those
people are asked for START as before. IF NOT EXISTS: safe to run again.
"""

from __future__ import annotations

from alembic import op

revision = "0037"
down_revision = "0036"
branch_labels = None
depends_on = None

TABLES = ("people", "number_opt_outs")


def upgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS wa_blocked boolean"
                   " NOT NULL DEFAULT false")


def downgrade() -> None:
    # A block becomes a STOP again (the opt-out flags stay set): the previous release asks
    # for START, as it did.
    for table in reversed(TABLES):
        op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS wa_blocked")

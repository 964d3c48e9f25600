"""dispatch: a partner event ``pickup_reminded`` (when a rider was told his pickup is late)

Revision ID: 0043
Revises: 0042

A job not picked up in the pickup window gets its rider a reminder, and is taken back a
window later. That "later" counted from the job's taking, not from the reminder: after
workers were away past twice the window, the first sweep took the job back at once, the
rider never warned. The reminder is now recorded with its time (the app's clock, as every
dispatch time), and the take-back counts from it. The kind's CHECK gets the new value as
0041 did (NOT VALID, then validated after a commit). Safe to run again from its start.
"""

from __future__ import annotations

from alembic import op

revision = "0043"
down_revision = "0042"
branch_labels = None
depends_on = None

NAME = "ck_dispatch_partner_events_kind"
OLD_KINDS = "'duty_on', 'duty_off', 'cancelled_after_accept', 'auto_off', 'taken_back_by_ops'"
NEW_KINDS = OLD_KINDS + ", 'pickup_reminded'"


def _replace(kinds: str) -> None:
    op.execute(f"ALTER TABLE dispatch_partner_events DROP CONSTRAINT IF EXISTS {NAME}")
    op.execute(f"ALTER TABLE dispatch_partner_events ADD CONSTRAINT {NAME} "
               f"CHECK (kind IN ({kinds})) NOT VALID")
    with op.get_context().autocommit_block():
        op.execute(f"ALTER TABLE dispatch_partner_events VALIDATE CONSTRAINT {NAME}")


def upgrade() -> None:
    _replace(NEW_KINDS)


def downgrade() -> None:
    # The old code knows a reminder by its messages alone (their dedupe keys stay).
    op.execute("DELETE FROM dispatch_partner_events WHERE kind = 'pickup_reminded'")
    _replace(OLD_KINDS)

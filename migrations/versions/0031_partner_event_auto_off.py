"""dispatch: a partner event ``auto_off`` (put OFF duty after missed offers)

Revision ID: 0031
Revises: 0030

A partner who lets ``DISPATCH_MISSED_OFFERS_OFF`` offers in a row expire unanswered is
put OFF duty by dispatch (as if they had sent OFF: a ``duty_off`` event), and an
``auto_off`` event beside it tells ops why. The kind's CHECK gets the new value: dropped
and added again NOT VALID (the table's lock lasts no longer than the two statements),
then validated after a commit, under a lock writers do not wait for. The new list only
adds a kind, so every row passes. Safe to run again from its start.
"""

from __future__ import annotations

from alembic import op

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None

NAME = "ck_dispatch_partner_events_kind"
OLD_KINDS = "'duty_on', 'duty_off', 'cancelled_after_accept'"
NEW_KINDS = OLD_KINDS + ", 'auto_off'"


def _replace(kinds: str) -> None:
    op.execute(f"ALTER TABLE dispatch_partner_events DROP CONSTRAINT IF EXISTS {NAME}")
    op.execute(f"ALTER TABLE dispatch_partner_events ADD CONSTRAINT {NAME} "
               f"CHECK (kind IN ({kinds})) NOT VALID")
    with op.get_context().autocommit_block():
        op.execute(f"ALTER TABLE dispatch_partner_events VALIDATE CONSTRAINT {NAME}")


def upgrade() -> None:
    _replace(NEW_KINDS)


def downgrade() -> None:
    # The old code knows no auto_off: the duty_off recorded with each one stays.
    op.execute("DELETE FROM dispatch_partner_events WHERE kind = 'auto_off'")
    _replace(OLD_KINDS)

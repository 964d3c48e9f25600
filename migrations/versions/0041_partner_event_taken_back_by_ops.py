"""dispatch: a partner event ``taken_back_by_ops`` (a job ops took back: no count against them)

Revision ID: 0041
Revises: 0040

A job ops take back from a rider (suspended, or papers to check again) was recorded as
``cancelled_after_accept`` and took his acceptance back, as if he had given it back
himself: his rank fell for ops' paperwork. It is now recorded as what it is, and his
record is left alone. The kind's CHECK gets the new value as 0031 did (NOT VALID, then
validated after a commit). Safe to run again from its start.
"""

from __future__ import annotations

from alembic import op

revision = "0041"
down_revision = "0040"
branch_labels = None
depends_on = None

NAME = "ck_dispatch_partner_events_kind"
OLD_KINDS = "'duty_on', 'duty_off', 'cancelled_after_accept', 'auto_off'"
NEW_KINDS = OLD_KINDS + ", 'taken_back_by_ops'"


def _replace(kinds: str) -> None:
    op.execute(f"ALTER TABLE dispatch_partner_events DROP CONSTRAINT IF EXISTS {NAME}")
    op.execute(f"ALTER TABLE dispatch_partner_events ADD CONSTRAINT {NAME} "
               f"CHECK (kind IN ({kinds})) NOT VALID")
    with op.get_context().autocommit_block():
        op.execute(f"ALTER TABLE dispatch_partner_events VALIDATE CONSTRAINT {NAME}")


def upgrade() -> None:
    _replace(NEW_KINDS)


def downgrade() -> None:
    # The old code knows the kind as a give-back: so it is recorded again (the acceptance
    # it left alone stays as it is).
    op.execute("UPDATE dispatch_partner_events SET kind = 'cancelled_after_accept' "
               "WHERE kind = 'taken_back_by_ops'")
    _replace(OLD_KINDS)

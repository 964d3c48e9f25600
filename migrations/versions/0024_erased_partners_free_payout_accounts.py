"""erased partners free their payout account

Revision ID: 0024
Revises: 0023

An erasure (retention.erase_person) now clears the partner profile's
``payout_account_id``: the unique index (0021) is there so that two working partners are
never paid to one bank, and an erased profile, with no name and no number, never works
again. Profiles erased by the previous release still hold theirs, so the same rider
signing up again with their own linked account is refused 409 ``payout_account_taken``.
This frees them: a profile is erased when its first name is empty, its KYC suspended or
rejected (an erasure requires it), and its person has no name, number or WhatsApp id.
The transfer rows keep the account each paid (the money record); nothing owed is left
to pay to it (an erasure waits until nothing is).

A few rows at most, by the primary keys: one UPDATE, no batches. Run again, it finds
none. Not undone by a downgrade: which account an erased profile had is not kept.
"""

from __future__ import annotations

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE partner_profiles pp SET payout_account_id = NULL FROM people p"
        " WHERE p.id = pp.person_id AND pp.payout_account_id IS NOT NULL"
        " AND pp.first_name = '' AND pp.kyc_status IN ('rejected', 'suspended')"
        " AND p.name IS NULL AND p.phone IS NULL AND p.wa_id IS NULL")


def downgrade() -> None:
    pass

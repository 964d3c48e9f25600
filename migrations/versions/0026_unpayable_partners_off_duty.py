"""partners who cannot be paid are off duty

Revision ID: 0026
Revises: 0025

The previous release let a partner whose KYC was still pending (or who had no payout
account) go on duty and take jobs; this one offers jobs only to partners it can pay (KYC
verified and a linked account), and refuses their ON. Those it finds on duty would wait
for offers that cannot come, and STATUS would tell them they are on duty: they are put
off duty. Their next ON is answered with what is missing (their papers, or a payout
account), as anyone's is. Jobs they hold stay theirs (a parcel in hand is still
delivered); ops see them in the partner list (``payout_account``, ``kyc_status``).

A partner table is small (one row per rider): one UPDATE. Run again, it finds none. Not
undone by a downgrade: who was on duty then is not kept.
"""

from __future__ import annotations

from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE partner_profiles SET on_duty = false WHERE on_duty"
               " AND (kyc_status <> 'verified' OR payout_account_id IS NULL)")


def downgrade() -> None:
    pass

"""merge the payments branch

Revision ID: 0008
Revises: 0002, 0007
"""

from __future__ import annotations

revision = "0008"
down_revision = ("0002", "0007")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

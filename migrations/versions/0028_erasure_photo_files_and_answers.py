"""erasure: photo files deleted after the commit; stored answers found by an index

Revision ID: 0028
Revises: 0027

``pod_photo_deletions``: the proof-of-delivery photo files still to delete. An erasure
(of a booking's sender or recipient) and the retention job delete the photo rows in their
transaction and write the files' URIs here; the files go after the commit, each row with
its file, so a photo store that is away loses no erasure and leaves no file forgotten (the
next try, or the night's run, finds the row). A new table, unused by the previous release.

``ix_inbound_events_answered``: ``inbound_events`` keeps a row for every webhook for good,
and only our stored answers to SMS and calls (those of the message window) hold text. An
erasure looked for a number in them by reading every row; the retention job's step that
clears old answers walked every row too. A partial index on the id of the rows with an
answer serves both. Built CONCURRENTLY (the table grows with every message), which
commits the table first: run again, the migration finds both there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.live import create_index_concurrently

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pod_photo_deletions",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("storage_uri", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pod_photo_deletions")),
        sa.UniqueConstraint("storage_uri", name=op.f("uq_pod_photo_deletions_storage_uri")),
        if_not_exists=True,
    )
    create_index_concurrently(op.f("ix_inbound_events_answered"), "inbound_events", ["id"],
                              postgresql_where=sa.text("response_body IS NOT NULL"))


def downgrade() -> None:
    op.drop_index(op.f("ix_inbound_events_answered"), table_name="inbound_events")
    op.drop_table("pod_photo_deletions")

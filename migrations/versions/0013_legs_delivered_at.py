"""legs: delivered_at, the time the drop was confirmed

Revision ID: 0013
Revises: 0012

A day's earnings (the partner app, and dispatch's fairness term) were counted by a leg's
updated_at, which moves with any later change: a proof-of-delivery photo sent the next
morning moved yesterday's delivery into today. delivered_at is set once, with the move to
delivered; existing legs take it from their transition into delivered.

Written to run while the previous release serves (migrations/README.md): a trigger sets
the time on a move to delivered that leaves it out, as that release's moves do; the
backfill commits in batches; the index is built CONCURRENTLY. Safe to run again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.live import create_index_concurrently

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# The previous release serves until the deploy is over, and moves legs to delivered
# without the time: the database sets it then (and for any other writer that leaves it
# out), so no leg delivered during the deploy is left without it for good.
SET_ON_DELIVERY = """
    CREATE OR REPLACE FUNCTION legs_set_delivered_at() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.delivered_at := now();
        RETURN NEW;
    END $$;
    DROP TRIGGER IF EXISTS legs_set_delivered_at ON legs;
    CREATE TRIGGER legs_set_delivered_at BEFORE UPDATE OF status ON legs FOR EACH ROW
        WHEN (NEW.status = 'delivered' AND OLD.status <> 'delivered'
              AND NEW.delivered_at IS NULL)
        EXECUTE FUNCTION legs_set_delivered_at();
"""

# Each leg's time of its transition into delivered.
DELIVERY_TIMES = """
    SELECT entity_id AS leg_id, max(at) AS at FROM transitions
    WHERE entity = 'leg' AND to_status = 'delivered' GROUP BY entity_id
"""


def fill_from(times: str) -> str:
    """Delivered legs without the time take it from their transition into delivered."""
    return f"""
        UPDATE legs SET delivered_at = t.at FROM ({times}) AS t
        WHERE t.leg_id = legs.id AND legs.status = 'delivered' AND legs.delivered_at IS NULL
    """


BACKFILL = fill_from(DELIVERY_TIMES)  # in one statement (tests; the upgrade goes in batches)
BATCH = 1000  # legs per commit: their row locks are held for tens of ms


def upgrade() -> None:
    op.add_column("legs", sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
                  if_not_exists=True)
    op.execute(SET_ON_DELIVERY)
    # The legs delivered before the trigger, in batches of their own commits: one UPDATE
    # of a year's legs would hold their row locks (dispatch, OTPs, photos) for seconds.
    with op.get_context().autocommit_block():
        bind = op.get_bind()
        bind.exec_driver_sql("DROP TABLE IF EXISTS leg_delivery_times")
        bind.exec_driver_sql(f"CREATE TEMP TABLE leg_delivery_times AS {DELIVERY_TIMES}")
        bind.exec_driver_sql("ALTER TABLE leg_delivery_times ADD PRIMARY KEY (leg_id)")
        bind.exec_driver_sql("ANALYZE leg_delivery_times")
        batch_end = sa.text("SELECT max(leg_id) FROM (SELECT leg_id FROM leg_delivery_times "
                            "WHERE leg_id > :after ORDER BY leg_id LIMIT :n) AS b")
        fill_batch = sa.text(fill_from("SELECT leg_id, at FROM leg_delivery_times "
                                       "WHERE leg_id > :after AND leg_id <= :upto"))
        after = 0
        while (upto := bind.scalar(batch_end, {"after": after, "n": BATCH})) is not None:
            bind.execute(fill_batch, {"after": after, "upto": upto})
            after = upto
        bind.exec_driver_sql("DROP TABLE leg_delivery_times")
    create_index_concurrently("ix_legs_partner_delivered_at", "legs",
                              ["partner_id", "delivered_at"],
                              postgresql_where=sa.text("delivered_at IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_legs_partner_delivered_at", table_name="legs")
    op.execute("DROP TRIGGER IF EXISTS legs_set_delivered_at ON legs")
    op.execute("DROP FUNCTION IF EXISTS legs_set_delivered_at()")
    op.drop_column("legs", "delivered_at")

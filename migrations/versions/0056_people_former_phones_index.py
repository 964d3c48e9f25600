"""people: an index of the numbers a person moved off (former_phones' keys)

Revision ID: 0056
Revises: 0055

A message given back, retried or held back (a Twilio outage: every retry of every
message) asks whose number its address was before a move (outbox._moved_from:
``people.former_phones ? :number``), and so does a WhatsApp message refused after a move
(outbox._by_sms_instead). Unindexed, each asking read every person. A GIN index of the
column's default operator class (jsonb_ops) holds its keys, the old numbers, and serves
``?``: the planner reads the few people who left the number. tests/test_outbox2_s39.py
checks that it uses it.

Built CONCURRENTLY (people take writes with every sign-up and move); run again, the
migration finds it there.
"""

from __future__ import annotations

from alembic import op

from migrations.live import create_index_concurrently

revision = "0056"
down_revision = "0055"
branch_labels = None
depends_on = None

NAME = "ix_people_former_phones"


def upgrade() -> None:
    create_index_concurrently(NAME, "people", ["former_phones"], postgresql_using="gin",
                              postgresql_ops={"former_phones": "jsonb_ops"})


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(NAME, table_name="people", postgresql_concurrently=True,
                      if_exists=True)

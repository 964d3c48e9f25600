"""dialog: handoffs to a person, their messages, WhatsApp template sends

Revision ID: 0004
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "handoffs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("channel", sa.String(length=10), nullable=False),
        sa.Column("reason", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("step", sa.String(length=40), nullable=True),
        sa.Column("operator", sa.String(length=80), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('waiting', 'closed')", name=op.f("ck_handoffs_status")),
        sa.CheckConstraint("reason IN ('asked', 'not_understood', 'callback')",
                           name=op.f("ck_handoffs_reason")),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"],
                                name=op.f("fk_handoffs_conversation_id_conversations")),
        sa.ForeignKeyConstraint(["person_id"], ["people.id"],
                                name=op.f("fk_handoffs_person_id_people")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_handoffs")),
    )
    op.create_index(op.f("ix_handoffs_conversation_id"), "handoffs", ["conversation_id"])
    op.create_index(op.f("ix_handoffs_person_id"), "handoffs", ["person_id"])
    op.create_index(op.f("ix_handoffs_status"), "handoffs", ["status"])
    op.create_table(
        "handoff_messages",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("handoff_id", sa.Integer(), nullable=False),
        sa.Column("direction", sa.String(length=3), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("operator", sa.String(length=80), nullable=True),
        sa.Column("outbox_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.CheckConstraint("direction IN ('in', 'out')",
                           name=op.f("ck_handoff_messages_direction")),
        sa.ForeignKeyConstraint(["handoff_id"], ["handoffs.id"],
                                name=op.f("fk_handoff_messages_handoff_id_handoffs")),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox_messages.id"],
                                name=op.f("fk_handoff_messages_outbox_id_outbox_messages")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_handoff_messages")),
    )
    op.create_index(op.f("ix_handoff_messages_handoff_id"), "handoff_messages", ["handoff_id"])
    op.create_table(
        "whatsapp_template_sends",
        sa.Column("outbox_id", sa.BigInteger(), nullable=False),
        sa.Column("content_sid", sa.String(length=64), nullable=False),
        sa.Column("content_variables", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox_messages.id"],
                                name=op.f("fk_whatsapp_template_sends_outbox_id_outbox_messages")),
        sa.PrimaryKeyConstraint("outbox_id", name=op.f("pk_whatsapp_template_sends")),
    )


def downgrade() -> None:
    op.drop_table("whatsapp_template_sends")
    op.drop_index(op.f("ix_handoff_messages_handoff_id"), table_name="handoff_messages")
    op.drop_table("handoff_messages")
    op.drop_index(op.f("ix_handoffs_status"), table_name="handoffs")
    op.drop_index(op.f("ix_handoffs_person_id"), table_name="handoffs")
    op.drop_index(op.f("ix_handoffs_conversation_id"), table_name="handoffs")
    op.drop_table("handoffs")

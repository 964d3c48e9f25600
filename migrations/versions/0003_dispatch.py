"""dispatch: partner searches, offers, OTP attempts, partner events, POD photos

Hand-written to mirror core/adapters/dispatch_models.py. The two partial unique indexes
on dispatch_offers make "one winner per leg" a database guarantee.

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-24 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dispatch_searches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("leg_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("pass_no", sa.Integer(), nullable=False),
        sa.Column("radius_step", sa.Integer(), nullable=False),
        sa.Column("batch_no", sa.Integer(), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exhausted_pass", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.CheckConstraint("status IN ('active', 'done', 'failed', 'paused')",
                           name=op.f("ck_dispatch_searches_status")),
        sa.ForeignKeyConstraint(["leg_id"], ["legs.id"],
                                name=op.f("fk_dispatch_searches_leg_id_legs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispatch_searches")),
        sa.UniqueConstraint("leg_id", name=op.f("uq_dispatch_searches_leg_id")),
    )
    op.create_index(op.f("ix_dispatch_searches_status"), "dispatch_searches", ["status"])

    op.create_table(
        "dispatch_offers",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("leg_id", sa.Integer(), nullable=False),
        sa.Column("partner_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("pass_no", sa.Integer(), nullable=False),
        sa.Column("batch_no", sa.Integer(), nullable=False),
        sa.Column("distance_m", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("offered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("responded_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('open', 'accepted', 'declined', 'expired', 'withdrawn', 'cancelled')",
            name=op.f("ck_dispatch_offers_status"),
        ),
        sa.ForeignKeyConstraint(["leg_id"], ["legs.id"],
                                name=op.f("fk_dispatch_offers_leg_id_legs")),
        sa.ForeignKeyConstraint(["partner_id"], ["partner_profiles.id"],
                                name=op.f("fk_dispatch_offers_partner_id_partner_profiles")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispatch_offers")),
    )
    op.create_index(op.f("ix_dispatch_offers_leg_id"), "dispatch_offers", ["leg_id"])
    op.create_index(op.f("ix_dispatch_offers_partner_id"), "dispatch_offers", ["partner_id"])
    op.create_index(op.f("ix_dispatch_offers_status"), "dispatch_offers", ["status"])
    op.create_index(op.f("ix_dispatch_offers_expires_at"), "dispatch_offers", ["expires_at"])
    op.create_index("uq_dispatch_offers_leg_accepted", "dispatch_offers", ["leg_id"],
                    unique=True, postgresql_where=sa.text("status = 'accepted'"))
    op.create_index("uq_dispatch_offers_leg_partner_open", "dispatch_offers",
                    ["leg_id", "partner_id"], unique=True,
                    postgresql_where=sa.text("status = 'open'"))

    op.create_table(
        "dispatch_otp_attempts",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("leg_id", sa.Integer(), nullable=False),
        sa.Column("partner_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('pickup', 'drop')",
                           name=op.f("ck_dispatch_otp_attempts_kind")),
        sa.ForeignKeyConstraint(["leg_id"], ["legs.id"],
                                name=op.f("fk_dispatch_otp_attempts_leg_id_legs")),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partner_profiles.id"],
            name=op.f("fk_dispatch_otp_attempts_partner_id_partner_profiles")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispatch_otp_attempts")),
    )
    op.create_index(op.f("ix_dispatch_otp_attempts_leg_id"), "dispatch_otp_attempts",
                    ["leg_id"])

    op.create_table(
        "dispatch_partner_events",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("partner_id", sa.Integer(), nullable=False),
        sa.Column("leg_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('duty_on', 'duty_off', 'cancelled_after_accept')",
                           name=op.f("ck_dispatch_partner_events_kind")),
        sa.ForeignKeyConstraint(["leg_id"], ["legs.id"],
                                name=op.f("fk_dispatch_partner_events_leg_id_legs")),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partner_profiles.id"],
            name=op.f("fk_dispatch_partner_events_partner_id_partner_profiles")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispatch_partner_events")),
    )
    op.create_index(op.f("ix_dispatch_partner_events_partner_id"), "dispatch_partner_events",
                    ["partner_id"])

    op.create_table(
        "dispatch_pod_photos",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("leg_id", sa.Integer(), nullable=False),
        sa.Column("partner_id", sa.Integer(), nullable=True),
        sa.Column("storage_uri", sa.Text(), nullable=False),
        sa.Column("content_type", sa.String(length=40), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.CheckConstraint("size_bytes > 0", name=op.f("ck_dispatch_pod_photos_size")),
        sa.ForeignKeyConstraint(["leg_id"], ["legs.id"],
                                name=op.f("fk_dispatch_pod_photos_leg_id_legs")),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partner_profiles.id"],
            name=op.f("fk_dispatch_pod_photos_partner_id_partner_profiles")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispatch_pod_photos")),
    )
    op.create_index(op.f("ix_dispatch_pod_photos_leg_id"), "dispatch_pod_photos", ["leg_id"])


def downgrade() -> None:
    op.drop_table("dispatch_pod_photos")
    op.drop_table("dispatch_partner_events")
    op.drop_table("dispatch_otp_attempts")
    op.drop_table("dispatch_offers")
    op.drop_table("dispatch_searches")

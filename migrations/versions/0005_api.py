"""REST API tables: sign-in sessions, idempotency records, ratings, audit log

Revision ID: 0005
Revises: 0001
Hand-written; the audit log is append-only like the transition history.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0001"
branch_labels = None
depends_on = None


def _created() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                     nullable=False)


def upgrade() -> None:
    op.create_table(
        "api_sessions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        _created(),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["person_id"], ["people.id"],
                                name=op.f("fk_api_sessions_person_id_people")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_sessions")),
    )
    op.create_index(op.f("ix_api_sessions_person_id"), "api_sessions", ["person_id"])
    op.create_table(
        "idempotency_records",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        _created(),
        sa.ForeignKeyConstraint(["person_id"], ["people.id"],
                                name=op.f("fk_idempotency_records_person_id_people")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_records")),
        sa.UniqueConstraint("person_id", "key", name="uq_idempotency_person_key"),
    )
    op.create_table(
        "booking_ratings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("booking_id", sa.Integer(), nullable=False),
        sa.Column("stars", sa.Integer(), nullable=False),
        sa.Column("comment", sa.String(length=500), nullable=True),
        _created(),
        sa.CheckConstraint("stars BETWEEN 1 AND 5", name=op.f("ck_booking_ratings_stars")),
        sa.ForeignKeyConstraint(["booking_id"], ["bookings.id"],
                                name=op.f("fk_booking_ratings_booking_id_bookings")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_booking_ratings")),
        sa.UniqueConstraint("booking_id", name=op.f("uq_booking_ratings_booking_id")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(length=40), nullable=False),
        sa.Column("action", sa.String(length=60), nullable=False),
        sa.Column("target", sa.String(length=80), nullable=False),
        sa.Column("details", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.execute(
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION forbid_history_change()"
    )


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("booking_ratings")
    op.drop_table("idempotency_records")
    op.drop_index(op.f("ix_api_sessions_person_id"), table_name="api_sessions")
    op.drop_table("api_sessions")

"""audit_log: no TRUNCATE, as the ledger and transitions (0014)

Revision ID: 0042
Revises: 0041

The audit log is append-only by a row trigger (0005), which TRUNCATE, a statement, does
not fire: one `TRUNCATE audit_log` by the application's role emptied the record of who
erased, refunded and took over what, which README says stays. 0014 closed this on the
ledger and transitions; now audit_log refuses it too. Test and benchmark set-up empty
the tables in the replica role (core.adapters.db.wipe_all_tables), which skips it.
"""

from __future__ import annotations

from alembic import op

revision = "0042"
down_revision = "0041"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
               "FOR EACH STATEMENT EXECUTE FUNCTION forbid_history_change()")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")

"""transitions and audit_log: an erasure may take names and doors out of their reasons

Revision ID: 0055
Revises: 0054

A booking's history (transitions.reason: "cancelled in the app: " and the customer's own
words) and ops' cancel reason in the audit log (booking.cancel, details.reason) are kept
for good, and they may name the recipient and say where her door is ("Gita moved away
from the house near the HO"). Both tables are append-only (0001, 0005): an erasure could
not take them out. Now a row may be changed in one way only: its reason (the history's
column; the audit entry's details "reason" key, the other keys as they were), to a text
that says what the erasure took out ("[name]", "[place]": retention.NAME_REMOVED,
PLACE_REMOVED). Anything else, and every DELETE, is refused as before.
"""

from __future__ import annotations

from alembic import op

revision = "0055"
down_revision = "0054"
branch_labels = None
depends_on = None

_REFUSE = """RAISE EXCEPTION '% on % is not allowed: the table is append-only',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'restrict_violation';"""
_SCRUBBED = "(position('[name]' in {new}) > 0 OR position('[place]' in {new}) > 0)"
# Each table's trigger function: the one change it lets through.
_ALLOWED = {
    "transitions": ("transitions_reason_scrub", f"""(to_jsonb(NEW) - 'reason') = (to_jsonb(OLD) - 'reason')
               AND {_SCRUBBED.format(new="NEW.reason")}"""),
    "audit_log": ("audit_log_reason_scrub", f"""(to_jsonb(NEW) - 'details') = (to_jsonb(OLD) - 'details')
               AND (NEW.details - 'reason') = (OLD.details - 'reason')
               AND jsonb_typeof(NEW.details -> 'reason') = 'string'
               AND {_SCRUBBED.format(new="(NEW.details ->> 'reason')")}"""),
}


def upgrade() -> None:
    for table, (function, allowed) in _ALLOWED.items():
        op.execute(f"""
            CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'UPDATE' THEN
                    IF {allowed} THEN
                        RETURN NEW;
                    END IF;
                END IF;
                {_REFUSE}
            END $$;
        """)
        # Pinned to the schema, as every function of it (0049).
        op.execute(f"DO $$ BEGIN EXECUTE format('ALTER FUNCTION {function}() "
                   "SET search_path = %I, pg_temp', current_schema()); END $$")
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                   f"FOR EACH ROW EXECUTE FUNCTION {function}()")


def downgrade() -> None:
    for table, (function, _) in _ALLOWED.items():
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                   "FOR EACH ROW EXECUTE FUNCTION forbid_history_change()")
        op.execute(f"DROP FUNCTION {function}()")

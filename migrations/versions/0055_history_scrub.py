"""transitions and audit_log: an erasure may take names and doors out of their reasons

Revision ID: 0055
Revises: 0054

A booking's history (transitions.reason: "cancelled in the app: " and the customer's own
words) and ops' cancel reason in the audit log (booking.cancel, details.reason) are kept
for good, and they may name the recipient and say where her door is ("Gita moved away
from the house near the HO"). Both tables are append-only (0001, 0005): an erasure could
not take them out. Now a row may be changed in one way only: its reason (the history's
column; the audit entry of an ops cancel, booking.cancel, that has one: its details
"reason" key, the other keys as they were), to the old reason with parts of it replaced
by what the erasure took out ("[name]", "[place]": retention.NAME_REMOVED,
PLACE_REMOVED), and nothing else: history_reason_scrubbed(old, new). A text merely
carrying a marker ("refund approved by [name]") is refused, as is a reason given to an
entry that had none. Anything else, and every DELETE, is refused as before.
"""

from __future__ import annotations

from alembic import op

revision = "0055"
down_revision = "0054"
branch_labels = None
depends_on = None

_REFUSE = """RAISE EXCEPTION '% on % is not allowed: the table is append-only',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'restrict_violation';"""

# Whether ``new`` is ``old`` with parts of it replaced by markers, as an erasure's scrub
# writes it (retention._replaced), maybe cut at the column's length after a marker
# (retention._fit): ``new`` differs, carries a marker, and split on its markers, its first
# piece begins ``old`` (unless ``new`` begins with a marker) and every piece is found in
# ``old`` in order, each after the one before (the earliest place each is found leaves
# the most room for those after it). Words added, moved or swapped are refused.
SCRUB_CHECK = "history_reason_scrubbed"
_SCRUB_CHECK_SQL = f"""
    CREATE FUNCTION {SCRUB_CHECK}(old text, new text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE AS $$
    DECLARE
        rest text := new;
        piece text;
        at integer := 1;
        found integer;
        name_at integer;
        place_at integer;
        first boolean := true;
    BEGIN
        IF old IS NULL OR new IS NULL OR new = old
           OR (position('[name]' in new) = 0 AND position('[place]' in new) = 0) THEN
            RETURN false;
        END IF;
        LOOP
            name_at := position('[name]' in rest);
            place_at := position('[place]' in rest);
            IF name_at = 0 AND place_at = 0 THEN
                piece := rest;
                rest := NULL;
            ELSIF place_at = 0 OR (name_at > 0 AND name_at < place_at) THEN
                piece := left(rest, name_at - 1);
                rest := substr(rest, name_at + length('[name]'));
            ELSE
                piece := left(rest, place_at - 1);
                rest := substr(rest, place_at + length('[place]'));
            END IF;
            IF piece <> '' THEN
                found := position(piece in substr(old, at));
                IF found = 0 OR (first AND found <> 1) THEN
                    RETURN false;
                END IF;
                at := at + found - 1 + length(piece);
            END IF;
            first := false;
            EXIT WHEN rest IS NULL;
        END LOOP;
        RETURN true;
    END $$
"""
# Each table's trigger function: the one change it lets through.
_ALLOWED = {
    "transitions": ("transitions_reason_scrub", f"""(to_jsonb(NEW) - 'reason') = (to_jsonb(OLD) - 'reason')
               AND {SCRUB_CHECK}(OLD.reason, NEW.reason)"""),
    # Ops' cancel (retention.BOOKING_REASONS) that has a reason: no other entry's.
    "audit_log": ("audit_log_reason_scrub", f"""(to_jsonb(NEW) - 'details') = (to_jsonb(OLD) - 'details')
               AND OLD.action = 'booking.cancel'
               AND OLD.details ? 'reason'
               AND (NEW.details - 'reason') = (OLD.details - 'reason')
               AND jsonb_typeof(OLD.details -> 'reason') = 'string'
               AND jsonb_typeof(NEW.details -> 'reason') = 'string'
               AND {SCRUB_CHECK}(OLD.details ->> 'reason', NEW.details ->> 'reason')"""),
}
# The functions made here (core.adapters.roles.LEDGER_FUNCTIONS lists them: the service's
# role must not own them).
FUNCTIONS = (SCRUB_CHECK, *(function for function, _ in _ALLOWED.values()))


def _pin(signature: str) -> None:
    """Pinned to the schema, as every function of it (0049)."""
    op.execute(f"DO $$ BEGIN EXECUTE format('ALTER FUNCTION {signature} "
               "SET search_path = %I, pg_temp', current_schema()); END $$")


def upgrade() -> None:
    op.execute(_SCRUB_CHECK_SQL)
    _pin(f"{SCRUB_CHECK}(text, text)")
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
        _pin(f"{function}()")
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                   f"FOR EACH ROW EXECUTE FUNCTION {function}()")


def downgrade() -> None:
    for table, (function, _) in _ALLOWED.items():
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                   "FOR EACH ROW EXECUTE FUNCTION forbid_history_change()")
        op.execute(f"DROP FUNCTION {function}()")
    op.execute(f"DROP FUNCTION {SCRUB_CHECK}(text, text)")

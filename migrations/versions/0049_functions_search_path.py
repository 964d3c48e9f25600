"""the schema's functions look their tables up in the schema only, never in pg_temp

Revision ID: 0049
Revises: 0048

The ledger's checks (ledger_check_posting, ledger_check_entry), ledger_post() and the
other trigger functions name their tables without a schema, so they are looked up along
the caller's search_path, where pg_temp comes first: a session that made a temporary
table named ledger_postings had the balance check read it in place of the real one and
could commit an unbalanced entry. Since session 32 the service's own role may not make
temporary tables (core.adapters.roles), but a check must not rest on a grant someone may
widen later. Each function of the schema now runs with its search_path set to the schema,
then pg_temp (last: listed, it is searched last; unlisted, first). A function a later
migration replaces (CREATE OR REPLACE) loses the setting unless it says it again:
tests/test_app_role_s32.py checks that every one of them has it.
"""

from __future__ import annotations

from alembic import op

revision = "0049"
down_revision = "0048"
branch_labels = None
depends_on = None

# Every function the schema's migrations made (in the schema the tables are in: the
# migrating connection's current schema), with its arguments, pinned or set back. Not an
# extension's (pg_stat_statements, pg_trgm, pgcrypto are often installed in public, owned
# by whoever installed them: on a managed server the migrating role may not alter them,
# and they are not ours to change), nor one the migrating role does not own.
OURS = """
    p.pronamespace = current_schema()::regnamespace AND p.prokind = 'f'
    AND pg_has_role(current_user, p.proowner, 'USAGE')
    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                    AND d.objid = p.oid AND d.deptype = 'e')
"""
EACH_FUNCTION = """
    DO $$
    DECLARE
        f regprocedure;
    BEGIN
        FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
                  WHERE {ours}
                  ORDER BY p.oid LOOP
            EXECUTE format('ALTER FUNCTION %s {action}', f, current_schema());
        END LOOP;
    END $$;
"""


def upgrade() -> None:
    op.execute(EACH_FUNCTION.replace("{ours}", OURS)
               .replace("{action}", "SET search_path = %I, pg_temp"))


def downgrade() -> None:
    op.execute(EACH_FUNCTION.replace("{ours}", OURS).replace("{action}", "RESET search_path"))

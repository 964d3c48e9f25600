"""Two PostgreSQL roles: the schema's owner, which runs the migrations, and the service's
role (web and workers), which uses the tables and owns nothing.

The ledger's checks are triggers and functions (migrations 0002, 0009, 0014, 0023, 0044):
whoever owns a table may disable or drop its triggers, and whoever owns ledger_post() may
replace it. Connected as the owner, the service could turn its own checks off and
rewrite history. As a role that owns nothing, it may read and write the rows as the code
does (SELECT, INSERT, UPDATE, DELETE; sequences; the functions), and on the ledger's two
tables only read and append: TRUNCATE, ALTER, DROP and CREATE OR REPLACE of the owner's
objects are refused to it by PostgreSQL itself ("must be owner"). Nor may it own the
schema or the database: a schema's owner may drop any table or function in it (DROP
FUNCTION ledger_check_posting() CASCADE takes the trigger along), and from PostgreSQL 15
the database's owner owns public (pg_database_owner) and may give itself back whatever
is revoked on the database.

Nor may it create tables anywhere: before migration 0049 the check functions named the
ledger's tables without a schema, and a temporary table (pg_temp comes first in every
search_path) or one in a schema of its own called ledger_postings was read in their
place, so that an unbalanced entry passed. 0049 pins each function to its schema, then
pg_temp; the grant still keeps the service from making tables, so that no check rests on
one of the two alone. The grant takes TEMPORARY on the database away from PUBLIC
(the service makes no temporary tables) and CREATE on the schema and on the database
(a schema named as the owner's role comes first, "$user", in the owner's search_path).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

# The ledger's tables: read and appended to, never changed, whoever writes.
LEDGER_TABLES = ("ledger_transactions", "ledger_postings")
# The ledger's functions, whose owner alone may replace them; and the history's (its
# append-only triggers, and the one change they let an erasure make: migration 0055).
LEDGER_FUNCTIONS = ("ledger_post", "ledger_check_posting", "ledger_check_entry",
                    "forbid_history_change", "history_reason_scrubbed",
                    "transitions_reason_scrub", "audit_log_reason_scrub")
# What the service does to the other tables at run time: rows only. No TRUNCATE (the
# tests' and benchmarks' wipe runs as a superuser), no REFERENCES or TRIGGER (DDL's).
TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"
LEDGER_PRIVILEGES = "SELECT, INSERT"
# Granted on the ledger's tables by hand, or to PUBLIC, these would let the service change
# or empty them: revoked by the grant, and checked after it.
LEDGER_REFUSED = ("UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


class RoleRefused(Exception):
    """The role named cannot be made the service's role (it does not exist, it is a
    superuser, or it owns the schema): what to do instead is in the message."""


@dataclass(frozen=True)
class Granted:
    """What grant_service_role did: to whom, as which owner, in which schema."""

    role: str
    owner: str
    schema: str
    # What the role may still do beyond the service's needs (ledger_powers, shadow_powers):
    # granted through a role it belongs to, or held by PUBLIC where the owner running the
    # grant could not take it away (not the database's owner). Empty when all is well.
    left: tuple[str, ...] = ()


def _quote(conn: Connection, name: str) -> str:
    return str(conn.scalar(text("SELECT quote_ident(:n)"), {"n": name}))


def grant_service_role(conn: Connection, role: str) -> Granted:
    """Give ``role`` what the service needs and nothing more, as the schema's owner (the
    connection's user; ``conn`` in a transaction the caller commits). Idempotent.

    Now and for the tables, sequences and functions the owner creates later (ALTER
    DEFAULT PRIVILEGES: a later migration's table is usable at once): rows of every table,
    the sequences, the functions; on the ledger's tables SELECT and INSERT only, however
    they were granted before. RoleRefused for a role that could get round it anyway;
    what it may still do (granted elsewhere) is in the answer's ``left``.
    """
    row = conn.execute(text(
        "SELECT rolsuper, rolcreaterole, rolname = current_user "
        "FROM pg_roles WHERE rolname = :r"), {"r": role}).one_or_none()
    if row is None:
        raise RoleRefused(f"no role {role!r} on this server: create it first (CREATE ROLE "
                          f"{role} LOGIN PASSWORD '...')")
    if row[0]:
        raise RoleRefused(f"{role!r} is a superuser: it may do anything, triggers or not. "
                          "Give the service a role of its own (NOSUPERUSER)")
    if row[1]:
        # CREATEROLE may grant itself the owner's role, then act as the owner.
        raise RoleRefused(f"{role!r} may create roles (CREATEROLE), and so make itself a "
                          f"member of the owner's: ALTER ROLE {role} NOCREATEROLE first")
    if row[2]:
        raise RoleRefused(f"{role!r} is the owner running this: the service's role must "
                          "be another, which owns nothing")
    groups = _powerful_groups(conn, role)
    if groups:
        raise RoleRefused(f"{role!r} belongs to {', '.join(groups)} (a superuser, or one "
                          "that may create roles and so join the owner's): SET ROLE gets "
                          f"round any grant; REVOKE {', '.join(groups)} FROM {role} first")
    owners = _ledger_owners_reachable(conn, role)
    if owners:
        raise RoleRefused(f"{role!r} owns {', '.join(owners)}, or belongs to its owner: "
                          "give the service another role, which owns nothing")
    owner, schema, database = conn.execute(text(
        "SELECT current_user, current_schema(), current_database()")).one()
    holds = _containers_reachable(conn, role)
    if holds:
        # The schema's owner may drop any table or function in it, CASCADE taking the
        # triggers along; the database's may give itself CREATE back whatever is revoked
        # here, then make a schema, or set the database's search_path.
        raise RoleRefused(
            f"{role!r} owns {' and '.join(what for what, _ in holds)}, or belongs to its "
            "owner: it may drop the ledger's functions and tables. As an administrator: "
            + "; ".join(f"ALTER {thing} OWNER TO {_quote(conn, owner)}" for _, thing in holds)
            + ", or give the service another role")
    who, where = _quote(conn, role), _quote(conn, schema)
    me, db = _quote(conn, owner), _quote(conn, database)
    ledger = ", ".join(f"{where}.{t}" for t in LEDGER_TABLES)
    for statement in (
        f"GRANT CONNECT ON DATABASE {db} TO {who}",
        f"REVOKE CREATE, TEMPORARY ON DATABASE {db} FROM {who}, PUBLIC",
        f"GRANT USAGE ON SCHEMA {where} TO {who}",
        f"REVOKE CREATE ON SCHEMA {where} FROM {who}, PUBLIC",
        f"GRANT {TABLE_PRIVILEGES} ON ALL TABLES IN SCHEMA {where} TO {who}",
        f"REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA {where} FROM {who}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {where} TO {who}",
        f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {where} TO {who}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {me} IN SCHEMA {where} "
        f"GRANT {TABLE_PRIVILEGES} ON TABLES TO {who}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {me} IN SCHEMA {where} "
        f"GRANT USAGE, SELECT ON SEQUENCES TO {who}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {me} IN SCHEMA {where} "
        f"GRANT EXECUTE ON FUNCTIONS TO {who}",
        # After the grant on all tables: the ledger's two are read and appended to only,
        # whether the service got more by the line above, by hand, or through PUBLIC.
        f"REVOKE {', '.join(LEDGER_REFUSED)} ON {ledger} FROM {who}, PUBLIC",
        f"GRANT {LEDGER_PRIVILEGES} ON {ledger} TO {who}",
    ):
        conn.execute(text(statement))
    left = ledger_powers(conn, role) + shadow_powers(conn, role)
    return Granted(role, owner, schema, tuple(left))


def _ledger_owners_reachable(conn: Connection, role: str) -> list[str]:
    """The ledger's tables and functions that ``role`` owns or may act as the owner of
    (a member of the owning role may SET ROLE to it)."""
    return list(conn.scalars(text(
        "SELECT c.relname FROM pg_class c "
        "WHERE c.relname = ANY(:tables) AND c.relkind = 'r' "
        "AND c.relnamespace = to_regnamespace(current_schema()) "
        "AND pg_has_role(:r, c.relowner, 'MEMBER') "
        "UNION ALL "
        "SELECT p.proname || '()' FROM pg_proc p "
        "WHERE p.proname = ANY(:functions) "
        "AND p.pronamespace = to_regnamespace(current_schema()) "
        "AND pg_has_role(:r, p.proowner, 'MEMBER') ORDER BY 1"),
        {"tables": list(LEDGER_TABLES), "functions": list(LEDGER_FUNCTIONS), "r": role}))


def _containers_reachable(conn: Connection, role: str) -> list[tuple[str, str]]:
    """The connection's database and schema if ``role`` owns them or may act as their
    owner: ('the database', 'DATABASE name'), ('schema public', 'SCHEMA public'). From
    PostgreSQL 15 the database's owner owns public too (pg_database_owner): the
    database alone is named then, whose new owner takes public with it."""
    database, schema, owns_database, owns_schema = conn.execute(text(
        "SELECT quote_ident(d.datname), quote_ident(n.nspname), "
        "pg_has_role(:r, d.datdba, 'MEMBER'), pg_has_role(:r, n.nspowner, 'MEMBER') "
        "AND n.nspowner IS DISTINCT FROM to_regrole('pg_database_owner') "
        "FROM pg_database d LEFT JOIN pg_namespace n "
        "ON n.oid = to_regnamespace(current_schema()) WHERE d.datname = current_database()"),
        {"r": role}).one()
    return ([("the database", f"DATABASE {database}")] if owns_database else []) + (
        [(f"schema {schema}", f"SCHEMA {schema}")] if owns_schema else [])


def ledger_powers(conn: Connection, role: str) -> list[str]:
    """The privileges beyond reading and appending that ``role`` holds on the ledger's
    tables (granted to it, to PUBLIC, or to a role it belongs to), as 'UPDATE
    ledger_postings'."""
    found = []
    schema = conn.scalar(text("SELECT quote_ident(current_schema())"))
    for table in LEDGER_TABLES:
        name = f"{schema}.{table}"
        for privilege in LEDGER_REFUSED:
            # A column's UPDATE (or REFERENCES) is enough to change (or pin) rows.
            check = "has_any_column_privilege" if privilege in ("UPDATE", "REFERENCES") \
                else "has_table_privilege"
            if conn.scalar(text(f"SELECT {check}(:r, CAST(:t AS regclass), :p)"),
                           {"r": role, "t": name, "p": privilege}):
                found.append(f"{privilege} {table}")
    return found


def shadow_powers(conn: Connection, role: str) -> list[str]:
    """Where ``role`` may create a table that the ledger's checks would read in place of
    the real one: 'TEMPORARY on the database', 'CREATE on schema x'."""
    found = []
    if conn.scalar(text("SELECT has_database_privilege(:r, current_database(), 'TEMP')"),
                   {"r": role}):
        found.append("TEMPORARY on the database")
    # CREATE SCHEMA: one named as the owner's role comes first ("$user") in the owner's
    # search_path, so that the next migration's tables, or its reads, go there.
    if conn.scalar(text("SELECT has_database_privilege(:r, current_database(), 'CREATE')"),
                   {"r": role}):
        found.append("CREATE on the database")
    found += [f"CREATE on schema {name}" for name in conn.scalars(text(
        "SELECT nspname FROM pg_namespace WHERE has_schema_privilege(:r, oid, 'CREATE') "
        "AND nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' "
        "ORDER BY nspname"), {"r": role})]
    return found


def _powerful_groups(conn: Connection, role: str) -> list[str]:
    """The roles ``role`` belongs to (directly or not) that are superusers or may create
    roles: by SET ROLE it may act as them, and CREATEROLE may grant itself the owner's
    role. Its own attributes are asked apart."""
    return list(conn.scalars(text(
        "SELECT rolname FROM pg_roles WHERE (rolsuper OR rolcreaterole) AND rolname <> :r "
        "AND pg_has_role(:r, oid, 'MEMBER') ORDER BY rolname"), {"r": role}))


def excess_powers(conn: Connection) -> list[str]:
    """What the connection's role may do to the ledger beyond what the service needs:
    'superuser', 'owns the database' (or 'schema public', where it may drop the ledger's
    tables and functions), 'owns ledger_postings' (or may act as its owner), 'may UPDATE
    ledger_postings'. Empty for a service role set up by grant_service_role; a schema
    without the ledger yet (never migrated) gives nothing to say."""
    role, superuser, createrole = conn.execute(text(
        "SELECT current_user, rolsuper, rolcreaterole FROM pg_roles "
        "WHERE rolname = current_user")).one()
    if superuser:
        return ["superuser"]
    found = ["createrole"] if createrole else []
    found += [f"member of {name} (superuser or createrole)"
              for name in _powerful_groups(conn, role)]
    if conn.scalar(text("SELECT to_regclass('ledger_postings')")) is None:
        return found
    found += [f"owns {what}" for what, _ in _containers_reachable(conn, role)]
    owned = [f"owns {name}" for name in _ledger_owners_reachable(conn, role)]
    if owned:  # an owner holds every privilege too: saying so adds nothing
        return found + owned
    return found + [f"may {power}" for power in
                    ledger_powers(conn, role) + shadow_powers(conn, role)]


def warn_if_overpowered(url: str, *, production: bool) -> list[str]:
    """What the role of ``url`` (the service's: DATABASE_URL) may do to the ledger beyond
    the service's needs (excess_powers), warned as a JSON line in production: after each
    release and at a worker's start (core.cli). Warned, not refused: an install upgrading
    keeps working on one role until it sets up two. Quiet outside production: the
    sandbox (`./run serve`'s embedded server, the tests) runs on one role by design. A
    database that does not answer says nothing here; the process says it itself."""
    if not production:
        return []
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            role = str(conn.scalar(text("SELECT current_user")))
            powers = excess_powers(conn)
    except DBAPIError:
        return []
    finally:
        engine.dispose()
    if powers:
        log.warning("the service's database role could turn the ledger's checks off: give "
                    "it a role of its own (README: Setting up production)",
                    extra={"role": role, "powers": powers})
    return powers

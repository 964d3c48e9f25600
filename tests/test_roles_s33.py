"""Session 33: what session 32's two roles left (core.adapters.roles, core.cli's release).

- A database whose CONNECT was taken from PUBLIC: the release asked the service's role
  who it was by connecting as it, before the grant that lets it connect.
- A service role that owns the database (or the schema): it may drop the ledger's
  functions and tables; the grant went on, and said only "CREATE on schema public".
- CREATE on the database: a schema named as the owner's role comes first in the owner's
  search_path.
- ./run's embedded server drops a MIGRATE_DATABASE_URL left in the shell (ops/embedded.py).

Each database test makes its own roles (rc_h2_...) and drops them at its end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from core import cli
from core.adapters import db as db_adapter
from core.adapters import roles
from core.config import load_settings, reset_settings
from ops import embedded, supervisor

SERVICE_ROLE = f"rc_h2_app_{os.getpid()}"
GROUP_ROLE = f"rc_h2_group_{os.getpid()}"


def _as(url: str, role: str) -> str:
    return make_url(url).set(username=role).render_as_string(hide_password=False)


def _sql(url: str, *statements: str) -> None:
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


def _use_database(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    reset_settings()
    db_adapter.dispose_all()


@pytest.fixture
def owner_url(clean_db) -> Iterator[str]:
    """The suite's DATABASE_URL (a superuser, the database's owner); afterwards the
    database as it was (its owner, public's owner, PUBLIC's CONNECT and TEMPORARY) and
    this file's roles dropped."""
    url = os.environ["DATABASE_URL"]
    owner = make_url(url).username
    database = f'"{make_url(url).database}"'
    yield url
    _use_database(url)
    _sql(url, f"ALTER DATABASE {database} OWNER TO {owner}",
         "ALTER SCHEMA public OWNER TO pg_database_owner",
         f"GRANT CONNECT, TEMPORARY ON DATABASE {database} TO PUBLIC")
    for role in (SERVICE_ROLE, GROUP_ROLE):
        _sql(url, f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') "
                  f"THEN EXECUTE 'DROP OWNED BY {role}'; EXECUTE 'DROP ROLE {role}'; "
                  "END IF; END $$")


def _connects(url: str) -> bool:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.scalar(text("SELECT current_user")) is not None
    except OperationalError:
        return False
    finally:
        engine.dispose()


@pytest.mark.db
def test_a_first_release_where_public_may_not_connect_grants_the_service_role(
        owner_url, monkeypatch, caplog):
    """CONNECT taken from PUBLIC on the database: the release connected as DATABASE_URL's
    role to ask who it was, before the grant gives it CONNECT, and failed. The URL's user
    is the role then (the owner sees it lacks CONNECT), and the grant gives CONNECT."""
    caplog.set_level(logging.INFO, logger="core.cli")
    database = f'"{make_url(owner_url).database}"'
    _sql(owner_url, f"CREATE ROLE {SERVICE_ROLE} LOGIN",
         f"REVOKE CONNECT ON DATABASE {database} FROM PUBLIC")
    service_url = _as(owner_url, SERVICE_ROLE)
    assert not _connects(service_url)
    monkeypatch.setenv("MIGRATE_DATABASE_URL", owner_url)
    _use_database(service_url)
    try:
        assert cli.main(["release"]) == 0
        assert [r.role for r in caplog.records if r.getMessage() == "service role granted"
                ] == [SERVICE_ROLE]
        with db_adapter.engine().connect() as conn:
            assert conn.scalar(text("SELECT current_user")) == SERVICE_ROLE
            assert conn.scalar(text("SELECT count(*) FROM points")) > 0  # the seed's
            assert roles.excess_powers(conn) == []
        # Released again, it connects and is asked as before.
        assert cli.main(["release"]) == 0
    finally:
        monkeypatch.delenv("MIGRATE_DATABASE_URL")
        _use_database(owner_url)


@pytest.mark.db
def test_a_service_role_refused_for_another_reason_still_stops_the_release(
        owner_url, monkeypatch):
    """Only a role lacking CONNECT is taken from the URL: one that may not log in (as a
    wrong password) stops the release as before, granted nothing."""
    _sql(owner_url, f"CREATE ROLE {SERVICE_ROLE} NOLOGIN")
    monkeypatch.setenv("MIGRATE_DATABASE_URL", owner_url)
    _use_database(_as(owner_url, SERVICE_ROLE))
    try:
        assert cli.main(["release"]) == 1
    finally:
        monkeypatch.delenv("MIGRATE_DATABASE_URL")
        _use_database(owner_url)
    engine = create_engine(owner_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            assert not conn.scalar(text(
                "SELECT has_table_privilege(:r, 'bookings', 'SELECT')"), {"r": SERVICE_ROLE})
    finally:
        engine.dispose()


@pytest.mark.db
@pytest.mark.parametrize("owns", ["the database", "schema public"])
def test_a_service_role_that_owns_the_database_or_schema_is_refused_and_warned(
        owner_url, monkeypatch, caplog, owns):
    """Found on PostgreSQL 15: the database's owner owns public (pg_database_owner), and a
    schema's owner may drop any table or function in it; DROP FUNCTION ... CASCADE takes
    the ledger's trigger with it. The grant went on, leaving 'CREATE on schema public'
    and a warning whose advice (revoke it) cannot be followed. Refused now, and warned."""
    database = f'"{make_url(owner_url).database}"'
    _sql(owner_url, f"CREATE ROLE {SERVICE_ROLE} LOGIN",
         f"ALTER DATABASE {database} OWNER TO {SERVICE_ROLE}" if owns == "the database"
         else f"ALTER SCHEMA public OWNER TO {SERVICE_ROLE}")
    service_url = _as(owner_url, SERVICE_ROLE)
    service = create_engine(service_url, poolclass=NullPool)
    try:
        with service.connect() as conn, conn.begin() as tx:  # the fact, left undone
            conn.execute(text("DROP FUNCTION ledger_check_posting() CASCADE"))
            assert conn.scalar(text(
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'ledger_postings_balanced'"
            )) == 0
            tx.rollback()
    finally:
        service.dispose()
    with pytest.raises(roles.RoleRefused, match=f"owns {owns}, or belongs to its owner"):
        cli.grant_service_role(SERVICE_ROLE)

    caplog.set_level(logging.INFO)
    monkeypatch.setenv("MIGRATE_DATABASE_URL", owner_url)
    _use_database(service_url)
    try:
        assert cli.main(["release"]) == 1
        [stopped] = [r for r in caplog.records if "release stops" in r.getMessage()]
        assert f"owns {owns}" in stopped.reason and "OWNER TO" in stopped.reason
    finally:
        monkeypatch.delenv("MIGRATE_DATABASE_URL")
        _use_database(owner_url)
    assert f"owns {owns}" in roles.warn_if_overpowered(service_url, production=True)


@pytest.mark.db
def test_create_on_the_database_is_said_as_a_way_round(owner_url):
    """CREATE on the database lets the service make a schema named as the owner's role:
    "$user" comes first in the owner's search_path, so the next migration's tables or
    reads would go there. The grant takes it from the role and PUBLIC; granted through a
    group, it is left over and said."""
    owner = make_url(owner_url).username
    database = f'"{make_url(owner_url).database}"'
    _sql(owner_url, f"CREATE ROLE {SERVICE_ROLE} LOGIN", f"CREATE ROLE {GROUP_ROLE} NOLOGIN",
         f"GRANT CREATE ON DATABASE {database} TO {GROUP_ROLE}",
         f"GRANT {GROUP_ROLE} TO {SERVICE_ROLE}")
    engine = create_engine(owner_url, poolclass=NullPool)
    try:
        with engine.connect() as conn, conn.begin() as tx:  # the fact, left undone
            conn.execute(text(f"SET LOCAL ROLE {SERVICE_ROLE}"))
            conn.execute(text(f'CREATE SCHEMA "{owner}"'))
            conn.execute(text("RESET ROLE"))
            assert conn.scalar(text("SELECT current_schema()")) == owner
            tx.rollback()
    finally:
        engine.dispose()
    assert cli.grant_service_role(SERVICE_ROLE).left == ("CREATE on the database",)
    _sql(owner_url, f"REVOKE {GROUP_ROLE} FROM {SERVICE_ROLE}")
    assert cli.grant_service_role(SERVICE_ROLE).left == ()


# --- ./run's embedded server and a MIGRATE_DATABASE_URL left in the shell ----------------


class _FakePostgres:
    """Stands for EmbeddedPostgres: what ./run passes on is asked, no server started."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata

    def start(self) -> None:
        pass

    def url(self) -> str:
        return "postgresql://postgres@/ridechain?host=/tmp/embedded"

    def stop(self) -> None:
        pass


@pytest.fixture
def shell(monkeypatch, tmp_path) -> Path:
    """A shell with no DATABASE_URL (./run starts its own server) and an install's
    MIGRATE_DATABASE_URL left in it; the data folder a fresh one."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("MIGRATE_DATABASE_URL", "postgresql://owner@db.internal/ridechain")
    monkeypatch.setattr(embedded, "EmbeddedPostgres", _FakePostgres)
    return tmp_path


def _passed_on(services: embedded.Services) -> dict[str, str]:
    env = supervisor.child_env(services)
    settings = load_settings(env)
    assert settings.owner_database_url == settings.database_url, env["MIGRATE_DATABASE_URL"]
    return env


def test_run_on_its_own_server_drops_a_migrate_url_left_in_the_shell(shell):
    """Session 32 (5ff0fc3), untested: `./run migrate` on the embedded server it starts
    would have migrated the MIGRATE_DATABASE_URL's server instead."""
    with embedded.services_for("migrate") as services:
        env = _passed_on(services)
        assert env["DATABASE_URL"] == _FakePostgres(shell).url()
        assert env["MIGRATE_DATABASE_URL"] == ""


def test_run_on_a_running_serves_server_drops_a_migrate_url_left_in_the_shell(shell):
    """The same when `./run migrate` reuses the server of a running `./run serve`."""
    serve = embedded.Lock(shell / embedded.LOCK_NAME)
    assert serve.try_acquire("serve")
    try:
        embedded.write_state(shell, {"pid": os.getpid(), "command": "serve", "ready": True,
                                     "database_url": _FakePostgres(shell).url(),
                                     "redis_url": None})
        with embedded.services_for("migrate") as services:
            assert not services.owner
            env = _passed_on(services)
            assert env["DATABASE_URL"] == _FakePostgres(shell).url()
            assert env["MIGRATE_DATABASE_URL"] == ""
    finally:
        serve.release()


def test_run_on_an_external_database_keeps_the_migrate_url(shell, monkeypatch):
    """With DATABASE_URL set ./run starts nothing, and MIGRATE_DATABASE_URL is the
    install's to use."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db.internal/ridechain")
    with embedded.services_for("migrate") as services:
        env = supervisor.child_env(services)
        assert env["MIGRATE_DATABASE_URL"] == "postgresql://owner@db.internal/ridechain"


"""Releases run at once (two deploys, or the release phase on every dyno): migrate takes
an advisory lock, seed takes one, and two that create the database at once both go on.

Each test has a scratch database of its own (ridechain_f5_<what>_<pid>), dropped after.
The releases are real processes (`python -m core.cli release|seed`), or threads where
the code runs no Alembic. The interleaving that broke the old code is forced with locks
the test holds, released once every process is seen waiting in pg_stat_activity."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

from core import cli
from core.adapters.redis_conn import redis_client
from core.config import ROOT, get_settings

pytestmark = pytest.mark.db

REPO = Path(__file__).resolve().parent.parent
BOUND_S = 120  # a bound for a broken run, never a wait the test relies on


def server_url(database: str) -> str:
    """This run's PostgreSQL server, the given database."""
    url = make_url(get_settings().database_url).set(database=database)
    return url.render_as_string(hide_password=False)


@pytest.fixture
def scratch(request) -> Iterator[str]:
    """The name of a database for this test alone, absent at the start, dropped after;
    this run's Redis database is emptied after too, as clean_db does (a seed's commit
    marks its partners' cached facts there)."""
    name = f"ridechain_f5_{request.node.name[5:25].lower()}_{os.getpid()}"
    admin = create_engine(server_url("postgres"), isolation_level="AUTOCOMMIT")

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    drop()
    try:
        yield name
    finally:
        drop()
        admin.dispose()
        redis_client().flushdb()


def autocommit(engine: Engine) -> Connection:
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def create(name: str) -> None:
    admin = create_engine(server_url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def upgrade(url: str, revision: str) -> None:
    from alembic import command

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["url"] = url
    command.upgrade(cfg, revision)


def start(*argv: str, database: str) -> subprocess.Popen[str]:
    """``python -m core.cli <argv>`` in the sandbox, on ``database``."""
    env = {**os.environ, "APP_ENV": "sandbox", "LOG_LEVEL": "INFO",
           "DATABASE_URL": server_url(database), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "core.cli", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(processes: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    """Each process's exit status and output, once it has ended."""
    outputs = [p.communicate(timeout=BOUND_S)[0] for p in processes]
    return [(p.returncode, out) for p, out in zip(processes, outputs, strict=True)]


def stop(processes: list[subprocess.Popen[str]]) -> None:
    for p in processes:
        if p.poll() is None:
            p.kill()
            p.communicate()


def wait_for_lock_waiters(watch: Connection, n: int, alive: Callable[[], bool],
                          where: str = "") -> set[int]:
    """Until ``n`` backends of ``watch``'s database have each been seen waiting for a lock
    (``where`` narrows which), while ``alive()``; the pids seen. A lock given up and asked
    for again (migrate's windows) counts once: its pid is remembered."""
    seen: set[int] = set()
    until = time.monotonic() + BOUND_S
    while len(seen) < n and alive() and time.monotonic() < until:
        seen |= set(watch.scalars(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            f"AND wait_event_type = 'Lock' AND pid <> pg_backend_pid() {where}")))
        time.sleep(0.01)  # a poll interval: the condition above decides
    return seen


def head_revision() -> str:
    return ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_current_head()


def test_releases_at_once_upgrade_one_after_the_other(scratch):
    """Three releases on a database one migration behind. The test holds alembic_version
    so that each upgrade stops at its last step until all three are under way: without a
    lock all three run the migration, and all but one then fail (the index exists, or
    the version row was moved). With it, one upgrades, the others wait, then find nothing
    to do; then each seeds, and the demo data goes in once."""
    create(scratch)
    url = server_url(scratch)
    script = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    head = script.get_revision(head_revision())
    assert isinstance(head.down_revision, str), "the head is a merge; pick another case"
    upgrade(url, head.down_revision)
    engine = create_engine(url)
    processes: list[subprocess.Popen[str]] = []
    try:
        with engine.connect() as holder, autocommit(engine) as watch:
            holder.execute(text("LOCK TABLE alembic_version IN EXCLUSIVE MODE"))
            processes = [start("release", database=scratch) for _ in range(3)]
            waiting = wait_for_lock_waiters(
                watch, 3, lambda: all(p.poll() is None for p in processes))
            assert len(waiting) == 3, finish(processes)
            holder.commit()
            results = finish(processes)
            assert [code for code, _ in results] == [0, 0, 0], results
            for _, out in results:
                assert "Traceback" not in out and "UniqueViolation" not in out, out
            upgrading = [out for _, out in results if "Running upgrade" in out]
            assert len(upgrading) == 1, results
            assert watch.scalars(text("SELECT version_num FROM alembic_version")).all() == [
                head.revision]
            assert watch.scalar(text("SELECT count(*) FROM rate_cards")) == 1
            assert watch.scalar(text("SELECT count(*) FROM partner_profiles")) == 8
    finally:
        stop(processes)
        engine.dispose()


def test_seeds_at_once_add_the_demo_data_once(scratch):
    """Three seeds at once (a release each). The test holds rate_cards against writes:
    without a lock each looks, finds no demo rate card, and stops at its insert; let go,
    one inserts and the others fail on the unique name (the reviewer's three releases).
    With the lock one seeds while the others wait, then find the demo data there."""
    create(scratch)
    url = server_url(scratch)
    upgrade(url, "heads")
    engine = create_engine(url)
    processes: list[subprocess.Popen[str]] = []
    try:
        with engine.connect() as holder, autocommit(engine) as watch:
            holder.execute(text("LOCK TABLE rate_cards IN SHARE MODE"))
            processes = [start("seed", database=scratch) for _ in range(3)]
            waiting = wait_for_lock_waiters(
                watch, 3, lambda: all(p.poll() is None for p in processes))
            assert len(waiting) == 3, finish(processes)
            holder.commit()
            results = finish(processes)
            assert [code for code, _ in results] == [0, 0, 0], results
            assert watch.scalar(text("SELECT count(*) FROM rate_cards")) == 1
            assert watch.scalar(text("SELECT count(*) FROM points")) == 8
            assert watch.scalar(text("SELECT count(*) FROM partner_profiles")) == 8
    finally:
        stop(processes)
        engine.dispose()


def test_a_waiting_migrate_does_not_hold_up_a_concurrent_index_for_ever(scratch):
    """While one migrate holds the lock and builds an index CONCURRENTLY, a second one
    waits for the lock. CREATE INDEX CONCURRENTLY waits for every older snapshot in the
    database, and a statement waiting for a lock holds one: a single long wait would stop
    the first migrate for ever (PostgreSQL cannot see the cycle, which goes through the
    first migrate's own process). The second waits a window at a time instead."""
    create(scratch)
    url = server_url(scratch)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    got_it = threading.Event()
    failed: list[BaseException] = []

    def second_migrate() -> None:
        try:
            with cli.migration_lock(url):
                got_it.set()
        except BaseException as err:  # noqa: BLE001 (reported by the test below)
            failed.append(err)

    second = threading.Thread(target=second_migrate)
    try:
        with engine.connect() as conn, engine.connect() as watch:
            conn.execute(text("CREATE TABLE t (x int)"))
            with cli.migration_lock(url):
                second.start()
                waiting = wait_for_lock_waiters(watch, 1, second.is_alive, where=(
                    "AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' "
                    f"AND objid = {cli.MIGRATE_LOCK_KEY} AND NOT granted)"))
                assert waiting, failed
                assert not got_it.is_set()
                conn.execute(text("SET statement_timeout = '30s'"))  # a bound, not a wait
                conn.execute(text("CREATE INDEX CONCURRENTLY ix_t_x ON t (x)"))
                assert not got_it.is_set()  # still waiting, for the holder only
            second.join(BOUND_S)
            assert got_it.is_set() and not failed, failed
    finally:
        if second.is_alive():
            second.join(BOUND_S)
        engine.dispose()


def test_two_releases_creating_the_database_at_once_both_go_on(scratch):
    """Neither finds the database, both create it. PostgreSQL looks for the name before
    it inserts it, so the loser's CREATE DATABASE fails on pg_database's unique index
    (23505), not with duplicate_database (42P04): the old code then told the operator to
    create the database by hand. The test holds pg_database against writes until both
    have looked, forcing exactly that."""
    url = server_url(scratch)
    results: list[object] = []

    def ensure() -> None:
        try:
            results.append(cli.ensure_database(url))
        except SystemExit as err:
            results.append(f"SystemExit: {err}")

    admin = create_engine(server_url("postgres"))
    threads = [threading.Thread(target=ensure) for _ in range(2)]
    try:
        with admin.connect() as holder, autocommit(admin) as watch:
            holder.execute(text("LOCK TABLE pg_database IN SHARE MODE"))
            for t in threads:
                t.start()
            waiting = wait_for_lock_waiters(
                watch, 2, lambda: all(t.is_alive() for t in threads),
                where=f"AND query LIKE 'CREATE DATABASE \"{scratch}\"%'")
            holder.commit()
            for t in threads:
                t.join(BOUND_S)
            assert len(waiting) == 2, results
        assert sorted(results, key=str) == [False, True], results
        created = create_engine(url)
        with created.connect() as conn:
            assert conn.scalar(text("SELECT current_database()")) == scratch
        created.dispose()
    finally:
        admin.dispose()

"""Review r2: upgrading a live database, and what the schema holds by itself.

Each test that migrates has a scratch database of its own (ridechain_r2_<what>_<pid>, on
this run's server), built at a revision with plain SQL rows, dropped after. The helpers
are those of tests/test_migrations_live.py and tests/test_release_safety.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from core.adapters.db import engine as app_engine
from tests.test_migrations_live import LOCK_TIMEOUT_MS, admin, alembic_config, server_url, upgrade
from tests.test_release_safety import finish, start, stop

pytestmark = pytest.mark.db


@pytest.fixture
def scratch(request) -> Iterator[str]:
    """An empty database of this test's own (its name), dropped after."""
    name = f"ridechain_r2_{request.node.name[5:28].lower()}_{os.getpid()}"
    name = "".join(c if c.isalnum() else "_" for c in name)
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url, LOCK_TIMEOUT_MS, []), revision)


# --------------------------------------------------------------- a database ahead of the code


def test_migrate_of_the_previous_release_on_a_database_a_release_ahead_changes_nothing(
        scratch):
    """A rollback: release N+1 migrated the database to its new revision (kept compatible
    with release N, expand-then-contract, migrations/README.md), then the operator rolls
    back to release N. Heroku-style platforms run the Procfile's `release` (migrate) on a
    rollback too, and `./run serve` migrates at start. /readyz and the set-up commands
    already treat a database ahead of the code as fine (core.web.ops.schema_state), but
    `migrate` hands Alembic "upgrade heads" with a revision it cannot locate: the
    release fails with a CommandError traceback and the rollback never starts. It should
    say the database is ahead of this code, change nothing, and exit 0."""
    from core.web.ops import code_revisions

    # The next release's revision, one this code does not know (0042 was, when written).
    ahead = f"{max(int(head) for head in code_revisions()[1]) + 1:04d}"
    url = server_url(scratch)
    upgrade(url, "heads")
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": ahead})
        processes = [start("migrate", database=scratch)]
        try:
            [(code, out)] = finish(processes)
        finally:
            stop(processes)
        with engine.connect() as conn:
            at = conn.scalar(text("SELECT version_num FROM alembic_version"))
    finally:
        engine.dispose()
    assert "Traceback" not in out, out[-1500:]
    assert code == 0, out[-1500:]
    assert at == ahead
    assert "database is ahead of this code; nothing to do" in out, out[-1500:]


# --------------------------------------------------------------- history the database keeps


def test_the_audit_log_refuses_truncate_as_the_ledger_and_transitions_do(clean_db):
    """README: operators' actions are audited and 'the audit log stays'; audit_log is
    append-only by a row trigger (0005). Migration 0014 found that row triggers miss
    TRUNCATE and closed it on transitions and the ledger, but not on audit_log: one
    `TRUNCATE audit_log` by the application's role (a slip at a psql prompt, or anyone
    with the service's credentials covering their tracks) empties the whole record of
    who erased, refunded and took over what. It should be refused like the others."""
    with app_engine().begin() as conn:
        conn.execute(text("INSERT INTO audit_log (actor, action, target, details) "
                          "VALUES ('ops:1', 'recipient.erase', 'person:7', '{}')"))
    with app_engine().connect() as conn:
        with pytest.raises(DBAPIError):  # the ledger's tables refuse it, as they should
            conn.execute(text("TRUNCATE ledger_postings"))
        conn.rollback()
        try:
            conn.execute(text("TRUNCATE audit_log"))
            conn.commit()
        except DBAPIError:
            conn.rollback()
    with app_engine().connect() as conn:
        kept = conn.scalar(text("SELECT count(*) FROM audit_log"))
    assert kept == 1, "TRUNCATE audit_log went through: the audit record is gone"


# --------------------------------------------------------------- downgrade, then upgrade again


def test_a_downgrade_and_upgrade_keep_the_stops_of_erased_numbers(scratch):
    """0032 keeps a STOP past the erasure of the person who sent it (number_opt_outs,
    under a hash of the number), so that a person made anew for that number is not
    written to. Its downgrade drops the table: rolled back past 0032 and upgraded again
    (the table comes back empty), every such number is written to again - a customer
    who said STOP gets booking news and a rider gets SMS. The previous release never
    reads the table and 0032's upgrade is create-if-not-exists, so nothing obliges the
    loss: the opt-outs should still be there after the round trip (or the downgrade
    refuse, as the ledger's downgrades do when they hold what the old schema cannot)."""
    url = server_url(scratch)
    upgrade(url, "0032")
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO number_opt_outs (number_hash, whatsapp, sms) VALUES "
                "(repeat('a', 64), true, true), (repeat('b', 64), false, true)"))
        try:
            downgrade(url, "0031")
        except RuntimeError:
            return  # refused, naming what it would lose: as good
        upgrade(url, "heads")
        with engine.connect() as conn:
            kept = conn.execute(text(
                "SELECT left(number_hash, 1), whatsapp, sms FROM number_opt_outs "
                "ORDER BY 1")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in kept] == [("a", True, True), ("b", False, True)]


# --------------------------------------------------------------- a release beside the ledger


def test_a_migration_that_deadlocks_with_a_ledger_write_is_run_again_not_failed(scratch):
    """0023 (as 0027) locks ledger_transactions first (its constraint trigger), then
    waits for ledger_postings. A payment's transaction that read a balance (it holds
    ledger_postings) and then writes its entry (it needs ledger_transactions) closes a
    cycle: ledger_post() itself reads both before it inserts. PostgreSQL breaks it after
    deadlock_timeout (1 s), below env.py's lock_timeout (2 s), in the migration, which
    waited first: 40P01, deadlock_detected. env.py retries only 55P03, so the release
    fails with a traceback and the deploy stops, for what migrations/README.md says is
    'rolled back and run again'. It should be run again like a lock timeout and go
    through once the payment is done."""
    from tests.test_migrations_live import Upgrade, autocommit, wait_until, waiting_on

    url = server_url(scratch)
    upgrade(url, "0022")
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as payment, autocommit(engine) as watch:
            assert watch.scalar(text("SHOW deadlock_timeout")) == "1s"  # the default
            payment.execute(text("SET statement_timeout = '20s'"))  # a bound, not a wait
            # PostgreSQL breaks a deadlock in the waiter whose check (after its own
            # deadlock_timeout) runs first. The migration waits first, but only by a poll
            # or two: on a busy machine the payment's check could come first, and the
            # payment would fail instead. A payment that waits longer leaves no doubt.
            payment.execute(text("SET deadlock_timeout = '10s'"))
            payment.execute(text("SELECT coalesce(sum(amount_paise), 0) FROM ledger_postings "
                                 "WHERE account = 'escrow:b1'"))
            up = Upgrade(url, "0023", lock_timeout_ms=2000,  # env.py's LOCK_TIMEOUT_MS
                         retry_waits=[0, 0, 0])
            up.start()
            wait_until(watch, waiting_on("ledger_postings"), up)
            # The entry's insert: what ledger_post() takes on ledger_transactions.
            payment.execute(text("LOCK TABLE ledger_transactions IN ROW EXCLUSIVE MODE"))
            payment.rollback()
            error = up.finish()
            at = watch.scalar(text("SELECT version_num FROM alembic_version"))
    finally:
        engine.dispose()
    assert error is None, f"the release failed: {error!r}"
    assert at == "0023"

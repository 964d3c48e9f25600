"""PostgreSQL engine and sessions: one transaction per use case."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.orm import Session, sessionmaker

from core.adapters import priority
from core.config import get_settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_engines: dict[str, tuple[Engine, sessionmaker[Session]]] = {}

# A pooled connection idle for longer than this is pinged before it is handed out. A busy
# process never pays the ping (one round trip per transaction was ~9 % of a WhatsApp
# turn); a connection that sat idle, as after a PostgreSQL restart overnight, is checked.
# A server that goes away under load fails the statement in flight instead: SQLAlchemy
# then invalidates the whole pool, the caller answers 503 or RQ retries, and the next
# checkout connects afresh.
PING_IDLE_S = 10.0


def _ping_if_idle(dbapi_conn: Any, record: Any, proxy: Any) -> None:
    last = record.info.get("checked_in_at")
    if last is None or time.monotonic() - last < PING_IDLE_S:
        return
    try:
        autocommit = dbapi_conn.autocommit
        dbapi_conn.autocommit = True
        try:
            dbapi_conn.execute("SELECT 1")
        finally:
            if not dbapi_conn.closed:
                dbapi_conn.autocommit = autocommit
    except Exception as err:
        # The pool discards this connection and checks out another (or a new one).
        raise exc.DisconnectionError("stale pooled connection") from err


def _note_checkin(dbapi_conn: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


# A background process runs below the web's CPU priority (WORKER_NICE), but the work of its
# statements is done by its PostgreSQL backends, each in a session of its own at the
# server's priority (see core.adapters.priority). So a niced process lowers its own
# backends to its niceness where it can: the server is on this machine (a Unix socket or
# loopback), the pid it names for the connection is a `postgres` process whose parent is
# one too and which holds the other end of this very connection (not a pooler's, a
# tunnel's or a container's process of the same number), and the OS allows it (the same
# user, or CAP_SYS_NICE). Anywhere else (a managed database) nothing changes. The kernel
# still runs a lowered backend that holds a lock someone waits for, with a smaller share
# of a busy core.
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_lowering_failed = False


def _backend_at_client_priority(dbapi_conn: Any, record: Any) -> None:
    global _lowering_failed
    ours = priority.niceness(0)
    if ours <= 0:
        return
    info = dbapi_conn.info
    host = info.host or ""
    if not (host.startswith("/") or host in LOCAL_HOSTS):
        return
    pid = info.backend_pid
    try:
        if (priority.process_name(pid) == b"postgres"
                and priority.process_name(priority.parent(pid)) == b"postgres"
                and priority.serves_connection(pid, dbapi_conn.pgconn.socket)):
            priority.lower(pid, ours)
            # A parallel query's workers are backends of their own, started at the
            # server's priority: they would run the lowered statements at the web's.
            dbapi_conn.execute("SET max_parallel_workers_per_gather = 0")
            dbapi_conn.commit()
    except Exception as err:  # never a reason to refuse the connection
        if not _lowering_failed:
            _lowering_failed = True
            log.info("database backends keep the server's priority",
                     extra={"reason": type(err).__name__})


POOL_MIN = 5
POOL_MAX = 32


def pool_size() -> int:
    """Connections a process keeps: as many per thread as it may hold at a time (gunicorn's
    ``WEB_THREADS`` one each; a drainer job's ``DRAIN_THREADS`` two each: a reply sent at
    once holds its address's turn on one while it records the send on another), plus
    one for the process's own work, at least POOL_MIN. A pool smaller than that opens and
    closes overflow connections all the time, a new PostgreSQL backend each."""
    wanted = POOL_MIN
    for name, each in (("WEB_THREADS", 1), ("DRAIN_THREADS", 2)):
        raw = os.environ.get(name, "").strip()
        if raw.isascii() and raw.isdigit():
            wanted = max(wanted, int(raw) * each + 1)
    return min(wanted, POOL_MAX)


def _get(url: str) -> tuple[Engine, sessionmaker[Session]]:
    with _lock:
        if url not in _engines:
            eng = create_engine(
                url,
                # No pre-ping on every checkout: _ping_if_idle checks idle ones only.
                pool_pre_ping=False,
                pool_size=pool_size(),
                max_overflow=5,
                pool_timeout=5,
                # A logged database error must not carry its statement's values: phone
                # numbers, names, message bodies with codes in them.
                hide_parameters=True,
                # PGAPPNAME (libpq's own variable) names a process's connections apart,
                # as the benchmarks do for the emulators.
                connect_args={"connect_timeout": 3,
                              "application_name": os.environ.get("PGAPPNAME") or "ridechain"},
            )
            event.listen(eng, "connect", _backend_at_client_priority)
            event.listen(eng, "checkout", _ping_if_idle)
            event.listen(eng, "checkin", _note_checkin)
            _engines[url] = (eng, sessionmaker(bind=eng, expire_on_commit=False))
        return _engines[url]


def engine() -> Engine:
    """The engine for the configured DATABASE_URL."""
    return _get(get_settings().database_url)[0]


def session_factory() -> sessionmaker[Session]:
    return _get(get_settings().database_url)[1]


@contextmanager
def transaction() -> Iterator[Session]:
    """One unit of work: commits when the block ends, rolls back if it raises."""
    with session_factory().begin() as session:
        yield session


@contextmanager
def autocommit() -> Iterator[Connection]:
    """A connection for one statement that is its own transaction: no BEGIN and COMMIT
    round trips around it (recording a send's outcome, for one)."""
    with engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


class ReadOnlyDatabase(Exception):
    """PostgreSQL answers but takes no writes: a standby (the old primary after a failover
    that left DATABASE_URL on it), or a database or server set read-only."""


def ping() -> None:
    """Raise if PostgreSQL cannot answer a trivial query, ReadOnlyDatabase if it answers
    but would refuse every write (reads and SELECT 1 still work there). One round trip."""
    with engine().connect() as conn:
        recovery, read_only = conn.execute(text(
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")).one()
    if recovery:
        raise ReadOnlyDatabase("a standby in recovery")
    if read_only != "off":
        raise ReadOnlyDatabase("transactions are read-only")


# SQLSTATEs of a server that answered but cannot take our work now, in classes other than
# OperationalError's: 25006 read_only_sql_transaction (a write, nextval() or an advisory
# lock on a standby or in a database set read-only; psycopg's ReadOnlySqlTransaction, an
# InternalError). Class 57 (shutdown, "starting up") and 40001 (a conflict with recovery)
# are OperationalErrors already.
AWAY_SQLSTATES = frozenset({"25006"})


def database_away(err: BaseException) -> bool:
    """PostgreSQL cannot serve us now (unreachable, shutting down, or refusing writes):
    retrying later may succeed, and the transaction saved nothing. Not an error of ours
    (a bad statement, a constraint): retrying those changes nothing."""
    if isinstance(err, exc.OperationalError | exc.InterfaceError):
        return True
    if not isinstance(err, exc.DBAPIError):
        return False
    orig = err.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state in AWAY_SQLSTATES


def dispose_all() -> None:
    """Close every pooled connection (after a fork, and when tests switch databases)."""
    with _lock:
        for eng, _ in _engines.values():
            eng.dispose()
        _engines.clear()


def wipe_all_tables() -> None:
    """Empty every table (test and benchmark set-up only; needs a superuser). The
    append-only tables refuse TRUNCATE through ordinary triggers; the replica role, for
    this transaction only, skips them as a restore would."""
    from core.adapters.models import Base

    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine().begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))

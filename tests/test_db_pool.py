"""The connection pool: no ping for a busy connection, a ping for one that sat idle, and a
server that dropped a connection costs one failed statement, not a broken process."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from core.adapters import db

pytestmark = pytest.mark.db


def _backend_pid() -> int:
    with db.transaction() as session:
        return session.execute(text("SELECT pg_backend_pid()")).scalar_one()


def _terminate(pid: int) -> None:
    """Drop one server connection, as a PostgreSQL restart or a proxy timeout would."""
    url = make_url(db.engine().url.render_as_string(hide_password=False))
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
        # pg_terminate_backend only signals; wait until the backend is really gone. A
        # transaction sees pg_stat_activity as of its first read, so the loop must drop
        # that snapshot each time round, or a backend still there at the first look is
        # seen forever (this hung CI once). Bounded: a backend that never goes fails.
        conn.execute(text(
            "DO $$ DECLARE deadline timestamptz := clock_timestamp() + interval '10 s'; "
            "BEGIN WHILE EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = "
            f"{int(pid)}) AND clock_timestamp() < deadline LOOP "
            "PERFORM pg_sleep(0.01); PERFORM pg_stat_clear_snapshot(); END LOOP; END $$"))
        gone = conn.execute(text("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity "
                                 f"WHERE pid = {int(pid)})")).scalar_one()
        assert gone, f"backend {pid} still there 10 s after it was terminated"
    admin.dispose()


@pytest.fixture
def one_connection(clean_db: None):
    """A fresh pool: used one transaction at a time, it hands out the same connection."""
    db.dispose_all()
    yield
    db.dispose_all()


def test_an_idle_connection_is_pinged_and_replaced_when_the_server_dropped_it(
        one_connection: None, monkeypatch: pytest.MonkeyPatch):
    first = _backend_pid()
    _terminate(first)
    monkeypatch.setattr(db, "PING_IDLE_S", 0.0)  # every checked-in connection counts as idle

    second = _backend_pid()  # the ping fails, the pool connects afresh: no error

    assert second != first


def test_a_busy_connection_is_not_pinged_and_a_dropped_one_fails_once(
        one_connection: None, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(db, "PING_IDLE_S", 3600.0)
    first = _backend_pid()
    _terminate(first)

    with pytest.raises(OperationalError):  # no ping: the statement meets the dead socket
        _backend_pid()
    second = _backend_pid()  # the pool was invalidated; the next checkout reconnects

    assert second != first


def test_only_an_idle_connection_costs_the_ping(one_connection: None,
                                                monkeypatch: pytest.MonkeyPatch):
    import psycopg

    pings: list[str] = []
    real_execute = psycopg.Connection.execute

    def spy(self, query, *args, **kwargs):  # SQLAlchemy runs statements on cursors, so
        pings.append(str(query))             # a call here is the pool's ping
        return real_execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", spy)
    monkeypatch.setattr(db, "PING_IDLE_S", 3600.0)
    for _ in range(5):
        _backend_pid()
    assert pings == []

    monkeypatch.setattr(db, "PING_IDLE_S", 0.0)
    _backend_pid()
    assert pings == ["SELECT 1"]


def test_the_pool_has_room_for_every_thread_of_the_process(monkeypatch):
    monkeypatch.delenv("WEB_THREADS", raising=False)
    monkeypatch.delenv("DRAIN_THREADS", raising=False)
    assert db.pool_size() == db.POOL_MIN
    monkeypatch.setenv("WEB_THREADS", "8")
    assert db.pool_size() == 9  # each thread, and the process's own work
    monkeypatch.setenv("DRAIN_THREADS", "12")
    # Two for each drainer thread: a reply sent at once holds its address's turn on one
    # connection and records the send on another (outbox._turn_of, session 31).
    assert db.pool_size() == 25
    monkeypatch.setenv("DRAIN_THREADS", "3")
    assert db.pool_size() == 9
    monkeypatch.setenv("DRAIN_THREADS", "lots")
    assert db.pool_size() == 9
    monkeypatch.setenv("WEB_THREADS", "500")
    assert db.pool_size() == db.POOL_MAX


def test_threads_holding_connections_at_once_keep_their_backends(one_connection: None,
                                                                 monkeypatch):
    """Real threads: 8 transactions open together, twice. Past the pool's size the extra
    connections would be closed on return and new backends started the second time."""
    import threading

    monkeypatch.setenv("WEB_THREADS", "8")
    db.dispose_all()  # a pool sized for this process's threads
    rounds: list[set[int]] = []
    for _ in range(2):
        barrier = threading.Barrier(8)
        pids: list[int] = []

        def hold(barrier: threading.Barrier, pids: list[int]) -> None:
            with db.transaction() as s:
                pids.append(s.scalar(text("SELECT pg_backend_pid()")))
                barrier.wait(timeout=20)  # all eight connections checked out at once

        threads = [threading.Thread(target=hold, args=(barrier, pids)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert len(set(pids)) == 8
        rounds.append(set(pids))
    assert rounds[1] == rounds[0]  # the same backends again: none was closed and replaced

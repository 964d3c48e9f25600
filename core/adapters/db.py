"""PostgreSQL engine and sessions: one transaction per use case."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from core.config import get_settings

_lock = threading.Lock()
_engines: dict[str, tuple[Engine, sessionmaker[Session]]] = {}


def _get(url: str) -> tuple[Engine, sessionmaker[Session]]:
    with _lock:
        if url not in _engines:
            eng = create_engine(
                url,
                # pre-ping: a restarted PostgreSQL is noticed and reconnected, not fatal.
                pool_pre_ping=True,
                pool_size=5,
                max_overflow=5,
                pool_timeout=5,
                connect_args={"connect_timeout": 3, "application_name": "ridechain"},
            )
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


def ping() -> None:
    """Raise if PostgreSQL cannot answer a trivial query."""
    with engine().connect() as conn:
        conn.execute(text("SELECT 1"))


def dispose_all() -> None:
    """Close every pooled connection (after a fork, and when tests switch databases)."""
    with _lock:
        for eng, _ in _engines.values():
            eng.dispose()
        _engines.clear()

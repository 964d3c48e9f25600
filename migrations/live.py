"""Helpers for migrations that run while the service is up (see migrations/README.md)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op


def create_index_concurrently(name: str, table: str, columns: list[str], **kw: Any) -> None:
    """op.create_index, built with CREATE INDEX CONCURRENTLY: the table's readers and
    writers go on while it is built (a plain CREATE INDEX blocks every write to the table
    until it is done, a few seconds on a year's rows).

    It commits the migration's work so far (CONCURRENTLY runs outside a transaction), so
    the migration must be safe to run again. A build that failed half-way leaves an
    INVALID index behind under the name: that one is dropped and built anew.
    """
    with op.get_context().autocommit_block():
        bind = op.get_bind()
        # The build waits for the transactions already running to finish, whatever their
        # table; it blocks nobody meanwhile, so it gets no lock_timeout (env.py) to fail on.
        lock_timeout = bind.exec_driver_sql("SHOW lock_timeout").scalar()
        bind.exec_driver_sql("SET lock_timeout = 0")
        try:
            invalid = bind.scalar(sa.text(
                "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"),
                {"name": name})
            if invalid:
                op.drop_index(name, table_name=table, postgresql_concurrently=True)
            op.create_index(name, table, columns, postgresql_concurrently=True,
                            if_not_exists=True, **kw)
        finally:
            bind.exec_driver_sql(f"SET lock_timeout = '{lock_timeout}'")

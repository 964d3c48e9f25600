"""Alembic environment: the URL comes from core.config (MIGRATE_DATABASE_URL, else
DATABASE_URL: the schema's owner), online mode only.

Migrations run while the previous release still serves (migrations/README.md): each one
commits on its own, and no statement waits more than LOCK_TIMEOUT for a lock, since every
web query on the table queues behind a waiting ALTER. A migration that timed out, or that
PostgreSQL chose to break a deadlock with a web transaction, is rolled back and run again
after each pause of RETRY_WAITS; after the last, the upgrade fails.
"""

from __future__ import annotations

import logging
import time

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.exc import DBAPIError

from core.adapters.models import Base
from core.config import get_settings

target_metadata = Base.metadata
log = logging.getLogger("migrations")

# Well below Twilio's 15 s webhook timeout, and far above what a web transaction holds a
# table lock for.
LOCK_TIMEOUT_MS = 2000
# The errors of a migration that gave way to the service, rolled back and run again:
# lock_not_available (it waited LOCK_TIMEOUT) and deadlock_detected. PostgreSQL breaks a
# deadlock in the waiter whose check (deadlock_timeout, 1 s by default, below LOCK_TIMEOUT)
# runs first: often the migration, which holds one table while it waits for another that
# a ledger write holds, the write then waiting for the first (0023).
RETRIED = ("55P03", "40P01")
# Seconds between attempts at a migration that gave way to a lock (a long report, say):
# the web's queued queries run meanwhile. About a minute in all, then the release fails
# and can be run again later.
RETRY_WAITS = (1, 2, 4, 8, 15, 30)


def run_migrations_online() -> None:
    attributes = context.config.attributes  # tests set shorter timeouts here
    url = attributes.get("url") or get_settings().owner_database_url  # alembic run by hand
    lock_timeout_ms = int(attributes.get("lock_timeout_ms", LOCK_TIMEOUT_MS))
    retry_waits = attributes.get("retry_waits", RETRY_WAITS)
    connectable = create_engine(url, poolclass=pool.NullPool)
    for attempt in range(len(retry_waits) + 1):
        try:
            with connectable.connect() as connection:
                connection.exec_driver_sql(f"SET lock_timeout = {lock_timeout_ms}")
                connection.commit()
                context.configure(connection=connection, target_metadata=target_metadata,
                                  compare_type=True, transaction_per_migration=True)
                with context.begin_transaction():
                    context.run_migrations()
            return
        except DBAPIError as err:
            sqlstate = getattr(err.orig, "sqlstate", None)
            if sqlstate not in RETRIED or attempt == len(retry_waits):
                raise  # not a lock given way, or out of attempts
            log.warning("a migration gave way to a lock; running it again",
                        extra={"attempt": attempt + 1, "wait_s": retry_waits[attempt],
                               "sqlstate": sqlstate})
            time.sleep(retry_waits[attempt])


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run against a database")
run_migrations_online()

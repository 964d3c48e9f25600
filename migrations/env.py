"""Alembic environment: the URL comes from core.config (DATABASE_URL), online mode only."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from core.adapters.models import Base
from core.config import get_settings

target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = context.config.attributes.get("url") or get_settings().database_url
    connectable = create_engine(url, poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run against a database")
run_migrations_online()

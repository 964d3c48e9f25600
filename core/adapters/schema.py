"""Which Alembic revisions this code works on, and whether a database's are those.

Read by /readyz (core.web.ops) and by the commands that need a migrated database
(core.cli): kept apart from the web's metrics, which a command must not import (with
PROMETHEUS_MULTIPROC_DIR set they write files into the web's directory, and fail where
gunicorn has not made it yet, as in a release).
"""

from __future__ import annotations

from functools import cache

from core.config import ROOT


@cache
def code_revisions() -> tuple[frozenset[str], frozenset[str]]:
    """(every Alembic revision this code knows, its heads), read once per process."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    known = frozenset(rev.revision for rev in scripts.walk_revisions())
    return known, frozenset(scripts.get_heads())


def schema_state(versions: set[str]) -> str:
    """The schema's state: "ok" if the database's Alembic versions are the code's heads, or
    ahead of them (a revision this code does not know: a rolling deploy's newer release
    migrated it, and migrations keep the previous release working); else what is behind."""
    known, heads = code_revisions()
    if not versions:
        return "behind: not migrated"
    if heads <= versions or versions - known:
        return "ok"
    return f"behind: {','.join(sorted(versions))} (code: {','.join(sorted(heads))})"

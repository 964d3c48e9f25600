"""Review r3 (runtime and operator commands): `./run`, core.cli, core.config, /readyz.

Each test shows one defect an operator meets running the service; its docstring says what
goes wrong. The commands run as an operator runs them (`./run <command>`, a process of
their own); each wait on a process is bounded, never a wait for time to pass.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from core.config import ConfigError, get_settings, load_settings
from tests.conftest import post_twilio

pytestmark = pytest.mark.db

ROOT = Path(__file__).resolve().parent.parent
BOUND_S = 120  # a bound for a broken run, never a wait the test relies on


def _closed_port() -> int:
    """A local TCP port nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`./run <argv>` with this run's settings, ``env`` on top: its exit status, output."""
    return subprocess.run([str(ROOT / "run"), *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=BOUND_S,
                          env={**os.environ, "APP_ENV": "sandbox", "LOG_LEVEL": "WARNING",
                               **env})


def _cli(*argv: str | bytes, **env: str) -> subprocess.CompletedProcess[bytes]:
    """`python -m core.cli <argv>` with this run's settings (bytes: any argument)."""
    return subprocess.run([sys.executable, "-m", "core.cli", *argv], cwd=ROOT,
                          capture_output=True, timeout=BOUND_S,
                          env={**os.environ, "APP_ENV": "sandbox", "LOG_LEVEL": "WARNING",
                               **env})


# --------------------------------------------------------------------------- services away


@pytest.mark.parametrize("argv", [
    ("migrate",),
    ("seed",),
    ("add-operator", "--phone", "+919812300071"),
])
def test_a_command_whose_database_does_not_answer_says_so_without_a_traceback(argv):
    """`./run migrate` (or seed, add-operator, any set-up command) with DATABASE_URL
    naming a server that is not up (a typo in the port, the database still starting)
    prints a 30-line Python traceback ending in sqlalchemy's OperationalError:
    core/cli.py main() turns only a ConfigError into a message. The operator expects
    one line saying the database in DATABASE_URL cannot be reached."""
    port = _closed_port()
    done = _run(*argv, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/ridechain_x")
    said = done.stdout + done.stderr
    assert done.returncode != 0, said[-800:]
    assert "Traceback" not in said, said[-800:]
    assert "DATABASE_URL" in said, said[-800:]


def test_the_worker_whose_redis_does_not_answer_says_so_without_a_traceback():
    """`./run worker` (the Procfile's worker) with REDIS_URL naming a Redis that is not
    up: a traceback from redis-py's connection code (core/cli.py worker() reaches RQ's
    work() unguarded), printed again at every restart of `./run serve`'s crash loop.
    One line naming REDIS_URL says what to fix."""
    port = _closed_port()
    done = _run("worker", "--burst", REDIS_URL=f"redis://127.0.0.1:{port}/0")
    said = done.stdout + done.stderr
    assert done.returncode != 0, said[-800:]
    assert "Traceback" not in said, said[-800:]
    assert "REDIS_URL" in said, said[-800:]


@pytest.fixture
def empty_database(request) -> Iterator[str]:
    """The URL of a database of this test's own, created empty (never migrated) on this
    run's server, dropped after."""
    name = f"ridechain_rev3_{request.node.name[5:22].lower()}_{os.getpid()}"
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    url = make_url(get_settings().database_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    drop()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        drop()
        admin.dispose()


@pytest.mark.parametrize("argv", [
    ("seed",),
    ("add-point", "--pincode", "845450", "--office", "Laxmipur BO"),
])
def test_a_command_on_a_database_never_migrated_says_to_migrate(empty_database, argv):
    """`./run seed` or a set-up command on a database that exists but was never migrated
    (a new DATABASE_URL, before the first release; README lists `migrate` as step 1 and
    `./run seed` on its own does not migrate) ends in a traceback of UndefinedTable:
    'relation "rate_cards" does not exist'. It should say the schema is missing and that
    `migrate` makes it."""
    done = _run(*argv, DATABASE_URL=empty_database)
    said = done.stdout + done.stderr
    assert done.returncode != 0, said[-800:]
    assert "Traceback" not in said, said[-800:]
    assert "migrate" in said, said[-800:]


def test_a_name_the_terminal_sent_in_another_encoding_is_refused_without_a_traceback(
        clean_db):
    """An operator whose terminal is not UTF-8 (a Latin-1 one typing 'Ramú') runs
    add-operator --name: Python keeps the byte as a lone surrogate, the name passes
    core.services.admin's checks, and psycopg fails to encode it for PostgreSQL: a
    traceback of UnicodeEncodeError, exit 1 (core/cli.py set_up catches only DomainError
    and IntegrityError), where the other bad names are a one-line refusal with exit 2."""
    done = _cli("add-operator", "--phone", "+919812300072", "--name", b"Ram\xfa")
    said = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert "Traceback" not in said, said[-800:]
    assert done.returncode == 2, said


# --------------------------------------------------------------------------- settings


def _env(**extra: str) -> dict[str, str]:
    """A sandbox environment that loads, plus ``extra``."""
    return {"APP_ENV": "sandbox", "DATABASE_URL": "postgresql://u@db/ridechain",
            "REDIS_URL": "redis://cache:6379/0", **extra}


@pytest.mark.parametrize("case", ["missing folder", "a language missing"])
def test_a_catalog_folder_the_service_cannot_read_stops_the_start(tmp_path, case):
    """I18N_DIR (README: where the message catalogs are read from, "a copy being
    translated") is read unchecked (core/i18n.py catalog_dir): a typo in the path, or a
    copy that lacks a language's file, passes load_settings, the release and /readyz, and
    then every WhatsApp turn, call and SMS in that language fails with
    FileNotFoundError (a turn that raises is set aside as a bug). README: a setting is
    validated at start and a bad one stops it with a line naming it."""
    if case == "missing folder":
        folder = tmp_path / "catalogs-typo"
    else:
        folder = tmp_path / "catalogs"
        shutil.copytree(ROOT / "templates_i18n", folder)
        (folder / "ta.toml").unlink()
    load_settings(_env())  # the rest is a configuration that loads
    with pytest.raises(ConfigError) as refused:
        load_settings(_env(I18N_DIR=str(folder)))
    assert "I18N_DIR" in str(refused.value)


@pytest.mark.parametrize(("name", "extra"), [
    ("OSRM_URL", {}),
    ("POD_S3_ENDPOINT_URL", {"POD_STORAGE": "s3", "POD_S3_BUCKET": "pods",
                             "POD_S3_ACCESS_KEY_ID": "key", "POD_S3_SECRET_ACCESS_KEY": "s"}),
])
def test_a_server_url_without_its_scheme_stops_the_start(name, extra):
    """A server URL written without http(s):// ("osrm.internal:5000", an R2 endpoint
    pasted as its host name) is taken at start. OSRM_URL then fails every route request
    (requests: no connection adapters), and every quote silently uses the straight-line
    estimate, the fare not the road's; POD_S3_ENDPOINT_URL makes boto3 raise ValueError
    ('Invalid endpoint') at the first proof-of-delivery photo, outside the store's
    error handling (core/adapters/storage.py build_store): a 500 where a 503 or a
    refusal at start was due."""
    load_settings(_env(**extra))  # the rest is a configuration that loads
    env = _env(**extra, **{name: "abc123.r2.example.com:5000"})
    with pytest.raises(ConfigError) as refused:
        load_settings(env)
    assert name in str(refused.value)


# --------------------------------------------------------------------------- seed


def test_seed_after_add_point_leaves_one_active_point_at_the_office(clean_db):
    """`./run add-point --pincode 845450 --office "Laxmipur BO"` (README, Setting up
    production, tried in the sandbox) then `./run seed` (or `./run serve`'s release):
    seed_demo (core/services/seed.py) looks only for its own rate card and inserts its
    Points blindly, so Laxmipur BO gets a second active Point named "Laxmipur" in the
    same pincode, the very thing add-point refuses (409 name_taken: people cannot tell
    the two apart; set-home-point --point Laxmipur is then ambiguous)."""
    from core.adapters.db import transaction
    from core.adapters.models import Point

    first = _run("add-point", "--pincode", "845450", "--office", "Laxmipur BO")
    assert first.returncode == 0, first.stdout + first.stderr
    seeded = _run("seed")
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    with transaction() as session:
        at_office = session.scalar(select(func.count()).select_from(Point).where(
            Point.pincode == "845450", Point.post_office == "Laxmipur BO",
            Point.active.is_(True)))
    assert at_office == 1


# --------------------------------------------------------------------------- readiness


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator:
    """A Redis server of this test's own (the embedded one), full: maxmemory below what it
    uses, no eviction (Redis's default policy), so it refuses every write with OOM while
    it answers PING and ROLE as a master."""
    import redis

    from ops import embedded

    server = embedded.EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        client = redis.Redis(unix_socket_path=str(server.socket_path))
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        yield client
        client.close()
    finally:
        server.stop()


def test_readyz_is_not_ready_while_redis_is_full_and_refuses_every_write(
        client, monkeypatch, full_redis):
    """Redis reaches maxmemory (a queue backlog; managed Redis's default policy is no
    eviction): every write is refused with OOM, so every WhatsApp webhook answers 503
    (core.adapters.redis_conn.redis_down counts OOM, and LOADING, as Redis away). Yet
    /readyz answers 200 "ready", redis "ok": its check (redis_conn.write_state) asks ROLE
    only, which a full (or loading) master answers. README: /readyz is PostgreSQL and
    Redis *taking writes*."""
    from core.services import inbound
    from core.web import ops as web_ops

    monkeypatch.setattr(inbound, "redis_client", lambda: full_redis)
    monkeypatch.setattr(web_ops, "redis_client", lambda: full_redis)
    msg = {"MessageSid": "SMrev3full1", "AccountSid": "ACsandbox",
           "From": "whatsapp:+919812300073", "To": "whatsapp:+14155238886", "Body": "hi",
           "NumMedia": "0", "WaId": "919812300073", "ProfileName": "Asha"}
    hook = post_twilio(client, "/webhooks/whatsapp", msg)
    assert hook.status_code == 200, hook.get_data(as_text=True)  # Redis refuses: parked
    ready = client.get("/readyz")
    assert ready.status_code == 503, ready.get_json()
    assert ready.get_json()["checks"]["redis"] != "ok", ready.get_json()

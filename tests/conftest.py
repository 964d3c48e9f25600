"""Shared fixtures: real PostgreSQL and Redis, the app, a live HTTP server for emulators.

The environment is fixed here, before any settings are read: each test run claims a slot
(see ops/redis_slots.py) and uses its own database (`<name>_test` or `<name>_test<slot>` on the
DATABASE_URL server, dropped and re-created per run) and the Redis database of that slot,
asserted empty before each test and flushed after. Pure domain tests
use none of these fixtures and need no server.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ops import redis_slots


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _configure_env() -> None:
    base_db = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/ridechain"
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    slot = redis_slots.claim(redis_url)
    url = make_url(base_db.replace("postgres://", "postgresql://", 1))
    suffix = "_test" if slot == 15 else f"_test{slot}"
    test_db = url.set(database=f"{url.database or 'ridechain'}{suffix}")
    os.environ["DATABASE_URL"] = test_db.render_as_string(hide_password=False)
    os.environ["REDIS_URL"] = redis_slots.with_db(redis_url, slot)
    port = _free_port()
    os.environ["PORT"] = str(port)
    os.environ["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
    os.environ["APP_ENV"] = "sandbox"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # Fast, deterministic retry schedule for the outbox (the clock is controlled anyway).
    os.environ["OUTBOX_RETRY_INTERVALS"] = "10,30"
    # Status callbacks are applied by the next run_jobs(), not after a batching window of
    # real time (the window has tests of its own that set it).
    os.environ["STATUS_WINDOW_MS"] = "0"
    # A drainer job leaves as soon as nothing waits (its linger has tests of its own).
    os.environ["DRAIN_LINGER_MS"] = "0"
    # Operators always at work, whatever the hour the suite runs (test_ops_hours sets the
    # hours it tests, and moves the clock through them).
    os.environ["OPS_HOURS"] = "24h"
    # Recipients' drop codes at any hour, whatever the hour the suite runs on the wall clock
    # (tests of the night hold set it: test_ops_s30's drop_code_night).
    os.environ["DISPATCH_DROP_CODE_NIGHT"] = "off"
    for name in ("TWILIO_API_BASE", "RAZORPAY_API_BASE", "OSRM_URL"):
        os.environ.pop(name, None)


_configure_env()

from core import clock  # noqa: E402
from core.adapters import db as db_adapter  # noqa: E402
from core.adapters.redis_conn import redis_client, reset_clients  # noqa: E402
from core.config import get_settings, reset_settings  # noqa: E402

reset_settings()


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    """A freshly migrated test database for this run."""
    from core.cli import migrate

    url = get_settings().database_url
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    admin.dispose()
    # Connections pooled before the drop (to the last run's database) are dead now; the
    # pool pings only idle ones, so let none of them be handed out.
    db_adapter.dispose_all()
    migrate(url)
    yield url
    db_adapter.dispose_all()


@pytest.fixture
def clean_db(database: str) -> Iterator[None]:
    """Real PostgreSQL and Redis, emptied after the test (Redis asserted empty before)."""
    r = redis_client()
    assert r.dbsize() == 0, "the test Redis database is not empty at the start of a test"
    yield
    clock.freeze(None)
    db_adapter.wipe_all_tables()
    r.flushdb()


@pytest.fixture
def app(clean_db: None):
    from core.app import create_app

    application = create_app()
    application.config["TESTING"] = True
    return application


@pytest.fixture
def client(app):
    return app.test_client()


class LiveServer:
    def __init__(self, base_url: str):
        self.base_url = base_url


@pytest.fixture(scope="session")
def live_server(database: str) -> Iterator[LiveServer]:
    """The app on a real port (PUBLIC_BASE_URL), so the twilio/razorpay clients reach the
    sandbox emulators over HTTP exactly as in production."""
    from werkzeug.serving import make_server

    from core.app import create_app

    settings = get_settings()
    server = make_server("127.0.0.1", settings.port, create_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield LiveServer(settings.public_base_url)
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def live(live_server: LiveServer, clean_db: None) -> LiveServer:
    return live_server


def twilio_signature(path: str, params: dict[str, str]) -> str:
    from twilio.request_validator import RequestValidator

    s = get_settings()
    return RequestValidator(s.twilio_auth_token).compute_signature(
        s.public_base_url + path, params
    )


def post_twilio(client, path: str, params: dict[str, str], *, signature: str | None = None,
                headers: dict[str, str] | None = None):
    """POST a form-encoded Twilio webhook, signed like Twilio would sign it."""
    sig = twilio_signature(path, params) if signature is None else signature
    return client.post(path, data=urlencode(params), headers={
        "X-Twilio-Signature": sig, **(headers or {}),
        "Content-Type": "application/x-www-form-urlencoded",
    })


def run_jobs(queues: tuple[str, ...] | None = None) -> int:
    """Run every queued RQ job (of ``queues``, default all) in-process through RQ itself;
    return how many ran."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    from core.adapters.queue import QUEUES, SANDBOX_QUEUE, queue

    class CountingWorker(SimpleWorker):
        ran = 0

        def execute_job(self, job, queue):  # noqa: ANN001 (RQ's signature)
            CountingWorker.ran += 1
            return super().execute_job(job, queue)

    names = queues or (*QUEUES, SANDBOX_QUEUE)  # the emulators' jobs too, by default
    worker = CountingWorker([queue(n) for n in names], connection=redis_client(),
                            serializer=JSONSerializer)
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
    return CountingWorker.ran


def replies_to(sid: str) -> list[str]:
    """What the bot sent in answer to inbound message ``sid`` (outbox rows, in order)."""
    from sqlalchemy import select

    from core.adapters.db import transaction
    from core.adapters.models import OutboxMessage

    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body)
                              .where(OutboxMessage.dedupe_key.like(f"reply:{sid}:%"))
                              .order_by(OutboxMessage.id)))


def never_reached(sid: str) -> None:
    """The sandbox emulator reported the message ``sid`` delivered, and the test is about
    to post Twilio's refusal of it (a refusal is Twilio's final word: it never reached the
    person). The row goes back to "sent" and its delivered/read reports go, as if those
    callbacks had never come: a refusal after a real "delivered" is kept in the history
    only (outbox.apply_reports) and would send no copy."""
    from sqlalchemy import delete, select

    from core.adapters.db import transaction
    from core.adapters.models import MessageStatusEvent, OutboxMessage

    with transaction() as s:
        row = s.scalar(select(OutboxMessage).where(OutboxMessage.provider_sid == sid))
        assert row is not None, f"no message {sid}"
        if row.status in ("delivered", "read"):
            row.status = "sent"
            s.execute(delete(MessageStatusEvent).where(
                MessageStatusEvent.outbox_id == row.id,
                MessageStatusEvent.status.in_(("delivered", "read"))))


def read_first(monkeypatch=None) -> None:  # noqa: ANN001
    """The customer reads the question on her screen before she answers it: the service
    clock moves on past conversation.SEEN_GRACE (within which an answer to a question
    that commits money is taken as written before it came), frozen there for the rest of
    the test: with ``monkeypatch`` a running clock runs again after it; without, or when
    the test froze it, the test's own fixture lets it run again."""
    from core.services.conversation import SEEN_GRACE

    later = clock.now() + SEEN_GRACE + timedelta(seconds=1)
    if monkeypatch is None or clock._frozen is not None:  # noqa: SLF001
        clock.freeze(later)
    else:
        monkeypatch.setattr(clock, "_frozen", later)


def send_whatsapp(client, params: dict[str, str]) -> str:
    """One customer message through the signed webhook and its drain job (as the worker
    runs it); return the bot's reply text ("" when it stayed silent)."""
    r = post_twilio(client, "/webhooks/whatsapp", params)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert "<Message" not in r.get_data(as_text=True)  # replies go through the outbox
    run_jobs(("inbound",))
    return "\n".join(replies_to(params["MessageSid"]))


PERIODIC_PREFIXES = ("outbox-sweep-", "dispatch-sweep-", "payments-sweep-", "reconcile-",
                     "retention-")


def release_scheduled(after: timedelta, *, periodic: bool = False) -> int:
    """Move RQ jobs scheduled to run within ``after`` from now into their queues.

    This is what RQ's scheduler does when that much time has passed; the tests control
    the clock instead of sleeping. The periodic sweeps (scheduled on whole minutes) are
    left alone unless ``periodic``: whether one falls inside the window depends on the
    wall clock, and a test must not.
    """
    from rq.registry import ScheduledJobRegistry

    from core.adapters.queue import QUEUES, SANDBOX_QUEUE, queue

    moved = 0
    until = int((datetime.now(UTC) + after).timestamp())
    for name in (*QUEUES, SANDBOX_QUEUE):
        q = queue(name)
        registry = ScheduledJobRegistry(queue=q)
        for job_id in registry.get_jobs_to_schedule(until):
            if not periodic and job_id.startswith(PERIODIC_PREFIXES):
                continue
            job = q.fetch_job(job_id)
            registry.remove(job_id)
            if job is not None:
                q._enqueue_job(job)
                moved += 1
    return moved


@pytest.fixture(autouse=True)
def _fresh_clients() -> Iterator[None]:
    yield
    reset_clients()

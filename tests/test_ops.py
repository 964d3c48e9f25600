"""Health, readiness, metrics, migrations, and behaviour when PostgreSQL is down."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import func, select

from core.adapters import db
from core.adapters.db import transaction
from core.adapters.models import InboundEvent, Person
from core.config import ROOT, get_settings
from tests.conftest import post_twilio


def test_healthz_and_readyz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.get_json()["checks"] == {"postgres": "ok", "schema": "ok", "redis": "ok"}


def test_readyz_reports_a_dead_database(client, monkeypatch):
    def down() -> None:
        raise ConnectionRefusedError

    monkeypatch.setattr(db, "ping", down)
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.get_json()["checks"]["postgres"].startswith("down")


def test_metrics_expose_requests_queue_depth_and_outbox(client):
    client.get("/healthz")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'http_requests_total{endpoint="/healthz",method="GET",status="200"}' in text
    assert 'rq_queue_depth{queue="outbox"}' in text
    assert "http_request_duration_seconds_bucket" in text


def test_made_up_http_methods_share_one_metrics_label(client):
    """Anyone can send a method gunicorn passes on; each must not become a series."""
    for method in ("BREW", "PROPFIND", "XYZZY"):
        client.open("/healthz", method=method)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'method="other"' in text
    assert not any(m in text for m in ("BREW", "PROPFIND", "XYZZY"))


def test_migrations_have_a_single_head():
    script = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    assert len(script.get_heads()) == 1


def test_migrations_match_the_models(database):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from core.adapters.models import Base

    with db.engine().connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_message_waits_in_its_inbox_while_postgres_is_down(app, monkeypatch):
    from core import config
    from core.adapters import db as db_adapter
    from core.adapters.redis_conn import redis_client
    from tests.conftest import release_scheduled, replies_to, run_jobs

    params = {"MessageSid": "SMdown", "From": "whatsapp:+919812345678", "Body": "hi",
              "WaId": "919812345678"}
    # The webhook needs only Redis: Twilio's message is accepted while PostgreSQL is away.
    assert post_twilio(app.test_client(), "/webhooks/whatsapp", params).status_code == 200
    dead = replace(get_settings(),
                   database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    monkeypatch.setattr(config, "get_settings", lambda: dead)
    monkeypatch.setattr("core.adapters.db.get_settings", lambda: dead)
    db_adapter.dispose_all()
    assert run_jobs(("inbound",)) == 1  # the drain fails on the database ...
    monkeypatch.undo()
    db_adapter.dispose_all()
    assert redis_client().llen("inbox:whatsapp:919812345678") == 1  # ... and keeps the message
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(InboundEvent)) == 0
        assert s.scalar(select(func.count()).select_from(Person)) == 0
    # RQ retries the drain with backoff; once PostgreSQL is back the message is handled.
    assert release_scheduled(timedelta(minutes=5)) == 1
    assert run_jobs(("inbound",)) == 1
    assert replies_to("SMdown") and redis_client().llen("inbox:whatsapp:919812345678") == 0


def test_webhook_answers_503_when_redis_and_the_database_are_down(app, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError
    from sqlalchemy.exc import OperationalError

    def down(*args, **kwargs):
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:1")

    def db_down(*args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("connection refused"))

    monkeypatch.setattr("core.services.inbound.redis_client", down)
    monkeypatch.setattr("core.services.inbound.park", db_down)  # nowhere to park it either
    params = {"MessageSid": "SMnoredis", "From": "whatsapp:+919812345678", "Body": "hi",
              "WaId": "919812345678"}
    r = post_twilio(app.test_client(), "/webhooks/whatsapp", params)
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "cache_unavailable"


def test_request_id_is_echoed(client):
    r = client.get("/healthz", headers={"X-Request-Id": "abc123"})
    assert r.headers["X-Request-Id"] == "abc123"
    assert client.get("/healthz").headers["X-Request-Id"]


def test_env_points_tests_at_their_own_databases():
    from sqlalchemy.engine import make_url

    assert "_test" in make_url(get_settings().database_url).database
    assert not os.environ["REDIS_URL"].endswith(("/0", "db=0"))


def test_a_lost_race_is_a_409_not_a_500(app):
    from sqlalchemy.orm.exc import StaleDataError

    from core.domain.errors import InvalidTransition

    @app.get("/_test/race")
    def race():
        raise StaleDataError("version mismatch")

    @app.get("/_test/transition")
    def bad_transition():
        raise InvalidTransition("booking cannot go from delivered to cancelled")

    c = app.test_client()
    r = c.get("/_test/race")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "concurrent_update"
    r = c.get("/_test/transition")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "invalid_transition"


def test_a_creation_race_is_retryable_not_a_500(app):
    from sqlalchemy.exc import IntegrityError

    def clash():
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    app.add_url_rule("/webhooks/_test_clash", "clash_hook", clash, methods=["POST"])
    app.add_url_rule("/api/v1/_test_clash", "clash_api", clash, methods=["POST"])
    c = app.test_client()
    r = c.post("/webhooks/_test_clash")
    assert r.status_code == 503 and r.headers["Retry-After"]
    r = c.post("/api/v1/_test_clash")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "conflict"

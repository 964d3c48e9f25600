"""Redis that cannot save its snapshot refuses every write with MISCONF (its default,
stop-writes-on-bgsave-error): the webhooks answer 503 (Twilio retries) and /readyz says
not ready, as for a full or read-only Redis, against a real redis-server of the test's
own whose BGSAVE fails."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import post_twilio


@pytest.fixture
def misconf_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    """The embedded Redis, with a save point, made to fail its snapshot: a directory
    stands where the dump file goes, so renaming the snapshot onto it fails."""
    from ops import embedded

    server = embedded.EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        client = redis.Redis(unix_socket_path=str(server.socket_path))
        dump_dir = tmp_path / "dump"
        (dump_dir / "dump.rdb").mkdir(parents=True)
        client.config_set("dir", str(dump_dir))
        client.config_set("dbfilename", "dump.rdb")
        client.config_set("save", "3600 1")
        client.config_set("stop-writes-on-bgsave-error", "yes")
        client.bgsave()
        # Wait for the server's child process to finish its (failing) save: a state of
        # another process, not a time of the clock under test.
        for _ in range(1500):
            info = client.info("persistence")
            if not info["rdb_bgsave_in_progress"] and info["rdb_last_bgsave_status"] == "err":
                break
            time.sleep(0.02)
        else:
            pytest.fail("the snapshot did not fail")
        with pytest.raises(redis.exceptions.ResponseError, match="^MISCONF"):
            client.set("x", "1")
        yield client
        client.close()
    finally:
        server.stop()


def test_a_redis_that_cannot_save_is_away_for_webhooks_and_readyz(client, monkeypatch,
                                                                    misconf_redis):
    """Was: the webhook answered 500 (MISCONF is a plain ResponseError that redis_down did
    not count) and /readyz's error was not one it expected. Now the message is parked
    (200) and /readyz is 503."""
    from core.services import inbound
    from core.web import ops as web_ops

    monkeypatch.setattr(inbound, "redis_client", lambda: misconf_redis)
    monkeypatch.setattr(web_ops, "redis_client", lambda: misconf_redis)
    msg = {"MessageSid": "SMmisconf1", "AccountSid": "ACsandbox",
           "From": "whatsapp:+919812300074", "To": "whatsapp:+14155238886", "Body": "hi",
           "NumMedia": "0", "WaId": "919812300074", "ProfileName": "Asha"}
    hook = post_twilio(client, "/webhooks/whatsapp", msg)
    assert hook.status_code == 200, hook.get_data(as_text=True)
    from sqlalchemy import select

    from core.adapters.db import transaction
    from core.adapters.models import InboundParked

    with transaction() as s:  # Redis away: parked in PostgreSQL (session 34), not a 500
        assert 'SMmisconf1' in set(s.scalars(select(InboundParked.sid)))
    ready = client.get("/readyz")
    assert ready.status_code == 503, ready.get_json()
    assert ready.get_json()["checks"]["redis"] != "ok", ready.get_json()


def test_misconf_counts_as_redis_away():
    from core.adapters.redis_conn import redis_down

    assert redis_down(redis.exceptions.ResponseError(
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to "
        "persist to disk."))


def test_readyz_leaves_no_key_behind(client):
    """/readyz writes a probe key to know Redis takes writes, and deletes it at once: a
    process that calls /readyz (a test's own gunicorn, a platform's health check) leaves
    Redis as it found it. Was: the key stayed for 10 s, and the next test found its
    Redis database not empty."""
    from core.adapters.redis_conn import WRITE_PROBE_KEY, redis_client

    assert client.get("/readyz").status_code == 200
    assert not redis_client().exists(WRITE_PROBE_KEY)

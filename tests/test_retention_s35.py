"""The retention job's photo files step keeps to its time, a store away ends it, and Redis
away stops no database step (review 12)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.registry import ScheduledJobRegistry
from sqlalchemy import func, insert, select

from core import clock
from core.adapters import storage
from core.adapters.db import transaction
from core.adapters.dispatch_models import PodPhotoDeletion
from core.adapters.models import MessageStatusEvent
from core.adapters.queue import queue
from core.services import inbound, retention
from tests.test_retention import _clock  # noqa: F401

pytestmark = pytest.mark.db


def _waiting(n: int) -> list[str]:
    uris = [f"s3://b/k{i:02d}" for i in range(n)]
    with transaction() as s:
        s.execute(insert(PodPhotoDeletion), [{"storage_uri": u} for u in uris])
    return uris


def _left() -> set[str]:
    with transaction() as s:
        return set(s.scalars(select(PodPhotoDeletion.storage_uri)))


@pytest.fixture
def now(monkeypatch):
    """The run's monotonic time, moved by the fake store's calls."""
    at = [0.0]
    monkeypatch.setattr(retention, "_monotonic", lambda: at[0])
    return at


def test_the_files_step_checks_the_deadline_before_each_file(clean_db, monkeypatch, now):
    uris = _waiting(40)
    tried: list[str] = []

    def slow_delete(uri):  # a slow store: each delete takes a minute, and works
        now[0] += 60.0
        tried.append(uri)

    monkeypatch.setattr(retention.storage, "delete_photo", slow_delete)
    deleted, left = retention.delete_photo_files(deadline=120.0)  # two minutes
    assert tried == uris[:2], f"{len(tried)} files tried within a 120 s budget"
    assert (deleted, left) == (2, 38)
    # The files deleted had their rows go with them (committed), the others wait.
    assert _left() == set(uris[2:])


def test_a_store_away_ends_the_files_step_at_its_first_error(clean_db, monkeypatch, now):
    uris = _waiting(40)
    tried: list[str] = []

    def hanging(uri):  # each delete times out
        now[0] += 30.0
        tried.append(uri)
        raise storage.Unavailable("away", code="photo_store_unavailable")

    monkeypatch.setattr(retention.storage, "delete_photo", hanging)
    assert retention.delete_photo_files(deadline=10_000.0) == (0, 40)
    assert tried == uris[:1] and _left() == set(uris)


def test_the_files_step_keeps_what_went_before_the_store_went_away(clean_db, monkeypatch,
                                                                    now):
    uris = _waiting(10)

    def away_at_the_fourth(uri):
        if uri == uris[3]:
            raise storage.Unavailable("away", code="photo_store_unavailable")

    monkeypatch.setattr(retention.storage, "delete_photo", away_at_the_fourth)
    assert retention.delete_photo_files(deadline=100.0) == (3, 7)
    assert _left() == set(uris[3:])


def test_a_file_of_another_store_does_not_stop_the_others(clean_db, monkeypatch, now):
    """A URI of a store not configured here is that file's trouble, not the store away."""
    uris = _waiting(5)
    real = storage.delete_photo

    def store_of_b(uri):
        store = storage.S3Store("b", client=type("C", (), {
            "delete_object": lambda self, **kw: None})())
        return real(uri if uri != uris[0] else "s3://other/k00", store=store)

    monkeypatch.setattr(retention.storage, "delete_photo", store_of_b)
    assert retention.delete_photo_files(deadline=100.0) == (4, 1)
    assert _left() == {uris[0]}


def test_the_erasures_photo_job_is_bounded_in_time(clean_db, monkeypatch, now):
    _waiting(40)

    def slow_delete(uri):
        now[0] += 60.0

    monkeypatch.setattr(retention.storage, "delete_photo", slow_delete)
    with pytest.raises(retention.Unavailable):  # files left: RQ tries again
        retention.photo_job()
    # It stops within its budget and one store call begun before its end.
    assert now[0] <= retention.PHOTO_JOB_SECONDS + 60.0, f"worked {now[0]:.0f} s"
    assert len(_left()) == 40 - now[0] // 60


def test_the_s3_client_has_short_timeouts_and_few_retries():
    cfg = storage.StorageConfig("s3", storage.Path("/nonexistent"), "b",
                                "https://r2.example.com", "auto", "k", "s", "pod/", 1024)
    store = storage.build_store(cfg)
    assert isinstance(store, storage.S3Store)
    config = store.client.meta.config
    assert config.connect_timeout <= 10 and config.read_timeout <= 20
    assert config.retries.get("total_max_attempts", 99) <= 3
    attempts = config.retries["total_max_attempts"]
    # One call, retried, fits in the minute the job's RQ timeout leaves after the run.
    assert attempts * (config.connect_timeout + config.read_timeout) < 60


def _status_events() -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(MessageStatusEvent)) or 0


@pytest.mark.parametrize("which", [("dead_letters",), ("positions",),
                                   ("dead_letters", "positions")])
def test_redis_away_stops_no_database_step_and_the_run_fails(clean_db, monkeypatch, caplog,
                                                              which):
    with transaction() as s:
        s.execute(insert(MessageStatusEvent), [
            {"provider_sid": f"SM{i}", "status": "delivered"} for i in range(3)])

    def away(*args):
        raise RedisConnectionError("Connection refused")

    if "dead_letters" in which:
        monkeypatch.setattr(inbound, "drop_dead_letters", away)
    if "positions" in which:
        monkeypatch.setattr(retention, "forget_erased_positions", away)
    with pytest.raises(retention.Unavailable):  # the failure is seen (RQ: failed)
        retention.run(clock.now() + timedelta(days=400))
    assert _status_events() == 0, "the database steps did not run"
    warned = [r for r in caplog.records if "Redis cannot be reached" in r.getMessage()]
    assert len(warned) == 1


def test_redis_away_in_the_run_still_schedules_tomorrows(clean_db, monkeypatch):
    from workers import retention as job

    monkeypatch.setattr(inbound, "drop_dead_letters", lambda which: (_ for _ in ()).throw(
        RedisConnectionError("Connection refused")))
    with pytest.raises(retention.Unavailable):
        job.run()
    assert [j for j in ScheduledJobRegistry(queue=queue("default")).get_job_ids()
            if j.startswith("retention-")]

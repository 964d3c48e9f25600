"""/metrics shows what an operator must see of the jobs: the failed ones (retries used up)
and whether any worker takes each queue. Without them, payment links, offers and refunds
that failed for good, or a worker that died, showed nowhere but in Redis."""

from __future__ import annotations

import re

from rq import Worker
from rq.serializers import JSONSerializer

from core.adapters.queue import queue
from core.adapters.redis_conn import redis_client
from tests.conftest import run_jobs


def _gauge(text: str, name: str, queue_name: str) -> float:
    found = re.search(rf'^{name}{{queue="{queue_name}"}} (\S+)$', text, re.MULTILINE)
    assert found, f"{name} for {queue_name} not in /metrics"
    return float(found.group(1))


def test_a_job_that_failed_for_good_is_counted_per_queue(client):
    text = client.get("/metrics").get_data(as_text=True)
    assert _gauge(text, "rq_failed_jobs", "default") == 0
    queue("default").enqueue("builtins.int", "not a number")  # raises ValueError
    run_jobs(("default",))
    text = client.get("/metrics").get_data(as_text=True)
    assert _gauge(text, "rq_failed_jobs", "default") == 1
    assert _gauge(text, "rq_failed_jobs", "outbox") == 0


def test_workers_are_counted_per_queue_they_take(client):
    text = client.get("/metrics").get_data(as_text=True)
    assert _gauge(text, "rq_workers", "outbox") == 0
    worker = Worker([queue("outbox"), queue("default")], connection=redis_client(),
                    serializer=JSONSerializer)
    worker.register_birth()
    try:
        text = client.get("/metrics").get_data(as_text=True)
        assert _gauge(text, "rq_workers", "outbox") == 1
        assert _gauge(text, "rq_workers", "default") == 1
        assert _gauge(text, "rq_workers", "inbound") == 0
    finally:
        worker.register_death()

"""Review r8 (background work): RQ jobs, enqueueing, retries, sweeps, schedulers.

Each test shows one defect on the code as it was reviewed; its docstring says what a user
or an operator meets.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from rq import SimpleWorker
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from core.adapters.db import transaction
from core.adapters.models import Booking, InboundEvent, OutboxMessage
from core.adapters.payment_models import GatewayEvent
from core.adapters.queue import QUEUES, SANDBOX_QUEUE, queue
from core.adapters.redis_conn import redis_client
from core.config import get_settings, reset_settings
from core.services import dispatch, inbound, outbox
from sandbox import razorpay
from sandbox.twilio import FAIL_NEXT_KEY
from tests.conftest import post_twilio, release_scheduled, run_jobs
from tests.test_dispatch import (  # noqa: F401  (frozen: a fixture)
    LAXMIPUR,
    freeze_at,
    frozen,
    legs_of,
    make_partner,
    offers,
    paid_booking,
    start,
)

pytestmark = pytest.mark.db

STATUS = "/webhooks/twilio/status"
RAN_KEY = "test:rev8:ran"


def mark_ran(tag: str) -> str:
    """A job for the tests: note that it ran."""
    redis_client().rpush(RAN_KEY, tag)
    return tag


def ran() -> list[str]:
    return [v.decode() for v in redis_client().lrange(RAN_KEY, 0, -1)]


@pytest.fixture
def read_only_database(clean_db: None) -> Iterator[Callable[[bool], None]]:
    """As after a PostgreSQL failover whose DATABASE_URL still names the demoted primary:
    every transaction is read-only (SQLSTATE 25006 on the first write)."""
    from core.adapters import db

    url = make_url(get_settings().database_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT",
                          poolclass=NullPool)

    def read_only(on: bool) -> None:
        with admin.connect() as conn:
            if on:
                conn.execute(text(f'ALTER DATABASE "{url.database}" SET '
                                  "default_transaction_read_only = on"))
            else:
                conn.execute(text(f'ALTER DATABASE "{url.database}" RESET '
                                  "default_transaction_read_only"))
        db.dispose_all()  # the setting holds for new connections

    yield read_only
    read_only(False)
    admin.dispose()


# --- 1. status callbacks dropped during a failover ---------------------------------------


def test_status_callbacks_are_kept_not_dropped_while_the_database_takes_no_writes(
        client, read_only_database):
    """workers.outbox.apply_statuses -> core.services.outbox._apply_or_isolate: a database
    that takes no writes (a failover's demoted primary: psycopg's ReadOnlySqlTransaction,
    an sqlalchemy InternalError, not an OperationalError) is taken for "the database
    refuses this report": every report of the batch is tried alone, each refused the
    same way, and all are dropped for good ("status report refused by the database;
    dropped"). The messages stay "queued" forever: a "delivered" never shows, an
    "undelivered" never sends the booking notice by SMS instead. db.database_away (used
    by the drain job and the SMS webhook since d6c1ae9) says this is an outage: the job
    must fail with the batch kept, as for OperationalError."""
    with transaction() as s:
        row = OutboxMessage(channel="sms", to_addr="+919876500001", from_addr="+15005550006",
                            body="your parcel is on its way", status="queued", attempts=1,
                            provider_sid="SMrev8a")
        s.add(row)
        s.flush()
        oid = row.id
    r = post_twilio(client, f"{STATUS}?outbox_id={oid}",
                    {"MessageSid": "SMrev8a", "MessageStatus": "delivered"})
    assert r.status_code == 204
    assert redis_client().llen(outbox.STATUS_INBOX) == 1
    read_only_database(True)
    run_jobs(("outbox",))  # the apply job meets the read-only database
    read_only_database(False)
    # The report must still be there to apply once the database takes writes again.
    assert redis_client().llen(outbox.STATUS_INBOX) == 1, "the status report was dropped"
    outbox.apply_statuses()
    with transaction() as s:
        assert s.get(OutboxMessage, oid).status == "delivered"


# --- 2. the sandbox worker runs no scheduler -----------------------------------------------


def test_a_refused_razorpay_webhook_is_delivered_again_by_the_sandbox_worker(live):
    """core.cli.sandbox_worker starts RQ's worker without a scheduler (w.work(burst=...)),
    and the service workers' schedulers take only their own queues (QUEUES, not
    "sandbox"). A Razorpay webhook delivery the service did not take (web restarting:
    no answer, or a 503) fails its job, and its Retry (sandbox.razorpay.WEBHOOK_RETRY_S,
    "as Razorpay does for 24 hours") schedules it a minute on in the sandbox queue's
    scheduled registry, which nothing ever moves to the queue: under `./run serve` the
    payment's webhook is never delivered again and the booking stays "awaiting
    payment" until the sweep asks the gateway (the tests hide it: release_scheduled
    moves sandbox jobs by hand). The sandbox worker, like the service's, must run with
    the scheduler (and, in burst mode, exit: our _Periodic must not start a scheduler
    process a burst worker then has to stop; a SIGTERM landing before that process
    installed its handlers is lost, and the worker waits for it for ever)."""
    def events() -> int:
        with transaction() as s:
            return s.scalar(select(func.count()).select_from(GatewayEvent))

    # The service is away when the emulator first delivers (nothing listens there).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    public = os.environ["PUBLIC_BASE_URL"]
    os.environ["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{dead_port}"
    reset_settings()
    try:
        razorpay.send_webhooks([{"entity": "event", "event": "rev8.test", "payload": {},
                                 "contains": []}])
        run_jobs((SANDBOX_QUEUE,))
    finally:
        os.environ["PUBLIC_BASE_URL"] = public
        reset_settings()
    assert events() == 0
    registry = ScheduledJobRegistry(queue=queue(SANDBOX_QUEUE))
    waiting = registry.get_job_ids()
    assert len(waiting) == 1, "the delivery is not waiting for its retry"
    # Its minute has passed (RQ's scheduler goes by the wall clock: the entry is due now).
    redis_client().zadd(registry.key, {waiting[0]: int(datetime.now(UTC).timestamp()) - 1})
    # The sandbox worker as `./run serve` starts it (here in burst mode: run what is due).
    env = dict(os.environ, WORKER_NICE="0")
    try:
        done = subprocess.run([sys.executable, "-m", "core.cli", "sandbox-worker", "--burst"],
                              env=env, timeout=60, capture_output=True)
    except subprocess.TimeoutExpired:
        pytest.fail("the burst sandbox worker did not exit")
    assert done.returncode == 0, done.stderr[-2000:]
    assert events() == 1, "the refused webhook was never delivered again"


# --- 3. one retry interval: a reply's failed first try is never retried -------------------


def test_a_drained_reply_s_failed_first_try_is_retried_with_one_retry_interval(
        live, monkeypatch):
    """OUTBOX_RETRY_INTERVALS with one value (say "60") makes OUTBOX_MAX_RETRIES default to
    1 (config: len(intervals), minimum 1). A reply sent right after its drain turn
    (queue_message(send_after_commit=True) -> outbox.send_now) that Twilio refuses once
    becomes its retry job in core.services.outbox._retry_later, which builds
    Retry(max=max_retries - 1 = 0): RQ refuses max 0 (ValueError), the after-commit action
    fails ("after-commit action failed"), and no retry is scheduled: the customer's
    answer waits for the minute sweep (a minute or two) instead of its one interval."""
    monkeypatch.setenv("OUTBOX_RETRY_INTERVALS", "10")
    reset_settings()
    try:
        assert get_settings().outbox_max_retries == 1
        redis_client().set(FAIL_NEXT_KEY, 1)  # the emulator answers 503 once
        with transaction() as s:
            oid = outbox.queue_message(s, channel="whatsapp", to="+919876500002",
                                       body="Namaste", reply=True, send_after_commit=True)
        with transaction() as s:
            assert s.get(OutboxMessage, oid).status == "pending"  # the first try failed
        # The retry is due after its one interval (10 s).
        assert release_scheduled(timedelta(seconds=11)) == 1, "no retry was scheduled"
        run_jobs()
        with transaction() as s:
            row = s.get(OutboxMessage, oid)
            assert (row.status, row.attempts) == ("delivered", 2)
    finally:
        monkeypatch.undo()
        reset_settings()


# --- 4. a chat backlog holds back payment links and dispatch -------------------------------


def test_a_chat_backlog_does_not_hold_the_default_queue_back_until_it_is_gone(
        client, monkeypatch):
    """core.adapters.queue.QUEUES puts "inbound" before "default" and a worker takes from
    the first queue with a job; a drainer that used its budget (DRAINER_BUDGET_S, 20 s)
    while contacts still wait enqueues a fresh drainer on "inbound"
    (inbound.drain_ready -> schedule_drainer) and leaves. So while customers keep writing
    (READY never empty at a handover), every worker goes from drainer to drainer and
    never reaches "default": payment links (paylink-*), start_dispatch, offer timeouts,
    refunds and the dispatch and payments sweeps wait until the chat backlog is gone, a
    customer who just confirmed her booking in chat waits for her link as long as the
    rush lasts. Here each drainer's budget is used up by one contact (a backlog of eight
    budgets: 160 s of work in production); a job waiting on "default" meanwhile must get
    a worker before the last of them, not after the whole backlog. (The drainers are told
    by their function: a hand-over may wait on "default", behind the jobs there.)"""
    monkeypatch.setattr(inbound, "DRAINER_BUDGET_S", 0.0)
    monkeypatch.setenv("DRAIN_THREADS", "1")
    for i in range(8):
        phone = f"+9198123480{i:02d}"
        params = {"MessageSid": f"SMrev8q{i}", "AccountSid": "ACsandbox",
                  "From": f"whatsapp:{phone}", "To": "whatsapp:+14155238886", "Body": "hi",
                  "NumMedia": "0", "WaId": phone.lstrip("+"), "ProfileName": "Asha"}
        assert post_twilio(client, "/webhooks/whatsapp", params).status_code == 200
    # A payment link or an offer timeout, due now, waiting on its queue meanwhile.
    queue("default").enqueue(f"{__name__}.mark_ran", "default", job_id="rev8-default")
    order: list[str] = []

    class Recording(SimpleWorker):
        def execute_job(self, job, queue):  # noqa: ANN001 (RQ's signature)
            order.append("drainer" if job.func_name == inbound.DRAIN_JOB else job.origin)
            return super().execute_job(job, queue)

    worker = Recording([queue(n) for n in QUEUES], connection=redis_client(),
                       serializer=JSONSerializer)
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
    assert ran() == ["default"]
    assert order.count("drainer") >= 8  # one drainer per contact: the backlog
    assert "drainer" in order[order.index("default") + 1:], (
        "the default queue's job waited for the whole chat backlog", order)


def test_a_hand_over_waiting_behind_default_jobs_is_counted_by_the_inbox_sweep(
        client, monkeypatch):
    """The other side of test 4's fix (f11): a drainer's hand-over that waits on "default",
    behind its jobs, is a drainer. The inbox sweep, which starts one when READY waits
    with none about (inbound.sweep_inboxes -> _drain_jobs), must count it, not start a
    second past the drainer count; and the hand-over, once its turn comes, drains the
    rest."""
    monkeypatch.setattr(inbound, "DRAINER_BUDGET_S", 0.0)
    monkeypatch.setattr(inbound, "DRAINERS", 1)
    monkeypatch.setenv("DRAIN_THREADS", "1")
    for i in range(2):
        phone = f"+9198123481{i:02d}"
        params = {"MessageSid": f"SMrev8h{i}", "AccountSid": "ACsandbox",
                  "From": f"whatsapp:{phone}", "To": "whatsapp:+14155238886", "Body": "hi",
                  "NumMedia": "0", "WaId": phone.lstrip("+"), "ProfileName": "Asha"}
        assert post_twilio(client, "/webhooks/whatsapp", params).status_code == 200
    assert queue("inbound").count == 1  # one drainer (DRAINERS) for both contacts
    queue("default").enqueue(f"{__name__}.mark_ran", "default", job_id="rev8-default")
    worker = SimpleWorker([queue(n) for n in QUEUES], connection=redis_client(),
                          serializer=JSONSerializer)
    worker.work(burst=True, max_jobs=1, with_scheduler=False, logging_level="WARNING")
    # The drainer took one contact, used its budget and handed over behind the job.
    waiting = queue("default").get_job_ids()
    assert waiting[0] == "rev8-default" and len(waiting) == 2, waiting
    assert queue("inbound").count == 0
    inbound.sweep_inboxes()
    assert queue("inbound").count == 0, "the sweep started a drainer past the count"
    run_jobs()  # the default job, then the hand-over (and the replies, on their queue)
    assert ran() == ["default"]
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(InboundEvent)) == 2


# --- 5. one bad row stops the whole dispatch safety net ------------------------------------


def test_one_offer_whose_expiry_fails_does_not_stop_the_rest_of_the_dispatch_sweep(
        live, frozen, monkeypatch):  # noqa: F811 (the fixture)
    """core.services.dispatch.sweep runs its steps one after the other with nothing
    between them: the first offer whose expiry raises (a deadlock with a rider answering
    at that moment, or any one row the code cannot handle) ends the run, and every step
    after it is skipped: paid bookings whose start_dispatch was lost are not started,
    late pickups and deliveries are not chased. A row that keeps raising stops them
    every minute, for good. The payments sweep ("one booking's trouble must not stop the
    sweep for the others") and the outbox sweep (each part on its own, the first error
    raised at the end) do not; workers.dispatch.sweep even says "one bad leg must not
    leave customers unasked", yet isolates only the ratings."""
    make_partner("First", LAXMIPUR)
    make_partner("Second", (26.90, 84.49))
    stuck = paid_booking()
    start(stuck)
    bad_offer = offers(legs_of(stuck)[0].id)[0].id
    queue("default").fetch_job(f"offer-timeout-{bad_offer}").delete()  # lost with a worker
    waiting = paid_booking()  # paid at T0; its start_dispatch job was lost
    real = dispatch.offer_timeout

    def failing(offer_id: int) -> str:
        if offer_id == bad_offer:
            raise RuntimeError("this offer cannot be expired now")
        return real(offer_id)

    monkeypatch.setattr(dispatch, "offer_timeout", failing)
    freeze_at(200)  # past the offer's time and grace, and START_GRACE after the payment
    with contextlib.suppress(RuntimeError):  # raising once the others ran is fine
        dispatch.sweep()
    with transaction() as s:
        assert s.get(Booking, waiting).status == "dispatching", (
            "a paid booking was left unstarted behind one bad offer")

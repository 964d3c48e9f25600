"""Liveness, readiness and Prometheus metrics.

/healthz and /readyz answer anyone (load balancers probe them), /readyz with ready or not
only; /metrics and /readyz's details ask for METRICS_TOKEN as a bearer token when it is
set (production needs one, or METRICS_PUBLIC=1 for a private network).
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from datetime import timedelta
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from rq import Worker
from sqlalchemy import func, literal, select, text
from sqlalchemy.orm import Session

from core import clock
from core.adapters import db
from core.adapters.models import OutboxMessage
from core.adapters.queue import QUEUES, queue
from core.adapters.redis_conn import redis_client, write_state
from core.adapters.schema import code_revisions, schema_state  # noqa: F401 (callers' name)
from core.config import Settings, get_settings
from core.web.errors import error_response

log = logging.getLogger(__name__)

bp = Blueprint("ops", __name__)

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("http_requests_total", "HTTP requests", ["method", "endpoint", "status"],
                   registry=REGISTRY)
LATENCY = Histogram("http_request_duration_seconds", "HTTP request latency", ["endpoint"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
                    registry=REGISTRY)
# Requests that came with X-Forwarded-For while PROXY_HOPS=0: behind a proxy, every client
# then has the proxy's address, and the per-IP sign-in limits become one limit for all.
FORWARDED_IGNORED = Counter(
    "http_forwarded_for_ignored", "Requests with X-Forwarded-For ignored (PROXY_HOPS=0)",
    registry=REGISTRY)
# Requests that came through fewer proxies than PROXY_HOPS says (fewer X-Forwarded-For
# addresses, or none): the proxy fix then takes none of them, so every such client has the
# address of the proxy next to us, as with PROXY_HOPS=0 behind one. A balancer's own
# probes of /healthz and /readyz come without the header and are not counted.
FORWARDED_SHORT = Counter(
    "http_forwarded_for_short",
    "Requests with fewer X-Forwarded-For addresses than PROXY_HOPS (client address not taken)",
    registry=REGISTRY)
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


# Outbox rows counted at each scrape: only those that stay few. Messages still on our
# side (waiting, being sent, accepted by Twilio but not sent yet) are a backlog; those
# that failed lately say whether sending works. Counting every row by status read all the
# messages ever sent (2M at a year's volume: 150 ms a scrape).
OUTBOX_WAITING = ("pending", "sending", "queued")
OUTBOX_FAILED = ("failed", "undelivered")
OUTBOX_FAILED_WITHIN = timedelta(hours=1)


class StateCollector:
    """Read queue depth and outbox counts at scrape time, so every process agrees."""

    def collect(self):
        depth = GaugeMetricFamily("rq_queue_depth", "Jobs waiting per RQ queue", labels=["queue"])
        failed_jobs = GaugeMetricFamily(
            "rq_failed_jobs", "Jobs in each RQ queue's failed registry (retries used up: "
            "look at them, re-run or delete them)", labels=["queue"])
        workers = GaugeMetricFamily(
            "rq_workers", "RQ workers registered to take each queue's jobs (0: nobody does)",
            labels=["queue"])
        try:
            for name in QUEUES:
                q = queue(name)
                depth.add_metric([name], q.count)
                # Without the registry's clean-up: a scrape reads, it does not delete.
                failed_jobs.add_metric([name], q.failed_job_registry.get_job_count(
                    cleanup=False))
                workers.add_metric([name], Worker.count(connection=q.connection, queue=q))
        except Exception:  # a scrape must not fail because Redis blinked
            pass
        yield depth
        yield failed_jobs
        yield workers
        outbox = GaugeMetricFamily(
            "outbox_messages", "Outbox messages not sent yet (pending, sending, queued)",
            labels=["status"])
        failed = GaugeMetricFamily(
            "outbox_messages_failed_last_hour",
            "Outbox messages that failed (failed, undelivered) in the last hour",
            labels=["status"])
        try:
            with db.transaction() as session:
                waiting, failures = outbox_counts(session)
            for status in OUTBOX_WAITING:
                outbox.add_metric([status], waiting.get(status, 0))
            for status in OUTBOX_FAILED:
                failed.add_metric([status], failures.get(status, 0))
        except Exception:
            pass
        yield outbox
        yield failed


def outbox_counts(session: Session) -> tuple[dict[str, int], dict[str, int]]:
    """(messages not sent yet, messages failed in the last hour) by status. Read through
    ix_outbox_messages_status and the partial index of failures (migration 0025); the
    failure statuses are written into the statement so that index is provably usable."""
    waiting = session.execute(
        select(OutboxMessage.status, func.count())
        .where(OutboxMessage.status.in_(OUTBOX_WAITING)).group_by(OutboxMessage.status)
    ).all()
    # failed_at, not updated_at: a later UPDATE (the retention run's redaction, an
    # erasure) moves updated_at of messages that failed long ago. failed_at is the
    # database's time (a trigger's now(), migration 0025), hence its now() here.
    failures = session.execute(
        select(OutboxMessage.status, func.count())
        .where(OutboxMessage.status.in_([literal(status, literal_execute=True)
                                         for status in OUTBOX_FAILED]),
               OutboxMessage.failed_at > func.now() - OUTBOX_FAILED_WITHIN)
        .group_by(OutboxMessage.status)
    ).all()
    return {s: n for s, n in waiting}, {s: n for s, n in failures}


STATE = StateCollector()
REGISTRY.register(STATE)
_combined: CollectorRegistry | None = None


def scrape_registry() -> CollectorRegistry:
    """What /metrics reports. Under gunicorn (core.web.gunicorn_conf) the request metrics
    of every worker, added up from their files; in a single process, its own."""
    global _combined
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    if _combined is None:
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)
        combined.register(STATE)
        _combined = combined
    return _combined


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


# A schema found at the code's head (or ahead of it) is not read again for this long: a
# probe every few seconds costs no query, and a schema moved back is seen within it.
SCHEMA_OK_FOR_S = 30.0


def _schema_check() -> str:
    """The schema check of /readyz: a web whose release did not migrate (or failed
    part-way) would fail every request touching the newest table or column."""
    cached = current_app.extensions.setdefault("ridechain_schema_ok", {})
    at = cached.get("at")
    if at is not None and time.monotonic() - at < SCHEMA_OK_FOR_S:
        return "ok"
    with db.engine().connect() as conn:
        table = conn.scalar(text("SELECT to_regclass('alembic_version')"))
        versions = set(conn.scalars(text("SELECT version_num FROM alembic_version"))) \
            if table is not None else set()
    state = schema_state(versions)
    if state == "ok":
        cached["at"] = time.monotonic()
    return state


def _settings() -> Settings:
    """The settings the app was made with (core.app.create_app), else the process's."""
    return current_app.extensions.get("ridechain_settings") or get_settings()


def _bearer() -> str | None:
    """The bearer token of the request, if it sent one."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _metrics_refusal() -> Response | None:
    """Why this request may not read the metrics (an error answer), or None if it may."""
    settings = _settings()
    if settings.metrics_token is None:
        if settings.is_production and not settings.metrics_public:
            # The config refuses this; an app built by hand with neither stays closed.
            return error_response(403, "metrics_closed",
                                  "metrics are closed: set METRICS_TOKEN (or METRICS_PUBLIC=1)")
        return None
    given = _bearer()
    if given is None:
        return error_response(401, "unauthenticated",
                              "send the metrics token as Authorization: Bearer <token>")
    # Constant time: a comparison that stops at the first wrong byte tells how many were
    # right. Bytes, as compare_digest takes only ASCII in str.
    if not hmac.compare_digest(given.encode(), settings.metrics_token.encode()):
        return error_response(401, "invalid_token", "the metrics token is wrong")
    return None


@bp.get("/readyz")
def readyz():
    checks = readiness()
    ready = all(v == "ok" for v in checks.values())
    status = 200 if ready else 503
    if not ready:  # what a stranger is not told, operators read in the logs
        _log_not_ready(checks)
    if _metrics_refusal() is not None:
        # Load balancers need only this; exception names and schema revisions are
        # nobody else's business.
        return jsonify({"status": "ready" if ready else "not_ready"}), status
    return jsonify({"status": "ready" if ready else "not_ready", "checks": checks}), status


# A load balancer probes every few seconds: a not-ready state is logged when it changes,
# and again at most once a minute while it lasts (per process), not at every probe.
NOT_READY_LOG_EVERY_S = 60
_not_ready_logged: dict[str, Any] = {"checks": None, "at": 0.0}
_not_ready_lock = threading.Lock()


def _log_not_ready(checks: dict[str, str]) -> None:
    now = clock.now().timestamp()
    with _not_ready_lock:
        last = _not_ready_logged
        if last["checks"] == checks and now - last["at"] < NOT_READY_LOG_EVERY_S:
            return
        last["checks"], last["at"] = dict(checks), now
    log.warning("not ready", extra={"checks": checks})


def readiness() -> dict[str, str]:
    """Each dependency's state: "ok", or what is wrong."""
    checks: dict[str, str] = {}
    try:
        db.ping()
        checks["postgres"] = "ok"
    except db.ReadOnlyDatabase as exc:
        # It answers reads but refuses every booking, sign-in and webhook's first write.
        checks["postgres"] = f"read_only: {exc}"
    except Exception as exc:
        checks["postgres"] = f"down: {type(exc).__name__}"
    if not checks["postgres"].startswith("down"):
        try:
            checks["schema"] = _schema_check()
        except Exception as exc:
            checks["schema"] = f"down: {type(exc).__name__}"
    else:
        checks["schema"] = "unknown: postgres down"
    try:
        # A replica (the old primary after a failover), and a master that is full or
        # loading, answer PING but take no writes: write_state writes.
        checks["redis"] = write_state(redis_client())
    except Exception as exc:
        checks["redis"] = f"down: {type(exc).__name__}"
    return checks


@bp.get("/metrics")
def metrics():
    refused = _metrics_refusal()
    if refused is not None:
        return refused
    return Response(generate_latest(scrape_registry()), mimetype=CONTENT_TYPE_LATEST)


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def instrument(app: Flask, settings: Settings | None = None) -> None:
    """Count and time every request by its route (not its raw path: bounded labels); keep
    the app's settings for /metrics; watch for a proxy PROXY_HOPS does not know of."""
    settings = settings or get_settings()
    app.extensions["ridechain_settings"] = settings
    warned: list[bool] = []
    warned_short: list[bool] = []

    @app.before_request
    def _start() -> None:
        g._t0 = time.perf_counter()
        if not settings.proxy_hops and "HTTP_X_FORWARDED_FOR" in request.environ:
            _forwarded_ignored(settings, warned)
        elif settings.proxy_hops and request.path not in PROBE_PATHS and _forwarded_count(
                request.environ) < settings.proxy_hops:
            _forwarded_short(settings, warned_short)

    @app.after_request
    def _stop(response):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        # gunicorn passes any upper-case token as a method: made-up ones share one label.
        method = request.method if request.method in HTTP_METHODS else "other"
        REQUESTS.labels(method, endpoint, str(response.status_code)).inc()
        if hasattr(g, "_t0"):
            LATENCY.labels(endpoint).observe(time.perf_counter() - g._t0)
        return response


def _forwarded_count(environ: dict) -> int:
    """How many addresses X-Forwarded-For carries (the proxies it came through)."""
    return len([a for a in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()])


def _forwarded_short(settings: Settings, warned: list[bool]) -> None:
    """A request came through fewer proxies than PROXY_HOPS: count it, and in production
    say once (per process) what that costs. No address is logged."""
    FORWARDED_SHORT.inc()
    if settings.is_production and not warned:
        warned.append(True)
        log.warning("requests come with fewer X-Forwarded-For addresses than PROXY_HOPS="
                    f"{settings.proxy_hops}: their client address is not taken, so they all "
                    "have the address of the proxy next to us and share its per-IP sign-in "
                    "limits; set PROXY_HOPS to the number of proxies in front "
                    "(README: Configuration)")


def _forwarded_ignored(settings: Settings, warned: list[bool]) -> None:
    """A request came with X-Forwarded-For while PROXY_HOPS=0: count it, and in production
    say once (per process) what that costs. No address is logged: the proxy's would
    say nothing useful, the client's is personal."""
    FORWARDED_IGNORED.inc()
    if settings.is_production and not warned:
        warned.append(True)  # a race may log it twice at most: harmless
        log.warning("requests come with X-Forwarded-For but PROXY_HOPS=0: if a load "
                    "balancer or proxy is in front, every client has its address and the "
                    "per-IP sign-in limits become one limit for everyone; set PROXY_HOPS "
                    "to the number of proxies (README: Configuration)")

"""Every error leaves as JSON ({"error": {"code", "message"}}), never an HTML traceback."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import HTTPException

from core.domain.errors import (
    Conflict,
    DomainError,
    InvalidTransition,
    NotFound,
    Unavailable,
    ValidationError,
)

log = logging.getLogger(__name__)

STATUS_FOR = [
    (InvalidTransition, 409),
    (Conflict, 409),
    (NotFound, 404),
    (ValidationError, 422),
    (Unavailable, 503),
]


def error_response(status: int, code: str, message: str, field: str | None = None, *,
                   retry_after: int | None = None):
    """The JSON error; ``retry_after``: seconds until a 429's limit lets the client in."""
    body: dict[str, object] = {"code": code, "message": message}
    if field:
        body["field"] = field
    resp = jsonify({"error": body})
    resp.status_code = status
    if status == 503:
        resp.headers["Retry-After"] = "5"
    elif retry_after is not None:
        resp.headers["Retry-After"] = str(max(1, int(retry_after)))
    if status == 401:
        # RFC 9110: a 401 names the scheme it wants (ours is a bearer token).
        resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


def register(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        resp = error_response(exc.code or 500, code, exc.description or exc.name or "error")
        # Werkzeug's own headers (a 405's Allow, say); the body is ours, and so its type.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                resp.headers[name] = value
        return resp

    @app.errorhandler(DomainError)
    def domain_error(exc: DomainError):
        status = getattr(exc, "status", None) or next(
            (s for cls, s in STATUS_FOR if isinstance(exc, cls)), 400)
        return error_response(status, exc.code, exc.message, exc.field,
                              retry_after=getattr(exc, "retry_after", None))

    @app.errorhandler(StaleDataError)
    def lost_race(exc: Exception):
        # Someone changed the same booking or leg a moment earlier; nothing was saved.
        return error_response(409, "concurrent_update",
                              "This was changed by someone else just now; please retry.")

    @app.errorhandler(IntegrityError)
    def integrity(exc: Exception):
        # Two requests raced to create the same thing; the loser's transaction rolled back
        # whole. A provider retries a 503 (and then finds the winner's row); an app gets 409.
        from flask import request

        log.warning("integrity conflict: %s", type(getattr(exc, "orig", exc)).__name__)
        if request.path.startswith("/webhooks/"):
            return error_response(503, "busy_retry", "Please retry this request.")
        return error_response(409, "conflict", "This clashed with another change; retry.")

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def database_down(exc: Exception):
        # Razorpay retries a 5xx; Twilio calls the Fallback URL once (a messaging webhook is
        # not retried). The transaction was rolled back, nothing half-saved.
        log.error("database unavailable: %s", type(exc).__name__)
        return error_response(503, "database_unavailable",
                              "The service is briefly unavailable; please retry.")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        if _is_database_away(exc):
            # A server that answered but takes no writes (a standby after a failover:
            # SQLSTATE 25006, an InternalError): away as much as one that does not answer.
            return database_down(exc)
        if _is_redis_down(exc):
            log.error("redis unavailable: %s", type(exc).__name__)
            return error_response(503, "cache_unavailable",
                                  "The service is briefly unavailable; please retry.")
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Something went wrong on our side.")


def _is_database_away(exc: Exception) -> bool:
    from core.adapters.db import database_away

    return database_away(exc)


def _is_redis_down(exc: Exception) -> bool:
    from core.adapters.redis_conn import redis_down

    return redis_down(exc)

"""RQ jobs of the emulators: what Twilio would do after accepting a message."""

from __future__ import annotations

import logging
from http import client as http_client
from urllib.parse import urlencode, urlsplit

from sqlalchemy import select, update
from twilio.request_validator import RequestValidator

from core.adapters.db import transaction
from core.adapters.models import SandboxMessage
from core.adapters.redis_conn import redis_client
from core.config import get_settings

log = logging.getLogger(__name__)


class _Callbacks:
    """Form POSTs over kept-alive connections, one per host (the standard library's
    http.client: in a benchmark the emulator shares the machine with the service under
    test, and requests cost it more than the callback costs the service)."""

    def __init__(self, timeout_s: float = 10) -> None:
        self._conns: dict[tuple[str, str], http_client.HTTPConnection] = {}
        self._timeout_s = timeout_s

    def post(self, url: str, params: dict[str, str], headers: dict[str, str]) -> int:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        body = urlencode(params)
        headers = {"Content-Type": "application/x-www-form-urlencoded", **headers}
        for attempt in (1, 2):
            conn = self._conns.get(key)
            if conn is None:
                kind = (http_client.HTTPSConnection if parts.scheme == "https"
                        else http_client.HTTPConnection)
                conn = self._conns[key] = kind(parts.netloc, timeout=self._timeout_s)
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                return response.status
            except (OSError, http_client.HTTPException):
                # The server closed a kept-alive connection (or is away): once more on a
                # new one; a repeated callback is harmless, as with Twilio's own retries.
                conn.close()
                self._conns.pop(key, None)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


# Hash To -> "<status>:<Twilio error code>" ("undelivered:30003", "failed:30006"; a bare
# code is "undelivered"): messages to that number are reported so, not delivered.
UNDELIVERED_TO_KEY = "sandbox:twilio:undelivered_to"


def report_statuses(batch: int = 200) -> int:
    """Mark queued sandbox messages sent, then delivered (or as set per number), POSTing
    Twilio's signed status callbacks for each; return how many messages were reported.

    Runs until the queue is empty; the flag that says a job is on it is dropped only then
    (and taken back if a message arrived meanwhile), so every message is reported once.
    """
    from sandbox.twilio import STATUS_JOB_FLAG, STATUS_QUEUE

    r = redis_client()
    validator = RequestValidator(get_settings().twilio_auth_token)
    http = _Callbacks()
    reported = 0
    while True:
        sids = [s.decode() for s in (r.lpop(STATUS_QUEUE, batch) or [])]
        if not sids:
            r.delete(STATUS_JOB_FLAG)
            if r.llen(STATUS_QUEUE) and r.set(STATUS_JOB_FLAG, "1", nx=True, ex=300):
                continue
            return reported
        r.expire(STATUS_JOB_FLAG, 300)
        with transaction() as session:
            rows = session.execute(
                select(SandboxMessage.sid, SandboxMessage.status_callback,
                       SandboxMessage.account_sid, SandboxMessage.to_addr,
                       SandboxMessage.from_addr)
                .where(SandboxMessage.sid.in_(sids), SandboxMessage.status_callback.isnot(None))
            ).all()
        # A carrier that cannot deliver to a number (set per number, for tests and demos):
        # "sent", then "undelivered" with its error code, where others get "delivered". A
        # message set to "failed" was never sent (Twilio: queued -> failed): its only
        # callback is "failed", with its error code.
        lost = {k.decode(): v.decode().rpartition(":")
                for k, v in r.hgetall(UNDELIVERED_TO_KEY).items()}
        for step in ("sent", "delivered"):
            finals: dict[str, list[str]] = {}
            for sid, url, account, to, from_ in rows:
                final, _, code = lost.get(to, ("", "", ""))
                if step == "sent" and code and final == "failed":
                    continue
                status = (final or "undelivered") if step == "delivered" and code else step
                finals.setdefault(status, []).append(sid)
                params = {"MessageSid": sid, "SmsSid": sid, "AccountSid": account,
                          "MessageStatus": status, "SmsStatus": status, "To": to,
                          "From": from_, "ApiVersion": "2010-04-01"}
                if status != step:
                    params["ErrorCode"] = code
                signature = validator.compute_signature(url, params)
                try:
                    http.post(url, params, {"X-Twilio-Signature": signature})
                except (OSError, http_client.HTTPException):
                    log.warning("sandbox status callback failed", extra={"status": status})
            with transaction() as session:
                for status, done in finals.items():
                    session.execute(update(SandboxMessage)
                                    .where(SandboxMessage.sid.in_(done)).values(status=status))
        reported += len(rows)

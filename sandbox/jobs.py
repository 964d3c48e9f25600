"""RQ jobs of the emulators: what Twilio would do after accepting a message."""

from __future__ import annotations

import logging

import requests
from sqlalchemy import select, update
from twilio.request_validator import RequestValidator

from core.adapters.db import transaction
from core.adapters.models import SandboxMessage
from core.adapters.redis_conn import redis_client
from core.config import get_settings

log = logging.getLogger(__name__)


def report_statuses(batch: int = 200) -> int:
    """Mark queued sandbox messages sent, then delivered, POSTing Twilio's signed status
    callbacks for each; return how many messages were reported.

    Runs until the queue is empty; the flag that says a job is on it is dropped only then
    (and taken back if a message arrived meanwhile), so every message is reported once.
    """
    from sandbox.twilio import STATUS_JOB_FLAG, STATUS_QUEUE

    r = redis_client()
    validator = RequestValidator(get_settings().twilio_auth_token)
    http = requests.Session()
    http.trust_env = False  # our own callback URLs: no proxy or netrc look-up per POST
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
        for status in ("sent", "delivered"):
            for sid, url, account, to, from_ in rows:
                params = {"MessageSid": sid, "SmsSid": sid, "AccountSid": account,
                          "MessageStatus": status, "SmsStatus": status, "To": to,
                          "From": from_, "ApiVersion": "2010-04-01"}
                signature = validator.compute_signature(url, params)
                try:
                    http.post(url, data=params, timeout=10,
                              headers={"X-Twilio-Signature": signature})
                except requests.RequestException:
                    log.warning("sandbox status callback failed", extra={"status": status})
            with transaction() as session:
                session.execute(update(SandboxMessage)
                                .where(SandboxMessage.sid.in_([row[0] for row in rows]))
                                .values(status=status))
        reported += len(rows)

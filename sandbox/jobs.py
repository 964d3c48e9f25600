"""RQ jobs of the emulators: what Twilio would do after accepting a message."""

from __future__ import annotations

import requests
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from core.adapters.db import transaction
from core.adapters.models import SandboxMessage
from core.config import get_settings


def report_status(sid: str) -> list[int]:
    """Mark a sandbox message sent then delivered, POSTing Twilio's signed callbacks."""
    settings = get_settings()
    with transaction() as session:
        msg = session.scalar(select(SandboxMessage).where(SandboxMessage.sid == sid))
        if msg is None or not msg.status_callback:
            return []
        url, account, to, from_ = msg.status_callback, msg.account_sid, msg.to_addr, msg.from_addr
    validator = RequestValidator(settings.twilio_auth_token)
    codes = []
    for status in ("sent", "delivered"):
        params = {"MessageSid": sid, "SmsSid": sid, "AccountSid": account,
                  "MessageStatus": status, "SmsStatus": status, "To": to, "From": from_,
                  "ApiVersion": "2010-04-01"}
        resp = requests.post(url, data=params, timeout=10,
                             headers={"X-Twilio-Signature": validator.compute_signature(url,
                                                                                        params)})
        codes.append(resp.status_code)
        resp.raise_for_status()
        with transaction() as session:
            row = session.scalar(select(SandboxMessage).where(SandboxMessage.sid == sid))
            if row is not None:
                row.status = status
    return codes

"""Structured JSON logs to stdout, with request/job ids bound and phone numbers masked.

Masking is done here, on every record, so a careless f-string cannot leak a full number.
OTPs, tokens and payment payloads are simply never passed to a logger.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

# +E.164 (optionally after "whatsapp:", or URL-encoded as %2B), Indian mobiles with their
# country code and no "+" (a WhatsApp id), and bare 10-digit Indian mobiles.
_PHONE = re.compile(r"(?:(?<![\w])\+|%2B)(\d{8,15})(?!\d)"
                    r"|(?<!\d)(91)?([6-9]\d{5})(\d{4})(?!\d)", re.IGNORECASE)


def mask_phones(text: str) -> str:
    """Replace phone numbers in free text by their masked form (+91******3210)."""

    def repl(m: re.Match[str]) -> str:
        if m.group(1):
            digits = m.group(1)
            cc_len = max(1, len(digits) - 10)  # national numbers are 10 digits in India/NANP
            return f"+{digits[:cc_len]}{'*' * (len(digits) - cc_len - 4)}{digits[-4:]}"
        return f"{m.group(2) or ''}{'*' * len(m.group(3))}{m.group(4)}"

    return _PHONE.sub(repl, text)


def _masked(value: object) -> object:
    """Mask phone numbers anywhere in a log value: strings, numbers, lists and dicts."""
    if isinstance(value, str):
        return mask_phones(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        masked = mask_phones(str(value))
        return value if masked == str(value) else masked
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_masked(v) for v in value]
    return mask_phones(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, ids, extra fields."""

    RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask_phones(record.getMessage()),
        }
        rid, jid = request_id.get(), job_id.get()
        if rid:
            payload["request_id"] = rid
        if jid:
            payload["job_id"] = jid
        for key, value in record.__dict__.items():
            if key not in self.RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = record.stack_info
        return json.dumps(_masked(payload), ensure_ascii=False, default=str)


def configure(level: str = "INFO") -> None:
    """Send every log record to stdout as JSON (idempotent)."""
    root = logging.getLogger()
    if any(getattr(h, "_ridechain", False) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler._ridechain = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # Library loggers that could echo URLs with phone numbers or auth: keep them quiet.
    for noisy in ("twilio.http_client", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

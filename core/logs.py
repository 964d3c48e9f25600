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
import unicodedata
from datetime import UTC, datetime

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

# A request id a caller (a proxy in front, a client) may give us in X-Request-Id: it goes
# into every log line of the request and back in the answer's header, so only a short
# token of safe characters is taken (a UUID, nginx's $request_id, our own hex ids); a
# value with a newline, a quote, spaces or over 64 characters is replaced by our own.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def accepted_request_id(value: object) -> str | None:
    """`value` when it is a safe request id to log and echo, else None."""
    if isinstance(value, str) and _SAFE_REQUEST_ID.fullmatch(value):
        return value
    return None

# What may stand between a number's digits, as normalize_phone (core.domain.phone) takes
# it: any whitespace (a no-break space from a web page, a narrow one, a tab), a hyphen or
# the Unicode dashes (an en dash as word processors type it), brackets. A number the
# service reads as a phone is masked as one.
_SPACES = "".join(ch for ch in map(chr, range(0x10000)) if ch.isspace())
_SEP_CHARS = _SPACES + "-()" + "".join(map(chr, range(0x2010, 0x2016)))
_SEP = "[" + "".join(re.escape(ch) for ch in _SEP_CHARS) + "]"
_SPACE = "[" + "".join(re.escape(ch) for ch in _SPACES) + "]"
# Not part of a word or an id: no letter or digit right before or after a number, so ten
# digits inside a request id ("3722af7113794544"), a UUID or a gateway's id are not taken
# for a mobile. Letters are ASCII ones (ids are ASCII): a number written against Hindi
# text is still masked. A URL escape ("%3A" before it) is not a word.
_BEFORE = r"(?:(?<![0-9A-Za-z])|(?<=%[0-9A-Fa-f]{2}))"
_AFTER = r"(?![0-9A-Za-z])"
# +E.164 (optionally after "whatsapp:", or URL-encoded as %2B): its digits together, or
# grouped as people type them ("+1 415 523 8886", "+91.98123.45678", "+91 (981) 234 5678").
_E164 = rf"(?:(?<![\w])\+|%2B)(\d(?:(?:{_SEP}|\.){{0,2}}\d){{7,14}})(?!\d)"
# An Indian mobile the way people write it: with or without +91 / 0091 / 91 / a trunk 0,
# digits grouped by spaces or hyphens ("98220 12345", "+91-98220-12345"), in any script's
# digits (a Hindi keyboard types ९८२२०...: see _DIGITS). Only a number whose ten digits
# start with 6-9 is masked (checked in _mask_mobile).
# Between digits: a space, a dash or brackets, at most two ("98220  12345", "(981) 234");
# not a dot without a "+" (26.89271234 is a latitude).
_GAP = rf"{_SEP}{{0,2}}"
_MOBILE = (rf"{_BEFORE}((?:\+|%2B|00)?(?:{_SPACE}?91{_SEP}*)?)(\d?)"
           rf"(\d(?:{_GAP}\d){{5}})({_GAP}\d(?:{_GAP}\d){{3}}){_AFTER}")
# A WhatsApp id is the number's digits without "+" (WaId=14155238886, "wa_id": "44..."):
# a foreign one matches neither pattern above, so it is found by its name.
_WAID = r"wa_?id[\"']?\s*[:=]\s*[\"']?(\d{7,15})(?!\d)"
_PHONE = re.compile(f"{_E164}|{_MOBILE}|{_WAID}", re.IGNORECASE | re.ASCII)


# Every script's decimal digits as ASCII ones, one character for one: a number typed in
# Devanagari (९८२२०...) is found at the same place in the translated text.
_DIGITS = {cp: str(unicodedata.decimal(chr(cp))) for cp in range(0x80, 0x20000)
           if unicodedata.decimal(chr(cp), None) is not None}


def _mask_mobile(m: re.Match[str]) -> str:
    prefix, trunk, head, tail = m.group(2), m.group(3), m.group(4), m.group(5)
    if trunk not in ("", "0") or head[0] not in "6789":
        return m.group(0)  # not a mobile: a trunk other than 0, or a first digit below 6
    last4 = "".join(c for c in tail if c.isdigit())
    bare = prefix.strip(_SEP_CHARS)
    country = "" if "91" not in bare else "91" if bare == "91" else "+91"
    return f"{country}{'*' * 6}{last4}"


def _masked_e164(digits: str) -> str:
    cc_len = max(1, len(digits) - 10)  # national numbers are 10 digits in India/NANP
    return f"+{digits[:cc_len]}{'*' * (len(digits) - cc_len - 4)}{digits[-4:]}"


def _mask(m: re.Match[str]) -> str:
    if m.group(6):  # a WhatsApp id: its name kept, the number masked as +E.164 without "+"
        return m.group(0)[:m.start(6) - m.start()] + _masked_e164(m.group(6))[1:]
    if m.group(1):
        return _masked_e164(re.sub(r"\D", "", m.group(1)))
    return _mask_mobile(m)


def mask_phones(text: str) -> str:
    """Replace phone numbers in free text by their masked form (+91******3210)."""
    if text.isascii():
        return _PHONE.sub(_mask, text)
    ascii_digits = text.translate(_DIGITS)
    out, at = [], 0
    for m in _PHONE.finditer(ascii_digits):
        masked = _mask(m)
        if masked != m.group(0):
            out += [text[at:m.start()], masked]
            at = m.end()
    return "".join([*out, text[at:]])


# A bank account or an Aadhaar number an operator types in a note ("a/c 3012 3456 7890"):
# 9 digits or more, in any script's digits, with spaces or dashes between (at most two in
# a row). Not in mask_phones: log lines keep their ids and numbers as they are.
_DASHES = "-" + "".join(map(chr, range(0x2010, 0x2016)))
_LONG_NUMBER = re.compile(rf"(?<!\d)\d(?:(?:{_SPACE}|[{re.escape(_DASHES)}]){{0,2}}\d){{8,}}"
                          r"(?!\d)", re.ASCII)


def _mask_long(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    return "*" * (len(digits) - 4) + digits[-4:]


def mask_note(text: str) -> str:
    """Free text an operator typed, as the audit log keeps it for good (a note, a reason):
    phone numbers masked as mask_phones masks them (+91******3210), and any other run of 9
    digits or more (a bank account, an Aadhaar number; spaces and dashes between them
    allowed) cut to its last 4 digits (********9012)."""
    text = mask_phones(text)
    ascii_digits = text if text.isascii() else text.translate(_DIGITS)
    out, at = [], 0
    for m in _LONG_NUMBER.finditer(ascii_digits):
        out += [text[at:m.start()], _mask_long(m)]
        at = m.end()
    return "".join([*out, text[at:]])


# A database error's DETAIL repeats the values of the row or key that failed ("Failing
# row contains (...)", "Key (phone)=(...)"): message bodies, codes, numbers. It is cut
# up to the next part of the error or traceback.
_DB_DETAIL = re.compile(r"DETAIL:.*?(?=\n\[SQL: |\nHINT: |\n\(Background on this error"
                        r"|\n\nThe above exception|\n\nDuring handling|\nTraceback |\Z)",
                        re.S)


# A pre-signed URL's query (S3's X-Amz-Signature and X-Amz-Credential, the older
# Signature and AWSAccessKeyId, a security token) is a key to the object until it expires:
# Twilio's media URL redirects to one, and requests names it in its errors ("403 Client
# Error: Forbidden for url: https://...amazonaws.com/...?X-Amz-..."). Its whole query goes.
_SIGNED_QUERY = re.compile(
    r"\?(?=[^\s'\"<>]*?(?:x-amz-|signature=|awsaccesskeyid=|security-token=))[^\s'\"<>]*",
    re.IGNORECASE)
SIGNED_QUERY_HIDDEN = "?(signed query hidden)"


def scrub(text: str) -> str:
    """A log text without database row values nor signed URLs' queries, and with phone
    numbers masked."""
    text = _SIGNED_QUERY.sub(SIGNED_QUERY_HIDDEN, text) if "?" in text else text
    return mask_phones(_DB_DETAIL.sub("DETAIL: (values hidden)", text))


def _masked(value: object) -> object:
    """Mask phone numbers anywhere in a log value: strings, numbers, lists and dicts."""
    if isinstance(value, str):
        return scrub(value)
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


# RQ's own loggers (rq.worker, rq.job, rq.queue...) put a job's arguments on the record:
# Worker.handle_exception logs every failed try with extra={"arguments": job.args,
# "kwargs": job.kwargs}, whatever log_job_description says. Arguments are a Razorpay
# payload, a photo URL, a spoken text: of an RQ record's extra fields only these are
# written (the exception and its traceback are in the message).
_RQ_EXTRA = frozenset({"func", "queue", "job_id"})


def _from_rq(name: str | None) -> bool:
    return bool(name) and (name == "rq" or str(name).startswith("rq."))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, ids, extra fields."""

    RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        rid, jid = request_id.get(), job_id.get()
        if rid:
            payload["request_id"] = rid
        if jid:
            payload["job_id"] = jid
        rq = _from_rq(record.name)
        for key, value in record.__dict__.items():
            if key in self.RESERVED or key.startswith("_"):
                continue
            if rq and key not in _RQ_EXTRA:
                continue  # a job's arguments (see _RQ_EXTRA)
            payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = record.stack_info
        return json.dumps(_masked(payload), ensure_ascii=False, default=str)


# Library loggers that could echo URLs with phone numbers, auth or what the service
# sends: kept at WARNING whatever LOG_LEVEL is. Twilio's client logs each request's data
# (a message's body: an OTP); urllib3 (requests) its URLs. botocore (boto3, the S3 photo
# store) at DEBUG logs every signed request with its Authorization header (the access key
# id, the SigV4 signature), and botocore.auth the canonical request and the signature.
# gTTS (the IVR's prompt renders) logs the text it speaks and its request.
QUIET_LOGGERS = ("twilio", "twilio.http_client", "urllib3", "werkzeug",
                 "botocore", "boto3", "s3transfer", "gtts")


# RQ logs a finished job's return value at DEBUG ("Worker <name>: result: <repr>"): a
# job's result may be a person's details (a booking's answer, a photo's URL), so that
# record is never written, whatever LOG_LEVEL.
RQ_RESULT_LINE = "Worker %s: result: %r"
# RQ's loggers that its setup_loghandlers gives plain-text handlers of their own (and
# propagate=False) when it finds none above them: RQ's CLI (`rq worker`) does at start.
RQ_LOGGERS = ("rq.worker", "rq.job", "rq.scheduler")


def _no_job_result(record: logging.LogRecord) -> bool:
    return record.msg != RQ_RESULT_LINE


def _take_over_rq_loggers() -> None:
    """RQ's loggers write through our JSON handler: RQ's own plain-text handlers, if it
    added them, go; and its line with a job's return value is dropped."""
    for name in RQ_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler).__name__ == "ColorizingStreamHandler":  # rq.logutils'
                logger.removeHandler(handler)
                logger.propagate = True
        if name == "rq.worker" and _no_job_result not in logger.filters:
            logger.addFilter(_no_job_result)


def configured() -> bool:
    """Whether configure() has put our JSON handler on the root logger in this process."""
    return any(getattr(h, "_ridechain", False) for h in logging.getLogger().handlers)


def configure(level: str = "INFO") -> None:
    """Send every log record to stdout as JSON (idempotent)."""
    # Set at every call: LOG_LEVEL=DEBUG must not open them up however often it is applied.
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _take_over_rq_loggers()
    # Python's warnings (a library's, or one a job raises) are printed to stderr as plain
    # text unless they are log records: they go through the "py.warnings" logger.
    logging.captureWarnings(True)
    root = logging.getLogger()
    if configured():
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler._ridechain = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)

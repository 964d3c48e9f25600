"""Sandbox emulator of the Twilio Messages API subset we use, plus the outbox viewer.

Mounted under /sandbox only when APP_ENV=sandbox. The product's real `twilio` client
talks to it over HTTP (its base URL is `{PUBLIC_BASE_URL}/sandbox/twilio`), so the
production code path is exercised end to end. Behaviour copied from Twilio's docs:
Basic auth with the account SID and auth token, form-encoded create, 201 with a JSON
message resource, error bodies {code, message, more_info, status}, and Twilio's magic
test numbers (+15005550001 invalid, +15005550009 cannot receive); a From and To of
different channels (one WhatsApp, one not) are refused with 21910. The Messages list
filters by To, From and DateSent (a UTC day; `DateSent>` on or after it, `DateSent<` on
or before it), newest first, in pages of PageSize with a `next_page_uri` (a PageToken).
The emulator sends a message the moment it accepts it, so its sent date is its creation,
but as at Twilio a message still "queued" has no sent date: `date_sent` is null and the
DateSent filters leave it out.
A failed or undelivered message shows its error_code (the one its number is set to fail
with, sandbox.jobs.UNDELIVERED_TO_KEY), as Twilio's resource does.
Failure injection for tests and demos: `sandbox:twilio:fail_next` in Redis holds how
many upcoming creates answer 503, `sandbox:twilio:fail_list` how many list pages do, and
the hash `sandbox:twilio:fail_list_to` the HTTP status every list for one To answers
(a 400 for one recipient, say, while the others list fine).
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import urlencode

from flask import Blueprint, jsonify, request
from sqlalchemy import insert, select

from core import clock
from core.adapters.db import autocommit, transaction
from core.adapters.models import SandboxMessage
from core.adapters.queue import SANDBOX_QUEUE, enqueue
from core.adapters.redis_conn import redis_client
from core.config import get_settings
from core.domain.errors import ValidationError
from core.domain.phone import is_e164, normalize_phone
from sandbox.access import local_only
from sandbox.jobs import UNDELIVERED_TO_KEY

bp = Blueprint("sandbox_twilio", __name__, url_prefix="/sandbox")
# First of its checks: other machines are refused before anything is read.
bp.before_request(local_only)

FAIL_NEXT_KEY = "sandbox:twilio:fail_next"
FAIL_LIST_KEY = "sandbox:twilio:fail_list"
FAIL_LIST_TO_KEY = "sandbox:twilio:fail_list_to"
MAGIC_INVALID = "+15005550001"
MAGIC_UNREACHABLE = "+15005550009"
ADDR_MAX = 80  # sandbox_messages.to_addr and from_addr
TEMPLATE_MAX = 1024  # WhatsApp: a template's text with its parameters (Twilio 63021)


def _twilio_error(status: int, code: int, message: str):
    resp = jsonify({"code": code, "message": message, "status": status,
                    "more_info": f"https://www.twilio.com/docs/errors/{code}"})
    resp.status_code = status
    return resp


def _has_nul(values) -> bool:  # noqa: ANN001 (strings)
    """A NUL in any of ``values``: PostgreSQL's text cannot hold one (the query would
    fail), and no Twilio parameter has one."""
    return any("\x00" in v for v in values)


def _id_after(value: str, prefix: str = "") -> int | None:
    """The message id in a paging value (``since=<id>``, ``PageToken=PA<id>``), else None:
    ASCII digits only ("²" is a digit to str.isdigit, not to int()) that fit a bigint."""
    digits = value.removeprefix(prefix) if value.startswith(prefix) else ""
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        return None
    return int(digits)


def _authorised(account_sid: str) -> bool:
    s = get_settings()
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    return (secrets.compare_digest(user, s.twilio_account_sid)
            and secrets.compare_digest(password, s.twilio_auth_token)
            and account_sid == s.twilio_account_sid)


def _rfc2822(dt) -> str:
    return dt.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")


def _error_codes() -> dict[str, tuple[str, str]]:
    """To -> (final status, Twilio error code) of the numbers the emulator's carrier
    fails (sandbox.jobs.UNDELIVERED_TO_KEY: "<status>:<code>", a bare code undelivered)."""
    found = {}
    for to, setting in redis_client().hgetall(UNDELIVERED_TO_KEY).items():
        final, _, code = setting.decode().rpartition(":")
        found[to.decode()] = (final or "undelivered", code)
    return found


def _error_code(m: SandboxMessage, codes: dict[str, tuple[str, str]] | None
                ) -> int | str | None:
    """Twilio's error_code (a number): "the error code returned if the Message status is
    failed or undelivered", null otherwise. The emulator keeps no code with a message:
    it is the one its number is set to fail with (as the status report took it)."""
    if m.status not in ("failed", "undelivered"):
        return None
    final, code = (codes if codes is not None else _error_codes()).get(m.to_addr, ("", ""))
    if final != m.status or not code:
        return None
    return int(code) if code.isdigit() else code


def _resource(m: SandboxMessage, codes: dict[str, tuple[str, str]] | None = None) -> dict:
    return {
        "sid": m.sid, "account_sid": m.account_sid, "to": m.to_addr, "from": m.from_addr,
        "body": m.body, "status": m.status, "num_media": "1" if m.media_url else "0",
        "num_segments": "1", "direction": "outbound-api", "api_version": "2010-04-01",
        "date_created": _rfc2822(m.created_at), "date_updated": _rfc2822(m.created_at),
        # Sent when accepted (no sending queue here), but only reported so once the
        # status moved on, as Twilio leaves date_sent empty while a message is queued.
        "date_sent": None if m.status == "queued" else _rfc2822(m.created_at),
        "price": None, "price_unit": "USD",
        "error_code": _error_code(m, codes),
        "error_message": None, "messaging_service_sid": None,
        "uri": f"/2010-04-01/Accounts/{m.account_sid}/Messages/{m.sid}.json",
        "subresource_uris": {},
    }


@bp.post("/twilio/2010-04-01/Accounts/<account_sid>/Messages.json")
def create_message(account_sid: str):
    if not _authorised(account_sid):
        return _twilio_error(401, 20003, "Authenticate")
    r = redis_client()
    if int(r.get(FAIL_NEXT_KEY) or 0) > 0:
        r.decr(FAIL_NEXT_KEY)
        return _twilio_error(503, 20500, "Service unavailable (sandbox failure injection)")
    if _has_nul(request.form.values()):
        return _twilio_error(400, 20001, "A parameter holds a NUL character.")
    to = request.form.get("To", "")
    from_ = request.form.get("From", "")
    body = request.form.get("Body", "")
    media = request.form.get("MediaUrl")
    content_sid = request.form.get("ContentSid")
    if content_sid:
        # WhatsApp refuses a template parameter with a line break, a tab or over 4 spaces
        # in a row (Meta's 132018); Twilio answers with a failed message.
        try:
            values = json.loads(request.form.get("ContentVariables", "{}"))
        except ValueError:
            values = None
        if not isinstance(values, dict):
            return _twilio_error(400, 21656, "The ContentVariables Parameter is invalid.")
        if any(not isinstance(v, str) or "\n" in v or "\r" in v or "\t" in v or "     " in v
               for v in values.values()):
            return _twilio_error(400, 63021, "Channel invalid content error: template "
                                 "parameters cannot have new-line/tab characters or more "
                                 "than 4 consecutive spaces")
        if sum(len(v) for v in values.values()) > TEMPLATE_MAX:
            # The template's own words count too: ours are a few, left out here.
            return _twilio_error(400, 63021, "Channel invalid content error: Length of the "
                                 "parameters and the template text exceeds the allowed "
                                 "length of 1024 for WhatsApp")
        # Twilio renders the approved template; we keep what would be shown.
        body = f"[template {content_sid}] {request.form.get('ContentVariables', '{}')}"
    if not to:
        return _twilio_error(400, 21604, "A 'To' phone number is required.")
    if not from_:
        return _twilio_error(400, 21603, "A 'From' phone number is required.")
    if len(to) > ADDR_MAX:
        return _twilio_error(400, 21211, "The 'To' number is not a valid phone number.")
    if len(from_) > ADDR_MAX:
        return _twilio_error(400, 21212, "The 'From' number is not a valid phone number.")
    if not body and not media:
        return _twilio_error(400, 21602, "Message body is required.")
    channel = "whatsapp" if to.startswith("whatsapp:") else "sms"
    if from_.startswith("whatsapp:") != (channel == "whatsapp"):
        return _twilio_error(400, 21910, "Invalid 'From' and 'To' pair. 'From' and 'To' "
                                         "should be of the same channel")
    number = to.removeprefix("whatsapp:")
    if number == MAGIC_INVALID:
        return _twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
    if number == MAGIC_UNREACHABLE:
        return _twilio_error(400, 21614, f"'To' number {to} is not a valid mobile number")
    # WhatsApp takes any E.164 number (a business on a landline, a number abroad) or a
    # WhatsApp id; an SMS goes to a number normalize_phone takes.
    if channel == "whatsapp" and number.startswith("+"):
        if not is_e164(number):
            return _twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
    elif channel == "sms":
        try:
            normalize_phone(number)
        except ValidationError:
            return _twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
    if len(body) > 1600:
        return _twilio_error(400, 21617, "The concatenated message body exceeds the 1600 "
                                         "character limit.")
    callback = request.form.get("StatusCallback")
    msg = SandboxMessage(sid="SM" + secrets.token_hex(16), account_sid=account_sid,
                         to_addr=to, from_addr=from_, body=body, media_url=media,
                         channel=channel, status="queued", status_callback=callback,
                         created_at=clock.now())
    # One INSERT in its own transaction (the emulator stands in for Twilio: in a benchmark
    # its cost shares the machine with the service under test, so it is kept small).
    with autocommit() as conn:
        conn.execute(insert(SandboxMessage.__table__).values(
            sid=msg.sid, account_sid=msg.account_sid, to_addr=msg.to_addr,
            from_addr=msg.from_addr, body=msg.body, media_url=msg.media_url,
            channel=msg.channel, status=msg.status, status_callback=msg.status_callback,
            created_at=msg.created_at))
    resource = _resource(msg)
    sid = msg.sid
    if callback:
        queue_status_report(sid)
    return jsonify(resource), 201


STATUS_QUEUE = "sandbox:twilio:status-queue"
STATUS_JOB_FLAG = "sandbox:twilio:status-job"


def queue_status_report(sid: str) -> None:
    """Report the message's progress later, as Twilio does; one job reports many messages
    (a job per message would cost our RQ worker more than sending the message did)."""
    pipe = redis_client().pipeline(transaction=False)
    pipe.rpush(STATUS_QUEUE, sid)
    pipe.set(STATUS_JOB_FLAG, "1", nx=True, ex=300)
    if pipe.execute()[1]:
        enqueue("sandbox.jobs.report_statuses", queue_name=SANDBOX_QUEUE)


def _utc_day(value: str) -> datetime | None:
    """Midnight UTC of a DateSent value: Twilio's ``YYYY-MM-DD`` (of a timestamp, as the
    python client writes a datetime, its day)."""
    try:
        day = date.fromisoformat(value[:10])
    except ValueError:
        return None
    return datetime.combine(day, time(), tzinfo=UTC)


@bp.get("/twilio/2010-04-01/Accounts/<account_sid>/Messages.json")
def list_messages(account_sid: str):
    """Twilio's Messages list: filtered, newest first, paged with a token."""
    if not _authorised(account_sid):
        return _twilio_error(401, 20003, "Authenticate")
    r = redis_client()
    if int(r.get(FAIL_LIST_KEY) or 0) > 0:
        r.decr(FAIL_LIST_KEY)
        return _twilio_error(503, 20500, "Service unavailable (sandbox failure injection)")
    args = request.args
    if _has_nul(args.values()):
        return _twilio_error(400, 20001, "A parameter holds a NUL character.")
    failing = int(r.hget(FAIL_LIST_TO_KEY, args["To"]) or 0) if args.get("To") else 0
    if failing:
        return _twilio_error(failing, 20500 if failing >= 500 else 20001,
                             "Cannot list these messages (sandbox failure injection)")
    stmt = select(SandboxMessage).where(SandboxMessage.account_sid == account_sid)
    if args.get("To"):
        stmt = stmt.where(SandboxMessage.to_addr == args["To"])
    if args.get("From"):
        stmt = stmt.where(SandboxMessage.from_addr == args["From"])
    for name in ("DateSent", "DateSent>", "DateSent<"):
        if not args.get(name):
            continue
        day = _utc_day(args[name])
        if day is None:
            return _twilio_error(400, 20001, f"Invalid {name}: use YYYY-MM-DD")
        # By the sent date, as Twilio filters: a message still queued has none (its
        # date_sent is null), so no DateSent filter lists it.
        stmt = stmt.where(SandboxMessage.status != "queued")
        if name != "DateSent<":
            stmt = stmt.where(SandboxMessage.created_at >= day)
        if name != "DateSent>" and day.date() < date.max:  # on or before the last day: all
            stmt = stmt.where(SandboxMessage.created_at < day + timedelta(days=1))
    try:
        size = int(args.get("PageSize", "50"))
        page = int(args.get("Page", "0"))
    except ValueError:
        return _twilio_error(400, 20001, "Invalid PageSize or Page")
    if not 1 <= size <= 1000 or page < 0:
        return _twilio_error(400, 20001, "PageSize must be 1 to 1000")
    token = args.get("PageToken", "")
    if token:  # the last message of the page before (newest first: ids fall)
        before = _id_after(token, "PA")
        if before is None:
            return _twilio_error(400, 20001, "Invalid PageToken")
        stmt = stmt.where(SandboxMessage.id < before)
    with transaction() as session:
        rows = session.scalars(stmt.order_by(SandboxMessage.id.desc()).limit(size + 1)).all()
        codes = _error_codes()
        messages = [_resource(m, codes) for m in rows[:size]]
        last_id = rows[size - 1].id if len(rows) > size else None
    base = f"/2010-04-01/Accounts/{account_sid}/Messages.json"
    filters = {k: v for k, v in args.items() if k not in ("Page", "PageSize", "PageToken")}

    def uri(**paging: object) -> str:
        return f"{base}?{urlencode({**filters, 'PageSize': size, **paging})}"

    return jsonify({
        "messages": messages, "page": page, "page_size": size,
        "start": page * size, "end": page * size + max(len(messages) - 1, 0),
        "uri": uri(Page=page, **({"PageToken": token} if token else {})),
        "first_page_uri": uri(Page=0),
        "next_page_uri": uri(Page=page + 1, PageToken=f"PA{last_id}") if last_id else None,
        "previous_page_uri": None,  # not kept: the product reads forward only
    })


@bp.get("/twilio/2010-04-01/Accounts/<account_sid>/Messages/<sid>.json")
def fetch_message(account_sid: str, sid: str):
    if not _authorised(account_sid):
        return _twilio_error(401, 20003, "Authenticate")
    with transaction() as session:
        msg = session.scalar(select(SandboxMessage).where(SandboxMessage.sid == sid)) \
            if sid.isprintable() else None  # a NUL cannot be looked up: no such message
        if msg is None:
            return _twilio_error(404, 20404, f"The requested resource {request.path} was not "
                                             "found")
        return jsonify(_resource(msg))


MEDIA_KEY = "sandbox:twilio:media:{}"


def store_media(data: bytes, content_type: str) -> str:
    """Keep bytes as a Twilio-hosted media file would be; return its URL (tests, ./run chat)."""
    media_id = "ME" + secrets.token_hex(16)
    r = redis_client()
    r.hset(MEDIA_KEY.format(media_id), mapping={"type": content_type, "data": data})
    r.expire(MEDIA_KEY.format(media_id), 7 * 86400)
    s = get_settings()
    return f"{s.public_base_url}/sandbox/twilio/2010-04-01/Accounts/{s.twilio_account_sid}" \
           f"/Messages/MMsandbox/Media/{media_id}"


@bp.get("/twilio/2010-04-01/Accounts/<account_sid>/Messages/<msg_sid>/Media/<media_id>")
def media(account_sid: str, msg_sid: str, media_id: str):
    """An inbound message's media, behind HTTP Basic like Twilio's protected media URLs."""
    if not _authorised(account_sid):
        return _twilio_error(401, 20003, "Authenticate")
    found = redis_client().hgetall(MEDIA_KEY.format(media_id))
    if not found:
        return _twilio_error(404, 20404, "The requested resource was not found")
    from flask import Response

    return Response(found[b"data"], mimetype=found[b"type"].decode())


@bp.get("/outbox")
def outbox():
    """What the service sent, oldest first; ?to= filters (with or without whatsapp:).
    Without ?since= the newest ``limit`` (?limit=, 200) are shown, so a long chat does not hide the
    code just sent; with ?since=<id> the oldest ``limit`` after that id, a page at a time
    (ops/call.py and ops/chat.py page on from the last id they read)."""
    # An unencoded "+" in a query string arrives as a space: ?to=+9198... too.
    to = request.args.get("to", "").replace(" ", "+").strip()
    since = request.args.get("since", "")
    after = _id_after(since) if since else None
    if since and after is None:
        return jsonify({"error": {"code": "bad_since", "message": "since must be a message id",
                                  "field": "since"}}), 400
    if "\x00" in to:
        return jsonify({"error": {"code": "bad_to", "message": "to must be an address",
                                  "field": "to"}}), 400
    try:
        limit = min(max(int(request.args.get("limit", "200")), 1), 1000)
    except ValueError:
        limit = 200
    order = SandboxMessage.id if since else SandboxMessage.id.desc()
    stmt = select(SandboxMessage).order_by(order).limit(limit)
    if to:
        bare = to.removeprefix("whatsapp:")
        stmt = stmt.where(SandboxMessage.to_addr.in_([bare, "whatsapp:" + bare])
                          if not to.startswith("whatsapp:")
                          else SandboxMessage.to_addr == to)
    if after is not None:
        stmt = stmt.where(SandboxMessage.id > after)
    with transaction() as session:
        rows = sorted(session.scalars(stmt).all(), key=lambda m: m.id)
        return jsonify([
            {"id": m.id, "sid": m.sid, "to": m.to_addr, "from": m.from_addr, "body": m.body,
             "media": [m.media_url] if m.media_url else [], "channel": m.channel,
             "status": m.status, "created_at": m.created_at.isoformat()}
            for m in rows
        ])

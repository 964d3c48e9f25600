"""Sandbox emulator of the Razorpay endpoints we use (Payment Links, Payments, Route
transfers, Refunds), plus the customer's payment page.

Mounted under /sandbox only when APP_ENV=sandbox; the product's real `razorpay` client
talks to it with ``base_url = {PUBLIC_BASE_URL}/sandbox/razorpay`` (the SDK adds /v1/...).
Responses follow Razorpay's shapes: entities with ``id``/``entity``, collections as
``{"entity": "collection", "count", "items"}``, errors as
``{"error": {"code": "BAD_REQUEST_ERROR", "description", ...}}``. State lives in Redis
(sandbox only; flushed with the test database).

Paying a link (``POST /sandbox/payment_links/<id>/pay``) captures a payment and sends the
signed webhooks ``payment.captured`` and ``payment_link.paid``, each delivery an RQ job
of its own; one the service answers non-2xx is delivered again later, as Razorpay does
for 24 hours (``WEBHOOK_RETRY_S``). A link is paid once: a second POST (the button
clicked twice) is answered 400 "Payment Link is paid", even while the first is paying; a
cancel and a Pay click at once: the first to claim the link has it, the other is a 400 (a
claim left by a killed request ends after CLAIM_TTL_MS). A link that can still be paid may
be edited (``PATCH /v1/payment_links/<id>``: a later expire_by, 15 minutes away at least,
say); an edit meeting a Pay or a cancel of the link is answered as for a paid (cancelled)
link, and never writes over one.

A Route transfer made on a payment starts as Razorpay documents it (Create Transfers from
Payments: ``"status": "pending"``, ``"processed_at": null``): the transfer is processed
asynchronously, and only then is it ``processed`` (money debited from the platform and
credited to the linked account) or ``failed``, with the webhook ``transfer.processed`` /
``transfer.failed``. Here an RQ job on the sandbox queue (``settle_transfer``) does that a
moment later, as ``settle_refund`` does for refunds. Its hold can be edited meanwhile, but
it cannot be reversed until it is processed: a reversal takes the money back from the linked
account's balance, which an unprocessed transfer has not credited yet, so the reversal of a
``created`` or ``pending`` transfer is refused with a 400 (Razorpay's BAD_REQUEST_ERROR,
"The linked account does not have sufficient balance to process a reversal.", its
description of a reversal the linked account's balance cannot cover). Asked again once the
transfer is processed, it is made.

No new transfer is taken on a payment once a refund of it was asked. A Direct Transfer
(``POST /v1/transfers``: account, amount, currency, notes) pays a linked account out of
the platform's balance instead, with no hold; it is pending and then processed by the
same job. Its optional ``X-Transfer-Idempotency`` header (4-36 characters) makes a retry
answer the same transfer (another body under the same key is a 400). The balance is
modelled as an opening balance (``OPENING_BALANCE``: the account's other money) plus
captured payments less Razorpay's fee on each, less refunds and transfers not failed
(less reversals); settlement delays are not modelled.

A captured payment carries Razorpay's ``fee`` (GST included) and ``tax`` (the GST), in
paise: ``FEE_BPS`` of its amount plus 18% GST on that, as Razorpay's standard plan takes
them out of the platform's balance. A transfer processed carries Route's ``fees`` (GST
included) and ``tax`` the same way under the ``transfer_fee_bps`` control: that rate of
what it moves plus GST, taken out of the platform's balance beside the amount (kept if the
transfer is reversed later: Razorpay's docs do not say a reversal gives it back).

A refund is of at least INR 1.00 (100 paise), paid out of the platform's balance: one the
balance cannot cover is refused (400, "does not have enough balance"). Its optional
``X-Refund-Idempotency`` header (10 or more letters, digits, hyphens, underscores) makes a
retry answer the same refund; another payment or body under the same key is a 400
("Different request with the same idempotency key has already been processed").

A payment link stays ``created`` past its expire_by until ``expire_link`` is called (the
test helper for what Razorpay does at expire_by); the payment page and ``pay`` refuse it.

Controls for tests and demos (Redis keys, or the helpers below):
- ``sandbox:razorpay:fail_next:<op>``: the next N calls of <op> answer 503
  (ops: create_link, edit_link, fetch_payment, refund, fetch_refund, transfer,
  direct_transfer, edit_transfer, reverse, list_transfers);
- ``sandbox:razorpay:refuse_next:edit_link``: the next N edits of a link answer 400 (a
  refusal the service must live with);
- ``sandbox:razorpay:in_progress_next:refund``: make the refund, but answer 409 "another
  request with the same idempotency key is still in progress" (a twin request);
- ``sandbox:razorpay:lose_next:create_link``: create the link, but answer 503 (the answer
  was "lost": the retry meets "reference ID already attempted");
- ``sandbox:razorpay:lose_next:direct_transfer``: make the direct transfer, but answer 503;
- ``sandbox:razorpay:webhook_order`` = ``reversed``: send a batch of webhooks backwards;
- ``sandbox:razorpay:webhook_repeat`` = N: deliver every webhook N times;
- ``sandbox:razorpay:refund_outcome`` / ``transfer_outcome`` = ``failed`` (a failed
  transfer's ``error`` says why: ``sandbox:razorpay:transfer_error`` is its description);
- ``sandbox:razorpay:pending_next:transfer`` = N (``hold_unprocessed``): the next N
  transfers made stay ``pending`` until ``settle_transfer(id)`` is called (a transfer the
  gateway is slow to process: its hold can be released, not reversed, meanwhile);
- ``sandbox:razorpay:refused_accounts`` (a set; ``refuse_account``): linked accounts that
  cannot take transfers (not activated, suspended): a transfer to one gets a 400;
- ``sandbox:razorpay:fee_bps`` = N: Razorpay's rate on captured payments, in basis points
  before GST (default FEE_BPS, 2%; 0: no fee);
- ``sandbox:razorpay:transfer_fee_bps`` = N: Route's rate on each transfer it processes,
  in basis points before GST (default TRANSFER_FEE_BPS, 25: 0.25%, Razorpay's standard
  plan; 0: no fee);
- ``sandbox:razorpay:opening_balance`` = N paise: the platform's balance before any
  payment (default OPENING_BALANCE);
- ``sandbox:razorpay:payment_notes`` = ``none``: payments made by a link carry no notes.

A link's payments (failed or captured) are of one order, made at the first attempt
(``GET /v1/orders/<id>``), its ``receipt`` the link's reference_id.
"""

from __future__ import annotations

import base64
import html
import json
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Blueprint, Response, jsonify, request
from redis.client import Pipeline
from redis.exceptions import WatchError
from rq import Retry

from core import clock
from core.adapters.queue import SANDBOX_QUEUE, enqueue
from core.adapters.redis_conn import redis_client
from core.config import get_settings
from core.domain.money import format_inr
from sandbox.access import local_only

bp = Blueprint("sandbox_razorpay", __name__, url_prefix="/sandbox")
# First of its checks: other machines are refused before anything is read.
bp.before_request(local_only)

PREFIX = "sandbox:razorpay"
PLATFORM_ACCOUNT = "acc_sandboxplatform"  # the source of a direct transfer
LINK_MIN_EXPIRY_S = 900  # Razorpay refuses a payment link expiring sooner than this
KINDS = {"plink": "payment_link", "pay": "payment", "trf": "transfer", "rfnd": "refund",
         "order": "order", "rvrsl": "reversal"}


# --- state ------------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(7)}"


def get_object(obj_id: str) -> dict | None:
    raw = redis_client().get(f"{PREFIX}:obj:{obj_id}")
    return json.loads(raw) if raw else None


def put_object(obj: dict) -> dict:
    r = redis_client()
    pipe = r.pipeline()
    pipe.set(f"{PREFIX}:obj:{obj['id']}", json.dumps(obj))
    pipe.zadd(f"{PREFIX}:index:{obj['entity']}", {obj["id"]: obj["created_at"]})
    pipe.execute()
    return obj


def set_fields(obj_id: str, **fields: Any) -> dict:
    """Change an object behind the service's back (reconciliation tests)."""
    obj = get_object(obj_id)
    assert obj is not None, obj_id
    obj.update(fields)
    return put_object(obj)


def delete_object(obj_id: str) -> None:
    """Make the gateway forget an object (reconciliation tests)."""
    obj = get_object(obj_id)
    if obj is not None:
        redis_client().delete(f"{PREFIX}:obj:{obj_id}")
        redis_client().zrem(f"{PREFIX}:index:{obj['entity']}", obj_id)


def _all(entity: str) -> list[dict]:
    ids = redis_client().zrange(f"{PREFIX}:index:{entity}", 0, -1)
    return [o for o in (get_object(i.decode()) for i in ids) if o is not None]


def _take(key: str) -> bool:
    r = redis_client()
    full = f"{PREFIX}:{key}"
    if int(r.get(full) or 0) > 0:
        r.decr(full)
        return True
    return False


def fail_next(op: str, times: int = 1) -> None:
    redis_client().set(f"{PREFIX}:fail_next:{op}", times)


def refuse_account(account: str, refused: bool = True) -> None:
    """Make a linked account refuse transfers (or take them again)."""
    key = f"{PREFIX}:refused_accounts"
    if refused:
        redis_client().sadd(key, account)
    else:
        redis_client().srem(key, account)


def control(name: str, value: str | int) -> None:
    redis_client().set(f"{PREFIX}:{name}", value)


def hold_unprocessed(transfers: int = 1) -> None:
    """The next ``transfers`` transfers made stay pending (unprocessed, not reversible)
    until ``settle_transfer(id)`` is called for each."""
    control("pending_next:transfer", transfers)


def _control(name: str) -> str:
    raw = redis_client().get(f"{PREFIX}:{name}")
    return raw.decode() if raw else ""


def _now() -> int:
    return int(clock.now().timestamp())


# --- HTTP helpers -----------------------------------------------------------------------


def _error(status: int, description: str, code: str = "BAD_REQUEST_ERROR",
           field: str | None = None):
    resp = jsonify({"error": {"code": code, "description": description, "source": "business",
                              "step": "payment_initiation", "reason": "input_validation_failed",
                              "metadata": {}, "field": field}})
    resp.status_code = status
    return resp


def _unavailable():
    return _error(503, "The server is unavailable (sandbox failure injection)", "SERVER_ERROR")


def _authorised() -> bool:
    s = get_settings()
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    # bytes, not str: compare_digest raises TypeError on a non-ASCII str (a 500)
    return (secrets.compare_digest(user.encode(), s.razorpay_key_id.encode())
            and secrets.compare_digest(password.encode(), s.razorpay_key_secret.encode()))


@bp.before_request
def _check_auth():
    if request.path.startswith("/sandbox/razorpay/") and not _authorised():
        return _error(401, "Authentication failed", "BAD_REQUEST_ERROR")
    return None


def _json() -> dict:
    data = request.get_json(silent=True)
    return data if isinstance(data, dict) else {}


def _collection(items: list[dict]) -> dict:
    return {"entity": "collection", "count": len(items), "items": items}


def _window(items: list[dict]) -> list[dict]:
    args = request.args
    try:
        frm = int(args.get("from", 0))
        to = int(args.get("to", 2**40))
        count = min(int(args.get("count", 10)), 100)
        skip = int(args.get("skip", 0))
    except ValueError:
        return []
    chosen = [i for i in items if frm <= int(i["created_at"]) <= to]
    chosen.sort(key=lambda i: i["created_at"], reverse=True)
    return chosen[skip:skip + count]


def _not_found(obj_id: str):
    return _error(400, f"The id provided does not exist: {obj_id}", field="id")


def _amount(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 100:
        return None
    return value


# --- webhooks ---------------------------------------------------------------------------


def _event(name: str, payload: dict) -> dict:
    return {"entity": "event", "account_id": PLATFORM_ACCOUNT, "event": name,
            "contains": list(payload), "payload": {k: {"entity": v} for k, v in payload.items()},
            "created_at": _now()}


# Razorpay retries a delivery answered non-2xx "in exponential backoff policy for 24 hours
# after event creation", then disables the webhook (Webhooks, Best Practices). Here each
# delivery is its own RQ job, retried after these waits (22.6 hours in all), then left
# failed: delivered once, it is not sent again; one that fails holds back no other.
WEBHOOK_RETRY_S = [60, 300, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600]


def send_webhooks(events: list[dict]) -> None:
    """Queue a signed delivery of each of ``events``, each its own job with Razorpay's
    retries (order and repeats per the test controls; a repeat is a delivery of its own,
    under the same event id)."""
    if _control("webhook_order") == "reversed":
        events = list(reversed(events))
    repeat = max(1, int(_control("webhook_repeat") or 1))
    for ev in events:
        event_id = "evt_" + secrets.token_hex(7)
        body = json.dumps(ev, separators=(",", ":"))
        for _ in range(repeat):
            enqueue("sandbox.razorpay_jobs.deliver_webhook", event_id, body,
                    queue_name=SANDBOX_QUEUE, known_new=True,
                    job_id=f"sandbox-rzp-hook-{secrets.token_hex(6)}",
                    retry=Retry(max=len(WEBHOOK_RETRY_S), interval=WEBHOOK_RETRY_S))


# --- payment links ----------------------------------------------------------------------


@bp.post("/razorpay/v1/payment_links")
def create_link():
    if _take("fail_next:create_link"):
        return _unavailable()
    data = _json()
    amount = _amount(data.get("amount"))
    if amount is None:
        return _error(400, "The amount must be atleast INR 1.00", field="amount")
    ref = str(data.get("reference_id") or "")
    if len(ref) > 40:
        return _error(400, "reference_id may not be greater than 40 characters",
                      field="reference_id")
    notes = data.get("notes") or {}
    if not isinstance(notes, dict) or len(notes) > 15:
        return _error(400, "notes must be an object of at most 15 keys", field="notes")
    expire_by = data.get("expire_by")
    if expire_by is not None and (not isinstance(expire_by, int)
                                  or expire_by < _now() + LINK_MIN_EXPIRY_S):
        return _error(400, "expire_by should be at least 15 minutes after current time",
                      field="expire_by")
    r = redis_client()
    plink_id = _new_id("plink")
    if ref and not r.set(f"{PREFIX}:ref:{ref}", plink_id, nx=True):
        # Razorpay's documented wording (Create a Payment Link, errors).
        return _error(400, "payment link creation with reference ID already attempted",
                      field="reference_id")
    base = get_settings().public_base_url
    link = {
        "id": plink_id, "entity": "payment_link", "amount": amount, "amount_paid": 0,
        "currency": data.get("currency") or "INR", "accept_partial": False,
        "description": str(data.get("description") or ""), "reference_id": ref,
        "customer": data.get("customer") or {}, "notify": data.get("notify") or {},
        "notes": notes, "expire_by": expire_by or 0, "expired_at": 0, "cancelled_at": 0,
        "status": "created", "payments": None, "order_id": "",
        "short_url": f"{base}/sandbox/payment_links/{plink_id}",
        "reminder_enable": bool(data.get("reminder_enable")), "upi_link": False,
        "created_at": _now(), "updated_at": _now(), "user_id": "",
    }
    put_object(link)
    if _take("lose_next:create_link"):
        return _unavailable()
    return jsonify(link)


@bp.get("/razorpay/v1/payment_links")
def list_links():
    links = [_expired_if_due(x) for x in _all("payment_link")]
    if request.args.get("reference_id"):
        links = [x for x in links if x["reference_id"] == request.args["reference_id"]]
    if request.args.get("payment_id"):
        pid = request.args["payment_id"]
        links = [x for x in links if any(p["payment_id"] == pid for p in x["payments"] or [])]
    return jsonify({"payment_links": links})


def _link_or_error(plink_id: str) -> dict | None:
    """The link as Razorpay has it now: one past its expire_by is expired."""
    obj = get_object(plink_id)
    return _expired_if_due(obj) if obj is not None and obj["entity"] == "payment_link" \
        else None


@bp.get("/razorpay/v1/payment_links/<plink_id>")
def fetch_link(plink_id: str):
    link = _link_or_error(plink_id)
    return jsonify(link) if link else _not_found(plink_id)


def _claim_key(plink_id: str) -> str:
    return f"{PREFIX}:claim:{plink_id}"


# A request killed while it held a link's claim (its worker gone mid-Pay) must not leave
# the link unpayable and uncancellable for good: the claim ends on its own after this. The
# link's status, written last, is what survives a crash; the claim only guards the change.
CLAIM_TTL_MS = 60_000

# Release a claim only if it is still ours (one past its TTL may be another request's).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


@contextmanager
def _claimed(plink_id: str, to: str) -> Iterator[str | None]:
    """Claim a created link for its one way out of ``created`` by a request (``to``:
    ``paid`` by the Pay button, ``cancelled`` by the API). Yields None if this request has
    it (released when the request ends: the link's status then answers), else what the
    request that has it makes the link. Both read the link "created" first, then write it:
    without the claim a Pay click and a cancel at once both succeeded (a link cancelled and
    paid, both webhooks sent), as did two clicks of Pay. The one holding it reads the link
    again; an edit does not write a claimed link (edit_link)."""
    r = redis_client()
    key = _claim_key(plink_id)
    mine = f"{to} {secrets.token_hex(8)}"
    for _ in range(3):  # a claim released between our two calls: ask again
        if r.set(key, mine, nx=True, px=CLAIM_TTL_MS):
            break
        raw = r.get(key)
        if raw is not None:
            yield raw.decode().split(" ")[0]
            return
    else:
        yield to
        return
    try:
        yield None
    finally:
        r.eval(_RELEASE, 1, key, mine)


@bp.post("/razorpay/v1/payment_links/<plink_id>/cancel")
def cancel_link(plink_id: str):
    link = _link_or_error(plink_id)
    if link is None:
        return _not_found(plink_id)
    if link["status"] != "created":
        return _error(400, f"Payment Link cannot be cancelled in {link['status']} state")
    with _claimed(plink_id, "cancelled") as holder:
        if holder is not None:  # being paid (or cancelled) by another request
            return _error(400, f"Payment Link cannot be cancelled in {holder} state")
        link = _link_or_error(plink_id)  # read again: paid or expired meanwhile?
        if link is None:
            return _not_found(plink_id)
        if link["status"] != "created":
            return _error(400, f"Payment Link cannot be cancelled in {link['status']} state")
        link.update(status="cancelled", cancelled_at=_now(), updated_at=_now())
        put_object(link)
    send_webhooks([_event("payment_link.cancelled", {"payment_link": link})])
    return jsonify(link)


# An edit that met another write of the link between its read and its own (a Pay, a
# cancel, another edit) reads the link again and starts over, this many times in all.
EDIT_TRIES = 5


@bp.patch("/razorpay/v1/payment_links/<plink_id>")
def edit_link(plink_id: str):
    """Update Standard Payment Link: reference_id, expire_by, notes, reminder_enable,
    accept_partial. Only a link that can still be paid is edited; a new expire_by is held
    to the rule of a new link's (15 minutes from now at least).

    The edit reads the link, changes it and writes it back: it writes only if neither the
    link nor its claim (``_claimed``: a Pay or a cancel at work) changed since its read
    (Redis WATCH), else it reads again. Without that a Pay landing in between was undone
    (the link "created" again, a payment captured on it)."""
    if _take("fail_next:edit_link"):
        return _unavailable()
    data = _json()
    first = True
    for _ in range(EDIT_TRIES):
        with redis_client().pipeline() as pipe:
            pipe.watch(f"{PREFIX}:obj:{plink_id}", _claim_key(plink_id))
            link = _link_or_error(plink_id)
            if link is None:
                return _not_found(plink_id)
            if first and _take("refuse_next:edit_link"):
                return _error(400, "Payment Link cannot be updated (sandbox refusal injection)")
            first = False
            try:
                return _edit(pipe, link, data)
            except WatchError:
                continue  # written meanwhile: read it again
    return _unavailable()


def _edit(pipe: Pipeline, link: dict, data: dict):
    """edit_link's read-check-write of ``link`` (read after ``pipe``'s WATCH)."""
    plink_id = link["id"]
    claimed = pipe.get(_claim_key(plink_id))
    status = claimed.decode().split(" ")[0] if claimed else link["status"]
    if status not in ("created", "partially_paid"):
        return _error(400, f"Payment Link cannot be updated in {status} state")
    unknown = set(data) - {"reference_id", "expire_by", "notes", "reminder_enable",
                           "accept_partial"}
    if unknown:
        field = sorted(unknown)[0]
        return _error(400, f"{field} is/are not required and should not be sent", field=field)
    if "expire_by" in data:
        expire_by = data["expire_by"]
        if isinstance(expire_by, bool) or not isinstance(expire_by, int) \
                or expire_by < _now() + LINK_MIN_EXPIRY_S:
            return _error(400, "expire_by should be at least 15 minutes after current time",
                          field="expire_by")
        link["expire_by"] = expire_by
    if "notes" in data:
        notes = data["notes"]
        if not isinstance(notes, dict) or len(notes) > 15:
            return _error(400, "notes must be an object of at most 15 keys", field="notes")
        link["notes"] = notes
    ref_key = None
    if "reference_id" in data:
        ref = str(data["reference_id"] or "")
        if len(ref) > 40:
            return _error(400, "reference_id may not be greater than 40 characters",
                          field="reference_id")
        if ref != link["reference_id"]:
            if ref:
                ref_key = f"{PREFIX}:ref:{ref}"
                pipe.watch(ref_key)  # another link taking it meanwhile: read again
                owner = pipe.get(ref_key)
                if owner is not None and owner.decode() != plink_id:
                    return _error(400, "payment link with reference ID already exists",
                                  field="reference_id")
            link["reference_id"] = ref
    for flag in ("reminder_enable", "accept_partial"):
        if flag in data:
            link[flag] = bool(data[flag])
    link["updated_at"] = _now()
    pipe.multi()
    if ref_key is not None:
        pipe.set(ref_key, plink_id)
    pipe.set(f"{PREFIX}:obj:{plink_id}", json.dumps(link))
    pipe.zadd(f"{PREFIX}:index:{link['entity']}", {plink_id: link["created_at"]})
    pipe.execute()
    return jsonify(link)


def expire_link(plink_id: str) -> dict:
    """What Razorpay does at expire_by (here at once, for tests): the link expires and
    says so by webhook."""
    link = _link_or_error(plink_id)  # one read past its expire_by is expired already
    assert link is not None and link["status"] in ("created", "expired")
    return _expire(link, _now()) if link["status"] == "created" else link


def _expire(link: dict, at: int) -> dict:
    """The link expires (``at``), and payment_link.expired is sent: once, whichever read
    (or the test helper) sees it first."""
    if not redis_client().set(f"{PREFIX}:expired:{link['id']}", "1", nx=True):
        return get_object(link["id"]) or link
    link.update(status="expired", expired_at=at, updated_at=at)
    put_object(link)
    send_webhooks([_event("payment_link.expired", {"payment_link": link})])
    return link


def _is_expired(link: dict) -> bool:
    return bool(link["expire_by"]) and link["expire_by"] <= _now()


def _expired_if_due(link: dict) -> dict:
    """Razorpay expires a link at its expire_by on its own; the emulator does it when
    the link is next read (fetch, list, cancel, its page, a payment), which the service
    cannot tell apart: past expire_by a created link is expired, expired_at its expire_by."""
    if link["status"] == "created" and _is_expired(link):
        return _expire(link, int(link["expire_by"]))
    return link


@bp.get("/payment_links/<plink_id>")
def payment_page(plink_id: str):
    link = _link_or_error(plink_id)
    if link is None:
        return Response("<h1>Payment link not found</h1>", status=404, mimetype="text/html")
    status = link["status"]
    amount = html.escape(format_inr(link["amount"]))
    desc = html.escape(link["description"])
    # Relative to this page, so that it works under a PUBLIC_BASE_URL with a path too.
    button = (f'<form method="post" action="{html.escape(plink_id)}/pay">'
              f'<button type="submit">Pay {amount}</button></form>'
              if status == "created" else f"<p>This link is {html.escape(status)}.</p>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Pay {amount}</title>"
            f"</head><body><h1>{amount}</h1><p>{desc}</p>{button}</body></html>")
    return Response(page, mimetype="text/html")


# Razorpay's fee on a captured payment: a rate of its amount (2% for UPI, cards and
# netbanking on the standard plan) plus 18% GST on that; ``fee`` includes the GST, ``tax``
# is the GST alone (paise). The ``fee_bps`` control changes the rate (0: no fee).
FEE_BPS = 200
GST_PERCENT = 18
# What the platform's Razorpay balance holds before the sandbox's own payments (its
# other customers' money not settled yet): a refund in full of the only payment must
# not be refused for the fee the payment paid. The ``opening_balance`` control changes it.
OPENING_BALANCE = 500_000


def _int_control(name: str, default: int) -> int:
    raw = _control(name)
    return int(raw) if raw.lstrip("-").isdigit() else default


def _fee_and_tax(amount: int, control: str, bps: int) -> tuple[int, int]:
    base = (amount * _int_control(control, bps) + 5_000) // 10_000
    tax = (base * GST_PERCENT + 50) // 100
    return base + tax, tax


def fee_and_tax(amount: int) -> tuple[int, int]:
    """(fee with its GST, the GST) Razorpay takes on a captured payment of ``amount``."""
    return _fee_and_tax(amount, "fee_bps", FEE_BPS)


# Route's fee on a transfer it processes: a rate of the amount moved (0.25%, 25 bps, in
# Razorpay's "Transfers and Related Fees" example) plus GST, out of the platform's balance
# beside the amount; the ``transfer_fee_bps`` control sets another rate (0: none).
TRANSFER_FEE_BPS = 25


def transfer_fee_and_tax(amount: int) -> tuple[int, int]:
    """(fee with its GST, the GST) Route takes for processing a transfer of ``amount``."""
    return _fee_and_tax(amount, "transfer_fee_bps", TRANSFER_FEE_BPS)


def _payment(link: dict, status: str) -> dict:
    order_id = link["order_id"] or _new_id("order")
    fee, tax = fee_and_tax(link["amount"]) if status == "captured" else (0, 0)
    return {
        "id": _new_id("pay"), "entity": "payment", "amount": link["amount"],
        "currency": link["currency"], "status": status, "order_id": order_id,
        "invoice_id": None, "international": False, "method": "upi",
        "amount_refunded": 0, "amount_transferred": 0, "refund_status": None,
        "captured": status == "captured", "description": link["description"],
        "email": "void@razorpay.com", "contact": (link["customer"] or {}).get("contact", ""),
        "notes": dict(link["notes"]), "fee": fee, "tax": tax,  # the link's notes, as given
        "error_code": None if status == "captured" else "BAD_REQUEST_ERROR",
        "error_description": None if status == "captured" else "Payment failed",
        "created_at": _now(),
    }


def _link_order(link: dict) -> dict:
    """The link's order, made at its first payment attempt (a link has none when made:
    its ``order_id`` is "" until the customer pays, failed or not); every attempt by the
    link is a payment of that order. It carries the link's notes (as Razorpay's
    payment_link.paid samples show its order), none under the ``payment_notes`` control
    ``none``, and its ``receipt`` is the link's reference_id."""
    order = get_object(link["order_id"]) if link["order_id"] else None
    if order is None:
        order = put_object({
            "id": _new_id("order"), "entity": "order", "amount": link["amount"],
            "amount_paid": 0, "amount_due": link["amount"], "currency": link["currency"],
            "receipt": link["reference_id"] or None, "offer_id": None, "status": "attempted",
            "attempts": 0, "created_at": _now(),
            "notes": [] if _control("payment_notes") == "none" else link.get("notes") or []})
        link.update(order_id=order["id"], updated_at=_now())
        put_object(link)
    order.update(attempts=int(order.get("attempts") or 0) + 1)
    return put_object(order)


def _attempt(link: dict, status: str) -> dict:
    """A payment attempt by the link, stored: of the link's order, with the link's notes
    unless the ``payment_notes`` control is ``none`` (a payment of a link that carries no
    notes of ours: samples disagree whether Razorpay copies them)."""
    _link_order(link)
    payment = _payment(link, status)
    if _control("payment_notes") == "none":
        payment["notes"] = []  # Razorpay's empty notes are a JSON array
    return put_object(payment)


@bp.get("/razorpay/v1/orders/<order_id>")
def fetch_order(order_id: str):
    obj = get_object(order_id)
    return jsonify(obj) if obj is not None and obj["entity"] == "order" \
        else _not_found(order_id)


@bp.post("/payment_links/<plink_id>/pay")
def pay(plink_id: str):
    """The customer pays (``fail=1``: the payment fails and the link stays payable)."""
    link = _link_or_error(plink_id)
    if link is None:
        return _not_found(plink_id)
    if link["status"] != "created":
        return _error(400, f"Payment Link is {link['status']}")
    if request.values.get("fail") == "1":
        failed = _attempt(link, "failed")
        send_webhooks([_event("payment.failed", {"payment": failed})])
        return jsonify({"status": "failed", "payment_id": failed["id"]}), 200
    # A link is paid once: the Pay button clicked twice sends two POSTs together, and both
    # read the link "created". The first to claim it pays; the other is answered as
    # Razorpay answers a paid link (or a cancelled one, a cancel having claimed it).
    with _claimed(plink_id, "paid") as holder:
        if holder is not None:
            return _error(400, f"Payment Link is {holder}")
        return _capture(plink_id)


def _capture(plink_id: str):
    """Pay the link ``pay`` claimed: a captured payment, the link and its order paid, and
    their webhooks."""
    link = _link_or_error(plink_id)  # read again: cancelled or expired meanwhile?
    if link is None:
        return _not_found(plink_id)
    if link["status"] != "created":
        return _error(400, f"Payment Link is {link['status']}")
    payment = _attempt(link, "captured")
    link.update(status="paid", amount_paid=link["amount"], order_id=payment["order_id"],
                updated_at=_now(),
                payments=[{"amount": payment["amount"], "created_at": payment["created_at"],
                           "method": "upi", "payment_id": payment["id"], "status": "captured"}])
    put_object(link)
    order = set_fields(payment["order_id"], amount_paid=link["amount"], amount_due=0,
                       status="paid")
    send_webhooks([
        _event("payment.captured", {"payment": payment}),
        _event("payment_link.paid", {"payment_link": link, "payment": payment, "order": order}),
    ])
    return jsonify({"status": "paid", "payment_id": payment["id"]}), 200


def create_payment(amount: int, notes: dict | None = None) -> dict:
    """A captured payment the service never heard of (reconciliation tests)."""
    fake = {"id": "plink_none", "amount": amount, "currency": "INR", "description": "stray",
            "customer": {}, "notes": notes or {}, "order_id": ""}
    return put_object(_payment(fake, "captured"))


# --- payments -----------------------------------------------------------------------------


@bp.get("/razorpay/v1/payments")
def list_payments():
    return jsonify(_collection(_window(_all("payment"))))


def _payment_or_none(payment_id: str) -> dict | None:
    obj = get_object(payment_id)
    return obj if obj is not None and obj["entity"] == "payment" else None


@bp.get("/razorpay/v1/payments/<payment_id>")
def fetch_payment(payment_id: str):
    if _take("fail_next:fetch_payment"):
        return _unavailable()
    p = _payment_or_none(payment_id)
    return jsonify(p) if p else _not_found(payment_id)


REFUND_MIN_PAISE = 100  # Razorpay: "The amount must be at least INR 1.00"
_REFUND_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{10,}")


@bp.post("/razorpay/v1/payments/<payment_id>/refund")
def refund_payment(payment_id: str):
    if _take("fail_next:refund"):
        return _unavailable()
    p = _payment_or_none(payment_id)
    if p is None:
        return _not_found(payment_id)
    key = request.headers.get("X-Refund-Idempotency", "")
    r = redis_client()
    data = _json()
    # What makes a retry "the same request": the payment and the body (Razorpay rejects a
    # different payload under a key already used, as for the direct transfer's key).
    digest = json.dumps({"payment_id": payment_id, "body": data}, sort_keys=True)
    if key:
        if not _REFUND_IDEMPOTENCY_KEY.fullmatch(key):
            return _error(400, "X-Refund-Idempotency must be at least 10 characters: "
                          "letters, digits, hyphens and underscores only")
        known = r.hgetall(f"{PREFIX}:idem_refund:{key}")
        if known:
            if known[b"body"].decode() != digest:
                return _error(400, "Different request with the same idempotency key has "
                              "already been processed")
            return jsonify(get_object(known[b"id"].decode()))
    amount = data.get("amount", p["amount"] - p["amount_refunded"])
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        return _error(400, "The amount must be a positive integer", field="amount")
    if amount < REFUND_MIN_PAISE:
        return _error(400, "The amount must be at least INR 1.00", field="amount")
    if not p["captured"]:
        return _error(400, "Only captured payments can be refunded")
    if amount > p["amount"] - p["amount_refunded"]:
        return _error(400, "The refund amount provided is greater than amount captured",
                      field="amount")
    if amount > platform_balance():
        # Razorpay pays a refund out of the main balance (Route: transferred money is the
        # linked accounts' now, unless reversed first).
        return _error(400, "Your account does not have enough balance to carry out the "
                      "refund operation.")
    refund = {"id": _new_id("rfnd"), "entity": "refund", "amount": amount,
              "currency": "INR", "payment_id": payment_id, "notes": data.get("notes") or {},
              "receipt": None, "status": "pending", "speed_requested": data.get("speed",
                                                                                  "normal"),
              "speed_processed": "normal", "created_at": _now()}
    put_object(refund)
    r.sadd(f"{PREFIX}:refund_initiated", payment_id)  # no new transfers on it from now on
    if key:
        r.hset(f"{PREFIX}:idem_refund:{key}", mapping={"id": refund["id"], "body": digest})
    p["amount_refunded"] += amount
    _refund_status(p)
    put_object(p)
    enqueue("sandbox.razorpay_jobs.settle_refund", refund["id"], queue_name=SANDBOX_QUEUE,
            job_id=f"sandbox-rzp-refund-{refund['id']}")
    if _take("in_progress_next:refund"):
        # A twin request under the same key is still being made (Razorpay's 409): this
        # one is answered so, though the refund is being made.
        return _error(409, "Another request with the same idempotency key is still in "
                      "progress")
    return jsonify(refund)


def _refund_status(p: dict) -> None:
    """A payment's refund_status and status follow what is refunded of it."""
    refunded = p["amount_refunded"]
    p["refund_status"] = (None if refunded == 0
                          else "full" if refunded == p["amount"] else "partial")
    p["status"] = "refunded" if p["refund_status"] == "full" else "captured"


def settle_refund(refund_id: str) -> dict:
    """The bank answers: the refund is processed (or fails, per the test control)."""
    refund = get_object(refund_id)
    assert refund is not None
    failed = _control("refund_outcome") == "failed"
    refund["status"] = "failed" if failed else "processed"
    put_object(refund)
    if failed:
        p = get_object(refund["payment_id"])
        if p is not None:
            p["amount_refunded"] -= refund["amount"]
            _refund_status(p)  # earlier refunds of it stay refunded
            put_object(p)
    send_webhooks([_event("refund.failed" if failed else "refund.processed",
                          {"refund": refund})])
    return refund


@bp.get("/razorpay/v1/refunds")
def list_refunds():
    return jsonify(_collection(_window(_all("refund"))))


@bp.get("/razorpay/v1/refunds/<refund_id>")
def fetch_refund(refund_id: str):
    if _take("fail_next:fetch_refund"):
        return _unavailable()
    obj = get_object(refund_id)
    return jsonify(obj) if obj and obj["entity"] == "refund" else _not_found(refund_id)


# --- Route transfers ------------------------------------------------------------------------


@bp.post("/razorpay/v1/payments/<payment_id>/transfers")
def create_transfers(payment_id: str):
    if _take("fail_next:transfer"):
        return _unavailable()
    p = _payment_or_none(payment_id)
    if p is None:
        return _not_found(payment_id)
    if not p["captured"]:
        return _error(400, "Transfers can be created only for captured payments")
    wanted = _json().get("transfers")
    if not isinstance(wanted, list) or not wanted:
        return _error(400, "The transfers field is required", field="transfers")
    total = 0
    for t in wanted:
        if not isinstance(t, dict) or not str(t.get("account", "")).startswith("acc_"):
            return _error(400, "The account id is invalid", field="account")
        if redis_client().sismember(f"{PREFIX}:refused_accounts", t["account"]):
            return _error(400, f"Linked account {t['account']} is not activated",
                          field="account")
        if _amount(t.get("amount")) is None:
            return _error(400, "The amount must be at least 100 paise", field="amount")
        total += t["amount"]
    if redis_client().sismember(f"{PREFIX}:refund_initiated", payment_id):
        return _error(400, "Transfers are not allowed on a payment that has a refund",
                      field="payment_id")
    if total > p["amount"] - p["amount_transferred"] - p["amount_refunded"]:
        return _error(400, "Transfer amount exceeds the captured amount", field="amount")
    items = []
    for t in wanted:
        trf_id = _new_id("trf")
        trf = {"id": trf_id, "entity": "transfer", "status": "pending", "source": payment_id,
               "recipient": t["account"], "amount": t["amount"], "currency": "INR",
               "amount_reversed": 0, "notes": t.get("notes") or {}, "fees": 0, "tax": 0,
               "on_hold": bool(t.get("on_hold")), "on_hold_until": t.get("on_hold_until"),
               "recipient_settlement_id": None,
               "linked_account_notes": t.get("linked_account_notes") or [],
               "processed_at": None, "created_at": _now(),
               "error": {"code": None, "description": None, "reason": None, "field": None,
                         "step": None, "id": trf_id, "source": None, "metadata": None}}
        put_object(trf)
        redis_client().rpush(f"{PREFIX}:payment_transfers:{payment_id}", trf_id)
        p["amount_transferred"] += t["amount"]  # taken from the payment while it is made
        items.append(trf)
    put_object(p)
    for trf in items:
        if not _take("pending_next:transfer"):
            enqueue("sandbox.razorpay.settle_transfer", trf["id"], queue_name=SANDBOX_QUEUE,
                    job_id=f"sandbox-rzp-transfer-{trf['id']}")
    return jsonify(_collection(items))


# A failed transfer's error description unless the ``transfer_error`` control says another.
TRANSFER_FAILED = "The linked account cannot receive the transfer"
# A transfer Razorpay has not processed yet (made, or being processed): its reversal is
# refused with this description, as one the linked account's balance cannot cover.
UNPROCESSED = ("created", "pending")
REVERSAL_UNPROCESSED = ("The linked account does not have sufficient balance to process a "
                        "reversal.")


def settle_transfer(transfer_id: str) -> dict:
    """Razorpay processes a pending transfer: ``processed`` (or ``failed``, per the test
    control ``transfer_outcome``), and says so by webhook. A transfer no longer pending
    (settled before) is left as it is, and nothing is sent."""
    t = _transfer_or_none(transfer_id)
    assert t is not None, transfer_id
    if t["status"] not in UNPROCESSED:
        return t
    failed = _control("transfer_outcome") == "failed"
    if failed:
        t["status"] = "failed"
        # Why, in the entity's error object as Razorpay's errors say it ("NA" where it
        # has nothing to say); the ``transfer_error`` control gives the description.
        t["error"] = {**(t.get("error") or {}), "code": "BAD_REQUEST_ERROR",
                      "description": _control("transfer_error") or TRANSFER_FAILED,
                      "source": "NA", "step": "NA", "reason": "NA"}
        p = get_object(t["source"])
        if p is not None:  # what the transfer took from the payment goes back
            p["amount_transferred"] -= t["amount"] - t["amount_reversed"]
            put_object(p)
    else:
        t["status"] = "partially_reversed" if t["amount_reversed"] else "processed"
        t["processed_at"] = _now()
        t["fees"], t["tax"] = transfer_fee_and_tax(t["amount"] - t["amount_reversed"])
    put_object(t)
    send_webhooks([_event("transfer.failed" if failed else "transfer.processed",
                          {"transfer": t})])
    return t


@bp.get("/razorpay/v1/payments/<payment_id>/transfers")
def payment_transfers(payment_id: str):
    if _take("fail_next:list_transfers"):
        return _unavailable()
    if _payment_or_none(payment_id) is None:
        return _not_found(payment_id)
    ids = redis_client().lrange(f"{PREFIX}:payment_transfers:{payment_id}", 0, -1)
    return jsonify(_collection([o for o in (get_object(i.decode()) for i in ids) if o]))


_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_ -]{4,36}")


def platform_balance() -> int:
    """The platform's balance as the emulator models it: its opening balance and what
    customers paid, less Razorpay's fees on it (kept at capture, never given back by a
    refund), less what was refunded or transferred (not failed; less what transfers had
    reversed) and Route's fee on each transfer processed."""
    captured = [p for p in _all("payment") if p["captured"]]
    paid = sum(p["amount"] - (p.get("fee") or 0) for p in captured)
    refunded = sum(r["amount"] for r in _all("refund") if r["status"] != "failed")
    moved = sum(t["amount"] - t["amount_reversed"] + (t.get("fees") or 0)
                for t in _all("transfer") if t["status"] != "failed")
    return _int_control("opening_balance", OPENING_BALANCE) + paid - refunded - moved


@bp.post("/razorpay/v1/transfers")
def create_direct_transfer():
    """Razorpay's Direct Transfer: from the platform's balance to a linked account."""
    if _take("fail_next:direct_transfer"):
        return _unavailable()
    data = _json()
    key = request.headers.get("X-Transfer-Idempotency")
    r = redis_client()
    digest = json.dumps(data, sort_keys=True)
    if key is not None:
        if not _IDEMPOTENCY_KEY.fullmatch(key):
            return _error(400, "X-Transfer-Idempotency must be 4 to 36 letters, digits, "
                          "hyphens, underscores or spaces")
        known = r.hgetall(f"{PREFIX}:idem_transfer:{key}")
        if known:
            if known[b"body"].decode() != digest:
                return _error(400, "The request body differs from the first request made "
                              "with this idempotency key")
            return jsonify(get_object(known[b"id"].decode()))
    account = data.get("account")
    if not isinstance(account, str) or not account.startswith("acc_"):
        return _error(400, "The account id is invalid", field="account")
    if r.sismember(f"{PREFIX}:refused_accounts", account):
        return _error(400, f"Linked account {account} is not activated", field="account")
    amount = data.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        return _error(400, "The amount must be a positive integer", field="amount")
    if _amount(amount) is None:
        return _error(400, "The amount must be at least 100 paise", field="amount")
    if data.get("currency") != "INR":
        return _error(400, "The currency should be INR", field="currency")
    notes = data.get("notes") or {}
    if not isinstance(notes, dict) or len(notes) > 15:
        return _error(400, "notes must be an object of at most 15 keys", field="notes")
    if amount > platform_balance():
        return _error(400, "Your account does not have enough balance to carry out the "
                      "transfer operation.")
    trf_id = _new_id("trf")
    trf = {"id": trf_id, "entity": "transfer", "status": "pending", "source": PLATFORM_ACCOUNT,
           "recipient": account, "amount": amount, "currency": "INR", "amount_reversed": 0,
           "notes": notes, "fees": 0, "tax": 0, "on_hold": False, "on_hold_until": None,
           "recipient_settlement_id": None, "linked_account_notes": [],
           "processed_at": None, "created_at": _now(),
           "error": {"code": None, "description": None, "reason": None, "field": None,
                     "step": None, "id": trf_id, "source": None, "metadata": None}}
    put_object(trf)
    if key is not None:
        r.hset(f"{PREFIX}:idem_transfer:{key}", mapping={"id": trf_id, "body": digest})
    if not _take("pending_next:transfer"):
        enqueue("sandbox.razorpay.settle_transfer", trf_id, queue_name=SANDBOX_QUEUE,
                job_id=f"sandbox-rzp-transfer-{trf_id}")
    if _take("lose_next:direct_transfer"):
        return _unavailable()
    return jsonify(trf)


@bp.get("/razorpay/v1/transfers")
def list_transfers():
    return jsonify(_collection(_window(_all("transfer"))))


def _transfer_or_none(transfer_id: str) -> dict | None:
    obj = get_object(transfer_id)
    return obj if obj is not None and obj["entity"] == "transfer" else None


@bp.get("/razorpay/v1/transfers/<transfer_id>")
def fetch_transfer(transfer_id: str):
    t = _transfer_or_none(transfer_id)
    return jsonify(t) if t else _not_found(transfer_id)


@bp.patch("/razorpay/v1/transfers/<transfer_id>")
def edit_transfer(transfer_id: str):
    if _take("fail_next:edit_transfer"):
        return _unavailable()
    t = _transfer_or_none(transfer_id)
    if t is None:
        return _not_found(transfer_id)
    data = _json()
    if "on_hold" in data:
        t["on_hold"] = bool(data["on_hold"])
    if "on_hold_until" in data:
        t["on_hold_until"] = data["on_hold_until"]
    return jsonify(put_object(t))


@bp.post("/razorpay/v1/transfers/<transfer_id>/reversals")
def reverse_transfer(transfer_id: str):
    if _take("fail_next:reverse"):
        return _unavailable()
    t = _transfer_or_none(transfer_id)
    if t is None:
        return _not_found(transfer_id)
    if t["status"] == "failed":
        return _error(400, "A failed transfer cannot be reversed")
    if t["status"] in UNPROCESSED:
        # Nothing is in the linked account's balance yet to take back.
        return _error(400, REVERSAL_UNPROCESSED)
    left = t["amount"] - t["amount_reversed"]
    amount = _json().get("amount", left)
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= left:
        return _error(400, "The reversal amount is invalid", field="amount")
    t["amount_reversed"] += amount
    if t["amount_reversed"] == t["amount"]:
        t["status"] = "reversed"
    elif t["status"] == "processed":
        t["status"] = "partially_reversed"
    put_object(t)
    p = get_object(t["source"])
    if p is not None:
        p["amount_transferred"] -= amount
        put_object(p)
    reversal = {"id": _new_id("rvrsl"), "entity": "reversal", "transfer_id": transfer_id,
                "amount": amount, "currency": "INR", "fee": 0, "tax": 0, "notes": {},
                "created_at": _now()}
    return jsonify(put_object(reversal))

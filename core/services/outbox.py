"""Outbound messages: written as outbox rows with their cause, delivered by an RQ job.

Delivery guarantees, and why:
- A row is written in the caller's transaction; the delivery job is enqueued only after
  that commit (and a periodic sweep re-enqueues rows whose enqueue was lost).
- Nothing is sent twice for one row. A row is claimed (``pending`` -> ``sending``) under a
  row lock before Twilio is called. If Twilio definitely did not accept it (a refusal,
  a 503 or 429, or no connection at all) the row goes back to ``pending`` and RQ retries
  with backoff (a final refusal fails it). If the outcome is unknown (a read timeout, any
  other 5xx: Twilio's 20500 may follow a message it made, a worker killed mid-call) the
  row stays ``sending``: the status callback URL carries our row id, so if Twilio did
  accept it, its callback links the row.
- Callbacks can be lost (our web was down, and Twilio does not retry them), so a row left
  ``sending`` without a sid for STALE_SENDING is not simply sent again: the sweep gives it
  a reconcile job, which asks Twilio's Messages list for a message from our sender to that
  address, created since the claim (less CLOCK_SKEW), with the row's text (a template
  send: its variable values), not already another row's, and not fitting another row
  still without a sid more closely (a longer text that contains this one is that row's).
  The list is read newest first by To and From, not by DateSent: a message still queued
  at Twilio has no sent date yet. Found: the row takes its sid and status as if the
  answer and the callback had come, and nothing is sent again. Twilio answers and holds
  none: the row goes back to ``pending`` and is sent. Twilio cannot be asked: the row
  stays ``sending`` and waits (its own back-off, LOOKUP_PAUSE_FIRST doubling up to
  LOOKUP_PAUSE_MAX). If the failure is an outage (no connection, a timeout, a 5xx, a 429,
  our credentials refused) all look-ups pause as well (the same lengths, one warning a
  pause), so an outage costs a call every few minutes, not one per row each minute; the
  failure count outlives a lone answer, so flapping still backs off. Any other failure
  (a 4xx for one recipient) holds back that row alone. The sweep asks the rows least
  lately asked first, so a row that keeps failing cannot start every pause and starve
  the others. A row whose own look-ups have failed for GIVE_UP_UNKNOWN (24 h from its
  first failure) is given back unasked, with a warning; a row held back by pauses waits
  for an answer, up to GIVE_UP_PAUSED (72 h). That, or a twin with the same text sent
  within the same minutes by another row whose outcome was lost too, is the only way
  left for a message to go twice.
- One person's messages reach Twilio in the order they were written, however many workers
  send: a sender holds the address's turn (a PostgreSQL advisory lock) and sends its
  waiting messages in id order (see _turn_of and IN_ORDER_FOR), a reply claimed as it was
  written and not tried yet among them.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import string
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import requests
import urllib3
from redis.exceptions import RedisError
from rq import Retry
from sqlalchemy import (
    ColumnElement,
    Connection,
    CursorResult,
    DateTime,
    Table,
    bindparam,
    case,
    delete,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from core import clock, i18n
from core.adapters import db, twilio_gateway
from core.adapters.db import transaction
from core.adapters.dialog_models import WhatsappTemplateSend
from core.adapters.models import (
    Booking,
    Conversation,
    MessageStatusEvent,
    NumberOptOut,
    OutboxMessage,
    Person,
)
from core.adapters.queue import after_commit, enqueue, forget_earlier_run, queue
from core.adapters.redis_conn import redis_client, run_script
from core.config import get_settings
from core.domain.booking import BookingStatus
from core.domain.errors import ValidationError
from core.domain.phone import is_e164, normalize_phone
from core.logs import scrub

log = logging.getLogger(__name__)

DELIVER_JOB = "workers.outbox.deliver"
# Twilio's order of progress; a late "sent" must not overwrite "delivered".
_RANK = {"pending": 0, "sending": 1, "queued": 2, "sent": 3, "delivered": 4, "read": 5}
_FINAL_FAILURES = {"failed", "undelivered"}
_REACHED = {"delivered", "read"}  # the carrier or WhatsApp says it got to the person
STOP_ERROR_CODE = "21610"  # the recipient replied STOP: never message them again
# WhatsApp's counterpart: the message was blocked by the recipient's action (she blocked
# our sender). Her WhatsApp is closed to us (people.opted_out, with wa_blocked saying it
# was a block) until she re-engages: her next WhatsApp message (she unblocked us) reopens
# it and is answered as any (conversation._whatsapp_turn). Her own STOP needs START.
WHATSAPP_BLOCKED_CODE = "63014"
# Refusals that end a channel for the address, as STOP does: what it was sent on is closed.
STOP_CODES = frozenset({STOP_ERROR_CODE, WHATSAPP_BLOCKED_CODE})
# WhatsApp refused a free-form message: the user's last message is over 24 hours old. The
# choice was made when the message was queued; a retry or a late drain can cross the line.
WINDOW_CLOSED_CODE = "63016"
# WhatsApp's messaging limit for our sender (it resets within a day): a payment link or a
# code cannot wait that long.
RATE_LIMITED_CODE = "63018"
# WhatsApp refused the content: a template over its length, a parameter it cannot take.
CONTENT_REFUSED_CODE = "63021"
# WhatsApp refusals whose text goes by SMS instead (once).
BY_SMS_CODES = frozenset({WINDOW_CLOSED_CODE, RATE_LIMITED_CODE, CONTENT_REFUSED_CODE})
STALE_SENDING = timedelta(minutes=15)
# A reply claimed at insert and never tried (attempts 0) this long: its drainer most likely
# died between the turn's commit and its send (send_now). Twilio cannot hold it, so it is
# simply given back (pending, its delivery job) without waiting STALE_SENDING. A drainer
# merely slow loses nothing by it: its try begins by taking the claim (_claim_kept), which
# it finds gone, and leaves the row to the job; the job's send waits for the address's
# turn, so the order holds. Never twice: only one of them can move the claim.
STALE_UNTRIED = timedelta(seconds=60)
_UNTRIED_BACK = "claimed but never tried; sending"
# A row whose own look-ups failed for this long since its claim is sent again unasked.
GIVE_UP_UNKNOWN = timedelta(hours=24)
# A row only ever held back by pauses (its own look-ups never failed, it was not asked)
# waits for Twilio's answer this long, then goes unasked all the same.
GIVE_UP_PAUSED = timedelta(hours=72)
# Twilio's clock against ours, and its whole-second date_created: a message that shows up
# to this much before our claim may still be the one we sent.
CLOCK_SKEW = timedelta(minutes=2)
# The most of one recipient's messages (since the claim) a reconcile reads; past it the
# answer counts as unknown, not as "Twilio has none".
LOOKUP_LIMIT = 1000
RECONCILE_JOB = "core.services.outbox.reconcile"
# The rows without a sid a sweep reads, and the most reconcile jobs it starts.
RECONCILE_SCAN = 2000
RECONCILE_BATCH = 500
# While Twilio cannot be asked, look-ups pause (the sweep starts none, a queued reconcile
# job asks nothing): the first failure for a minute, each one after it twice as long. A
# row's own failed look-ups hold it back by the same lengths.
LOOKUP_PAUSE_KEY = "outbox:reconcile:pause"
LOOKUP_PAUSE_FIRST = timedelta(minutes=1)
LOOKUP_PAUSE_MAX = timedelta(minutes=30)
# One row's look-ups for one claim (see _RowLookups).
ROW_LOOKUPS_KEY = "outbox:reconcile:row:{}"


def address(channel: str, to: str) -> str:
    """Twilio address for a channel: ``whatsapp:+91...`` or ``+91...``.

    SMS goes to numbers ``normalize_phone`` takes (Indian mobiles, foreign numbers). On
    WhatsApp the address is what Twilio gave: any E.164 number (a WhatsApp Business
    account on an Indian landline writes from ``whatsapp:+9122...``), a WhatsApp id of
    digits (the number without its "+"), or a business-scoped id (no phone number),
    passed through as given.
    """
    raw = to.removeprefix("whatsapp:")
    if channel == "whatsapp":
        try:
            return "whatsapp:" + normalize_phone(raw)
        except ValidationError:
            number = "+" + raw if raw.isascii() and raw.isdigit() else raw
            if is_e164(number):
                return "whatsapp:" + number
            if raw and not raw.startswith("+") \
                    and raw.replace("-", "").replace(".", "").isalnum():
                return "whatsapp:" + raw
            raise
    if channel == "sms":
        return normalize_phone(raw)
    raise ValidationError(f"unknown outbound channel {channel!r}", code="bad_channel")


def queue_message(
    session: Session,
    *,
    channel: str,
    to: str,
    body: str,
    media_url: str | None = None,
    dedupe_key: str | None = None,
    booking_id: int | None = None,
    reply: bool = False,
    needed: bool = False,
    asked: bool = False,
    work: bool = False,
    send_after_commit: bool = False,
    person: Person | None = None,
) -> int | None:
    """Add a message to the outbox in the caller's transaction; deliver after commit.

    Returns the row id, or None when ``dedupe_key`` was already used (the cause was
    retried) or the recipient opted out. A ``reply`` answers a message the recipient just
    sent (the dialog decided what an opted-out contact hears, e.g. the STOP
    confirmation). After STOP on WhatsApp no WhatsApp message we start goes out, and an
    SMS only if they need it: about a booking (``booking_id``: its link, details, codes,
    status, refund), ``needed`` (a sign-in code they asked for) or ``asked`` (an answer to
    their own request: an operator's reply to their call for help) or ``work`` (a
    partner's work message or an ops alert, sent by SMS whatever their chat says: a
    WhatsApp STOP ends the WhatsApp messages only). After an SMS opt-out
    no SMS goes out but a ``needed`` one (tried: they may have opted in again where we
    could not see; Twilio refuses it otherwise). notify sends on the channel left open.
    The row keeps which of these it is (its ``kind``): a STOP that comes while it waits
    is honoured when it is sent as it would have been here (_stopped_since).
    ``send_after_commit`` is for callers that already run in a worker (a drain job): the
    row is sent right after the commit, in the caller's order, and only a failed first try
    becomes a delivery job with retries. ``person``: the person at ``to``, whom the caller
    holds already (notify): their opt-outs are read from it, not again by the address.
    """
    if not body.strip() and not media_url:
        raise ValidationError("a message needs a body or media", code="empty_message")
    settings = get_settings()
    to_addr = address(channel, to)
    if not reply and not needed and _opted_out(session, channel, to_addr,
                                               booking_id is not None or asked or work,
                                               person):
        log.info("recipient opted out; message dropped", extra={"channel": channel})
        return None
    from_addr = settings.twilio_whatsapp_from if channel == "whatsapp" else settings.twilio_sms_from
    # A row sent right after the commit is claimed ("sending") as it is written, its try
    # not made yet (attempts 0, counted in its turn: _claim_kept): no other job sends it,
    # and a later message's turn that finds it sends it first (_send_waiting). If this
    # worker dies before its turn and none comes, the drain run again for its message
    # gives it back to "pending" and its job at once (give_back_untried), else the sweep
    # after STALE_UNTRIED.
    spans = _spans_for(session, body, dedupe_key)
    kind = ("reply" if reply else "needed" if needed else "asked" if asked
            else "work" if work else "plain")
    params = {"channel": channel, "to_addr": to_addr, "from_addr": from_addr, "body": body,
              "media_url": media_url, "dedupe_key": dedupe_key, "booking_id": booking_id,
              "status": "sending" if send_after_commit else "pending",
              "attempts": 0, "code_spans": spans, "kind": kind}
    row_id = session.scalar(_INSERT, params)
    if row_id is None:
        return None
    if send_after_commit:
        claimed = _Claimed(row_id, to_addr, from_addr, body, media_url, 1, None, None, spans)
        after_commit(session, lambda: send_now(claimed))
    else:
        after_commit(session, lambda: schedule_delivery(row_id, fresh=True))
    return row_id


# A mapped class's __table__ is its Table, though typed as any FromClause.
_OUTBOX = cast(Table, OutboxMessage.__table__)
# Prebuilt Core statement: every reply runs it (no ORM unit of work, nothing built per call).
_INSERT = (insert(_OUTBOX)
           .values({name: bindparam(name) for name in (
               "channel", "to_addr", "from_addr", "body", "media_url", "dedupe_key",
               "booking_id", "status", "attempts", "code_spans", "kind")})
           .on_conflict_do_nothing(index_elements=["dedupe_key"])
           .returning(_OUTBOX.c.id))


def withdraw(session: Session, row_id: int) -> bool:
    """Take back a message never tried (its cause was undone before a worker got to it:
    a booking cancelled in the call it was made in), in the caller's transaction. The row
    is locked first, so no sender is claiming it meanwhile; only one still "pending" with
    no attempt goes (a row held back untried behind an earlier one included), with its
    template send. One tried, being sent or settled stays: it may have reached them.
    Returns whether it was withdrawn. Its delivery job, if queued, finds nothing."""
    row = session.execute(select(OutboxMessage.status, OutboxMessage.attempts)
                          .where(OutboxMessage.id == row_id).with_for_update()).first()
    if row is None or row.status != "pending" or row.attempts != 0:
        return False
    session.execute(delete(WhatsappTemplateSend).where(WhatsappTemplateSend.outbox_id == row_id))
    session.execute(delete(OutboxMessage).where(OutboxMessage.id == row_id))
    return True


# A sign-in code's SMS (auth.request_otp), known by its dedupe key. Its code lives minutes
# (auth.OTP_TTL), and the next one asked for replaces it: it goes on its own, neither
# waiting behind an earlier message to the person nor holding a later one back (a retry's
# back-off can outlast the code); it is not sent once a newer code replaced it
# (withdraw_sign_in_codes), nor after its code's life.
SIGN_IN_PREFIX = "sign-in-"
CODE_REPLACED = "a newer sign-in code replaced it before it was sent"
CODE_EXPIRED = "its sign-in code expired before it was sent"


def sign_in_key() -> str:
    """The dedupe key of a new sign-in code's SMS (each code's own)."""
    return SIGN_IN_PREFIX + secrets.token_hex(8)


def _sign_in_row() -> ColumnElement[bool]:
    return OutboxMessage.dedupe_key.startswith(SIGN_IN_PREFIX)


def _sign_in_expired(row: OutboxMessage) -> bool:
    from core.services.auth import OTP_TTL  # auth sends through this module

    return (row.dedupe_key or "").startswith(SIGN_IN_PREFIX) \
        and row.created_at <= clock.now() - OTP_TTL


def _not_sent(session: Session, where: ColumnElement[bool], why: str, *,
              skip_locked: bool = False) -> list[int]:
    """Rows picked by ``where`` that still wait (pending: Twilio has not taken them; not
    one being sent) are never sent now: they fail, not as a failure to send (/metrics
    does not count them, as _refuse_stopped), and their codes are masked at once (nothing
    can send them again). ``skip_locked``: a row a sender holds locked now is left to it
    (a caller holding other locks, a leg's, must not wait for a sender that may want
    them). In the caller's transaction; returns their ids."""
    m = OutboxMessage
    picked: ColumnElement[bool] = where
    if skip_locked:
        picked = m.id.in_(list(session.scalars(
            select(m.id).where(where, m.status == "pending")
            .with_for_update(skip_locked=True))))
    ids = list(session.scalars(update(m).where(picked, m.status == "pending")
                               .values(status="failed", error_code=None, last_error=why)
                               .returning(m.id)))
    if ids:
        session.execute(update(m).where(m.id.in_(ids)).values(failed_at=None))
        mask_codes(session, ids)
    return ids


def withdraw_sign_in_codes(session: Session, phone: str) -> int:
    """A phone is asking for a new sign-in code, which replaces its earlier ones: their
    SMS still waiting (for a retry after Twilio refused a try, or for their first) are
    not sent. One being sent (its outcome unknown) is left: it may have reached them."""
    withdrawn = _not_sent(session, (OutboxMessage.to_addr == address("sms", phone))
                          & _sign_in_row(), CODE_REPLACED)
    if withdrawn:
        log.info("replaced sign-in codes not sent", extra={"rows": len(withdrawn)})
    return len(withdrawn)


# A leg's codes, made anew (dispatch: send_leg_codes after a rider gave the job back and
# another took it, ops' new code), void the ones before: a message still waiting to carry
# an old one (for a retry after Twilio refused a try, or behind one) is not sent
# (withdraw_leg_codes), else it would come after the new code ("give code <old> to the
# rider": a wrong try at PICK). The messages carrying a leg's codes, by their dedupe keys
# (core.services.dispatch; what is sent in a lost one's place adds a suffix to its key):
# its pickup code to the customer (pickotp), to the rider handing over at a Point
# (handgive) or to the rider holding the parcel (handpick); its drop code to the
# recipient or the sender (dropotp), and to the next leg's rider, who reads it out at the
# Point (that leg's handtake). Copies of them sent another way (_COPY_PREFIXES) too.
LEG_CODE_REPLACED = "a newer code of its leg replaced it before it was sent"
_LEG_CODE_KINDS = {"pickup": ("pickotp", "handgive", "handpick"), "drop": ("dropotp",)}


def withdraw_leg_codes(session: Session, leg_id: int,
                       kinds: tuple[str, ...] = ("pickup", "drop")) -> int:
    """The leg's codes of ``kinds`` ("pickup", "drop") are about to be made anew, or were
    made void: their messages still waiting (pending) are not sent. Call it before the new
    codes' messages are queued (they are the leg's code messages too). One being sent (its
    outcome unknown) is left: it may have reached them; so is one a sender holds locked
    this moment (either, given back or sent later, is not sent once the new code's message
    is written: _leg_code_replaced). In the caller's transaction; returns how many."""
    from core.adapters.models import Leg  # dispatch's table

    m = OutboxMessage
    leg = session.get(Leg, leg_id)
    if leg is None:
        return 0
    likes = _leg_code_likes(session, leg.booking_id, leg_id, kinds)
    ids = set(session.scalars(select(m.id).where(
        m.booking_id == leg.booking_id, or_(*(m.dedupe_key.like(like) for like in likes)))))
    found = set(ids)
    while found:  # their copies, and the copies of those (a template's SMS)
        keys = [prefix + str(row_id) for row_id in found for prefix in _COPY_PREFIXES]
        found = set(session.scalars(select(m.id).where(m.dedupe_key.in_(keys)))) - ids
        ids |= found
    if not ids:
        return 0
    withdrawn = _not_sent(session, m.id.in_(sorted(ids)), LEG_CODE_REPLACED,
                          skip_locked=True)
    if withdrawn:
        log.info("replaced leg codes not sent", extra={"leg_id": leg_id,
                                                        "rows": len(withdrawn)})
    return len(withdrawn)


def _leg_code_likes(session: Session, booking_id: int, leg_id: int,
                    kinds: tuple[str, ...]) -> list[str]:
    """The dedupe key patterns of the messages carrying the leg's codes of ``kinds``
    (its drop code to the next leg's rider too: that leg's handtake)."""
    from core.adapters.models import Leg  # dispatch's table: read for the next leg only

    likes = [f"leg-{leg_id}-{word}-%" for kind in kinds for word in _LEG_CODE_KINDS[kind]]
    if "drop" in kinds:
        nxt = session.scalar(select(Leg.id).where(
            Leg.booking_id == booking_id, Leg.sequence == select(Leg.sequence).where(
                Leg.id == leg_id).scalar_subquery() + 1))
        if nxt is not None:
            likes.append(f"leg-{nxt}-handtake-%")
    return likes


# A leg's code message whose send outcome was lost (left "sending" by withdraw_leg_codes:
# it may have reached them) and that Twilio turns out never to have had is given back
# after its leg's code was made anew: it is not sent then, nor any such message still
# waiting that withdraw_leg_codes could not take (a sender held it locked). Its code was
# replaced when a newer message of the same leg and kind (withdraw_leg_codes' keys, as
# every new code of a leg is sent under them: dispatch's send_leg_codes, new_leg_code,
# what goes in a lost code's place) was written after the one it says (_said_by: a copy
# says its original's).
_LEG_CODE_KEY = re.compile(r"leg-(\d+)-(pickotp|handgive|handpick|dropotp|handtake)-.+")


def _leg_code_replaced(session: Session, row: OutboxMessage) -> bool:
    """Whether ``row`` carries a leg's code (or copies one) that a newer code message of
    the same leg and kind replaced."""
    from core.adapters.models import Leg  # dispatch's table

    if row.booking_id is None:
        return False
    key, said = _said_by(session, row)
    found = _LEG_CODE_KEY.fullmatch(key)
    if found is None:
        return False
    leg_id, word = int(found[1]), found[2]
    kind = next(k for k, words in (*_LEG_CODE_KINDS.items(), ("drop", ("handtake",)))
                if word in words)
    if word == "handtake":  # the drop code of the leg before the one it names
        before = session.scalar(select(Leg.id).where(
            Leg.booking_id == row.booking_id, Leg.sequence == select(Leg.sequence).where(
                Leg.id == leg_id).scalar_subquery() - 1))
        if before is None:
            return False
        leg_id = before
    m = OutboxMessage
    likes = _leg_code_likes(session, row.booking_id, leg_id, (kind,))
    return session.scalar(select(m.id).where(
        m.booking_id == row.booking_id, m.id > said,
        or_(*(m.dedupe_key.like(like) for like in likes))).limit(1)) is not None


# A partner's number moved to a new SIM (partner_profile.set_phone; people.former_phones
# keeps the old one, stamped with the database's time of the move, as a row's created_at).
# His SMS still pending then go to the new number with him; his WhatsApp messages still
# pending then, and any message written to him before the move that was being sent then
# (claimed, or its outcome lost) and is given back since, follow him here (_follow_moved):
# the old number may be a stranger's now. An SMS goes to his new number; a WhatsApp
# message is not sent to the old number's WhatsApp (not his: set_phone cleared it) but
# goes to him as notify sends to him now: on WhatsApp if he chats with us from his new
# number, else by SMS to it (its copy, ``wa-for-<id>`` or ``sms-for-<id>``, so what
# follows a copy follows it: a void code, superseded news). A chat reply ending in
# numbered choices does not go by SMS (_answered_on_whatsapp), nor a sign-in code for the
# old number anywhere (set_phone withdraws those). No number to go to: it is not sent.
NUMBER_MOVED = "its recipient's number moved to a new SIM before it was sent"
MOVED = "moved"  # what _deliver_one answers for a row that followed its recipient


def _moved_from(session: Session, row: OutboxMessage) -> Person | None:
    """The person who held ``row``'s number when it was written and moved off it since
    (the first to leave it after; not one back on it). Not indexed (``former_phones ?``
    reads every person, as retention's erasure does): asked only of a row given back or
    tried before, never of a message going out as written."""
    number = _number_of(row.to_addr)
    if not number.startswith("+"):
        return None
    left = sa_cast(Person.former_phones[number].astext, DateTime(timezone=True))
    return session.scalar(select(Person).where(
        Person.former_phones.has_key(number), left > row.created_at,
        Person.phone.is_distinct_from(number)).order_by(left).limit(1))


def _follow_moved(session: Session, row: OutboxMessage, person: Person) -> int | None:
    """``row`` (pending, locked) is to ``person``'s old number: it follows him (see
    above). Returns the id of the row that carries it now (itself, or its copy), None if
    it goes nowhere. In the caller's transaction."""
    from core.services import notify  # notify sends through this module

    signing_in = (row.dedupe_key or "").startswith(SIGN_IN_PREFIX)
    if row.channel == "sms" and person.phone and not signing_in:
        row.to_addr = address("sms", person.phone)
        log.info("a message to a moved number follows its recipient",
                 extra={"outbox_id": row.id})
        return row.id
    body, kind = row.body, _kind_of(row)
    asked = _answered_on_whatsapp(session, row) if row.channel == "whatsapp" else None
    _not_sent(session, OutboxMessage.id == row.id, NUMBER_MOVED)
    if (not person.phone or signing_in or asked is not None
            or code_masked(body, row.code_spans)):
        log.info("a message to a moved number goes nowhere; not sent",
                 extra={"outbox_id": row.id})
        return None
    new_id = notify.send_to_person(session, person, body, dedupe_key=f"wa-for-{row.id}",
                                   booking_id=row.booking_id, whatsapp_only=True,
                                   lang=_text_language(session, row, person))
    if new_id is None:
        new_id = queue_message(session, channel="sms", to=person.phone, body=body,
                               dedupe_key=f"sms-for-{row.id}", booking_id=row.booking_id,
                               reply=kind == "reply", needed=kind == "needed",
                               asked=kind == "asked", work=kind == "work", person=person)
    log.info("a whatsapp message to a moved number goes to the new one",
             extra={"outbox_id": row.id, "copy": new_id})
    return new_id


def follow_moved_whatsapp(session: Session, person: Person, old: str) -> int:
    """``person``'s number moved off ``old`` (set_phone, in its transaction, after
    people.phone changed): his WhatsApp messages still waiting for the old number
    (pending: for their first try, a retry, behind another) follow him (_follow_moved).
    One a sender holds this moment is left to it (claimed, its outcome lost, it follows
    him when given back). Returns how many."""
    m = OutboxMessage
    rows = list(session.scalars(select(m).where(
        m.channel == "whatsapp", m.to_addr == address("whatsapp", old),
        m.status == "pending").order_by(m.id).with_for_update(skip_locked=True)))
    for row in rows:
        _follow_moved(session, row, person)
    return len(rows)


# Messages to one person go out in the order they were written (each address in its turn,
# _turn_of): one waits while an earlier message to the same address waits for a retry (a
# try failed), at most this long after that one was written (then it no longer holds the
# others back: its own retries send it, after them). One that failed for good holds
# nothing back, and when the one waited for goes, or fails for good, those behind it go at
# once in its turn; when it stops holding them back, their jobs come back then, not at a
# retry of theirs (_held_again). Rows waiting behind it say so (last_error HELD_BACK). A
# row whose send outcome is unknown holds nothing back. Not a sign-in code's: it neither
# waits nor holds.
IN_ORDER_FOR = timedelta(minutes=10)
HELD_BACK = "held back behind an earlier message waiting for a retry"


# A booking's news to its customer, each written as the booking moved on (dedupe keys of
# core.services.dispatch: its status "booking-<id>-<status>-<tag>", who is coming
# "booking-<id>-assigned-<tag>", that it is late "booking-<id>-late-delivery"; of
# core.services.payments: its cancellation "cancelled-<id>"). One person's messages keep
# their order only IN_ORDER_FOR, and only on one address: a notice that waited longer for
# its retries would reach her after the news that replaced it ("picked up" after
# "delivered", "Ramesh is coming" after "Asha is coming"). It is not sent once newer news
# of its booking was written, or the booking was cancelled (her own cancel is answered in
# the chat: no row), as a replaced sign-in code is not (_superseded); it never holds the
# newer news back. Its copy sent another way (_COPY_PREFIXES) is the news it copies.
NEWS_SUPERSEDED = "newer news of its booking came before it was sent"
_NEWS_STATES = "|".join(sorted(state.value for state in BookingStatus))
_NEWS_KEY = re.compile(
    rf"booking-(\d+)-(?:(?:{_NEWS_STATES})-.+|late-delivery)|cancelled-(\d+)")


def _news_key(booking_id: int) -> str:
    """PostgreSQL's pattern of _NEWS_KEY for one booking."""
    return (rf"^(booking-{booking_id}-(({_NEWS_STATES})-.+|late-delivery)"
            rf"|cancelled-{booking_id})$")


def _said_by(session: Session, row: OutboxMessage) -> tuple[str, int]:
    """The dedupe key and id of the message ``row`` says: its own, or the one it copies."""
    key, said = row.dedupe_key or "", row.id
    for _ in range(3):  # a copy's copy (the template's SMS) at most
        copied = next((key[len(p):] for p in _COPY_PREFIXES if key.startswith(p)), None)
        if copied is None or not copied.isdigit():
            break
        said = int(copied)
        key = session.scalar(select(OutboxMessage.dedupe_key)
                             .where(OutboxMessage.id == said)) or ""
    return key, said


def _superseded(session: Session, row: OutboxMessage) -> bool:
    """Whether ``row`` is a booking's news to its customer (or a copy of one) that newer
    news of the booking replaced, or whose booking was cancelled since."""
    if row.booking_id is None:
        return False
    key, said = _said_by(session, row)
    found = _NEWS_KEY.fullmatch(key)
    if found is None or int(found[1] or found[2]) != row.booking_id:
        return False
    if found[2] is None and session.scalar(select(Booking.status).where(
            Booking.id == row.booking_id)) == BookingStatus.CANCELLED.value:
        return True
    m = OutboxMessage
    return session.scalar(select(m.id).where(
        m.booking_id == row.booking_id, m.id > said,
        m.dedupe_key.regexp_match(_news_key(row.booking_id))).limit(1)) is not None


# A job offer to a rider ("offer-<offer id>", core.services.dispatch) is answered within
# its time and grace (dispatch.offer_timeout closes it then): an SMS that waited longer
# (for the worker, for a retry) would offer a job he can no longer take. It is not sent
# once its offer is closed (expired, withdrawn, taken by another) or past that time.
OFFER_OVER = "its job offer was over before it was sent"
_OFFER_KEY = re.compile(r"offer-(\d+)")


def _offer_over(session: Session, row: OutboxMessage) -> bool:
    """Whether ``row`` is a job offer's SMS (or a copy of one) whose offer is over."""
    from core.adapters.dispatch_models import DispatchOffer
    from core.domain.dispatch import OfferStatus
    from core.services.dispatch import config  # dispatch sends through this module

    found = _OFFER_KEY.fullmatch(_said_by(session, row)[0])
    if found is None:
        return False
    offer = session.execute(select(DispatchOffer.status, DispatchOffer.expires_at).where(
        DispatchOffer.id == int(found[1]))).first()
    return offer is None or offer.status != OfferStatus.OPEN.value \
        or clock.now() > offer.expires_at + timedelta(seconds=config().offer_grace_s)


# One sender at a time per address: a worker holds the address's turn (PostgreSQL's
# advisory lock on TURN_LOCK_KEY and the address's hashtext, on a connection of its own,
# so a killed worker's closed connection frees it) while it sends to it, and sends the
# address's waiting messages in id order: the earlier ones first, then its own, then up to
# IN_ORDER_AFTER later ones (those held back behind it among them). With two workers, two
# messages to one person can no longer reach Twilio the wrong way round: the second's job
# waits for the first's turn, and finds its row sent in that turn. What a turn waits for is
# bounded: each send by the Twilio client's timeout, a turn by the rows it reads
# (IN_ORDER_SCAN: when that many earlier ones wait, they go and ours comes back after
# them), and the wait for a turn by TURN_WAIT_MS. A chat reply claimed as it is written
# (send_after_commit: "sending" with no try yet, attempts 0) waits as any earlier row: the
# turn that finds it sends it, taking it over from its drainer, which then leaves it
# (_claim_kept). A row "sending" once tried (attempts 1 or more) whose outcome is unknown
# does not hold the others back (Twilio most likely holds it; a reconcile settles it). The
# turn's connection also records what Twilio answered: a sender holds one connection, and
# a second only for its claim's transaction (or a failure's).
TURN_LOCK_KEY = int.from_bytes(b"RCob", "big")
IN_ORDER_SCAN = 100
IN_ORDER_AFTER = 10
# How long a sender waits for its address's turn: a reply sent at once (send_now, in a
# drainer's thread, where RQ's job timeout does not reach, holding the contact's inbox
# lock) and a delivery job alike (several jobs for one busy address would hold every
# outbox worker, a sign-in code's job queued behind them). Then the reply is given back to
# its job, and a job comes back later (the turn's holder most likely sends the row
# meanwhile: it sends the later rows too).
TURN_WAIT_MS = 5000
# When a delivery job whose row could not go yet, untried, comes back (ComeBack): after
# TURN_AGAIN_S when the turn was busy or a full scan of earlier rows went first; behind an
# earlier row waiting for its retry, after HELD_AGAIN_S or when that row stops holding it
# back (IN_ORDER_FOR after it was written), whichever is sooner. The job returns RQ's
# Retry (workers.outbox): RQ runs the same job again then without using one of the row's
# retries for a failed try (it counts them apart: number_of_retries, not retries_left), at
# most COME_BACK_MAX times in the job's life; past that the job fails, and the sweep
# enqueues the still pending row again.
TURN_AGAIN_S = 5
HELD_AGAIN_S = 30
COME_BACK_MAX = 1000


class TurnBusy(RuntimeError):
    """The address's turn was not free within TURN_WAIT_MS."""


@dataclass(frozen=True)
class ComeBack:
    """What deliver answers when its row could not go yet and was not tried: its job runs
    again in ``after_s`` seconds (``why``: for logs and tests)."""

    why: str
    after_s: int


@contextmanager
def _turn_of(outbox_id: int, to_addr: str | None = None
             ) -> Iterator[tuple[str | None, Connection]]:
    """Wait for the turn of the row's address, at most TURN_WAIT_MS (then TurnBusy), and
    hold it in the block; yield the address (None: nothing taken, the row is no longer
    pending or is a sign-in code's SMS, which goes on its own) and the turn's connection
    (autocommit). ``to_addr``: the row's, known (a row claimed at insert)."""
    m = OutboxMessage
    with db.engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # The turn asked for without waiting first: free, as it mostly is, that is one
        # statement; only a busy one costs the bounded wait's three (_within_wait).
        if to_addr is None:
            # One statement: the row's address, its turn taken if free, only if the row
            # still waits.
            found = conn.execute(select(m.to_addr, func.pg_try_advisory_lock(
                TURN_LOCK_KEY, func.hashtext(m.to_addr)).label("taken")).where(
                m.id == outbox_id, m.status == "pending",
                m.dedupe_key.is_(None) | ~_sign_in_row())).first()
            to_addr, taken = (found.to_addr, found.taken) if found else (None, False)
        else:
            taken = conn.scalar(select(func.pg_try_advisory_lock(TURN_LOCK_KEY,
                                                                 func.hashtext(to_addr))))
        if to_addr is not None and not taken:
            # Another sender holds it. Once it is ours the row may have gone in that
            # sender's turn: what follows reads it again (_waiting_to, _deliver_one).
            _within_wait(conn, select(func.pg_advisory_lock(TURN_LOCK_KEY,
                                                            func.hashtext(to_addr))))
        if to_addr is None:
            yield None, conn
            return
        try:
            yield to_addr, conn
        finally:
            try:
                conn.execute(select(func.pg_advisory_unlock(TURN_LOCK_KEY,
                                                            func.hashtext(to_addr))))
            except DBAPIError:
                conn.invalidate()  # closed: PostgreSQL frees the lock with the session


def _within_wait(conn: Connection, statement: Any) -> Any:
    """Run ``statement``, which takes an address's turn, waiting at most TURN_WAIT_MS for
    it (the session's lock_timeout, set back at once: the connection goes back to the
    pool); return its row. TurnBusy if the turn was not free by then."""
    conn.execute(text(f"SET lock_timeout = {int(TURN_WAIT_MS)}"))
    try:
        found = conn.execute(statement).first()
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
            conn.invalidate()  # not back to the pool with the short lock_timeout
            raise
        conn.execute(text("RESET lock_timeout"))
        raise TurnBusy() from None
    conn.execute(text("RESET lock_timeout"))
    return found


def _untried_claim() -> ColumnElement[bool]:
    """A reply claimed at insert that its drainer has not tried yet (_claim_kept)."""
    return (OutboxMessage.status == "sending") & (OutboxMessage.attempts == 0)


@dataclass(frozen=True)
class _Waiting:
    """The address's other rows waiting to go, as a turn read them (id order)."""

    earlier: list[Any]
    later: list[Any]  # up to IN_ORDER_AFTER
    more_earlier: bool  # the scan was full of earlier rows: more may wait beyond it


def _waiting_to(turn: Connection, to_addr: str, mine: int) -> _Waiting:
    """The address's other waiting rows (pending, or a reply claimed at insert and not
    tried yet; not a sign-in code's): those before ``mine`` and up to IN_ORDER_AFTER after
    it. An earlier row that failed a try and was written over IN_ORDER_FOR ago is not read:
    it holds nothing back and its own retries send it, so it must not fill the scan. Read
    once the turn is held: a statement begun before would not see what the turn before
    sent."""
    m = OutboxMessage
    rows = turn.execute(select(m.id, m.status, m.attempts, m.created_at).where(
        m.to_addr == to_addr, (m.status == "pending") | _untried_claim(), m.id != mine,
        m.dedupe_key.is_(None) | ~_sign_in_row(),
        (m.id > mine) | (m.attempts == 0) | (m.created_at > clock.now() - IN_ORDER_FOR))
        .order_by(m.id).limit(IN_ORDER_SCAN)).all()
    earlier = [r for r in rows if r.id < mine]
    return _Waiting(earlier, [r for r in rows if r.id > mine][:IN_ORDER_AFTER],
                    more_earlier=len(earlier) == IN_ORDER_SCAN)


def _holds_back(row: Any) -> bool:
    """Whether a waiting row holds the later ones back: it failed a try and waits for its
    retry, and was written less than IN_ORDER_FOR ago."""
    return bool(row.attempts > 0 and row.created_at > clock.now() - IN_ORDER_FOR)


def _earlier_first(turn: Connection, earlier: list[Any]) -> Any | None:
    """In the address's turn: send the waiting rows written before ours, in order; return
    the one ours waits behind (it waits for a retry, or failed its try now), or None: ours
    may go now."""
    for row in earlier:
        if row.attempts > 0:
            if _holds_back(row):
                return row
            continue  # waited past IN_ORDER_FOR: its own retries send it
        try:
            _send_waiting(turn, row)
        except TransientSendError:
            return row  # it waits for its retry now: ours waits behind it
    return None


def _later_follow(turn: Connection, later: list[Any]) -> None:
    """In the address's turn, ours sent: the next waiting rows go at once (those held
    back behind ours included), until one waits for its own retry or fails its try."""
    for row in later:
        if row.attempts > 0:
            return
        try:
            _send_waiting(turn, row)
        except TransientSendError:
            return


def _send_waiting(turn: Connection, row: Any) -> None:
    """Send a waiting row, untried, in this turn (a failed try raises TransientSendError).
    A reply claimed at insert that its drainer has not tried yet is taken over: back to
    pending, then sent as any (its drainer, finding its claim gone, leaves it); a failed
    try gets it the retrying job it did not have."""
    if row.status == "pending":
        _deliver_one(row.id, turn)
        return
    m = OutboxMessage
    taken = turn.execute(update(m).where(m.id == row.id, _untried_claim())
                         .values(status="pending", last_error=_UNTRIED_BACK)).rowcount == 1
    if taken:
        log.info("a reply not tried yet is sent in a later message's turn",
                 extra={"outbox_id": row.id})
    try:
        if _deliver_one(row.id, turn) == MOVED and taken:
            schedule_delivery(row.id)  # its drainer leaves it: its job, in its new turn
    except TransientSendError:
        if taken:
            _retry_later(row.id)
        raise


def _held_again(holder: Any) -> int:
    """When a job held back behind ``holder`` comes back: after HELD_AGAIN_S, or once the
    holder stops holding it back (IN_ORDER_FOR after it was written), if sooner."""
    left = holder.created_at + IN_ORDER_FOR - clock.now()
    return max(1, min(HELD_AGAIN_S, math.ceil(left.total_seconds()) + 1))


def send_now(claimed: _Claimed) -> str:
    """Send a row claimed at insert, in this worker; a failed try becomes the retrying job.
    In the address's turn, after the earlier messages still waiting to go to it; behind one
    that waits for a retry it waits too (its job, after that retry): a reply must not
    overtake the one it follows. A turn that found it first (a later message's) sent it:
    it is left to that one. Its opt-out was asked as it was written, just now (a retry is
    a deliver job, which asks again)."""
    try:
        with _turn_of(claimed.outbox_id, claimed.to) as (_, turn):
            waiting = _waiting_to(turn, claimed.to, claimed.outbox_id)
            holder = _earlier_first(turn, waiting.earlier)
            if holder is not None or waiting.more_earlier:
                _given_back(turn, claimed.outbox_id,
                            _held_again(holder) if holder is not None else TURN_AGAIN_S)
                return "waiting"
            if not _claim_kept(turn, claimed.outbox_id):
                return "taken-over"
            try:
                return _send(claimed, turn)
            except TransientSendError:
                _retry_later(claimed.outbox_id)
                return "retrying"
    except TurnBusy:  # another sender holds the turn long: its job sends it
        with db.engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            _given_back(conn, claimed.outbox_id, TURN_AGAIN_S)
        return "waiting"


def give_back_untried(session: Session, dedupe_keys: list[str]) -> int:
    """Of the rows with these keys (a chat message's replies, claimed at insert), those
    still claimed and never tried go back to ``pending`` and get their delivery job once
    the caller's transaction commits; how many rows have these keys at all (the caller
    asks for the next keys while all were there). A re-run drain finds its message
    handled by the turn that claimed these replies and died before sending them (the
    worker killed after the commit): without this they waited for the sweep. A drainer
    merely slow (its contact's lock lapsed while it sent) keeps nothing twice: its try
    begins by taking the claim (_claim_kept), finds it gone, and leaves the row to its
    job, which waits for the address's turn, so the order holds."""
    m = OutboxMessage
    found = session.execute(select(m.id, m.status, m.attempts)
                            .where(m.dedupe_key.in_(dedupe_keys))).all()
    if any((r.status, r.attempts) == ("sending", 0) for r in found):
        given = list(session.scalars(
            update(m).where(m.dedupe_key.in_(dedupe_keys), _untried_claim())
            .values(status="pending", last_error=_UNTRIED_BACK)
            .returning(m.id).execution_options(synchronize_session=False)))
        for row_id in sorted(given):
            log.info("a reply its drainer never tried is sent by its job",
                     extra={"outbox_id": row_id})
            after_commit(session, functools.partial(schedule_delivery, row_id))
    return len(found)


def _claim_kept(turn: Connection, outbox_id: int) -> bool:
    """In the turn, just before Twilio is called: whether the drainer still holds its
    row's claim (no later message's turn took it over), marking its try (attempts) with
    it. From here on a lost outcome is unknown: the row holds nothing back and no turn
    takes it over."""
    m = OutboxMessage
    return turn.execute(update(m).where(m.id == outbox_id, _untried_claim()).values(
        attempts=m.attempts + 1, updated_at=clock.now())).rowcount == 1


def _given_back(conn: Connection, outbox_id: int, after_s: int) -> None:
    """A row claimed at insert and not tried goes back to waiting, for its job in
    ``after_s`` seconds, as a delivery job that could not go comes back (ComeBack): none
    of its retries used, for it was not tried; unless a later message's turn took it
    over meanwhile (that one sends it)."""
    m = OutboxMessage
    if conn.execute(update(m).where(m.id == outbox_id, _untried_claim())
                    .values(status="pending", last_error=HELD_BACK)).rowcount == 1:
        s = get_settings()
        q = queue("outbox")
        forget_earlier_run(q, f"outbox-{outbox_id}")
        q.enqueue_in(timedelta(seconds=after_s), DELIVER_JOB, outbox_id,
                     job_id=f"outbox-{outbox_id}",
                     retry=Retry(max=s.outbox_max_retries,
                                 interval=list(s.outbox_retry_intervals)),
                     result_ttl=3600, failure_ttl=7 * 86400)


def _retry_later(outbox_id: int, *, extra_s: int = 0) -> None:
    s = get_settings()
    intervals = list(s.outbox_retry_intervals)
    left = s.outbox_max_retries - 1  # this try is the first retry
    forget_earlier_run(queue("outbox"), f"outbox-{outbox_id}")
    queue("outbox").enqueue_in(
        timedelta(seconds=intervals[0] + extra_s), DELIVER_JOB, outbox_id,
        job_id=f"outbox-{outbox_id}",
        # RQ refuses Retry(max=0): with one retry allowed, this try is the last.
        retry=Retry(max=left, interval=intervals[1:] or intervals) if left > 0 else None,
        result_ttl=3600, failure_ttl=7 * 86400)


def schedule_delivery(outbox_id: int, *, fresh: bool = False) -> None:
    """Enqueue the delivery job for one row (job id from the row id: never twice).

    ``fresh``: the row was just written or just failed in this worker, so no job for it
    can exist yet; skip the look-up.
    """
    s = get_settings()
    enqueue(DELIVER_JOB, outbox_id, queue_name="outbox", job_id=f"outbox-{outbox_id}",
            retry=Retry(max=s.outbox_max_retries, interval=list(s.outbox_retry_intervals)),
            known_new=fresh)


class TransientSendError(RuntimeError):
    """Twilio did not take the message this time; RQ retries the job."""


def deliver(outbox_id: int, *, follow: bool = True) -> str | ComeBack:
    """Send one outbox row through Twilio; return what happened (for logs and tests).

    In its address's turn (_turn_of), in order: the earlier messages still waiting to go
    to the same address go first; behind one that waits for a retry (IN_ORDER_FOR) this
    one waits too; once it went, the later ones waiting go at once. A row that could not
    go, untried (the turn busy past TURN_WAIT_MS, held back, more earlier rows than a turn
    reads), is not a failed try: its job comes back (ComeBack). A sign-in code's SMS goes
    on its own, at once, or not at all once its code has expired. One that followed its
    recipient to his new number (MOVED) goes at once in that address's turn (``follow``
    False: as it is now)."""
    try:
        with _turn_of(outbox_id) as (to_addr, turn):
            if to_addr is None:  # not pending any more, or a sign-in code's: as it is
                return _deliver_one(outbox_id, turn, follow=follow)
            waiting = _waiting_to(turn, to_addr, outbox_id)
            holder = _earlier_first(turn, waiting.earlier)
            if holder is not None:
                turn.execute(update(OutboxMessage).where(  # tried after the earlier one
                    OutboxMessage.id == outbox_id, OutboxMessage.status == "pending",
                    OutboxMessage.attempts == 0).values(last_error=HELD_BACK))
                return ComeBack("an earlier message to the same person waits for a retry",
                                _held_again(holder))
            if waiting.more_earlier:  # those read went: the rest, then ours, next time
                return ComeBack("more earlier messages wait than a turn reads",
                                TURN_AGAIN_S)
            # A failed try raises: later ones wait.
            outcome = _deliver_one(outbox_id, turn, follow=follow)
            _later_follow(turn, waiting.later)
    except TurnBusy:  # its holder most likely sends this row meanwhile
        return ComeBack("the address's turn is busy", TURN_AGAIN_S)
    if outcome == MOVED and follow:  # at its new address now: in that address's turn
        return deliver(outbox_id, follow=False)
    return outcome


def _deliver_one(outbox_id: int, turn: Connection | None = None, *,
                 follow: bool = True) -> str:
    """Send one row now, if it still waits (the caller keeps the order).

    A row whose recipient opted out since it was written (a STOP while it waited, for a
    retry or behind one, or while a reconcile looked for it) is not sent: it fails, or
    goes the other way, as queue_message would have decided (_refuse_stopped). A sign-in
    code's SMS is not sent once its code has expired; a job offer's, not once the offer
    is over (_offer_over); a leg's code's, not once a newer code of the leg replaced it
    (_leg_code_replaced). A row claimed, tried or held back before, whose recipient's
    number moved to a new SIM since it was written, follows him (_follow_moved: MOVED,
    not sent in this turn); ``follow`` False: not looked at (it followed him just now).
    ``turn``: the connection holding the address's turn, which records Twilio's answer."""
    with transaction() as session:
        row = session.get(OutboxMessage, outbox_id, with_for_update=True)
        if row is None:
            return "missing"
        if row.status != "pending":
            return "already-" + row.status
        if _sign_in_expired(row):
            _not_sent(session, OutboxMessage.id == outbox_id, CODE_EXPIRED)
            log.info("sign-in code expired before it was sent; not sent",
                     extra={"outbox_id": outbox_id})
            return "expired"
        if _superseded(session, row):
            _not_sent(session, OutboxMessage.id == outbox_id, NEWS_SUPERSEDED)
            log.info("booking news replaced by newer news before it was sent; not sent",
                     extra={"outbox_id": outbox_id, "booking_id": row.booking_id})
            return "superseded"
        if _offer_over(session, row):
            _not_sent(session, OutboxMessage.id == outbox_id, OFFER_OVER)
            log.info("job offer over before its SMS was sent; not sent",
                     extra={"outbox_id": outbox_id, "booking_id": row.booking_id})
            return "offer-over"
        if _leg_code_replaced(session, row):
            _not_sent(session, OutboxMessage.id == outbox_id, LEG_CODE_REPLACED)
            log.info("a leg's code replaced before its message was sent; not sent",
                     extra={"outbox_id": outbox_id, "booking_id": row.booking_id})
            return "replaced"
        if follow and (row.attempts > 0 or row.last_error is not None):
            # Claimed, tried or held back before: its recipient may have moved meanwhile.
            moved = _moved_from(session, row)
            if moved is not None:
                _follow_moved(session, row, moved)
                return MOVED
        claimed, code_kept = None, False
        stopped = _stopped_since(session, row)
        if stopped:
            code_kept = _refuse_stopped(session, row)
        else:
            row.status = "sending"
            row.attempts += 1
            row.updated_at = clock.now()
            template = session.get(WhatsappTemplateSend, outbox_id)
            claimed = _Claimed(outbox_id, row.to_addr, row.from_addr, row.body,
                               row.media_url, row.attempts,
                               template.content_sid if template else None,
                               {k: template_value(str(v))
                                for k, v in template.content_variables.items()}
                               if template else None, row.code_spans)
    if stopped:
        if code_kept:  # its copy, if any, has its own text
            _mask_later([outbox_id], CODE_KEPT_FOR)
        return "opted-out"
    assert claimed is not None
    return _send(claimed, turn)


_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")
_SPACES = re.compile(r"\s{2,}|\t")
_SENTENCE_END = (".", "!", "?", "।", ":", "|")


# WhatsApp refuses a template whose text with its parameters passes 1,024 characters
# (Twilio 63021). The "update" template is our text as its one parameter and a few words
# of its own (README: at most 24): a longer text goes by SMS instead.
TEMPLATE_TEXT_MAX = 1000


def fits_template(text: str) -> bool:
    """Whether ``text`` can go as the "update" template's parameter."""
    return len(template_value(text)) <= TEMPLATE_TEXT_MAX


def template_value(text: str) -> str:
    """``text`` as a WhatsApp template variable: one line. Meta refuses a parameter with
    a line break, a tab or more than 4 spaces in a row (error 132018), and our texts
    have lines ("5 = very good" under the question): a line ends a sentence or gets " - "."""
    out = ""
    for line in _LINE_BREAKS.split(text.strip()):
        if out:
            out += " " if out.endswith(_SENTENCE_END) else " - "
        out += line
    return _SPACES.sub(" ", out)


@dataclass(frozen=True)
class _Claimed:
    """An outbox row this worker holds in "sending", with what Twilio needs."""

    outbox_id: int
    to: str
    from_: str
    body: str
    media_url: str | None
    attempts: int
    content_sid: str | None
    content_variables: dict[str, str] | None
    code_spans: list[list[int]] | None = None  # where the body says its code (the row's)


def _never_sent(exc: requests.exceptions.ConnectionError) -> bool:
    """True if the request cannot have reached Twilio: no connection was made (refused,
    no route, name not resolved, connect timeout, TLS or proxy set-up failed). Anything
    else broke after it was sent."""
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.ProxyError,
                        requests.exceptions.SSLError)):
        return True
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
    return isinstance(reason, (urllib3.exceptions.NewConnectionError,
                               urllib3.exceptions.ConnectTimeoutError))


def _send(c: _Claimed, turn: Connection | None = None) -> str:
    """Hand a claimed row to Twilio and record the outcome (see the module's guarantees);
    ``turn``: the connection holding the address's turn, which records it."""
    settings = get_settings()
    outbox_id, attempts, to = c.outbox_id, c.attempts, c.to
    callback = f"{settings.public_base_url}/webhooks/twilio/status?outbox_id={outbox_id}"
    try:
        result = twilio_gateway.send_message(to=to, from_=c.from_, body=c.body,
                                             media_url=c.media_url, status_callback=callback,
                                             content_sid=c.content_sid,
                                             content_variables=c.content_variables)
    except twilio_gateway.SendRejected as exc:
        if exc.outcome_unknown:
            # A 5xx but 503 (Twilio's 20500 is a timeout in its API): Twilio may have made
            # the message. As for a read timeout the row stays "sending": a status
            # callback or the reconcile settles it; sending again might deliver it twice.
            log.warning("send outcome unknown (error answer)",
                        extra={"outbox_id": outbox_id, "status": exc.status, "code": exc.code})
            return "unknown"
        final = exc.permanent or attempts > settings.outbox_max_retries
        _record_failure(outbox_id, code=exc.code, error=str(exc), final=final)
        if exc.code in STOP_CODES:
            _mark_opted_out(to, exc.code)
        if exc.code in STOP_CODES or final:
            with transaction() as session:
                refused = session.get(OutboxMessage, outbox_id)
                if refused is not None:
                    resent = None
                    if exc.code in STOP_CODES:
                        resent = _instead_after_stop(session, refused)
                        _question_refused(session, refused)
                    elif exc.code in BY_SMS_CODES:
                        resent = _by_sms_instead(session, refused, exc.code)
                    if final and resent is None:
                        _code_lost(session, refused)
        if final:
            log.warning("message refused", extra={"outbox_id": outbox_id, "code": exc.code})
            if carries_code(c.body, c.code_spans):  # its copy, if any, has its own text
                _mask_later([outbox_id], CODE_KEPT_FOR)
            return "failed"
        raise TransientSendError(scrub(str(exc))) from None
    except requests.exceptions.ConnectionError as exc:
        if not _never_sent(exc):
            # The connection broke after the request went out (aborted, reset while
            # waiting for the answer): Twilio may hold the message. Outcome unknown: keep
            # "sending"; a status callback or the reconcile settles it.
            log.warning("send outcome unknown (connection lost)",
                        extra={"outbox_id": outbox_id, "error": type(exc).__name__})
            return "unknown"
        final = attempts > settings.outbox_max_retries
        _record_failure(outbox_id, code=None, error=f"connection: {type(exc).__name__}",
                        final=final)
        if final:
            # It never left: a code in it is lost as for any final failure.
            with transaction() as session:
                unsent = session.get(OutboxMessage, outbox_id)
                if unsent is not None:
                    _code_lost(session, unsent)
            log.warning("message never sent (no connection)", extra={"outbox_id": outbox_id})
            if carries_code(c.body, c.code_spans):
                _mask_later([outbox_id], CODE_KEPT_FOR)
            return "failed"
        raise TransientSendError("no connection to Twilio") from None
    except requests.exceptions.Timeout:
        log.warning("send outcome unknown (timeout)", extra={"outbox_id": outbox_id})
        return "unknown"

    try:
        _handed_over(outbox_id, result.sid, conn=turn)
    except IntegrityError:
        # A reconcile took this very message for a twin (same text, same recipient) whose
        # outcome was lost, while Twilio's answer was on its way (provider_sid is unique).
        # Left "sending" without a sid, as a lost answer: this row's own reconcile settles
        # it (the message is the twin's now, so this row's text goes again: one each).
        log.warning("message taken by a twin's reconcile; outcome left to reconcile",
                    extra={"outbox_id": outbox_id})
        return "unknown"
    log.info("message handed to twilio", extra={"outbox_id": outbox_id})
    if carries_code(c.body, c.code_spans):  # masked then, unless a report brings it sooner
        _mask_later([outbox_id], CODE_KEPT_UNSETTLED, first=True)
    return "sent"


def _handed_over(outbox_id: int, sid: str, *, sent_at: datetime | None = None,
                 claimed_at: datetime | None = None, conn: Connection | None = None) -> bool:
    """Record that Twilio took the row's message as ``sid``: "queued", unless a status
    callback came first ("sent", "delivered" stay). With ``claimed_at`` (a reconcile that
    found it late) only while the row is still that claim without a sid."""
    stmt = update(OutboxMessage).where(OutboxMessage.id == outbox_id)
    if claimed_at is not None:
        stmt = stmt.where(*_same_claim(claimed_at))
    with nullcontext(conn) if conn is not None else db.autocommit() as c:
        # One statement, its own transaction (autocommit; the sender's turn's, if given).
        return c.execute(stmt.values(
            provider_sid=sid, sent_at=sent_at or clock.now(), last_error=None,
            updated_at=clock.now(),
            status=case((OutboxMessage.status == "sending", "queued"),
                        else_=OutboxMessage.status))).rowcount == 1


def _record_failure(outbox_id: int, *, code: str | None, error: str, final: bool) -> None:
    with transaction() as session:
        row = session.get(OutboxMessage, outbox_id, with_for_update=True)
        if row is None:
            return
        row.status = "failed" if final else "pending"
        row.error_code = code
        # Twilio's error text may name the number it refused: masked, as in the logs.
        row.last_error = scrub(error)[:300]


def _person_at(to_addr: str) -> ColumnElement[bool]:
    """Who an address reaches: a phone number, or (WhatsApp's user ids without a number)
    the person's WhatsApp id. A WhatsApp number reaches its WhatsApp id too: a person we
    keep no phone for (a WhatsApp Business account on a landline) holds it only there."""
    who = to_addr.removeprefix("whatsapp:")
    if not who.startswith("+"):
        return Person.wa_id == who
    if not to_addr.startswith("whatsapp:"):
        return Person.phone == who
    return or_(Person.phone == who, Person.wa_id.in_([who[1:], who]))


def _phone_first(to_addr: str) -> ColumnElement[int]:
    """Order for ``_person_at``'s matches: the one holding the number as their phone."""
    who = to_addr.removeprefix("whatsapp:")
    return case((Person.phone == who, 0), else_=1)


def _opted_out(session: Session, channel: str, to_addr: str, wanted: bool,
               person: Person | None = None) -> bool:
    """Whether ``to_addr`` stopped this channel: an SMS also after a STOP on WhatsApp,
    unless ``wanted`` (about a booking of theirs, an answer they asked for, a work SMS).
    The person at the address says; an address nobody holds now, the opt-out kept there
    when its person was erased, or when Twilio refused a message to it for a STOP
    (``NumberOptOut``, _stopped_at). ``person``: the one the caller holds; it says when
    the address is its phone's (the one _person_at finds first), else it is read."""
    if person is not None and person.phone is not None \
            and to_addr.removeprefix("whatsapp:") == person.phone:
        return _stopped_for(channel, bool(person.opted_out), bool(person.sms_opted_out),
                            wanted)
    row: Any = session.execute(select(Person.opted_out, Person.sms_opted_out)
                               .where(_person_at(to_addr))
                               .order_by(_phone_first(to_addr)).limit(1)).first()
    if row is None:
        row = session.execute(select(NumberOptOut.whatsapp, NumberOptOut.sms).where(
            NumberOptOut.number_hash == number_hash(to_addr))).first()
    if row is None:
        return False
    return _stopped_for(channel, bool(row[0]), bool(row[1]), wanted)


def _stopped_for(channel: str, whatsapp_stopped: bool, sms_stopped: bool,
                 wanted: bool) -> bool:
    if channel == "whatsapp":
        return whatsapp_stopped
    return sms_stopped or (whatsapp_stopped and not wanted)


# What a row is, as queue_message was told (OutboxMessage.kind): a WhatsApp STOP leaves
# the SMS of what is wanted (a booking's, by its booking_id, "asked", "work"); "reply" and
# "needed" go whatever the opt-outs say (the dialog decided; a code they asked for).
_KINDS_WANTED = frozenset({"asked", "work"})
_KINDS_KEPT = frozenset({"reply", "needed"})
OPTED_OUT_SINCE = "recipient opted out since it was queued"


def _kind_of(row: OutboxMessage) -> str | None:
    """The row's kind; for a row written before it was kept (migration 0040), on WhatsApp
    what its key says (a reply's, else notify's), on SMS None: sent as it was written."""
    if row.kind is not None:
        return row.kind
    if row.channel == "whatsapp":
        return "reply" if (row.dedupe_key or "").startswith("reply:") else "plain"
    return None


def _stopped_since(session: Session, row: OutboxMessage) -> bool:
    """Whether queue_message would refuse ``row`` now: its recipient opted out of its
    channel since it was written (for an SMS, a WhatsApp STOP too, unless it is wanted)."""
    kind = _kind_of(row)
    if kind is None or kind in _KINDS_KEPT:
        return False
    return _opted_out(session, row.channel, row.to_addr,
                      row.booking_id is not None or kind in _KINDS_WANTED)


def _refuse_stopped(session: Session, row: OutboxMessage) -> bool:
    """``row`` waits for someone who opted out since it was written: it fails, never sent
    (not a failure to send: /metrics does not count it, as an erasure's withdrawn rows),
    and what a booking needs goes the other way as notify sends it now (a WhatsApp
    message by SMS, an SMS on WhatsApp; a rating question is owed anew), once, as for
    Twilio's refusal of it. A code that went no other way is lost as for any final
    failure. In the caller's transaction; returns whether its text shows a code (the
    caller schedules its masking once committed)."""
    row.status, row.error_code, row.last_error = "failed", None, OPTED_OUT_SINCE
    session.flush()
    session.execute(update(OutboxMessage).where(OutboxMessage.id == row.id)
                    .values(failed_at=None))
    log.info("recipient opted out since the message was queued; not sent",
             extra={"outbox_id": row.id, "channel": row.channel})
    if _instead_after_stop(session, row) is None:
        _question_refused(session, row)
        _code_lost(session, row)
    return carries_code(row.body, row.code_spans)


def _instead_after_stop(session: Session, row: OutboxMessage) -> int | None:
    """The copy of a message to a channel closed for an opt-out (her STOP or block, said
    by her or by Twilio's refusal) sent the other way, where what it carries is still
    wanted: an SMS about a booking on WhatsApp (_on_whatsapp_instead), a WhatsApp message
    about a booking by SMS, as notify sends it after a STOP (not a question only the chat
    takes the answer of: _answered_on_whatsapp). Returns its row id, or None."""
    if row.channel == "sms":
        return _on_whatsapp_instead(session, row)
    if row.booking_id is None or _answered_on_whatsapp(session, row) is not None:
        return None
    return _by_sms_instead(session, row)


def _whatsapp_addresses(person: Person) -> list[str]:
    """The WhatsApp addresses that reach ``person``: her number's and her WhatsApp id's."""
    found = []
    for who in (person.phone, person.wa_id):
        if who:
            try:
                found.append(address("whatsapp", who))
            except ValidationError:
                continue
    return sorted(set(found))


def take_back_on_stop(session: Session, person: Person) -> int:
    """She sent STOP on WhatsApp (in the caller's transaction, person.opted_out set):
    whatever waits to go to her WhatsApp (queued, waiting for a retry, held back behind
    one, replies to her earlier messages included) goes no more, what a booking needs
    by SMS (_refuse_stopped). One being sent now is past taking back. Returns how many."""
    addrs = _whatsapp_addresses(person)
    if not addrs:
        return 0
    rows = list(session.scalars(
        select(OutboxMessage).where(OutboxMessage.to_addr.in_(addrs),
                                    OutboxMessage.channel == "whatsapp",
                                    OutboxMessage.status == "pending")
        .order_by(OutboxMessage.id).with_for_update()))
    coded = [row.id for row in rows if _refuse_stopped(session, row)]
    if coded:
        after_commit(session, lambda: _mask_later(coded, CODE_KEPT_FOR))
    return len(rows)


# --- opt-outs of addresses nobody holds: an erased person's, a stranger's refusal --------


def number_hash(address: str) -> str:
    """The keyed hash (HMAC-SHA256 with OTP_KEY) an opt-out is kept under: of the number
    an address reaches, whichever channel, in one form (_number_of): a phone, a WhatsApp
    address and the WhatsApp id of one number are one key, so a START from the number
    clears what its erased holder stopped, wherever it was kept. Without the key nobody
    can try the few billion Indian mobile numbers against it."""
    return hmac.new(get_settings().otp_key, f"opt-out:{_number_of(address)}".encode(),
                    hashlib.sha256).hexdigest()


def _number_of(address: str) -> str:
    """The number an address reaches, in E.164: ``+919812300093`` for that phone, for
    ``whatsapp:+919812300093`` and for the WhatsApp id ``919812300093`` (WhatsApp's id of
    a user with a number is the number, digits only). A WhatsApp id that is no number (a
    business-scoped user id) is itself."""
    who = address.removeprefix("whatsapp:")
    if who.isascii() and who.isdigit():
        who = "+" + who
    if who.startswith("+"):
        try:
            return normalize_phone(who)
        except ValidationError:
            pass
    return who


def keep_opt_out(session: Session, identities: list[str | None], *, whatsapp: bool,
                 sms: bool, wa_blocked: bool = False) -> None:
    """Keep a person's opt-outs under their numbers' hashes, as they stand now (they are
    about to be erased): either channel stopped, a row says so; neither (they sent START
    since), no row says otherwise. ``wa_blocked``: WhatsApp was closed by her block
    (63014), not her STOP; left out, it is kept as a STOP (the safe side)."""
    keys = sorted({number_hash(i) for i in identities if i})
    if not keys:
        return
    t = NumberOptOut
    if not (whatsapp or sms):
        session.execute(delete(t).where(t.number_hash.in_(keys)))
        return
    stmt = insert(t).values([{"number_hash": k, "whatsapp": whatsapp, "sms": sms,
                              "wa_blocked": whatsapp and wa_blocked} for k in keys])
    session.execute(stmt.on_conflict_do_update(
        index_elements=[t.number_hash],
        set_={"whatsapp": stmt.excluded.whatsapp, "sms": stmt.excluded.sms,
              "wa_blocked": stmt.excluded.wa_blocked}))


@event.listens_for(Person, "before_insert")
def _carry_opt_out(mapper: Any, connection: Any, person: Person) -> None:
    """A person made for a number (or WhatsApp id) whose erased holder had stopped us
    starts stopped too: the bot asks them for START, as it asked before. A WhatsApp kept
    closed by a block (63014) stays a block, not a STOP: the message that made the person
    reopens it. The kept row goes: the person holds the opt-out now (and keeps it again
    if erased)."""
    keys = sorted({number_hash(i) for i in (person.phone, person.wa_id) if i})
    if not keys:
        return
    t = cast(Table, NumberOptOut.__table__)
    for whatsapp, sms, wa_blocked in connection.execute(
            delete(t).where(t.c.number_hash.in_(keys))
            .returning(t.c.whatsapp, t.c.sms, t.c.wa_blocked)):
        if whatsapp:
            # A STOP anywhere (given, or kept under another of her keys) outweighs a block.
            stopped = bool(person.opted_out) and not person.wa_blocked
            person.wa_blocked = not stopped and bool(wa_blocked)
            person.opted_out = True
        person.sms_opted_out = bool(person.sms_opted_out) or sms


def carry_kept_opt_out(session: Session, person: Person) -> None:
    """_carry_opt_out for a person whose number changed (ops moved a partner to a new
    SIM): a STOP kept for the new number, from its erased last holder, is theirs now."""
    _carry_opt_out(None, session.connection(), person)


def _opt_out_at(to_addr: str, blocked: bool) -> dict[str, Any]:
    """What Twilio's refusal of a message to ``to_addr`` sets: its channel's flag, and on
    WhatsApp why: a STOP (21610) is one whatever came before; a block (63014) unless she
    had sent STOP already, which stands."""
    if not to_addr.startswith("whatsapp:"):
        return {"sms_opted_out": True}
    return {"opted_out": True, "wa_blocked": case(
        (Person.opted_out.is_(True), Person.wa_blocked), else_=True) if blocked else False}


def _stopped_at(session: Session, to_addr: str, *, blocked: bool = False) -> None:
    """Twilio refused a message to ``to_addr`` for the recipient's STOP (21610) or her
    WhatsApp block (63014, ``blocked``): that channel is closed to her. The person at the
    address is marked; an address nobody holds (a parcel's recipient without an account)
    keeps it as a NumberOptOut (its hash, that channel's flag, the other as it was),
    honoured as an erased person's is, and cleared by START (number_opted_in, or the
    person made when the number writes). A block is kept as one (``wa_blocked``): her next
    WhatsApp message ends it, START is for a STOP. Not an erased row's address
    ("erased"): it reaches nobody."""
    blocked = blocked and to_addr.startswith("whatsapp:")
    found = cast(CursorResult[Any], session.execute(
        update(Person).where(_person_at(to_addr)).values(**_opt_out_at(to_addr, blocked))))
    if found.rowcount:
        return
    whatsapp = to_addr.startswith("whatsapp:")
    if not (whatsapp or to_addr.startswith("+")):
        return
    t = NumberOptOut
    stmt = insert(t).values(number_hash=number_hash(to_addr), whatsapp=whatsapp,
                            sms=not whatsapp, wa_blocked=blocked)
    set_: dict[str, Any] = {"sms": True}
    if whatsapp:  # as for a person (_opt_out_at): a STOP kept before outweighs a block
        set_ = {"whatsapp": True, "wa_blocked": case(
            (t.whatsapp.is_(True), t.wa_blocked), else_=True) if blocked else False}
    session.execute(stmt.on_conflict_do_update(index_elements=[t.number_hash], set_=set_))
    log.info("opt-out of an address nobody holds kept (hashed)",
             extra={"channel": "whatsapp" if whatsapp else "sms", "blocked": blocked})


def number_opted_in(session: Session, address: str, channel: str) -> bool:
    """START from an address nobody holds (an SMS opt-in word from a parcel's recipient
    without an account): the opt-out kept for it on ``channel`` ("sms" or "whatsapp")
    ends, the other channel's stays. Returns whether one was kept. (A person made for the
    number takes the kept opt-outs over instead: _carry_opt_out.)"""
    flag = NumberOptOut.whatsapp if channel == "whatsapp" else NumberOptOut.sms
    key = number_hash(address)
    t = NumberOptOut
    values: dict[str, bool] = {flag.key: False}
    if channel == "whatsapp":
        values["wa_blocked"] = False
    cleared = session.scalar(update(t).where(t.number_hash == key, flag.is_(True))
                             .values(values).returning(t.number_hash))
    # Neither channel stopped any more: no row says otherwise (as keep_opt_out leaves it).
    session.execute(delete(t).where(t.number_hash == key, t.whatsapp.is_(False),
                                    t.sms.is_(False)))
    return cleared is not None


def _mark_opted_out(to_addr: str, code: str | None = None) -> None:
    with transaction() as session:
        _stopped_at(session, to_addr, blocked=code == WHATSAPP_BLOCKED_CODE)
    _partners_off_duty([to_addr])


def _partners_off_duty(to_addrs: list[str]) -> None:
    """A partner who works by SMS alone and whom Twilio no longer lets us text (they sent
    an opt-out word: 21610) can take no job: each goes off duty, as with OFF, so the next
    offers go to partners who can read them. ON (after START) brings them back."""
    from core.adapters.models import PartnerProfile
    from core.services import dispatch  # dispatch sends through this module

    for to_addr in sorted(a for a in to_addrs if not a.startswith("whatsapp:")):
        with transaction() as session:
            partner = session.scalar(
                select(PartnerProfile).join(Person, Person.id == PartnerProfile.person_id)
                .where(_person_at(to_addr), PartnerProfile.has_app.is_(False),
                       PartnerProfile.on_duty.is_(True)))
            if partner is not None:
                dispatch.set_duty(session, partner, False)
                log.warning("a partner cannot be texted any more (STOP): off duty",
                            extra={"partner_id": partner.id})


@dataclass(frozen=True)
class StatusReport:
    """One Twilio status callback, as the webhook received it."""

    outbox_id: int | None  # our row id from the callback URL, when it carries one
    message_sid: str
    status: str
    error_code: str | None = None


STATUS_INBOX = "outbox:status-inbox"  # callbacks accepted, not yet applied (oldest first)
STATUS_JOB_FLAG = "outbox:status-job"  # set while an apply job is queued or running
STATUS_JOB_TTL_S = 300
STATUS_BATCH = 200
APPLY_STATUSES_JOB = "workers.outbox.apply_statuses"


def accept_status(report: StatusReport) -> None:
    """The webhook's part of a status callback: one Redis round trip queues it, and one
    job applies many in one transaction (two or three callbacks come for every message we
    send, so a transaction each would cost the web more than the message did). If Redis
    cannot take it, it is applied here and now: a callback is never dropped."""
    item = json.dumps([report.outbox_id, report.message_sid, report.status,
                       report.error_code])
    try:
        pipe = redis_client().pipeline(transaction=False)
        pipe.rpush(STATUS_INBOX, item)
        pipe.set(STATUS_JOB_FLAG, "1", nx=True, ex=STATUS_JOB_TTL_S)
        first = pipe.execute()[1]
    except RedisError:
        log.warning("status callback applied in the webhook (Redis unavailable)")
        apply_reports([report])
        return
    if first:
        _enqueue_apply()


def _enqueue_apply() -> None:
    """Start the job that applies queued callbacks, at the end of the batching window
    (``STATUS_WINDOW_MS``): two or three callbacks come for every message sent, and one
    job per window, one transaction per batch, costs far less than a job for the few
    that arrived since the last one (RQ's own bookkeeping is several ms per job)."""
    window = get_settings().status_window_ms
    try:
        if window:
            queue("outbox").enqueue_in(timedelta(milliseconds=window), APPLY_STATUSES_JOB,
                                       result_ttl=600, failure_ttl=7 * 86400)
        else:
            enqueue(APPLY_STATUSES_JOB, queue_name="outbox", known_new=True)
    except RedisError:
        # The callback is queued; the sweep starts a job once the flag has expired.
        log.warning("could not enqueue the status job; the sweep will")


# KEYS: the status inbox. ARGV: the items just applied, in order. Removes from the head
# only those items, as long as they are still there in that order: a Redis that lost its
# data (a flush, a failover) while the batch was applied holds only newer, unapplied
# callbacks, and a trim by count would drop them. Returns how many were removed.
_TRIM_APPLIED_LUA = """
local head = redis.call('LRANGE', KEYS[1], 0, #ARGV - 1)
local same = 0
while same < #head and head[same + 1] == ARGV[same + 1] do same = same + 1 end
if same > 0 then redis.call('LTRIM', KEYS[1], same, -1) end
return same
"""


def apply_statuses(batch: int = STATUS_BATCH) -> int:
    """RQ job: apply queued status callbacks, ``batch`` per transaction, until it has
    caught up; return how many were applied.

    A batch leaves the queue only after its transaction committed, so a job killed midway
    leaves it for the next one (applying a report twice changes nothing but the history).
    Full batches mean a backlog, worked off at once; after a short batch the job is done,
    and callbacks that came meanwhile go to the next window's job (with no window, to this
    one). The flag is dropped only once the job is done, and taken back if a callback came
    meanwhile, so exactly one job works the queue at a time.
    """
    r = redis_client()
    applied = 0
    while True:
        raw = r.lrange(STATUS_INBOX, 0, batch - 1)
        if raw:
            r.expire(STATUS_JOB_FLAG, STATUS_JOB_TTL_S)
            reports = [report for report in map(_parse_report, raw) if report is not None]
            _apply_or_isolate(reports)
            run_script(r, _TRIM_APPLIED_LUA, [STATUS_INBOX], raw)
            applied += len(reports)
            if len(raw) == batch:
                continue  # a backlog: work it off now
        # Caught up. What came meanwhile goes to the next window's job (with no window,
        # this job carries on).
        r.delete(STATUS_JOB_FLAG)
        if not (r.llen(STATUS_INBOX) and r.set(STATUS_JOB_FLAG, "1", nx=True,
                                                ex=STATUS_JOB_TTL_S)):
            return applied
        if get_settings().status_window_ms:
            _enqueue_apply()
            return applied


def _apply_or_isolate(reports: list[StatusReport]) -> None:
    """Apply a batch; if the database refuses it (not an outage), apply the reports one by
    one and drop, logged, only those it refuses, so one bad report cannot jam the queue."""
    try:
        apply_reports(reports)
    except DBAPIError as err:
        if db.database_away(err):
            # Away, or taking no writes (a failover's demoted primary, 25006; a dropped
            # connection): the job fails, the batch stays queued.
            raise
        for report in reports:
            try:
                apply_reports([report])
            except DBAPIError as one:
                if db.database_away(one):
                    raise
                log.error("status report refused by the database; dropped",
                          extra={"status": report.status})


def kick_statuses() -> bool:
    """Start an apply job if callbacks wait and none is on them (the sweep calls this, for
    a job lost before it ran)."""
    r = redis_client()
    if r.llen(STATUS_INBOX) and r.set(STATUS_JOB_FLAG, "1", nx=True, ex=STATUS_JOB_TTL_S):
        _enqueue_apply()
        return True
    return False


def _parse_report(raw: bytes | str) -> StatusReport | None:
    try:
        outbox_id, sid, status, error_code = json.loads(raw)
        return StatusReport(int(outbox_id) if outbox_id is not None else None, str(sid),
                            str(status), None if error_code is None else str(error_code))
    except (ValueError, TypeError):
        log.error("unreadable status report dropped")
        return None


def record_status(*, outbox_id: int | None, message_sid: str, status: str,
                  error_code: str | None) -> bool:
    """Apply one Twilio status callback now; return False if it names no message of ours."""
    return apply_reports([StatusReport(outbox_id, message_sid, status, error_code)]) == 1


def apply_reports(reports: list[StatusReport]) -> int:
    """Apply status callbacks in one transaction, in order; return how many named a
    message of ours. Every report is kept as history; a row's status only moves forward
    (a late "sent" never overwrites "delivered"), except to a final failure."""
    if not reports:
        return 0
    matched = 0
    with transaction() as session:
        ids = {r.outbox_id for r in reports if r.outbox_id is not None}
        sids = {r.message_sid for r in reports}
        # Every row the batch touches, locked in id order (no deadlock with a sender).
        rows = list(session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.id.in_(ids) | OutboxMessage.provider_sid.in_(sids))
            .order_by(OutboxMessage.id).with_for_update()))
        by_id = {row.id: row for row in rows}
        by_sid = {row.provider_sid: row for row in rows if row.provider_sid}
        events: list[dict[str, object]] = []
        # The addresses refused for an opt-out, each with whether only for a block (63014):
        # a STOP code in the same batch makes it a STOP.
        stopped: dict[str, bool] = {}
        stopped_rows: list[OutboxMessage] = []
        closed: list[tuple[OutboxMessage, str]] = []
        failed: dict[int, OutboxMessage] = {}
        # Rows that reached the person (delivered or read, before this batch or in it):
        # a failure reported after that (a late or contradictory callback) is kept in the
        # history only. What the row carried did arrive: its status does not go back, it
        # is not sent again another way (a copy they have read already), and a code they
        # hold is not made void. An opt-out code (21610, 63014) still closes the channel:
        # that is about the address, not the row.
        reached = {row.id for row in rows if row.status in _REACHED}
        # When each row last went to Twilio (its claim, while its outcome is unknown), as
        # loaded: a block refusing it is old news once she has written since (_wrote_since).
        went = {row.id: row.sent_at or row.updated_at for row in rows}
        for report in reports:
            status = report.status.lower()
            row = by_id.get(report.outbox_id) if report.outbox_id is not None else None
            if row is not None and row.provider_sid not in (None, report.message_sid):
                row = None  # the id in the URL and the sid disagree: trust neither
            if row is None or (row.provider_sid is None and report.message_sid in by_sid):
                # Another row holds the sid (a twin's reconcile adopted it): the report is
                # that row's; this one is left to its own reconcile, the sid being unique.
                row = by_sid.get(report.message_sid)
            events.append({"outbox_id": row.id if row else None,
                           "provider_sid": report.message_sid, "status": status,
                           "error_code": report.error_code})
            if row is None:
                continue
            matched += 1
            if row.provider_sid is None:
                row.provider_sid = report.message_sid  # the send outcome was unknown
                by_sid[report.message_sid] = row
            if status in _REACHED:
                reached.add(row.id)
            if status in _FINAL_FAILURES:
                if row.id not in reached:
                    row.status = status
                    row.error_code = report.error_code
                    failed[row.id] = row
            elif row.status not in _FINAL_FAILURES and _RANK.get(status, -1) > _RANK.get(
                row.status, -1
            ):
                row.status = status
            if report.error_code in STOP_CODES:
                block = report.error_code == WHATSAPP_BLOCKED_CODE
                if not _reopened_since(session, row.to_addr, went.get(row.id)):
                    stopped[row.to_addr] = stopped.get(row.to_addr, True) and block
                stopped_rows.append(row)
            elif report.error_code in BY_SMS_CODES and status in _FINAL_FAILURES:
                closed.append((row, report.error_code))
        session.execute(insert(MessageStatusEvent), events)
        for to_addr in sorted(stopped):
            _stopped_at(session, to_addr, blocked=stopped[to_addr])
        if stopped_rows or closed:
            reached |= _reached_before(session, [row.id for row in stopped_rows]
                                       + [row.id for row, _ in closed])
        resent: set[int] = set()
        for row in dict.fromkeys(stopped_rows):  # a row reported twice in the batch once
            if row.id in reached:
                continue  # it arrived: nothing to send again, no question to owe anew
            if (row.channel == "sms" or row.status in _FINAL_FAILURES) and \
                    _instead_after_stop(session, row) is not None:
                resent.add(row.id)
            _question_refused(session, row)
        for row, code in closed:
            if row.id not in reached and _by_sms_instead(session, row, code) is not None:
                resent.add(row.id)
        lost = [row_id for row_id in failed if row_id not in resent and row_id not in reached]
        if lost:
            # A failure reported again in a later batch finds the row's status already
            # the failure: whether it reached the person is in its history (by its index).
            arrived = set(session.scalars(select(MessageStatusEvent.outbox_id).where(
                MessageStatusEvent.outbox_id.in_(lost),
                MessageStatusEvent.status.in_(_REACHED))))
            # Nor is one whose text went another way for an earlier report (its copy).
            copies = set(session.scalars(select(OutboxMessage.dedupe_key).where(
                OutboxMessage.dedupe_key.in_([prefix + str(row_id) for row_id in lost
                                              for prefix in _COPY_PREFIXES]))))
            lost = [row_id for row_id in lost if row_id not in arrived and not any(
                prefix + str(row_id) in copies for prefix in _COPY_PREFIXES)]
        for row_id in lost:
            _code_lost(session, failed[row_id])
        # Codes to mask: of the rows done with (their copies, if any, made just now),
        # soon; of the rows Twilio holds without a last word yet, after a day at most.
        done_with: list[int] = []
        held: list[int] = []
        for row in rows:
            if row.provider_sid is not None and carries_code(row.body, row.code_spans):
                settled = row.status in _REACHED or row.status in _FINAL_FAILURES
                (done_with if settled else held).append(row.id)
    _partners_off_duty(sorted(stopped))
    _mask_later(done_with, CODE_KEPT_FOR)
    _mask_later(held, CODE_KEPT_UNSETTLED, first=True)
    return matched


def _reached_before(session: Session, ids: list[int]) -> set[int]:
    """Of the rows ``ids``, those whose history says they reached the person (a row
    failed before a "delivered" came, out of order, keeps its failure as its status)."""
    return set(session.scalars(select(MessageStatusEvent.outbox_id).where(
        MessageStatusEvent.outbox_id.in_(set(ids)),
        MessageStatusEvent.status.in_(_REACHED))))


def _code_lost(session: Session, row: OutboxMessage) -> None:
    """A one-time code that failed for good and went no other way (a phone off or out of
    signal, a landline, a number refused). A recipient's drop code: without it the rider
    cannot hand the parcel over, so dispatch makes a new one for her WhatsApp or for the
    sender to pass on (an SMS sent again to a number that failed would most likely fail
    again). A customer's pickup code: without it the rider cannot take the parcel, so
    dispatch makes a new one for their WhatsApp, else sends it again, rider and ops told.
    A rider's handover code for a Point: without it the parcel cannot change hands, so
    dispatch makes a new one the same way, ops told (handover_code_lost). A job offer to
    a rider: it never reached him, and dispatch stops it holding the job
    (dispatch.offer_sms_lost)."""
    key = row.dedupe_key or ""
    if _OFFER_KEY.fullmatch(key):
        from core.services import dispatch  # dispatch sends through this module

        dispatch.offer_sms_lost(session, row)
        return
    copied = next((key[len(p):] for p in _COPY_PREFIXES if key.startswith(p)), None)
    if copied is not None and copied.isdigit():
        # The copy of a code that went no other way failed too (the SMS that carried a
        # WhatsApp code past the window, say): the code it carried is lost, as its own.
        original = session.get(OutboxMessage, int(copied))
        if original is not None and (original.dedupe_key or "").startswith("leg-"):
            _code_lost(session, original)
        return
    if not key.startswith("leg-"):
        return
    from core.services import dispatch  # dispatch sends through this module

    if "-dropotp-" in key:
        dispatch.drop_code_lost(session, row)
    elif "-pickotp-" in key:
        dispatch.pickup_code_lost(session, row)
    elif "-handgive-" in key or "-handtake-" in key:
        dispatch.handover_code_lost(session, row)


def _by_sms_instead(session: Session, row: OutboxMessage, code: str | None = None
                    ) -> int | None:
    """A WhatsApp message refused because the 24-hour window had closed, or our sender hit
    its messaging limit, goes by SMS, as notify does outside the window without a template
    (once: its own dedupe key); not a question whose answer only the chat takes (a rating
    question, which rating asks again later; a chat reply ending in numbered choices). A
    free-form message that missed the window goes as the approved template of its text's
    language (_text_language) first, where one is configured (else, where no SMS can reach
    her, the default language's), as notify would have sent it (a WhatsApp user known
    only by their WhatsApp id has no number to text). One written before its recipient's
    number moved to a new SIM goes to him, not to the old number (_follow_moved). Returns
    the copy's row id (one already queued for an earlier report of the same failure:
    nothing is sent again), None if it could not go another way."""
    copied = _copy_of(session, row)
    if copied is not None:
        return copied
    if code_masked(row.body, row.code_spans):
        # Refused after its code was masked (it had been delivered: what it said arrived;
        # or it failed before, and its code was made again): "****" is no use to anyone.
        log.info("a masked code is not sent again", extra={"outbox_id": row.id})
        return None
    moved = _moved_from(session, row) if row.channel == "whatsapp" else None
    if moved is not None:
        # Written before its recipient's number moved, refused since (Twilio had taken
        # it before the move): its copy, written now, is to him, not to the old number's
        # WhatsApp or SMS (a stranger's, maybe): it follows him as a message waiting
        # then would have (_follow_moved: his new number, or nowhere).
        if _answered_on_whatsapp(session, row) is not None:
            _question_refused(session, row)
        return _follow_moved(session, row, moved)
    if code == WINDOW_CLOSED_CODE and row.channel == "whatsapp" and fits_template(
            row.body) and session.get(WhatsappTemplateSend, row.id) is None:
        from core.services import notify  # notify sends through this module

        person = session.scalar(select(Person).where(_person_at(row.to_addr))
                                    .order_by(_phone_first(row.to_addr)).limit(1))
        # The template around the text is of the text's language (_text_language), as
        # notify picked it: not the language the phone's person chose since.
        sid = notify.whatsapp_template(person, only_way=_sms_number(row.to_addr) is None
                                       or (person is not None and person.sms_opted_out),
                                       lang=_text_language(session, row, person))
        if sid:
            new_id = queue_message(session, channel="whatsapp", to=row.to_addr, body=row.body,
                                   dedupe_key=f"tpl-for-{row.id}", booking_id=row.booking_id)
            if new_id is not None:
                log.info("whatsapp missed the window; sent as the template",
                         extra={"outbox_id": row.id})
                session.add(WhatsappTemplateSend(outbox_id=new_id, content_sid=sid,
                                                 content_variables={"1": row.body}))
                return new_id
            # Not made: her WhatsApp is closed to us now (her STOP since the message
            # went). What a booking needs reaches her by SMS after a WhatsApp STOP, as
            # notify sends it: on to the SMS below.
    asked = _answered_on_whatsapp(session, row) if row.channel == "whatsapp" else None
    if asked is not None:
        # Its answer would reach the riders' SMS number ("5" answered with how to book).
        log.info("whatsapp refused a question of the chat; not sent by SMS",
                 extra={"outbox_id": row.id})
        _question_refused(session, row)
        return None
    phone = _sms_number(row.to_addr)
    if row.channel != "whatsapp" or phone is None:
        log.warning("whatsapp refused; no number for an SMS", extra={"outbox_id": row.id})
        return None
    log.info("whatsapp refused; sent by SMS instead", extra={"outbox_id": row.id})
    return queue_message(session, channel="sms", to=phone, body=row.body,
                         dedupe_key=f"sms-for-{row.id}", booking_id=row.booking_id)


def _text_language(session: Session, row: OutboxMessage, person: Person | None) -> str:
    """The language ``row``'s text was written in, found again as its writer chose it (a
    row does not keep it; a template copy's template must be of it): a recipient's drop
    code and news in recipient_language (her own when we know it, else the booking's),
    what else goes to a booking's customer in the booking's (notify.booking_language),
    a work message (a partner's job, an ops alert), a rating question (the chat's) and the
    rest in the person's own. The phone's person may have chosen another language since:
    that one is not the text's. A copy (by SMS, as the template, on WhatsApp) is read as
    the row it copies."""
    from core.services import dispatch, notify  # both send through this module

    booking = session.get(Booking, row.booking_id) if row.booking_id is not None else None
    key = _writer_key(session, row)
    if booking is None or _kind_of(row) == "work" or key.startswith(RATING_ASK_PREFIX):
        return notify.language_of(person)
    to_customer = person is not None and person.id == booking.customer_id
    if booking.recipient_phone is not None \
            and _number_of(row.to_addr) == booking.recipient_phone \
            and (not to_customer or "-dropotp-" in key):
        # To the recipient; to a customer who is her own recipient, only her drop code
        # was written as the recipient's (dispatch tells her the rest as the customer).
        return dispatch.recipient_language(session, booking)
    if to_customer:
        return notify.booking_language(booking, person)
    return notify.language_of(person)


def _writer_key(session: Session, row: OutboxMessage) -> str:
    """The dedupe key its writer gave the text of ``row``: a copy's (``sms-for-<id>``...)
    is its original's."""
    key = row.dedupe_key or ""
    for _ in range(len(_COPY_PREFIXES) + 1):  # a copy of a copy at most, in practice
        copied = next((key[len(p):] for p in _COPY_PREFIXES if key.startswith(p)), None)
        if copied is None or not copied.isdigit():
            break
        original = session.get(OutboxMessage, int(copied))
        if original is None:
            break
        key = original.dedupe_key or ""
    return key


def _sms_number(to_addr: str) -> str | None:
    """The number an SMS reaches the holder of WhatsApp address ``to_addr`` at, if it
    has one we text (not a WhatsApp id without a number, nor a landline's WhatsApp)."""
    phone = to_addr.removeprefix("whatsapp:")
    if not phone.startswith("+"):
        return None
    try:
        return address("sms", phone)
    except ValidationError:
        return None


# The dedupe keys of a refused message's copy that went another way: by SMS, as the
# WhatsApp template, on WhatsApp (_by_sms_instead, _on_whatsapp_instead).
_COPY_PREFIXES = ("sms-for-", "tpl-for-", "wa-for-")


def _copy_of(session: Session, row: OutboxMessage) -> int | None:
    """The row id of a copy of ``row`` already queued another way (an earlier report of
    the same failure sent it: callbacks come twice), or None."""
    return session.scalar(select(OutboxMessage.id).where(
        OutboxMessage.dedupe_key.in_([prefix + str(row.id) for prefix in _COPY_PREFIXES]))
        .order_by(OutboxMessage.id).limit(1))


# A rating question's key (core.services.rating): "1" to "5" answer it in the chat only.
RATING_ASK_PREFIX = "rate-ask-"
# The last line of a chat reply that waits for a number: "1. Send a parcel", "(0 = menu)".
_NUMBERED_LAST_LINE = re.compile(r"^\(?\d{1,2}\s*[.=)]\s*\S")


def _answered_on_whatsapp(session: Session, row: OutboxMessage) -> OutboxMessage | None:
    """The message (``row``, or the one it is the template copy of) if it asks something
    only the chat can take the answer of, so it never goes by SMS: a rating question, and
    a chat reply ending in numbered choices (a menu, "which booking?") that carries no
    link. Whatever the person must have goes by SMS still: a payment link, a code, a
    refund or a status notice (notify's rows), a chat reply with a link in it."""
    key = row.dedupe_key or ""
    if key.startswith("tpl-for-") and key.removeprefix("tpl-for-").isdigit():
        original = session.get(OutboxMessage, int(key.removeprefix("tpl-for-")))
        return _answered_on_whatsapp(session, original) if original is not None else None
    if key.startswith(RATING_ASK_PREFIX):
        return row
    if key.startswith("reply:") and "http" not in row.body:
        lines = [line.strip() for line in row.body.strip().splitlines() if line.strip()]
        if lines and _NUMBERED_LAST_LINE.match(lines[-1]):
            return row
    return None


def _question_refused(session: Session, row: OutboxMessage) -> None:
    """WhatsApp refused a rating question (``row``, or the template copy of one): for our
    sender's limit, the window, its content, or her STOP or block. It never reached her:
    rating.question_refused takes her chat off the rating step (her next "1" is the
    menu's, not a star) and owes the question anew."""
    asked = _answered_on_whatsapp(session, row) if row.channel == "whatsapp" else None
    if asked is None or asked.booking_id is None or not (
            asked.dedupe_key or "").startswith(RATING_ASK_PREFIX):
        return
    from core.services import rating  # rating sends through notify, through here

    rating.question_refused(session, asked.booking_id, asked.id)


def _reopened_since(session: Session, to_addr: str, went: datetime | None) -> bool:
    """Whether the channel a refusal for an opt-out (21610, 63014) closed was opened
    again since the refused message went at ``went``: she wrote to us on WhatsApp since
    (_wrote_since), or sent an SMS opt-in word (START) from the number since
    (_sms_opted_in_since). A late report of it closes nothing: her word since stands."""
    if to_addr.startswith("whatsapp:"):
        return _wrote_since(session, to_addr, went)
    return _sms_opted_in_since(to_addr, went)


# When a number last sent an SMS opt-in word (START, YES, UNSTOP: Twilio lets our SMS to it
# through again), for as long as a report of an SMS sent before it may still come (a
# reconcile finds a lost outcome up to GIVE_UP_PAUSED later). By the number's hash.
SMS_OPT_IN_KEY = "outbox:sms-opt-in:{}"
SMS_OPT_IN_KEPT = GIVE_UP_PAUSED + timedelta(days=1)


def note_sms_opt_in(phone: str) -> None:
    """``phone`` sent an SMS opt-in word now (partner_sms): a refusal (21610) of an SMS
    sent to it before now is old news (_sms_opted_in_since)."""
    redis_client().set(SMS_OPT_IN_KEY.format(number_hash(phone)),
                       f"{clock.now().timestamp():.6f}",
                       ex=int(SMS_OPT_IN_KEPT.total_seconds()))


def _sms_opted_in_since(to_addr: str, went: datetime | None) -> bool:
    if went is None or not to_addr.startswith("+"):
        return False
    try:
        raw = redis_client().get(SMS_OPT_IN_KEY.format(number_hash(to_addr)))
    except RedisError:
        return False  # not known: the refusal closes SMS, as it would have before
    return raw is not None and went.timestamp() < float(raw)


def _wrote_since(session: Session, to_addr: str, went: datetime | None) -> bool:
    """Whether the person at the WhatsApp address ``to_addr`` has written to us on
    WhatsApp since a message to her went to Twilio at ``went``: a block (63014) refusing
    that message is over (her message reopened her WhatsApp, conversation._unblocked), as
    is a STOP (21610) she ended with START since (a STOP since is kept by the bot), so a
    late report of it (a callback posted again, a batch applied again, a lost send
    outcome the reconcile finds later) closes nothing. An address nobody holds, or a
    person who never wrote, has no such message."""
    if went is None or not to_addr.startswith("whatsapp:"):
        return False
    last = session.scalar(
        select(func.max(Conversation.last_inbound_at))
        .join(Person, Person.id == Conversation.person_id)
        .where(_person_at(to_addr), Conversation.channel == "whatsapp"))
    return last is not None and went < last


def _on_whatsapp_instead(session: Session, row: OutboxMessage) -> int | None:
    """An SMS about a booking that Twilio refused because the person opted out of SMS
    (21610) goes on WhatsApp when they chat with us there (a recipient's drop code, a
    phone booking's news), as notify sends it from now on. Not a partner's job messages
    (about a booking they were offered or carry) nor ops alerts: those are answered by
    SMS, and the partner is off duty already. Returns the copy's row id (as
    _by_sms_instead), None if it could not go another way."""
    from core.adapters.dispatch_models import DispatchOffer
    from core.adapters.models import Leg, PartnerProfile
    from core.services import notify  # notify sends through this module

    if row.channel != "sms" or row.booking_id is None:
        return None
    copied = _copy_of(session, row)
    if copied is not None:
        return copied
    if code_masked(row.body, row.code_spans):
        log.info("a masked code is not sent again", extra={"outbox_id": row.id})
        return None
    person = session.scalar(select(Person).where(_person_at(row.to_addr))
                            .order_by(_phone_first(row.to_addr)).limit(1))
    if person is None or person.role == "ops":
        return None
    partner_id = session.scalar(select(PartnerProfile.id).where(
        PartnerProfile.person_id == person.id))
    if partner_id is not None and session.scalar(select(
            select(Leg.id).where(Leg.booking_id == row.booking_id, Leg.partner_id == partner_id)
            .union_all(select(Leg.id).join(DispatchOffer, DispatchOffer.leg_id == Leg.id)
                       .where(Leg.booking_id == row.booking_id,
                              DispatchOffer.partner_id == partner_id)).exists())):
        return None
    # The WhatsApp template that carries the text outside the window must be of the
    # text's language (a booking's for its customer, the recipient's for a drop code).
    new_id = notify.send_to_person(session, person, row.body, dedupe_key=f"wa-for-{row.id}",
                                   booking_id=row.booking_id,
                                   lang=_text_language(session, row, person))
    if new_id is not None:
        log.info("sms refused for STOP; sent on WhatsApp instead", extra={"outbox_id": row.id})
    return new_id


# --- one-time codes out of the stored texts -------------------------------------------
#
# A pickup, drop, handover or sign-in code travels in the text of its message; the row
# kept it until the retention run redacted the text months later. Once nothing can send
# the text again it is masked: CODE_KEPT_FOR after the message was delivered or failed for
# good (a report after "delivered" can still refuse it, and a repeated refusal is answered
# by the copy made the first time; a refusal copies the text by SMS or WhatsApp, and the
# copy, its own row, keeps its own text until it is done in turn), or
# CODE_KEPT_UNSETTLED after Twilio took it without a report since (many Indian carriers
# send none). A message waiting for a retry, or whose send outcome is unknown (a reconcile
# matches its text at Twilio), keeps its text. Redis keeps the schedule (MASK_KEY: row id,
# when); the sweep masks what is due, and the daily retention run masks what a lost
# schedule left (``mask_codes``). The code itself still works: a leg keeps only its hash.
#
# Where a text says its code is recorded when its row is written (``code_spans``): the text
# was just made from the catalog, whose code texts find it (a copy of a refused message
# takes its original's record). Masking goes by that record, so a release that rewords a
# code text since leaves no code unmasked; a row written before the record existed (NULL)
# is matched against the catalog as it stands.

CODE_MASK = "****"
CODE_KEPT_FOR = timedelta(minutes=10)
CODE_KEPT_UNSETTLED = timedelta(days=1)
MASK_KEY = "outbox:codes-to-mask"
MASK_BATCH = 500
CODE_FIELD = "otp"  # the catalogs' field of a one-time code
_UNSENT = ("pending", "sending")


@dataclass(frozen=True)
class _CodeText:
    """A catalog text with a code in it, as a pattern: the code's places are groups c0
    (the code, or the mask), c1 ... (the same code again)."""

    pattern: re.Pattern[str]
    groups: int


def _code_pattern(text: str) -> _CodeText:
    parts, groups = [], 0
    for literal, name, _spec, _conversion in string.Formatter().parse(text):
        parts.append(re.escape(literal))
        if name is None:
            continue
        if name.split(".", 1)[0].split("[", 1)[0] != CODE_FIELD:
            parts.append(".*?")
        elif groups == 0:
            parts.append(f"(?P<c0>[0-9]{{4,8}}|{re.escape(CODE_MASK)})")
            groups = 1
        else:
            parts.append(f"(?P<c{groups}>(?P=c0))")
            groups += 1
    return _CodeText(re.compile("".join(parts), re.DOTALL), groups)


@functools.lru_cache(maxsize=4)
def _code_texts(directory: str) -> dict[str, list[_CodeText]]:
    """Every catalog text that carries a code, in every language, by the first letters
    of its fixed start ("" for a text that starts with a field): a message is tried
    against the few that can be it, not against them all."""
    found: dict[str, list[_CodeText]] = {}
    seen = set()
    for lang in i18n.LANGUAGES:
        for key in sorted(i18n.keys(lang)):
            text = i18n.raw(key, lang)
            if text in seen or CODE_FIELD not in i18n.placeholders(text):
                continue
            seen.add(text)
            head = next(iter(string.Formatter().parse(text)), ("",))[0][:_HEAD]
            found.setdefault(head if len(head) == _HEAD else "", []).append(
                _code_pattern(text))
    return found


_HEAD = 3


def _code_in(body: str) -> re.Match[str] | None:
    """The match of ``body`` with a catalog text that carries a code (or its mask)."""
    texts = _code_texts(str(i18n.catalog_dir()))
    for candidate in (*texts.get(body[:_HEAD], ()), *texts.get("", ())):
        found = candidate.pattern.fullmatch(body)
        if found is not None:
            return found
    return None


# No code without four digits in a row: most texts are not tried against the catalog.
_FOUR_DIGITS = re.compile(r"[0-9]{4}")
_A_CODE = re.compile(r"[0-9]{4,8}")

# Where a text says its code: [[start, end], ...] (OutboxMessage.code_spans).
Spans = list[list[int]]


def find_code_spans(body: str) -> Spans | None:
    """Where ``body``, a text just made from the catalog, says its one-time code (every
    place, in order), or None: no code in it."""
    if not _FOUR_DIGITS.search(body):
        return None
    found = _code_in(body)
    if found is None or found["c0"] == CODE_MASK:
        return None
    return sorted([*found.span(name)] for name in found.groupdict())


def _spans_for(session: Session, body: str, dedupe_key: str | None) -> Spans | None:
    """The code record of a row about to be written: a copy of a refused message (its
    dedupe key names the original: _COPY_PREFIXES) with the original's text takes the
    original's record, made when that text was; any other text was just made from the
    catalog, which finds its code."""
    key = dedupe_key or ""
    copied = next((key[len(p):] for p in _COPY_PREFIXES if key.startswith(p)), None)
    if copied is not None and copied.isdigit():
        original = session.get(OutboxMessage, int(copied))
        if original is not None and original.body == body and original.code_spans:
            return [[*span] for span in original.code_spans]
    return find_code_spans(body)


def _code_at(body: str, spans: Spans | None) -> tuple[list[tuple[int, int]], bool] | None:
    """Where ``body`` says its code, and whether it is masked there; None: no code. By
    the row's record (``spans``) when it describes the text (one code, or the mask, the
    same at every place, no other digit beside it); else, a row written before records
    were kept, by the catalog as it stands."""
    if spans:
        places = sorted((int(start), int(end)) for start, end in spans)
        said = {body[start:end] for start, end in places}
        ends = [0, *(end for _, end in places)]
        if len(said) == 1 and all(
                ends[i] <= start < end <= len(body) and not body[start - 1:start].isdigit()
                and not body[end:end + 1].isdigit() for i, (start, end) in enumerate(places)):
            code = said.pop()
            if code == CODE_MASK or _A_CODE.fullmatch(code):
                return places, code == CODE_MASK
    found = _code_in(body) if _FOUR_DIGITS.search(body) or CODE_MASK in body else None
    if found is None:
        return None
    return (sorted(found.span(name) for name in found.groupdict()),
            found["c0"] == CODE_MASK)


def carries_code(body: str, spans: Spans | None = None) -> bool:
    """Whether a message's text still shows a one-time code (``spans``: its row's record
    of where)."""
    found = _code_at(body, spans)
    return found is not None and not found[1]


def code_masked(body: str, spans: Spans | None = None) -> bool:
    """Whether a message's text carried a one-time code, masked since."""
    found = _code_at(body, spans)
    return found is not None and found[1]


def _masked(body: str, spans: Spans | None) -> tuple[str, Spans] | None:
    """``body`` with its one-time code (every place it is said) as CODE_MASK, and where
    the mask is; None if it shows no code."""
    found = _code_at(body, spans)
    if found is None or found[1]:
        return None
    text, moved, done = "", [], 0
    for start, end in found[0]:
        text += body[done:start]
        moved.append([len(text), len(text) + len(CODE_MASK)])
        text += CODE_MASK
        done = end
    return text + body[done:], moved


def mask_code(body: str, spans: Spans | None = None) -> str:
    """``body`` with its one-time code (every place it is said) as CODE_MASK; any other
    text as it is."""
    masked = _masked(body, spans)
    return body if masked is None else masked[0]


def _mask_later(ids: list[int], after: timedelta, *, first: bool = False) -> None:
    """Schedule the codes of these rows to be masked ``after`` from now. ``first``: only
    rows not scheduled yet (a row taken by Twilio; its report brings its own, earlier
    time). Redis away: the daily retention run masks them (mask_codes)."""
    if not ids:
        return
    at = (clock.now() + after).timestamp()
    try:
        redis_client().zadd(MASK_KEY, dict.fromkeys(map(str, ids), at), nx=first)
    except RedisError:
        log.warning("codes not scheduled for masking (Redis unavailable); the daily run "
                    "masks them", extra={"rows": len(ids)})


def mask_codes(session: Session, ids: list[int]) -> tuple[list[int], int]:
    """Mask the codes of these rows (and their template sends' variables), those settled:
    not waiting to be sent, nor sent with an unknown outcome. Returns the rows seen (not
    held by another transaction: they are left for the next time) and how many changed."""
    rows = list(session.scalars(select(OutboxMessage).where(OutboxMessage.id.in_(ids))
                                .order_by(OutboxMessage.id)
                                .with_for_update(skip_locked=True)))
    templates = {t.outbox_id: t for t in session.scalars(
        select(WhatsappTemplateSend).where(WhatsappTemplateSend.outbox_id.in_(
            [r.id for r in rows if r.status not in _UNSENT])).with_for_update())}
    masked = 0
    for row in rows:
        if row.status in _UNSENT:
            continue  # back on its way: scheduled again once it is done
        text = _masked(row.body, row.code_spans)
        template = templates.get(row.id)
        # A template's variable is the row's text (notify, _by_sms_instead): its record.
        variables = ({k: mask_code(str(v), row.code_spans if str(v) == row.body else None)
                      for k, v in template.content_variables.items()}
                     if template is not None else None)
        if text is not None or (template is not None
                                and variables != template.content_variables):
            if text is not None:  # the record says where the mask is now
                row.body, row.code_spans = text
            if template is not None and variables is not None:
                template.content_variables = variables
            masked += 1
    return [r.id for r in rows], masked


def mask_due_codes(batch: int = MASK_BATCH) -> int:
    """Mask the codes whose time has come (the sweep, each minute); how many rows changed.
    A row gone meanwhile (or never there) leaves the schedule too."""
    try:
        r = redis_client()
        raw = cast(list[bytes], r.zrangebyscore(MASK_KEY, "-inf", clock.now().timestamp(),
                                                start=0, num=batch))
        due = [int(x) for x in raw]
    except RedisError:
        log.warning("codes due for masking unknown (Redis unavailable)")
        return 0
    if not due:
        return 0
    with transaction() as session:
        seen, masked = mask_codes(session, due)
        present = set(session.scalars(select(OutboxMessage.id).where(
            OutboxMessage.id.in_(due))))
    done = sorted(set(seen) | (set(due) - present))
    if done:
        try:
            r.zrem(MASK_KEY, *map(str, done))
        except RedisError:
            log.warning("masked codes left in the schedule (Redis unavailable)")
    return masked


def sweep(now_age: timedelta = timedelta(seconds=60)) -> int:
    """Re-enqueue rows whose delivery job was lost; return how many jobs were scheduled.

    ``pending`` rows older than ``now_age`` are re-enqueued (the job id dedupes). A
    ``sending`` row without a provider sid and silent for STALE_SENDING gets a reconcile
    job (see _due_reconciles), which asks Twilio before anything is sent again: a job per
    row, for those look-ups are network calls, too slow to make here; a reply claimed at
    insert and never tried, after STALE_UNTRIED already, and its job asks nothing. Then
    the codes due to be masked are (mask_due_codes; not counted).
    """
    cutoff = clock.now() - now_age
    with transaction() as session:
        claims, untried = {}, set()
        for row_id, claimed_at, attempts in session.execute(
                select(OutboxMessage.id, OutboxMessage.updated_at, OutboxMessage.attempts)
                .where(OutboxMessage.status == "sending",
                       OutboxMessage.provider_sid.is_(None),
                       (OutboxMessage.updated_at < clock.now() - STALE_SENDING)
                       | ((OutboxMessage.attempts == 0)
                          & (OutboxMessage.updated_at < clock.now() - STALE_UNTRIED)))
                .order_by(OutboxMessage.updated_at).limit(RECONCILE_SCAN)):
            claims[row_id] = claimed_at
            if attempts == 0:
                untried.add(row_id)
        ids = list(session.scalars(
            select(OutboxMessage.id).where(OutboxMessage.status == "pending",
                                           OutboxMessage.created_at < cutoff)
            .order_by(OutboxMessage.id).limit(500)
        ))
    # A reply claimed at insert whose drainer died before its try: Twilio cannot hold it,
    # so its reconcile gives it back unasked, look-ups paused or not.
    unknown = [row_id for row_id in claims if row_id in untried] + (
        _due_reconciles({k: v for k, v in claims.items() if k not in untried})
        if len(claims) > len(untried) else [])
    for row_id in unknown:
        enqueue(RECONCILE_JOB, row_id, queue_name="outbox", job_id=f"outbox-reconcile-{row_id}")
    for row_id in ids:
        schedule_delivery(row_id)
    mask_due_codes()
    return len(unknown) + len(ids)


def _due_reconciles(claims: dict[int, datetime]) -> list[int]:
    """The rows (id: claim time, oldest claim first) whose reconcile job starts now, the
    least lately asked first: the next pause's end does not go to the row whose look-up
    failed last time, so one row that keeps failing cannot hold all the others back.
    While look-ups pause, or a row's own back-off runs, only a row past giving up (it goes
    unasked) gets a job."""
    paused = _lookups_paused()
    lookups = _row_lookups(claims)
    now = clock.now()
    due = [row_id for row_id, claimed_at in claims.items()
           if not (paused or _held_back(lookups.get(row_id)))
           or _gone_unasked(now, claimed_at, lookups.get(row_id)) is not None]
    # Stable: among rows never asked, or asked at the same moment, the oldest claim first.
    due.sort(key=lambda row_id: lookups[row_id].asked if row_id in lookups else 0.0)
    return due[:RECONCILE_BATCH]


def reconcile(outbox_id: int) -> str:
    """RQ job: settle a row whose send outcome stayed unknown (see the module's
    guarantees); return "adopted", "given-back", "unknown" (ask again at a later sweep),
    "paused" (look-ups paused, or this row's back-off runs: asked nothing), or "settled" /
    "in-flight" when a callback or a new claim got there first."""
    with transaction() as session:
        row = session.get(OutboxMessage, outbox_id)
        if row is None or row.status != "sending" or row.provider_sid is not None:
            return "settled"
        claimed_at = row.updated_at
        never_tried = row.attempts == 0  # claimed at insert; its drainer died first
        if clock.now() - claimed_at < (STALE_UNTRIED if never_tried else STALE_SENDING):
            return "in-flight"  # claimed again since the sweep looked: a send may be on
        template = session.get(WhatsappTemplateSend, outbox_id)
        values = ([template_value(str(v)) for v in template.content_variables.values()]
                  if template else None)
        to, from_, body = row.to_addr, row.from_addr, row.body
    if never_tried:  # Twilio cannot hold it: nothing to ask
        return "given-back" if _give_back(outbox_id, claimed_at, "claimed but never tried; "
                                          "sending", untried=True) else "settled"
    mine = _row_lookups({outbox_id: claimed_at}).get(outbox_id)
    if _lookups_paused() or _held_back(mine):
        # Twilio could not be asked moments ago: no call now (see _gone_unasked).
        why = "its look-ups failed" if _held_back(mine) else "look-ups paused"
        return _still_unknown(outbox_id, claimed_at, why, mine, paused=True)
    since = claimed_at - CLOCK_SKEW
    try:
        listed = twilio_gateway.messages_since(to=to, from_=from_, since=since,
                                               limit=LOOKUP_LIMIT)
    except twilio_gateway.LookupFailed as exc:
        why = f"twilio could not be asked ({exc})"
        if exc.outage:
            _pause_lookups(why)
        else:  # this row's question alone: the others are asked as usual
            log.warning("twilio could not be asked about one message; it waits",
                        extra={"outbox_id": outbox_id, "reason": why})
        return _still_unknown(outbox_id, claimed_at, why,
                              _lookup_done(outbox_id, claimed_at, mine, failed=True))
    found = _ours(listed, _Wanted(outbox_id, to, from_, body, values), since=since)
    if found is not None:
        try:
            if not _handed_over(outbox_id, found.sid, sent_at=found.date_created,
                                claimed_at=claimed_at):
                return "settled"
        except IntegrityError:
            # Another row took that sid since _ours looked (provider_sid is unique): the
            # next sweep asks again, and finds this row's own message or none.
            log.info("listed message taken by another row meanwhile",
                     extra={"outbox_id": outbox_id})
            _lookup_done(outbox_id, claimed_at, mine, failed=False)
            return "unknown"
        # Its status as the lost callback would have brought it (rank, STOP, by SMS).
        apply_reports([StatusReport(outbox_id, found.sid, found.status, found.error_code)])
        log.info("lost send outcome found at twilio; not sent again",
                 extra={"outbox_id": outbox_id})
        return "adopted"
    if len(listed) >= LOOKUP_LIMIT:
        log.info("too many messages to look through; asking again at the next sweep",
                 extra={"outbox_id": outbox_id})
        return _still_unknown(outbox_id, claimed_at, "too many messages to look through",
                              _lookup_done(outbox_id, claimed_at, mine, failed=True))
    return "given-back" if _give_back(outbox_id, claimed_at, "twilio has no such message; "
                                      "sending again") else "settled"


@dataclass(frozen=True)
class _Wanted:
    """A row without a sid, as a listed message is matched against it."""

    outbox_id: int
    to: str
    from_: str
    body: str
    values: list[str] | None  # a template send: its variable values


def _fit(message_body: str, row: _Wanted) -> int | None:
    """How closely a listed message fits a row: how much of it is not the row's text (0:
    exactly its text; a template send: the template's own words), or None if it cannot
    be the row's."""
    if row.values is None:
        return 0 if message_body == row.body else None
    return twilio_gateway.template_fit(message_body, row.values)


def _ours(listed: list[twilio_gateway.ListedMessage], row: _Wanted, *,
          since: datetime) -> twilio_gateway.ListedMessage | None:
    """The earliest listed message that can be the row's: its text (a template send: its
    variable values), created since ``since``, not already another row's, and fitting no
    other row without a sid to that address more closely ("Booking 1 is cancelled" sent
    as a template also shows in another row's "Booking 1 is cancelled. Refund ...")."""
    fits = sorted(
        ((m.date_created, m, fit) for m in listed
         if m.date_created is not None and m.date_created >= since
         and (fit := _fit(m.body, row)) is not None),
        key=lambda found: found[0])
    if not fits:
        return None
    with transaction() as session:
        taken = set(session.scalars(select(OutboxMessage.provider_sid).where(
            OutboxMessage.provider_sid.in_([m.sid for _, m, _ in fits]))))
        others = _without_sid(session, row)
    return next((m for _, m, fit in fits if m.sid not in taken
                 and all((closer := _fit(m.body, other)) is None or closer >= fit
                         for other in others)), None)


def _without_sid(session: Session, row: _Wanted) -> list[_Wanted]:
    """The other rows to the same address still being sent without a sid (their outcome
    lost, or their answer still on its way): a listed message may be theirs."""
    found = session.execute(
        select(OutboxMessage.id, OutboxMessage.body, WhatsappTemplateSend.content_variables)
        .outerjoin(WhatsappTemplateSend, WhatsappTemplateSend.outbox_id == OutboxMessage.id)
        .where(OutboxMessage.to_addr == row.to, OutboxMessage.from_addr == row.from_,
               OutboxMessage.status == "sending", OutboxMessage.provider_sid.is_(None),
               OutboxMessage.id != row.outbox_id))
    return [_Wanted(other_id, row.to, row.from_, body,
                   None if variables is None
                   else [template_value(str(v)) for v in variables.values()])
            for other_id, body, variables in found]


def _same_claim(claimed_at: datetime) -> tuple[ColumnElement[bool], ...]:
    """The row is still in the claim a reconcile looked at: "sending", no sid, not
    claimed again."""
    return (OutboxMessage.status == "sending", OutboxMessage.provider_sid.is_(None),
            OutboxMessage.updated_at == claimed_at)


def _give_back(outbox_id: int, claimed_at: datetime, why: str, *,
               untried: bool = False) -> bool:
    """Back to ``pending`` and on its way again, unless it was settled meanwhile;
    ``untried``: only if still not tried (a slow drainer's _claim_kept took it first)."""
    still = (*_same_claim(claimed_at), *((OutboxMessage.attempts == 0,) if untried else ()))
    with db.autocommit() as conn:
        done = conn.execute(update(OutboxMessage)
                            .where(OutboxMessage.id == outbox_id, *still)
                            .values(status="pending", last_error=why[:300])).rowcount == 1
    if done:
        schedule_delivery(outbox_id)
    return done


def _still_unknown(outbox_id: int, claimed_at: datetime, why: str,
                   mine: _RowLookups | None, *, paused: bool = False) -> str:
    """Twilio could not tell: the row stays "sending" for a later sweep to ask again (no
    warning: a failed look-up or the pause it started has one), until _gone_unasked says
    it has waited enough; then it is sent again unasked."""
    gone = _gone_unasked(clock.now(), claimed_at, mine)
    if gone is None:
        return "paused" if paused else "unknown"
    if not _give_back(outbox_id, claimed_at, f"{gone}; {why}"):
        return "settled"
    log.warning(f"send {gone}; sent again, it may arrive twice",
                extra={"outbox_id": outbox_id, "reason": why})
    return "given-back"


def _gone_unasked(now: datetime, claimed_at: datetime, mine: _RowLookups | None
                  ) -> str | None:
    """Why a row claimed at ``claimed_at`` is given back without an answer, or None (it
    waits). After its own look-ups have failed for GIVE_UP_UNKNOWN (an answer would have
    settled it, and the next one most likely fails too), counted from its first failure:
    a row held back by pauses that others' failures started may still be answered, and
    one failure after a long pause is no day of failures. Anyway after GIVE_UP_PAUSED."""
    if now - claimed_at >= GIVE_UP_PAUSED:
        return "outcome unknown for three days"
    if mine is not None and mine.failures and mine.first_failed is not None \
            and now.timestamp() - mine.first_failed >= GIVE_UP_UNKNOWN.total_seconds():
        return "outcome unknown for a day"
    return None


@dataclass(frozen=True)
class _RowLookups:
    """One row's look-ups for one claim. Kept in Redis, not in a column: a column write
    would move updated_at, which tells a claim apart, and no migration is needed. Lost (a
    flushed Redis), the row is asked as if for the first time, and one whose failures are
    forgotten waits up to GIVE_UP_PAUSED, not GIVE_UP_UNKNOWN."""

    claim: float  # the claim's timestamp: a new claim of the row starts afresh
    asked: float  # when it was last asked (the sweep asks the least lately asked first)
    failures: int  # its own failed look-ups in a row
    retry: float  # not asked again before: its own back-off
    first_failed: float | None = None  # when its failures in a row began


def _held_back(mine: _RowLookups | None) -> bool:
    """Whether the row's own back-off still runs."""
    return mine is not None and mine.retry > clock.now().timestamp()


def _row_lookups(claims: dict[int, datetime]) -> dict[int, _RowLookups]:
    """The look-ups recorded for these rows' current claims (one round trip). Redis
    unavailable: none, as if never asked."""
    ids = list(claims)
    try:
        raw = redis_client().mget([ROW_LOOKUPS_KEY.format(row_id) for row_id in ids])
    except RedisError:
        log.warning("look-ups of rows unknown (Redis unavailable)")
        return {}
    found = {}
    for row_id, value in zip(ids, raw, strict=True):
        try:
            mine = _RowLookups(**json.loads(value)) if value else None
        except (ValueError, TypeError):
            mine = None
        if mine is not None and mine.claim == claims[row_id].timestamp():
            found[row_id] = mine
    return found


def _lookup_done(outbox_id: int, claimed_at: datetime, mine: _RowLookups | None, *,
                 failed: bool) -> _RowLookups:
    """Record that the row was asked just now (and whether its look-up failed: a back-off
    twice as long as the last); return the record, kept or not. One job a row at a time
    (its job id), so no lock."""
    now = clock.now().timestamp()
    failures = (mine.failures if mine else 0) + 1 if failed else 0
    wait = min(LOOKUP_PAUSE_FIRST.total_seconds() * 2 ** min(failures - 1, 32),
               LOOKUP_PAUSE_MAX.total_seconds()) if failed else 0
    first_failed = None
    if failed:
        first_failed = mine.first_failed if mine and mine.failures and mine.first_failed \
            else now
    done = _RowLookups(claim=claimed_at.timestamp(), asked=now, failures=failures,
                       retry=now + wait, first_failed=first_failed)
    try:
        redis_client().set(ROW_LOOKUPS_KEY.format(outbox_id), json.dumps(vars(done)),
                           ex=GIVE_UP_PAUSED)
    except RedisError:
        log.warning("look-up of a row not recorded (Redis unavailable)",
                    extra={"outbox_id": outbox_id})
    return done


# KEYS: the pause. ARGV: now, the first pause and the longest (whole seconds). The value
# is "<until> <failures in a row>"; failures count as in a row while the last pause ended
# less than the longest pause ago, answers or not in between (a look-up Twilio answers
# leaves the count: under failures that come and go, the pause still grows). Starts the
# next pause, unless one is on (jobs that were already asking when it began): returns its
# length, or 0.
_PAUSE_LUA = """
local now, first, longest = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local failures = 0
local old = redis.call('GET', KEYS[1])
if old then
  local ends, count = string.match(old, '^(%d+) (%d+)$')
  if ends and tonumber(ends) > now then return 0 end
  if ends and now - tonumber(ends) < longest then failures = tonumber(count) end
end
failures = math.min(failures + 1, 32)
local pause = math.min(first * 2 ^ (failures - 1), longest)
redis.call('SET', KEYS[1], string.format('%d %d', now + pause, failures),
           'EX', math.floor(pause + longest))
return pause
"""


def _lookups_paused() -> bool:
    """Whether a look-up failed so recently that Twilio is not asked now (by our clock:
    the key's own expiry only clears it away). Redis unavailable: not paused, as before
    the pause existed."""
    try:
        raw = redis_client().get(LOOKUP_PAUSE_KEY)
    except RedisError:
        log.warning("look-up pause unknown (Redis unavailable); asking twilio")
        return False
    return raw is not None and int(raw.split()[0]) > clock.now().timestamp()


def _pause_lookups(why: str) -> None:
    """Pause all look-ups after one failed for an outage; one warning a pause, not one
    a row."""
    try:
        pause = run_script(redis_client(), _PAUSE_LUA, [LOOKUP_PAUSE_KEY],
                           [int(clock.now().timestamp()),
                            int(LOOKUP_PAUSE_FIRST.total_seconds()),
                            int(LOOKUP_PAUSE_MAX.total_seconds())])
    except RedisError:
        log.warning("twilio could not be asked; look-ups not paused (Redis unavailable)",
                    extra={"reason": why})
        return
    if pause:
        log.warning("twilio could not be asked; look-ups paused",
                    extra={"pause_s": int(pause), "reason": why})

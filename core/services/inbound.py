"""What every inbound Twilio message goes through: rate limit, dedupe, one transaction.

Two ways in, one way through:
- ``process`` answers inside the webhook (partner SMS: short, and the reply is the TwiML;
  ``answer`` is its webhook's way in). While Redis is away a partner SMS is parked as a
  WhatsApp message is (below), answered with an empty TwiML, and handled by the drain once
  Redis is back, its reply sent as an SMS through the outbox; so is one from a partner
  with messages still parked or queued, behind them.
- ``accept`` + ``drain`` is the courier way (WhatsApp): the webhook only checks, counts and
  queues the message in Redis (one round trip) and answers an empty ``<Response/>``; an RQ
  job drains that contact's inbox in order and sends each turn's reply through the outbox.
  While Redis is away the webhook parks the message in PostgreSQL instead (``park``), and
  the sweep queues it once Redis is back (``unpark``): Twilio does not retry a messaging
  webhook answered 5xx.
  A flood of messages costs the webhook almost nothing, and a slow turn never holds a
  Twilio connection.

Either way a message is handled once: the claim on its MessageSid (``inbound_events``) and
the handler's changes, replies included, commit together; a retried webhook or a re-run
drain changes nothing twice.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, cast

from redis.exceptions import RedisError
from rq import Retry
from sqlalchemy import Table, bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from core import clock, i18n
from core.adapters.db import autocommit, database_away, transaction
from core.adapters.models import Conversation, InboundEvent, InboundParked, Person
from core.adapters.redis_conn import redis_client, redis_down, run_script
from core.config import get_settings, int_setting
from core.dialog import words

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InboundMessage:
    """A Twilio message webhook, reduced to what the core needs (channel-neutral)."""

    channel: str  # "whatsapp" or "sms"
    sid: str
    from_addr: str  # as Twilio gave it, e.g. "whatsapp:+919876543210"
    to_addr: str
    body: str
    contact: str  # stable key: WaId for WhatsApp, E.164 phone for SMS
    phone: str | None  # E.164 when Twilio gave a phone number
    profile_name: str | None = None
    num_media: int = 0
    media_types: tuple[str, ...] = ()
    media_urls: tuple[str, ...] = ()  # Twilio-hosted; fetched (with auth) only in jobs
    latitude: float | None = None
    longitude: float | None = None
    place: str | None = None  # a shared location's Label and Address, as Twilio gave them
    button_payload: str | None = None
    received_at: float | None = None  # when the webhook took it (epoch s); set by accept


@dataclass
class Outcome:
    replies: list[str] = field(default_factory=list)
    duplicate: bool = False
    rate_limited: bool = False
    queued: bool = False  # left to the drain (answer): its replies go through the outbox
    parked: bool = False  # Redis was away: kept in PostgreSQL until the sweep queues it


Handler = Callable[[Session, InboundMessage], list[str]]


class TurnFailed(Exception):  # noqa: N818 (an outcome, not a programming error)
    """A turn broke midway (a bug, or the database refused a statement): nothing of it is
    kept, its whole transaction rolls back, and ``answer`` (the apology, as the channel
    sends it) is recorded as the message's answer in a transaction of its own.

    Rolling back the whole turn instead of a savepoint around the dialog spares every
    turn two round trips (SAVEPOINT, RELEASE) for the sake of the rare one that fails.
    """

    def __init__(self, answer: Any) -> None:
        super().__init__("turn failed")
        self.answer = answer


# A shared location's Label that names no place a rider could find: the phone's own name
# for a saved spot ("Home", "Work") or for a pin ("Dropped pin", "My location"), in
# English, in the service's languages, or as people write those in Latin letters. Such a
# label is left out of the place's name (the Address, if any, stays); with nothing left,
# the landmark question is asked. Looked up without nuktas ("ऑफ़िस" is "ऑफिस").
GENERIC_PLACE_LABELS = frozenset({
    "home", "my home", "house", "my house", "work", "office", "my office",
    "my location", "current location", "location", "live location", "pin",
    "dropped pin", "pinned location", "workplace", "work place", "my work",
    # Hindi, Marathi
    "घर", "मेरा घर", "माझे घर", "माझं घर", "ऑफिस", "ऑफ़िस", "मेरा ऑफिस", "दफ्तर",
    "दफ़्तर", "कार्यालय", "काम",
    # Bengali
    "বাড়ি", "বাড়ী", "ঘর", "আমার বাড়ি", "আমার বাড়ী", "অফিস", "আমার অফিস", "কাজ",
    "কর্মস্থল",
    # Gujarati
    "ઘર", "મારું ઘર", "મારુ ઘર", "ઓફિસ", "ઑફિસ", "મારી ઓફિસ", "કાર્યાલય", "કામ",
    # Tamil
    "வீடு", "என் வீடு", "எனது வீடு", "அலுவலகம்", "ஆபீஸ்", "ஆஃபீஸ்", "ஆபிஸ்", "வேலை",
    "பணியிடம்",
    # Kannada
    "ಮನೆ", "ನನ್ನ ಮನೆ", "ಕಚೇರಿ", "ಆಫೀಸ್", "ಆಫೀಸು", "ಕೆಲಸ",
    # Telugu
    "ఇల్లు", "నా ఇల్లు", "మా ఇల్లు", "ఇంటి", "ఆఫీసు", "ఆఫీస్", "కార్యాలయం", "పని",
    # Latin letters
    "ghar", "mera ghar", "maza ghar", "majha ghar", "maru ghar", "bari", "amar bari",
    "veedu", "en veedu", "mane", "nanna mane", "illu", "naa illu", "maa illu",
    "daftar", "kaam", "ofis", "offc",
})
_GENERIC_PLACE_KEYS = frozenset(map(words.without_nukta, GENERIC_PLACE_LABELS))


def shared_place(label: str, address: str) -> str | None:
    """The name a shared location came with (WhatsApp's Label and Address, joined), but
    for a Label in GENERIC_PLACE_LABELS (nuktas aside); None when none is left."""
    if words.without_nukta(label) in _GENERIC_PLACE_KEYS:
        label = ""
    return ", ".join(v for v in (label.strip(), address.strip()) if v) or None


def rate_counter(channel: str, contact: str) -> str:
    """The Redis key of a contact's inbound rate counter: named by a keyed hash (HMAC-SHA256
    with OTP_KEY) of the channel and contact, not the number, which an erasure must not
    leave behind (as auth's keys)."""
    tag = hmac.new(get_settings().otp_key, f"inbound-rate:{channel}:{contact}".encode(),
                   hashlib.sha256).hexdigest()[:32]
    return f"ratelimit:{channel}:{tag}"


def _counter_for(msg: InboundMessage, limit: int) -> tuple[str, int]:
    """The rate counter this message counts on, and its limit.

    Opt-out and opt-in words keep a counter of their own, so that no other message fills
    theirs nor theirs another's. STOP (on WhatsApp; by SMS only Twilio's own opt-out
    words, END, QUIT...: Twilio stops our SMS to the number for each, and we must know
    it) has no limit at all, as an annoyed user sends it many times; a flood of it costs
    a turn each and no message (it is answered only when it changes something), and no
    later message is dropped for it. An opt-in word (by SMS Twilio's: START, UNSTOP,
    YES; on WhatsApp the START command) gets through whatever came before it (Twilio
    lets our SMS through again for it; she wants our messages again), under a limit of
    its own, as it is answered each time (the menu, a partner's status)."""
    contact = rate_counter(msg.channel, msg.contact)
    word = msg.body.strip().casefold()
    command = words.command(msg.body)
    from core.services.partner_sms import OPT_IN_WORDS, OPT_OUT_WORDS  # it imports us

    # By SMS only Twilio's own opt-out words: "band" there is a partner going off duty,
    # answered each time; a bare "band" ("closed", words.CLOSED_WORDS) may be an answer
    # to an operator on WhatsApp (a turn and a hand-off message each). Either on the
    # ordinary counter: the first of them did what it does, a flood of them is a flood.
    if (word in OPT_OUT_WORDS if msg.channel == "sms"
            else command == "stop" and words.clean(msg.body) not in words.CLOSED_WORDS):
        return contact + ":stop", NO_LIMIT
    if (msg.channel == "sms" and word in OPT_IN_WORDS) or (
            msg.channel == "whatsapp" and command == "start"):
        return contact + ":start", limit
    return contact, limit


NO_LIMIT = 2**31 - 1

# KEYS: the message's count mark, the contact's rate counter. ARGV: mark ttl, window.
# Counts a message once: a retry of it (Twilio posts a webhook again when our answer was
# slow or lost) gets the count its first delivery got, and so the same verdict.
_COUNT_ONCE_LUA = """
local seen = redis.call('GET', KEYS[1])
if seen then return tonumber(seen) end
redis.call('SET', KEYS[2], '0', 'NX', 'EX', ARGV[2])
local n = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], n, 'EX', ARGV[1])
return n
"""


def process(msg: InboundMessage, handler: Handler) -> Outcome:
    """Run ``handler`` once per MessageSid, inside one transaction, under a rate limit
    (a retried webhook counts once: it is answered as the first delivery was)."""
    settings = get_settings()
    counter, limit = _counter_for(msg, settings.inbound_rate_limit)
    count = int(_run(redis_client(), _COUNT_ONCE_LUA,
                     keys=[f"inbound:counted:{msg.channel}:{msg.sid}", counter],
                     args=[SEEN_TTL_S, settings.inbound_rate_window_s]))
    if count > limit:
        # Say it once per window; after that stay silent so a flood costs us nothing.
        if count == settings.inbound_rate_limit + 1:
            lang = _notice_language(msg)
            if lang is not None:
                return Outcome([i18n.t("common.too_many_messages", lang)], rate_limited=True)
        return Outcome(rate_limited=True)

    return _claimed_turn(msg, handler)


def answer(msg: InboundMessage, handler: Handler) -> Outcome:
    """A partner SMS (the SMS webhook): ``process`` it, its replies the TwiML.

    While Redis is away (its rate limit, and what the handler keeps there, need it) the
    message is parked in PostgreSQL (``park``) and answered with no reply: Twilio does not
    retry a messaging webhook answered 5xx, so a 503 lost the rider's "YES 57". Once
    Redis is back the sweep (or a drain job) queues it and the drain handles it as any
    queued message, then: its replies go by SMS through the outbox, once (the claim on
    the sid; a retry of it parked or queued too is a duplicate). It is handled as of
    then: a yes to an offer whose time and grace ran out meanwhile gets the late answer
    (dispatch.offer_expired), as any late yes. A message from a contact with messages
    still parked or queued is queued behind them (``accept``), not handled before them.
    Only with PostgreSQL away too does this raise (the webhook answers 503)."""
    if msg.received_at is None:  # its place behind the contact's parked ones (unpark)
        msg = replace(msg, received_at=clock.now().timestamp())
    try:
        waiting = _waiting(msg)
        if waiting is not None:
            if waiting == "parked":
                # Into Redis first, in order: a drainer already running (it does not
                # unpark) would otherwise take this one before the parked ones.
                unpark()
            got = accept(msg)
            return Outcome(duplicate=got.duplicate, rate_limited=got.dropped,
                           queued=got.queued, parked=got.parked)
        return process(msg, handler)
    except RedisError as exc:
        # Redis away before the turn, or during it (the handler raises it: the turn's
        # transaction rolled back whole, nothing of it kept).
        if not redis_down(exc):
            raise
        _park_instead(msg, exc)
        return Outcome(parked=True)


def _waiting(msg: InboundMessage) -> str | None:
    """Whether the contact has messages parked in PostgreSQL ("parked") or queued in
    Redis ("queued"), which this one must not overtake; None if neither. PostgreSQL is
    read first: ``unpark`` queues a row into Redis before it deletes it, and an inbox
    stays until its last message was handled, so no row and then no inbox means nothing
    waits (the other order missed a row unparked between the two looks). Raises
    RedisError while Redis is away."""
    with autocommit() as conn:
        if conn.execute(_ANY_PARKED_FROM, {"channel": msg.channel,
                                           "contact": msg.contact}).first() is not None:
            return "parked"
    if redis_client().exists(_keys(msg.channel, msg.contact)[0]):
        return "queued"
    return None


# PostgreSQL aborted the transaction to let a concurrent one through: deadlock detected,
# serialization failure. Run again, it finds the other's work done and goes ahead.
LOST_RACE_SQLSTATES = frozenset({"40P01", "40001"})
TURN_ATTEMPTS = 3


def lost_a_race(exc: BaseException) -> bool:
    """True if ``exc`` is PostgreSQL aborting this transaction for a concurrent one
    (deadlock, serialization failure), or a row read earlier in the transaction found
    changed by a concurrent one when locked (StaleDataError: a versioned row, a leg or a
    booking, read, then locked after another transaction committed a change to it): the
    whole transaction can simply run again, and then sees the other's work."""
    if isinstance(exc, StaleDataError):
        return True
    orig = getattr(exc, "orig", None)
    return isinstance(exc, OperationalError) and (
        getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)) in LOST_RACE_SQLSTATES


def _claimed_turn(msg: InboundMessage, handler: Handler, *, send_replies: bool = False
                  ) -> Outcome:
    for attempt in range(1, TURN_ATTEMPTS + 1):
        try:
            return _process_once(msg, handler, send_replies)
        except IntegrityError:
            # Two first messages from one new contact raced to create it; the loser's
            # transaction rolled back whole, and on the second try it finds the contact.
            if attempt >= 2:
                raise
            log.info("retrying inbound message after a creation race")
        except (OperationalError, StaleDataError) as exc:
            # A deadlock or serialization failure with a concurrent turn or job (a partner's
            # OFF while a rival takes the same leg), or a row changed between its read and
            # its lock (a PICK crossing the customer's cancel): the loser rolled back
            # whole, and runs again. Anything else (the database away) goes up: the drain
            # job is retried and keeps the message; the SMS webhook answers 503 (Twilio
            # does not retry it, but calls the number's Fallback URL once: README).
            if not lost_a_race(exc) or attempt == TURN_ATTEMPTS:
                raise
            log.warning("retrying inbound message after a lock conflict",
                        extra={"channel": msg.channel, "attempt": attempt})
    raise AssertionError("unreachable")


class _ErasedContact(Exception):  # noqa: N818 (an outcome)
    """The message came before its contact's erasure: its turn rolls back whole."""


def _process_once(msg: InboundMessage, handler: Handler, send_replies: bool) -> Outcome:
    try:
        with transaction() as session:
            claimed = claim(session, "twilio", msg.sid, msg.channel)
            if claimed is None:
                return _duplicate(session, msg, send_replies)
            replies = handler(session, msg)
            # After the handler, which holds the turn's locks now (its conversation row,
            # the person's): an erasure of the contact either took them first, and has
            # committed (the handler waited for it), its mark written before its commit,
            # or it waits for this turn's commit and erases what the turn did.
            if _erased_since(session, msg):
                raise _ErasedContact
            _record_answer(session, msg, claimed, replies, send_replies)
    except _ErasedContact:
        return _dropped(msg)
    except TurnFailed as failed:
        # The turn rolled back whole; the message is still handled, with the apology.
        with transaction() as session:
            if _erased_since(session, msg):
                return _dropped(msg)
            claimed = claim(session, "twilio", msg.sid, msg.channel)
            if claimed is None:
                return _duplicate(session, msg, send_replies)
            replies = failed.answer
            _record_answer(session, msg, claimed, replies, send_replies)
    return Outcome(replies)


def _duplicate(session: Session, msg: InboundMessage, send_replies: bool = False
               ) -> Outcome:
    """A message handled before: answered from record. Drained again (``send_replies``),
    its replies that the turn claimed and never tried go now: the drainer that made them
    died after the turn's commit, before it sent them (_untried_replies_go)."""
    if send_replies:
        _untried_replies_go(session, msg)
    stored = stored_answer(session, "twilio", msg.sid)
    log.info("duplicate webhook answered from record", extra={"channel": msg.channel})
    return Outcome(json.loads(stored) if stored else [], duplicate=True)


REPLY_KEYS_BATCH = 8  # a turn's replies are asked for this many keys at a time


def _untried_replies_go(session: Session, msg: InboundMessage) -> None:
    """Give the replies to ``msg`` still claimed and never tried back to their delivery
    jobs, in this transaction (outbox.give_back_untried: a drainer merely slow, not dead,
    finds its claim gone and sends nothing twice). The keys are read by their unique
    index, a few at a time, until one is missing: a turn's replies are 0, 1, 2..."""
    from core.services import outbox

    start = 0
    while True:
        keys = [reply_key(msg.sid, i) for i in range(start, start + REPLY_KEYS_BATCH)]
        if outbox.give_back_untried(session, keys) < len(keys):
            return
        start += REPLY_KEYS_BATCH


def _record_answer(session: Session, msg: InboundMessage, claimed: int, replies: list[str],
                   send_replies: bool) -> None:
    if send_replies:
        # The outbox rows, keyed by the sid, are the record of what was answered: a
        # drained duplicate sends nothing, so the replies need not be stored twice.
        _queue_replies(session, msg, replies)
    else:
        save_answer(session, claimed, json.dumps(replies, ensure_ascii=False))


# Every message runs these: prebuilt Core statements (no ORM unit of work, no statement
# built and cache-keyed per call).
# A mapped class's __table__ is its Table, though typed as any FromClause.
_EVENTS = cast(Table, InboundEvent.__table__)
_CLAIM = (insert(_EVENTS)
          .values(provider=bindparam("provider"), external_id=bindparam("external_id"),
                  channel=bindparam("channel"))
          .on_conflict_do_nothing(constraint="uq_inbound_events_provider_external")
          .returning(_EVENTS.c.id))
_STORED = select(_EVENTS.c.response_body).where(
    _EVENTS.c.provider == bindparam("provider"),
    _EVENTS.c.external_id == bindparam("external_id"))
# Its parameters are not named after columns: folded into a statement that updates
# another table (``saving``), a parameter named like one of its columns ("channel") would
# be set there too.
_RECORD = (insert(_EVENTS)
           .values(provider=bindparam("event_provider"),
                   external_id=bindparam("event_external_id"),
                   channel=bindparam("event_channel"), response_body=bindparam("event_body"))
           .on_conflict_do_nothing(constraint="uq_inbound_events_provider_external")
           .returning(_EVENTS.c.id))
_SAVE = (update(_EVENTS).where(_EVENTS.c.id == bindparam("event_id"))
         .values(response_body=bindparam("body")))


def claim(session: Session, provider: str, external_id: str, channel: str) -> int | None:
    """Claim a webhook by the provider's id in this transaction: its row id, or None if
    it was handled (or is being handled) already."""
    return session.scalar(_CLAIM, {"provider": provider, "external_id": external_id,
                                   "channel": channel})


def stored_answer(session: Session, provider: str, external_id: str) -> str | None:
    """What a claimed webhook was answered (None while its claim is still uncommitted)."""
    return session.scalar(_STORED, {"provider": provider, "external_id": external_id})


def record_answer(session: Session, provider: str, external_id: str, channel: str,
                  body: str, *, saving: Callable[[Any, dict[str, Any]],
                                                 tuple[Any, dict[str, Any]]] | None = None
                  ) -> int | None:
    """Claim a webhook and store its answer in one statement, at the end of a turn that
    ran under a lock serializing its twins: its row id, or None if it was recorded
    already (the caller rolls the turn back and answers from record). ``saving`` folds
    another write into that statement (conversation.with_state_saved)."""
    params = {"event_provider": provider, "event_external_id": external_id,
              "event_channel": channel, "event_body": body}
    statement: Any = _RECORD
    if saving is not None:
        statement, params = saving(statement, params)
    return session.scalar(statement, params)


def save_answer(session: Session, event_id: int, body: str) -> None:
    session.execute(_SAVE, {"event_id": event_id, "body": body})


def _queue_replies(session: Session, msg: InboundMessage, replies: list[str]) -> None:
    """The turn's replies as outbox rows, in the turn's transaction (keys name the sid)."""
    from core.services import outbox

    for i, text in enumerate(replies):
        outbox.queue_message(session, channel=msg.channel, to=msg.from_addr, body=text,
                             dedupe_key=reply_key(msg.sid, i), reply=True,
                             send_after_commit=True)


def reply_key(sid: str, index: int) -> str:
    """Outbox dedupe key of the ``index``-th reply to inbound message ``sid``."""
    return f"reply:{sid}:{index}"


# --- the courier way: accept in the webhook, drain in jobs --------------------------------
#
# Redis keys:
#   inbox:<channel>:<contact>             the contact's messages, oldest first
#   inbox:<channel>:<contact>:scheduled   set while the contact waits in READY or is drained
#   inbox:<channel>:<contact>:lock        held by the drainer working on the contact
#   inbox-ready                           contacts with messages and nobody on them, FIFO
#   inbox-drainers                        drainer jobs queued or running (at most DRAINERS)
#   inboxes                               every inbox with messages (for the sweep)
#   inbox-dead                            messages whose turn raised a bug (see below)
# A drainer job takes contacts from READY until it is empty, so one RQ job serves many
# messages (RQ's own bookkeeping costs several milliseconds per job).

SEEN_TTL_S = 3600  # Twilio retries within minutes; inbound_events is the lasting record
INBOX_TTL_S = 7 * 86400  # an inbox nobody drained (all workers down a week) expires
SCHEDULED_TTL_S = 600  # a contact lost with its worker is taken up again after this long
LOCK_TTL_S = 60
DRAINERS_TTL_S = 60  # refreshed while drainers work; lapses if they all died
DRAINERS = 4  # more than the worker processes that usually run: idle ones exit at once
DRAINER_BUDGET_S = 20.0  # then hand over to a fresh job (RQ's job timeout is 180 s)
DEFAULT_DRAIN_THREADS = 4
DEAD_LETTER = "inbox-dead"
INBOXES = "inboxes"
READY = "inbox-ready"
DRAINER_COUNT = "inbox-drainers"
DRAIN_JOB = "workers.inbound.drain"
DRAIN_RETRY_S = [2, 10, 30, 60, 120]  # while PostgreSQL or Redis is away

# KEYS: seen, rate counter, inbox, scheduled flag, inboxes, ready, drainer count.
# ARGV: message, seen ttl, limit, window, scheduled ttl, inbox ttl, contact, max drainers,
# drainer ttl.
# Returns {state, schedule}: state 0 duplicate, 1 dropped (over the limit, already told),
# 2 queued, 3 queued as the "too many messages" notice; schedule 1: enqueue a drainer.
_ACCEPT_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then return {0, 0} end
redis.call('SET', KEYS[2], '0', 'NX', 'EX', ARGV[4])
local n = redis.call('INCR', KEYS[2])
local limit = tonumber(ARGV[3])
if n > limit + 1 then return {1, 0} end
local state = 2
local item = ARGV[1]
if n == limit + 1 then
  state = 3
  item = '!' .. item
end
redis.call('RPUSH', KEYS[3], item)
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('SADD', KEYS[5], KEYS[3])
if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[5]) then return {state, 0} end
redis.call('RPUSH', KEYS[6], ARGV[7])
if tonumber(redis.call('GET', KEYS[7]) or '0') >= tonumber(ARGV[8]) then return {state, 0} end
redis.call('INCR', KEYS[7])
redis.call('EXPIRE', KEYS[7], ARGV[9])
return {state, 1}
"""

# The same, for a message parked while Redis was away (``unpark``): KEYS[8] the contact's
# drain lock, ARGV[10] the message's received_at. It goes into the inbox in the order it
# was written, before the messages that came after it and are still waiting there (the
# contact's later messages, accepted straight into Redis once it was back), though never
# before the head while a drainer holds the contact (it may be handling that one now).
_PUSH = "redis.call('RPUSH', KEYS[3], item)\n"
_PUSH_IN_ORDER = """local at = tonumber(ARGV[10]) or 0
local len = redis.call('LLEN', KEYS[3])
local floor = 0
if redis.call('EXISTS', KEYS[8]) == 1 then floor = 1 end
local i = len - 1
while i >= floor do
  local entry = redis.call('LINDEX', KEYS[3], i)
  if string.sub(entry, 1, 1) == '!' then entry = string.sub(entry, 2) end
  local ok, data = pcall(cjson.decode, entry)
  local t = 0
  if ok and type(data) == 'table' and type(data['received_at']) == 'number' then
    t = data['received_at']
  end
  if t <= at then break end
  i = i - 1
end
if i >= len - 1 then
  redis.call('RPUSH', KEYS[3], item)
elseif i >= 0 then
  redis.call('LINSERT', KEYS[3], 'AFTER', redis.call('LINDEX', KEYS[3], i), item)
else
  redis.call('LPUSH', KEYS[3], item)
end
"""
assert _ACCEPT_LUA.count(_PUSH) == 1
_ACCEPT_IN_ORDER_LUA = _ACCEPT_LUA.replace(_PUSH, _PUSH_IN_ORDER)

# KEYS: inbox, scheduled flag, lock, inboxes. ARGV: lock token.
# A contact is let go only when its inbox is empty, checked atomically with accept's
# RPUSH: a message queued after this ran finds no flag and puts the contact back in READY.
_FINISH_LUA = """
if redis.call('LLEN', KEYS[1]) > 0 then return 1 end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[4], KEYS[1])
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return 0
"""

# KEYS: ready, drainer count. A drainer leaves only when READY is empty (atomically with
# accept, which then counts it gone and enqueues a new one when a contact arrives).
_LEAVE_LUA = """
if redis.call('LLEN', KEYS[1]) > 0 then return 1 end
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
return 0
"""

# KEYS: inbox, lock. ARGV: the message just handled, lock token, lock ttl.
# Take the handled message off the inbox only if it is still the head: a Redis that lost
# its data (a flush, a failover) mid-turn lost this inbox and its lock, and the inbox a
# newer message then made holds only unhandled messages. The lock is kept (taken back if
# it lapsed); if another drainer holds it, the contact is theirs now.
# Returns 1 popped, 0 not the head (nothing popped), -1 the lock is another drainer's.
_POP_HANDLED_LUA = """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then return -1 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[1] then return 0 end
redis.call('LPOP', KEYS[1])
return 1
"""

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Acceptance:
    duplicate: bool = False
    dropped: bool = False
    queued: bool = False
    parked: bool = False  # Redis was away: kept in PostgreSQL until the sweep queues it


def _keys(channel: str, contact: str) -> tuple[str, str, str]:
    base = f"inbox:{channel}:{contact}"
    return base, base + ":scheduled", base + ":lock"


def encode(msg: InboundMessage) -> str:
    # vars(), not asdict(): the fields are plain values and asdict deep-copies each one.
    return json.dumps(vars(msg), ensure_ascii=False, separators=(",", ":"))


def _run(r: Any, source: str, keys: list[str], args: list[Any]) -> Any:
    return run_script(r, source, keys, args)


def decode(raw: str | bytes) -> InboundMessage:
    data: dict[str, Any] = json.loads(raw)
    data.pop("dead_at", None)  # a dead letter's (see set_aside): not part of the message
    for name in ("media_types", "media_urls"):
        data[name] = tuple(data.get(name) or ())
    return InboundMessage(**data)


def accept(msg: InboundMessage) -> Acceptance:
    """Check, count and queue one inbound message for the drainers.

    One Redis round trip (a script), plus an RQ enqueue when fewer than DRAINERS drainer
    jobs are about. No database work: the drainers do that, in order, per contact.

    While Redis is away (a restart, a failover) the message is parked in PostgreSQL
    instead (``park``: one statement) and the webhook answers as usual: Twilio does not
    retry a messaging webhook answered 5xx, so a 503 would lose it. Only with PostgreSQL
    away too does this raise (and the webhook answer 503).
    """
    if msg.received_at is None:  # the time the user wrote, not when a drainer gets to it
        msg = replace(msg, received_at=clock.now().timestamp())
    try:
        return _queue(msg)
    except RedisError as exc:
        if not redis_down(exc):
            raise  # an error of ours (a script's), not Redis away: parking would not help
        _park_instead(msg, exc)
        return Acceptance(parked=True)


def _park_instead(msg: InboundMessage, exc: RedisError) -> None:
    """Redis is away (``exc``): park ``msg``; with PostgreSQL away too, raise ``exc``
    (the webhook answers 503, cache_unavailable)."""
    try:
        park(msg)
    except Exception as db_exc:
        if not database_away(db_exc):
            raise
        log.error("redis and database both away: inbound message refused",
                  extra={"channel": msg.channel})
        raise exc from db_exc
    log.warning("redis away: inbound message parked in the database",
                extra={"channel": msg.channel, "reason": type(exc).__name__})


def _queue(msg: InboundMessage, *, in_order: bool = False) -> Acceptance:
    """Run the accept script (``in_order``: its variant for a parked message)."""
    settings = get_settings()
    r = redis_client()
    inbox, scheduled, lock = _keys(msg.channel, msg.contact)
    counter, limit = _counter_for(msg, settings.inbound_rate_limit)
    keys = [f"inbound:seen:{msg.channel}:{msg.sid}", counter,
            inbox, scheduled, INBOXES, READY, DRAINER_COUNT]
    args: list[Any] = [encode(msg), SEEN_TTL_S, limit,
                       settings.inbound_rate_window_s, SCHEDULED_TTL_S, INBOX_TTL_S,
                       f"{msg.channel}:{msg.contact}", DRAINERS, DRAINERS_TTL_S]
    if in_order:
        keys.append(lock)
        args.append(repr(msg.received_at or 0.0))
    state, schedule = _run(r, _ACCEPT_IN_ORDER_LUA if in_order else _ACCEPT_LUA,
                           keys=keys, args=args)
    if int(schedule):
        try:
            schedule_drainer()
        except RedisError:
            # Counted, never enqueued: a count of a drainer that does not exist would keep
            # the next ones (and the sweep) from starting one. The message stays queued.
            with contextlib.suppress(RedisError):
                r.decr(DRAINER_COUNT)
            raise
    state = int(state)
    if state == 0:
        log.info("duplicate webhook ignored", extra={"channel": msg.channel})
    return Acceptance(duplicate=state == 0, dropped=state == 1, queued=state >= 2)


# --- parked messages: what came while Redis was away ----------------------------------
#
# inbound_parked keeps each message (a WhatsApp message, a partner SMS: ``answer``) as
# ``encode`` wrote it, with its received_at, until
# ``unpark`` runs it through the accept script (in order), after which the row goes. The
# script's dedupe (and, past its hour, the turn's claim on the sid) makes a parked
# message whose retry got through to Redis, or one queued before the enqueue after it
# failed, handled once. The minute sweep unparks, and so does each drain job before it
# starts (a drain job runs only with Redis back): a contact's later message, queued
# straight into Redis, then waits behind the parked one instead of overtaking it.
# An erasure deletes the person's parked messages (``drop_parked``).

_PARKED = cast(Table, InboundParked.__table__)
_PARK = (insert(_PARKED)
         .values(channel=bindparam("channel"), contact=bindparam("contact"),
                 sid=bindparam("sid"), message=bindparam("message"),
                 received_at=bindparam("received_at"))
         .on_conflict_do_nothing(constraint="uq_inbound_parked_sid"))
_ANY_PARKED = select(_PARKED.c.id).limit(1)
_ANY_PARKED_FROM = select(_PARKED.c.id).where(_PARKED.c.channel == bindparam("channel"),
                                             _PARKED.c.contact == bindparam("contact")
                                             ).limit(1)
UNPARK_LOCK_KEY = int.from_bytes(b"RCup", "big")  # one unparker at a time: in order
UNPARK_BATCH = 100


def park(msg: InboundMessage) -> None:
    """Keep ``msg`` in PostgreSQL until Redis is back: one statement, its own transaction
    (a retry of a parked message is parked once)."""
    at = msg.received_at if msg.received_at is not None else clock.now().timestamp()
    with autocommit() as conn:
        conn.execute(_PARK, {"channel": msg.channel, "contact": msg.contact, "sid": msg.sid,
                             "message": encode(msg),
                             "received_at": datetime.fromtimestamp(at, UTC)})


def unpark_if_any() -> int:
    """``unpark`` if a message is parked (one cheap look first: the table is nearly
    always empty); how many were moved."""
    with autocommit() as conn:
        if conn.execute(_ANY_PARKED).first() is None:
            return 0
    return unpark()


def unpark() -> int:
    """Move the parked messages into their Redis inboxes, oldest first, through the
    accept script; each row goes once Redis took it (queued, or a duplicate, or over the
    rate limit, as it would have been at the webhook). Returns how many went; raises the
    Redis error that stopped it (the rows not taken stay for the next run)."""
    moved = 0
    while True:
        failed: RedisError | None = None
        with transaction() as session:
            session.execute(select(func.pg_advisory_xact_lock(UNPARK_LOCK_KEY)))
            rows = session.execute(select(_PARKED.c.id, _PARKED.c.message)
                                   .order_by(_PARKED.c.received_at, _PARKED.c.id)
                                   .limit(UNPARK_BATCH)).all()
            done: list[int] = []
            for row_id, raw in rows:
                try:
                    msg = decode(raw)
                except (ValueError, TypeError):
                    # Not a message this code can read: set aside, not blocking the others.
                    log.error("parked inbound message unreadable; moved to the dead-letter "
                              "list")
                    try:
                        redis_client().rpush(DEAD_LETTER, set_aside(raw.encode()))
                    except RedisError as exc:
                        failed = exc
                        break
                    done.append(row_id)
                    continue
                try:
                    _queue(msg, in_order=True)
                except RedisError as exc:
                    failed = exc
                    break
                done.append(row_id)
            if done:
                session.execute(delete(_PARKED).where(_PARKED.c.id.in_(done)))
        moved += len(done)
        if failed is not None:
            raise failed
        if len(rows) < UNPARK_BATCH:
            if moved:
                log.info("parked inbound messages queued", extra={"count": moved})
            return moved


def drop_parked(session: Session, addresses: Iterable[str]) -> int:
    """Delete the messages parked from these numbers (E.164 phones, WhatsApp ids, either
    with "whatsapp:"), in the caller's transaction (an erasure's): how many went. Under
    the unpark lock, held to the commit: an unpark running now queued them before this
    (too late for this), or finds them gone; none is handled after the erasure."""
    contacts: set[str] = set()
    for address in addresses:
        digits = address.removeprefix("whatsapp:").removeprefix("+")
        if digits:
            contacts |= {digits, f"+{digits}"}  # WhatsApp's WaId, the SMS's E.164
    if not contacts:
        return 0
    session.execute(select(func.pg_advisory_xact_lock(UNPARK_LOCK_KEY)))
    gone = session.execute(delete(_PARKED).where(_PARKED.c.contact.in_(sorted(contacts))))
    return int(getattr(gone, "rowcount", 0) or 0)


def _digits(address: str) -> str | None:
    """A number's digits, as WhatsApp's WaId, the SMS's E.164 and a WhatsApp From say it;
    None for an address that is no number."""
    digits = address.removeprefix("whatsapp:").removeprefix("+")
    return digits if digits.isdigit() else None


def _inbox_names(addresses: Iterable[str]) -> list[str]:
    """The "<channel>:<contact>" of every inbox these numbers may have."""
    contacts: set[str] = set()
    for address in addresses:
        digits = _digits(address)
        if digits:  # WhatsApp's WaId, the SMS's E.164, a WhatsApp From
            contacts |= {digits, f"+{digits}", f"whatsapp:+{digits}"}
    return [f"{channel}:{contact}" for channel in ("whatsapp", "sms")
            for contact in sorted(contacts)]


# --- an erasure's mark ------------------------------------------------------------------
#
# A message a drainer has already read from its inbox when the contact is erased is not in
# the inbox the erasure deletes: its turn waits for the erasure's locks and would make a
# new person of it once the erasure commits. So the erasure marks each number it erases
# (before its commit), under a keyed hash of the number (no number in Redis's keys), with
# when and whom it erased, for as long as an inbox lives; a turn drops a message of a
# marked contact received at or before that time (``_erased_since``).
ERASED_PREFIX = "inbox-erased:"


def _erased_key(address: str) -> str | None:
    digits = _digits(address)
    if digits is None:
        return None
    tag = hmac.new(get_settings().otp_key, f"inbox-erased:{digits}".encode(),
                   hashlib.sha256).hexdigest()[:32]
    return ERASED_PREFIX + tag


def mark_erased(addresses: Iterable[str], people: Iterable[int], at: float) -> int:
    """Mark these numbers (E.164 phones, WhatsApp ids, either with "whatsapp:") erased at
    ``at`` (epoch s), by the erasure of ``people`` (their person ids; none for a recipient
    known by her number only), for INBOX_TTL_S; and count the messages queued from them
    (their inboxes go after the erasure's commit: ``drop_inboxes``). One MULTI. Raises
    RedisError while Redis is away."""
    addresses = list(addresses)
    keys = sorted({key for address in addresses if (key := _erased_key(address))})
    names = _inbox_names(addresses)
    if not keys:
        return 0
    mark = json.dumps({"at": at, "people": sorted(set(people))})
    pipe = redis_client().pipeline(transaction=True)
    for name in names:
        pipe.llen(_keys(*name.split(":", 1))[0])
    for key in keys:
        pipe.set(key, mark, ex=INBOX_TTL_S)
    return sum(int(n) for n in pipe.execute()[:len(names)])


def _erased_since(session: Session, msg: InboundMessage) -> bool:
    """Whether ``msg`` came (``received_at``) at or before its contact's erasure, one that
    committed: a person it erased has no number left (one that failed or is still running
    drops nothing; a recipient known by her number only, erased with no person, has no
    such row: her mark alone counts). A message of no receipt time came now. Raises
    RedisError while Redis is away (the message is kept: the drain is retried)."""
    if msg.received_at is None:
        return False
    key = _erased_key(msg.contact)
    raw = redis_client().get(key) if key else None
    if raw is None:
        return False
    mark = json.loads(raw)
    if msg.received_at > float(mark["at"]):
        return False
    people = [int(p) for p in mark.get("people") or []]
    return not people or session.scalar(select(Person.id).where(
        Person.id.in_(people), Person.phone.is_(None), Person.wa_id.is_(None)).limit(1)
    ) is not None


def _dropped(msg: InboundMessage) -> Outcome:
    log.info("inbound message from an erased contact dropped", extra={"channel": msg.channel})
    return Outcome()


def drop_inboxes(addresses: Iterable[str]) -> int:
    """Delete the Redis inboxes of these numbers (E.164 phones, WhatsApp ids, either with
    "whatsapp:"): the messages accepted from them and not handled yet, their ``:scheduled``
    flags, and their entries in INBOXES and READY (an erasure's, after its commit: a
    drain after it would make a new person of what they wrote). How many messages went.
    One MULTI; a drainer on the contact now finds its inbox empty and lets the contact
    go. Raises RedisError while Redis is away."""
    names = _inbox_names(addresses)
    if not names:
        return 0
    pipe = redis_client().pipeline(transaction=True)
    for name in names:
        pipe.llen(_keys(*name.split(":", 1))[0])
    for name in names:
        inbox, scheduled, _ = _keys(*name.split(":", 1))
        pipe.delete(inbox, scheduled)
        pipe.srem(INBOXES, inbox)
        pipe.lrem(READY, 0, name)
    return sum(int(n) for n in pipe.execute()[:len(names)])


# A drainer that used its budget with contacts still waiting hands over to a fresh job
# (drain_ready). Every worker takes "inbound" before "default", so hand-overs there kept
# the workers going from drainer to drainer for as long as customers kept writing, and
# payment links, offers and their timeouts, refunds and the sweeps waited until the chat
# rush ended. So a hand-over goes on "default" while jobs wait there, behind them: each
# budget's worth of chat waits for the default jobs queued before it, no more (those
# queued after it wait for it in turn). With "default" empty it goes on "inbound", and
# the chat loses nothing. Its job id says what it is (_drain_jobs looks for it).
HANDOVER_QUEUE = "default"
HANDOVER_ID_PREFIX = "drain-handover-"


def schedule_drainer(*, hand_over: bool = False) -> None:
    """Enqueue a drainer: on "inbound", or, for a drainer's ``hand_over`` while jobs wait
    on HANDOVER_QUEUE, behind them."""
    from core.adapters.queue import queue

    name, job_id = "inbound", None
    if hand_over and queue(HANDOVER_QUEUE).count:
        name, job_id = HANDOVER_QUEUE, f"{HANDOVER_ID_PREFIX}{uuid.uuid4().hex}"
    queue(name).enqueue(DRAIN_JOB, job_id=job_id, result_ttl=60, failure_ttl=7 * 86400,
                        retry=Retry(max=5, interval=DRAIN_RETRY_S))


Handlers = Callable[[str], Handler]


def drain_threads() -> int:
    """Contacts one drainer job works on at once (``DRAIN_THREADS``, default 4).

    A turn spends about half its time waiting on PostgreSQL and on Twilio taking the
    reply; with one contact at a time per worker, two workers drained fewer than the 80
    messages a second a WhatsApp number may receive, and replies queued up. Each thread
    holds its contact's lock, so a contact's messages stay in order.
    """
    return int_setting("DRAIN_THREADS", DEFAULT_DRAIN_THREADS)


def drain_ready(handler_for: Handlers, *, budget_s: float | None = None,
                threads: int | None = None) -> int:
    """Drain contacts from READY until it is empty; return how many messages were handled.

    ``threads`` contacts are worked on at once. After ``budget_s`` the job hands over to a
    fresh one (it stays counted as a drainer), so no job runs into RQ's timeout however
    long the queue; the fresh one lets the default queue's waiting jobs go first
    (schedule_drainer).
    """
    budget = DRAINER_BUDGET_S if budget_s is None else budget_s
    count = drain_threads() if threads is None else threads
    linger_s = get_settings().drain_linger_ms / 1000
    r = redis_client()
    started = time.monotonic()
    handled = 0
    while True:
        handled += _drain_at_once(handler_for, started + budget, count, linger_s)
        if time.monotonic() - started >= budget and r.llen(READY):
            schedule_drainer(hand_over=True)
            return handled
        # Leave only when READY is empty, atomically with accept (which then counts this
        # drainer gone and enqueues a new one for the next contact).
        if not int(_run(r, _LEAVE_LUA, keys=[READY, DRAINER_COUNT], args=[])):
            return handled


def _next_contact_within(r: Any, seconds: float) -> bytes | None:
    """The next contact to come into READY within ``seconds``, or None.

    At a steady rate READY is empty for a few milliseconds between messages, and a
    drainer that left each time cost an RQ job per message or two (several ms of RQ's
    own bookkeeping each, more than the turn's database work). The wait is a blocking
    pop, no CPU; while it lasts this worker takes no other job, so it is kept short.
    """
    got = r.blpop([READY], timeout=seconds)
    return None if got is None else got[1]


def _drain_at_once(handler_for: Handlers, deadline: float, count: int,
                   linger_s: float = 0.0) -> int:
    """Run ``count`` contact loops side by side until READY is empty (for the job's own
    loop: has stayed empty for ``linger_s``) or the deadline; the first error (PostgreSQL
    or Redis away) is raised once all loops stopped.

    Only the job's own loop waits: a steady trickle is drained by that loop alone, and a
    burst still gets all ``count``. Helpers that wait too kept every drain thread (and
    its PostgreSQL connection) busy for nothing; measured while the drain's backends
    still ran at the web's priority, that took the web's CPU under overload (at 200
    msg/s the webhook's p99 went from about 30 ms to 60-300 ms).
    """
    if count == 1:
        return _drain_contacts(handler_for, deadline, linger_s)
    results: list[int] = []
    errors: list[BaseException] = []

    def loop(wait: float = 0.0) -> None:
        try:
            results.append(_drain_contacts(handler_for, deadline, wait))
        except BaseException as exc:
            errors.append(exc)

    # Each helper runs in a copy of this job's context, so its log lines name the job.
    helpers = [threading.Thread(target=contextvars.copy_context().run, args=(loop,),
                                name=f"drain-{i}", daemon=True) for i in range(1, count)]
    for t in helpers:
        t.start()
    loop(linger_s)
    for t in helpers:
        t.join()
    if errors:
        raise errors[0]
    return sum(results)


def _drain_contacts(handler_for: Handlers, deadline: float, linger_s: float = 0.0) -> int:
    """Take contacts from READY one by one and drain each, until READY has stayed empty
    for ``linger_s`` or the deadline passed."""
    r = redis_client()
    handled = 0
    while True:  # at least one contact per call, however small the budget
        # Our client does not decode replies: bytes, not the bytes | str redis-py types.
        entry = cast(bytes | None, r.lpop(READY))
        if entry is None:
            wait = min(linger_s, deadline - time.monotonic())
            entry = _next_contact_within(r, wait) if wait > 0 else None
            if entry is None:
                return handled
        r.expire(DRAINER_COUNT, DRAINERS_TTL_S)
        channel, contact = entry.decode().split(":", 1)
        try:
            handled += drain(channel, contact, handler_for(channel))
        except BaseException:
            r.lpush(READY, entry)  # first in line again when the retry (or a peer) runs
            raise
        if time.monotonic() >= deadline:
            return handled


def drain(channel: str, contact: str, handler: Handler) -> int:
    """Handle a contact's queued messages in arrival order; return how many were handled.

    A message leaves the inbox only after its turn committed, so a worker killed mid-turn
    leaves it for the next drain (and its claim makes a second run change nothing); and
    only if it is still the inbox's head and the contact still ours (_POP_HANDLED_LUA).
    """
    r = redis_client()
    inbox, scheduled, lock = _keys(channel, contact)
    token = uuid.uuid4().hex
    if not r.set(lock, token, nx=True, ex=LOCK_TTL_S):
        return 0  # another drainer holds this contact; it empties the inbox before it ends
    handled = 0
    try:
        while True:
            raw = cast(bytes | None, r.lindex(inbox, 0))  # bytes: our client does not decode
            if raw is None:
                if not int(_run(r, _FINISH_LUA, [inbox, scheduled, lock, INBOXES], [token])):
                    return handled
                continue
            try:
                if raw.startswith(b"!"):
                    _too_many(decode(raw[1:]))
                else:
                    _claimed_turn(decode(raw), handler, send_replies=True)
            except RedisError:
                raise  # Redis is away: keep the message, RQ retries the job
            except Exception as exc:
                if database_away(exc):  # unreachable, or taking no writes (a failover)
                    raise  # keep the message, RQ retries the job
                # A message this code cannot handle must not block the contact's later ones.
                log.exception("inbound message failed; moved to the dead-letter list",
                              extra={"channel": channel})
                r.rpush(DEAD_LETTER, set_aside(raw))
            handled += 1
            if int(_run(r, _POP_HANDLED_LUA, [inbox, lock], [raw, token, LOCK_TTL_S])) < 0:
                return handled  # another drainer took the contact over (see the script)
    except BaseException:
        _run(r, _RELEASE_LUA, keys=[lock], args=[token])
        raise


# --- the dead-letter list ---------------------------------------------------------------
#
# DEAD_LETTER keeps each message as it was queued (with the "!" of the "too many messages"
# notice), plus "dead_at": when its turn failed (epoch s). Ops read it with
# ``dead_letters`` (``decode`` takes an entry as it takes a queued message). It is personal
# data like any chat message: the retention job drops entries older than its message
# window, an erasure the person's (core.services.retention, by ``drop_dead_letters``).

DEAD_LETTER_CHUNK = 1000  # entries read per round trip


@dataclass(frozen=True)
class DeadLetter:
    raw: bytes  # as stored: drop_dead_letters removes the entry by this value
    text: str  # the JSON, without the notice's "!"
    at: float | None  # when it was set aside (else when it came); None: not known


def set_aside(raw: bytes) -> bytes:
    """A queued message as the dead-letter list keeps it: with the time its turn failed.
    One that is not a message's JSON is kept as its text, under "raw"."""
    notice = raw.startswith(b"!")
    text = raw[1:] if notice else raw
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {"raw": text.decode(errors="replace")}
    data["dead_at"] = clock.now().timestamp()
    kept = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return b"!" + kept if notice else kept


def _dead_letter(raw: bytes) -> DeadLetter:
    text = (raw[1:] if raw.startswith(b"!") else raw).decode(errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    at = None
    if isinstance(data, dict):
        when = data.get("dead_at") or data.get("received_at")
        at = float(when) if isinstance(when, int | float) else None
    return DeadLetter(raw, text, at)


def dead_letters() -> list[DeadLetter]:
    """The dead-letter list, oldest first."""
    r = redis_client()
    found: list[DeadLetter] = []
    while True:
        # bytes: our client does not decode
        chunk = cast(list[bytes], r.lrange(DEAD_LETTER, len(found),
                                           len(found) + DEAD_LETTER_CHUNK - 1))
        found += [_dead_letter(raw) for raw in chunk]
        if len(chunk) < DEAD_LETTER_CHUNK:
            return found


def drop_dead_letters(which: Callable[[DeadLetter], bool]) -> int:
    """Remove the dead letters ``which`` picks; how many went. Entries are removed by
    value, so messages set aside meanwhile stay (one removed by a concurrent drop while
    this one read the list may shift another past it: the next drop finds that one)."""
    doomed = [d.raw for d in dead_letters() if which(d)]
    if not doomed:
        return 0
    pipe = redis_client().pipeline(transaction=False)
    for raw in doomed:
        pipe.lrem(DEAD_LETTER, 1, cast(str, raw))  # the exact bytes stored (stubs say str)
    return sum(int(n) for n in pipe.execute())


def _too_many(msg: InboundMessage) -> None:
    """Tell the contact once per window that they are sending too fast (by SMS only where
    we text: _notice_language)."""
    lang = _notice_language(msg)
    if lang is None:
        return
    with transaction() as session:
        _queue_replies(session, msg, [i18n.t("common.too_many_messages", lang)])


def sweep_inboxes() -> int:
    """Put back in READY every inbox with messages that nobody is on (lost jobs), and
    start a drainer if READY waits with none about.

    Nobody is on an inbox whose ``:scheduled`` flag lapsed, nor on one scheduled but
    neither locked nor in READY: a drainer killed mid-turn took it off READY and its lock
    lapsed (its flag would keep it waiting 10 minutes). A drainer count with no drain job
    queued, running or waiting for a retry is a count of drainers that do not exist (an
    enqueue that failed after the count, a killed worker)."""
    r = redis_client()
    count = 0
    for key in cast(set[bytes], r.smembers(INBOXES)):  # bytes: our client does not decode
        name = key.decode()
        if not r.llen(name):
            r.srem(INBOXES, name)  # expired with nothing drained, or emptied by a drain
            continue
        contact = name.removeprefix("inbox:")
        if r.set(name + ":scheduled", "1", nx=True, ex=SCHEDULED_TTL_S) or (
                not r.exists(name + ":lock") and r.lpos(READY, contact) is None):
            r.rpush(READY, contact)  # twice in READY is harmless: one drainer takes the lock
            count += 1
    if r.llen(READY) and (not r.exists(DRAINER_COUNT) or not _drain_jobs()):
        r.set(DRAINER_COUNT, 1, ex=DRAINERS_TTL_S)
        schedule_drainer()
    return count


def _drain_jobs() -> int:
    """Drain jobs queued, running, or waiting for a retry: those on "inbound" (which holds
    only drainers), else the hand-overs on HANDOVER_QUEUE (read there by their ids)."""
    from rq.registry import ScheduledJobRegistry, StartedJobRegistry

    from core.adapters.queue import queue

    q = queue("inbound")
    on_inbound = (q.count + StartedJobRegistry(queue=q).count
                  + ScheduledJobRegistry(queue=q).count)
    if on_inbound:
        return on_inbound
    q = queue(HANDOVER_QUEUE)
    ids = [*q.get_job_ids(), *StartedJobRegistry(queue=q).get_job_ids(),
           *ScheduledJobRegistry(queue=q).get_job_ids()]
    return sum(1 for job_id in ids if job_id.startswith(HANDOVER_ID_PREFIX))


def _language_of(msg: InboundMessage) -> str:
    """The sender's language: their conversation's person, else (partners and others who
    talk to us by SMS without a conversation) the person with the sender's phone."""
    with transaction() as session:
        lang = session.scalar(
            select(Person.preferred_language)
            .join(Conversation, Conversation.person_id == Person.id)
            .where(Conversation.channel == msg.channel, Conversation.contact == msg.contact)
        )
        if lang is None and msg.phone:
            lang = session.scalar(select(Person.preferred_language)
                                  .where(Person.phone == msg.phone))
    return lang or i18n.DEFAULT_LANGUAGE


def _notice_language(msg: InboundMessage) -> str | None:
    """The language of the "too many messages" notice in a webhook's answer; None: no
    notice. By SMS it is an SMS we pay for, sent only where partner_sms answers (an
    Indian mobile, or a partner or operator ops set up with any number)."""
    if msg.channel == "sms":
        from core.services.partner_sms import texted_by_us

        with transaction() as session:
            person = session.scalar(select(Person).where(Person.phone == msg.phone)) \
                if msg.phone else None
            if not texted_by_us(msg.phone, person):
                return None
    return _language_of(msg)

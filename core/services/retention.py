"""Keeping and erasing personal data: the daily retention job, and erasure on request.

Where personal data lives, and what happens to it:

- ``outbox_messages`` (bodies carry codes, places and names; ``to_addr`` a phone),
  ``handoff_messages`` (what users and operators said), ``inbound_events.response_body``
  (our inline answers to SMS and calls), ``conversations.state`` (the dialog's slots and
  drafts), ``idempotency_records`` (a booking's API answer, recipient included): after
  RETENTION_MESSAGE_DAYS the texts become REDACTED (the rows stay: they record that a
  message went or came), the slots are cleared and the API answers deleted. A message's
  ``last_error`` (Twilio's error text may name the number it refused) keeps what went
  wrong, its numbers masked, when its text goes.
- ``message_status_events`` (Twilio's status history): deleted after RETENTION_STATUS_DAYS.
- Redis: the dead-letter list of chat messages whose turn failed (``inbox-dead``): entries
  older than RETENTION_MESSAGE_DAYS are dropped, and an erased person's at once; so do
  their inboxes (messages accepted, not handled yet); a partner's last GPS fix and
  positions go with their erasure.
- ``dispatch_pod_photos`` and their files (the parcel in hand, and at the recipient's
  door): personal data of the booking's sender and recipient, not of the partner who took
  them. Deleted after RETENTION_MESSAGE_DAYS once the booking is finished and its money
  settled (as its messages' texts: a complaint about a delivery comes long before; a
  payout reversed in a dispute waits for ops, who decide on the photo), and with the erasure
  of the booking's sender or recipient; a partner's erasure leaves them to the booking.
  The rows go in the database's transaction and the files' URIs wait in
  ``pod_photo_deletions``; the files go after the commit (an RQ job, retried while the
  store is away, and the daily run), each row with its file.
- one-time codes (pickup, drop, handover, sign-in) in outbox texts: masked minutes after
  their message is delivered or failed for good, a day after Twilio took one it never
  reported on (``outbox.mask_due_codes``); what a lost schedule left, by the daily run.
- a pickup code read out on a call, in the call's stored answer (kept for Twilio's retry
  of that webhook): blanked once the call ends, or minutes after the read (``ivr``); what
  a lost job and a lost end of call left, by the daily run (``_code_answers``).
- a pickup or drop code ops made (``POST /ops/legs/{id}/new-code``), in that request's
  saved answer (``idempotency_records``, for a retry with its Idempotency-Key): kept
  CODE_REPLAY, and only while the code works; then redacted, on a retry's read
  (``saved_code_kept``), once ops make a newer one (``forget_void_codes``), and by the
  minute sweep (``redact_saved_codes``); what a stopped sweep left, by the daily run.
- people, bookings (recipient, landmarks, exact places), partner profiles: kept while the
  service needs them, erased on the person's request (``erase_person``, India's DPDP Act
  2023); a recipient with no account (only her number on the bookings sent to her), by
  her number (``erase_recipient``). A person's former numbers (``people.former_phones``,
  a partner's old SIM) are kept until their erasure, which takes what was theirs at them
  from when they came to them (their person row, or ops' move onto one: ``audit_log``)
  until they left them: the rows naming a number keep it for good (the daily job redacts
  texts, not addresses), so an erasure needs it for as long as the person is kept. The
  same record tells the erasure of the number's next holder (the telco gave it to someone
  else), or of a recipient by that number, to take only what came after (``_recycled``).
- ``number_opt_outs``: an erased person's STOP, under a keyed hash of the number (no
  number): kept, so that nobody new at that number is written to before START.

Never touched: the ledger, payment links, transfers, refunds, ``razorpay_events``,
``transitions`` and ``audit_log``. They are the financial and audit record the law has us
keep, and hold ids, fixed texts and gateway ids (``razorpay_events`` keeps the raw webhook
as signed, which names the payer's contact: kept with the payment it proves). Only the free
text kept there about an erased person's bookings (a booking's history reason, ops' cancel
reason in the audit log) loses the names and landmarks the erasure takes
(``_scrub_history``; migration 0055 lets that alone through).
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from redis.exceptions import RedisError
from rq import Retry
from sqlalchemy import (
    CursorResult,
    Float,
    Numeric,
    and_,
    delete,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from core import clock
from core.adapters import geo_index, storage
from core.adapters.api_models import (
    HOLDS_CODE,
    ApiSession,
    AuditEntry,
    BookingRating,
    IdempotencyRecord,
)
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff, HandoffMessage, WhatsappTemplateSend
from core.adapters.dispatch_models import DispatchOffer, PodPhoto, PodPhotoDeletion
from core.adapters.models import (
    UNMASKED_ERROR,
    Booking,
    Conversation,
    InboundEvent,
    Leg,
    MessageStatusEvent,
    OutboxMessage,
    Parcel,
    PartnerProfile,
    Person,
    TransitionLog,
    Vehicle,
)
from core.adapters.payment_models import LedgerPosting, LedgerTransaction
from core.adapters.queue import after_commit, enqueue
from core.adapters.redis_conn import redis_client
from core.config import AREA_INTS, int_setting
from core.dialog.booking import BOOKING as DRAFT_GROUP
from core.dialog.booking import BOOKING_DIALOG, REQUIRED_SLOTS
from core.dialog.engine import copy_data
from core.dialog.voice import VOICE_DIALOG, full_slots
from core.domain import ledger as rules
from core.domain.booking import BOOKING, LEG, LegStatus
from core.domain.dispatch import OfferStatus
from core.domain.errors import Conflict, NotFound, Unavailable, ValidationError
from core.domain.phone import mask_phone, normalize_phone
from core.domain.text import names_word
from core.logs import mask_note, scrub
from core.services import inbound, ivr, ledger, outbox
from core.services.booking import check_leg_otp
from core.services.dispatch import (
    BLOCKED_KYC,
    CUT_MARK,
    OFFER_PLACE_MIN,
    PLACE_NAME_MAX,
    booked_place_name,
    short_place_name,
)
from core.services.partner_app import LAST_FIX_KEY, LAST_SENT_KEY

log = logging.getLogger(__name__)

# What a removed text reads as. One marker for both ways out (the audit log says whether
# a person asked): ops see that something was said, not what.
REDACTED = "[removed]"
# The address of a message to an erased person: not a number, so nothing can send to it.
ERASED_ADDR = "erased"

DEFAULT_STATUS_DAYS = 30
DEFAULT_MESSAGE_DAYS = 90
DEFAULT_RUN_SECONDS = 120
MAX_RUN_SECONDS = AREA_INTS["RETENTION_RUN_SECONDS"][1] or 600  # its RQ timeout: this + 1 min
BATCH = 500  # rows per transaction: short row locks, a bounded step between time checks

CLOSED_BOOKINGS = tuple(s.value for s in BOOKING.closed)
CLOSED_LEGS = tuple(s.value for s in LEG.closed)
UNSENT = ("pending", "sending")
# Money of a customer's booking not settled yet: escrow, a refund on its way, and a rider's
# payout reversed since (ops may give it back to the customer).
HELD_FOR_CUSTOMER = (rules.AccountKind.ESCROW.value, rules.AccountKind.REFUNDS_PENDING.value,
                     rules.AccountKind.REVERSED_PAYOUTS.value)
# A partner who gave a job back after taking it was named to its customer all the same.
TOOK_THE_JOB = (OfferStatus.ACCEPTED.value, OfferStatus.CANCELLED.value)
# A recipient's name (as a sender typed it) shorter than this is not looked for in texts:
# it would be found inside too many other words.
MIN_NAME = 3
# A landmark (where a sender said a door is) shorter than this is not looked for in texts:
# a word that short ("gate", "PHC") says little of where a door is, and is found in too
# many other texts.
MIN_PLACE = 5
# The shortest our SMS cut a place's name to (a job offer: dispatch.offer_fields; the
# IVR's details SMS, ivr.DETAILS_PLACE_MIN, cut only villages' names): see _cut_in_sms.
SMS_PLACE_MIN = OFFER_PLACE_MIN
# How long after ops ended a relay with the parcel in a rider's hands ("keep it safe, call
# us": dispatch.stuck_relay_ended) the parcel is taken as not known to be back with its
# sender: the sender and that rider are not erased before (ops need their numbers and the
# pickup place to bring it back). Ops record the return when it happens (POST
# /ops/bookings/<ref>/parcel-returned, audited PARCEL_RETURNED): from then, or after this
# bound named in the refusal when nobody recorded it, they may be erased.
PARCEL_BACK_DAYS = 14
PARCEL_RETURNED = "booking.parcel_returned"  # the audit entry of a return, target booking:<ref>
# The job that deletes an erasure's photo files after its commit, and its tries while the
# photo store is away (the daily run tries what is left after them).
PHOTO_JOB = "workers.retention.delete_photos"
PHOTO_RETRY_S = [60, 300, 1800, 3 * 3600, 12 * 3600]


def status_days() -> int:
    """Days Twilio's status callbacks are kept (RETENTION_STATUS_DAYS, default 30)."""
    return int_setting("RETENTION_STATUS_DAYS", DEFAULT_STATUS_DAYS)


def message_days() -> int:
    """Days message texts and dialog drafts are kept (RETENTION_MESSAGE_DAYS, default 90).

    At least a week: a booking, its refund attempts and a handoff are over within days."""
    return int_setting("RETENTION_MESSAGE_DAYS", DEFAULT_MESSAGE_DAYS)


def run_seconds() -> int:
    """How long one daily run may work (RETENTION_RUN_SECONDS, default 120); what is left
    waits for the next day's run."""
    return int_setting("RETENTION_RUN_SECONDS", DEFAULT_RUN_SECONDS)


def _monotonic() -> float:
    return time.monotonic()  # tests move it to end a run's time budget


# --- the daily job ------------------------------------------------------------------------
#
# Each step takes the next batch after ``after`` (None: from the start), the key of the
# last row it read: the time it filters on, then the id, the columns of an index of its own
# (migration 0036) that holds only the rows that can still need it (a text redacted or an
# answer cleared leaves it; a deleted row is gone). A run reads the rows due and those it
# leaves as they are (of a booking still open; locked by someone else, skipped for the
# next run), not the years of rows done with before, nor the weeks not due yet; what a
# run skipped or cut short left is where the next one's walk starts. The conversations
# alone are walked by id (_conversations).

Key = tuple[Any, ...]
Step = Callable[[Session, Key | None, datetime], list[Key]]
_QUIET = {"synchronize_session": False}
# Written into the statement, not sent as a parameter: the partial indexes of the texts
# not redacted yet say it (migration 0036), and a prepared statement's generic plan cannot
# use them for a condition whose value it does not see.
_REDACTED_SQL = literal(REDACTED, literal_execute=True)


def _after(stmt: Any, order: tuple[Any, ...], after: Key | None) -> Any:
    """``stmt``'s next BATCH rows in ``order`` (an index's columns, the id last) after the
    key ``after``."""
    if after is not None:
        stmt = stmt.where(tuple_(*order) > tuple_(*after))
    return stmt.order_by(*order).limit(BATCH)


def _batch(stmt: Any, entity: Any, order: tuple[Any, ...], after: Key | None) -> Any:
    """As _after, the rows locked; those another transaction holds are skipped."""
    return _after(stmt, order, after).with_for_update(of=entity, skip_locked=True)


def _due(session: Session, entity: Any, order: tuple[Any, ...], after: Key | None,
         *where: Any) -> list[Key]:
    """The keys of the next batch of rows ``where``, locked. The step then changes them by
    their ids, a list the primary key finds (joined to a subquery instead, the rows could
    be found by reading the whole table)."""
    return [tuple(r) for r in session.execute(_batch(select(*order).where(*where), entity,
                                                     order, after))]


def _ids(keys: list[Key]) -> list[int]:
    return [key[-1] for key in keys]


def _status_events(session: Session, after: Key | None, cutoff: datetime) -> list[Key]:
    e = MessageStatusEvent
    keys = _due(session, e, (e.received_at, e.id), after, e.received_at < cutoff)
    if keys:
        _changed(session, delete(e).where(e.id.in_(_ids(keys))))
    return keys


# A step that reads rows it may leave as they are: the keys it read (the walk moves past
# them) and how many it changed.
Pass = Callable[[Session, Key | None, datetime], tuple[list[Key], int]]


def _all_changed(step: Step) -> Pass:
    def each(session: Session, after: Key | None, cutoff: datetime) -> tuple[list[Key], int]:
        keys = step(session, after, cutoff)
        return keys, len(keys)
    return each


# How far back the daily run looks for codes left in messages: a week of lost schedules
# or failed runs. (Older ones go with the texts, after RETENTION_MESSAGE_DAYS.)
CODE_LOOKBACK = timedelta(days=7)


def _codes(session: Session, after: Key | None, cutoff: datetime) -> tuple[list[Key], int]:
    """One-time codes in messages done with before ``cutoff``: Twilio took them that long
    ago (or, never taken, they were written so long ago), whatever their last report. Read
    are those with four digits in a row; masked, those that show a code where their row
    recorded it (a row written before the record: whose text is a catalog code text's).
    The week's messages only, by their index (a redacted text has no code to mask)."""
    m = OutboxMessage
    since = func.coalesce(m.sent_at, m.created_at)
    batch = session.execute(_after(select(since.label("at"), m.id, m.body, m.code_spans).where(
        since < cutoff, since >= cutoff - CODE_LOOKBACK, m.body != _REDACTED_SQL,
        m.status.not_in(UNSENT), m.body.regexp_match("[0-9]{4}")), (since, m.id), after)).all()
    carrying = [r.id for r in batch if outbox.carries_code(r.body, r.code_spans)]
    masked = outbox.mask_codes(session, carrying)[1] if carrying else 0
    return [(r.at, r.id) for r in batch], masked


def _code_answers(session: Session, after: Key | None,
                  cutoff: datetime) -> tuple[list[Key], int]:
    """Call answers that read a pickup code out given before ``cutoff`` and left in plain
    text: the call's end and the job that blanks them minutes after the read were both
    lost (no status callback, Redis lost the job). Found by the mark the answer got when
    it was stored (ivr.CODE_CHANNEL), whatever the code texts say now; one stored before
    answers were marked, by today's texts (ivr.says_a_code). Blanked as the call's end
    blanks them (a very late retry of the webhook hears the call is over)."""
    e = InboundEvent
    batch = session.execute(_after(select(e.received_at, e.id, e.channel, e.response_body).where(
        e.response_body.is_not(None), e.provider == ivr.PROVIDER,
        e.received_at < cutoff, e.received_at >= cutoff - CODE_LOOKBACK,
        e.response_body != ivr.BLANKED_ANSWER), (e.received_at, e.id), after)).all()
    coded = [r.id for r in batch
             if r.channel == ivr.CODE_CHANNEL or ivr.says_a_code(r.response_body)]
    blanked = _changed(session, update(e).where(e.id.in_(coded), e.response_body.is_not(None))
                       .values(response_body=ivr.BLANKED_ANSWER)) if coded else 0
    return [(r.received_at, r.id) for r in batch], blanked


def _outbox(session: Session, after: Key | None, cutoff: datetime) -> tuple[list[Key], int]:
    """Bodies of messages sent long ago about a finished booking whose money is settled
    (_money_held: ops still decide on one that is not), or about none. The batch
    is walked first, then its bookings are looked up by id: asked in the walk's statement,
    "finished" read every finished booking ever (a hash of them, built again each batch).
    Only the rows to redact are locked (one another transaction holds: the next run)."""
    m = OutboxMessage
    old = (m.created_at < cutoff, m.status.not_in(UNSENT),
           or_(m.body != _REDACTED_SQL, m.media_url.is_not(None)))
    batch = session.execute(_after(select(m.created_at, m.id, m.booking_id).where(*old),
                                   (m.created_at, m.id), after)).all()
    booked = {r.booking_id for r in batch if r.booking_id is not None}
    finished = set(session.scalars(select(Booking.id).where(
        Booking.id.in_(booked), Booking.status.in_(CLOSED_BOOKINGS)))) if booked else set()
    finished -= _unsettled(session, finished)
    due = [r.id for r in batch if r.booking_id is None or r.booking_id in finished]
    ids = list(session.scalars(select(m.id).where(m.id.in_(due), *old)
                               .with_for_update(skip_locked=True))) if due else []
    if ids:
        _changed(session, update(m).where(m.id.in_(ids)).values(body=REDACTED, media_url=None))
        _redact_templates(session, ids)
        _mask_errors(session, ids)
    return [(r.created_at, r.id) for r in batch], len(ids)


def _mask_errors(session: Session, outbox_ids: list[int]) -> int:
    """The numbers in these messages' last errors masked, as their texts go: Twilio's
    error text names the number it refused ("The 'To' number +9198... is not a valid
    phone number"). The rest of the error (what went wrong) stays, with error_code; how
    many were changed."""
    m = OutboxMessage
    masked = []
    for i, error in session.execute(select(m.id, m.last_error).where(
            m.id.in_(outbox_ids), m.last_error.is_not(None))):
        if (kept := scrub(error or "")[:300]) != error:
            masked.append({"id": i, "last_error": kept})
    if masked:
        session.execute(update(m), masked)  # by primary key, one statement
    return len(masked)


# What scrub would still change in a message's last error: models.UNMASKED_ERROR, which
# the partial index of the errors left to mask says too (migration 0053).
_UNMASKED_ERROR = UNMASKED_ERROR
# In the statement (as _REDACTED_SQL): the partial index of the errors left to mask
# (migration 0053, _redacted_errors' WHERE written out) serves only a condition whose value
# the plan sees. Changed here (or that WHERE), the index no longer serves it: a new
# migration builds one that says the new form (tests/test_ops_s38.py checks the plan).
_UNMASKED_ERROR_SQL = literal(_UNMASKED_ERROR, literal_execute=True)
# A message that failed, or that Twilio could not deliver, is the only one left with a
# last error: one Twilio took clears it (outbox._handed_over), as it always has.
_FAILED = ("failed", "undelivered")


def _redacted_errors(session: Session, after: Key | None,
                     cutoff: datetime) -> tuple[list[Key], int]:
    """The last errors of messages whose texts went before their errors were masked with
    them (_mask_errors came later: before, the redaction left Twilio's error text as it
    was, the full number it refused in it), masked now as _mask_errors masks them; the
    _outbox pass never reads a redacted text again. Found by the failed messages' status
    and what the error still shows (_UNMASKED_ERROR), by the partial index of exactly
    those (migration 0053): a masked one leaves it and is not read again, and masking one
    again changes nothing. ``cutoff``: unused (any age: the text is gone)."""
    m = OutboxMessage
    batch = session.execute(_after(select(m.id).where(
        m.status.in_(_FAILED), m.body == _REDACTED_SQL, m.last_error.is_not(None),
        m.last_error.regexp_match(_UNMASKED_ERROR_SQL, flags="i")), (m.id,), after)).all()
    ids = list(session.scalars(select(m.id).where(m.id.in_([r.id for r in batch]))
                               .with_for_update(skip_locked=True))) if batch else []
    return [(r.id,) for r in batch], _mask_errors(session, ids) if ids else 0


def _money_held(booking_id: Any) -> Any:
    """The condition that money of the booking ``booking_id`` (a column) is not settled:
    escrow, a refund on its way (or failed, for ops), a rider's payout reversed since and
    waiting for ops (HELD_FOR_CUSTOMER). Such a booking is not done with, however long
    closed: ops decide about that money on its messages and its proof of delivery (a
    reversed payout: did the parcel arrive?), and the erasure of its customer or rider is
    refused for it (_refuse_if_in_use). By the postings' booking index."""
    p = LedgerPosting
    return exists(select(p.account).where(
        p.booking_id == booking_id, p.account_kind.in_(HELD_FOR_CUSTOMER))
        .group_by(p.account).having(func.sum(p.amount_paise) != 0))


def _unsettled(session: Session, booking_ids: set[int]) -> set[int]:
    """Those of these bookings whose money is not settled (_money_held)."""
    if not booking_ids:
        return set()
    p = LedgerPosting
    return set(session.scalars(select(p.booking_id).where(
        p.booking_id.in_(sorted(booking_ids)), p.account_kind.in_(HELD_FOR_CUSTOMER))
        .group_by(p.booking_id, p.account).having(func.sum(p.amount_paise) != 0)))


def _redact_templates(session: Session, outbox_ids: list[int]) -> None:
    """A template send carries the message's text as its variable."""
    if outbox_ids:
        t = WhatsappTemplateSend
        _changed(session, update(t).where(t.outbox_id.in_(outbox_ids))
                 .values(content_variables={"1": REDACTED}))


def _changed(session: Session, stmt: Any) -> int:
    """Run an UPDATE or DELETE; how many rows it changed."""
    return cast(CursorResult[Any], session.execute(stmt, execution_options=_QUIET)).rowcount


def _inbound_answers(session: Session, after: Key | None, cutoff: datetime) -> list[Key]:
    """Our stored answer to an SMS or a call (kept to answer Twilio's retries, which come
    within minutes); the row stays, so a very late retry is still not handled twice."""
    e = InboundEvent
    keys = _due(session, e, (e.received_at, e.id), after,
                e.received_at < cutoff, e.response_body.is_not(None))
    if keys:
        _changed(session, update(e).where(e.id.in_(_ids(keys))).values(response_body=None))
    return keys


def _handoff_messages(session: Session, after: Key | None, cutoff: datetime) -> list[Key]:
    m = HandoffMessage
    closed = exists().where(Handoff.id == m.handoff_id, Handoff.status == "closed")
    keys = _due(session, m, (m.created_at, m.id), after,
                m.created_at < cutoff, m.body != _REDACTED_SQL, closed)
    if keys:
        _changed(session, update(m).where(m.id.in_(_ids(keys))).values(body=REDACTED))
    return keys


def _conversations(session: Session, after: Key | None, cutoff: datetime) -> list[Key]:
    """A dialog nobody touched for so long starts afresh: its slots and drafts go. The
    language stays on the person (people.preferred_language). Walked by id, one pass over
    the table (one row per contact): an index on the time would cost every chat turn a
    write."""
    c = Conversation
    keys = _due(session, c, (c.id,), after,
                c.updated_at < cutoff, c.handoff.is_(False), c.state != {})
    if keys:
        _changed(session, update(c).where(c.id.in_(_ids(keys)))
                 .values(state={}, step="start", misses=0))
    return keys


def _idempotency_records(session: Session, after: Key | None, cutoff: datetime) -> list[Key]:
    """A replayable API answer (a booking, recipient and all): a retry comes within
    minutes, not months."""
    r = IdempotencyRecord
    keys = _due(session, r, (r.created_at, r.id), after, r.created_at < cutoff)
    if keys:
        _changed(session, delete(r).where(r.id.in_(_ids(keys))))
    return keys


# --- codes in saved API answers ---------------------------------------------------------
#
# POST /ops/legs/{id}/new-code answers a new pickup or drop code for ops to read out on the
# phone. Sent with an Idempotency-Key, the answer is saved so that a retry shows the same
# code (core.api.idempotency): the one place that code is kept in clear. A backup or a
# support query reading idempotency_records must not find codes that still open parcels.

# How long a saved new-code answer keeps its code for a retry with the same key. A client
# retries a lost answer within seconds (a timeout, a double tap, the console reloaded);
# an operator who lost the code after a quarter of an hour makes a new one.
CODE_REPLAY = timedelta(minutes=15)
# How far back the minute sweep looks: after a longer stop of the workers the daily run
# redacts what is left (_saved_codes).
CODE_SWEEP_LOOKBACK = timedelta(hours=2)


def _holds_code() -> tuple[Any, ...]:
    """Saved answers of POST /ops/legs/{id}/new-code whose code is still in them, as their
    partial index holds them (api_models.HOLDS_CODE)."""
    return (text(HOLDS_CODE),)


def _redact_code(record: IdempotencyRecord) -> None:
    record.response = {**record.response, "code": REDACTED}


def _code_works(session: Session, answer: dict[str, Any]) -> bool:
    """The saved answer's code is still its leg's code of that kind (not replaced by a
    newer one, an unlock's, or taken back with the job)."""
    leg = session.get(Leg, answer["leg_id"])
    return leg is not None and check_leg_otp(leg, answer["kind"], str(answer["code"]))


def _code_kept(session: Session, record: IdempotencyRecord, now: datetime) -> bool:
    return (record.response.get("code") not in (None, REDACTED)
            and record.created_at > now - CODE_REPLAY
            and _code_works(session, record.response))


def saved_code_kept(session: Session, record: IdempotencyRecord) -> bool:
    """Whether a retry of POST /ops/legs/{id}/new-code may be answered ``record``, its
    saved answer, code and all: within CODE_REPLAY, while the code works. Else the code
    is redacted now, in the caller's transaction (commit it before answering)."""
    if _code_kept(session, record, clock.now()):
        return True
    if record.response.get("code") != REDACTED:
        _redact_code(record)
    return False


def forget_void_codes(session: Session, leg: Leg) -> int:
    """Ops made a new code for ``leg``: the saved answers of its codes made before that no
    longer work are redacted at once (not by the next sweep); how many."""
    r = IdempotencyRecord
    void = [rec for rec in session.scalars(select(r).where(
        r.created_at > clock.now() - CODE_REPLAY, r.response["leg_id"].astext == str(leg.id),
        *_holds_code()).with_for_update())
        if not check_leg_otp(leg, rec.response["kind"], str(rec.response["code"]))]
    for rec in void:
        _redact_code(rec)
    return len(void)


def redact_saved_codes(now: datetime | None = None) -> int:
    """The minute sweep's part (workers.outbox.sweep): saved new-code answers past
    CODE_REPLAY, or whose code no longer works, lose the code; how many. Those another
    transaction holds are left for the next minute."""
    now = now or clock.now()
    r = IdempotencyRecord
    with transaction() as session:
        held = session.scalars(_batch(select(r).where(
            r.created_at >= now - CODE_SWEEP_LOOKBACK, *_holds_code()), r,
            (r.created_at, r.id), None)).all()
        due = [rec for rec in held if not _code_kept(session, rec, now)]
        for rec in due:
            _redact_code(rec)
    return len(due)


def _saved_codes(session: Session, after: Key | None, cutoff: datetime) -> list[Key]:
    """The daily run's part: codes in saved new-code answers made before ``cutoff`` that
    the minute sweep left (the workers stopped), however old (those saved before the
    sweeps were, too): their index holds only the answers still holding a code."""
    r = IdempotencyRecord
    keys = _due(session, r, (r.created_at, r.id), after, r.created_at < cutoff,
                *_holds_code())
    for rec in session.scalars(select(r).where(r.id.in_(_ids(keys)))):
        _redact_code(rec)
    return keys


def _pod_photos(session: Session, after: Key | None, cutoff: datetime) -> list[Key]:
    """Proof-of-delivery photos (the parcel, the recipient's door) taken long ago of a
    finished booking whose money is settled (not one whose reversed payout waits for ops:
    the photo is what they decide on, _money_held): the rows go now, the files after the
    commit (``_forget_files``)."""
    p = PodPhoto
    finished = exists().where(Leg.id == p.leg_id, Booking.id == Leg.booking_id,
                              Booking.status.in_(CLOSED_BOOKINGS),
                              ~_money_held(Booking.id))
    keys = _due(session, p, (p.created_at, p.id), after, p.created_at < cutoff, finished)
    if not keys:
        return keys
    gone = session.execute(delete(p).where(p.id.in_(_ids(keys)))
                           .returning(p.leg_id, p.storage_uri), execution_options=_QUIET).all()
    uris = {r.storage_uri for r in gone}
    if uris:
        # Through the ORM: dispatch's cache of partner facts watches leg writes.
        for leg in session.scalars(select(Leg).where(
                Leg.id.in_(sorted({r.leg_id for r in gone})), Leg.pod_photo_url.in_(uris))):
            leg.pod_photo_url = None
    _forget_files(session, uris)
    return keys


def _forget_files(session: Session, uris: Iterable[str | None], *,
                  job: str | None = None) -> None:
    """Photo files to delete once this transaction commits: kept in pod_photo_deletions
    (with the commit: a store away, a worker killed, loses none); ``job``: an RQ job of
    that id deletes them after the commit, else the caller does (the daily run)."""
    found = sorted({u for u in uris if u and storage.is_stored(u)})
    if not found:
        return
    session.execute(pg_insert(PodPhotoDeletion).values([{"storage_uri": u} for u in found])
                    .on_conflict_do_nothing(index_elements=["storage_uri"]))
    if job is not None:
        job_id = job
        after_commit(session, lambda: enqueue(PHOTO_JOB, job_id=job_id,
                                              retry=Retry(max=len(PHOTO_RETRY_S),
                                                          interval=PHOTO_RETRY_S)))


def delete_photo_files(deadline: float | None = None) -> tuple[int, int]:
    """Delete the photo files waiting in pod_photo_deletions, each row with its file, until
    none is left, ``deadline`` (a _monotonic time) passes (checked before each file: one
    store call may take long, core.adapters.storage.s3_config) or the store is away:
    (deleted, left). A file already gone counts as deleted; one the store could not delete
    keeps its row for the next try, and so does one not tried. A store away (Unavailable)
    ends the batch and the call: the next try comes later (the job's retry, the next
    day's run), not 500 more calls that time out; a URI of a store not configured here
    (storage.NotThisStore) or a bad one keeps its row and the walk goes on. The rows of
    the files deleted go in their batch's commit; a file deleted whose row a crash kept is
    deleted again, which is no error. Rows another run holds are skipped."""
    d = PodPhotoDeletion
    deleted = failed = 0
    after: Key | None = None
    stopped = False
    while not stopped:
        with transaction() as session:
            batch = session.execute(_batch(select(d.id, d.storage_uri), d, (d.id,),
                                           after)).all()
            gone = []
            for row in batch:
                if deadline is not None and _monotonic() >= deadline:
                    stopped = True
                    break
                after = (row.id,)
                try:
                    storage.delete_photo(row.storage_uri)
                except (storage.NotThisStore, ValidationError) as exc:
                    failed += 1
                    log.warning("photo file not deleted yet", extra={"code": exc.code})
                except Unavailable as exc:
                    failed += 1
                    log.warning("photo store away: photo files left for later",
                                extra={"code": exc.code})
                    stopped = True
                    break
                else:
                    gone.append(row.id)
            if gone:
                _changed(session, delete(d).where(d.id.in_(gone)))
        deleted += len(gone)
        if len(batch) < BATCH:
            break
    if stopped:  # those not tried wait too
        with transaction() as session:
            failed += session.scalar(select(func.count()).select_from(d).where(
                true() if after is None else d.id > after[0])) or 0
    return deleted, failed


# How long the erasure's photo job may work (its RQ timeout is RQ's default, 180 s: this,
# and one store call begun before it ends, fit in it); what is left, its retry does.
PHOTO_JOB_SECONDS = 90


def photo_job() -> int:
    """The RQ job deleting an erasure's photo files, for PHOTO_JOB_SECONDS at most; raises
    while some are left, so RQ tries again (PHOTO_RETRY_S). How many went."""
    deleted, left = delete_photo_files(_monotonic() + PHOTO_JOB_SECONDS)
    if left:
        raise Unavailable(f"{left} photo files not deleted yet; tried again later",
                          code="photo_store_unavailable")
    return deleted


def photo_job_id(person_id: int) -> str:
    return f"erased-photos-{person_id}"


class RetentionIncomplete(Unavailable):
    """A daily run that did the database steps but not those on Redis (Redis away);
    ``done``: how many rows each step changed, as run() returns them."""

    def __init__(self, message: str, done: dict[str, int], *, code: str | None = None):
        super().__init__(message, code=code)
        self.done = done


def run(now: datetime | None = None) -> dict[str, int]:
    """One daily run, batch by batch until done or RETENTION_RUN_SECONDS are up; how many
    rows each step changed (``unfinished``: 1 if time ran out first). RetentionIncomplete
    when its Redis steps failed (the database steps ran all the same)."""
    now = now or clock.now()
    status_cutoff = now - timedelta(days=status_days())
    message_cutoff = now - timedelta(days=message_days())
    deadline = _monotonic() + run_seconds()
    passes: list[tuple[str, Pass, datetime]] = [
        ("status_events", _all_changed(_status_events), status_cutoff),
        ("outbox_messages", _outbox, message_cutoff),
        ("redacted_errors", _redacted_errors, message_cutoff),
        ("inbound_answers", _all_changed(_inbound_answers), message_cutoff),
        ("handoff_messages", _all_changed(_handoff_messages), message_cutoff),
        ("conversations", _all_changed(_conversations), message_cutoff),
        ("idempotency_records", _all_changed(_idempotency_records), message_cutoff),
        ("pod_photos", _all_changed(_pod_photos), message_cutoff),
    ]
    done = {name: 0 for name, _, _ in passes}
    # Redis first: one short pass, whatever the database steps leave for tomorrow. An entry
    # with no time (set aside before entries carried one) is of unknown age: it goes too.
    # Redis away stops neither the other Redis step nor the database's: the run does them,
    # then fails (RetentionIncomplete), so that the failure is seen; tomorrow's run tries
    # again (workers.retention.run schedules it whatever happens).
    redis_error: RedisError | None = None
    done["dead_letters"] = done["partner_positions"] = 0
    redis_steps: list[tuple[str, Callable[[], int]]] = [
        ("dead_letters", lambda: inbound.drop_dead_letters(
            lambda d: d.at is None or d.at < message_cutoff.timestamp())),
        # An erased partner's positions and last exact fix: the erasure removes them before
        # its commit; one written while it ran (or left by an erasure before) goes here.
        ("partner_positions", forget_erased_positions),
    ]
    for name, redis_step in redis_steps:
        try:
            done[name] = redis_step()
        except RedisError as exc:
            if redis_error is None:
                log.warning("retention run: Redis cannot be reached; its steps wait for "
                            "the next run", extra={"step": name, "error": type(exc).__name__})
            redis_error = redis_error or exc
    unfinished = False
    # Codes a lost schedule left in messages done with for a day (outbox.mask_due_codes
    # masks the others within minutes).
    passes.append(("codes", _codes, now - outbox.CODE_KEPT_UNSETTLED))
    # Codes read out on calls whose end and blanking job were both lost (ivr blanks the
    # others once the call ends, or minutes after the read): past the longest a call keeps
    # a code, no retry of that webhook can come.
    passes.append(("code_answers", _code_answers, now - ivr.CODE_KEPT_FOR_CALL))
    # Codes in saved new-code answers the minute sweep left (redact_saved_codes).
    passes.append(("saved_codes", _all_changed(_saved_codes), now - CODE_REPLAY))
    done["codes"] = done["code_answers"] = done["saved_codes"] = 0
    for name, step_pass, cutoff in passes:
        after: Key | None = None
        while not unfinished:
            if _monotonic() >= deadline:
                unfinished = True
                break
            with transaction() as session:
                seen, changed = step_pass(session, after, cutoff)
            done[name] += changed
            if len(seen) < BATCH:
                break
            after = max(seen)
    # The files of the photos deleted above, and any an erasure's job could not delete.
    done["photo_files"], done["photo_files_left"] = delete_photo_files(deadline)
    done["unfinished"] = int(unfinished)
    log.info("retention run", extra=done)
    if redis_error is not None:
        raise RetentionIncomplete("retention run: the Redis steps failed (Redis away); the "
                                  "database steps ran", done,
                                  code="queue_unavailable") from redis_error
    return done


# --- erasure on request --------------------------------------------------------------------


@dataclass
class Erasure:
    """What one erasure changed, by kind; all zero when it had been done before."""

    person_id: int | None  # None: a recipient with no account, erased by her number
    counts: dict[str, int] = field(default_factory=dict)
    # The names it took (the person's, a partner's first name, the recipients' of the
    # bookings it erased): the audit entry's reason must not keep them (without_names).
    names: set[str] = field(default_factory=set)

    @property
    def changed(self) -> bool:
        return any(self.counts.values())

    def add(self, kind: str, n: int) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n


def _addresses(*phones: str | None) -> set[str]:
    """The outbox addresses a phone number (or WhatsApp id) is reached at."""
    found = set()
    for p in phones:
        if p:
            raw = p.removeprefix("whatsapp:")
            found |= {raw, f"whatsapp:{raw}"}
            if raw.isdigit():  # a WhatsApp id: a landline's messages go to its +digits
                found.add(f"whatsapp:+{raw}")
    return found


def _rounded(col: Any) -> Any:
    """A coordinate to two decimals (about a kilometre: the village, not the house)."""
    return func.round(col.cast(Numeric), 2).cast(Float)


def _coarse_places(cols: tuple[Any, ...]) -> tuple[dict[str, Any], Any]:
    """Values rounding ``cols`` (by column name), and the condition that one is not yet."""
    return ({c.key: _rounded(c) for c in cols}, or_(*(c != _rounded(c) for c in cols)))


def erase_person(session: Session, person_id: int) -> Erasure:
    """Erase what identifies a person, on their request, in the caller's transaction.

    Refused (Conflict) for an operator, a partner not blocked (KYC suspended or rejected),
    and while anything of theirs is under way: a booking they made or receive, a leg they
    carry, money held or owed for them (a delivered leg's payout not released or not paid
    out yet included), a parcel of theirs ops left with a rider to bring back (for
    PARCEL_BACK_DAYS), a conversation waiting for a person. The bookings erased are those
    found then, not one made by or to them while it runs. Then: the
    person keeps only their id and role; their bookings lose the recipient, the landmarks
    and exact places; the photos of their bookings and of bookings to them go (the files
    after the commit); the messages to them or about their bookings, their conversations
    and handoff messages lose their text; their sign-ins end; a partner's name, vehicle
    plates and payout account go (the photos they took stay with those bookings). The
    ledger, payments and transitions stay. Where others kept them goes too: the senders of
    bookings to them lose the texts naming them or the landmarks erased (their chats with
    the bot, those bookings' messages, their handoffs with ops, open ones too); a booking
    draft naming them
    (anyone's, by their number; a sender's, by the name given) loses the recipient, whom
    its writer is asked for again; handoffs waiting for ops lose the messages that say
    their number; call answers stored for Twilio's retries that say their number (or their
    recipients'), written or read out digit by digit, or a landmark erased; their messages
    in Redis's dead-letter list and their inboxes there (accepted, not handled yet);
    their messages parked while Redis was away, not handled yet. A number ops moved them
    off (people.former_phones) counts as theirs from when they came to it (the first we
    knew of them at it: their person row for the number they came with, ops' move onto
    it for another) until they left it:
    the messages and bookings sent to it then (and those under way to them at a move,
    which followed them to the new number), its chats they left (unless someone wrote
    from it since: those are the new holder's), the texts written then that say it (one
    of no known time goes too), and the booking drafts naming it last active then (one
    touched since is for its holder now); what came before or after is its other
    holders', and stays. Their former numbers go too. A number of theirs
    that was someone else's before (in another person's former_phones: the telco gave a
    partner's old SIM to them) counts as theirs only since that one left it (the latest
    leaving): the messages and bookings sent to it before, the handoffs opened by the
    one before them in a chat they took up, and the dated texts written before that say
    it stay (a text of no known time, a dead letter set aside before entries carried
    one, goes; a booking draft naming it is about whoever holds it now). Run again, it
    finds nothing left to change. A later message from the same number makes a new
    person.
    """
    # Who may have named them, read before any lock: the drafts naming them are locked
    # with their own conversations, below.
    known = session.execute(select(Person.phone, Person.wa_id, Person.former_phones,
                                   Person.created_at).where(Person.id == person_id)).first()
    if known is None:
        raise NotFound("no such person", code="not_found")
    former = _former(known.former_phones)
    contacts = list(session.scalars(select(Conversation.contact).where(
        Conversation.person_id == person_id)))
    # Their numbers that were someone else's before (a partner's old SIM the telco gave
    # them): theirs only since that one left it (_recycled); a number of theirs ops moved
    # them onto, their current one too, only since they came to it (_came_to), and a
    # former one until they left it (``spans``).
    moves = _moves(session, person_id)
    recycled = _recycled(session, person_id, known.phone, known.wa_id, *former, *contacts,
                         former=former)
    for ten, came in _came_to([*former, *([known.phone] if known.phone else [])],
                              known.created_at, moves).items():
        recycled[ten] = max(recycled.get(ten, came), came)
    spans = _spans(recycled, former)
    senders = _senders_of(session, known.phone, former, recycled)
    named = _ten_digits(known.phone, known.wa_id, *former, *contacts)
    # Lock order as a chat turn takes it (its conversation, then the person row when it
    # books), so a turn running now either finished first or finds the contact gone: their
    # conversations, those of their former numbers they left (nobody wrote from there
    # since), and the other contacts' drafts naming them, all in id order, first.
    left = _left_at(former)
    # A draft naming a number of theirs they came to from someone else is about them
    # whenever written (the number is theirs now); one naming a former number, only if
    # last active while it was theirs.
    formerly = _ten_digits(*former)
    locked = list(session.scalars(select(Conversation).where(or_(
        Conversation.person_id == person_id, left,
        _drafts_naming(named, senders, {ten: span for ten, span in spans.items()
                                        if ten in formerly})))
        .order_by(Conversation.id).with_for_update()))
    left_behind = {c.id for c in locked if c.person_id is None and c.contact in
                   _contacts(former)}
    convs = [c for c in locked if c.person_id == person_id or c.id in left_behind]
    drafts = [c for c in locked if c.person_id != person_id and c.id not in left_behind]
    person = session.get(Person, person_id, with_for_update=True)
    if person is None:
        raise NotFound("no such person", code="not_found")
    partner = session.scalar(select(PartnerProfile).where(
        PartnerProfile.person_id == person.id).with_for_update())
    conv_ids = [c.id for c in convs]
    # The bookings this erasure takes: theirs and those sent to them (by the phone, read
    # before the person row loses it, below), fixed before the check that none is under
    # way. One made by or to them while the erasure runs is not among them: it is under
    # way, and keeps its recipient and places (found anew at each step, it would lose
    # them: erase_recipient does the same).
    own_ids = list(session.scalars(select(Booking.id).where(
        Booking.customer_id == person.id).order_by(Booking.id)))
    received_ids = list(session.scalars(select(Booking.id).where(or_(
        _sent_to(person.phone, recycled), *_sent_to_former(former, recycled),
        _followed(moves, [person.phone, *former]))).order_by(Booking.id)))
    _refuse_if_in_use(session, person, partner, conv_ids, former, recycled)

    done = Erasure(person.id)
    # The names this erasure takes, read before they go: kept out of its audit entry.
    done.names |= _names([person.name, partner.first_name if partner else None,
                          *session.scalars(select(Booking.recipient_name).where(
                              _among(Booking.id, own_ids + received_ids)))])
    own = select(Booking.id).where(_among(Booking.id, own_ids))
    received = select(Booking.id).where(_among(Booking.id, received_ids))
    recipients = set(session.scalars(select(Booking.recipient_phone).where(
        _among(Booking.id, own_ids), Booking.recipient_phone.is_not(None)).distinct()))
    # Where the doors are, as their bookings and those to them say: texts that say it go
    # too (a rider's job offer, a stored answer to his PICK), read before the bookings
    # lose them.
    places = _landmarks(session, own_ids, received_ids)
    # What the texts others wrote about the bookings sent to them (a sender's rating
    # comment, the parcel's description) must lose: their names, as they and their
    # senders gave them, and where their door is.
    hers = Said(_names([person.name, partner.first_name if partner else None,
                        *session.scalars(select(Booking.recipient_name).where(
                            _among(Booking.id, received_ids)))]),
                _landmarks(session, [], received_ids))
    # Their own contacts' messages, whenever sent (since the holder before them left the
    # number, if one did); a former number's, until they left it (after that, whoever
    # holds it now: _erase_messages).
    theirs = _addresses(person.phone, person.wa_id,
                        *(c.contact for c in convs if c.id not in left_behind))
    # Read before the bookings lose the recipient: the senders' saved answers (replayed
    # on a retry) hold the recipient's name and the exact drop of these bookings.
    received_refs = list(session.scalars(select(Booking.reference).where(
        Booking.id.in_(received))))
    # A text that says a number of theirs is about them if written while it was theirs
    # (``spans``: after someone else left it or they came to it, until they left it;
    # one of no known time, as about its holder now, goes).
    numbers = _ten_digits(person.phone, person.wa_id, *former, *(c.contact for c in convs))
    _erase_messages(session, done, own, theirs, _addresses(*recipients), former, recycled)
    # Before the drafts lose the recipient: the names their writers gave are read there.
    _erase_recipient_copies(session, done, received, numbers, senders, drafts, places,
                            spans)
    _erase_waiting_handoffs(session, done, numbers, spans)
    _scrub_drafts(done, drafts)
    _erase_stored_answers(session, done, numbers | _ten_digits(*recipients), places,
                          spans)
    # Before the bookings lose the recipient's number, by which ``received`` finds them.
    _erase_photos(session, done, own, received, photo_job_id(person.id))
    _erase_bookings(session, done, own, received, hers)
    _scrub_history(session, done, _among(Booking.id, own_ids + received_ids),
                   Said(done.names, places))

    # A handoff is of the person it was opened for: one in a conversation they took up
    # at a recycled number is its former holder's.
    handoffs = select(Handoff.id).where(or_(Handoff.person_id == person.id, and_(
        Handoff.conversation_id.in_(conv_ids), Handoff.person_id.is_(None))))
    done.add("handoff_messages", _changed(session, update(HandoffMessage).where(
        HandoffMessage.handoff_id.in_(handoffs), HandoffMessage.body != REDACTED)
        .values(body=REDACTED)))
    for conv in convs:
        # A new message from that number finds no conversation and makes a new person.
        conv.contact, conv.person_id = f"erased:{conv.id}", None
        conv.state, conv.step, conv.misses, conv.handoff = {}, "start", 0, False
        conv.last_inbound_at = None
    done.add("conversations", len(convs))
    done.add("sessions", _changed(session, update(ApiSession).where(
        ApiSession.person_id == person.id, ApiSession.revoked_at.is_(None))
        .values(revoked_at=clock.now())))
    done.add("records", _changed(session, delete(IdempotencyRecord).where(
        IdempotencyRecord.person_id == person.id)))
    _scrub_saved_answers(session, done, received_refs)
    if partner is not None:
        _erase_partner(session, done, partner)
    _erase_dead_letters(done, numbers, spans)
    _erase_inboxes(session, done, theirs, [person.id])
    _erase_parked(session, done, theirs)
    # Their STOP outlives them, under a hash of the number: nobody new at that number is
    # written to before they say START (outbox.NumberOptOut); a block of our WhatsApp
    # number, until the number writes to us there.
    outbox.keep_opt_out(session, [person.phone, person.wa_id], whatsapp=person.opted_out,
                        sms=person.sms_opted_out, wa_blocked=bool(person.wa_blocked))
    if any((person.name, person.phone, person.wa_id, person.preferred_language,
            person.former_phones)):
        person.name = person.phone = person.wa_id = person.preferred_language = None
        person.former_phones = None
        done.add("people", 1)
    session.flush()
    return done


RECIPIENT_ERASED = "recipient.erase"  # the audit log's action


@dataclass
class RecipientErasure(Erasure):
    """What erasing a recipient by her number changed, and the bookings she received
    (found by her number: none once she was erased)."""

    booking_ids: list[int] = field(default_factory=list)


def erase_recipient(session: Session, phone: str, *, actor: str,
                    reason: str) -> RecipientErasure:
    """Erase a parcel's recipient who has no account (her number is only on the bookings
    sent to her, or on a row her STOP or her call made: that row is erased as
    ``erase_person`` does, her opt-out kept), on her request, in the caller's
    transaction; audited (``actor``: who, as the audit log names them; ``reason`` kept
    without the names it took, its phone numbers masked and a bank account or Aadhaar
    number cut to its last 4: logs.mask_note).

    ``phone`` as typed (any form ``normalize_phone`` reads): ValidationError ``bad_phone``.
    Refused (Conflict) while a booking to her is not finished (``in_flight``: the rider
    needs her number and she her drop code; ops erase her once it is delivered or
    cancelled), and for a number an account holds (``has_account``: an operator, a
    partner, someone who booked or signed in; erase them by their person id, which takes
    everything of theirs; the error names the id).

    Then, as ``erase_person`` does for the bookings a person received: those bookings lose
    her name, number, the drop's landmark and exact place (their ids, money, statuses and
    the ledger stay), their photos go (her door; the files after the commit); the messages
    to her lose text and address; the texts naming her or saying her drop's landmark (the
    senders' chats with the bot, those bookings' messages to riders and ops, handoffs,
    booking drafts, stored SMS and call answers, Redis's dead letters) lose it; her
    messages parked while Redis was away go. Her
    opt-out, if kept, stays (a hash only). A number that was someone else's before (a
    partner's old SIM: people.former_phones) is hers only since that one left it: what
    was sent to it or said of it before stays theirs, as ``erase_person`` leaves it. Run
    again, it finds nothing (no booking has her number) and records nothing. The audit
    entry names the bookings by id, never the number."""
    number = normalize_phone(phone)
    holders = list(session.scalars(select(Person.id).where(or_(
        Person.phone == number, Person.wa_id == number.removeprefix("+")))
        .order_by(Person.id)))
    account = next((pid for pid in holders if _holds_account(session, pid)), None)
    if account is not None:
        raise Conflict(f"this number is person {account}'s: erase them by their person id; "
                       "nothing was changed", code="has_account", field="phone")
    # A row her STOP or her call made (no account: _holds_account) is erased as a person
    # is, first (its conversations and the drafts naming her locked in a chat turn's
    # order; the bookings sent to her read before they lose her number): her opt-out
    # stays, under a hash (outbox.keep_opt_out), and the row keeps only its id and role.
    # A number that was someone else's before (a partner's old SIM) is hers only since
    # it stopped being theirs: what came to it before is theirs (_recycled).
    recycled = _recycled(session, None, number)
    sent_to_her = _sent_to(number, recycled)
    received_before = list(session.scalars(select(Booking.id).where(
        sent_to_her).order_by(Booking.id))) if holders else []
    as_people = [erase_person(session, pid) for pid in holders]
    senders = _senders_of(session, number, recycled=recycled)
    tens = _ten_digits(number)
    # Lock order as a chat turn takes it: the booking drafts naming her first.
    drafts = list(session.scalars(select(Conversation).where(_drafts_naming(tens, senders))
                                  .order_by(Conversation.id).with_for_update()))
    found = session.execute(select(Booking.id, Booking.reference, Booking.status)
                            .where(sent_to_her).order_by(Booking.id)).all()
    on_way = next((ref for _, ref, status in found if status not in CLOSED_BOOKINGS), None)
    if on_way is not None:
        raise Conflict(f"booking {on_way} to this number is not finished yet; nothing was "
                       "changed", code="in_flight", field="phone")
    ids = [booking_id for booking_id, _, _ in found]
    done = RecipientErasure(None, booking_ids=sorted(set(ids) | set(received_before)))
    for erased in as_people:
        for kind, n in erased.counts.items():
            done.add(kind, n)
        done.names |= erased.names
    # Her name as the senders gave it, read before the bookings lose it: kept out of the
    # audit entry.
    done.names |= _names(session.scalars(select(Booking.recipient_name).where(
        _among(Booking.id, done.booking_ids))))
    # These bookings alone (finished: they stay so), not one made to her since.
    received = select(Booking.id).where(_among(Booking.id, ids))
    nothing = select(Booking.id).where(false())
    places = _landmarks(session, [], ids)  # where her door is
    _erase_messages(session, done, nothing, _addresses(number), set(), recycled=recycled)
    spans = _spans(recycled)
    _erase_recipient_copies(session, done, received, tens, senders, drafts, places, spans)
    _erase_waiting_handoffs(session, done, tens, spans)
    _scrub_drafts(done, drafts)
    _erase_stored_answers(session, done, tens, places, spans)
    _erase_photos(session, done, nothing, received, f"erased-photos-b{ids[0] if ids else 0}")
    _erase_bookings(session, done, nothing, received, Said(done.names, places))
    _scrub_history(session, done, _among(Booking.id, ids), Said(done.names, places))
    _scrub_saved_answers(session, done, [ref for _, ref, _ in found])
    _erase_dead_letters(done, tens, spans)
    _erase_inboxes(session, done, _addresses(number), holders)
    _erase_parked(session, done, _addresses(number))
    session.flush()
    if done.changed:
        ids = done.booking_ids
        people = {"person_ids": holders} if holders else {}
        session.add(AuditEntry(actor=actor, action=RECIPIENT_ERASED,
                               target=f"booking:{ids[0]}" if ids else "recipient",
                               details={"reason": mask_note(without_names(
                                   reason, done.names)), **done.counts,
                                        "booking_ids": ids, **people}))
    return done


def _holds_account(session: Session, person_id: int) -> bool:
    """Whether a person is more than a contact: an operator or a partner, someone who
    booked, or who signed in to the app. A row made by a recipient's STOP (partner_sms)
    or her call (the IVR's contact) is none of these: erase_recipient erases it.

    Her API sessions' rows are the sign of a sign-in, and a lasting one: none is ever
    deleted (expired, signed out, or revoked by an erasure or an operator, it stays). A
    purge of old sessions must keep each person's latest row, or she would be taken for
    a contact and erased with the recipient (tests/test_security_s31.py pins this)."""
    role = session.scalar(select(Person.role).where(Person.id == person_id))
    if role != "customer":
        return True
    return bool(session.scalar(select(or_(
        exists().where(PartnerProfile.person_id == person_id),
        exists().where(Booking.customer_id == person_id),
        exists().where(ApiSession.person_id == person_id)))))


def _refuse_if_in_use(session: Session, person: Person, partner: PartnerProfile | None,
                      conv_ids: list[int], former: Former | None = None,
                      recycled: Since | None = None) -> None:
    if person.role == "ops":
        raise Conflict("an operator cannot be erased", code="operator")
    if partner is not None and partner.kyc_status not in BLOCKED_KYC:
        raise Conflict("an active partner: suspend or reject their KYC first",
                       code="active_partner")
    mine = or_(Booking.customer_id == person.id, _sent_to(person.phone, recycled),
               *_sent_to_former(former or {}, recycled))
    ref = session.scalar(select(Booking.reference).where(
        mine, Booking.status.not_in(CLOSED_BOOKINGS)).order_by(Booking.id).limit(1))
    if ref is not None:
        raise Conflict(f"booking {ref} is not finished yet", code="in_flight")
    if partner is not None and session.scalar(select(Leg.id).where(
            Leg.partner_id == partner.id, Leg.status.not_in(CLOSED_LEGS)).limit(1)):
        raise Conflict("a job they took is not finished yet", code="in_flight")
    # Money still held for them: a refund on its way (or failed, for ops to see to), a
    # payout owed, a payout reversed since (ops pay it to the rider again, or refund the
    # customer). Ops may need to reach them about it.
    p = LedgerPosting
    held = session.scalar(
        select(p.account).where(p.booking_id.in_(select(Booking.id).where(
            Booking.customer_id == person.id)), p.account_kind.in_(HELD_FOR_CUSTOMER))
        .group_by(p.account).having(func.sum(p.amount_paise) != 0).limit(1))
    if held is not None or (partner is not None and (
            ledger.balance(session, rules.payable(partner.id)) != 0
            or _payout_due(session, partner.id)
            or _reversed_payout_held(session, partner.id))):
        raise Conflict("money is still held or owed for them", code="in_flight")
    # A parcel ops told its rider to keep and bring back (a relay they ended), not known
    # to be back: they need the sender's number and pickup, and the rider's, for that.
    held_parcel = _parcel_held(session, Booking.customer_id == person.id)
    if held_parcel is None and partner is not None:
        held_parcel = _parcel_held(session, Leg.partner_id == partner.id)
    if held_parcel is not None:
        ref, ended = held_parcel
        until = ended + timedelta(days=PARCEL_BACK_DAYS)
        raise Conflict(f"the parcel of booking {ref} was left with its rider on "
                       f"{ended:%Y-%m-%d} to bring back to the sender, who may be erased "
                       f"once it is taken as back, from {until:%Y-%m-%d}", code="in_flight")
    if session.scalar(select(Handoff.id).where(Handoff.status == "waiting", or_(
            Handoff.person_id == person.id, Handoff.conversation_id.in_(conv_ids))).limit(1)):
        raise Conflict("they are waiting for an operator: close that first",
                       code="in_flight")


def _payout_due(session: Session, partner_id: int) -> bool:
    """Whether a leg the partner delivered is not paid out yet: its release not in the
    ledger yet (the job still to run, or lost until the payments sweep posts it), or its
    payout released and not transferred yet. Either is paid to the payout account their
    erasure deletes. (Their payable balance alone misses the first, and may hide one
    leg's payout behind another's.) By the legs' partner index and the payable
    postings' account index."""
    t = LedgerTransaction
    released = exists().where(t.idempotency_key == func.concat("release:leg:", Leg.id))
    if session.scalar(select(Leg.id).where(
            Leg.partner_id == partner_id, Leg.status == LegStatus.DELIVERED.value,
            ~released).limit(1)) is not None:
        return True
    p = LedgerPosting
    return session.scalar(
        select(p.leg_id).where(p.account == rules.payable(partner_id).key,
                               p.leg_id.is_not(None))
        .group_by(p.leg_id).having(func.sum(p.amount_paise) > 0).limit(1)) is not None


def _parcel_held(session: Session, whose: Any) -> tuple[str, datetime] | None:
    """A booking picked by ``whose`` (a condition on Booking or Leg) whose parcel ops left with its
    rider to bring back to the sender (a relay they ended: its leg in hand failed after
    its pickup) less than PARCEL_BACK_DAYS ago: (its reference, when), the latest; None
    for none. By the legs' booking or partner index and the transitions' entity index."""
    tl = TransitionLog
    row = session.execute(
        select(Booking.reference, tl.at).join(Leg, Leg.booking_id == Booking.id)
        .join(tl, and_(tl.entity == "leg", tl.entity_id == Leg.id))
        .where(whose, Leg.status == LegStatus.FAILED.value, Leg.partner_id.is_not(None),
               tl.from_status == LegStatus.PICKED_UP.value,
               tl.to_status == LegStatus.FAILED.value,
               tl.at > clock.now() - timedelta(days=PARCEL_BACK_DAYS),
               ~_returned(Booking.reference))
        .order_by(tl.at.desc()).limit(1)).first()
    return (row.reference, row.at) if row is not None else None


def _returned(reference: Any) -> Any:
    """Whether ops recorded the booking's parcel as back with its sender."""
    return select(AuditEntry.id).where(
        AuditEntry.action == PARCEL_RETURNED,
        AuditEntry.target == func.concat("booking:", reference)).exists()


def returned(session: Session, booking: Booking) -> bool:
    """Whether ops recorded the booking's parcel as back with its sender."""
    return bool(session.scalar(select(_returned(booking.reference))))


def parcel_out(session: Session, booking: Booking) -> Leg | None:
    """The leg whose rider ops left the booking's parcel with to bring back to its sender
    (a relay they ended after his pickup), not yet recorded as back; None if none."""
    if returned(session, booking):
        return None
    tl = TransitionLog
    return session.scalar(
        select(Leg).join(tl, and_(tl.entity == "leg", tl.entity_id == Leg.id))
        .where(Leg.booking_id == booking.id, Leg.status == LegStatus.FAILED.value,
               Leg.partner_id.is_not(None), tl.from_status == LegStatus.PICKED_UP.value,
               tl.to_status == LegStatus.FAILED.value)
        .order_by(tl.at.desc()).limit(1))


def _reversed_payout_held(session: Session, partner_id: int) -> bool:
    """Whether a payout of a leg the partner carries was reversed and still waits for ops
    (a booking's reversed payouts, by the leg each posting names): paying it again goes to
    the payout account their erasure deletes."""
    p = LedgerPosting
    return session.scalar(
        select(p.leg_id).where(p.leg_id.in_(select(Leg.id).where(Leg.partner_id == partner_id)),
                               p.account_kind == rules.AccountKind.REVERSED_PAYOUTS.value)
        .group_by(p.leg_id).having(func.sum(p.amount_paise) != 0).limit(1)) is not None


def _erase_messages(session: Session, done: Erasure, own: Any, theirs: set[str],
                    recipients: set[str], former: Former | None = None,
                    recycled: Since | None = None) -> None:
    """Messages to the person (and to the recipients of their bookings) lose text and
    address, those to a former number of theirs until they left it (``former``: the
    later ones are its new holder's), those to a number that was someone else's before
    (or a former number they came to: ``recycled``) since it stopped being theirs (the
    earlier ones are theirs); the other messages about their bookings (to partners, ops)
    their text. A message to a former number counts from when it went: an SMS still
    waiting to go to the number they left went to the new one at the move (set_phone),
    written before they came to it."""
    m = OutboxMessage
    recycled = recycled or {}
    went = func.coalesce(m.sent_at, m.created_at)
    # By ix_outbox_messages_to_addr (an empty IN would have the whole table read).
    to_them = or_(_among(m.to_addr, {a for a in theirs if not _ten_digits(a) & recycled.keys()}),
                  # From when it went, as below: an SMS that followed them at a move.
                  *(and_(_among(m.to_addr, {a for a in theirs if ten in _ten_digits(a)}),
                         went > since) for ten, since in sorted(recycled.items())),
                  and_(m.booking_id.in_(own), _among(m.to_addr, recipients)),
                  *(and_(_among(m.to_addr, _addresses(number)), m.created_at <= until,
                         _since_left(recycled, number, went))
                    for number, until in (former or {}).items()))
    about = m.booking_id.in_(own)
    texted = or_(m.body != REDACTED, m.media_url.is_not(None))
    _withdraw_unsent(session, or_(to_them, about))
    changed = list(session.scalars(
        update(m).where(to_them, or_(texted, m.to_addr != ERASED_ADDR))
        .values(to_addr=ERASED_ADDR, body=REDACTED, media_url=None, last_error=None)
        .returning(m.id), execution_options=_QUIET))
    changed += session.scalars(
        update(m).where(about, texted).values(body=REDACTED, media_url=None)
        .returning(m.id), execution_options=_QUIET)
    _redact_templates(session, changed)
    done.add("messages", len(changed))


def _ten_digits(*numbers: str | None) -> set[str]:
    """The last ten digits of each phone number, WhatsApp id or contact given (how every
    form of an Indian mobile ends); those with fewer digits are no number."""
    found = set()
    for number in numbers:
        digits = "".join(ch for ch in number or "" if ch in "0123456789")
        if len(digits) >= 10:
            found.add(digits[-10:])
    return found


# What may stand between two digits of a number as we write or say it: nothing
# ("9812300062", "+919812300062"), a space ("98123 00062"), a hyphen, or the IVR's reading
# (core.dialog.spoken.spell_digits: "9 8 1 2 3, 0 0 0 6 2").
_DIGIT_GAP = "[ ,.-]{0,3}"


def _number_pattern(tens: Iterable[str]) -> str | None:
    """A regular expression (PostgreSQL's and Python's read it alike) that finds any of
    these numbers, by their last ten digits, in any of the forms above; None for none."""
    forms = [_DIGIT_GAP.join(ten) for ten in sorted(tens)]
    return f"(?:{'|'.join(forms)})" if forms else None


def _mentions(col: Any, tens: Iterable[str], names: Iterable[str] = (),
              spans: Spans | None = None, at: Any = None) -> Any:
    """The condition that a text column names one of these numbers or names. A number
    the erased person held for a time only (``spans``: someone else's before, a former
    number of theirs) only in a text written (``at``: its time column) in that time:
    one from before or after can only be about its holder then. A text with no time
    (``at`` None) is taken as about the number's holder now."""
    tens, bounded = _split(tens, spans if at is not None else None)
    pattern = _number_pattern(tens)
    found = [col.regexp_match(pattern)] if pattern else []
    found += [and_(col.regexp_match(_number_pattern([ten])), *_within(at, span))
              for ten, span in bounded]
    found += [col.icontains(name, autoescape=True) for name in sorted(names)]
    return or_(*found) if found else false()


# The time a number was the erased person's, for the texts that say it: after the first
# (exclusive; None: since before anything we hold) and until the second (inclusive; None:
# still theirs).
Span = tuple[datetime | None, datetime | None]
# Those numbers, by their last ten digits.
Spans = dict[str, Span]


def _spans(recycled: Since | None, former: Former | None = None) -> Spans:
    """The times the erased person held the numbers they did not always hold: since the
    one before them left it or they came to it (``recycled``), until they left it
    themselves (``former``)."""
    found: Spans = {ten: (since, None) for ten, since in (recycled or {}).items()}
    for number, until in (former or {}).items():
        found[number[-10:]] = (found.get(number[-10:], (None, None))[0], until)
    return found


def _within(at: Any, span: Span) -> list[Any]:
    """The conditions that a time column ``at`` falls in ``span``."""
    after, until = span
    return [*([at > after] if after is not None else []),
            *([at <= until] if until is not None else [])]


def _split(tens: Iterable[str], spans: Spans | None) -> tuple[set[str], list[tuple[str, Span]]]:
    """These numbers (last ten digits): those looked for in any text, and those the
    person held for a time only, with that time."""
    spans = spans or {}
    tens = set(tens)
    return ({ten for ten in tens if ten not in spans},
            [(ten, span) for ten, span in sorted(spans.items()) if ten in tens])


def _withdraw_unsent(session: Session, where: Any) -> None:
    """Messages picked by ``where`` not sent yet are never sent now (the sender skips a row
    that is not pending). Not a failure to send either: the trigger's failed_at is cleared
    (a second UPDATE, which sets no status and so does not fire it), or /metrics would
    count an erasure's withdrawn messages as messages failed in the last hour."""
    m = OutboxMessage
    withdrawn = list(session.scalars(
        update(m).where(where, m.status.in_(UNSENT))
        .values(status="failed", last_error="erased before sending").returning(m.id),
        execution_options=_QUIET))
    if withdrawn:
        _changed(session, update(m).where(m.id.in_(withdrawn)).values(failed_at=None))


def _redact_mentions(session: Session, done: Erasure, where: Any, said: Any,
                     says: Says) -> None:
    """Messages picked by ``where`` whose text names the erased person lose it; those not
    sent yet are not sent now. ``said`` finds the texts that may (in SQL, by the text as
    is); ``says`` keeps those that do (a name as a word of its own: a rider called Ram is
    not named by "Rampur")."""
    m = OutboxMessage
    ids = [i for i, body, at in session.execute(select(m.id, m.body, m.created_at)
                                                .where(where, said))
           if says(body or "", at)]
    if not ids:
        return
    _withdraw_unsent(session, m.id.in_(ids))
    changed = list(session.scalars(
        update(m).where(m.id.in_(ids), m.body != REDACTED).values(body=REDACTED, media_url=None)
        .returning(m.id), execution_options=_QUIET))
    _redact_templates(session, changed)
    done.add("messages", len(changed))


# The check that a text (written at a time, None: not known) names the erased person.
Says = Callable[[str, datetime | None], bool]


def _saying(tens: Iterable[str], names: Iterable[str] = (),
            spans: Spans | None = None) -> Says:
    """The check, on a text _mentions found, that it names one of these numbers or names:
    a name as a word of its own; a number the person held for a time only (``spans``)
    in a text written in that time, or of no known time."""
    always, bounded = _split(tens, spans)
    pattern = _number_pattern(always)
    number = re.compile(pattern) if pattern else None
    held = [(re.compile(_number_pattern([ten]) or ""), span) for ten, span in bounded]
    words = sorted(names)

    def in_span(at: datetime | None, span: Span) -> bool:
        after, until = span
        return at is None or ((after is None or at > after)
                              and (until is None or at <= until))

    def says(text: str, at: datetime | None) -> bool:
        return (bool(number and number.search(text))
                or any(found.search(text) is not None and in_span(at, span)
                       for found, span in held)
                or any(names_word(text, name) for name in words))
    return says


# Who named a person: the senders of bookings to them (person ids), and the names they
# gave them there.
Senders = tuple[set[int], set[str]]


def _names(given: Iterable[str | None]) -> set[str]:
    """The recipients' names as senders typed them, those long enough to look for."""
    return {n.strip() for n in given if n and len(n.strip()) >= MIN_NAME}


def _landmarks(session: Session, own_ids: list[int], received_ids: list[int]) -> set[str]:
    """The landmarks an erasure takes off bookings, those long enough to look for in
    texts (MIN_PLACE): of the person's own bookings both (their pickup, their recipients'
    doors), of bookings sent to them the drop's (their door)."""
    b = Booking
    own = set(own_ids)
    given: set[str | None] = set()
    for row in session.execute(
            select(b.id, b.pickup_post_office, b.pickup_pincode, b.pickup_landmark,
                   b.drop_post_office, b.drop_pincode, b.drop_landmark).where(
                or_(_among(b.id, own_ids), _among(b.id, received_ids)))):
        ends = [row[1:4], row[4:7]] if row[0] in own else [row[4:7]]
        for office, pincode, landmark in ends:
            given |= {landmark, *_cut_in_sms(office, pincode, landmark)}
    return {n.strip() for n in given if n and len(n.strip()) >= MIN_PLACE}


def _cut_in_sms(office: str | None, pincode: str | None, landmark: str | None) -> set[str]:
    """The place as our SMS name it when its landmark was cut to fit: the landmark whole
    is not in those texts. A rider's SMS names it as place() does ("Bettiah, blue gate
    behind...": looked for without the cut mark). A place with no village is its landmark
    alone, and a job offer cuts it further to fit 2 parts (dispatch.offer_fields, down to
    OFFER_PLACE_MIN; a place with a village goes without its landmark instead): each such
    cut is looked for as the SMS says it, with its cut mark ("Sitaram..."), if it keeps
    at least MIN_PLACE characters of the landmark (a shorter one, "Opp....", says
    nothing of where the door is, and would be found in others' texts)."""
    if not landmark:
        return set()
    shown = booked_place_name(office, pincode, landmark)
    village = booked_place_name(office, pincode, None)
    cuts = set()
    # Only a cut that keeps some of the landmark says where the door is.
    if shown.endswith(CUT_MARK) and len(shown) - len(CUT_MARK) > len(village) + len(", "):
        cuts.add(shown.removesuffix(CUT_MARK))
    if not village:
        for limit in range(PLACE_NAME_MAX - 1, SMS_PLACE_MIN - 1, -1):
            cut = short_place_name(shown, limit)  # offer_fields cuts place()'s name
            if cut != shown and len(cut) - len(CUT_MARK) >= MIN_PLACE:
                cuts.add(cut)
    return cuts


def _senders_of(session: Session, phone: str | None, former: Former | None = None,
                recycled: Since | None = None) -> Senders:
    """The senders of bookings to this number (since it stopped being someone else's, if
    it was: ``recycled``; and to these former numbers, until the person left them), and
    the names they gave (by the bookings' recipient index)."""
    sent_to = [*([_sent_to(phone, recycled)] if phone else []),
               *_sent_to_former(former or {}, recycled)]
    if not sent_to:
        return set(), set()
    rows = session.execute(select(Booking.customer_id, Booking.recipient_name)
                           .where(or_(*sent_to))).all()
    return {customer_id for customer_id, _ in rows}, _names(n for _, n in rows)


# A person's former numbers (people.former_phones: partner_profile.set_phone), each with
# when it stopped being theirs. What went to one, or was kept under it, until then was
# theirs; what came after, its new holder's.
Former = dict[str, datetime]


def _former(kept: dict[str, str] | None) -> Former:
    return {number: datetime.fromisoformat(until) for number, until in (kept or {}).items()}


def _contacts(former: Former) -> set[str]:
    """The conversation contacts of these numbers: the number for SMS and calls, its
    digits on WhatsApp (as partner_profile.set_phone lets them go)."""
    return {c for number in former for c in (number, number.removeprefix("+"))}


def _left_at(former: Former) -> Any:
    """The condition that a conversation is one of a former number, let go when the
    person left it, that nobody took up since (their first message makes a person)."""
    return and_(Conversation.person_id.is_(None),
                _among(Conversation.contact, _contacts(former)))


def _sent_to_former(former: Former, recycled: Since | None = None) -> list[Any]:
    """The conditions that a booking was sent to a former number before the person left
    it (the ones under way then followed them to the new number), and after its holder
    before them left it, if it had one, and they came to it (``recycled``; one that
    followed them to it is found by their moves: _followed)."""
    return [and_(Booking.recipient_phone == number, Booking.created_at <= until,
                 _since_left(recycled, number, Booking.created_at))
            for number, until in sorted(former.items())]


# The audit action of partner_profile.set_phone's move to a new SIM (it writes it with this
# name; erasure reads it back): the numbers before and after, masked (mask_phone), and the
# references of the parcels under way that followed the partner to the new one.
PHONE_MOVED = "partner.phone"
# A lower bound a row must come after, a microsecond before the transaction that made a
# number someone's (their person row, the move onto it): what that transaction wrote at
# the number (the new SIM's "this is your number now") is theirs.
_SAME_TRANSACTION = timedelta(microseconds=1)


@dataclass(frozen=True)
class Move:
    """A partner's move to a new SIM, as its audit entry records it."""

    at: datetime
    before: str | None  # masked
    after: str | None  # masked
    parcels: tuple[str, ...]  # references


def _moves(session: Session, person_id: int) -> list[Move]:
    """The person's moves to a new SIM (set_phone's audit entries), oldest first; none
    for one who is no partner. Not indexed (the audit log by action and target): an
    erasure is a rare ops action, and ops' audit entries are few next to the messages."""
    partner_id = session.scalar(select(PartnerProfile.id).where(
        PartnerProfile.person_id == person_id))
    if partner_id is None:
        return []
    a = AuditEntry
    return [Move(at, details.get("before"), details.get("after"),
                 tuple(details.get("parcels_moved") or ()))
            for at, details in session.execute(select(a.at, a.details).where(
                a.action == PHONE_MOVED, a.target == f"partner:{partner_id}")
                .order_by(a.at, a.id))]


def _came_to(former: Iterable[str], created: datetime, moves: list[Move]) -> Since:
    """When the person came to each number they were moved onto (by its last ten
    digits; a _SAME_TRANSACTION before): at the first of their moves that names it, if
    that moved them onto it. What came to it before was its holder's before them (a
    recycled SIM). The number they came to us with has no such time (none in the
    result): as for a current number, all that came to it is theirs unless another person
    left it before (_recycled), so that a move does not leave their parcels from before
    they signed up to nobody's erasure. The moves name numbers by their last four digits:
    two of theirs alike make the number theirs from the earlier time, never the later.
    (people.former_phones alone cannot say it: a number they moved back to loses its
    first leaving there.) ``created``: their person row's, kept for the signature."""
    found: Since = {}
    for number in former:
        masked = mask_phone(number)
        first = next((m for m in moves if masked in (m.before, m.after)), None)
        if first is not None and first.before != masked:
            found[number[-10:]] = first.at - _SAME_TRANSACTION
    return found


def _followed(moves: list[Move], numbers: list[str | None]) -> Any:
    """The condition that a booking is a parcel under way to the person that followed
    them to a new SIM (sent before they came to that number), still to one of theirs."""
    refs = [ref for move in moves for ref in move.parcels]
    return and_(_among(Booking.reference, refs),
                _among(Booking.recipient_phone, [n for n in numbers if n]))


# The numbers an erasure looks for that were someone else's before (a partner's old SIM
# the telco gave to a stranger), by their last ten digits, each with when it stopped being
# theirs (the latest such time): what came to the number, or was said of it, until then
# is its former holder's, and stays. A former number of the person's own is there too,
# with when they came to it, if later (_came_to).
Since = dict[str, datetime]


def _recycled(session: Session, person_id: int | None, *numbers: str | None,
              former: Former | None = None) -> Since:
    """Those of these numbers (phones, WhatsApp ids, contacts) that are another person's
    former ones (people.former_phones), with the latest time one of them left it; for a
    former number of the person's own (``former``), the latest before they left it
    themselves (a later one is of a holder after them).

    Not indexed (``former_phones ? number`` reads every person): an erasure is a rare
    ops action, and on 200,000 people the lookup takes about 25 ms a number (measured)."""
    found: Since = {}
    for number in sorted(_e164(*numbers)):
        theirs_until = (former or {}).get(number)
        left = Person.former_phones[number].astext
        for until in session.scalars(select(left).where(
                Person.former_phones.has_key(number),
                Person.id != person_id if person_id is not None else true())):
            at = datetime.fromisoformat(until)
            if theirs_until is not None and at >= theirs_until:
                continue
            ten = number[-10:]
            found[ten] = max(found.get(ten, at), at)
    return found


def _e164(*numbers: str | None) -> set[str]:
    """These phones, WhatsApp ids and contacts as people.former_phones keys them (E.164,
    as set_phone writes them: a WhatsApp id is the number's digits)."""
    found = set()
    for number in numbers:
        digits = "".join(ch for ch in (number or "").removeprefix("whatsapp:")
                         if ch in "+0123456789").removeprefix("+")
        if len(digits) >= 10 and digits.isdigit():
            found.add(f"+{digits}")
    return found


def _since_left(recycled: Since | None, number: str | None, at: Any) -> Any:
    """The condition that a row of time ``at`` (a column) at ``number`` came after the
    number's former holder left it (true for a number nobody held before)."""
    since = next((s for ten, s in (recycled or {}).items() if ten in _ten_digits(number)),
                 None)
    return true() if since is None else at > since


def _sent_to(phone: str | None, recycled: Since | None) -> Any:
    """The condition that a booking was sent to ``phone`` while it was this person's:
    since its former holder left it, if it had one (by the bookings' recipient index)."""
    if not phone:
        return false()
    return and_(Booking.recipient_phone == phone,
                _since_left(recycled, phone, Booking.created_at))


def _among(col: Any, values: Iterable[Any]) -> Any:
    """``col IN (values)``, or false for none: PostgreSQL is given an empty IN as a
    subquery, which no index serves, and which under an OR has the whole table read."""
    found = sorted(set(values))
    return col.in_(found) if found else false()


def _drafts_naming(tens: set[str], senders: Senders, spans: Spans | None = None) -> Any:
    """The condition that a conversation's booking draft names the person: their number
    as the recipient's (a call holds it in ``phone_pick`` until the caller says it is
    right), or, in the chat of someone who sent them a booking, a name given them there
    while the draft has no number yet. A number they held for a time only (``spans``: a
    former one) names them in a draft last active in that time: one its writer touched
    since is for the number's holder now, as the booking it makes would be. (Not
    indexed: one pass over the conversations, one row per contact; an index on the
    state would cost every chat turn a write.)"""
    c = Conversation
    slots = c.state["slots"]
    phone = slots["recipient_phone"].astext
    found = [_mentions(phone, tens, (), spans, c.updated_at),
             _mentions(c.state["phone_pick"].astext, tens, (), spans, c.updated_at)]
    people, names = senders
    if people and names:
        found.append(and_(c.person_id.in_(sorted(people)), phone.is_(None),
                          _mentions(slots["recipient_name"].astext, (), names)))
    return or_(*found)


def _erase_recipient_copies(session: Session, done: Erasure, received: Any, tens: set[str],
                            senders: Senders, drafts: list[Conversation],
                            places: set[str], spans: Spans | None = None) -> None:
    """Where the senders of bookings to the erased person kept them, and the contacts
    whose booking draft names them: the bot's questions and summaries in their chats
    ("What is the mobile number of Sita Devi?", "For: Sita Devi, +91..."), other messages
    about those bookings (to partners, to ops), and their handoffs with ops, closed or
    still waiting (one waiting stays open, its texts masked). A text naming the person,
    by a name given them on those bookings or drafts or by their number in any form, or
    saying where their door is (``places``: the landmarks the erasure takes, a rider's
    job offer "... to Bettiah, blue gate ..."), loses it. Bounded: those people's
    messages (by address) and those bookings' (by booking) only."""
    people, names = senders
    people = people | {d.person_id for d in drafts if d.person_id is not None}
    names = names | _names(((d.state or {}).get("slots") or {}).get("recipient_name")
                           for d in drafts) | places
    if not people:
        return
    addrs = set()
    for phone, wa_id in session.execute(select(Person.phone, Person.wa_id)
                                        .where(Person.id.in_(sorted(people)))):
        addrs |= _addresses(phone, wa_id)
    addrs |= _addresses(*session.scalars(select(Conversation.contact).where(
        Conversation.person_id.in_(sorted(people)))))
    m = OutboxMessage
    # Plain lists, not subqueries: under an OR each side must be one an index can serve.
    says = _saying(tens, names, spans)
    _redact_mentions(session, done, or_(_among(m.booking_id, session.scalars(received)),
                                        _among(m.to_addr, addrs)),
                     _mentions(m.body, tens, names, spans, m.created_at), says)
    h = HandoffMessage
    theirs = select(Handoff.id).where(Handoff.person_id.in_(sorted(people)))
    named = [i for i, body, at in session.execute(select(h.id, h.body, h.created_at).where(
        h.handoff_id.in_(theirs), h.body != REDACTED,
        _mentions(h.body, tens, names, spans, h.created_at)))
        if says(body or "", at)]
    done.add("handoff_messages", _changed(session, update(h).where(
        _among(h.id, named)).values(body=REDACTED)))


def _erase_waiting_handoffs(session: Session, done: Erasure, tens: set[str],
                            spans: Spans | None = None) -> None:
    """Anyone's handoff still waiting for ops whose messages say the erased person's
    number (someone asking ops to send them a parcel, say): those texts are masked as a
    closed handoff's are, and the handoff stays open for ops to answer. The waiting list
    is short (ix_handoffs_waiting_created_at)."""
    if not tens:
        return
    h = HandoffMessage
    waiting = select(Handoff.id).where(Handoff.status == "waiting")
    done.add("handoff_messages", _changed(session, update(h).where(
        h.handoff_id.in_(waiting), h.body != REDACTED,
        _mentions(h.body, tens, (), spans, h.created_at))
        .values(body=REDACTED)))


RECIPIENT_SLOTS = ("recipient_name", "recipient_phone")


def _scrub_drafts(done: Erasure, drafts: list[Conversation]) -> None:
    """Other contacts' booking drafts naming the erased person lose the recipient: they
    are asked for one again (``_recipient_asked_again``). Nobody is told why."""
    for conv in drafts:
        step, state = _recipient_asked_again(conv.channel, conv.step, conv.state or {})
        if (step, state) != (conv.step, conv.state):
            conv.step, conv.state = step, state
            done.add("drafts", 1)


def _recipient_asked_again(channel: str, step: str,
                           state: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A booking draft without its recipient, and where its dialog stands then (step,
    state). A draft at or past the recipient's question (now, when resumed later, or
    after an offer of a person) is taken back to it, and from it to the confirmation
    when nothing else is missing: no booking is made without a recipient, none for the
    erased one. A draft still at its places (a place changed from the confirmation) walks
    on through the recipient's question."""
    dialog, ask = ((VOICE_DIALOG, "recipient_phone") if channel == "voice"
                   else (BOOKING_DIALOG, "recipient_name"))
    order = list(dialog.steps)

    def past(name: Any) -> bool:
        found = dialog.steps.get(name) if isinstance(name, str) else None
        return (found is not None and found.group == DRAFT_GROUP
                and order.index(name) >= order.index(ask))

    data = copy_data(state)
    slots = data.get("slots") or {}
    for key in RECIPIENT_SLOTS:
        slots.pop(key, None)
    data.pop("phone_pick", None)  # a call's number keyed in, not yet confirmed
    moved = past(step) or past(data.get("draft_step")) or past(data.get("after_offer"))
    if past(step):
        step = ask
        data.pop("scratch", None)
    for key in ("draft_step", "after_offer"):
        if past(data.get(key)):
            data[key] = ask
    filled = full_slots(slots) if channel == "voice" else slots
    if moved and all(k in filled for k in REQUIRED_SLOTS if k not in RECIPIENT_SLOTS):
        data["return_to"] = "confirm"
    else:
        data.pop("return_to", None)
    return step, data


def _erase_stored_answers(session: Session, done: Erasure, tens: set[str],
                          places: set[str], spans: Spans | None = None) -> None:
    """Our stored answers to SMS and calls (kept for Twilio's retries, cleared by the
    retention job with the messages) that say one of these numbers, or one of the
    landmarks the erasure takes (``places``): a rider's "job is yours, the sender's phone
    is ...", his PICK's "take it to Bettiah, blue gate ...", a call reading the
    recipient's number back digit by digit. A call's answers are not tied to the caller
    (``inbound_events`` keys them by the CallSid alone): they are found by the numbers
    and places they say, the caller's own and their recipients'."""
    e = InboundEvent
    done.add("stored_answers", _changed(session, update(e).where(
        e.response_body.is_not(None),
        _mentions(e.response_body, tens, places, spans, e.received_at))
        .values(response_body=None)))


def _erase_dead_letters(done: Erasure, tens: set[str], spans: Spans | None = None) -> None:
    """Their chat messages set aside in Redis (inbound's dead-letter list), and any other
    that says their number (one they held for a time only, ``spans``: set aside in that
    time, or at a time not known). Before the commit: if Redis cannot be reached,
    nothing is committed and ops try again."""
    if not tens:
        return
    says = _saying(tens, (), spans)
    try:
        done.add("dead_letters", inbound.drop_dead_letters(lambda d: says(
            d.text, None if d.at is None else datetime.fromtimestamp(d.at, UTC))))
    except RedisError as exc:
        raise Unavailable("the chat queue (Redis) cannot be reached: nothing was erased; "
                          "try again", code="queue_unavailable") from exc


def _erase_inboxes(session: Session, done: Erasure, addresses: set[str],
                   people: Iterable[int]) -> None:
    """Their chat messages accepted into Redis and not handled yet (inbound's inbox of
    each of their contacts): else the drain after the erasure would handle them (a new
    person, named and numbered as the erased one, and what they wrote).

    Before the commit, each contact is marked erased as of now (inbound.mark_erased):
    a message a drainer has already taken (its turn waits for this erasure's locks) is
    dropped by its turn once the erasure has committed, and so is one left in an inbox
    (Redis away after the commit). If Redis cannot be reached, nothing is committed and
    ops try again. The inboxes themselves go after the commit: an erasure that fails
    after this leaves them, and the mark drops none of them (its people are not erased),
    so they are handled as usual; but for a recipient known by her number only, whose
    mark names nobody: hers, from before the attempt, are dropped (ops try again)."""
    at = clock.now().timestamp()
    try:
        queued = inbound.mark_erased(addresses, people, at)
    except RedisError as exc:
        raise Unavailable("the chat queue (Redis) cannot be reached: nothing was erased; "
                          "try again", code="queue_unavailable") from exc
    if queued:
        done.add("queued_messages", queued)
    after_commit(session, lambda: inbound.drop_inboxes(addresses))


def _erase_parked(session: Session, done: Erasure, addresses: set[str]) -> None:
    """Their messages parked while Redis was away (``inbound_parked``, not handled yet):
    deleted in this transaction, or the sweep would handle them after the erasure (a new
    person, a chat, an answer saying what they wrote)."""
    gone = inbound.drop_parked(session, addresses)
    if gone:
        done.add("parked_messages", gone)


def _scrub_saved_answers(session: Session, done: Erasure, refs: list[str]) -> None:
    """The senders' saved answers to their POST /bookings (replayed on a retry with the
    same Idempotency-Key) of bookings sent to the erased person lose what the booking rows
    lost: the recipient, the drop's landmark and exact place. Kept, not deleted: a retry
    must still answer with the booking it made, not make a second one."""
    if not refs:
        return
    drops = {ref: (lat, lng) for ref, lat, lng in session.execute(
        select(Booking.reference, Booking.drop_lat, Booking.drop_lng)
        .where(Booking.reference.in_(refs)))}
    for record in session.scalars(select(IdempotencyRecord).where(
            IdempotencyRecord.response["reference"].astext.in_(refs))
            .with_for_update()):
        body = dict(record.response)
        body.update(recipient_name=None, recipient_phone_masked=None)
        drop = body.get("drop")
        if isinstance(drop, dict):
            lat, lng = drops[body["reference"]]
            body["drop"] = {**drop, "landmark": None, "lat": lat, "lng": lng}
        if body != record.response:
            record.response = body
            done.add("records", 1)


def _erase_bookings(session: Session, done: Erasure, own: Any, received: Any,
                    hers: Said) -> None:
    """Their bookings lose the recipient and landmarks, bookings to them the recipient and
    drop landmark; both keep their places to the village, and so do their legs (of a
    booking to them, where a leg ends or starts at its drop, her door: its last leg's end,
    and any end at the drop's exact place; a relay's Points are not hers, and stay).
    Their bookings' rating comments and parcel descriptions go; those of bookings to them
    (the sender's words) lose what ``hers`` says: her names and her door. Money, parcel
    sizes, statuses and times stay: the record the ledger and the gateway refer to.
    (Core statements: these columns change nowhere else once a booking is closed, so the
    version counter that guards the live states is left alone.)"""
    b = Booking
    # Before the bookings lose their exact drop: the legs' ends at it are found by it.
    _round_doors(session, received)
    places, exact = _coarse_places((b.pickup_lat, b.pickup_lng, b.drop_lat, b.drop_lng))
    done.add("bookings", _changed(session, update(b).where(b.id.in_(own), or_(
        b.recipient_name.is_not(None), b.recipient_phone.is_not(None),
        b.pickup_landmark.is_not(None), b.drop_landmark.is_not(None), exact))
        .values(recipient_name=None, recipient_phone=None, pickup_landmark=None,
                drop_landmark=None, **places)))
    done.add("bookings", _changed(session, update(b).where(b.id.in_(received), or_(
        b.recipient_name.is_not(None), b.recipient_phone.is_not(None),
        b.drop_landmark.is_not(None), exact))
        .values(recipient_name=None, recipient_phone=None, drop_landmark=None, **places)))
    leg_places, leg_exact = _coarse_places((Leg.from_lat, Leg.from_lng, Leg.to_lat, Leg.to_lng))
    # Through the ORM: dispatch's cache of partner facts watches leg writes (tests check).
    for leg in session.scalars(select(Leg).where(Leg.booking_id.in_(own), leg_exact)):
        for column, value in leg_places.items():
            setattr(leg, column if isinstance(column, str) else column.key, value)
    _changed(session, update(Parcel).where(Parcel.booking_id.in_(own),
                                           Parcel.description.is_not(None))
             .values(description=None))
    _changed(session, update(BookingRating).where(BookingRating.booking_id.in_(own),
                                                  BookingRating.comment.is_not(None))
             .values(comment=None))
    for text_col, booking in ((BookingRating.comment, BookingRating.booking_id),
                              (Parcel.description, Parcel.booking_id)):
        _scrub_column(session, done, "texts", text_col,
                      and_(booking.in_(received), ~booking.in_(own)), hers.out_of)


def _scrub_column(session: Session, done: Erasure, kind: str, column: Any, where: Any,
                  scrub: Callable[[str], str]) -> None:
    """The texts of ``column`` in the rows ``where`` picks, each as ``scrub`` leaves it
    (by primary key, one statement); counted as ``kind``."""
    table = column.class_
    kept = [{"id": i, column.key: scrub(said)}
            for i, said in session.execute(select(table.id, column).where(
                where, column.is_not(None)))
            if said and scrub(said) != said]
    if kept:
        session.execute(update(table), kept)
        done.add(kind, len(kept))


# The audit entries whose free text (details "reason") is about a booking: ops' cancel.
BOOKING_REASONS = ("booking.cancel",)
# transitions.reason's length (core.api.customer.HISTORY_REASON_MAX).
HISTORY_REASON_MAX = 200


def _scrub_history(session: Session, done: Erasure, bookings: Any, said: Said) -> None:
    """The reasons kept for good about the bookings picked by ``bookings`` (a condition on
    Booking) lose what ``said`` says: their history's and their legs' (a customer's own
    words after "cancelled in the app: "), and ops' reason in the audit log's cancel
    (BOOKING_REASONS). The rows stay, each other column and key as it was: the reason
    alone may change, to a text saying what went (migration 0055)."""
    if not (said.names or said.places):
        return
    ids = list(session.scalars(select(Booking.id).where(bookings)))
    if not ids:
        return
    tl = TransitionLog
    legs = select(Leg.id).where(Leg.booking_id.in_(ids))
    _scrub_column(session, done, "history", tl.reason, or_(
        and_(tl.entity == "booking", tl.entity_id.in_(ids)),
        and_(tl.entity == "leg", tl.entity_id.in_(legs))),
        lambda why: _fit(said.out_of(why), HISTORY_REASON_MAX))
    a = AuditEntry
    refs = select(func.concat("booking:", Booking.reference)).where(Booking.id.in_(ids))
    for entry in session.scalars(select(a).where(a.action.in_(BOOKING_REASONS),
                                                 a.target.in_(refs))):
        why = (entry.details or {}).get("reason")
        if isinstance(why, str) and said.out_of(why) != why:
            entry.details = {**entry.details, "reason": said.out_of(why)}
            done.add("history", 1)


def _fit(text: str, limit: int) -> str:
    """``text`` (a reason scrubbed) cut to ``limit`` characters, keeping a marker of what
    went and never cutting one in two: the history takes a changed reason only as the old
    one with parts of it replaced by whole markers (migration 0055), and "[na" is no
    part of the old one."""
    if len(text) <= limit:
        return text
    markers = [found.span() for found in _MARKERS.finditer(text)]
    cut = limit
    for start, end in markers:
        if start < cut < end:  # the cut would split it: cut before it
            cut = start
    if any(end <= cut for _, end in markers):
        return text[:cut]
    if not markers:
        return text[:limit]
    # No whole marker before the cut: the text before the first, shortened to leave it
    # room.
    start, end = markers[0]
    return text[:min(start, limit - (end - start))] + text[start:end]


def _round_doors(session: Session, received: Any) -> None:
    """The legs of bookings sent to the erased person lose her door's exact place where
    they say it: the last leg's end, and any end at the booking's exact drop (read before
    the booking is rounded). A relay's Points on the way stay as they are."""
    b, later = Booking, Leg.__table__.alias("later")
    last = ~exists().where(later.c.booking_id == Leg.booking_id,
                           later.c.sequence > Leg.sequence)
    to_door = and_(or_(last, and_(Leg.to_lat == b.drop_lat, Leg.to_lng == b.drop_lng)),
                   _coarse_places((Leg.to_lat, Leg.to_lng))[1])
    from_door = and_(Leg.from_lat == b.drop_lat, Leg.from_lng == b.drop_lng,
                     _coarse_places((Leg.from_lat, Leg.from_lng))[1])
    # Through the ORM: dispatch's cache of partner facts watches leg writes (tests check).
    for leg, to, from_ in session.execute(
            select(Leg, to_door, from_door).join(b, b.id == Leg.booking_id)
            .where(b.id.in_(received), or_(to_door, from_door))):
        ends = ((Leg.to_lat, Leg.to_lng) if to else ()) + \
            ((Leg.from_lat, Leg.from_lng) if from_ else ())
        for column, value in _coarse_places(ends)[0].items():
            setattr(leg, column, value)


def _erase_partner(session: Session, done: Erasure, partner: PartnerProfile) -> None:
    """A blocked partner's name (their profile's, and in the messages that told customers
    who was coming), payout account and plates; after the commit, their positions and last
    GPS fix in Redis. The photos they took stay: they are the customers' bookings' proof.

    The payout account (a Razorpay linked account id) goes so that it is free again: the
    same person signing up anew with it is no longer refused as "another partner's".
    Nothing needs it afterwards: each transfer row keeps the account it paid (the money
    record); the profile's is read only to hold or pay a leg (or pay a reversed payout
    again), and an erasure waits until no job of theirs is open, nothing is owed to them
    and no payout of theirs reversed since waits for ops (_refuse_if_in_use)."""
    name = partner.first_name.strip()
    if name:
        # The jobs they took (a job given back after taking it included): bounded by the
        # legs' and offers' partner index, then the messages' booking index.
        carried = select(Leg.booking_id).where(Leg.partner_id == partner.id).union(
            select(Leg.booking_id).join(DispatchOffer, DispatchOffer.leg_id == Leg.id)
            .where(DispatchOffer.partner_id == partner.id,
                   DispatchOffer.status.in_(TOOK_THE_JOB)))
        m = OutboxMessage
        _redact_mentions(session, done, m.booking_id.in_(carried),
                         m.body.icontains(name, autoescape=True), _saying((), {name}))
        # What their customers wrote of them ("Ramesh was rude"): kept, without the name.
        r = BookingRating
        _scrub_column(session, done, "texts", r.comment, and_(
            r.booking_id.in_(carried), r.comment.icontains(name, autoescape=True)),
            lambda said: without_names(said, {name}))
    if partner.first_name or partner.on_duty or partner.has_app or partner.payout_account_id:
        partner.first_name, partner.on_duty, partner.has_app = "", False, False
        partner.payout_account_id = None
        done.add("people", 1)
    for vehicle in session.scalars(select(Vehicle).where(  # ORM: the facts watch sees it
            Vehicle.partner_id == partner.id, or_(Vehicle.registration.is_not(None),
                                                  Vehicle.active))):
        vehicle.registration, vehicle.active = None, False
        done.add("records", 1)
    # Their proof-of-delivery photos stay: they show the customers' parcels and doors, not
    # them, and are those bookings' proof; they go with the erasure of a booking's sender
    # or recipient, or after the retention window (_erase_photos, _pod_photos).
    # Before the commit: if Redis cannot be reached, nothing is committed and ops try
    # again (an after-commit action that failed would leave the trail for good). Once
    # more after the commit, for a fix the app sent meanwhile; the daily run sweeps what
    # that misses (forget_erased_positions).
    partner_id = partner.id
    try:
        _forget_positions(partner_id)
    except RedisError as exc:
        raise Unavailable("the dispatch store (Redis) cannot be reached: nothing was "
                          "erased; try again", code="queue_unavailable") from exc
    after_commit(session, lambda: _forget_positions(partner_id))


def _erase_photos(session: Session, done: Erasure, own: Any, received: Any,
                  job_id: str) -> None:
    """The photos of their bookings and of bookings to them (the parcel in hand, the
    recipient's door), whoever took them: the rows now, and the legs' link to the proof;
    the files after the commit, by an RQ job tried again while the store is away (and by
    the daily run after that). A store that is away loses no erasure: the rows stay gone,
    the files wait in pod_photo_deletions. Bounded by the legs' booking index and the
    photos' leg index."""
    legs = select(Leg.id).where(or_(Leg.booking_id.in_(own), Leg.booking_id.in_(received)))
    p = PodPhoto
    uris: list[str | None] = list(session.scalars(
        delete(p).where(p.leg_id.in_(legs)).returning(p.storage_uri), execution_options=_QUIET))
    # Through the ORM: dispatch's cache of partner facts watches leg writes.
    for leg in session.scalars(select(Leg).where(Leg.id.in_(legs),
                                                 Leg.pod_photo_url.is_not(None))):
        uris.append(leg.pod_photo_url)
        leg.pod_photo_url = None
    _forget_files(session, uris, job=job_id)
    done.add("photos", len(set(uris)))


def _forget_positions(partner_id: int) -> None:
    """A partner's positions in the GEO sets and the app's last exact fix."""
    geo_index.remove(partner_id)
    redis_client().hdel(LAST_FIX_KEY, str(partner_id))
    redis_client().hdel(LAST_SENT_KEY, str(partner_id))


def _ids_in(members: Iterable[Any]) -> set[int]:
    found = set()
    for m in members:
        raw = m.decode() if isinstance(m, bytes) else str(m)
        if raw.isdigit():
            found.add(int(raw))
    return found


def forget_erased_positions() -> int:
    """The daily run's backstop: the positions (GEO sets) and last exact fixes of erased
    partners (a profile whose first name the erasure blanked) still in Redis, a fix the
    app sent while the erasure ran, say. How many partners' were removed."""
    r = redis_client()
    ids = _ids_in(k for k, _ in r.hscan_iter(LAST_FIX_KEY))
    ids |= _ids_in(k for k, _ in r.hscan_iter(LAST_SENT_KEY))
    ids |= _ids_in(k for k, _ in r.hscan_iter(geo_index.SEEN_KEY))
    for key in (geo_index.LIVE_KEY, geo_index.HOME_KEY):
        ids |= _ids_in(m for m, _ in r.zscan_iter(key))
    if not ids:
        return 0
    erased: list[int] = []
    ordered = sorted(ids)
    with transaction() as session:
        for start in range(0, len(ordered), BATCH):
            erased += session.scalars(select(PartnerProfile.id).join(
                Person, Person.id == PartnerProfile.person_id).where(
                PartnerProfile.id.in_(ordered[start:start + BATCH]),
                PartnerProfile.first_name == "", Person.phone.is_(None)))
    for partner_id in erased:
        _forget_positions(partner_id)
    return len(erased)


# What an erased name reads as in the texts kept for good (an erasure's audit reason).
NAME_REMOVED = "[name]"
# What an erased place (a landmark: where a door is) reads as in the texts kept.
PLACE_REMOVED = "[place]"
# Either, where a text says it (a scrub's own, or one before it).
_MARKERS = re.compile(f"{re.escape(NAME_REMOVED)}|{re.escape(PLACE_REMOVED)}")


@dataclass(frozen=True)
class Said:
    """What an erasure takes out of the texts it keeps (a sender's rating comment, a
    parcel's description): names (as without_names finds them) and landmarks (each
    whole, without_places)."""

    names: set[str]
    places: set[str]

    def out_of(self, text: str) -> str:
        return without_names(without_places(text, self.places), self.names)


def _in_word(ch: str) -> bool:
    """A letter, a digit or a mark of the letter before it (core.domain.text's word)."""
    return unicodedata.category(ch)[0] in "LMN"


def without_names(text: str, names: Iterable[str | None]) -> str:
    """``text`` with each of these names (and each word of them MIN_NAME long or more:
    "Sunita" of "Sunita Kumari") said as a word of its own, in any case, replaced by
    NAME_REMOVED: "SUNITA wrote" loses it, "Sunitadevi" and "Rampur" keep theirs
    (names_word's reading)."""
    words: set[str] = set()
    for name in names:
        parts = (name or "").split()
        if len(" ".join(parts)) >= MIN_NAME:
            words.add(r"\s+".join(re.escape(p) for p in parts))
        words |= {re.escape(p) for p in parts if len(p) >= MIN_NAME}
    return _replaced(text, words, NAME_REMOVED)


def without_places(text: str, places: Iterable[str | None]) -> str:
    """``text`` with each of these landmarks said whole (its words in order, any spaces
    between them, in any case), as words of their own, replaced by PLACE_REMOVED: "near
    the HO" goes, its words alone ("the") stay."""
    found = {r"\s+".join(re.escape(p) for p in parts)
             for place in places if (parts := (place or "").split())}
    return _replaced(text, found, PLACE_REMOVED)


def _replaced(text: str, words: set[str], marker: str) -> str:
    """``text`` with each match of these patterns that is not part of a longer word
    replaced by ``marker`` (overlapping matches as one). A marker already there stays
    whole (a recipient called "Name" leaves "[name]" as it is): the history takes a
    scrubbed reason only as the old one with parts of it replaced (migration 0055)."""
    spans: list[tuple[int, int]] = []
    kept = [found.span() for found in _MARKERS.finditer(text)]
    for word in words:
        for found in re.finditer(word, text, re.IGNORECASE):
            start, end = found.span()
            if start == end or any(start < to and at < end for at, to in kept):
                continue
            before = start > 0 and _in_word(text[start - 1]) and _in_word(text[start])
            after = end < len(text) and _in_word(text[end]) and _in_word(text[end - 1])
            if not before and not after:
                spans.append((start, end))
    out, at = [], 0
    for start, end in sorted(spans):
        if start < at:  # overlaps the one before (a full name and its first word)
            if end > at:
                at = end
            continue
        out += [text[at:start], marker]
        at = end
    return "".join(out) + text[at:]


def delete_photo(uri: str) -> None:
    """Delete a stored photo by its URI at once (a missing one is no error); Unavailable
    when the store cannot. (partner_app deletes a file whose row was not kept with it.)"""
    storage.delete_photo(uri)

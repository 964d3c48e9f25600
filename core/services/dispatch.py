"""Dispatch use cases: plan legs, find partners, cascade offers, accept, pick up, deliver.

How a leg finds its partner:

1. ``start_dispatch`` (job, once the booking is paid) plans the legs (direct, or a relay
   through Points when no eligible vehicle can do the whole trip in the tier's time),
   moves the booking to ``dispatching`` and starts the search on leg 1.
2. A search offers the best candidates near the leg's start in batches
   (``DISPATCH_BATCH_SIZES``); each offer has a timeout job ``offer-timeout-<offer id>``.
   When nobody is left at the current radius the radius widens; when the widest radius is
   exhausted ops and the customer are told and the search starts over after
   ``DISPATCH_RETRY_S``, until the tier's deadline (job ``dispatch-deadline-<leg>-<round>``)
   fails the booking and asks payments for a refund (an offer still out then keeps the
   time it gave: the search fails when it closes unanswered). A relay's later leg (the
   parcel is on its way) is paused at its deadline instead; only then does the customer
   hear we are still looking, and they hear again when a rider takes it.
   A partner who lets ``DISPATCH_MISSED_OFFERS_OFF`` offers in a row expire unanswered
   is put OFF duty and told so (``_off_after_missed``): near every pickup, they would
   otherwise get each job's first offer and cost it the offer's time. An offer whose SMS
   Twilio could not deliver stops holding its job at once (``offer_unreached``), and
   ``UNREACHED_OFFERS_OFF`` of them in a row put the rider OFF silently until his next SMS.
3. The first acceptance wins under a row lock on the leg (and a partial unique index allows
   one accepted offer per leg); everyone else's offer is withdrawn by SMS. A job that fills
   its partner up withdraws their other open offers too (accept locks those legs with its
   own, in id order), and those jobs move on at once.
4. OTPs: pickup code to the sender (or, on a relay leg, to the partner handing over at the
   Point), drop code to the recipient (or to the next leg's partner at the Point); a job
   taken at night before its pickup gets the recipient's at 07:00 India time, or at the
   pickup if sooner (``_hold_drop_code``).
   ``DISPATCH_OTP_MAX_FAILURES`` wrong codes lock the leg and alert ops. A code Twilio
   could not deliver is made again (``drop_code_lost``, ``pickup_code_lost``, a rider's
   handover code ``handover_code_lost``), its tries fresh but bounded
   (``tries_after_lost_code``).
5. A delivered leg asks payments to release its payout (``release-<leg id>``); a relay's
   next leg is dispatched as soon as the previous one is picked up, so its partner is
   waiting at the Point.
6. A taken job must move on (the sweep checks): not picked up ``DISPATCH_PICKUP_MINUTES``
   after it was taken, the partner is reminded and the customer and ops told; that long
   after the reminder it is taken back and offered again. A relay's later leg is chased the same way
   from when its parcel is due at the Point (``point_pickup_late``): its rider, not come
   to collect it, is reminded, then the leg is taken back while the carrier keeps the
   parcel. A rider handed the parcel at the Point who has not sent PICK a pickup window
   later is reminded once and ops are told (``handed_pickup_late``); the leg stays hers.
   A parcel picked up longer ago than the tier's delivery hours and not delivered
   is reported to ops.

Every function that takes a Session works in the caller's transaction; job entry points
open their own. Lock order is always leg, then offers, then the partner rows they change,
to rule out deadlocks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import TypeVar, cast
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import requests
from redis import Redis
from redis.exceptions import RedisError
from rq import Retry
from sqlalchemy import ColumnElement, Select, Table, false, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, aliased

from core import clock, i18n
from core.adapters import facts_watch, geo_index, points, storage
from core.adapters.api_models import AuditEntry
from core.adapters.db import database_away, transaction
from core.adapters.dispatch_models import (
    DispatchOffer,
    DispatchSearch,
    OtpAttempt,
    PartnerEvent,
    PodPhoto,
)
from core.adapters.distance import road_distance_m
from core.adapters.models import (
    Booking,
    Leg,
    OpsDeferredAlert,
    OutboxMessage,
    PartnerPoint,
    PartnerProfile,
    Person,
    Point,
    TransitionLog,
    Vehicle,
)
from core.adapters.pincode import display_name
from core.adapters.queue import after_commit, enqueue, forget_earlier_run, job_alive, queue
from core.adapters.redis_conn import redis_client, redis_down
from core.config import ConfigError, get_settings, int_setting
from core.domain import dispatch as rules
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.domain.errors import Conflict, NotFound, ValidationError
from core.domain.geo import haversine_m, validate_lat_lng
from core.domain.otp import OTP_DIGITS
from core.domain.phone import normalize_phone
from core.domain.pricing import SizeBucket, SpeedTier, VehicleType, WeightBucket, can_carry
from core.domain.text import fits_two_sms_parts
from core.logs import mask_note
from core.services import notify, outbox, rating
from core.services.booking import active_rate_card, issue_leg_otps, move_booking, move_leg
from core.services.payments import GATEWAY_RETRY, given_back_outside

log = logging.getLogger(__name__)

IST = ZoneInfo("Asia/Kolkata")
ACTIVE_LEG_STATES = (LegStatus.ASSIGNED.value, LegStatus.PICKED_UP.value,
                     LegStatus.LOCKED.value)
# A timer that fires this early (clock skew between machines) still counts as due.
DUE_TOLERANCE = timedelta(seconds=5)
SYSTEM = Actor.system()
CLOSED_BOOKING = frozenset({BookingStatus.CANCELLED.value, BookingStatus.FAILED.value,
                            BookingStatus.REFUNDED.value, BookingStatus.EXPIRED.value})


@lru_cache(maxsize=1)
def config() -> rules.DispatchConfig:
    """DISPATCH_* settings, parsed and validated once (see core.domain.dispatch.from_env)."""
    return rules.from_env(os.environ)


@lru_cache(maxsize=1)
def pickup_window() -> timedelta:
    """DISPATCH_PICKUP_MINUTES (60): how long a taken job may wait for its pickup before the
    partner is reminded and the customer and ops are told; that long after the reminder it
    is taken back and offered again (see ``pickup_late``)."""
    try:
        return timedelta(minutes=int_setting("DISPATCH_PICKUP_MINUTES", 60))
    except ConfigError as err:
        raise rules.DispatchConfigError(str(err)) from None


@lru_cache(maxsize=1)
def missed_offers_off() -> int:
    """DISPATCH_MISSED_OFFERS_OFF (3): a partner who lets this many offers in a row expire
    unanswered is put OFF duty (``_off_after_missed``); 0 never does."""
    try:
        return int_setting("DISPATCH_MISSED_OFFERS_OFF", 3)
    except ConfigError as err:
        raise rules.DispatchConfigError(str(err)) from None


def reset_config() -> None:
    config.cache_clear()
    pickup_window.cache_clear()
    missed_offers_off.cache_clear()


# --- jobs and small helpers -----------------------------------------------------------


def _schedule_in(session: Session, seconds: float, func_path: str, *args: object,
                 job_id: str, retry: Retry | None = None) -> None:
    """Schedule an RQ job ``seconds`` from now, once this transaction commits. Not when
    the job of this natural id waits, runs or ran: when it failed for good (kept 7 days
    in that state), a later cause schedules it again, as ``enqueue`` does."""

    def go() -> None:
        q = queue("default")
        job = q.fetch_job(job_id)
        if job is not None:
            if job.get_status(refresh=False) == "finished" or job_alive(job_id):
                return  # natural job id: already scheduled (or ran) for this cause
            forget_earlier_run(q, job_id)  # its spent retries are not the new job's
        q.enqueue_in(timedelta(seconds=max(seconds, 0)), func_path, *args, job_id=job_id,
                     retry=retry, result_ttl=3600, failure_ttl=7 * 86400)

    after_commit(session, go)


def _enqueue_after_commit(session: Session, func_path: str, *args: object, job_id: str,
                          retry: Retry | None = None) -> None:
    after_commit(session, lambda: enqueue(func_path, *args, job_id=job_id, retry=retry))


def _partner_actor(partner: PartnerProfile) -> Actor:
    return Actor("partner", str(partner.id))


def _person(session: Session, partner: PartnerProfile) -> Person:
    person = session.get(Person, partner.person_id)
    assert person is not None
    return person


def _lang(person: Person | None) -> str:
    return (person.preferred_language if person else None) or i18n.DEFAULT_LANGUAGE


def _sms_partner(session: Session, partner: PartnerProfile, key: str, *, dedupe_key: str,
                 booking_id: int | None = None, **params: object) -> int | None:
    """Queue an SMS to the partner's number in their language (sent after the commit).

    Their person's row is read again key-share-locked: ops moving them to a new number
    (partner_profile.set_phone) hold it FOR UPDATE until they commit, so an SMS written
    at that moment waits for the move and goes to the new number; the move waits for one
    that read the number first (the number theirs then; its row, if not yet sent, is
    carried to the new one). Read without the lock, an SMS could be queued to the old
    number after the move had committed. Only the key share: a write that changes no key
    (his STOP, say) takes FOR NO KEY UPDATE, which it does not wait for; a share lock
    did, and deadlocked his STOP (row written, then his offers' legs locked) with a
    rival's yes to one of those legs (leg locked, then this SMS to him)."""
    person = session.get(Person, partner.person_id,
                         with_for_update={"read": True, "key_share": True},
                         populate_existing=True)
    assert person is not None, "a profile's person is never deleted (erasure blanks it)"
    if not person.phone:
        return None
    return notify.notify_known_phone(session, person, key, lang=_lang(person), sms_only=True,
                                     dedupe_key=dedupe_key, booking_id=booking_id, **params)


# Alerts of one cause that hit many bookings at once (a gateway outage, nobody on duty):
# the first goes at once; the same key's later ones within ALERT_WINDOW are held and go
# as one summary (dispatch.ops_more_like) when the window ends (send_alert_summary). Held
# only behind one not known to have failed: after one that reached nobody, the next goes
# at once (_opener_reached_nobody).
GROUPED_ALERTS = frozenset({"payment.ops_link_refused", "payment.ops_link_timeout",
                            "dispatch.ops_no_partner",
                            "dispatch.ops_failed"})
ALERT_WINDOW = timedelta(minutes=15)
ALERT_WINDOW_KEY = "ops-alerts:window:{key}"  # the window's end (clock time, epoch s)
ALERT_HELD_KEY = "ops-alerts:held:{key}"  # refs of the alerts held in it
# The alert the window counts on, "<ref> <outbox row ids>": the one that opened it, or
# the one sent in its place when that reached nobody (_opener_reached_nobody).
ALERT_OPENER_KEY = "ops-alerts:opener:{key}"
ALERT_KEYS_TTL_S = 2 * 86400
SUMMARY_REFS = 5  # refs named in a summary (it must fit 2 SMS parts)
# An alert's SMS in one of these reached nobody (Twilio refused it or could not deliver).
FAILED_SMS = ("failed", "undelivered")
# Alerts that ask nothing of anyone at night (the refund is automatic, nobody on duty to
# call riders): outside OPS_HOURS they wait for the team's next opening.
DAYTIME_ALERTS = frozenset({"dispatch.ops_failed", "dispatch.ops_no_partner"})
# The jobs that send an ops alert later (a window's summary, a night's alert at the
# opening) try again with backoff: a run that meets PostgreSQL or Redis restarting must
# not be the alert's only chance. A night's alert is also kept in PostgreSQL
# (ops_deferred_alerts): the sweep sends it DEFERRED_GRACE past its time if its job did
# not (failed for good, or lost with Redis).
OPS_ALERT_RETRY = Retry(max=5, interval=[30, 120, 600, 1800, 3600])
DEFERRED_GRACE = timedelta(minutes=5)
_DEFERRED = cast(Table, OpsDeferredAlert.__table__)
# Atomically: inside an open window, hold the ref (0); else open a new window (1), whose
# opener is not known until its alert commits (an old window's is dropped).
_WINDOW_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur and tonumber(cur) > tonumber(ARGV[1]) then
  redis.call('RPUSH', KEYS[2], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[4])
redis.call('DEL', KEYS[3])
return 1
"""
# What _summary_window decided for one alert.
HELD, OPENED, INSTEAD, UNGROUPED = "held", "opened", "instead", "ungrouped"


def _job_id(text: str) -> str:
    """An RQ job id made of ``text`` (letters, digits, - and _ only)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)[:120]


def _next_opening(now: datetime) -> datetime | None:
    """When the operators next start work (OPS_HOURS), or None while they are at work."""
    from core.services import handoff  # handoff imports dispatch's callers

    hours = get_settings().ops_hours
    if handoff.is_open(hours, now):
        return None
    assert hours is not None
    local = now.astimezone(handoff.INDIA)
    opening = local.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(
        minutes=hours[0])
    if opening <= local:
        opening += timedelta(days=1)
    return opening


def _summary_window(session: Session, key: str, ref: str) -> str:
    """Whether this alert joins an open window of its key (HELD for the summary), opens
    one (OPENED: the summary is planned for the window's end), or goes in place of the
    window's opener, which reached nobody (INSTEAD). Redis away: sent as it is."""
    now = clock.now()
    try:
        r = redis_client()
        if _opener_reached_nobody(session, r, key, now):
            return INSTEAD
        opened = r.eval(
            _WINDOW_LUA, 3, ALERT_WINDOW_KEY.format(key=key), ALERT_HELD_KEY.format(key=key),
            ALERT_OPENER_KEY.format(key=key), now.timestamp(),
            (now + ALERT_WINDOW).timestamp(), ref, ALERT_KEYS_TTL_S)
    except RedisError:
        log.warning("ops alert window unknown; sent", extra={"key": key})
        return UNGROUPED
    if not opened:
        log.info("ops alert held for the summary", extra={"key": key})
        return HELD
    _schedule_in(session, ALERT_WINDOW.total_seconds(), "workers.dispatch.ops_alert_summary",
                 key, ref, job_id=_job_id(f"ops-summary-{key}-{now.timestamp():.0f}"),
                 retry=OPS_ALERT_RETRY)
    return OPENED


def _opener_reached_nobody(session: Session, r: Redis, key: str,
                           now: datetime) -> bool:
    """Whether the open window of ``key`` counts on an alert that reached nobody: each of
    its SMS failed or was undelivered (or it had none). Holding more behind it would fold
    them into a summary about a problem nobody heard of, itself sent to the phones that
    just failed: the next alert goes at once instead, and the failed one's ref is named
    in the summary. Not while its outcome is unknown (not sent yet, waiting for a
    retry): that one may still get through. Claimed by deleting the record, so two
    alerts at once do not both go in its place."""
    end = r.get(ALERT_WINDOW_KEY.format(key=key))
    record = r.get(ALERT_OPENER_KEY.format(key=key))
    if end is None or float(end) <= now.timestamp() or record is None:
        return False
    first, _, ids = _text(record).partition(" ")
    rows = [int(i) for i in ids.split(",") if i]
    if rows and session.scalar(select(OutboxMessage.id).where(
            OutboxMessage.id.in_(rows), OutboxMessage.status.not_in(FAILED_SMS))
            .limit(1)) is not None:
        return False
    if not r.delete(ALERT_OPENER_KEY.format(key=key)):
        return False  # another alert is going in its place just now
    held_key = ALERT_HELD_KEY.format(key=key)
    with r.pipeline() as pipe:
        pipe.rpush(held_key, first)
        pipe.expire(held_key, ALERT_KEYS_TTL_S)
        pipe.execute()
    log.warning("ops alert reached nobody; the next of its kind goes at once",
                extra={"key": key, "ref": first})
    return True


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _remember_opener(session: Session, key: str, ref: str, rows: list[int]) -> None:
    """Once this alert commits, the window of ``key`` counts on it (its SMS rows)."""
    record = f"{ref} {','.join(map(str, rows))}"

    def go() -> None:
        try:
            redis_client().set(ALERT_OPENER_KEY.format(key=key), record, ex=ALERT_KEYS_TTL_S)
        except RedisError:  # the window holds the next ones as before
            log.warning("ops alert window's opener not kept", extra={"key": key})

    after_commit(session, go)


def send_alert_summary(key: str, first_ref: str) -> int:
    """An alert window ended: ops hear in one SMS how many more bookings had the same
    problem as the alert the window counted on (``first_ref``, or the one sent in its
    place: its own alert went at once), naming the first few, those whose alert reached
    nobody included. The held refs are dropped only once the summary is in the outbox: a
    run that fails (PostgreSQL restarting) leaves them for its retry, which writes the
    same summary (same dedupe key) if the first had committed after all."""
    r = redis_client()
    held_key = ALERT_HELD_KEY.format(key=key)
    with r.pipeline() as pipe:
        pipe.lrange(held_key, 0, -1)
        pipe.get(ALERT_OPENER_KEY.format(key=key))
        held, record = pipe.execute()
    first = _text(record).partition(" ")[0] if record else first_ref
    refs = [ref for ref in dict.fromkeys(_text(v) for v in held) if ref != first]
    if refs:
        shown = ", ".join(refs[:SUMMARY_REFS]) + (" ..." if len(refs) > SUMMARY_REFS else "")
        with transaction() as session:
            sent = alert_ops(session, "dispatch.ops_more_like",
                             dedupe_key=f"ops-summary-{key}-{first_ref}-{len(refs)}",
                             n=len(refs), first=first, refs=shown)
    else:
        sent = 0
    if held:
        r.ltrim(held_key, len(held), -1)  # those read; any held since stay for the next
    return sent


def _keep_deferred(session: Session, key: str, dedupe_key: str, booking_id: int | None,
                   params: dict[str, object], due_at: datetime) -> None:
    """Keep a daytime alert raised at night in PostgreSQL until it is sent (once a
    dedupe key: a cause raised again keeps the first)."""
    session.execute(pg_insert(_DEFERRED).values(
        dedupe_key=dedupe_key, key=key, booking_id=booking_id, params=params, due_at=due_at)
        .on_conflict_do_nothing(constraint="uq_ops_deferred_alerts_dedupe_key"))


def send_deferred_alert(key: str, dedupe_key: str, booking_id: int | None,
                        params: dict[str, object]) -> int:
    """A daytime alert kept from the night goes now (the team's hours began): its row is
    taken (locked, deleted) in the transaction that queues its SMS. No row: the sweep
    sent it already, or the job was scheduled by a release that kept none (sent, unless
    its SMS are in the outbox already)."""
    with transaction() as session:
        row = session.scalar(select(OpsDeferredAlert).where(
            OpsDeferredAlert.dedupe_key == dedupe_key).with_for_update())
        if row is not None:
            session.delete(row)
        elif session.scalar(select(OutboxMessage.id).where(OutboxMessage.dedupe_key.startswith(
                f"{dedupe_key}-"[:120], autoescape=True)).limit(1)) is not None:
            return 0
        return _alert_now(session, key, dedupe_key, booking_id, params)


def _deferred_alerts_due(now: datetime) -> list[int]:
    """Kept alerts DEFERRED_GRACE past their time: their job failed for good or was lost."""
    with transaction() as session:
        return list(session.scalars(select(OpsDeferredAlert.id).where(
            OpsDeferredAlert.due_at < now - DEFERRED_GRACE)
            .order_by(OpsDeferredAlert.due_at, OpsDeferredAlert.id).limit(100)))


def send_kept_alert(alert_id: int) -> str:
    """The sweep sends a kept alert its job did not ("sent"); "gone" when the job (or
    another sweep) has it or sent it."""
    with transaction() as session:
        row = session.scalar(select(OpsDeferredAlert).where(
            OpsDeferredAlert.id == alert_id).with_for_update(skip_locked=True))
        if row is None:
            return "gone"
        session.delete(row)
        log.warning("deferred ops alert sent by the sweep (its job did not run)",
                    extra={"key": row.key})
        _alert_now(session, row.key, row.dedupe_key, row.booking_id, row.params)
        return "sent"


def alert_ops(session: Session, key: str, *, dedupe_key: str, booking_id: int | None = None,
              **params: object) -> int:
    """An SMS to every operator (people with role ``ops``) and to OPS_PHONE when it can take
    SMS (the default 1800 number cannot); each in their language. Returns how many were
    queued: whether they reach anyone is known later (the outbox row's status; /metrics
    counts the failures), and a window counts on an alert only while that is not known to
    have failed (_opener_reached_nobody).
    A DAYTIME_ALERTS key outside OPS_HOURS waits for the next opening (0 now), kept in
    PostgreSQL (then sent by ``_alert_now``); a GROUPED_ALERTS key inside another's
    window is held for its summary (0)."""
    if key in DAYTIME_ALERTS:
        opening = _next_opening(clock.now())
        if opening is not None:
            _keep_deferred(session, key, dedupe_key, booking_id, params, opening)
            _schedule_in(session, (opening - clock.now()).total_seconds(),
                         "workers.dispatch.ops_deferred_alert", key, dedupe_key, booking_id,
                         params, job_id=_job_id(f"ops-deferred-{dedupe_key}"),
                         retry=OPS_ALERT_RETRY)
            return 0
    return _alert_now(session, key, dedupe_key, booking_id, params)


def _alert_now(session: Session, key: str, dedupe_key: str, booking_id: int | None,
               params: dict[str, object]) -> int:
    """``alert_ops`` without the wait for the team's hours (a kept alert waited already:
    a retry of its job after closing sends it rather than keep it again)."""
    ref = params.get("ref")
    window = UNGROUPED
    if key in GROUPED_ALERTS and isinstance(ref, str):
        window = _summary_window(session, key, ref)
        if window == HELD:
            return 0
    phones = list(session.scalars(select(Person.phone).where(
        Person.role == "ops", Person.phone.is_not(None)).order_by(Person.id)))
    try:
        phones.append(normalize_phone(get_settings().ops_phone))
    except ValidationError:
        pass
    rows: list[int] = []
    for phone in dict.fromkeys(phones):
        assert phone is not None, "the query keeps only operators with a phone"
        try:
            # lang=None: each operator's own language, looked up by the phone.
            row_id = notify.notify_phone(session, phone, key, lang=None,
                                         booking_id=booking_id, sms_only=True,
                                         dedupe_key=f"{dedupe_key}-{phone}"[:120], **params)
        except ValidationError:
            log.warning("ops phone cannot take SMS", extra={"key": key})
            continue
        if row_id:
            rows.append(row_id)
    if window in (OPENED, INSTEAD):
        assert isinstance(ref, str)
        _remember_opener(session, key, ref, rows)
    if not rows:
        log.warning("ops alert reached nobody", extra={"key": key, "booking_id": booking_id})
    return len(rows)


def _status_to_customer(session: Session, booking: Booking, tag: object) -> None:
    notify.notify_customer(session, booking, f"booking.status.{booking.status}",
                           dedupe_key=f"booking-{booking.id}-{booking.status}-{tag}")


def _assigned_to_customer(session: Session, booking: Booking, partner: PartnerProfile,
                          load: rules.Load, tag: object) -> None:
    """Tell the customer who is coming and on what (first name and vehicle)."""
    customer = session.get(Person, booking.customer_id)
    lang = notify.booking_language(booking, customer)  # as notify_customer says the rest
    vehicle = next((v for v in partner.vehicles if v.active and rules.vehicle_fits(
        rules.VehicleFacts(v.type, v.payload_kg, v.max_size, v.active), load)), None)
    vehicle_word = i18n.t(f"vehicle.{vehicle.type}", lang) if vehicle else ""
    notify.notify_customer(session, booking, "dispatch.customer_assigned",
                           dedupe_key=f"booking-{booking.id}-assigned-{tag}",
                           name=partner.first_name, vehicle=vehicle_word)


def _last_sent(session: Session, booking: Booking, key_like: str, *,
               to_phone: str | None = None) -> str | None:
    """The dedupe key of the latest message queued for the booking whose key is like
    ``key_like`` (the keys name what was said: ``leg-<id>-dropotp-...``), optionally to one
    phone (by SMS, or on WhatsApp for someone who stopped SMS); None if there is none."""
    query = select(OutboxMessage.dedupe_key).where(OutboxMessage.booking_id == booking.id,
                                                   OutboxMessage.dedupe_key.like(key_like))
    if to_phone is not None:
        query = query.where(OutboxMessage.to_addr.in_(
            [outbox.address("sms", to_phone), outbox.address("whatsapp", to_phone)]))
    return session.scalar(query.order_by(OutboxMessage.id.desc()).limit(1))


def tell_recipient_not_coming(session: Session, booking: Booking, key: str, *,
                              dedupe_key: str) -> None:
    """The booking ended before delivery (cancelled by anyone, or no rider found): a
    recipient who was sent a delivery code hears the parcel is not coming, so nobody waits
    for it or gives the code to anyone; one we told of it before any code (she asked us
    by SMS) hears it too, with no word of a code (``<key>_no_code``). Not when the
    recipient is the customer, who hears it as the customer. A code that never reached her
    (reported failed; a new one went to the sender) is no code of hers, but one whose copy
    reached her is (an SMS refused for her STOP, the copy on her WhatsApp); a number that
    told us the parcel is not hers hears nothing more."""
    phone = booking.recipient_phone
    if not phone or recipient_said_wrong_number(session, booking):
        return
    # Any code of hers, the working one or one void already (a give-back told her a new
    # one comes with the next rider): a copy that reached her counts (_reached_her).
    code_sent = _reached_her(session, phone, list(session.scalars(select(OutboxMessage).where(
        OutboxMessage.booking_id == booking.id,
        OutboxMessage.dedupe_key.like("leg-%-dropotp-%"))))) is not None
    if not code_sent and not _told_parcel_coming(booking):
        return
    customer = session.get(Person, booking.customer_id)
    if customer is not None and customer.phone == phone:
        return
    notify.notify_phone(session, phone, key if code_sent else f"{key}_no_code",
                        lang=recipient_language(session, booking), booking_id=booking.id,
                        dedupe_key=dedupe_key, ref=booking.reference)


# A recipient we told of a parcel before any code went to her (partner_sms answers her
# SMS: "a parcel (booking ...) is coming to you"): that answer is inline TwiML, kept by no
# booking, so the booking's id is marked here for as long as a booking may still end.
RECIPIENT_TOLD_KEY = "dispatch:recipient-told:{booking}"
RECIPIENT_TOLD_S = 30 * 24 * 3600


def mark_recipient_told(session: Session, booking: Booking) -> None:
    """Remember, once the turn commits, that the booking's recipient heard of it."""
    key = RECIPIENT_TOLD_KEY.format(booking=booking.id)
    after_commit(session, lambda: redis_client().set(key, 1, ex=RECIPIENT_TOLD_S))


def _told_parcel_coming(booking: Booking) -> bool:
    """Whether we told the booking's recipient of it before any code (mark_recipient_told);
    with Redis away, no (she is not told twice, at worst not at all)."""
    try:
        return bool(redis_client().exists(RECIPIENT_TOLD_KEY.format(booking=booking.id)))
    except RedisError:
        return False


# The recipient's number told us the parcel is not hers ("galat number": partner_sms):
# the sender and ops heard it under this key. From then on her drop codes go to the sender
# to pass on, and the number hears nothing more of the parcel.
WRONG_NUMBER_KEY = "booking-{booking}-wrong-number"


def recipient_said_wrong_number(session: Session, booking: Booking) -> bool:
    """Whether the booking's recipient number told us the parcel is not hers."""
    key = WRONG_NUMBER_KEY.format(booking=booking.id)
    return session.scalar(select(OutboxMessage.id).where(
        OutboxMessage.booking_id == booking.id, OutboxMessage.dedupe_key.like(f"{key}%"))
        .limit(1)) is not None


def _code_phone(session: Session, booking: Booking) -> str | None:
    """The number the booking's drop code goes to: the recipient's, unless it told us the
    parcel is not hers (None: the code goes to the sender)."""
    if not booking.recipient_phone or recipient_said_wrong_number(session, booking):
        return None
    return booking.recipient_phone


def load_of(booking: Booking, leg: Leg | None = None) -> rules.Load:
    """The booking's parcels as one load: the biggest size, the heaviest bucket, the sum
    of declared values; with ``leg``, the ride a vehicle must have the range for."""
    ride_m = leg.distance_m if leg is not None else 0
    parcels = list(booking.parcels)
    if not parcels:
        return rules.Load(SizeBucket.BAG, WeightBucket.W5, 0, ride_m)
    size = max((SizeBucket(p.size_bucket) for p in parcels), key=lambda s: s.rank)
    weight = max((WeightBucket(p.weight_bucket) for p in parcels), key=lambda w: w.rank)
    return rules.Load(size, weight, sum(p.declared_value_paise for p in parcels), ride_m)


# The longest name place() gives: a partner's SMS names one or two places in a text that
# must fit 2 parts (67 characters each in an Indian script) with the job's code, a phone
# number or a state; a customer's place and landmark take up to 200 characters, a
# Point's name 60. The rider calls the customer (the phone is in the same SMS) for more.
PLACE_NAME_MAX = 30
CUT_MARK = "..."  # ASCII: an English SMS stays in the GSM alphabet (160 a part, not 70)


def short_place_name(name: str, limit: int = PLACE_NAME_MAX) -> str:
    """``name`` if it is at most ``limit`` characters, else cut to fit with "...", after
    its last whole word when that keeps at least half ("Kilpauk Medical College, opp"
    -> "Kilpauk Medical College...")."""
    name = " ".join(name.split())
    if len(name) <= limit:
        return name
    room = limit - len(CUT_MARK)
    cut = name[:room]
    if not name[room].isspace():
        space = cut.rfind(" ")
        if space >= room // 2:
            cut = cut[:space]
    return cut.rstrip(" ,;:-/(") + CUT_MARK


def place(session: Session, booking: Booking, leg: Leg, end: str, *,
          landmark: bool = True) -> str:
    """A short name people know for a leg's start or end (``end`` "from" or "to"): the
    Point, else the village (and landmark, unless ``landmark`` is False and there is a
    village), at most ``PLACE_NAME_MAX`` characters. The partner's SMS and the app name a
    job's places by it."""
    point_id = leg.from_point_id if end == "from" else leg.to_point_id
    if point_id is not None:
        point = session.get(Point, point_id)
        if point is not None:
            return short_place_name(point.name)
    is_pickup = end == "from"
    office = booking.pickup_post_office if is_pickup else booking.drop_post_office
    given = booking.pickup_landmark if is_pickup else booking.drop_landmark
    pincode = booking.pickup_pincode if is_pickup else booking.drop_pincode
    village = booked_place_name(office, pincode, None)
    if not landmark and village:
        return village
    return booked_place_name(office, pincode, given) or "-"


def booked_place_name(office: str | None, pincode: str | None, landmark: str | None) -> str:
    """A booking's place as place() names it: the village, then the landmark, cut to
    PLACE_NAME_MAX (retention looks for that cut landmark in texts too)."""
    name = display_name(office) if office else (pincode or "")
    if landmark:
        name = f"{name}, {landmark}" if name else landmark
    return short_place_name(name)


def job_code(leg: Leg) -> str:
    """What a partner types to name a job: the leg id (digits only, keyable)."""
    return str(leg.id)


# The shortest a job offer cuts a place to (offer_fields): shorter, few riders would know
# the village by what is left of its name.
OFFER_PLACE_MIN = 12


def offer_fields(lang: str, places: list[tuple[str, str]], **params: object
                 ) -> dict[str, object]:
    """The job offer's fields in ``lang``, its (pickup, drop) the first pair of ``places``
    with which the SMS fits 2 parts, else the last pair cut, both alike, as little as lets
    it fit (never under OFFER_PLACE_MIN characters). The offer is the SMS sent most (to
    every rider of every batch): two places as customers give them took it to 3 parts."""
    fields: dict[str, object] = {}
    for pickup, drop in places:
        fields = {**params, "pickup": pickup, "drop": drop}
        if fits_two_sms_parts(i18n.t("dispatch.offer", lang, **fields)):
            return fields
    pickup, drop = places[-1]
    for limit in range(PLACE_NAME_MAX, OFFER_PLACE_MIN - 1, -1):
        fields = {**params, "pickup": short_place_name(pickup, limit),
                  "drop": short_place_name(drop, limit)}
        if fits_two_sms_parts(i18n.t("dispatch.offer", lang, **fields)):
            break
    return fields


# --- candidates -----------------------------------------------------------------------


# Where a partner is placed: their home Point while it is active; once it is closed
# (admin.close_point), the active Point they serve (partner_points) with the lowest id;
# none else (found by a fresh app position only, until ops give them a new home).
_HOME_POSITIONS = text("""
SELECT p.id, pt.lat, pt.lng, p.has_app
FROM partner_profiles p
CROSS JOIN LATERAL (
    SELECT x.lat, x.lng FROM points x
    WHERE x.active AND (x.id = p.home_point_id OR x.id IN (
        SELECT pp.point_id FROM partner_points pp WHERE pp.partner_id = p.id))
    ORDER BY x.id = p.home_point_id DESC, x.id
    LIMIT 1) pt
WHERE p.on_duty AND (CAST(:partner_id AS integer) IS NULL
                     OR p.id = CAST(:partner_id AS integer))
ORDER BY p.id
""")


def _home_positions(session: Session) -> list[tuple[int, float, float, bool]]:
    """The home set as it should be: partners on duty at their home Point, or where
    they are placed while it is closed (see _HOME_POSITIONS). A partner off duty (OFF,
    suspended, erased) is no candidate, and at a Point where many live would only crowd
    out the ones on duty (set_duty and block_partner keep the set so between rebuilds; a
    set built before that heals at its next rebuild)."""
    rows = session.execute(_HOME_POSITIONS, {"partner_id": None})
    return [(pid, lat, lng, has_app) for pid, lat, lng, has_app in rows]


def _active_leg_counts(session: Session, ids: Iterable[int]) -> dict[int, int]:
    rows = session.execute(
        select(Leg.partner_id, func.count()).where(Leg.partner_id.in_(list(ids)),
                                                   Leg.status.in_(ACTIVE_LEG_STATES))
        .group_by(Leg.partner_id)
    )
    counts: dict[int, int] = {}
    for pid, n in rows:
        assert pid is not None, "partner_id IN (...) matches no NULL"
        counts[pid] = n
    return counts


def partner_facts(session: Session,
                  profiles: list[PartnerProfile]) -> dict[int, rules.PartnerFacts]:
    """Eligibility facts for these partners (vehicles and active legs from PostgreSQL)."""
    ids = [p.id for p in profiles]
    vehicles: dict[int, list[rules.VehicleFacts]] = {i: [] for i in ids}
    for v in session.scalars(select(Vehicle).where(Vehicle.partner_id.in_(ids))):
        vehicles[v.partner_id].append(rules.VehicleFacts(v.type, v.payload_kg, v.max_size,
                                                         v.active))
    active = _active_leg_counts(session, ids)
    return {
        p.id: rules.PartnerFacts(p.id, p.on_duty, active.get(p.id, 0), p.max_active_legs,
                                 p.trust_tier, tuple(vehicles[p.id]), payable(p))
        for p in profiles
    }


_CANDIDATE_FACTS = text("""
SELECT p.id, p.on_duty, p.max_active_legs, p.trust_tier, p.rating_x100, p.offers_received,
       p.offers_accepted,
       (p.kyc_status = 'verified' AND p.payout_account_id IS NOT NULL) AS payable,
       COALESCE((SELECT json_agg(json_build_array(v.type, v.payload_kg, v.max_size, v.active))
                 FROM vehicles v WHERE v.partner_id = p.id), '[]'::json) AS vehicles,
       (SELECT count(*) FROM legs l WHERE l.partner_id = p.id
          AND l.status = ANY(CAST(:active AS text[]))) AS active_legs,
       (SELECT COALESCE(sum(l.payout_paise), 0) FROM legs l WHERE l.partner_id = p.id
          AND l.delivered_at >= :start) AS earned_today
FROM partner_profiles p
WHERE p.id = ANY(CAST(:ids AS int[]))
""")


@dataclass(frozen=True)
class Ranked:
    candidate: rules.Candidate
    score: float


# A search that finds too few eligible partners among the nearest asks Redis again for
# this many times as many, up to CANDIDATES_LOOK_MAX, then for all within the radius.
CANDIDATES_LOOK_FACTOR = 4
CANDIDATES_LOOK_MAX = 1000


def find_candidates(session: Session, lat: float, lng: float, load: rules.Load,
                    radius_km: float, *, exclude: set[int] = frozenset()) -> list[Ranked]:  # type: ignore[assignment]
    """Eligible partners within ``radius_km`` of a point, best first (documented score).

    The nearest 3 x DISPATCH_MAX_CANDIDATES *eligible* partners are ranked: partners who
    may not take the load (off duty, full, the wrong vehicle) are left out before the list
    is cut, and while the nearest Redis gave are too few eligible ones it is asked for
    more, so a Point where dozens of partners live, most of them off duty, hides nobody
    on duty a little farther away.

    One Redis round trip finds the nearest partners with their cached facts; PostgreSQL
    is asked (one round trip) only for the partners whose facts are not cached, stale,
    or changed by this very transaction, and what it answers is cached for the next
    search (see geo_index's "cached eligibility facts").
    """
    cfg = config()
    pool = cfg.max_candidates * 3
    eligible, facts = _eligible_near(session, lat, lng, load, radius_km, exclude=exclude,
                                     enough=lambda found, _facts: len(found) >= pool)
    cands = []
    for n in eligible[:pool]:
        f = facts[n.partner_id]
        cands.append(rules.Candidate(n.partner_id, n.distance_m, f.rating_x100,
                                     f.offers_received, f.offers_accepted, f.earned_today))
    radius_m = int(radius_km * 1000)
    ranked = rules.rank(cands, cfg.weights, radius_m)[: cfg.max_candidates]
    top = max((c.earned_today_paise for c in ranked), default=0)
    return [Ranked(c, rules.score(c, cfg.weights, radius_m, top)) for c in ranked]


def _eligible_near(session: Session, lat: float, lng: float, load: rules.Load,
                   radius_km: float, *, exclude: set[int],
                   enough: Callable[[list[geo_index.Nearby], dict[int, _Facts]], bool],
                   bounded: bool = False,
                   ) -> tuple[list[geo_index.Nearby], dict[int, _Facts]]:
    """The eligible partners within ``radius_km`` (nearest first) and the facts read.

    Redis is asked for the nearest 3 x DISPATCH_MAX_CANDIDATES (plus ``exclude``) first,
    and again for CANDIDATES_LOOK_FACTOR times as many while ``enough`` says no and some
    may have been left out, up to CANDIDATES_LOOK_MAX, then for all within the radius;
    ``bounded`` stops at the first ask past CANDIDATES_LOOK_MAX instead."""
    cfg = config()
    session.flush()  # this transaction's own changes count as touched (facts_watch)
    now = clock.now()
    day = now.astimezone(IST).date()
    own = facts_watch.touched(session)
    limit: int | None = cfg.max_candidates * 3 + len(exclude)
    facts: dict[int, _Facts] = {}
    while True:
        found, capped = geo_index.nearby_capped(
            lat, lng, radius_km, max_age_s=cfg.location_max_age_s, now=now, limit=limit,
            with_facts=True, homes=lambda: _home_positions(session))
        near = [n for n in found if n.partner_id not in exclude]
        facts.update(_facts_of(session, [n for n in near if n.partner_id not in facts],
                               now, day, own))
        eligible = [n for n in near if n.partner_id in facts and rules.ineligible_reason(
            facts[n.partner_id].partner, load) is None]
        if enough(eligible, facts) or not capped or limit is None:
            break
        if limit >= CANDIDATES_LOOK_MAX and bounded:
            break
        limit = limit * CANDIDATES_LOOK_FACTOR if limit < CANDIDATES_LOOK_MAX else None
    return eligible, facts


def _facts_of(session: Session, near: list[geo_index.Nearby], now: datetime, day: date,
              own: set[int]) -> dict[int, _Facts]:
    """These partners' facts: cached ones where good, the rest from PostgreSQL."""
    facts: dict[int, _Facts] = {}
    for n in near:
        if n.facts is not None and n.partner_id not in own:
            cached = _unpack_facts(n.partner_id, n.facts, now, day)
            if cached is not None:
                facts[n.partner_id] = cached
    missing = [n for n in near if n.partner_id not in facts]
    if missing:
        facts.update(_read_facts(session, missing, now, day, own))
    return facts


@dataclass(frozen=True)
class _Facts:
    """What ranking knows about a partner besides where they are."""

    partner: rules.PartnerFacts
    rating_x100: int
    offers_received: int
    offers_accepted: int
    earned_today: int


FACTS_MAX_AGE_S = 300  # cached facts older than this are read again (see facts_watch)
_FACTS_VERSION = "2"  # 2: payable


def _pack_facts(f: _Facts, read_at: datetime, day: date) -> str:
    """One line: version, when read, the IST day of the earnings, then the facts."""
    p = f.partner
    vehicles = ",".join(f"{v.type}:{v.payload_kg}:{v.max_size}:{int(v.active)}"
                        for v in p.vehicles)
    return "|".join(map(str, (
        _FACTS_VERSION, int(read_at.timestamp()), day.isoformat(), int(p.on_duty),
        int(p.payable), p.active_legs, p.max_active_legs, p.trust_tier, f.rating_x100,
        f.offers_received, f.offers_accepted, f.earned_today, vehicles)))


def _unpack_facts(partner_id: int, packed: str, now: datetime, day: date) -> _Facts | None:
    """The cached facts, or None when they are of another version, too old, or of
    another day's earnings (or unreadable: then the database answers)."""
    version, read_at, fact_day, rest = (packed.split("|", 3) + ["", "", ""])[:4]
    if version != _FACTS_VERSION or fact_day != day.isoformat():
        return None
    try:
        if now.timestamp() - int(read_at) > FACTS_MAX_AGE_S:
            return None
        return _parse_facts(partner_id, rest)
    except ValueError:
        return None


@lru_cache(maxsize=4096)
def _parse_facts(partner_id: int, packed: str) -> _Facts:
    # Searches near one place see the same partners' unchanged facts again and again.
    fields = packed.split("|")
    if len(fields) != 10:
        raise ValueError("cached facts have the wrong number of fields")
    on_duty, paid, active, most, tier, rating, received, accepted, earned = map(
        int, fields[:9])
    vehicles = []
    for item in filter(None, fields[9].split(",")):
        vtype, kg, size, active_flag = item.split(":")
        vehicles.append(rules.VehicleFacts(vtype, int(kg), size, active_flag == "1"))
    partner = rules.PartnerFacts(partner_id, bool(on_duty), active, most, tier,
                                 tuple(vehicles), bool(paid))
    return _Facts(partner, rating, received, accepted, earned)


def _read_facts(session: Session, near: list[geo_index.Nearby], now: datetime, day: date,
                own: set[int]) -> dict[int, _Facts]:
    """These partners' facts from PostgreSQL (one round trip), cached for the next search
    unless this transaction changed them (not committed, so not for others to see)."""
    start = datetime.combine(day, time.min, IST)
    rows = session.execute(_CANDIDATE_FACTS, {
        "ids": [n.partner_id for n in near], "active": list(ACTIVE_LEG_STATES),
        "start": start})
    out = {}
    for row in rows:
        out[row.id] = _Facts(
            rules.PartnerFacts(row.id, row.on_duty, row.active_legs, row.max_active_legs,
                               row.trust_tier, tuple(rules.VehicleFacts(t, kg, size, active)
                                                     for t, kg, size, active in row.vehicles),
                               row.payable),
            row.rating_x100, row.offers_received, row.offers_accepted, int(row.earned_today))
    gens = {n.partner_id: n.gen for n in near}
    try:
        geo_index.store_facts((pid, gens[pid], _pack_facts(f, now, day))
                              for pid, f in out.items() if pid not in own)
    except RedisError:
        log.warning("could not cache dispatch facts", extra={"partners": len(out)})
    return out


# --- planning -------------------------------------------------------------------------


def _legs(session: Session, booking: Booking) -> list[Leg]:
    return list(session.scalars(select(Leg).where(Leg.booking_id == booking.id)
                                .order_by(Leg.sequence)))


def _fleet(session: Session, lat: float, lng: float, load: rules.Load, *,
           exclude: set[int] = frozenset()) -> set[VehicleType]:  # type: ignore[assignment]
    """Vehicle types that may carry the load from a leg's start at (lat, lng): those of the
    eligible partners within the widest search radius or, with nobody there right now,
    every type able to carry it. ``exclude``: partners never offered the load (the
    booking's own parties), whose vehicles must not make a trip look rideable that nobody
    will be offered.

    Every eligible partner counts, not only the DISPATCH_MAX_CANDIDATES best ranked: a
    motorcycle rider ranked below twenty bicycles near him is still offered the trip in
    a later round, so it goes direct. The look stops once every type able to carry the
    load is seen, and is bounded (_eligible_near's ``bounded``) where many are near."""
    able = {vt for vt in VehicleType if can_carry(vt, load.size, load.weight)}

    def types(found: list[geo_index.Nearby], facts: dict[int, _Facts]) -> set[VehicleType]:
        return {VehicleType(v.type) for n in found for v in facts[n.partner_id].partner.vehicles
                if rules.vehicle_fits(v, load)}

    eligible, facts = _eligible_near(
        session, lat, lng, load, config().radii_km[-1], exclude=exclude, bounded=True,
        enough=lambda found, facts: types(found, facts) >= able)
    return types(eligible, facts) if eligible else able


ROAD_CANDIDATES_MAX = 4096


def _road_nearest_candidates(session: Session, end: rules.Stop,
                             dist: Callable[[rules.Stop, rules.Stop], int]) -> list[rules.Stop]:
    """Active Points among which the one nearest ``end`` by road surely is: the nearest
    in a straight line (an index scan), widened until the farthest of them in a straight
    line is at least the shortest road found, since no road is shorter than the straight
    line (give or take OSRM snapping the ends to a road)."""
    k = points.CANDIDATES
    while True:
        found = [rules.Stop(p.lat, p.lng, p.id)
                 for p in points.nearest(session, [(end.lat, end.lng)], k)[0]]
        if len(found) < k or k >= ROAD_CANDIDATES_MAX:
            return found  # every active Point, or as far as it is worth looking
        shortest_road = min(dist(end, p) for p in found)
        if max(haversine_m(end.lat, end.lng, p.lat, p.lng) for p in found) >= shortest_road:
            return found
        k *= 4


def plan_legs(session: Session, booking: Booking, *, tries: int = 3) -> list[Leg]:
    """Keep the direct leg, or replan it into a relay through Points (payouts by distance,
    at least ``MIN_LEG_PAYOUT_PAISE`` a leg). The relay's Points are locked (shared) and
    read again before its legs are made: one closed or moved since it was read
    (admin.close_point, move_point) is planned around, ``tries`` times at most."""
    legs = _legs(session, booking)
    if len(legs) != 1:
        return legs
    leg = legs[0]
    hours = config().delivery_hours[SpeedTier(booking.speed_tier)]
    load = load_of(booking)
    # The sender and recipient are never offered their own parcel (_excluded), so their
    # vehicles do not count towards riding it either.
    parties = _parties_of(session, booking.id)
    fleet = _fleet(session, leg.from_lat, leg.from_lng, load, exclude=parties)
    if any(rules.can_do_direct(vt, leg.distance_m, hours) for vt in fleet):
        return legs
    detour = active_rate_card(session).detour_factor_bp
    osrm = get_settings().osrm_url
    cache: dict[tuple, int] = {}

    def dist(a: rules.Stop, b: rules.Stop) -> int:
        key = (a.lat, a.lng, b.lat, b.lng)
        if key not in cache:
            cache[key] = road_distance_m((a.lat, a.lng), (b.lat, b.lng), detour_factor_bp=detour,
                                         osrm_url=osrm).metres
        return cache[key]

    # The relay's Points are the nearest to the pickup and to the drop by road (or, when
    # no relay through those holds, among the few nearest: plan_relay). Measuring the
    # road to every Point cost a call per Point (an OSRM request, where one is set); now
    # only to the candidates that must hold the road-nearest one (points.CANDIDATES of
    # them at least, which hold the next nearest too as a rule).
    pickup, drop = rules.Stop(leg.from_lat, leg.from_lng), rules.Stop(leg.to_lat, leg.to_lng)
    candidates = {s.point_id: s for end in (pickup, drop)
                  for s in _road_nearest_candidates(session, end, dist)}
    relay_points = sorted(candidates.values(), key=lambda stop: stop.point_id or 0)
    # Each leg within the range of the vehicles around its own start (the pickup, or the
    # Point it leaves from), whose riders are the ones offered it: a leg none of them can
    # ride would strand the parcel at a Point halfway, while a booking nobody takes before
    # pickup is refunded.
    ranges: dict[tuple[float, float], int | None] = {}

    def max_leg_m(start: rules.Stop) -> int | None:
        at = (start.lat, start.lng)
        if at not in ranges:
            near = fleet if at == (pickup.lat, pickup.lng) else _fleet(
                session, start.lat, start.lng, load, exclude=parties)
            ranges[at] = max((rules.VEHICLE_RANGE_KM[vt] * 1000 for vt in near), default=None)
        return ranges[at]

    stops = rules.plan_relay(pickup, drop, relay_points, dist, max_leg_m)
    if stops is None:
        return legs
    if not _points_still_there(session, stops):
        log.info("relay point changed while planning", extra={"booking_id": booking.id})
        return plan_legs(session, booking, tries=tries - 1) if tries > 1 else legs
    distances = [dist(a, b) for a, b in zip(stops, stops[1:], strict=False)]
    payouts = rules.relay_payouts(booking.partner_share_paise, distances)
    if payouts is None:
        log.warning("share too small to relay", extra={"booking_id": booking.id})
        return legs
    last_stop = stops[-1]
    first_to = stops[1]
    leg.to_point_id, leg.to_lat, leg.to_lng = first_to.point_id, first_to.lat, first_to.lng
    leg.distance_m, leg.payout_paise = distances[0], payouts[0]
    out = [leg]
    for i in range(1, len(distances)):
        a, b = stops[i], stops[i + 1]
        new = Leg(booking_id=booking.id, sequence=i + 1, status=LegStatus.PENDING.value,
                  from_point_id=a.point_id, to_point_id=b.point_id if b is not last_stop
                  else None, from_lat=a.lat, from_lng=a.lng, to_lat=b.lat, to_lng=b.lng,
                  distance_m=distances[i], payout_paise=payouts[i], otp_failures=0)
        session.add(new)
        session.flush()
        from core.services.booking import record

        record(session, "leg", new.id, None, LegStatus.PENDING, SYSTEM, "relay leg planned")
        out.append(new)
    log.info("relay planned", extra={"booking_id": booking.id, "legs": len(out)})
    return out


def _points_still_there(session: Session, stops: list[rules.Stop]) -> bool:
    """Lock (shared) the relay's Points, as they are now: True if each is active still,
    where it was read. An operator closing or moving one (admin.close_point, move_point)
    holds it for update, and then sees this relay's legs; or it waits for theirs."""
    wanted = {s.point_id: (s.lat, s.lng) for s in stops if s.point_id is not None}
    rows = session.execute(select(Point.id, Point.lat, Point.lng).where(
        Point.id.in_(list(wanted)), Point.active.is_(True))
        .order_by(Point.id).with_for_update(read=True)).tuples()
    return {pid: (lat, lng) for pid, lat, lng in rows} == wanted


# --- the search -----------------------------------------------------------------------


def start_dispatch(booking_id: int) -> str:
    """Job: a paid booking gets its legs planned and its first leg offered (idempotent)."""
    with transaction() as session:
        lock_legs(session, booking_id)  # the legs before the booking, as everywhere
        booking = session.get(Booking, booking_id, with_for_update=True)
        if booking is None:
            return "missing"
        if booking.status != BookingStatus.PAID.value:
            return "already-" + booking.status
        legs = plan_legs(session, booking)
        move_booking(session, booking, BookingStatus.DISPATCHING, SYSTEM,
                     "paid; looking for a partner" + (" (relay)" if len(legs) > 1 else ""))
        # No "looking for a rider" here: the payment message just said so. It is sent when
        # the booking goes back to dispatching (a rider gave the job back).
        start_search(session, booking, legs[0])
        return "dispatching"


def start_search(session: Session, booking: Booking, leg: Leg, *,
                 actor: Actor = SYSTEM) -> DispatchSearch:
    """Begin (or begin again) looking for a partner for ``leg``; offers the first batch."""
    cfg = config()
    now = clock.now()
    search = session.scalar(select(DispatchSearch).where(DispatchSearch.leg_id == leg.id)
                            .with_for_update())
    deadline = now + timedelta(seconds=cfg.search_deadline_s[SpeedTier(booking.speed_tier)])
    if search is None:
        search = DispatchSearch(leg_id=leg.id, round=1, started_at=now)
        session.add(search)
    else:
        search.round += 1
        search.started_at = now
    search.status = rules.SearchStatus.ACTIVE.value
    search.pass_no, search.radius_step, search.batch_no = 1, 0, 0
    search.exhausted_pass, search.deadline_at, search.next_try_at = 0, deadline, None
    if leg.status != LegStatus.OFFERING.value:
        move_leg(session, leg, LegStatus.OFFERING, actor, "looking for a partner")
    session.flush()
    _schedule_in(session, (deadline - now).total_seconds(), "workers.dispatch.search_deadline",
                 leg.id, search.round, job_id=f"dispatch-deadline-{leg.id}-{search.round}")
    offer_next_batch(session, booking, leg, search)
    return search


def _excluded(session: Session, leg: Leg, search: DispatchSearch) -> set[int]:
    """Partners not to offer again now: they gave it back (or had it taken back), said no,
    or had it this pass (an offer left to expire, or closed by going OFF duty, which is
    recorded as expired: back ON, they are asked again in a later pass). Once the leg has
    paused for want of anyone (a relay leg: it waits, round after round), a no from before
    the pause is forgotten: the one rider at a Point may have changed their mind, and the
    parcel would otherwise wait there for good. A give-back's new round forgets none.
    Nor is a rider of the relay's earlier legs who still holds it (_carriers_before)."""
    paused_at = session.scalar(select(func.max(TransitionLog.at)).where(
        TransitionLog.entity == "leg", TransitionLog.entity_id == leg.id,
        TransitionLog.from_status == LegStatus.OFFERING.value,
        TransitionLog.to_status == LegStatus.PENDING.value))
    rows = session.execute(
        select(DispatchOffer.partner_id, DispatchOffer.status, DispatchOffer.round,
               DispatchOffer.pass_no, DispatchOffer.responded_at)
        .where(DispatchOffer.leg_id == leg.id))
    out = set()
    for pid, status, rnd, pass_no, answered in rows:
        if status == rules.OfferStatus.CANCELLED or (
                status == rules.OfferStatus.DECLINED and (
                    paused_at is None or answered is None or answered > paused_at)):
            out.add(pid)
        elif rnd == search.round and pass_no == search.pass_no:
            out.add(pid)
        elif status == rules.OfferStatus.OPEN:
            out.add(pid)
    return out | _parties_of(session, leg.booking_id) | _carriers_before(session, leg)


def _carriers_before(session: Session, leg: Leg) -> set[int]:
    """The riders of a relay's earlier legs still holding them (taken, picked up, or
    locked; not delivered): the leg was split off because their vehicle cannot ride on,
    and the handover at the Point is between two people. A rider who delivered their leg
    is no longer one of them: whether they may ride the next is the range rules' say."""
    if leg.sequence <= 1:
        return set()
    return set(session.scalars(select(Leg.partner_id).where(
        Leg.booking_id == leg.booking_id, Leg.sequence < leg.sequence,
        Leg.partner_id.is_not(None), Leg.status.in_(ACTIVE_LEG_STATES))))


def _parties_of(session: Session, booking_id: int) -> set[int]:
    """The partner profiles of the booking's own sender and recipient: nobody carries a
    parcel of their own, for the pickup and drop codes prove a handover between two
    people (one person would hold both ends of it)."""
    booking = session.get(Booking, booking_id)
    if booking is None:
        return set()
    return parties(session, booking.customer_id, booking.recipient_phone)


def parties(session: Session, customer_id: int | None,
            recipient_phone: str | None = None) -> set[int]:
    """The partner profiles of a sender (a person id) and a recipient (a phone), either
    unknown (None): those never offered the parcel between them (see _parties_of)."""
    people = select(Person.id).where(or_(
        Person.id == customer_id if customer_id is not None else false(),
        Person.phone == recipient_phone if recipient_phone else false()))
    return set(session.scalars(select(PartnerProfile.id).where(
        PartnerProfile.person_id.in_(people))))


def offer_next_batch(session: Session, booking: Booking, leg: Leg,
                     search: DispatchSearch) -> int:
    """Offer the leg to the next batch of candidates, widening the radius when nobody is
    left; when even the widest radius is exhausted, tell ops/customer and retry later."""
    cfg = config()
    if booking.status in CLOSED_BOOKING:
        search.status = rules.SearchStatus.DONE.value
        search.next_try_at = None
        _withdraw_open(session, leg, booking)
        return 0
    exclude = _excluded(session, leg, search)
    # One open offer per partner at a time, so a bare "1" always names one job.
    exclude |= set(session.scalars(select(DispatchOffer.partner_id).where(
        DispatchOffer.status == rules.OfferStatus.OPEN.value)))
    load = load_of(booking, leg)  # only partners whose vehicle can ride the whole leg
    busy: set[int] = set()
    while True:
        radius = cfg.radii_km[search.radius_step]
        ranked = find_candidates(session, leg.from_lat, leg.from_lng, load, radius,
                                 exclude=exclude)
        if not ranked and busy:
            # Nobody left but riders busy this instant: ask them again in a moment, not
            # farther riders first, nor ops as if there were nobody (_exhausted).
            _retry_busy(session, leg, search)
            return 0
        if not ranked and search.radius_step + 1 < len(cfg.radii_km):
            search.radius_step += 1
            log.info("widening search", extra={"leg_id": leg.id,
                                               "radius_km": cfg.radii_km[search.radius_step]})
            continue
        if not ranked:
            _exhausted(session, booking, leg, search)
            return 0
        batch = ranked[: cfg.batch_size(search.batch_no)]
        # Another search may be offering to the same partners right now: lock their rows,
        # then leave out any that got an open offer meanwhile (one open offer each). The
        # rows say too whether they are still on duty and payable: the ranking may have
        # used cached facts that a change lost in a Redis failure left stale (OFF, a
        # suspension), and PostgreSQL is the truth. A row another transaction holds is
        # skipped, not waited for: that rider is busy this instant (giving a job back,
        # taken off one, going OFF, taking another), and a take-back that holds its own
        # rider's row and waits for his while he gives his job back (and waits for hers,
        # to offer it on) would deadlock, in whatever order the rows were locked. A
        # rider left out is not counted as asked: the next batch may offer it to them.
        ids = sorted(r.candidate.partner_id for r in batch)
        # An SMS-only partner whose number stopped our SMS could read no offer (set_duty
        # keeps them off duty; this is for one on duty from before).
        reachable = PartnerProfile.has_app.is_(True) | PartnerProfile.person_id.not_in(
            select(Person.id).where(Person.sms_opted_out.is_(True)))
        may_work = (PartnerProfile.on_duty.is_(True), PartnerProfile.kyc_status == VERIFIED_KYC,
                    PartnerProfile.payout_account_id.is_not(None), reachable)
        working = set(session.scalars(
            select(PartnerProfile.id).where(PartnerProfile.id.in_(ids), *may_work)
            .order_by(PartnerProfile.id).with_for_update(skip_locked=True)))
        taken = set(session.scalars(select(DispatchOffer.partner_id).where(
            DispatchOffer.partner_id.in_(ids),
            DispatchOffer.status == rules.OfferStatus.OPEN.value)))
        left_out = set(ids) - working
        # Those skipped for a lock, working as last committed (the rest stopped working).
        now_busy = set(session.scalars(select(PartnerProfile.id).where(
            PartnerProfile.id.in_(left_out), *may_work))) if left_out else set()
        if now_busy:
            log.info("ranked partners busy left out of this batch",
                     extra={"leg_id": leg.id, "partners": len(now_busy)})
        busy |= now_busy
        gone = left_out - now_busy
        if gone:
            log.info("ranked partners no longer working left out",
                     extra={"leg_id": leg.id, "partners": len(gone)})
            # Their cached facts are stale: read from PostgreSQL for the rest of this
            # transaction, and dropped from Redis when it commits (as if changed here).
            session.info.setdefault(facts_watch.TOUCHED, set()).update(gone)
        batch = [r for r in batch if r.candidate.partner_id in working - taken]
        if batch:
            break
        # All of them were offered another job meanwhile, stopped working, or are busy:
        # rank again.
        exclude |= taken | gone | busy
    now = clock.now()
    expires = now + timedelta(seconds=cfg.offer_timeout_s)
    # The places as place() names them; if the offer is too long then, the villages
    # without the customers' landmarks (cut further if need be): a landmark cut shorter
    # than place() cuts it says little, and an erasure would not find it (retention).
    places = [(place(session, booking, leg, "from"), place(session, booking, leg, "to")),
              (place(session, booking, leg, "from", landmark=False),
               place(session, booking, leg, "to", landmark=False))]
    for r in batch:
        partner = session.get(PartnerProfile, r.candidate.partner_id)
        assert partner is not None
        offer = DispatchOffer(leg_id=leg.id, partner_id=partner.id,
                              status=rules.OfferStatus.OPEN.value, round=search.round,
                              pass_no=search.pass_no, batch_no=search.batch_no,
                              distance_m=r.candidate.distance_m, score=r.score,
                              offered_at=now, expires_at=expires)
        session.add(offer)
        partner.offers_received = PartnerProfile.offers_received + 1
        session.flush()
        person = _person(session, partner)
        lang = _lang(person)
        _sms_partner(session, partner, "dispatch.offer", dedupe_key=f"offer-{offer.id}",
                     booking_id=booking.id, **offer_fields(
                         lang, places, job=job_code(leg), km=f"{leg.distance_m / 1000:.1f}",
                         size=i18n.t(f"dispatch.size.{load.size}", lang),
                         kg=WeightBucket(load.weight).max_grams // 1000,
                         payout_paise=leg.payout_paise))
        # The offer closes when its grace ends too: until then a late "1" may still take
        # it, so no other offer may reach this partner (a bare "1" would take that one).
        _schedule_in(session, cfg.offer_timeout_s + cfg.offer_grace_s,
                     "workers.dispatch.offer_timeout", offer.id,
                     job_id=f"offer-timeout-{offer.id}")
    search.batch_no += 1
    # If the timeout jobs are lost (worker killed before they were scheduled), the sweep
    # finds the offers past expires_at and moves the search on.
    search.next_try_at = expires
    return len(batch)


# How often ops are reminded of a relay leg still without a rider (its pause each round).
PAUSED_REMIND = timedelta(hours=4)
PAUSED_TOLD_KEY = "dispatch:ops-paused-told:{leg}"  # when ops last heard (clock, epoch s)

# How soon a search whose only riders left were busy (offer_next_batch) asks them again.
BUSY_RETRY = timedelta(seconds=10)


def _retry_busy(session: Session, leg: Leg, search: DispatchSearch) -> None:
    """The batch found nobody but riders whose rows another transaction held: the search
    goes on in BUSY_RETRY (the same pass, radius and batch), or the sweep moves it on
    should that job be lost (next_try_at)."""
    now = clock.now()
    search.next_try_at = min(now + BUSY_RETRY, search.deadline_at)
    _schedule_in(session, (search.next_try_at - now).total_seconds(),
                 "workers.dispatch.continue_search", leg.id,
                 job_id=f"dispatch-busy-{leg.id}-{search.round}-{now.timestamp():.0f}")


def _exhausted(session: Session, booking: Booking, leg: Leg, search: DispatchSearch) -> None:
    cfg = config()
    now = clock.now()
    if search.exhausted_pass == 0:
        # Once per round: ops can call partners, the customer knows we are still on it.
        # Once per leg: a relay's later rounds are the pause's (its reminder, below).
        alert_ops(session, "dispatch.ops_no_partner", booking_id=booking.id,
                  dedupe_key=f"leg-{leg.id}-ops-nopartner",
                  ref=booking.reference, job=job_code(leg))
        if leg.sequence == 1:
            # A relay's next leg runs dry as the parcel is picked up: nothing is late yet
            # (the first rider is still on the way to the Point), so the customer, just
            # told the rider has their parcel, hears nothing. A leg still without a rider
            # at its deadline is a delay: they hear it then (_fail_search).
            notify.notify_customer(session, booking, "dispatch.still_searching",
                                   dedupe_key=f"leg-{leg.id}-r{search.round}-searching")
    search.exhausted_pass = search.pass_no
    search.pass_no += 1
    search.radius_step, search.batch_no = 0, 0
    retry_at = now + timedelta(seconds=cfg.retry_s)
    if retry_at < search.deadline_at:
        search.next_try_at = retry_at
        _schedule_in(session, cfg.retry_s, "workers.dispatch.continue_search", leg.id,
                     job_id=f"dispatch-retry-{leg.id}-{search.round}-{search.pass_no}")
    else:
        search.next_try_at = search.deadline_at


def _tell_carrier_to_wait(session: Session, booking: Booking, leg: Leg,
                          search: DispatchSearch) -> None:
    """A relay's next leg is paused, nobody took it: the rider bringing the parcel to its
    Point hears to keep it safe (nobody there can give him the code to hand it over), once
    per pause. Not each time a pass runs dry: the first does as he picks up, the next
    round's two minutes after the pause. When a rider takes the leg he gets the handover
    code (``send_leg_codes``: dispatch.handover_give)."""
    if leg.sequence == 1:
        return
    prev = session.scalar(select(Leg).where(Leg.booking_id == booking.id,
                                            Leg.sequence == leg.sequence - 1))
    if prev is None or prev.partner_id is None or prev.status not in ACTIVE_LEG_STATES:
        return
    carrier = session.get(PartnerProfile, prev.partner_id)
    assert carrier is not None
    _sms_partner(session, carrier, "dispatch.carrier_wait", booking_id=booking.id,
                 dedupe_key=f"leg-{leg.id}-r{search.round}-carrier-wait", job=job_code(prev),
                 point=place(session, booking, leg, "from"),
                 ops_phone=get_settings().ops_phone)


def _open_offers(session: Session, leg_id: int) -> list[DispatchOffer]:
    return list(session.scalars(select(DispatchOffer).where(
        DispatchOffer.leg_id == leg_id, DispatchOffer.status == rules.OfferStatus.OPEN.value)
        .order_by(DispatchOffer.id).with_for_update()))


def _lock_leg(session: Session, leg_id: int) -> Leg | None:
    return session.get(Leg, leg_id, with_for_update=True, populate_existing=True)


def _earlier_legs(leg_ids: Iterable[int]) -> Select[Leg]:
    """The relay legs before each of ``leg_ids`` (of the same booking), in order."""
    later = aliased(Leg)
    return (select(Leg).join(later, (later.booking_id == Leg.booking_id)
                             & (later.sequence > Leg.sequence))
            .where(later.id.in_(list(leg_ids))).order_by(Leg.id))


def _lock_legs_before(session: Session, leg_id: int) -> None:
    """Lock the relay legs before ``leg_id``, as whoever may take it back must before its
    own lock and the booking's: taking a relay leg back writes the leg before it too
    (_give_back: a new handover code), whose rider's DROP holds that leg and then waits
    for the booking (legs in order, then the booking, as lock_legs). Locked and read in
    one statement: a leg read before its lock may be stale (another's DROP since)."""
    session.scalars(_earlier_legs((leg_id,)).with_for_update(of=Leg)
                    .execution_options(populate_existing=True)).all()


def _search_of(session: Session, leg_id: int) -> DispatchSearch | None:
    return session.scalar(select(DispatchSearch).where(DispatchSearch.leg_id == leg_id)
                          .with_for_update())


def _maybe_continue(session: Session, leg: Leg) -> None:
    """After an offer closed: if nothing else is open for the leg, offer the next batch."""
    if leg.status != LegStatus.OFFERING.value or _open_offers(session, leg.id):
        return
    search = _search_of(session, leg.id)
    booking = session.get(Booking, leg.booking_id, with_for_update=True)
    if search is None or booking is None or search.status != rules.SearchStatus.ACTIVE.value:
        return
    if clock.now() >= search.deadline_at and booking.status not in CLOSED_BOOKING:
        _fail_search(session, booking, leg, search)
        return
    offer_next_batch(session, booking, leg, search)


def _lock_offer(session: Session, offer_id: int) -> tuple[Leg, DispatchOffer] | None:
    """The offer and its leg, locked in the leg-then-offer order every taker keeps; None
    for an offer that is gone."""
    leg_id = session.scalar(select(DispatchOffer.leg_id).where(DispatchOffer.id == offer_id))
    if leg_id is None:
        return None
    leg = _lock_leg(session, leg_id)
    offer = session.get(DispatchOffer, offer_id, with_for_update=True, populate_existing=True)
    assert leg is not None and offer is not None
    return leg, offer


def offer_timeout(offer_id: int) -> str:
    """Job ``offer-timeout-<id>``: expire an unanswered offer; changes nothing if it was
    answered (accepted, declined, withdrawn) in the meantime."""
    with transaction() as session:
        locked = _lock_offer(session, offer_id)
        if locked is None:
            return "missing"
        leg, offer = locked
        if offer.status != rules.OfferStatus.OPEN.value:
            return "already-" + offer.status
        if clock.now() + DUE_TOLERANCE < offer.expires_at + timedelta(
                seconds=config().offer_grace_s):
            return "not-due"  # late replies are still taken until the grace ends
        _expire(session, offer)
        if not _off_after_missed(session, offer):
            _unreached_run_after(session, offer)
        _maybe_continue(session, leg)
        return "expired"


def _expire(session: Session, offer: DispatchOffer) -> None:
    offer.status = rules.OfferStatus.EXPIRED.value
    offer.responded_at = clock.now()


def _missed(status: str, responded_at: datetime | None, expires_at: datetime) -> bool:
    """Whether an offer was left to expire unanswered: not answered (even late:
    _answered_late), not withdrawn, and not closed by the partner going OFF
    (_closed_going_off), which is their doing."""
    return (status == rules.OfferStatus.EXPIRED.value and responded_at is not None
            and responded_at >= expires_at)


def _answered_late(offer: DispatchOffer) -> None:
    """A yes or no to the partner's offer after its time and grace: too late to take it
    (the job went on without them), but answered, so not a missed offer toward the
    automatic OFF (_off_after_missed): a rider whose "1" came a minute late on 2G did
    not ignore the job. Kept expired, with no response time: an expiry's time is set
    (_missed), a going OFF's is before the offer's end (_closed_going_off)."""
    offer.status = rules.OfferStatus.EXPIRED.value
    offer.responded_at = None


# An offer's SMS in one of these never reached the rider: still waiting (held back behind
# an earlier message's retry, or waiting for its own: the outbox never sends it once the
# offer is over, outbox._offer_over), or Twilio failed it or could not deliver it.
_OFFER_SMS_NOT_SENT = ("pending", "failed", "undelivered")


def _offer_sms_not_sent() -> ColumnElement[bool]:
    """For a query over DispatchOffer: whether the offer's SMS ("offer-<id>") is known
    not to have reached the rider. An offer with no SMS row (sent nowhere, seen in the app
    only) or one being sent, sent or delivered may have been seen: it is not this."""
    return select(OutboxMessage.id).where(
        OutboxMessage.dedupe_key == func.concat("offer-", DispatchOffer.id),
        OutboxMessage.status.in_(_OFFER_SMS_NOT_SENT)).exists()


def _off_after_missed(session: Session, offer: DispatchOffer) -> bool:
    """The offer just expired unanswered: if it is the partner's ``missed_offers_off()``-th
    such offer in a row since they last came ON, they are put OFF duty as if they had sent
    OFF (set_duty: out of the home set, a ``duty_off`` event; jobs they hold stay theirs),
    an ``auto_off`` event tells ops why, and they hear it once by SMS. A partner close to
    every pickup who ignores offers would otherwise get each job's first offer and cost it
    the offer's time. Any answer (yes or no), or an OFF, breaks the run; offers the
    platform withdrew do not count either way, nor, for a partner without the app, do
    offers whose SMS never reached them (_offer_sms_not_sent: held back, failed): nobody
    can answer an offer they never had.
    Read from the partner's offers (newest first, by the partner_id index), only when one
    of their offers expires."""
    n = missed_offers_off()
    if n == 0:
        return False
    partner = session.get(PartnerProfile, offer.partner_id, with_for_update=True,
                          populate_existing=True)
    assert partner is not None
    if not partner.on_duty or open_offers_of(session, partner):
        # Already OFF (or blocked); or another offer of theirs is still open (two searches
        # at once): its own expiry asks again, with its legs not locked here out of order.
        return False
    # With the app, every offer was theirs to see there (GET /partners/me/offers),
    # whatever became of its SMS; without it, the SMS was the offer.
    unseen = false() if partner.has_app else _offer_sms_not_sent()
    if session.scalar(select(unseen).where(DispatchOffer.id == offer.id)):
        log.info("expired offer never reached the partner; not counted as missed",
                 extra={"partner_id": partner.id, "offer_id": offer.id})
        return False
    back_on = session.scalar(select(func.max(PartnerEvent.at)).where(
        PartnerEvent.partner_id == partner.id, PartnerEvent.kind == "duty_on"))
    query = select(DispatchOffer.status, DispatchOffer.responded_at,
                   DispatchOffer.expires_at).where(
        DispatchOffer.partner_id == partner.id,
        DispatchOffer.status.not_in((rules.OfferStatus.OPEN.value,
                                     rules.OfferStatus.WITHDRAWN.value)),
        ~unseen)
    if back_on is not None:  # a run before their last ON is over: they were told
        query = query.where(DispatchOffer.offered_at >= back_on)
    last = session.execute(query.order_by(DispatchOffer.id.desc()).limit(n)).all()
    if len(last) < n or not all(_missed(*row) for row in last):
        return False
    answer = set_duty(session, partner, False)
    # The offer whose expiry put them OFF, by its job: their answer to it, come as it
    # expired, undoes this (_back_on_after_late_answer).
    session.add(PartnerEvent(partner_id=partner.id, leg_id=offer.leg_id, kind="auto_off",
                             at=clock.now()))
    job, jobs = answer.params.get("job"), answer.params.get("jobs")
    if jobs is not None:  # jobs in hand stay theirs: the SMS names each, as OFF does
        _sms_partner(session, partner, "dispatch.auto_off_jobs",
                     dedupe_key=f"offer-{offer.id}-auto-off", n=n, jobs=jobs)
    elif job is not None:  # a job in hand stays theirs: the SMS says so
        _sms_partner(session, partner, "dispatch.auto_off_job",
                     dedupe_key=f"offer-{offer.id}-auto-off", n=n, job=job)
    else:
        _sms_partner(session, partner, "dispatch.auto_off",
                     dedupe_key=f"offer-{offer.id}-auto-off", n=n)
    log.info("partner put off duty after missed offers",
             extra={"partner_id": partner.id, "missed": n})
    return True


# An offer whose SMS Twilio failed or could not deliver (the phone off, out of signal) never
# reached an SMS-only rider: it stops holding the job at once (offer_unreached). This many
# such offers in a row put him OFF, silently (no SMS can reach him), until he is heard
# from again (any SMS from him: back_on_reached) or sends ON.
UNREACHED_OFFERS_OFF = 3
# The audit entry that tells ops why (PartnerEvent's auto_off says only that he went OFF).
UNREACHED_OFF_AUDIT = "partner.auto_off_unreached"


# Twilio's errors that say the rider's phone or number could not take the SMS: an
# unreachable handset (off, out of signal), a message blocked to his number, an unknown
# handset, a landline or unreachable carrier, his STOP; or Twilio's refusal of his number
# itself: not a valid number (21211), not able to take SMS (21614), a landline (21635).
# Not 21612 (not reachable from our sending number: a sender set up wrong refuses every
# rider alike). Not our side's failures (a full queue, a filtered text, an account
# or connection problem): they say nothing of his phone, and a fleet-wide outage must put
# nobody OFF.
HANDSET_SMS_ERRORS = frozenset({"30003", "30004", "30005", "30006", outbox.STOP_ERROR_CODE,
                                "21211", "21614", "21635"})


def _offer_sms_failed() -> ColumnElement[bool]:
    """For a query over DispatchOffer: whether the offer's SMS ("offer-<id>") failed for
    good, for any reason (his handset's or our side's), or was refused before it went; not
    one the outbox did not send because the offer was over first (outbox.OFFER_OVER)."""
    return select(OutboxMessage.id).where(
        OutboxMessage.dedupe_key == func.concat("offer-", DispatchOffer.id),
        OutboxMessage.status.in_(FAILED_SMS),
        OutboxMessage.last_error.is_distinct_from(outbox.OFFER_OVER)).exists()


def _offer_sms_unreached() -> ColumnElement[bool]:
    """For a query over DispatchOffer: whether Twilio could not deliver the offer's SMS
    ("offer-<id>") to the rider's phone (HANDSET_SMS_ERRORS), or it was refused before it
    went (his number stopped our SMS): it never reached the rider, for a reason of his
    phone. Not one the outbox did not send because the offer was over first
    (outbox.OFFER_OVER), nor one our side failed: no sign of his phone."""
    return select(OutboxMessage.id).where(
        OutboxMessage.dedupe_key == func.concat("offer-", DispatchOffer.id),
        OutboxMessage.status.in_(FAILED_SMS),
        or_(OutboxMessage.error_code.in_(HANDSET_SMS_ERRORS),
            OutboxMessage.last_error == outbox.OPTED_OUT_SINCE)).exists()


_OFFER_SMS_KEY = re.compile(r"offer-(\d+)")


def offer_sms_lost(session: Session, row: OutboxMessage) -> None:
    """The outbox's word that a job offer's SMS failed for good and went no other way
    (outbox._code_lost: Twilio's status callback, or its refusal): the offer is dealt with
    in a job of its own (offer_unreached), after this commit, under its own locks (the
    outbox holds its rows' locks here, and the offer's leg comes first)."""
    found = _OFFER_SMS_KEY.fullmatch(row.dedupe_key or "")
    if found is None:
        return
    offer_id = int(found[1])
    _enqueue_after_commit(session, "workers.dispatch.offer_unreached", offer_id,
                          job_id=f"offer-unreached-{offer_id}")


def offer_unreached(offer_id: int) -> str:
    """Job ``offer-unreached-<id>``: the offer's SMS never reached the rider (without the
    app, the SMS was the offer). Still open, it stops holding the job: withdrawn without
    counting against him (not received, not missed: _withdraw), no SMS (none reaches him),
    and the search moves on to the next rider at once. Open or not, it may be his
    UNREACHED_OFFERS_OFF-th in a row (_off_after_unreached). A rider with the app could
    see the offer there: his offer keeps its time."""
    with transaction() as session:
        locked = _lock_offer(session, offer_id)
        if locked is None:
            return "missing"
        leg, offer = locked
        partner = session.get(PartnerProfile, offer.partner_id, with_for_update=True,
                              populate_existing=True)
        assert partner is not None
        if partner.has_app:
            return "in-app"
        if not session.scalar(select(_offer_sms_failed()).where(
                DispatchOffer.id == offer.id)):
            return "reached"  # a late "delivered" came first, or never this offer's
        # Whatever failed it (his handset, or our side: a full queue, a filtered text, a
        # lost connection), he never had it: it holds the job no longer. Only his
        # handset's failures count towards putting him OFF (_off_after_unreached).
        was_open = offer.status == rules.OfferStatus.OPEN.value
        if was_open:
            _withdraw(offer, partner)
            log.info("offer SMS did not reach the rider; offer withdrawn, search moves on",
                     extra={"partner_id": partner.id, "offer_id": offer.id})
        off = _off_after_unreached(session, partner, offer)
        if was_open:
            _maybe_continue(session, leg)
        return ("withdrawn" if was_open else "already-" + offer.status) + (
            "-off" if off else "")


def _unreached(status: str, responded_at: datetime | None, expires_at: datetime,
               sms_unreached: bool) -> bool:
    """Whether an offer (not open) never reached its rider and he did not answer it: its
    SMS failed, and it was withdrawn (offer_unreached) or expired unanswered (the failure
    reported after its time)."""
    return sms_unreached and (status == rules.OfferStatus.WITHDRAWN.value
                              or _missed(status, responded_at, expires_at))


def _off_after_unreached(session: Session, partner: PartnerProfile,
                         offer: DispatchOffer) -> bool:
    """The partner's offer (``offer``, locked with its leg, the partner too) never reached
    him: if it is his UNREACHED_OFFERS_OFF-th such offer in a row since he last came ON,
    he is put OFF as _off_after_missed does (set_duty; an ``auto_off`` event naming the
    offer's job), without an SMS (none reaches him), and an audit entry
    (UNREACHED_OFF_AUDIT) tells ops why. Near every pickup, he would otherwise get each
    job's first offer, and each would wait for its SMS to fail. Any offer that reached him
    (or he answered) breaks the run. His next SMS, whatever it says, puts him back ON
    (back_on_reached), as does his ON."""
    n = UNREACHED_OFFERS_OFF
    if not partner.on_duty or partner.has_app or open_offers_of(session, partner):
        # Already OFF; seen in the app; or another offer of his is open (a late report of
        # an offer closed before it was made): its own end asks again (offer_unreached,
        # or offer_timeout: _unreached_run_after), its leg not locked here out of order.
        return False
    back_on = session.scalar(select(func.max(PartnerEvent.at)).where(
        PartnerEvent.partner_id == partner.id, PartnerEvent.kind == "duty_on"))
    # An offer whose SMS never went, or failed on our side (_offer_sms_not_sent, not
    # _offer_sms_unreached), says nothing of his phone: neither in the run nor a break.
    query = select(DispatchOffer.status, DispatchOffer.responded_at, DispatchOffer.expires_at,
                   _offer_sms_unreached()).where(
        DispatchOffer.partner_id == partner.id,
        DispatchOffer.status != rules.OfferStatus.OPEN.value,
        or_(_offer_sms_unreached(), ~_offer_sms_not_sent()))
    if back_on is not None:
        query = query.where(DispatchOffer.offered_at >= back_on)
    last = session.execute(query.order_by(DispatchOffer.id.desc()).limit(n)).all()
    if len(last) < n or not all(_unreached(*row) for row in last):
        return False
    set_duty(session, partner, False)
    event = PartnerEvent(partner_id=partner.id, leg_id=offer.leg_id, kind="auto_off",
                         at=clock.now())
    session.add(event)
    session.flush()
    session.add(AuditEntry(actor=f"{SYSTEM.kind}:{SYSTEM.id}", action=UNREACHED_OFF_AUDIT,
                           target=f"partner:{partner.id}",
                           details={"offers": n, "offer": offer.id, "job": offer.leg_id,
                                    "event": event.id,
                                    "reason": f"the last {n} offers' SMS did not reach "
                                              "the rider; back ON at his next SMS or ON"}))
    log.warning("partner put off duty: offers' SMS did not reach him",
                extra={"partner_id": partner.id, "unreached": n})
    _schedule_probe(session, partner.id, event.id, 0)
    return True


# A rider put OFF as unreached is told nothing then (nothing reaches him), and his phone
# may come back without his writing to us: he would wait for jobs, OFF, for ever. One SMS
# tells him, UNREACHED_PROBES after the OFF (an hour, then a day: a phone off for the
# night is on again by then), never at night (DISPATCH_DROP_CODE_NIGHT's hours: it waits
# for the morning), and only while that OFF still holds him (not after any duty change).
# It asks nothing of our side: his reply, whatever it says, puts him back ON as any SMS
# of his does (back_on_heard). One that fails costs nothing but the SMS.
UNREACHED_PROBES = (timedelta(hours=1), timedelta(hours=24))
UNREACHED_PROBE_KEY = "dispatch.off_unreached_probe"


def _schedule_probe(session: Session, partner_id: int, event_id: int, n: int) -> None:
    """After this commit: the ``n``-th probe (UNREACHED_PROBES, counted from the OFF now
    held by ``event_id``; 0 at the OFF) of a rider put OFF as unreached, moved out of
    the night."""
    if n >= len(UNREACHED_PROBES):
        return
    gap = UNREACHED_PROBES[n] - (UNREACHED_PROBES[n - 1] if n else timedelta(0))
    at = clock.now() + gap
    at = _night_ends(at) or at
    # Retried as an ops alert is (a database restarting as it runs): the next probe is
    # scheduled only by this one's run, so one failed run would end the chain.
    _schedule_in(session, (at - clock.now()).total_seconds(),
                 "workers.dispatch.unreached_probe", partner_id, event_id, n,
                 job_id=f"unreached-probe-{event_id}-{n}", retry=OPS_ALERT_RETRY)


def unreached_probe(partner_id: int, event_id: int, n: int) -> str:
    """Job ``unreached-probe-<event>-<n>``: the rider put OFF as unreached (his auto_off
    ``event_id``) is told so, once, while that OFF still holds him (UNREACHED_PROBES)."""
    with transaction() as session:
        partner = session.get(PartnerProfile, partner_id, with_for_update=True,
                              populate_existing=True)
        if partner is None:
            return "missing"
        if partner.on_duty or partner.has_app or _unreached_off(session, partner.id) != event_id:
            return "duty-changed"
        if _on_refused(session, partner):
            # Blocked by ops, unpaid, his SMS stopped or his Points closed since: an OFF
            # rider keeps his unreached OFF as his last duty event, but his ON would be
            # refused: no "send ON" to him now; the next probe looks again.
            _schedule_probe(session, partner.id, event_id, n + 1)
            return "cannot-go-on"
        sent = _sms_partner(session, partner, UNREACHED_PROBE_KEY,
                            dedupe_key=f"unreached-probe-{event_id}-{n}")
        _schedule_probe(session, partner.id, event_id, n + 1)
        return "sent" if sent is not None else "no-phone"


def _unreached_run_after(session: Session, offer: DispatchOffer) -> None:
    """``offer`` (locked with its leg) just expired without putting its partner OFF for
    missed offers: if its SMS never went or our side failed it (no sign of his phone),
    it may close an unreached run whose last offer's report came while this one was open
    (_off_after_unreached skipped then, and no other offer of his would ask again)."""
    if not session.scalar(select(_offer_sms_not_sent() & ~_offer_sms_unreached()).where(
            DispatchOffer.id == offer.id)):
        return  # it reached him (breaks the run), or its own report asks (offer_unreached)
    partner = session.get(PartnerProfile, offer.partner_id, with_for_update=True,
                          populate_existing=True)
    assert partner is not None
    _off_after_unreached(session, partner, offer)


def _unreached_off(session: Session, partner_id: int) -> int | None:
    """The id of the partner's ``auto_off`` event when it is his latest duty change and
    it was _off_after_unreached's (its audit entry names the event; an OFF for missed
    offers, told by SMS, has none, even should an offer's late report say its SMS never
    reached him), else None."""
    last = session.execute(select(PartnerEvent.id, PartnerEvent.kind)
                           .where(PartnerEvent.partner_id == partner_id,
                                  PartnerEvent.kind.in_(_DUTY_EVENTS))
                           .order_by(PartnerEvent.at.desc(), PartnerEvent.id.desc())
                           .limit(1)).first()
    if last is None or last.kind != "auto_off":
        return None
    if not session.scalar(select(select(AuditEntry.id).where(
            AuditEntry.action == UNREACHED_OFF_AUDIT,
            AuditEntry.target == f"partner:{partner_id}",
            AuditEntry.details["event"].as_integer() == last.id).exists())):
        return None
    return int(last.id)


def held_off_unreached(session: Session, partner: PartnerProfile | None) -> int | None:
    """For an SMS from ``partner``: the id of the auto_off that holds him OFF because his
    offers never reached him (_unreached_off), if it does; no lock taken (his SMS's
    command locks its legs first, then his row). His SMS shows his phone works: the
    turn ends with back_on_heard."""
    if partner is None or partner.on_duty or partner.has_app:
        return None
    return _unreached_off(session, partner.id)


def back_on_heard(session: Session, partner: PartnerProfile, event_id: int) -> bool:
    """At the end of the turn of an SMS from a partner held OFF by ``event_id``
    (held_off_unreached), after its command took its locks (legs, then his row): he is
    put back ON as if he had sent ON (set_duty: its checks; refused, he stays OFF), and
    his answer says so (partner_sms: dispatch.back_on_reached). Not when his duty changed
    since, this SMS's own command too (OFF, ON, STOP, a yes that put him ON), nor when
    another SMS of his put him ON first. True when he was put back ON."""
    session.get(PartnerProfile, partner.id, with_for_update=True, populate_existing=True)
    if partner.on_duty or _unreached_off(session, partner.id) != event_id:
        return False
    if set_duty(session, partner, True).key not in DUTY_ON_KEYS:
        return False
    log.info("partner back ON: heard from after offers that did not reach him",
             extra={"partner_id": partner.id})
    return True


def back_on_reached(partner_id: int, event_id: int) -> str:
    """Job ``dispatch-reached-<event>``, queued by SMS turns before back_on_heard (kept for
    those still queued): a partner put OFF because his offers never reached him
    (_off_after_unreached, its auto_off ``event_id``) sent us an SMS: he is put back ON as
    if he had sent ON (set_duty: its checks; refused, he stays OFF). Not when his duty
    changed since (ON, OFF, ops, back_on_heard)."""
    with transaction() as session:
        partner = session.get(PartnerProfile, partner_id, with_for_update=True,
                              populate_existing=True)
        if partner is None:
            return "missing"
        if partner.on_duty:
            return "on-duty"
        if _unreached_off(session, partner.id) != event_id:
            return "duty-changed"
        if set_duty(session, partner, True).key not in DUTY_ON_KEYS:
            return "refused"
        log.info("partner back ON: heard from after offers that did not reach him",
                 extra={"partner_id": partner.id})
        return "back-on"


def continue_search(leg_id: int) -> str:
    """Job: search again after the candidate list ran dry (``dispatch-retry-...``)."""
    with transaction() as session:
        leg = _lock_leg(session, leg_id)
        search = _search_of(session, leg_id)
        if leg is None or search is None:
            return "missing"
        if search.status != rules.SearchStatus.ACTIVE.value or leg.status != "offering":
            return "stale"
        if _open_offers(session, leg_id):
            return "offers-open"
        if search.next_try_at and clock.now() + DUE_TOLERANCE < search.next_try_at:
            return "not-due"
        _maybe_continue(session, leg)
        return "continued"


def search_deadline(leg_id: int, round_no: int) -> str:
    """Job ``dispatch-deadline-<leg>-<round>``: past the tier's deadline the search fails.

    Not while an offer is out: the rider was given its time to answer (the SMS, the app's
    expires_at), and his yes in it takes the job. The search fails when the last one
    closes unanswered (_maybe_continue, from its answer or its offer-timeout job; the
    sweep runs both should that job be lost)."""
    with transaction() as session:
        leg = _lock_leg(session, leg_id)
        search = _search_of(session, leg_id)
        if leg is None or search is None:
            return "missing"
        if search.round != round_no or search.status != rules.SearchStatus.ACTIVE.value:
            return "stale"
        if leg.status != LegStatus.OFFERING.value:
            return "not-offering"
        if clock.now() + DUE_TOLERANCE < search.deadline_at:
            return "not-due"
        if _open_offers(session, leg_id):
            return "offers-open"
        booking = session.get(Booking, leg.booking_id, with_for_update=True)
        assert booking is not None
        _fail_search(session, booking, leg, search)
        return search.status


def lock_legs(session: Session, booking_id: int) -> list[Leg]:
    """A booking's legs under row locks, in sequence order. Whoever changes legs and the
    booking together takes these before the booking's lock, as acceptance and the OTP
    confirmations do (leg, then booking), so two of them never wait on each other."""
    return list(session.scalars(
        select(Leg).where(Leg.booking_id == booking_id).order_by(Leg.sequence)
        .with_for_update().execution_options(populate_existing=True)))


_STOPPABLE = frozenset({LegStatus.PENDING.value, LegStatus.OFFERING.value,
                        LegStatus.ASSIGNED.value, LegStatus.LOCKED.value})


def booking_cancelled(session: Session, booking: Booking, actor: Actor, *,
                      fee_leg_id: int | None = None, fee_paise: int = 0) -> int:
    """The booking was cancelled before pickup (or ended by ops, stuck: the legs after the
    one in hand): its legs not started stop; return how many.

    Searches end, open offers are withdrawn (the partners hear the job is no longer open,
    and it does not count against them), and a partner who had taken a leg is told the job
    is off, which frees their capacity; the one paid a cancellation fee for leg
    ``fee_leg_id`` hears it in the same SMS. The caller holds the legs' locks (lock_legs),
    then the booking's, and has moved the booking to cancelled."""
    stopped = 0
    for leg in _legs(session, booking):
        if leg.status not in _STOPPABLE:
            continue
        search = _search_of(session, leg.id)
        if search is not None and search.status in (rules.SearchStatus.ACTIVE.value,
                                                    rules.SearchStatus.PAUSED.value):
            search.status = rules.SearchStatus.DONE.value
            search.next_try_at = None
        _withdraw_open(session, leg, booking)
        partner = session.get(PartnerProfile, leg.partner_id) if leg.partner_id else None
        move_leg(session, leg, LegStatus.CANCELLED, actor, "booking cancelled")
        if partner is not None and fee_paise > 0 and leg.id == fee_leg_id:
            _sms_partner(session, partner, "dispatch.job_cancelled_fee",
                         booking_id=booking.id, dedupe_key=f"leg-{leg.id}-cancelled",
                         job=job_code(leg), fee_paise=fee_paise)
        elif partner is not None:
            _sms_partner(session, partner, "dispatch.job_cancelled", booking_id=booking.id,
                         dedupe_key=f"leg-{leg.id}-cancelled", job=job_code(leg))
        stopped += 1
    if stopped:
        log.info("booking cancelled: legs stopped", extra={"booking_id": booking.id,
                                                           "legs": stopped})
    return stopped


# A later leg's search in these states is past its deadline for good or for now.
_STUCK_SEARCHES = frozenset({rules.SearchStatus.PAUSED.value, rules.SearchStatus.FAILED.value})


def stuck_holder(session: Session, booking: Booking) -> Leg | None:
    """The leg whose rider holds the parcel of a relay stuck for want of a rider; None if
    the booking is not stuck.

    Stuck: a leg carries the parcel (picked up, or locked at wrong codes with the parcel in
    its rider's hands: _carrying) and a later leg has no rider and its search is past the
    tier's deadline: paused (or failed), or searching a new round after a pause. A paused
    search starts again after DISPATCH_RETRY_S (two minutes) and searches a whole deadline
    before it pauses again, so "paused" alone would be a moment of each round. A later
    leg still before its first deadline is not stuck. The holder is the latest leg
    carrying it: the rider who has the parcel now."""
    legs = _legs(session, booking)
    # The latest leg carrying it: an earlier one still "picked up" is a handover whose
    # carrier never sent DROP (closed by the next rider's PICK since: _handover_proven).
    holder = next((leg for leg in reversed(legs) if leg.partner_id is not None
                   and _carrying(session, leg)), None)
    if holder is None:
        return None
    for leg in legs:
        if leg.sequence <= holder.sequence or leg.partner_id is not None or leg.status not in (
                LegStatus.PENDING.value, LegStatus.OFFERING.value):
            continue
        status = session.scalar(select(DispatchSearch.status).where(
            DispatchSearch.leg_id == leg.id))
        if status in _STUCK_SEARCHES or (
                status == rules.SearchStatus.ACTIVE.value and _paused_before(session, leg)):
            return holder
    return None


def _paused_before(session: Session, leg: Leg) -> bool:
    """Whether the leg's search has paused at its deadline before (_fail_search)."""
    return session.scalar(select(TransitionLog.id).where(
        TransitionLog.entity == "leg", TransitionLog.entity_id == leg.id,
        TransitionLog.from_status == LegStatus.OFFERING.value,
        TransitionLog.to_status == LegStatus.PENDING.value).limit(1)) is not None


def stuck_relay_ended(session: Session, booking: Booking, holder: Leg, actor: Actor, *,
                      fee_paise: int) -> None:
    """Ops ended a relay stuck for want of a rider (payments.cancel_booking): the legs not
    started stop as a cancelled booking's do (their searches close, so no round starts
    again and ops are alerted no more; open offers are withdrawn). The leg in hand fails,
    recorded as going back to the sender, which frees its rider for other jobs; he hears
    the booking is off, what he gets for his ride (``fee_paise``), and to keep the parcel
    safe and call ops, who arrange its return. His fee is paid in full even where a
    refund made outside the service left the booking nothing (payments._stuck_quote: the
    platform's cost); with a real zero fee (the refund floor gave his few paise to the
    customer) he is not told he gets Rs 0. A holder whose leg locked at wrong codes, the
    parcel in his hands (stuck_holder), fails as one picked up does: his leg fails before
    the others stop, so it is never cancelled with them (a cancelled leg pays nothing).
    The caller holds the legs' locks, then the booking's, and has moved the booking to
    failed."""
    move_leg(session, holder, LegStatus.FAILED, actor,
             "booking ended by ops: the parcel goes back to the sender")
    booking_cancelled(session, booking, actor)
    partner = session.get(PartnerProfile, holder.partner_id) if holder.partner_id else None
    if partner is not None:
        key = "dispatch.holder_cancelled" if fee_paise > 0 else (
            "dispatch.holder_cancelled_no_fee")
        _sms_partner(session, partner, key, booking_id=booking.id,
                     dedupe_key=f"leg-{holder.id}-stuck-cancelled", job=job_code(holder),
                     fee_paise=fee_paise, ops_phone=get_settings().ops_phone)
    log.info("stuck relay ended by ops", extra={"booking_id": booking.id,
                                                "leg_id": holder.id, "fee_paise": fee_paise})


def _withdraw(offer: DispatchOffer, partner: PartnerProfile) -> None:
    """The platform takes an open offer back: the job went to someone else, the booking
    closed, or the partner no longer fits it. The partner had no say in that, so the offer
    leaves their acceptance record: it counts the offers they could answer (accepted,
    declined, or left to expire), not the ones taken away from them."""
    offer.status = rules.OfferStatus.WITHDRAWN.value
    offer.responded_at = clock.now()
    partner.offers_received = func.greatest(PartnerProfile.offers_received - 1, 0)


def _withdraw_open(session: Session, leg: Leg, booking: Booking, *,
                   keep: int | None = None) -> None:
    for other in _open_offers(session, leg.id):
        if other.id == keep:
            continue
        partner = session.get(PartnerProfile, other.partner_id)
        assert partner is not None
        _withdraw(other, partner)
        _sms_partner(session, partner, "dispatch.withdrawn", booking_id=booking.id,
                     dedupe_key=f"offer-{other.id}-withdrawn", job=job_code(leg))


def _fail_search(session: Session, booking: Booking, leg: Leg, search: DispatchSearch) -> None:
    """No partner before the deadline. Before pickup the booking fails and is refunded; a
    later relay leg (the parcel waits at a Point) is paused for ops instead."""
    _withdraw_open(session, leg, booking)
    if leg.sequence == 1 and booking.status == BookingStatus.DISPATCHING.value:
        search.status = rules.SearchStatus.FAILED.value
        move_leg(session, leg, LegStatus.FAILED, SYSTEM, "no partner before the deadline")
        for other in _legs(session, booking):
            if other.id != leg.id and other.status == LegStatus.PENDING.value:
                move_leg(session, other, LegStatus.CANCELLED, SYSTEM, "booking failed")
        move_booking(session, booking, BookingStatus.FAILED, SYSTEM,
                     "no partner before the deadline")
        if given_back_outside(session, booking.id):
            # Support gave all of it back from the dashboard already (she was told): no
            # "your money will be sent back", as the refund job finds nothing to send.
            notify.notify_customer(session, booking, "booking.status.no_rider_no_refund",
                                   dedupe_key=f"booking-{booking.id}-failed-no-partner")
        else:
            _status_to_customer(session, booking, "no-partner")
        # A rider who took the job and gave it back had the recipient sent a code.
        tell_recipient_not_coming(session, booking, "dispatch.recipient_no_rider",
                                  dedupe_key=f"failed-{booking.id}-recipient")
        alert_ops(session, "dispatch.ops_failed", booking_id=booking.id,
                  dedupe_key=f"booking-{booking.id}-ops-failed", ref=booking.reference)
        _enqueue_after_commit(session, "workers.payments.refund_booking", booking.id,
                              "no_partner", job_id=f"refund-{booking.id}", retry=GATEWAY_RETRY)
        log.warning("dispatch failed: no partner", extra={"booking_id": booking.id})
    else:
        # The parcel is already on its way (an earlier leg has it), so the booking can
        # neither fail nor be refunded by itself. Ops hear of it, the customer hears we
        # are still looking (and, when a rider takes the leg, that the parcel moves on:
        # accept), and a new round of the search starts after retry_s, round after round,
        # until a partner takes the leg (or ops act).
        cfg = config()
        search.status = rules.SearchStatus.PAUSED.value
        search.next_try_at = clock.now() + timedelta(seconds=cfg.retry_s)
        move_leg(session, leg, LegStatus.PENDING, SYSTEM, "no partner before the deadline")
        # The first pause, then a reminder at most every PAUSED_REMIND (not each round).
        # (When, by our clock, in Redis: the outbox's created_at is the database's.)
        told_key, now = PAUSED_TOLD_KEY.format(leg=leg.id), clock.now()
        try:
            told = redis_client().get(told_key)
        except RedisError:
            told = None  # the first pause's key below keeps it to one
        if told is None or now.timestamp() - float(told) >= PAUSED_REMIND.total_seconds():
            alert_ops(session, "dispatch.ops_paused", booking_id=booking.id,
                      dedupe_key=f"leg-{leg.id}-ops-paused"
                      + ("" if told is None else f"-r{search.round}"),
                      ref=booking.reference, job=job_code(leg))
            after_commit(session, lambda: redis_client().set(
                told_key, now.timestamp(), ex=30 * 86400))
        # Once, not at every round's pause: again only after they heard a rider took the
        # leg (who then gave it back), since that was the last they heard.
        promise = _last_sent(session, booking, f"leg-{leg.id}-r%-searching")
        if promise is None or _last_sent(
                session, booking, promise.removesuffix("-searching") + "-found") is not None:
            notify.notify_customer(session, booking, "dispatch.still_searching",
                                   dedupe_key=f"leg-{leg.id}-r{search.round}-searching")
        _tell_carrier_to_wait(session, booking, leg, search)
        _schedule_in(session, cfg.retry_s, "workers.dispatch.resume_search", leg.id,
                     search.round, job_id=f"dispatch-resume-{leg.id}-{search.round}")


def resume_search(leg_id: int, round_no: int) -> str:
    """Job ``dispatch-resume-<leg>-<round>``: a relay leg paused for want of a partner
    starts a new round of its search (the sweep runs it too if the job was lost)."""
    with transaction() as session:
        leg = _lock_leg(session, leg_id)
        search = _search_of(session, leg_id)
        if leg is None or search is None:
            return "missing"
        if search.round != round_no or search.status != rules.SearchStatus.PAUSED.value:
            return "stale"
        if leg.status != LegStatus.PENDING.value:
            return "not-pending"
        if search.next_try_at is not None and clock.now() + DUE_TOLERANCE < search.next_try_at:
            return "not-due"
        booking = session.get(Booking, leg.booking_id, with_for_update=True)
        assert booking is not None
        if booking.status in CLOSED_BOOKING:
            search.status, search.next_try_at = rules.SearchStatus.DONE.value, None
            return "closed"
        start_search(session, booking, leg)
        return "resumed"


_T = TypeVar("_T")


class _SweepRun:
    """One sweep's run. Each item (an offer, a search, a leg, a booking) works in its own
    transaction, and each list of items is read in its own: one that raises (a deadlock
    with a rider answering at that moment, a row the code cannot handle) is logged and
    the run goes on, so it cannot leave paid bookings unstarted or late jobs unchased,
    minute after minute; the first such error is raised once all ran (finish), so RQ
    records the run as failed. An outage (PostgreSQL or Redis away) ends the run at once:
    every other item would fail alike."""

    def __init__(self) -> None:
        self.failed: Exception | None = None

    def run(self, step: str, fn: Callable[..., _T], *args: object) -> _T | None:
        """fn(*args); None if it failed (logged; raised by finish)."""
        try:
            return fn(*args)
        except Exception as exc:
            if database_away(exc) or redis_down(exc):
                raise
            log.exception("dispatch sweep: a step failed; the others go on",
                          extra={"step": step, "ids": [a for a in args if isinstance(a, int)]})
            self.failed = self.failed or exc
            return None

    def finish(self) -> None:
        if self.failed is not None:
            raise self.failed


def sweep() -> dict[str, int]:
    """Periodic safety net: expire offers past their time (their timeout job was lost),
    move stalled searches on, apply deadlines, resume paused relay legs whose job was
    lost, start paid bookings whose start_dispatch job was lost, and chase taken jobs not
    picked up or delivered in time, and send the ops alerts kept from the night whose job
    did not. Each item on its own (_SweepRun): one that fails stops none of the others;
    the first failure is raised at the end."""
    cfg = config()
    now = clock.now()
    run = _SweepRun()
    done = {"expired": 0, "continued": 0, "deadlines": 0, "resumed": 0}

    def overdue_and_stalled() -> tuple[list[int], list[tuple[int, int, datetime]]]:
        with transaction() as session:
            overdue = list(session.scalars(select(DispatchOffer.id).where(
                DispatchOffer.status == rules.OfferStatus.OPEN.value,
                DispatchOffer.expires_at < now - timedelta(seconds=cfg.offer_grace_s))
                .order_by(DispatchOffer.id).limit(500)))
            stalled = [(leg_id, round_no, deadline_at) for leg_id, round_no, deadline_at
                       in session.execute(select(DispatchSearch.leg_id, DispatchSearch.round,
                                                 DispatchSearch.deadline_at).where(
                DispatchSearch.status == rules.SearchStatus.ACTIVE.value,
                DispatchSearch.next_try_at < now).limit(500))]
        return overdue, stalled

    def paused_searches() -> list[tuple[int, int]]:
        with transaction() as session:
            return [(leg_id, round_no) for leg_id, round_no in session.execute(
                select(DispatchSearch.leg_id, DispatchSearch.round).where(
                    DispatchSearch.status == rules.SearchStatus.PAUSED.value,
                    DispatchSearch.next_try_at < now).limit(500))]

    overdue, stalled = run.run("read overdue offers", overdue_and_stalled) or ([], [])
    for offer_id in overdue:
        if run.run("offer timeout", offer_timeout, offer_id) == "expired":
            done["expired"] += 1
    for leg_id, round_no, deadline_at in stalled:
        if deadline_at <= now:
            if run.run("search deadline", search_deadline, leg_id, round_no) not in (
                    "stale", "offers-open", None):
                done["deadlines"] += 1
        elif run.run("continue search", continue_search, leg_id) == "continued":
            done["continued"] += 1
    paused = run.run("read paused searches", paused_searches) or []
    for leg_id, round_no in paused:
        if run.run("resume search", resume_search, leg_id, round_no) == "resumed":
            done["resumed"] += 1

    def each(step: str, found: Callable[[datetime], list[int]],
             work: Callable[[int], str]) -> list[str | None]:
        return [run.run(step, work, item_id)
                for item_id in run.run(f"read {step}", found, now) or []]

    done["started"] = each("start dispatch", _paid_not_dispatched,
                           start_dispatch).count("dispatching")
    results = each("pickup late", _late_pickups, pickup_late)
    done["late_pickups"] = results.count("reminded")
    done["taken_back"] = results.count("taken-back")
    results = each("point pickup late", _point_no_shows, point_pickup_late)
    done["point_late_pickups"] = results.count("reminded")
    done["point_taken_back"] = results.count("taken-back")
    done["handed_unpicked"] = each("handed pickup late", _handed_no_picks,
                                   handed_pickup_late).count("reminded")
    done["late_deliveries"] = each("delivery late", _late_deliveries,
                                   delivery_late).count("alerted")
    done["deferred_alerts"] = each("deferred ops alert", _deferred_alerts_due,
                                   send_kept_alert).count("sent")
    run.finish()
    return done


# A booking paid this long ago and not yet dispatching lost its start_dispatch job.
START_GRACE = timedelta(minutes=2)


def _paid_not_dispatched(now: datetime) -> list[int]:
    """Bookings still ``paid`` START_GRACE after their payment was recorded."""
    with transaction() as session:
        return list(session.scalars(
            select(Booking.id).join(TransitionLog, (TransitionLog.entity == "booking")
                                    & (TransitionLog.entity_id == Booking.id)
                                    & (TransitionLog.to_status == BookingStatus.PAID.value))
            .where(Booking.status == BookingStatus.PAID.value,
                   TransitionLog.at < now - START_GRACE)
            .order_by(Booking.id).limit(100)))


# --- taken jobs that stall -------------------------------------------------------------
# A job taken but not picked up, or picked up and not delivered in time, is found by the
# sweep (each minute). What it does is said once: every message has a dedupe key, and the
# sweep looks past a leg once its step's messages are in the outbox.

# A rider whose job waits for its pickup a window is reminded (a ``pickup_reminded``
# partner event dates it, beside the "-late-" messages), and the job is taken back a
# window after that reminder, not after twice the window from its taking: a sweep that
# ran late (workers away) must warn him first. Reminders for this assignment only (one
# taken again, or unlocked by ops, is a new one). A reminder from before the event was
# recorded (migration 0043) has only its messages: it counts as sent when it was due.
PICKUP_REMINDED = "pickup_reminded"
_REMINDED = f"""
LEFT JOIN LATERAL (SELECT min(e.at) AS at FROM dispatch_partner_events e
                   WHERE e.partner_id = {{partner}} AND e.leg_id = {{leg}}
                     AND e.kind = '{PICKUP_REMINDED}' AND e.at >= {{since}}) r ON true
"""
# Due: not reminded yet for this assignment; or reminded a window ago (:take_back is
# now less the window), or only by its messages (:before is now less twice the window).
_REMIND_OR_TAKE_BACK = """
  AND (r.at <= :take_back OR (r.at IS NULL AND ({due} < :before OR NOT EXISTS (
       SELECT 1 FROM outbox_messages o WHERE o.booking_id = {booking}
         AND o.dedupe_key LIKE 'leg-' || {leg} || '-a' || {assigned} || '-late-%'))))
"""

# First legs assigned longer than the pickup window, from their latest assignment (an
# unlock by ops assigns again), to remind or to take back (_REMIND_OR_TAKE_BACK). A
# relay's later leg is left out: its parcel comes from the previous rider, face to face
# at the Point, so its window starts when the parcel is due there (_POINT_WAITS).
_LATE_PICKUPS = text(f"""
SELECT l.id FROM legs l
CROSS JOIN LATERAL (SELECT t.id, t.at FROM transitions t
                    WHERE t.entity = 'leg' AND t.entity_id = l.id AND t.to_status = 'assigned'
                    ORDER BY t.id DESC LIMIT 1) a
{_REMINDED.format(partner="l.partner_id", leg="l.id", since="a.at")}
WHERE l.status = 'assigned' AND l.sequence = 1 AND a.at < :late
{_REMIND_OR_TAKE_BACK.format(due="a.at", booking="l.booking_id", leg="l.id", assigned="a.id")}
ORDER BY l.id LIMIT 500
""")

# Legs holding their parcel (picked up, or a relay leg handed the parcel at its Point
# whose rider has not sent PICK: parcel_in_hand; or locked at wrong codes with the parcel
# in hand, picked up before or handed over: _carrying) of bookings whose parcel left the sender
# longer ago than the tier's delivery hours, ops not yet alerted. Never of a delivered
# booking: its parcel is with the recipient, whatever a leg still says.
_LATE_DELIVERIES = text("""
SELECT l.id FROM legs l
JOIN bookings b ON b.id = l.booking_id
JOIN legs f ON f.booking_id = l.booking_id AND f.sequence = 1
JOIN unnest(CAST(:tiers AS text[]), CAST(:cutoffs AS timestamptz[])) AS c(tier, cutoff)
  ON c.tier = b.speed_tier
CROSS JOIN LATERAL (SELECT min(t.at) AS at FROM transitions t
                    WHERE t.entity = 'leg' AND t.entity_id = f.id
                      AND t.to_status = 'picked_up') p
WHERE (l.status = 'picked_up' OR (l.status IN ('assigned', 'locked') AND EXISTS (
         SELECT 1 FROM legs pv WHERE pv.booking_id = l.booking_id
           AND pv.sequence = l.sequence - 1 AND pv.status = 'delivered'))
       OR (l.status = 'locked' AND EXISTS (
         SELECT 1 FROM dispatch_otp_attempts oa WHERE oa.leg_id = l.id
           AND oa.kind = 'pickup' AND oa.ok)))
  AND b.status <> 'delivered'
  AND p.at < c.cutoff
  AND NOT EXISTS (SELECT 1 FROM outbox_messages o WHERE o.booking_id = l.booking_id
                    AND o.dedupe_key LIKE 'leg-' || l.id || '-late-delivery-%')
ORDER BY l.id LIMIT 500
""")


def _late_pickups(now: datetime) -> list[int]:
    with transaction() as session:
        return list(session.scalars(_LATE_PICKUPS, _late_params(now)))


def _late_params(now: datetime) -> dict[str, datetime]:
    """The bounds of _REMIND_OR_TAKE_BACK at ``now`` (as the jobs count: DUE_TOLERANCE)."""
    window = pickup_window()
    return {"late": now - window, "take_back": now + DUE_TOLERANCE - window,
            "before": now - 2 * window}


def _reminded_at(session: Session, booking: Booking, leg: Leg, since: datetime,
                 tag: str, due: datetime) -> datetime | None:
    """When the leg's partner was reminded that it waits for its pickup, in this
    assignment (taken or unlocked at ``since``; its messages keyed ``<tag>-late-...``);
    one from before the reminders were dated counts as sent when it was ``due``."""
    at = session.scalar(select(func.min(PartnerEvent.at)).where(
        PartnerEvent.partner_id == leg.partner_id, PartnerEvent.leg_id == leg.id,
        PartnerEvent.kind == PICKUP_REMINDED, PartnerEvent.at >= since))
    if at is None and _last_sent(session, booking, f"{tag}-late-%") is not None:
        return due
    return at


def _late_deliveries(now: datetime) -> list[int]:
    hours = config().delivery_hours
    with transaction() as session:
        return list(session.scalars(_LATE_DELIVERIES, {
            "tiers": [str(tier) for tier in hours],
            "cutoffs": [now - timedelta(hours=h) for h in hours.values()]}))


def _assigned_at(session: Session, leg: Leg) -> TransitionLog | None:
    """The transition that gave the leg to its current partner (acceptance or unlock)."""
    return session.scalar(select(TransitionLog).where(
        TransitionLog.entity == "leg", TransitionLog.entity_id == leg.id,
        TransitionLog.to_status == LegStatus.ASSIGNED.value)
        .order_by(TransitionLog.id.desc()).limit(1))


def pickup_late(leg_id: int) -> str:
    """A first leg still not picked up a pickup window after it was taken: once, the partner
    is reminded (go now, or give it back with CANCEL), the customer hears the rider is late
    and ops are alerted. A window after that reminder (however late it went) it is taken
    back and offered again, as if the partner had given it back (it counts against them);
    partner and customer hear it."""
    window = pickup_window()
    with transaction() as session:
        leg = _lock_leg(session, leg_id)
        if leg is None:
            return "missing"
        if leg.status != LegStatus.ASSIGNED.value or leg.partner_id is None or leg.sequence != 1:
            return "stale"
        assigned = _assigned_at(session, leg)
        if assigned is None:
            return "stale"
        now = clock.now()
        if now + DUE_TOLERANCE - assigned.at < window:
            return "not-due"
        booking = session.get(Booking, leg.booking_id, with_for_update=True)
        partner = session.get(PartnerProfile, leg.partner_id)
        assert booking is not None and partner is not None
        job, tag = job_code(leg), f"leg-{leg.id}-a{assigned.id}"
        reminded = _reminded_at(session, booking, leg, assigned.at, tag,
                                assigned.at + window)
        if reminded is not None and now + DUE_TOLERANCE - reminded >= window:
            event, reopened = _give_back(session, booking, leg, partner, SYSTEM,
                                         "not picked up in time")
            _sms_partner(session, partner, "dispatch.taken_back", booking_id=booking.id,
                         dedupe_key=f"{tag}-taken-back", job=job)
            if reopened:
                notify.notify_customer(session, booking, "dispatch.customer_rider_replaced",
                                       dedupe_key=f"{tag}-replaced")
            start_search(session, booking, leg)
            log.warning("job taken back: not picked up in time",
                        extra={"leg_id": leg.id, "partner_id": partner.id})
            return "taken-back"
        if reminded is not None:
            return "already-reminded"
        # The event dates the reminder for the take-back (_REMIND_OR_TAKE_BACK).
        session.add(PartnerEvent(partner_id=partner.id, leg_id=leg.id, kind=PICKUP_REMINDED,
                                 at=now))
        _sms_partner(session, partner, "dispatch.pickup_late", booking_id=booking.id,
                     dedupe_key=f"{tag}-late-partner", job=job)
        notify.notify_customer(session, booking, "dispatch.customer_rider_late",
                               dedupe_key=f"{tag}-late-customer")
        alert_ops(session, "dispatch.ops_pickup_late", booking_id=booking.id,
                  dedupe_key=f"{tag}-late-ops", ref=booking.reference, job=job,
                  minutes=int(window.total_seconds() // 60))
        return "reminded"


def delivery_late(leg_id: int) -> str:
    """A leg holding its parcel (``parcel_in_hand``, or locked at wrong codes with the
    parcel in hand: _carrying) whose parcel left the sender longer ago than the tier's
    delivery hours (DISPATCH_DELIVERY_HOURS): ops are alerted once for the leg, and the
    customer, promised those hours, hears once for the booking (a relay late on two legs
    broke one promise) that it is late, that ops are on it, and that they will
    hear of the delivery; so does a recipient we told of the parcel (_late_to_recipient).
    The parcel is with the partner, so the leg is not offered again.
    Nothing about money: no rule gives anything back for a late parcel."""
    with transaction() as session:
        leg = _lock_leg(session, leg_id)
        if leg is None:
            return "missing"
        if not (parcel_in_hand(session, leg) or _carrying(session, leg)):
            return "stale"
        booking = session.get(Booking, leg.booking_id)
        assert booking is not None
        if booking.status == BookingStatus.DELIVERED.value:
            return "stale"  # the parcel reached the recipient: nothing is late
        first = _legs(session, booking)[0]
        left_at = session.scalar(select(func.min(TransitionLog.at)).where(
            TransitionLog.entity == "leg", TransitionLog.entity_id == first.id,
            TransitionLog.to_status == LegStatus.PICKED_UP.value))
        hours = config().delivery_hours[SpeedTier(booking.speed_tier)]
        if left_at is None or clock.now() + DUE_TOLERANCE < left_at + timedelta(hours=hours):
            return "not-due"
        # The "-late-delivery-" key marks the alert as done for the sweep.
        alert_ops(session, "dispatch.ops_delivery_late", booking_id=booking.id,
                  dedupe_key=f"leg-{leg.id}-late-delivery", ref=booking.reference,
                  job=job_code(leg), hours=hours)
        notify.notify_customer(session, booking, "dispatch.customer_delivery_late",
                               dedupe_key=f"booking-{booking.id}-late-delivery", hours=hours)
        _late_to_recipient(session, booking)
        return "alerted"


def _late_to_recipient(session: Session, booking: Booking) -> None:
    """The recipient waits for the parcel too: she hears once for the booking that it is
    late, in her language, only if we told her of it before (a code or its news reached
    her, not reported failed, or we answered her SMS about it before any code:
    mark_recipient_told; no surprise message to a stranger), and not when she is the
    customer, who heard it as the customer. Without the working code in her hands
    (recipient_holds_code: a copy of its message that reached her counts), no word of one
    (``_no_code``)."""
    phone = booking.recipient_phone
    customer = session.get(Person, booking.customer_id)
    if not phone or (customer is not None and customer.phone == phone) \
            or recipient_said_wrong_number(session, booking):
        return
    reached = select(OutboxMessage.id).where(
        OutboxMessage.booking_id == booking.id,
        OutboxMessage.to_addr.in_([outbox.address("sms", phone),
                                   outbox.address("whatsapp", phone)]),
        OutboxMessage.status.not_in(("failed", "undelivered")))
    has_code = recipient_holds_code(session, booking)
    if not has_code and session.scalar(reached.limit(1)) is None \
            and not _told_parcel_coming(booking):
        return
    key = "dispatch.recipient_delivery_late" if has_code \
        else "dispatch.recipient_delivery_late_no_code"
    notify.notify_phone(session, phone, key,
                        lang=recipient_language(session, booking), booking_id=booking.id,
                        dedupe_key=f"booking-{booking.id}-late-delivery-recipient",
                        ref=booking.reference)


# A relay's later leg taken by a rider who has not collected its parcel, while the rider
# of the leg before still carries it to (or waits with it at) the Point: nobody tells us
# when they get there, so the parcel is due at the Point its ride after that rider picked
# it up, at the speed of their slowest active vehicle (the booking's vehicle if they have
# none), or when this leg was taken, if later. A parcel handed over already (the leg
# before delivered) is in this rider's hands (parcel_in_hand): no such leg; nor is one
# whose rider also rides the leg before (they carry the parcel themselves). The speeds
# come as :types / :kmh (VEHICLE_SPEED_KMH).
_POINT_WAITS = """
WITH speeds(type, kmh) AS (SELECT * FROM unnest(CAST(:types AS text[]), CAST(:kmh AS int[])))
SELECT l.id AS leg_id, l.booking_id, l.partner_id, a.id AS assigned_id, a.at AS assigned_at,
       greatest(a.at, p.last_at, p.at + make_interval(
           secs => CAST(pv.distance_m * 3.6 / s.kmh AS double precision))) AS due_at
FROM legs l
JOIN bookings b ON b.id = l.booking_id
JOIN legs pv ON pv.booking_id = l.booking_id AND pv.sequence = l.sequence - 1
CROSS JOIN LATERAL (SELECT t.id, t.at FROM transitions t
                    WHERE t.entity = 'leg' AND t.entity_id = l.id AND t.to_status = 'assigned'
                    ORDER BY t.id DESC LIMIT 1) a
CROSS JOIN LATERAL (SELECT min(t.at) AS at, max(t.at) AS last_at FROM transitions t
                    WHERE t.entity = 'leg' AND t.entity_id = pv.id
                      AND t.to_status = 'picked_up') p
CROSS JOIN LATERAL (SELECT COALESCE(
    (SELECT min(sp.kmh) FROM vehicles v JOIN speeds sp ON sp.type = v.type
     WHERE v.partner_id = pv.partner_id AND v.active),
    (SELECT sp.kmh FROM speeds sp WHERE sp.type = b.vehicle_type),
    (SELECT min(sp.kmh) FROM speeds sp)) AS kmh) s
WHERE l.status = 'assigned' AND l.sequence > 1 AND l.partner_id IS NOT NULL
  AND pv.status = 'picked_up' AND pv.partner_id IS DISTINCT FROM l.partner_id
  AND NOT (b.status = ANY(CAST(:closed AS text[])))
"""

# Those whose parcel was due at the Point longer than the pickup window ago, to remind
# or to take back, as first legs (_REMIND_OR_TAKE_BACK).
_POINT_NO_SHOWS = text(f"""
SELECT w.leg_id FROM ({_POINT_WAITS}) w
{_REMINDED.format(partner="w.partner_id", leg="w.leg_id", since="w.assigned_at")}
WHERE w.due_at < :late
{_REMIND_OR_TAKE_BACK.format(due="w.due_at", booking="w.booking_id", leg="w.leg_id",
                             assigned="w.assigned_id")}
ORDER BY w.leg_id LIMIT 500
""")
_POINT_WAIT_OF = text(f"SELECT * FROM ({_POINT_WAITS}) w WHERE w.leg_id = :leg_id")


def _point_wait_params() -> dict[str, object]:
    return {"types": [str(vt) for vt in rules.VEHICLE_SPEED_KMH],
            "kmh": list(rules.VEHICLE_SPEED_KMH.values()), "closed": sorted(CLOSED_BOOKING)}


def _point_no_shows(now: datetime) -> list[int]:
    with transaction() as session:
        return list(session.scalars(_POINT_NO_SHOWS, {**_point_wait_params(),
                                                      **_late_params(now)}))


def point_pickup_late(leg_id: int) -> str:
    """A relay's later leg whose rider has not come to the Point for the parcel: a pickup
    window after it was due there (_POINT_WAITS), the rider is reminded once and ops are
    alerted; a window after that reminder (however late it went) the leg is taken back as
    if they had given it back (it counts against them, and they are not offered it
    again), their handover code stops
    working, and it is offered to others while the rider with the parcel is told to keep
    it. Not for a parcel handed over to them already (parcel_in_hand), a leg picked up, or
    a closed booking. A rider suspended meanwhile is not sent to the Point: the leg is
    taken back when due (block_partner does that as they are suspended)."""
    window = pickup_window()
    with transaction() as session:
        booking_id = session.scalar(select(Leg.booking_id).where(Leg.id == leg_id))
        if booking_id is None:
            return "missing"
        # The legs in order, then the booking, as acceptance and the handover do: the leg
        # before is changed too (its handover code), and its rider may be at the Point
        # keying in the code right now.
        leg = next((x for x in lock_legs(session, booking_id) if x.id == leg_id), None)
        booking = session.get(Booking, booking_id, with_for_update=True)
        if leg is None or booking is None:
            return "missing"
        if (leg.status != LegStatus.ASSIGNED.value or leg.partner_id is None
                or leg.sequence == 1 or booking.status in CLOSED_BOOKING
                or parcel_in_hand(session, leg)):
            return "stale"
        wait = session.execute(_POINT_WAIT_OF, {**_point_wait_params(),
                                                "leg_id": leg.id}).one_or_none()
        if wait is None:
            # The leg before is not on its way (locked by wrong codes), or this rider
            # carries it themselves.
            return "stale"
        now = clock.now()
        waited = now + DUE_TOLERANCE - wait.due_at
        if waited < window:
            return "not-due"
        partner = session.get(PartnerProfile, leg.partner_id)
        assert partner is not None
        job, tag = job_code(leg), f"leg-{leg.id}-a{wait.assigned_id}"
        blocked = partner.kyc_status in BLOCKED_KYC
        reminded = _reminded_at(session, booking, leg, wait.assigned_at, tag,
                                wait.due_at + window)
        if blocked or (reminded is not None and now + DUE_TOLERANCE - reminded >= window):
            reason = "partner blocked by ops" if blocked else "not at the Point in time"
            _give_back(session, booking, leg, partner, SYSTEM, reason, by_ops=blocked)
            _sms_partner(session, partner,
                         "dispatch.job_cancelled" if blocked else "dispatch.taken_back",
                         booking_id=booking.id, dedupe_key=f"{tag}-taken-back", job=job)
            search = start_search(session, booking, leg)
            _tell_carrier_to_wait(session, booking, leg, search)
            log.warning("relay job taken back: the rider did not come to the Point",
                        extra={"leg_id": leg.id, "partner_id": partner.id})
            return "taken-back"
        if reminded is not None:
            return "already-reminded"
        # The event dates the reminder for the take-back (_REMIND_OR_TAKE_BACK).
        session.add(PartnerEvent(partner_id=partner.id, leg_id=leg.id, kind=PICKUP_REMINDED,
                                 at=now))
        _sms_partner(session, partner, "dispatch.point_pickup_late", booking_id=booking.id,
                     dedupe_key=f"{tag}-late-partner", job=job,
                     point=place(session, booking, leg, "from"))
        alert_ops(session, "dispatch.ops_pickup_late", booking_id=booking.id,
                  dedupe_key=f"{tag}-late-ops", ref=booking.reference, job=job,
                  minutes=int((now - wait.assigned_at).total_seconds() // 60))
        return "reminded"


# A relay's later leg whose parcel the rider of the leg before handed over at the Point
# (their DROP took this rider's code: handed_over_to) while this rider has not sent PICK:
# the parcel is in her hands, so nothing else chases it (it must not be taken back), yet
# the next leg is searched for only after her PICK. Her window runs from the handover, or
# from her latest assignment if later (an unlock by ops assigns again).
_HANDED_WAITS = """
SELECT l.id AS leg_id, l.booking_id, a.id AS assigned_id,
       greatest(a.at, h.at) AS handed_at
FROM legs l
JOIN bookings b ON b.id = l.booking_id
JOIN legs pv ON pv.booking_id = l.booking_id AND pv.sequence = l.sequence - 1
CROSS JOIN LATERAL (SELECT t.id, t.at FROM transitions t
                    WHERE t.entity = 'leg' AND t.entity_id = l.id AND t.to_status = 'assigned'
                    ORDER BY t.id DESC LIMIT 1) a
CROSS JOIN LATERAL (SELECT max(t.at) AS at FROM transitions t
                    WHERE t.entity = 'leg' AND t.entity_id = pv.id
                      AND t.to_status = 'delivered') h
WHERE l.status = 'assigned' AND l.sequence > 1 AND l.partner_id IS NOT NULL
  AND pv.status = 'delivered' AND NOT (b.status = ANY(CAST(:closed AS text[])))
"""

# Those handed over longer than the pickup window ago, not reminded yet for this
# assignment (the "-unpicked-" keys).
_HANDED_NO_PICKS = text(f"""
SELECT w.leg_id FROM ({_HANDED_WAITS}) w
WHERE w.handed_at < :late
  AND NOT EXISTS (
       SELECT 1 FROM outbox_messages o WHERE o.booking_id = w.booking_id
         AND o.dedupe_key LIKE 'leg-' || w.leg_id || '-a' || w.assigned_id || '-unpicked-%')
ORDER BY w.leg_id LIMIT 500
""")
_HANDED_WAIT_OF = text(f"SELECT * FROM ({_HANDED_WAITS}) w WHERE w.leg_id = :leg_id")


def _handed_no_picks(now: datetime) -> list[int]:
    with transaction() as session:
        return list(session.scalars(_HANDED_NO_PICKS, {
            "closed": sorted(CLOSED_BOOKING), "late": now - pickup_window()}))


def handed_pickup_late(leg_id: int) -> str:
    """A relay's later leg whose parcel was handed over to its rider at the Point
    (``handed_over_to``) and who has not sent PICK a pickup window after the handover (or
    after her latest assignment, if later): she is reminded once, in her language, and ops
    are alerted once. The leg is never taken back: the parcel is in her hands."""
    with transaction() as session:
        booking_id = session.scalar(select(Leg.booking_id).where(Leg.id == leg_id))
        if booking_id is None:
            return "missing"
        # The legs in order, then the booking, as the handover and point_pickup_late do.
        leg = next((x for x in lock_legs(session, booking_id) if x.id == leg_id), None)
        booking = session.get(Booking, booking_id, with_for_update=True)
        if leg is None or booking is None:
            return "missing"
        if (leg.partner_id is None or booking.status in CLOSED_BOOKING
                or not handed_over_to(session, leg)):
            return "stale"
        wait = session.execute(_HANDED_WAIT_OF, {"closed": sorted(CLOSED_BOOKING),
                                                 "leg_id": leg.id}).one_or_none()
        if wait is None:
            return "stale"
        now = clock.now()
        if now + DUE_TOLERANCE - wait.handed_at < pickup_window():
            return "not-due"
        tag = f"leg-{leg.id}-a{wait.assigned_id}-unpicked"
        if _last_sent(session, booking, f"{tag}-%") is not None:
            return "already-reminded"
        partner = session.get(PartnerProfile, leg.partner_id)
        assert partner is not None
        job, point = job_code(leg), place(session, booking, leg, "from")
        # The "-unpicked-" keys mark the reminder as done for the sweep (_HANDED_NO_PICKS).
        _sms_partner(session, partner, "dispatch.handed_pick_late", booking_id=booking.id,
                     dedupe_key=f"{tag}-partner", job=job, point=point)
        alert_ops(session, "dispatch.ops_handed_pick_late", booking_id=booking.id,
                  dedupe_key=f"{tag}-ops", ref=booking.reference, job=job, point=point,
                  minutes=int((now - wait.handed_at).total_seconds() // 60))
        return "reminded"


# --- partner actions ------------------------------------------------------------------


@dataclass
class Reply:
    """What to answer the partner: a catalog key and its parameters."""

    key: str
    params: dict[str, object]

    def render(self, lang: str) -> str:
        return i18n.t(self.key, lang, **self.params)


def _r(key: str, **params: object) -> Reply:
    return Reply(key, params)


def open_offers_of(session: Session, partner: PartnerProfile) -> list[DispatchOffer]:
    return list(session.scalars(select(DispatchOffer).where(
        DispatchOffer.partner_id == partner.id,
        DispatchOffer.status == rules.OfferStatus.OPEN.value).order_by(DispatchOffer.id)))


def active_legs_of(session: Session, partner: PartnerProfile) -> list[Leg]:
    return list(session.scalars(select(Leg).where(Leg.partner_id == partner.id,
                                                  Leg.status.in_(ACTIVE_LEG_STATES))
                                .order_by(Leg.id)))


def _job_number(code: str) -> int | None:
    """The leg id a job code typed by a partner names ("057" is job 57), or None."""
    return int(code) if code.isascii() and code.isdigit() and len(code) < 10 else None


def _pick_offer(session: Session, partner: PartnerProfile,
                code: str | None) -> DispatchOffer | Reply:
    """The offer a YES/NO is about: an open one, or (named by its job) the one this
    partner said no to, which ``accept`` may still give them; else the answer."""
    offers = open_offers_of(session, partner)
    if code is not None:
        number = _job_number(code)
        for o in offers:
            if o.leg_id == number:
                return o
        if number is not None:
            code = str(number)
            past = session.scalar(select(DispatchOffer).where(
                DispatchOffer.partner_id == partner.id, DispatchOffer.leg_id == number)
                .order_by(DispatchOffer.id.desc()))
            if past is not None:
                closed = session.scalar(select(Booking.status).join(
                    Leg, Leg.booking_id == Booking.id).where(Leg.id == past.leg_id))
                if closed in CLOSED_BOOKING:  # not "yours", nor "another partner's"
                    return _r("dispatch.job_cancelled", job=code)
                if past.status == rules.OfferStatus.ACCEPTED.value:
                    return _accepted_before(session, partner, past, code)
                if past.status == rules.OfferStatus.DECLINED.value or _closed_going_off(past):
                    # Changed their mind (or back from a break: OFF closed the offer):
                    # accept sees whether it is still free and in time.
                    return past
                if past.status == rules.OfferStatus.EXPIRED.value:
                    # Answered just after it closed: late, not missed. Not hours on (each
                    # offer ignored, then "2 <job>" to each, would never go OFF).
                    if _missed(past.status, past.responded_at, past.expires_at) and (
                            past.expires_at >= clock.now() - ANSWERED_JUST_AFTER):
                        _answer_to_expired(session, past)
                    return _r("dispatch.offer_expired", job=code)
                if past.status == rules.OfferStatus.CANCELLED.value:
                    # Theirs once, then given back or taken back: never offered to them
                    # again (_excluded), whether or not another partner has it now.
                    return _r("dispatch.given_back" if _gave_back(session, partner, number)
                              else "dispatch.taken_from_you", job=code)
                leg = session.get(Leg, past.leg_id)
                assert leg is not None
                return _gone(leg, code)
        return _r("dispatch.no_such_offer", job=code)
    if not offers:
        again = _yes_again(session, partner)
        if again is None:
            _late_to_newest(session, partner)
        return again or _r("dispatch.no_offer")
    if len(offers) > 1:
        return _r("dispatch.several_offers", jobs=" ".join(str(o.leg_id) for o in offers),
                  job=offers[0].leg_id)
    return (_answered_before(session, partner, offers[0])
            or _late_before(session, partner, offers[0]) or offers[0])


# A bare yes or no this soon after the partner answered an offer, while the one offer open
# was made after that answer, is taken for that answer again, never for the new offer.
ANSWERED_JUST_NOW = timedelta(minutes=2)


def _answered_before(session: Session, partner: PartnerProfile,
                     offer: DispatchOffer) -> Reply | None:
    """The answer to a bare yes or no (or a bare CANCEL, a no) while ``offer`` is the one
    open, when the partner answered another offer within ANSWERED_JUST_NOW and ``offer``
    was made after that answer: the same SMS sent again by the phone or the carrier (a new
    MessageSid), his "1" typed again on slow 2G, or his SMS "1" after his tap in the app.
    It is about the job he answered, not the new one, which he may not have seen: the job
    he answered is named, and he is asked to name the new one to answer it ("1 58"). His
    answer to the new offer naming it, or a bare one after the window, acts on it. None
    when no such answer is that recent."""
    last = session.scalar(select(DispatchOffer).where(
        DispatchOffer.partner_id == partner.id, DispatchOffer.id != offer.id,
        DispatchOffer.status.in_((rules.OfferStatus.ACCEPTED.value,
                                  rules.OfferStatus.DECLINED.value,
                                  rules.OfferStatus.CANCELLED.value)),
        DispatchOffer.responded_at >= clock.now() - ANSWERED_JUST_NOW)
        .order_by(DispatchOffer.responded_at.desc(), DispatchOffer.id.desc()).limit(1))
    if last is None or last.responded_at is None or last.responded_at >= offer.offered_at:
        return None  # the offer was open when he answered: it may be what he answers now
    if last.status == rules.OfferStatus.CANCELLED.value \
            and not _gave_back(session, partner, last.leg_id):
        return None  # taken back from him (not his answer): the new offer is his to answer
    leg = session.get(Leg, last.leg_id)
    assert leg is not None
    if last.status == rules.OfferStatus.ACCEPTED.value and leg.partner_id == partner.id \
            and leg.status in ACTIVE_LEG_STATES:
        return _r("dispatch.yours_then_offer", job=job_code(leg), offered=offer.leg_id)
    return _r("dispatch.answered_then_offer", job=job_code(leg), offered=offer.leg_id)


# A bare yes or no this soon after the partner's one open offer was made, when his offer
# before it expired unanswered, its answer due (time and grace) at most this long before
# the new one was made (he was free, so the next search offered him at once), is his
# answer to the expired one, typed as its time ran out and come late: never to the new
# offer, which he may not have read.
LATE_BEFORE_NEW = timedelta(seconds=30)


def _late_before(session: Session, partner: PartnerProfile,
                 offer: DispatchOffer) -> Reply | None:
    """The answer to a bare yes or no (or a bare CANCEL, a no) within LATE_BEFORE_NEW of
    ``offer`` (the one open) being made, when the partner's offer before it expired
    unanswered, its answer due within LATE_BEFORE_NEW before that: answered late (not missed, as
    _late_to_newest), and he is asked to name the new job to answer it, as after an
    answered offer (_answered_before). None otherwise: the word is about ``offer``."""
    now = clock.now()
    if now - offer.offered_at > LATE_BEFORE_NEW:
        return None
    older = session.scalar(select(DispatchOffer).where(
        DispatchOffer.partner_id == partner.id, DispatchOffer.id < offer.id)
        .order_by(DispatchOffer.id.desc()).limit(1))
    if older is None or older.responded_at is None \
            or not _missed(older.status, older.responded_at, older.expires_at) \
            or older.responded_at > offer.offered_at:
        return None
    if session.scalar(select(_offer_sms_not_sent()).where(DispatchOffer.id == older.id)):
        return None  # he never had it (its SMS failed, or never went): the word is ``offer``'s
    # By when its answer was due (its time and grace), not when its timeout job ran: one
    # that ran late (a busy worker, a test's release of every job at once) closes an offer
    # whose answer was due long before, and a word now is not that answer.
    due = older.expires_at + timedelta(seconds=config().offer_grace_s)
    if offer.offered_at - due > LATE_BEFORE_NEW:
        return None
    _answer_to_expired(session, older)
    return _r("dispatch.answered_then_offer", job=str(older.leg_id), offered=offer.leg_id)


# A bare yes or no this soon after the partner's newest offer expired unanswered, with
# no offer open, is their answer to it, come too late ("1" typed as the timeout ran).
ANSWERED_JUST_AFTER = timedelta(minutes=5)


def _late_to_newest(session: Session, partner: PartnerProfile) -> None:
    """A bare yes or no with no offer open: if the partner's newest offer expired
    unanswered within ANSWERED_JUST_AFTER, it is answered late (not missed)."""
    newest = session.scalar(select(DispatchOffer).where(
        DispatchOffer.partner_id == partner.id).order_by(DispatchOffer.id.desc()).limit(1))
    if (newest is not None and _missed(newest.status, newest.responded_at, newest.expires_at)
            and newest.responded_at is not None
            and newest.responded_at >= clock.now() - ANSWERED_JUST_AFTER):
        _answer_to_expired(session, newest)


def _answer_to_expired(session: Session, offer: DispatchOffer) -> None:
    """A yes or no to an offer of this partner's that expired unanswered (its timeout ran
    before their answer came): answered late (_late_answer), under the offer's lock,
    in the leg-then-offer order the timeout takes."""
    _lock_leg(session, offer.leg_id)
    locked = session.get(DispatchOffer, offer.id, with_for_update=True, populate_existing=True)
    assert locked is not None
    if _missed(locked.status, locked.responded_at, locked.expires_at):
        _late_answer(session, locked)


def _late_answer(session: Session, offer: DispatchOffer) -> None:
    """A yes or no to ``offer`` (locked, leg then offer), which expired unanswered: it is
    answered late (_answered_late), so not missed; and if that expiry put the partner OFF
    (its auto_off), they are put back ON (_back_on_after_late_answer)."""
    _answered_late(offer)
    _back_on_after_late_answer(session, offer)


_DUTY_EVENTS = ("duty_on", "duty_off", "auto_off")


def _back_on_after_late_answer(session: Session, offer: DispatchOffer) -> None:
    """The partner answered ``offer`` (late) after its expiry put them OFF as their last
    missed offer in a row (_off_after_missed: its auto_off names the offer's job): the run
    was not all missed, so the automatic OFF is undone, as if they had sent ON (set_duty:
    its checks, a duty_on event), and they hear it by SMS, after the auto_off's SMS they
    may have had. Not when their duty changed since (ON or OFF sent, or ops), nor when the
    ON is refused (suspended, our SMS stopped, ...): they stay OFF, as the auto_off said."""
    last = session.execute(select(PartnerEvent.kind, PartnerEvent.leg_id).where(
        PartnerEvent.partner_id == offer.partner_id, PartnerEvent.kind.in_(_DUTY_EVENTS))
        .order_by(PartnerEvent.at.desc(), PartnerEvent.id.desc()).limit(1)).first()
    if last is None or last.kind != "auto_off" or last.leg_id != offer.leg_id:
        return
    partner = session.get(PartnerProfile, offer.partner_id, with_for_update=True,
                          populate_existing=True)  # as the timeout left it
    assert partner is not None
    if partner.on_duty or set_duty(session, partner, True).key not in DUTY_ON_KEYS:
        return
    _sms_partner(session, partner, "dispatch.auto_off_undone",
                 dedupe_key=f"offer-{offer.id}-back-on", job=offer.leg_id)
    log.info("automatic OFF undone: the partner answered the offer as it expired",
             extra={"partner_id": partner.id, "offer_id": offer.id})


def _accepted_before(session: Session, partner: PartnerProfile, offer: DispatchOffer,
                     job: str) -> Reply:
    """The answer to a yes or no naming a job this partner took (``offer`` accepted): his
    while he has it; delivered once he delivered it (never "yours" then, nor, to a no,
    "send CANCEL", which would answer "already delivered"); else as an offer that is over."""
    leg = session.get(Leg, offer.leg_id)
    assert leg is not None
    if leg.partner_id == partner.id and leg.status in ACTIVE_LEG_STATES:
        return _r("dispatch.already_yours", job=job)
    if leg.partner_id == partner.id and leg.status == LegStatus.DELIVERED.value:
        return _r("dispatch.already_delivered", job=job)
    return _gone(leg, job)


# A bare yes or no this soon after the partner took a job, with no offer open, is about
# that job: the same SMS sent twice by the phone or the carrier (a new MessageSid), or
# his "1" by SMS after his tap in the app.
ACCEPTED_JUST_NOW = timedelta(minutes=5)


def _yes_again(session: Session, partner: PartnerProfile) -> Reply | None:
    """"Job N is already yours" when the partner's newest offer is one he accepted within
    ACCEPTED_JUST_NOW and the job is still his: not "no open offer", which, arriving
    before or after "Job N is yours" on a feature phone, reads as if he had no job. None
    otherwise."""
    newest = session.scalar(select(DispatchOffer).where(
        DispatchOffer.partner_id == partner.id).order_by(DispatchOffer.id.desc()).limit(1))
    if newest is None or newest.status != rules.OfferStatus.ACCEPTED.value \
            or newest.responded_at is None \
            or newest.responded_at < clock.now() - ACCEPTED_JUST_NOW:
        return None
    leg = session.get(Leg, newest.leg_id)
    if leg is None or leg.partner_id != partner.id or leg.status not in ACTIVE_LEG_STATES:
        return None
    return _r("dispatch.already_yours", job=job_code(leg))


def stray_number(session: Session, partner: PartnerProfile, code: str) -> bool:
    """Whether the number sent with a yes names no job this partner ever had an offer or a
    leg of while exactly one offer of theirs is open ("Yes 10 min me aata hu": 10 minutes):
    the yes is to that offer, not to a job 10 (``_pick_offer`` would answer "No open offer
    with code 10", and the partner believe the job gone). A number naming any job of
    theirs keeps its meaning."""
    if len(open_offers_of(session, partner)) != 1:
        return False
    number = _job_number(code)
    if number is None:
        return True
    offered = session.scalar(select(DispatchOffer.id).where(
        DispatchOffer.partner_id == partner.id, DispatchOffer.leg_id == number).limit(1))
    held = session.scalar(select(Leg.id).where(Leg.id == number,
                                               Leg.partner_id == partner.id))
    return offered is None and held is None


def _gave_back(session: Session, partner: PartnerProfile, leg_id: int) -> bool:
    """Whether the partner gave the leg back themselves (CANCEL), rather than had it taken
    back (not picked up in time, blocked by ops)."""
    return session.scalar(select(TransitionLog.id).where(
        TransitionLog.entity == "leg", TransitionLog.entity_id == leg_id,
        TransitionLog.from_status == LegStatus.ASSIGNED.value,
        TransitionLog.to_status == LegStatus.OFFERING.value,
        TransitionLog.actor == str(_partner_actor(partner))).limit(1)) is not None


def not_understood(session: Session, partner: PartnerProfile) -> Reply:
    """The answer to a message we cannot read. With exactly one offer open it is most
    likely an answer to that offer ("no problem", "kitna door hai"): the answer names the job
    and its two choices; else the list of commands is pointed to."""
    offers = open_offers_of(session, partner)
    if len(offers) == 1:
        return _r("dispatch.unknown_offer", job=offers[0].leg_id)
    return _r("dispatch.unknown")


def code_help(session: Session, partner: PartnerProfile,
              numbers: tuple[str, ...] = ()) -> list[Reply]:
    """What a rider with a job in hand hears when he says he has no code ("no code",
    "code nahi mila", "OTP nahi aaya"): for the job named (else each of his jobs), who has
    the code of his step (pickup: who gives him the parcel, on a relay the rider before
    him, _pickup_code_help; drop: who takes it, on a relay the next rider) and to
    call ops for a new one; a locked job, to call ops; a relay carrier whose next rider is
    not found yet, to keep the parcel (nobody has that code yet). Never CANCEL's hint: the
    job is his to finish. No try is counted. Empty with no job in hand or with an offer
    open: the offer's answer decides then ("NO code" declines it), as before."""
    if open_offers_of(session, partner):
        return []
    legs = active_legs_of(session, partner)
    named = {_job_number(n) for n in numbers}
    legs = [leg for leg in legs if leg.id in named] or legs
    ops_phone = get_settings().ops_phone
    out = []
    for leg in legs:
        job = job_code(leg)
        if leg.status == LegStatus.LOCKED.value:
            out.append(_r("dispatch.otp_locked", job=job, ops_phone=ops_phone))
        elif leg.status == LegStatus.ASSIGNED.value:  # handed over to him too: PICK first
            out.append(_r(_pickup_code_help(session, leg), job=job, ops_phone=ops_phone))
        elif (waiting_for := _next_leg_untaken(session, leg)) is not None:
            booking = session.get(Booking, leg.booking_id)
            assert booking is not None
            out.append(_r("dispatch.carrier_wait", job=job,
                          point=place(session, booking, waiting_for, "from"),
                          ops_phone=ops_phone))
        elif _next_leg(session, leg) is not None:  # the next rider at the Point has it
            out.append(_r("dispatch.code_help_drop_relay", job=job, ops_phone=ops_phone))
        else:
            out.append(_r("dispatch.code_help_drop", job=job, ops_phone=ops_phone))
    return out


def _pickup_code_help(session: Session, leg: Leg) -> str:
    """code_help's key for a leg not picked up: a first leg's code is with the sender (who
    gives the parcel); a relay leg's went to the rider before him (handover_give), who
    brings the parcel to the Point, or, the parcel handed over already (handed_over_to),
    who gave it to him and has left: ask that rider, or ops for a new code."""
    if leg.sequence <= 1:
        return "dispatch.code_help_pick"
    if handed_over_to(session, leg):
        return "dispatch.code_help_pick_handed"
    return "dispatch.code_help_pick_relay"


def accept(session: Session, partner: PartnerProfile, code: str | None) -> Reply:
    """The partner says yes. The first valid acceptance wins; later ones hear it is taken.

    A partner who said no to an offer and then, naming the job, yes (changed their mind,
    or "2" typed for "1") gets the job if it is still free and the offer's time is not up:
    the same as if they had said yes first.

    A suspended or rejected partner hears that, not what became of the offer (which their
    suspension withdrew): their yes was to take jobs, which they may not now."""
    found = _pick_offer(session, partner, code)
    if isinstance(found, Reply):
        if partner.kyc_status in BLOCKED_KYC:
            return _r("dispatch.duty_blocked", ops_phone=get_settings().ops_phone)
        return found
    # With the legs of the partner's other open offers, in id order: should this job fill
    # the partner up, those offers are withdrawn below and their legs move on. In id
    # order, two acceptances (a rival taking one of those jobs right now, whose
    # acceptance withdraws this partner's offer of it) cannot each hold what the other
    # waits for; the leg serialises competing acceptances. On a relay, the legs before
    # this one too, in the same pass: send_leg_codes writes the one before (a new handover
    # code), and whoever locks a booking's legs (lock_legs: a cancel, ops ending a stuck
    # relay) takes them in order before the booking, as must we.
    others = {o.id: o.leg_id for o in open_offers_of(session, partner) if o.id != found.id}
    earlier = set(session.scalars(_earlier_legs((found.leg_id,)).with_only_columns(Leg.id)))
    held: dict[int, Leg | None] = {}
    for leg_id in sorted({found.leg_id, *others.values(), *earlier}):
        held[leg_id] = _lock_leg(session, leg_id)
    leg = held[found.leg_id]
    offer = session.get(DispatchOffer, found.id, with_for_update=True, populate_existing=True)
    assert leg is not None and offer is not None
    booking = session.get(Booking, leg.booking_id, with_for_update=True)
    assert booking is not None
    job = job_code(leg)
    cfg = config()
    late = clock.now() > offer.expires_at + timedelta(seconds=cfg.offer_grace_s)
    if booking.status in CLOSED_BOOKING:
        # Cancelled (or failed) as they said yes: nobody took the job, it is off. Their
        # offer, if the cancel has not withdrawn it yet, goes without counting.
        if offer.status == rules.OfferStatus.OPEN.value:
            _withdraw(offer, partner)
        return _r("dispatch.job_cancelled", job=job)
    if offer.status == rules.OfferStatus.DECLINED.value or _closed_going_off(offer):
        # Their no stays on record unless the job is theirs after all (below).
        if leg.status != LegStatus.OFFERING.value:
            return _gone(leg, job)
        if late:
            return _r("dispatch.offer_expired", job=job)
    elif offer.status != rules.OfferStatus.OPEN.value:
        if offer.status == rules.OfferStatus.ACCEPTED.value and leg.partner_id == partner.id:
            # Their own yes by the other channel (the app's tap and the SMS "1" at once)
            # got there first: the job is theirs, not "another partner's".
            return _r("dispatch.already_yours", job=job)
        if _missed(offer.status, offer.responded_at, offer.expires_at):
            # Its timeout expired it between _pick_offer's read and this lock: a late
            # answer, as one a second later (_answer_to_expired), not a missed offer.
            _late_answer(session, offer)
            return _r("dispatch.offer_expired", job=job)
        return _gone(leg, job)
    elif leg.status != LegStatus.OFFERING.value:
        _withdraw(offer, partner)
        return _gone(leg, job)
    elif late:
        _answered_late(offer)
        _maybe_continue(session, leg)
        return _r("dispatch.offer_expired", job=job)
    still_open = offer.status == rules.OfferStatus.OPEN.value
    # The partner's row too, so that two acceptances by one partner (offers from two
    # searches that ran at once) count the active legs one after the other.
    session.get(PartnerProfile, partner.id, with_for_update=True, populate_existing=True)
    if partner.kyc_status in BLOCKED_KYC:  # suspended since the offer went out
        if still_open:
            _withdraw(offer, partner)
            _maybe_continue(session, leg)
        return _r("dispatch.duty_blocked", ops_phone=get_settings().ops_phone)
    if sms_stopped(session, partner):
        # Without the app, and their number stopped our SMS (STOP took them off duty, and
        # set_duty refuses their ON): a yes naming the job would put them back on duty
        # with a job whose pickup phone, codes and reminders go by SMS Twilio refuses.
        # Refused as their ON is; the job goes on to the next partner.
        if still_open:
            _withdraw(offer, partner)
            _maybe_continue(session, leg)
        return _r(DUTY_SMS_STOPPED)
    if not partner.on_duty and not partner.has_app:
        # Taking the job puts them on duty (below), as ON does, so as ON: their Points
        # locked after their row (a close of one meanwhile: one after the other), and
        # refused while they can be placed at none (the close saw them off duty and told
        # them nothing). The job goes on to the next partner.
        _lock_points_of(session, partner)
        if placed_nowhere(session, partner):
            if still_open:
                _withdraw(offer, partner)
                _maybe_continue(session, leg)
            return _no_point()
    facts = partner_facts(session, [partner])[partner.id]
    reason = rules.ineligible_reason(
        rules.PartnerFacts(partner.id, True, facts.active_legs, facts.max_active_legs,
                           facts.trust_tier, facts.vehicles, facts.payable),
        load_of(booking, leg))
    if reason == "unpayable":
        # Their payout could not reach them (KYC back to pending, or no linked account):
        # the job goes to the next partner, and they hear what they are waiting for.
        if still_open:
            _withdraw(offer, partner)
            _maybe_continue(session, leg)
        return _unpayable(partner)
    if reason == "at_capacity":
        # An offer they cannot take (it came before their last job filled them up): it
        # goes, not held against them, and the job to the next partner at once.
        if still_open:
            _withdraw(offer, partner)
            _maybe_continue(session, leg)
        return _r("dispatch.at_capacity", n=facts.active_legs)
    if reason is not None:
        # The partner changed since the offer went out (a vehicle retired, the trust tier
        # lowered): the ranking may have used facts cached before that, PostgreSQL decides.
        log.info("acceptance refused: the partner no longer fits the leg",
                 extra={"leg_id": leg.id, "partner_id": partner.id, "reason": reason})
        if still_open:
            _withdraw(offer, partner)
            _maybe_continue(session, leg)
        return _r(f"dispatch.unfit_{reason}", job=job)
    now = clock.now()
    offer.status = rules.OfferStatus.ACCEPTED.value
    offer.responded_at = now
    partner.offers_accepted = PartnerProfile.offers_accepted + 1
    if not partner.on_duty:
        partner.on_duty = True  # taking a job means working
        # Recorded as set_duty records an ON: the duty history says when they worked.
        session.add(PartnerEvent(partner_id=partner.id, kind="duty_on", at=now))
        _home_follows_duty(session, partner)
    leg.partner_id = partner.id
    move_leg(session, leg, LegStatus.ASSIGNED, _partner_actor(partner), "offer accepted")
    _withdraw_open(session, leg, booking, keep=offer.id)
    if facts.active_legs + 1 >= facts.max_active_legs:
        _withdraw_when_full(session, partner, held)
    search = _search_of(session, leg.id)
    if search is not None:
        search.status = rules.SearchStatus.DONE.value
        search.next_try_at = None
    if booking.status == BookingStatus.DISPATCHING.value:
        move_booking(session, booking, BookingStatus.ASSIGNED, _partner_actor(partner),
                     "partner accepted")
        _assigned_to_customer(session, booking, partner, load_of(booking, leg),
                              f"offer{offer.id}")
    elif leg.sequence > 1:
        _next_rider_to_customer(session, booking, leg)
    # The payout is set aside for this partner now (Route transfer on hold), released on
    # delivery; a different job id per offer, so a re-assignment holds for the new partner.
    _enqueue_after_commit(session, "workers.payments.hold_leg_transfer", leg.id,
                          job_id=f"hold-{leg.id}-{offer.id}", retry=GATEWAY_RETRY)
    giver_phone = send_leg_codes(session, booking, leg, tag=f"o{offer.id}")
    return _r("dispatch.accepted", job=job, pickup=place(session, booking, leg, "from"),
              phone=giver_phone or get_settings().ops_phone)


def _closed_going_off(offer: DispatchOffer) -> bool:
    """Whether the offer was closed by the partner going off duty (set_duty): expired
    before its time was up. Like a no, it may still be taken in time, naming the job."""
    return (offer.status == rules.OfferStatus.EXPIRED.value
            and offer.responded_at is not None and offer.responded_at < offer.expires_at)


def _gone(leg: Leg, job: str) -> Reply:
    """The answer to a yes for a job the partner's offer of which is over: another
    partner's, or, while nobody has it (a relay leg paused until its next round, a job
    offered on), no longer open to them; never "another partner's" when nobody took it."""
    if leg.status in (LegStatus.PENDING.value, LegStatus.OFFERING.value):
        return _r("dispatch.withdrawn", job=job)
    return _r("dispatch.taken", job=job)


def _withdraw_when_full(session: Session, partner: PartnerProfile,
                        held: dict[int, Leg | None]) -> None:
    """The job just taken fills the partner up: their other open offers, which they could
    no longer take, are withdrawn (not held against them; they hear the jobs are no
    longer open) and those jobs go to the next partners at once. ``held``: the legs the
    caller locked (accept), which are all the legs of the partner's open offers unless
    one was made to them meanwhile; that one is left to the at_capacity answer or its
    timeout rather than locked out of order."""
    for other in open_offers_of(session, partner):
        leg = held.get(other.leg_id)
        if leg is None:
            log.warning("an offer to a partner who is full is left open",
                        extra={"partner_id": partner.id, "offer_id": other.id})
            continue
        offer = session.get(DispatchOffer, other.id, with_for_update=True,
                            populate_existing=True)
        if offer is None or offer.status != rules.OfferStatus.OPEN.value:
            continue
        _withdraw(offer, partner)
        _sms_partner(session, partner, "dispatch.withdrawn", booking_id=leg.booking_id,
                     dedupe_key=f"offer-{offer.id}-withdrawn", job=job_code(leg))
        _maybe_continue(session, leg)


def _next_rider_to_customer(session: Session, booking: Booking, leg: Leg) -> None:
    """A relay leg the customer was told we are still looking for got a rider: we said we
    would tell them, so they hear the parcel moves on (once for each such message)."""
    promise = _last_sent(session, booking, f"leg-{leg.id}-r%-searching")
    if promise is not None:
        notify.notify_customer(session, booking, "dispatch.customer_next_rider",
                               dedupe_key=promise.removesuffix("-searching") + "-found")


def _code_key(session: Session, booking: Booking, leg: Leg, key: str, kind: str, *,
              to_phone: str | None = None) -> str:
    """The catalog key for a code of ``kind`` (pickotp, dropotp, handgive, handtake) sent
    for the leg: its ``_new`` variant when one was sent before (a rider gave the job back,
    ops unlocked the leg), which says the old code no longer works. A handover code counts
    only if it went to ``to_phone``: a rider new to the job never had the old one."""
    sent = _last_sent(session, booking, f"leg-{leg.id}-{kind}-%", to_phone=to_phone)
    return key + "_new" if sent is not None else key


def _handover_key(session: Session, booking: Booking, leg: Leg, partner: PartnerProfile,
                  key: str, kind: str) -> str:
    phone = _person(session, partner).phone
    if not phone:
        return key  # nothing is sent (_sms_partner)
    return _code_key(session, booking, leg, key, kind, to_phone=phone)


def send_leg_codes(session: Session, booking: Booking, leg: Leg, *, tag: str,
                   pickup: bool = True) -> str | None:
    """Issue the leg's OTPs and send them to whoever hands over and receives the parcel.

    The drop code goes to the recipient on the last leg (at night before the pickup, not
    now: _hold_drop_code), and on a relay to the next leg's partner if that leg is taken
    already (they read it out at the Point): every new code replaces the one they had.
    ``pickup=False`` (the parcel is picked up already) sends no pickup code. Returns the
    phone of the person the partner collects from (sender, or the previous leg's partner
    on a relay)."""
    # The codes they replace may still wait in the outbox (Twilio away): never sent now,
    # after the new ones.
    outbox.withdraw_leg_codes(session, leg.id)
    pickup_code, drop_code = issue_leg_otps(leg)
    legs = _legs(session, booking)
    is_last = leg.sequence == len(legs)
    partner = session.get(PartnerProfile, leg.partner_id) if leg.partner_id else None
    giver_phone: str | None = None
    point = place(session, booking, leg, "from")
    if not is_last:
        nxt = legs[leg.sequence]
        taker = session.get(PartnerProfile, nxt.partner_id) if nxt.partner_id else None
        if taker is not None and nxt.status == LegStatus.ASSIGNED.value:
            key = _handover_key(session, booking, nxt, taker, "dispatch.handover_take",
                                "handtake")
            _sms_partner(session, taker, key, booking_id=booking.id,
                         dedupe_key=f"leg-{nxt.id}-handtake-{leg.id}-{tag}", job=job_code(nxt),
                         point=place(session, booking, nxt, "from"), otp=drop_code)
    if pickup and leg.sequence == 1:
        notify.notify_customer(session, booking,
                               _code_key(session, booking, leg, "dispatch.pickup_otp", "pickotp"),
                               otp=pickup_code, dedupe_key=f"leg-{leg.id}-pickotp-{tag}")
        customer = session.get(Person, booking.customer_id)
        giver_phone = customer.phone if customer else None
    elif pickup:
        prev = legs[leg.sequence - 2]
        prev_partner = session.get(PartnerProfile, prev.partner_id) if prev.partner_id else None
        giver_phone = None
        if prev_partner is not None and partner is not None:
            giver_phone = _person(session, prev_partner).phone
            # The rider handing over at the Point gives this code to the next rider ...
            key = _handover_key(session, booking, leg, prev_partner, "dispatch.handover_give",
                                "handgive")
            _sms_partner(session, prev_partner, key, booking_id=booking.id,
                         dedupe_key=f"leg-{leg.id}-handgive-{tag}", job=job_code(prev),
                         point=point, otp=pickup_code)
            # ... and keys in the code the next rider reads out: prev leg's drop OTP.
            if prev.status in (LegStatus.ASSIGNED.value, LegStatus.PICKED_UP.value):
                outbox.withdraw_leg_codes(session, prev.id, kinds=("drop",))
                prev_drop = _new_handover_code(prev)
                key = _handover_key(session, booking, leg, partner, "dispatch.handover_take",
                                    "handtake")
                _sms_partner(session, partner, key, booking_id=booking.id,
                             dedupe_key=f"leg-{leg.id}-handtake-{tag}", job=job_code(leg),
                             point=point, otp=prev_drop)
    if is_last:
        morning = _night_ends(clock.now()) if pickup else None
        if morning is not None and _code_phone(session, booking):
            _hold_drop_code(session, leg, morning, tag)
        else:
            _send_drop_code(session, booking, leg, drop_code, tag)
    return giver_phone


def _send_drop_code(session: Session, booking: Booking, leg: Leg, drop_code: str,
                    tag: str) -> None:
    """The last leg's drop code to the person receiving (the sender when there is no
    recipient number: she passes it on)."""
    recipient = _code_phone(session, booking)
    if recipient:
        key = _code_key(session, booking, leg, "dispatch.drop_otp", "dropotp")
        dedupe_key = f"leg-{leg.id}-dropotp-{tag}"
        if notify.notify_phone(session, recipient, key,
                               lang=recipient_language(session, booking),
                               booking_id=booking.id, dedupe_key=dedupe_key,
                               ref=booking.reference, otp=drop_code) is None and (
                session.scalar(select(OutboxMessage.id).where(
                    OutboxMessage.dedupe_key == dedupe_key)) is None):
            # Nothing can reach her (she stopped our SMS, no WhatsApp): the sender,
            # who gave her number, passes the code on.
            if _drop_code_to_sender(session, booking, leg, drop_code,
                                    dedupe_key=f"{dedupe_key}-sender") is None:
                alert_ops(session, "dispatch.ops_drop_code_unsent",
                          dedupe_key=f"leg-{leg.id}-dropunsent-{tag}",
                          booking_id=booking.id, ref=booking.reference, job=job_code(leg))
    else:
        key = _code_key(session, booking, leg, "dispatch.drop_otp_sender", "dropotp")
        notify.notify_customer(session, booking, key, otp=drop_code,
                               dedupe_key=f"leg-{leg.id}-dropotp-{tag}")


# The person receiving a parcel has asked for nothing: her drop code is not sent at night
# (DISPATCH_DROP_CODE_NIGHT, 21:00-07:00 India time) while the parcel waits for its pickup
# (a job taken at 23:00 for the morning). It goes when the night ends (job
# ``drop-code-morning-<leg>-<tag>``), or at the pickup if that comes first: the rider is
# on his way to her then, and she needs it before he arrives. Until then the leg has no
# drop code at all (its hash is empty): nobody could be holding one.


def _night_ends(now: datetime) -> datetime | None:
    """When the recipient's night ends (India time) if ``now`` is in it, else None."""
    night = config().drop_code_night
    if night is None:
        return None
    start, end = night
    local = now.astimezone(IST)
    minute = local.hour * 60 + local.minute
    # A night past midnight (21:00-07:00), or within one day (01:00-05:00).
    at_night = (start <= minute or minute < end) if start > end else start <= minute < end
    if not at_night:
        return None
    morning = datetime.combine(local.date(), time(end // 60, end % 60), tzinfo=IST)
    return morning if morning > local else morning + timedelta(days=1)


def _hold_drop_code(session: Session, leg: Leg, morning: datetime, tag: str) -> None:
    """Keep the recipient's drop code from the night: no code for now (the one just made
    is forgotten unsent), a new one at ``morning`` or at the pickup (send_held_drop_code)."""
    leg.drop_otp_hash = None
    _schedule_in(session, (morning - clock.now()).total_seconds(),
                 "workers.dispatch.morning_drop_code", leg.id,
                 job_id=f"drop-code-morning-{leg.id}-{tag}")
    log.info("drop code kept for the morning", extra={"leg_id": leg.id})


def send_held_drop_code(session: Session, booking: Booking, leg: Leg, *, tag: str) -> bool:
    """The drop code kept from the night (_hold_drop_code) goes now, newly made (the
    leg's pickup code and its tries stay): in the morning, or at the pickup. Nothing if
    the leg has its code (sent already, or ops gave one), is not the last or is not
    under way (given back: its next rider's accept sends one; delivered; cancelled).
    The caller holds the leg's lock. Returns whether a code was made."""
    if (leg.drop_otp_hash is not None or leg.status not in _DELIVERING
            or booking.status in CLOSED_BOOKING
            or leg.sequence != len(_legs(session, booking))):
        return False
    _send_drop_code(session, booking, leg, _new_handover_code(leg), tag)
    return True


def morning_drop_code(leg_id: int) -> str:
    """Job ``drop-code-morning-<leg>-<tag>``: the night is over, the recipient's drop code
    kept from it goes now (unless the pickup sent it already)."""
    with transaction() as session:
        leg = _lock_leg(session, leg_id)
        if leg is None:
            return "missing"
        booking = session.get(Booking, leg.booking_id, with_for_update=True)
        assert booking is not None
        if not send_held_drop_code(session, booking, leg, tag=f"am{leg.version}"):
            return "nothing-held"
        return "sent"


def _new_handover_code(prev: Leg) -> str:
    """A new drop code for the relay leg before another (the one its next rider reads out
    at the Point), returned to be sent once. Its pickup code stays (the sender may still
    hold it), and so do its wrong tries: the same rider keeps typing against the leg, and
    a next rider taking the job, or giving it back, must not hand a guesser fresh tries
    (they are bounded as ever: the leg locks at DISPATCH_OTP_MAX_FAILURES)."""
    pickup_hash, failures = prev.pickup_otp_hash, prev.otp_failures
    _, code = issue_leg_otps(prev)
    prev.pickup_otp_hash, prev.otp_failures = pickup_hash, failures
    return code


def _drop_code_to_sender(session: Session, booking: Booking, leg: Leg, code: str, *,
                         dedupe_key: str) -> int | None:
    """Give the leg's drop code to the customer, saying it could not be sent to the person
    receiving, so they tell them: the rider cannot hand the parcel over without it."""
    log.info("drop code could not reach the recipient; given to the sender",
             extra={"booking_id": booking.id, "leg_id": leg.id})
    return notify.notify_customer(session, booking, "dispatch.drop_otp_pass_on", otp=code,
                                  dedupe_key=dedupe_key)


# A recipient's drop code as send_leg_codes queues it (the tag has no "-"); what is sent
# in its place when it is lost adds a suffix, so it is never taken for one itself.
_DROP_CODE_KEY = re.compile(r"leg-(\d+)-dropotp-([^-]+)")
_DELIVERING = (LegStatus.ASSIGNED.value, LegStatus.PICKED_UP.value)


def drop_code_lost(session: Session, row: OutboxMessage) -> int | None:
    """The recipient's drop code did not reach her (Twilio could not deliver or refused it,
    and it went no other way): nobody holds a code, and the rider cannot hand the parcel
    over. A new drop code is made (the leg keeps only a hash of it, and the lost one is
    void should it arrive after all) and sent to her on WhatsApp if she chats with us
    there, else to the sender to pass on, ops told. Nothing can carry it (the sender
    stopped our SMS, no WhatsApp): the lost code stays as it was (its SMS may yet arrive),
    ops hear nobody holds one. Only for the leg's latest drop code, the parcel still to be
    delivered; once (the new code is the latest after it). Returns the new message's row
    id, None if nothing was to be done or nobody could be reached."""
    found = _DROP_CODE_KEY.fullmatch(row.dedupe_key or "")
    if found is None or row.booking_id is None:
        return None
    booking = session.get(Booking, row.booking_id)
    leg = _lock_leg(session, int(found[1]))
    phone = booking.recipient_phone if booking is not None else None
    if (booking is None or leg is None or leg.booking_id != booking.id
            or leg.status not in _DELIVERING or not phone
            or row.to_addr != outbox.address(row.channel, phone)
            or _last_sent(session, booking, f"leg-{leg.id}-dropotp-%") != row.dedupe_key):
        return None
    if _ops_code_since(session, leg, "drop", row):
        _ops_sent_code_lost(session, booking, leg, found[2])
        return None
    # A new drop code, with fresh tries (bounded); the pickup code the sender holds stays
    # as it is. Before the pickup the leg's one counter holds the wrong PICK codes, tried
    # against that pickup code, which nobody lost: they stay.
    before = leg.pickup_otp_hash, leg.drop_otp_hash, leg.otp_failures
    failures = (leg.otp_failures if leg.status == LegStatus.ASSIGNED.value
                else tries_after_lost_code(session, leg, "drop"))
    _, code = issue_leg_otps(leg)
    leg.pickup_otp_hash, leg.otp_failures = before[0], failures
    recipient = session.scalar(select(Person).where(Person.phone == phone))
    if row.channel == "sms" and recipient is not None and (
            recipient.id != booking.customer_id):
        holds_one = _holds_code(session, booking, leg, "dropotp", phone, other_than=row.id)
        key = "dispatch.drop_otp_new" if holds_one else "dispatch.drop_otp"
        lang = recipient_language(session, booking)  # hers, the template's too
        body = i18n.t(key, lang, ref=booking.reference, otp=code)
        sent = notify.send_to_person(session, recipient, body, booking_id=booking.id,
                                     dedupe_key=f"{row.dedupe_key}-wa", whatsapp_only=True,
                                     lang=lang)
        if sent is not None:
            log.info("drop code SMS lost; a new code sent on WhatsApp",
                     extra={"booking_id": booking.id, "leg_id": leg.id})
            return sent
    sent = _drop_code_to_sender(session, booking, leg, code,
                                dedupe_key=f"{row.dedupe_key}-sender")
    if sent is None:
        # Nobody was given the new code: the lost one stays the one that works, so a
        # recipient whose SMS arrives late after all can still use it (as pickup_code_lost).
        leg.pickup_otp_hash, leg.drop_otp_hash, leg.otp_failures = before
        log.error("drop code lost and the sender cannot be reached",
                  extra={"booking_id": booking.id, "leg_id": leg.id})
    # What really happened: the new code went to the sender, or to nobody.
    alert_ops(session, "dispatch.ops_drop_code_lost" if sent is not None
              else "dispatch.ops_drop_code_unsent",
              dedupe_key=f"leg-{leg.id}-droplost-{found[2]}", booking_id=booking.id,
              ref=booking.reference, job=job_code(leg))
    return sent


def _holds_code(session: Session, booking: Booking, leg: Leg, kind: str, phone: str, *,
                other_than: int) -> bool:
    """Whether a code of ``kind`` (pickotp, dropotp) for the leg went to ``phone`` (by SMS
    or WhatsApp) in a message other than ``other_than`` not reported failed: they may
    hold an older code, and are told the new one replaces it."""
    return session.scalar(select(OutboxMessage.id).where(
        OutboxMessage.booking_id == booking.id, OutboxMessage.id != other_than,
        OutboxMessage.dedupe_key.like(f"leg-{leg.id}-{kind}-%"),
        OutboxMessage.to_addr.in_([outbox.address("sms", phone),
                                   outbox.address("whatsapp", phone)]),
        OutboxMessage.status.not_in(("failed", "undelivered"))).limit(1)) is not None


def _ops_code_since(session: Session, leg: Leg, kind: str, row: OutboxMessage) -> bool:
    """Whether ops made a new ``kind`` code for the leg after ``row`` was queued (read out
    on the phone, maybe not sent: new_leg_code), or, for a pickup code, the customer
    heard a new one on a call. Its late failure report must not make
    another code, which would void the one ops gave. Only codes ops made count: one the
    recipient asked for (RECIPIENT_NEW_CODE) or the service made (a wrong number, a
    recipient's new SIM) was read out to nobody, and its loss has the usual fallback."""
    given = (AuditEntry.action == OPS_NEW_CODE) & (AuditEntry.target == f"leg:{leg.id}") & (
        AuditEntry.details["kind"].astext == kind) & (
        AuditEntry.actor.not_like(f"{SYSTEM.kind}:%"))
    if kind == "pickup":  # or the customer heard one on a call (core.services.ivr)
        given = given | ((AuditEntry.action == IVR_CODE_READ)
                         & (AuditEntry.target == f"booking:{leg.booking_id}")
                         & (AuditEntry.details["leg_id"].astext == str(leg.id)))
    return session.scalar(select(AuditEntry.id).where(given, AuditEntry.at >= row.created_at)
                          .limit(1)) is not None


def _ops_sent_code_lost(session: Session, booking: Booking, leg: Leg, tag: str) -> None:
    """The message that failed carried the latest code ops gave (``"send": true``): no
    other code is made (ops may have read this one out on the phone), but ops hear it did
    not arrive, once. Any other message is older than a code ops gave: nothing to do."""
    issued = session.scalar(select(func.count()).select_from(AuditEntry).where(
        AuditEntry.action == OPS_NEW_CODE, AuditEntry.target == f"leg:{leg.id}")) or 0
    if tag != f"ops{issued}":
        return
    # Not the message's own key plus a suffix: a key like a code's would be taken for one.
    alert_ops(session, "dispatch.ops_sent_code_lost", dedupe_key=f"leg-{leg.id}-opslost-{tag}",
              booking_id=booking.id, ref=booking.reference, job=job_code(leg))


def tries_after_lost_code(session: Session, leg: Leg, kind: str) -> int:
    """The wrong tries (``otp_failures``) a new ``kind`` code replacing a lost one starts
    with. Tries count against a code, and nobody held the lost one, so the new code
    starts fresh; but wrong tries of that kind since the leg entered its state beyond one
    code's worth still count, so that however many codes are lost (a recipient's number
    given wrong on purpose) a guesser gets at most twice DISPATCH_OTP_MAX_FAILURES wrong
    tries before the leg locks. An ops unlock starts a new stretch."""
    entered = session.scalar(select(func.max(TransitionLog.at)).where(
        TransitionLog.entity == "leg", TransitionLog.entity_id == leg.id,
        TransitionLog.to_status == leg.status))
    query = select(func.count()).select_from(OtpAttempt).where(
        OtpAttempt.leg_id == leg.id, OtpAttempt.kind == kind, OtpAttempt.ok.is_(False))
    if entered is not None:
        query = query.where(OtpAttempt.at >= entered)
    wrong = session.scalar(query) or 0
    return max(0, wrong - config().otp_max_failures)


# A customer's pickup code as send_leg_codes queues it; what is sent in its place adds a
# suffix, so it is never taken for one itself (a code is made again once for each).
_PICKUP_CODE_KEY = re.compile(r"leg-(\d+)-pickotp-([^-]+)")


def pickup_code_lost(session: Session, row: OutboxMessage) -> int | None:
    """The customer's pickup code did not reach them (Twilio could not deliver it, and it
    went no other way; a phone-only customer whose SMS never arrived): the rider comes and
    nobody holds a code. A new pickup code is made (only its hash kept, the lost one void
    should it arrive after all; the drop code stays) and sent on WhatsApp to a customer
    who chats with us there. Else it goes by SMS once more (a phone off or out of signal
    mostly takes the next one), the rider is told to call ops if the customer has no code
    at pickup, and ops are told what happened. Nothing can carry it (the customer stopped
    our SMS since, no WhatsApp): the lost code stays as it was, ops hear nobody holds one.
    Only for the leg's latest pickup code, the parcel not yet picked up; once. Returns
    the new message's row id, None if nothing was done or nothing could be sent."""
    found = _PICKUP_CODE_KEY.fullmatch(row.dedupe_key or "")
    if found is None or row.booking_id is None:
        return None
    booking = session.get(Booking, row.booking_id)
    leg = _lock_leg(session, int(found[1]))
    customer = session.get(Person, booking.customer_id) if booking is not None else None
    if (booking is None or leg is None or customer is None or not customer.phone
            or leg.booking_id != booking.id or leg.sequence != 1
            or leg.status != LegStatus.ASSIGNED.value or booking.status in CLOSED_BOOKING
            or row.to_addr != outbox.address(row.channel, customer.phone)
            or _last_sent(session, booking, f"leg-{leg.id}-pickotp-%") != row.dedupe_key):
        return None
    if _ops_code_since(session, leg, "pickup", row):
        _ops_sent_code_lost(session, booking, leg, found[2])
        return None
    before = leg.pickup_otp_hash, leg.drop_otp_hash, leg.otp_failures
    failures = tries_after_lost_code(session, leg, "pickup")
    code, _ = issue_leg_otps(leg)
    leg.drop_otp_hash, leg.otp_failures = before[1], failures
    key = "dispatch.pickup_otp_new" if _holds_code(
        session, booking, leg, "pickotp", customer.phone, other_than=row.id) else (
        "dispatch.pickup_otp")
    lang = notify.booking_language(booking, customer)
    body = i18n.t(key, lang, ref=booking.reference, otp=code)
    if row.channel == "sms":
        sent = notify.send_to_person(session, customer, body, booking_id=booking.id,
                                     dedupe_key=f"{row.dedupe_key}-wa", whatsapp_only=True,
                                     lang=lang)
        if sent is not None:
            log.info("pickup code SMS lost; a new code sent on WhatsApp",
                     extra={"booking_id": booking.id, "leg_id": leg.id})
            return sent
    sent = notify.send_to_person(session, customer, body, booking_id=booking.id,
                                 dedupe_key=f"{row.dedupe_key}-again", sms_only=True, lang=lang)
    if sent is None:
        leg.pickup_otp_hash, leg.drop_otp_hash, leg.otp_failures = before
        log.error("pickup code lost and the customer cannot be reached",
                  extra={"booking_id": booking.id, "leg_id": leg.id})
    else:
        log.info("pickup code lost; a new code sent again",
                 extra={"booking_id": booking.id, "leg_id": leg.id})
    partner = session.get(PartnerProfile, leg.partner_id) if leg.partner_id else None
    if partner is not None:
        _sms_partner(session, partner, "dispatch.pickup_code_lost_rider",
                     booking_id=booking.id, dedupe_key=f"leg-{leg.id}-picklost-{found[2]}",
                     job=job_code(leg), ops_phone=get_settings().ops_phone)
    alert_ops(session, "dispatch.ops_pickup_code_lost" if sent is not None
              else "dispatch.ops_pickup_code_unsent",
              dedupe_key=f"leg-{leg.id}-picklost-{found[2]}-ops", booking_id=booking.id,
              ref=booking.reference, job=job_code(leg))
    return sent


# A handover code as send_leg_codes or _send_new_code queues it: the next leg's pickup
# code to the rider handing over (``leg-<next>-handgive-<tag>``), and the leg before's
# drop code to the next rider (``leg-<next>-handtake-[<before>-]<tag>``). Tags start with
# a letter; what is sent in a lost one's place adds a suffix, so it is never taken for one.
_HANDGIVE_KEY = re.compile(r"leg-(\d+)-handgive-([^-]+)")
_HANDTAKE_KEY = re.compile(r"leg-(\d+)-handtake-(?:(\d+)-)?([^-]+)")


def handover_code_lost(session: Session, row: OutboxMessage) -> int | None:
    """A rider's handover code did not reach them (Twilio could not deliver it, and it
    went no other way): at the Point one of the two riders has no code to read out, and
    the parcel cannot change hands. As pickup_code_lost does for the customer's code: a
    new code is made (only its hash kept, the lost one void should it arrive after all;
    the leg's other code stays, the tries are those of a code made again) and sent on
    WhatsApp to a rider who chats with us there, else by SMS once more, and ops are told
    (they can give a code on the phone: new_leg_code). Nothing can carry it: the lost
    code stays as it was, ops hear the rider has none.

    ``handgive`` (to the rider handing over: the next leg's pickup code) while the next
    leg is not picked up; once he handed the parcel over (his DROP), the new code goes to
    the rider holding it (as _send_new_code). ``handtake`` (to the next rider: the drop
    code of the leg before) while that leg is not delivered and the next leg is hers, not
    picked up. Only for the latest such message, once. Returns the new message's row id,
    None if nothing was done or nothing could be sent."""
    key = row.dedupe_key or ""
    give, take = _HANDGIVE_KEY.fullmatch(key), _HANDTAKE_KEY.fullmatch(key)
    if (give is None and take is None) or row.booking_id is None:
        return None
    found = give or take
    assert found is not None
    tag = found[found.re.groups]
    booking = session.get(Booking, row.booking_id)
    nxt = session.get(Leg, int(found[1]))
    if booking is None or nxt is None or nxt.booking_id != booking.id or nxt.sequence < 2:
        return None
    # Legs in their order (lock_legs): the one before, then the next.
    prev = _previous_leg(session, nxt)
    if prev is None:
        return None
    prev, nxt = _lock_leg(session, prev.id), _lock_leg(session, nxt.id)
    assert prev is not None and nxt is not None
    if (booking.status in CLOSED_BOOKING or nxt.status != LegStatus.ASSIGNED.value
            or nxt.partner_id is None or prev.partner_id is None
            or (take is not None and take[2] is not None and int(take[2]) != prev.id)):
        return None
    handed = prev.status == LegStatus.DELIVERED.value
    if give is not None:
        # The next leg's pickup code, for the rider who handed the parcel over, or (handed
        # over already) for the rider holding it.
        leg, kind, command, to_partner = nxt, "pickup", "PICK", prev.partner_id
        if not handed and prev.status not in _DELIVERING:
            return None
        sends_to = nxt.partner_id if handed else prev.partner_id
    else:
        # The drop code of the leg before, for the next rider to read out: used already
        # once that leg is delivered.
        leg, kind, command, to_partner = prev, "drop", "DROP", nxt.partner_id
        if prev.status not in _DELIVERING:
            return None
        sends_to = nxt.partner_id
    owner = session.get(PartnerProfile, to_partner)
    person = _person(session, owner) if owner is not None else None
    lost_kind = "handgive" if give is not None else "handtake"
    if (person is None or not person.phone
            or row.to_addr != outbox.address(row.channel, person.phone)
            or _last_sent(session, booking, f"leg-{nxt.id}-{lost_kind}-%") != key):
        return None
    if _ops_code_since(session, leg, kind, row):
        _ops_sent_code_lost(session, booking, leg, tag)
        return None
    target = session.get(PartnerProfile, sends_to)
    assert target is not None
    rider = _person(session, target)
    before = leg.pickup_otp_hash, leg.drop_otp_hash, leg.otp_failures
    if kind == "pickup":
        failures = tries_after_lost_code(session, leg, "pickup")
        code, _ = issue_leg_otps(leg)
        leg.drop_otp_hash = before[1]
    else:
        # Before its pickup the leg's one counter holds wrong PICK codes: they stay.
        failures = (leg.otp_failures if leg.status == LegStatus.ASSIGNED.value
                    else tries_after_lost_code(session, leg, "drop"))
        _, code = issue_leg_otps(leg)
        leg.pickup_otp_hash = before[0]
    leg.otp_failures = failures
    lang = _lang(rider)
    point = place(session, booking, nxt, "from")
    if give is not None and handed:
        body = i18n.t("dispatch.handed_pick_code", lang, job=job_code(nxt), otp=code)
    else:
        holds = rider.phone is not None and _holds_code(
            session, booking, nxt, lost_kind, rider.phone, other_than=row.id)
        text_key = "dispatch.handover_give" if give is not None else "dispatch.handover_take"
        body = i18n.t(text_key + ("_new" if holds else ""), lang, point=point, otp=code,
                      job=job_code(prev if give is not None else nxt))
    sent = None
    if row.channel == "sms" and rider.id == person.id:
        sent = notify.send_to_person(session, rider, body, booking_id=booking.id,
                                     dedupe_key=f"{key}-wa", whatsapp_only=True)
    if sent is None:
        sent = notify.send_to_person(session, rider, body, booking_id=booking.id,
                                     dedupe_key=f"{key}-again", sms_only=True)
    if sent is None:
        # Nobody was given the new code: the lost one stays the one that works.
        leg.pickup_otp_hash, leg.drop_otp_hash, leg.otp_failures = before
        log.error("handover code lost and the rider cannot be reached",
                  extra={"booking_id": booking.id, "leg_id": leg.id})
    else:
        log.info("handover code lost; a new code sent",
                 extra={"booking_id": booking.id, "leg_id": leg.id})
    alert_ops(session, "dispatch.ops_handover_code_lost" if sent is not None
              else "dispatch.ops_handover_code_unsent",
              dedupe_key=f"leg-{leg.id}-handlost-{kind}-{tag}-ops", booking_id=booking.id,
              ref=booking.reference, job=job_code(leg), command=command)
    return sent


def recipient_language(session: Session, booking: Booking) -> str:
    """The recipient's own language if we know them, else the one the sender booked in: a
    parcel mostly goes to family or a shop in the same area."""
    recipient = session.scalar(select(Person).where(Person.phone == booking.recipient_phone))
    if recipient is not None and recipient.preferred_language:
        return recipient.preferred_language
    return notify.booking_language(booking, session.get(Person, booking.customer_id))


def decline(session: Session, partner: PartnerProfile, code: str | None) -> Reply:
    """The partner says no: the offer closes and the cascade moves on if nothing is open.
    A suspended or rejected partner has no offer left (block_partner withdrew them): they
    hear why."""
    found = _pick_offer(session, partner, code)
    if isinstance(found, Reply) and partner.kyc_status in BLOCKED_KYC:
        return _r("dispatch.duty_blocked", ops_phone=get_settings().ops_phone)
    if isinstance(found, Reply):
        if found.key == "dispatch.already_yours":
            return _r("dispatch.cancel_hint", job=found.params["job"])
        return found
    leg = _lock_leg(session, found.leg_id)
    offer = session.get(DispatchOffer, found.id, with_for_update=True, populate_existing=True)
    assert leg is not None and offer is not None
    if _missed(offer.status, offer.responded_at, offer.expires_at):
        # Its timeout expired it between _pick_offer's read and this lock: a late answer,
        # as one a second later (_answer_to_expired), not a missed offer.
        _late_answer(session, offer)
        return _r("dispatch.offer_expired", job=job_code(leg))
    if offer.status != rules.OfferStatus.OPEN.value:
        return _r("dispatch.declined", job=job_code(leg))
    offer.status = rules.OfferStatus.DECLINED.value
    offer.responded_at = clock.now()
    _maybe_continue(session, leg)
    return _r("dispatch.declined", job=job_code(leg))


def _choose_leg(session: Session, partner: PartnerProfile, numbers: tuple[str, ...],
                states: tuple[str, ...], *, job_only: bool = False,
                ) -> tuple[Leg | None, str | None, Reply | None]:
    """The leg a PICK/DROP/CANCEL is about, the OTP that came with it, or a reply."""
    legs = active_legs_of(session, partner)
    codes = [job_code(leg) for leg in legs]
    if job_only:
        otp, job = None, (numbers[0] if numbers else None)
    else:
        otp, job = _job_then_code(numbers, codes) or rules.split_otp_and_job(numbers, codes)
    if job is not None:
        number = _job_number(job)
        chosen = [leg for leg in legs if leg.id == number]
        if not chosen:
            done = session.get(Leg, number) if number is not None else None
            if done is not None and done.partner_id == partner.id \
                    and done.status == LegStatus.DELIVERED.value:
                # Sent again (the answer was slow, the app retried): it is done, not unknown.
                return None, otp, _r("dispatch.already_delivered", job=job_code(done))
            return None, otp, _r("dispatch.no_such_job", job=job)
    else:
        chosen = [leg for leg in legs if leg.status in states + (LegStatus.LOCKED.value,)]
        if not chosen and len(legs) == 1:
            chosen = legs  # one job in another state: answer about that job (e.g. PICK first)
        if not chosen:
            return None, otp, _r("dispatch.no_job")
        if len(chosen) > 1:  # CANCEL takes no OTP: its own example
            key = "dispatch.which_job_cancel" if job_only else "dispatch.which_job"
            return None, otp, _r(key, jobs=" ".join(job_code(x) for x in chosen),
                                 job=job_code(chosen[0]))
    return chosen[0], otp, None


def _job_then_code(numbers: tuple[str, ...], codes: list[str]) -> tuple[str, str] | None:
    """(otp, job) of "PICK 99 4821": a number naming none of his jobs, shorter than a code,
    then a code. rules.split_otp_and_job reads such a first number as a code typed short
    ("PICK 62 0"), so he heard "Send PICK and the 4-digit OTP" (or "which job?"), as if his
    code were at fault, and sent it again alone: a wrong try on his own job. It names the
    job he means: not his (another rider's or none: the same answer, "you have no job 99",
    nothing about it said; no code is checked, so none is tested for free), his cancelled
    or done one, or his own typed with a 0 ("057"). None for
    anything else (two codes: the OTP first, as the texts show it)."""
    if len(numbers) != 2:
        return None
    job, otp = numbers
    if job in codes or otp in codes or not _is_code(otp) or len(job) >= OTP_DIGITS \
            or _job_number(job) is None:
        return None
    return otp, job


def _code_sent_as_job(session: Session, partner: PartnerProfile, kind: str,
                      numbers: tuple[str, ...], named: Leg | None,
                      wanted: tuple[str, ...]) -> Leg | None:
    """The leg whose right ``kind`` code is the lone number taken as the job code (rules.
    lone_code_or_job): the named job if it waits for that code, else the one job that
    does. None if the number is no such code: it names the job, and costs no try."""
    legs = active_legs_of(session, partner)
    lone = rules.lone_code_or_job(numbers, [job_code(leg) for leg in legs])
    if lone is None or named is None:
        return None
    if named.status in wanted:
        tried = [named]
    else:
        tried = [leg for leg in legs if leg.status in wanted]
        if len(tried) != 1:
            return None
    from core.services.booking import check_leg_otp

    return tried[0] if check_leg_otp(tried[0], kind, lone) else None


def _is_code(otp: str | None) -> bool:
    """Whether ``otp`` has the form of a leg's code (OTP_DIGITS ASCII digits)."""
    return otp is not None and otp.isascii() and otp.isdigit() and len(otp) == OTP_DIGITS


def _leg_of_code(session: Session, partner: PartnerProfile, kind: str, otp: str,
                 wanted: tuple[str, ...]) -> tuple[Leg | None, Reply | None]:
    """A ``kind`` code sent without its job by a partner asked "which job?" (more than
    one job could take it): the leg it is the right code of, to confirm, or the answer.

    Every leg has codes of its own (issue_leg_otps), so the right code of exactly one of
    the legs waiting for it (``wanted``) names that job. The right code of more than one
    (a 1 in 10,000 chance) names none: (None, None), and "which job?" stands, costing no
    try. A code of none is a wrong try on each of them, since it was tried against each:
    sent without its job, a code wins no more guesses than with it (a job locked after
    too many, ops alerted, as confirm does). The code of a job done before, sent again,
    is answered as done. The legs are locked (in id order) before their codes are read;
    for a PICK, with the relay legs before them in the same pass (confirm's order: a relay
    PICK may close the leg before it, _handover_proven)."""
    candidates = [c.id for c in active_legs_of(session, partner) if c.status in wanted]
    ids = set(candidates)
    if kind == "pickup" and ids:
        ids.update(session.scalars(_earlier_legs(ids).with_only_columns(Leg.id)))
    locked_legs = {leg_id: _lock_leg(session, leg_id) for leg_id in sorted(ids)}
    waiting = []
    for candidate_id in candidates:
        leg = locked_legs[candidate_id]
        if leg is None or leg.partner_id != partner.id or leg.status not in wanted \
                or _booking_closed(session, leg):
            continue
        if kind == "pickup" and partner.kyc_status in BLOCKED_KYC \
                and not parcel_in_hand(session, leg):
            continue  # blocked: no parcel goes into their hands (confirm)
        if kind == "drop" and _next_leg_untaken(session, leg) is not None:
            continue  # nobody holds its code yet (confirm): tried, it costs no try
        waiting.append(leg)
    from core.services.booking import check_leg_otp

    right = [leg for leg in waiting if check_leg_otp(leg, kind, otp)]
    if len(right) == 1:
        return right[0], None
    if not right and waiting:
        # The right code of a job locked after wrong codes ("which job?" counted it): that
        # job's answer, as with its number; no other job pays a try for it. Only while a
        # wrong code costs a try on a job waiting for one: with none (every job locked),
        # "which job?" whatever the code, never a free test of a locked job's code.
        for leg in active_legs_of(session, partner):
            if leg.status == LegStatus.LOCKED.value and check_leg_otp(leg, kind, otp):
                return None, _r("dispatch.otp_locked", job=job_code(leg),
                                ops_phone=get_settings().ops_phone)
    if right or not waiting:
        return None, None
    done = _done_before(session, partner, kind, otp) or _cancelled_code(
        session, partner, kind, [otp])
    if done is not None:  # a job's done or cancelled: no try counted on the others
        return None, done
    cfg = config()
    actor = _partner_actor(partner)
    locked = []
    for leg in waiting:
        session.add(OtpAttempt(leg_id=leg.id, partner_id=partner.id, kind=kind, ok=False,
                               at=clock.now()))
        leg.otp_failures += 1
        if leg.otp_failures >= cfg.otp_max_failures:
            booking = session.get(Booking, leg.booking_id, with_for_update=True)
            assert booking is not None
            move_leg(session, leg, LegStatus.LOCKED, actor, f"{leg.otp_failures} wrong OTPs")
            alert_ops(session, "dispatch.ops_otp_locked", booking_id=booking.id,
                      dedupe_key=f"leg-{leg.id}-locked-{leg.version}", ref=booking.reference,
                      job=job_code(leg))
            locked.append(job_code(leg))
    if locked:
        return None, _r("dispatch.otp_locked", job=" ".join(locked),
                        ops_phone=get_settings().ops_phone)
    left = min(cfg.otp_max_failures - leg.otp_failures for leg in waiting)
    if len(waiting) == 1:  # the others locked: this one alone took the code
        return None, _r("dispatch.otp_wrong", job=job_code(waiting[0]), left=left)
    return None, _r("dispatch.otp_wrong_jobs", jobs=" ".join(job_code(leg) for leg in waiting),
                    left=left)


# A code this partner already used on a leg (the parcel picked up, or delivered this long
# ago at most), sent again, is answered as done: it is not a wrong code for another job.
DONE_RECENTLY = timedelta(hours=6)


def _done_before(session: Session, partner: PartnerProfile, kind: str, otp: str | None,
                 *, other_than: int | None = None) -> Reply | None:
    """The answer when ``otp`` is the right ``kind`` code of a leg this partner picked up
    or delivered already (a PICK or DROP sent again, say as the answer was slow to come):
    that job is done, and no other job is charged a wrong try. None if it is no such code.
    Only the partner's own legs are tried, and only codes still kept (a leg given back
    keeps none), so a guess wins nothing a wrong try would not."""
    if otp is None or not (otp.isascii() and otp.isdigit() and len(otp) == 4):
        return None
    from core.services.booking import check_leg_otp

    states = [LegStatus.DELIVERED.value]
    if kind == "pickup":
        states.append(LegStatus.PICKED_UP.value)
    legs = session.scalars(select(Leg).where(
        Leg.partner_id == partner.id, Leg.status.in_(states),
        or_(Leg.status != LegStatus.DELIVERED.value,
            Leg.delivered_at >= clock.now() - DONE_RECENTLY))
        .order_by(Leg.id.desc()))
    for leg in legs:
        if leg.id != other_than and check_leg_otp(leg, kind, otp):
            if leg.status == LegStatus.DELIVERED.value:
                return _r("dispatch.already_delivered", job=job_code(leg))
            return _r("dispatch.already_picked", job=job_code(leg))
    return None


# A job this partner held (took, and still names him, or was taken back from him) whose
# booking closed before it was delivered: the customer cancelled it (or it failed).
_HELD_STATES = (rules.OfferStatus.ACCEPTED.value, rules.OfferStatus.CANCELLED.value)
# The cancelled jobs of his a code alone (no job named) is tried against, newest first.
CANCELLED_CODE_LEGS = 5


def _cancelled_of(partner: PartnerProfile) -> Select[Leg]:
    """His legs whose booking closed (dispatch.CLOSED_BOOKING) before they were done: one
    he took (the leg still names him after the cancel) or had taken back from him (his
    accepted offer of it cancelled, _give_back), neither active nor delivered."""
    held = select(DispatchOffer.leg_id).where(DispatchOffer.partner_id == partner.id,
                                              DispatchOffer.status.in_(_HELD_STATES))
    return (select(Leg).join(Booking, Booking.id == Leg.booking_id)
            .where(or_(Leg.partner_id == partner.id, Leg.id.in_(held)),
                   Leg.status.not_in(ACTIVE_LEG_STATES + (LegStatus.DELIVERED.value,)),
                   Booking.status.in_(CLOSED_BOOKING)))


def cancelled_job_named(session: Session, partner: PartnerProfile, numbers: tuple[str, ...],
                        kind: str | None = None) -> Reply | None:
    """The answer to a PICK, DROP or CANCEL that found no job of his to act on when it
    names a job of his the customer cancelled ("PICK 57 4821", "PICK 4821 57", "CANCEL
    57"): that job N is cancelled, do not go (dispatch.job_cancelled, as his yes to its
    offer and the app's pickup say it), not "you have no job N", which reads as a number
    mistyped. ``kind`` (pickup/drop) given and no job named, a code alone that is the
    right code of one of his cancelled jobs names it too; no try is counted either way.
    None when the message names no such job."""
    named = [(len(n) == OTP_DIGITS, i, number) for i, n in enumerate(numbers)
             if (number := _job_number(n)) is not None]
    if named:
        ids = {number for *_, number in named}
        off = set(session.scalars(_cancelled_of(partner).where(Leg.id.in_(ids))
                                  .with_only_columns(Leg.id)))
        for *_, number in sorted(named):  # a job number before a 4-digit code
            if number in off:
                return _r("dispatch.job_cancelled", job=str(number))
    codes = [n for n in numbers if _is_code(n)]
    if kind is None or not codes:
        return None
    return _cancelled_code(session, partner, kind, codes)


def _cancelled_code(session: Session, partner: PartnerProfile, kind: str,
                    codes: list[str]) -> Reply | None:
    """dispatch.job_cancelled when one of ``codes`` is the right ``kind`` code of one of
    his newest cancelled jobs (CANCELLED_CODE_LEGS); None if none is."""
    from core.services.booking import check_leg_otp

    for leg in session.scalars(_cancelled_of(partner)
                               .order_by(Leg.id.desc()).limit(CANCELLED_CODE_LEGS)):
        if any(check_leg_otp(leg, kind, code) for code in codes):
            return _r("dispatch.job_cancelled", job=job_code(leg))
    return None


def _cancelled_beside(session: Session, partner: PartnerProfile, kind: str,
                      numbers: tuple[str, ...], leg: Leg, otp: str | None) -> Reply | None:
    """A PICK/DROP whose code is wrong (or malformed) for his live ``leg`` that is about a
    job of his the customer cancelled: job N is cancelled, and no try is counted against
    the live job. "PICK 57 4821" with job 57 cancelled and job 60 live reads 57 as a code
    typed short for job 60; "PICK 4821" may be job 57's code. When the message names the
    live job itself ("PICK 60 12"), its other number is his code: only a cancelled job's
    right code counts then. None when it is about no cancelled job."""
    if any(_job_number(n) == leg.id for n in numbers):
        return _cancelled_code(session, partner, kind, [otp]) \
            if otp is not None and _is_code(otp) else None
    return cancelled_job_named(session, partner, numbers, kind)


def _booking_closed(session: Session, leg: Leg) -> bool:
    """Whether the leg's booking is closed (cancelled, failed...), read as committed now:
    the caller holds the leg's lock, which a cancel takes before the booking's."""
    return session.scalar(select(Booking.status).where(
        Booking.id == leg.booking_id)) in CLOSED_BOOKING


def confirm(session: Session, partner: PartnerProfile, kind: str,
            numbers: tuple[str, ...], *, retries: bool = False) -> Reply:
    """PICK or DROP with an OTP. Wrong codes count; too many lock the leg and alert ops.
    The code of a job this partner has done already, sent again, is answered as done.

    ``retries``: the caller resends a request whose answer it lost (the app on a weak
    network), so the same wrong code again within WRONG_CODE_REPEAT is that request, not
    another try. Not for SMS: a partner's SMS sent again is one they typed and paid for
    (Twilio's own retries carry the same MessageSid and are answered once already)."""
    wanted = (LegStatus.ASSIGNED.value,) if kind == "pickup" else (LegStatus.PICKED_UP.value,)
    # The app may pass a code as typed, in any script's digits (१२३४); the SMS path has
    # converted them already.
    numbers = tuple(rules.normalize_text(n) for n in numbers)
    blocked = _r("dispatch.duty_blocked", ops_phone=get_settings().ops_phone)
    if kind == "pickup" and partner.kyc_status in BLOCKED_KYC and not any(
            parcel_in_hand(session, leg) for leg in session.scalars(select(Leg).where(
                Leg.partner_id == partner.id, Leg.status == LegStatus.ASSIGNED.value))):
        # Ops blocked them: no parcel goes into their hands (one already there may still
        # be delivered: a relay parcel handed over to them is recorded as picked up).
        return blocked
    leg, otp, problem = _choose_leg(session, partner, numbers, wanted)
    if problem is not None and problem.key == "dispatch.which_job" and _is_code(otp):
        # Each leg has codes of its own: the code alone may name the job ("DROP 4821"
        # with two parcels for one recipient, who gave one code).
        assert otp is not None
        leg, answer = _leg_of_code(session, partner, kind, otp, wanted)
        if answer is not None:
            return answer
        if leg is not None:
            problem = None
    if problem is None and otp is None:
        coded = _code_sent_as_job(session, partner, kind, numbers, leg, wanted)
        if coded is not None:  # "PICK 4821": job 4821's code, or the code 4821 of it
            leg, otp = coded, numbers[0]
    if problem is not None and problem.key == "dispatch.no_such_job":
        # The job named is not one of his now: maybe the customer cancelled it.
        return cancelled_job_named(session, partner, numbers) or problem
    if problem is not None:
        if problem.key == "dispatch.no_job":  # no job to confirm: maybe one just done,
            # or cancelled ("PICK 57 4821" reads 57 as a code typed short: no job named)
            return (cancelled_job_named(session, partner, numbers)
                    or _done_before(session, partner, kind, otp)
                    or cancelled_job_named(session, partner, numbers, kind) or problem)
        if problem.key == "dispatch.which_job":  # "PICK 57 4821", 57 read as a short code
            return cancelled_job_named(session, partner, numbers, kind) or problem
        return problem
    assert leg is not None
    if kind == "pickup" and leg.sequence > 1:
        # A relay PICK may close the leg before it (_handover_proven): that leg's lock
        # first, in the legs' order (lock_legs), then this one's, then the booking's.
        prev = _previous_leg(session, leg)
        if prev is not None:
            _lock_leg(session, prev.id)
    # Changed since read (the customer cancelled meanwhile): StaleDataError, and the
    # turn runs again (inbound.lost_a_race), answered as a PICK after the cancel is.
    leg = _lock_leg(session, leg.id)
    assert leg is not None
    job = job_code(leg)
    cfg = config()
    if leg.partner_id != partner.id:
        return _r("dispatch.no_such_job", job=job)
    if _booking_closed(session, leg):
        return _r("dispatch.job_cancelled", job=job)
    if kind == "pickup":
        # Their KYC as committed now, under the leg's lock: ops commit a suspension before
        # block_partner takes their jobs back (and waits for this lock), so one read
        # before it (this turn's partner row) would give the parcel to a suspended rider.
        session.refresh(partner, ["kyc_status"])
    if kind == "pickup" and partner.kyc_status in BLOCKED_KYC and not parcel_in_hand(
            session, leg):
        return blocked
    if leg.status == LegStatus.LOCKED.value:
        return _done_before(session, partner, kind, otp, other_than=leg.id) or _r(
            "dispatch.otp_locked", job=job, ops_phone=get_settings().ops_phone)
    if leg.status not in wanted:
        key = "dispatch.pick_first" if kind == "drop" else "dispatch.already_picked"
        if kind == "drop" and handed_over_to(session, leg):
            key = "dispatch.pick_first_handed"  # the parcel is theirs; PICK is not sent
        return _done_before(session, partner, kind, otp, other_than=leg.id) or _r(key, job=job)
    waiting_for = _next_leg_untaken(session, leg) if kind == "drop" else None
    if waiting_for is not None:
        # A relay carrier at the Point before anyone took the next leg: its rider gets the
        # handover code as he takes it (send_leg_codes), so nobody can have given one. No
        # try counts; he keeps the parcel, as the search's own SMS tells him.
        booking = session.get(Booking, leg.booking_id)
        assert booking is not None
        return _r("dispatch.carrier_wait", job=job,
                  point=place(session, booking, waiting_for, "from"),
                  ops_phone=get_settings().ops_phone)
    if otp is None or not (otp.isascii() and otp.isdigit() and len(otp) == 4):
        return _cancelled_beside(session, partner, kind, numbers, leg, otp) or _r(
            "dispatch.otp_format_pick" if kind == "pickup" else "dispatch.otp_format_drop")
    from core.services.booking import check_leg_otp

    ok = check_leg_otp(leg, kind, otp)
    if not ok:
        done = _done_before(session, partner, kind, otp, other_than=leg.id) \
            or _cancelled_beside(session, partner, kind, numbers, leg, otp)
        if done is not None:
            return done  # a job done before or cancelled, named or its code: no try counted
        if retries:
            wrong = _wrong_code_mark(leg, partner, kind, otp)
            if _same_wrong_code(leg, partner, wrong):
                # The same wrong code again within a minute or two: the app's retry
                # after a lost answer. Answered as before; one typo costs one try.
                return _r("dispatch.otp_wrong", job=job,
                          left=max(cfg.otp_max_failures - leg.otp_failures, 0))
            _remember_wrong_code(session, leg, partner, wrong)
    session.add(OtpAttempt(leg_id=leg.id, partner_id=partner.id, kind=kind, ok=ok,
                           at=clock.now()))
    booking = session.get(Booking, leg.booking_id, with_for_update=True)
    assert booking is not None
    actor = _partner_actor(partner)
    if not ok:
        leg.otp_failures += 1
        if leg.otp_failures >= cfg.otp_max_failures:
            move_leg(session, leg, LegStatus.LOCKED, actor, f"{leg.otp_failures} wrong OTPs")
            alert_ops(session, "dispatch.ops_otp_locked", booking_id=booking.id,
                      dedupe_key=f"leg-{leg.id}-locked-{leg.version}", ref=booking.reference,
                      job=job)
            return _r("dispatch.otp_locked", job=job, ops_phone=get_settings().ops_phone)
        return _r("dispatch.otp_wrong", job=job, left=cfg.otp_max_failures - leg.otp_failures)
    leg.otp_failures = 0
    if kind == "pickup":
        _handover_proven(session, booking, leg, actor)
        return _picked_up(session, booking, leg, actor)
    return _delivered(session, booking, leg, actor)


def _handover_proven(session: Session, booking: Booking, leg: Leg, actor: Actor) -> None:
    """The mirror of ``handed_over_to``: a relay leg picked up with its code while the leg
    before, another rider's, is still "picked up" (he has not sent DROP). That code went
    to him alone (handover_give) and this rider typed it at the Point, face to face: the
    parcel changed hands as surely as his DROP would have said. His leg is delivered and
    released as his DROP would do (_delivered: the same release job, once), and he hears
    what his DROP would have been answered; otherwise it stays "picked up" for good:
    never paid, a job in his hands, the delivered parcel reported late. A DROP he sends
    later is answered as done. The caller holds both legs' locks (the one before first),
    then the booking's.

    So is his leg when it locked at the Point (wrong DROP codes, the parcel in his hands):
    the PICK proves the handover his DROP could not; it is recorded picked up again, then
    delivered, and ops find nothing left to unlock."""
    prev = _previous_leg(session, leg)
    if (prev is None or prev.partner_id is None or prev.partner_id == leg.partner_id
            or not _carrying(session, prev)):
        return
    _close_handed_on(session, booking, prev, actor,
                     "handed over: the next rider's PICK took the code he gave")


def _carrying(session: Session, leg: Leg) -> bool:
    """Whether the leg's rider holds its parcel and has not delivered it: picked up, or
    locked (wrong codes) with the parcel in hand (picked up before, or handed over)."""
    if leg.status == LegStatus.PICKED_UP.value:
        return True
    return leg.status == LegStatus.LOCKED.value and (
        _picked_before(session, leg) or _handed_over(session, leg))


def _close_handed_on(session: Session, booking: Booking, leg: Leg, actor: Actor,
                     reason: str) -> None:
    """A carrier's leg (picked up, or locked with the parcel in hand: _carrying) whose
    parcel the next rider picked up with the code only he held: delivered and released as
    his DROP would do, and he hears what his DROP would have been answered."""
    if leg.status == LegStatus.LOCKED.value:
        move_leg(session, leg, LegStatus.PICKED_UP, actor, reason)
    carrier = session.get(PartnerProfile, leg.partner_id) if leg.partner_id else None
    done = _delivered(session, booking, leg, actor, reason)
    if carrier is not None:
        _sms_partner(session, carrier, done.key, booking_id=booking.id,
                     dedupe_key=f"leg-{leg.id}-done-by-next-pick", **done.params)
    log.info("relay leg closed by the next rider's PICK",
             extra={"booking_id": booking.id, "leg_id": leg.id})


# A wrong code the app sends again this soon (its retry after a lost answer) is the same
# typo, not another try (confirm's ``retries``).
WRONG_CODE_REPEAT = timedelta(minutes=2)
WRONG_CODE_KEY = "dispatch:otp_wrong:{leg}:{partner}"


def _wrong_code_mark(leg: Leg, partner: PartnerProfile, kind: str, otp: str) -> str:
    """A keyed hash of a wrong code (never the code), bound to the leg, its current code
    (new codes after an unlock start afresh), the partner and the end."""
    from core.domain.otp import hash_otp

    current = (leg.pickup_otp_hash if kind == "pickup" else leg.drop_otp_hash) or ""
    return hash_otp(otp, key=get_settings().otp_key,
                    context=f"wrong:leg:{leg.id}:{kind}:{partner.id}:{current[:16]}")


def _same_wrong_code(leg: Leg, partner: PartnerProfile, mark: str) -> bool:
    try:
        raw = redis_client().get(WRONG_CODE_KEY.format(leg=leg.id, partner=partner.id))
    except RedisError:  # no memory of it: the try counts, as it did before
        return False
    if not raw:
        return False
    value = raw.decode() if isinstance(raw, bytes) else str(raw)
    seen_mark, _, at = value.partition("|")
    try:
        seen_at = float(at)
    except ValueError:
        return False
    return seen_mark == mark and clock.now().timestamp() - seen_at <= \
        WRONG_CODE_REPEAT.total_seconds()


def _remember_wrong_code(session: Session, leg: Leg, partner: PartnerProfile,
                         mark: str) -> None:
    """Once the counted try is committed, remember its code's mark for WRONG_CODE_REPEAT
    (by the project clock; Redis's expiry only clears it away)."""
    leg_id = leg.id
    key = WRONG_CODE_KEY.format(leg=leg_id, partner=partner.id)
    value = f"{mark}|{clock.now().timestamp()}"
    ttl = int(WRONG_CODE_REPEAT.total_seconds()) + 60

    def store() -> None:
        try:
            redis_client().set(key, value, ex=ttl)
        except RedisError:
            log.warning("could not remember a wrong code", extra={"leg_id": leg_id})

    after_commit(session, store)


def _picked_up(session: Session, booking: Booking, leg: Leg, actor: Actor,
               reason: str = "pickup OTP confirmed") -> Reply:
    move_leg(session, leg, LegStatus.PICKED_UP, actor, reason)
    # A drop code kept from the night goes now: the rider is on his way to her.
    send_held_drop_code(session, booking, leg, tag=f"pick{leg.version}")
    if booking.status == BookingStatus.ASSIGNED.value:
        move_booking(session, booking, BookingStatus.PICKED_UP, actor, reason)
        _status_to_customer(session, booking, f"leg{leg.id}")
    legs = _legs(session, booking)
    if leg.sequence < len(legs):
        nxt = legs[leg.sequence]
        if nxt.status == LegStatus.PENDING.value:
            start_search(session, booking, nxt)  # the next rider waits at the Point
    return _r("dispatch.picked", job=job_code(leg), drop=place(session, booking, leg, "to"))


def _delivered(session: Session, booking: Booking, leg: Leg, actor: Actor,
               reason: str = "drop OTP confirmed") -> Reply:
    move_leg(session, leg, LegStatus.DELIVERED, actor, reason)
    # Retried like every gateway job: a lost release would leave the rider unpaid for good.
    _enqueue_after_commit(session, "workers.payments.release_leg", leg.id,
                          job_id=f"release-{leg.id}", retry=GATEWAY_RETRY)
    legs = _legs(session, booking)
    if leg.sequence == len(legs):
        move_booking(session, booking, BookingStatus.DELIVERED, actor, reason)
        _status_to_customer(session, booking, f"leg{leg.id}")
        rating.ask_after_delivery(session, booking)  # "how was it? 1 to 5" on WhatsApp
    elif booking.status == BookingStatus.PICKED_UP.value:
        move_booking(session, booking, BookingStatus.IN_TRANSIT, actor,
                     "handed over at a Point")
        _status_to_customer(session, booking, f"leg{leg.id}")
    elif booking.status == BookingStatus.IN_TRANSIT.value:
        # A later handover: the status does not change, but the customer hears where the
        # parcel got to, as they did of the first.
        notify.notify_customer(session, booking, "dispatch.customer_handed_on",
                               point=place(session, booking, leg, "to"),
                               dedupe_key=f"leg-{leg.id}-handedon")
    return _r("dispatch.delivered", job=job_code(leg), payout_paise=leg.payout_paise)


def cancel_by_partner(session: Session, partner: PartnerProfile,
                      numbers: tuple[str, ...]) -> Reply:
    """The partner gives an accepted job back (before pickup): the leg goes back into
    dispatch and it counts against their acceptance record. CANCEL naming a job only
    offered to them says no to the offer, and so does a bare CANCEL ("chhod do") while an
    offer is open, as a bare no does, with a job in hand too: it most likely refuses the
    job just offered, and a job is never given back on a guess (the answer names the job
    skipped; CANCEL and its number gives one back). Nor is it just after such an offer
    closed (_late_no): the same "chhod do" sent again, or come after the offer's time, is
    still a no to it."""
    if not numbers and open_offers_of(session, partner):
        return decline(session, partner, None)
    if not numbers:
        late = _late_no(session, partner)
        if late is not None:
            return late
    number = _job_number(numbers[0]) if numbers else None
    if number is not None and not any(
            leg.id == number for leg in active_legs_of(session, partner)) and any(
            offer.leg_id == number for offer in open_offers_of(session, partner)):
        return decline(session, partner, numbers[0])
    leg, _, problem = _choose_leg(session, partner, numbers, (LegStatus.ASSIGNED.value,),
                                  job_only=True)
    if problem is not None and problem.key == "dispatch.no_such_job":
        # "CANCEL 57" of a job the customer cancelled: said so, not "no job 57".
        return cancelled_job_named(session, partner, numbers[:1]) or problem
    if problem is not None:
        return problem
    assert leg is not None
    _lock_legs_before(session, leg.id)  # a relay leg's give-back writes the one before
    # As in confirm: a leg changed since read raises StaleDataError, and the turn runs
    # again.
    leg = _lock_leg(session, leg.id)
    assert leg is not None
    job = job_code(leg)
    if leg.partner_id != partner.id:
        return _r("dispatch.no_such_job", job=job)
    if _booking_closed(session, leg):
        return _r("dispatch.job_cancelled", job=job)
    if (leg.status == LegStatus.LOCKED.value and not _picked_before(session, leg)
            and not _handed_over(session, leg)):
        # Locked by wrong pickup codes, the parcel still with the sender: ops decide.
        return _r("dispatch.otp_locked", job=job, ops_phone=get_settings().ops_phone)
    if leg.status != LegStatus.ASSIGNED.value:
        return _r("dispatch.cancel_too_late", job=job, ops_phone=get_settings().ops_phone)
    booking = session.get(Booking, leg.booking_id, with_for_update=True)
    assert booking is not None
    if parcel_in_hand(session, leg):
        # A relay leg: the previous rider handed the parcel over to them already.
        return _r("dispatch.cancel_too_late", job=job, ops_phone=get_settings().ops_phone)
    actor = _partner_actor(partner)
    event, reopened = _give_back(session, booking, leg, partner, actor,
                                 "partner gave the job back")
    if reopened:
        _status_to_customer(session, booking, f"cancel{event.id}")
    # A relay carrier on his way to the Point (or waiting there) holds a handover code
    # _give_back just made void: he hears to keep the parcel, as after a no-show.
    _tell_carrier_to_wait(session, booking, leg, start_search(session, booking, leg,
                                                              actor=actor))
    return _r("dispatch.cancelled", job=job)


def _late_no(session: Session, partner: PartnerProfile) -> Reply | None:
    """A bare CANCEL with no offer open, within ANSWERED_JUST_AFTER of the partner's newest
    offer closing unaccepted (said no to, left to expire, withdrawn): a no to that offer,
    come again or too late (the same "chhod do" sent twice, or typed as the offer's time
    ran out), never a give-back of the job he holds, which he did not name. An offer
    expired unanswered is answered late (not missed, as _late_to_newest). He hears the
    offer's job is not his and, holding one job he may give back, how to give it back
    (CANCEL and its number). None when no offer of his closed that recently: a bare
    CANCEL then gives back his one job, as ever."""
    newest = session.scalar(select(DispatchOffer).where(
        DispatchOffer.partner_id == partner.id).order_by(DispatchOffer.id.desc()).limit(1))
    if newest is None or newest.status not in (rules.OfferStatus.DECLINED.value,
                                               rules.OfferStatus.EXPIRED.value,
                                               rules.OfferStatus.WITHDRAWN.value):
        return None
    closed_at = newest.responded_at or newest.expires_at
    if closed_at < clock.now() - ANSWERED_JUST_AFTER:
        return None
    if _missed(newest.status, newest.responded_at, newest.expires_at):
        _answer_to_expired(session, newest)
    offered = str(newest.leg_id)
    leg, _, problem = _choose_leg(session, partner, (), (LegStatus.ASSIGNED.value,),
                                  job_only=True)
    if problem is not None and problem.key != "dispatch.no_job":
        return problem  # several jobs: he is asked which, as ever
    if leg is not None and leg.status == LegStatus.ASSIGNED.value \
            and not parcel_in_hand(session, leg):
        return _r("dispatch.kept_after_no", offered=offered, job=job_code(leg))
    if newest.status == rules.OfferStatus.DECLINED.value:
        return _r("dispatch.declined", job=offered)
    if newest.status == rules.OfferStatus.WITHDRAWN.value:
        offered_leg = session.get(Leg, newest.leg_id)
        assert offered_leg is not None
        return _gone(offered_leg, offered)
    return _r("dispatch.offer_expired", job=offered)


def _previous_leg(session: Session, leg: Leg) -> Leg | None:
    """The relay leg before ``leg`` (None for a first leg)."""
    if leg.sequence <= 1:
        return None
    return session.scalar(select(Leg).where(Leg.booking_id == leg.booking_id,
                                            Leg.sequence == leg.sequence - 1))


def parcel_in_hand(session: Session, leg: Leg) -> bool:
    """Whether the leg's partner holds its parcel: picked up, or handed over to them
    (``handed_over_to``)."""
    return leg.status == LegStatus.PICKED_UP.value or handed_over_to(session, leg)


def handed_over_to(session: Session, leg: Leg) -> bool:
    """Whether the leg is a relay leg still "assigned" whose previous rider handed the
    parcel over already (their DROP took the code this rider read out at the Point, face
    to face), this rider's PICK not sent. A handover is confirmed from both sides: the
    rider holding the parcel still sends PICK with the code the other rider gave them
    (handover_give), which records the leg as picked up and starts the search for the
    next leg; until then DROP is refused, so what they are told names PICK first. The
    other way round (the next rider's PICK first, the carrier's DROP never sent), that
    PICK closes the carrier's leg (_handover_proven)."""
    if leg.status != LegStatus.ASSIGNED.value:
        return False
    prev = _previous_leg(session, leg)
    return prev is not None and prev.status == LegStatus.DELIVERED.value


def _give_back(session: Session, booking: Booking, leg: Leg, partner: PartnerProfile,
               actor: Actor, reason: str, *, by_ops: bool = False) -> tuple[PartnerEvent, bool]:
    """An assigned leg leaves its partner before pickup and goes back to offering; it counts
    against them, unless ops took it (``by_ops``: a suspension, papers to check again),
    which was no choice of theirs, as an open offer ops withdraw is not (_withdraw). The
    caller holds the leg's and the booking's locks, tells the customer, and starts the
    search. Returns the event and whether the booking went back to dispatching.

    On a relay leg whose previous rider still carries the parcel, that rider's handover
    code (the one this partner would read out at the Point) is replaced: it must not work
    for them any more. The next partner to take the leg gets the new one. On the last leg
    the recipient's drop code goes void too: if she holds it, she is told so at once
    (_drop_code_void_to_recipient), or she would give the next rider a code that fails;
    the next rider's accept sends her the new one (dispatch.drop_otp_new)."""
    prev = _previous_leg(session, leg)
    if prev is not None and prev.status == LegStatus.PICKED_UP.value:
        outbox.withdraw_leg_codes(session, prev.id, kinds=("drop",))
        _new_handover_code(prev)
    outbox.withdraw_leg_codes(session, leg.id)  # its codes go void below
    held = _recipient_code_message(session, booking, leg)  # one withdrawn reached nobody
    session.execute(update(DispatchOffer).where(
        DispatchOffer.leg_id == leg.id, DispatchOffer.partner_id == partner.id,
        DispatchOffer.status == rules.OfferStatus.ACCEPTED.value)
        .values(status=rules.OfferStatus.CANCELLED.value, responded_at=clock.now()))
    if not by_ops:
        # Counts against the record: the acceptance is taken back, as if they had said no.
        partner.offers_accepted = func.greatest(PartnerProfile.offers_accepted - 1, 0)
    event = PartnerEvent(partner_id=partner.id, leg_id=leg.id,
                         kind="taken_back_by_ops" if by_ops else "cancelled_after_accept",
                         at=clock.now())
    session.add(event)
    session.flush()
    leg.partner_id = None
    leg.pickup_otp_hash = leg.drop_otp_hash = None
    if held is not None:
        _drop_code_void_to_recipient(session, booking, leg, held, event)
    move_leg(session, leg, LegStatus.OFFERING, actor, reason)
    if booking.status != BookingStatus.ASSIGNED.value:
        return event, False
    move_booking(session, booking, BookingStatus.DISPATCHING, actor, reason)
    return event, True


def _recipient_code_message(session: Session, booking: Booking,
                            leg: Leg) -> OutboxMessage | None:
    """The message that gave the recipient the leg's working drop code, if she holds one:
    the last leg has a drop code (none while one is kept from the night), and the message
    of the leg's current code (the latest drop-code message: a code sent is written after
    the one it voids), or a copy of it sent another way
    (an SMS she stopped, its copy on her WhatsApp: outbox._COPY_PREFIXES), went to her
    number (by SMS, or WhatsApp) and was not withdrawn or reported failed; the latest of
    those, whose channel the notice takes. None otherwise: the code went to the sender
    (no number, or hers said "wrong number"), or never reached her (an older code she
    holds was void already when the current one was made)."""
    phone = _code_phone(session, booking)
    if (phone is None or leg.drop_otp_hash is None
            or leg.sequence != len(_legs(session, booking))):
        return None
    latest = session.scalar(select(OutboxMessage).where(
        OutboxMessage.booking_id == booking.id,
        OutboxMessage.dedupe_key.like(f"leg-{leg.id}-dropotp-%"))
        .order_by(OutboxMessage.id.desc()).limit(1))
    return None if latest is None else _reached_her(session, phone, [latest])


def _reached_her(session: Session, phone: str,
                 messages: list[OutboxMessage]) -> OutboxMessage | None:
    """The latest of ``messages``, or of their copies sent another way (an SMS she
    stopped, its copy on her WhatsApp: outbox._COPY_PREFIXES, and theirs: a template's
    SMS, as withdraw_leg_codes finds them), that went to ``phone`` (by SMS, or WhatsApp)
    and was not withdrawn or reported failed; None if none did."""
    carriers, found = list(messages), [row.id for row in messages]
    while found:
        copies = list(session.scalars(select(OutboxMessage).where(
            OutboxMessage.dedupe_key.in_([prefix + str(row_id) for row_id in found
                                          for prefix in outbox._COPY_PREFIXES]))))
        carriers += copies
        found = [row.id for row in copies]
    hers = (outbox.address("sms", phone), outbox.address("whatsapp", phone))
    return max((row for row in carriers
                if row.to_addr in hers and row.status not in ("failed", "undelivered")),
               key=lambda row: row.id, default=None)


def recipient_holds_code(session: Session, booking: Booking) -> bool:
    """Whether the booking's recipient holds its last leg's working drop code: the
    message of that code, or a copy of it, reached her number (_recipient_code_message:
    an SMS refused for her STOP whose WhatsApp copy reached her counts)."""
    legs = _legs(session, booking)
    return bool(legs) and _recipient_code_message(session, booking, legs[-1]) is not None


def _drop_code_void_to_recipient(session: Session, booking: Booking, leg: Leg,
                                 held: OutboxMessage, event: PartnerEvent) -> None:
    """The last leg went back to offering (_give_back) and the drop code the recipient
    holds (``held``) is void: she hears it, in her language, the way that code reached
    her (WhatsApp if it came there, else as her drop code goes: notify_phone), and that a
    new one comes when a rider takes the parcel (send_leg_codes: drop_otp_new). Once for
    each give-back (``event``). Its key is no drop code's (``dropvoid``)."""
    phone = booking.recipient_phone
    assert phone is not None
    lang = recipient_language(session, booking)
    dedupe_key = f"leg-{leg.id}-dropvoid-{event.id}"
    log.info("the recipient's drop code is void: she is told",
             extra={"booking_id": booking.id, "leg_id": leg.id})
    if held.channel == "whatsapp":
        person = session.scalar(select(Person).where(Person.phone == phone))
        if person is not None and notify.send_to_person(
                session, person, i18n.t("dispatch.drop_otp_void", lang, ref=booking.reference),
                booking_id=booking.id, dedupe_key=dedupe_key, whatsapp_only=True,
                lang=lang) is not None:
            return
    notify.notify_phone(session, phone, "dispatch.drop_otp_void", lang=lang,
                        booking_id=booking.id, dedupe_key=dedupe_key, ref=booking.reference)


# KYC states in which a partner takes no jobs (ops set them; the ops endpoint also takes
# the partner off duty).
BLOCKED_KYC = frozenset({"rejected", "suspended"})
# The one KYC state in which a partner works: Razorpay pays a linked account only once its
# owner's documents are checked. A partner still pending cannot go on duty.
VERIFIED_KYC = "verified"


def payable(partner: PartnerProfile) -> bool:
    """Whether a leg's payout can reach the partner: KYC verified and a linked account.
    Nobody else goes on duty or is offered a job (the same test is _CANDIDATE_FACTS's and
    offer_next_batch's, in SQL)."""
    return partner.kyc_status == VERIFIED_KYC and bool(partner.payout_account_id)


def _unpayable(partner: PartnerProfile) -> Reply:
    """Why a partner who cannot be paid may not work: their papers are still being checked
    (``duty_pending_kyc``), or, checked, ops have no payout account of theirs yet
    (``duty_no_payout_account``): each points the partner, and ops, the right way."""
    if partner.kyc_status == VERIFIED_KYC and not partner.payout_account_id:
        return _r("dispatch.duty_no_payout_account", ops_phone=get_settings().ops_phone)
    return _r("dispatch.duty_pending_kyc", ops_phone=get_settings().ops_phone)


def block_partner(session: Session, partner_id: int, actor: Actor) -> list[int]:
    """Ops suspended or rejected a partner, or put their KYC back to pending (they cannot
    be paid until it is checked again): they go off duty, their open offers are
    withdrawn, and the jobs they took but have not picked up go back to offering (the
    customer hears we look again; the partner that the job is cancelled for them). A
    parcel already in their hands (picked up, or handed over to them on a relay) stays
    with them, so it can still be delivered (DROP is still allowed, PICK is not): the ids
    of those legs are returned for ops.

    Locks legs, then bookings, then offers, then the partner's row, as elsewhere."""
    offered = set(session.scalars(select(DispatchOffer.leg_id).where(
        DispatchOffer.partner_id == partner_id,
        DispatchOffer.status == rules.OfferStatus.OPEN.value)))
    taken = set(session.scalars(select(Leg.id).where(
        Leg.partner_id == partner_id,
        Leg.status.in_((LegStatus.ASSIGNED.value, LegStatus.LOCKED.value)))))
    # Taking a relay leg back writes the leg before it too (_give_back): those are locked
    # with the rest, in id order (a relay's legs are made in sequence order: lock_legs').
    earlier = set(session.scalars(_earlier_legs(taken).with_only_columns(Leg.id))) \
        if taken else set()
    held = [(leg_id, _lock_leg(session, leg_id)) for leg_id in sorted(offered | taken | earlier)]
    legs = [leg for leg_id, leg in held if leg is not None and leg_id in offered | taken]
    bookings = {leg.booking_id: session.get(Booking, leg.booking_id, with_for_update=True)
                for leg in sorted(legs, key=lambda leg: leg.booking_id)}
    offers = [offer for leg in legs for offer in session.scalars(
        select(DispatchOffer).where(DispatchOffer.leg_id == leg.id,
                                    DispatchOffer.partner_id == partner_id,
                                    DispatchOffer.status == rules.OfferStatus.OPEN.value)
        .with_for_update())]
    partner = session.get(PartnerProfile, partner_id, with_for_update=True,
                          populate_existing=True)
    if partner is None:
        return []
    if partner.on_duty or offers:
        # Waiting for offers that cannot come any more: they hear it once, why, and whom
        # to call (the jobs taken back are told one by one below).
        why = (_r("dispatch.duty_blocked", ops_phone=get_settings().ops_phone)
               if partner.kyc_status in BLOCKED_KYC else _unpayable(partner))
        _sms_partner(session, partner, why.key,
                     dedupe_key=f"partner-{partner.id}-blocked-{clock.now().timestamp():.0f}",
                     ops_phone=get_settings().ops_phone)  # the one parameter of either
    if partner.on_duty:
        # In their duty history as every other OFF (set_duty, payout_account_gone): a
        # suspended rider is not shown working on. Run again, it writes nothing twice.
        partner.on_duty = False
        session.add(PartnerEvent(partner_id=partner.id, kind="duty_off", at=clock.now()))
    _home_follows_duty(session, partner)
    for offer in offers:
        _withdraw(offer, partner)
    for leg in legs:
        booking = bookings[leg.booking_id]
        assert booking is not None
        if (leg.status == LegStatus.LOCKED.value and leg.partner_id == partner.id
                and not _picked_before(session, leg) and not _handed_over(session, leg)):
            # Locked by wrong pickup codes, parcel not collected: back to them first, so
            # it is taken back below like any job they took and did not pick up.
            move_leg(session, leg, LegStatus.ASSIGNED, actor, "partner blocked by ops")
        if (leg.status == LegStatus.ASSIGNED.value and leg.partner_id == partner.id
                and not parcel_in_hand(session, leg)):
            event, reopened = _give_back(session, booking, leg, partner, actor,
                                         "partner blocked by ops", by_ops=True)
            _sms_partner(session, partner, "dispatch.job_cancelled", booking_id=booking.id,
                         dedupe_key=f"leg-{leg.id}-blocked-{leg.version}", job=job_code(leg))
            if reopened:
                # Each take-back is told (one leg may be taken back from rider after
                # rider), once: keyed by its event, as a rider's give-back is.
                _status_to_customer(session, booking, f"blocked{event.id}")
            # The relay carrier's handover code is void now (_give_back): he hears it.
            _tell_carrier_to_wait(session, booking, leg, start_search(session, booking, leg,
                                                                      actor=actor))
        else:
            _maybe_continue(session, leg)
    # The parcels they still hold: picked up or handed over to them, also on a leg
    # locked since by wrong codes (at the drop, or a handed-over relay parcel's PICK).
    return [leg.id for leg in session.scalars(select(Leg).where(
        Leg.partner_id == partner.id,
        Leg.status.in_((LegStatus.PICKED_UP.value, LegStatus.ASSIGNED.value,
                        LegStatus.LOCKED.value)))
        .order_by(Leg.id)) if parcel_in_hand(session, leg) or (
            leg.status == LegStatus.LOCKED.value
            and (_picked_before(session, leg) or _handed_over(session, leg)))]


def lock_open_offers(session: Session, partner_id: int) -> list[tuple[Leg, DispatchOffer]]:
    """The partner's open offers, each with its leg, locked: the legs in id order, each
    before its offer, and all before the caller locks or writes the partner's row (ops
    taking their payout account away; their OFF: set_duty). A rival's acceptance holds
    such a leg and then withdraws this partner's offer, writing their row: holding the
    row first deadlocked with it. An offer closed meanwhile is left out."""
    offered = sorted(session.execute(select(DispatchOffer.leg_id, DispatchOffer.id).where(
        DispatchOffer.partner_id == partner_id,
        DispatchOffer.status == rules.OfferStatus.OPEN.value)).tuples())
    held = []
    for leg_id, offer_id in offered:
        leg = _lock_leg(session, leg_id)
        offer = session.get(DispatchOffer, offer_id, with_for_update=True,
                            populate_existing=True)
        if leg is not None and offer is not None \
                and offer.status == rules.OfferStatus.OPEN.value:
            held.append((leg, offer))
    return held


# What a partner hears when ops take their payout account away (payout_account_gone).
PAYOUT_ACCOUNT_CLEARED = "dispatch.payout_account_cleared"


def payout_account_gone(session: Session, partner: PartnerProfile,
                        offers: list[tuple[Leg, DispatchOffer]]) -> bool:
    """Ops took the partner's payout account away (admin.clear_payout_account: their row
    locked, the account cleared): their payouts can reach no one (payable), so, as when
    their KYC is suspended (block_partner), on duty they go OFF, their open offers
    (``offers``, locked before their row: lock_open_offers) are withdrawn and those jobs
    go on to the next partners, and they hear why by SMS in their language, once
    (PAYOUT_ACCOUNT_CLEARED). Their ON is refused until ops give them a new account
    (duty_no_payout_account). True if they were on duty or held offers."""
    if not partner.on_duty and not offers:
        return False
    _sms_partner(session, partner, PAYOUT_ACCOUNT_CLEARED,
                 dedupe_key=f"partner-{partner.id}-account-cleared-"
                            f"{clock.now().timestamp():.0f}",
                 ops_phone=get_settings().ops_phone)
    if partner.on_duty:
        partner.on_duty = False
        session.add(PartnerEvent(partner_id=partner.id, kind="duty_off", at=clock.now()))
    for leg, offer in offers:
        _withdraw(offer, partner)  # the platform's doing: not held against them
        _maybe_continue(session, leg)
    _home_follows_duty(session, partner)
    return True


def _home_follows_duty(session: Session, partner: PartnerProfile) -> None:
    """Once committed, the partner is in the home set at their home Point (or where
    they are placed while it is closed) while on duty, and out of it while off or with no
    active Point to be placed at (see _home_positions)."""
    pid, app = partner.id, partner.has_app
    session.flush()  # the duty and home just set, read back below
    at = session.execute(_HOME_POSITIONS, {"partner_id": pid}).first()
    if at is None:  # off duty, or no active Point to be placed at (theirs was closed)
        after_commit(session, lambda: geo_index.remove_home(pid))
        return
    lat, lng = at.lat, at.lng
    after_commit(session, lambda: geo_index.place_at_home(pid, lat, lng, has_app=app))


# set_duty's answer to ON from a partner without the app whose number stopped our SMS
# (accept's too, to a yes from them).
DUTY_SMS_STOPPED = "dispatch.duty_sms_stopped"
# set_duty's answer to an ON that put the partner on duty: without the app, offers come
# by SMS; with it, they appear in the app (his ON sent by SMS or from the app alike).
DUTY_ON = "dispatch.duty_on"
DUTY_ON_APP = "dispatch.app.duty_on"
DUTY_ON_KEYS = frozenset({DUTY_ON, DUTY_ON_APP})
# set_duty's answer to ON from a partner without the app who can be placed at no active
# Point (their home closed, none other they serve open): no search could find them.
DUTY_NO_POINT = "dispatch.duty_no_point"

# Whether the partner has an active Point to be placed at: their home, or another they
# serve (as _HOME_POSITIONS places them, on duty or not).
_HAS_OPEN_POINT = text("""
SELECT EXISTS (
    SELECT FROM points x WHERE x.active AND (x.id = p.home_point_id OR x.id IN (
        SELECT pp.point_id FROM partner_points pp WHERE pp.partner_id = p.id)))
FROM partner_profiles p WHERE p.id = :partner_id
""")


def sms_stopped(session: Session, partner: PartnerProfile) -> bool:
    """Whether the partner works by SMS alone (no app on their profile) and their number
    stopped our SMS: no offer, code or reminder can reach them until they send START."""
    return not partner.has_app and bool(_person(session, partner).sms_opted_out)


def placed_nowhere(session: Session, partner: PartnerProfile) -> bool:
    """Whether no search can find the partner: without the app (a fresh app position
    finds one who has it) and with no active Point to be placed at (their home closed by
    ops, no other Point they serve open) until ops give them a new home."""
    if partner.has_app:
        return False
    session.flush()  # a home just set, read back below
    return not session.scalar(_HAS_OPEN_POINT, {"partner_id": partner.id})


def _no_point() -> Reply:
    return _r(DUTY_NO_POINT, ops_phone=get_settings().ops_phone)


# What a rider on duty hears by SMS when a change leaves him placed at no Point
# (admin.close_point: his Point closed; partner_profile.set_has_app: made SMS-only while
# his home Point is closed): no offer can reach him until ops give him a new Point.
POINT_CLOSED = "dispatch.point_closed"


def tell_placed_nowhere(session: Session, partner: PartnerProfile, *,
                        dedupe_key: str) -> int | None:
    """Tell the partner by SMS, in his language, that no offer can reach him now (his
    Point closed) and whom to call for a new one: he stays on duty, and is placed at the
    new Point at once (set_home_point), offers coming again."""
    return _sms_partner(session, partner, POINT_CLOSED, dedupe_key=dedupe_key,
                        ops_phone=get_settings().ops_phone)


def lock_points_of(session: Session, partner: PartnerProfile) -> None:
    """_lock_points_of, for a change elsewhere that makes a partner SMS-only on duty
    (partner_profile.set_has_app): a Point closing meanwhile, one after the other."""
    _lock_points_of(session, partner)


def _lock_points_of(session: Session, partner: PartnerProfile) -> None:
    """Lock (shared, by id) the Points an SMS-only partner may be placed at: their home
    and those they serve. Closing one (admin.close_point) holds it for update from before
    it lists the riders on duty there to tell (point_closed) until it commits; an ON
    holding these waits for such a close and then sees the Point closed (duty_no_point),
    or is waited for by it and then is on duty in its list. Without them an ON that read
    the Point open could commit after the close's list was taken: on duty, placed
    nowhere, and told neither. The same for a yes from one off duty (accept), which puts
    them on duty."""
    served = select(PartnerPoint.point_id).where(PartnerPoint.partner_id == partner.id)
    session.execute(select(Point.id).where(
        or_(Point.id == partner.home_point_id, Point.id.in_(served)))
        .order_by(Point.id).with_for_update(read=True))


def _on_refused(session: Session, partner: PartnerProfile) -> bool:
    """Whether set_duty would refuse the partner's ON now (its checks, no lock taken)."""
    return (partner.kyc_status in BLOCKED_KYC or not payable(partner)
            or sms_stopped(session, partner)
            or (not partner.has_app and placed_nowhere(session, partner)))


def set_duty(session: Session, partner: PartnerProfile, on: bool) -> Reply:
    """ON/OFF duty; an SMS-only partner is (re)placed at their home Point. A suspended or
    rejected partner cannot go on duty, nor one who cannot be paid yet (KYC pending, or no
    linked account), nor one without the app whose number stopped our SMS (ON is no
    opt-in: only START lifts Twilio's block, and no offer could reach them), nor one
    without the app who has no active Point to be placed at (placed_nowhere).

    ON locks the partner's row and reads it again first: ops suspending them at that
    moment (block_partner, after the KYC change committed) either see them on duty and
    take them off, or are seen here."""
    if on:
        session.get(PartnerProfile, partner.id, with_for_update=True, populate_existing=True)
    if on and partner.kyc_status in BLOCKED_KYC:
        return _r("dispatch.duty_blocked", ops_phone=get_settings().ops_phone)
    if on and not payable(partner):
        return _unpayable(partner)
    if on and sms_stopped(session, partner):
        # Their number stopped our SMS (STOP; Twilio refuses every SMS to it until they
        # send START): no offer could reach a partner without the app.
        return _r(DUTY_SMS_STOPPED)
    if on and not partner.has_app:
        _lock_points_of(session, partner)  # a Point closing meanwhile: one after the other
    if on and placed_nowhere(session, partner):
        # Their home Point closed and no other they serve open: no search finds them, so
        # no "offers will come"; they hear to call ops for a new Point (STATUS says so too).
        return _no_point()
    # OFF: the legs of the offers in hand, then the offers, are locked before the
    # partner's own row changes: a rival's acceptance holds such a leg and then withdraws
    # this partner's offer, writing their row. Writing the row first deadlocked with it.
    in_hand = [] if on else lock_open_offers(session, partner.id)
    # The row locked (ON: above; OFF: after the offers' legs) and its duty read afresh: ON
    # while on (the app's PUT retried, or sent at each launch) or OFF while off changes
    # nothing and records nothing. A duty_on starts the missed-offer run again
    # (_off_after_missed), and the duty history would show breaks never taken.
    changed = session.scalar(select(PartnerProfile.on_duty).where(
        PartnerProfile.id == partner.id).with_for_update()) != on
    partner.on_duty = on
    # OFF while put OFF for offers that never reached him (_off_after_unreached) is his
    # own OFF from now: recorded, so this SMS does not put him back ON (back_on_reached).
    if changed or (not on and _unreached_off(session, partner.id) is not None):
        session.add(PartnerEvent(partner_id=partner.id, kind="duty_on" if on else "duty_off",
                                 at=clock.now()))
    # Stopping work closes the offers in hand, so the next partner need not wait out
    # their timeout. Closed as if left to expire, not as a no: a no keeps a partner off
    # that job for the rest of its search (_excluded), while this one only stopped for a
    # while (lunch) and is asked again once back ON, if the job still wants a rider.
    for leg, offer in in_hand:
        offer.status = rules.OfferStatus.EXPIRED.value
        offer.responded_at = clock.now()
        _maybe_continue(session, leg)
    _home_follows_duty(session, partner)
    if on:
        # With the app, his offers appear in it (by SMS too while his number takes ours):
        # "offers will come by SMS" is an SMS-only rider's, whichever way he sent ON.
        return _r(DUTY_ON_APP if partner.has_app else DUTY_ON)
    return _off_reply(session, partner)


def _off_reply(session: Session, partner: PartnerProfile) -> Reply:
    """What OFF answers. OFF stops new offers only: a job taken stays theirs (reminded,
    taken back if not picked up in time), so the answer names every job still in their
    hands and the next step. One job: what to do with it (a relay parcel handed over to
    them, leg still "assigned", wants their PICK first with the code the rider gave them:
    handed_over_to; one locked after wrong codes waits for ops, whom they call). More than
    one: all their numbers, to finish, or CANCEL one not picked up (STATUS tells each).
    ``job`` is the first of them either way (auto_off names ``jobs``, else it)."""
    legs = active_legs_of(session, partner)
    if not legs:
        return _r("dispatch.duty_off")
    job = job_code(legs[0])
    if len(legs) > 1:
        return _r("dispatch.duty_off_jobs", job=job,
                  jobs=" ".join(job_code(leg) for leg in legs))
    leg = legs[0]
    if leg.status == LegStatus.LOCKED.value:
        return _r("dispatch.duty_off_locked", job=job, ops_phone=get_settings().ops_phone)
    if leg.status == LegStatus.PICKED_UP.value:
        return _r("dispatch.duty_off_carrying", job=job)
    if handed_over_to(session, leg):
        return _r("dispatch.duty_off_handed", job=job)
    return _r("dispatch.duty_off_assigned", job=job)


def status_lines(session: Session, partner: PartnerProfile, lang: str) -> list[str]:
    """STATUS: each current job on one line, then open offers; or that there is none."""
    lines = []
    for leg in active_legs_of(session, partner):
        booking = session.get(Booking, leg.booking_id)
        assert booking is not None
        # A relay parcel handed over to them (leg still "assigned"): theirs, PICK to send.
        state = "handed_over" if handed_over_to(session, leg) else leg.status
        lines.append(i18n.t("dispatch.status_line", lang, job=job_code(leg),
                            state=i18n.t(f"dispatch.state.{state}", lang),
                            pickup=place(session, booking, leg, "from"),
                            drop=place(session, booking, leg, "to")))
    for offer in open_offers_of(session, partner):
        lines.append(i18n.t("dispatch.status_offer", lang, job=offer.leg_id))
    if not lines:
        if partner.on_duty and not payable(partner) and partner.kyc_status not in BLOCKED_KYC:
            # On duty from before they could not be paid: no offer can come; say why.
            return [_unpayable(partner).render(lang)]
        if partner.on_duty and placed_nowhere(session, partner):
            # On duty from before their Point closed: no offer can come, as ON says.
            return [_no_point().render(lang)]
        key = "dispatch.status_none_on" if partner.on_duty else "dispatch.status_none_off"
        return [i18n.t(key, lang)]
    return _in_two_part_sms(lines)


def _in_two_part_sms(lines: list[str]) -> list[str]:
    """Lines one under the other in as few SMS as hold them at 2 parts each: a STATUS of
    two jobs (a line each, both places named) goes as two SMS rather than one of 3 or 4
    parts, which costs as much and some phones show apart, out of order."""
    out: list[str] = []
    for line in lines:
        if out and fits_two_sms_parts(f"{out[-1]}\n{line}"):
            out[-1] = f"{out[-1]}\n{line}"
        else:
            out.append(line)
    return out


# --- app / ops entry points -----------------------------------------------------------


def update_location(partner_id: int, lat: float, lng: float,
                    at: datetime | None = None) -> None:
    """A live position from the partner app, taken at ``at`` (default now); it counts for
    DISPATCH_LOCATION_MAX_AGE_S from then, not from when it reached us."""
    la, ln = validate_lat_lng(lat, lng)
    geo_index.update_location(partner_id, la, ln, at or clock.now())


# How long after the drop its proof photo may still come (the app's upload, a WhatsApp
# photo filed by pod_leg_of).
POD_AFTER_DROP = timedelta(hours=1)
POD_JUST_DROPPED = timedelta(minutes=10)  # a photo this soon after a drop is of that drop


def attach_pod(session: Session, partner: PartnerProfile, leg_id: int, data: bytes,
               content_type: str | None = None, *, filed: bool = False,
               before_drop: bool = False) -> PodPhoto:
    """Store a photo for the partner's leg. Only one taken once the drop is confirmed
    (within POD_AFTER_DROP; ``filed``: a WhatsApp photo pod_leg_of filed in time, whose
    download job may run later) is the leg's proof of delivery. One taken with the parcel
    in hand before the drop (``before_drop``: a WhatsApp photo filed then, downloaded after
    the drop) is kept as a pickup photo, never the proof: the proof says the parcel reached
    the door, which a photo taken before the code was checked cannot (as the app's upload,
    core.services.partner_app.upload_photo)."""
    leg = _lock_leg(session, leg_id)
    if leg is None or leg.partner_id != partner.id:
        raise NotFound("no such job", code="not_found")  # as the app's other leg routes
    kept = session.scalar(select(PodPhoto).where(
        PodPhoto.leg_id == leg.id, PodPhoto.sha256 == hashlib.sha256(data).hexdigest())
        .order_by(PodPhoto.id).limit(1))
    if kept is not None:
        return kept  # the same photo sent again (its answer lost, the app retried): kept once
    if leg.status == LegStatus.DELIVERED.value and not before_drop:
        if not filed and (leg.delivered_at is None
                          or leg.delivered_at < clock.now() - POD_AFTER_DROP):
            # The proof is taken at the drop: a photo weeks later (say once the customer
            # disputes the delivery) must not replace it. The chat files photos the same way.
            raise ValidationError("a photo goes with the drop; this drop is past",
                                  code="pod_not_now")
        proof = True
    elif leg.status == LegStatus.DELIVERED.value or parcel_in_hand(session, leg):
        proof = False
    else:
        raise ValidationError("a photo goes with the drop", code="pod_not_now")
    booking = session.get(Booking, leg.booking_id)
    assert booking is not None
    folder = f"{booking.reference}/leg-{leg.id}" + ("" if proof else "/pickup")
    stored = storage.save_photo(data, folder=folder, declared_type=content_type)
    photo = PodPhoto(leg_id=leg.id, partner_id=partner.id, storage_uri=stored.uri,
                     content_type=stored.content_type, size_bytes=stored.size_bytes,
                     sha256=stored.sha256)
    session.add(photo)
    if proof:
        leg.pod_photo_url = stored.uri
    session.flush()
    return photo


def to_collect_of(session: Session, partner: PartnerProfile) -> Leg | None:
    """A job of the partner's still to collect: taken, its parcel not in his hands."""
    return next((leg for leg in session.scalars(select(Leg).where(
        Leg.partner_id == partner.id, Leg.status == LegStatus.ASSIGNED.value)
        .order_by(Leg.id)) if not parcel_in_hand(session, leg)), None)


def pod_leg_of(session: Session, partner: PartnerProfile,
               at: datetime | None = None) -> Leg | None:
    """The leg a photo from this partner belongs to: one they delivered minutes ago and
    have sent no photo of (the photo of the doorstep comes right after the drop, even
    while they carry another parcel), else the one whose parcel is in their hands now
    (picked up, or handed over to them at a Point; kept as a pickup photo, not the proof:
    attach_pod), else, with no job of theirs still to collect, the one they delivered in
    the last hour. "Now" is ``at`` (default: now), when they sent it: a chat drained late
    (a backlog, a worker restarting) must not file it by what they did since (their next
    parcel picked up)."""
    at = at or clock.now()
    just_dropped = session.scalar(select(Leg).where(
        Leg.partner_id == partner.id, Leg.status == LegStatus.DELIVERED.value,
        Leg.pod_photo_url.is_(None), Leg.delivered_at >= at - POD_JUST_DROPPED,
        Leg.delivered_at <= at)
        .order_by(Leg.delivered_at.desc(), Leg.id.desc()))
    if just_dropped is not None:
        return just_dropped
    # Carrying: picked up, or a relay leg whose parcel was handed over to them at the
    # Point before their PICK (parcel_in_hand, as the app's photo rules), as it was then:
    # a leg delivered since was carried then.
    mine = list(session.scalars(select(Leg).where(
        Leg.partner_id == partner.id,
        Leg.status.in_((LegStatus.PICKED_UP.value, LegStatus.ASSIGNED.value))
        | ((Leg.status == LegStatus.DELIVERED.value) & (Leg.delivered_at > at)))
        .order_by(Leg.updated_at.desc(), Leg.id.desc())))
    held = {leg.id: _held_at(session, leg, at) for leg in mine}
    carrying = next((leg for leg in mine if held[leg.id] is True), None)
    if carrying is not None:
        return carrying
    if any(was is False for was in held.values()):
        # At his next sender's door, parcel not yet his: a photo now is of that parcel,
        # not the proof of the last drop (it would take its place, under another
        # customer's booking). The app refuses it alike (pod_not_now).
        return None
    # delivered_at, not updated_at: that one is the database's clock and moves with any
    # later change to the leg (a photo, a payout), so an old drop would look recent.
    return session.scalar(select(Leg).where(
        Leg.partner_id == partner.id, Leg.status == LegStatus.DELIVERED.value,
        Leg.delivered_at >= at - POD_AFTER_DROP, Leg.delivered_at <= at)
        .order_by(Leg.delivered_at.desc(), Leg.id.desc()))


def _held_at(session: Session, leg: Leg, at: datetime) -> bool | None:
    """parcel_in_hand of the partner's leg as it was at ``at``, from its history: True if
    its parcel was in their hands then; False if the job was theirs to collect; None if
    it was not theirs yet."""
    assigned = _assigned_at(session, leg)
    if assigned is None or assigned.at > at:
        return None
    then = session.scalar(select(TransitionLog.to_status).where(
        TransitionLog.entity == "leg", TransitionLog.entity_id == leg.id,
        TransitionLog.at <= at).order_by(TransitionLog.at.desc(), TransitionLog.id.desc())
        .limit(1))
    if then == LegStatus.PICKED_UP.value:
        return True
    if then != LegStatus.ASSIGNED.value:
        return None
    prev = _previous_leg(session, leg)  # handed over at the Point by then (handed_over_to)
    return prev is not None and prev.delivered_at is not None and prev.delivered_at <= at


# Where Twilio keeps a message's media: its REST API's host (it redirects from there to its
# media store, and requests drops our credentials on a redirect to another host).
TWILIO_MEDIA_HOST = "api.twilio.com"


def twilio_media_url(url: str) -> bool:
    """``url`` is Twilio's media URL: https on Twilio's API host, or on the host of the
    configured TWILIO_API_BASE (the sandbox's emulator, http there too)."""
    try:
        parts = urlsplit(url)
        host, base = parts.hostname, get_settings().twilio_api_base
        base_parts = urlsplit(base) if base else None
    except ValueError:
        return False
    if base_parts is not None and host == base_parts.hostname and parts.port == base_parts.port:
        return parts.scheme == base_parts.scheme
    return parts.scheme == "https" and host == TWILIO_MEDIA_HOST and parts.port in (None, 443)


class MediaFetchError(RuntimeError):
    """A partner's photo could not be fetched from Twilio (RQ retries the job)."""


def fetch_pod_photo(leg_id: int, partner_id: int, url: str, content_type: str,
                    before_drop: bool = False) -> str:
    """Job: download a partner's WhatsApp photo from Twilio (HTTP Basic, as Twilio's media
    URLs require) and store it with the leg: the proof of delivery if it was sent after the
    drop, else (``before_drop``: sent with the parcel in hand, however late this job runs)
    a pickup photo (attach_pod)."""
    settings = get_settings()
    if not twilio_media_url(url):
        # Our credentials go with the request: only to Twilio's own media URL. A signed
        # webhook names it, but a URL elsewhere would hand our auth token to that host.
        log.error("photo URL not Twilio's; not fetched", extra={"leg_id": leg_id})
        return "not-twilio"
    limit = storage.load_config().max_bytes
    # An error names no URL: Twilio's redirects to its media store, whose URL is signed
    # (a credential for a while), and RQ keeps a failed job's error in Redis and logs it.
    try:
        with requests.get(url, auth=(settings.twilio_account_sid, settings.twilio_auth_token),
                          timeout=15, stream=True) as resp:
            status = resp.status_code
            data = resp.raw.read(limit + 1, decode_content=True) if resp.ok else b""
    except requests.RequestException as exc:
        raise MediaFetchError(f"Twilio media not fetched ({type(exc).__name__})") from None
    if not 200 <= status < 400:
        raise MediaFetchError(f"Twilio media answered {status}")  # RQ retries: kept a while
    if len(data) > limit:
        log.warning("proof-of-delivery photo too large", extra={"leg_id": leg_id})
        _pod_not_kept(leg_id, partner_id, url, "dispatch.pod_too_large")
        return "too-large"
    try:
        with transaction() as session:
            partner = session.get(PartnerProfile, partner_id)
            if partner is None:
                return "missing"
            attach_pod(session, partner, leg_id, data, content_type, filed=True,
                       before_drop=before_drop)
    except (ValidationError, NotFound) as exc:
        # Not a photo (or no longer this partner's drop): no retry would change it. The
        # partner was told "got the photo" at once; they hear it is not kept, and why.
        log.warning("proof-of-delivery photo not kept",
                    extra={"leg_id": leg_id, "code": exc.code})
        if exc.code in ("not_a_photo", "empty_photo", "photo_too_large"):
            key = ("dispatch.pod_too_large" if exc.code == "photo_too_large"
                   else "dispatch.pod_not_photo")
            _pod_not_kept(leg_id, partner_id, url, key)
        return exc.code
    return "stored"


def _pod_not_kept(leg_id: int, partner_id: int, url: str, key: str) -> None:
    """Tell the partner, where they sent it (WhatsApp, in its 24-hour window; else SMS),
    that their photo for the leg is not kept."""
    with transaction() as session:
        partner = session.get(PartnerProfile, partner_id)
        leg = session.get(Leg, leg_id)
        if partner is None or leg is None:
            return
        person = _person(session, partner)
        media = hashlib.sha256(url.encode()).hexdigest()[:16]
        notify.send_to_person(session, person, i18n.t(key, _lang(person), job=job_code(leg)),
                              dedupe_key=f"pod-{leg_id}-{media}-not-kept",
                              booking_id=leg.booking_id)


def unlock_leg(session: Session, leg_id: int, actor: Actor) -> Leg:
    """Ops put a locked leg back where it was, with fresh OTPs sent out again. One whose
    partner was suspended meanwhile, parcel not picked up, goes back to offering instead:
    they may not pick it up. Conflict if the leg is not locked.

    A relay leg whose parcel was handed over already (the previous rider's DROP took the
    code this rider read out, face to face: the parcel is in their hands) and that locked
    on their PICK codes is recorded as picked up, and they are told to deliver it: the
    rider who would read out a new pickup code has left the Point, and a code sent to the
    holder to type back in would prove nothing the handover did not.

    A carrier's leg locked at the Point whose parcel the next rider has picked up since,
    with the code only this rider held (a leg locked so before the next rider's PICK came
    to close it too: _handover_proven), is delivered and paid: a new drop code would reach
    nobody, the next rider having left with the parcel."""
    _lock_legs_before(session, leg_id)  # a blocked rider's leg is taken back (_give_back)
    leg = _lock_leg(session, leg_id)
    if leg is None:
        raise NotFound("no such leg", code="unknown_job")
    if leg.status != LegStatus.LOCKED.value:
        raise Conflict(f"leg {leg_id} is not locked (it is {leg.status})", code="not_locked")
    nxt = _next_leg(session, leg)
    if (nxt is not None and leg.partner_id is not None and nxt.partner_id != leg.partner_id
            and _picked_before(session, nxt) and _carrying(session, leg)):
        booking = session.get(Booking, leg.booking_id, with_for_update=True)
        assert booking is not None
        _close_handed_on(session, booking, leg, actor,
                         "unlocked by ops: the next rider's PICK took the code he gave")
        return leg
    picked = _picked_before(session, leg)
    if not picked and leg.partner_id is not None and _handed_over(session, leg):
        booking = session.get(Booking, leg.booking_id, with_for_update=True)
        assert booking is not None
        holder = session.get(PartnerProfile, leg.partner_id)
        assert holder is not None
        _picked_up(session, booking, leg, actor, "unlocked by ops: handed over at the Point")
        # The wrong PICK codes that locked it are behind it: its DROP tries start afresh,
        # as after a right PICK (new codes are no longer made for it when a next rider
        # takes the job: _new_handover_code keeps the tries).
        leg.otp_failures = 0
        _sms_partner(session, holder, "dispatch.unlocked_handed", booking_id=booking.id,
                     dedupe_key=f"leg-{leg.id}-unlocked-{leg.version}", job=job_code(leg),
                     drop=place(session, booking, leg, "to"))
        return leg
    back = LegStatus.PICKED_UP if picked else LegStatus.ASSIGNED
    move_leg(session, leg, back, actor, "unlocked by ops")
    booking = session.get(Booking, leg.booking_id, with_for_update=True)
    assert booking is not None
    partner = session.get(PartnerProfile, leg.partner_id) if leg.partner_id else None
    if (not picked and partner is not None and partner.kyc_status in BLOCKED_KYC
            and not _handed_over(session, leg)):
        event, reopened = _give_back(session, booking, leg, partner, actor,
                                     "partner blocked by ops", by_ops=True)
        if reopened:
            _status_to_customer(session, booking, f"blocked{event.id}")  # as block_partner
        _tell_carrier_to_wait(session, booking, leg, start_search(session, booking, leg,
                                                                  actor=actor))
        return leg
    send_leg_codes(session, booking, leg, tag=f"unlock{leg.version}", pickup=not picked)
    return leg


def _next_leg(session: Session, leg: Leg) -> Leg | None:
    """The relay leg after ``leg`` (None for the last)."""
    return session.scalar(select(Leg).where(Leg.booking_id == leg.booking_id,
                                            Leg.sequence == leg.sequence + 1))


def _next_leg_untaken(session: Session, leg: Leg) -> Leg | None:
    """The relay leg after ``leg`` while no rider has it (nobody holds ``leg``'s drop
    code, the one its rider reads out at the Point), else None."""
    nxt = _next_leg(session, leg)
    if nxt is not None and (nxt.partner_id is None or nxt.status in (
            LegStatus.PENDING.value, LegStatus.OFFERING.value)):
        return nxt
    return None


def _handed_over(session: Session, leg: Leg) -> bool:
    """Whether the previous relay rider handed this leg's parcel over already."""
    prev = _previous_leg(session, leg)
    return prev is not None and prev.status == LegStatus.DELIVERED.value


def _picked_before(session: Session, leg: Leg) -> bool:
    """Whether the leg's parcel was picked up (a right pickup code) before it locked."""
    return bool(session.scalar(select(func.count()).select_from(OtpAttempt).where(
        OtpAttempt.leg_id == leg.id, OtpAttempt.kind == "pickup", OtpAttempt.ok.is_(True))))


# Ops give a new code (new_leg_code): at most this many for a leg, so a stolen ops login
# cannot farm working codes; the audit log, which cannot be deleted, counts them.
OPS_CODES_PER_LEG = 5
OPS_NEW_CODE = "leg.new_code"
# The recipient asks for her drop code again by SMS ("code nahi mila": partner_sms): a
# budget of her own, audited apart, so her asking never uses up the codes ops need to
# give her one on the phone. Its message is ``leg-<id>-dropotp-r<n>``: a drop code's
# key (_DROP_CODE_KEY), so a lost one has the usual fallback (drop_code_lost).
RECIPIENT_CODES_PER_LEG = 3
RECIPIENT_NEW_CODE = "leg.recipient_new_code"
RECIPIENT_CODE_SPACING = timedelta(minutes=10)  # her next ask waits for the last code
# Codes the service makes itself, asked for by nobody at ops: a new one for the sender to
# pass on when the recipient's number says the parcel is not hers (partner_sms), one
# for her new number when it moved to a new SIM (partner_profile). None of ops' 5: each
# cause has a budget of its own. Audited as OPS_NEW_CODE by the system actor with its
# ``cause`` (one numbering of the ``ops<n>`` tags with ops' codes, so no two messages
# share a key).
WRONG_NUMBER_CODE = "wrong_number"
NEW_SIM_CODE = "new_sim"
SERVICE_CODES_PER_LEG = {WRONG_NUMBER_CODE: 2, NEW_SIM_CODE: 3}
# core.services.ivr audits a pickup code read out on a call by this action (ivr.CODE_READ).
IVR_CODE_READ = "ivr_pickup_code_read"


@dataclass(frozen=True)
class NewCode:
    leg: Leg
    kind: str
    code: str  # to be read out once; never logged, never audited
    sent: bool  # also queued to whoever holds that code the usual way
    # Ops' codes (or hers: by_recipient) given for the leg so far, this one too; for a
    # code the service made (``cause``), the number in its tag (``ops<n>``), which its
    # caller keys its own messages by.
    issued: int


def _code_cause(session: Session, booking: Booking, actor: Actor, cause: str | None,
                by_recipient: bool) -> str:
    """Whose ask a new code is (new_leg_code): hers, ops', or the service's own
    (SERVICE_CODES_PER_LEG): one the system makes for a number that said it is not hers
    is WRONG_NUMBER_CODE, any other NEW_SIM_CODE (the only other the service makes)."""
    if by_recipient:
        return "recipient"
    if actor.kind != SYSTEM.kind:
        return "ops"
    if cause is not None:
        if cause not in SERVICE_CODES_PER_LEG:
            raise ValueError(f"no such cause of a new code: {cause}")
        return cause
    return (WRONG_NUMBER_CODE if recipient_said_wrong_number(session, booking)
            else NEW_SIM_CODE)


def _codes_given(session: Session, leg: Leg, cause: str) -> tuple[int, int]:
    """(codes of ``cause`` given for the leg so far, the number of the last tag of its
    kind): hers are RECIPIENT_NEW_CODE's; ops' and the service's share OPS_NEW_CODE's
    numbering, each counted apart (the system's codes by their ``cause``; one audited
    before causes were kept counts for none)."""
    if cause == "recipient":
        given = int(session.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == RECIPIENT_NEW_CODE,
            AuditEntry.target == f"leg:{leg.id}")) or 0)
        return given, given
    rows = session.execute(select(AuditEntry.actor, AuditEntry.details["cause"].astext)
                           .where(AuditEntry.action == OPS_NEW_CODE,
                                  AuditEntry.target == f"leg:{leg.id}")).all()
    system = f"{SYSTEM.kind}:"
    if cause == "ops":
        given = sum(1 for who, _ in rows if not who.startswith(system))
    else:
        given = sum(1 for who, why in rows if who.startswith(system) and why == cause)
    return given, len(rows)


def new_leg_code(session: Session, leg_id: int, kind: str, actor: Actor, *, reason: str,
                 send: bool = False, by_recipient: bool = False,
                 cause: str | None = None) -> NewCode:
    """Ops make a new ``kind`` ("pickup" or "drop") code for a leg whose code reached
    nobody (pickup_code_lost, drop_code_lost told them to call the customer): only its
    hash is kept, the old one is void, the other kind's code stays, and the tries are
    those of a code made again (tries_after_lost_code). The code is returned to be read
    out on the phone; ``send`` also queues it the way send_leg_codes would. Audited
    without the code, at most OPS_CODES_PER_LEG per leg. ``by_recipient``: a drop code
    the recipient asked for by SMS, audited as RECIPIENT_NEW_CODE, at most
    RECIPIENT_CODES_PER_LEG, tagged ``r<n>``: none of ops' codes. One the service makes
    (``actor`` the system: a wrong number, a new SIM; ``cause`` names which, else it is
    told by the booking) is none of ops' either: SERVICE_CODES_PER_LEG of its cause.

    Conflict (precise codes) when the leg takes no such code: no rider yet, locked (ops
    unlock it, which sends new codes), a pickup code once picked up, a drop code once
    delivered, a closed booking."""
    leg = _lock_leg(session, leg_id)
    if leg is None:
        raise NotFound("no such leg", code="not_found")
    if kind not in ("pickup", "drop"):
        raise ValidationError("kind is pickup or drop", code="bad_kind", field="kind")
    booking = session.get(Booking, leg.booking_id, with_for_update=True)
    assert booking is not None
    status = leg.status
    if booking.status in CLOSED_BOOKING or status in (LegStatus.CANCELLED.value,
                                                      LegStatus.FAILED.value):
        raise Conflict(f"booking {booking.reference} is {booking.status}: no code",
                       code="booking_closed")
    if status == LegStatus.LOCKED.value:
        raise Conflict(f"leg {leg.id} is locked: unlock it (new codes are sent)",
                       code="leg_locked")
    if kind == "pickup":
        if status in (LegStatus.PENDING.value, LegStatus.OFFERING.value):
            raise Conflict(f"leg {leg.id} has no rider yet", code="no_rider")
        if status != LegStatus.ASSIGNED.value:
            raise Conflict(f"leg {leg.id} is picked up already", code="already_picked_up")
    else:
        if status == LegStatus.DELIVERED.value:
            raise Conflict(f"leg {leg.id} is delivered already", code="already_delivered")
        # The drop code goes out at the accept, so ops_drop_code_unsent can come before
        # the pickup: a drop code is given from then on.
        if status not in _DELIVERING:
            raise Conflict(f"leg {leg.id} has no rider yet", code="no_rider")
        if _next_leg_untaken(session, leg) is not None:
            # A relay leg's drop code is the one the next rider reads out at the Point:
            # with nobody to hold it, it would let the carrier "hand over" to nobody.
            raise Conflict(f"leg {leg.id}'s next leg has no rider yet: no one to hold its "
                           "drop code", code="no_rider")
    if by_recipient and kind != "drop":
        raise ValidationError("a recipient has a drop code only", code="bad_kind",
                              field="kind")
    cause = _code_cause(session, booking, actor, cause, by_recipient)
    action, limit, prefix = ((RECIPIENT_NEW_CODE, RECIPIENT_CODES_PER_LEG, "r")
                             if by_recipient else
                             (OPS_NEW_CODE, SERVICE_CODES_PER_LEG.get(cause, OPS_CODES_PER_LEG),
                              "ops"))
    given, numbered = _codes_given(session, leg, cause)
    if given >= limit:
        log.warning("a new code asked for past the limit",
                    extra={"booking_id": booking.id, "leg_id": leg.id, "cause": cause,
                           "by_recipient": by_recipient})
        raise Conflict(f"{given} codes were given for leg {leg.id} already: no more",
                       code="too_many_codes")
    issued = given if cause in ("ops", "recipient") else numbered
    before = leg.pickup_otp_hash, leg.drop_otp_hash
    # Before the pickup the leg's one counter holds the wrong PICK codes: a new drop code
    # leaves them (as drop_code_lost does).
    failures = (leg.otp_failures if kind == "drop" and status == LegStatus.ASSIGNED.value
                else tries_after_lost_code(session, leg, kind))
    outbox.withdraw_leg_codes(session, leg.id, kinds=(kind,))
    pickup_code, drop_code = issue_leg_otps(leg)
    if kind == "pickup":
        code, leg.drop_otp_hash = pickup_code, before[1]
    else:
        code, leg.pickup_otp_hash = drop_code, before[0]
    leg.otp_failures = failures
    tag = f"{prefix}{numbered + 1}"
    sent = send and _send_new_code(session, booking, leg, kind, code, tag=tag)
    session.add(AuditEntry(actor=f"{actor.kind}:{actor.id}", action=action,
                           target=f"leg:{leg.id}",
                           details={"booking": booking.reference, "kind": kind,
                                    "sent": sent, "issued": issued + 1, "cause": cause,
                                    # The service's clock (the row's own is the database's):
                                    # her next ask is spaced by it (recipient_code_pending).
                                    "made_at": clock.now().isoformat(),
                                    # Ops' own words, kept for good: a bank account or
                                    # Aadhaar number in them cut to its last 4.
                                    "reason": mask_note(reason)}))
    log.warning("the recipient was sent a new code" if by_recipient else
                "ops gave a new code" if cause == "ops" else "the service made a new code",
                extra={"booking_id": booking.id, "leg_id": leg.id, "kind": kind,
                       "sent": sent, "cause": cause})
    return NewCode(leg, kind, code, sent, issued + 1)


def recipient_code_pending(session: Session, leg: Leg) -> datetime | None:
    """When the drop code the recipient last asked for (new_leg_code by_recipient) was
    made, while it may still be on its way: less than RECIPIENT_CODE_SPACING ago, still
    the leg's latest drop code message, and not reported failed. Asking again then would
    void it on its way (an SMS can take minutes) and use up her few codes: she is told
    when it went instead. None otherwise."""
    audit = session.execute(select(AuditEntry.details).where(
        AuditEntry.action == RECIPIENT_NEW_CODE, AuditEntry.target == f"leg:{leg.id}")
        .order_by(AuditEntry.id.desc()).limit(1)).scalar()
    if not audit or not audit.get("made_at") or not audit.get("sent"):
        return None
    made_at = datetime.fromisoformat(audit["made_at"])
    if clock.now() - made_at >= RECIPIENT_CODE_SPACING:
        return None
    latest = session.execute(
        select(OutboxMessage.dedupe_key, OutboxMessage.status)
        .where(OutboxMessage.booking_id == leg.booking_id,
               OutboxMessage.dedupe_key.like(f"leg-{leg.id}-dropotp-%"))
        .order_by(OutboxMessage.id.desc()).limit(1)).first()
    if (latest is None or latest.dedupe_key != f"leg-{leg.id}-dropotp-r{audit.get('issued')}"
            or latest.status in ("failed", "undelivered")):
        return None
    return made_at


def _send_new_code(session: Session, booking: Booking, leg: Leg, kind: str, code: str, *,
                   tag: str) -> bool:
    """Queue an ops-made code to whoever reads it out, as send_leg_codes does (their
    ``_new`` text, the old code void); whether a message was queued. A relay leg's pickup
    code once the parcel was handed over goes to the rider holding it (as unlock_leg
    deals with that rider), never to the one who left the Point."""
    legs = _legs(session, booking)
    if kind == "pickup" and leg.sequence == 1:
        return notify.notify_customer(
            session, booking, _code_key(session, booking, leg, "dispatch.pickup_otp", "pickotp"),
            otp=code, dedupe_key=f"leg-{leg.id}-pickotp-{tag}") is not None
    if kind == "pickup":
        prev = legs[leg.sequence - 2]
        if prev.status == LegStatus.DELIVERED.value:
            # Handed over already (handed_over_to): the rider who gave the parcel has left
            # the Point; the one holding it types the code in with their PICK.
            holder = session.get(PartnerProfile, leg.partner_id) if leg.partner_id else None
            if holder is None:
                return False
            return _sms_partner(session, holder, "dispatch.handed_pick_code",
                                booking_id=booking.id, dedupe_key=f"leg-{leg.id}-handpick-{tag}",
                                job=job_code(leg), otp=code) is not None
        giver = session.get(PartnerProfile, prev.partner_id) if prev.partner_id else None
        if giver is None:
            return False
        key = _handover_key(session, booking, leg, giver, "dispatch.handover_give", "handgive")
        return _sms_partner(session, giver, key, booking_id=booking.id,
                            dedupe_key=f"leg-{leg.id}-handgive-{tag}", job=job_code(prev),
                            point=place(session, booking, leg, "from"), otp=code) is not None
    if leg.sequence < len(legs):
        nxt = legs[leg.sequence]
        taker = session.get(PartnerProfile, nxt.partner_id) if nxt.partner_id else None
        if taker is None or nxt.status != LegStatus.ASSIGNED.value:
            return False
        key = _handover_key(session, booking, nxt, taker, "dispatch.handover_take", "handtake")
        return _sms_partner(session, taker, key, booking_id=booking.id,
                            dedupe_key=f"leg-{nxt.id}-handtake-{leg.id}-{tag}",
                            job=job_code(nxt), point=place(session, booking, nxt, "from"),
                            otp=code) is not None
    dedupe_key = f"leg-{leg.id}-dropotp-{tag}"
    recipient = _code_phone(session, booking)
    key = _code_key(session, booking, leg, "dispatch.drop_otp"
                    if recipient else "dispatch.drop_otp_sender", "dropotp")
    if not recipient:
        return notify.notify_customer(session, booking, key, otp=code,
                                      dedupe_key=dedupe_key) is not None
    if notify.notify_phone(session, recipient, key,
                           lang=recipient_language(session, booking), booking_id=booking.id,
                           dedupe_key=dedupe_key, ref=booking.reference, otp=code) is not None:
        return True
    return _drop_code_to_sender(session, booking, leg, code,
                                dedupe_key=f"{dedupe_key}-sender") is not None


def find_partner(session: Session, phone: str | None) -> tuple[Person | None,
                                                                PartnerProfile | None]:
    """The person and partner profile behind a phone number (either may be None)."""
    if not phone:
        return None, None
    person = session.scalar(select(Person).where(Person.phone == phone))
    if person is None:
        return None, None
    # No row lock here: every path locks the leg first, then touches the profile.
    profile = session.scalar(select(PartnerProfile).where(PartnerProfile.person_id == person.id))
    return person, profile


__all__ = ["accept", "attach_pod", "back_on_heard", "back_on_reached", "cancel_by_partner",
           "config", "confirm", "continue_search",
           "decline", "delivery_late", "drop_code_lost", "find_candidates", "handed_over_to",
           "handover_code_lost",
           "handed_pickup_late", "held_off_unreached", "lock_open_offers", "new_leg_code",
           "not_understood",
           "offer_sms_lost", "offer_timeout", "offer_unreached", "parcel_in_hand", "parties",
           "payout_account_gone",
           "pickup_code_lost", "pickup_late", "pickup_window", "place",
           "plan_legs", "point_pickup_late", "recipient_language",
           "recipient_code_pending", "recipient_said_wrong_number", "search_deadline",
           "set_duty", "start_dispatch",
           "start_search", "status_lines", "sweep", "tell_recipient_not_coming",
           "tries_after_lost_code", "unlock_leg", "unreached_probe", "update_location"]

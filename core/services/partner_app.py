"""What the partner app adds to SMS: live positions (checked for sense), earnings, the
rider's own profile, whom to collect a job from and whom to give it to, giving a job
back, and photos taken with the job in hand."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, cast
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import Subquery

from core import clock
from core.adapters import storage
from core.adapters.db import transaction
from core.adapters.dispatch_models import DispatchOffer, PodPhoto
from core.adapters.models import Booking, Leg, PartnerProfile, Person, TransitionLog, Vehicle
from core.adapters.payment_models import LedgerPosting, LedgerTransaction
from core.adapters.redis_conn import hit_sliding_limits, redis_client
from core.config import get_settings
from core.domain.booking import Actor, LegStatus
from core.domain.dispatch import OfferStatus
from core.domain.errors import Conflict, DomainError, NotFound, ValidationError
from core.domain.geo import haversine_m, in_india, validate_lat_lng
from core.domain.ledger import AccountKind, EntryKind
from core.services import dispatch

MAX_AGE = timedelta(minutes=5)  # a fix older than this says nothing about now
MAX_AHEAD = timedelta(seconds=60)  # phones' clocks drift a little, not more
MAX_SPEED_KMH = 150  # faster than any of our vehicles on a village road
# The most slack a fix's reported accuracy gives the speed check: without a bound, fixes
# "accurate to 5 km" one after another walked a partner 30 km in 5 seconds, each within
# its own slack of the last.
MAX_SLACK_M = 500
MAX_ACCURACY_M = 5000  # the widest accuracy the app may report (core.api.partner)
JITTER_M = 100  # GPS wanders this much between two fixes even when both say "8 m"
# partner id -> "lat,lng,unix time,accuracy in m" of the last fix taken, then (session 34)
# the same four fields of each earlier fix kept for the speed check over a window (the
# trail, newest first). Values written before the accuracy was kept have three fields:
# read as accuracy 0 (see last_fix). Code reading only the first four fields reads the
# last fix alike.
LAST_FIX_KEY = "partner:lastfix"
# partner id -> the unix time the app sent with the last fix taken, which LAST_FIX_KEY
# keeps as of now when it was ahead of our clock: a retry of that fix (same time and
# place as sent) is then still known as the same fix (_same_fix).
LAST_SENT_KEY = "partner:lastfix:sent"
# The trail: a fix taken at least TRAIL_EVERY after the one kept before it, for MAX_AGE.
# Each new fix is checked against every one of them as well as the last: checked only
# against the last, each fix had its slack (JITTER_M and the accuracies, up to 1.1 km)
# again, and many fixes a moment apart added up to any distance in no time.
TRAIL_EVERY = timedelta(seconds=15)
TRAIL_MAX = 24  # MAX_AGE / TRAIL_EVERY, and a few more
# What a real app sends: a fix every few seconds, a retry or two after a lost answer, a
# short burst after a dead spot. More is refused 429 with Retry-After (counted in sliding
# windows per partner, every try, a refused one too: a faked app cannot probe the speed
# check at will). A refused try leaves the last fix, fresh for dispatch's
# DISPATCH_LOCATION_MAX_AGE_S (900 s); a window lets a fix through within its length.
LOCATION_LIMITS = ((5, 10), (20, 60))  # (fixes, seconds)
INDIA = ZoneInfo("Asia/Kolkata")  # a partner's "today" is India's day, not UTC's
# Photos the app may keep of one job, of each kind (with the parcel in hand; after the
# drop, the proof): enough for any parcel, and a retry loop or a stolen token cannot fill
# the store (one photo sent again is kept once, and does not count twice).
MAX_PHOTOS_PER_LEG = 10
PICKUP_FOLDER = "/pickup"  # where a job's photos taken before the drop are kept

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fix:
    lat: float
    lng: float
    at: datetime
    accuracy_m: float = 0.0  # as the phone reported it (0: not known)


@dataclass(frozen=True)
class Reported:
    """What became of a position the app sent: ``fix`` is where the partner is now (this
    fix, or the one kept when ``taken`` is False: a wide fix agreeing with a recent
    precise one tells nothing new)."""

    fix: Fix
    taken: bool


class TooManyFixes(DomainError):
    """More positions than LOCATION_LIMITS let through (API: 429 with Retry-After);
    ``retry_after``: seconds until a window that refused it has room."""

    code = "rate_limited"
    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many positions sent: send one every few seconds, and again "
                         "after Retry-After")
        self.retry_after = retry_after


def _trail(partner_id: int) -> list[Fix]:
    """The last fix taken, then the earlier ones kept (newest first; see LAST_FIX_KEY)."""
    # Our client does not decode replies: bytes, not the bytes | str redis-py types.
    raw = cast(bytes | None, redis_client().hget(LAST_FIX_KEY, str(partner_id)))
    if not raw:
        return []
    fields = raw.decode().split(",")
    if len(fields) == 3:
        # A value written before the accuracy was kept reads as accuracy 0: the speed
        # check gave it no slack then, so it gives none now (and only for MAX_AGE).
        fields.append("0")
    tz = clock.now().tzinfo
    return [Fix(float(lat), float(lng), datetime.fromtimestamp(float(ts), tz), float(acc))
            for lat, lng, ts, acc in (fields[i:i + 4] for i in range(0, len(fields) - 3, 4))]


def last_fix(partner_id: int) -> Fix | None:
    fixes = _trail(partner_id)
    return fixes[0] if fixes else None


def record_location(partner_id: int, lat: float, lng: float, accuracy_m: float,
                    at: datetime) -> Fix:
    """Accept a position from the app unless it is stale, from the future or impossible;
    the partner's position after it (see ``Reported``)."""
    return _record(partner_id, lat, lng, accuracy_m, at).fix


def report_location(partner_id: int, lat: float, lng: float, accuracy_m: float,
                    at: datetime) -> Reported:
    """A position the app sent: counted against LOCATION_LIMITS (TooManyFixes, nothing
    counted), then checked and taken as by record_location. The last fix taken sent again
    (its answer was lost) is answered as the first time, not counted: an app retrying on a
    weak network must not be locked out by its own retries. Any other fix is counted, one
    refused too (stale, out of order, impossible), so a broken app cannot hammer."""
    prev = last_fix(partner_id)
    if prev is not None and _same_fix(prev, lat, lng, at, _sent_at(partner_id)) \
            and at >= clock.now() - MAX_AGE:  # else refused as stale below, and counted
        return _record(partner_id, lat, lng, accuracy_m, at)
    wait = hit_sliding_limits([(f"location:{partner_id}:{seconds}", limit, seconds)
                               for limit, seconds in LOCATION_LIMITS])
    if wait:
        raise TooManyFixes(wait)
    return _record(partner_id, lat, lng, accuracy_m, at)


def _same_fix(prev: Fix, lat: float, lng: float, at: datetime, sent: float | None) -> bool:
    """Whether a fix sent is ``prev`` again: same place, and the time it was taken as or
    the time the app sent with it (``sent``, LAST_SENT_KEY: a phone's clock a little ahead
    is taken as of now); its accuracy may differ."""
    return (lat, lng) == (prev.lat, prev.lng) and (
        at == prev.at or (sent is not None and at.timestamp() == sent))


def _sent_at(partner_id: int) -> float | None:
    raw = cast(bytes | None, redis_client().hget(LAST_SENT_KEY, str(partner_id)))
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def _record(partner_id: int, lat: float, lng: float, accuracy_m: float,
            at: datetime) -> Reported:
    lat, lng = validate_lat_lng(lat, lng)
    if not in_india(lat, lng):  # a GPS glitch (0, 0) would hide them from dispatch
        raise ValidationError("that position is outside India", code="bad_location",
                              field="lat")
    now = clock.now()
    if at.tzinfo is None:
        raise ValidationError("timestamp needs a time zone", code="bad_timestamp",
                              field="timestamp")
    if at > now + MAX_AHEAD:
        raise ValidationError("timestamp is in the future", code="future_timestamp",
                              field="timestamp")
    if at < now - MAX_AGE:
        raise ValidationError("this position is too old", code="stale_location",
                              field="timestamp")
    trail = _trail(partner_id)
    prev = trail[0] if trail else None
    if prev is not None:
        if _same_fix(prev, lat, lng, at, _sent_at(partner_id)):
            # The same fix sent again (its answer was lost on a weak network and the app
            # retried the PUT): taken already, answered as the first time.
            return Reported(prev, True)
        if at <= prev.at:
            raise ValidationError("an equal or newer position was already received",
                                  code="out_of_order", field="timestamp")
        if prev.at >= now - MAX_AGE and _coarse(accuracy_m) and not _coarse(prev.accuracy_m) \
                and haversine_m(prev.lat, prev.lng, lat, lng) <= accuracy_m:
            # A wide fix (the phone's network fix, GPS lost for a moment) that agrees with a
            # recent precise one tells nothing new: the precise one stays. Taken, it would
            # let the next precise fix move them by all its width (below), again and again.
            return Reported(prev, False)
    # A fix is taken as of its time, but never later than now: a phone's clock a little
    # ahead is let be, and a faked one stamping its fixes up to MAX_AHEAD ahead gains no
    # time for the speed check (nor keeps its position fresh for dispatch any longer).
    new = Fix(lat, lng, min(at, now), accuracy_m)
    # An old fix says nothing of where they are now: only those of the last MAX_AGE count.
    recent = [f for f in trail if f.at >= now - MAX_AGE]
    if any(_too_fast(old, new) for old in recent):
        raise ValidationError("that jump is too far for the time", code="impossible_jump",
                              field="lat")
    # The last fix joins the trail if the trail has none from the TRAIL_EVERY before it
    # (the trail is newest first: recent[0] is the last fix, when recent).
    kept = recent[1:]
    if recent and (not kept or recent[0].at - kept[0].at >= TRAIL_EVERY):
        kept.insert(0, recent[0])
    pipe = redis_client().pipeline(transaction=True)
    pipe.hset(LAST_FIX_KEY, str(partner_id), ",".join(
        f"{f.lat},{f.lng},{f.at.timestamp()},{f.accuracy_m}" for f in [new, *kept][:TRAIL_MAX]))
    pipe.hset(LAST_SENT_KEY, str(partner_id), str(at.timestamp()))
    pipe.execute()
    dispatch.update_location(partner_id, lat, lng, new.at)  # as old as the fix, not the upload
    return Reported(new, True)


def _too_fast(prev: Fix, new: Fix) -> bool:
    """Whether going from ``prev`` to ``new`` in their times beats MAX_SPEED_KMH."""
    # Both fixes' reported accuracies are slack (GPS jitter is not movement), each capped:
    # fixes "accurate to 5 km" one after another must not walk a partner off. A precise fix
    # after a wide one may be anywhere in that one's whole width: the phone woke with a
    # network fix 2 km off, then GPS locked on. (After a recent precise fix, a wide one is
    # kept only if it lies outside its own width yet within the speed check: so its width
    # is no more than that check's slack and travel.)
    if _coarse(prev.accuracy_m) and not _coarse(new.accuracy_m):
        prev_slack = min(prev.accuracy_m, MAX_ACCURACY_M)
    else:
        prev_slack = min(prev.accuracy_m, MAX_SLACK_M)
    metres = haversine_m(prev.lat, prev.lng, new.lat, new.lng)
    moved = max(0.0, metres - min(new.accuracy_m, MAX_SLACK_M) - prev_slack - JITTER_M)
    seconds = (new.at - prev.at).total_seconds()
    # Two fixes at one moment (a phone's clock ahead, both taken as of now): no time to
    # move at all beyond the slack.
    return moved > 0 and (seconds <= 0 or moved / seconds * 3.6 > MAX_SPEED_KMH)


def _coarse(accuracy_m: float) -> bool:
    """Wider than the speed check's slack for one fix (MAX_SLACK_M)."""
    return accuracy_m > MAX_SLACK_M


@dataclass(frozen=True)
class Earnings:
    today_paise: int
    week_paise: int
    total_paise: int
    delivered_legs: int
    fees_paise: int = 0  # part of total_paise: cancellation fees for wasted trips


# What leaves a leg's reversed payouts for someone other than its partner, by ops'
# decision: a refund to the customer (less one that failed and came back) or a write-off
# to the platform. A payout reversed and paid to the partner again (reversal_repaid) stays
# theirs; one still held for ops is not decided yet.
_GIVEN_AWAY = (EntryKind.REVERSAL_REFUND_ASKED.value, EntryKind.REVERSAL_REFUND_FAILED.value,
               EntryKind.REVERSAL_WRITTEN_OFF.value)


def _given_away() -> Subquery:
    """Per leg, its partner's payout reversed at the gateway and given to someone else."""
    return (select(LedgerPosting.leg_id.label("leg_id"),
                   (-func.sum(LedgerPosting.amount_paise)).label("paise"))
            .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
            .where(LedgerPosting.account_kind == AccountKind.REVERSED_PAYOUTS.value,
                   LedgerPosting.leg_id.is_not(None),
                   LedgerTransaction.kind.in_(_GIVEN_AWAY))
            .group_by(LedgerPosting.leg_id).subquery())


def earnings(session: Session, partner_id: int) -> Earnings:
    """Payouts of the partner's delivered legs (released to them by the payments side),
    each counted on the Indian day it was delivered (delivered_at: a leg's updated_at moves
    with later changes, such as a photo sent after the drop); and the cancellation fees
    they were promised for a trip the customer cancelled (the ledger's entries, on the day
    of the cancel). A payout (or fee) reversed at the gateway and then refunded to the
    customer or written off by ops is not theirs: it is left out, as the ledger owes them
    nothing for it (on the day the leg counts)."""
    now = clock.now().astimezone(INDIA)
    start_today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    away = _given_away()
    kept = func.greatest(Leg.payout_paise - func.coalesce(away.c.paise, 0), 0)

    def total(since: datetime | None) -> tuple[int, int]:
        stmt = (select(func.coalesce(func.sum(kept), 0), func.count()).select_from(Leg)
                .outerjoin(away, away.c.leg_id == Leg.id)
                .where(Leg.partner_id == partner_id,
                       Leg.status == LegStatus.DELIVERED.value))
        if since is not None:
            stmt = stmt.where(Leg.delivered_at >= since)
        amount, count = session.execute(stmt).one()
        return int(amount), int(count)

    def fees(since: datetime | None) -> int:
        stmt = (select(LedgerPosting.leg_id, func.sum(LedgerPosting.amount_paise).label("paise"))
                .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
                .where(LedgerPosting.partner_id == partner_id,
                       LedgerPosting.account_kind == AccountKind.PARTNER_PAYABLE.value,
                       LedgerTransaction.kind == EntryKind.CANCELLATION_FEE.value)
                .group_by(LedgerPosting.leg_id))
        if since is not None:
            stmt = stmt.where(LedgerTransaction.created_at >= since)
        fee = stmt.subquery()
        given = (select(func.coalesce(func.sum(func.greatest(
                    fee.c.paise - func.coalesce(away.c.paise, 0), 0)), 0))
                 .select_from(fee).outerjoin(away, away.c.leg_id == fee.c.leg_id))
        return int(session.scalar(given) or 0)

    week_start = start_today - timedelta(days=6)
    today, _ = total(start_today)
    week, _ = total(week_start)
    all_time, count = total(None)
    all_fees = fees(None)
    if all_fees:
        today, week = today + fees(start_today), week + fees(week_start)
    return Earnings(today, week, all_time + all_fees, count, all_fees)


# --- the rider's own profile ---------------------------------------------------------------


@dataclass(frozen=True)
class VehicleInfo:
    type: str
    payload_kg: int
    max_size: str
    registration: str | None


# Why a partner cannot work: the codes PUT /partners/me/duty refuses ON with.
NotPayable = Literal["kyc_pending", "no_payout_account", "duty_blocked", "sms_stopped",
                     "point_closed"]


@dataclass(frozen=True)
class Profile:
    partner_id: int
    name: str
    language: str
    on_duty: bool
    kyc_status: str
    payable: bool
    not_payable_reason: NotPayable | None  # None: they can work
    payout_account_masked: str | None
    rating: float
    vehicles: list[VehicleInfo]


def mask_account(account_id: str | None) -> str | None:
    """``acc_******ar01``: enough for the rider to know which account is theirs, not the
    whole id (a screenshot of the app goes round a WhatsApp group)."""
    if not account_id:
        return None
    prefix = "acc_" if account_id.startswith("acc_") else ""
    rest = account_id.removeprefix(prefix)
    if len(rest) <= 4:
        return f"{prefix}******"
    return f"{prefix}******{rest[-4:]}"


def profile(session: Session, person: Person, partner: PartnerProfile,
            default_language: str) -> Profile:
    """What the app shows the rider about themselves, and whether they can work: the
    tests dispatch.set_duty puts an ON to, in its order (KYC verified and a payout
    account; without the app on their profile, SMS not stopped and an active Point to be
    placed at), so that the reason is the code the app's ON is refused with."""
    if partner.kyc_status in dispatch.BLOCKED_KYC:
        reason: NotPayable | None = "duty_blocked"
    elif partner.kyc_status != dispatch.VERIFIED_KYC:
        reason = "kyc_pending"
    elif not partner.payout_account_id:
        reason = "no_payout_account"
    elif dispatch.sms_stopped(session, partner):
        reason = "sms_stopped"
    elif dispatch.placed_nowhere(session, partner):
        reason = "point_closed"
    else:
        reason = None
    vehicles = [VehicleInfo(v.type, v.payload_kg, v.max_size, v.registration)
                for v in session.scalars(select(Vehicle).where(
                    Vehicle.partner_id == partner.id, Vehicle.active).order_by(Vehicle.id))]
    return Profile(partner_id=partner.id, name=partner.first_name or person.name or "",
                   language=person.preferred_language or default_language,
                   on_duty=partner.on_duty, kyc_status=partner.kyc_status,
                   payable=reason is None, not_payable_reason=reason,
                   payout_account_masked=mask_account(partner.payout_account_id),
                   rating=partner.rating_x100 / 100, vehicles=vehicles)


# --- whom to collect a job from --------------------------------------------------------


def pickup_contact(session: Session, booking: Booking, leg: Leg) -> str | None:
    """The phone of whom the rider collects the leg's parcel from, as the accept's answer
    gives it (dispatch.send_leg_codes): the sender on a first leg, on a relay the rider of
    the leg before; None while nobody has that leg."""
    if leg.sequence == 1:
        customer = session.get(Person, booking.customer_id)
        return customer.phone if customer else None
    prev = session.scalar(select(Leg).where(Leg.booking_id == booking.id,
                                            Leg.sequence == leg.sequence - 1))
    giver = session.get(PartnerProfile, prev.partner_id) if prev and prev.partner_id else None
    person = session.get(Person, giver.person_id) if giver else None
    return person.phone if person else None


@dataclass(frozen=True)
class DropContact:
    name: str | None
    phone: str | None
    # The number is the sender's: the recipient's told us the parcel is not hers (the
    # sender has her code and knows where it goes).
    sender: bool = False


def drop_contact(session: Session, booking: Booking, leg: Leg) -> DropContact | None:
    """Whom the rider gives the parcel to at the drop, and her number, as the sender gave
    them (a recipient erased on her request has neither): only once the parcel is in his
    hands on its last leg (picked up, or handed over to him at the Point). None before
    that, and on a relay leg that ends at a Point, as for a booking whose recipient
    number is unknown. Once her number told us the parcel is not hers ("galat number":
    dispatch.recipient_said_wrong_number), the number is the sender's (``sender``; None
    when none is kept): the rider must not call a stranger, nor give her the parcel."""
    last = session.scalar(select(func.max(Leg.sequence)).where(Leg.booking_id == booking.id))
    if (leg.sequence != last or not booking.recipient_phone
            or not dispatch.parcel_in_hand(session, leg)):
        return None
    if dispatch.recipient_said_wrong_number(session, booking):
        customer = session.get(Person, booking.customer_id)
        return DropContact(booking.recipient_name or None,
                           customer.phone if customer is not None else None, sender=True)
    return DropContact(booking.recipient_name or None, booking.recipient_phone)


def accepted_again(session: Session, partner: PartnerProfile,
                   offer: DispatchOffer) -> dispatch.Reply | None:
    """The first answer to this accepted offer, for an accept sent again (its answer lost
    on a weak network): the job, where and whom to collect it from; None when the job is
    no longer theirs to pick up (picked up, given back, taken back)."""
    leg = session.get(Leg, offer.leg_id)
    if (offer.partner_id != partner.id or offer.status != OfferStatus.ACCEPTED.value
            or leg is None or leg.partner_id != partner.id
            or leg.status != LegStatus.ASSIGNED.value):
        return None
    booking = session.get(Booking, leg.booking_id)
    assert booking is not None
    return dispatch.Reply("dispatch.accepted", {
        "job": dispatch.job_code(leg), "pickup": dispatch.place(session, booking, leg, "from"),
        "phone": pickup_contact(session, booking, leg) or get_settings().ops_phone})


# --- answering an offer ------------------------------------------------------------------


def answer_offer(session: Session, partner: PartnerProfile, offer: DispatchOffer,
                 kind: Literal["accept", "decline"]) -> dispatch.Reply:
    """The app's accept or decline of ``offer`` (one of the partner's), through dispatch,
    which finds an offer by its job (the leg number, as "1 57" by SMS). That is ``offer``
    itself while it is his newest offer of the job: the open one, or the one whose close
    dispatch answers (expired, taken, "declined" again, ...). Once the job was offered to
    him again (the search came round to him after ``offer`` expired, or after a pause
    forgot his no), the job names the new offer: a request naming the old one (an app's
    retry after a lost answer) would act on the new one, which he may not have read. It
    is answered about ``offer`` alone (``_old_offer``), the same on every retry, and the
    new offer is left open for him to answer by its own id."""
    if _newer_offer_of_job(session, partner, offer):
        return _old_offer(session, partner, offer, kind)
    if kind == "accept":
        return dispatch.accept(session, partner, str(offer.leg_id))
    return dispatch.decline(session, partner, str(offer.leg_id))


def _newer_offer_of_job(session: Session, partner: PartnerProfile,
                        offer: DispatchOffer) -> bool:
    return session.scalar(select(DispatchOffer.id).where(
        DispatchOffer.partner_id == partner.id, DispatchOffer.leg_id == offer.leg_id,
        DispatchOffer.id > offer.id).limit(1)) is not None


def _old_offer(session: Session, partner: PartnerProfile, offer: DispatchOffer,
               kind: Literal["accept", "decline"]) -> dispatch.Reply:
    """What dispatch answers to a yes or no naming the job of ``offer`` when ``offer`` is
    the partner's newest offer of it and closed (dispatch._pick_offer, then accept or
    decline), for ``offer`` though a newer one of the job is his: nothing else is acted
    on. A newer offer was made after ``offer`` closed (one open offer each), so its time
    is over: a yes to it, even after a no, comes too late."""
    leg = session.get(Leg, offer.leg_id)
    assert leg is not None
    job = dispatch.job_code(leg)
    if partner.kyc_status in dispatch.BLOCKED_KYC:
        return dispatch.Reply("dispatch.duty_blocked", {"ops_phone": get_settings().ops_phone})
    if session.scalar(select(Booking.status).where(
            Booking.id == leg.booking_id)) in dispatch.CLOSED_BOOKING:
        return dispatch.Reply("dispatch.job_cancelled", {"job": job})
    status = offer.status
    if status == OfferStatus.EXPIRED.value and not dispatch._closed_going_off(offer):
        # Its answer come late (as by SMS, not hours on): answered, not missed.
        if dispatch._missed(status, offer.responded_at, offer.expires_at) and (
                offer.expires_at >= clock.now() - dispatch.ANSWERED_JUST_AFTER):
            dispatch._answer_to_expired(session, offer)
        return dispatch.Reply("dispatch.offer_expired", {"job": job})
    if status == OfferStatus.DECLINED.value or dispatch._closed_going_off(offer):
        # His no sent again is answered as the first time; his yes, as one too late.
        key = "dispatch.declined" if kind == "decline" else "dispatch.offer_expired"
        return dispatch.Reply(key, {"job": job})
    if status == OfferStatus.CANCELLED.value:
        key = "dispatch.given_back" if gave_back(session, partner, leg.id) \
            else "dispatch.taken_from_you"
        return dispatch.Reply(key, {"job": job})
    if status == OfferStatus.ACCEPTED.value and leg.partner_id == partner.id:
        if leg.status in dispatch.ACTIVE_LEG_STATES:
            key = "dispatch.already_yours" if kind == "accept" else "dispatch.cancel_hint"
            return dispatch.Reply(key, {"job": job})
        if leg.status == LegStatus.DELIVERED.value:
            return dispatch.Reply("dispatch.already_delivered", {"job": job})
    # Withdrawn (the job went to another, or he could no longer take it), or still open
    # beside a newer one (never: one open offer each): closed to him.
    return dispatch._gone(leg, job)


# --- giving a job back ------------------------------------------------------------------


def gave_back(session: Session, partner: PartnerProfile, leg_id: int) -> bool:
    """Whether the partner gave the leg back themselves (not had it taken back by a
    timer or by ops): the leg's move from assigned to offering, by them."""
    return session.scalar(select(TransitionLog.id).where(
        TransitionLog.entity == "leg", TransitionLog.entity_id == leg_id,
        TransitionLog.from_status == LegStatus.ASSIGNED.value,
        TransitionLog.to_status == LegStatus.OFFERING.value,
        TransitionLog.actor == str(Actor("partner", str(partner.id)))).limit(1)) is not None


def held_once(session: Session, partner: PartnerProfile, leg_id: int) -> bool:
    """Whether the leg was the partner's and left them before it was done: given back,
    or taken back by a timer or by ops (their accepted offer of it is then cancelled,
    dispatch._give_back)."""
    return session.scalar(select(DispatchOffer.id).where(
        DispatchOffer.partner_id == partner.id, DispatchOffer.leg_id == leg_id,
        DispatchOffer.status == OfferStatus.CANCELLED.value).limit(1)) is not None


def job_off(session: Session, leg: Leg) -> bool:
    """Whether the leg's job is off: its booking closed (cancelled by the customer,
    failed, refunded, expired: dispatch.CLOSED_BOOKING) before the leg was delivered. A
    rider's request about it is answered as his yes to its offer is (dispatch.accept):
    ``job_cancelled``, not "no longer yours", which reads as the job given to another."""
    if leg.status == LegStatus.DELIVERED.value:
        return False
    return session.scalar(select(Booking.status).where(
        Booking.id == leg.booking_id)) in dispatch.CLOSED_BOOKING


def give_back(session: Session, partner: PartnerProfile, leg_id: int) -> dispatch.Reply:
    """The app's "give this job back" (SMS: CANCEL <job>), through the same dispatch path.
    Sent again after its answer was lost, it is answered as the first time: the job is
    no longer theirs because they gave it back. A job whose booking was closed since
    (the customer cancelled it) is said to be cancelled (job_off)."""
    leg = session.get(Leg, leg_id)
    if leg is None:
        raise NotFound("no such job", code="not_found")
    job = dispatch.job_code(leg)
    if leg.partner_id != partner.id:
        if gave_back(session, partner, leg_id):
            return dispatch.Reply("dispatch.cancelled", {"job": job})
        if held_once(session, partner, leg_id):
            # Taken back meanwhile (not picked up in time, or ops suspended them): no
            # longer theirs, said in their words as dispatch says it, not "no such job";
            # or cancelled since, said so.
            key = "dispatch.job_cancelled" if job_off(session, leg) else "dispatch.no_such_job"
            return dispatch.Reply(key, {"job": job})
        raise NotFound("no such job", code="not_found")
    if leg.status not in dispatch.ACTIVE_LEG_STATES and job_off(session, leg):
        # The customer cancelled: the leg stopped, still naming him (booking_cancelled).
        return dispatch.Reply("dispatch.job_cancelled", {"job": job})
    reply = dispatch.cancel_by_partner(session, partner, (str(leg_id),))
    if reply.key == "dispatch.no_such_job" and gave_back(session, partner, leg_id):
        # Two requests at once: the other one gave it back while this one waited.
        return dispatch.Reply("dispatch.cancelled", {"job": job})
    return reply


# --- photos -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppPhoto:
    leg_id: int
    size_bytes: int
    proof_of_delivery: bool


def upload_photo(partner_id: int, leg_id: int, data: bytes,
                 content_type: str | None) -> AppPhoto:
    """Keep a photo from the app for the partner's leg, in its own transaction.

    Only a photo taken once the drop is confirmed (within dispatch.POD_AFTER_DROP) is the
    leg's proof of delivery. One taken with the parcel in hand before the drop (picked up,
    or handed over at a Point) is kept as a pickup photo, never the proof: the proof says
    the parcel reached the door, which a photo taken before the code was checked cannot.
    A file written to the store whose row is then not committed is deleted again."""
    written: list[str] = []
    try:
        with transaction() as session:
            return _store_photo(session, partner_id, leg_id, data, content_type, written)
    except BaseException:
        for uri in written:
            _drop_orphan(leg_id, uri)
        raise


def _store_photo(session: Session, partner_id: int, leg_id: int, data: bytes,
                 content_type: str | None, written: list[str]) -> AppPhoto:
    # The leg's lock is held from the check below to the commit: two uploads of one
    # photo keep one row, and _drop_orphan never deletes a file another upload keeps.
    leg = session.get(Leg, leg_id, with_for_update=True, populate_existing=True)
    if leg is None or leg.partner_id != partner_id:
        raise NotFound("no such job", code="not_found")
    kept = session.scalar(select(PodPhoto).where(
        PodPhoto.leg_id == leg.id, PodPhoto.sha256 == hashlib.sha256(data).hexdigest())
        .order_by(PodPhoto.id).limit(1))
    if kept is not None:  # the same photo sent again (its answer lost): kept once
        return AppPhoto(leg.id, kept.size_bytes, leg.pod_photo_url == kept.storage_uri)
    if leg.status == LegStatus.DELIVERED.value:
        if leg.delivered_at is None or leg.delivered_at < clock.now() - dispatch.POD_AFTER_DROP:
            raise ValidationError("a photo goes with the drop; this drop is past",
                                  code="pod_not_now")
        proof = True
    elif dispatch.parcel_in_hand(session, leg):
        proof = False
    else:
        raise ValidationError("a photo goes with the parcel in hand", code="pod_not_now")
    booking = session.get(Booking, leg.booking_id)
    assert booking is not None
    folder = f"{booking.reference}/leg-{leg.id}" + ("" if proof else PICKUP_FOLDER)
    # Counted under the leg's lock: uploads at once cannot pass the bound together. Each
    # kind its own: photos taken on the way never use up the proof of delivery's room.
    pickup_kind = PodPhoto.storage_uri.contains(f"leg-{leg.id}{PICKUP_FOLDER}/",
                                                autoescape=True)
    held = session.scalar(select(func.count()).select_from(PodPhoto).where(
        PodPhoto.leg_id == leg.id, pickup_kind if not proof else ~pickup_kind)) or 0
    if held >= MAX_PHOTOS_PER_LEG:
        raise Conflict(f"this job has {MAX_PHOTOS_PER_LEG} photos "
                       f"{'of the delivery' if proof else 'with the parcel in hand'} "
                       "already; no more are kept", code="too_many_photos")
    stored = storage.save_photo(data, folder=folder, declared_type=content_type)
    written.append(stored.uri)
    session.add(PodPhoto(leg_id=leg.id, partner_id=partner_id, storage_uri=stored.uri,
                         content_type=stored.content_type, size_bytes=stored.size_bytes,
                         sha256=stored.sha256))
    if proof:
        leg.pod_photo_url = stored.uri
    session.flush()
    return AppPhoto(leg.id, stored.size_bytes, proof)


def _drop_orphan(leg_id: int, uri: str) -> None:
    """Delete a photo file whose row was not committed, unless a row keeps it by now (the
    same photo stored again by a retry that took the leg's lock after this one let go)."""
    from core.services.retention import delete_photo  # retention imports this module

    try:
        with transaction() as session:
            session.get(Leg, leg_id, with_for_update=True)
            if session.scalar(select(PodPhoto.id).where(
                    PodPhoto.leg_id == leg_id, PodPhoto.storage_uri == uri).limit(1)) is None:
                delete_photo(uri)
    except Exception as exc:  # the database or the store away: the original error counts
        log.warning("a photo whose row was not kept is left in the store",
                    extra={"leg_id": leg_id, "error": type(exc).__name__})

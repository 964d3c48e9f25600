"""What the partner app adds to SMS: live positions (checked for sense) and earnings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import clock
from core.adapters.models import Leg
from core.adapters.payment_models import LedgerPosting, LedgerTransaction
from core.adapters.redis_conn import redis_client
from core.domain.booking import LegStatus
from core.domain.errors import ValidationError
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
LAST_FIX_KEY = "partner:lastfix"
INDIA = ZoneInfo("Asia/Kolkata")  # a partner's "today" is India's day, not UTC's


@dataclass(frozen=True)
class Fix:
    lat: float
    lng: float
    at: datetime


def last_fix(partner_id: int) -> Fix | None:
    # Our client does not decode replies: bytes, not the bytes | str redis-py types.
    raw = cast(bytes | None, redis_client().hget(LAST_FIX_KEY, str(partner_id)))
    if not raw:
        return None
    lat, lng, ts = raw.decode().split(",")
    return Fix(float(lat), float(lng), datetime.fromtimestamp(float(ts), clock.now().tzinfo))


def record_location(partner_id: int, lat: float, lng: float, accuracy_m: float,
                    at: datetime) -> Fix:
    """Accept a position from the app unless it is stale, from the future or impossible."""
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
    prev = last_fix(partner_id)
    if prev is not None:
        if at == prev.at and (lat, lng) == (prev.lat, prev.lng):
            # The same fix sent again (its answer was lost on a weak network and the app
            # retried the PUT): taken already, answered as the first time.
            return prev
        if at <= prev.at:
            raise ValidationError("an equal or newer position was already received",
                                  code="out_of_order", field="timestamp")
        metres = haversine_m(prev.lat, prev.lng, lat, lng)
        seconds = (at - prev.at).total_seconds()
        # Allow the reported accuracy as slack: GPS jitter is not movement. Only a recent
        # fix says where they can be now: an old one is no reason to refuse this one.
        moved = max(0.0, metres - min(accuracy_m, MAX_SLACK_M) - 100)
        if prev.at >= now - MAX_AGE and moved / seconds * 3.6 > MAX_SPEED_KMH:
            raise ValidationError("that jump is too far for the time", code="impossible_jump",
                                  field="lat")
    redis_client().hset(LAST_FIX_KEY, str(partner_id), f"{lat},{lng},{at.timestamp()}")
    dispatch.update_location(partner_id, lat, lng, at)  # as old as the fix, not the upload
    return Fix(lat, lng, at)


@dataclass(frozen=True)
class Earnings:
    today_paise: int
    week_paise: int
    total_paise: int
    delivered_legs: int
    fees_paise: int = 0  # part of total_paise: cancellation fees for wasted trips


def earnings(session: Session, partner_id: int) -> Earnings:
    """Payouts of the partner's delivered legs (released to them by the payments side),
    each counted on the Indian day it was delivered (delivered_at: a leg's updated_at moves
    with later changes, such as a photo sent after the drop); and the cancellation fees
    they were promised for a trip the customer cancelled (the ledger's entries, on the day
    of the cancel)."""
    now = clock.now().astimezone(INDIA)
    start_today = now.replace(hour=0, minute=0, second=0, microsecond=0)

    def total(since: datetime | None) -> tuple[int, int]:
        stmt = select(func.coalesce(func.sum(Leg.payout_paise), 0), func.count()).select_from(
            Leg).where(Leg.partner_id == partner_id, Leg.status == LegStatus.DELIVERED.value)
        if since is not None:
            stmt = stmt.where(Leg.delivered_at >= since)
        amount, count = session.execute(stmt).one()
        return int(amount), int(count)

    def fees(since: datetime | None) -> int:
        stmt = (select(func.coalesce(func.sum(LedgerPosting.amount_paise), 0))
                .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
                .where(LedgerPosting.partner_id == partner_id,
                       LedgerPosting.account_kind == AccountKind.PARTNER_PAYABLE.value,
                       LedgerTransaction.kind == EntryKind.CANCELLATION_FEE.value))
        if since is not None:
            stmt = stmt.where(LedgerTransaction.created_at >= since)
        return int(session.scalar(stmt) or 0)

    week_start = start_today - timedelta(days=6)
    today, _ = total(start_today)
    week, _ = total(week_start)
    all_time, count = total(None)
    all_fees = fees(None)
    if all_fees:
        today, week = today + fees(start_today), week + fees(week_start)
    return Earnings(today, week, all_time + all_fees, count, all_fees)

"""Booking service against real PostgreSQL and Redis: create, price, move, OTPs, history."""

from __future__ import annotations

import hashlib
import hmac
import math

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm.exc import StaleDataError

from core.adapters import surge
from core.adapters.db import session_factory, transaction
from core.adapters.models import Booking, Leg, Parcel, Person, TransitionLog
from core.config import get_settings
from core.domain.booking import Actor, BookingStatus
from core.domain.errors import InvalidTransition, NotFound, ValidationError
from core.domain.pricing import (
    DEFAULT_RATE_CARD,
    ParcelCategory,
    SizeBucket,
    SpeedTier,
    VehicleType,
    WeightBucket,
    quote,
)
from core.domain.reference import is_valid_reference, verhoeff_check_digit
from core.services.booking import (
    ParcelSpec,
    Place,
    check_leg_otp,
    create_booking,
    get_booking,
    issue_leg_otps,
    move_booking,
)

pytestmark = pytest.mark.db

# Real post offices in West Champaran, Bihar (India Post directory).
LAXMIPUR = Place(
    26.8927, 84.48813, pincode="845450", post_office="Laxmipur BO", landmark="near the temple"
)
BETTIAH = Place(26.80228, 84.51522, pincode="845438", post_office="Bettiah HO")
BAG = ParcelSpec(
    ParcelCategory.DOCUMENTS,
    SizeBucket.BAG,
    WeightBucket.W5,
    declared_value_paise=50_000,
    description="land papers",
)


def _road_m(a: Place, b: Place) -> int:
    """Independent haversine (mean earth radius) x 1.35 detour, both rounded half up."""
    r = 6371008.8
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lng - a.lng)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    straight = math.floor(2 * r * math.asin(math.sqrt(h)) + 0.5)
    return (straight * 13500 + 5000) // 10000


def _half_up(n: int, d: int) -> int:
    return (n + d // 2) // d


def _bicycle_total(road_m: int, tier_bp: int, surge_bp: int = 10000) -> int:
    """The default card's bicycle fare worked out by hand: Rs 20 covers 2 km, Rs 6/km after,
    then tier and surge multipliers, Rs 25 minimum, whole rupees half up."""
    subtotal = 2000 + _half_up(600 * (road_m - 2000), 1000)  # bag and w5 add nothing
    fare = _half_up(_half_up(subtotal * tier_bp, 10000) * surge_bp, 10000)
    return _half_up(max(fare, 2500), 100) * 100


def _customer(phone: str = "+919876500010") -> int:
    with transaction() as s:
        p = Person(phone=phone, name="Meena", role="customer", preferred_language="hi")
        s.add(p)
        s.flush()
        return p.id


def _book(
    customer_id: int,
    *,
    tier: SpeedTier = SpeedTier.STANDARD,
    recipient_phone: str | None = "+919876500020",
    pickup: Place = LAXMIPUR,
) -> Booking:
    with transaction() as s:
        return create_booking(
            s,
            customer_id=customer_id,
            channel="whatsapp",
            pickup=pickup,
            drop=BETTIAH,
            parcel=BAG,
            tier=tier,
            recipient_name="Ravi",
            recipient_phone=recipient_phone,
            actor=Actor("customer", str(customer_id)),
        )


def _count(model, *where) -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def _history(entity: str, entity_id: int) -> list[TransitionLog]:
    with transaction() as s:
        return list(
            s.scalars(
                select(TransitionLog)
                .where(TransitionLog.entity == entity, TransitionLog.entity_id == entity_id)
                .order_by(TransitionLog.id)
            )
        )


def test_create_booking_saves_a_quoted_booking_with_one_pending_leg(clean_db):
    cid = _customer()
    b = _book(cid)
    road = _road_m(LAXMIPUR, BETTIAH)
    assert 13_500 < road < 14_500  # ~10.4 km as the crow flies, x1.35 for rural roads

    with transaction() as s:
        booking = s.get(Booking, b.id)
        assert booking is not None
        assert booking.status == "quoted"
        assert len(booking.reference) == 8 and is_valid_reference(booking.reference)
        assert booking.customer_id == cid and booking.channel == "whatsapp"
        assert booking.pickup_pincode == "845450" and booking.drop_pincode == "845438"
        assert booking.pickup_landmark == "near the temple"
        assert booking.vehicle_type == VehicleType.BICYCLE.value  # cheapest that takes a bag
        assert booking.speed_tier == "standard"
        assert booking.distance_m == road
        assert booking.total_paise == _bicycle_total(road, 10000)
        assert booking.commission_paise == _half_up(booking.total_paise * 1200, 10000)
        assert booking.partner_share_paise == booking.total_paise - booking.commission_paise

        fare = booking.fare
        assert fare["total_paise"] == booking.total_paise
        assert sum(line["amount_paise"] for line in fare["lines"]) == booking.total_paise
        assert fare["partner_share_paise"] == booking.partner_share_paise

        (parcel,) = s.scalars(select(Parcel).where(Parcel.booking_id == b.id)).all()
        assert (parcel.category, parcel.size_bucket, parcel.weight_bucket) == (
            "documents",
            "bag",
            "w5",
        )
        assert parcel.declared_value_paise == 50_000

        legs = list(s.scalars(select(Leg).where(Leg.booking_id == b.id)))
        assert len(legs) == 1
        leg = legs[0]
        assert leg.sequence == 1 and leg.status == "pending"
        assert leg.payout_paise == booking.partner_share_paise
        assert leg.distance_m == road
        assert (leg.from_lat, leg.from_lng, leg.to_lat, leg.to_lng) == (
            LAXMIPUR.lat,
            LAXMIPUR.lng,
            BETTIAH.lat,
            BETTIAH.lng,
        )
        assert leg.pickup_otp_hash is None and leg.drop_otp_hash is None
        leg_id = leg.id

    with transaction() as s:
        rows = list(s.scalars(select(TransitionLog).order_by(TransitionLog.id)))
    got = [(r.entity, r.entity_id, r.from_status, r.to_status) for r in rows]
    assert got == [
        ("booking", b.id, None, "draft"),
        ("leg", leg_id, None, "pending"),
        ("booking", b.id, "draft", "quoted"),
    ]
    assert all(r.actor == f"customer:{cid}" for r in rows)
    assert all(r.reason.strip() for r in rows)
    assert all(r.at.tzinfo is not None for r in rows)


def test_express_costs_more_than_standard_more_than_economy(clean_db):
    cid = _customer()
    totals = {tier: _book(cid, tier=tier).total_paise for tier in SpeedTier}
    assert totals[SpeedTier.EXPRESS] > totals[SpeedTier.STANDARD] > totals[SpeedTier.ECONOMY]
    road = _road_m(LAXMIPUR, BETTIAH)
    assert totals[SpeedTier.EXPRESS] == _bicycle_total(road, 14000)
    assert totals[SpeedTier.ECONOMY] == _bicycle_total(road, 8500)


def test_surge_in_the_pickup_area_raises_the_fare_up_to_the_card_cap(clean_db):
    cid = _customer()
    plain = _book(cid)
    surge.set_surge_bp("845450", 20000)  # x2.00 asked; the default card caps surge at x1.50
    surged = _book(cid)
    road = _road_m(LAXMIPUR, BETTIAH)
    assert surged.total_paise > plain.total_paise
    assert surged.total_paise == _bicycle_total(road, 10000, 15000)
    assert surged.total_paise < _bicycle_total(road, 10000, 20000)  # the cap bit
    pure = quote(
        DEFAULT_RATE_CARD,
        distance_m=surged.distance_m,
        vehicle="bicycle",
        size="bag",
        weight="w5",
        tier="standard",
        surge_bp=20000,
    )
    assert surged.total_paise == pure.total_paise
    assert surged.fare["surge_bp"] == 15000
    assert any(
        line["code"] == "surge" and line["amount_paise"] > 0 for line in surged.fare["lines"]
    )
    # Surge is per pickup area: a trip starting elsewhere pays the plain fare.
    reverse = Place(BETTIAH.lat, BETTIAH.lng, pincode="845438")
    with transaction() as s:
        other = create_booking(
            s,
            customer_id=cid,
            channel="sms",
            pickup=reverse,
            drop=LAXMIPUR,
            parcel=BAG,
            tier=SpeedTier.STANDARD,
            recipient_name=None,
            recipient_phone=None,
            actor=Actor("customer", str(cid)),
        )
        assert other.fare["surge_bp"] == 10000


def test_invalid_transition_raises_and_leaves_the_booking_unchanged(clean_db):
    b = _book(_customer())
    before = _count(TransitionLog)
    with pytest.raises(InvalidTransition) as info:
        with transaction() as s:
            booking = s.get(Booking, b.id)
            assert booking is not None
            move_booking(s, booking, BookingStatus.DELIVERED, Actor("ops", "7"), "skip ahead")
    assert info.value.code == "invalid_transition"
    with transaction() as s:
        booking = s.get(Booking, b.id)
        assert booking is not None and booking.status == "quoted"
        assert booking.version == b.version
    assert _count(TransitionLog) == before
    assert _count(TransitionLog, TransitionLog.to_status == "delivered") == 0


def test_get_booking_accepts_spaced_reference_and_rejects_unknown(clean_db):
    b = _book(_customer())
    ref = b.reference
    with transaction() as s:
        assert get_booking(s, f"{ref[:4]} {ref[4:]}").id == b.id
        assert get_booking(s, f" {ref[:4]}-{ref[4:]} ").id == b.id
        assert get_booking(s, ref, for_update=True).id == b.id
        # A well-formed reference that no booking has.
        body = "1234567" if ref[:7] != "1234567" else "7654321"
        unknown = body + verhoeff_check_digit(body)
        assert unknown != ref
        for bad in (unknown, "abc", "", "1234"):
            with pytest.raises(NotFound) as info:
                get_booking(s, bad)
            assert info.value.code == "unknown_booking"


def test_leg_otps_check_right_wrong_and_kind(clean_db):
    b = _book(_customer())
    with transaction() as s:
        leg = s.scalars(select(Leg).where(Leg.booking_id == b.id)).one()
        pickup, drop = issue_leg_otps(leg)
        while pickup == drop:  # 1 in 10 000: the cross-kind check below needs two codes
            pickup, drop = issue_leg_otps(leg)
        leg_id = leg.id
    assert len(pickup) == 4 and pickup.isdigit() and len(drop) == 4 and drop.isdigit()

    with transaction() as s:  # fresh from the database, not the object that made them
        leg = s.get(Leg, leg_id)
        assert leg is not None
        assert check_leg_otp(leg, "pickup", pickup) is True
        assert check_leg_otp(leg, "drop", drop) is True
        assert check_leg_otp(leg, "pickup", f" {pickup} ") is True
        wrong = f"{(int(pickup) + 1) % 10000:04d}"
        assert check_leg_otp(leg, "pickup", wrong) is False
        assert check_leg_otp(leg, "drop", pickup) is False
        assert check_leg_otp(leg, "pickup", drop) is False
        assert check_leg_otp(leg, "pickup", "") is False

        for code, stored, kind in (
            (pickup, leg.pickup_otp_hash, "pickup"),
            (drop, leg.drop_otp_hash, "drop"),
        ):
            assert stored is not None and stored != code and code not in stored
            assert len(stored) == 64 and stored != hashlib.sha256(code.encode()).hexdigest()
            # Keyed with the service secret and bound to this leg and end.
            expected = hmac.new(
                get_settings().otp_key, f"leg:{leg_id}:{kind}:{code}".encode(), hashlib.sha256
            ).hexdigest()
            assert stored == expected


def test_leg_without_otps_accepts_no_code(clean_db):
    b = _book(_customer())
    with transaction() as s:
        leg = s.scalars(select(Leg).where(Leg.booking_id == b.id)).one()
        assert check_leg_otp(leg, "pickup", "0000") is False
        assert check_leg_otp(leg, "drop", "1234") is False


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE transitions SET reason = 'rewritten history'",
        "UPDATE transitions SET to_status = 'delivered' WHERE to_status = 'quoted'",
        "DELETE FROM transitions",
    ],
)
def test_transitions_are_append_only_in_the_database(clean_db, statement):
    _book(_customer())
    before = _history_snapshot()
    assert len(before) == 3
    with pytest.raises(DBAPIError, match="append-only"):
        with transaction() as s:
            s.execute(text(statement))
    assert _history_snapshot() == before


def _history_snapshot() -> list[tuple]:
    with transaction() as s:
        return [
            tuple(r)
            for r in s.execute(
                text(
                    "SELECT id, entity, entity_id, from_status, to_status, actor, reason "
                    "FROM transitions ORDER BY id"
                )
            )
        ]


def test_two_sessions_moving_the_same_booking_cannot_both_win(clean_db):
    b = _book(_customer())
    factory = session_factory()
    a, c = factory(), factory()
    try:
        a.begin()
        c.begin()
        ba = a.get(Booking, b.id)
        bc = c.get(Booking, b.id)
        assert ba is not None and bc is not None
        assert ba.status == bc.status == "quoted" and ba.version == bc.version
        move_booking(a, ba, BookingStatus.AWAITING_PAYMENT, Actor("customer"), "pay now")
        move_booking(c, bc, BookingStatus.CANCELLED, Actor("ops", "1"), "customer rang")
        a.commit()  # first writer wins
        with pytest.raises(StaleDataError):
            c.commit()  # its UPDATE ... WHERE version = <old> now matches no row
        c.rollback()
    finally:
        a.close()
        c.close()

    with transaction() as s:
        final = s.get(Booking, b.id)
        assert final is not None
        assert final.status == "awaiting_payment"
        assert final.version == b.version + 1
    history = _history("booking", b.id)
    assert [h.to_status for h in history] == ["draft", "quoted", "awaiting_payment"]
    assert history[-1].from_status == "quoted"
    assert _count(TransitionLog, TransitionLog.to_status == "cancelled") == 0


def test_recipient_phone_is_normalised_to_e164(clean_db):
    b = _book(_customer(), recipient_phone="098765 43210")
    with transaction() as s:
        booking = s.get(Booking, b.id)
        assert booking is not None and booking.recipient_phone == "+919876543210"


@pytest.mark.parametrize("bad", ["12345", "+91 12345 67890", "not a phone"])
def test_bad_recipient_phone_raises_and_saves_nothing(clean_db, bad):
    cid = _customer()
    with pytest.raises(ValidationError) as info:
        _book(cid, recipient_phone=bad)
    assert info.value.code == "bad_phone"
    assert _count(Booking) == 0
    assert _count(Leg) == 0
    assert _count(Parcel) == 0
    assert _count(TransitionLog) == 0


def test_negative_declared_value_is_refused(clean_db):
    cid = _customer()
    with pytest.raises(ValidationError):
        with transaction() as s:
            create_booking(
                s,
                customer_id=cid,
                channel="sms",
                pickup=LAXMIPUR,
                drop=BETTIAH,
                parcel=ParcelSpec("documents", "bag", "w5", declared_value_paise=-1),
                tier=SpeedTier.STANDARD,
                recipient_name=None,
                recipient_phone=None,
                actor=Actor.system(),
            )
    assert _count(Booking) == 0

"""Booking/leg state machines, transition records and the cancellation policy.

The transition lists below are the spec, written out by hand; they are deliberately not
derived from the module's tables.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from core.domain.booking import (
    BOOKING,
    LEG,
    Actor,
    BookingStatus,
    CancellationQuote,
    LegStatus,
    Transition,
    cancellation_refund,
    transition,
)
from core.domain.errors import InvalidTransition, ValidationError

BOOKING_ALLOWED = [
    ("draft", "quoted"),
    ("draft", "cancelled"),
    ("quoted", "quoted"),
    ("quoted", "awaiting_payment"),
    ("quoted", "cancelled"),
    ("quoted", "expired"),
    ("awaiting_payment", "paid"),
    ("awaiting_payment", "cancelled"),
    ("awaiting_payment", "expired"),
    ("paid", "dispatching"),
    ("paid", "cancelled"),
    ("dispatching", "assigned"),
    ("dispatching", "failed"),
    ("dispatching", "cancelled"),
    ("assigned", "picked_up"),
    ("assigned", "dispatching"),
    ("assigned", "cancelled"),
    ("picked_up", "in_transit"),
    ("picked_up", "delivered"),
    ("picked_up", "failed"),
    ("in_transit", "delivered"),
    ("in_transit", "failed"),
    ("cancelled", "refunded"),
    ("failed", "refunded"),
]

LEG_ALLOWED = [
    ("pending", "offering"),
    ("pending", "cancelled"),
    ("offering", "assigned"),
    ("offering", "pending"),
    ("offering", "failed"),
    ("offering", "cancelled"),
    ("assigned", "picked_up"),
    ("assigned", "offering"),
    ("assigned", "locked"),
    ("assigned", "cancelled"),
    ("picked_up", "delivered"),
    ("picked_up", "locked"),
    ("picked_up", "failed"),
    ("locked", "assigned"),
    ("locked", "picked_up"),
    ("locked", "failed"),
    ("locked", "cancelled"),
]

BOOKING_FORBIDDEN = [
    ("delivered", "cancelled"),
    ("draft", "paid"),
    ("refunded", "paid"),
    ("picked_up", "cancelled"),
    ("in_transit", "cancelled"),
    ("in_transit", "in_transit"),
    ("in_transit", "dispatching"),
    ("picked_up", "dispatching"),
    ("expired", "paid"),
    ("expired", "refunded"),
    ("delivered", "refunded"),
    ("cancelled", "paid"),
    ("paid", "refunded"),
    ("awaiting_payment", "dispatching"),
    ("draft", "draft"),
    ("paid", "paid"),
    ("refunded", "refunded"),
]

LEG_FORBIDDEN = [
    ("pending", "assigned"),
    ("delivered", "cancelled"),
    ("cancelled", "offering"),
    ("failed", "offering"),
    ("picked_up", "cancelled"),
    ("picked_up", "assigned"),
    ("locked", "delivered"),
    ("pending", "locked"),
    ("offering", "offering"),
]

NOW = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)


def test_statuses_are_the_lowercase_strings() -> None:
    assert [s.value for s in BookingStatus] == [
        "draft",
        "quoted",
        "awaiting_payment",
        "paid",
        "dispatching",
        "assigned",
        "picked_up",
        "in_transit",
        "delivered",
        "cancelled",
        "expired",
        "refunded",
        "failed",
    ]
    assert {s.value for s in LegStatus} == {
        "pending",
        "offering",
        "assigned",
        "picked_up",
        "delivered",
        "cancelled",
        "failed",
        "locked",
    }


@pytest.mark.parametrize(("frm", "to"), BOOKING_ALLOWED)
def test_booking_allowed(frm: str, to: str) -> None:
    assert BOOKING.can(frm, to)
    BOOKING.check(BookingStatus(frm), BookingStatus(to))
    assert BookingStatus(to) in BOOKING.allowed(frm)


@pytest.mark.parametrize(("frm", "to"), LEG_ALLOWED)
def test_leg_allowed(frm: str, to: str) -> None:
    assert LEG.can(frm, to)
    LEG.check(LegStatus(frm), LegStatus(to))


def test_allowed_lists_are_exhaustive() -> None:
    # Every pair not in the hand-written lists must be refused.
    for machine, states, allowed in (
        (BOOKING, BookingStatus, BOOKING_ALLOWED),
        (LEG, LegStatus, LEG_ALLOWED),
    ):
        for frm in states:
            for to in states:
                assert machine.can(frm, to) == ((frm.value, to.value) in allowed), (frm, to)


@pytest.mark.parametrize(("frm", "to"), BOOKING_FORBIDDEN)
def test_booking_forbidden(frm: str, to: str) -> None:
    assert not BOOKING.can(frm, to)
    with pytest.raises(InvalidTransition) as err:
        BOOKING.check(frm, to)
    assert err.value.code == "invalid_transition"
    assert "booking" in err.value.message
    assert frm in err.value.message and to in err.value.message


@pytest.mark.parametrize(("frm", "to"), LEG_FORBIDDEN)
def test_leg_forbidden(frm: str, to: str) -> None:
    with pytest.raises(InvalidTransition) as err:
        LEG.check(frm, to)
    assert "leg" in err.value.message


def test_unknown_status_is_refused_not_crashing() -> None:
    assert not BOOKING.can("paid", "teleported")
    with pytest.raises(InvalidTransition):
        BOOKING.check("limbo", "paid")


def test_terminal_states() -> None:
    for s in ("delivered", "expired", "refunded", "cancelled", "failed"):
        assert BOOKING.terminal(s), s
    for s in ("draft", "quoted", "awaiting_payment", "paid", "dispatching", "assigned"):
        assert not BOOKING.terminal(s), s
    assert not BOOKING.terminal("picked_up") and not BOOKING.terminal("in_transit")
    # cancelled and failed are closed, yet may still be refunded
    assert BOOKING.allowed("cancelled") == {BookingStatus.REFUNDED}
    assert BOOKING.allowed("failed") == {BookingStatus.REFUNDED}
    for s in ("delivered", "expired", "refunded"):
        assert BOOKING.allowed(s) == frozenset()
    for s in ("delivered", "cancelled", "failed"):
        assert LEG.terminal(s), s
    for s in ("pending", "offering", "assigned", "picked_up", "locked"):
        assert not LEG.terminal(s), s


def test_creation_only_in_initial_state() -> None:
    assert BOOKING.can(None, "draft")
    assert not BOOKING.can(None, "paid")
    assert LEG.can(None, "pending")
    with pytest.raises(InvalidTransition):
        LEG.check(None, "assigned")


def test_actor() -> None:
    assert str(Actor("partner", "42")) == "partner:42"
    assert str(Actor.system()) == "system"
    assert Actor.system().kind == "system" and Actor.system().id is None
    with pytest.raises(ValueError):
        Actor("hacker", "1")  # type: ignore[arg-type]


def test_transition_record() -> None:
    actor = Actor("customer", "7")
    t = transition(BOOKING, 123, "quoted", "awaiting_payment", actor, "customer said yes", NOW)
    assert t == Transition(
        entity="booking",
        entity_id="123",
        from_status="quoted",
        to_status="awaiting_payment",
        actor=actor,
        reason="customer said yes",
        at=NOW,
    )
    created = transition(LEG, "9", None, LegStatus.PENDING, Actor.system(), "booking created", NOW)
    assert created.from_status is None and created.entity == "leg"


def test_transition_accepts_any_aware_timezone() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    t = transition(LEG, "1", "pending", "offering", Actor.system(), "paid", NOW.astimezone(ist))
    assert t.at == NOW


def test_transition_refuses_bad_input() -> None:
    naive = datetime(2025, 3, 1, 9, 30)
    with pytest.raises(ValueError):
        transition(BOOKING, "1", "draft", "quoted", Actor.system(), "priced", naive)
    for reason in ("", "   "):
        with pytest.raises(ValueError):
            transition(BOOKING, "1", "draft", "quoted", Actor.system(), reason, NOW)
    with pytest.raises(InvalidTransition):
        transition(BOOKING, "1", "delivered", "cancelled", Actor("ops", "3"), "oops", NOW)


# --- cancellation ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["draft", "quoted", "awaiting_payment"])
def test_cancel_before_payment_refunds_nothing(status: str) -> None:
    assert cancellation_refund(BookingStatus(status), 0) == CancellationQuote(
        True, 0, 0, "not_paid"
    )


@pytest.mark.parametrize("status", ["paid", "dispatching"])
def test_cancel_before_assignment_is_full_refund(status: str) -> None:
    q = cancellation_refund(status, 6800)
    assert q.allowed and q.refund_paise == 6800 and q.fee_paise == 0


def test_cancel_when_assigned_costs_a_fee() -> None:
    # 10 % of ₹500 = ₹50 (above the ₹10 floor): refund 50000 - 5000 = 45000
    q = cancellation_refund(BookingStatus.ASSIGNED, 50000)
    assert q == CancellationQuote(True, 45000, 5000, "cancellation_fee")
    # 10 % of ₹68 = ₹6.80, below the ₹10 floor: fee 1000, refund 5800
    q = cancellation_refund(BookingStatus.ASSIGNED, 6800)
    assert (q.allowed, q.refund_paise, q.fee_paise) == (True, 5800, 1000)
    # 10 % of ₹25 = ₹2.50, below the ₹10 floor: fee 1000, refund 1500
    q = cancellation_refund("assigned", 2500)
    assert (q.refund_paise, q.fee_paise) == (1500, 1000)
    # fee never exceeds what was paid: ₹6 paid -> fee 600, refund 0
    q = cancellation_refund("assigned", 600)
    assert (q.refund_paise, q.fee_paise) == (0, 600)
    # 10 % of 10005 = 1000.5 -> half-up 1001
    q = cancellation_refund("assigned", 10005)
    assert (q.refund_paise, q.fee_paise) == (9004, 1001)
    # custom rate: 5 % of 50000 = 2500
    q = cancellation_refund("assigned", 50000, fee_bp=500)
    assert (q.refund_paise, q.fee_paise) == (47500, 2500)


def test_delivered_legs_payout_is_not_refunded() -> None:
    # 20000 paid, 8000 already earned by a delivered relay leg: 12000 refundable
    q = cancellation_refund("paid", 20000, delivered_legs_payout_paise=8000)
    assert q.refund_paise == 12000
    # assigned: fee 10 % of 12000 = 1200
    q = cancellation_refund("assigned", 20000, delivered_legs_payout_paise=8000)
    assert (q.refund_paise, q.fee_paise) == (10800, 1200)


@pytest.mark.parametrize("status", ["picked_up", "in_transit", "delivered"])
def test_cannot_cancel_after_pickup(status: str) -> None:
    q = cancellation_refund(status, 6800)
    assert q == CancellationQuote(False, 0, 0, "already_picked_up")


@pytest.mark.parametrize("status", ["cancelled", "expired", "refunded", "failed"])
def test_cannot_cancel_closed_booking(status: str) -> None:
    assert cancellation_refund(status, 6800).reason_code == "already_closed"
    assert not cancellation_refund(status, 6800).allowed


def test_cancellation_rejects_bad_amounts() -> None:
    with pytest.raises(ValidationError):
        cancellation_refund("paid", -1)
    with pytest.raises(ValidationError):
        cancellation_refund("paid", 100, delivered_legs_payout_paise=200)
    with pytest.raises(ValidationError):
        cancellation_refund("paid", 100.0)  # type: ignore[arg-type]

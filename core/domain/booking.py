"""Booking and leg state machines, transition records and the cancellation policy.

Why the transitions are what they are:

* A booking is priced (``quoted``, re-quotable while the customer haggles over size or tier),
  then waits for money (``awaiting_payment``). A quote or unpaid booking may ``expire``.
* Money in hand (``paid``) starts ``dispatching``. ``assigned`` may fall back to
  ``dispatching`` when the partner drops out, so a booking is re-allocated, not failed.
* Once the parcel is picked up the customer can no longer cancel: only delivery or failure
  remain. ``in_transit`` also covers "between relay legs": the next leg is dispatched at
  leg level while the booking stays in transit, so the booking never goes back to
  ``dispatching`` after pickup and has no self loop there.
* ``delivered``, ``expired`` and ``refunded`` are final. ``cancelled`` and ``failed`` close the
  journey too; their one way out is ``refunded``, a money-only follow-up.
* A relay stuck for want of a rider (the parcel in one rider's hands, a later leg's search
  past its deadline) is ended by ops as a failure, not a cancellation: the delivery could
  not be finished (``cancellation_refund``'s ``stuck_leg_payout_paise``).

Legs: ``pending`` until the booking is paid or the previous relay leg is delivered;
``offering`` while offers cascade (back to ``pending`` if the search is paused);
``assigned`` may go back to ``offering`` when the partner gives up; too many wrong OTPs
``lock`` a leg until ops put it back where it was or fail it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Generic, Literal, TypeVar

from core.domain.errors import InvalidTransition, ValidationError
from core.domain.pricing import mul_bp


class BookingStatus(StrEnum):
    """Where a booking is in its life, from first message to money settled."""

    DRAFT = "draft"
    QUOTED = "quoted"
    AWAITING_PAYMENT = "awaiting_payment"
    PAID = "paid"
    DISPATCHING = "dispatching"
    ASSIGNED = "assigned"
    PICKED_UP = "picked_up"
    IN_TRANSIT = "in_transit"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REFUNDED = "refunded"
    FAILED = "failed"


class LegStatus(StrEnum):
    """Where one leg (one partner's ride) is; a direct booking has exactly one leg."""

    PENDING = "pending"
    OFFERING = "offering"
    ASSIGNED = "assigned"
    PICKED_UP = "picked_up"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    FAILED = "failed"
    LOCKED = "locked"


S = TypeVar("S", bound=StrEnum)


class StateMachine(Generic[S]):
    """A named table of allowed transitions; ``check`` is the single gate every change uses.

    ``initial`` are the states an entity may be created in (``frm=None``); ``closed`` are the
    states counted as terminal (defaults to the states with no way out).
    """

    def __init__(
        self,
        name: str,
        transitions: Mapping[S, frozenset[S]],
        *,
        initial: Iterable[S],
        closed: Iterable[S] | None = None,
    ) -> None:
        if not transitions:
            raise ValueError("a state machine needs at least one state")
        self.name = name
        self.states: type[S] = type(next(iter(transitions)))
        missing = set(self.states) - set(transitions)
        if missing:
            raise ValueError(f"{name}: no transition entry for {sorted(missing)}")
        self._transitions: dict[S, frozenset[S]] = {
            self.states(k): frozenset(self.states(t) for t in v) for k, v in transitions.items()
        }
        self.initial: frozenset[S] = frozenset(self.states(s) for s in initial)
        if closed is None:
            self.closed: frozenset[S] = frozenset(s for s, t in self._transitions.items() if not t)
        else:
            self.closed = frozenset(self.states(s) for s in closed)

    def __repr__(self) -> str:
        return f"StateMachine({self.name!r})"

    def allowed(self, frm: S | str | None) -> frozenset[S]:
        """States reachable in one step from ``frm`` (None: creation); ValueError if unknown."""
        if frm is None:
            return self.initial
        return self._transitions[self.states(frm)]

    def can(self, frm: S | str | None, to: S | str) -> bool:
        """True if ``frm -> to`` is allowed; unknown statuses are simply not allowed."""
        try:
            return self.states(to) in self.allowed(frm)
        except ValueError:
            return False

    def check(self, frm: S | str | None, to: S | str) -> None:
        """Raise InvalidTransition (code ``invalid_transition``) unless ``frm -> to`` is allowed."""
        if not self.can(frm, to):
            shown = "(new)" if frm is None else str(frm)
            raise InvalidTransition(
                f"{self.name} cannot go from {shown} to {to}", code="invalid_transition"
            )

    def terminal(self, s: S | str) -> bool:
        """True if the entity's journey is over in state ``s``."""
        return self.states(s) in self.closed


B = BookingStatus
BOOKING_TRANSITIONS: dict[BookingStatus, frozenset[BookingStatus]] = {
    B.DRAFT: frozenset({B.QUOTED, B.CANCELLED}),
    B.QUOTED: frozenset({B.QUOTED, B.AWAITING_PAYMENT, B.CANCELLED, B.EXPIRED}),
    B.AWAITING_PAYMENT: frozenset({B.PAID, B.CANCELLED, B.EXPIRED}),
    B.PAID: frozenset({B.DISPATCHING, B.CANCELLED}),
    B.DISPATCHING: frozenset({B.ASSIGNED, B.FAILED, B.CANCELLED}),
    B.ASSIGNED: frozenset({B.PICKED_UP, B.DISPATCHING, B.CANCELLED}),
    B.PICKED_UP: frozenset({B.IN_TRANSIT, B.DELIVERED, B.FAILED}),
    B.IN_TRANSIT: frozenset({B.DELIVERED, B.FAILED}),
    B.DELIVERED: frozenset(),
    B.CANCELLED: frozenset({B.REFUNDED}),
    B.EXPIRED: frozenset(),
    B.REFUNDED: frozenset(),
    B.FAILED: frozenset({B.REFUNDED}),
}

L = LegStatus
LEG_TRANSITIONS: dict[LegStatus, frozenset[LegStatus]] = {
    L.PENDING: frozenset({L.OFFERING, L.CANCELLED}),
    L.OFFERING: frozenset({L.ASSIGNED, L.PENDING, L.FAILED, L.CANCELLED}),
    L.ASSIGNED: frozenset({L.PICKED_UP, L.OFFERING, L.LOCKED, L.CANCELLED}),
    L.PICKED_UP: frozenset({L.DELIVERED, L.LOCKED, L.FAILED}),
    L.LOCKED: frozenset({L.ASSIGNED, L.PICKED_UP, L.FAILED, L.CANCELLED}),
    L.DELIVERED: frozenset(),
    L.CANCELLED: frozenset(),
    L.FAILED: frozenset(),
}

BOOKING: StateMachine[BookingStatus] = StateMachine(
    "booking",
    BOOKING_TRANSITIONS,
    initial={B.DRAFT},
    closed={B.DELIVERED, B.CANCELLED, B.EXPIRED, B.REFUNDED, B.FAILED},
)
LEG: StateMachine[LegStatus] = StateMachine("leg", LEG_TRANSITIONS, initial={L.PENDING})

ActorKind = Literal["customer", "partner", "ops", "system"]
_ACTOR_KINDS = frozenset({"customer", "partner", "ops", "system"})


@dataclass(frozen=True)
class Actor:
    """Who caused a change, recorded with every transition for the audit trail."""

    kind: ActorKind
    id: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _ACTOR_KINDS:
            raise ValueError(f"unknown actor kind {self.kind!r}")

    @classmethod
    def system(cls) -> Actor:
        """The service itself (timeouts, webhooks, schedulers)."""
        return cls("system")

    def __str__(self) -> str:
        return self.kind if self.id is None else f"{self.kind}:{self.id}"


@dataclass(frozen=True)
class Transition:
    """One checked state change, ready for the services to persist (who, when, why)."""

    entity: str
    entity_id: str
    from_status: str | None
    to_status: str
    actor: Actor
    reason: str
    at: datetime


def transition(
    machine: StateMachine[S],
    entity_id: str | int,
    frm: S | str | None,
    to: S | str,
    actor: Actor,
    reason: str,
    at: datetime,
) -> Transition:
    """Check ``frm -> to`` on ``machine`` and return the record; raises InvalidTransition.

    ``at`` must be timezone-aware (naive times are ambiguous across servers) and ``reason``
    non-empty, so every row in the history says why.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("transition time must be timezone-aware")
    if not reason or not reason.strip():
        raise ValueError("transition reason must not be empty")
    machine.check(frm, to)
    return Transition(
        entity=machine.name,
        entity_id=str(entity_id),
        from_status=None if frm is None else machine.states(frm),
        to_status=machine.states(to),
        actor=actor,
        reason=reason.strip(),
        at=at,
    )


CANCELLATION_FEE_BP = 1000
CANCELLATION_MIN_FEE_PAISE = 1000

RIDER_LATE = "rider_late"  # the reason code of a cancellation free for a late rider

_BEFORE_PAYMENT = frozenset({B.DRAFT, B.QUOTED, B.AWAITING_PAYMENT})
_FULL_REFUND = frozenset({B.PAID, B.DISPATCHING})
_PICKED_UP = frozenset({B.PICKED_UP, B.IN_TRANSIT, B.DELIVERED})
_STUCK_ENDABLE = frozenset({B.PICKED_UP, B.IN_TRANSIT})  # on the way, not delivered


@dataclass(frozen=True)
class CancellationQuote:
    """What cancelling now would mean: allowed or not, and how the paid money splits."""

    allowed: bool
    refund_paise: int
    fee_paise: int
    reason_code: str


def cancellation_refund(
    status: BookingStatus | str,
    paid_paise: int,
    delivered_legs_payout_paise: int = 0,
    fee_bp: int = CANCELLATION_FEE_BP,
    *,
    min_fee_paise: int = CANCELLATION_MIN_FEE_PAISE,
    stuck_leg_payout_paise: int | None = None,
    rider_late: bool = False,
    refunded_outside_paise: int = 0,
) -> CancellationQuote:
    """Refund and fee for a customer cancelling in ``status``.

    Before payment: allowed, nothing to refund. Paid/dispatching: full refund. Assigned: a
    fee (``fee_bp`` of the refundable amount, at least ``min_fee_paise``, never more than it)
    pays the partner's wasted trip; none if the rider is late for the pickup (``rider_late``:
    past his pickup window, he did not keep his time), a full refund then. After pickup or
    once closed: not allowed. Payout already earned by delivered legs is never refundable.

    ``refunded_outside_paise``: what support gave back of the payment outside the service
    (the Razorpay dashboard), already taken out of ``paid_paise``. Support's refund is the
    platform's cost, not the rider's: his fee is what it would be without it (of the
    refundable amount with it added back), the platform paying what the payment lacks of
    it, and the customer gets back only what is left beyond the fee.

    One exception after pickup, for ops only (the caller decides who may): a relay stuck
    for want of a rider, ``stuck_leg_payout_paise`` being the payout of the leg whose rider
    holds the parcel. He rode it, so it is his fee (never more than is refundable); the
    customer gets the rest back, the platform's commission on the unfinished trip too.
    """
    for name, value in (
        ("paid_paise", paid_paise),
        ("delivered_legs_payout_paise", delivered_legs_payout_paise),
        ("fee_bp", fee_bp),
        ("min_fee_paise", min_fee_paise),
        ("stuck_leg_payout_paise", 0 if stuck_leg_payout_paise is None
         else stuck_leg_payout_paise),
        ("refunded_outside_paise", refunded_outside_paise),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValidationError(f"{name} must be a non-negative integer", field=name)
    if delivered_legs_payout_paise > paid_paise:
        raise ValidationError(
            "delivered legs cannot have earned more than was paid",
            field="delivered_legs_payout_paise",
        )
    st = BookingStatus(status)
    refundable = paid_paise - delivered_legs_payout_paise
    if st in _BEFORE_PAYMENT:
        return CancellationQuote(True, 0, 0, "not_paid")
    if st in _FULL_REFUND:
        return CancellationQuote(True, refundable, 0, "full_refund")
    if st is B.ASSIGNED and rider_late:
        return CancellationQuote(True, refundable, 0, RIDER_LATE)
    if st is B.ASSIGNED:
        owed = refundable + refunded_outside_paise
        fee = min(max(mul_bp(owed, fee_bp), min_fee_paise), owed)
        return CancellationQuote(True, max(0, refundable - fee), fee, "cancellation_fee")
    if st in _STUCK_ENDABLE and stuck_leg_payout_paise is not None:
        fee = min(stuck_leg_payout_paise, refundable)
        return CancellationQuote(True, refundable - fee, fee, "stuck_relay")
    if st in _PICKED_UP:
        return CancellationQuote(False, 0, 0, "already_picked_up")
    return CancellationQuote(False, 0, 0, "already_closed")

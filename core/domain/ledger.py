"""Ledger postings: the money rules as pure data (no database, no gateway).

A journal entry is a set of postings that sum to zero. A posting's amount is signed from
the account's point of view: positive puts money in the account's bucket, negative takes
it out. ``gateway_clearing`` is the outside world as the gateway sees it (it goes negative
when a customer pays us and comes back when a refund or a partner transfer leaves), so the
sum over every account is always zero and every other balance reads naturally:

* ``escrow`` per booking: what the customer paid and is not yet earned or refunded (>= 0);
* ``partner_payable`` per partner: earned by delivered legs, not yet transferred;
* ``platform_commission``: the platform's share of delivered legs;
* ``refunds_pending`` per booking: refunds asked of the gateway, not yet settled;
* ``reversed_payouts`` per booking: partner payouts reversed after they were made (the
  money back in the platform's balance), owed again to the partner or to the customer as
  ops decide (>= 0): ``reversal_repaid`` makes it the partner's payable again (a direct
  transfer pays it), ``reversal_refund_asked`` reserves it for a refund to the customer
  (``refund_processed`` settles it; ``reversal_refund_failed`` brings it back);
  ``reversal_written_off`` gives one under the gateway's minimum (it can be neither paid
  nor refunded) to the platform's commission.

Support's refund is the platform's cost: a refund made outside the service (the Razorpay
dashboard) takes what escrow holds of it, and the platform's commission gives the rest
(``outside_refund_platform``); a leg delivered after one is paid in full, its payout's
shortfall given by the platform's commission too (``release_platform``), and so is a
rider's cancellation fee: the assigned rider's when the booking is cancelled, the one
holding the parcel of a relay ops end (a ``release_platform`` keyed by the fee:
``fee_platform``). Both kinds put the money in the booking's escrow just before
the entry that takes it out, so escrow never goes below zero; ``platform_commission``
may (the platform gave more than it earned).

A booking's own refund under the gateway's least (1-99 paise: left by a refund made
outside the service of an amount not in whole rupees) can be neither refunded nor paid
to anyone: ``remainder_kept`` takes it out of the closed booking's escrow for the
platform's commission, so no escrow holds money for good that nobody can move.

Razorpay keeps its fee (GST included) on each captured payment out of the platform's
balance: ``gateway_fee`` moves it from the platform's commission to ``gateway_fees`` (money
gone to the gateway, like ``gateway_clearing``), so what the platform's accounts hold is
what its Razorpay balance holds; the booking's escrow and the partners' payouts do not
change (the platform bears the fee). Route's fee on each transfer it processes is booked
the same way (``transfer_fee``: a ``gateway_fee`` entry keyed by the transfer).

Every entry has an idempotency key derived from what caused it (a gateway payment id, a
leg id, our refund id), so recording the same cause twice is a no-op in the database; the
same key sent with another entry (another kind or other postings) is refused
(``EntryConflict``), never taken for a retry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from core.domain.errors import Conflict, ValidationError


class AccountKind(StrEnum):
    GATEWAY_CLEARING = "gateway_clearing"
    ESCROW = "escrow"
    PARTNER_PAYABLE = "partner_payable"
    PLATFORM_COMMISSION = "platform_commission"
    REFUNDS_PENDING = "refunds_pending"
    REVERSED_PAYOUTS = "reversed_payouts"
    GATEWAY_FEES = "gateway_fees"


class EntryKind(StrEnum):
    CAPTURE = "capture"
    RELEASE = "release"
    CANCELLATION_FEE = "cancellation_fee"
    REFUND_REQUESTED = "refund_requested"
    REFUND_PROCESSED = "refund_processed"
    REFUND_FAILED = "refund_failed"
    TRANSFER_PROCESSED = "transfer_processed"
    TRANSFER_FAILED = "transfer_failed"
    TRANSFER_REVERSED = "transfer_reversed"
    REVERSAL_REPAID = "reversal_repaid"
    REVERSAL_REFUND_ASKED = "reversal_refund_asked"
    REVERSAL_REFUND_FAILED = "reversal_refund_failed"
    REVERSAL_WRITTEN_OFF = "reversal_written_off"
    OUTSIDE_REFUND_PLATFORM = "outside_refund_platform"
    RELEASE_PLATFORM = "release_platform"
    REMAINDER_KEPT = "remainder_kept"
    GATEWAY_FEE = "gateway_fee"


# Accounts whose balance may never go below zero (checked at write time, under a lock).
NON_NEGATIVE = frozenset({AccountKind.ESCROW, AccountKind.REFUNDS_PENDING,
                          AccountKind.REVERSED_PAYOUTS})


class InsufficientEscrow(Conflict):
    """A release or refund would take more out of a booking than is left in escrow."""

    code = "insufficient_escrow"


class EntryConflict(Conflict):
    """An entry sent under an idempotency key the ledger holds for another entry (another
    kind, or other postings): not a retry, and not recorded. Two paths computing one
    cause's entry differently, or a cause told twice with different amounts."""

    code = "ledger_entry_conflict"


@dataclass(frozen=True)
class Account:
    kind: AccountKind
    booking_id: int | None = None
    partner_id: int | None = None

    def __post_init__(self) -> None:
        per_booking = self.kind in (AccountKind.ESCROW, AccountKind.REFUNDS_PENDING,
                                    AccountKind.REVERSED_PAYOUTS)
        if per_booking != (self.booking_id is not None):
            raise ValueError(f"{self.kind} account needs a booking id exactly when per booking")
        if (self.kind is AccountKind.PARTNER_PAYABLE) != (self.partner_id is not None):
            raise ValueError("partner_payable accounts (only) carry a partner id")

    @property
    def key(self) -> str:
        """Stable account name stored on every posting (``escrow:b12``, ``partner_payable:p3``)."""
        if self.booking_id is not None:
            return f"{self.kind}:b{self.booking_id}"
        if self.partner_id is not None:
            return f"{self.kind}:p{self.partner_id}"
        return str(self.kind)


GATEWAY = Account(AccountKind.GATEWAY_CLEARING)
COMMISSION = Account(AccountKind.PLATFORM_COMMISSION)
FEES = Account(AccountKind.GATEWAY_FEES)


def escrow(booking_id: int) -> Account:
    return Account(AccountKind.ESCROW, booking_id=booking_id)


def refunds_pending(booking_id: int) -> Account:
    return Account(AccountKind.REFUNDS_PENDING, booking_id=booking_id)


def payable(partner_id: int) -> Account:
    return Account(AccountKind.PARTNER_PAYABLE, partner_id=partner_id)


def reversed_payouts(booking_id: int) -> Account:
    return Account(AccountKind.REVERSED_PAYOUTS, booking_id=booking_id)


@dataclass(frozen=True)
class Posting:
    account: Account
    amount_paise: int
    leg_id: int | None = None


@dataclass(frozen=True)
class Entry:
    """One journal transaction: balanced postings plus why and for which booking."""

    kind: EntryKind
    idempotency_key: str
    booking_id: int | None
    postings: tuple[Posting, ...]
    memo: str = ""
    gateway_ref: str | None = field(default=None)

    def __post_init__(self) -> None:
        if not self.idempotency_key or len(self.idempotency_key) > 120:
            raise ValueError("an entry needs an idempotency key of at most 120 chars")
        if len(self.postings) < 2:
            raise ValueError("an entry needs at least two postings")
        for p in self.postings:
            if isinstance(p.amount_paise, bool) or not isinstance(p.amount_paise, int):
                raise ValueError("posting amounts are integer paise")
            if p.amount_paise == 0:
                raise ValueError("a posting of zero paise means nothing; leave it out")
        if sum(p.amount_paise for p in self.postings) != 0:
            raise ValueError("postings of an entry must sum to zero")

    def delta(self, account: Account) -> int:
        """How this entry changes ``account``'s balance."""
        return sum(p.amount_paise for p in self.postings if p.account == account)


def _amount(name: str, value: int, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (
        value == 0 and not allow_zero
    ):
        raise ValidationError(f"{name} must be a positive integer number of paise", field=name)
    return value


def _move(frm: Account, to: Account, amount: int, leg_id: int | None = None) -> list[Posting]:
    return [Posting(frm, -amount, leg_id), Posting(to, amount, leg_id)]


def capture(booking_id: int, payment_id: str, amount_paise: int) -> Entry:
    """The gateway captured a customer's payment: it waits in the booking's escrow."""
    _amount("amount_paise", amount_paise)
    return Entry(EntryKind.CAPTURE, f"capture:{payment_id}", booking_id,
                 tuple(_move(GATEWAY, escrow(booking_id), amount_paise)),
                 memo="payment captured", gateway_ref=payment_id)


def gateway_fee(booking_id: int, payment_id: str, fee_paise: int) -> Entry:
    """Razorpay kept its fee for a captured payment (``fee``, its GST ``tax`` included)
    out of the platform's balance: the platform bears it, so it leaves the platform's
    commission for the gateway's fees; the booking's escrow (the customer's money) and
    the partners' payouts are untouched. Once per payment, beside its capture."""
    _amount("fee_paise", fee_paise)
    return Entry(EntryKind.GATEWAY_FEE, f"capture:{payment_id}:fee", booking_id,
                 tuple(_move(COMMISSION, FEES, fee_paise)),
                 memo="gateway fee (GST included) on a captured payment",
                 gateway_ref=payment_id)


def transfer_fee(booking_id: int, transfer_id: str, fee_paise: int) -> Entry:
    """Razorpay kept Route's fee (``fees``, its GST ``tax`` included) for processing a leg's
    transfer, out of the platform's balance beside the amount moved: the platform bears
    it as it bears the payment's (gateway_fee's kind and accounts); the partner gets the
    transfer's amount whole. Once per transfer, whatever becomes of it after."""
    _amount("fee_paise", fee_paise)
    return Entry(EntryKind.GATEWAY_FEE, f"transfer:{transfer_id}:fee", booking_id,
                 tuple(_move(COMMISSION, FEES, fee_paise)),
                 memo="gateway fee (GST included) on a Route transfer",
                 gateway_ref=transfer_id)


def leg_commission(commission_total: int, partner_share_total: int, leg_payout: int,
                   already_recognised: int, last_leg: bool) -> int:
    """The commission a delivered leg earns: proportional to its payout, the last leg takes
    the remainder so the legs' commissions add up to the booking's exactly."""
    for name, v in (("commission_total", commission_total),
                    ("partner_share_total", partner_share_total), ("leg_payout", leg_payout),
                    ("already_recognised", already_recognised)):
        _amount(name, v, allow_zero=True)
    remaining = commission_total - already_recognised
    if remaining < 0:
        raise ValueError("more commission recognised than the booking carries")
    if last_leg or partner_share_total == 0:
        return remaining
    share = (commission_total * leg_payout * 2 + partner_share_total) // (2 * partner_share_total)
    return min(share, remaining)


def release(booking_id: int, leg_id: int, partner_id: int, payout_paise: int,
            commission_paise: int) -> Entry:
    """A leg was delivered: its payout becomes the partner's, its commission the platform's."""
    _amount("payout_paise", payout_paise, allow_zero=True)
    _amount("commission_paise", commission_paise, allow_zero=True)
    total = payout_paise + commission_paise
    _amount("release total", total)
    postings = [Posting(escrow(booking_id), -total, leg_id)]
    if payout_paise:
        postings.append(Posting(payable(partner_id), payout_paise, leg_id))
    if commission_paise:
        postings.append(Posting(COMMISSION, commission_paise, leg_id))
    return Entry(EntryKind.RELEASE, f"release:leg:{leg_id}", booking_id, tuple(postings),
                 memo="leg delivered")


def cancellation_fee(booking_id: int, leg_id: int, partner_id: int, fee_paise: int) -> Entry:
    """A cancellation after assignment: the fee pays the assigned partner's wasted trip."""
    _amount("fee_paise", fee_paise)
    return Entry(EntryKind.CANCELLATION_FEE, f"fee:booking:{booking_id}", booking_id,
                 tuple(_move(escrow(booking_id), payable(partner_id), fee_paise, leg_id)),
                 memo="cancellation fee to the assigned partner")


def refund_requested(booking_id: int, refund_id: int, amount_paise: int) -> Entry:
    """A refund is asked of the gateway: reserve it out of escrow (pending)."""
    _amount("amount_paise", amount_paise)
    return Entry(EntryKind.REFUND_REQUESTED, f"refund:{refund_id}:requested", booking_id,
                 tuple(_move(escrow(booking_id), refunds_pending(booking_id), amount_paise)),
                 memo="refund requested")


def refund_processed(booking_id: int, refund_id: int, amount_paise: int,
                     gateway_refund_id: str | None) -> Entry:
    """The gateway paid the refund back to the customer: the pending amount leaves."""
    _amount("amount_paise", amount_paise)
    return Entry(EntryKind.REFUND_PROCESSED, f"refund:{refund_id}:settled", booking_id,
                 tuple(_move(refunds_pending(booking_id), GATEWAY, amount_paise)),
                 memo="refund processed", gateway_ref=gateway_refund_id)


def refund_failed(booking_id: int, refund_id: int, amount_paise: int,
                  gateway_refund_id: str | None) -> Entry:
    """The gateway could not refund: the pending amount goes back to escrow (void).

    Same idempotency key as ``refund_processed``: a refund settles one way only."""
    _amount("amount_paise", amount_paise)
    return Entry(EntryKind.REFUND_FAILED, f"refund:{refund_id}:settled", booking_id,
                 tuple(_move(refunds_pending(booking_id), escrow(booking_id), amount_paise)),
                 memo="refund failed; back in escrow", gateway_ref=gateway_refund_id)


def transfer_processed(booking_id: int, leg_id: int, partner_id: int, transfer_id: str,
                       amount_paise: int) -> Entry:
    """A leg's transfer reached the partner for good (released from hold, or made without
    one; a hold can still be reversed): payable paid out, for what is left on it."""
    _amount("amount_paise", amount_paise)
    return Entry(EntryKind.TRANSFER_PROCESSED, f"transfer:{transfer_id}:processed", booking_id,
                 tuple(_move(payable(partner_id), GATEWAY, amount_paise, leg_id)),
                 memo="transfer to partner processed", gateway_ref=transfer_id)


def transfer_failed(booking_id: int, leg_id: int, partner_id: int, transfer_id: str,
                    amount_paise: int) -> Entry:
    """A transfer posted as paid out failed at the gateway after all: the payout is voided
    and the partner is owed it again (the leg's transfer is made anew). Posted at most once
    per transfer, for what its ``transfer_processed`` entry paid out."""
    _amount("amount_paise", amount_paise)
    return Entry(EntryKind.TRANSFER_FAILED, f"transfer:{transfer_id}:failed", booking_id,
                 tuple(_move(GATEWAY, payable(partner_id), amount_paise, leg_id)),
                 memo="transfer to partner failed; owed again", gateway_ref=transfer_id)


def transfer_reversed(booking_id: int, leg_id: int, transfer_id: str, amount_paise: int,
                      amount_reversed: int) -> Entry:
    """A transfer posted as paid out was reversed afterwards (all or part of it): what came
    back leaves the partner's side for the booking's reversed payouts, where it waits for
    ops (pay the partner again, or refund the customer). Not owed to the partner again by
    itself: a reversal is someone's decision. One entry per reversal, keyed by the
    transfer's total reversed amount after it (``amount_reversed``, the gateway's)."""
    _amount("amount_paise", amount_paise)
    _amount("amount_reversed", amount_reversed)
    return Entry(EntryKind.TRANSFER_REVERSED,
                 f"transfer:{transfer_id}:reversed:{amount_reversed}", booking_id,
                 tuple(_move(GATEWAY, reversed_payouts(booking_id), amount_paise, leg_id)),
                 memo="transfer to partner reversed; held for ops", gateway_ref=transfer_id)


def reversal_repaid(booking_id: int, leg_id: int, partner_id: int, amount_paise: int,
                    amount_reversed: int) -> Entry:
    """Ops chose to pay a reversed payout to the leg's partner again: it leaves the
    booking's reversed payouts for the partner's payable, and the leg's settle pays it by
    a direct transfer. Keyed by ``amount_reversed``, here what has left the leg's reversed
    payouts in all once this entry is posted (a running total: one entry per decision)."""
    _amount("amount_paise", amount_paise)
    _amount("amount_reversed", amount_reversed)
    return Entry(EntryKind.REVERSAL_REPAID,
                 f"reversal:leg:{leg_id}:out:{amount_reversed}", booking_id,
                 tuple(_move(reversed_payouts(booking_id), payable(partner_id), amount_paise,
                             leg_id)),
                 memo="reversed payout owed to the partner again (ops)")


def reversal_written_off(booking_id: int, leg_id: int, amount_paise: int,
                         amount_reversed: int, *, refunded_in_full: bool = False) -> Entry:
    """Ops wrote off a leg's reversed payout under the gateway's minimum (it can be
    neither paid again nor refunded), or one of any size once the customer's payment was
    refunded in full (``refunded_in_full``: the platform paid that refund): it leaves the
    booking's reversed payouts for the platform's commission (platform revenue). Keyed as
    ``reversal_repaid`` is: one decision per running total out of the leg's reversed
    payouts (``amount_reversed``)."""
    _amount("amount_paise", amount_paise)
    _amount("amount_reversed", amount_reversed)
    why = ("the customer's payment refunded in full" if refunded_in_full
           else "under the gateway's minimum")
    return Entry(EntryKind.REVERSAL_WRITTEN_OFF,
                 f"reversal:leg:{leg_id}:out:{amount_reversed}", booking_id,
                 tuple(_move(reversed_payouts(booking_id), COMMISSION, amount_paise, leg_id)),
                 memo=f"reversed payout written off to platform revenue, {why} (ops)")


def reversal_refund_asked(booking_id: int, refund_id: int, amount_paise: int,
                              leg_id: int) -> Entry:
    """Ops chose to give a reversed payout back to the customer: a refund is asked of the
    gateway, reserved out of the booking's reversed payouts (not its escrow)."""
    _amount("amount_paise", amount_paise)
    return Entry(EntryKind.REVERSAL_REFUND_ASKED, f"refund:{refund_id}:requested",
                 booking_id,
                 tuple(_move(reversed_payouts(booking_id), refunds_pending(booking_id),
                             amount_paise, leg_id)),
                 memo="refund of a reversed payout requested (ops)")


def reversal_refund_failed(booking_id: int, refund_id: int, amount_paise: int,
                           gateway_refund_id: str | None, leg_id: int) -> Entry:
    """The refund of a reversed payout failed: the pending amount goes back to the
    reversed payouts it came from, for ops to decide again. Same key as
    ``refund_processed``: a refund settles one way only."""
    _amount("amount_paise", amount_paise)
    return Entry(EntryKind.REVERSAL_REFUND_FAILED, f"refund:{refund_id}:settled", booking_id,
                 tuple(_move(refunds_pending(booking_id), reversed_payouts(booking_id),
                             amount_paise, leg_id)),
                 memo="refund failed; back in reversed payouts", gateway_ref=gateway_refund_id)


def shortfall(escrow_paise: int, amount_paise: int) -> int:
    """What escrow (``escrow_paise`` now) lacks to give ``amount_paise``; 0 if it holds
    enough. A refund made outside the service, or a delivered leg's payout, takes it from
    the platform's commission (outside_refund_platform, release_platform)."""
    return max(0, amount_paise - max(escrow_paise, 0))


def outside_refund_platform(booking_id: int, refund_id: int, amount_paise: int) -> Entry:
    """A refund made outside the service (the dashboard) is more than escrow holds
    (delivered legs were paid out of it): the platform's commission gives the rest into
    escrow, for that refund's ``refund_requested`` to take. Keyed by our row of the
    refund, as its other entries are: recorded once however often it is seen."""
    _amount("amount_paise", amount_paise)
    return Entry(EntryKind.OUTSIDE_REFUND_PLATFORM, f"refund:{refund_id}:platform",
                 booking_id, tuple(_move(COMMISSION, escrow(booking_id), amount_paise)),
                 memo="refund made outside the service beyond escrow: the platform's cost")


def release_platform(booking_id: int, leg_id: int, amount_paise: int) -> Entry:
    """A delivered leg's payout is more than escrow holds (a refund made outside the
    service took the booking's money): the platform's commission gives the shortfall
    into escrow, for the leg's ``release`` to pay its partner in full. Keyed by the leg,
    beside its release: once."""
    _amount("amount_paise", amount_paise)
    return Entry(EntryKind.RELEASE_PLATFORM, f"release:leg:{leg_id}:platform", booking_id,
                 tuple(_move(COMMISSION, escrow(booking_id), amount_paise, leg_id)),
                 memo="escrow short of a leg's payout: the platform's cost")


def remainder_kept(booking_id: int, amount_paise: int) -> Entry:
    """What is left in a cancelled or failed booking's escrow of its own payment, with
    nothing else to pay out of it, is under the gateway's least refund: the platform's
    commission takes it (no refund can give it back, no partner earned it). Once per
    booking: its own refund is made once."""
    _amount("amount_paise", amount_paise)
    return Entry(EntryKind.REMAINDER_KEPT, f"refund:booking:{booking_id}:remainder",
                 booking_id, tuple(_move(escrow(booking_id), COMMISSION, amount_paise)),
                 memo="the rest of the payment under the gateway's least refund: kept")


def fee_platform(booking_id: int, leg_id: int, amount_paise: int) -> Entry:
    """A rider's cancellation fee after a refund made outside the service took the
    booking's money: the assigned rider's when the booking is cancelled (the fee it would
    be without that refund), or the holder's when ops end a relay stuck for want of a
    rider (his leg's payout). It is more than escrow holds, and the platform's commission
    gives the shortfall into escrow, for the fee's ``cancellation_fee`` to pay him in
    full. A ``release_platform`` (the same meaning: escrow short of a leg's payout, the
    platform's cost; no new kind, no migration), keyed by the leg as its fee: once. A
    booking has one cancellation fee (``cancellation_fee`` is keyed by it), paid as it is
    cancelled or ended, so no leg has two; its leg stops there, so it never has a
    release."""
    _amount("amount_paise", amount_paise)
    return Entry(EntryKind.RELEASE_PLATFORM, f"fee:leg:{leg_id}:platform", booking_id,
                 tuple(_move(COMMISSION, escrow(booking_id), amount_paise, leg_id)),
                 memo="escrow short of a rider's cancellation fee: the platform's cost")


def check_balances(entry: Entry, balances: dict[Account, int]) -> None:
    """Raise InsufficientEscrow if ``entry`` would leave a non-negative account below zero.

    ``balances`` holds the current balance of each account the entry touches."""
    for p in entry.postings:
        if p.account.kind in NON_NEGATIVE:
            after = balances.get(p.account, 0) + entry.delta(p.account)
            if after < 0:
                raise InsufficientEscrow(
                    f"{p.account.key} would go to {after} paise", field="amount_paise")


def apply(balances: dict[Account, int], entries: Iterable[Entry]) -> dict[Account, int]:
    """Balances after ``entries`` (a model for tests and projections)."""
    out = dict(balances)
    for e in entries:
        for p in e.postings:
            out[p.account] = out.get(p.account, 0) + p.amount_paise
    return out

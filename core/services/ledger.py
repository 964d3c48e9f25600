"""The ledger in PostgreSQL: record entries once, read balances as projections.

Writers must hold the booking's row lock (``lock_booking``) before posting an entry that
touches the booking's escrow: that serializes concurrent releases and refunds of one
booking, so the balance check below sees every earlier entry. The database backs this up
(append-only triggers, a unique idempotency key, and a commit-time check that entries
balance and escrow stays non-negative).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import exc, func, select
from sqlalchemy.orm import Session

from core import clock
from core.adapters.models import Booking
from core.adapters.payment_models import LedgerPosting, LedgerTransaction
from core.domain import ledger as rules
from core.domain.errors import NotFound

log = logging.getLogger(__name__)


def lock_booking(session: Session, booking_id: int) -> Booking:
    """The booking, freshly read under a row lock held until the transaction ends."""
    booking = session.scalar(
        select(Booking).where(Booking.id == booking_id).with_for_update()
        .execution_options(populate_existing=True)
    )
    if booking is None:
        raise NotFound("no such booking", code="unknown_booking")
    return booking


# Sent through the driver's own cursor on the session's connection (in its transaction):
# SQLAlchemy's statement machinery (compiling the bound names, the execution context, the
# result object) was about a fifth of a posting process's CPU, measured (session 35:
# 514 -> 428 us of client CPU a transaction with one post), for a call whose one value is
# a word. Errors are wrapped as SQLAlchemy would wrap them (IntegrityError,
# OperationalError ...), so callers' retries and the web's 503s see what they always saw.
_POST_SQL = (
    "SELECT ledger_post(%(booking_id)s, %(key)s, %(kind)s, %(gateway_ref)s, %(actor)s, "
    "%(cause)s, %(memo)s, %(now)s, %(postings)s::jsonb, %(guarded)s::jsonb)")


def post(session: Session, entry: rules.Entry, *, actor: str, cause: str | None = None) -> bool:
    """Record ``entry`` once; False if the very same entry (its kind and postings) is
    already in the ledger under its idempotency key (a retry).

    Raises EntryConflict when the key holds another entry (another kind, or other
    postings: a different amount is no retry), InsufficientEscrow when the entry would
    overdraw escrow or pending refunds. One round trip: the database function
    ledger_post() (migrations 0009, 0044) takes the booking's row lock, then checks the
    key and the guarded balances, then inserts the entry and its postings; the
    commit-time triggers check it all again.
    """
    params = post_arguments(entry, actor=actor, cause=cause)
    outcome = call_function(session, _POST_SQL, dict(
        params, postings=json.dumps(params["postings"]), guarded=json.dumps(params["guarded"])))
    if outcome == "posted":
        return True
    if outcome == "exists":  # recorded before (a retry), or by a concurrent twin just now
        return False
    what, detail, other = str(outcome).split("|")
    if what == "conflict":
        log.error("ledger entry refused: its key holds another entry",
                  extra={"key": entry.idempotency_key, "kind": entry.kind.value,
                         "recorded_kind": other, "differs": detail})
        raise rules.EntryConflict(
            f"{entry.idempotency_key} holds a {other} entry with another {detail} than "
            f"this {entry.kind.value}", field="idempotency_key")
    account, after = detail, other
    raise rules.InsufficientEscrow(f"{account} would go to {after} paise", field="amount_paise")


def call_function(session: Session, sql: str, params: dict[str, Any]) -> str:
    """The one value of ``sql`` (a function's call in the driver's %(name)s style, as
    _POST_SQL) on the session's connection, in its transaction, as text. Pending ORM
    changes are flushed first, as session.execute() would (ledger_post() locks the booking
    and its postings name legs and partners, which may be rows added just now)."""
    if session.autoflush:  # False inside ``session.no_autoflush``, as for execute()
        session.flush()
    conn = session.connection()
    dbapi_conn = conn.connection.driver_connection
    assert dbapi_conn is not None
    try:
        with dbapi_conn.cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
    except Exception as err:
        dialect = conn.dialect
        dbapi_error = dialect.loaded_dbapi.Error
        if not isinstance(err, dbapi_error):
            raise
        gone = dialect.is_disconnect(err, dbapi_conn, None)
        if gone:  # as SQLAlchemy does: this connection is not handed out again
            conn.invalidate(err)
        raise exc.DBAPIError.instance(sql, None, err, dbapi_error,
                                      hide_parameters=True, connection_invalidated=gone,
                                      dialect=dialect) from err
    assert row is not None
    return str(row[0])


def post_arguments(entry: rules.Entry, *, actor: str, cause: str | None = None
                   ) -> dict[str, Any]:
    """The arguments of ledger_post() for ``entry`` (postings and guarded balances as
    plain lists and dicts, for the caller to encode)."""
    return {
        "key": entry.idempotency_key, "kind": entry.kind.value, "booking_id": entry.booking_id,
        "gateway_ref": entry.gateway_ref, "actor": actor[:60],
        "cause": (cause or None) and cause[:120], "memo": entry.memo[:200],
        "now": clock.now(),
        "postings": [{"account": p.account.key, "account_kind": p.account.kind.value,
                      "booking_id": p.account.booking_id or entry.booking_id,
                      "partner_id": p.account.partner_id, "leg_id": p.leg_id,
                      "amount_paise": p.amount_paise} for p in entry.postings],
        "guarded": {p.account.key: entry.delta(p.account) for p in entry.postings
                    if p.account.kind in rules.NON_NEGATIVE},
    }


def recorded(session: Session, idempotency_key: str) -> bool:
    return session.scalar(select(LedgerTransaction.id).where(
        LedgerTransaction.idempotency_key == idempotency_key)) is not None


def balance(session: Session, account: rules.Account, at: datetime | None = None) -> int:
    """An account's balance (optionally as it was at ``at``): the sum of its postings."""
    stmt = select(func.coalesce(func.sum(LedgerPosting.amount_paise), 0)).where(
        LedgerPosting.account == account.key)
    if at is not None:
        stmt = stmt.where(LedgerPosting.created_at <= at)
    return int(session.scalar(stmt) or 0)


def account_balances(session: Session, at: datetime | None = None) -> dict[str, int]:
    """Every account's balance, by account name (``escrow:b12`` ...)."""
    stmt = select(LedgerPosting.account, func.sum(LedgerPosting.amount_paise)).group_by(
        LedgerPosting.account)
    if at is not None:
        stmt = stmt.where(LedgerPosting.created_at <= at)
    return {a: int(v) for a, v in session.execute(stmt)}


def total(session: Session) -> int:
    """The sum of every posting ever made: zero, or the ledger is broken."""
    return int(session.scalar(select(func.coalesce(func.sum(LedgerPosting.amount_paise), 0)))
               or 0)


def _kind_sum(session: Session, booking_id: int, kind: rules.EntryKind,
              account_kind: rules.AccountKind | None = None, *, positive: bool = True) -> int:
    stmt = (select(func.coalesce(func.sum(LedgerPosting.amount_paise), 0))
            .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
            .where(LedgerTransaction.booking_id == booking_id,
                   LedgerTransaction.kind == kind.value))
    if account_kind is not None:
        stmt = stmt.where(LedgerPosting.account_kind == account_kind.value)
    sign = LedgerPosting.amount_paise > 0 if positive else LedgerPosting.amount_paise < 0
    stmt = stmt.where(sign)
    return abs(int(session.scalar(stmt) or 0))


def booking_summary(session: Session, booking_id: int) -> dict[str, int]:
    """Money of one booking: captured, released (payouts + commission), fees, refunds."""
    return {
        "captured_paise": _kind_sum(session, booking_id, rules.EntryKind.CAPTURE,
                                    rules.AccountKind.ESCROW),
        "released_paise": _kind_sum(session, booking_id, rules.EntryKind.RELEASE,
                                    rules.AccountKind.ESCROW, positive=False),
        "commission_paise": _kind_sum(session, booking_id, rules.EntryKind.RELEASE,
                                      rules.AccountKind.PLATFORM_COMMISSION),
        "fee_paise": _kind_sum(session, booking_id, rules.EntryKind.CANCELLATION_FEE,
                               rules.AccountKind.PARTNER_PAYABLE),
        "refunded_paise": _kind_sum(session, booking_id, rules.EntryKind.REFUND_PROCESSED,
                                    rules.AccountKind.GATEWAY_CLEARING),
        "escrow_paise": balance(session, rules.escrow(booking_id)),
        "refunds_pending_paise": balance(session, rules.refunds_pending(booking_id)),
        "reversed_payouts_paise": balance(session, rules.reversed_payouts(booking_id)),
    }


# A leg's earnings, and what was paid out for it (less payouts voided by a failure).
_EARNING_KINDS = (rules.EntryKind.RELEASE.value, rules.EntryKind.CANCELLATION_FEE.value)
_PAYOUT_KINDS = (rules.EntryKind.TRANSFER_PROCESSED.value,
                 rules.EntryKind.TRANSFER_FAILED.value)


def leg_payable(session: Session, leg_id: int) -> int:
    """What a leg earned its partner (payout on delivery, or a cancellation fee)."""
    return int(session.scalar(
        select(func.coalesce(func.sum(LedgerPosting.amount_paise), 0))
        .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
        .where(LedgerPosting.leg_id == leg_id,
               LedgerPosting.account_kind == rules.AccountKind.PARTNER_PAYABLE.value,
               LedgerTransaction.kind.in_(_EARNING_KINDS))) or 0)


def leg_paid_out(session: Session, leg_id: int) -> int:
    """What the ledger shows paid out to partners for a leg: released Route transfers,
    less those that failed afterwards. A payout reversed afterwards still counts: it is
    not owed again by itself (ops decide, see ``transfer_reversal``), so the leg is not
    paid a second time behind their back."""
    return -int(session.scalar(
        select(func.coalesce(func.sum(LedgerPosting.amount_paise), 0))
        .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
        .where(LedgerPosting.leg_id == leg_id,
               LedgerPosting.account_kind == rules.AccountKind.PARTNER_PAYABLE.value,
               LedgerTransaction.kind.in_(_PAYOUT_KINDS))) or 0)


def transfer_payout(session: Session, transfer_id: str) -> rules.Entry | None:
    """The ``transfer_failed`` entry that would void the payout posted for a gateway
    transfer: None when none was posted for it, or it is voided already."""
    if recorded(session, f"transfer:{transfer_id}:failed"):
        return None
    row = session.execute(
        select(LedgerTransaction.booking_id, LedgerPosting.leg_id, LedgerPosting.partner_id,
               LedgerPosting.amount_paise)
        .join(LedgerPosting, LedgerPosting.transaction_id == LedgerTransaction.id)
        .where(LedgerTransaction.idempotency_key == f"transfer:{transfer_id}:processed",
               LedgerPosting.account_kind == rules.AccountKind.PARTNER_PAYABLE.value)
    ).first()
    if row is None:
        return None
    booking_id, leg_id, partner_id, amount = row
    assert booking_id is not None and leg_id is not None and partner_id is not None, (
        f"transfer {transfer_id}: its payout posting has no booking, leg or partner")
    return rules.transfer_failed(booking_id, leg_id, partner_id, transfer_id, -int(amount))


def transfer_reversal(session: Session, transfer_id: str, left_paise: int,
                      amount_reversed: int) -> rules.Entry | None:
    """The ``transfer_reversed`` entry owed for a gateway transfer that now has
    ``left_paise`` left on it, ``amount_reversed`` reversed in all: what the ledger shows
    paid out on it (its ``transfer_processed``, less reversals recorded) beyond what is left.
    None when nothing was paid out on it, its payout was voided (failed), or no more came
    back than is recorded. The caller holds the booking's lock."""
    if recorded(session, f"transfer:{transfer_id}:failed"):
        return None
    row = session.execute(
        select(LedgerTransaction.booking_id, LedgerPosting.leg_id, LedgerPosting.amount_paise)
        .join(LedgerPosting, LedgerPosting.transaction_id == LedgerTransaction.id)
        .where(LedgerTransaction.idempotency_key == f"transfer:{transfer_id}:processed",
               LedgerPosting.account_kind == rules.AccountKind.PARTNER_PAYABLE.value)
    ).first()
    if row is None:
        return None
    booking_id, leg_id, paid = row
    assert booking_id is not None and leg_id is not None, (
        f"transfer {transfer_id}: its payout posting has no booking or leg")
    back = int(session.scalar(
        select(func.coalesce(func.sum(LedgerPosting.amount_paise), 0))
        .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
        .where(LedgerTransaction.kind == rules.EntryKind.TRANSFER_REVERSED.value,
               LedgerTransaction.gateway_ref == transfer_id,
               LedgerPosting.account_kind == rules.AccountKind.REVERSED_PAYOUTS.value)) or 0)
    amount = -int(paid) - back - max(left_paise, 0)
    if amount <= 0 or amount_reversed <= 0:
        return None
    return rules.transfer_reversed(booking_id, leg_id, transfer_id, amount, amount_reversed)


def reversed_payouts(session: Session, booking_id: int) -> int:
    """Partner payouts of the booking reversed after they were made, held for ops."""
    return balance(session, rules.reversed_payouts(booking_id))


def leg_reversed_payouts(session: Session, leg_id: int) -> tuple[int, int, int]:
    """A leg's reversed payouts: (what came back in all, what is held for ops now, what
    has left them in all: paid again or reserved for a refund). The running total that
    has left keys the next ``reversal_repaid`` entry."""
    came, held, out = session.execute(
        select(func.coalesce(func.sum(LedgerPosting.amount_paise).filter(
                   LedgerTransaction.kind == rules.EntryKind.TRANSFER_REVERSED.value), 0),
               func.coalesce(func.sum(LedgerPosting.amount_paise), 0),
               func.coalesce(func.sum(LedgerPosting.amount_paise).filter(
                   LedgerPosting.amount_paise < 0), 0))
        .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
        .where(LedgerPosting.leg_id == leg_id,
               LedgerPosting.account_kind == rules.AccountKind.REVERSED_PAYOUTS.value)).one()
    return int(came), int(held), -int(out)


def leg_owed(session: Session, leg_id: int) -> int:
    """What the leg's partner is owed for it now: every payable posting of the leg (its
    earnings, less its payouts, plus payouts voided or paid again by ops' decision)."""
    return int(session.scalar(
        select(func.coalesce(func.sum(LedgerPosting.amount_paise), 0))
        .where(LedgerPosting.leg_id == leg_id,
               LedgerPosting.account_kind == rules.AccountKind.PARTNER_PAYABLE.value)) or 0)


def leg_repaid_since(session: Session, leg_id: int) -> datetime | None:
    """When ops first chose to pay a reversed payout of the leg again (None: never)."""
    return session.scalar(
        select(func.min(LedgerTransaction.created_at))
        .join(LedgerPosting, LedgerPosting.transaction_id == LedgerTransaction.id)
        .where(LedgerPosting.leg_id == leg_id,
               LedgerTransaction.kind == rules.EntryKind.REVERSAL_REPAID.value))


def leg_repaid_count(session: Session, leg_id: int) -> int:
    """How many times ops chose to pay a reversed payout of the leg again."""
    return int(session.scalar(
        select(func.count(func.distinct(LedgerPosting.transaction_id)))
        .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
        .where(LedgerPosting.leg_id == leg_id,
               LedgerTransaction.kind == rules.EntryKind.REVERSAL_REPAID.value)) or 0)


def holding_reversed_payouts(session: Session, limit: int = 100, after: int | None = None
                             ) -> list[tuple[int, int]]:
    """(booking id, paise held) of the bookings with reversed payouts waiting for ops,
    newest booking first, from the partial index of reversed-payout postings."""
    held = func.sum(LedgerPosting.amount_paise)
    stmt = (select(LedgerPosting.booking_id, held)
            .where(LedgerPosting.account_kind == rules.AccountKind.REVERSED_PAYOUTS.value)
            .group_by(LedgerPosting.booking_id).having(held > 0)
            .order_by(LedgerPosting.booking_id.desc()).limit(limit))
    if after is not None:
        stmt = stmt.where(LedgerPosting.booking_id < after)
    return [(int(b), int(v)) for b, v in session.execute(stmt) if b is not None]


def partner_balance(session: Session, partner_id: int, at: datetime | None = None) -> int:
    """What the platform still owes a partner (earned, not yet transferred)."""
    return balance(session, rules.payable(partner_id), at)


__all__ = ["account_balances", "balance", "booking_summary", "holding_reversed_payouts",
           "leg_owed", "leg_paid_out", "leg_payable", "leg_repaid_count", "leg_repaid_since",
           "leg_reversed_payouts", "lock_booking",
           "partner_balance", "post", "post_arguments", "recorded", "reversed_payouts", "total",
           "transfer_payout", "transfer_reversal"]

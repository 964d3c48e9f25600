"""Reconciliation: compare the ledger with what the gateway says, record every mismatch.

For a time window, the gateway's captured payments, processed refunds and released
transfers (fetched through the client; plus, fetched one by one, the refunds and transfers
our rows still show open, whenever they were created) are matched by gateway id with the ledger's
captures, processed refunds and transfer_processed entries (less any transfer_failed
entry that voided one). A transfer still on hold is reversible, so it is no payout: it is
left out of the gateway side, and a ledger payout whose transfer is still on hold (or
failed, or reversed) at the gateway is a mismatch.
Each difference (missing on either side, amount differs) is recorded once per (kind,
entity, gateway id) and marked resolved when a later run finds it matching. Operators
read them with ``list_mismatches`` (the ops REST endpoint comes with the REST API).

Razorpay's fee on each captured payment compared (``fee_differs``) with the ledger's
``gateway_fee`` entry of it; one the ledger lacks (the payment recorded without its
webhook) is booked first (payments.record_fee). Route's fee on each transfer of ours
processed likewise (payments.record_transfer_fee, ``fee_differs`` of the transfer):
released or still on hold (or given back: a hold is charged when processed), listed in the
window or asked again (open rows, open mismatches, recent payouts). Each leg whose row
still notes a reversal waiting for the gateway to process a transfer (its
transfer.processed may be lost), whatever the row's status, has its job run again
(payments.resume_waiting_reversals): it reverses what can go, and notes again what
still waits. A leg of a closed booking (cancelled, failed, refunded) that no rider has,
whose row is still on hold but notes no such wait, has its settle queued
(payments.settle_left_holds): a hold its cancel's settle job (lost) would have given
back, which no comparison here shows (a hold is no payout). A hold that no row of ours
names at all (its hold job killed between the gateway's answer and its commit, and never
run again) is found by listing the transfers of the payments of bookings whose legs
changed lately (GET /payments/{id}/transfers, our leg in the notes): recorded as the leg's
hold when it is its rider's now, else reversed (payments.adopt_unrecorded_hold), and
reported as a ``missing_in_ledger`` transfer saying which, resolved by the next run.

A payout the gateway shows less of than the ledger paid out (the transfer reversed since,
all or part, by ops in the dashboard: Razorpay sends no webhook for it) is recorded first
as a ``transfer_reversed`` entry (payments.record_transfer_reversal: once per reversal,
ops told once), then compared for what is left on it.

A refund of one of our payments made outside the service (in the Razorpay dashboard:
none of our notes), whose refund.processed was lost or came while a refund of ours was
still being asked, is recorded first as a refund of that booking
(payments.record_outside_refund: once per refund; what escrow does not hold of it is
the platform's cost), then compared. Findings name a booking only if the item is ours
(_our_bookings): a booking id in notes alone may be another system's on the account.
One of our own refunds the gateway shows settled (its webhook lost) is applied as its
event would be (payments.apply_settled_refund), not listed as missing in the ledger.

Such a refund made outside the service stays pending at the gateway for days (a normal
refund), and by the time it is processed it was created before every later window: one
the window lists pending is recorded as a ``missing_in_ledger`` mismatch at once (its
payment refunds it already: ops see it, and a cancellation meanwhile is cut to what the
payment has left), and as an open mismatch it is asked again every run (in turn, as
below) until it settles: processed, recorded as above and resolved; failed, resolved.

One item the gateway cannot show this run (a 5xx for that fetch) is not compared, not
reported as missing: the rest of the run is recorded, and the window marker stays at or
before that item's ledger entry, so a later run compares it.

A transfer's state changes after it was found (reversed, failed, held again): the
transfers of open mismatches are asked again one by one each run, so a payout missing in
the ledger whose transfer was reversed since (the gateway shows no payout either) is
resolved, not left open for ever once the transfer falls out of every window. The
payments and refunds of open mismatches are too (the gateway shows the payment again,
corrects a refund's amount, or the ledger records it late): OPEN_ITEMS of each kind a
run, in turn, so with many open each is asked again every few runs. A resolved mismatch
found again is reopened as found then (first_seen_at).

A payout is reversed in the dashboard days or weeks after it was made (a dispute), long
after its transfer left every window: the ledger's payouts of the last REVERSAL_LOOKBACK
are asked again one by one too, REVERSAL_ITEMS a run in turn (as the open rows are), so
a run's gateway calls stay bounded and each payout is asked again every few runs.

One run at a time: a run holds PostgreSQL's advisory lock RECONCILE_LOCK_KEY, and one
started meanwhile (a slow hourly run, a manual one) is skipped and says so in the log. Two
at once would each record what it saw, and the older, committing later, would reopen a
mismatch the newer one had resolved.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.exceptions import RedisError
from sqlalchemy import case, func, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core import clock
from core.adapters import razorpay_gateway as gw
from core.adapters.db import autocommit, transaction
from core.adapters.models import Booking, Leg
from core.adapters.payment_models import (
    LedgerPosting,
    LedgerTransaction,
    LegTransfer,
    ReconciliationMismatch,
    Refund,
)
from core.adapters.redis_conn import redis_client
from core.domain.ledger import AccountKind, EntryKind

log = logging.getLogger(__name__)

WINDOW = timedelta(days=1)
# After an outage of the workers, the next run starts where the last one ended (no more
# than CATCH_UP back): gateway items of the gap would otherwise never be compared.
LAST_UNTIL_KEY = "reconciliation:last-until"
CATCH_UP = timedelta(days=30)
PAGE = 100
OPEN_ITEMS = 500  # open rows fetched one by one per run
OPEN_CURSOR_KEY = "reconciliation:open-after:"  # + refunds | transfers | mismatches | payouts
# Payouts asked again for a reversal: those of the last REVERSAL_LOOKBACK (disputes come
# weeks later), REVERSAL_ITEMS a run. Hourly runs ask 12,000 a day: at 1,000 payouts a
# day each is asked again every ten days (one reversed within its day, by the window).
REVERSAL_LOOKBACK = timedelta(days=120)
REVERSAL_ITEMS = 500
# The PostgreSQL advisory lock a run holds while it runs: "RCrc" in ASCII, 1380151907
# (pg_locks: locktype advisory, objid 1380151907). Migrate holds "RCmg" (core.cli), a
# seed "RCsd" (core.services.seed).
RECONCILE_LOCK_KEY = int.from_bytes(b"RCrc", "big")
# Unrecorded holds: the payments (captured within HOLD_LOOKBACK) of bookings whose legs
# changed since the window's start less HOLD_MARGIN (a hold job runs just after its leg
# is taken, its retries later), HOLD_BOOKINGS a run, in turn.
HOLD_LOOKBACK = timedelta(days=30)
HOLD_MARGIN = timedelta(hours=6)
HOLD_BOOKINGS = 500
# What a run did with a hold no row of ours named (payments.adopt_unrecorded_hold).
_HOLD_OUTCOMES = {
    "adopted": "hold of leg {leg} with no row of ours (its job died after making it): "
               "recorded as the leg's hold",
    "reversed": "hold of leg {leg} with no row of ours (its job died after making it), "
                "for a rider who does not have the leg: reversed",
    "reversal-waits": "hold of leg {leg} with no row of ours (its job died after making "
                      "it), for a rider who does not have the leg: reversed once the "
                      "gateway processes it",
    "busy": "hold of leg {leg} with no row of ours (its job died after making it): a job "
            "of the leg is running; looked at again next run",
    "unanswered": "hold of leg {leg} with no row of ours (its job died after making it): "
                  "the gateway did not answer; looked at again next run",
    "waits": "hold of leg {leg} with no row of ours (its job died after making it): a "
             "reversal of the leg waits for the gateway; looked at again next run",
}


@dataclass(frozen=True)
class Finding:
    kind: str  # missing_in_ledger | missing_at_gateway | amount_differs | fee_differs
    entity: str  # payment | refund | transfer
    gateway_id: str
    booking_id: int | None
    ledger_amount: int | None
    gateway_amount: int | None
    detail: str


def _pages(fetch, since: datetime, until: datetime) -> Iterator[dict]:
    skip = 0
    while True:
        page = fetch({"from": int(since.timestamp()), "to": int(until.timestamp()),
                      "count": PAGE, "skip": skip})
        items = page.get("items") or []
        yield from items
        if len(items) < PAGE:
            return
        skip += PAGE


class _NoAnswer(Exception):
    """The gateway could not show one item this run (its trouble, a 5xx): the item is
    neither found nor missing, and is compared on a later run."""


def _fetch_one(fetch, gateway_id: str) -> dict | None:
    """The gateway's item, or None if it does not know it; _NoAnswer if it could not say.
    No connection at all raises on: the whole run fails and the next one starts from
    where the last completed run ended."""
    try:
        return fetch(gateway_id)
    except gw.BadRequestError:
        return None
    except (gw.ServerError, gw.GatewayError) as exc:
        log.warning("the gateway could not show one item; compared next run",
                    extra={"gateway_id": gateway_id, "error": str(exc)[:200]})
        raise _NoAnswer from exc


def _ledger_amounts(session: Session, kind: EntryKind, account_kind: AccountKind,
                    since: datetime, until: datetime | None,
                    refs: set[str] | None = None) -> dict[str, tuple[int, int | None]]:
    """gateway_ref -> (amount, booking_id) for entries of ``kind`` (in the window or refs)."""
    stmt = (select(LedgerTransaction.gateway_ref, LedgerPosting.amount_paise,
                   LedgerTransaction.booking_id)
            .join(LedgerPosting, LedgerPosting.transaction_id == LedgerTransaction.id)
            .where(LedgerTransaction.kind == kind.value,
                   LedgerPosting.account_kind == account_kind.value,
                   LedgerTransaction.gateway_ref.is_not(None)))
    if refs is not None:
        stmt = stmt.where(LedgerTransaction.gateway_ref.in_(refs or {""}))
    else:
        stmt = stmt.where(LedgerTransaction.created_at >= since)
        if until is not None:
            stmt = stmt.where(LedgerTransaction.created_at <= until)
    out: dict[str, tuple[int, int | None]] = {}
    for ref, amount, booking_id in session.execute(stmt):
        assert ref is not None, "the query keeps only entries with a gateway_ref"
        prev = out.get(ref, (0, booking_id))[0]
        out[ref] = (prev + abs(int(amount)), booking_id)
    return out


def _compare(entity: str, gateway: dict[str, int], ledger_side: dict[str, tuple[int, int | None]],
             fetch_one, noted: dict[str, int | None], ours: dict[str, int | None]
             ) -> tuple[list[Finding], set[str], set[str]]:
    """Findings, the gateway ids compared, and those the gateway could not show this run
    (not compared: neither found nor missing).

    ``noted``: the booking each gateway item's notes name; ``ours``: the booking of ours
    each is (_our_bookings). Another system on the same account names bookings of its
    own numbering: a finding refers to a booking only if the item is ours; else the
    detail tells the note."""
    findings: list[Finding] = []
    unanswered: set[str] = set()
    for gid, amount in gateway.items():
        if gid not in ledger_side:
            booking_id, detail = ours.get(gid), f"{entity} at the gateway has no ledger entry"
            if booking_id is None and noted.get(gid) is not None:
                detail += f"; its notes name booking {noted[gid]}, not one of ours"
            findings.append(Finding("missing_in_ledger", entity, gid, booking_id, None,
                                    amount, detail))
        elif ledger_side[gid][0] != amount:
            findings.append(Finding("amount_differs", entity, gid, ledger_side[gid][1],
                                    ledger_side[gid][0], amount,
                                    f"{entity} amount differs between ledger and gateway"))
    for gid, (amount, booking_id) in ledger_side.items():
        if gid in gateway:
            continue
        try:
            entity_at_gw = fetch_one(gid)
        except _NoAnswer:
            unanswered.add(gid)
            continue
        gw_amount = _gateway_amount(entity, entity_at_gw)
        if gw_amount is None:
            why = "unknown to the gateway" if not entity_at_gw else "not settled at the gateway"
            findings.append(Finding("missing_at_gateway", entity, gid, booking_id, amount, None,
                                    f"ledger {entity} {why}"))
        elif gw_amount != amount:
            findings.append(Finding("amount_differs", entity, gid, booking_id, amount, gw_amount,
                                    f"{entity} amount differs between ledger and gateway"))
    return findings, (set(gateway) | set(ledger_side)) - unanswered, unanswered


def _gateway_fee(payment: dict) -> int | None:
    """Razorpay's fee on a payment (paise, its GST included), None where it gives none
    (an older payment: null)."""
    fee = payment.get("fee")
    return fee if isinstance(fee, int) and not isinstance(fee, bool) and fee >= 0 else None


def _fee_findings(payments: dict[str, dict], led_pay: dict[str, tuple[int, int | None]]
                  ) -> list[Finding]:
    """Razorpay's fee on each captured payment the ledger holds, compared with the
    ledger's gateway_fee entry of it (none counts as 0). One recorded without its fee
    (its webhook lost) has it booked first, as the webhook would have
    (payments.record_fee); a fee the ledger shows otherwise is a ``fee_differs``
    mismatch of the payment. A payment with no fee given (null) is not compared."""
    from core.services import payments as pay  # payments imports nothing of this module

    told = {gid: fee for gid, item in payments.items()
            if gid in led_pay and (fee := _gateway_fee(item)) is not None}
    if not told:
        return []

    led_fee = _fees_booked(set(told))
    made = [pay.record_fee(payments[gid], f"reconcile:{gid}")
            for gid, fee in told.items() if fee and gid not in led_fee]
    if any(made):
        led_fee = _fees_booked(set(told))
    return [Finding("fee_differs", "payment", gid, led_pay[gid][1],
                    led_fee.get(gid, (0, None))[0], fee,
                    "Razorpay's fee on the payment differs between ledger and gateway")
            for gid, fee in told.items() if led_fee.get(gid, (0, None))[0] != fee]


def _fees_booked(gateway_ids: set[str]) -> dict[str, tuple[int, int | None]]:
    """The gateway fees the ledger holds for these payments or transfers, by gateway id."""
    with transaction() as session:
        return _ledger_amounts(session, EntryKind.GATEWAY_FEE, AccountKind.GATEWAY_FEES,
                               clock.now(), None, gateway_ids)


def _transfer_fee_findings(seen: dict[str, dict]) -> tuple[list[Finding], set[str]]:
    """Route's fee on each transfer of ours the gateway showed this run processed (listed
    in the window, or asked again: open rows, open mismatches, recent payouts), released
    or not: a hold is charged when processed, and one never released (still on hold,
    given back) is the platform's cost as much. One the ledger lacks (its
    transfer.processed lost) is booked as that event would (payments.record_transfer_fee);
    a fee the ledger shows otherwise (none counts as 0) is a ``fee_differs`` mismatch of
    the transfer, as _fee_findings finds a payment's. Also returns the transfers whose fee
    was compared: a fee_differs found no more of them is resolved."""
    from core.services import payments as pay  # payments imports nothing of this module

    charged = {gid: (fee, item) for gid, item in seen.items()
               if (fee := pay.processed_fee(item)) is not None}
    noted = {gid: (gw.note_int(item, "leg_id"), gw.note_int(item, "booking_id"))
             for gid, (_, item) in charged.items()}
    if not charged:
        return [], set()
    with transaction() as session:  # ours: the noted leg is of the noted booking (one query)
        legs = dict(session.execute(select(Leg.id, Leg.booking_id).where(
            Leg.id.in_({leg for leg, _ in noted.values() if leg is not None}))).tuples().all())
    told = {gid: v for gid, v in charged.items()
            if (leg := noted[gid][0]) is not None and legs.get(leg) == noted[gid][1]}
    if not told:
        return [], set()

    led_fee = _fees_booked(set(told))
    if any([pay.record_transfer_fee(item, f"reconcile:{gid}")
            for gid, (_, item) in told.items() if gid not in led_fee]):
        led_fee = _fees_booked(set(told))
    return [Finding("fee_differs", "transfer", gid, gw.note_int(item, "booking_id"),
                    led_fee.get(gid, (0, None))[0], fee,
                    "Route's fee on the transfer differs between ledger and gateway")
            for gid, (fee, item) in told.items()
            if led_fee.get(gid, (0, None))[0] != fee], set(told)


def _gateway_amount(entity: str, item: dict | None) -> int | None:
    if not item:
        return None
    if entity == "payment":
        return int(item["amount"]) if item.get("captured") else None
    if entity == "refund":
        return int(item["amount"]) if item.get("status") == "processed" else None
    if not _released(item):
        return None
    return int(item["amount"]) - int(item.get("amount_reversed") or 0)


def _released(transfer: dict) -> bool:
    """A transfer the partner has for good: processed (what a partial reversal left on it
    too) and no longer on hold. One still pending at the gateway moved no money yet."""
    return transfer.get("status") in ("processed", "partially_reversed") and not transfer.get(
        "on_hold")


def _open_page(session: Session, id_col, gid_col, is_open, cursor_key: str,
               size: int | None = None) -> set[str]:
    """At most ``size`` (default OPEN_ITEMS) open rows' gateway ids, taking up after the
    last run's page (by row id, from the start again after the last): with more open rows
    than a run asks about (transfers on hold for every leg in flight), each is asked in
    turn, not the same first ones every run."""
    size = OPEN_ITEMS if size is None else size
    try:
        after = int(redis_client().get(cursor_key) or 0)
    except (RedisError, ValueError):
        after = 0
    base = select(id_col, gid_col).where(is_open, gid_col.is_not(None)).order_by(id_col)
    rows = list(session.execute(base.where(id_col > after).limit(size)).all())
    if len(rows) < size and after:  # the end: on from the first
        rows += session.execute(base.where(id_col <= after)
                                .limit(size - len(rows))).all()
        nxt = rows[-1][0] if rows else 0
    else:
        nxt = rows[-1][0] if len(rows) == size else 0
    try:
        redis_client().set(cursor_key, nxt)
    except RedisError:
        log.warning("reconciliation: the open items' place was not kept")
    return {gid for _, gid in rows}


def _add_open_items(c, refunds: dict[str, dict], transfers: dict[str, dict],
                    held: dict[str, dict] | None = None) -> None:
    """Add what our rows still show open (refunds pending, transfers on hold or pending),
    fetched one by one, when the gateway settled them: a refund processed or a transfer
    released days after it was created falls outside every later window. Open rows are
    fetched again every run: one the gateway cannot show now is asked next run. The
    transfers not released go to ``held``, if given (their fee is compared all the same)."""
    with transaction() as session:
        refund_ids = _open_page(session, Refund.id, Refund.gateway_refund_id,
                                Refund.status == "pending", OPEN_CURSOR_KEY + "refunds")
        transfer_ids = _open_page(session, LegTransfer.id, LegTransfer.transfer_id,
                                  LegTransfer.status.in_(("on_hold", "pending")),
                                  OPEN_CURSOR_KEY + "transfers")
    from core.services import payments  # payments imports nothing of this module

    for rid in refund_ids - set(refunds):
        assert rid is not None, "the query keeps only refunds with a gateway id"
        try:
            item = _fetch_one(c.refund.fetch, rid)
        except _NoAnswer:
            continue
        if item and item.get("status") in ("processed", "failed"):
            # Settled at the gateway, its webhook lost: applied now as the poll would
            # (once, whoever comes first), not listed as missing in the ledger.
            payments.apply_settled_refund(item, f"reconcile:{rid}")
        if item and item.get("status") == "processed":
            refunds[rid] = item
    for tid in transfer_ids - set(transfers):
        assert tid is not None, "the query keeps only transfers with a gateway id"
        try:
            item = _fetch_one(c.transfer.fetch, tid)
        except _NoAnswer:
            continue
        if item and _released(item):
            transfers[tid] = item
        elif item and held is not None:
            held[tid] = item


def _mismatched(entity: str) -> set[str]:
    """The gateway ids of open mismatches of ``entity`` (at most OPEN_ITEMS a run, in
    turn: each is asked again every few runs however many are open)."""
    with transaction() as session:
        return _open_page(session, ReconciliationMismatch.id,
                          ReconciliationMismatch.gateway_id,
                          ReconciliationMismatch.resolved_at.is_(None)
                          & (ReconciliationMismatch.entity == entity),
                          OPEN_CURSOR_KEY + _MISMATCH_CURSORS[entity])


# The transfers' place keeps its first name (a deploy goes on where the last run was).
_MISMATCH_CURSORS = {"transfer": "mismatches", "payment": "mismatched-payments",
                     "refund": "mismatched-refunds"}


def _recheck(ids: set[str], items: dict[str, dict], fetch_one, entity: str) -> set[str]:
    """Payments or refunds of open mismatches this run's list lacks, asked again one by
    one: one the gateway shows settled (captured, processed) joins ``items``; return
    those it shows no such money for now (or does not know), to be compared as such with
    the ledger. One the gateway cannot show now stays as it was found."""
    unsettled: set[str] = set()
    for gid in ids - set(items):
        try:
            item = fetch_one(gid)
        except _NoAnswer:
            continue
        if _gateway_amount(entity, item) is not None:
            assert item is not None
            items[gid] = item
        else:
            unsettled.add(gid)
    return unsettled


def _outside_pending(waiting: dict[str, dict], unprocessed: set[str], fetch_one
                     ) -> dict[str, tuple[int, int | None]]:
    """Refunds of our payments made outside the service (the dashboard: none of our
    attempts) that the gateway shows pending: those the window listed (``waiting``) and
    those of open mismatches it shows pending now (``unprocessed``, fetched this run):
    gateway id -> (booking, amount). A normal refund stays pending for days, its
    refund.processed may be lost, and by then it was created before every later window:
    as an open mismatch it is asked again every run (in turn) until it settles."""
    from core.services import payments  # payments imports nothing of this module

    pending = dict(waiting)
    for gid in unprocessed - set(pending):
        try:
            item = fetch_one(gid)  # asked once this run already (_cached)
        except _NoAnswer:
            continue
        if item and item.get("status") == "pending":
            pending[gid] = item
    bookings = payments.outside_refund_bookings(list(pending.values()))
    return {gid: (booking_id, amount if isinstance(amount := pending[gid].get("amount"), int)
                  and not isinstance(amount, bool) else None)
            for gid, booking_id in bookings.items()}


def _recent_payouts(until: datetime) -> set[str]:
    """The transfers of the ledger's payouts of the last REVERSAL_LOOKBACK (at most
    REVERSAL_ITEMS a run, in turn), to be asked again for a reversal. By entry id from the
    first entry of the lookback (found by the created_at index): the page's scan starts
    there, not at the ledger's first entry."""
    t = LedgerTransaction
    with transaction() as session:
        first = session.scalar(select(func.min(t.id)).where(
            t.created_at >= until - REVERSAL_LOOKBACK))
        if first is None:
            return set()
        return _open_page(session, t.id, t.gateway_ref,
                          (t.kind == EntryKind.TRANSFER_PROCESSED.value) & (t.id >= first),
                          OPEN_CURSOR_KEY + "payouts", REVERSAL_ITEMS)


def _recheck_transfers(ids: set[str], transfers: dict[str, dict], fetch_one) -> set[str]:
    """Transfers this run's list lacks, asked again one by one. A released one joins
    ``transfers``; return those the gateway shows no payout for now (reversed, failed,
    on hold again, or unknown to it), to be compared as such with the ledger. One the
    gateway cannot show now stays as it was found."""
    no_payout: set[str] = set()
    for tid in ids - set(transfers):
        try:
            item = fetch_one(tid)
        except _NoAnswer:
            continue
        if item and _released(item):
            transfers[tid] = item
        else:
            no_payout.add(tid)
    return no_payout


@contextmanager
def _one_run_at_a_time() -> Iterator[bool]:
    """Hold RECONCILE_LOCK_KEY while the block runs; yield False (and hold nothing) if
    another run holds it.

    Session-level, on a pooled connection of its own that runs no transaction: a run asks
    the gateway between its transactions, and a transaction left open that long would
    hold back vacuum. Unlocked at the end; should the unlock fail, the connection is
    discarded (closing it releases the lock), never pooled with the lock held. A process
    that dies loses its connection, and so the lock."""
    with autocommit() as conn:
        key = {"key": RECONCILE_LOCK_KEY}
        held = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), key))
        try:
            yield held
        finally:
            if held:
                try:
                    conn.scalar(text("SELECT pg_advisory_unlock(:key)"), key)
                except Exception:
                    log.warning("reconciliation lock not released; its connection is closed",
                                exc_info=True)
                    conn.invalidate()


def run(since: datetime | None = None, until: datetime | None = None) -> dict[str, int]:
    """Compare one window (default: the last day), and what our rows still show open,
    and record what differs; skipped (``skipped`` 1, nothing compared or recorded) while
    another run is in progress.

    Transfers: only released ones count at the gateway (amount less reversals), against
    the ledger's transfer_processed entries; transfers on hold are payouts not yet made."""
    with _one_run_at_a_time() as ours:
        if not ours:
            log.warning("reconciliation skipped: another run is in progress",
                        extra={"advisory_lock": RECONCILE_LOCK_KEY})
            return {"mismatches": 0, "payments": 0, "refunds": 0, "transfers": 0,
                    "skipped": 1}
        return _run(since, until)


def _run(since: datetime | None, until: datetime | None) -> dict[str, int]:
    default_window = since is None and until is None
    until = until or clock.now()
    since = since or _window_start(until)
    c = gw.client()
    payments = {p["id"]: p for p in _pages(c.payment.all, since, until) if p.get("captured")}
    listed = list(_pages(c.refund.all, since, until))
    refunds = {r["id"]: r for r in listed if r.get("status") == "processed"}
    waiting = {r["id"]: r for r in listed if r.get("status") == "pending"}
    listed_trf = {t["id"]: t for t in _pages(c.transfer.all, since, until)}
    transfers = {gid: t for gid, t in listed_trf.items() if _released(t)}
    held: dict[str, dict] = {}  # transfers asked again this run, whatever their state
    _add_open_items(c, refunds, transfers, held)
    # A reversal that waited for the gateway to process a transfer, its transfer.processed
    # maybe lost: the leg's job runs again now (payments.resume_waiting_reversals).
    from core.services import payments as pay  # payments imports nothing of this module

    pay.resume_waiting_reversals()
    # A rider's hold left on a closed booking's leg (its settle lost): settled now.
    pay.settle_left_holds()
    # A hold at the gateway that no row of ours names (its job died before saving it):
    # recorded as the leg's, or given back; said in the findings either way.
    hold_found = _unrecorded_holds(c, since, listed_trf)
    fetch_transfer = _cached(c.transfer.fetch, seen=held)  # each transfer asked once a run
    # A payment or refund the gateway could not show once is not compared this run (its
    # open mismatch stays as it was, the window marker at its entry), as ever.
    fetch_payment = _cached(c.payment.fetch, keep_no_answer=True)
    fetch_refund = _cached(c.refund.fetch, keep_no_answer=True)
    # Payments and refunds of open mismatches, asked again: one out of every window since
    # (its ledger entry and the gateway's item both older) is still compared, and resolved
    # once both sides agree.
    uncaptured = _recheck(_mismatched("payment"), payments, fetch_payment, "payment")
    unprocessed = _recheck(_mismatched("refund"), refunds, fetch_refund, "refund")
    # A refund made outside the service still pending at the gateway: listed (its payment
    # refunds it already) until it settles, and asked again each run as an open mismatch
    # is, so it is recorded once processed however long after its window that is.
    outside_pending = _outside_pending(waiting, unprocessed, fetch_refund)
    no_payout = _recheck_transfers(_mismatched("transfer"), transfers, fetch_transfer)
    # Payouts of the lookback: one reversed since is recorded (_record_reversals) and
    # compared for what is left on it, however long after its window it came.
    no_payout |= _recheck_transfers(_recent_payouts(until) - no_payout, transfers,
                                    fetch_transfer)
    # Widen the ledger side by what the gateway listed (entries recorded just after the
    # window), and the gateway side by single fetches (objects just outside it).
    with transaction() as session:
        led_pay = _ledger_amounts(session, EntryKind.CAPTURE, AccountKind.ESCROW, since, until)
        led_pay.update(_ledger_amounts(session, EntryKind.CAPTURE, AccountKind.ESCROW, since,
                                       None, set(payments) | uncaptured))
        led_ref = _ledger_refunds(session, since, until, set(refunds) | unprocessed)
        led_trf, voided_trf = _ledger_transfers(session, since, until,
                                                set(transfers) | no_payout)
    # A processed refund whose refund.processed was lost (or came while a refund of ours
    # was still being asked) is recorded as that event would: one of ours settles its
    # attempt, one of our payments made outside the service (the dashboard) is recorded
    # as the booking's (payments.record_outside_refund: once per refund); then compared.
    if _record_outside_refunds(refunds, led_ref):
        with transaction() as session:
            led_ref = _ledger_refunds(session, since, until, set(refunds) | unprocessed)
    # A payout reversed at the gateway since it was posted is recorded as such (once per
    # reversal; its transfer.reversed event may never come), then compared for what is
    # left on it.
    if _record_reversals(led_trf, transfers, fetch_transfer):
        with transaction() as session:
            led_trf, voided_trf = _ledger_transfers(session, since, until,
                                                    set(transfers) | no_payout)
    findings: list[Finding] = []
    checked: dict[str, set[str]] = {}
    unanswered: set[str] = set()
    noted = {gid: gw.note_int(item, "booking_id")
             for items in (payments, refunds, transfers) for gid, item in items.items()}
    ours = _our_bookings(payments, refunds, transfers)
    for entity, gateway_items, led, fetch, none_at_gateway in (
        ("payment", payments, led_pay, fetch_payment, uncaptured),
        ("refund", refunds, led_ref, fetch_refund, unprocessed),
        ("transfer", transfers, led_trf, fetch_transfer, no_payout),
    ):
        amounts = {gid: _gateway_amount(entity, item) or 0 for gid, item in gateway_items.items()}
        found, seen, skipped = _compare(entity, amounts, led, fetch, noted, ours)
        findings += found
        unanswered |= skipped
        # An item of an open mismatch the gateway shows no money for now, and the ledger
        # none either: both agree (a reversed transfer paid nobody, a payment the gateway
        # no longer shows captured), so it is resolved.
        checked[entity] = seen | (none_at_gateway - skipped) | (
            voided_trf if entity == "transfer" else set())
    findings += [Finding("missing_in_ledger", "refund", gid, booking_id, None, amount,
                         "refund made outside the service, pending at the gateway: "
                         "recorded once processed")
                 for gid, (booking_id, amount) in outside_pending.items()]
    findings += hold_found
    findings += _fee_findings(payments, led_pay)
    # The window's transfers and those asked again (open rows, open mismatches, recent
    # payouts), on hold or released: a fee_differs of a transfer out of the window is
    # compared again, not resolved unseen.
    fee_found, checked["transfer:fee"] = _transfer_fee_findings(
        {**held, **listed_trf, **transfers})
    findings += fee_found
    _alert_new(_record(findings, checked))
    if default_window:
        redis_client().set(LAST_UNTIL_KEY, int(_marker(until, unanswered).timestamp()))
    if findings:
        log.warning("reconciliation found mismatches", extra={"count": len(findings)})
    return {"mismatches": len(findings), "payments": len(payments), "refunds": len(refunds),
            "transfers": len(transfers)}


def _changed_bookings(since: datetime) -> set[int]:
    """Bookings paid within HOLD_LOOKBACK a leg of which changed since ``since`` less
    HOLD_MARGIN (taken, given back, delivered, stopped): HOLD_BOOKINGS a run, in turn. By
    their capture entries from the first of the lookback (the created_at index), each
    looked up by its legs' booking index: no scan of every leg."""
    t = LedgerTransaction
    with transaction() as session:
        first = session.scalar(select(func.min(t.id)).where(
            t.created_at >= since - HOLD_LOOKBACK))
        if first is None:
            return set()
        changed = select(Leg.id).where(Leg.booking_id == t.booking_id,
                                       Leg.updated_at >= since - HOLD_MARGIN).exists()
        return {int(b) for b in _open_page(
            session, t.id, t.booking_id,
            (t.kind == EntryKind.CAPTURE.value) & (t.id >= first) & changed,
            OPEN_CURSOR_KEY + "holds", HOLD_BOOKINGS)}


def _unrecorded_holds(c, since: datetime, listed_trf: dict[str, dict]) -> list[Finding]:
    """Holds on our payments that no transfer row of ours names (a hold job killed
    between the gateway's answer and its commit, and never run again), found by listing
    each payment's transfers (GET /payments/{id}/transfers) and reading our leg in their
    notes: the payments of bookings whose legs changed lately, and of holds the window
    lists. Each is recorded as its leg's hold or given back (payments.adopt_unrecorded_hold)
    and reported as a ``missing_in_ledger`` transfer saying which; the next run, finding
    it named by a row, reversed, or released, resolves it. A payment the gateway cannot
    show now is asked next run."""
    from core.services import payments as pay  # payments imports nothing of this module

    bookings = _changed_bookings(since)
    bookings |= {b for t in listed_trf.values() if t.get("on_hold")
                 and isinstance(t.get("source"), str) and t["source"].startswith("pay_")
                 and (b := gw.note_int(t, "booking_id")) is not None}
    found: list[Finding] = []
    for payment_id, booking_id in pay.hold_payments(bookings).items():
        try:
            items = c.payment.transfers(payment_id, {}).get("items") or []
        except (gw.BadRequestError, gw.ServerError, gw.GatewayError) as exc:
            log.warning("a payment's transfers were not listed; asked next run",
                        extra={"booking_id": booking_id, "error": str(exc)[:200]})
            continue
        for t in pay.unrecorded_holds(booking_id, items):
            try:
                outcome = pay.adopt_unrecorded_hold(t, booking_id)
            except (gw.BadRequestError, gw.ServerError, gw.GatewayError) as exc:
                log.warning("an unrecorded hold was not settled; looked at next run",
                            extra={"booking_id": booking_id, "error": str(exc)[:200]})
                outcome = "unanswered"
            detail = _HOLD_OUTCOMES.get(outcome)
            if detail is None:
                continue
            found.append(Finding("missing_in_ledger", "transfer", str(t["id"]), booking_id,
                                 None, int(t.get("amount") or 0)
                                 - int(t.get("amount_reversed") or 0),
                                 detail.format(leg=gw.note_int(t, "leg_id"))))
    return found


def _ledger_refunds(session: Session, since: datetime, until: datetime, refs: set[str]
                    ) -> dict[str, tuple[int, int | None]]:
    """The ledger's processed refunds by gateway refund id: in the window, or of ``refs``."""
    led_ref = _ledger_amounts(session, EntryKind.REFUND_PROCESSED,
                              AccountKind.GATEWAY_CLEARING, since, until)
    led_ref.update(_ledger_amounts(session, EntryKind.REFUND_PROCESSED,
                                   AccountKind.GATEWAY_CLEARING, since, None, refs))
    return led_ref


def _record_outside_refunds(refunds: dict[str, dict],
                            led_ref: dict[str, tuple[int, int | None]]) -> int:
    """Record the processed refunds the ledger lacks as their lost refund.processed would
    (payments.apply_settled_refund): one of our attempts still open is settled, one of
    our payments made outside the service is recorded as the booking's
    (record_outside_refund); one of a payment not ours, or of an attempt of ours that
    failed before, is left as it is. How many were recorded now."""
    from core.services import payments  # payments imports nothing of this module

    return sum(payments.apply_settled_refund(item, f"reconcile:{gid}")
               in ("outside-refund", "refunded")
               for gid, item in refunds.items() if gid not in led_ref)


def _ledger_transfers(session: Session, since: datetime, until: datetime, refs: set[str]
                      ) -> tuple[dict[str, tuple[int, int | None]], set[str]]:
    """The ledger's payouts by transfer (in the window, or of ``refs``), each less what a
    failure voided and what reversals took back; and the transfers whose payout nothing
    is left of (nothing to compare: what was found of them before is over)."""
    led_trf = _ledger_amounts(session, EntryKind.TRANSFER_PROCESSED,
                              AccountKind.GATEWAY_CLEARING, since, until)
    led_trf.update(_ledger_amounts(session, EntryKind.TRANSFER_PROCESSED,
                                   AccountKind.GATEWAY_CLEARING, since, None, refs))
    gone: set[str] = set()
    for kind in (EntryKind.TRANSFER_FAILED, EntryKind.TRANSFER_REVERSED):
        for ref, (back, _) in _ledger_amounts(session, kind, AccountKind.GATEWAY_CLEARING,
                                              since, None, set(led_trf)).items():
            amount, booking_id = led_trf[ref]
            if amount - back > 0:
                led_trf[ref] = (amount - back, booking_id)
            else:
                del led_trf[ref]
                gone.add(ref)
    return led_trf, gone


def _cached(fetch, *, keep_no_answer: bool = False, seen: dict[str, dict] | None = None):
    """_fetch_one of ``fetch``, each item asked of the gateway once a run (a _NoAnswer is
    not kept: asked again, it may answer; unless ``keep_no_answer``: an item the gateway
    could not show is then not compared this run however often it comes up in it). Each
    item the gateway showed is kept in ``seen`` too, if given."""
    known: dict[str, dict | None] = {}
    unanswered: set[str] = set()

    def fetch_one(gateway_id: str) -> dict | None:
        if gateway_id in unanswered:
            raise _NoAnswer
        if gateway_id not in known:
            try:
                known[gateway_id] = _fetch_one(fetch, gateway_id)
            except _NoAnswer:
                if keep_no_answer:
                    unanswered.add(gateway_id)
                raise
            item = known[gateway_id]
            if seen is not None and item:
                seen[gateway_id] = item
        return known[gateway_id]

    return fetch_one


def _record_reversals(led_trf: dict[str, tuple[int, int | None]],
                      transfers: dict[str, dict], fetch_one) -> int:
    """Record the reversals of payouts in ``led_trf`` whose transfer has less left on it
    at the gateway than the ledger paid out (payments.record_transfer_reversal: keyed by
    the reversal, so a run finding one recorded by its event changes nothing); how many
    were recorded now."""
    from core.services import payments  # payments imports nothing of this module

    recorded = 0
    for tid, (paid, _) in list(led_trf.items()):
        item = transfers.get(tid)
        if item is None:
            try:
                item = fetch_one(tid)
            except _NoAnswer:
                continue
        if not item or item.get("status") not in ("processed", "partially_reversed",
                                                  "reversed"):
            continue
        left = int(item.get("amount") or 0) - int(item.get("amount_reversed") or 0)
        if left < paid:
            recorded += payments.record_transfer_reversal(
                item, f"reconcile:{tid}") == "transfer-reversed"
    return recorded


def _our_bookings(payments: dict[str, dict], refunds: dict[str, dict],
                  transfers: dict[str, dict]) -> dict[str, int | None]:
    """The booking of ours each gateway item is (None: not one of ours), a query or two
    per kind. A booking id in notes alone is no proof: another system on the account
    numbers its bookings too. A payment is ours by payments._named_booking's rule (our
    booking's reference beside its id); a refund, by our attempt row of its id, else by
    its payment captured in our ledger (one made in the dashboard has no notes of ours);
    a transfer, by our leg row of its id, else by its notes' leg being that booking's."""
    from core.services import payments as pay  # payments imports nothing of this module

    out = dict(zip(payments, pay.named_bookings(list(payments.values())), strict=True))
    pids = {r["payment_id"] for r in refunds.values() if isinstance(r.get("payment_id"), str)}
    named_legs = {gid: (gw.note_int(t, "leg_id"), gw.note_int(t, "booking_id"))
                  for gid, t in transfers.items()}
    with transaction() as session:
        by_row = dict(session.execute(select(Refund.gateway_refund_id, Refund.booking_id)
                                      .where(Refund.gateway_refund_id.in_(set(refunds))))
                      .tuples().all()) if refunds else {}
        # A payment captured in our ledger: its capture entry, keyed by the payment.
        captured = dict(session.execute(
            select(LedgerTransaction.gateway_ref, LedgerTransaction.booking_id).where(
                LedgerTransaction.idempotency_key.in_({f"capture:{p}" for p in pids})))
            .tuples().all()) if pids else {}
        leg_rows = dict(session.execute(select(LegTransfer.transfer_id, LegTransfer.booking_id)
                                        .where(LegTransfer.transfer_id.in_(set(transfers))))
                        .tuples().all()) if transfers else {}
        leg_ids = {leg for leg, _ in named_legs.values() if leg is not None}
        legs = dict(session.execute(select(Leg.id, Leg.booking_id).where(Leg.id.in_(leg_ids)))
                    .tuples().all()) if leg_ids else {}
    for gid, r in refunds.items():
        pid = r.get("payment_id")
        out[gid] = by_row.get(gid) or (captured.get(pid) if isinstance(pid, str) else None)
    for gid, (leg, booking_id) in named_legs.items():
        out[gid] = leg_rows.get(gid) or (
            booking_id if leg is not None and legs.get(leg) == booking_id else None)
    return out


def _marker(until: datetime, unanswered: set[str]) -> datetime:
    """Where the next run may start: ``until``, or the earliest ledger entry of an item the
    gateway could not show if that is earlier. Such an item came into this run by its
    entry being in the window: a next window starting after the entry would never compare
    it (an entry older than CATCH_UP is given up, as any item of a longer outage is)."""
    if not unanswered:
        return until
    with transaction() as session:
        earliest = session.scalar(select(func.min(LedgerTransaction.created_at)).where(
            LedgerTransaction.gateway_ref.in_(unanswered)))
    return min(until, earliest) if earliest is not None else until


def _window_start(until: datetime) -> datetime:
    """The last day, or back to where the last completed run ended if that is earlier."""
    since = until - WINDOW
    raw = redis_client().get(LAST_UNTIL_KEY)
    if raw is not None:
        last = datetime.fromtimestamp(int(raw), UTC)
        since = max(min(since, last), until - CATCH_UP)
    return since


_BIGINT = 2**63


def _storable(f: Finding) -> bool:
    """A finding our columns can hold: an answer no real gateway gives (an id over 60
    characters, an amount beyond bigint) is logged and left out, not a failed run."""
    if len(f.gateway_id) <= 60 and all(
            a is None or -_BIGINT <= a < _BIGINT for a in (f.ledger_amount, f.gateway_amount)):
        return True
    log.warning("a gateway item our columns cannot hold; not recorded",
                extra={"entity": f.entity, "gateway_id": f.gateway_id[:60]})
    return False


def _alert_new(new: list[Finding]) -> None:
    """A run that found new mismatches (money the ledger and the gateway disagree on):
    ops hear once, with how many and the first booking (or gateway id)."""
    from core.services.dispatch import alert_ops  # dispatch imports payments

    if not new:
        return
    with transaction() as session:
        first = next((f for f in new if f.booking_id is not None), new[0])
        booking = session.get(Booking, first.booking_id) if first.booking_id else None
        alert_ops(session, "payment.ops_reconcile_mismatch", booking_id=None,
                  dedupe_key=f"reconcile-{clock.now().timestamp():.0f}-{first.gateway_id}",
                  count=len(new), first=booking.reference if booking else first.gateway_id)


def _record(findings: list[Finding], checked: dict[str, set[str]]) -> list[Finding]:
    """Record this run's findings (once per key) and resolve the open mismatches this
    run compared and found no more. A resolved mismatch found again is reopened as found
    now (its first_seen_at): a new difference, listed among the newest, not among the
    old ones below where operators page from. Returns the findings not open before."""
    now = clock.now()
    m = ReconciliationMismatch.__table__.c
    with transaction() as session:
        open_before = set(session.execute(
            select(m.kind, m.entity, m.gateway_id).where(m.resolved_at.is_(None))).tuples())
        new = [f for f in filter(_storable, findings)
               if (f.kind, f.entity, f.gateway_id) not in open_before]
        keys = set()
        for f in filter(_storable, findings):
            keys.add((f.kind, f.entity, f.gateway_id))
            values = {"booking_id": f.booking_id, "ledger_amount_paise": f.ledger_amount,
                      "gateway_amount_paise": f.gateway_amount, "detail": f.detail[:200],
                      "last_seen_at": now, "resolved_at": None}
            session.execute(
                insert(ReconciliationMismatch)
                .values(kind=f.kind, entity=f.entity, gateway_id=f.gateway_id,
                        first_seen_at=now, **values)
                .on_conflict_do_update(
                    constraint="uq_reconciliation_mismatches_key",
                    set_={**values, "first_seen_at": case(
                        (m.resolved_at.is_(None), m.first_seen_at), else_=now)}))
        for row in session.scalars(select(ReconciliationMismatch).where(
                ReconciliationMismatch.resolved_at.is_(None))):
            if (row.kind, row.entity, row.gateway_id) not in keys and (
                    row.gateway_id in checked.get(row.entity, set()) or (
                        # A fee compared apart from the money (a transfer's, on hold).
                        row.kind == "fee_differs"
                        and row.gateway_id in checked.get(f"{row.entity}:fee", set()))):
                row.resolved_at = now
    return new


def list_mismatches(session: Session, *, include_resolved: bool = False, offset: int = 0,
                    limit: int | None = None,
                    after: tuple[datetime, int] | None = None) -> list[dict]:
    """Mismatches for operators, newest found first (open ones only unless asked), a page
    of them if asked: from ``offset``, or after the (first_seen_at, id) of the last row an
    operator saw (a keyset: new mismatches meanwhile repeat no row on the next page).

    Not by last_seen_at: every run sets it on each open mismatch it finds again, so a run
    between two page reads moved the unread rows above the cursor, out of the next pages.
    A row's id never changes, nor its first_seen_at while it is open: only a resolved
    mismatch found again takes the time it was found again (_record), as a new one would
    (with ``include_resolved``, a resolved row not read yet then moves up, as a new row)."""
    key = (ReconciliationMismatch.first_seen_at, ReconciliationMismatch.id)
    stmt = select(ReconciliationMismatch).order_by(*(col.desc() for col in key))
    if after is not None:
        stmt = stmt.where(tuple_(*key) < tuple_(*after))
    stmt = stmt.offset(offset).limit(limit)
    if not include_resolved:
        stmt = stmt.where(ReconciliationMismatch.resolved_at.is_(None))
    return [
        {"id": m.id, "kind": m.kind, "entity": m.entity, "gateway_id": m.gateway_id,
         "booking_id": m.booking_id, "ledger_amount_paise": m.ledger_amount_paise,
         "gateway_amount_paise": m.gateway_amount_paise, "detail": m.detail,
         "first_seen_at": m.first_seen_at.isoformat(), "last_seen_at": m.last_seen_at.isoformat(),
         "resolved_at": m.resolved_at.isoformat() if m.resolved_at else None}
        for m in session.scalars(stmt)
    ]

"""The ledger in PostgreSQL: append-only, balanced, idempotent, never overdrawn, and
serialized under concurrency (two real sessions in two threads)."""

from __future__ import annotations

import itertools
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from core.adapters.db import engine, transaction
from core.adapters.models import Leg
from core.adapters.payment_models import LedgerPosting, LedgerTransaction
from core.domain import ledger as rules
from core.services import ledger, payments
from tests.test_payments_support import (
    advance,
    confirmed_booking,
    ledger_checked,
    new_partner,
    paid_booking,
)

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def _captured(booking_id: int, amount: int = 50_000, pid: str = "pay_test1") -> None:
    with transaction() as s:
        ledger.lock_booking(s, booking_id)
        assert ledger.post(s, rules.capture(booking_id, pid, amount), actor="test")


def test_the_database_refuses_update_and_delete_on_postings(clean_db):
    bid = confirmed_booking()
    _captured(bid)
    for sql in ("UPDATE ledger_postings SET amount_paise = amount_paise * 2",
                "DELETE FROM ledger_postings",
                "UPDATE ledger_transactions SET memo = 'edited'",
                "DELETE FROM ledger_transactions"):
        with pytest.raises(DBAPIError, match="append-only"), engine().begin() as conn:
            conn.execute(text(sql))
    with transaction() as s:
        assert s.scalar(select(func.sum(LedgerPosting.amount_paise)).where(
            LedgerPosting.account_kind == "escrow")) == 50_000


def test_the_history_tables_refuse_truncate_and_an_entry_takes_no_later_postings(clean_db):
    bid = confirmed_booking()
    _captured(bid)
    for table in ("ledger_postings", "ledger_transactions", "transitions"):
        with pytest.raises(DBAPIError, match="append-only"), engine().begin() as conn:
            conn.execute(text(f"TRUNCATE {table} CASCADE"))
    # Balanced postings added to the committed capture in a later transaction: refused.
    with pytest.raises(DBAPIError, match="written already"), engine().begin() as conn:
        conn.execute(text(
            "INSERT INTO ledger_postings (transaction_id, account, account_kind, booking_id, "
            "amount_paise, created_at) SELECT id, a, k, :b, v, now() FROM ledger_transactions, "
            "(VALUES "
            "('gateway_clearing', 'gateway_clearing', -4000000), "
            "('escrow:b' || :b, 'escrow', 4000000)) AS p(a, k, v)"), {"b": bid})
    with transaction() as s:
        assert ledger.balance(s, rules.escrow(bid)) == 50_000
        assert s.scalar(select(func.count()).select_from(LedgerPosting)) == 2


def test_the_database_refuses_an_unbalanced_entry_and_negative_escrow(clean_db):
    bid = confirmed_booking()
    with pytest.raises(DBAPIError, match="does not balance"), engine().begin() as conn:
        tx = conn.execute(text(
            "INSERT INTO ledger_transactions (idempotency_key, kind, booking_id, actor, memo, "
            "created_at) VALUES ('x', 'capture', :b, 'test', 'm', now()) RETURNING id"),
            {"b": bid}).scalar()
        for account, kind, amount in ((f"escrow:b{bid}", "escrow", 100),
                                      ("gateway_clearing", "gateway_clearing", -99)):
            conn.execute(text(
                "INSERT INTO ledger_postings (transaction_id, account, account_kind, "
                "booking_id, amount_paise, created_at) VALUES (:t, :a, :k, :b, :m, now())"),
                {"t": tx, "a": account, "k": kind, "b": bid, "m": amount})
    with pytest.raises(DBAPIError, match="below zero"), engine().begin() as conn:
        tx = conn.execute(text(
            "INSERT INTO ledger_transactions (idempotency_key, kind, booking_id, actor, memo, "
            "created_at) VALUES ('y', 'release', :b, 'test', 'm', now()) RETURNING id"),
            {"b": bid}).scalar()
        for account, kind, amount in ((f"escrow:b{bid}", "escrow", -100),
                                      ("platform_commission", "platform_commission", 100)):
            conn.execute(text(
                "INSERT INTO ledger_postings (transaction_id, account, account_kind, "
                "booking_id, amount_paise, created_at) VALUES (:t, :a, :k, :b, :m, now())"),
                {"t": tx, "a": account, "k": kind, "b": bid, "m": amount})


def test_the_same_cause_is_recorded_once_and_escrow_cannot_be_overdrawn(clean_db):
    bid = confirmed_booking()
    _captured(bid, 10_000)
    with transaction() as s:
        ledger.lock_booking(s, bid)
        assert not ledger.post(s, rules.capture(bid, "pay_test1", 10_000), actor="test")
    with pytest.raises(rules.InsufficientEscrow), transaction() as s:
        ledger.lock_booking(s, bid)
        ledger.post(s, rules.refund_requested(bid, 1, 10_001), actor="test")
    with transaction() as s:
        assert ledger.booking_summary(s, bid)["escrow_paise"] == 10_000
        assert s.scalar(select(func.count()).select_from(LedgerTransaction)) == 1


def test_two_concurrent_releases_of_the_same_leg_post_once(live):
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="delivered")
    barrier = threading.Barrier(2)
    results: list[str] = []
    errors: list[BaseException] = []

    def release() -> None:
        try:
            barrier.wait(timeout=5)
            results.append(payments.release_leg(leg_id))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=release) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors
    assert sorted(results) == ["already-released", "released"]
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(LedgerTransaction).where(
            LedgerTransaction.kind == "release")) == 1
        assert ledger.booking_summary(s, bid)["escrow_paise"] == 0


def test_two_sessions_posting_the_same_key_without_the_lock_still_post_once(clean_db):
    bid = confirmed_booking()
    _captured(bid, 20_000)
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def post() -> None:
        try:
            with transaction() as s:
                barrier.wait(timeout=5)
                outcomes.append(ledger.post(s, rules.refund_requested(bid, 7, 5_000),
                                            actor="test"))
        except BaseException as exc:  # noqa: BLE001
            outcomes.append(exc)

    threads = [threading.Thread(target=post) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(map(str, outcomes)) == ["False", "True"]
    with transaction() as s:
        assert ledger.booking_summary(s, bid)["escrow_paise"] == 15_000


def test_concurrent_refunds_that_together_overdraw_escrow_post_one_and_refuse_the_other(
        clean_db):
    """post() takes the booking's row lock itself before reading balances: two different
    refunds racing for the same escrow cannot both pass the check."""
    bid = confirmed_booking()
    _captured(bid, 20_000)
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def refund(refund_id: int) -> None:
        try:
            with transaction() as s:
                barrier.wait(timeout=5)
                outcomes.append(ledger.post(s, rules.refund_requested(bid, refund_id, 15_000),
                                            actor="test"))
        except rules.InsufficientEscrow as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=refund, args=(i,)) for i in (11, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(map(str, outcomes)) == ["True", "insufficient_escrow"]
    with transaction() as s:
        assert ledger.booking_summary(s, bid)["escrow_paise"] == 5_000


_phones = itertools.count(1)

OPS = st.lists(st.one_of(
    st.tuples(st.just("capture"), st.sampled_from(["pay_a", "pay_b"]),
              st.integers(100, 50_000)),
    st.tuples(st.just("release"), st.integers(0, 1), st.integers(0, 30_000)),
    st.tuples(st.just("refund"), st.integers(1, 3), st.integers(1, 60_000)),
    st.tuples(st.just("settle"), st.integers(1, 3), st.booleans()),
), max_size=14)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, replay=st.lists(st.integers(0, 13), max_size=6))
def test_random_money_sequences_keep_every_invariant(clean_db, ops, replay):
    """Captures, releases, refunds and their settlement in any order, with duplicates:
    the ledger agrees with a pure model, never overdraws escrow, and sums to zero."""
    bid = confirmed_booking(f"+9198120{next(_phones):05d}")
    partner = new_partner(f"+9198121{next(_phones):05d}")
    with transaction() as s:
        first = s.scalar(select(Leg).where(Leg.booking_id == bid))
        assert first is not None
        second = Leg(booking_id=bid, sequence=2, status="pending", from_lat=0, from_lng=0,
                     to_lat=0, to_lng=0, distance_m=1, payout_paise=0, otp_failures=0)
        s.add(second)
        s.flush()
        leg_ids = [first.id, second.id]
    model: dict[rules.Account, int] = {}
    done: dict[str, rules.Entry] = {}
    requested: dict[int, int] = {}
    entries: list[rules.Entry] = []

    def build(op) -> rules.Entry | None:
        kind = op[0]
        if kind == "capture":
            return rules.capture(bid, f"{op[1]}_{bid}", op[2])
        if kind == "release":
            if op[2] == 0:
                return None
            return rules.release(bid, leg_ids[op[1]], partner, op[2] - op[2] // 10, op[2] // 10)
        if kind == "refund":
            requested.setdefault(op[1], op[2])
            return rules.refund_requested(bid, bid * 10 + op[1], requested[op[1]])
        if op[1] not in requested:
            return None
        make = rules.refund_processed if op[2] else rules.refund_failed
        return make(bid, bid * 10 + op[1], requested[op[1]], None)

    def body(e: rules.Entry) -> tuple:
        return e.kind, sorted((p.account.key, p.leg_id or 0, p.amount_paise)
                              for p in e.postings)

    sequence = [build(op) for op in ops]
    sequence += [sequence[i] for i in replay if i < len(sequence)]  # duplicates, late
    for entry in sequence:
        if entry is None:
            continue
        before = done.get(entry.idempotency_key)
        # A key recorded before: the very same entry is a retry (False); another one (the
        # other way of settling a refund, another amount) is refused, never taken for one.
        expect: object = True if before is None else (
            False if body(before) == body(entry) else "conflict")
        if expect is True:
            try:
                rules.check_balances(entry, model)
            except rules.InsufficientEscrow:
                expect = False
        try:
            with transaction() as s:
                ledger.lock_booking(s, bid)
                posted: object = ledger.post(s, entry, actor="property")
        except rules.InsufficientEscrow:
            posted = False
        except rules.EntryConflict:
            posted = "conflict"
        assert posted == expect, entry
        if posted is True:
            done[entry.idempotency_key] = entry
            entries.append(entry)
            model = rules.apply(model, [entry])
    with transaction() as s:
        for account, value in model.items():
            if account.kind in rules.NON_NEGATIVE:
                assert value >= 0
            if account.booking_id == bid or account.partner_id == partner:
                assert ledger.balance(s, account) == value
        assert ledger.total(s) == 0
        summary = ledger.booking_summary(s, bid)
        assert summary["escrow_paise"] >= 0
        assert (summary["released_paise"] + summary["refunded_paise"]
                + summary["refunds_pending_paise"] <= summary["captured_paise"])
        assert s.scalar(select(func.count()).select_from(LedgerTransaction).where(
            LedgerTransaction.booking_id == bid)) == len(entries)


def test_balances_as_of_a_point_in_time(clean_db):
    from datetime import timedelta

    from core import clock

    bid = confirmed_booking()
    t0 = clock.now()
    clock.freeze(t0)
    _captured(bid, 30_000)
    clock.freeze(t0 + timedelta(hours=1))
    with transaction() as s:
        ledger.lock_booking(s, bid)
        ledger.post(s, rules.refund_requested(bid, 1, 10_000), actor="test")
    with transaction() as s:
        assert ledger.balance(s, rules.escrow(bid), at=t0) == 30_000
        assert ledger.balance(s, rules.escrow(bid)) == 20_000
        assert ledger.account_balances(s, at=t0)[f"escrow:b{bid}"] == 30_000

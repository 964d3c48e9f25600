"""The database's commit-time check, the ledger's backstop behind ledger_post(): no
writer, even one that goes around ledger_post(), takes an account that must never go
below zero there. Migration 0030 added reversed payouts to escrow and refunds pending."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from core.adapters.db import engine
from tests.test_payments_support import confirmed_booking

pytestmark = pytest.mark.db


def _raw_entry(conn, booking_id: int, key: str, kind: str,
               postings: list[tuple[str, str, int]]) -> None:
    """An entry written by hand, around ledger_post() and its guarded balances."""
    tx = conn.execute(text(
        "INSERT INTO ledger_transactions (idempotency_key, kind, booking_id, actor, memo, "
        "created_at) VALUES (:k, :kind, :b, 'test', 'm', now()) RETURNING id"),
        {"k": key, "kind": kind, "b": booking_id}).scalar()
    for account, account_kind, amount in postings:
        conn.execute(text(
            "INSERT INTO ledger_postings (transaction_id, account, account_kind, "
            "booking_id, amount_paise, created_at) VALUES (:t, :a, :ak, :b, :m, now())"),
            {"t": tx, "a": account, "ak": account_kind, "b": booking_id, "m": amount})


@pytest.mark.parametrize("kind", ["escrow", "refunds_pending", "reversed_payouts"])
def test_the_database_refuses_an_account_below_zero_at_commit(clean_db, kind):
    bid = confirmed_booking()
    with pytest.raises(DBAPIError, match="below zero"), engine().begin() as conn:
        _raw_entry(conn, bid, f"raw-{kind}", "release",
                   [(f"{kind}:b{bid}", kind, -100),
                    ("platform_commission", "platform_commission", 100)])
    with engine().connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ledger_postings WHERE booking_id = :b"),
                            {"b": bid}).scalar() == 0


def test_money_held_in_reversed_payouts_can_leave_it(clean_db):
    """The check refuses only a balance below zero: a reversal in, and all of it out."""
    bid = confirmed_booking()
    with engine().begin() as conn:
        _raw_entry(conn, bid, "raw-in", "transfer_reversed",
                   [("gateway_clearing", "gateway_clearing", -300),
                    (f"reversed_payouts:b{bid}", "reversed_payouts", 300)])
    with engine().begin() as conn:
        _raw_entry(conn, bid, "raw-out", "release",
                   [(f"reversed_payouts:b{bid}", "reversed_payouts", -300),
                    ("platform_commission", "platform_commission", 300)])
    with engine().connect() as conn:
        assert conn.execute(text(
            "SELECT sum(amount_paise) FROM ledger_postings WHERE account = :a"),
            {"a": f"reversed_payouts:b{bid}"}).scalar() == 0

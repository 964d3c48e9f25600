"""The ledger's shape, held by the database (migration 0023), for any writer, not only
ledger_post(): a posting's account must match its kind and ids (a posting to a booking's
escrow labelled as another kind escaped the non-negative check, while balances are read
by the account's name), and an entry must have postings (an empty one took its cause's
idempotency key, and the real entry was then "recorded already"). Written as SQL, as a
person at a psql prompt would; from a review of the money path (session 19)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from core.adapters.db import engine, transaction
from core.domain import ledger as rules
from core.services import ledger
from tests.test_payments_support import confirmed_booking

pytestmark = pytest.mark.db


def _captured(booking_id: int, amount: int, pid: str) -> None:
    with transaction() as s:
        ledger.lock_booking(s, booking_id)
        assert ledger.post(s, rules.capture(booking_id, pid, amount), actor="test")


def test_a_posting_to_escrow_labelled_another_kind_cannot_overdraw_it(clean_db):
    """A finance operator's hand-made correction (or any writer but ledger_post) names a
    booking's escrow account with the wrong account_kind: the commit-time check asks for a
    non-negative balance only of postings *labelled* escrow, while every balance is read by
    the account's name. 40,000 paise more than the customer paid leave the booking's
    escrow, and the books say escrow is -40,000."""
    bid = confirmed_booking()
    _captured(bid, 10_000, "pay_kind1")
    with pytest.raises(DBAPIError), engine().begin() as conn:
        tx = conn.execute(text(
            "INSERT INTO ledger_transactions (idempotency_key, kind, booking_id, actor, memo, "
            "created_at) VALUES ('fix:1', 'release', :b, 'ops:finance', 'correction', now()) "
            "RETURNING id"), {"b": bid}).scalar()
        for account, kind, amount in ((f"escrow:b{bid}", "platform_commission", -50_000),
                                      ("platform_commission", "platform_commission", 50_000)):
            conn.execute(text(
                "INSERT INTO ledger_postings (transaction_id, account, account_kind, "
                "booking_id, amount_paise, created_at) VALUES (:t, :a, :k, :b, :m, now())"),
                {"t": tx, "a": account, "k": kind, "b": bid, "m": amount})
    with transaction() as s:
        assert ledger.balance(s, rules.escrow(bid)) == 10_000


def test_an_entry_without_postings_is_refused_and_burns_no_idempotency_key(clean_db):
    """An entry row with no postings commits: the commit-time check runs only for postings
    inserted. Its idempotency key is then taken, so the real entry of that cause (here the
    capture of the customer's payment) is a no-op 'exists' and the money is never booked."""
    bid = confirmed_booking()
    with pytest.raises(DBAPIError), engine().begin() as conn:
        conn.execute(text(
            "INSERT INTO ledger_transactions (idempotency_key, kind, booking_id, gateway_ref, "
            "actor, memo, created_at) VALUES ('capture:pay_empty1', 'capture', :b, "
            "'pay_empty1', 'test', 'm', now())"), {"b": bid})
    with transaction() as s:
        ledger.lock_booking(s, bid)
        assert ledger.post(s, rules.capture(bid, "pay_empty1", 10_000), actor="test")
    with transaction() as s:
        assert ledger.balance(s, rules.escrow(bid)) == 10_000

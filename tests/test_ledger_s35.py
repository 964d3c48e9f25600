"""ledger.post() calls ledger_post() through the driver's cursor on the session's
connection (session 35, for CPU): in the session's own transaction, and with the database's
errors reaching callers as SQLAlchemy's exceptions, as they did through session.scalar()."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import NullPool

from core.adapters.db import engine, transaction
from core.adapters.payment_models import LedgerPosting
from core.domain import ledger as rules
from core.services import ledger
from tests.test_payments_support import confirmed_booking, ledger_checked

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def _escrow(booking_id: int) -> int:
    with transaction() as s:
        return int(s.scalar(select(func.coalesce(func.sum(LedgerPosting.amount_paise), 0))
                            .where(LedgerPosting.account == f"escrow:b{booking_id}")) or 0)


def test_a_post_is_part_of_the_sessions_transaction_and_rolls_back_with_it(clean_db):
    bid = confirmed_booking()

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction() as s:
        assert ledger.post(s, rules.capture(bid, "pay_rb", 10_000), actor="test")
        # The session sees its own entry: one transaction, one connection.
        assert s.scalar(select(func.count()).select_from(LedgerPosting)) == 2
        raise Boom
    assert _escrow(bid) == 0
    with transaction() as s:
        assert ledger.post(s, rules.capture(bid, "pay_rb", 10_000), actor="test")
        assert not ledger.post(s, rules.capture(bid, "pay_rb", 10_000), actor="test")
    assert _escrow(bid) == 10_000


def test_a_database_refusal_is_sqlalchemys_integrity_error_and_the_session_goes_on(clean_db):
    # No such booking: the foreign key refuses the entry inside ledger_post().
    with pytest.raises(IntegrityError) as caught, transaction() as s:
        ledger.post(s, rules.capture(987_654, "pay_none", 10_000), actor="test")
    assert "fk_ledger_transactions_booking_id_bookings" in str(caught.value.orig)
    # The parameters are not in the message (phones, names: hide_parameters, as the engine).
    assert "pay_none" not in str(caught.value)
    bid = confirmed_booking()
    with transaction() as s:
        assert ledger.post(s, rules.capture(bid, "pay_ok", 5_000), actor="test")
    assert _escrow(bid) == 5_000


def test_a_lock_wait_that_times_out_is_sqlalchemys_operational_error(clean_db):
    # Another transaction holds the booking's row lock; ours gives up after lock_timeout
    # (a LockNotAvailable from the driver), which the web answers 503 and RQ retries:
    # both look for SQLAlchemy's OperationalError.
    bid = confirmed_booking()
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with engine().begin() as conn:
            conn.execute(text("SELECT 1 FROM bookings WHERE id = :b FOR UPDATE"), {"b": bid})
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(30)
        with pytest.raises(OperationalError), transaction() as s:
            s.execute(text("SET LOCAL lock_timeout = '50ms'"))
            ledger.post(s, rules.capture(bid, "pay_wait", 10_000), actor="test")
    finally:
        release.set()
        t.join(30)
    assert _escrow(bid) == 0


def test_a_connection_killed_under_a_post_is_not_handed_out_again(clean_db):
    bid = confirmed_booking()
    outside = create_engine(engine().url, poolclass=NullPool)
    # The backend dies between the transaction's first statement and the post (a
    # PostgreSQL restart, a failover).
    with pytest.raises(OperationalError) as caught, transaction() as s:
        pid = s.scalar(text("SELECT pg_backend_pid()"))
        with outside.begin() as other:
            assert other.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        ledger.post(s, rules.capture(bid, "pay_gone", 10_000), actor="test")
    outside.dispose()
    assert caught.value.connection_invalidated
    for _ in range(8):  # every pooled connection in turn: none is the dead one
        with transaction() as s:
            assert s.scalar(text("SELECT pg_backend_pid()")) != pid
    with transaction() as s:
        assert ledger.post(s, rules.capture(bid, "pay_gone", 10_000), actor="test")
    assert _escrow(bid) == 10_000


def test_a_booking_added_in_the_same_session_is_flushed_before_the_post(clean_db):
    # session.scalar() flushed pending ORM rows before the call; the driver's cursor must
    # see them too: here a booking's row added just now (its lock, the entry's foreign key).
    from core.adapters.models import Booking

    bid = confirmed_booking()
    new_id = bid + 1000
    with transaction() as s:
        original = s.get(Booking, bid)
        assert original is not None
        s.add(Booking(**{c.key: getattr(original, c.key) for c in Booking.__table__.columns
                         if c.key not in ("id", "reference")},
                      id=new_id, reference=f"{original.reference[:-1]}Z"))
        assert ledger.post(s, rules.capture(new_id, "pay_new", 7_000), actor="test")
    assert _escrow(new_id) == 7_000

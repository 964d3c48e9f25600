"""Session 36, money: the payments sweep's loops caught RQ's job timeout as "one booking's
trouble" and went on to the next booking with no time limit left (the timeout fires once),
until RQ killed the work horse outright mid-work. Each loop now lets it through: the sweep
ends failed at once and the rest waits for the next sweep, as after any failed run."""

from __future__ import annotations

from datetime import timedelta

import pytest
from rq.timeouts import JobTimeoutException

from core import clock
from core.services import payments
from tests.test_payments_support import confirmed_booking, ledger_checked, link_of, run

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def _out_of_time(seen: list[int]):
    def raiser(key, *args, **kwargs):
        seen.append(key)
        raise JobTimeoutException("Task exceeded maximum timeout value (test)")
    return raiser


def test_the_expiry_loop_stops_when_the_job_is_out_of_time(live, monkeypatch):
    bookings = [confirmed_booking(f"+9198765{n:05d}") for n in (1, 2)]
    clock.freeze(clock.now() + payments.payment_link_ttl() + timedelta(minutes=5))
    seen: list[int] = []
    monkeypatch.setattr(payments, "_expire_if_unpaid", _out_of_time(seen))
    with pytest.raises(JobTimeoutException):
        payments.expire_unpaid()
    assert len(seen) == 1 and seen[0] in bookings  # the second booking waits


def test_the_gateway_look_up_out_of_time_is_not_a_gateway_outage(live, monkeypatch):
    """A timeout inside the link look-up was taken for "the gateway is down": the other
    bookings were then closed without asking it, past the job's time."""
    bookings = [confirmed_booking(f"+9198765{n:05d}") for n in (3, 4)]
    run()  # their links are made
    assert all(link_of(b).gateway_id for b in bookings)
    clock.freeze(clock.now() + payments.payment_link_ttl() + timedelta(minutes=5))
    closed: list[int] = []
    monkeypatch.setattr(payments, "_expire_if_unpaid",
                        lambda booking_id, *a, **k: closed.append(booking_id) or 1)
    calls: list[str] = []

    class OutOfTime:
        def fetch(self, link_id):
            calls.append(link_id)
            raise JobTimeoutException("Task exceeded maximum timeout value (test)")

    client = payments.gw.client()
    monkeypatch.setattr(client, "payment_link", OutOfTime())
    monkeypatch.setattr(payments.gw, "client", lambda: client)
    with pytest.raises(JobTimeoutException):
        payments.expire_unpaid()
    assert len(calls) == 1 and closed == []


def test_starting_waiting_refunds_stops_when_the_job_is_out_of_time(clean_db, monkeypatch):
    seen: list[int] = []
    monkeypatch.setattr(payments.ledger, "lock_booking",
                        lambda session, booking_id: _out_of_time(seen)(booking_id))
    with pytest.raises(JobTimeoutException):
        payments._start_waiting_refunds([101, 102])
    assert seen == [101]


def test_owed_legs_loop_stops_when_the_job_is_out_of_time(clean_db, monkeypatch):
    seen: list[int] = []
    monkeypatch.setattr(payments, "_job_alive", lambda job_id: False)
    monkeypatch.setattr(payments, "_settle_due", lambda leg_id: True)
    monkeypatch.setattr(payments, "enqueue", lambda *a, **k: None)
    monkeypatch.setattr(payments, "_tell_owed_long", _out_of_time(seen))
    with pytest.raises(JobTimeoutException):
        payments._resettle_unpaid([7, 8])
    assert seen == [7]

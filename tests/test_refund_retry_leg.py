"""Ops name the failed refund to try again (brief H2): ``POST /ops/bookings/<ref>/refund/
retry`` took one of a booking's failed refunds by itself when it had several (each leg's
reversed payout's, a cancellation's and an extra payment's), so ops could not say which.

Now ``?leg=<sequence>`` or ``?attempt=<n>`` names one; named none, one that gave up is
taken before ones that retry by themselves (as before), and two alike are not guessed
between: 409 ``which_refund`` lists them. One failed refund needs no name, as before.

Through the ops REST API, RQ, the real razorpay client, the sandbox emulator and its
signed webhooks."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.payment_models import Refund
from sandbox import razorpay as emu
from tests.test_api import API, sign_in
from tests.test_payments_gaps import cancel, pay_again
from tests.test_payments_support import booking, failed_jobs, ledger_checked, paid_booking, run
from tests.test_reversed_payouts_ops import (
    OPERATOR,
    refund_legs,
    resolve,
    two_reversed_legs,
    whole,
)

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


@pytest.fixture
def ops(client) -> dict[str, str]:
    return sign_in(client, OPERATOR, role="ops")


def retry(client, ops, ref: str, query: str = ""):
    return client.post(f"{API}/ops/bookings/{ref}/refund/retry{query}", headers=ops)


def _attempts(bid: int) -> list[tuple[int, str, str]]:
    with transaction() as s:
        return [(r.attempt, r.reason, r.status) for r in s.scalars(
            select(Refund).where(Refund.booking_id == bid).order_by(Refund.attempt))]


def _retry_audits() -> list[dict]:
    with transaction() as s:
        return [a.details for a in s.scalars(
            select(AuditEntry).where(AuditEntry.action == "refund.retry")
            .order_by(AuditEntry.id))]


def test_two_legs_failed_refunds_are_named_by_their_leg_not_guessed(live, client, ops,
                                                                    monkeypatch):
    """The refunds of both legs' reversed payouts gave up. Was: the retry took leg 2's
    (the latest) without a word. Now: 409 which_refund lists both and nothing is made;
    ?leg=1 retries leg 1's, for leg 1's money; then only leg 2's is left, and a retry
    naming none takes it, as before."""
    monkeypatch.setenv("REFUND_ATTEMPTS", "1")
    bid, ref, (a, b), _ts = two_reversed_legs()
    emu.control("refund_outcome", "failed")
    for leg_id in (a, b):
        assert resolve(client, ops, ref, leg_id, "refund").status_code == 200
        run()
    emu.control("refund_outcome", "processed")
    assert refund_legs(bid) == [(1, a, "failed"), (2, b, "failed")]
    r = retry(client, ops, ref)
    assert r.status_code == 409, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "which_refund"
    assert error["refunds"] == [
        {"attempt": 2, "leg": 2, "leg_id": b, "amount_paise": 1000,
         "reason": "reversed_payout", "retry_at": None},
        {"attempt": 1, "leg": 1, "leg_id": a, "amount_paise": 1000,
         "reason": "reversed_payout", "retry_at": None}]
    assert "leg 1" in error["message"] and "leg 2" in error["message"]
    run()
    assert refund_legs(bid) == [(1, a, "failed"), (2, b, "failed")]  # nothing made
    r = retry(client, ops, ref, "?leg=1")
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["attempt"], r.get_json()["amount_paise"]) == (3, 1000)
    run()
    assert refund_legs(bid) == [(1, a, "failed"), (2, b, "failed"), (3, a, "processed")]
    r = retry(client, ops, ref)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["attempt"] == 4
    run()
    assert refund_legs(bid)[-1] == (4, b, "processed")
    assert [(d["attempt"], d["named_leg"], d["named_attempt"]) for d in _retry_audits()] == [
        (3, 1, None), (4, None, None)]
    summary = whole(bid)
    assert (summary["refunded_paise"], summary["reversed_payouts_paise"]) == (2000, 0)
    assert not failed_jobs()


def test_a_cancellation_refund_and_an_extra_payments_are_named_by_attempt(live, client, ops,
                                                                          monkeypatch):
    """An extra payment's refund and the cancellation's both gave up (no leg to name
    them by): which_refund lists them; ?attempt= names one; a name that matches none of
    them is which_refund again; a bad one 422; the name in a body is refused (400), as on
    every route that reads none."""
    monkeypatch.setenv("REFUND_ATTEMPTS", "1")
    bid = paid_booking()
    ref = booking(bid).reference
    emu.control("refund_outcome", "failed")
    pay_again(bid)
    cancel(bid)
    run()
    emu.control("refund_outcome", "processed")
    assert [(n, reason, status) for n, reason, status in _attempts(bid)] == [
        (1, "late_payment", "failed"), (2, "cancelled", "failed")]
    r = retry(client, ops, ref)
    assert r.status_code == 409, r.get_json()
    listed = r.get_json()["error"]["refunds"]
    assert [(x["attempt"], x["reason"], x["leg"]) for x in listed] == [
        (2, "cancelled", None), (1, "late_payment", None)]
    for query in ("?leg=1", "?attempt=7", "?leg=1&attempt=2"):
        r = retry(client, ops, ref, query)
        assert r.status_code == 409, (query, r.get_json())
        assert r.get_json()["error"]["code"] == "which_refund"
        assert len(r.get_json()["error"]["refunds"]) == 2
    for query in ("?attempt=0", "?leg=x", f"?attempt={2**31}"):
        assert retry(client, ops, ref, query).status_code == 422, query
    r = client.post(f"{API}/ops/bookings/{ref}/refund/retry", headers=ops,
                    json={"attempt": 2})
    assert (r.status_code, r.get_json()["error"]["code"]) == (400, "unexpected_body")
    run()
    assert len(_attempts(bid)) == 2
    r = retry(client, ops, ref, "?attempt=2")
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["attempt"], r.get_json()["reason"]) == (3, "cancelled")
    run()
    assert _attempts(bid)[-1] == (3, "cancelled", "processed")
    r = retry(client, ops, ref, "?attempt=1")
    assert r.status_code == 200 and r.get_json()["reason"] == "late_payment", r.get_json()
    run()
    assert _attempts(bid)[-1] == (4, "late_payment", "processed")
    r = retry(client, ops, ref, "?attempt=1")
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "no_failed_refund")
    assert not failed_jobs()


def test_a_named_refund_a_later_decision_replaced_is_refused(live, client, ops,
                                                             monkeypatch):
    """Leg 1's refund failed, then ops paid its rider again instead; leg 2's refund gave
    up. ?leg=1 is refused (409 decided_since), not swapped for leg 2's; the retry naming
    none takes leg 2's, the only one left to try."""
    monkeypatch.setenv("REFUND_ATTEMPTS", "1")
    bid, ref, (a, b), _ts = two_reversed_legs()
    emu.control("refund_outcome", "failed")
    assert resolve(client, ops, ref, a, "refund").status_code == 200
    run()
    assert resolve(client, ops, ref, b, "refund").status_code == 200
    run()
    emu.control("refund_outcome", "processed")
    assert resolve(client, ops, ref, a, "pay_again").status_code == 200
    run()
    r = retry(client, ops, ref, "?leg=1")
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "decided_since")
    r = retry(client, ops, ref)
    assert r.status_code == 200, r.get_json()
    run()
    assert refund_legs(bid) == [(1, a, "failed"), (2, b, "failed"), (3, b, "processed")]
    summary = whole(bid)
    assert (summary["refunded_paise"], summary["reversed_payouts_paise"]) == (1000, 0)

"""A reversed payout on a booking whose payment support refunded in full from the dashboard.

The rider's released payout came back (the dashboard reversed the transfer) and is held
for ops; then support refunded the customer's whole payment in the dashboard, the
platform's cost. The held money could leave only by paying the rider again: a refund is
409 payment_refunded (Razorpay refuses more than the payment), a write-off was for under
Rs 1 only. Ops who decide the rider is not owed it can now write it off to the platform,
which paid the customer's refund; before the payment is refunded in full a write-off of
Rs 1 or more is still refused. A gateway that does not answer is a 503, not a 500.

Through the ops REST API, RQ, the real razorpay client, the sandbox emulator and its
signed webhooks."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.payment_models import LedgerTransaction
from core.domain import ledger as rules
from core.services import ledger, reconciliation
from sandbox import razorpay as emu
from tests.test_api import API
from tests.test_money_escrow_short import dashboard_refund
from tests.test_payments_support import failed_jobs, run
from tests.test_reversed_payouts_ops import audits, ledger_balanced, ops, resolve, reversed_leg

pytestmark = pytest.mark.db
__all__ = ["ledger_balanced", "ops"]  # fixtures


def held(leg_id: int) -> int:
    with transaction() as s:
        return ledger.leg_reversed_payouts(s, leg_id)[1]


def commission() -> int:
    with transaction() as s:
        return ledger.balance(s, rules.COMMISSION)


def test_a_reversed_payout_after_a_full_dashboard_refund_can_be_written_off(live, client,
                                                                            ops):
    """Refund is refused (nothing left on the payment) and its 409 names write_off; the
    write-off moves the whole held payout to the platform's commission, by an entry that
    says why, audited; nothing is asked of the gateway; a repeat is already_resolved."""
    _partner, bid, leg_id, t, ref = reversed_leg()
    amount = t["amount"]
    assert amount >= 100
    dashboard_refund(bid)
    r = resolve(client, ops, ref, leg_id, "refund")
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "payment_refunded")
    assert "write_off" in r.get_json()["error"]["message"], r.get_json()

    before = commission()
    r = resolve(client, ops, ref, leg_id, "write_off", dry_run=True)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert (body["dry_run"], body["amount_paise"], body["still_held_paise"],
            body["refundable_paise"]) == (True, amount, 0, 0)
    assert held(leg_id) == amount and commission() == before and audits() == []

    refunds, transfers = len(emu._all("refund")), len(emu._all("transfer"))
    r = resolve(client, ops, ref, leg_id, "write_off")
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["action"], r.get_json()["amount_paise"]) == ("write_off", amount)
    run()
    assert held(leg_id) == 0
    assert commission() == before + amount
    with transaction() as s:
        memo, kind = s.execute(
            select(LedgerTransaction.memo, LedgerTransaction.kind)
            .where(LedgerTransaction.booking_id == bid)
            .order_by(LedgerTransaction.id.desc()).limit(1)).one()
    assert kind == "reversal_written_off"
    assert "refunded in full" in memo, memo
    ((_, details),) = audits()
    assert (details["decision"], details["amount_paise"]) == ("write_off", amount)
    assert (len(emu._all("refund")), len(emu._all("transfer"))) == (refunds, transfers)
    r = resolve(client, ops, ref, leg_id, "write_off")
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "already_resolved")
    assert not failed_jobs()
    assert reconciliation.run()["mismatches"] == 0
    # The ops ledger view says what was written off (review r1): beside what the platform
    # paid of support's refund, the platform's net cost of the booking can be read.
    view = client.get(f"{API}/ops/bookings/{ref}/ledger", headers=ops).get_json()
    assert view["written_off_paise"] == amount, view
    assert view["platform_paid_paise"] > 0 and view["reversed_payouts_paise"] == 0, view


def test_a_partial_dashboard_refund_leaves_the_write_off_refused(live, client, ops):
    """The payment can still give back some of it: the held payout is refunded or paid
    again, never written off (409 write_off_too_large); nothing changes."""
    _partner, bid, leg_id, t, ref = reversed_leg()
    dashboard_refund(bid, 100)  # Rs 1 of the fare back; the rest can still be refunded
    before = commission()
    for dry_run in (True, False):
        r = resolve(client, ops, ref, leg_id, "write_off", dry_run=dry_run)
        assert (r.status_code, r.get_json()["error"]["code"]) == (409, "write_off_too_large")
    assert held(leg_id) == t["amount"] and commission() == before and audits() == []


def test_a_gateway_that_does_not_answer_is_a_503_and_changes_nothing(live, client, ops):
    """Asking what the payment can still give back failed: a refund is 503
    gateway_unavailable (it was a 500); a write-off of Rs 1 or more cannot be shown to be
    allowed: the same 503, not a final 'too large' (review r1); nothing is held less,
    nothing audited."""
    _partner, bid, leg_id, t, ref = reversed_leg()
    dashboard_refund(bid)
    emu.fail_next("fetch_payment")
    r = resolve(client, ops, ref, leg_id, "refund")
    assert (r.status_code, r.get_json()["error"]["code"]) == (503, "gateway_unavailable")
    assert r.headers.get("Retry-After")
    emu.fail_next("fetch_payment")
    r = resolve(client, ops, ref, leg_id, "write_off")
    assert (r.status_code, r.get_json()["error"]["code"]) == (503, "gateway_unavailable")
    assert held(leg_id) == t["amount"] and audits() == []
    r = resolve(client, ops, ref, leg_id, "write_off")  # the gateway answers again
    assert r.status_code == 200, r.get_json()
    assert held(leg_id) == 0

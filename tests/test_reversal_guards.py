"""Guards around a payout reversed after it was made (6d6e866), proved by a review.

The money waits in the booking's ``reversed_payouts`` account, owed again to the partner
or to the customer as ops decide (core.domain.ledger). An erasure is refused "while ...
money held or owed for them" (retention.erase_person): that holds for this money too, for
the customer (ops may refund it to them) and for the rider whose payout it was (the
erasure deletes the payout account it would be paid again to).

Razorpay sends no webhook for a reversal made in the dashboard, and a dispute comes days
or weeks after the payout: the reconciliation asks the ledger's payouts of the last
REVERSAL_LOOKBACK again, a bounded page a run, in turn.

Through RQ, the real razorpay client, the sandbox emulator and its signed webhooks.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from razorpay.resources.transfer import Transfer
from sqlalchemy import select

from core import clock
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, PartnerProfile
from core.adapters.payment_models import LegTransfer
from core.domain.errors import Conflict
from core.services import payments, reconciliation, retention
from tests.test_payments_support import (
    advance,
    failed_jobs,
    ledger_checked,
    new_partner,
    paid_booking,
    run,
)
from tests.test_transfer_reversal import (
    deliver,
    held_for_ops,
    paid_out_leg,
    reversals,
    send_reversed_event,
)

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


class _Undo(Exception):
    """Raised inside a transaction to roll an erasure back: was it allowed?"""


def erasable(person_id: int) -> bool:
    """Whether erase_person would go through for the person now (nothing is kept)."""
    try:
        with transaction() as s:
            retention.erase_person(s, person_id)
            raise _Undo
    except _Undo:
        return True
    except Conflict as exc:
        assert exc.code == "in_flight", exc.message
        return False


def reversed_payout() -> tuple[int, int, int]:
    """A delivered booking whose rider's released payout ops reversed in the Razorpay
    dashboard; the money waits for ops. (customer's person id, partner's person id,
    booking)"""
    partner, bid, _leg_id, t = paid_out_leg()
    with transaction() as s:
        profile = s.get(PartnerProfile, partner)
        profile.kyc_status = "suspended"  # a partner is erased only once blocked
        partner_person = profile.person_id
        customer = s.get(Booking, bid).customer_id
    # Before the reversal nothing holds either of them: both could be erased.
    assert erasable(customer) and erasable(partner_person)
    gw.client().transfer.reverse(t["id"], {"amount": t["amount"]})
    send_reversed_event(t["id"])
    assert held_for_ops(bid) == t["amount"] > 0
    assert not failed_jobs()
    return customer, partner_person, bid


def test_the_customer_is_not_erased_while_a_reversed_payout_may_be_refunded_to_them(live):
    customer, _, bid = reversed_payout()
    assert not erasable(customer), (
        "erased while the booking's reversed payout waits for ops (refund the customer?)")


def test_the_rider_is_not_erased_while_a_reversed_payout_of_theirs_is_held(live):
    _, partner_person, bid = reversed_payout()
    assert not erasable(partner_person), (
        "erased (payout account and all) while their reversed payout waits for ops "
        "(pay the rider again?)")


def test_a_payout_reversed_days_after_it_was_made_is_found_by_the_reconciliation(live):
    """Ops reverse a rider's payout in the dashboard three days after it was made (no
    webhook). The reconciliation runs on, as its schedule has it: the reversal must be
    recorded, as it is when it comes within the day."""
    start = clock.now()
    _partner, bid, leg_id, t = paid_out_leg()
    assert reconciliation.run()["mismatches"] == 0
    for day in (1, 2, 3):  # the runs go on (hourly; one a day is enough here)
        clock.freeze(start + timedelta(days=day))
        assert reconciliation.run()["mismatches"] == 0
    gw.client().transfer.reverse(t["id"], {"amount": t["amount"]})
    clock.freeze(start + timedelta(days=3, hours=1))
    reconciliation.run()
    assert reversals() == [(t["amount"], t["id"], leg_id)], (
        "a payout reversed after the reconciliation's window is never recorded")
    assert held_for_ops(bid) == t["amount"]


def payout(partner: int, n: int) -> str:
    """A booking (the n-th customer's) whose leg the partner delivered and was paid out
    for: the gateway's transfer id."""
    bid = paid_booking(f"+9198123{n:05d}")
    leg_id = advance(bid, partner, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()
    deliver(bid, leg_id)
    with transaction() as s:
        tid = s.scalar(select(LegTransfer.transfer_id).where(LegTransfer.leg_id == leg_id))
    assert tid is not None
    return tid


def test_a_run_asks_a_bounded_page_of_older_payouts_each_in_turn(live, monkeypatch):
    """The payouts of the lookback are asked again one by one, REVERSAL_ITEMS a run,
    taking up where the last run stopped: every one is asked within a few runs (and a
    reversal of it recorded), none more than once a run, none older than the lookback."""
    monkeypatch.setattr(reconciliation, "REVERSAL_ITEMS", 2)
    start = clock.now()
    partner = new_partner()
    old = payout(partner, 1)  # made before the lookback begins, by the time of the runs
    clock.freeze(start + reconciliation.REVERSAL_LOOKBACK + timedelta(days=2))
    recent = [payout(partner, n) for n in (2, 3, 4)]
    # Ops reverse two of them in the dashboard, and the old one (no webhook).
    c = gw.client()
    for tid in (recent[0], recent[2], old):
        t = c.transfer.fetch(tid)
        c.transfer.reverse(tid, {"amount": t["amount"] // (2 if tid == recent[0] else 1)})
    clock.freeze(clock.now() + timedelta(days=3))  # all out of the day's window
    asked: list[str] = []
    real = Transfer.fetch

    def counting_fetch(self, transfer_id, data=None, **kwargs):
        asked.append(transfer_id)
        return real(self, transfer_id, data or {}, **kwargs)

    monkeypatch.setattr(Transfer, "fetch", counting_fetch)
    runs = []
    for _ in range(3):
        asked.clear()
        reconciliation.run()
        runs.append(list(asked))
    assert all(len(r) == len(set(r)) == 2 and set(r) <= set(recent) for r in runs), runs
    assert set(runs[0]) | set(runs[1]) == set(recent), runs
    assert sorted(ref for _, ref, _ in reversals()) == sorted((recent[0], recent[2]))
    assert not failed_jobs()

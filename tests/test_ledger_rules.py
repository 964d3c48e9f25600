"""Pure ledger rules: entries balance, keys name their cause, commissions add up."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.domain import ledger as rules


def test_entries_balance_and_are_keyed_by_their_cause():
    e = rules.release(1, 7, 3, 900, 100)
    assert sum(p.amount_paise for p in e.postings) == 0
    assert e.idempotency_key == "release:leg:7"
    assert e.delta(rules.escrow(1)) == -1000
    assert rules.capture(1, "pay_1", 500).idempotency_key == "capture:pay_1"
    # A refund settles one way only: processed and failed share their key.
    assert (rules.refund_processed(1, 2, 5, None).idempotency_key
            == rules.refund_failed(1, 2, 5, None).idempotency_key)
    # A failed transfer gives back to the partner exactly what its payout took.
    paid = rules.transfer_processed(1, 7, 3, "trf_1", 900)
    void = rules.transfer_failed(1, 7, 3, "trf_1", 900)
    assert void.delta(rules.payable(3)) == -paid.delta(rules.payable(3)) == 900
    assert void.idempotency_key == "transfer:trf_1:failed" != paid.idempotency_key


def test_unbalanced_or_zero_postings_are_refused():
    with pytest.raises(ValueError, match="sum to zero"):
        rules.Entry(rules.EntryKind.CAPTURE, "k", 1, (rules.Posting(rules.GATEWAY, -5),
                                                       rules.Posting(rules.escrow(1), 4)))
    with pytest.raises(ValueError, match="zero paise"):
        rules.Entry(rules.EntryKind.CAPTURE, "k", 1, (rules.Posting(rules.GATEWAY, 0),
                                                       rules.Posting(rules.escrow(1), 0)))


def test_escrow_cannot_go_negative():
    with pytest.raises(rules.InsufficientEscrow):
        rules.check_balances(rules.refund_requested(1, 1, 101), {rules.escrow(1): 100})
    rules.check_balances(rules.refund_requested(1, 1, 100), {rules.escrow(1): 100})


@given(st.integers(0, 10**7), st.lists(st.integers(0, 10**6), min_size=1, max_size=5))
def test_leg_commissions_add_up_to_the_booking_commission(commission, payouts):
    share = sum(payouts)
    recognised = 0
    for i, payout in enumerate(payouts):
        c = rules.leg_commission(commission, share, payout, recognised, i == len(payouts) - 1)
        assert c >= 0
        recognised += c
    assert recognised == commission

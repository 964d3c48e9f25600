"""A cancellation fee owed to a rider who had no linked account (or one not activated)
when the customer cancelled: the refund of the rest is asked at once, and Razorpay takes
no new transfer on a payment once a refund of it was asked. The fee is then paid by a
Direct Transfer (``POST /v1/transfers``) out of the platform's balance, which still
holds it.

Through RQ, the real razorpay client, the sandbox emulator and its signed webhooks."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import PartnerProfile
from core.adapters.payment_models import LegTransfer, Refund
from core.services import ledger, payments, reconciliation
from sandbox import razorpay as emu
from tests.test_payments_support import (
    CUSTOMER,
    advance,
    failed_jobs,
    ledger_checked,
    new_partner,
    paid_booking,
    run,
)

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def cancel(booking_id: int):
    with transaction() as s:
        return payments.cancel_booking(s, ledger.lock_booking(s, booking_id), CUSTOMER, "no")


def payable(partner_id: int) -> int:
    with transaction() as s:
        return ledger.partner_balance(s, partner_id)


def link_account(partner_id: int, account: str) -> None:
    with transaction() as s:
        profile = s.get(PartnerProfile, partner_id)
        assert profile is not None
        profile.payout_account_id = account


def cancelled_without_account() -> tuple[int, int, int]:
    """A rider without a linked account is assigned; the customer cancels; the refund of
    the rest is made. Return (partner, leg, fee)."""
    partner = new_partner(account=None)
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    quote = cancel(bid)
    run()
    assert payable(partner) == quote.fee_paise > 0
    return partner, leg_id, quote.fee_paise


def test_a_fee_owed_to_a_partner_who_links_an_account_after_the_refund_is_paid(live):
    """A rider without a linked account yet takes a job; the customer cancels: the rider is
    promised the cancellation fee, the customer gets the rest back. The rider links their
    account the next day. The fee must reach them: the refund went first, and Razorpay
    takes no new transfer on a payment once a refund of it was asked, so a transfer made
    from that payment now is refused for good (ops are told 'transfer refused', the sweep
    backs off to every 6 hours, and the rider is never paid what the SMS promised)."""
    partner = new_partner(account=None)
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "no-account"
    quote = cancel(bid)
    assert quote.fee_paise > 0
    run()  # the fee waits for an account; the refund of the rest is made and settles
    with transaction() as s:
        assert [r.status for r in s.scalars(select(Refund))] == ["processed"]
    assert payable(partner) == quote.fee_paise  # owed

    with transaction() as s:  # the rider links their bank account
        profile = s.get(PartnerProfile, partner)
        assert profile is not None
        profile.payout_account_id = "acc_latelinked01"
    outcome = payments.settle_leg_transfer(leg_id)  # what the sweep's next settle does
    run()
    assert outcome in ("released", "released-pending"), outcome
    paid = [t for t in emu._all("transfer") if t["recipient"] == "acc_latelinked01"]
    assert [(t["amount"] - t["amount_reversed"], t["on_hold"]) for t in paid] == [
        (quote.fee_paise, False)]
    assert payable(partner) == 0
    with transaction() as s:
        row = s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        assert row is not None
        assert row.status != "failed", row.last_error
    assert not failed_jobs()


def test_a_retry_after_the_direct_transfers_answer_was_lost_pays_the_fee_once(live):
    """The direct transfer is made but its answer is lost (a timeout): the retry finds
    it (our leg id in its notes) and makes no second one; reconciliation agrees."""
    partner, leg_id, fee = cancelled_without_account()
    link_account(partner, "acc_latelinked02")
    emu.control("lose_next:direct_transfer", 1)
    with pytest.raises(gw.ServerError):
        payments.settle_leg_transfer(leg_id)
    assert payments.settle_leg_transfer(leg_id) in ("released", "released-pending")
    run()
    assert payments.settle_leg_transfer(leg_id) == "already-paid"
    paid = [t for t in emu._all("transfer") if t["recipient"] == "acc_latelinked02"]
    assert [(t["amount"], t["status"]) for t in paid] == [(fee, "processed")]
    assert payable(partner) == 0
    assert reconciliation.run()["mismatches"] == 0
    assert not failed_jobs()


def test_a_direct_transfer_to_an_account_not_activated_is_refused_and_ops_told(live):
    """The late-linked account cannot take transfers yet: the direct transfer is refused
    too, the row says why, the fee stays owed; once the account is activated the next
    settle pays it."""
    partner, leg_id, fee = cancelled_without_account()
    link_account(partner, "acc_notactive03")
    emu.refuse_account("acc_notactive03")
    assert payments.settle_leg_transfer(leg_id) == "refused"
    with transaction() as s:
        row = s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        assert row is not None and row.status == "failed"
        assert "not activated" in (row.last_error or "")
    assert payable(partner) == fee
    emu.refuse_account("acc_notactive03", refused=False)
    assert payments.settle_leg_transfer(leg_id) in ("released", "released-pending")
    run()
    assert payable(partner) == 0
    assert [t["amount"] for t in emu._all("transfer")] == [fee]


def test_the_emulator_takes_a_direct_transfer_as_razorpay_documents_it(live):
    """POST /v1/transfers: from the platform's balance, no hold, pending then processed
    (transfer.processed); refused for a non-positive amount, an account not activated, or
    more than the balance; X-Transfer-Idempotency answers a retry with the same transfer
    and refuses another body under the same key."""
    # The balance is this payment alone: no other money, no Razorpay fee taken from it.
    emu.control("opening_balance", 0)
    emu.control("fee_bps", 0)
    emu.create_payment(5_000)
    emu.refuse_account("acc_inactive04")
    c = gw.client()
    body = {"account": "acc_direct04", "amount": 3_000, "currency": "INR",
            "notes": {"leg_id": "7"}}
    for bad in ({**body, "amount": 0}, {**body, "amount": -100},
                {**body, "account": "acc_inactive04"}, {**body, "amount": 5_001}):
        with pytest.raises(gw.BadRequestError):
            c.transfer.create(bad)
    key = {"X-Transfer-Idempotency": "ridechain-test-1"}
    made = c.transfer.create(body, headers=key)
    assert (made["status"], made["on_hold"], made["processed_at"]) == ("pending", False, None)
    assert not made["source"].startswith("pay_")
    assert c.transfer.create(body, headers=key)["id"] == made["id"]
    with pytest.raises(gw.BadRequestError):
        c.transfer.create({**body, "amount": 1_000}, headers=key)
    with pytest.raises(gw.BadRequestError):  # 2,000 left of the balance
        c.transfer.create({**body, "amount": 2_001})
    run()
    assert c.transfer.fetch(made["id"])["status"] == "processed"
    assert [t["id"] for t in emu._all("transfer")] == [made["id"]]

"""The Razorpay emulator's refunds as the gateway keeps them: a payment's refund_status
follows what is refunded of it, also after a refund that failed."""

from __future__ import annotations

import pytest

from core.adapters import razorpay_gateway as gw
from sandbox import razorpay as emu
from tests.test_payments_support import run

pytestmark = pytest.mark.db


def _refund(payment_id: str, amount: int, key: str) -> None:
    gw.client().payment.refund(payment_id, {"amount": amount},
                               headers={"X-Refund-Idempotency": key})


def test_a_failed_refund_after_a_processed_one_leaves_the_payment_partly_refunded(live):
    payment = emu.create_payment(10_000)
    emu.control("refund_outcome", "processed")
    _refund(payment["id"], 3_000, "first-refund-key")
    run()
    emu.control("refund_outcome", "failed")
    _refund(payment["id"], 2_000, "second-refund-key")
    run()
    p = gw.client().payment.fetch(payment["id"])
    assert (p["amount_refunded"], p["refund_status"], p["status"]) == (3_000, "partial",
                                                                        "captured")


def test_a_failed_refund_alone_leaves_the_payment_unrefunded(live):
    payment = emu.create_payment(10_000)
    emu.control("refund_outcome", "failed")
    _refund(payment["id"], 10_000, "whole-refund-key")
    run()
    p = gw.client().payment.fetch(payment["id"])
    assert (p["amount_refunded"], p["refund_status"], p["status"]) == (0, None, "captured")

"""The rest of a payment under the gateway's least refund, once nothing else can take it.

Support refunds a paid booking from the Razorpay dashboard all but 50 paise (an amount not
in whole rupees). Cancelled with no rider coming, the chat asked "You will get back
₹0.50" and said so again once cancelled; but Razorpay refunds Rs 1 at least, so no
refund was asked (_open_refund only logged it) and the 50 paise stayed in the closed
booking's escrow for good, moved by nobody. The same after a booking failed for want of
a rider. Now nothing is promised (cancel_kind "paid_back": our team gave her money
back) and the paise go to the platform's commission by their own entry
(``remainder_kept``), which the ops ledger view shows; escrow ends at zero.

Through the signed WhatsApp webhook, RQ, the real razorpay client, the sandbox emulator.
"""

from __future__ import annotations

import json

import pytest
from alembic import command
from sqlalchemy import select, text

from core import i18n
from core.adapters.db import transaction
from core.adapters.payment_models import LedgerTransaction
from core.domain.booking import BookingStatus
from core.services import payments, reconciliation
from tests.conftest import read_first
from tests.test_api import API
from tests.test_cancel_after_support_refund import CUSTOMER, cancel_question
from tests.test_migrations_live import db, engine, template  # noqa: F401 (fixtures)
from tests.test_payments_refunds import fail_for_no_partner
from tests.test_payments_support import (
    booking,
    failed_jobs,
    ledger_checked,
    paid_booking,
    run,
    summary,
)
from tests.test_reversed_payouts_ops import ops  # noqa: F401  (fixture)
from tests.test_stuck_relay_platform import dashboard_refund, ours

pytestmark = pytest.mark.db

LEFT = 50  # paise the dashboard refund leaves of the payment


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def kinds(booking_id: int) -> list[tuple[str, str]]:
    with transaction() as s:
        return list(s.execute(select(LedgerTransaction.kind, LedgerTransaction.memo).where(
            LedgerTransaction.booking_id == booking_id).order_by(LedgerTransaction.id))
            .tuples())


def all_but(booking_id: int, left: int) -> None:
    dashboard_refund(booking_id, booking(booking_id).total_paise - left)
    assert summary(booking_id)["escrow_paise"] == left


def test_a_cancel_promises_no_paise_and_the_platform_keeps_them(client, live, ops,  # noqa: F811
                                                              monkeypatch) -> None:
    bid = paid_booking(CUSTOMER)
    all_but(bid, LEFT)
    ref = booking(bid).reference

    chat, asked = cancel_question(client, ref)
    assert i18n.format_inr(LEFT) not in asked, asked
    assert i18n.t("bot.cancel.paid_back", "en", ref=ref) in asked, asked
    read_first(monkeypatch)
    done = chat.send("1")
    assert booking(bid).status == BookingStatus.CANCELLED.value, done
    assert i18n.format_inr(LEFT) not in done, done
    run()
    assert not failed_jobs()
    assert ours(bid) == []  # nothing the gateway would refuse was asked of it
    assert summary(bid)["escrow_paise"] == 0
    assert [k for k, _ in kinds(bid)][-1] == "remainder_kept"
    view = client.get(f"{API}/ops/bookings/{ref}/ledger", headers=ops).get_json()
    assert view["remainder_kept_paise"] == LEFT, view
    money = summary(bid)
    assert money["captured_paise"] + view["platform_paid_paise"] == (
        money["released_paise"] + money["fee_paise"] + money["refunded_paise"]
        + money["escrow_paise"] + money["refunds_pending_paise"] + LEFT)
    assert reconciliation.run()["mismatches"] == 0


def test_a_booking_failed_for_want_of_a_rider_leaves_no_paise_in_escrow(live) -> None:
    bid = paid_booking(CUSTOMER)
    all_but(bid, LEFT)

    fail_for_no_partner(bid)
    run()
    assert not failed_jobs()
    assert ours(bid) == []
    assert summary(bid)["escrow_paise"] == 0
    with transaction() as s:
        assert payments.remainder_kept(s, bid) == LEFT
    kept = [memo for kind, memo in kinds(bid) if kind == "remainder_kept"]
    assert len(kept) == 1 and "least refund" in kept[0], kept


def test_a_rupee_or_more_left_is_still_refunded(client, live, monkeypatch) -> None:
    """The floor is the gateway's least refund: Rs 1 left is refunded, nothing kept."""
    bid = paid_booking(CUSTOMER)
    all_but(bid, payments.REFUND_MIN_PAISE)
    ref = booking(bid).reference

    chat, asked = cancel_question(client, ref)
    assert i18n.format_inr(payments.REFUND_MIN_PAISE) in asked, asked
    read_first(monkeypatch)
    chat.send("1")
    run()
    assert ours(bid) == [payments.REFUND_MIN_PAISE]
    with transaction() as s:
        assert payments.remainder_kept(s, bid) == 0
    assert summary(bid)["escrow_paise"] == 0


def test_0039_takes_the_kind_and_refuses_to_go_back_while_used(db, engine):  # noqa: F811
    from tests.test_migrations_live import LOCK_TIMEOUT_MS, alembic_config, upgrade, version

    def check() -> tuple[bool, str]:
        with engine.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT convalidated, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conname = 'ck_ledger_transactions_kind'").one()

    upgrade(db, "0038")
    assert "'remainder_kept'" not in check()[1]
    upgrade(db, "0039")
    checked, definition = check()
    assert checked and "'remainder_kept'" in definition and "'release_platform'" in definition
    config = alembic_config(db, LOCK_TIMEOUT_MS, [])
    command.downgrade(config, "0038")  # nothing of its kind yet: it goes back
    upgrade(db, "0039")
    # Only the kind matters to the CHECK (escrow may not go below zero: money in first).
    postings = [{"account": "platform_commission", "account_kind": "platform_commission",
                 "booking_id": 1, "partner_id": None, "leg_id": None, "amount_paise": -50},
                {"account": "escrow:b1", "account_kind": "escrow", "booking_id": 1,
                 "partner_id": None, "leg_id": None, "amount_paise": 50}]
    with engine.begin() as conn:
        assert conn.execute(text(
            "SELECT ledger_post(1, 'refund:booking:1:remainder', 'remainder_kept', NULL, 'test',"
            " NULL, 'test', now(), CAST(:postings AS jsonb), CAST('{}' AS jsonb))"),
            {"postings": json.dumps(postings)}).scalar() == "posted"
    with pytest.raises(RuntimeError, match="cannot go back to 0038"):
        command.downgrade(config, "0038")
    with engine.connect() as conn:
        assert version(conn) == "0039"

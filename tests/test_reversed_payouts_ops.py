"""Ops resolve a partner payout reversed at the gateway after it was made: pay the partner
again by a direct transfer, or refund the customer; the ledger views show what is held.

Through the ops REST API, RQ, the real razorpay client, the sandbox emulator and its
signed webhooks."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.adapters import razorpay_gateway as gw
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Booking, PartnerProfile
from core.adapters.payment_models import LedgerPosting, LedgerTransaction, Refund
from core.domain import ledger as rules
from core.services import ledger, payments, reconciliation
from sandbox import razorpay as emu
from tests.test_api import API, sign_in
from tests.test_migrations_live import db, engine, template  # noqa: F401 (fixtures)
from tests.test_payments_support import failed_jobs, ledger_checked, link_of, run
from tests.test_transfer_reversal import paid_out_leg, send_reversed_event

pytestmark = pytest.mark.db
OPERATOR = "+919812300077"


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


@pytest.fixture
def ops(client) -> dict[str, str]:
    return sign_in(client, OPERATOR, role="ops")


def reversed_leg(part: int | None = None) -> tuple[int, int, int, dict, str]:
    """A delivered leg whose released payout was reversed in the dashboard (all of it, or
    ``part``) and recorded: (partner, booking, leg, its transfer, the booking's ref)."""
    partner, bid, leg_id, t = paid_out_leg()
    with transaction() as s:
        p = s.get(PartnerProfile, partner)
        assert p is not None
        p.kyc_status = "verified"
        ref = s.get(Booking, bid).reference  # type: ignore[union-attr]
    gw.client().transfer.reverse(t["id"], {"amount": part or t["amount"]})
    send_reversed_event(t["id"])
    with transaction() as s:
        assert ledger.reversed_payouts(s, bid) == (part or t["amount"])
    return partner, bid, leg_id, t, ref


def resolve(client, ops, ref: str, leg_id: int, action: str, dry_run: bool = False):
    return client.post(f"{API}/ops/bookings/{ref}/reversed-payouts/{leg_id}/resolve"
                       + ("?dry_run=1" if dry_run else ""), headers=ops,
                       json={"action": action, "reason": "rider called about it"})


def account_sums(bid: int) -> dict[str, int]:
    """The booking's ledger, as money in and out: what the booking's accounts must add up
    to (see the invariant in whole())."""
    with transaction() as s:
        rows = s.execute(
            select(LedgerTransaction.kind, LedgerPosting.account_kind,
                   func.sum(LedgerPosting.amount_paise))
            .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
            .where(LedgerTransaction.booking_id == bid)
            .group_by(LedgerTransaction.kind, LedgerPosting.account_kind)).all()
    return {f"{k}/{a}": int(v) for k, a, v in rows}


def whole(bid: int) -> dict[str, int]:
    """Balances stay whole: every entry of the booking sums to zero, no guarded account
    is below zero, and what came in (captured, and payouts that came back) is exactly
    what went out or is held: released, fees, refunded, pending, escrow, held for ops,
    and paid to the partner again. The reconciliation finds nothing amiss."""
    sums = account_sums(bid)
    with transaction() as s:
        summary = ledger.booking_summary(s, bid)
        repaid = sums.get("reversal_repaid/partner_payable", 0)
        came_back = sums.get("transfer_reversed/reversed_payouts", 0)
        for key in ("escrow_paise", "refunds_pending_paise", "reversed_payouts_paise"):
            assert summary[key] >= 0, summary
        assert (summary["captured_paise"] + came_back
                == summary["released_paise"] + summary["fee_paise"]
                + summary["refunded_paise"] + summary["refunds_pending_paise"]
                + summary["escrow_paise"] + summary["reversed_payouts_paise"] + repaid), (
            summary, sums)
        assert ledger.total(s) == 0
    assert reconciliation.run()["mismatches"] == 0
    return summary


def audits() -> list[tuple[str, dict]]:
    with transaction() as s:
        return [(a.action, a.details) for a in s.scalars(
            select(AuditEntry).where(AuditEntry.action == "reversed_payout.resolve")
            .order_by(AuditEntry.id))]


# --- 1. pay the partner again ---------------------------------------------------------------


def test_ops_pay_a_reversed_payout_again_by_one_direct_transfer(live, client, ops):
    """Ops had no way to act on "pay the rider again": now the route does it. A dry run
    shows the numbers and changes nothing; the action moves the money from the booking's
    reversed payouts to the partner, whom a direct transfer pays once; a repeat is 409
    already_resolved; the books stay whole and the gateway agrees."""
    partner, bid, leg_id, t, ref = reversed_leg()
    amount = t["amount"]
    before = whole(bid)
    assert before["reversed_payouts_paise"] == amount
    r = resolve(client, ops, ref, leg_id, "pay_again", dry_run=True)
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["dry_run"], r.get_json()["amount_paise"],
            r.get_json()["held_paise"], r.get_json()["still_held_paise"],
            r.get_json()["partner_id"]) == (True, amount, amount, 0, partner)
    run()
    assert len(emu._all("transfer")) == 1 and audits() == []
    with transaction() as s:
        assert ledger.reversed_payouts(s, bid) == amount

    r = resolve(client, ops, ref, leg_id, "pay_again")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["amount_paise"] == amount
    run()
    again = [x for x in emu._all("transfer") if x["id"] != t["id"]]
    assert [(x["recipient"], x["amount"], x["status"], x["source"].startswith("pay_"))
            for x in again] == [(t["recipient"], amount, "processed", False)]
    with transaction() as s:
        assert ledger.reversed_payouts(s, bid) == 0
        assert ledger.partner_balance(s, partner) == 0  # paid, not owed
        assert ledger.leg_owed(s, leg_id) == 0
    assert whole(bid)["reversed_payouts_paise"] == 0
    ((_, details),) = audits()
    assert (details["decision"], details["amount_paise"], details["leg"]) == (
        "pay_again", amount, leg_id)
    assert details["reason"] == "rider called about it"

    r = resolve(client, ops, ref, leg_id, "pay_again")
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "already_resolved")
    assert (resolve(client, ops, ref, leg_id, "refund").get_json()["error"]["code"]
            == "already_resolved")
    run()
    from core.services import payments

    assert payments.settle_leg_transfer(leg_id) == "already-paid"
    assert payments.sweep()["transfers"] == 0
    assert len(emu._all("transfer")) == 2
    assert not failed_jobs()


def test_a_pay_again_whose_transfer_is_slow_is_paid_once_by_its_event(live, client, ops):
    """The direct transfer stays pending a while: the payout is posted when the gateway
    processes it (its webhook), once, and a settle meanwhile makes no second one."""
    from core.services import payments

    partner, bid, leg_id, t, ref = reversed_leg()
    emu.control("pending_next:transfer", 1)
    assert resolve(client, ops, ref, leg_id, "pay_again").status_code == 200
    run()
    (again,) = [x for x in emu._all("transfer") if x["id"] != t["id"]]
    assert again["status"] == "pending"
    with transaction() as s:
        assert ledger.partner_balance(s, partner) == t["amount"]  # owed until it moves
    assert payments.settle_leg_transfer(leg_id) == "transfer-pending"
    emu.settle_transfer(again["id"])
    run()
    assert len(emu._all("transfer")) == 2
    with transaction() as s:
        assert ledger.partner_balance(s, partner) == 0
        assert ledger.leg_owed(s, leg_id) == 0
    whole(bid)
    assert not failed_jobs()


@pytest.mark.parametrize("blocked", ["suspended", "no_account"])
def test_pay_again_to_a_partner_who_cannot_be_paid_is_refused(live, client, ops, blocked):
    """The partner was suspended since (or lost their payout account: an erasure frees
    it): paying them is refused with a code that says why, and nothing changes."""
    partner, bid, leg_id, t, ref = reversed_leg()
    with transaction() as s:
        p = s.get(PartnerProfile, partner)
        assert p is not None
        if blocked == "suspended":
            p.kyc_status = "suspended"
        else:
            p.payout_account_id = None
    code = {"suspended": "partner_blocked", "no_account": "partner_no_account"}[blocked]
    for dry_run in (True, False):
        r = resolve(client, ops, ref, leg_id, "pay_again", dry_run=dry_run)
        assert (r.status_code, r.get_json()["error"]["code"]) == (409, code)
    run()
    with transaction() as s:
        assert ledger.reversed_payouts(s, bid) == t["amount"]
    assert len(emu._all("transfer")) == 1 and audits() == []
    whole(bid)


# --- 2. refund the customer -----------------------------------------------------------------


def test_ops_refund_a_partly_reversed_payout_to_the_customer(live, client, ops):
    """A part of the payout came back: ops give it to the customer. The refund comes out
    of the booking's reversed payouts (not escrow), the gateway refunds it, the customer's
    refund shows in the summary, and the books stay whole."""
    _partner, bid, leg_id, t, ref = reversed_leg(part=1000)
    r = resolve(client, ops, ref, leg_id, "refund", dry_run=True)
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["amount_paise"], r.get_json()["still_held_paise"]) == (1000, 0)
    assert emu._all("refund") == []
    r = resolve(client, ops, ref, leg_id, "refund")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["refund_attempt"] == 1
    with transaction() as s:
        assert ledger.reversed_payouts(s, bid) == 0
        assert ledger.booking_summary(s, bid)["refunds_pending_paise"] == 1000
    run()
    (refund,) = emu._all("refund")
    assert (refund["amount"], refund["payment_id"], refund["status"]) == (
        1000, link_of(bid).payment_id, "processed")
    summary = whole(bid)
    assert (summary["refunded_paise"], summary["reversed_payouts_paise"],
            summary["escrow_paise"]) == (1000, 0, 0)
    r = resolve(client, ops, ref, leg_id, "refund")
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "already_resolved")
    assert not failed_jobs()


def test_a_failed_refund_of_a_reversed_payout_goes_back_to_ops_not_to_escrow(live, client,
                                                                              ops):
    """The gateway fails the refund: the money is held for ops again (where it came
    from), not put in the delivered booking's escrow, and ops can choose again."""
    _partner, bid, leg_id, t, ref = reversed_leg()
    emu.control("refund_outcome", "failed")
    assert resolve(client, ops, ref, leg_id, "refund").status_code == 200
    run()
    emu.control("refund_outcome", "processed")
    with transaction() as s:
        summary = ledger.booking_summary(s, bid)
    assert (summary["escrow_paise"], summary["reversed_payouts_paise"],
            summary["refunded_paise"]) == (0, t["amount"], 0)
    whole(bid)
    r = resolve(client, ops, ref, leg_id, "pay_again")
    assert r.status_code == 200, r.get_json()
    run()
    assert whole(bid)["reversed_payouts_paise"] == 0


def test_a_refund_when_the_payment_was_refunded_in_full_is_refused(live, client, ops):
    """The customer's payment was refunded in full from the dashboard: Razorpay would
    refuse any refund of it; ops are told so (and can pay the partner again)."""
    _partner, bid, leg_id, t, ref = reversed_leg()
    gw.client().payment.refund(link_of(bid).payment_id, {})
    for dry_run in (True, False):
        r = resolve(client, ops, ref, leg_id, "refund", dry_run=dry_run)
        assert (r.status_code, r.get_json()["error"]["code"]) == (409, "payment_refunded")
    with transaction() as s:
        assert ledger.reversed_payouts(s, bid) == t["amount"]
    assert audits() == []



def refunds(bid: int) -> list[tuple[int, str, bool]]:
    """The booking's refund attempts: (attempt, status, whether a retry is planned)."""
    with transaction() as s:
        return [(r.attempt, r.status, r.retry_at is not None) for r in s.scalars(
            select(Refund).where(Refund.booking_id == bid).order_by(Refund.attempt))]


def test_a_second_decision_to_refund_gets_its_own_tries(live, client, ops, monkeypatch):
    """Review r2 of 13368f5. Two tries a refund (REFUND_ATTEMPTS=2). 1,000 paise of
    Ramesh's payout came back; ops refund them to Meena (processed). Weeks later another
    1,000 come back and ops refund them too, but the gateway fails that attempt: it is
    this decision's first try, not the second of one refund of all the booking's
    reversed payouts, so a second is planned, not given up."""
    monkeypatch.setenv("REFUND_ATTEMPTS", "2")
    _partner, bid, leg_id, t, ref = reversed_leg(part=1000)
    r = resolve(client, ops, ref, leg_id, "refund")
    assert r.status_code == 200, r.get_json()
    run()
    assert refunds(bid) == [(1, "processed", False)]
    gw.client().transfer.reverse(t["id"], {"amount": 1000})  # another part, later
    send_reversed_event(t["id"])
    with transaction() as s:
        assert ledger.reversed_payouts(s, bid) == 1000
    emu.control("refund_outcome", "failed")
    r = resolve(client, ops, ref, leg_id, "refund")
    assert r.status_code == 200, r.get_json()
    run()
    emu.control("refund_outcome", "processed")
    assert refunds(bid) == [(1, "processed", False), (2, "failed", True)], (
        "the first failed attempt of a new decision was counted with the earlier "
        "decision's attempt and given up: no retry planned")
    assert payments.retry_refund(bid, 3) == "retried"
    run()
    assert refunds(bid) == [(1, "processed", False), (2, "failed", False),
                            (3, "processed", False)]
    assert whole(bid)["refunded_paise"] == 2000


def test_a_decision_after_a_refund_gave_up_gets_its_own_tries(live, client, ops,
                                                              monkeypatch):
    """Ops' refund failed to its last try (one, here) and the money is held for them
    again; weeks later they decide to refund it again: that decision's failed attempt is
    its first try, so a retry is planned. A retry of it stays the same decision: its
    failure is the last try."""
    monkeypatch.setenv("REFUND_ATTEMPTS", "1")
    _partner, bid, leg_id, t, ref = reversed_leg(part=1000)
    emu.control("refund_outcome", "failed")
    assert resolve(client, ops, ref, leg_id, "refund").status_code == 200
    run()
    assert refunds(bid) == [(1, "failed", False)]  # given up: ops must act
    monkeypatch.setenv("REFUND_ATTEMPTS", "2")
    assert resolve(client, ops, ref, leg_id, "refund").status_code == 200
    run()
    assert refunds(bid) == [(1, "failed", False), (2, "failed", True)]
    assert payments.retry_refund(bid, 3) == "retried"
    run()
    assert refunds(bid) == [(1, "failed", False), (2, "failed", False), (3, "failed", False)]
    emu.control("refund_outcome", "processed")
    with transaction() as s:
        assert ledger.reversed_payouts(s, bid) == 1000
    whole(bid)


def test_a_new_decision_replaces_the_planned_retry_of_a_failed_refund(live, client, ops):
    """Ops' refund failed and a retry is planned; meanwhile they pay the rider again
    instead. Another part of the payout comes back later: the old retry, once due, must
    not refund it to the customer, which ops never decided; it stays held for them."""
    _partner, bid, leg_id, t, ref = reversed_leg(part=1000)
    emu.control("refund_outcome", "failed")
    assert resolve(client, ops, ref, leg_id, "refund").status_code == 200
    run()
    emu.control("refund_outcome", "processed")
    assert refunds(bid) == [(1, "failed", True)]
    r = resolve(client, ops, ref, leg_id, "pay_again")
    assert r.status_code == 200, r.get_json()
    run()
    assert refunds(bid) == [(1, "failed", False)]
    gw.client().transfer.reverse(t["id"], {"amount": 1000})
    send_reversed_event(t["id"])
    assert payments.retry_refund(bid, 2) == "not-due"  # the planned job, when due
    run()
    assert refunds(bid) == [(1, "failed", False)]
    summary = whole(bid)
    assert (summary["reversed_payouts_paise"], summary["refunded_paise"]) == (1000, 0)


# --- 3. errors and the views ----------------------------------------------------------------


def test_precise_errors(live, client, ops):
    _partner, bid, leg_id, _t = paid_out_leg()
    with transaction() as s:
        ref = s.get(Booking, bid).reference  # type: ignore[union-attr]
    r = resolve(client, ops, ref, leg_id, "pay_again")
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "nothing_to_resolve")
    r = resolve(client, ops, "12345678", leg_id, "pay_again")
    assert (r.status_code, r.get_json()["error"]["code"]) == (404, "not_found")
    r = resolve(client, ops, ref, leg_id + 1000, "pay_again")
    assert (r.status_code, r.get_json()["error"]["code"]) == (404, "not_found")
    r = resolve(client, ops, ref, leg_id, "keep")
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "action"


def test_the_ledger_views_show_money_held_for_ops(live, client, ops):
    """The booking's ledger and the ops list show what waits for ops, and stop once
    resolved."""
    _partner, bid, leg_id, t, ref = reversed_leg()
    r = client.get(f"{API}/ops/bookings/{ref}/ledger", headers=ops)
    assert r.status_code == 200 and r.get_json()["reversed_payouts_paise"] == t["amount"]
    r = client.get(f"{API}/ops/reversed-payouts", headers=ops)
    assert r.status_code == 200, r.get_json()
    assert [(x["reference"], x["reversed_payouts_paise"]) for x in r.get_json()["items"]] \
        == [(ref, t["amount"])]
    assert resolve(client, ops, ref, leg_id, "pay_again").status_code == 200
    run()
    assert client.get(f"{API}/ops/reversed-payouts", headers=ops).get_json()["items"] == []
    assert client.get(f"{API}/ops/bookings/{ref}/ledger",
                      headers=ops).get_json()["reversed_payouts_paise"] == 0


# The kinds of migrations after 0034 (0035: the platform's cost of a dashboard refund;
# 0039: the rest of a payment under the least refund, kept; 0045: Razorpay's fee).
LATER_KINDS = (rules.EntryKind.OUTSIDE_REFUND_PLATFORM, rules.EntryKind.RELEASE_PLATFORM,
               rules.EntryKind.REMAINDER_KEPT, rules.EntryKind.GATEWAY_FEE)


def test_the_resolution_kinds_are_in_the_ledgers_check(db, engine):  # noqa: F811
    """0029 widens the kind CHECK (validated) and keeps the reversal kind."""
    from tests.test_migrations_live import upgrade

    upgrade(db, "0029")
    with engine.connect() as conn:
        (checked, definition) = conn.exec_driver_sql(
            "SELECT convalidated, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conname = 'ck_ledger_transactions_kind'").one()
    assert checked
    for kind in rules.EntryKind:
        if kind is rules.EntryKind.REVERSAL_WRITTEN_OFF or kind in LATER_KINDS:  # later
            continue
        assert f"'{kind.value}'" in definition


def test_the_write_off_kind_is_in_the_ledgers_check(db, engine):  # noqa: F811
    """0034 widens the kind CHECK again (validated): every kind the ledger wrote then."""
    from tests.test_migrations_live import upgrade

    upgrade(db, "0033")
    with engine.connect() as conn:
        before = conn.exec_driver_sql("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                                      "WHERE conname = 'ck_ledger_transactions_kind'").scalar()
    assert "'reversal_written_off'" not in before
    upgrade(db, "0034")
    with engine.connect() as conn:
        (checked, definition) = conn.exec_driver_sql(
            "SELECT convalidated, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conname = 'ck_ledger_transactions_kind'").one()
    assert checked
    for kind in rules.EntryKind:
        assert (f"'{kind.value}'" in definition) is (kind not in LATER_KINDS), kind


# --- 4. a relay: each leg's reversed payout is its own decision (review r3) -----------------


def two_reversed_legs(back: int = 1000) -> tuple[int, str, list[int], list[dict]]:
    """A relay whose two legs, each its own partner's, were delivered and paid out; then
    ``back`` paise of each leg's payout was reversed in the dashboard and recorded:
    (booking, its ref, the two legs, their transfers)."""
    from core.adapters.models import Leg
    from core.domain.booking import Actor, BookingStatus, LegStatus
    from core.services.booking import move_booking, move_leg
    from tests.test_payments_gaps import make_relay
    from tests.test_payments_support import new_partner, paid_booking

    system = Actor.system()
    partners = [new_partner(), new_partner("+919812349002", "acc_partner0002")]
    bid = paid_booking()
    with transaction() as s:
        half = s.get(Booking, bid).partner_share_paise // 2  # type: ignore[union-attr]
    make_relay(bid, half)
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None
        ref = b.reference
        legs = list(s.scalars(select(Leg).where(Leg.booking_id == bid).order_by(Leg.sequence)))
        for p in partners:
            s.get(PartnerProfile, p).kyc_status = "verified"  # type: ignore[union-attr]
        for leg, p in zip(legs, partners, strict=True):
            leg.partner_id = p
            for ls in (LegStatus.OFFERING, LegStatus.ASSIGNED):
                move_leg(s, leg, ls, system, "test")
        for bs in (BookingStatus.DISPATCHING, BookingStatus.ASSIGNED):
            move_booking(s, b, bs, system, "test")
        leg_ids = [leg.id for leg in legs]
    for leg_id in leg_ids:
        assert payments.hold_leg_transfer(leg_id) == "held"
    run()
    with transaction() as s:
        b = s.get(Booking, bid)
        for leg in s.scalars(select(Leg).where(Leg.id.in_(leg_ids))):
            for ls in (LegStatus.PICKED_UP, LegStatus.DELIVERED):
                move_leg(s, leg, ls, system, "test")
        for bs in (BookingStatus.PICKED_UP, BookingStatus.DELIVERED):
            move_booking(s, b, bs, system, "test")  # type: ignore[arg-type]
    for leg_id in leg_ids:
        assert payments.release_leg(leg_id) == "released"
    run()
    by_leg = {int(t["notes"]["leg_id"]): t for t in emu._all("transfer")}
    transfers = [by_leg[leg_id] for leg_id in leg_ids]
    for t in transfers:
        assert t["status"] == "processed"
        gw.client().transfer.reverse(t["id"], {"amount": back})
        send_reversed_event(t["id"])
    with transaction() as s:
        assert [ledger.leg_reversed_payouts(s, leg_id)[1] for leg_id in leg_ids] == [
            back, back]
    return bid, ref, leg_ids, transfers


def retry(client, ops, ref: str):
    return client.post(f"{API}/ops/bookings/{ref}/refund/retry", headers=ops)


def refund_legs(bid: int) -> list[tuple[int, int, str]]:
    """The booking's reversed-payout refund attempts: (attempt, leg, status)."""
    with transaction() as s:
        return [(r.attempt, payments._refund_leg(s, r), r.status) for r in s.scalars(
            select(Refund).where(Refund.booking_id == bid).order_by(Refund.attempt))]


def test_ops_retry_finds_a_legs_failed_refund_after_the_other_legs_refund(live, client, ops,
                                                                          monkeypatch):
    """Leg A's refund failed to its last try; ops then refund leg B's, which the gateway
    makes. Ops retry the booking's failed refund: it is leg A's, for leg A's money (the
    other leg's later refund is no later try of it)."""
    monkeypatch.setenv("REFUND_ATTEMPTS", "1")
    bid, ref, (a, b), _ts = two_reversed_legs()
    emu.control("refund_outcome", "failed")
    assert resolve(client, ops, ref, a, "refund").status_code == 200
    run()
    emu.control("refund_outcome", "processed")
    assert resolve(client, ops, ref, b, "refund").status_code == 200
    run()
    assert refund_legs(bid) == [(1, a, "failed"), (2, b, "processed")]
    r = retry(client, ops, ref)
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["attempt"], r.get_json()["amount_paise"]) == (3, 1000)
    run()
    assert refund_legs(bid) == [(1, a, "failed"), (2, b, "processed"), (3, a, "processed")]
    summary = whole(bid)
    assert (summary["refunded_paise"], summary["reversed_payouts_paise"]) == (2000, 0)
    assert not failed_jobs()


def test_ops_retry_takes_the_given_up_legs_refund_not_the_other_legs(live, client, ops,
                                                                     monkeypatch):
    """Leg A's refund (1,000) gave up; leg B's (700 of it back) failed with a retry
    planned. Ops retry: the one that gave up comes first, and it is leg A's, for leg A's
    1,000 out of leg A's money; leg B's planned retry stays planned."""
    monkeypatch.setenv("REFUND_ATTEMPTS", "1")
    bid, ref, (a, b), (_ta, tb) = two_reversed_legs()
    emu.control("refund_outcome", "failed")
    assert resolve(client, ops, ref, a, "refund").status_code == 200
    run()
    monkeypatch.setenv("REFUND_ATTEMPTS", "3")
    gw.client().transfer.reverse(tb["id"], {"amount": 700})  # more of leg B's, later
    send_reversed_event(tb["id"])
    assert resolve(client, ops, ref, b, "refund").status_code == 200
    run()
    emu.control("refund_outcome", "processed")
    assert refunds(bid) == [(1, "failed", False), (2, "failed", True)]
    r = retry(client, ops, ref)
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["attempt"], r.get_json()["amount_paise"]) == (3, 1000)
    run()
    assert refund_legs(bid) == [(1, a, "failed"), (2, b, "failed"), (3, a, "processed")]
    assert refunds(bid)[1] == (2, "failed", True)
    with transaction() as s:
        assert [ledger.leg_reversed_payouts(s, x)[1] for x in (a, b)] == [0, 1700]
    whole(bid)


def test_ops_retry_of_a_refund_a_later_decision_replaced_is_refused(live, client, ops):
    """Leg A's refund failed; ops then chose to pay leg A's rider again instead. More of
    leg A's payout comes back later. Retrying the old failed refund would give that to
    the customer, which nobody decided: refused, 409 decided_since, nothing refunded,
    and the money stays held for ops. Leg B's failed refund is still retried."""
    bid, ref, (a, b), (ta, _tb) = two_reversed_legs()
    emu.control("refund_outcome", "failed")
    assert resolve(client, ops, ref, a, "refund").status_code == 200
    run()
    emu.control("refund_outcome", "processed")
    assert resolve(client, ops, ref, a, "pay_again").status_code == 200
    run()
    gw.client().transfer.reverse(ta["id"], {"amount": 500})
    send_reversed_event(ta["id"])
    r = retry(client, ops, ref)
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "decided_since"), (
        r.get_json())
    run()
    assert refund_legs(bid) == [(1, a, "failed")]
    assert payments.retry_refund(bid, 2) == "not-due"
    with transaction() as s:
        assert [ledger.leg_reversed_payouts(s, x)[1] for x in (a, b)] == [500, 1000]
    assert emu._all("refund")[0]["status"] == "failed"
    # leg B's own failed refund is not the replaced one: ops may retry it
    emu.control("refund_outcome", "failed")
    assert resolve(client, ops, ref, b, "refund").status_code == 200
    run()
    emu.control("refund_outcome", "processed")
    r = retry(client, ops, ref)
    assert r.status_code == 200, r.get_json()
    run()
    assert refund_legs(bid) == [(1, a, "failed"), (2, b, "failed"), (3, b, "processed")]
    summary = whole(bid)
    assert (summary["refunded_paise"], summary["reversed_payouts_paise"]) == (1000, 500)

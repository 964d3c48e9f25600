"""Session 30, money: the payment link's SMS says how long is left to pay; the ops alert
for a rider unpaid for days speaks the operator's language; a refund refused for want of
balance tells ops at once; Razorpay's fee and its tax are booked in the ledger. Through
RQ, the real razorpay client, the emulator and its signed webhooks; the clock is frozen
and moved, never waited for."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage, Person
from core.adapters.payment_models import LedgerPosting, LedgerTransaction
from core.adapters.queue import enqueue
from core.domain import ledger as rules
from core.services import ledger, payments, reconciliation
from sandbox import razorpay as emu
from tests.conftest import release_scheduled
from tests.test_migrations_live import db, engine, template  # noqa: F401 (fixtures)
from tests.test_payments_refunds import RETRY_DELAY, cancel, fail_for_no_partner, gateway  # noqa: F401
from tests.test_payments_refunds import attempts as refund_attempts
from tests.test_payments_support import (
    advance,
    booking,
    confirmed_booking,
    ledger_checked,
    link_of,
    new_partner,
    paid_booking,
    run,
    summary,
)

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def to_customer(booking_id: int) -> list[str]:
    """What the booking's customer was sent about it, in order."""
    with transaction() as s:
        b = s.get(Booking, booking_id)
        assert b is not None
        phone = s.get(Person, b.customer_id).phone
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.to_addr.in_([phone, f"whatsapp:{phone}"]))
            .order_by(OutboxMessage.id)))


# --- 1. the payment link's SMS says the minutes left to pay ---------------------------------


def test_the_link_sms_says_the_minutes_left_to_pay(live):
    t0 = clock.now()
    clock.freeze(t0)
    bid = confirmed_booking()  # 30 minutes to pay (PAYMENT_LINK_TTL_MIN)
    clock.freeze(t0 + timedelta(minutes=2))  # the link job runs a little later
    run()
    b, link = booking(bid), link_of(bid)
    sent = i18n.t("pay.link", "en", ref=b.reference, total_paise=b.total_paise,
                  url=link.short_url, minutes=28)
    assert to_customer(bid) == [sent]
    assert "28 min" in sent


def test_the_link_sent_again_says_the_minutes_left_then(live):
    t0 = clock.now()
    clock.freeze(t0)
    bid = confirmed_booking()
    run()
    clock.freeze(t0 + timedelta(minutes=20, seconds=30))  # 9 min 30 s left: said as 10
    with transaction() as s:
        b = s.get(Booking, bid)
        assert payments.send_link_again(s, b, "+919812340077")
    with transaction() as s:
        again = s.scalars(select(OutboxMessage.body)
                          .where(OutboxMessage.to_addr == "+919812340077")).all()
    b = booking(bid)  # a phone we do not know hears the default language
    assert again == [i18n.t("pay.link", "hi", ref=b.reference, total_paise=b.total_paise,
                            url=link_of(bid).short_url, minutes=10)]


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_every_language_says_the_minutes(lang):
    text = i18n.t("pay.link", lang, ref="48217730", total_paise=125_000,
                  url="https://rzp.io/i/AbCdEf1234", minutes=27)
    assert "27" in text


# --- 2. a rider unpaid for days: the operator hears it in their language --------------------

OPERATOR = "+919000000098"


def add_operator(lang: str) -> None:
    with transaction() as s:
        s.add(Person(phone=OPERATOR, name="Meena", preferred_language=lang, role="ops"))


def to_operator() -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == OPERATOR).order_by(OutboxMessage.id)))


def owed_a_week(account: str) -> tuple[int, int]:
    """A delivered leg whose rider's account refuses transfers, swept every 6 hours for 9
    days: (booking id, leg id)."""
    emu.refuse_account(account)
    partner = new_partner(account=account)
    bid = paid_booking()
    leg_id = advance(bid, partner, to="delivered")
    enqueue("workers.payments.release_leg", leg_id, job_id=f"release-{leg_id}")
    run()
    start = clock.now()
    for hours in range(0, 9 * 24, 6):
        clock.freeze(start + timedelta(hours=hours, minutes=1))
        payments.sweep()
        run()
    return bid, leg_id


@pytest.mark.parametrize("lang", ["ta", "en"])
def test_a_rider_unpaid_for_a_week_is_told_in_the_operators_language(live, lang):
    add_operator(lang)
    bid, leg_id = owed_a_week("acc_kycwait0030")
    alerts = to_operator()
    assert len(alerts) == 2, alerts  # the refusal, then a week on
    with transaction() as s:
        owed = ledger.leg_payable(s, leg_id) - ledger.leg_paid_out(s, leg_id)
    said = i18n.t("payment.ops_owed_long_error", lang, ref=booking(bid).reference, leg=leg_id,
                  payout_paise=owed, days=7,
                  error=payments.alert_error("Linked account acc_kycwait0030 is not "
                                             "activated"))
    assert alerts[1] == said
    assert "unpaid" not in alerts[1] or lang == "en"
    assert "still trying" not in alerts[1]


@pytest.mark.parametrize(("last_error", "quoted"), [
    ("refused: Linked account acc_x is not activated", "Linked account acc_x is not activated"),
    ("gateway reported transfer.failed: account closed", "account closed"),
    ("partner has no linked account", None),  # our own English words: not quoted
    ("direct transfer asked", None),
    ("refused: ", None),
    (None, None),
])
def test_only_the_gateways_words_are_quoted_to_an_operator(last_error, quoted):
    assert payments._gateway_words(last_error) == quoted


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_the_owed_long_alert_has_no_english_reason(lang):
    for key in ("payment.ops_owed_long", "payment.ops_owed_long_error"):
        text = i18n.t(key, lang, ref="48217730", leg=12345, payout_paise=141_247, days=7,
                      error="E")
        assert "still trying" not in text and "unpaid 7" not in text
        assert "7" in text


# --- 3. a refund refused for want of balance: ops hear at once ------------------------------


def test_a_refund_refused_for_low_balance_tells_ops_at_the_first_refusal(live, gateway):  # noqa: F811
    add_operator("mr")
    bid = paid_booking()
    total, ref = booking(bid).total_paise, booking(bid).reference
    gateway.refuse = 2  # the first try and its first retry: the next goes through
    cancel(bid)
    run()
    assert refund_attempts(bid) == [(1, "requested", total)]  # RQ tries again later
    told = i18n.t("payment.ops_refund_no_balance", "mr", ref=ref, refund_paise=total)
    assert to_operator() == [told]  # at once, in the operator's language
    assert release_scheduled(timedelta(seconds=11)) == 1
    run()
    assert to_operator() == [told]  # refused again: told once for the attempt
    assert release_scheduled(timedelta(seconds=31)) == 1
    run()
    assert refund_attempts(bid) == [(1, "processed", total)]
    assert to_operator() == [told]  # nothing more: the retry went through


def test_a_last_attempt_refused_for_low_balance_is_told_then_stuck(live, gateway,  # noqa: F811
                                                                  monkeypatch):
    monkeypatch.setenv("REFUND_ATTEMPTS", "1")
    add_operator("en")
    bid = paid_booking()
    total, ref = booking(bid).total_paise, booking(bid).reference
    gateway.refuse = 1
    fail_for_no_partner(bid)  # no RQ retries: the attempt's one try is its last
    run()
    assert refund_attempts(bid) == [(1, "failed", total)]
    low = i18n.t("payment.ops_refund_no_balance", "en", ref=ref, refund_paise=total)
    stuck = i18n.t("payment.ops_refund_stuck", "en", ref=ref, refund_paise=total, attempts=1)
    assert to_operator() == [low, stuck]  # what is wrong, then that a person must act


def test_a_refusal_for_another_reason_tells_ops_nothing_at_once(live, gateway,  # noqa: F811
                                                                monkeypatch):
    from tests.test_payments_refunds import LOW_BALANCE

    other = {"error": {**LOW_BALANCE["error"], "reason": "payment_blocked",
                       "description": "Refunds are disabled for this payment."}}
    monkeypatch.setitem(LOW_BALANCE, "error", other["error"])
    add_operator("en")
    bid = paid_booking()
    gateway.refuse = 1
    cancel(bid)
    run()
    assert to_operator() == []
    assert release_scheduled(timedelta(seconds=11)) == 1
    run()
    assert [a[:2] for a in refund_attempts(bid)] == [(1, "processed")]


# --- 4. Razorpay's fee on a captured payment is in the ledger -------------------------------


def fee_entries(booking_id: int) -> list[tuple[str, str | None, list[tuple[str, int]]]]:
    """(idempotency key, gateway ref, [(account, amount)]) of the booking's fee entries."""
    with transaction() as s:
        rows = s.scalars(select(LedgerTransaction).where(
            LedgerTransaction.booking_id == booking_id,
            LedgerTransaction.kind == rules.EntryKind.GATEWAY_FEE.value)).all()
        return [(t.idempotency_key, t.gateway_ref, sorted(
            (p.account, p.amount_paise) for p in s.scalars(select(LedgerPosting).where(
                LedgerPosting.transaction_id == t.id)))) for t in rows]


def platform_holds() -> int:
    """What the platform's own accounts hold: what its Razorpay balance should hold."""
    with transaction() as s:
        return -(ledger.balance(s, rules.GATEWAY) + ledger.balance(s, rules.FEES))


def test_the_sandbox_takes_razorpays_fee_and_its_gst():
    assert emu.fee_and_tax(10_000) == (236, 36)  # 2% = Rs 2, GST 18% of it = 36 paise
    assert emu.fee_and_tax(9_250) == (218, 33)  # 185 + 33, each rounded to the paisa


def test_a_captured_payment_books_razorpays_fee_on_the_platform(live):
    bid = paid_booking()
    total = booking(bid).total_paise
    (payment,) = emu._all("payment")
    fee = payment["fee"]
    assert (fee, payment["tax"]) == emu.fee_and_tax(total) and fee > payment["tax"] > 0
    # One entry (both webhooks carry the payment), keyed by the payment: the platform's
    # commission gives it to the gateway's fees.
    assert fee_entries(bid) == [(f"capture:{payment['id']}:fee", payment["id"],
                                 sorted([("gateway_fees", fee),
                                         ("platform_commission", -fee)]))]
    s = summary(bid)
    assert s["captured_paise"] == s["escrow_paise"] == total  # the customer's money whole
    # The ledger's platform now holds what Razorpay's balance holds of this payment.
    assert platform_holds() == total - fee == emu.platform_balance() - emu.OPENING_BALANCE
    # Told again (a webhook delivered twice, a fetch): nothing more.
    assert payments.record_capture(bid, payment["id"], total, cause="again", fee=fee) == (
        "duplicate-capture")
    assert len(fee_entries(bid)) == 1
    # Told with another fee: the payment is still recorded (the fee's difference is the
    # reconciliation's to report), the fee booked stays.
    assert payments.record_capture(bid, payment["id"], total, cause="odd", fee=fee + 1) == (
        "duplicate-capture")
    assert [p for _, _, p in fee_entries(bid)] == [sorted([("gateway_fees", fee),
                                                           ("platform_commission", -fee)])]


def test_a_delivered_booking_pays_the_rider_in_full_and_the_platform_bears_the_fee(live):
    partner = new_partner()
    bid = paid_booking()
    b = booking(bid)
    leg_id = advance(bid, partner, to="delivered")
    enqueue("workers.payments.release_leg", leg_id, job_id=f"release-{leg_id}")
    run()
    (payment,) = emu._all("payment")
    (transfer,) = emu._all("transfer")
    assert transfer["amount"] == b.partner_share_paise  # the rider's payout untouched
    assert transfer["fees"] > 0  # Route's fee on it, the platform's too (session 31)
    with transaction() as s:
        assert ledger.balance(s, rules.COMMISSION) == (
            b.commission_paise - payment["fee"] - transfer["fees"])
        assert ledger.balance(s, rules.FEES) == payment["fee"] + transfer["fees"]
    assert summary(bid)["escrow_paise"] == 0
    assert platform_holds() == emu.platform_balance() - emu.OPENING_BALANCE


def test_a_payment_without_a_fee_posts_nothing(live, monkeypatch):
    monkeypatch.setattr(emu, "fee_and_tax", lambda amount: (None, None))  # an older payload
    bid = paid_booking()
    assert emu._all("payment")[0]["fee"] is None
    assert fee_entries(bid) == []
    emu.control("fee_bps", 0)  # a fee of 0: nothing either
    other = paid_booking("+919812340002")
    assert fee_entries(other) == []


def test_a_full_refund_leaves_the_fee_with_the_platform(live):
    bid = paid_booking()
    total = booking(bid).total_paise
    cancel(bid)
    run()
    assert refund_attempts(bid) == [(1, "processed", total)]  # the customer gets it all
    (payment,) = emu._all("payment")
    with transaction() as s:
        assert ledger.balance(s, rules.COMMISSION) == -payment["fee"]  # Razorpay keeps it
    assert platform_holds() == emu.platform_balance() - emu.OPENING_BALANCE == -payment["fee"]


def test_reconciliation_books_a_fee_the_ledger_lacks_and_reports_one_that_differs(
        live, monkeypatch):
    with monkeypatch.context() as m:  # recorded as if from the link's list: no fee
        m.setattr(payments, "_fee", lambda payment, amount: None)
        bid = paid_booking()
    assert fee_entries(bid) == []
    (payment,) = emu._all("payment")
    result = reconciliation.run()
    assert result["mismatches"] == 0
    assert [key for key, _, _ in fee_entries(bid)] == [f"capture:{payment['id']}:fee"]
    emu.set_fields(payment["id"], fee=payment["fee"] + 100)  # the gateway says otherwise
    assert reconciliation.run()["mismatches"] == 1
    with transaction() as s:
        (found,) = reconciliation.list_mismatches(s)
    assert (found["kind"], found["entity"], found["gateway_id"]) == (
        "fee_differs", "payment", payment["id"])
    assert (found["ledger_amount_paise"], found["gateway_amount_paise"]) == (
        payment["fee"], payment["fee"] + 100)
    emu.set_fields(payment["id"], fee=payment["fee"])  # it agrees again: resolved
    assert reconciliation.run()["mismatches"] == 0
    with transaction() as s:
        assert reconciliation.list_mismatches(s) == []


def test_0045_takes_the_fee_kinds_and_refuses_to_go_back_while_used(db, engine):  # noqa: F811
    from alembic import command

    from tests.test_migrations_live import LOCK_TIMEOUT_MS, alembic_config, upgrade, version

    def definitions() -> dict[str, str]:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT conname, pg_get_constraintdef(oid) || ' ' || convalidated::text "
                "FROM pg_constraint WHERE conname IN ('ck_ledger_transactions_kind', "
                "'ck_ledger_postings_account_kind', 'ck_ledger_postings_account_shape', "
                "'ck_reconciliation_mismatches_kind')").all()
        return dict(rows)

    upgrade(db, "0044")
    before = definitions()
    assert "'gateway_fee'" not in before["ck_ledger_transactions_kind"]
    assert "'fee_differs'" not in before["ck_reconciliation_mismatches_kind"]
    upgrade(db, "0045")
    after = definitions()
    assert all(d.endswith(" true") for d in after.values()), after  # validated
    for kind in rules.EntryKind:
        assert f"'{kind.value}'" in after["ck_ledger_transactions_kind"], kind
    for kind in rules.AccountKind:
        assert f"'{kind.value}'" in after["ck_ledger_postings_account_kind"], kind
    assert "'gateway_fees'" in after["ck_ledger_postings_account_shape"]
    assert "'fee_differs'" in after["ck_reconciliation_mismatches_kind"]
    config = alembic_config(db, LOCK_TIMEOUT_MS, [])
    command.downgrade(config, "0044")  # nothing of its kinds yet: it goes back
    assert definitions() == before
    upgrade(db, "0045")
    params = ledger.post_arguments(rules.gateway_fee(1, "pay_s30fee", 236), actor="test")
    with engine.begin() as conn:
        assert conn.execute(text(
            "SELECT ledger_post(NULL, :key, :kind, :ref, 'test', NULL, 'test', now(), "
            "CAST(:postings AS jsonb), CAST('{}' AS jsonb))"),
            {"key": params["key"], "kind": params["kind"], "ref": params["gateway_ref"],
             "postings": json.dumps(params["postings"])}).scalar() == "posted"
    with pytest.raises(RuntimeError, match="cannot go back to 0044"):
        command.downgrade(config, "0044")
    with engine.connect() as conn:
        assert version(conn) == "0045"

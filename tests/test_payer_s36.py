"""A phone booking paid from another mobile (session 36, review rbook).

A caller whose own phone cannot pay has the link sent to another mobile (the IVR's
``send_link_to``, text ``pay.link_other``): her son pays from his own UPI. On a refund
Razorpay gives the money back to the account it was paid from, the son's:

- the caller was told "₹92 has been sent back to you. It reaches your account in 5 to 7
  days" (``payment.refunded``, and ``bot.cancel.done_refund`` on an ops cancel); she hears
  now it goes back to the account it was paid from;
- the son heard nothing; he now hears once, in a short SMS of his own
  (``payment.refunded_payer``), that the payment for the booking goes back to the account
  it was paid from, and when;
- a failed attempt told the caller "try again with the same link"; with the link on
  another phone too she hears it may be tried again from either (``payment.failed_other``).
"""
from __future__ import annotations

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking
from core.adapters.payment_models import Refund
from core.domain.booking import Actor
from core.services import payments
from core.services.outbox import OutboxMessage
from tests.conftest import run_jobs
from tests.test_ivr import Caller, phone, prompts, t  # noqa: F401
from tests.test_ivr_link_other import SON, _booked, _send_to, _sms_to
from tests.test_payments_support import confirmed_booking, pay, run
from tests.test_stuck_relay_platform import dashboard_refund

pytestmark = pytest.mark.db


def _booking_id(ref: str) -> int:
    with transaction() as s:
        bid = s.scalar(select(Booking.id).where(Booking.reference == ref))
    assert bid is not None
    return bid


def _to(booking_id: int, number: str) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id, OutboxMessage.to_addr == number)
            .order_by(OutboxMessage.id)))


def _payer_notices() -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.dedupe_key.like("refund-%-payer-%"))))


def test_a_refund_of_a_payment_made_from_the_sons_phone_is_told_to_both_truly(
        live, phone: Caller) -> None:  # noqa: F811
    ref = _booked(phone)  # a Hindi caller
    run_jobs()  # the payment link is made
    _send_to(phone, SON)
    bid = _booking_id(ref)
    assert pay(bid).status_code == 200  # the son pays from his UPI
    run()
    with transaction() as s:  # support cancels it before any rider came: all comes back
        payments.cancel_booking(s, s.get(Booking, bid), Actor("ops", "1"), "customer called")
    run()  # the refund is asked and processed
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None and b.status == "refunded"
        total = b.total_paise
        refund_id = s.scalar(select(Refund.id).where(
            Refund.booking_id == bid, Refund.status == "processed"))
        assert refund_id is not None
    # The caller: cancelled, and the money goes back to the account it was paid from,
    # not "to you", "into your account".
    to_caller = _to(bid, phone.phone)
    cancelled = i18n.t("bot.cancel.done_refund", "hi", ref=ref, refund_paise=total)
    refunded = i18n.t("payment.refunded", "hi", ref=ref, refund_paise=total)
    assert cancelled in to_caller and refunded in to_caller, to_caller
    for said in (cancelled, refunded):
        assert "जिससे पेमेंट हुआ था" in said or "जिस खाते से पेमेंट हुआ था" in said, said
        assert "आपको" not in said, said
    # The son, whose account it goes back to, hears it once: the booking, the sum, when;
    # in the caller's language (his is not known), and nothing of the caller.
    to_son = [b for b in _sms_to(SON) if ref in b and "5 से 7" in b]
    assert to_son == [i18n.t("payment.refunded_payer", "hi", ref=ref, refund_paise=total)]
    assert phone.phone[-4:] not in to_son[0]
    # A repeat of the refund's news (the webhook again, the reconciliation) adds nothing.
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None
        payments._tell_refunded(s, b, refund_id, total)
    assert [b for b in _sms_to(SON) if "5 से 7" in b] == to_son
    assert len([b for b in _to(bid, phone.phone) if b == refunded]) == 1


def test_a_failed_attempt_with_the_link_on_another_phone_says_either_may_try_again(
        live, phone: Caller) -> None:  # noqa: F811
    ref = _booked(phone)
    run_jobs()
    bid = _booking_id(ref)
    assert pay(bid, fail="1").status_code == 200  # her own attempt, the link only hers
    run()
    alone = i18n.t("payment.failed", "hi", ref=ref)
    assert _to(bid, phone.phone).count(alone) == 1
    _send_to(phone, SON)
    assert pay(bid, fail="1").status_code == 200  # the son's attempt fails
    run()
    either = i18n.t("payment.failed_other", "hi", ref=ref)
    to_caller = _to(bid, phone.phone)
    assert to_caller.count(either) == 1 and to_caller.count(alone) == 1, to_caller
    assert "फ़ोन" in either and "उसी लिंक" in either


def test_a_refund_with_the_link_on_no_other_phone_is_told_to_the_customer_only(live) -> None:
    bid = confirmed_booking()
    run()
    assert pay(bid).status_code == 200
    run()
    with transaction() as s:  # she cancels it herself before any rider came
        b = s.get(Booking, bid)
        assert b is not None
        payments.cancel_booking(s, b, Actor("customer", str(b.customer_id)), "changed plans")
    run()
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None and b.status == "refunded"
        said = i18n.t("payment.refunded", "en", ref=b.reference, refund_paise=b.total_paise)
    assert said in _to(bid, "+919812340001")
    assert "your account" not in said and "to you" not in said
    assert "account it was paid from" in said
    assert _payer_notices() == []


def test_supports_refund_from_the_dashboard_is_told_to_the_other_phone_too(
        live, phone: Caller) -> None:  # noqa: F811
    ref = _booked(phone)
    run_jobs()
    _send_to(phone, SON)
    bid = _booking_id(ref)
    assert pay(bid).status_code == 200
    run()
    dashboard_refund(bid, 5000)  # support gives ₹50 back by hand (record_outside_refund)
    said = i18n.t("payment.refunded_payer", "hi", ref=ref, refund_paise=5000)
    assert _sms_to(SON).count(said) == 1, _sms_to(SON)
    assert i18n.t("payment.refunded", "hi", ref=ref, refund_paise=5000) in _to(bid, phone.phone)
    run()  # the reconciliation or a repeated event tells nobody again
    assert _sms_to(SON).count(said) == 1

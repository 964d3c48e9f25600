"""Refund texts where someone else may have paid (session 37, after session 36).

A phone caller can have the payment link sent to another mobile (a son's) who pays from
his own UPI; Razorpay gives a refund back to the account it was paid from. Session 36
changed ``payment.refunded`` and told the other phones; five texts still said the money
comes "back to you": a payment after the cancel (``payment.after_cancel``), a second
payment (``payment.extra``), a wrong amount with no link left
(``payment.wrong_amount_no_link``), no rider found (``booking.status.failed``) and the
IVR's cancel question (``ivr.cancel.refund``). Each says now, in every language, that it
goes back to the account it was paid from.

The same words were left in the cancel questions (chat and call: ``*.cancel.refund``,
``*.cancel.fee``, ``*.cancel.paid_back``; ``*.cancel.fee_only`` gives nothing back and
now says no "to you"), two tracking texts (``booking.status.stuck_ended`` and
``no_rider_no_refund``) and the call's ``ivr.cancel.done_refund``, which named the account
in English only: they say it the same way now.

Tracking a refunded booking (``booking.status.refunded``, ``stuck_refunded``,
``fee_refunded``: "your money has been returned", "the rest has been returned to you"), the
"no rider near you" notice before paying (``*.confirm.no_rider``) and the late rider's SMS
(``dispatch.customer_rider_late``: "all your money comes back") name the account now too;
the cancel answered after the amounts moved (``*.cancel.changed``) says "the amount that
goes back has changed", not "what you get back".

The last ones: a relay cancelled halfway (``dispatch.customer_stuck_cancelled``: "{refund}
comes back"), a payment after the time to pay or of the wrong amount
(``payment.after_expiry``, ``payment.wrong_amount``: "you paid {refund} ... It comes
back") and an ops cancel with a rider's fee (``bot.cancel.done_fee``: "the account that
paid" in English, no account but in Hindi) name the account as the others do, and the
payment texts say "{refund} was paid", not who paid it.

The dedupe key of a link sent to another mobile is built in one place
(notify.link_other_prefix): what ivr.VoicePorts.send_link_to writes, link_payers finds.
"""
from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking
from core.domain.booking import Actor
from core.services import ledger, notify, payments
from core.services.outbox import OutboxMessage
from tests.conftest import run_jobs
from tests.test_ivr import Caller, phone, prompts, t  # noqa: F401
from tests.test_ivr_cancel import DROP, said
from tests.test_ivr_link_other import SON, _booked, _send_to
from tests.test_payer_s36 import _booking_id, _to
from tests.test_payments_support import paid_booking, pay, run

REFUND_KEYS = ("payment.after_cancel", "payment.extra", "payment.wrong_amount_no_link",
               "booking.status.failed", "ivr.cancel.refund")
# "The money comes back to you" in English: whoever paid gets it, not the customer.
TO_YOU = re.compile(r"back to you|get back|your (account|money|payment)|you paid", re.I)
# Each language's word for the account, as payment.refunded (session 36) says it.
ACCOUNT = {"en": "account it was paid from", "hi": "खाते", "bn": "অ্যাকাউন্ট", "gu": "ખાતા",
           "kn": "ಖಾತೆ", "mr": "खात्या", "ta": "கணக்கி", "te": "ఖాతా"}


# The cancel questions and tracking texts said so too (the chat's and the call's cancel
# with a rider's fee or after our team gave the money back, a stuck relay ended, no rider
# after a refund from the dashboard), and the call's "cancelled" named the account in
# English only. The fee_only questions give nothing back, so they name no account.
MORE_REFUND_KEYS = (*(f"{c}.cancel.{k}" for c in ("bot", "ivr") for k in ("fee", "paid_back")),
                    "bot.cancel.refund", "booking.status.stuck_ended",
                    "booking.status.no_rider_no_refund", "ivr.cancel.done_refund")
NOTHING_BACK_KEYS = ("bot.cancel.fee_only", "ivr.cancel.fee_only")
# "To you" / "your money" in each language, as these texts said it.
TO_YOU_IN = {"en": TO_YOU.pattern, "hi": "आपको|आपके पैसे", "bn": "আপনি|আপনাকে|আপনার (টাকা|কাছে)",
             "gu": "તમને|તમારા પૈસા", "kn": "ನಿಮಗೆ|ನಿಮ್ಮ ಹಣ", "mr": "तुम्हाला|तुमचे पैसे",
             "ta": "உங்களுக்கு|உங்கள் பண", "te": "మీకు|మీ డబ్బు"}

# Tracking a refunded booking, the notice of no rider near before paying and the late
# rider's SMS said "your money" / "all your money comes back" as well.
STATUS_REFUND_KEYS = (*(f"booking.status.{s}" for s in ("refunded", "stuck_refunded",
                                                        "fee_refunded")),
                      "dispatch.customer_rider_late")
# The no-rider notices say "near you" and "you can book later" (bn: "আপনার কাছাকাছি",
# "আপনি"), so TO_YOU_IN does not fit them: they are checked for the account word.
NO_RIDER_KEYS = ("bot.confirm.no_rider", "ivr.confirm.no_rider")
CHANGED_KEYS = ("bot.cancel.changed", "ivr.cancel.changed")  # "what you get back has changed"
# "You get (it) back" where the texts said so without a "you": Hindi's "वापस मिलेंगे".
GET_BACK_IN = {"hi": "वापस मिल", "bn": "ফেরত পাবেন", "gu": "પાછા મળ", "mr": "परत मिळ"}

# The halfway relay's cancel, a payment after the time to pay or of the wrong amount, and
# the ops cancel with a rider's fee ("the account that paid" in English, none in six).
LAST_REFUND_KEYS = ("dispatch.customer_stuck_cancelled", "payment.after_expiry",
                    "payment.wrong_amount", "bot.cancel.done_fee", "bot.cancel.done_refund")
# The texts about a payment that goes back say what was paid, not who paid it.
PAID_KEYS = ("payment.after_cancel", "payment.extra", "payment.wrong_amount_no_link",
             "payment.after_expiry", "payment.wrong_amount")
# "You paid {refund}" / "your {refund}" in each language, as these texts said it.
YOU_PAID_IN = {"en": r"you paid|your \{refund\}", "hi": r"आपने|आपके \{refund\}",
               "bn": r"আপনি|আপনার \{refund\}", "gu": r"તમે|તમારા \{refund\}",
               "kn": r"ಕಟ್ಟಿದ್ದೀರಿ|ನಿಮ್ಮ \{refund\}", "mr": r"तुम्ही|तुमचे \{refund\}",
               "ta": r"நீங்கள்|உங்கள் \{refund\}", "te": r"మీరు|మీ \{refund\}"}


@pytest.mark.parametrize("key", REFUND_KEYS + MORE_REFUND_KEYS + STATUS_REFUND_KEYS
                         + NO_RIDER_KEYS + LAST_REFUND_KEYS)
def test_english_refund_texts_say_the_account_it_was_paid_from_not_you(key: str) -> None:
    text = i18n.raw(key, "en")
    assert not TO_YOU.search(text), text
    assert "the account it was paid from" in text, text


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_every_language_names_the_account_in_the_refund_texts(lang: str) -> None:
    assert set(ACCOUNT) == set(i18n.LANGUAGES)
    assert ACCOUNT[lang] in i18n.raw("payment.refunded", lang)  # the session-36 word
    missing = [k for k in REFUND_KEYS if ACCOUNT[lang] not in i18n.raw(k, lang)]
    assert not missing, f"{lang}: {missing}"


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_every_language_names_the_account_in_the_cancel_and_tracking_texts(lang: str) -> None:
    missing = [k for k in MORE_REFUND_KEYS + STATUS_REFUND_KEYS + NO_RIDER_KEYS
               + LAST_REFUND_KEYS if ACCOUNT[lang] not in i18n.raw(k, lang)]
    assert not missing, f"{lang}: {missing}"


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_no_refund_or_cancel_text_says_the_money_comes_back_to_you(lang: str) -> None:
    assert set(TO_YOU_IN) == set(i18n.LANGUAGES)
    to_you = re.compile(TO_YOU_IN[lang], re.I)
    said = {k: i18n.raw(k, lang) for k in REFUND_KEYS + MORE_REFUND_KEYS + NOTHING_BACK_KEYS
            + STATUS_REFUND_KEYS + CHANGED_KEYS + LAST_REFUND_KEYS}
    bad = {k: v for k, v in said.items() if to_you.search(v)}
    assert not bad, f"{lang}: {bad}"


@pytest.mark.parametrize("lang", sorted(GET_BACK_IN))
def test_no_refund_text_says_you_get_the_money_back(lang: str) -> None:
    get_back = re.compile(GET_BACK_IN[lang])
    keys = (REFUND_KEYS + MORE_REFUND_KEYS + NOTHING_BACK_KEYS + STATUS_REFUND_KEYS
            + NO_RIDER_KEYS + CHANGED_KEYS + LAST_REFUND_KEYS)
    bad = {k: i18n.raw(k, lang) for k in keys if get_back.search(i18n.raw(k, lang))}
    assert not bad, f"{lang}: {bad}"


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_no_payment_text_says_you_paid(lang: str) -> None:
    assert set(YOU_PAID_IN) == set(i18n.LANGUAGES)
    you_paid = re.compile(YOU_PAID_IN[lang], re.I)
    bad = {k: i18n.raw(k, lang) for k in PAID_KEYS if you_paid.search(i18n.raw(k, lang))}
    assert not bad, f"{lang}: {bad}"


def test_english_payment_texts_say_what_was_paid() -> None:
    for key in PAID_KEYS[2:]:  # the wrong amounts and the payment after the time to pay
        assert "{refund} was paid" in i18n.raw(key, "en"), key


def test_the_changed_amount_is_the_amount_that_goes_back() -> None:
    for key in CHANGED_KEYS:
        text = i18n.raw(key, "en")
        assert not TO_YOU.search(text) and "the amount that goes back" in text.lower(), text


@pytest.mark.db
def test_the_caller_hears_the_refund_goes_to_the_account_it_was_paid_from(
        live, phone: Caller) -> None:  # noqa: F811
    bid = paid_booking(phone.phone)  # an English-speaking caller
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None
        total = b.total_paise
    phone.call()
    phone.press("5")  # cancel
    heard = phone.press("1")  # the paid booking
    assert t("ivr.cancel.refund", "en", place=DROP, refund=said(total)) in heard.text
    assert "the account it was paid from" in heard.text, heard.text
    assert "You will get back" not in heard.text


@pytest.mark.db
def test_the_sons_payment_after_the_cancel_is_told_going_back_to_his_account(
        live, phone: Caller) -> None:  # noqa: F811
    ref = _booked(phone)  # a Hindi caller
    run_jobs()  # the payment link is made
    _send_to(phone, SON)
    bid = _booking_id(ref)
    with transaction() as s:  # she cancels; her son pays before the link is closed
        payments.cancel_booking(s, ledger.lock_booking(s, bid), Actor("ops", "1"),
                                "customer called")
    assert pay(bid).status_code == 200
    run()
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None and b.status == "cancelled"
        total = b.total_paise
    told = i18n.t("payment.after_cancel", "hi", ref=ref, refund_paise=total)
    to_caller = _to(bid, phone.phone)
    assert told in to_caller, to_caller
    assert "जिससे पेमेंट हुआ था" in told and "आपको" not in told and "आपका" not in told


@pytest.mark.db
def test_the_key_the_ivr_writes_is_the_one_link_payers_finds(live, phone: Caller) -> None:  # noqa: F811
    ref = _booked(phone)
    run_jobs()
    _send_to(phone, SON)
    bid = _booking_id(ref)
    with transaction() as s:
        keys = list(s.scalars(select(OutboxMessage.dedupe_key).where(
            OutboxMessage.booking_id == bid, OutboxMessage.to_addr == SON)))
        assert len(keys) == 1 and keys[0].startswith(notify.link_other_prefix(bid)), keys
        booking = s.get(Booking, bid)
        assert booking is not None
        assert notify.link_payers(s, booking) == [SON]
    assert notify.link_other_prefix(bid) == f"paylink-{bid}-other-"  # the stored form

"""Review r9, the words users read (session 34): partner SMS at their longest, the ways
to book again after a cancelled link, one word for a job, the second HELP page, counts,
the STATUS line of an offer, and what a parcel's declared value is for.

Catalogs only: no database, no Redis.
"""

from __future__ import annotations

import re
import string

import pytest

from core import i18n
from core.domain.dispatch import TRUST_LIMIT_PAISE, trust_allows
from tests.test_i18n import SMS_VALUES, sms_parts

FIELDS = string.Formatter()


def _render(key: str, lang: str, values: dict) -> str:
    names = {f.split(".")[0] for _, f, _, _ in FIELDS.parse(i18n.raw(key, lang)) if f}
    params = {k: v for k, v in values.items()
              if k in names or k.removesuffix("_paise") in names}
    return i18n.t(key, lang, **params)


# --- 1. partner and customer SMS at their longest ------------------------------------------

def test_sms_values_are_the_worst_cases() -> None:
    # test_i18n.test_texts_sent_by_sms_fit_two_parts sizes every SMS with these: a job code
    # is the leg's id (7 digits from the millionth leg), a Point or landmark may be in
    # Devanagari for an English partner (UCS-2: 67 a part), fees pass ₹1,000, refunds ₹10,000.
    assert all(len(SMS_VALUES[k].split(",")[0]) == 7 for k in ("job", "jobs", "typed", "offered"))
    assert not any(SMS_VALUES[k].isascii() for k in ("pickup", "drop", "point"))
    assert SMS_VALUES["fee_paise"] >= 1_000_00 and SMS_VALUES["fee_paise"] % 100
    assert SMS_VALUES["refund_paise"] >= 10_000_00 and SMS_VALUES["refund_paise"] % 100
    assert SMS_VALUES["total_paise"] >= SMS_VALUES["refund_paise"]


# The texts the review found at 3 parts (with a 6-digit job code, a Devanagari Point, a
# fee of ₹1,000 or more, a refund of ₹10,000 or more).
REVIEWED = [("gu", "dispatch.handed_pick_late"), ("en", "dispatch.handed_pick_late"),
            ("en", "dispatch.unlocked_handed"), ("mr", "dispatch.holder_cancelled"),
            ("te", "dispatch.holder_cancelled"), ("hi", "payment.after_expiry"),
            ("en", "dispatch.customer_stuck_cancelled"),
            ("te", "dispatch.customer_stuck_cancelled")]


@pytest.mark.parametrize("lang,key", REVIEWED)
def test_the_reviewed_partner_and_customer_sms_fit_two_parts(lang: str, key: str) -> None:
    text = _render(key, lang, SMS_VALUES)
    assert "1234567" in text or "48217730" in text
    assert sms_parts(text) <= 2, (len(text), text)


# --- 2. a link cancelled in Razorpay's dashboard -------------------------------------------

@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_link_cancelled_offers_both_ways_to_book_again_within_two_parts(lang: str) -> None:
    raw = i18n.raw("payment.link_cancelled", lang)
    assert "WhatsApp" in raw and '"hi"' in raw and "{ivr_phone}" in raw, raw
    text = _render("payment.link_cancelled", lang, SMS_VALUES)
    assert sms_parts(text) <= 2, (len(text), text)


# --- 3. one word for a job (also test_i18n_terms.test_partner_texts_use_one_word_for_a_job) -

@pytest.mark.parametrize("lang,word,other", [("mr", "काम", "जॉब"), ("gu", "કામ", "જોબ")])
def test_earnings_sms_uses_the_languages_word_for_job(lang: str, word: str, other: str) -> None:
    assert i18n.raw("dispatch.offer", lang).split()[0] == word
    earnings = i18n.raw("sms.earnings", lang)
    assert other not in earnings and word in earnings, earnings


# --- 4. HELP 2: both commands that take a job code -----------------------------------------

@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_help_more_shows_yes_and_cancel_with_a_code(lang: str) -> None:
    text = i18n.t("sms.help_more", lang)
    assert re.findall(r"(YES|CANCEL) 57", text) == ["YES", "CANCEL"], text
    assert sms_parts(text) <= 2


# --- 5. wording ---------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["bot.confirm.too_many_unpaid", "ivr.confirm.too_many_unpaid"])
@pytest.mark.parametrize("lang", ["en", "ta", "te", "kn", "gu"])
def test_the_unpaid_count_reads_right_when_it_is_one(key: str, lang: str) -> None:
    # UNPAID_BOOKINGS_MAX may be 1: "You already have 1 bookings", Tamil "1
    # புக்கிங்குகளுக்கு" (plural). The count is a label's value, as other counts are.
    text = i18n.t(key, lang, count=1)
    assert ": 1." in text and "1 bookings" not in text, text


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_status_says_what_1_and_2_do_to_an_offer_as_the_offer_does(lang: str) -> None:
    # STATUS listed "Offer 57: reply 1 or 2": 1 and 2 for what?
    status = i18n.raw("dispatch.status_offer", lang)
    head, _, choices = status.partition(": ")
    assert head.endswith("{job}") and "1" in choices and "2" in choices, status
    assert choices.casefold() in i18n.raw("dispatch.offer", lang).casefold(), status


RIDER = {"en": "rider", "hi": "राइडर", "bn": "রাইডার", "mr": "रायडर", "ta": "ரைடர",
         "te": "రైడర్", "gu": "રાઇડર", "kn": "ರೈಡರ್"}


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_the_value_help_says_what_the_value_is_for(lang: str) -> None:
    # The declared value chooses who may carry the parcel (a partner's trust tier:
    # dispatch.ineligible_reason); it changes no price and insures nothing. "It helps if
    # something goes wrong" promised what nothing does.
    assert not trust_allows(0, TRUST_LIMIT_PAISE[0] + 1) and trust_allows(3, 10**12)
    text = i18n.t("bot.help.value", lang)
    assert RIDER[lang] in text and "goes wrong" not in text, text

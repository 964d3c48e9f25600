"""The message catalogs as a localisation lead reads them (a review, session 19): what
tests/test_i18n.py does not check yet.

- An SMS naming villages must still fit the two parts test_i18n budgets when the
  villages have the long names real India Post offices of our own area have (the budget
  test uses 14-letter names).
- A partner reads one word for "job" in every SMS, the command list included.
- A reader meets one word (and one spelling) for each thing across a language's texts.

Catalogs only: no database, no Redis.
"""

from __future__ import annotations

import re
import string

import pytest

from core import i18n
from core.adapters.pincode import post_offices
from core.domain.dispatch import DispatchConfig
from tests.test_i18n import SMS_KEYS, SMS_VALUES, sms_parts

# --- SMS naming places, with long village names of our own area --------------------------

# Branch offices (villages) of West Champaran, where the demo Points are (pincode, name as
# display_name() gives it). One village in ten there has a name of 15 letters or more.
LONG_VILLAGES = (("845411", "Gobindapur Bazar"), ("845301", "Bhawanipur Bazar"))
PLACE_FIELDS = frozenset({"pickup", "drop", "point"})


def test_long_village_names_are_real_offices() -> None:
    # A guard for the test below: the names are India Post's, not made up.
    for pin, name in LONG_VILLAGES:
        assert name in {o.name for o in post_offices(pin)}, (pin, name)


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_sms_naming_villages_fits_two_parts_with_long_village_names(lang: str) -> None:
    # test_i18n.test_texts_sent_by_sms_fit_two_parts uses "Laxmipur Chowk" (14 letters)
    # for every place; a phone caller's booking SMS names two villages, a relay rider's
    # SMS a Point (named after its village). Each speed tier at its default hours.
    (_, pickup), (_, drop) = LONG_VILLAGES
    values = {**SMS_VALUES, "pickup": pickup, "drop": drop, "point": pickup}
    hours = DispatchConfig().delivery_hours
    fields = string.Formatter()
    over: dict[str, tuple[str, int]] = {}
    for key in SMS_KEYS:
        raw = i18n.raw(key, lang)
        names = {f.split(".")[0] for _, f, _, _ in fields.parse(raw) if f}
        if not names & PLACE_FIELDS:
            continue
        params = {k: v for k, v in values.items()
                  if k in names or k.removesuffix("_paise") in names}
        for tier, tier_hours in (hours.items() if "tier" in names else [("-", 0)]):
            if "tier" in names:
                params["tier"] = i18n.t(f"tier.{tier}", lang, hours=tier_hours)
            text = i18n.t(key, lang, **params)
            if sms_parts(text) > 2 and len(text) > over.get(key, ("", 0))[1]:
                over[key] = (str(tier), len(text))  # (speed tier, characters)
    assert not over, (f"{lang}: over two SMS parts (134 characters) with villages "
                      f"{pickup!r} and {drop!r}: {over}")


# --- partners: one word for a job ---------------------------------------------------------

def _partner_keys() -> list[str]:
    # What a partner reads: the dispatch texts and every sms.* one (HELP, EARN...; those
    # for customers and recipients name no job, so they pass).
    return sorted(k for k in i18n.keys("en")
                  if (k.startswith("dispatch.") and ".ops_" not in k) or k.startswith("sms."))


def _job_word(lang: str) -> str:
    """The word a language's job offer names a job by ("Job 48217: ...")."""
    return i18n.raw("dispatch.offer", lang).split()[0]


# "Job" as English says it, in a language's script: a word its offer does not use (the
# earnings SMS said जॉब / જોબ where every other Marathi / Gujarati text says काम / કામ).
JOB_LOANWORDS = {"mr": "जॉब", "gu": "જોબ", "bn": "জব", "ta": "ஜாப்", "te": "జాబ్", "kn": "ಜಾಬ್"}
# Marathi's काम is Hindi's own word for work ("ON - काम शुरू"), not another's job word.
OWN_WORDS = {"hi": {"काम"}}


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_partner_texts_use_one_word_for_a_job(lang: str) -> None:
    word = _job_word(lang)
    others = ({_job_word(other) for other in i18n.LANGUAGES} - {word} - OWN_WORDS.get(lang, set())
              | ({JOB_LOANWORDS[lang]} if lang in JOB_LOANWORDS else set()))
    # No other word for a job in a partner's SMS, inflected or not ("{legs} जॉब", "जॉबचे"):
    # not another language's (Hindi's जॉब in a Marathi SMS), nor English's in this script.
    wrong = {}
    for k in _partner_keys():
        words = re.findall(r"[^\s\d{}.,:;!?()\-।\"]+", re.sub(r"\{[^}]*\}", " ", i18n.raw(k, lang)))
        found = sorted({w for w in words for o in others if w.casefold().startswith(o.casefold())})
        if found:
            wrong[k] = found
    # The command list (YES/NO/CANCEL + code, STATUS) is about jobs: the same word.
    help_text = i18n.raw("sms.help", lang)
    help_ok = word.casefold() in help_text.casefold()
    assert not wrong and help_ok, (
        f"{lang}: the offer calls a job {word!r}; keys naming it otherwise: {wrong}; "
        f"sms.help uses {word!r}: {help_ok}")


# --- one word, one spelling for each thing -------------------------------------

# (the form most texts use, forms some texts use instead) per language.
ONE_FORM = {
    "hi": (("लिस्ट", ("सूची",)),),  # "list": लिस्ट in 5 texts
    "te": (("లిస్ట్", ("జాబితా",)),),  # "list": లిస్ట్ in 5 texts
    "mr": (("मोबाइल", ("मोबाईल",)),  # 5 texts
           ("अंक", ("आकडे",))),  # "digits": अंक/अंकी in the other pincode, phone, OTP texts
    "gu": (("પોસ્ટ ઑફિસ", ("પોસ્ટ ઓફિસ",)),  # 3 texts
           ("અંક", ("આંકડા",))),  # "digits": અંક in the pincode, phone, booking texts
}


@pytest.mark.parametrize("lang", sorted(ONE_FORM))
def test_one_word_and_spelling_for_each_thing(lang: str) -> None:
    found: dict[str, list[str]] = {}
    for usual, variants in ONE_FORM[lang]:
        assert any(usual in i18n.raw(k, lang) for k in i18n.keys(lang)), usual
        for variant in variants:
            keys = sorted(k for k in i18n.keys(lang)
                          if ".ops_" not in k and variant in i18n.raw(k, lang))
            if keys:
                found[f"{variant} (not {usual})"] = keys
    assert not found, f"{lang}: {found}"

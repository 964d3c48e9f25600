"""A rider's SMS at Twilio's keywords, and his EARN text with one job (session 38).

Twilio takes a message as its opt-out or opt-in keyword only when the whole message is
the keyword, in any case ("sToP"; "Stop please" is none: its OptOutType article), and
answers an opt-in word itself whether or not the number had opted out. So UNSTOP from a
rider who never sent STOP is no "not understood" (Twilio has just confirmed it): he
hears his status. "Stop." and "STOP!" are no opt-out for Twilio, so none for us either:
he is told to send STOP alone, or OFF. A count in his EARN text reads right for one job.
Each case has its own rider: the inbound rate limit counts on Redis's real time."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import PartnerProfile, Person
from tests.test_dispatch import LAXMIPUR, T0, frozen, make_partner, sms  # noqa: F401
from tests.test_dispatch_facts import deliver_for


def _state(partner_id: int, phone: str) -> tuple[bool, bool]:
    """(opted out of SMS, on duty) of a rider."""
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == phone))
        return person.sms_opted_out, s.get(PartnerProfile, partner_id).on_duty


# --- 1. UNSTOP from a rider who never opted out ------------------------------------------

@pytest.mark.db
@pytest.mark.parametrize("lang", ["en", "hi", "ta"])
@pytest.mark.parametrize("on_duty", [True, False])
def test_unstop_from_a_rider_who_never_opted_out_is_answered_with_his_status(
        client, frozen, lang, on_duty):  # noqa: F811
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang=lang, on_duty=on_duty)
    key = "dispatch.status_none_on" if on_duty else "dispatch.status_none_off"
    assert sms(client, phone, "UNSTOP") == [i18n.t(key, lang)]
    assert _state(pid, phone) == (False, on_duty)  # no duty changed by Twilio's word


@pytest.mark.db
def test_unstop_after_stop_still_ends_the_opt_out_and_answers_his_status(
        client, frozen):  # noqa: F811
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    assert sms(client, phone, "STOP") == []
    assert _state(pid, phone) == (True, False)
    assert sms(client, phone, "unstop") == [i18n.t("dispatch.status_none_off", "en")]
    assert _state(pid, phone) == (False, False)


# --- 2. Twilio's matching: the whole message is the word, any case ----------------------

@pytest.mark.db
@pytest.mark.parametrize("body", ["STOP", "sToP", "stop", " Stop\n", "UNSUBSCRIBE", "Quit"])
def test_the_word_alone_in_any_case_is_an_opt_out(client, frozen, body):  # noqa: F811
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    assert sms(client, phone, body) == []  # Twilio answers it
    assert _state(pid, phone) == (True, False)


@pytest.mark.db
@pytest.mark.parametrize("body", ["Stop.", "STOP!", "stop!!", "stop please", "Please STOP."])
@pytest.mark.parametrize("lang", ["en", "hi"])
def test_stop_with_a_sign_or_a_please_is_no_opt_out_and_he_is_told_how(
        client, frozen, body, lang):  # noqa: F811
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang=lang)
    assert sms(client, phone, body) == [i18n.t("sms.stop_alone", lang)]
    assert _state(pid, phone) == (False, True)  # Twilio stopped nothing: nor do we


@pytest.mark.db
@pytest.mark.parametrize("body", ["STOP 57", "bus stop pe hoon", "stop work"])
def test_other_messages_with_stop_in_them_are_as_before(client, frozen, body):  # noqa: F811
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    reply = sms(client, phone, body)
    assert reply != [i18n.t("sms.stop_alone", "en")], (body, reply)
    assert _state(pid, phone)[0] is False


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_the_stop_hint_names_stop_and_off_in_every_language(lang: str) -> None:
    from tests.test_i18n import sms_parts

    text = i18n.t("sms.stop_alone", lang)
    assert "STOP" in text and "OFF" in text and sms_parts(text) <= 2, text


# --- 3. a count of one in EARN (STATUS has no count) --------------------------------------

# The count as a label's value ("jobs delivered: 1", as bot.confirm.too_many_unpaid), or
# with a word right for one and many (Bengali's "1টি কাজ", Kannada's "1 ಕೆಲಸ").
ONE_JOB = {"en": ": 1.", "hi": ": 1।", "ta": ": 1.", "mr": ": 1.", "te": ": 1.", "gu": ": 1.",
           "bn": "1টি কাজ", "kn": "1 ಕೆಲಸ"}
# The plural forms the texts had next to a count ("1 வேலைகள்", "1 పనులు").
PLURAL_AFTER_ONE = re.compile(r"1 (jobs|வேலைகள்|పనులు|कामे|जॉब पहुँचाए)")


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
@pytest.mark.parametrize("legs", [1, 7])
def test_the_earnings_text_reads_right_for_one_job_and_for_many(lang: str, legs: int) -> None:
    assert set(ONE_JOB) == set(i18n.LANGUAGES)
    text = i18n.t("sms.earnings", lang, today_paise=5_000, week_paise=12_000,
                  total_paise=40_000, legs=legs)
    assert ONE_JOB[lang].replace("1", str(legs)) in text, text
    assert not PLURAL_AFTER_ONE.search(text), text


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_the_status_texts_carry_no_count(lang: str) -> None:
    keys = [k for k in i18n.keys("en") if k.startswith("dispatch.status_")]
    assert keys
    for key in keys:
        assert i18n.placeholders(i18n.raw(key, lang)) <= {"job", "state", "pickup", "drop"}, key


@pytest.mark.db
def test_a_tamil_rider_with_one_job_delivered_reads_it_without_a_plural(
        client, frozen):  # noqa: F811
    partner, phone = make_partner("Murugan", LAXMIPUR, lang="ta")
    deliver_for(partner, T0 - timedelta(hours=1))
    (reply,) = sms(client, phone, "EARN")
    assert reply.endswith("முடித்த வேலைகள்: 1.") and "1 வேலைகள்" not in reply, reply

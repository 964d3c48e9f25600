"""Session 38 (hwords7): "can't come" messages still misread after 262fdaf.

1. "can't come, will be there in 5" declined the offer: he is coming, 5 minutes late. A
   number said as minutes without the word ("in 5", "10 me aata hu") is a word for
   minutes now, so the message is asked again, as "abhi nahi aa sakta 10 min me aata hu"
   is (core.domain.dispatch._in_minutes).
2. "abhi nahi aa sakta, 2 ghante busy hu" (busy for 2 hours) was asked again: with being
   busy, hours, "baje" and "thoda" say how long he is busy, no delay (_BUSY_FOR): a
   refusal, as "can't come, busy for 2 hours" is.
3. "abhi nahi aa sakta, kal aaunga" (will come tomorrow) was asked again: a day's word
   makes it a refusal whatever else is said (_DAY_WORDS), as "aaj nahi aa sakta, kal
   aaunga" is.
4. "itna late nahi aa sakta" (I can't come that late) was asked again, its no read as
   "won't be late": after "itna"/"that" the late is the offer's hour (_SO_WORDS).

Set-ups for the webhook cases are those of tests/test_rider_words_s37.py (real
PostgreSQL, Redis, RQ, the signed SMS webhook; time frozen through core.clock)."""

from __future__ import annotations

import pytest

from core import i18n
from core.domain.dispatch import Kind, parse_command
from tests.test_admin import _keep_root_handlers  # noqa: F401  (autouse fixture)
from tests.test_dispatch import (
    frozen,  # noqa: F401  (fixture)
    offers,
    sms,
)
from tests.test_partner_sms_s35 import _offered

# --- 1. Coming in a few minutes, the minutes' word left out: asked again ----------------------


@pytest.mark.parametrize("body", [
    "can't come, will be there in 5",
    "can't come, be there in 10",
    "cant come now, will be there in 5 pls wait",
    "abhi nahi aa sakta, 10 me aata hu",
    "अभी नहीं आ सकता, 10 में आता हूँ",
])
def test_coming_in_a_few_minutes_is_asked_again(body):
    assert parse_command(body).kind is Kind.UNKNOWN, body


@pytest.mark.parametrize("body", [
    "can't come, will be there in 2 hours",  # hours need a word for now, as before
    "can't come, got another job",
    "cant come, raining",
])
def test_a_number_of_hours_or_none_still_declines(body):
    assert parse_command(body).kind is Kind.DECLINE, body


# --- 2. Busy for hours: a refusal -------------------------------------------------------------


@pytest.mark.parametrize("body", [
    "abhi nahi aa sakta, 2 ghante busy hu",  # can't come now, busy for 2 hours
    "can't come now, busy for 2 hours",
    "abhi busy hu 2 ghante nahi aa sakta",
    "abhi nahi aa sakta, 5 baje tak busy hu",  # busy until 5
    "abhi nahi aa sakta, thoda busy hu",  # a bit busy
    "अभी नहीं आ सकता, 2 घंटे बिजी हूँ",
    "अभी नहीं आ सकता, 2 घंटे व्यस्त हूँ",
    "can't come, busy for 2 hours",
])
def test_busy_for_hours_declines(body):
    assert parse_command(body).kind is Kind.DECLINE, body


@pytest.mark.parametrize("body", [
    "abhi busy hu, 2 ghante baad aaunga",  # will come after 2 hours: a delay, as before
    "abhi nahi aa sakta, busy hu, 10 min me aata hu",
    "main 2 ghante baad aa sakta hu abhi nahi aa sakta",
])
def test_busy_then_coming_is_still_asked_again(body):
    assert parse_command(body).kind is Kind.UNKNOWN, body


# --- 3. Coming another day: a refusal ---------------------------------------------------------


@pytest.mark.parametrize("body", [
    "abhi nahi aa sakta, kal aaunga",  # can't come now, will come tomorrow
    "अभी नहीं आ सकता, कल आऊंगा",
    "अभी नहीं आ सकता, कल आऊँगा",
    "abhi nhi aa sakta kal aunga",
    "abhi nahi aa sakta, kal subah aata hu",
    "abhi nahi aa sakta, kal 10 baje aaunga",
    "abhi nahi aa sakta, parso aaunga",
    "can't come now, coming tomorrow",
    "aaj nahi aa sakta, kal aaunga",
])
def test_coming_another_day_declines(body):
    assert parse_command(body).kind is Kind.DECLINE, body


# --- 4. "That late": the offer's hour, a refusal ----------------------------------------------


@pytest.mark.parametrize("body", [
    "itna late nahi aa sakta",  # I can't come that late
    "itna late nahi aa paunga",
    "itni late nahi aa sakti",
    "इतना लेट नहीं आ सकता",
    "can't come that late",
])
def test_cant_come_that_late_declines(body):
    assert parse_command(body).kind is Kind.DECLINE, body


@pytest.mark.parametrize("body", [
    "main aa raha hu late nahi aaunga",  # I'm coming, won't be late
    "can't come, running late",
    "time pe nahi aa sakta, late ho jaunga",
])
def test_his_own_lateness_is_still_asked_again(body):
    assert parse_command(body).kind is not Kind.DECLINE, body


# --- Through the webhook ----------------------------------------------------------------------


@pytest.mark.db
@pytest.mark.parametrize("body", ["abhi nahi aa sakta, kal aaunga",
                                  "abhi nahi aa sakta, 2 ghante busy hu",
                                  "itna late nahi aa sakta"])
def test_the_refusals_decline_the_open_offer(client, live, frozen, body):  # noqa: F811
    _, me, job = _offered()
    assert sms(client, me, body) == [i18n.t("dispatch.declined", "hi", job=job)]
    assert [o.status for o in offers(job)] == ["declined"]


@pytest.mark.db
def test_coming_in_5_leaves_the_offer_open(client, live, frozen):  # noqa: F811
    _, me, job = _offered()
    replies = sms(client, me, "can't come, will be there in 5")
    assert [o.status for o in offers(job)] == ["open"], "a 5-minute delay declined the offer"
    assert replies != [i18n.t("dispatch.declined", "hi", job=job)]

"""Session 38, review rnew4 of this session's word rules.

- "kal" (tomorrow, and yesterday) made any "can't come" a refusal, even beside minutes:
  "abhi nahi aa sakta, kal wala parcel de raha hu, 10 min me aata hu" declined the offer.
- A number after "in" was minutes even when it counted something else: "can't come, I am
  in 3 km away", "stuck in 2 deliveries", "5 me se 3 parcel baaki hai" were asked again.
- At the menu, a not-come with another subject or a complaint opened tracking: "payment
  link abhi tak nahi aaya", "parcel nahi aaya, paisa wapas chahiye", "parcel nahi aaya
  complaint karni hai".
- India Post's "Sundar Gaon" typed by its name was "not found": the typed "gaon" was left
  out, the office's kept.
"""

from __future__ import annotations

import pytest

from core.dialog import words
from core.dialog.booking import menu_request
from core.domain.dispatch import Kind, parse_command
from tests.test_chat_journey_review29 import TO_PICKUP, demo  # noqa: F401  (a fixture)
from tests.test_chat_s38 import new_chat


@pytest.mark.parametrize("said", [
    "abhi nahi aa sakta, kal wala parcel de raha hu, 10 min me aata hu",
    "cant come now, coming in 10, kal bhi aaya tha",
])
def test_coming_in_minutes_beside_kal_is_no_refusal(said):
    assert parse_command(said).kind is not Kind.DECLINE


@pytest.mark.parametrize("said", [
    "abhi nahi aa sakta, kal aaunga", "abhi nahi aa sakta, kal 10 baje aaunga",
    "can't come now, coming tomorrow",
])
def test_another_day_still_refuses(said):
    assert parse_command(said).kind is Kind.DECLINE


@pytest.mark.parametrize("said", [
    "can't come, I am stuck in 2 deliveries", "can't come, I am in 3 km away",
    "abhi nahi aa sakta, 5 me se 3 parcel baaki hai",
])
def test_a_number_counting_something_is_no_minutes(said):
    assert parse_command(said).kind is Kind.DECLINE


@pytest.mark.parametrize("said", ["can't come, will be there in 5",
                                  "abhi nahi aa sakta 10 min me aata hu"])
def test_minutes_still_say_he_is_coming(said):
    assert parse_command(said).kind is not Kind.DECLINE


@pytest.mark.parametrize("said", [
    "payment link abhi tak nahi aaya", "link nahi aaya abhi tak", "SMS abhi tak nahi aaya",
    "message kyu nahi aaya", "parcel ka photo nahi aaya",
    "parcel nahi aaya, paisa wapas chahiye", "the parcel did not come, I want my money back",
    "parcel nahi aaya complaint karni hai", "delivery boy kyu nahi aaya, bahut bekar service",
    "why did the rider not come, worst service",
])
def test_another_subject_or_a_complaint_is_no_tracking(said):
    assert menu_request(said) != 2


@pytest.mark.parametrize("said", ["parcel kyu nahi aaya abhi tak?",
                                  "refund ke saath parcel kab aayega", "kab aayega"])
def test_the_parcel_not_come_is_still_tracking(said):
    assert menu_request(said) == 2


def test_a_village_key_leaves_the_place_words_out():
    assert words.village_key("Sundar Gaon") == words.village_typed("Sundar Gaon") == "sundar"


@pytest.mark.db
def test_a_village_called_gaon_by_india_post_is_found(client, demo):  # noqa: F811
    chat = new_chat(client)
    chat.play(*TO_PICKUP)
    reply = chat.say("Sundar Gaon")
    assert chat.step() != "pickup", reply


# --- review rnew5 of the fixes above ---------------------------------------------------


@pytest.mark.parametrize("said", [
    "can't come, shop closes in 10 min, will come tomorrow",
    "abhi nahi aa sakta, kal aaunga, abhi 20 minute ka kaam hai",
])
def test_coming_tomorrow_refuses_whatever_minutes_are_said(said):
    assert parse_command(said).kind is Kind.DECLINE


@pytest.mark.parametrize("said", [
    "mera parcel kab aayega? please reply", "when will my parcel come? please reply",
    "parcel kab tak aayega, tracking link bhejo",
    "parcel abhi tak nahi aaya, koi message bhi nahi aaya",
    "mera parcel kab aayega? koi jawab nahi de raha",
    "parcel kab aayega, rider wapas chala gaya",
])
def test_a_nudge_after_the_question_is_still_tracking(said):
    assert menu_request(said) == 2


@pytest.mark.parametrize("said", [
    "parcel nahi aaya, payment wapas karo", "parcel nahi aaya, mera amount wapas do",
    "parcel nahi aaya, rs 500 wapas karo", "पार्सल नहीं आया, पेमेंट वापस करो",
])
def test_money_asked_back_in_other_words_is_no_tracking(said):  # review rnew6
    assert menu_request(said) != 2

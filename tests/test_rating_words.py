"""Rating words read only where the customer gave that rating (core.dialog.booking,
stars_given): a reply is read with the customer's own language's romanized words and
English's, a greeting is no rating, a word beyond the rating and a few fillers makes the
reply none, and stars sent beside words count as a number that must go their way.

Each case here was read as a rating the customer did not give (or none they gave) before:
"baad mein" (Hindi for "later") was 2 stars, as "baad" squeezed is English "bad"."""

from __future__ import annotations

import pytest

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking
from core.dialog import booking as dialog
from core.services import rating
from tests.test_rating_more import speaks
from tests.test_whatsapp_rating import (
    chat,  # noqa: F401  (fixture)
    delivered_booking,
    stars_of,
    step,
    wa,
)

# --- the parser --------------------------------------------------------------------------


@pytest.mark.parametrize("lang,answer", [
    ("hi", "baad mein"), ("hi", "baad me batata hu"), ("en", "baad mein"),  # "later"
    ("en", "good morning"), ("en", "Good night"), ("hi", "Good Morning sir"),
    ("en", "good evening"), ("en", "good afternoon ji")])
def test_a_later_or_a_greeting_is_no_rating(lang, answer):
    assert dialog.stars_given(answer, lang) is None


@pytest.mark.parametrize("lang,answer", [
    ("hi", "accha, parcel bhejna hai"),  # "OK, I want to send a parcel"
    ("hi", "thik hai book karo"),  # "OK, book it"
    ("hi", "gaadi kharab thi"),  # "the vehicle was bad": about what?
    ("en", "good but late"), ("en", "super fast"),
    ("hi", "5 din mein aaya"), ("hi", "parcel 2 din late aaya")])  # days, not stars
def test_words_beyond_the_rating_and_fillers_make_it_no_rating(lang, answer):
    assert dialog.stars_given(answer, lang) is None


@pytest.mark.parametrize("lang,answer", [
    ("hi", "Nala Sopara"), ("ta", "Nala Sopara"),  # Tamil "nalla" squeezed; a place
    ("en", "Super Bazar"), ("en", "god bless"),  # English is not squeezed: "god" no "good"
    ("en", "gooood"),
    ("en", "bahut accha"), ("ta", "bahut accha"), ("hi", "romba nalla"), ("en", "saras")])
def test_another_languages_romanized_words_are_not_read(lang, answer):
    assert dialog.stars_given(answer, lang) is None


@pytest.mark.parametrize("lang,answer,stars", [
    ("hi", "bahut acche", 5), ("hi", "acche", 4), ("hi", "achhe nahi tha", 2),
    ("ta", "சூப்பர்", 5), ("en", "சூப்பர்", 5),  # a script's words, for every customer
    ("hi", "सुपर", 5)])
def test_the_customers_own_words_and_any_scripts_words_rate(lang, answer, stars):
    assert dialog.stars_given(answer, lang) == stars


@pytest.mark.parametrize("lang,answer,stars", [
    ("en", "⭐⭐⭐⭐⭐ nice", 5), ("en", "⭐⭐⭐⭐⭐ nice service", 5), ("en", "⭐ bad", 1),
    ("en", "⭐⭐⭐⭐⭐ good", 5), ("en", "5⭐ good", 5), ("en", "good 5", 5),
    ("hi", "4 bahut accha", 4),
    # Going the other way, or two numbers: no rating.
    ("en", "⭐ nice", None), ("hi", "⭐⭐⭐⭐⭐ bekar", None), ("en", "3 ⭐⭐⭐⭐⭐", None)])
def test_stars_sent_count_as_a_number_that_must_go_the_words_way(lang, answer, stars):
    assert dialog.stars_given(answer, lang) == stars


def test_an_emoji_other_than_a_star_carries_no_number():
    # A thumb alone is WhatsApp's "OK, seen" as often as "good": asked for a number.
    answers = ["👍", "👎", "nice 👍👍", "⭐⭐⭐⭐ 👍", "👎 ⭐"]
    assert {a: dialog.stars_given(a, "en") for a in answers} == {
        "👍": None, "👎": None, "nice 👍👍": 4, "⭐⭐⭐⭐ 👍": 4, "👎 ⭐": 1}


# --- through the WhatsApp webhook ------------------------------------------------------


def asked_in(lang: str) -> tuple[int, str]:
    """The chat's customer speaks ``lang`` and was asked about a delivered booking."""
    speaks(lang)
    bid, ref, _ = delivered_booking()
    with transaction() as s:
        assert rating.ask_after_delivery(s, s.get(Booking, bid))
    return bid, ref


@pytest.mark.parametrize("lang,answer", [("hi", "baad mein"), ("hi", "accha tha par late"),
                                         ("en", "bahut accha")])
def test_in_the_chat_a_reply_that_is_no_rating_gets_the_help_then_a_digit_rates(
        chat, lang, answer):  # noqa: F811
    bid, ref = asked_in(lang)
    reply = wa(chat, answer)
    assert i18n.t("bot.rate.help", lang) in reply
    assert stars_of(bid) == [] and step() == "rate"
    assert i18n.t("bot.rate.thanks", lang, ref=ref, stars="⭐" * 5) in wa(chat, "5")
    assert stars_of(bid) == [5]


@pytest.mark.parametrize("answer", ["good morning", "Good night", "gm", "gn"])
def test_in_the_chat_a_greeting_leaves_the_question_unrated(chat, answer):  # noqa: F811
    bid, _ = asked_in("en")
    reply = wa(chat, answer)
    assert i18n.t("menu.main", "en") in reply and i18n.t("bot.rate.help", "en") not in reply
    assert stars_of(bid) == [] and step() == "menu"


@pytest.mark.parametrize("lang,answer,stars", [("en", "⭐⭐⭐⭐⭐ nice", 5), ("en", "⭐ bad", 1),
                                               ("ta", "சூப்பர்", 5), ("hi", "bahut acche", 5)])
def test_in_the_chat_stars_and_words_rate_as_sent(chat, lang, answer, stars):  # noqa: F811
    bid, ref = asked_in(lang)
    assert i18n.t("bot.rate.thanks", lang, ref=ref, stars="⭐" * stars) in wa(chat, answer)
    assert stars_of(bid) == [stars]


@pytest.mark.parametrize("hello", ["good morning", "Good evening sir", "gm", "Namaste ji"])
def test_a_greeting_at_the_menu_shows_the_menu_not_a_sorry(chat, hello):  # noqa: F811
    reply = wa(chat, hello)
    assert i18n.t("menu.main", "en") in reply
    assert i18n.t("bot.retry", "en") not in reply

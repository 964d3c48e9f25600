"""The customer chat's yes (s36): the partner SMS parser's yes words are the chat's too
("ঠিক", "ઠીક", "यस"), but its commands for an offer ("take", "accept"); "aam" (Hindi
for mango; Tamil's "ஆம்" in Latin letters) is a yes nowhere. Played through the signed
WhatsApp webhook and its drain job; real PostgreSQL and Redis, the clock frozen."""

from __future__ import annotations

import pytest

from core import i18n
from core.dialog import words
from core.domain.dispatch import WORDS, Kind, parse_command
from tests.test_chat_journey_review29 import (  # noqa: F401  (demo: a fixture)
    Chat,
    demo,
    newest_ref,
)
from tests.test_chat_words_s35 import _at_the_summary, _phone

# The partner parser's words that answer an offer, not a question.
OFFER_ONLY = {"take", "accept", "घ्यायचं", "घ्यायचे", "घ्यायचा", "ghyaycha"}


@pytest.mark.db
@pytest.mark.parametrize(("lang", "said"), [("bn", "ঠিক"), ("gu", "ઠીક"), ("hi", "यस")])
def test_a_partner_yes_at_book_it_books(client, demo, lang: str, said: str) -> None:  # noqa: F811
    """"ঠিক" (right), "ઠીક", "यस" take a job in the partner SMS; at "book it?" the chat
    said "Sorry, I did not understand". A yes: booked."""
    chat = Chat(client, _phone())
    _at_the_summary(chat, lang)
    reply = chat.say(said)
    assert newest_ref(chat.phone) is not None, reply


@pytest.mark.db
@pytest.mark.parametrize("lang", ["hi", "ta"])
def test_aam_at_book_it_books_nothing(client, demo, lang: str) -> None:  # noqa: F811
    """"aam" is no yes: nothing booked, the question again."""
    chat = Chat(client, _phone())
    _at_the_summary(chat, lang)
    reply = chat.say("aam")
    assert newest_ref(chat.phone) is None, reply
    assert chat.step() == "confirm", reply
    assert i18n.t("bot.retry", lang) in reply, reply


def test_the_partners_yes_words_are_the_chats() -> None:
    for yes in WORDS[Kind.ACCEPT] - OFFER_ONLY:
        assert words.is_yes(yes), yes
    for word in OFFER_ONLY:
        assert not words.is_yes(word), word
    assert not words.YES_WORDS & words.NO_WORDS


def test_aam_is_no_yes_anywhere() -> None:
    assert not words.is_yes("aam") and "aam" not in words.YES_WORDS
    assert "aam" not in WORDS[Kind.ACCEPT]
    assert parse_command("aam").kind is Kind.UNKNOWN


def test_the_chats_new_refusals_are_no() -> None:
    """"skip" (the offer SMS's word for a no) is a refusal in the partner parser, so the
    chat reads it as a no too (one list: tests/test_chat_words_s35.py); it still skips a
    landmark (words.SKIP_WORDS)."""
    for said in ("skip", "skip it", "nope", "naa", "இல்லீங்க"):
        assert words.is_no(said) and parse_command(said).kind is Kind.DECLINE, said
    assert "skip" in words.SKIP_WORDS

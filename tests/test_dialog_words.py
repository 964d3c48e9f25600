"""The few words users type, in each of our languages: commands, yes/no, numbers, names."""

from __future__ import annotations

import re

import pytest

from core import i18n
from core.dialog import words
from core.dialog.booking import BOOKING_DIALOG
from core.dialog.engine import DialogState, UserInput, turn
from tests.test_dialog import FakePorts

COMMAND_SETS = {"menu": words.MENU_WORDS, "help": words.HELP_WORDS,
                "language": words.LANGUAGE_WORDS, "stop": words.STOP_WORDS,
                "start": words.START_WORDS}


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_the_menu_word_each_catalog_shows_is_understood_as_menu(lang: str) -> None:
    shown = re.findall(r"\(0 = ([^)]+)\)", " ".join(i18n.raw(k, lang) for k in i18n.keys(lang)))
    assert shown, f"{lang}: no '(0 = ...)' hint in the catalog"
    for word in shown:
        assert words.command(word) == "menu", f"{lang}: {word!r}"
        state = DialogState("pickup")
        turn(BOOKING_DIALOG, state, UserInput(text=word), FakePorts(), lang)
        assert state.step == "menu", f"{lang}: {word!r} at the pickup question"


@pytest.mark.parametrize("text", ["बंद करो", "band karo", "मैसेज बंद करो", "বন্ধ", "বন্ধ করুন",
                                  "थांबवा", "நிறுத்து", "ఆపు", "બંધ", "ನಿಲ್ಲಿಸಿ", "STOP"])
def test_stop_in_the_users_words(text: str) -> None:
    assert words.command(text) == "stop"


def test_a_bare_no_or_yes_never_stops_the_messages() -> None:
    answers = words.YES_WORDS | words.NO_WORDS | words.SKIP_WORDS | set(words.NUMBER_WORDS)
    assert not words.STOP_WORDS & answers
    assert all(words.command(w) != "stop" for w in ("na", "no", "nahi", "illa", "ledu", "ना"))


def test_command_words_mean_one_command_each() -> None:
    names = list(COMMAND_SETS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not COMMAND_SETS[a] & COMMAND_SETS[b], (a, b)
    assert not words.YES_WORDS & words.NO_WORDS


@pytest.mark.parametrize("text,command", [
    ("?", "help"), (" ? ", "help"), ("সাহায্য", "help"), ("மெனு", "menu"), ("ಮೆನು", "menu"),
    ("শুরু", "start"), ("सुरू", "start"), ("...", None), ("", None),
])
def test_commands_in_every_language(text: str, command: str | None) -> None:
    assert words.command(text) == command


@pytest.mark.parametrize("text,yes", [
    ("hoy", True), ("होय", True), ("aama", True), ("ஆம்", True), ("avunu", True),
    ("అవును", True), ("houdu", True), ("haudu", True), ("ಹೌದು", True), ("hya", True),
    ("হ্যাঁ", True), ("હા", True),
    ("नको", False), ("nako", False), ("illa", False), ("இல்லை", False), ("ledu", False),
    ("vaddu", False), ("కాదు", False), ("beda", False), ("ಇಲ್ಲ", False), ("না", False),
    ("ના", False),
])
def test_yes_and_no_of_each_language(text: str, yes: bool) -> None:
    assert words.is_yes(text) is yes and words.is_no(text) is not yes


@pytest.mark.parametrize("lang", sorted(words.NUMBERS_BY_LANGUAGE))
def test_number_words_one_to_nine_in_each_language(lang: str) -> None:
    table = words.NUMBERS_BY_LANGUAGE[lang]
    assert set(range(1, 10)) <= set(table.values())
    for word, n in table.items():
        assert words.clean(word) == word, f"{word!r} can never match (not NFC / lower)"
        assert words.number(word) == n, word


def test_a_number_word_means_the_same_number_in_every_language() -> None:
    meanings: dict[str, set[int]] = {}
    for table in words.NUMBERS_BY_LANGUAGE.values():
        for word, n in table.items():
            meanings.setdefault(word, set()).add(n)
    assert {w: m for w, m in meanings.items() if len(m) > 1} == {}


@pytest.mark.parametrize("text,n", [("দুই", 2), ("ஒன்று", 1), ("ఒకటి", 1), ("બે", 2),
                                    ("ಎರಡು", 2), ("दोन", 2), ("rendu", 2)])
def test_number_words_in_other_scripts(text: str, n: int) -> None:
    assert words.number(text) == n


@pytest.mark.parametrize("typed,lang", [("Bengali", "bn"), ("हिन्दी", "hi"), ("bengali", "bn"),
                                        ("Tamil", "ta"), ("ಕನ್ನಡ", "kn"), ("गुजराती", "gu"),
                                        ("English", "en"), ("3", "bn")])
def test_language_names_people_type(typed: str, lang: str) -> None:
    state, ports = DialogState("language"), FakePorts()
    turn(BOOKING_DIALOG, state, UserInput(text=typed), ports, "hi")
    assert ports.language == lang and state.step == "menu"

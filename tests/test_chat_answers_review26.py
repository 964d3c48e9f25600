"""Two chat answers (session 26). A landmark is words: digits alone at the landmark
question (a phone number, hers or the receiver's typed a step early, or the pincode
again) were kept as the landmark when 6 characters or more, and shown to the rider in
his job SMS. And a language asked for in a phrase at the guessed language's question."""

from __future__ import annotations

import pytest

from core.dialog.engine import DialogState
from tests.test_dialog import PLACE, FakePorts, keys, play


@pytest.mark.parametrize("said", ["9876543210", "98765 43210", "+91 98765-43210", "845438",
                                  "९८७६५४३२१०"])
def test_digits_alone_are_asked_again_as_words(said: str) -> None:
    state = DialogState("drop_landmark", {"slots": {"drop": dict(PLACE)}})
    outs = play(state, FakePorts(), said)
    assert state.slots["drop"].get("landmark") is None, keys(outs)
    assert state.step == "drop_landmark"
    assert keys(outs) == ["bot.place.landmark_bad", "bot.drop.landmark"]


@pytest.mark.parametrize("said", ["House 12, near school", "Gali no 4", "मंदिर के पास"])
def test_a_landmark_with_words_and_numbers_is_kept(said: str) -> None:
    state = DialogState("drop_landmark", {"slots": {"drop": dict(PLACE)}})
    play(state, FakePorts(), said)
    assert state.slots["drop"]["landmark"] == said
    assert state.step == "recipient_name"


# --- "Tamil please" at "Shall we talk in Hindi?" --------------------------------------

@pytest.mark.parametrize(("said", "lang"), [("Tamil please", "ta"), ("मराठी में", "mr"),
                                            ("english me baat karo", "en")])
def test_a_language_asked_for_in_a_phrase_at_the_guess_is_that_language(said, lang) -> None:
    """"Shall we talk in Hindi? 1. Yes 2. Another language": a bare "Tamil" was taken
    (engine), "Tamil please" was not understood, though the language list takes it."""
    state, ports = DialogState("language_guess", {"lang_guess": "hi"}), FakePorts()
    outs = play(state, ports, said)
    assert ports.language == lang and state.step == "menu", keys(outs)


@pytest.mark.parametrize("said", ["Hindi nahi", "no, Tamil"])
def test_a_language_with_a_no_at_the_guess_shows_the_list(said) -> None:
    state, ports = DialogState("language_guess", {"lang_guess": "hi"}), FakePorts()
    outs = play(state, ports, said)
    assert state.step == "language", keys(outs)
    assert getattr(ports, "language", None) is None

"""A landmark is words: digits alone at the landmark question (a phone number, hers or
the receiver's typed a step early, or the pincode again) were kept as the landmark when
they were 6 characters or more, and shown to the rider in his job SMS."""

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

"""The main menu understands a sentence that asks for one of its options.

Customers who read little write what they want rather than a number: "mera parcel
kahan hai", "where is my parcel?", "আমার পার্সেল কোথায়", "booking cancel karni hai". The
menu took only its numbers and a few exact phrases ("parcel kahan hai" but not "mera
parcel kahan hai"), with no words at all for Bengali, Marathi, Tamil, Telugu, Gujarati
or Kannada: each was "not understood", and the third such offered a person. Now a word
of one option in the sentence picks it; words of two options, or a no, pick nothing.
The dialog as the chat runs it (tests/test_dialog's play).
"""

from __future__ import annotations

import pytest

from core.dialog.booking import MENU
from core.dialog.engine import DialogState
from tests.test_dialog import FakePorts, keys, play


class Booked(FakePorts):
    """A customer with one open booking."""

    def my_bookings(self, open_only: bool = False) -> list[tuple[str, str]]:
        return [("48217730", "paid")]


@pytest.mark.parametrize("said,step", [
    ("mera parcel kahan hai", "track"),
    ("Where is my parcel?", "track"),
    ("मेरा पार्सल कहाँ है", "track"),
    ("আমার পার্সেল কোথায়", "track"),
    ("என் பார்சல் எங்கே", "track"),
    ("status", "track"),
    ("booking cancel karni hai", "cancel_pick"),
    ("বুকিং বাতিল করতে চাই", "cancel_pick"),
    ("I want to send a parcel", "pickup"),
    ("parcel bhejna hai bhai", "pickup"),
])
def test_a_sentence_asking_for_an_option_picks_it(said: str, step: str) -> None:
    state = DialogState(MENU, {})
    outs = play(state, Booked(), said)
    assert state.step == step, (said, keys(outs))


@pytest.mark.parametrize("said", ["cancel nahi karna", "where do I send it"])
def test_a_sentence_of_two_options_or_a_no_picks_nothing(said: str) -> None:
    state = DialogState(MENU, {})
    play(state, Booked(), said)
    assert state.step == MENU

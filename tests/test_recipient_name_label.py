"""A receiver's name sent as "Sita's number 98765 43210" is Sita.

Asked who receives the parcel, customers write the name, the words "ka number" (whose
number) and the number: "सीता का नंबर 9876543210", "Ramesh mobile no 98765 43210". The
name and the number were split, but the words naming the number stayed in the name:
"सीता का नंबर" was the receiver's name on the booking, the rider's job SMS and the
receiver's code SMS. Now they are left out; "Number 98765 43210" names nobody and is asked
again. The dialog as the chat runs it (tests/test_dialog's play).
"""

from __future__ import annotations

import pytest

from core.dialog.engine import DialogState
from tests.test_dialog import PLACE, FakePorts, keys, play


@pytest.mark.parametrize("said,name", [
    ("सीता का नंबर 9876543210", "सीता"),
    ("Sita ka number 98765 43210", "Sita"),
    ("Ramesh mobile no 98765 43210", "Ramesh"),
    ("Sita Devi ka mobile: 98765-43210", "Sita Devi"),
    ("Ramesh Kumar, 98765 43210", "Ramesh Kumar"),  # no such words: as before
])
def test_the_words_naming_the_number_are_not_the_name(said: str, name: str) -> None:
    state = DialogState("recipient_name", {"slots": {"pickup": dict(PLACE)}})
    outs = play(state, FakePorts(), said)
    assert state.slots.get("recipient_name") == name, keys(outs)
    assert state.slots.get("recipient_phone") == "+919876543210"
    assert state.step == "category" and keys(outs)[0] == "bot.recipient.saved"


def test_a_number_with_no_name_is_asked_for_the_name() -> None:
    state = DialogState("recipient_name", {"slots": {"pickup": dict(PLACE)}})
    outs = play(state, FakePorts(), "Number 9876543210")
    assert "recipient_name" not in state.slots, keys(outs)
    assert state.step == "recipient_name" and "bot.recipient.bad_name" in keys(outs)


@pytest.mark.parametrize("said,name", [
    ("Sita\u202e Devi", "Sita Devi"),  # a right-to-left override turned the SMS around
    ("Ramesh\x7f", "Ramesh"),
    ("\u200fरमेश", "रमेश"),  # a direction mark some keyboards put first
    ("সু\u200dর্য", "সু\u200dর্য"),  # a joiner is part of the spelling: kept
])
def test_invisible_characters_are_not_kept_in_the_name(said: str, name: str) -> None:
    """A name (or a landmark) is read by the rider and the receiver in their SMS: no
    control characters nor format marks are kept, but the joiners some spellings need."""
    state = DialogState("recipient_name", {"slots": {"pickup": dict(PLACE)}})
    outs = play(state, FakePorts(), said)
    assert state.slots.get("recipient_name") == name, keys(outs)

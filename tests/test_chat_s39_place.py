"""Session 39: a shared location labelled by the phone's own name for a spot ("Home",
"Work", "Dropped pin") became its landmark ("Landmark: Home"), and the landmark question
was skipped: the rider got nothing to find the door by. Such a label is left out; alone,
the landmark is asked as for a plain pin."""
from __future__ import annotations

import pytest

from core.services.inbound import shared_place
from tests.test_chat_journey_review29 import demo  # noqa: F401  (fixture)
from tests.test_chat_s38 import PIN, TO_PICKUP, new_chat, send


@pytest.mark.db
@pytest.mark.parametrize("label", ["Home", "home ", "Dropped pin", "घर", "Mera ghar"])
def test_a_pin_labelled_home_still_asks_the_landmark(client, demo, label) -> None:  # noqa: F811
    chat = new_chat(client)
    chat.play(*TO_PICKUP)
    send(chat, **PIN, Label=label)
    assert chat.step() == "pickup_landmark"
    assert chat.slots()["pickup"]["landmark"] is None


@pytest.mark.db
def test_home_with_an_address_keeps_the_address(client, demo) -> None:  # noqa: F811
    chat = new_chat(client)
    chat.play(*TO_PICKUP)
    send(chat, **PIN, Label="Home", Address="Near Kali Mandir, Bettiah")
    assert chat.step() == "drop"
    assert chat.slots()["pickup"]["landmark"] == "Near Kali Mandir, Bettiah"


def test_a_real_name_is_kept() -> None:
    assert shared_place("Home Guard Office", "") == "Home Guard Office"
    assert shared_place("Hanuman Mandir", "Main Road") == "Hanuman Mandir, Main Road"
    assert shared_place("  ", "") is None

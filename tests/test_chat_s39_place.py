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


# --- the phone's words in the service's other languages (hchat5 after review rnew1) ------

OTHER_LANGUAGE_LABELS = [
    "বাড়ী", "ঘর", "আমার বাড়ি", "অফিস",  # Bengali (বাড়ি: below)
    "ઘર", "મારું ઘર", "ઓફિસ",  # Gujarati
    "வீடு", "என் வீடு", "அலுவலகம்",  # Tamil
    "ಮನೆ", "ನನ್ನ ಮನೆ", "ಕಚೇರಿ",  # Kannada
    "ఇల్లు", "నా ఇల్లు", "ఆఫీసు",  # Telugu
    "घर", "माझे घर", "कार्यालय",  # Marathi
    "Ghar", "bari", "Amar bari", "veedu", "mane", "illu", "Work place",  # Latin letters
]
NUKTA_LABELS = [
    "ऑफ़िस",  # फ with the nukta sign (U+092B U+093C); "ऑफिस" is listed
    "\u0911\u095e\u093f\u0938",  # ऑफ़िस with the precomposed फ़ (U+095E)
    "\u09ac\u09be\u09dc\u09bf",  # বাড়ি with the precomposed ড় (U+09DC)
    "\u09ac\u09be\u09a1\u09bc\u09bf",  # বাড়ি with ড and the nukta sign
    "दफ़्तर", "दफ्तर",
]


@pytest.mark.parametrize("label", OTHER_LANGUAGE_LABELS + NUKTA_LABELS)
def test_the_phones_home_label_in_our_other_languages_is_no_landmark(label) -> None:
    assert shared_place(label, "") is None
    assert shared_place(label, "Station Road, Bettiah") == "Station Road, Bettiah"


@pytest.mark.db
@pytest.mark.parametrize("label", ["வீடு", "ఇల్లు", "ऑफ़िस", "\u09ac\u09be\u09dc\u09bf"])
def test_a_pin_labelled_home_in_tamil_telugu_or_bengali_asks_the_landmark(
        client, demo, label) -> None:  # noqa: F811
    chat = new_chat(client)
    chat.play(*TO_PICKUP)
    send(chat, **PIN, Label=label)
    assert chat.step() == "pickup_landmark"
    assert chat.slots()["pickup"]["landmark"] is None


def test_a_real_name_with_those_words_is_kept() -> None:
    """Only the word alone is the phone's: a place named with it stays, nukta and all."""
    for name in ("घर बाज़ार", "বাড়ি রোড", "வீடு கட்டும் சங்கம்", "Ghar Ghar Mandir",
                 "बड़ा बाज़ार", "Mane Chowk"):
        assert shared_place(name, "") == name

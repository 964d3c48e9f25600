"""Review 11: the WhatsApp booking dialog as a customer writing in Bengali, Marathi, Tamil,
Telugu, Gujarati or Kannada uses it (their digits, their yes and no, their way of naming
a language or an amount, the menu's own words typed back). Each test states the correct
behaviour; each fails on the code as reviewed."""

from __future__ import annotations

import re
from itertools import count
from typing import Any

import pytest

from core import i18n
from core.dialog.booking import BOOKING_DIALOG
from core.dialog.engine import DialogState, UserInput, turn
from tests.test_dialog import PLACE, FakePorts, keys


class QuotingPorts(FakePorts):
    """FakePorts that can also price a trip (the speed question follows the value)."""

    def quote(self, slots: dict[str, Any]) -> dict[str, Any]:
        return {"km": "5.0", "vehicle": "bicycle",
                "tiers": {"standard": {"total_paise": 5000, "lines": []}},
                "hours": {"standard": 4}, "search_minutes": {"standard": 30}}

    def rider_free(self, slots: dict[str, Any]) -> bool:
        return True


def say(state: DialogState, ports: FakePorts, text: str, lang: str) -> list[Any]:
    return turn(BOOKING_DIALOG, state, UserInput(text=text), ports, lang)


def _parcel_slots() -> dict[str, Any]:
    return {"pickup": dict(PLACE), "drop": dict(PLACE, name="Laxmipur", pincode="845450"),
            "recipient_name": "Sita", "recipient_phone": "+919876543210",
            "category": "food", "size": "bag", "weight": "w5", "fragile": False}


# --- 1. amounts: the Kannada plural of "rupees" ---------------------------------------

def test_an_amount_in_kannada_rupees_plural_is_read() -> None:
    """words._RUPEE_WORDS lists "ರೂಪಾಯಿಗಳು" (rupees, plural) after "ರೂಪಾಯಿ": the shorter
    alternative always matches first, leaving "ಗಳು" behind, so "1500 ರೂಪಾಯಿಗಳು" (the
    plain Kannada way to write it) is "not an amount" and the value question is asked
    again."""
    state = DialogState("value", {"slots": _parcel_slots()})
    outs = say(state, QuotingPorts(), "1500 ರೂಪಾಯಿಗಳು", "kn")
    assert state.slots.get("value_paise") == 150000, keys(outs)
    assert state.step == "speed"


# --- 2. amounts in lakh ---------------------------------------------------------------

@pytest.mark.parametrize(("typed", "lang", "rupees"), [
    ("১ লাখ", "bn", 100000), ("२ लाख", "mr", 200000), ("2 லட்சம்", "ta", 200000),
    ("1 లక్ష", "te", 100000), ("૩ લાખ", "gu", 300000), ("1 ಲಕ್ಷ", "kn", 100000),
])
def test_a_value_in_lakh_is_read(typed: str, lang: str, rupees: int) -> None:
    """A value over ₹50,000 (the last bucket) must be written, up to ₹10 lakh; in India it
    is written "1 lakh" / "১ লাখ", which amount_rupees does not read: value_bad."""
    state = DialogState("value", {"slots": _parcel_slots()})
    outs = say(state, QuotingPorts(), typed, lang)
    assert state.slots.get("value_paise") == rupees * 100, keys(outs)


# --- 3. the main menu's own words typed back ------------------------------------------

def _menu_label(lang: str, option: int) -> str:
    found = re.search(rf"^{option}\. (.+)$", i18n.raw("menu.main", lang), re.MULTILINE)
    assert found, (lang, option)
    return found.group(1).strip()


@pytest.mark.parametrize(("lang", "option"), [
    ("bn", 1), ("mr", 1), ("mr", 4), ("te", 1), ("te", 2), ("te", 4), ("kn", 1), ("kn", 4),
])
def test_a_menu_option_typed_as_the_menu_shows_it_is_that_option(lang: str,
                                                                  option: int) -> None:
    """Typing an option's own label ("পার্সেল পাঠানো", "पार्सल पाठवायचं", "పార్సెల్ పంపడం",
    "ಪಾರ್ಸೆಲ್ ಕಳಿಸುವುದು") works in Hindi, English, Tamil and Gujarati, but MENU_INTENTS
    lacks the forms these catalogs use (পাঠানো, पाठवायचं, बोलायचं, పంపడం, ఎక్కడుందో,
    మాట్లాడడం, ಕಳಿಸುವುದು, ಮಾತಾಡುವುದು): "Sorry, I did not understand", three times a
    person is offered."""
    label = _menu_label(lang, option)
    state, ports = DialogState("menu"), FakePorts()
    outs = say(state, ports, label, lang)
    assert "bot.retry" not in keys(outs), (label, keys(outs))
    if option == 1:
        assert state.step == "pickup", (label, keys(outs))
    elif option == 2:
        assert "bot.track.none" in keys(outs), (label, keys(outs))
    else:
        assert ports.handoffs == ["asked"], (label, keys(outs))


@pytest.mark.parametrize("lang", sorted(i18n.LANGUAGE_NAMES))
def test_every_menu_label_of_every_catalog_is_its_option(lang: str) -> None:
    """The rule behind the cases above: whatever a catalog's menu says for an option
    (1-5), typed back as shown, is that option, in every language: a catalog reworded
    must bring its words to MENU_INTENTS."""
    for option in range(1, 6):
        label = _menu_label(lang, option)
        state, ports = DialogState("menu"), FakePorts()
        outs = say(state, ports, label, lang)
        said = keys(outs)
        assert "bot.retry" not in said, (lang, option, label, said)
        expected = {1: state.step == "pickup", 2: "bot.track.none" in said,
                    3: "bot.cancel.none" in said, 4: ports.handoffs == ["asked"],
                    5: "menu.help" in said}
        assert expected[option], (lang, option, label, said)


# --- 4. "No" to "Can it break?" is no "don't want" ------------------------------------

@pytest.mark.parametrize("lang", ["te", "kn"])
def test_the_no_to_can_it_break_is_not_the_word_for_cancel(lang: str) -> None:
    """bot.no is the second option of "Can it break?" (the only question that shows it).
    In Telugu and Kannada it is "వద్దు" / "ಬೇಡ", "(I) don't want (it)", the very word the
    catalog uses for the confirmation's "Cancel" (bot.confirm.cancel): "ఇది పగిలిపోతుందా?
    1. అవును 2. వద్దు" answers "Can it break?" with "don't want". Every other catalog
    says a plain no ("না", "नाही", "இல்லை", "ના"); Telugu's is "కాదు"/"లేదు", Kannada's
    "ಇಲ್ಲ"."""
    no = i18n.raw("bot.no", lang)
    assert no != i18n.raw("bot.confirm.cancel", lang), no
    assert no != i18n.raw("bot.cancel.no", lang).split(",")[0], no


# --- 5. a language named as these languages name it ------------------------------------

@pytest.mark.parametrize(("typed", "lang"), [
    ("বাংলায়", "bn"), ("मराठीत", "mr"), ("தமிழில்", "ta"), ("తెలుగులో", "te"),
    ("ગુજરાતીમાં", "gu"), ("ಕನ್ನಡದಲ್ಲಿ", "kn"), ("इंग्रजी", "en"), ("ஆங்கிலம்", "en"),
])
def test_a_language_named_in_its_own_way_at_the_language_list(typed: str, lang: str) -> None:
    """"In Tamil" is one word in Tamil (தமிழில்), as in Bengali (বাংলায়), Marathi (मराठीत),
    Telugu, Gujarati and Kannada; English is इंग्रजी in Marathi, ஆங்கிலம் in Tamil. The
    language list (and language_mentioned, used for a first message) knows only the bare
    names: not understood."""
    state, ports = DialogState("language"), FakePorts()
    outs = say(state, ports, typed, "hi")
    assert ports.language == lang, (typed, keys(outs))


_sid = count(1)


def test_a_first_message_asking_for_marathi_in_marathi_is_answered_in_marathi(
        client, live) -> None:  # noqa: ANN001
    """Devanagari is guessed Hindi (deliberate: Marathi users say so). But one who says so
    in Marathi, "मराठीत बोला" ("speak in Marathi"), is asked "क्या हम हिंदी में बात करें?"
    (Hindi's "मराठी में" is read; Marathi's own "मराठीत" is not)."""
    from tests.conftest import send_whatsapp

    phone = "+919812311011"
    reply = send_whatsapp(client, {
        "MessageSid": f"SMrev11{next(_sid):06d}", "AccountSid": "ACrev11",
        "From": f"whatsapp:{phone}", "To": "whatsapp:+14155238886",
        "WaId": phone.lstrip("+"), "ProfileName": "Sunita", "NumMedia": "0",
        "Body": "मराठीत बोला"})
    marathi = i18n.LANGUAGE_NAMES["mr"]
    asked = i18n.t("bot.lang_guess", "mr", language=marathi)
    saved = i18n.t("lang.saved", "mr", language=marathi)
    assert asked in reply or saved in reply, reply


# --- 6. a receiver called Tamizh -------------------------------------------------------

@pytest.mark.parametrize("name", ["தமிழ்", "Tamizh"])
def test_a_receiver_named_tamizh_in_a_tamil_chat_is_taken_as_the_name(name: str) -> None:
    """Tamizh is a common Tamil given name. At "Who will receive the parcel?" in a chat
    already in Tamil, it is taken as "switch to Tamil": "OK, I will talk to you in Tamil"
    and the same question, as often as it is sent (a Stay: no miss, so not even a person
    is offered). A language's name that is the language in use changes nothing; at a
    step that takes words it is the answer."""
    state = DialogState("recipient_name", {"slots": {}})
    ports = FakePorts()
    outs: list[Any] = []
    for _ in range(2):  # she sends it again, as anyone would
        outs = say(state, ports, name, "ta")
        if state.step != "recipient_name":
            break
    assert state.slots.get("recipient_name") == name, keys(outs)
    assert state.step == "recipient_phone"


# --- 7. yes and no as they are said ----------------------------------------------------

@pytest.mark.parametrize(("typed", "lang"), [
    ("అవునండి", "te"), ("ஆமாங்க", "ta"), ("હા જી", "gu"), ("howdu", "kn"),
])
def test_a_polite_or_common_yes_answers_the_language_question(typed: str, lang: str) -> None:
    """"Shall we talk in Telugu? 1. అవును 2. ...": the polite yes (అవునండి, ஆமாங்க, હા
    જી, as Hindi's "हाँ जी" which YES_WORDS has) and the usual spelling "howdu" (ಹೌದು)
    are not yes."""
    state, ports = DialogState("language_guess", {"lang_guess": lang}), FakePorts()
    outs = say(state, ports, typed, lang)
    assert ports.language == lang, (typed, keys(outs))


@pytest.mark.parametrize(("typed", "lang"), [
    ("இல்லீங்க", "ta"), ("లేదండి", "te"), ("ledhu", "te"), ("નહિ", "gu"),
])
def test_a_polite_or_common_no_answers_can_it_break(typed: str, lang: str) -> None:
    """"Can it break? 1. Yes 2. No": the polite no (இல்லீங்க, లేదండి), Telugu's usual
    romanised "ledhu", and Gujarati's other spelling of no, "નહિ", are not no."""
    slots = _parcel_slots()
    slots.pop("fragile")
    state = DialogState("fragile", {"slots": slots})
    outs = say(state, QuotingPorts(), typed, lang)
    assert state.slots.get("fragile") is False, (typed, keys(outs))
    assert state.step == "value"


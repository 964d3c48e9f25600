"""The dialog engine and the booking dialog without a database: fake ports, pure state."""

from __future__ import annotations

from typing import Any

from core.dialog import words
from core.dialog.booking import BOOKING_DIALOG
from core.dialog.engine import Choices, DialogState, Say, UserInput, copy_data, turn
from core.dialog.ports import PlaceResult

PLACE = {"lat": 26.8, "lng": 84.5, "pincode": "845438", "post_office": "Bettiah HO",
         "name": "Bettiah", "district": "West Champaran", "landmark": None}


class FakePorts:
    def __init__(self) -> None:
        self.language: str | None = None
        self.handoffs: list[str] = []

    def set_language(self, lang: str) -> None:
        self.language = lang

    def locate(self, lat: float, lng: float) -> PlaceResult:
        return PlaceResult("ok", place=dict(PLACE))

    def offices(self, text: str) -> PlaceResult:
        offices = [dict(PLACE, name=f"Village {i}") for i in range(1, 12)]
        return PlaceResult("list", offices=offices)

    def check_area(self, place: dict[str, Any]) -> PlaceResult:
        return PlaceResult("ok", place=place)

    def my_bookings(self, open_only: bool = False) -> list[tuple[str, str]]:
        return []

    def talk_to_person(self, reason: str) -> dict[str, Any]:
        self.handoffs.append(reason)
        return {"minutes": 15, "ops_phone": "+911800000000"}


def keys(outs: list[Any]) -> list[str]:
    return [o.key for o in outs if isinstance(o, Say)]


def play(state: DialogState, ports: FakePorts, *texts: str) -> list[Any]:
    outs: list[Any] = []
    for text in texts:
        outs = turn(BOOKING_DIALOG, state, UserInput(text=text), ports, "en")
    return outs


def test_words_understand_indic_digits_and_romanized_hindi() -> None:
    assert words.number("२") == 2 and words.number("do") == 2 and words.number("ek") == 1
    assert words.number("৩") == 3 and words.number(" 4. ") == 4
    assert words.is_yes("haan") and words.is_yes("हाँ") and words.is_yes("ha")
    assert words.is_no("nahi") and words.is_no("नहीं")
    assert words.command("मेनू") == "menu" and words.command("0") == "menu"
    assert words.command("बंद") == "stop" and words.command("START") == "start"
    assert words.guess_language("வணக்கம்") == "ta" and words.guess_language("hello") is None
    assert words.amount_rupees("₹1,500") == 1500 and words.amount_rupees("1500 रुपये") == 1500


def test_three_misses_offer_a_person() -> None:
    state, ports = DialogState("pickup"), FakePorts()
    assert keys(play(state, ports, "banana"))[0] == "bot.place.bad"
    play(state, ports, "banana")
    assert state.misses == 2
    outs = play(state, ports, "banana")
    assert state.step == "offer_person" and "bot.handoff.offer" in keys(outs)
    play(state, ports, "1")
    assert ports.handoffs == ["not_understood"]


def test_a_valid_answer_resets_the_misses() -> None:
    state, ports = DialogState("pickup"), FakePorts()
    play(state, ports, "banana", "banana", "845438")
    assert state.step == "pickup_office" and state.misses == 0


def test_office_list_is_paged_with_nine_for_more() -> None:
    state, ports = DialogState("pickup"), FakePorts()
    outs = play(state, ports, "845438")
    choices = [o for o in outs if isinstance(o, Choices)][0]
    assert len(choices.options) == 8 and choices.more
    outs = play(state, ports, "9")
    choices = [o for o in outs if isinstance(o, Choices)][0]
    assert choices.options == ("Village 9", "Village 10", "Village 11")
    play(state, ports, "2")
    assert state.slots["pickup"]["name"] == "Village 10" and state.step == "pickup_landmark"


def test_menu_keeps_the_draft_and_offers_it_again() -> None:
    state, ports = DialogState("pickup"), FakePorts()
    play(state, ports, "845438", "1", "skip")
    assert state.step == "drop"
    play(state, ports, "menu")
    assert state.step == "menu" and state.slots["pickup"]["name"] == "Village 1"
    play(state, ports, "1")
    assert state.step == "resume"
    play(state, ports, "1")
    assert state.step == "drop"


def test_help_explains_the_step_and_asks_again_without_a_miss() -> None:
    state = DialogState("recipient_phone", {"slots": {"recipient_name": "Sita"}})
    outs = play(state, FakePorts(), "help")
    assert keys(outs) == ["bot.help.phone", "bot.recipient.phone"] and state.misses == 0


def test_phone_numbers_are_validated() -> None:
    state = DialogState("recipient_phone", {"slots": {"recipient_name": "Sita"}})
    outs = play(state, FakePorts(), "12345")
    assert keys(outs)[0] == "bot.recipient.bad_phone" and state.step == "recipient_phone"
    play(state, FakePorts(), "९८७६५४३२१०")
    assert state.slots["recipient_phone"] == "+919876543210" and state.step == "category"


def test_fare_lines_are_shown_in_whole_rupees_that_add_up():
    from core.dialog.booking import rupee_lines

    fare = {"total_paise": 24900, "lines": [
        {"code": "base", "amount_paise": 2000}, {"code": "distance", "amount_paise": 27283},
        {"code": "tier", "amount_paise": -4392}, {"code": "rounding", "amount_paise": 9}]}
    shown = rupee_lines(fare)
    # 20 + 272.83 - 43.92 (+0.09 rounding) = 249: shown as 20 + 273 - 44 = 249
    assert shown == [("base", 2000), ("distance", 27300), ("tier", -4400)]
    assert all(a % 100 == 0 for _, a in shown)
    assert sum(a for _, a in shown) == fare["total_paise"]


def test_dialog_data_is_copied_deep_as_json():
    import json

    data = {"slots": {"pickup": dict(PLACE), "offices": [dict(PLACE), dict(PLACE)]},
            "pair": (1, 2), "n": 3, "none": None}
    copied = copy_data(data)
    assert copied == json.loads(json.dumps(data))  # tuples become lists, as in JSONB
    copied["slots"]["pickup"]["name"] = "changed"
    copied["slots"]["offices"][1]["pincode"] = "000000"
    copied["slots"]["offices"].append({})
    assert data["slots"]["pickup"]["name"] == "Bettiah"
    assert data["slots"]["offices"][1]["pincode"] == "845438"
    assert len(data["slots"]["offices"]) == 2

"""The WhatsApp booking dialog at its edges. Each test's docstring tells what went wrong
before its fix: a corrected pincode at the village list, common Hindi yeses, a number
pasted from a contact, a size no vehicle carries, rupees in the local word, a village
typed in full, a change interrupted by the menu, a first message naming a language,
STOP and START mid-booking, how to change the language, the way back from the waiting
list, and a greeting taken for a name."""

from __future__ import annotations

from itertools import count
from typing import Any

import pytest

from core.dialog.engine import DialogState
from core.dialog.ports import PlaceResult
from tests.test_dialog import PLACE, FakePorts, keys, play

_sid = count(1)


class PincodePorts(FakePorts):
    """Each pincode has its own villages (the fake's list names the pincode asked)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def offices(self, text: str) -> PlaceResult:
        self.asked.append(text)
        return PlaceResult("list", offices=[dict(PLACE, pincode=text, name=f"{text} village {i}")
                                            for i in range(1, 4)])


# --- the village list refuses a corrected pincode ------------------------------------

def test_a_new_pincode_at_the_village_list_looks_that_pincode_up() -> None:
    """A customer who typed a wrong pincode sees villages that are not theirs; the list's
    question cannot be answered, and the right pincode is taken as a miss (the IVR offers
    "press 8 to key in the pincode again"; a shared location is accepted here too)."""
    state, ports = DialogState("drop", {"slots": {"pickup": dict(PLACE, lat=26.0)}}), PincodePorts()
    play(state, ports, "845401")  # oops: a wrong pincode
    assert state.step == "drop_office"
    outs = play(state, ports, "845438")  # the right one
    assert ports.asked == ["845401", "845438"], keys(outs)
    assert state.misses == 0 and state.data["offices"][0]["pincode"] == "845438"


# --- the commonest Hindi yeses are not understood ------------------------------------

@pytest.mark.parametrize("answer", ["haan ji", "Haan ji", "theek hai", "हां जी", "ha ji"])
def test_common_romanized_and_hindi_yes_answers_are_yes(answer: str) -> None:
    """"हाँ जी" and "ठीक है" are yes, but "हां जी" (the anusvara spelling, as "हां" alone
    is accepted), "haan ji" and "theek hai" are misses: at "Can it break?" the customer
    is told "Sorry, I did not understand" and after three gets offered a person."""
    state = DialogState("fragile", {"slots": {}})
    play(state, FakePorts(), answer)
    assert state.step == "value" and state.slots.get("fragile") is True, (answer, state.step)


# --- a recipient number pasted from WhatsApp's contact card --------------------------

def test_a_recipient_number_copied_from_a_contact_is_taken() -> None:
    """Android WhatsApp copies a contact's number wrapped in directional marks
    (U+202A ... U+202C): a pasted number is refused as "does not look right"."""
    state = DialogState("recipient_phone", {"slots": {"recipient_name": "Sita"}})
    outs = play(state, FakePorts(), "\u202a+91 98765 43210\u202c")
    assert state.slots.get("recipient_phone") == "+919876543210", keys(outs)
    assert state.step == "category"


# --- through the real, signed webhook and its drain job ---------------------------------

class Chat:
    """One customer on WhatsApp: send a message, read the bot's reply and dialog step."""

    def __init__(self, client, phone: str) -> None:  # noqa: ANN001
        self.client, self.phone = client, phone

    def form(self, body: str = "", **extra: str) -> dict[str, str]:
        return {"MessageSid": f"SMrev16{next(_sid):06d}", "AccountSid": "ACrev16",
                "From": f"whatsapp:{self.phone}", "To": "whatsapp:+14155238886",
                "WaId": self.phone.lstrip("+"), "ProfileName": "Sita", "NumMedia": "0",
                "Body": body, **extra}

    def send(self, body: str = "", **extra: str) -> str:
        from tests.conftest import send_whatsapp

        return send_whatsapp(self.client, self.form(body, **extra))

    def conv(self) -> Any:
        from sqlalchemy import select

        from core.adapters.db import transaction
        from core.adapters.models import Conversation

        with transaction() as s:
            conv = s.scalar(select(Conversation).where(
                Conversation.contact == self.phone.lstrip("+")))
            s.expunge(conv)
            return conv

    def step(self) -> str | None:
        return self.conv().step


def english_chat_at_size(client, phone: str) -> Chat:  # noqa: ANN001
    chat = Chat(client, phone)
    for text in ("hi", "2", "1", "413739", "2", "skip", "413720", "1", "skip",
                 "Sunita Patil", "9822012345", "4"):
        chat.send(text)
    assert chat.step() == "size"
    return chat


# --- a size no vehicle on the rate card carries: an apology loop ---------------------

def test_a_size_no_vehicle_on_the_rate_card_carries_is_explained(client) -> None:
    """A rate card "may omit types not offered in a region". Without carts and pickup
    vans, "Needs a vehicle" makes every quote raise too_big_for_vehicle: the customer
    hears "Something went wrong... try again in a few minutes" on every answer to the
    value question, forever, instead of being asked for another size."""
    from core import i18n
    from core.adapters.db import transaction
    from core.adapters.models import RateCardRow
    from core.domain.pricing import DEFAULT_RATE_CARD
    from core.services.seed import seed_demo

    seed_demo()
    card = DEFAULT_RATE_CARD.to_dict()
    card["vehicles"] = {k: v for k, v in card["vehicles"].items() if k not in ("cart", "pickup")}
    with transaction() as s:
        s.add(RateCardRow(name="no-vans", card=card, active=True))
    chat = english_chat_at_size(client, "+919812316001")
    chat.send("4")  # Needs a vehicle
    chat.send("1")  # up to 5 kg
    chat.send("no")  # not fragile
    reply = chat.send("1")  # up to ₹500: no vehicle for it, so the size again
    assert i18n.t("common.error_try_later", "en") not in reply, reply
    assert i18n.t("bot.parcel.no_vehicle", "en") in reply, reply
    assert chat.step() == "size", reply
    chat.send("3")  # a smaller size: on to the weight
    assert chat.step() == "weight"


# --- an amount with the currency word the question itself uses -----------------------

@pytest.mark.parametrize("answer", ["1500 টাকা", "1500 ரூபாய்", "1500 రూపాయలు", "1500 રૂપિયા",
                                    "1500 ರೂಪಾಯಿ", "1500 taka"])
def test_a_value_written_with_the_local_word_for_rupees_is_taken(answer: str) -> None:
    """Each catalog asks "write it in টাকা / ரூபாய் / రూపాయలు / રૂપિયા / ರೂಪಾಯಿ, like
    1500"; "1500 रुपये" and "1500 rs" are read, these are refused ("choose a number from
    the list, or write the amount in rupees")."""
    state = DialogState("value", {"slots": {}})
    outs = play(state, Quoting(), answer)
    assert state.slots.get("value_paise") == 150000, (answer, keys(outs))


# --- a village named in full is not taken when another name starts with it ----------

class Rampur(FakePorts):
    def offices(self, text: str) -> PlaceResult:
        return PlaceResult("list", offices=[dict(PLACE, name="Rampur Khas"),
                                            dict(PLACE, name="Rampur", lat=26.9)])


def test_a_village_typed_in_full_is_taken_though_another_name_starts_with_it() -> None:
    """The list offers "1. Rampur Khas 2. Rampur"; the customer types "Rampur": both
    names start with it, so it is a miss, however exactly typed."""
    state, ports = DialogState("pickup"), Rampur()
    play(state, ports, "845438")
    assert state.step == "pickup_office"
    outs = play(state, ports, "Rampur")
    assert state.slots.get("pickup", {}).get("name") == "Rampur", keys(outs)


# --- changing one detail, a visit to the menu forgets it was only a change -----------

FULL = {"pickup": dict(PLACE), "drop": dict(PLACE, lat=26.0), "recipient_name": "Sita",
        "recipient_phone": "+919876543210", "category": "food", "size": "bag",
        "weight": "w5", "fragile": False, "value_paise": 50000, "tier": "standard"}


class Quoting(FakePorts):
    def quote(self, slots: dict[str, Any]) -> dict[str, Any]:
        fare = {"total_paise": 10000, "lines": [{"code": "base", "amount_paise": 10000}]}
        return {"km": "5.0", "vehicle": "bicycle", "tiers": {t: fare for t in
                                                              ("express", "standard", "economy")},
                "hours": {"express": 3, "standard": 8, "economy": 24},
                "search_minutes": {"express": 30, "standard": 60, "economy": 120}}

    def rider_free(self, slots: dict[str, Any]) -> bool:
        return True


def test_a_change_interrupted_by_the_menu_still_returns_to_the_confirmation() -> None:
    """At the confirmation: "2" change, "1" the pickup; then "0" (a look at the menu) and
    "1", "1" continue that booking: once the new pickup is in, the dialog asks the drop,
    the receiver, the parcel and the speed all over again instead of the confirmation."""
    state, ports = DialogState("confirm", {"slots": dict(FULL)}), Quoting()
    play(state, ports, "2", "1")
    assert state.step == "pickup"
    play(state, ports, "0", "1", "1")  # the menu, send a parcel, continue that booking
    assert state.step == "pickup"
    play(state, ports, "845438", "1", "skip")
    assert state.step == "confirm", state.step


# --- a first message naming the language in Devanagari is offered Hindi -------------

@pytest.mark.parametrize("first,lang", [("मराठी", "mr"), ("मराठी में", "mr")])
def test_a_first_message_that_names_a_language_is_not_offered_another(client, first: str,
                                                                       lang: str) -> None:
    """A new customer's first message "मराठी" (Marathi, written in Devanagari as Marathi
    is) is read only by its script: "हिंदी में बात करें? 1. हाँ": asked whether to talk in
    the very language they did not name (only the language list reads names)."""
    from core import i18n
    from core.services.seed import seed_demo

    seed_demo()
    chat = Chat(client, "+919812316101")
    reply = chat.send(first)
    hindi = i18n.t("bot.lang_guess", "hi", language=i18n.LANGUAGE_NAMES["hi"])
    assert hindi not in reply, reply


# --- STOP then START in the middle of a booking loses the draft ----------------------

def test_a_draft_is_offered_again_after_stop_and_start(client) -> None:
    """Every other way to the menu (the menu word, a language change, a person, a day
    away, a rating question) keeps a half-done booking and offers it again; START puts the
    chat at the menu without marking the draft, so the next "1" silently throws away the
    places, receiver and parcel already given and asks the pickup again."""
    from core.services.seed import seed_demo

    seed_demo()
    chat = english_chat_at_size(client, "+919812316201")
    chat.send("STOP")
    chat.send("START")
    reply = chat.send("1")  # send a parcel
    assert chat.step() == "resume", reply
    assert chat.conv().state.get("slots", {}).get("recipient_name") == "Sunita Patil"


# --- once a language is chosen, nothing says how to change it ----------------------

@pytest.mark.parametrize("lang", ["hi", "en", "bn", "mr", "ta", "te", "gu", "kn"])
def test_a_customer_is_told_how_to_change_the_language(lang: str) -> None:
    """The chat understands "language"/"bhasha"/"भाषा"/"ভাষা"... at any step, but no text a
    customer sees once a language is chosen (the saved notice, the main menu, the menu's
    help) names that word, and the menu has no language option (the IVR's has "press 4").
    A Marathi speaker who said yes to "Shall we talk in Hindi?", or anyone who tapped the
    wrong number in the list, has no way they can see back to their language."""
    import re

    from core import i18n
    from core.dialog import words

    seen = " ".join([i18n.t("lang.saved", lang, language=i18n.LANGUAGE_NAMES[lang]),
                     i18n.t("menu.main", lang), i18n.t("menu.help", lang)])
    tokens = {words.clean(t) for t in re.split(r"[\s\"'“”,.:;()।]+", seen) if t}
    assert any(words.command(t) == "language" for t in tokens), seen


# --- waiting for a person: silence, and no word of the way back ---------------------

@pytest.mark.parametrize("how", ["menu 4", "voice note"])
def test_a_customer_put_on_the_waiting_list_is_told_how_to_get_the_bot_back(client,
                                                                           how: str) -> None:
    """While a person is awaited the bot answers nothing at all; only "0"/"menu" brings
    it back (handoff.withdraw). Every other answer that ends at the menu adds "Send 0 for
    the menu" (next_hint); the waiting-list and call-back answers do not, so a customer
    who asked at 10 pm (or tapped 4 by mistake) writes into silence until an operator
    comes."""
    from core import i18n
    from core.services.seed import seed_demo

    seed_demo()
    chat = Chat(client, "+919812316301" if how == "menu 4" else "+919812316302")
    chat.send("hi")
    chat.send("2")  # English
    if how == "menu 4":
        reply = chat.send("4")
    else:
        chat.send("", NumMedia="1", MediaContentType0="audio/ogg",
                  MediaUrl0="https://api.twilio.com/fixture-media")
        reply = chat.send("1")  # yes, call me
    assert chat.conv().handoff, reply
    assert chat.send("hello?") == ""  # silence while waiting
    assert i18n.t("bot.next_hint", "en") in reply, reply


# --- a greeting on coming back is taken as the receiver's name ----------------------

@pytest.mark.parametrize("greeting", ["hi", "Hello", "Namaste ji", "नमस्ते"])
def test_a_greeting_at_the_name_question_is_not_the_receivers_name(greeting: str) -> None:
    """A customer who left at "Who will receive the parcel?" and comes back hours later
    with "hi" books a parcel for "hi": "What is the mobile number of hi?", and the rider
    asks for "hi" at the door. The menu already knows a greeting (is_greeting)."""
    state = DialogState("recipient_name", {"slots": {"pickup": dict(PLACE),
                                                     "drop": dict(PLACE, lat=26.0)}})
    play(state, FakePorts(), greeting)
    assert "recipient_name" not in state.slots, state.slots.get("recipient_name")


@pytest.mark.parametrize(("typed", "step"), [
    ("agent", None), ("Call me", None), ("customer care", None), ("बात करनी है", None),
    ("track", "track"), ("cancel", "cancel_pick"), ("book", "pickup")])
def test_the_menu_understands_its_options_in_words(typed: str, step: str | None) -> None:
    """At the main menu only the numbers worked: "agent" or "call me" was "not
    understood" (three times, and then a person was offered)."""
    from core.dialog.booking import BOOKING_DIALOG
    from core.dialog.engine import UserInput
    from core.dialog.engine import turn as engine_turn

    class Booked(FakePorts):
        def my_bookings(self, open_only: bool = False) -> list[tuple[str, str]]:
            return [("48217730", "paid")]

    state, ports = DialogState("menu", {}), Booked()
    engine_turn(BOOKING_DIALOG, state, UserInput(text=typed), ports, "en")
    if step is None:
        assert ports.handoffs == ["asked"]
    else:
        assert state.step == step

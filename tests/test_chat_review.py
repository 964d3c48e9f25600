"""Review 5: the WhatsApp booking chat as a low-literacy rural customer uses it. Each test
is one defect the review proved; its docstring says what the customer saw and should see.
Dialog-level tests use the fake ports of tests/test_dialog*.py; the rest go through the
signed webhook and its drain job (tests/test_dialog_gaps.Chat)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bots.whatsapp_text import render
from core import clock, i18n
from core.dialog import words
from core.dialog.booking import BOOKING_DIALOG
from core.dialog.engine import Choices, DialogState, UserInput, turn
from tests.test_dialog import PLACE, FakePorts, keys, play
from tests.test_dialog_edges import FULL, PincodePorts, Quoting

START = datetime(2026, 12, 1, 4, 30, tzinfo=UTC)  # 10:00 in India


class Booking(Quoting):
    """Quotes and books (records what it was asked to book)."""

    def __init__(self) -> None:
        super().__init__()
        self.booked: list[dict[str, Any]] = []

    def confirm(self, slots: dict[str, Any]) -> dict[str, Any]:
        self.booked.append(dict(slots))
        return {"ref": "12345678", "total_paise": 10000}


def at_confirm() -> DialogState:
    return DialogState("confirm", {"slots": dict(FULL)})


def villages(n: int) -> list[dict[str, Any]]:
    return [dict(PLACE, name=f"Village {i}") for i in range(1, n + 1)]


# --- a pincode with a word beside it is not read -------------------------------------

@pytest.mark.parametrize("typed", ["Pin 845438", "pincode 845438", "845438 Bettiah",
                                   "Bettiah 845438", "पिनकोड 845438", "पिन ८४५४३८",
                                   "pin: 845438."])
def test_a_pincode_written_with_a_word_beside_it_is_read(typed: str) -> None:
    """Asked "send the 6-digit pincode, like 845438", a customer writes "Pin 845438" or
    "845438 Bettiah" (as on a letter). The bot answered "Please share a location or send
    a 6-digit pincode, like 845438" (they did) and asked again; three times and they were
    offered a person. A message holding exactly one 6-digit number is that pincode."""
    state, ports = DialogState("pickup"), PincodePorts()
    outs = play(state, ports, typed)
    assert ports.asked == ["845438"], keys(outs)
    assert state.step == "pickup_office" and state.misses == 0, keys(outs)


def test_a_pincode_with_a_word_at_the_village_list_looks_that_pincode_up() -> None:
    """At the village list of a wrong pincode, "pin 845401" (the right one) was taken as
    a village's name and missed; a bare 845401 was already looked up."""
    state, ports = DialogState("pickup"), PincodePorts()
    play(state, ports, "845438", "pin 845401")
    assert ports.asked == ["845438", "845401"], state.step
    assert state.step == "pickup_office" and state.misses == 0
    assert state.data["offices"][0]["pincode"] == "845401"


# --- "yes" to "is there a landmark?" becomes the landmark ----------------------------

@pytest.mark.parametrize("said", ["haan", "yes", "ok", "ji", "हाँ", "হ্যাঁ", "Haan ji"])
def test_a_yes_to_the_landmark_question_is_not_saved_as_the_landmark(said: str) -> None:
    """"Is there a landmark near the pickup, like a temple or school? Write it, or send 1
    to skip." A customer answers the question: "haan" (yes, there is). The bot saved
    "haan" as the landmark the rider is given and moved on to the drop place; the
    landmark the customer meant to write next was lost (it landed on the drop question).
    A bare yes is answered "please write the landmark" on the same question."""
    state = DialogState("pickup_landmark", {"slots": {"pickup": dict(PLACE)}})
    outs = play(state, FakePorts(), said)
    assert state.slots["pickup"].get("landmark") is None, keys(outs)
    assert state.step == "pickup_landmark", (state.step, keys(outs))
    assert keys(outs) == ["bot.place.landmark_bad", "bot.pickup.landmark"]


# --- "there is none" said in a phrase becomes the landmark ---------------------------

@pytest.mark.parametrize("said", ["nahi hai", "नहीं है", "कोई नहीं", "kuch nahi hai",
                                  "নেই", "কিছু নেই", "none", "no landmark", "Nothing",
                                  "काही नाही", "எதுவும் இல்லை", "ఏమీ లేదు", "કંઈ નથી",
                                  "ಏನೂ ಇಲ್ಲ"])
def test_no_landmark_said_in_a_short_phrase_is_not_saved_as_the_landmark(said: str) -> None:
    """To "कोई पहचान है?" (is there a landmark?) the natural Hindi answer is "नहीं है" or
    "कोई नहीं", the Bengali one "নেই". Only a bare "nahi"/"na"/"skip"/"1" skipped: these
    phrases were saved as the landmark, and the rider told the landmark is "नहीं है".
    They skip the landmark (none) as "nahi" does."""
    state = DialogState("pickup_landmark", {"slots": {"pickup": dict(PLACE)}})
    outs = play(state, FakePorts(), said)
    assert state.slots["pickup"].get("landmark") is None, keys(outs)
    assert state.step == "drop", (state.step, keys(outs))


# --- "back" is taken as an answer ----------------------------------------------------

@pytest.mark.parametrize("step,said,before", [
    ("recipient_name", "back", "drop_landmark"),
    ("recipient_name", "peeche", "drop_landmark"),
    ("recipient_name", "wapas", "drop_landmark"),
    ("drop_landmark", "back", "drop"),
    ("drop_landmark", "peeche jao", "drop"),
    ("recipient_phone", "पीछे", "recipient_name"),
    ("category", "পিছনে", "recipient_phone"),
    ("size", "मागे", "category"),
    ("weight", "பின்னால்", "size"),
    ("fragile", "వెనక్కి", "weight"),
    ("value", "પાછળ", "fragile"),
    ("speed", "ಹಿಂದೆ", "value"),
    ("confirm", "Go back", "speed"),
])
def test_back_goes_to_the_question_before(step: str, said: str, before: str) -> None:
    """A customer who wants to correct the previous answer sends "back" or "peeche". No
    step knew the word: at the name question it became the receiver's name ("What is
    the mobile number of back?"), at the landmark question the landmark, and the dialog
    moved on with it. "back" asks the question before again (nothing is saved)."""
    state, ports = DialogState(step, {"slots": dict(FULL, recipient_name=None)}), Booking()
    outs = play(state, ports, said)
    assert state.step == before, (state.step, keys(outs))
    assert state.slots.get("recipient_name") is None and state.misses == 0
    assert state.slots["drop"].get("landmark") is None
    assert not ports.booked


def test_back_from_a_landmark_shows_the_village_list_it_was_picked_from() -> None:
    """Back from the landmark of a village picked from a list is that list (to pick
    another); a back word inside a landmark ("mandir ke peeche": behind the temple)
    stays the landmark."""
    state, ports = DialogState("drop", {"slots": {"pickup": dict(PLACE, lat=26.0)}}), FakePorts()
    play(state, ports, "845438", "2")
    assert state.step == "drop_landmark" and state.slots["drop"]["name"] == "Village 2"
    outs = play(state, ports, "back")
    assert state.step == "drop_office", keys(outs)
    assert [o for o in outs if isinstance(o, Choices)][0].options[0] == "Village 1"
    play(state, ports, "3", "mandir ke peeche")
    assert state.slots["drop"]["name"] == "Village 3"
    assert state.slots["drop"]["landmark"] == "mandir ke peeche"
    assert state.step == "recipient_name"


def test_back_while_changing_one_detail_is_the_list_of_details() -> None:
    """At "Change something", then "Drop place": "back" is the list of what to change
    (not the pickup's landmark), and the change still ends at the confirmation."""
    state, ports = at_confirm(), Booking()
    play(state, ports, "2", "2")
    assert state.step == "drop"
    play(state, ports, "back")
    assert state.step == "change"
    play(state, ports, "3", "Gita")  # the receiver this time
    assert state.step == "recipient_phone"
    play(state, ports, "9876500000")
    assert state.step == "confirm" and state.slots["recipient_name"] == "Gita"


def test_back_at_the_first_question_is_the_menu() -> None:
    """"back" at "Where should we pick up the parcel?" was "please share a location": the
    menu asked it (as "0" does)."""
    state = DialogState("pickup", {"slots": {}})
    outs = play(state, FakePorts(), "back")
    assert state.step == "menu" and state.misses == 0, keys(outs)
    assert keys(outs) == ["menu.main"]


# --- a language named mid-booking becomes the receiver's name ------------------------

@pytest.mark.parametrize("said,lang", [("English", "en"), ("Tamil", "ta"), ("हिंदी", "hi"),
                                       ("Bangla", "bn")])
def test_a_language_named_mid_booking_is_not_the_receivers_name(said: str, lang: str) -> None:
    """A customer chatting in Marathi wants to go on in another language and writes its
    name ("English", "Tamil", "हिंदी") at "Who will receive the parcel?". The bot saved
    "English" as the receiver's name and asked "What is the mobile number of English?".
    The language changes, and the same question is asked (in it)."""
    state = DialogState("recipient_name", {"slots": {"pickup": dict(PLACE)}})
    ports = FakePorts()
    outs = turn(BOOKING_DIALOG, state, UserInput(text=said), ports, "mr")
    assert state.slots.get("recipient_name") is None, keys(outs)
    assert ports.language == lang and state.step == "recipient_name", (state.step, keys(outs))
    assert keys(outs) == ["lang.saved", "bot.recipient.name"]


def test_a_language_named_at_the_language_guess_is_that_language() -> None:
    """"Shall we talk in Hindi? 1. Yes 2. Choose another language": "Tamil" was not
    understood."""
    state, ports = DialogState("language_guess", {"lang_guess": "hi"}), FakePorts()
    outs = play(state, ports, "Tamil")
    assert ports.language == "ta" and state.step == "menu", keys(outs)


def test_a_language_named_on_whatsapp_is_spoken_at_once(client) -> None:
    """Through the webhook: "हिंदी" at the name question is answered in Hindi, with the
    same question."""
    from core.services.seed import seed_demo
    from tests.test_dialog_gaps import Chat

    seed_demo()
    now = START
    chat = Chat(client, "+919812355562")
    try:
        for text in ("hi", "2", "1", "845438", "1", "1", "845450", "Laxmipur", "1"):
            now += timedelta(seconds=20)
            clock.freeze(now)
            chat.send(text)
        assert chat.step() == "recipient_name"
        clock.freeze(now + timedelta(seconds=20))
        reply = chat.send("हिंदी")
    finally:
        clock.freeze(None)
    assert i18n.t("bot.recipient.name", "hi") in reply, reply
    assert chat.step() == "recipient_name"


# --- a receiver's name sent with the number keeps the number in the name -------------

@pytest.mark.parametrize("said,name", [("Ramesh 9876543210", "Ramesh"),
                                       ("Ramesh Kumar, 98765 43210", "Ramesh Kumar"),
                                       ("रमेश 9876543210", "रमेश"),
                                       ("रमेश ९८७६५४३२१०", "रमेश"),
                                       ("9876543210 Ramesh", "Ramesh"),
                                       ("Sita Devi (+91 98765-43210)", "Sita Devi")])
def test_a_name_sent_with_the_number_is_the_name_and_the_number(said: str, name: str) -> None:
    """Asked who receives the parcel, a customer sends name and number in one message,
    "Ramesh 9876543210". The whole text was saved as the name: "What is the mobile number
    of Ramesh 9876543210?", and the booking, the rider and the receiver's code SMS carried
    a name with a phone number in it. The number is the receiver's number (said back)."""
    state = DialogState("recipient_name", {"slots": {"pickup": dict(PLACE)}})
    outs = play(state, FakePorts(), said)
    assert state.slots.get("recipient_name") == name, keys(outs)
    assert state.slots.get("recipient_phone") == "+919876543210"
    assert state.step == "category" and keys(outs)[0] == "bot.recipient.saved"


def test_a_name_sent_with_a_wrong_number_asks_for_the_number() -> None:
    """"Ramesh 1234567890" (no mobile number): the name, then the number asked, saying it
    is not right; "Ramesh 12" is no name."""
    state = DialogState("recipient_name", {"slots": {"pickup": dict(PLACE)}})
    outs = play(state, FakePorts(), "Ramesh 12")
    assert state.step == "recipient_name" and keys(outs)[0] == "bot.recipient.bad_name"
    assert state.slots.get("recipient_name") is None
    outs = play(state, FakePorts(), "Ramesh 1234567890")
    assert state.slots.get("recipient_name") == "Ramesh" and "recipient_phone" not in state.slots
    assert state.step == "recipient_phone"
    assert keys(outs) == ["bot.recipient.bad_phone", "bot.recipient.phone"]


# --- a photo at a written question is told to send a number --------------------------

@pytest.mark.parametrize("step,prompt", [("recipient_name", "bot.recipient.name"),
                                         ("pickup_landmark", "bot.pickup.landmark")])
def test_a_photo_at_a_written_question_is_not_told_to_answer_with_a_number(
        step: str, prompt: str) -> None:
    """A photo (or a sticker) at "Who will receive the parcel? Write their name." was
    answered "I cannot open photos or files. Please answer with a number." and then the
    name question: a customer who did send a number was told "Please write the name".
    The photo answer asks for an answer to the question, whatever it wants."""
    state = DialogState(step, {"slots": {"pickup": dict(PLACE)}})
    outs = turn(BOOKING_DIALOG, state, UserInput(media="photo"), FakePorts(), "en")
    assert keys(outs) == ["bot.media.photo", prompt]
    for lang in i18n.LANGUAGES:
        text = "\n".join(render(outs, lang))
        assert i18n.t("bot.media.photo", lang) in text
        number = {"en": "with a number", "hi": "नंबर भेजकर"}.get(lang)
        assert number is None or number not in text, text


# --- "cancel" at the confirmation, option 3's own word, is not understood ------------

@pytest.mark.parametrize("said", ["cancel", "Cancel", "कैंसिल", "रद्द", "বাতিল"])
def test_cancel_typed_at_the_confirmation_drops_the_booking(said: str) -> None:
    """The confirmation ends "1. Yes, book it 2. Change something 3. Cancel". A customer
    typed the word of option 3, "cancel" (or "कैंसिल", which the main menu takes for
    its cancel option): "Sorry, I did not understand", the whole summary again, and after
    three a person. "cancel" does what 3 does: "OK, I did not book it."."""
    state, ports = at_confirm(), Booking()
    outs = play(state, ports, said)
    assert "bot.confirm.dropped" in keys(outs), keys(outs)
    assert state.step == "menu" and not ports.booked


@pytest.mark.parametrize("lang", ["en", "hi", "bn", "mr", "gu"])  # ta te kn: a bare no
def test_option_3_typed_as_its_catalog_shows_it_drops_the_booking(lang: str) -> None:
    """Option 3 is "रहने दीजिए" in Hindi, "থাক" in Bengali, "રહેવા દો" in Gujarati:
    typed back as shown, it was not understood."""
    state, ports = at_confirm(), Booking()
    outs = play(state, ports, i18n.t("bot.confirm.cancel", lang))
    assert "bot.confirm.dropped" in keys(outs), keys(outs)
    assert state.step == "menu" and not ports.booked


# --- a thumbs-up is no yes ------------------------------------------------------------

@pytest.mark.parametrize("step,said", [("fragile", "👍"), ("fragile", "👍🏻"),
                                       ("confirm", "👍"), ("confirm", "👍🏿")])
def test_a_thumbs_up_answers_yes(step: str, said: str) -> None:
    """WhatsApp customers say "OK" with 👍 (its skin tones too). At "Can it break? 1. Yes
    2. No" or "Please check your booking: 1. Yes, book it" the bot answered "Sorry, I did
    not understand", every time, while "ok" is yes there. 👍 is yes (the booking still
    waits for its payment)."""
    state = at_confirm() if step == "confirm" else DialogState("fragile", {"slots": {}})
    ports = Booking()
    outs = play(state, ports, said)
    if step == "confirm":
        assert ports.booked and "bot.confirm.done" in keys(outs), keys(outs)
    else:
        assert state.slots.get("fragile") is True and state.step == "value", keys(outs)
    assert words.clean("👍🏽") == "👍"


# --- the texts about what to send next ------------------------------------------------

def test_the_unpaid_cap_says_the_two_ones_that_continue_the_booking() -> None:
    """Refused for too many unpaid bookings, the customer was told "then send 1 to
    continue this booking"; "1" is the menu's "send a parcel", which asks whether to
    continue that booking: a second "1". The text says both."""
    state, ports = at_confirm(), Booking()
    state.data["draft_step"] = "confirm"
    state.step = "menu"
    play(state, ports, "1")
    assert state.step == "resume"
    play(state, ports, "1")
    assert state.step == "confirm"  # two ones, as
    for lang in i18n.LANGUAGES:
        text = i18n.t("bot.confirm.too_many_unpaid", lang, count=3)
        assert text.count("1") == 2, (lang, text)


def test_the_village_list_help_says_9_only_when_there_is_more() -> None:
    """"help" at a list of three villages said "Send 9 to see more names": there are none
    (9 is a miss there). It says so only at a list that has more."""
    for n, help_key in ((3, "bot.help.office_one_page"), (11, "bot.help.office")):
        state = DialogState("pickup_office", {"slots": {}, "offices": villages(n), "page": 0})
        outs = play(state, FakePorts(), "help")
        assert keys(outs) == [help_key, "bot.place.office"], n
        assert ("9" in i18n.t(help_key, "en")) == (n > 8)


# --- two villages of one pincode without their own position are "the same place" ------

def test_two_villages_placed_at_their_pincode_centre_are_not_the_same_place(client) -> None:
    """Pincode 845453 (served) lists Parsa Factory and Lauriya, two villages India Post
    gives no trustworthy position for, so both are put at the pincode's centre. A
    customer sending from Parsa Factory to Lauriya was told "The pickup place and the
    drop place are the same. Please send another place." - false, and whichever way they
    picked Lauriya by pincode it was refused again. The fare needs a distance, which the
    two centres cannot give: the drop's location pin is asked for, and taken."""
    from core.adapters import pincode
    from core.services.seed import seed_demo
    from tests.test_dialog_gaps import Chat

    seed_demo()
    now = START
    chat = Chat(client, "+919812355561")
    same = i18n.t("address.same_place", "en")
    try:
        for text in ("hi", "2", "1", "845453", "Parsa Factory", "1", "845453"):
            now += timedelta(seconds=20)
            clock.freeze(now)
            chat.send(text)
        assert chat.step() == "drop_office"
        now += timedelta(seconds=20)
        clock.freeze(now)
        reply = chat.send("Lauriya")
        assert same not in reply, reply
        label = {o.name: f"{o.name}, {o.district} (845453)"
                 for o in pincode.post_offices("845453")}
        assert i18n.t("bot.drop.pin_needed", "en", place=label["Lauriya"],
                      other=label["Parsa Factory"]) in reply, reply
        assert chat.step() == "drop"
        clock.freeze(now + timedelta(seconds=20))
        pinned = chat.send(Latitude="26.99", Longitude="84.36")  # 2.5 km south-west
    finally:
        clock.freeze(None)
    assert same not in pinned and chat.step() == "drop_landmark", pinned


# --- second thoughts of a review of these fixes ---------------------------------------

@pytest.mark.parametrize("said", ["Bangla", "tamil"])
def test_a_language_name_as_a_landmark_is_the_landmark(said: str) -> None:
    """"Bangla" (a bungalow) is a common landmark in Bihar: at the landmark question, where
    any words may be the answer, it is the landmark, not a switch to Bengali for good."""
    state = DialogState("pickup_landmark", {"slots": {"pickup": dict(PLACE)}})
    outs = play(state, FakePorts(), said)
    assert state.slots["pickup"].get("landmark") == said, keys(outs)
    assert "lang.saved" not in keys(outs)


def test_a_thumbs_up_does_not_cancel_a_booking(client, live, monkeypatch) -> None:
    """Cancelling may cost a fee, and on WhatsApp a thumbs-up often means only "seen": at
    "cancel this booking? 1. Yes 2. No" it is asked again; "1" cancels."""
    from core.adapters.db import transaction
    from core.adapters.models import Booking as BookingRow
    from tests.conftest import read_first
    from tests.test_dialog_gaps import CUSTOMER, Chat
    from tests.test_payments_support import paid_booking

    bid = paid_booking(CUSTOMER)
    chat = Chat(client, CUSTOMER)
    chat.send("hi")
    chat.send("3")
    chat.send("1")
    assert chat.step() == "cancel_confirm"
    read_first(monkeypatch)
    chat.send("👍")
    with transaction() as s:
        assert s.get(BookingRow, bid).status == "paid"
    assert chat.step() == "cancel_confirm"
    chat.send("1")
    with transaction() as s:
        assert s.get(BookingRow, bid).status == "cancelled"

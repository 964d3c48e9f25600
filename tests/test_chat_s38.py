"""WhatsApp chat after s38 (hchat3): what a customer says in her own words.

- At the menu "parcel kyu nahi aaya abhi tak?" (why has it not come yet?) and "refund ke
  saath parcel kab aayega" were "not understood": a parcel that has not come, or the
  parcel named as what comes, is tracking; complaints and other subjects still are not
  ("samajh nahi aaya", "OTP kyu nahi aaya", "toot ke aaya kya karu", "refund kab milega").
- A village typed by its name at the place question was refused with "send a pin or a
  pincode": a post office of that name inside the service area is taken now; a name not
  found is told so, with where a pincode is written.
- A shared location with a name (WhatsApp's Label and Address: a shop, a school) left the
  name unused and asked for a landmark: the name is the landmark now.
- A voice note in the middle of a booking, then "yes, call me": the draft is kept and
  offered again once she is back (a guard: it was so before).
Played through the signed WhatsApp webhook; real PostgreSQL and Redis."""

from __future__ import annotations

from itertools import count

import pytest

from core import i18n
from core.dialog import words
from core.dialog.booking import menu_request
from core.dialog.engine import DialogState
from tests.conftest import send_whatsapp
from tests.test_chat_journey_review29 import (  # noqa: F401  (demo: a fixture)
    PICKUP_BETTIAH,
    REST,
    TO_PICKUP,
    Chat,
    demo,
    newest_ref,
)
from tests.test_chat_langs_review27 import say
from tests.test_dialog import FakePorts, keys

_phones = count(1)
_sids = count(1)


def send(chat: Chat, body: str = "", **form: str) -> str:
    """One message with more of Twilio's fields (a location, a voice note)."""
    params = {"MessageSid": f"SMs38{next(_sids):06d}", "AccountSid": "ACs38",
              "From": f"whatsapp:{chat.phone}", "To": "whatsapp:+14155238886",
              "WaId": chat.phone.lstrip("+"), "ProfileName": "Asha", "NumMedia": "0",
              "Body": body}
    params.update(form)
    return send_whatsapp(chat.client, params)


def new_chat(client) -> Chat:
    return Chat(client, f"+9198138{next(_phones):05d}")


# --- 1. "why has it not come yet?" is tracking -------------------------------------------

NOT_COME_YET = [
    "parcel kyu nahi aaya abhi tak?", "refund ke saath parcel kab aayega",
    "mera parcel abhi tak nahi aaya", "parcel aaya nahi abhi tak", "kya parcel aaya ya nahi",
    "पार्सल अभी तक क्यों नहीं आया", "why has my parcel not come yet",
    "my parcel is not delivered yet", "rider kyu nahi aaya",
    "পার্সেল এখনো আসেনি কেন", "पार्सल अजून आला नाही", "இன்னும் பார்சல் வரல",
    "పార్సెల్ ఇంకా రాలేదు", "પાર્સલ હજુ આવ્યું નથી", "ಪಾರ್ಸೆಲ್ ಇನ್ನೂ ಬಂದಿಲ್ಲ",
]


@pytest.mark.parametrize("said", NOT_COME_YET)
def test_a_parcel_that_has_not_come_is_tracking(said: str) -> None:
    assert menu_request(said) == 2, said
    state, ports = DialogState("menu"), FakePorts()
    outs = say(state, ports, said, "hi")
    assert "bot.retry" not in keys(outs) and "bot.track.none" in keys(outs), keys(outs)


@pytest.mark.parametrize("said", [
    "samajh nahi aaya", "mujhe samajh nahi aaya", "OTP nahi aaya", "OTP kyu nahi aaya",
    "code abhi tak nahi aaya", "parcel ka refund kab milega", "refund kab milega",
    "toot ke aaya kya karu", "itna late kyu aaya?", "it arrived, did not like it",
    "parcel nahi aaya, cancel karna hai", "nahi aaya, cancel kab hoga", "parcel nahi bhejna",
    "nahi",
])
def test_complaints_and_other_subjects_stay_no_tracking(said: str) -> None:
    assert menu_request(said) != 2, said


def test_not_come_at_the_rating_question_is_left_as_it_was() -> None:
    """menu_request(when=False), the rating question's reading, is unchanged."""
    assert menu_request("parcel kyu nahi aaya abhi tak?", when=False) is None


@pytest.mark.db
def test_why_not_come_yet_after_booking_lists_her_booking(client, demo) -> None:  # noqa: F811
    chat = new_chat(client)
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH, *REST)
    chat.say("1")  # booked
    ref = newest_ref(chat.phone)
    assert ref and chat.step() == "menu"
    reply = chat.say("parcel kyu nahi aaya abhi tak?")
    assert i18n.t("bot.retry", "hi") not in reply and ref in reply, reply


# --- 2. a village typed by its name ------------------------------------------------------

@pytest.mark.db
@pytest.mark.parametrize("typed", ["Lauriya", "lauriya gaon", "Village Lauriya"])
def test_a_village_name_at_the_pickup_question_is_taken(client, demo, typed) -> None:  # noqa: F811
    chat = new_chat(client)
    chat.play(*TO_PICKUP)
    assert chat.step() == "pickup"
    reply = chat.say(typed)
    assert chat.step() == "pickup_landmark", reply
    assert "Lauriya" in reply and "845453" in reply, reply
    place = chat.slots()["pickup"]
    assert (place["name"], place["pincode"]) == ("Lauriya", "845453")
    # the wrong one: the place question again
    chat.say("nahi, dusra gaon")
    assert chat.step() == "pickup"


@pytest.mark.db
def test_a_village_name_at_the_drop_question_is_taken(client, demo) -> None:  # noqa: F811
    chat = new_chat(client)
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH, "1")
    assert chat.step() == "drop"
    chat.say("Laxmipur")
    assert chat.step() == "drop_landmark"
    assert chat.slots()["drop"]["pincode"] == "845450"


@pytest.mark.db
@pytest.mark.parametrize("typed", ["Chandigarh", "लौरिया"])
def test_a_name_not_found_says_what_to_send(client, demo, typed) -> None:  # noqa: F811
    """Far away (Chandigarh is a real office, not near a Point) or in another script
    than India Post's: told it was not found, to share a pin or send the pincode, and
    where a pincode is written; still at the question."""
    chat = new_chat(client)
    chat.play(*TO_PICKUP)
    reply = chat.say(typed)
    assert chat.step() == "pickup"
    assert "नाम का गाँव हमारे इलाके में नहीं मिला" in reply and "आधार कार्ड" in reply, reply
    assert typed in reply


@pytest.mark.db
@pytest.mark.parametrize("typed", ["mujhe kal bhejna hai", "hello", "haan"])
def test_other_words_at_the_place_question_keep_the_old_answer(client, demo, typed) -> None:  # noqa: F811
    chat = new_chat(client)
    chat.play(*TO_PICKUP)
    reply = chat.say(typed)
    assert chat.step() == "pickup" and "नहीं मिला" not in reply, reply


def test_a_name_is_read_only_alone() -> None:
    assert words.village_typed("Lauriya gaon") == "lauriya"
    for said in ("kal bhejna hai", "haan", "845438", "a b c d", "ok thanks"):
        assert words.village_typed(said) is None, said


# --- 3. a named place shared -------------------------------------------------------------

PIN = {"Latitude": "26.80228", "Longitude": "84.51522"}


@pytest.mark.db
def test_a_named_place_shared_is_its_landmark(client, demo) -> None:  # noqa: F811
    chat = new_chat(client)
    chat.play(*TO_PICKUP)
    reply = send(chat, **PIN, Label="Saraswati Vidya Mandir", Address="Main Road, Bettiah")
    assert chat.step() == "drop", reply  # no landmark question
    assert "पहचान: Saraswati Vidya Mandir, Main Road, Bettiah" in reply, reply
    assert chat.slots()["pickup"]["landmark"] == "Saraswati Vidya Mandir, Main Road, Bettiah"
    assert "pin_place" not in chat.conv()[1]


@pytest.mark.db
def test_a_plain_pin_still_asks_the_landmark(client, demo) -> None:  # noqa: F811
    chat = new_chat(client)
    chat.play(*TO_PICKUP)
    send(chat, **PIN)
    assert chat.step() == "pickup_landmark"
    assert chat.slots()["pickup"]["landmark"] is None


@pytest.mark.db
def test_a_named_place_shared_at_the_menu_is_the_pickup_and_its_landmark(
        client, demo) -> None:  # noqa: F811
    chat = new_chat(client)
    chat.play("namaste", "1")
    assert chat.step() == "menu"
    send(chat, **PIN, Label="Hanuman Mandir")
    assert chat.step() == "drop"
    assert chat.slots()["pickup"]["landmark"] == "Hanuman Mandir"


@pytest.mark.db
def test_a_named_place_not_used_is_forgotten(client, demo) -> None:  # noqa: F811
    """At a question that takes no place the name is not kept for a later pin."""
    chat = new_chat(client)
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH, "1", "845450", "7", "1")
    assert chat.step() == "recipient_name"
    send(chat, **PIN, Label="Hanuman Mandir")
    assert "pin_place" not in chat.conv()[1]


# --- 4. a voice note in the middle of a booking ------------------------------------------

VOICE = {"NumMedia": "1", "MediaContentType0": "audio/ogg",
         "MediaUrl0": "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1"}


@pytest.mark.db
def test_a_voice_note_then_a_call_back_keeps_the_draft(client, demo) -> None:  # noqa: F811
    chat = new_chat(client)
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH, "1", "845450", "7", "1")
    assert chat.step() == "recipient_name"
    reply = send(chat, **VOICE)
    assert "आवाज़ वाला मैसेज नहीं सुन सकता" in reply, reply  # told, in her language
    reply = chat.say("1")  # yes, call me
    assert "आपको फ़ोन करेगा" in reply, reply
    assert chat.slots()["drop"]["pincode"] == "845450"
    chat.say("0")  # back to the bot before the call
    reply = chat.say("1")  # send a parcel: her draft is offered, not dropped
    assert chat.step() == "resume", reply
    chat.say("1")  # continue it
    assert chat.step() == "recipient_name"
    assert chat.slots()["drop"]["pincode"] == "845450"

"""Review rev3: the customer's WhatsApp chat under what rural customers type, in their
languages. Each test is one defect the review proved, failing on the code it was found in;
its docstring says what the customer saw and what should happen. Dialog-level tests use
the fake ports of tests/test_dialog.py with the real India Post directory; the rest go
through the signed webhooks and their drain job (tests/test_dialog_gaps.Chat,
tests/test_ivr.Caller)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters import pincode
from core.adapters.db import transaction
from core.adapters.models import Conversation, Person, Point
from core.dialog.booking import BOOKING_DIALOG
from core.dialog.engine import DialogState, UserInput, turn
from core.dialog.ports import PlaceResult
from core.services.conversation import _place
from tests.test_conversations import START
from tests.test_dialog import FakePorts, keys
from tests.test_dialog_gaps import Chat
from tests.test_ivr import Caller, operator_takes, phone, prompts  # noqa: F401  (fixtures)

# --- 1. a village whose name is one of the chat's words ---------------------------------


class Directory(FakePorts):
    """The real India Post offices of a pincode, all served."""

    def offices(self, text: str) -> PlaceResult:
        return PlaceResult("list", offices=[_place(o) for o in pincode.post_offices(text)
                                            if o.lat is not None])


@pytest.mark.parametrize("pin,village", [
    ("362220", "Char"),  # Junagadh: "char" is 4 in Hindi, Bengali, Marathi, Gujarati
    ("263159", "Don"),  # Nainital: "don" is 2 in Marathi
    ("700140", "Bangla"),  # South 24 Parganas: the name of the language Bengali
    ("635602", "Pachal"),  # Tirupathur: "pachal" is Gujarati for "back"
    ("147006", "Lang"),  # Patiala: short for "language"
])
def test_a_village_typed_as_the_list_shows_it_is_that_village(pin: str, village: str) -> None:
    """The village list offers "7. Char" (and the chat takes a village typed by its name:
    "Rampur" picks Rampur). A customer who types "Char" gets "Balagam", option 4, with no
    word said, and the parcel is picked up in the wrong village; "Don" picks option 2;
    "Bangla" switches the chat to Bengali and shows the list again; "Pachal" goes back to
    the pincode question; "Lang" opens the language list. A name typed exactly as one of
    the listed villages should pick that village before it is read as a number word, a
    command or a language's name."""
    state, ports = DialogState("pickup"), Directory()
    turn(BOOKING_DIALOG, state, UserInput(text=pin), ports, "en")
    assert state.step == "pickup_office"
    shown = [o["name"] for o in state.data["offices"][:8]]
    assert village in shown, shown  # on the list's first page, as typed
    outs = turn(BOOKING_DIALOG, state, UserInput(text=village), ports, "en")
    picked = state.slots.get("pickup", {}).get("name")
    assert (picked, ports.language) == (village, None), (
        f"typed {village!r}: picked {picked!r}, language {ports.language!r}, "
        f"step {state.step!r}, said {keys(outs)}")


def _served(pin: str, village: str) -> None:
    """A Point at ``village``: its pincode's villages are in the service area."""
    office = next(o for o in pincode.post_offices(pin) if o.name == village)
    with transaction() as s:
        s.add(Point(name=village, lat=office.lat, lng=office.lng, pincode=pin, active=True))


@pytest.mark.parametrize("pin,village,phone_number", [
    ("344033", "Band", "+919812377002"),  # Barmer: "band" is Hindi's STOP word
    ("362220", "Char", "+919812377003"),
])
def test_a_village_typed_on_whatsapp_is_that_village(client, pin: str, village: str,
                                                     phone_number: str) -> None:
    """On WhatsApp the list reads "3. Band". The customer types "Band", her village: the
    chat answers "OK, we will not send you WhatsApp messages any more" and marks her opted
    out (her payment link and booking news then go by SMS only, until she finds START);
    the village is not taken. "Char" silently books from Balagam. The village she typed
    should be taken, and nothing else changed."""
    clock.freeze(START)
    _served(pin, village)
    chat = Chat(client, phone_number)
    for body in ("hi", "2", "1"):  # English, send a parcel
        chat.send(body)
    listed = chat.send(pin)
    assert f". {village}\n" in listed + "\n", listed
    reply = chat.send(village)
    with transaction() as s:
        opted_out = s.scalar(select(Person.opted_out).where(Person.phone == phone_number))
        state = s.scalar(select(Conversation.state).where(
            Conversation.contact == phone_number.lstrip("+")))
    picked = (state.get("slots") or {}).get("pickup", {}).get("name")
    assert not opted_out, f"typing her village {village!r} stopped her messages: {reply!r}"
    assert (chat.step(), picked) == ("pickup_landmark", village), reply


# --- 2. after a call with our team, WhatsApp does not answer at all ---------------------

@pytest.mark.parametrize("dial_status", ["completed", "no-answer"])
def test_a_whatsapp_message_after_a_call_to_our_team_is_answered(
        client, phone: Caller, dial_status: str) -> None:  # noqa: F811
    """A customer calls, presses 3 and talks to an operator (or nobody is free and she is
    promised a call back). The call's request stays open until ops close it (or the idle
    sweep, 12 of the team's hours later). Meanwhile she writes on WhatsApp, "नमस्ते" then
    "1", to book a parcel: both are filed on the call's request and she gets no answer at
    all, not even a first one, and nothing tells her that "0" gets the bot. She never
    heard from an operator on WhatsApp, so nothing there is an answer to one: the chat
    should answer her (or at least say her message is kept for our team and how to get
    the menu)."""
    phone.call()
    phone.press("1")  # Hindi
    heard = phone.press("3")  # talk to a person
    dial = ET.fromstring(heard.xml).find("Dial")
    assert dial is not None, heard.xml
    if dial_status == "completed":  # an operator took the call (pressed 1 when it rang)
        operator_takes(phone.client, heard.xml)
    phone._post(dial.get("action", ""), phone.form(DialCallStatus=dial_status,
                                                    DialCallDuration="60"))
    chat = Chat(client, phone.phone)
    replies = [chat.send("नमस्ते"), chat.send("1")]
    assert any(reply.strip() for reply in replies), (
        f"no answer on WhatsApp after a call ({dial_status}); chat at {chat.step()!r}")


# --- 3. the language list does not take a language named in a few words -----------------

@pytest.mark.parametrize("said,lang", [("Tamil please", "ta"), ("मराठी में", "mr"),
                                       ("in English", "en"), ("বাংলা বলুন", "bn")])
def test_a_language_named_in_a_few_words_at_the_language_list_is_taken(
        client, said: str, lang: str) -> None:
    """A new customer's first message "hello" gets the language list ("choose your
    language"). She answers "Tamil please" (or "मराठी में", "in English", "বাংলা বলুন")
    and is told, in Hindi, "Sorry, I did not understand. Send one of these numbers", and
    after three such answers is offered a person; the very same words as her first
    message would have been read (language_mentioned). The language she names should be
    taken, and the chat go on in it."""
    clock.freeze(START)
    phone_number = "+919812377005"
    chat = Chat(client, phone_number)
    chat.send("hello")
    assert chat.step() == "language"
    reply = chat.send(said)
    with transaction() as s:
        chosen = s.scalar(select(Person.preferred_language).where(Person.phone == phone_number))
    assert chosen == lang, f"{said!r} at the language list: {reply!r}"
    assert i18n.t("lang.saved", lang, language=i18n.LANGUAGE_NAMES[lang]) in reply, reply


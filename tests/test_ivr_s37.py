"""Session 37's IVR defects: wrong keys at the offer of a person looped to the call's
turn limit; Twilio's retry of the <Dial> action, after an operator took the caller,
promised a call back; "#" alone at a one-key question was heard as silence."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from sqlalchemy import func, select

from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff, HandoffMessage
from core.adapters.models import Conversation, OutboxMessage
from core.config import get_settings
from core.dialog.engine import MAX_MISSES
from core.services import ivr
from core.services.handoff import reply_minutes
from tests.conftest import post_twilio
from tests.test_ivr import (  # noqa: F401
    Caller,
    Heard,
    operator_takes,
    phone,
    prompts,
    step_of,
    t,
)

pytestmark = pytest.mark.db


# --- 1. wrong keys at "talk to a person?" ------------------------------------------------

def offered_a_person(phone: Caller) -> Heard:  # noqa: F811
    phone.call()
    phone.press("1")  # Hindi: the menu
    for key in ("7", "8", "9"):  # three wrong keys: a person is offered
        heard = phone.press(key)
    assert t("ivr.offer.ask") in heard.text and heard.gather is not None
    return heard


def test_wrong_keys_at_the_offer_of_a_person_end_the_call(phone: Caller) -> None:  # noqa: F811
    """Each wrong key there was "that key is not one of the choices" and the offer again,
    for the call's 37 turns left; they now end the call after MAX_MISSES, politely."""
    offered_a_person(phone)
    for key in ("7", "*", "5"):  # two wrong keys (a repeat, *, is no miss)
        heard = phone.press(key)
        assert heard.gather is not None and t("ivr.offer.ask") in heard.text, heard.text
    heard = phone.press("8")  # the third
    assert heard.gather is None and heard.hangup, heard.xml
    assert t("ivr.wrong_key") in heard.text and t("ivr.no_answer") in heard.text
    assert t("ivr.offer.ask") not in heard.text
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(Handoff)) == 0  # nobody asked
        conv = s.scalar(select(Conversation).where(Conversation.channel == "voice"))
        assert conv is not None and "call" not in (conv.state or {})  # the call is closed


def test_wrong_keys_then_a_right_one_at_the_offer_still_puts_through(
        phone: Caller) -> None:  # noqa: F811
    offered_a_person(phone)
    for key in ("7", "8")[:MAX_MISSES - 1]:
        heard = phone.press(key)
        assert t("ivr.wrong_key") in heard.text and heard.gather is not None
    heard = phone.press("1")
    assert heard.dial == get_settings().ops_phone, heard.xml


def test_a_booking_left_at_the_offer_by_wrong_keys_is_offered_next_call(
        phone: Caller) -> None:  # noqa: F811
    phone.call()
    phone.press("1")  # Hindi
    phone.press("1")  # book
    phone.press("845438#")
    phone.press("2")  # Bettiah
    phone.press("1")  # right: now the drop's pincode
    for key in ("1#", "2#", "3#"):  # no pincode, three times: a person is offered
        heard = phone.press(key)
    assert t("ivr.offer.ask") in heard.text, heard.text
    for _ in range(MAX_MISSES):
        heard = phone.press("9")
    assert heard.gather is None and t("ivr.no_answer") in heard.text
    phone.hang_up()
    heard = phone.call()
    assert step_of(phone.phone) == "resume", heard.text  # the draft is kept


# --- 2. Twilio's retry of the <Dial> action -----------------------------------------------

def dial_of(heard: Heard) -> ET.Element:
    dial = ET.fromstring(heard.xml).find("Dial")
    assert dial is not None, heard.xml
    return dial


def put_through(phone: Caller) -> ET.Element:  # noqa: F811
    phone.call()
    phone.press("1")
    heard = phone.press("3")  # talk to a person
    assert heard.dial == get_settings().ops_phone, heard.xml
    return dial_of(heard)


def dial_ended(phone: Caller, dial: ET.Element, status: str = "completed") -> Heard:  # noqa: F811
    action = dial.get("action", "").removeprefix(get_settings().public_base_url)
    r = post_twilio(phone.client, action, phone.form(DialCallStatus=status,
                                                     DialCallSid="CAopsleg0001",
                                                     DialCallDuration="95"))
    assert r.status_code == 200, r.get_data(as_text=True)
    return Heard.parse(r.get_data(as_text=True))


def effects() -> tuple[list[tuple[str, str, str | None]], int, int]:
    """The handoffs, their messages and the outbox: what a dial's end could change."""
    with transaction() as s:
        handoffs = [(h.reason, h.status, h.operator)
                    for h in s.scalars(select(Handoff).order_by(Handoff.id))]
        return (handoffs,
                s.scalar(select(func.count()).select_from(HandoffMessage)) or 0,
                s.scalar(select(func.count()).select_from(OutboxMessage)) or 0)


def as_response(dial: ET.Element) -> str:
    return f"<Response>{ET.tostring(dial).decode()}</Response>"


def test_a_retried_dial_action_after_an_operator_took_the_call_says_goodbye_again(
        phone: Caller) -> None:  # noqa: F811
    """The operator took the caller and hung up first; Twilio sent the <Dial>'s action
    again (our first answer late or lost). The retry read the dial as not taken (the
    first had dropped it) and told the caller nobody was free and we would call back."""
    dial = put_through(phone)
    operator_takes(phone.client, as_response(dial))
    first = dial_ended(phone, dial)
    assert first.text == t("voice.goodbye") and first.hangup
    after_first = effects()
    assert after_first[0] == [("asked", "waiting", ivr.ANSWERED_BY_PHONE)]
    again = dial_ended(phone, dial)
    assert again.xml == first.xml
    assert t("ivr.person.busy", minutes=reply_minutes()) not in again.text
    assert effects() == after_first  # acts once
    # The call's end (its status callback) forgets the dial; a take now takes nobody.
    phone.hang_up()
    with transaction() as s:
        conv = s.scalar(select(Conversation).where(Conversation.channel == "voice"))
        assert conv is not None and "dial" not in (conv.state or {})


@pytest.mark.parametrize("key", [None, "2"])
def test_a_retried_dial_action_nobody_took_promises_the_same_call_back(
        phone: Caller, key: str | None) -> None:  # noqa: F811
    """A voicemail answered (nothing pressed) or another key: the call back is promised
    again, and a take pressed after the dial ended takes nobody."""
    dial = put_through(phone)
    if key is not None:
        operator_takes(phone.client, as_response(dial), key)
    first = dial_ended(phone, dial)
    assert t("ivr.person.busy", minutes=reply_minutes()) in first.text, first.text
    after_first = effects()
    assert "<Hangup" in operator_takes(phone.client, as_response(dial))  # too late
    again = dial_ended(phone, dial)
    assert again.xml == first.xml
    assert effects() == after_first == ([("asked", "waiting", None)], 0, after_first[2])


# --- 3. "#" alone at a one-key question ----------------------------------------------------

def test_a_one_key_question_has_no_finishing_key(phone: Caller) -> None:  # noqa: F811
    """With finishOnKey "#", a "#" pressed alone ended the Gather with nothing: Twilio
    posted empty Digits, and the caller heard "no key was pressed" and had a silence
    counted. finishOnKey "" sends the "#" as the key pressed."""
    phone.call()
    heard = phone.press("1")  # the menu: one key
    assert heard.gather is not None and heard.gather.get("numDigits") == "1"
    assert heard.gather.get("finishOnKey") == "", heard.gather
    heard = phone.press("1")  # book: a pincode, digits ended with '#'
    assert heard.gather is not None and "numDigits" not in heard.gather
    assert heard.gather.get("finishOnKey") == "#", heard.gather


def test_hash_alone_at_a_one_key_question_is_a_wrong_key(phone: Caller) -> None:  # noqa: F811
    phone.call()
    phone.press("1")  # the menu
    assert phone.action is not None
    for _ in range(MAX_MISSES - 1):
        # What Twilio posts for "#" pressed at a Gather with no finishing key.
        heard = phone._post(phone.action, phone.form(Digits="#"))
        assert t("ivr.wrong_key") in heard.text and t("ivr.menu") in heard.text, heard.text
        assert t("ivr.silence") not in heard.text
    heard = phone._post(phone.action, phone.form(Digits="#"))
    assert t("ivr.offer.ask") in heard.text, heard.text  # misses, not silences


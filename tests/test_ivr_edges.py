"""Calls at their edges, each once wrong: two live calls from one number, a Gather after
the call's status callback, a caller's old request for a person closed during a later
call, and a caller asking again for a person."""

from __future__ import annotations

from sqlalchemy import func, select

from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff
from core.adapters.models import Booking, Conversation, Person
from core.services import handoff
from tests.test_ivr import Caller, operator_takes, phone, prompts, step_of, t  # noqa: F401


def _voice_state(number: str) -> tuple[str, dict]:
    with transaction() as s:
        conv = s.scalar(select(Conversation).where(Conversation.channel == "voice",
                                                   Conversation.contact == number))
        return conv.step, dict(conv.state or {})


def _to_confirm(c: Caller) -> None:
    """From the menu (Hindi) to the fare and "press 1 to book"."""
    c.press("1")  # book
    c.press("845438#")
    c.press("2")  # Bettiah
    c.press("1")
    c.press("845450#")
    c.press("7")  # Laxmipur
    c.press("1")
    c.press("9876543210#")
    c.press("1")
    c.press("1")  # bag
    c.press("1")  # up to 5 kg
    heard = c.press("2")  # standard
    assert "किराया" in heard.text and step_of(c.phone) == "confirm"


# --- two live calls from one number do not restart each other ----------------------

def test_a_second_live_call_from_the_same_number_does_not_make_both_loop(phone):  # noqa: F811
    with transaction() as s:
        s.add(Person(phone=phone.phone, role="customer", preferred_language="hi"))
    a, b = phone, Caller(phone.client, phone.phone)
    a.call("CAfirst00001")
    b.call("CAsecond0001")  # the line dropped, the caller called straight back
    # Each key of either call was taken as a new call (the greeting and the menu again,
    # closing the other), with no turn cap (turns reset): both looped. Now the older
    # call's keys end it, and the live call goes on.
    heard_a = a.press("2")
    assert a.action is None  # hung up with a goodbye: no greeting, no question
    assert t("ivr.welcome") not in heard_a.text and t("ivr.track.ask") not in heard_a.text
    heard_b = b.press("2")
    assert t("ivr.welcome") not in heard_b.text, heard_b.text
    assert t("ivr.track.ask") in heard_b.text, heard_b.text


# --- a Gather that arrives after the call's status callback --------------------------

def test_a_late_gather_after_the_status_callback_starts_no_phantom_call(phone):  # noqa: F811
    phone.call()
    phone.press("1")  # Hindi
    phone.press("1")  # book
    phone.press("845438#")
    phone.press("2")  # Bettiah: "that is right, press 1"
    assert step_of(phone.phone) == "pickup_check"
    action = phone.action
    phone.hang_up()  # the status callback is processed first ...
    step, state = _voice_state(phone.phone)
    assert "call" not in state and step == "pickup_check"
    phone.action = action
    phone.press("1")  # ... then the last Gather's request (first delivery, not a retry)
    step2, state2 = _voice_state(phone.phone)
    # The call is over: nothing starts. A new call used to be opened for the dead CallSid
    # (greeting, step "resume") and, its status callback long gone, never closed.
    assert "call" not in state2, state2.get("call")
    assert step2 == step


# --- ops closing a caller's old handoff mid-call leaves the live call where it is ---

def test_closing_a_handoff_during_a_later_call_does_not_hijack_its_keys(phone):  # noqa: F811
    phone.call()
    phone.press("1")  # Hindi
    heard = phone.press("3")  # a person: on the call-back list, dialled
    assert heard.dial
    phone.hang_up()
    phone.call()  # the caller calls again to book while the request is still open
    _to_confirm(phone)
    with transaction() as s:  # an operator (or the idle sweep) closes the old request
        hid = s.scalar(select(Handoff.id).where(Handoff.status == "waiting"))
        handoff.close(s, hid, "op:asha")
    heard = phone.press("1")  # "book it"
    with transaction() as s:
        booked = s.scalar(select(func.count()).select_from(Booking))
    # The close used to set the conversation's step to "menu" under the live call: "1"
    # was "send a parcel", the draft wiped and the caller asked for a pincode again.
    assert booked == 1, heard.text


def test_the_idle_sweep_closing_an_old_handoff_mid_call_does_not_hijack_its_keys(phone):  # noqa: F811
    from datetime import timedelta

    from core import clock

    phone.call()  # day 1, 10:00 India: asks for a person; nobody calls back
    phone.press("1")
    assert phone.press("3").dial
    phone.hang_up()
    start = clock.now()
    clock.freeze(start + timedelta(hours=22, minutes=55))  # day 2, 08:55: calls again
    phone.call()
    _to_confirm(phone)
    clock.freeze(start + timedelta(hours=23, minutes=5))  # 09:05: 12 h of the team's time
    assert handoff.expire_idle() == 1  # the sweep (every few minutes) closes the request
    heard = phone.press("1")  # "book it"
    with transaction() as s:
        booked = s.scalar(select(func.count()).select_from(Booking))
    assert booked == 1, heard.text



# --- a caller's second request for a person counts as a new one ---------------------

def _dial_unanswered(c: Caller, heard) -> None:
    import xml.etree.ElementTree as ET

    dial = ET.fromstring(heard.xml).find("Dial")
    assert dial is not None, heard.xml
    c._post(dial.get("action", ""), c.form(DialCallStatus="no-answer"))


def test_asking_again_by_phone_keeps_the_call_back_request_open(phone):  # noqa: F811
    from datetime import timedelta

    from core import clock

    start = clock.now()  # day 1, 10:00 India (the team works round the clock in tests)
    phone.call()
    phone.press("1")
    _dial_unanswered(phone, phone.press("3"))  # a person; nobody answers
    phone.hang_up()
    clock.freeze(start + timedelta(hours=14))  # midnight: calls and asks again
    phone.call()
    heard = phone.press("3")
    _dial_unanswered(phone, heard)  # "we will call you back within 15 minutes"
    phone.hang_up()
    clock.freeze(start + timedelta(hours=23, minutes=5))  # day 2, 09:05
    # The midnight request has waited 9 h, not the 12 h the sweep waits: it used to be
    # closed with "nobody could reply in time", counted from the 10:00 one.
    assert handoff.expire_idle() == 0
    with transaction() as s:
        assert s.scalar(select(Handoff.status)) == "waiting"


def test_a_new_unanswered_request_is_not_marked_answered_by_an_old_call(phone):  # noqa: F811
    import xml.etree.ElementTree as ET

    phone.call()
    phone.press("1")
    heard = phone.press("3")
    dial = ET.fromstring(heard.xml).find("Dial")
    operator_takes(phone.client, heard.xml)  # the team's phone answered, and pressed 1
    phone._post(dial.get("action", ""), phone.form(DialCallStatus="completed"))  # answered
    phone.hang_up()  # ops talked to them and left the request open (a call back promised)
    phone.call()  # later: asks for a person again, and this time nobody answers
    _dial_unanswered(phone, phone.press("3"))
    with transaction() as s:
        operator = s.scalar(select(Handoff.operator).where(Handoff.status == "waiting"))
    # The caller was just told "we will call you back within 15 minutes"; the list still
    # said an operator took it by phone, and the idle close would say "we finished helping".
    assert operator is None

"""Hand-off fixes after session 35's review: the operator whose person went back to the
queue is told; one alert per wait (a call taken by phone too); a bare "0" answering an
operator reaches them; asking again alerts anew; a rating question owed during a hand-off
is asked after it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.api_models import RatingAsk
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff, HandoffMessage
from core.adapters.models import Booking, Conversation, OutboxMessage, Person
from core.services import handoff, notify, rating
from tests.test_api import sign_in
from tests.test_handoff_review26 import DAYTIME, daytime, say_wa  # noqa: F401
from tests.test_handoff_s35 import (
    CUST,
    OPS_A,
    OPS_B,
    english_chat_waiting,
    operator_of,
    ops_alerts,
    reply,
)

pytestmark = pytest.mark.db

WAIT = timedelta(minutes=handoff.DEFAULT_REPLY_MINUTES)


def at(minutes: float) -> None:
    clock.freeze(DAYTIME + timedelta(minutes=minutes))


def sms_to(phone: str, like: str) -> list[str]:
    """The bodies of the SMS queued to ``phone`` whose dedupe key is like ``like``."""
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.channel == "sms", OutboxMessage.to_addr == phone,
            OutboxMessage.dedupe_key.like(like)).order_by(OutboxMessage.id)))


def alert_keys(hid: int) -> list[str]:
    """The ops alerts about handoff ``hid``, one per alert (each goes to every operator's
    phone, its key ending in the phone)."""
    return sorted({key.rsplit("-+", 1)[0] for key in ops_alerts(hid)})


def in_messages(hid: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(HandoffMessage.body).where(
            HandoffMessage.handoff_id == hid, HandoffMessage.direction == "in")
            .order_by(HandoffMessage.id)))


def status_of(hid: int) -> str:
    with transaction() as s:
        return s.get(Handoff, hid).status


def a_call_waiting(phone: str = CUST) -> int:
    """The chat's customer calls and asks for a person (as the IVR's "press 3" does)."""
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == phone))
        conv = Conversation(channel="voice", contact=phone, person_id=person.id,
                            step="menu", state={}, misses=0, handoff=False,
                            last_inbound_at=clock.now())
        s.add(conv)
        s.flush()
        handoff.request(s, conv, "asked")
        s.flush()
        return s.scalar(select(Handoff.id).where(Handoff.conversation_id == conv.id))


def asks_again(hid: int) -> None:
    """She calls again and asks for a person once more (ivr: handoff.request)."""
    with transaction() as s:
        h = s.get(Handoff, hid)
        handoff.request(s, s.get(Conversation, h.conversation_id), "asked")


def taken_by_phone(hid: int) -> None:
    """An operator took her call at the operators' phone (ivr.dial_ended)."""
    with transaction() as s:
        s.get(Handoff, hid).operator = handoff.ANSWERED_BY_PHONE


# --- 1. the operator who had her is told she went back to the queue ---------------------


def test_the_operator_who_had_her_is_told_she_went_back_to_the_queue(
        client, live, daytime):  # noqa: F811
    hid = english_chat_waiting(client)
    a, _b = sign_in(client, OPS_A, role="ops"), sign_in(client, OPS_B, role="ops")
    assert reply(client, a, hid, "Which booking?").status_code == 200
    say_wa(client, "RC-1234, it never came", CUST)  # and A went home
    at(WAIT.total_seconds() / 60)
    assert handoff.alert_unanswered() == 1
    assert operator_of(hid) is None
    with transaction() as s:
        lang = notify.language_of(s.scalar(select(Person).where(Person.phone == OPS_A)))
    told = sms_to(OPS_A, f"handoff-{hid}-given-back-%")
    assert told == [i18n.t("handoff.ops_given_back", lang, ref=str(hid),
                           minutes=handoff.DEFAULT_REPLY_MINUTES)], told
    assert sms_to(OPS_B, f"handoff-{hid}-given-back-%") == []  # B had nobody
    assert sms_to(OPS_B, f"handoff-{hid}-ops-waiting%"), "every operator hears she waits"
    at(WAIT.total_seconds() / 60 + 5)
    handoff.alert_unanswered()
    assert len(sms_to(OPS_A, f"handoff-{hid}-given-back-%")) == 1  # once


def test_a_handoff_nobody_had_tells_no_operator_of_a_give_back(client, live, daytime):  # noqa: F811
    hid = english_chat_waiting(client)
    sign_in(client, OPS_A, role="ops")
    at(WAIT.total_seconds() / 60)
    assert handoff.alert_unanswered() == 1
    assert sms_to(OPS_A, f"handoff-{hid}-given-back-%") == []


# --- 2. one alert per wait, a call taken by phone too --------------------------------------


def test_a_call_taken_by_phone_alerts_once_per_wait_not_per_message(
        client, live, daytime):  # noqa: F811
    """She called, an operator took the call at the operators' phone and promised to
    check; then she writes on WhatsApp three times, 20 minutes apart, and nobody of the
    team answers: ops hear once that she waits (the wait began with her first message),
    not once per message. An operator's answer ends the wait; her next message begins
    another, which alerts again."""
    for body in ("hi", "2"):  # hello, English
        say_wa(client, body, CUST)
    call = a_call_waiting()
    taken_by_phone(call)
    a = sign_in(client, OPS_A, role="ops")
    for minute, body in ((1, "any news?"), (21, "hello?"), (41, "please call me")):
        at(minute)
        say_wa(client, body, CUST)
        assert in_messages(call)[-1] == body
        at(minute + WAIT.total_seconds() / 60)  # each message waits the promised time
        handoff.alert_unanswered()
    at(70)
    handoff.alert_unanswered()
    assert len(alert_keys(call)) == 1, alert_keys(call)
    assert operator_of(call) == handoff.ANSWERED_BY_PHONE  # stays so: anyone may answer
    at(80)
    assert reply(client, a, call, "Ravi here: it comes today").status_code == 200
    at(85)
    say_wa(client, "what time?", CUST)
    at(85 + WAIT.total_seconds() / 60)
    assert handoff.alert_unanswered() == 1  # a new wait
    assert len(alert_keys(call)) == 2


def test_an_operators_handoff_alerts_once_per_wait(client, live, daytime):  # noqa: F811
    """A answered and went home; she writes twice: given back and alerted once (the
    wait began with her first message), not again for her second."""
    hid = english_chat_waiting(client)
    a = sign_in(client, OPS_A, role="ops")
    assert reply(client, a, hid, "Which booking?").status_code == 200
    say_wa(client, "RC-1234", CUST)
    at(10)
    say_wa(client, "hello?", CUST)
    at(WAIT.total_seconds() / 60)
    assert handoff.alert_unanswered() == 1  # 15 minutes after her first, unanswered
    assert operator_of(hid) is None
    at(40)
    say_wa(client, "anyone?", CUST)
    at(60)
    assert handoff.alert_unanswered() == 0  # the same wait: told already
    assert len(alert_keys(hid)) == 1


# --- 3. a bare "0" answering the operator ---------------------------------------------------


@pytest.mark.parametrize("zero", ["0", "०", " 0 "])
def test_a_bare_zero_answering_the_operator_reaches_them(client, live, daytime, zero):  # noqa: F811
    hid = english_chat_waiting(client)
    a = sign_in(client, OPS_A, role="ops")
    assert reply(client, a, hid, "How many parcels are still to come?").status_code == 200
    said = say_wa(client, zero, CUST)
    assert status_of(hid) == "waiting"
    assert in_messages(hid)[-1] == zero.strip()
    # She may have meant the menu (the hint said "Send 0 for the menu"): told once.
    assert said == i18n.t("bot.handoff.zero_kept", "en"), said
    assert say_wa(client, "0", CUST) == ""  # once per handoff: then the operator's
    assert in_messages(hid)[-1] == "0"
    # MENU, as she was told, leaves: the operator sees it.
    assert i18n.t("menu.main", "en") in say_wa(client, "MENU", CUST)
    assert status_of(hid) == "closed"
    assert in_messages(hid)[-1] == handoff.LEFT


def test_zero_before_the_team_wrote_leaves_for_the_menu_as_the_hint_says(
        client, live, daytime):  # noqa: F811
    hid = english_chat_waiting(client)
    assert i18n.t("menu.main", "en") in say_wa(client, "0", CUST)
    assert status_of(hid) == "closed"


@pytest.mark.parametrize("word", ["menu", "मेनू"])
def test_a_menu_word_leaves_a_handoff_the_operator_answered(client, live, daytime, word):  # noqa: F811
    hid = english_chat_waiting(client)
    a = sign_in(client, OPS_A, role="ops")
    assert reply(client, a, hid, "How many parcels?").status_code == 200
    assert i18n.t("menu.main", "en") in say_wa(client, word, CUST)
    assert status_of(hid) == "closed"


def test_a_bare_zero_answering_the_operator_of_her_call_on_whatsapp_reaches_them(
        client, live, daytime):  # noqa: F811
    for body in ("hi", "2"):  # hello, English
        say_wa(client, body, CUST)
    call = a_call_waiting()
    a = sign_in(client, OPS_A, role="ops")
    assert reply(client, a, call, "How many parcels?").status_code == 200
    with transaction() as s:  # the reply reached her on WhatsApp (she chats with us)
        assert s.scalar(select(OutboxMessage.channel).where(
            OutboxMessage.body == "How many parcels?")) == "whatsapp"
    assert say_wa(client, "0", CUST) == i18n.t("bot.handoff.zero_kept", "en")
    assert status_of(call) == "waiting" and in_messages(call)[-1] == "0"
    assert i18n.t("menu.main", "en") in say_wa(client, "MENU", CUST)
    assert status_of(call) == "closed"


# --- 4. asking again alerts anew --------------------------------------------------------------


def test_asking_again_after_the_alert_alerts_again(client, live, daytime):  # noqa: F811
    """Nobody took her call: ops heard at 15 minutes. At 30 she calls again and asks
    once more ("[asked again]"): a new wait, alerted 15 minutes later as a new message
    would be."""
    for body in ("hi", "2"):
        say_wa(client, body, CUST)
    call = a_call_waiting()
    sign_in(client, OPS_A, role="ops")
    at(WAIT.total_seconds() / 60)
    assert handoff.alert_unanswered() == 1
    at(30)
    asks_again(call)
    assert in_messages(call)[-1].startswith(handoff.ASKED_AGAIN)
    at(44)
    assert handoff.alert_unanswered() == 0  # not due yet
    at(45)
    assert handoff.alert_unanswered() == 1
    assert len(alert_keys(call)) == 2
    at(60)
    assert handoff.alert_unanswered() == 0


def test_asking_again_after_a_call_taken_by_phone_alerts_again(client, live, daytime):  # noqa: F811
    for body in ("hi", "2"):
        say_wa(client, body, CUST)
    call = a_call_waiting()
    sign_in(client, OPS_A, role="ops")
    at(WAIT.total_seconds() / 60)
    assert handoff.alert_unanswered() == 1  # nobody took it in time
    at(20)
    taken_by_phone(call)  # then someone did, and promised a call back
    at(40)
    asks_again(call)  # none came: she calls again
    at(40 + WAIT.total_seconds() / 60)
    assert handoff.alert_unanswered() == 1
    assert len(alert_keys(call)) == 2


def test_asking_again_within_the_wait_is_the_same_wait(client, live, daytime):  # noqa: F811
    for body in ("hi", "2"):
        say_wa(client, body, CUST)
    call = a_call_waiting()
    sign_in(client, OPS_A, role="ops")
    at(5)
    asks_again(call)  # impatient, before the reply was due
    at(WAIT.total_seconds() / 60)
    assert handoff.alert_unanswered() == 1
    at(5 + WAIT.total_seconds() / 60)
    assert handoff.alert_unanswered() == 0
    assert len(alert_keys(call)) == 1


# --- 5. a rating question owed during a hand-off --------------------------------------------


@pytest.mark.parametrize("how", ["closed", "left"])
def test_a_rating_owed_during_a_handoff_is_asked_after_it(client, live, how):  # noqa: ANN001
    from tests.conftest import send_whatsapp
    from tests.test_whatsapp_rating import CUSTOMER, START, delivered_booking, form, step

    def wa(body: str) -> str:
        return send_whatsapp(client, form(body))

    clock.freeze(START - rating.QUIET - timedelta(minutes=5))
    with transaction() as s:
        s.add(Person(phone=CUSTOMER, role="customer", preferred_language="en"))
    wa("hi")
    wa("4")  # talk to a person
    clock.freeze(START)
    with transaction() as s:
        hid = s.scalar(select(Handoff.id).where(Handoff.status == "waiting"))
    bid, ref, _ = delivered_booking()  # delivered while she waits for a person
    with transaction() as s:  # as dispatch does on the last drop
        assert not rating.ask_after_delivery(s, s.get(Booking, bid))
    with transaction() as s:
        owed = s.get(RatingAsk, bid)
        assert owed is not None, "the question was dropped"
    clock.freeze(START + timedelta(minutes=3))
    if how == "closed":
        with transaction() as s:
            handoff.close(s, hid, "ops:1")
    else:
        assert i18n.t("menu.main", "en") in wa("menu")
    with transaction() as s:
        owed = s.get(RatingAsk, bid)
        assert owed is not None
        # Tried once the chat has been quiet a while, not hours away.
        assert owed.due_at <= clock.now() + rating.QUIET + timedelta(seconds=1)
        tries = owed.tries
    clock.freeze(START + timedelta(minutes=3) + rating.QUIET + timedelta(seconds=2))
    assert rating.ask_later(bid, tries) == "asked"
    assert step() == "rate"
    with transaction() as s:
        assert s.scalar(select(OutboxMessage.body).where(
            OutboxMessage.dedupe_key == f"rate-ask-{bid}")) == i18n.t(
                "bot.rate.ask", "en", ref=ref)
    clock.freeze(None)

"""Gaps found in review of the WhatsApp booking dialog, each driven through the real,
signed webhook and its drain job (or the pure dialog where no database is involved)."""

from __future__ import annotations

from itertools import count

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, Conversation, Leg
from core.domain.booking import BookingStatus
from core.services import payments
from tests.conftest import read_first, send_whatsapp

_sid = count(1)


class Chat:
    """One customer on WhatsApp: send a message, read the bot's reply and dialog step."""

    def __init__(self, client, phone: str) -> None:  # noqa: ANN001
        self.client, self.phone = client, phone

    def send(self, body: str = "", **extra: str) -> str:
        form = {"MessageSid": f"SMgap{next(_sid):06d}", "AccountSid": "ACgap",
                "From": f"whatsapp:{self.phone}", "To": "whatsapp:+14155238886",
                "WaId": self.phone.lstrip("+"), "ProfileName": "Sita", "NumMedia": "0",
                "Body": body, **extra}
        return send_whatsapp(self.client, form)

    def step(self) -> str | None:
        with transaction() as s:
            return s.scalar(select(Conversation.step).where(
                Conversation.contact == self.phone.lstrip("+")))


# --- cancelling: what a "yes" does is what the question said --------------------------

CUSTOMER = "+919812340001"  # the payment helpers' customer (English)


def test_a_cancel_whose_fee_changed_after_the_question_asks_again(client, live,
                                                                 monkeypatch) -> None:
    from tests.test_payments_support import advance, booking, new_partner, paid_booking

    bid = paid_booking(CUSTOMER)
    ref, total = booking(bid).reference, booking(bid).total_paise
    chat = Chat(client, CUSTOMER)
    chat.send("hi")
    chat.send("3")
    asked = chat.send("1")
    assert i18n.t("bot.cancel.refund", "en", ref=ref, refund_paise=total) in asked
    advance(bid, new_partner(), to="assigned")  # a rider takes the job meanwhile

    read_first(monkeypatch)
    again = chat.send("1")
    assert booking(bid).status == BookingStatus.ASSIGNED.value, again
    assert chat.step() == "cancel_confirm"
    with transaction() as s:
        quote = payments.cancellation_preview(s, s.get(Booking, bid))
    assert quote.fee_paise > 0
    assert i18n.t("bot.cancel.fee", "en", ref=ref, refund_paise=quote.refund_paise,
                  fee_paise=quote.fee_paise) in again, again
    read_first(monkeypatch)
    done = chat.send("1")  # yes, knowing the fee now
    assert booking(bid).status == BookingStatus.CANCELLED.value, done
    assert ref in done and chat.step() == "menu"


def test_a_booking_that_expired_during_the_question_is_said_closed(client, live) -> None:
    from sandbox import razorpay as emulator
    from tests.test_payments_support import booking, confirmed_booking, link_of, run

    bid = confirmed_booking(CUSTOMER)
    run()
    ref = booking(bid).reference
    chat = Chat(client, CUSTOMER)
    chat.send("hi")
    chat.send("3")
    assert i18n.t("bot.cancel.free", "en", ref=ref) in chat.send("1")
    emulator.expire_link(link_of(bid).gateway_id)
    run()
    assert booking(bid).status == BookingStatus.EXPIRED.value
    reply = chat.send("1")
    assert i18n.t("bot.cancel.not_allowed", "en", ref=ref) in reply, reply
    assert i18n.t("bot.cancel.picked_up", "en", ref=ref) not in reply, reply


def test_a_picked_up_parcel_is_said_picked_up(client, live) -> None:
    from core.domain.booking import Actor, LegStatus
    from core.services.booking import move_booking, move_leg
    from tests.test_payments_support import advance, booking, legs, new_partner, paid_booking

    bid = paid_booking(CUSTOMER)
    advance(bid, new_partner(), to="assigned")
    with transaction() as s:
        move_leg(s, s.get(Leg, legs(bid)[0].id), LegStatus.PICKED_UP, Actor.system(), "test")
        move_booking(s, s.get(Booking, bid), BookingStatus.PICKED_UP, Actor.system(), "test")
    ref = booking(bid).reference
    chat = Chat(client, CUSTOMER)
    chat.send("hi")
    chat.send("3")
    reply = chat.send("1")
    assert i18n.t("bot.cancel.picked_up", "en", ref=ref) in reply, reply
    assert booking(bid).status == BookingStatus.PICKED_UP.value


@pytest.mark.parametrize("status,reason,key", [
    ("picked_up", "already_picked_up", "bot.cancel.picked_up"),
    ("in_transit", "already_picked_up", "bot.cancel.picked_up"),
    ("delivered", "already_picked_up", "bot.cancel.not_allowed"),
    ("cancelled", "already_closed", "bot.cancel.not_allowed"),
    ("expired", "already_closed", "bot.cancel.not_allowed"),
])
def test_why_a_booking_cannot_be_cancelled_follows_its_state(status, reason, key) -> None:
    from core.dialog.booking import BOOKING_DIALOG
    from core.dialog.engine import DialogState, Say, UserInput, turn

    class Ports:
        def cancel_preview(self, ref: str) -> dict:
            return {"allowed": False, "refund_paise": 0, "fee_paise": 0,
                    "reason_code": reason, "status": status}

    state = DialogState("cancel_pick", {"scratch": {"refs": ["12345678"]}})
    outs = turn(BOOKING_DIALOG, state, UserInput(text="1"), Ports(), "en")
    assert [o.key for o in outs if isinstance(o, Say)][0] == key
    assert state.step == "menu"


# --- waiting for a person: nothing the customer sends is lost -------------------------

VOICE_URL = "https://api.twilio.com/2010-04-01/Accounts/ACx/Messages/MMv/Media/ME1"
PHOTO_URL = "https://api.twilio.com/2010-04-01/Accounts/ACx/Messages/MMp/Media/ME2"


def test_voice_notes_photos_and_pins_sent_while_waiting_reach_the_operator(client) -> None:
    from core.adapters.dialog_models import HandoffMessage
    from core.services import handoff
    from core.services.seed import seed_demo

    seed_demo()
    chat = Chat(client, "+919812377101")
    chat.send("hi")
    chat.send("2")
    assert "A person from our team will reply" in chat.send("4")
    replies = [
        chat.send("", NumMedia="1", MediaContentType0="audio/ogg", MediaUrl0=VOICE_URL),
        chat.send("", Latitude="26.8927", Longitude="84.48813"),
        chat.send("", Latitude="26.80228", Longitude="84.51522", Label="Bettiah HO",
                  Address="Station Road, Bettiah"),
        chat.send("my parcel", NumMedia="1", MediaContentType0="image/jpeg",
                  MediaUrl0=PHOTO_URL),
    ]
    assert replies == ["", "", "", ""]  # the bot stays quiet while a person has it
    with transaction() as s:
        (waiting,) = handoff.waiting_list(s)
        bodies = list(s.scalars(select(HandoffMessage.body).where(
            HandoffMessage.handoff_id == waiting.id).order_by(HandoffMessage.id)))
    assert bodies == [f"[voice note] {VOICE_URL}", "[location] 26.89270,84.48813",
                      "[location] 26.80228,84.51522 Bettiah HO, Station Road, Bettiah",
                      f"my parcel\n[photo] {PHOTO_URL}"]


# --- offers: "No" goes back to where the customer was ---------------------------------


def _play(state, *inputs):  # noqa: ANN001, ANN002
    from core.dialog.booking import BOOKING_DIALOG
    from core.dialog.engine import UserInput, turn
    from tests.test_dialog import FakePorts

    ports, outs = FakePorts(), []
    for inp in inputs:
        inp = inp if isinstance(inp, UserInput) else UserInput(text=inp)
        outs = turn(BOOKING_DIALOG, state, inp, ports, "en")
    return outs


def test_two_voice_notes_then_no_goes_back_to_the_question() -> None:
    from core.dialog.engine import DialogState, UserInput

    voice = UserInput(media="voice")
    state = DialogState("pickup")
    _play(state, voice, voice)
    assert state.step == "voice_callback"
    _play(state, "2")  # No, I will type
    assert state.step == "pickup"


def test_misses_on_the_call_back_question_then_no_goes_back_to_the_question() -> None:
    from core.dialog.engine import DialogState, UserInput

    state = DialogState("recipient_name", {"slots": {"pickup": {}, "drop": {}}})
    _play(state, UserInput(media="voice"), "x", "x", "x")
    assert state.step == "offer_person"
    _play(state, "2")  # No, I will try again
    assert state.step == "recipient_name"


# --- a day away ------------------------------------------------------------------------


def test_a_language_picked_a_day_after_the_question_is_taken(client) -> None:
    from datetime import timedelta

    from core import clock
    from core.services.seed import seed_demo

    seed_demo()
    chat = Chat(client, "+919812377201")
    now = clock.now()
    clock.freeze(now)
    try:
        assert "1. हिंदी" in chat.send("hi") and chat.step() == "language"
        clock.freeze(now + timedelta(hours=25))
        reply = chat.send("5")  # தமிழ்
    finally:
        clock.freeze(None)
    assert i18n.t("lang.saved", "ta", language="தமிழ்") in reply, reply
    assert i18n.t("menu.main", "ta").strip() in reply, reply


def test_a_greeting_is_never_taken_for_a_language(client) -> None:
    """"Hi", the commonest greeting, is also Hindi's code: at the language list it shows
    the list again, and a person who chose a language and left the list keeps it."""
    from datetime import timedelta

    from core import clock
    from core.adapters.models import Person

    def saved(phone: str) -> str | None:
        with transaction() as s:
            return s.scalar(select(Person.preferred_language).where(Person.phone == phone))

    new, tamil = Chat(client, "+919812377202"), Chat(client, "+919812377203")
    now = clock.now()
    clock.freeze(now)
    try:
        new.send("hi")
        assert "1. हिंदी" in new.send("Hi") and saved(new.phone) is None
        tamil.send("hi")
        tamil.send("5")  # தமிழ்
        tamil.send("language")  # opens the list, then leaves it for the day
        clock.freeze(now + timedelta(hours=25))
        reply = tamil.send("Hi")
    finally:
        clock.freeze(None)
    assert saved(tamil.phone) == "ta", reply
    assert i18n.t("menu.main", "ta").strip() in reply, reply


# --- typed input as people type it ----------------------------------------------------


def test_a_wrong_answer_to_the_landmark_question_says_what_is_wanted() -> None:
    from core.dialog.engine import DialogState, Say, UserInput
    from tests.test_dialog import PLACE

    for wrong in (UserInput(latitude=26.89, longitude=84.48), UserInput(text="7")):
        state = DialogState("pickup_landmark", {"slots": {"pickup": dict(PLACE)}})
        outs = _play(state, wrong)
        said = [o.key for o in outs if isinstance(o, Say)]
        assert said == ["bot.place.landmark_bad", "bot.pickup.landmark"], said
        assert state.step == "pickup_landmark"


def test_a_pincode_with_a_dash_or_a_dot_is_looked_up_as_its_digits() -> None:
    from core.dialog.booking import BOOKING_DIALOG
    from core.dialog.engine import DialogState, UserInput, turn
    from tests.test_dialog import FakePorts

    class Ports(FakePorts):
        def offices(self, text: str):  # noqa: ANN201
            self.looked_up = text
            return super().offices(text)

    for typed in ("845-438", "845438.", "८४५ ४३८"):
        state, ports = DialogState("pickup"), Ports()
        turn(BOOKING_DIALOG, state, UserInput(text=typed), ports, "en")
        assert ports.looked_up == "845438" and state.step == "pickup_office", typed


def test_keycap_emoji_digits_are_numbers() -> None:
    from core.dialog import words
    from core.dialog.engine import DialogState

    assert words.number("2\ufe0f\u20e3") == 2 and words.command("0\ufe0f\u20e3") == "menu"
    state = DialogState("menu")
    _play(state, "1\ufe0f\u20e3")
    assert state.step == "pickup"


def test_a_long_run_of_digits_is_not_said_back_whole() -> None:
    from core.dialog.engine import DialogState, Say

    state = DialogState("track", {"scratch": {"refs": ["12345678"]}})
    outs = _play(state, "9" * 1590)
    (bad,) = [o for o in outs if isinstance(o, Say) and o.key == "bot.track.bad_ref"]
    assert bad.params["ref"] == "9" * 12 + "…"


@pytest.mark.parametrize("text", ["9" * 3000, ("word " * 700).strip(), "line\n" * 700])
def test_a_paragraph_over_the_whatsapp_limit_is_split(text: str) -> None:
    from bots.whatsapp_text import render
    from core.dialog.engine import Say

    messages = render([Say("bot.track.bad_ref", {"ref": text}), Say("bot.next_hint")], "en")
    assert len(messages) > 1 and all(len(m) <= 1600 for m in messages)
    assert "".join(messages).count(text[:4]) == text.count(text[:4])  # nothing lost
    assert messages[-1].endswith(i18n.t("bot.next_hint", "en"))


def test_stop_while_waiting_for_a_person_leaves_the_waiting_list(client) -> None:
    from core.adapters.dialog_models import Handoff
    from core.services import handoff
    from core.services.seed import seed_demo

    seed_demo()
    chat = Chat(client, "+919812377401")
    chat.send("hi")
    chat.send("2")
    assert "A person from our team will reply" in chat.send("4")
    assert i18n.t("bot.optout.stopped", "en") in chat.send("STOP")
    with transaction() as s:
        assert handoff.waiting_list(s) == []
        assert s.scalar(select(Handoff.status)) == "closed"
        assert s.scalar(select(Conversation.handoff)) is False
    assert "1. Send a parcel" in chat.send("START")


# --- "yes" books at the price the customer saw ----------------------------------------


def test_a_price_that_changed_after_the_confirmation_is_shown_again(client,
                                                                    monkeypatch) -> None:
    from core.adapters import surge
    from core.services.seed import seed_demo

    seed_demo()
    chat = Chat(client, "+919812377301")
    for body in ("hi", "2", "1", "413739", "2", "Near the Hanuman temple", "413720", "1",
                 "skip", "Sunita Patil", "98220 12345", "4", "1", "1", "no", "1"):
        chat.send(body)
    shown = chat.send("2")  # Normal: the confirmation with its total
    assert "Total: ₹" in shown and chat.step() == "confirm"
    surge.set_surge_bp("413739", 15_000)  # demand rises while they read it
    read_first(monkeypatch)
    again = chat.send("1")
    assert i18n.t("bot.confirm.new_price", "en") in again and "Total: ₹" in again
    assert chat.step() == "confirm"
    with transaction() as s:
        assert s.scalar(select(Booking)) is None  # nothing booked at a price not seen
    new_total = int(again.split("Total: ₹")[1].split()[0].replace(",", "")) * 100
    read_first(monkeypatch)
    done = chat.send("1")  # yes, to the new price
    assert "Booked!" in done
    with transaction() as s:
        assert s.scalar(select(Booking.total_paise)) == new_total

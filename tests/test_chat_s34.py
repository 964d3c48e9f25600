"""The customer's WhatsApp chat (s34, reviewer r1): a message sent twice answers no question
it came before (confirm, cancel_confirm); the speed question's help names only the options
shown, which may be typed back; "language" at the cancel questions comes back to them; a
pin at the menu starts a parcel from there; "Bhasha" is a receiver's name; a rating sent
twice is told it is saved, not shown the menu's help."""

from __future__ import annotations

from datetime import timedelta
from itertools import count

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import Booking
from core.adapters.redis_conn import redis_client
from core.services import conversation
from core.services.inbound import rate_counter
from tests.conftest import post_twilio, replies_to, run_jobs
from tests.test_chat_journey_review29 import (  # noqa: F401  (demo: a fixture)
    PICKUP_BETTIAH,
    REST,
    START,
    TO_PICKUP,
    Chat,
    demo,
    newest_ref,
    pay,
)
from tests.test_whatsapp_rating import CUSTOMER, ask, delivered_booking, stars_of, step, t, wa
from tests.test_whatsapp_rating import START as RATED_AT

pytestmark = pytest.mark.db
_sids = count(1)


def _form(chat: Chat, body: str) -> dict[str, str]:
    return {"MessageSid": f"SMh7x{next(_sids):06d}", "AccountSid": "ACh7",
            "From": f"whatsapp:{chat.phone}", "To": "whatsapp:+14155238886",
            "WaId": chat.phone.lstrip("+"), "ProfileName": chat.profile, "NumMedia": "0",
            "Body": body}


def _sent_twice(client, chat: Chat, body: str) -> list[str]:
    """The customer taps send twice on a slow line: both copies reach the webhook (1 s
    apart) before the drainer gets to the first; then the drainer runs."""
    at = clock.now()
    first, second = _form(chat, body), _form(chat, body)
    assert post_twilio(client, "/webhooks/whatsapp", first).status_code == 200
    clock.freeze(at + timedelta(seconds=1))
    assert post_twilio(client, "/webhooks/whatsapp", second).status_code == 200
    clock.freeze(at + timedelta(seconds=2))
    run_jobs(("inbound",))
    return ["\n".join(replies_to(f["MessageSid"])) for f in (first, second)]


def _status(ref: str) -> str:
    with transaction() as s:
        return s.scalar(select(Booking.status).where(Booking.reference == ref))


def _quiet(chat: Chat) -> None:
    redis_client().delete(rate_counter("whatsapp", chat.phone.lstrip("+")))


def _later(seconds: float) -> None:
    clock.freeze(clock.now() + timedelta(seconds=seconds))


def _paid_booking(chat: Chat) -> str:
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH)
    _quiet(chat)
    chat.play(*REST, "haan")
    run_jobs()
    ref = newest_ref(chat.phone)
    pay(ref)
    return ref


# --- 1. an answer written before its question is no answer ----------------------------

def test_a_pick_sent_twice_does_not_cancel_unseen(client, demo) -> None:  # noqa: F811
    chat = Chat(client, "+919812377501")
    ref = _paid_booking(chat)
    paid = _status(ref)
    clock.freeze(START + timedelta(minutes=30))
    _quiet(chat)
    chat.say("3")  # cancel: which booking?
    assert chat.step() == "cancel_pick"
    clock.freeze(START + timedelta(minutes=31))
    first, second = _sent_twice(client, chat, "1")  # "1": that booking, sent twice
    # The question "Cancel booking ...?" came after both were written: the second "1"
    # is no answer to it. Nothing is cancelled unseen; the question is asked again.
    assert _status(ref) == paid, (first, second)
    assert chat.step() == "cancel_confirm"
    assert i18n.t("bot.read_first", "hi") in second, second
    assert i18n.t("bot.cancel.yes", "hi") in second, second
    # Read, then answered a few seconds on: that "1" cancels.
    _later(5)
    chat.say("1")
    assert _status(ref) == "cancelled"


def test_a_speed_sent_twice_does_not_book_unseen(client, demo) -> None:  # noqa: F811
    chat = Chat(client, "+919812377502")
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH)
    _quiet(chat)
    chat.play(*REST[:-1])  # ... up to the speed question
    assert chat.step() == "speed"
    first, second = _sent_twice(client, chat, "1")  # "1. Fast", sent twice
    # The second "1" was written before the summary and its total were shown:
    # no booking, no payment link for a confirmation the customer never saw.
    assert newest_ref(chat.phone) is None, second
    assert chat.step() == "confirm"
    assert i18n.t("bot.read_first", "hi") in second, second


def test_a_quick_yes_typed_after_the_summary_came_books(client, demo) -> None:  # noqa: F811
    chat = Chat(client, "+919812377506")
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH)
    _quiet(chat)
    chat.play(*REST)  # the summary
    assert chat.step() == "confirm"
    _later(conversation.SEEN_GRACE.total_seconds() + 1)  # read, and "1" at once
    chat.say("1")
    assert newest_ref(chat.phone) is not None


def test_a_second_copy_just_after_the_question_is_no_answer_either(client, demo) -> None:  # noqa: F811
    """The drainer was quick: the first "1" was answered before the second copy came
    (a second on). Still within the grace: the summary could not have been read."""
    chat = Chat(client, "+919812377507")
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH)
    _quiet(chat)
    chat.play(*REST[:-1])
    chat.say("1")  # the speed: the summary
    assert chat.step() == "confirm"
    _later(1)
    reply = chat.say("1")  # its copy
    assert newest_ref(chat.phone) is None, reply
    assert chat.step() == "confirm"
    _later(5)
    chat.say("1")  # read, then yes
    assert newest_ref(chat.phone) is not None


# --- 2. the speed question's help, and its options typed back ---------------------------

def test_the_speed_help_names_only_the_options_shown(client) -> None:
    from tests.test_pricing_review26 import AMGHATTA, _chat_to_speed, _serve_sitamarhi

    _serve_sitamarhi()
    chat, asked = _chat_to_speed(client, (AMGHATTA[0], "1"))
    assert chat.step() == "speed" and "3." not in asked, asked  # Normal, Cheap: two
    helped = chat.send("help")
    assert i18n.t("bot.help.speed_normal_cheap", "en") in helped, helped
    assert i18n.t("bot.help.speed", "en") not in helped, helped
    reply = chat.send("cheap")  # the option typed back
    assert chat.step() == "confirm", reply
    assert i18n.t("tier.economy", "en", hours=48).split(" (")[0] in reply, reply


@pytest.mark.parametrize("typed", ["normal", "Normal", "नॉर्मल"])
def test_a_tier_typed_back_at_the_speed_question_is_taken(client, demo, typed) -> None:  # noqa: F811
    chat = Chat(client, f"+9198123775{10 + len(typed)}")
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH)
    _quiet(chat)
    chat.play(*REST[:-1])
    assert chat.step() == "speed"
    chat.say(typed)
    assert chat.step() == "confirm" and chat.slots()["tier"] == "standard"


# --- 3. the language changed at a cancel question -------------------------------------

def test_the_language_changed_at_the_cancel_question_asks_it_again(client, demo) -> None:  # noqa: F811
    chat = Chat(client, "+919812377503")
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH)
    _quiet(chat)
    chat.play(*REST, "haan")
    _quiet(chat)
    ref = newest_ref(chat.phone)
    chat.play("3", "1")  # cancel: that booking; "Cancel booking ...? 1. Yes 2. No"
    assert chat.step() == "cancel_confirm"
    chat.say("bhasha")  # a son takes the phone
    reply = chat.say("2")  # English
    question = i18n.t("bot.cancel.free", "en", ref=ref)
    assert question in reply, reply  # was: "OK ... English" and the main menu
    chat.say("1")  # "Yes, cancel it"
    assert _status(ref) == "cancelled", chat.step()  # was: the pickup question


def test_the_language_changed_at_the_cancel_list_shows_it_again(client, demo) -> None:  # noqa: F811
    chat = Chat(client, "+919812377508")
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH)
    _quiet(chat)
    chat.play(*REST, "haan")
    _quiet(chat)
    chat.say("3")
    assert chat.step() == "cancel_pick"
    chat.say("language")
    reply = chat.say("2")
    assert i18n.t("bot.cancel.ask", "en") in reply and chat.step() == "cancel_pick", reply


# --- 4. a pin at the menu -----------------------------------------------------------------

def test_a_location_shared_at_the_menu_is_no_miss(client, demo) -> None:  # noqa: F811
    chat = Chat(client, "+919812377504")
    chat.play("namaste", "1")  # Hindi; the menu
    form = _form(chat, "")
    form.update(Latitude="26.80228", Longitude="84.51522")  # her pin at Bettiah
    assert post_twilio(client, "/webhooks/whatsapp", form).status_code == 200
    run_jobs(("inbound",))
    reply = "\n".join(replies_to(form["MessageSid"]))
    assert i18n.t("bot.retry", "hi") not in reply, reply  # "did not understand": a miss
    assert chat.step() == "pickup_landmark", (chat.step(), reply)
    assert chat.slots()["pickup"]["pincode"] == "845438", chat.slots()


def test_a_location_at_the_menu_with_a_draft_asks_about_the_draft(client, demo) -> None:  # noqa: F811
    chat = Chat(client, "+919812377509")
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH)
    chat.say("0")  # the menu, the draft kept
    form = _form(chat, "")
    form.update(Latitude="26.80228", Longitude="84.51522")
    assert post_twilio(client, "/webhooks/whatsapp", form).status_code == 200
    run_jobs(("inbound",))
    assert chat.step() == "resume", "\n".join(replies_to(form["MessageSid"]))


# --- 5. a receiver named Bhasha -------------------------------------------------------------

def test_a_receiver_called_bhasha_is_a_name(client, demo) -> None:  # noqa: F811
    chat = Chat(client, "+919812377505")
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH)
    _quiet(chat)
    chat.play(*REST[:4])
    assert chat.step() == "recipient_name"
    reply = chat.say("Bhasha")
    assert chat.step() == "recipient_phone", reply
    assert chat.slots()["recipient_name"] == "Bhasha"


# --- 6. a rating sent twice -------------------------------------------------------------------

@pytest.fixture
def english(client):
    """test_whatsapp_rating's chat: in English, at the menu, quiet long enough to be asked."""
    from core.adapters.models import Person
    from core.services import rating

    clock.freeze(RATED_AT - rating.QUIET - timedelta(minutes=5))
    with transaction() as s:
        s.add(Person(phone=CUSTOMER, role="customer", preferred_language="en"))
    assert t("menu.main") in wa(client, "hi")
    clock.freeze(RATED_AT)
    yield client
    clock.freeze(None)


def test_a_rating_sent_twice_is_told_saved_not_the_menu_help(english) -> None:
    chat = english
    bid, ref, _ = delivered_booking()
    assert ask(bid)
    assert t("bot.rate.thanks", ref=ref, stars="⭐⭐⭐⭐⭐") in wa(chat, "5")
    clock.freeze(clock.now() + timedelta(seconds=3))
    again = wa(chat, "5")
    assert t("menu.help") not in again, again
    assert t("bot.rate.already", ref=ref) in again, again
    assert stars_of(bid) == [5] and step() == "menu"
    # Later, or another answer, "5" is the menu's Help again.
    clock.freeze(clock.now() + conversation.RATED_REPEAT + timedelta(seconds=1))
    assert t("menu.help") in wa(chat, "5")


def test_the_guard_is_off_with_read_first_zero(client, demo, monkeypatch) -> None:  # noqa: F811
    """CHAT_READ_FIRST_MS=0 (the bench's scripted customers, who answer on a clock): a
    "1" sent twice at the speed question books, as it did before the guard; the default
    (the tests above) does not."""
    monkeypatch.setenv("CHAT_READ_FIRST_MS", "0")
    chat = Chat(client, "+919812377509")
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH)
    _quiet(chat)
    chat.play(*REST[:-1])
    assert chat.step() == "speed"
    _sent_twice(client, chat, "1")
    assert newest_ref(chat.phone) is not None

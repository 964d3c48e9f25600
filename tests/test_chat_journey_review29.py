"""Review r3: a whole customer journey on WhatsApp, played as real low-literacy customers
play it: a first message in their own words, a village written with its pincode, a change
of mind in the middle, "cancel" typed where a name is asked, the language changed half
way, "ok" and "thank you" after a booking, paying by the link (the Razorpay emulator and
its webhooks), the rider's PICK and DROP by SMS, the rating question, and booking again.

Each test is one fault; its docstring says what the customer sees go wrong and what they
should see. Everything goes through the signed webhook and its drain job (send_whatsapp),
real PostgreSQL and Redis, RQ for the jobs; the clock is frozen, never slept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
import requests
from sqlalchemy import select

from core import clock, i18n
from core.adapters.api_models import BookingRating
from core.adapters.db import transaction
from core.adapters.models import Booking, Conversation
from core.adapters.payment_models import PaymentLink
from core.services.seed import seed_demo
from tests.conftest import release_scheduled, run_jobs, send_whatsapp
from tests.test_dispatch import bodies_to, last_code, sms

pytestmark = pytest.mark.db

START = datetime(2026, 12, 1, 4, 30, tzinfo=UTC)  # 10:00 in India
RIDER = "+919000000001"  # Ramesh, a demo partner on a bicycle at Bettiah
SITA = "+919876543210"
_sids = count(1)


class Chat:
    """One customer on WhatsApp: what they send, what the bot answered."""

    def __init__(self, client: Any, phone: str, profile: str = "Asha") -> None:
        self.client, self.phone, self.profile = client, phone, profile

    def say(self, body: str) -> str:
        return send_whatsapp(self.client, {
            "MessageSid": f"SMr3{next(_sids):06d}", "AccountSid": "ACr3",
            "From": f"whatsapp:{self.phone}", "To": "whatsapp:+14155238886",
            "WaId": self.phone.lstrip("+"), "ProfileName": self.profile,
            "NumMedia": "0", "Body": body})

    def play(self, *bodies: str) -> str:
        reply = ""
        for body in bodies:
            reply = self.say(body)
        return reply

    def conv(self) -> tuple[str, dict[str, Any]]:
        with transaction() as s:
            row = s.execute(select(Conversation.step, Conversation.state).where(
                Conversation.contact == self.phone.lstrip("+"))).one()
            return row[0], row[1]

    def step(self) -> str:
        return self.conv()[0]

    def slots(self) -> dict[str, Any]:
        return self.conv()[1].get("slots") or {}


# Hindi, to the pickup question; then Bettiah (845438, option 2) without a landmark.
TO_PICKUP = ("namaste", "1", "1")
PICKUP_BETTIAH = ("845438", "2")
# ... on to the drop: Laxmipur (845450, option 7), the receiver, the parcel, normal speed.
REST = ("1", "845450", "7", "1", "Sita", "9876543210", "1", "1", "1", "2", "1", "2")


@pytest.fixture
def demo(live):
    seed_demo()
    clock.freeze(START)
    yield
    clock.freeze(None)


def newest_ref(phone: str) -> str:
    from core.adapters.models import Person

    with transaction() as s:
        return s.scalar(select(Booking.reference).join(Person, Person.id == Booking.customer_id)
                        .where(Person.phone == phone).order_by(Booking.id.desc()))


def pay(ref: str) -> None:
    """The customer opens the link she was sent and pays (the emulator sends Razorpay's
    signed webhooks), then the workers run."""
    with transaction() as s:
        url = s.scalar(select(PaymentLink.short_url)
                       .join(Booking, Booking.id == PaymentLink.booking_id)
                       .where(Booking.reference == ref))
    assert url, "no payment link was made"
    assert requests.post(url + "/pay", timeout=10).status_code == 200
    run_jobs()


# --- 1. "no, other village" at the landmark question ---------------------------------

@pytest.mark.parametrize("said", ["no, other village", "nahi, dusra gaon",
                                  "नहीं, दूसरा गाँव", "galat gaon hai"])
def test_no_other_village_at_the_landmark_question_is_not_the_landmark(client, demo,
                                                                        said: str) -> None:
    """The customer picked "2. Bettiah" from the village list, then sees "Is there a
    landmark near the pickup?" and realises the village is wrong: "nahi, dusra gaon" (no,
    another village). The bot kept "nahi, dusra gaon" as the pickup landmark (it is sent
    to the rider in the job offer, and the confirmation never shows it) and went on to
    the drop question, so the wrong village stays booked. A no with "other/wrong village"
    is a change of mind: the village list (or the pickup question) again, nothing kept."""
    chat = Chat(client, "+919812377101")
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH)
    assert chat.step() == "pickup_landmark"
    reply = chat.say(said)
    landmark = (chat.slots().get("pickup") or {}).get("landmark")
    assert landmark != said, f"{said!r} was kept as the landmark the rider is given"
    assert chat.step() in ("pickup", "pickup_office"), (chat.step(), reply)


# --- 2. "cancel" typed in the middle of a booking ------------------------------------

@pytest.mark.parametrize("said", ["cancel", "कैंसिल", "rehne do"])
def test_cancel_typed_at_the_receivers_name_is_not_the_name(client, demo, said: str) -> None:
    """Half way through, the customer changes her mind and types "cancel" (the word the
    confirmation itself takes for "don't book it"). At "Who will receive the parcel?"
    the bot took it as the receiver's name and asked "What is the mobile number of
    cancel?"; the booking would go to a Mr Cancel. A cancel word is no name: the booking
    is dropped (or the menu shown), never saved as the name."""
    chat = Chat(client, "+919812377102")
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH, "1", "845450", "7", "1")
    assert chat.step() == "recipient_name"
    reply = chat.say(said)
    assert chat.slots().get("recipient_name") != said, reply
    asked = i18n.t("bot.recipient.phone", "hi", name=said)
    assert asked not in reply, reply


def test_cancel_typed_at_the_landmark_question_is_not_the_landmark(client, demo) -> None:
    """Same at "Is there a landmark near the pickup?": "cancel" was kept as the landmark
    (the rider's offer reads "Bettiah, cancel") and the drop question followed."""
    chat = Chat(client, "+919812377103")
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH)
    reply = chat.say("cancel")
    assert (chat.slots().get("pickup") or {}).get("landmark") != "cancel", reply
    assert chat.step() != "drop", reply


# --- 3. the language list opened in the middle of a booking --------------------------

def test_the_language_changed_mid_booking_comes_back_to_the_question(client, demo) -> None:
    """A second person of the family takes the phone at "Where should the parcel go?" and
    sends "bhasha" (the word every reply teaches), then "2" (English). The bot said "OK, I
    will talk to you in English" and showed the main menu: the question was gone, so the
    drop pincode she sends next is "Sorry, I did not understand" (a miss; a third one
    offers a person). Typing "English" instead keeps the question, and so does the
    language list opened at the rating question. Expected: the same question again, in
    the language chosen, and her pincode taken as its answer."""
    chat = Chat(client, "+919812377104")
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH, "1")
    assert chat.step() == "drop"
    chat.say("bhasha")
    reply = chat.say("2")
    assert i18n.t("bot.drop.ask", "en") in reply, reply
    reply = chat.say("845450")
    assert chat.step() == "drop_office", reply


# --- 4. the village written with its pincode -----------------------------------------

def test_a_village_written_with_its_pincode_is_not_asked_again(client, demo) -> None:
    """Asked where to pick up, the customer writes her address as on a letter: "Laxmipur
    845450". The pincode is read, but the bot then lists 16 villages over two pages and
    asks "Which village or post office?": the question she just answered. Laxmipur is on
    the list, spelt as she wrote it: that village (straight to the landmark question)."""
    chat = Chat(client, "+919812377105")
    chat.play(*TO_PICKUP)
    reply = chat.say("Laxmipur 845450")
    assert chat.step() == "pickup_landmark", reply
    assert chat.slots()["pickup"]["name"] == "Laxmipur"


# --- 5. the first message already says what she wants -------------------------------

def test_a_first_message_asking_to_send_a_parcel_is_not_asked_again(client, demo) -> None:
    """A new customer's first message: "पार्सल भेजना है" (I want to send a parcel; the
    menu itself takes exactly these words for option 1). The bot asks "shall we talk in
    Hindi?"; she says "हाँ", and is then asked "What do you want to do? 1. Send a parcel
    ...": what she said in her first message. Once the language is settled, the request
    she made is taken: the pickup question."""
    chat = Chat(client, "+919812377106")
    chat.say("पार्सल भेजना है")
    assert chat.step() == "language_guess"
    reply = chat.say("हाँ")
    assert i18n.t("bot.pickup.ask", "hi") in reply, reply
    assert chat.step() == "pickup"


# --- 6. "ok", a thumbs-up, "thank you" after the booking ------------------------------

def test_ok_and_thanks_after_booking_are_not_misunderstood(client, demo) -> None:
    """"Booked! Your booking number is ... The payment link will come in a moment." The
    customer answers as people do: "ok", "👍", "dhanyavad". Each was a miss at the menu:
    "Sorry, I did not understand. Please send one of these numbers" twice, and the third
    "Sorry, I am not understanding. Shall I ask a person to help you?". An ok or a
    thank-you is understood: no "did not understand", no offer of a person."""
    chat = Chat(client, "+919812377107")
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH, *REST)
    reply = chat.say("haan")
    assert i18n.t("bot.next_hint", "hi") in reply and chat.step() == "menu", reply
    sorry = i18n.t("bot.retry", "hi")
    offer = i18n.t("bot.handoff.offer", "hi")
    replies = [chat.say(said) for said in ("ok", "👍", "dhanyavad")]
    for said, answer in zip(("ok", "👍", "dhanyavad"), replies, strict=True):
        assert sorry not in answer and offer not in answer, (said, answer)


# --- 7. the whole journey, then a new request at the rating question -----------------

def test_a_new_booking_asked_for_at_the_rating_question_is_not_told_to_rate(client,
                                                                           demo) -> None:
    """The whole journey: booked in Hindi, paid by the link, Ramesh takes it by SMS, PICK
    and DROP with the codes, and 10 quiet minutes later "how was it? send 1 to 5". The
    next morning the same family phone writes "mujhe ek aur parcel bhejna hai" (I want to
    send one more parcel). The bot answered "Send one number from 1 to 5" and the rating
    question again; written a second time, the main menu ("What do you want to do?");
    only the third message reached the pickup question. A request the menu understands
    (menu_intent) leaves the rating question and is answered: the pickup question."""
    chat = Chat(client, "+919812377108")
    chat.play(*TO_PICKUP, *PICKUP_BETTIAH, *REST, "haan")
    run_jobs()  # the payment link is made and sent
    ref = newest_ref(chat.phone)
    pay(ref)
    assert sms(client, RIDER, "1"), "the demo rider was offered nothing"
    run_jobs()
    sms(client, RIDER, f"PICK {last_code(chat.phone)}")
    run_jobs()
    clock.freeze(START + timedelta(hours=2))
    sms(client, RIDER, f"DROP {last_code(SITA)}")
    run_jobs()
    clock.freeze(START + timedelta(hours=2, minutes=11))
    release_scheduled(timedelta(minutes=15))
    run_jobs()
    assert bodies_to(chat.phone)[-1] == i18n.t("bot.rate.ask", "hi", ref=ref)
    assert chat.step() == "rate"

    clock.freeze(START + timedelta(hours=22))  # the next morning, 08:00
    reply = chat.say("mujhe ek aur parcel bhejna hai")
    assert i18n.t("bot.rate.help", "hi") not in reply, reply
    assert i18n.t("bot.pickup.ask", "hi") in reply, reply
    with transaction() as s:
        assert s.scalar(select(BookingRating.id)) is None  # no stars were made up


# --- the fixes read no more than they should (dialog level, fake ports) ----------------

def _at(step: str, **data: Any):
    from core.dialog.engine import DialogState
    from tests.test_dialog import PLACE

    return DialogState(step, {"slots": {"pickup": dict(PLACE)}, **data})


@pytest.mark.parametrize("said", ["dusra mandir ke paas", "purana gaon school", "Galat Ganj"])
def test_a_landmark_with_such_a_word_in_it_is_still_the_landmark(said: str) -> None:
    from tests.test_dialog import FakePorts, play

    state = _at("pickup_landmark")
    play(state, FakePorts(), said)
    assert state.step == "drop" and state.slots["pickup"]["landmark"] == said


@pytest.mark.parametrize("name", ["Rad", "Thak", "Cancel Singh", "Radha"])
def test_a_name_like_a_cancel_word_is_still_the_name(name: str) -> None:
    from tests.test_dialog import FakePorts, play

    state = _at("recipient_name")
    play(state, FakePorts(), name)
    assert state.step == "recipient_phone" and state.slots["recipient_name"] == name


def test_a_bare_no_at_a_booking_question_is_its_answer_not_a_cancel() -> None:
    from tests.test_dialog import FakePorts, play

    state = _at("pickup_landmark")
    play(state, FakePorts(), "nahi")
    assert state.step == "drop" and state.slots["pickup"]["landmark"] is None
    state = _at("fragile")
    play(state, FakePorts(), "no")
    assert state.step == "value" and state.slots["fragile"] is False


def test_cancel_mid_booking_drops_the_draft() -> None:
    from tests.test_dialog import FakePorts, keys, play

    state = _at("recipient_name", draft_step="drop")
    outs = play(state, FakePorts(), "cancel")
    assert state.step == "menu" and not state.slots and "draft_step" not in state.data
    assert keys(outs) == ["bot.confirm.dropped", "bot.next_hint"]


def test_only_an_ok_or_a_thanks_is_taken_for_one() -> None:
    from core.dialog import words

    for said in ("ok", "👍🏽", "dhanyavad", "Thank you so much ji", "ok 👍", "🙏", "धन्यवाद"):
        assert words.acknowledged(said), said
    for said in ("you", "thank you, parcel kahan hai", "ji nahi", "bahut"):
        assert not words.acknowledged(said), said

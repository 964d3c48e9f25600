"""Rating a delivery on WhatsApp: after a delivery the chat asks "how was it? 1 to 5"
(core.services.rating.ask_after_delivery) and the answer is stored as the app's rating is.

A digit is stars only as the answer to that question (the dialog's rating step): a
customer at the menu who sends "1" starts a booking, one in the middle of a booking is not
asked, one who wrote a moment ago is asked once quiet, and the question lapses on a
greeting, a second answer that is no rating, or after RATING_WINDOW."""

from __future__ import annotations

from datetime import timedelta
from itertools import count

import pytest
from sqlalchemy import func, select

from core import clock, i18n
from core.adapters.api_models import BookingRating
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff
from core.adapters.models import (
    Booking,
    Conversation,
    OutboxMessage,
    PartnerProfile,
    Person,
    SandboxMessage,
)
from core.adapters.queue import queue
from core.domain.booking import Actor, BookingStatus
from core.domain.errors import Conflict
from core.domain.pricing import SpeedTier
from core.services import notify, rating
from core.services.booking import create_booking, move_booking
from tests.conftest import post_twilio, run_jobs, send_whatsapp
from tests.test_conversations import START
from tests.test_payments_support import BAG, BETTIAH, LAXMIPUR, advance, new_partner

pytestmark = pytest.mark.db

CUSTOMER = "+919812377001"
_sids = count(1)


def form(body: str) -> dict[str, str]:
    return {"MessageSid": f"SMrate{next(_sids):05d}", "AccountSid": "ACtest",
            "From": f"whatsapp:{CUSTOMER}", "To": "whatsapp:+14155238886",
            "WaId": CUSTOMER[1:], "ProfileName": "Meena", "NumMedia": "0", "Body": body}


def wa(client, body: str) -> str:
    return send_whatsapp(client, form(body))


def t(key: str, **params: object) -> str:
    return i18n.t(key, "en", **params)


@pytest.fixture
def chat(client):
    """A customer who chats in English, at the main menu, at START (their "hi" a while
    before: a chat this quiet may be asked)."""
    clock.freeze(START - rating.QUIET - timedelta(minutes=5))
    with transaction() as s:
        s.add(Person(phone=CUSTOMER, role="customer", preferred_language="en"))
    assert t("menu.main") in wa(client, "hi")
    clock.freeze(START)
    yield client
    clock.freeze(None)


def delivered_booking(channel: str = "whatsapp",
                      partner_phone: str = "+919812349001") -> tuple[int, str, int]:
    """A booking of the customer, carried and delivered by a new partner: (booking id,
    reference, partner id)."""
    partner = new_partner(partner_phone)
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        actor = Actor("customer", str(person.id))
        b = create_booking(s, customer_id=person.id, channel=channel, pickup=LAXMIPUR,
                           drop=BETTIAH, parcel=BAG, tier=SpeedTier.STANDARD,
                           recipient_name="Sita", recipient_phone=None, actor=actor)
        move_booking(s, b, BookingStatus.AWAITING_PAYMENT, Actor.system(), "link sent")
        move_booking(s, b, BookingStatus.PAID, Actor.system(), "paid")
        bid, ref = b.id, b.reference
    advance(bid, partner, to="delivered")
    return bid, ref, partner


def ask(booking_id: int) -> bool:
    """What dispatch does when the last leg is delivered (core.services.rating)."""
    with transaction() as s:
        return rating.ask_after_delivery(s, s.get(Booking, booking_id))


def stars_of(booking_id: int) -> list[int]:
    with transaction() as s:
        return list(s.scalars(select(BookingRating.stars)
                              .where(BookingRating.booking_id == booking_id)))


def partner_rating(partner_id: int) -> int:
    with transaction() as s:
        return s.get(PartnerProfile, partner_id).rating_x100


def step() -> str:
    with transaction() as s:
        return s.scalar(select(Conversation.step).where(Conversation.channel == "whatsapp",
                                                        Conversation.contact == CUSTOMER[1:]))


def sent_to_customer() -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == f"whatsapp:{CUSTOMER}").order_by(OutboxMessage.id)))


def test_after_a_delivery_the_chat_asks_and_a_digit_is_stored_as_stars(chat):
    bid, ref, partner = delivered_booking()
    before = partner_rating(partner)
    assert ask(bid)
    assert sent_to_customer()[-1] == t("bot.rate.ask", ref=ref)
    assert step() == "rate"

    reply = wa(chat, "4")
    assert t("bot.rate.thanks", ref=ref, stars="⭐⭐⭐⭐") in reply
    assert stars_of(bid) == [4]
    assert partner_rating(partner) == round(before * 0.9 + 40)  # as the app's rating does
    assert step() == "menu"
    # The question was answered: "1" now starts a booking, and stores nothing.
    assert t("bot.pickup.ask") in wa(chat, "1")
    assert stars_of(bid) == [4]
    assert not ask(bid)  # asked once per booking, and it is rated


@pytest.mark.parametrize("answer,stars", [("⭐⭐⭐⭐⭐", 5), ("⭐️⭐️", 2), ("३", 3),
                                          ("5 ⭐", 5)])
def test_stars_and_digits_of_any_script_are_ratings(chat, answer, stars):
    bid, ref, _ = delivered_booking()
    assert ask(bid)
    assert t("bot.rate.thanks", ref=ref, stars="⭐" * stars) in wa(chat, answer)
    assert stars_of(bid) == [stars]


def test_a_number_out_of_range_is_asked_again(chat):
    bid, ref, _ = delivered_booking()
    assert ask(bid)
    reply = wa(chat, "6")
    assert t("bot.rate.help") in reply and t("bot.rate.ask", ref=ref) in reply
    assert step() == "rate" and stars_of(bid) == []
    assert t("bot.rate.thanks", ref=ref, stars="⭐⭐⭐") in wa(chat, "3")


def test_anything_else_leaves_the_question_and_1_then_starts_a_booking(chat):
    bid, _, _ = delivered_booking()
    assert ask(bid)
    assert t("menu.main") in wa(chat, "hi")
    assert step() == "menu"
    assert t("bot.pickup.ask") in wa(chat, "1")
    assert stars_of(bid) == []


def test_a_customer_in_the_middle_of_a_booking_is_not_asked(chat):
    assert t("bot.pickup.ask") in wa(chat, "1")
    bid, _, _ = delivered_booking()
    assert not ask(bid)
    assert step() == "pickup"
    assert not any(t("bot.rate.help") in body or "1 to 5" in body for body in sent_to_customer())
    reply = wa(chat, "845438")  # still answers the booking's question (no Points: outside)
    assert "(845438)" in reply and stars_of(bid) == []


def test_the_question_lapses_after_two_days(chat):
    bid, _, _ = delivered_booking()
    assert ask(bid)
    clock.freeze(START + rating.RATING_WINDOW + timedelta(minutes=1))
    reply = wa(chat, "4")
    assert t("menu.main") in reply and stars_of(bid) == []  # not stars, nor "a person"
    assert step() == "menu"


def test_a_customer_quiet_for_days_is_asked_by_template_and_answers(chat, monkeypatch):
    # Their last message is days old: the question goes as the approved template, and
    # their answer rates (the chat's "back after a day: the menu" rule does not eat it).
    monkeypatch.setenv("WHATSAPP_TEMPLATE_EN", "HX0123456789abcdef0123456789abcdef")
    notify.reset_templates()
    try:
        clock.freeze(START + timedelta(days=3))
        bid, ref, _ = delivered_booking()
        assert ask(bid)
        assert t("bot.rate.thanks", ref=ref, stars="⭐⭐⭐⭐") in wa(chat, "4")
        assert stars_of(bid) == [4]
    finally:
        monkeypatch.delenv("WHATSAPP_TEMPLATE_EN")
        notify.reset_templates()


def test_a_message_written_before_the_question_came_answers_the_menu(chat):
    r = post_twilio(chat, "/webhooks/whatsapp", form("1"))  # "send a parcel", at START
    assert r.status_code == 200
    clock.freeze(START + timedelta(minutes=1))
    bid, _, _ = delivered_booking()
    assert ask(bid)  # ... asked before that message's turn ran (a backlog)
    run_jobs(("inbound",))
    assert step() == "pickup" and stars_of(bid) == []


def test_a_booking_rated_in_the_app_meanwhile_is_not_rated_twice(chat):
    bid, ref, _ = delivered_booking()
    assert ask(bid)
    with transaction() as s:
        rating.rate_booking(s, s.get(Booking, bid), 2)
    assert t("bot.rate.already", ref=ref) in wa(chat, "5")
    assert stars_of(bid) == [2]
    with transaction() as s, pytest.raises(Conflict) as err:
        rating.rate_booking(s, s.get(Booking, bid), 5)
    assert err.value.code == "already_rated"


def test_a_digit_with_no_question_pending_is_the_menu_choice(chat):
    bid, _, _ = delivered_booking()  # delivered, but not asked
    assert t("menu.help").splitlines()[0] in wa(chat, "5")
    assert stars_of(bid) == []


@pytest.mark.parametrize("why", ["voice", "app", "quiet", "handoff", "stop"])
def test_not_asked_where_the_answer_could_not_come_back(chat, why):
    bid, _, _ = delivered_booking(channel=why if why in ("voice", "app") else "whatsapp")
    if why == "quiet":  # no message from them for a day: WhatsApp allows no free-form
        clock.freeze(START + timedelta(hours=25))  # text, and an SMS answer reaches riders
    elif why == "handoff":
        wa(chat, "4")  # talk to a person
    elif why == "stop":
        wa(chat, "STOP")
    assert not ask(bid)
    with transaction() as s:
        asked = s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.dedupe_key == f"rate-ask-{bid}"))
    assert asked == 0 and step() != "rate"


# --- a menu digit is never a rating; the question is not lost; answers as people write --

def later_ask(booking_id: int, tries: int = 2):  # noqa: ANN201
    """The "ask again once quiet" job scheduled for the booking (not run)."""
    job = queue("default").fetch_job(f"rate-ask-{booking_id}-{tries}")
    assert job is not None and job.func_name == rating.ASK_LATER_JOB
    return job


def test_a_customer_reading_the_menu_is_asked_once_the_chat_is_quiet(chat):
    assert t("menu.main") in wa(chat, "hi")  # at START: reading the menu
    clock.freeze(START + timedelta(seconds=20))
    bid, ref, _ = delivered_booking()
    assert not ask(bid)  # a delivery 20 s later: not now
    assert step() == "menu" and not any("1 to 5" in body for body in sent_to_customer())
    clock.freeze(START + timedelta(seconds=25))
    assert t("menu.help").splitlines()[0] in wa(chat, "5")  # Help, as the menu says
    assert stars_of(bid) == []
    # Ten quiet minutes after that "5": asked, and a digit now rates.
    clock.freeze(START + timedelta(seconds=25) + rating.QUIET)
    job = later_ask(bid)
    assert job.func(*job.args) == "asked"
    assert sent_to_customer()[-1] == t("bot.rate.ask", ref=ref) and step() == "rate"
    assert t("bot.rate.thanks", ref=ref, stars="⭐" * 5) in wa(chat, "5")
    assert stars_of(bid) == [5]


def test_a_customer_who_keeps_writing_is_asked_later_again_then_not(chat):
    bid, _, _ = delivered_booking()
    for tries in range(2, rating.ASK_TRIES + 1):
        wa(chat, "hi")  # still chatting when the next try comes
        with transaction() as s:
            assert not rating.ask_after_delivery(s, s.get(Booking, bid), tries - 1)
        later_ask(bid, tries)
    wa(chat, "hi")
    with transaction() as s:
        assert not rating.ask_after_delivery(s, s.get(Booking, bid), rating.ASK_TRIES)
    assert queue("default").fetch_job(f"rate-ask-{bid}-{rating.ASK_TRIES + 1}") is None


def test_a_message_from_before_the_question_keeps_the_question(chat):
    r = post_twilio(chat, "/webhooks/whatsapp", form("thanks"))  # written before it
    assert r.status_code == 200
    clock.freeze(START + timedelta(minutes=1))
    bid, ref, _ = delivered_booking()
    assert ask(bid)
    run_jobs(("inbound",))  # "thanks" is answered after the question went out
    assert step() == "rate"
    assert sent_to_customer()[-1].endswith(t("bot.rate.ask", ref=ref))  # asked again, last
    clock.freeze(START + timedelta(minutes=2))
    assert t("bot.rate.thanks", ref=ref, stars="⭐" * 4) in wa(chat, "4")  # not a person
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(Handoff)) == 0
    assert stars_of(bid) == [4]


@pytest.mark.parametrize("answer,stars", [
    ("5 stars", 5), ("5/5", 5), ("4 out of 5", 4), ("very good", 5), ("Very bad", 1),
    ("बहुत अच्छा", 5), ("बहुत खराब", 1), ("খুব ভালো", 5), ("⭐ 5 👍", 5), ("I give it 3", 3)])
def test_ratings_as_people_write_them(chat, answer, stars):
    bid, ref, _ = delivered_booking()
    assert ask(bid)
    assert t("bot.rate.thanks", ref=ref, stars="⭐" * stars) in wa(chat, answer)
    assert stars_of(bid) == [stars]


@pytest.mark.parametrize("answer", ["hmm", "10/10", "5 and 4"])
def test_an_answer_that_is_no_rating_gets_the_help_once_then_the_menu(chat, answer):
    bid, ref, _ = delivered_booking()
    assert ask(bid)
    reply = wa(chat, answer)
    assert t("bot.rate.help") in reply and t("bot.rate.ask", ref=ref) in reply
    assert step() == "rate"
    reply = wa(chat, answer)  # not rating, it seems: the question is left, not pressed
    assert t("menu.main") in reply and t("bot.rate.help") not in reply
    assert step() == "menu" and stars_of(bid) == []


def test_the_question_by_template_goes_out_on_one_line(chat, live, monkeypatch):
    # Meta refuses a template parameter with a line break (132018); the question has
    # lines. The emulator refuses it as Meta does, so this goes through the real client.
    monkeypatch.setenv("WHATSAPP_TEMPLATE_EN", "HX0123456789abcdef0123456789abcdef")
    notify.reset_templates()
    try:
        clock.freeze(START + timedelta(days=3))
        bid, ref, _ = delivered_booking()
        assert ask(bid)
        run_jobs(("outbox",))
    finally:
        monkeypatch.delenv("WHATSAPP_TEMPLATE_EN")
        notify.reset_templates()
    with transaction() as s:
        sent = s.scalar(select(SandboxMessage.body).where(
            SandboxMessage.body.startswith("[template HX0123456789abcdef")))
        row = s.scalar(select(OutboxMessage).where(OutboxMessage.dedupe_key == f"rate-ask-{bid}"))
    assert row.status != "failed" and sent is not None, row.status
    assert "\\n" not in sent and "\n" not in sent
    assert f"Booking {ref}: how was it? Send a number from 1 to 5. 5 = very good" in sent


def test_the_emulator_refuses_a_template_parameter_with_a_line_break(live):
    from core.adapters import twilio_gateway

    with pytest.raises(twilio_gateway.SendRejected) as refused:
        twilio_gateway.send_message(to=f"whatsapp:{CUSTOMER}", from_="whatsapp:+14155238886",
                                    body="", media_url=None, status_callback=f"{live.base_url}/x",
                                    content_sid="HXabc", content_variables={"1": "a\nb"})
    assert refused.value.code == "63021" and refused.value.permanent

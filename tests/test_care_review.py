"""Customer care as a review found it: talking to a person (a caller's SMS answer, two
waiting requests, "0" to leave, a reply after a WhatsApp STOP, the person's language in
the ops list) and ratings written as words. Each test failed on the code before its fix,
for a defect a user would meet."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff, HandoffMessage
from core.adapters.models import Conversation, OutboxMessage, Person
from core.services import handoff, outbox
from tests.conftest import post_twilio, run_jobs, send_whatsapp
from tests.test_api import API, sign_in
from tests.test_rating_more import speaks
from tests.test_whatsapp_rating import ask as ask_rating
from tests.test_whatsapp_rating import (
    chat,  # noqa: F401  (fixture)
    delivered_booking,
    stars_of,
    wa,
)

pytestmark = pytest.mark.db

PHONE = "+919812300071"
OPS = "+919000000071"
_sid = count(1)
# 11:00 in India: the team is at work (OPS_HOURS 08:00-21:00 by default).
DAYTIME = datetime(2026, 12, 1, 5, 30, tzinfo=UTC)


@pytest.fixture
def daytime():
    clock.freeze(DAYTIME)
    yield
    clock.freeze(None)


def say_wa(client, body: str, phone: str = PHONE) -> str:  # noqa: ANN001
    return send_whatsapp(client, {"From": f"whatsapp:{phone}", "To": "whatsapp:+14155238886",
                                  "Body": body, "MessageSid": f"SMcrv{next(_sid):029d}",
                                  "ProfileName": "Sita"})


def say_sms(client, body: str, phone: str = PHONE) -> str:  # noqa: ANN001
    r = post_twilio(client, "/webhooks/sms", {
        "MessageSid": f"SMcrvs{next(_sid):028d}", "From": phone, "To": "+15005550006",
        "Body": body})
    assert r.status_code == 200, r.get_data(as_text=True)
    run_jobs()
    return r.get_data(as_text=True)


def caller_waiting(phone: str = PHONE) -> int:
    """A caller (no WhatsApp) who asked the IVR for a person: their waiting handoff."""
    with transaction() as s:
        person = Person(phone=phone, role="customer", preferred_language="en")
        s.add(person)
        s.flush()
        conv = Conversation(channel="voice", contact=phone, person_id=person.id,
                            step="menu", state={}, misses=0, handoff=False,
                            last_inbound_at=clock.now())
        s.add(conv)
        s.flush()
        handoff.request(s, conv, "callback")
        s.flush()
        return s.scalar(select(Handoff.id).where(Handoff.conversation_id == conv.id))


def messages_in(handoff_id: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(HandoffMessage.body).where(
            HandoffMessage.handoff_id == handoff_id, HandoffMessage.direction == "in")
            .order_by(HandoffMessage.id)))


# --- talk to a person ----------------------------------------------------------------------


def test_a_callers_sms_answer_to_an_operator_is_kept_for_the_operator(
        client, live, daytime):
    """A caller asked for a person; the operator answers by SMS (the only way to reach
    them) with a question. The caller answers that SMS, as anyone would: today the answer
    never reaches the operator (nothing is kept on the handoff, the ops list shows
    nothing) and the caller is told "To book a parcel, call ...". It should be kept on the
    waiting handoff for the operator, with no stranger's answer."""
    hid = caller_waiting()
    ops = sign_in(client, OPS, role="ops")
    r = client.post(f"{API}/ops/handoffs/{hid}/reply",
                    json={"body": "Which booking is it about? Reply with its number."},
                    headers=ops)
    assert r.status_code == 200, r.get_json()
    with transaction() as s:
        (channel,) = s.scalars(select(OutboxMessage.channel).where(
            OutboxMessage.body.like("Which booking%"))).all()
    assert channel == "sms"  # the operator's question went by SMS
    answer = say_sms(client, "It is booking 48217730, the parcel did not come")
    assert "48217730" in " ".join(messages_in(hid)), "the caller's answer is not kept"
    assert "To book a parcel" not in answer
    assert "<Message>" not in answer  # no bot answer while they wait, as in a chat


def test_closing_one_of_two_handoffs_does_not_say_the_bot_is_back(
        client, live, daytime):
    """A customer asks for a person on WhatsApp and, still waiting, calls and asks there
    too: two handoffs for one person. An operator handles the call and closes its
    handoff: the customer is told on WhatsApp "Our team has finished helping you. To see
    the menu again, send any message on WhatsApp". They write "hi": the bot stays silent
    (the WhatsApp handoff is still waiting). Either the closing should not say so while
    the person still waits, or the person's handoffs should end together (or be one)."""
    for body in ("hi", "2"):
        say_wa(client, body)
    assert "A person from our team will reply" in say_wa(client, "4")
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == PHONE))
        conv = Conversation(channel="voice", contact=PHONE, person_id=person.id,
                            step="menu", state={}, misses=0, handoff=False,
                            last_inbound_at=clock.now())
        s.add(conv)
        s.flush()
        handoff.request(s, conv, "callback")  # the IVR's "talk to a person"
        s.flush()
        voice_hid = s.scalar(select(Handoff.id).where(Handoff.conversation_id == conv.id))
    ops = sign_in(client, OPS, role="ops")
    assert client.post(f"{API}/ops/handoffs/{voice_hid}/close", headers=ops).status_code == 200
    run_jobs()
    with transaction() as s:
        told = list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == f"whatsapp:{PHONE}").order_by(OutboxMessage.id)))
    told_back = i18n.t("bot.handoff.closed", "en") in told
    answer = say_wa(client, "hi")
    assert not (told_back and answer == ""), (
        "told to send any message to see the menu, and the bot stays silent")
    # The chat's own handoff, closed in turn, tells them: the menu is back there.
    with transaction() as s:
        wa_hid = s.scalar(select(Handoff.id).where(Handoff.status == "waiting"))
    assert client.post(f"{API}/ops/handoffs/{wa_hid}/close", headers=ops).status_code == 200
    with transaction() as s:
        told = list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == f"whatsapp:{PHONE}")))
    assert told.count(i18n.t("bot.handoff.closed", "en")) == 1
    assert i18n.t("menu.main", "en") in say_wa(client, "hi")


def test_send_0_for_the_menu_leaves_a_handoff_an_operator_answered(client, live, daytime):
    """Put on the waiting list, the customer is told "Send 0 for the menu." An operator
    answers once ("We are checking") and then goes quiet. The customer, done waiting,
    sends 0 as they were told: silence (it is kept as a message for the operator, the
    handoff stays theirs), and so is every later message, until the idle close hours
    later. A "0" should bring the menu back (or at least be answered: the operator is
    still on it, here is how to leave), never silence."""
    for body in ("hi", "2"):
        say_wa(client, body)
    waiting = say_wa(client, "4")
    assert i18n.t("bot.next_hint", "en") in waiting  # "Send 0 for the menu."
    with transaction() as s:
        hid = s.scalar(select(Handoff.id).where(Handoff.status == "waiting"))
    ops = sign_in(client, OPS, role="ops")
    r = client.post(f"{API}/ops/handoffs/{hid}/reply", json={"body": "We are checking."},
                    headers=ops)
    assert r.status_code == 200, r.get_json()
    # Once the team has written, a bare 0 may be her answer to them (session 36): it goes
    # to the operator, and she is told how to leave (MENU), never left in silence.
    assert say_wa(client, "0") == i18n.t("bot.handoff.zero_kept", "en"), \
        "the customer sent 0, as told, and heard nothing"
    assert say_wa(client, "MENU") != ""
    with transaction() as s:
        status = s.scalar(select(Handoff.status).where(Handoff.id == hid))
    assert status == "closed"
    assert messages_in(hid)[-1] == handoff.LEFT  # ops see that the customer left
    r = client.post(f"{API}/ops/handoffs/{hid}/reply", json={"body": "Still there?"},
                    headers=ops)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "handoff_closed", r.get_json()


def test_a_caller_who_once_sent_stop_on_whatsapp_is_answered_by_sms(
        client, live, daytime):
    """A customer sent STOP to the WhatsApp bot long ago. Today they call and ask for a
    person. The operator's SMS answer is refused (409 recipient_unreachable: WhatsApp's
    STOP lets only booking messages through by SMS), and the closing message is dropped
    too, though the caller asked for this help a minute ago by phone. A reply they asked
    for should reach them by SMS (as a sign-in code they ask for does)."""
    hid = caller_waiting()
    with transaction() as s:
        s.scalar(select(Person).where(Person.phone == PHONE)).opted_out = True  # WhatsApp STOP
    ops = sign_in(client, OPS, role="ops")
    r = client.post(f"{API}/ops/handoffs/{hid}/reply",
                    json={"body": "Hello, this is Ravi from RideChain."}, headers=ops)
    assert r.status_code == 200, r.get_json()
    with transaction() as s:
        assert s.scalar(select(OutboxMessage.channel).where(
            OutboxMessage.body == "Hello, this is Ravi from RideChain.")) == "sms"
    assert client.post(f"{API}/ops/handoffs/{hid}/close", headers=ops).status_code == 200
    with transaction() as s:
        assert s.scalar(select(OutboxMessage.channel).where(
            OutboxMessage.body == i18n.t("bot.handoff.closed", "en"))) == "sms"


def test_an_operators_reply_stays_unsent_after_an_sms_opt_out(client, live, daytime):
    """The SMS opt-out is the person's own word about SMS: an operator's reply does not
    go by SMS after it (as after a WhatsApp STOP it does), nor the closing message."""
    hid = caller_waiting()
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == PHONE))
        person.opted_out = person.sms_opted_out = True
    ops = sign_in(client, OPS, role="ops")
    r = client.post(f"{API}/ops/handoffs/{hid}/reply", json={"body": "Hello?"}, headers=ops)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "recipient_unreachable"
    with transaction() as s:
        assert outbox.queue_message(s, channel="sms", to=PHONE, body="x", asked=True) is None



def test_the_ops_list_says_which_language_the_person_waiting_speaks(client, live, daytime):
    """A Tamil-speaking caller asks the IVR for a person. The operators' list shows the
    channel, the reason, a masked number and the messages (none for a call), but not the
    person's language, so the operator answers in English (or Hindi) and the caller reads
    a language they did not choose. Each waiting row should carry the language the person
    chose (their preferred_language)."""
    hid = caller_waiting()
    with transaction() as s:
        s.scalar(select(Person).where(Person.phone == PHONE)).preferred_language = "ta"
    r = client.get(f"{API}/ops/handoffs", headers=sign_in(client, OPS, role="ops"))
    assert r.status_code == 200, r.get_json()
    (row,) = [x for x in r.get_json()["items"] if x["id"] == hid]
    assert row["language"] == "ta", row


# --- ratings -------------------------------------------------------------------------------


@pytest.mark.parametrize("lang,answer,stars", [
    ("en", "five stars", 5), ("en", "four star", 4), ("hi", "paanch star", 5),
    ("hi", "5 स्टार", 5), ("hi", "paanch ji", 5), ("bn", "পাঁচ স্টার", 5)])
def test_a_number_word_with_star_or_a_filler_is_read_as_a_rating(chat, lang, answer, stars):  # noqa: F811
    """Asked "how was it? send 1 to 5", the customer answers "five stars" (or "paanch
    star", "5 स्टार"). "5 stars" and "five" alone are read, but a number written as a
    word beside "star(s)" or a filler ("ji") is not: they are told how to answer, and a
    second such answer drops the question. It should store the stars."""
    speaks(lang)
    bid, ref, _ = delivered_booking()
    assert ask_rating(bid)
    reply = wa(chat, answer)
    assert i18n.t("bot.rate.thanks", lang, ref=ref, stars="⭐" * stars) in reply
    assert stars_of(bid) == [stars]


def test_a_number_word_is_read_among_fillers_only():
    """A number word counts as the rating beside fillers alone ("four star", "paanch
    ji"): two numbers, a word beyond the fillers, or words that go the other way are
    still no rating (better asked again than a wrong one)."""
    from core.dialog.booking import stars_given

    assert [stars_given(t, "hi") for t in ("char star", "paanch ji", "पांच स्टार")] == [4, 5, 5]
    for lang, answer in [("hi", "char paanch"), ("en", "five but late"), ("en", "bad five"),
                         ("hi", "ek number")]:
        assert stars_given(answer, lang) is None, answer

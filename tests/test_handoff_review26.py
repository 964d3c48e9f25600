"""Review 4, talking to a person (handoff): defects an operator or a customer would meet.
Each test fails on the code as reviewed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
from sqlalchemy import select

from core import clock
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff
from core.adapters.models import Conversation, OutboxMessage, Person
from core.domain.errors import ValidationError
from core.services import handoff
from tests.conftest import never_reached, post_twilio, run_jobs, send_whatsapp
from tests.test_api import API, sign_in
from tests.test_ivr import prompts  # noqa: F401  (fixture)
from tests.test_ivr_gaps import AbsoluteCaller

pytestmark = pytest.mark.db

PHONE = "+919812304401"
OPS_A = "+919000004401"
OPS_B = "+919000004402"
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
                                  "Body": body, "MessageSid": f"SMzr4{next(_sid):029d}",
                                  "ProfileName": "Sita"})


def chat_asks_for_a_person(client) -> int:  # noqa: ANN001
    for body in ("hi", "2", "4"):  # hello, English, talk to a person
        say_wa(client, body)
    with transaction() as s:
        return s.scalar(select(Handoff.id).where(Handoff.channel == "whatsapp",
                                                 Handoff.status == "waiting"))


def waiting_of(phone: str = PHONE) -> list[Handoff]:
    with transaction() as s:
        person_id = s.scalar(select(Person.id).where(Person.phone == phone))
        return list(s.scalars(select(Handoff).where(
            Handoff.person_id == person_id, Handoff.status == "waiting")
            .order_by(Handoff.id)))


def reply(client, ops: dict[str, str], hid: int, body: str, **extra: object):  # noqa: ANN001
    return client.post(f"{API}/ops/handoffs/{hid}/reply", json={"body": body, **extra},
                       headers=ops)


def sent_bodies() -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).order_by(OutboxMessage.id)))


# --- two operators on one person ------------------------------------------------------

def test_a_chat_customer_who_also_calls_is_not_answered_by_two_operators(
        client, live, daytime, prompts):  # noqa: F811
    """Sita asks for a person on WhatsApp; after a while she also calls and presses 3.
    Operator A answers her chat. Operator B, seeing the call's row on the list, answers
    it too: Sita gets two operators' answers in the same WhatsApp chat, and what she
    writes back is filed on A's handoff only, so B never sees her answer."""
    chat_asks_for_a_person(client)
    caller = AbsoluteCaller(client, PHONE)
    caller.call()
    heard = caller.press("3")  # English is known: the menu; 3 = talk to a person
    assert heard.dial, heard.xml
    waiting = waiting_of()
    chat = next(h for h in waiting if h.channel == "whatsapp")
    a, b = sign_in(client, OPS_A, role="ops"), sign_in(client, OPS_B, role="ops")
    assert reply(client, a, chat.id, "Hello Sita, Asha here. Which booking?").status_code == 200
    newest = waiting_of()[-1]
    r = reply(client, b, newest.id, "Hello, Ravi from RideChain. How can I help?")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "taken_by_other", (
        r.status_code, r.get_json(), [(h.id, h.channel, h.operator) for h in waiting_of()])
    assert "Hello, Ravi from RideChain. How can I help?" not in sent_bodies()


def test_another_operator_cannot_close_a_conversation_someone_is_answering(
        client, live, daytime):
    """Operator A is talking with Sita. Operator B, tidying the list, closes it: Sita is
    told "Our team has finished helping you" in the middle of A's help, and the handoff
    records A as the one who closed it. A reply by B would be refused (taken_by_other);
    a close should be too, unless B says take_over."""
    hid = chat_asks_for_a_person(client)
    a, b = sign_in(client, OPS_A, role="ops"), sign_in(client, OPS_B, role="ops")
    assert reply(client, a, hid, "Hello Sita, Asha here. Which booking?").status_code == 200
    say_wa(client, "The one from Bettiah, it did not come")
    r = client.post(f"{API}/ops/handoffs/{hid}/close", headers=b)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "taken_by_other", (
        r.status_code, r.get_json())
    with transaction() as s:
        assert s.get(Handoff, hid).status == "waiting"


# --- a reply that never reached the person --------------------------------------------

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


def test_the_ops_list_says_when_an_operators_reply_did_not_reach_the_person(
        client, live, daytime):
    """A caller waits; the operator answers by SMS. Twilio reports the SMS undelivered
    (30003: the phone is off, common in a village). The ops list still shows the answer
    like any other, so the operator thinks the person has it and moves on; hours later
    the idle close tells the person "Our team has finished helping you"."""
    hid = caller_waiting()
    a = sign_in(client, OPS_A, role="ops")
    text = "Hello, Asha from RideChain. Your refund is on its way."
    assert reply(client, a, hid, text).status_code == 200
    run_jobs()
    with transaction() as s:
        sid = s.scalar(select(OutboxMessage.provider_sid).where(OutboxMessage.body == text))
    assert sid
    never_reached(sid)  # the emulator said delivered; Twilio's word is this undelivered
    r = post_twilio(client, "/webhooks/twilio/status",
                    {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": "30003"})
    assert r.status_code == 204
    run_jobs()
    with transaction() as s:
        assert s.scalar(select(OutboxMessage.status).where(OutboxMessage.body == text)) \
            == "undelivered"
    listed = client.get(f"{API}/ops/handoffs", headers=a).get_json()["items"]
    (row,) = [h for h in listed if h["id"] == hid]
    (answer,) = [m for m in row["messages"] if m["direction"] == "out"]
    said = " ".join(str(v) for k, v in answer.items() if k != "body").lower()
    assert "undelivered" in said or "failed" in said or "not delivered" in said, row


# --- WhatsApp's 24 hours ----------------------------------------------------------------

BSUID = "IN.4c19e07d2ab35f61"  # a WhatsApp user given by an id, with no phone number


def test_a_reply_past_whatsapps_24_hours_is_refused_for_that_reason(client, live, daytime):
    """A WhatsApp user known only by their id (no number) waits; the operator said they
    would check and answers the next day, over 24 hours after the person last wrote. No
    template is set up, there is no number for an SMS: the reply cannot go. The operator
    is told "they sent STOP, or have no number": she never sent STOP, and the one thing
    that helps (she writes again, which opens WhatsApp for a free reply) is not said."""
    def say(body: str) -> str:
        return send_whatsapp(client, {"From": f"whatsapp:{BSUID}", "To": "whatsapp:+14155238886",
                                      "Body": body, "MessageSid": f"SMzr4b{next(_sid):028d}",
                                      "ProfileName": "Sita", "WaId": BSUID})

    for body in ("hi", "2", "4"):
        say(body)
    with transaction() as s:
        hid = s.scalar(select(Handoff.id).where(Handoff.status == "waiting"))
    a = sign_in(client, OPS_A, role="ops")
    assert reply(client, a, hid, "We are checking with the rider.").status_code == 200
    clock.freeze(DAYTIME + timedelta(hours=24, minutes=30))
    # The next day: her sign-in of yesterday ended (12 hours unused), she signs in again.
    a = sign_in(client, OPS_A)
    r = reply(client, a, hid, "The rider says he left it with your neighbour.")
    assert r.status_code == 409, r.get_json()
    said = r.get_json()["error"]["message"]
    assert "24" in said and "STOP" not in said, said


# --- fixer's follow-ups ---------------------------------------------------------------

def person_id_of(phone: str) -> int:
    with transaction() as s:
        return s.scalar(select(Person.id).where(Person.phone == phone))


def audits(action: str) -> list[AuditEntry]:
    with transaction() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action)
                              .order_by(AuditEntry.id)))


def test_a_chat_and_a_call_of_one_person_are_one_operators_and_change_hands_together(
        client, live, daytime, prompts):  # noqa: F811
    """The list says who answers the person on each of their rows, and a take-over on one
    row takes the person: the operator who took over answers her chat without being told
    another has her, and the one taken over from is refused there."""
    chat_asks_for_a_person(client)
    caller = AbsoluteCaller(client, PHONE)
    caller.call()
    assert caller.press("3").dial
    chat = next(h for h in waiting_of() if h.channel == "whatsapp")
    call = next(h for h in waiting_of() if h.channel == "voice")
    a, b = sign_in(client, OPS_A, role="ops"), sign_in(client, OPS_B, role="ops")
    assert reply(client, a, chat.id, "Hello Sita, Asha here.").status_code == 200
    listed = {h["id"]: h for h in client.get(f"{API}/ops/handoffs", headers=b)
              .get_json()["items"]}
    assert listed[call.id]["taken_by"] == listed[chat.id]["taken_by"] == person_id_of(OPS_A)
    (said,) = [m for m in listed[chat.id]["messages"] if m["direction"] == "out"]
    assert said["operator"] == person_id_of(OPS_A) and said["at"], said

    r = reply(client, b, call.id, "Ravi here, Asha's shift ended.", take_over=True)
    assert r.status_code == 200, r.get_json()
    (entry,) = audits("handoff.take_over")
    assert entry.details["from_operator"] == f"ops:{person_id_of(OPS_A)}"
    assert reply(client, b, chat.id, "Which booking was it?").status_code == 200
    r = reply(client, a, chat.id, "Asha again.")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "taken_by_other"
    assert {h.operator for h in waiting_of()} == {f"ops:{person_id_of(OPS_B)}"}


def test_a_close_by_take_over_names_and_audits_who_closed(client, live, daytime):
    hid = chat_asks_for_a_person(client)
    a, b = sign_in(client, OPS_A, role="ops"), sign_in(client, OPS_B, role="ops")
    assert reply(client, a, hid, "Hello Sita, Asha here.").status_code == 200
    r = client.post(f"{API}/ops/handoffs/{hid}/close?take_over=true", headers=b)
    assert r.status_code == 200, r.get_json()
    with transaction() as s:
        closed = s.get(Handoff, hid)
        assert (closed.status, closed.operator) == ("closed", f"ops:{person_id_of(OPS_B)}")
    (took,) = audits("handoff.take_over")
    (close,) = audits("handoff.close")
    assert took.details["from_operator"] == f"ops:{person_id_of(OPS_A)}"
    assert took.actor == close.actor == f"ops:{person_id_of(OPS_B)}"
    assert close.target == f"handoff:{hid}"


def test_a_blank_reply_is_refused_as_invalid_not_as_a_conflict(client, live, daytime):
    """A reply of blanks is bad input (422 at the API, whose model strips it), not a
    clash with the handoff's state: the service says so too, naming the field."""
    hid = chat_asks_for_a_person(client)
    with pytest.raises(ValidationError) as refused, transaction() as s:
        handoff.reply(s, hid, "ops:7", " \n ")
    assert (refused.value.code, refused.value.field) == ("empty_message", "body")
    a = sign_in(client, OPS_A, role="ops")
    r = reply(client, a, hid, "   ")
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "body", r.get_json()

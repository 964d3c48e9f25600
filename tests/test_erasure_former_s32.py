"""A partner's erasure takes what was his at an old number, not its next holder's
(session 32).

Ops moved a partner to a new SIM; his old numbers are kept with when they stopped being
his (people.former_phones). His erasure matched an old number in texts whenever written,
so it cleared a customer's live booking draft to the number's next holder, masked
anyone's waiting handoff messages, stored call answers and dead letters that said the
number after the move; and it took the bookings and messages at an old number from
before he ever held it (the holder before him, at a recycled SIM). It now takes, at each
old number, only what falls in the time it was his: from the first we knew of him at it
(his person row for the number he came with, the move onto it for another) until he
left it; texts by their own time, a booking draft by when its chat was last active.

Real PostgreSQL and Redis; time frozen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import count

import pytest
from sqlalchemy import func, select

from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff, HandoffMessage
from core.adapters.models import (
    Booking,
    Conversation,
    InboundEvent,
    OutboxMessage,
    PartnerProfile,
    Person,
)
from core.adapters.redis_conn import redis_client
from core.services import inbound, outbox, partner_profile, retention
from tests.test_admin import _keep_root_handlers, run  # noqa: F401  (autouse fixture)
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    frozen,  # noqa: F401  (fixture)
    make_partner,
    paid_booking,
)
from tests.test_erasure_s32 import _delivered, _erase_partner
from tests.test_partner_phone_s31 import NEW

pytestmark = pytest.mark.db

_ids = count(1)


@dataclass
class Said:
    """What came to a number, or was said of it, at one time: a parcel sent to it
    (delivered), a message to it, a message to the parcels' sender saying it, our stored
    answer to a call saying it, a customer's words to ops in a handoff still waiting, a
    customer's booking draft to it, a chat message set aside in Redis saying it."""

    words: str
    parcel: int
    message: int
    to_sender: int
    answer: int
    handoff_said: int
    draft: int
    letter: str


def _said_of(number: str, words: str) -> Said:
    """All of Said, written now (the database's time), by a customer of its own."""
    parcel = paid_booking(recipient=number)
    _delivered(parcel)
    n = next(_ids)
    with transaction() as s:
        message = outbox.queue_message(s, channel="sms", to=number, body=f"{words}: on its way",
                                       dedupe_key=f"test-{words}")
        to_sender = outbox.queue_message(s, channel="sms", to=CUSTOMER,
                                         body=f"{words}: booked for {number}",
                                         dedupe_key=f"test-{words}-sender")
        assert message is not None and to_sender is not None
        for sent in (message, to_sender):
            s.get(OutboxMessage, sent).status = "delivered"  # type: ignore[union-attr]
        customer = Person(phone=f"+91970000{n:04d}", role="customer")
        s.add(customer)
        s.flush()
        chat = Conversation(channel="sms", contact=customer.phone, person_id=customer.id,
                            step="start", state={}, misses=0, handoff=True)
        draft = Conversation(channel="whatsapp", contact=customer.phone[1:],  # type: ignore[index]
                             person_id=customer.id, step="confirm",
                             state={"slots": {"recipient_name": "Gita",
                                              "recipient_phone": number}},
                             misses=0, handoff=False)
        s.add_all([chat, draft])
        s.flush()
        waiting = Handoff(conversation_id=chat.id, person_id=customer.id, channel="sms",
                          reason="asked", status="waiting")
        s.add(waiting)
        s.flush()
        handoff_said = HandoffMessage(handoff_id=waiting.id, direction="in",
                                      body=f"{words}: send it to {number}")
        answer = InboundEvent(provider="twilio", external_id=f"CAe{n:06d}", channel="voice",
                              response_body=f"{words}. Call {number}")
        s.add_all([handoff_said, answer])
        s.flush()
        now = s.scalar(select(func.now()))
        assert now is not None
        letter = json.dumps({"channel": "sms", "contact": customer.phone,
                             "body": f"{words}: call {number}", "dead_at": now.timestamp()})
        redis_client().rpush(inbound.DEAD_LETTER, letter)
        return Said(words, parcel, message, to_sender, answer.id, handoff_said.id, draft.id,
                    letter)


def _as_said(said: Said, number: str) -> list[str]:
    """Which of ``said`` lost what it had (empty: all as it was)."""
    lost = []
    with transaction() as s:
        if s.scalar(select(Booking.recipient_phone).where(Booking.id == said.parcel)) != number:
            lost.append("parcel")
        message = s.get(OutboxMessage, said.message)
        if message is None or (message.to_addr, message.body) != (number,
                                                                   f"{said.words}: on its way"):
            lost.append("message")
        if s.scalar(select(OutboxMessage.body).where(OutboxMessage.id == said.to_sender)) != (
                f"{said.words}: booked for {number}"):
            lost.append("message to the sender")
        if s.scalar(select(InboundEvent.response_body).where(
                InboundEvent.id == said.answer)) != f"{said.words}. Call {number}":
            lost.append("answer")
        if s.scalar(select(HandoffMessage.body).where(HandoffMessage.id == said.handoff_said)) != (
                f"{said.words}: send it to {number}"):
            lost.append("handoff")
        draft = s.get(Conversation, said.draft)
        if draft is None or draft.state["slots"].get("recipient_phone") != number:
            lost.append("draft")
    if said.letter not in [d.text for d in inbound.dead_letters()]:
        lost.append("dead letter")
    return lost


def _taken(said: Said) -> list[str]:
    """Which of ``said`` still say the number or are still sent to it (empty: all
    erased)."""
    kept = []
    with transaction() as s:
        if s.scalar(select(Booking.recipient_phone).where(Booking.id == said.parcel)) is not None:
            kept.append("parcel")
        message = s.get(OutboxMessage, said.message)
        if message is None or (message.to_addr, message.body) != (retention.ERASED_ADDR,
                                                                   retention.REDACTED):
            kept.append("message")
        if s.scalar(select(OutboxMessage.body).where(
                OutboxMessage.id == said.to_sender)) != retention.REDACTED:
            kept.append("message to the sender")
        if s.scalar(select(InboundEvent.response_body).where(
                InboundEvent.id == said.answer)) is not None:
            kept.append("answer")
        if s.scalar(select(HandoffMessage.body).where(
                HandoffMessage.id == said.handoff_said)) != retention.REDACTED:
            kept.append("handoff")
        draft = s.get(Conversation, said.draft)
        if draft is None or "recipient_phone" in draft.state["slots"]:
            kept.append("draft")
    if said.letter in [d.text for d in inbound.dead_letters()]:
        kept.append("dead letter")
    return kept


def _person_of(partner_id: int) -> int:
    with transaction() as s:
        p = s.get(PartnerProfile, partner_id)
        assert p is not None
        return p.person_id


def _move(partner_id: int, phone: str) -> None:
    with transaction() as s:
        assert partner_profile.set_phone(s, partner_id, phone, actor="ops:test").changed


def test_his_erasure_leaves_what_came_to_his_old_number_after_he_left_it(
        client, live, frozen):  # noqa: F811
    pid, old = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    his = _said_of(old, "Ramesh before")
    _move(pid, NEW)
    # The number is someone else's now: a customer books a parcel to him (her draft, her
    # words to ops), our answers and messages say it.
    theirs = _said_of(old, "Mohan after")
    _erase_partner(pid, _person_of(pid))
    assert _taken(his) == [], "what was his at the old number was left"
    assert _as_said(theirs, old) == [], (
        "what came to the old number, or was said of it, after he left it was erased")


def test_his_erasure_takes_at_the_number_he_came_with_what_it_took_before_his_move(
        client, live, frozen):  # noqa: F811
    """The number he came to us with: what came to it before his person row (parcels
    he received before he signed up) is his as it is at a current number, where nothing
    tells it from an earlier holder's. A lower bound at his person row left those rows
    to nobody's erasure once he moved (his stopped there, the number's own after he
    left it)."""
    number = "+919812344400"
    before = _said_of(number, "Ramesh before he signed up")
    pid, _ = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False, phone=number)
    his = _said_of(number, "Ramesh since")
    _move(pid, NEW)
    _erase_partner(pid, _person_of(pid))
    assert _taken(his) == [], "what was his at the number was left"
    assert _taken(before) == [], "what came to his number before he signed up was left"


def test_a_number_he_moved_onto_is_his_from_the_move(client, live, frozen):  # noqa: F811
    """His second SIM: what came to it before the move onto it was its holder's before
    him; a parcel on its way to him then, and an SMS waiting to go to him, followed him
    there, and are his. He moved back to his first number later, and away again: that
    number was his from the start."""
    second, third = "+919812344401", "+919812344402"
    pid, first = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    at_first = _said_of(first, "Ramesh at first")
    coming = paid_booking(recipient=first)  # on its way to him: it follows him
    with transaction() as s:  # an SMS waiting to go to him: it goes to the new SIM
        waiting = outbox.queue_message(s, channel="sms", to=first, body="Ramesh: job 7",
                                       dedupe_key="test-waiting")
    before = _said_of(second, "Mohan before")
    _move(pid, second)
    with transaction() as s:
        assert s.scalar(select(Booking.recipient_phone).where(Booking.id == coming)) == second
        sms = s.get(OutboxMessage, waiting)
        assert sms is not None and sms.to_addr == second
        sms.status, sms.sent_at = "delivered", s.scalar(select(func.now()))
    _delivered(coming)
    at_second = _said_of(second, "Ramesh at second")
    _move(pid, first)
    _move(pid, third)
    _erase_partner(pid, _person_of(pid))
    assert _taken(at_first) == [], "what was his at his first number was left"
    assert _taken(at_second) == [], "what was his at his second number was left"
    with transaction() as s:
        assert s.scalar(select(Booking.recipient_phone).where(Booking.id == coming)) is None, (
            "the parcel that followed him kept his number")
        sms = s.get(OutboxMessage, waiting)
        assert sms is not None and (sms.to_addr, sms.body) == (
            retention.ERASED_ADDR, retention.REDACTED), "the SMS that followed him was left"
    assert _as_said(before, second) == [], (
        "what came to his second number before he had it was erased")
    with transaction() as s:  # run again: nothing left
        assert not retention.erase_person(s, _person_of(pid)).changed


def test_the_number_he_was_moved_onto_and_still_holds_is_his_from_the_move(
        client, live, frozen):  # noqa: F811
    """Review: the lower bound held only once he had left a number he was moved onto:
    erased while he still held it, what its holder before him had there (a parcel to
    him, messages, texts saying it) went with him. His current number is his from the
    move onto it too (a draft naming a number he holds is about him, and goes)."""
    second = "+919812344401"
    pid, _ = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    before = _said_of(second, "Mohan before")
    _move(pid, second)
    his = _said_of(second, "Ramesh since")
    _erase_partner(pid, _person_of(pid))
    assert _taken(his) == [], "what was his at the number he holds was left"
    assert [lost for lost in _as_said(before, second) if lost != "draft"] == [], (
        "what came to the number before he was moved onto it was erased")

"""Erasing a recycled number's new holder leaves its old holder's past (session 32).

Ops moved a partner to a new SIM; the telco gave his old number to a stranger, who wrote
to us from it. Erasing the stranger (by his person id, or as a recipient by the number)
took everything at the number: the partner's messages to it, his chat with ops from it,
the parcel sent to it before the move. It now takes only what came after the partner
left the number (people.former_phones), and the partner's own erasure still takes his.

Real PostgreSQL and Redis; time frozen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

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
    LAXMIPUR,
    frozen,  # noqa: F401  (fixture)
    make_partner,
    paid_booking,
)
from tests.test_partner_phone_s31 import NEW

pytestmark = pytest.mark.db

_events = iter(range(1, 10_000))


@dataclass
class Rows:
    """One holder's rows at the number: a message to it, a handoff message in its SMS
    chat, a parcel sent to it, a stored answer that says it."""

    message: int
    said: int
    parcel: int
    answer: int


def _delivered(booking_id: int) -> None:
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None
        booking.status = "delivered"


def _rows_at(number: str, person_id: int, words: str) -> Rows:
    """What ``person_id`` has at ``number`` now: a parcel sent to it (delivered), a
    message to it, their words to ops in its SMS chat (taken up by them as
    conversation.contact_for does), and our stored answer to a rider that says it."""
    parcel = paid_booking(recipient=number)
    _delivered(parcel)
    with transaction() as s:
        message = outbox.queue_message(s, channel="sms", to=number, body=f"{words}: on its way",
                                       dedupe_key=f"test-{words}")
        assert message is not None
        s.get(OutboxMessage, message).status = "delivered"  # type: ignore[union-attr]
        chat = s.scalar(select(Conversation).where(Conversation.channel == "sms",
                                                   Conversation.contact == number))
        if chat is None:
            chat = Conversation(channel="sms", contact=number, person_id=person_id,
                                step="start", state={}, misses=0, handoff=False)
            s.add(chat)
        chat.person_id = person_id
        s.flush()
        handoff = Handoff(conversation_id=chat.id, person_id=person_id, channel="sms",
                          reason="asked", status="closed")
        s.add(handoff)
        s.flush()
        said = HandoffMessage(handoff_id=handoff.id, direction="in", body=words)
        answer = InboundEvent(provider="twilio", external_id=f"SMe{next(_events):06d}",
                              channel="sms", response_body=f"Job is yours. Call {number}")
        s.add_all([said, answer])
        s.flush()
        return Rows(message, said.id, parcel, answer.id)


def _kept(rows: Rows, number: str, words: str) -> list[str]:
    """Which of ``rows`` lost what they had (empty: all as they were)."""
    lost = []
    with transaction() as s:
        message = s.get(OutboxMessage, rows.message)
        if message is None or (message.to_addr, message.body) != (number,
                                                                   f"{words}: on its way"):
            lost.append("message")
        said = s.get(HandoffMessage, rows.said)
        if said is None or said.body != words:
            lost.append("chat")
        if s.scalar(select(Booking.recipient_phone).where(Booking.id == rows.parcel)) != number:
            lost.append("parcel")
        if s.scalar(select(InboundEvent.response_body).where(
                InboundEvent.id == rows.answer)) != f"Job is yours. Call {number}":
            lost.append("answer")
    return lost


def _erased(rows: Rows) -> list[str]:
    """Which of ``rows`` still say what they said (empty: all erased)."""
    kept = []
    with transaction() as s:
        message = s.get(OutboxMessage, rows.message)
        if message is None or (message.to_addr, message.body) != (retention.ERASED_ADDR,
                                                                   retention.REDACTED):
            kept.append("message")
        said = s.get(HandoffMessage, rows.said)
        if said is None or said.body != retention.REDACTED:
            kept.append("chat")
        if s.scalar(select(Booking.recipient_phone).where(Booking.id == rows.parcel)) is not None:
            kept.append("parcel")
        if s.scalar(select(InboundEvent.response_body).where(
                InboundEvent.id == rows.answer)) is not None:
            kept.append("answer")
    return kept


def _recycled_number() -> tuple[int, int, str, Rows, int, Rows]:
    """A partner with his rows at his number, moved to a new SIM; the telco's next holder
    of the old number writing to us from it, with rows of his own there. Before them both
    someone else left the number long ago (an earlier holder): the latest leaving counts.
    (partner id, his person id, the number, his rows, the stranger's id, his rows)"""
    pid, old = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    with transaction() as s:
        p = s.get(PartnerProfile, pid)
        assert p is not None
        partner_person = p.person_id
        s.add(Person(role="customer",
                     former_phones={old: datetime(2024, 1, 5, tzinfo=UTC).isoformat()}))
    his = _rows_at(old, partner_person, "Ramesh asks where his parcel is")
    with transaction() as s:
        partner_profile.set_phone(s, pid, NEW, actor="ops:test")
    with transaction() as s:
        stranger = Person(phone=old, role="customer")  # who wrote from it since
        s.add(stranger)
        s.flush()
        stranger_id = stranger.id
    theirs = _rows_at(old, stranger_id, "Mohan says hello")
    return pid, partner_person, old, his, stranger_id, theirs


def _erase_partner(pid: int, person_id: int) -> None:
    with transaction() as s:
        p = s.get(PartnerProfile, pid)
        assert p is not None
        p.kyc_status = "suspended"
    with transaction() as s:
        assert retention.erase_person(s, person_id).changed


def test_erasing_the_numbers_new_holder_leaves_the_partners_past(client, live, frozen):  # noqa: F811
    pid, partner, old, his, stranger, theirs = _recycled_number()
    with transaction() as s:
        assert retention.erase_person(s, stranger).changed
    assert _erased(theirs) == [], "the stranger's own rows at the number were left"
    assert _kept(his, old, "Ramesh asks where his parcel is") == [], (
        "the partner's rows from before his move were erased with the stranger")
    with transaction() as s:  # run again: nothing left
        assert not retention.erase_person(s, stranger).changed

    # A later holder left the number too: his leaving is after the partner's, and does
    # not make the partner's rows anybody else's.
    with transaction() as s:
        former = s.scalar(select(Person.former_phones).where(Person.id == partner))
        assert former is not None
        later = datetime.fromisoformat(former[old]) + timedelta(days=30)
        s.add(Person(role="customer", former_phones={old: later.isoformat()}))
    _erase_partner(pid, partner)  # his erasure still takes them
    assert _erased(his) == []


def test_erasing_the_number_as_a_recipient_leaves_the_partners_past(client, live, frozen):  # noqa: F811
    pid, partner, old, his, stranger, theirs = _recycled_number()
    with transaction() as s:
        done = retention.erase_recipient(s, old, actor="ops:test", reason="he asked")
    assert _erased(theirs) == [], "the stranger's own rows at the number were left"
    assert _kept(his, old, "Ramesh asks where his parcel is") == [], (
        "the partner's rows from before his move were erased with the number")
    assert done.booking_ids == [theirs.parcel]  # the audit names his parcel alone
    with transaction() as s:
        assert s.scalar(select(Person.phone).where(Person.id == stranger)) is None

    _erase_partner(pid, partner)  # his erasure still takes them
    assert _erased(his) == []


def test_chat_messages_set_aside_that_say_the_number_go_by_their_time(
        client, live, frozen):  # noqa: F811
    """Redis's dead letters that say the number: one set aside while it was the
    partner's stays; one set aside since, or at a time not known, goes."""
    pid, partner, old, _, stranger, _ = _recycled_number()
    with transaction() as s:
        former = s.scalar(select(Person.former_phones).where(Person.id == partner))
    assert former is not None
    left = datetime.fromisoformat(former[old]).timestamp()

    def letter(body: str, at: float | None) -> str:
        data: dict[str, object] = {"channel": "sms", "contact": old, "body": body}
        if at is not None:
            data["dead_at"] = at
        return json.dumps(data)

    his = letter(f"send it to {old}", left - timedelta(hours=1).total_seconds())
    since = letter(f"I am at {old}", left + 1)
    unknown = letter(f"call {old}", None)
    redis_client().rpush(inbound.DEAD_LETTER, his, since, unknown)
    with transaction() as s:
        assert retention.erase_person(s, stranger).counts["dead_letters"] == 2
    assert [d.text for d in inbound.dead_letters()] == [his]

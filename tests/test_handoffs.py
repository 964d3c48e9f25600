"""Talk to a person: a handoff nobody touches closes by itself (the bot would otherwise
stay quiet on that conversation for good), and an operator is told when a reply cannot
reach the person. Through the signed webhook, the drain job and the outbox sweep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from core import clock
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff
from core.adapters.models import Conversation
from core.services import handoff
from tests.conftest import run_jobs, send_whatsapp

pytestmark = pytest.mark.db

PHONE = "+919812300031"
_sid = iter(range(1, 10_000))


def say(client, body: str) -> str:  # noqa: ANN001
    return send_whatsapp(client, {"From": f"whatsapp:{PHONE}", "To": "whatsapp:+14155238886",
                                  "Body": body, "MessageSid": f"SMexp{next(_sid):030d}",
                                  "ProfileName": "Sita"})


def asks_for_a_person(client) -> int:  # noqa: ANN001
    for body in ("hi", "2"):  # English
        say(client, body)
    assert "A person from our team will reply" in say(client, "4")
    with transaction() as s:
        (h,) = s.scalars(select(Handoff).where(Handoff.status == "waiting")).all()
        return h.id


def sweep_at(after: timedelta) -> int:
    """Run the outbox sweep job (as the worker does) ``after`` from now."""
    from core.adapters.queue import queue

    clock.freeze(datetime.now(UTC) + after)
    queue("outbox").enqueue("workers.outbox.sweep", job_id=f"sweep-{int(after.total_seconds())}")
    run_jobs(("outbox",))
    with transaction() as s:
        return s.scalar(select(Handoff.status).where(Handoff.conversation_id.is_not(None)))


@pytest.fixture(autouse=True)
def _clock():
    yield
    clock.freeze(None)


def outbox_bodies() -> list[str]:
    from core.adapters.models import OutboxMessage

    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).order_by(OutboxMessage.id)))


def test_a_handoff_nobody_answers_closes_after_the_idle_hours_and_the_bot_is_back(client, live):
    asks_for_a_person(client)
    say(client, "hello? anyone?")  # kept for the operator; the bot stays quiet
    before = len(outbox_bodies())
    assert sweep_at(timedelta(hours=handoff.idle_hours() - 1)) == "waiting"
    assert sweep_at(timedelta(hours=handoff.idle_hours(), minutes=1)) == "closed"
    apology = outbox_bodies()[before:]
    assert len(apology) == 1 and "no one from our team could reply in time" in apology[0]
    with transaction() as s:
        conv = s.scalar(select(Conversation))
        assert (conv.handoff, conv.step) == (False, "menu")
    # Told once: another sweep sends nothing more, and the bot answers again.
    sweep_at(timedelta(hours=handoff.idle_hours() + 1))
    assert len(outbox_bodies()) == before + 1
    clock.freeze(None)
    assert "1. Send a parcel" in say(client, "hi")


def test_a_message_while_waiting_keeps_the_handoff_open(client, live, monkeypatch):
    monkeypatch.setenv("HANDOFF_IDLE_HOURS", "2")
    asks_for_a_person(client)
    clock.freeze(datetime.now(UTC) + timedelta(hours=1, minutes=30))
    say(client, "still there?")  # activity: the idle time starts again
    assert sweep_at(timedelta(hours=2, minutes=10)) == "waiting"
    assert sweep_at(timedelta(hours=3, minutes=40)) == "closed"


def test_an_answered_handoff_left_open_closes_with_the_usual_words(client, live):
    handoff_id = asks_for_a_person(client)
    with transaction() as s:
        handoff.reply(s, handoff_id, "ops:7", "We are looking at it.")
    before = len(outbox_bodies())
    assert sweep_at(timedelta(hours=handoff.idle_hours(), minutes=5)) == "closed"
    (closing,) = outbox_bodies()[before:]
    assert "Our team has finished helping you" in closing


def test_a_reply_to_someone_who_cannot_be_messaged_is_refused_not_reported_sent(client, live):
    from core.adapters.dialog_models import HandoffMessage
    from core.adapters.models import Person
    from core.domain.errors import Conflict

    handoff_id = asks_for_a_person(client)
    with transaction() as s:  # they sent STOP meanwhile, on WhatsApp and by SMS
        person = s.scalar(select(Person).where(Person.phone == PHONE))
        person.opted_out = person.sms_opted_out = True
    before = len(outbox_bodies())
    with pytest.raises(Conflict) as refused, transaction() as s:
        handoff.reply(s, handoff_id, "ops:7", "Hello, Ravi here.")
    assert refused.value.code == "recipient_unreachable"
    assert len(outbox_bodies()) == before
    with transaction() as s:
        assert s.scalar(select(HandoffMessage).where(HandoffMessage.direction == "out")) is None


def test_an_operator_calling_the_person_keeps_the_handoff_and_it_ends_with_the_usual_words(
        client, live):
    """Taking the number to call back is the operator's answer: the idle time starts
    again, and when it runs out the person is not told that nobody could reply."""
    handoff_id = asks_for_a_person(client)
    clock.freeze(datetime.now(UTC) + timedelta(hours=handoff.idle_hours() - 1))
    with transaction() as s:
        assert handoff.phone_to_call(s, handoff_id, "ops:7")[0] == PHONE
    before = len(outbox_bodies())
    assert sweep_at(timedelta(hours=handoff.idle_hours() + 0.5)) == "waiting"
    assert sweep_at(timedelta(hours=2 * handoff.idle_hours())) == "closed"
    (closing,) = outbox_bodies()[before:]
    assert "Our team has finished helping you" in closing

"""Session 39: messages whose send outcome was lost (left "sending", no sid) and that a
reconcile gives back later, or that wait for a retry, went out as they were written even
when what they said or where they went had changed meanwhile:

- a leg's code replaced since (ops made a new drop code) went AFTER the new one: the
  recipient's last SMS carried the void code (now failed as replaced, not sent);
- a partner moved to a new SIM since went to the OLD number (maybe a stranger's): an SMS
  given back now goes to his new number; a WhatsApp message waiting for a retry (or
  given back) goes to him as notify sends to him now (his new number has no WhatsApp
  chat with us: by SMS), never to the old number's WhatsApp.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from sqlalchemy import select

from core import clock
from core.adapters import twilio_gateway
from core.adapters.db import transaction
from core.adapters.models import Conversation, OutboxMessage, Person, SandboxMessage
from core.adapters.redis_conn import redis_client
from core.domain.booking import Actor
from core.services import dispatch, outbox, partner_profile
from sandbox.twilio import FAIL_NEXT_KEY
from tests.conftest import release_scheduled, run_jobs
from tests.test_dispatch import (  # noqa: F401 (fixtures)
    LAXMIPUR,
    OPS,
    RECIPIENT,
    frozen,
    legs_of,
    make_partner,
    paid_booking,
    sms,
    start,
)
from tests.test_outbox_reconcile import STALE, T0, line, sweep_at  # noqa: F401 (fixture)

pytestmark = pytest.mark.db
NEW = "+919812345601"


def at_twilio(to: str) -> list[str]:
    """The texts Twilio was given for ``to``, in order."""
    with transaction() as s:
        return list(s.scalars(select(SandboxMessage.body).where(SandboxMessage.to_addr == to)
                              .order_by(SandboxMessage.id)))


def outbox_row(oid: int) -> OutboxMessage:
    with transaction() as s:
        r = s.get(OutboxMessage, oid)
        assert r is not None
        s.expunge(r)
        return r


def test_a_lost_drop_code_given_back_after_a_new_one_is_not_sent(
        client, live, frozen, monkeypatch):  # noqa: F811
    real = twilio_gateway.send_message
    lose = {"on": True}

    def send(**kw):  # noqa: ANN003, ANN202
        if lose["on"] and kw["to"] == RECIPIENT:
            raise requests.exceptions.ReadTimeout("read timed out")  # Twilio never got it
        return real(**kw)

    monkeypatch.setattr(twilio_gateway, "send_message", send)
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    sms(client, rider, "1")
    run_jobs()
    with transaction() as s:
        old_id = s.scalars(select(OutboxMessage.id).where(
            OutboxMessage.to_addr == RECIPIENT).order_by(OutboxMessage.id)).first()
    assert old_id is not None
    old = outbox_row(old_id)
    assert (old.status, old.provider_sid) == ("sending", None)
    assert old.dedupe_key.startswith(f"leg-{legs_of(booking_id)[0].id}-dropotp-")
    lose["on"] = False
    with transaction() as s:  # "no code came": ops send her a new one
        dispatch.new_leg_code(s, legs_of(booking_id)[0].id, "drop", Actor("ops", "1"),
                              reason="recipient says no code came", send=True)
    run_jobs()
    sent = at_twilio(RECIPIENT)
    assert len(sent) == 1 and sent[0] != old.body
    clock.freeze(clock.now() + STALE)
    outbox.sweep()  # the reconcile: Twilio has none of the old one
    run_jobs()
    assert at_twilio(RECIPIENT) == sent  # the void code did not follow the new one
    r = outbox_row(old_id)
    assert (r.status, r.last_error, r.error_code) == ("failed", outbox.LEG_CODE_REPLACED, None)
    assert outbox.code_masked(r.body, r.code_spans)  # nothing can send it again


def test_a_lost_drop_code_given_back_without_a_new_one_is_sent(
        client, live, frozen, monkeypatch):  # noqa: F811
    """The check is of its replacement, not of its loss: alone, the given-back code goes."""
    real = twilio_gateway.send_message
    lose = {"on": True}

    def send(**kw):  # noqa: ANN003, ANN202
        if lose["on"] and kw["to"] == RECIPIENT:
            raise requests.exceptions.ReadTimeout("read timed out")
        return real(**kw)

    monkeypatch.setattr(twilio_gateway, "send_message", send)
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    sms(client, rider, "1")
    run_jobs()
    lose["on"] = False
    with transaction() as s:
        body = s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == RECIPIENT)).one()
    clock.freeze(clock.now() + STALE)
    outbox.sweep()
    run_jobs()
    assert at_twilio(RECIPIENT) == [body]


def _partner_with_ops() -> tuple[int, str]:
    with transaction() as s:
        s.add(Person(phone=OPS, name="Ops", role="ops", preferred_language="hi"))
    return make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)


def test_a_lost_sms_given_back_after_a_phone_move_goes_to_the_new_number(line):  # noqa: F811
    clock.freeze(T0)
    pid, old = _partner_with_ops()
    body = "Your payout of Rs 812 was sent to acc ending 4455"
    line.request_lost = True  # read timeout; Twilio never got it
    with transaction() as s:
        oid = outbox.queue_message(s, channel="sms", to=old, body=body,
                                   dedupe_key="test-payout", work=True)
    run_jobs()
    line.request_lost = False
    r = outbox_row(oid)
    assert (r.status, r.provider_sid) == ("sending", None)
    with transaction() as s:
        partner_profile.set_phone(s, pid, NEW, actor="ops:test")
    run_jobs()
    before = at_twilio(old)
    assert body not in before
    sweep_at(T0 + STALE)
    assert at_twilio(old) == before  # the old number (a stranger's?) heard nothing more
    assert at_twilio(NEW)[-1] == body
    r = outbox_row(oid)
    assert (r.to_addr, r.status) == (NEW, "queued")  # Twilio took it (our web is down)
    assert r.provider_sid is not None


def test_a_lost_message_written_after_the_move_to_the_old_number_stays_there(line):  # noqa: F811
    """Only what was written to him before he moved follows him: a message written to the
    old number since (its new holder's) goes there."""
    clock.freeze(T0)
    pid, old = _partner_with_ops()
    with transaction() as s:
        partner_profile.set_phone(s, pid, NEW, actor="ops:test")
    run_jobs()
    line.request_lost = True
    with transaction() as s:
        oid = outbox.queue_message(s, channel="sms", to=old, body="Welcome to RideChain",
                                   dedupe_key="test-stranger")
    run_jobs()
    line.request_lost = False
    assert outbox_row(oid).status == "sending"
    sweep_at(T0 + STALE)
    assert at_twilio(old)[-1] == "Welcome to RideChain"
    assert "Welcome to RideChain" not in at_twilio(NEW)


def _whatsapp_partner() -> tuple[int, str, int]:
    pid, old = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    with transaction() as s:
        person = s.scalars(select(Person).where(Person.phone == old)).one()
        s.add(Conversation(channel="whatsapp", contact=old[1:], person_id=person.id,
                           step="menu", state={}, misses=0, handoff=False,
                           last_inbound_at=clock.now()))
        return pid, old, person.id


def test_a_whatsapp_message_waiting_for_a_retry_follows_a_move_by_sms(
        client, live, frozen):  # noqa: F811
    pid, old, person_id = _whatsapp_partner()
    body = "Your refund of Rs 240 for booking 12345678 is on its way"
    redis_client().set(FAIL_NEXT_KEY, 1)  # Twilio answers 503 once: it waits for a retry
    with transaction() as s:
        person = s.get(Person, person_id)
        oid = outbox.queue_message(s, channel="whatsapp", to=old, body=body,
                                   dedupe_key="test-wa", person=person)
    run_jobs()
    r = outbox_row(oid)
    assert (r.status, r.attempts) == ("pending", 1)
    with transaction() as s:
        partner_profile.set_phone(s, pid, NEW, actor="ops:test")
    run_jobs()
    release_scheduled(timedelta(minutes=30))
    run_jobs()
    assert at_twilio(f"whatsapp:{old}") == []
    assert body in at_twilio(NEW)  # his new number has no WhatsApp chat with us: SMS
    r = outbox_row(oid)
    assert (r.status, r.last_error) == ("failed", outbox.NUMBER_MOVED)
    with transaction() as s:
        copy = s.scalars(select(OutboxMessage).where(
            OutboxMessage.dedupe_key == f"sms-for-{oid}")).one()
        assert (copy.channel, copy.to_addr) == ("sms", NEW)


def test_a_lost_whatsapp_message_given_back_after_a_move_follows_him(line):  # noqa: F811
    """One being sent at the move (its outcome lost) is not touched by set_phone (it may
    be at Twilio); given back since, it goes to him, not to the old number's WhatsApp."""
    clock.freeze(T0)
    with transaction() as s:
        s.add(Person(phone=OPS, name="Ops", role="ops", preferred_language="hi"))
    pid, old, person_id = _whatsapp_partner()
    body = "Your refund of Rs 240 for booking 12345678 is on its way"
    line.request_lost = True
    with transaction() as s:
        oid = outbox.queue_message(s, channel="whatsapp", to=old, body=body,
                                   dedupe_key="test-wa-lost", person=s.get(Person, person_id))
    run_jobs()
    line.request_lost = False
    assert outbox_row(oid).status == "sending"
    with transaction() as s:
        partner_profile.set_phone(s, pid, NEW, actor="ops:test")
    run_jobs()
    assert outbox_row(oid).status == "sending"  # left to the reconcile
    sweep_at(T0 + STALE)
    assert at_twilio(f"whatsapp:{old}") == []
    assert body in at_twilio(NEW)
    assert outbox_row(oid).last_error == outbox.NUMBER_MOVED

"""Erasure and retention at their edges: personal data others kept, or kept outside the
tables the erasure walks (Redis, stored call answers, the audit log).

Each test drives a real flow (signed webhooks, the REST API, the IVR, RQ jobs) and then
looks in every place the data could still be.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import (
    Booking,
    Conversation,
    InboundEvent,
    OutboxMessage,
    PartnerProfile,
)
from core.adapters.redis_conn import redis_client
from core.services import inbound, retention
from core.services.partner_app import LAST_FIX_KEY
from core.services.seed import OPS_PERSON, seed_demo
from tests.conftest import read_first
from tests.test_api import API, sign_in
from tests.test_retention import erase, erase_partner, person_id, run_retention_job, wa

pytestmark = pytest.mark.db

SENDER = "+919812300061"
RECIPIENT = "+919812300062"  # keyed in as 9812300062
CALLER = "+919812300063"
OTHER = "+919812300064"


@pytest.fixture(autouse=True)
def _clock():
    yield
    clock.freeze(None)


def _texts_everywhere() -> list[str]:
    """Every stored text a person's data could sit in: outbox bodies and addresses,
    conversation states, stored webhook answers, audit details."""
    with transaction() as s:
        out = [f"{m.to_addr} {m.body} {m.last_error or ''}"
               for m in s.scalars(select(OutboxMessage))]
        out += [repr(c.state) + c.contact for c in s.scalars(select(Conversation))]
        out += [e.response_body or "" for e in s.scalars(select(InboundEvent))]
        out += [repr(a.details) for a in s.scalars(select(AuditEntry))]
    return out


def _audit_details(action: str) -> dict:
    with transaction() as s:
        (entry,) = s.scalars(select(AuditEntry).where(AuditEntry.action == action))
        return dict(entry.details)


# --- Redis ---------------------------------------------------------------------------------


def test_erasing_a_partner_forgets_their_last_gps_fix(client):
    """The app's last exact position (``partner:lastfix``, kept for the speed check) goes
    with the partner's erasure, as their positions in the GEO sets do."""
    from tests.test_dispatch import LAXMIPUR as AT
    from tests.test_dispatch import make_partner

    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    partner_id, phone = make_partner("Suresh", AT, has_app=True, on_duty=False)
    rider = sign_in(client, phone)
    r = client.put(f"{API}/partners/me/location", headers=rider,
                   json={"lat": 26.8123, "lng": 84.5061, "accuracy_m": 10,
                         "timestamp": clock.now().isoformat()})
    assert r.status_code == 200, r.get_json()
    assert redis_client().hget(LAST_FIX_KEY, str(partner_id)) is not None
    assert client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                      json={"status": "suspended", "note": "asked to leave"}).status_code == 200
    r = erase_partner(client, ops, partner_id)
    assert r.status_code == 200, r.get_json()

    left = redis_client().hget(LAST_FIX_KEY, str(partner_id))
    assert left is None, f"the erased partner's exact position is still in Redis: {left!r}"


def _break_a_turn(client, monkeypatch, phone: str, text: str) -> None:
    """The contact chats; the message ``text`` hits a bug in its turn and is set aside in
    the dead-letter list (as inbound.drain does with any message its handler cannot
    take)."""
    from bots import whatsapp

    real = whatsapp.handle

    def flaky(session, msg):
        if msg.body == text:
            raise ValueError("a bug in a dialog step")
        return real(session, msg)

    monkeypatch.setitem(__import__("workers.inbound").inbound.HANDLERS, "whatsapp", flaky)
    before = redis_client().llen(inbound.DEAD_LETTER)
    wa(client, phone, "hi")
    wa(client, phone, text)
    assert redis_client().llen(inbound.DEAD_LETTER) == before + 1


def _dead_letters() -> list[str]:
    return [raw.decode() for raw in redis_client().lrange(inbound.DEAD_LETTER, 0, -1)]


def test_erasing_a_person_drops_their_dead_letters_and_keeps_the_others(client,
                                                                        monkeypatch):
    """Their message set aside by a failed turn goes with their erasure; another
    contact's stays, still readable as a message, with the time it was set aside."""
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    _break_a_turn(client, monkeypatch, SENDER, "my house is the blue one behind the temple")
    _break_a_turn(client, monkeypatch, OTHER, "the shop next to the well")
    r = erase(client, ops, person_id(SENDER))
    assert r.status_code == 200, r.get_json()

    dead = _dead_letters()
    assert not [d for d in dead if SENDER[1:] in d or "blue one" in d], dead
    (kept,) = inbound.dead_letters()
    assert inbound.decode(kept.raw).body == "the shop next to the well"
    assert kept.at is not None and abs(kept.at - clock.now().timestamp()) < 60


def test_the_retention_job_drops_dead_letters_older_than_the_message_window(client,
                                                                           monkeypatch):
    """A dead letter is a chat message like any other: after RETENTION_MESSAGE_DAYS (90
    by default) the daily job drops it; a younger one stays for ops to look at."""
    start = clock.now()
    _break_a_turn(client, monkeypatch, SENDER, "my house is the blue one behind the temple")
    assert redis_client().ttl(inbound.DEAD_LETTER) == -1  # no expiry of its own
    clock.freeze(start + timedelta(days=350))
    _break_a_turn(client, monkeypatch, OTHER, "the shop next to the well")
    clock.freeze(start + timedelta(days=400))
    done = run_retention_job()

    dead = _dead_letters()
    assert len(dead) == 1 and "the shop next to the well" in dead[0], dead
    assert done["dead_letters"] == 1


# --- the senders' copies of an erased recipient ----------------------------------------------


def _book_by_chat_then_cancel(client) -> None:
    """The sender books on WhatsApp for Sita Devi (9812300062), then cancels unpaid."""
    for text in ("hi", "2", "1", "845438", "2", "1", "845450", "4", "1", "Sita Devi",
                 "9812300062", "1", "1", "1", "no", "1", "2"):
        reply = wa(client, SENDER, text)
    assert "Please check your booking:" in reply
    read_first()  # the clock frozen from here on (_clock lets it run again)
    assert wa(client, SENDER, "1")  # book it
    for text in ("0", "3", "1"):
        wa(client, SENDER, text)
    assert "is cancelled." in wa(client, SENDER, "yes")
    with transaction() as s:
        (b,) = s.scalars(select(Booking)).all()
        assert (b.status, b.recipient_phone) == ("cancelled", RECIPIENT)


def test_erasing_a_recipient_removes_their_name_and_number_from_the_senders_chat(client):
    """The bot asked the sender "What is the mobile number of Sita Devi?" and showed "For:
    Sita Devi, +9198..."; once the recipient is erased no text names them, and the
    sender's other messages are left as they were."""
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    _book_by_chat_then_cancel(client)
    sign_in(client, RECIPIENT)  # the recipient signs in once: a person of ours
    r = erase(client, ops, person_id(RECIPIENT))
    assert r.status_code == 200, r.get_json()
    with transaction() as s:
        assert s.scalar(select(Booking.recipient_phone)) is None  # the booking forgot them

    left = [t for t in _texts_everywhere() if "9812300062" in t or "Sita Devi" in t]
    assert not left, "the erased recipient is still named in:\n" + "\n".join(left)
    with transaction() as s:
        to_sender = list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == f"whatsapp:{SENDER}")))
    assert [b for b in to_sender if "is cancelled." in b], "a text not naming them went too"
    assert any(b == retention.REDACTED for b in to_sender)


def _book_by_phone_call(client) -> str:
    from tests.test_ivr import Caller

    phone = Caller(client, CALLER)
    phone.call()
    phone.press("1")  # Hindi
    phone.press("1")  # book
    phone.press("845438#")
    phone.press("2")  # Bettiah
    phone.press("1")
    phone.press("845450#")
    phone.press("7")  # Laxmipur
    phone.press("1")
    heard = phone.press("9812300062#")
    assert "9 8 1 2 3, 0 0 0 6 2" in heard.text
    phone.press("1")
    phone.press("1")  # a bag
    phone.press("1")  # up to 5 kg
    phone.press("2")  # standard
    phone.press("1")  # confirm
    phone.hang_up()
    with transaction() as s:
        return s.scalar(select(Booking.reference).where(Booking.channel == "voice"))


@pytest.mark.parametrize("who", ["recipient", "caller"])
def test_erasure_clears_stored_call_answers_that_read_the_number_out(client, who, monkeypatch,
                                                                    tmp_path):
    """A call's answers are kept (for Twilio's retries) as TwiML, where the IVR reads the
    recipient's number back digit by digit ("9 8 1 2 3, 0 0 0 6 2"). Erasing the
    recipient, or the caller whose booking named them, leaves no stored answer saying
    it."""
    from ivr_flows import audio
    from tests.test_ivr import START

    monkeypatch.setattr(audio, "cache_dir", lambda: tmp_path)  # every prompt is <Say>
    clock.freeze(START)  # 10:00 in India
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    ref = _book_by_phone_call(client)
    assert client.post(f"{API}/bookings/{ref}/cancel", headers=ops).status_code == 200
    if who == "recipient":
        sign_in(client, RECIPIENT)
    r = erase(client, ops, person_id(RECIPIENT if who == "recipient" else CALLER))
    assert r.status_code == 200, r.get_json()

    with transaction() as s:
        assert s.scalar(select(Booking.recipient_phone)) is None
        kept = [e.external_id for e in s.scalars(select(InboundEvent))
                if "9 8 1 2 3, 0 0 0 6 2" in (e.response_body or "")]
        answered = [e for e in s.scalars(select(InboundEvent)) if e.response_body]
    assert not kept, f"stored call answers still read the erased number out: {kept}"
    assert answered, "every stored answer went, not only those saying the number"


# --- the audit log ---------------------------------------------------------------------------


def test_the_erasure_record_keeps_a_number_typed_in_its_reason_masked(client):
    """The reason is "the person's request, as received", which often carries the number
    it came from; the audit log outlives the erasure it records, so the number is kept
    masked (the last four digits, enough to tell requests apart)."""
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    wa(client, SENDER, "hi")
    r = erase(client, ops, person_id(SENDER), reason="call from 98123 00061: delete my data")
    assert r.status_code == 200, r.get_json()

    reason = _audit_details("person.erase")["reason"]
    assert "98123" not in reason and "9812300061" not in reason, reason
    assert reason.startswith("call from ") and reason.endswith("0061: delete my data")


def test_numbers_in_kyc_notes_and_ops_cancel_reasons_are_kept_masked(client):
    """An operator's own words in the audit log (a KYC note, why they cancelled a
    booking) keep no full phone number."""
    from tests.test_dispatch import LAXMIPUR as AT
    from tests.test_dispatch import make_partner
    from tests.test_retention import book

    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    partner_id, _phone = make_partner("Suresh", AT, has_app=True, on_duty=False)
    assert client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                      json={"status": "suspended",
                            "note": "his wife rang from +91 98123-00064"}).status_code == 200
    ref = book(client, sign_in(client, SENDER), "edge-1")
    r = client.post(f"{API}/bookings/{ref}/cancel", headers=ops,
                    query_string={"reason": "sender asked on 9812300061"})
    assert r.status_code == 200, r.get_json()

    note = _audit_details("partner.kyc")["note"]
    reason = _audit_details("booking.cancel")["reason"]
    assert "98123" not in note and note.startswith("his wife rang from"), note
    assert "9812300061" not in reason and reason.startswith("sender asked on"), reason
    from core.adapters.models import TransitionLog

    with transaction() as s:  # the booking's own history keeps the reason too
        bid = s.scalar(select(Booking.id).where(Booking.reference == ref))
        why = s.scalars(select(TransitionLog.reason).where(
            TransitionLog.entity == "booking", TransitionLog.entity_id == bid,
            TransitionLog.reason.like("cancelled by ops%"))).all()
    assert why and all("9812300061" not in w for w in why), why


# --- an erased partner in customers' messages --------------------------------------------------


def test_erasing_a_partner_removes_their_name_from_customers_messages(client, live, tmp_path,
                                                                     monkeypatch):
    """"Booking ...: Ramesh is coming on a bicycle" (in the customer's language) names the
    partner; their erasure takes the name from the customer's copy too, and leaves the
    customer's other messages about that booking alone."""
    from core.adapters import storage
    from tests.test_retention import CUSTOMER, RAMESH, delivered_booking

    monkeypatch.setenv("POD_LOCAL_DIR", str(tmp_path / "pod"))
    storage.reset()
    try:
        seed_demo()
        ops = sign_in(client, OPS_PERSON[1])
        customer = sign_in(client, CUSTOMER)
        delivered_booking(client, customer)
        pid = person_id(RAMESH)
        with transaction() as s:
            partner = s.scalar(select(PartnerProfile).where(PartnerProfile.person_id == pid))
            name, partner_id = partner.first_name, partner.id
        assert [t for t in _texts_everywhere() if name in t]  # the customer was told
        assert client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                          json={"status": "suspended", "note": "asked to leave"}
                          ).status_code == 200
        r = erase_partner(client, ops, partner_id)
        assert r.status_code == 200, r.get_json()
    finally:
        storage.reset()

    left = [t for t in _texts_everywhere() if name in t]
    assert not left, f"the erased partner {name} is still named in:\n" + "\n".join(left)
    with transaction() as s:
        to_customer = list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr.in_([CUSTOMER, f"whatsapp:{CUSTOMER}"]),
            OutboxMessage.booking_id.is_not(None))))
    assert [b for b in to_customer if b != retention.REDACTED], \
        "the customer's messages not naming the partner went too"

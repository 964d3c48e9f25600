"""Keeping and erasing personal data: the daily retention job, and erasure on request.

Data comes from the real flows (the REST API, the sandbox payment link, the partner app,
signed WhatsApp and SMS webhooks); jobs run through RQ; time moves by core.clock, and rows
the database stamped with its own clock are made old by moving the clock past them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import requests
from rq.registry import ScheduledJobRegistry
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import OperationalError

from core import clock
from core.adapters import db, storage
from core.adapters.api_models import AuditEntry, IdempotencyRecord
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff, HandoffMessage
from core.adapters.dispatch_models import PodPhoto
from core.adapters.models import (
    Base,
    Booking,
    Conversation,
    InboundEvent,
    Leg,
    MessageStatusEvent,
    OutboxMessage,
    PartnerProfile,
    Person,
)
from core.adapters.payment_models import LedgerPosting
from core.adapters.queue import queue
from core.config import ConfigError
from core.services import retention
from core.services.seed import DEMO_PARTNERS, OPS_PERSON, seed_demo
from tests.conftest import run_jobs, send_whatsapp
from tests.test_api import API, BETTIAH, LAXMIPUR, PARCEL, carrying_partner, sign_in

pytestmark = pytest.mark.db

CUSTOMER = "+919812300041"
RECIPIENT = "+919812300042"
RAMESH = DEMO_PARTNERS[0][1]
# The financial and audit record: retention and erasure leave every row of these alone.
KEPT = ("ledger_transactions", "ledger_postings", "payment_links", "razorpay_events",
        "payment_transfers", "payment_refunds", "transitions", "reconciliation_mismatches",
        "audit_log", "dispatch_offers", "dispatch_otp_attempts")
_sids = iter(range(1, 100_000))


@pytest.fixture(autouse=True)
def _clock():
    yield
    clock.freeze(None)


@pytest.fixture
def pod_dir(tmp_path, monkeypatch):
    """Proof-of-delivery photos in a folder of this test's own."""
    monkeypatch.setenv("POD_LOCAL_DIR", str(tmp_path / "pod"))
    storage.reset()
    yield tmp_path / "pod"
    storage.reset()


# --- helpers -------------------------------------------------------------------------------


def rows(*tables: str) -> dict[str, list[tuple]]:
    """Every row of ``tables`` (all tables by default), for before/after comparisons."""
    names = tables or tuple(t.name for t in Base.metadata.sorted_tables)
    with db.engine().connect() as conn:
        return {t: sorted((tuple(r) for r in conn.execute(text(f'SELECT * FROM "{t}"'))),
                          key=repr) for t in names}


# What an erasure may change in the record: a booking's history's reason (transitions,
# the 7th column), to the text it was with names and places taken out
# (retention._scrub_history: "cancelled in the app: [name] moved away").
_REASON = 6
_TAKEN = re.compile(r"(\[name\]|\[place\])")


def _scrub_of(after: str, before: str) -> bool:
    """Whether ``after`` is ``before`` with some of its words replaced by the erasure's
    markers (or ``before`` itself)."""
    parts = _TAKEN.split(after)
    return after == before or (len(parts) > 1 and re.fullmatch(
        "".join(".+?" if _TAKEN.fullmatch(p) else re.escape(p) for p in parts),
        before, re.DOTALL) is not None)


def same_record(after: dict[str, list[tuple]], before: dict[str, list[tuple]]) -> bool:
    """rows(*KEPT) unchanged, each row and column, but for a transitions reason an erasure
    scrubbed (_scrub_of): the same rows, by id, each other column as it was."""
    if after.keys() != before.keys():
        return False
    for table, rows_after in after.items():
        if table != "transitions":
            if rows_after != before[table]:
                return False
            continue
        was = {r[0]: r for r in before[table]}
        now = {r[0]: r for r in rows_after}
        if was.keys() != now.keys() or any(
                now[i][:_REASON] + now[i][_REASON + 1:] != r[:_REASON] + r[_REASON + 1:]
                or not _scrub_of(now[i][_REASON], r[_REASON]) for i, r in was.items()):
            return False
    return True


def ledger_balanced() -> bool:
    with transaction() as s:
        total = s.scalar(select(func.coalesce(func.sum(LedgerPosting.amount_paise), 0)))
        per_entry = s.scalar(select(func.count()).select_from(
            select(LedgerPosting.transaction_id).group_by(LedgerPosting.transaction_id)
            .having(func.sum(LedgerPosting.amount_paise) != 0).subquery()))
    return total == 0 and per_entry == 0


def wa(client, phone: str, body: str) -> str:
    return send_whatsapp(client, {"MessageSid": f"SMret{next(_sids):020d}",
                                  "From": f"whatsapp:{phone}", "To": "whatsapp:+14155238886",
                                  "Body": body, "WaId": phone[1:], "ProfileName": "Meena"})


def code_to(phone: str) -> str:
    with transaction() as s:
        bodies = s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr.in_([phone, f"whatsapp:{phone}"]))
            .order_by(OutboxMessage.id.desc())).all()
    for body in bodies:
        codes = re.findall(r"(?<!\d)\d{4}(?!\d)", body)
        if codes:
            return codes[-1]
    raise AssertionError(f"no code was sent to {phone}")


def person_id(phone: str) -> int:
    with transaction() as s:
        found = s.scalar(select(Person.id).where(Person.phone == phone))
        assert found is not None
        return found


def chat_with_a_handoff(client, ops: dict[str, str]) -> None:
    """The customer chats on WhatsApp, asks for a person, tells them something private;
    an operator answers and closes."""
    wa(client, CUSTOMER, "hi")
    wa(client, CUSTOMER, "2")  # English
    wa(client, CUSTOMER, "4")  # talk to a person
    wa(client, CUSTOMER, "my house is the blue one behind the temple")
    (waiting,) = client.get(f"{API}/ops/handoffs", headers=ops).get_json()["items"]
    assert client.post(f"{API}/ops/handoffs/{waiting['id']}/reply", headers=ops,
                       json={"body": "Thank you Meena"}).status_code == 200
    assert client.post(f"{API}/ops/handoffs/{waiting['id']}/close",
                       headers=ops).status_code == 200
    run_jobs()


def book(client, customer: dict[str, str], key: str) -> str:
    made = client.post(f"{API}/bookings", headers={**customer, "Idempotency-Key": key},
                       json={"pickup": LAXMIPUR, "drop": BETTIAH, "parcel": PARCEL,
                             "tier": "standard",
                             "recipient": {"name": "Gita", "phone": RECIPIENT}})
    assert made.status_code == 201, made.get_json()
    return made.get_json()["reference"]


def delivered_booking(client, customer: dict[str, str]) -> tuple[str, int]:
    """Book, pay through the sandbox link, the demo partner Ramesh takes it, picks it up,
    delivers, sends a photo; the payout is released. (reference, leg id)"""
    ref = book(client, customer, "ret-1")
    run_jobs()  # the payment link is made and sent
    url = client.get(f"{API}/bookings/{ref}", headers=customer).get_json()["payment_url"]
    assert requests.post(url + "/pay", timeout=10).status_code == 200
    run_jobs()  # capture, paid, dispatch, an offer to Ramesh
    ramesh = sign_in(client, RAMESH)
    (offer,) = client.get(f"{API}/partners/me/offers", headers=ramesh).get_json()
    taken = client.post(f"{API}/offers/{offer['id']}/accept", headers=ramesh)
    assert taken.status_code == 200, taken.get_json()
    leg_id = taken.get_json()["leg_id"]
    assert client.post(f"{API}/legs/{leg_id}/pickup", json={"otp": code_to(CUSTOMER)},
                       headers=ramesh).status_code == 200
    assert client.post(f"{API}/legs/{leg_id}/drop", json={"otp": code_to(RECIPIENT)},
                       headers=ramesh).status_code == 200
    # After the drop: the proof of delivery (one taken before it is a pickup photo).
    assert client.post(f"{API}/legs/{leg_id}/photo", data=b"\xff\xd8\xff\xe0a parcel",
                       headers={**ramesh, "Content-Type": "image/jpeg"}).status_code == 201
    run_jobs()  # the payout is released and paid
    assert client.get(f"{API}/bookings/{ref}", headers=customer).get_json()["status"] == \
        "delivered"
    return ref, leg_id


def erase(client, ops: dict[str, str], pid: int, reason: str | None = "asked by phone"):
    return client.post(f"{API}/ops/people/{pid}/erase", headers=ops,
                       json={} if reason is None else {"reason": reason})


def erase_partner(client, ops: dict[str, str], partner_id: int,
                  reason: str = "asked by phone"):
    return client.post(f"{API}/ops/partners/{partner_id}/erase", headers=ops,
                       json={"reason": reason})


def run_retention_job() -> dict[str, int]:
    """The day's retention job, as its chain scheduled it, run through RQ at its time."""
    from workers.retention import schedule

    job_id = schedule(datetime.now(UTC))  # the scheduler's clock is the real one
    q = queue("default")
    ScheduledJobRegistry(queue=q).remove(job_id)
    job = q.fetch_job(job_id)
    assert job is not None
    q._enqueue_job(job)  # what RQ's scheduler does when the slot comes
    assert run_jobs(("default",)) == 1
    return q.fetch_job(job_id).return_value()


# --- erasure on request --------------------------------------------------------------------


def test_erasing_a_customer_forgets_them_and_keeps_the_money(client, live, pod_dir):
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    customer = sign_in(client, CUSTOMER)
    chat_with_a_handoff(client, ops)
    ref, leg_id = delivered_booking(client, customer)
    pid = person_id(CUSTOMER)
    kept = rows(*KEPT)
    assert kept["ledger_postings"] and kept["razorpay_events"] and kept["payment_transfers"]

    assert erase(client, ops, pid, reason=None).status_code == 422  # a reason is required
    assert erase(client, customer, pid).status_code == 403
    r = erase(client, ops, pid)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["erased"] is True and r.get_json()["person_id"] == pid

    with transaction() as s:
        person = s.get(Person, pid)
        assert (person.name, person.phone, person.wa_id, person.preferred_language) == (
            None, None, None, None)
        b = s.scalar(select(Booking).where(Booking.reference == ref))
        assert (b.recipient_name, b.recipient_phone, b.pickup_landmark, b.drop_landmark) == (
            None, None, None, None)
        assert (b.drop_lat, b.drop_lng) == (26.8, 84.52)  # the village, not the door
        leg = s.get(Leg, leg_id)
        assert (leg.to_lat, leg.to_lng) == (26.8, 84.52)
        # Nothing is addressed to them or to their recipient any more, and nothing about
        # their booking (the partner's job details too) keeps its text.
        to_them = [CUSTOMER, f"whatsapp:{CUSTOMER}", RECIPIENT, f"whatsapp:{RECIPIENT}"]
        assert s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.to_addr.in_(to_them))) == 0
        about = s.scalars(select(OutboxMessage).where(OutboxMessage.booking_id == b.id)).all()
        assert about and {m.body for m in about} == {retention.REDACTED}
        erased = s.scalars(select(OutboxMessage).where(
            OutboxMessage.to_addr == retention.ERASED_ADDR)).all()
        assert erased and {m.body for m in erased} == {retention.REDACTED}
        assert not any(CUSTOMER[3:] in m.body or "Meena" in m.body for m in s.scalars(
            select(OutboxMessage)))
        said = s.scalars(select(HandoffMessage.body)).all()
        assert said and set(said) == {retention.REDACTED}
        (conv,) = s.scalars(select(Conversation)).all()
        assert conv.person_id is None and conv.contact == f"erased:{conv.id}"
        assert conv.state == {}
        assert s.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0
        (entry,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "person.erase"))
        assert entry.target == f"person:{pid}" and entry.details["reason"] == "asked by phone"
    # Signed out everywhere.
    assert client.get(f"{API}/bookings", headers=customer).status_code == 401

    # The money and the history stay exactly as they were, and still add up.
    after = rows(*KEPT)
    assert after.pop("audit_log") == sorted(kept.pop("audit_log") + [
        next(r for r in rows("audit_log")["audit_log"] if r[2] == "person.erase")], key=repr)
    assert same_record(after, kept)
    assert ledger_balanced()
    money = client.get(f"{API}/ops/bookings/{ref}/ledger", headers=ops).get_json()
    assert money["escrow_paise"] == 0 and money["captured_paise"] > 0

    # Twice is fine, and changes nothing.
    everything = rows()
    again = erase(client, ops, pid)
    assert again.status_code == 200
    assert again.get_json()["erased"] is False and not any(again.get_json()["counts"].values())
    assert rows() == everything

    # The same number writing again is somebody new.
    assert wa(client, CUSTOMER, "hi")
    with transaction() as s:
        fresh = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        assert fresh is not None and fresh.id != pid and fresh.name == "Meena"
        assert s.get(Person, pid).phone is None


def test_erasing_a_partner_waits_for_ops_to_block_them_and_keeps_the_bookings_photos(
        client, live, pod_dir):
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    customer = sign_in(client, CUSTOMER)
    ref, leg_id = delivered_booking(client, customer)
    (photo_file,) = [p for p in pod_dir.rglob("*") if p.is_file()]
    pid = person_id(RAMESH)
    with transaction() as s:
        partner = s.scalar(select(PartnerProfile).where(PartnerProfile.person_id == pid))
    r = erase_partner(client, ops, partner.id)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "active_partner"
    assert photo_file.exists()
    kept = rows(*KEPT)

    assert client.put(f"{API}/ops/partners/{partner.id}/kyc", headers=ops,
                      json={"status": "suspended", "note": "asked to leave"}).status_code == 200
    r = erase_partner(client, ops, partner.id)
    assert r.status_code == 200, r.get_json()
    # The photo is of the customer's parcel: the booking's proof, not the partner's data
    # (tests/test_erasure_photos.py).
    assert r.get_json()["counts"].get("photos", 0) == 0
    assert photo_file.exists()
    with transaction() as s:
        assert s.get(Person, pid).phone is None
        profile = s.get(PartnerProfile, partner.id)
        assert profile.first_name == "" and not profile.on_duty
        assert s.scalar(select(func.count()).select_from(PodPhoto)) == 1
        assert s.get(Leg, leg_id).status == "delivered"
    after = rows(*KEPT)
    audit = after.pop("audit_log")
    # The KYC change, the take-back of his jobs that follows it, and the erasure.
    assert [e[2] for e in audit[len(kept.pop("audit_log")):]] == [
        "partner.kyc", "partner.block", "person.erase"]
    assert same_record(after, kept) and ledger_balanced()
    # Customers' bookings stay theirs: Ramesh carried it, it is not his to erase.
    assert client.get(f"{API}/bookings/{ref}", headers=customer).get_json()["recipient_name"] \
        == "Gita"
    assert erase_partner(client, ops, partner.id).get_json()["erased"] is False


def test_erasure_is_refused_while_anything_of_theirs_is_under_way(client):
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    customer = sign_in(client, CUSTOMER)
    ref = book(client, customer, "ret-2")  # waiting for payment
    recipient = sign_in(client, RECIPIENT)  # the recipient is a customer of ours too
    everything = rows()

    def refused(pid: int, code: str, *, partner_id: int | None = None) -> None:
        r = (erase(client, ops, pid) if partner_id is None
             else erase_partner(client, ops, partner_id))
        assert r.status_code == 409, r.get_json()
        assert r.get_json()["error"]["code"] == code

    refused(person_id(CUSTOMER), "in_flight")
    refused(person_id(RECIPIENT), "in_flight")  # the parcel is on its way to them
    refused(person_id(OPS_PERSON[1]), "operator")
    with transaction() as s:
        ramesh = s.scalar(select(PartnerProfile.id).where(
            PartnerProfile.person_id == person_id(RAMESH)))
    refused(person_id(RAMESH), "is_partner")  # a partner goes by the partner route
    refused(person_id(RAMESH), "active_partner", partner_id=ramesh)
    assert erase(client, ops, 2**31 - 1).status_code == 404
    assert rows() == everything
    # A blocked partner with a parcel still in hand: they must deliver it first.
    _, (leg_id,) = carrying_partner(client)
    with transaction() as s:
        partner = s.get(PartnerProfile, s.get(Leg, leg_id).partner_id)
    assert client.put(f"{API}/ops/partners/{partner.id}/kyc", headers=ops,
                      json={"status": "suspended", "note": "documents expired"}
                      ).status_code == 200
    refused(partner.person_id, "in_flight", partner_id=partner.id)

    # Cancelled before payment: nothing is under way any more, and no money was taken.
    assert client.post(f"{API}/bookings/{ref}/cancel", headers=customer).status_code == 200
    assert erase(client, ops, person_id(RECIPIENT)).status_code == 200
    assert client.get(f"{API}/bookings", headers=recipient).status_code == 401
    # The booking sent to them forgets them; its sender keeps it.
    sent = client.get(f"{API}/bookings/{ref}", headers=customer).get_json()
    assert sent["status"] == "cancelled" and sent["recipient_phone_masked"] is None
    assert sent["recipient_name"] is None and sent["drop"]["landmark"] is None
    # Waiting for an operator is under way too.
    for body in ("hi", "2", "4"):
        wa(client, CUSTOMER, body)
    refused(person_id(CUSTOMER), "in_flight")
    with transaction() as s:
        assert s.scalar(select(Handoff.status)) == "waiting"


def test_money_still_held_for_a_customer_blocks_their_erasure(client, live):
    """A booking cancelled after payment is closed, but its refund is still on its way:
    ops may have to reach the customer about it."""
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    customer = sign_in(client, CUSTOMER)
    ref = book(client, customer, "ret-3")
    run_jobs()
    url = client.get(f"{API}/bookings/{ref}", headers=customer).get_json()["payment_url"]
    assert requests.post(url + "/pay", timeout=10).status_code == 200
    run_jobs()  # paid; offers go out
    assert client.post(f"{API}/bookings/{ref}/cancel", headers=customer).status_code == 200
    money = client.get(f"{API}/ops/bookings/{ref}/ledger", headers=ops).get_json()
    assert money["escrow_paise"] + money["refunds_pending_paise"] > 0  # refund not made yet
    r = erase(client, ops, person_id(CUSTOMER))
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "in_flight"
    run_jobs()  # the refund is made, and the gateway says it is processed
    money = client.get(f"{API}/ops/bookings/{ref}/ledger", headers=ops).get_json()
    assert money["escrow_paise"] + money["refunds_pending_paise"] == 0, money
    assert erase(client, ops, person_id(CUSTOMER)).status_code == 200


# --- the daily retention job ---------------------------------------------------------------


def test_the_daily_job_prunes_status_history_and_redacts_old_texts(client, live, pod_dir):
    from tests.test_dispatch import sms

    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    customer = sign_in(client, CUSTOMER)
    chat_with_a_handoff(client, ops)
    ref, _ = delivered_booking(client, customer)
    open_ref = book(client, customer, "ret-4")  # still waiting for payment
    wa(client, CUSTOMER, "1")  # starts a new booking in the chat: a draft
    assert "Which village" in wa(client, CUSTOMER, "845450")  # the pickup's pincode
    assert sms(client, DEMO_PARTNERS[2][1], "STATUS")  # answered inline, kept for retries
    run_jobs()
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(MessageStatusEvent)) > 0
        assert s.scalar(select(func.count()).select_from(InboundEvent).where(
            InboundEvent.response_body.is_not(None))) > 0
        assert s.scalar(select(Conversation.state)) != {}
        newest = s.scalar(select(func.max(OutboxMessage.id)).where(
            OutboxMessage.booking_id.is_(None)))
    kept = rows(*KEPT)
    start = datetime.now(UTC)

    # A month on: the status history goes, the texts stay.
    clock.freeze(start + timedelta(days=31))
    done = run_retention_job()
    assert done["status_events"] > 0 and done["outbox_messages"] == 0
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(MessageStatusEvent)) == 0
        assert retention.REDACTED not in s.scalars(select(OutboxMessage.body)).all()

    # A quarter on: the texts of finished bookings and of no booking go; the one about
    # the booking still waiting for payment, and one written a day ago, stay.
    with transaction() as s:
        s.execute(update(OutboxMessage).where(OutboxMessage.id == newest)
                  .values(created_at=start + timedelta(days=90)))
    clock.freeze(start + timedelta(days=91))
    done = run_retention_job()
    assert done["outbox_messages"] > 0 and done["unfinished"] == 0
    with transaction() as s:
        def bodies(*where) -> set[str]:
            return set(s.scalars(select(OutboxMessage.body).where(*where)))

        b = s.scalar(select(Booking).where(Booking.reference == ref))
        open_b = s.scalar(select(Booking).where(Booking.reference == open_ref))
        assert bodies(OutboxMessage.booking_id == b.id) == {retention.REDACTED}
        assert bodies(OutboxMessage.booking_id.is_(None), OutboxMessage.id != newest) == {
            retention.REDACTED}
        assert retention.REDACTED not in bodies(OutboxMessage.id == newest)
        assert retention.REDACTED not in bodies(OutboxMessage.booking_id == open_b.id)
        assert s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.media_url.is_not(None))) == 0
        assert s.scalar(select(func.count()).select_from(InboundEvent).where(
            InboundEvent.response_body.is_not(None))) == 0
        assert s.scalar(select(func.count()).select_from(InboundEvent)) > 0  # rows stay
        assert set(s.scalars(select(HandoffMessage.body))) == {retention.REDACTED}
        conv = s.scalar(select(Conversation))
        assert (conv.state, conv.step) == ({}, "start")
        person = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        assert person.preferred_language == "en"
        assert s.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0
        # Bookings keep what the customer told us; only erasure takes that.
        assert b.recipient_phone == RECIPIENT
    assert same_record(rows(*KEPT), kept) and ledger_balanced()
    # The chain goes on: tomorrow's run is scheduled.
    assert [j for j in ScheduledJobRegistry(queue=queue("default")).get_job_ids()
            if j.startswith("retention-")]
    # Run again the same day, it finds nothing left.
    again = run_retention_job()
    assert not any(again.values()), again


def test_a_run_works_in_batches_and_stops_when_its_time_is_up(client, monkeypatch):
    from tests.test_dispatch import sms

    seed_demo()
    for _ in range(5):  # five inline answers kept for Twilio's retries
        assert sms(client, RAMESH, "STATUS")
    monkeypatch.setattr(retention, "BATCH", 2)
    now = [0.0]
    monkeypatch.setattr(retention, "_monotonic", lambda: now[0])
    real_step = retention._inbound_answers

    def slow_step(*args):
        done = real_step(*args)
        now[0] += 5.0  # this batch took five seconds
        return done

    monkeypatch.setattr(retention, "_inbound_answers", slow_step)
    monkeypatch.setenv("RETENTION_RUN_SECONDS", "9")
    later = clock.now() + timedelta(days=100)
    done = retention.run(later)
    assert done["inbound_answers"] == 4 and done["unfinished"] == 1  # two batches of two

    def left() -> int:
        with transaction() as s:
            return s.scalar(select(func.count()).select_from(InboundEvent).where(
                InboundEvent.response_body.is_not(None)))

    assert left() == 1
    monkeypatch.undo()
    done = retention.run(later)
    assert done["inbound_answers"] == 1 and done["unfinished"] == 0 and left() == 0


def test_the_retention_chain_runs_daily_once_and_survives_a_failed_run(clean_db, monkeypatch):
    from core.cli import join_sweeps
    from workers.retention import schedule

    def scheduled() -> list[str]:
        return sorted(j for j in ScheduledJobRegistry(queue=queue("default")).get_job_ids()
                      if j.startswith("retention-"))

    # 03:00 in India is 21:30 UTC: the slot after 10:00 UTC is that evening's.
    slot = int(datetime(2026, 11, 24, 21, 30, tzinfo=UTC).timestamp())
    assert schedule(datetime(2026, 11, 24, 10, 0, tzinfo=UTC)) == f"retention-{slot}"
    assert schedule(datetime(2026, 11, 24, 21, 29, 59, tzinfo=UTC)) == f"retention-{slot}"
    assert schedule(datetime(2026, 11, 24, 21, 30, tzinfo=UTC)) == f"retention-{slot + 86400}"
    for job_id in scheduled():
        queue("default").fetch_job(job_id).delete()
    assert scheduled() == []

    join_sweeps()
    join_sweeps()  # every worker, every minute: one job a day
    (first,) = scheduled()

    def blip(now=None) -> dict[str, int]:
        raise OperationalError("SELECT 1", {}, Exception("the database system is starting up"))

    monkeypatch.setattr(retention, "run", blip)
    q = queue("default")
    ScheduledJobRegistry(queue=q).remove(first)
    q._enqueue_job(q.fetch_job(first))
    clock.freeze(datetime.fromtimestamp(int(first.rsplit("-", 1)[1]), UTC))
    assert run_jobs(("default",)) == 1
    assert scheduled() == [f"retention-{int(first.rsplit('-', 1)[1]) + 86400}"], \
        "the chain ended"


@pytest.mark.parametrize(("name", "value"), [
    ("RETENTION_MESSAGE_DAYS", "3"), ("RETENTION_MESSAGE_DAYS", "ninety"),
    ("RETENTION_STATUS_DAYS", "0"), ("RETENTION_RUN_SECONDS", "3600"),
])
def test_bad_retention_settings_are_named_not_replaced_by_defaults(clean_db, monkeypatch,
                                                                   name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        retention.run()

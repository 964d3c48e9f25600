"""Session 39: what an erasure left of a recipient, and of a message not handled yet.

- A recipient's erasure (by her number, or as a person who received a parcel) rounded the
  booking's drop to the village, but its legs kept her door to five decimals: only the
  legs of the erased person's own bookings were rounded. Now a booking to her loses her
  door on its legs too: the last leg's end and any end at the booking's exact drop; a
  relay's Points on the way are not hers, and stay.
- A chat message accepted into Redis (the contact's inbox) and not drained yet outlived
  the erasure, and the drain then made a new person of it, name and number. The erasure
  now deletes the person's inboxes; with Redis away it erases nothing (503).
- A sender's rating comment and parcel description naming the recipient or her door
  survived her erasure (cleared only on the erased person's own bookings). They now lose
  her names and her landmark; a partner's erasure takes his name out of the rating
  comments of the jobs he carried.
- A cancel reason kept for good (the booking's history, transitions.reason: "cancelled in
  the app: " and the customer's words; ops' in the audit log's booking.cancel) kept the
  erased recipient's name and door. Both tables are append-only; migration 0055 lets a
  reason alone change, to a text saying what went, and the erasure scrubs them.
"""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from core.adapters.api_models import AuditEntry, BookingRating
from core.adapters.db import transaction
from core.adapters.models import (
    Booking,
    Leg,
    Parcel,
    PartnerProfile,
    Person,
    Point,
    TransitionLog,
)
from core.adapters.redis_conn import redis_client
from core.services import inbound, retention
from core.services.seed import OPS_PERSON, seed_demo
from tests.conftest import post_twilio, run_jobs
from tests.test_api import API, BETTIAH, sign_in
from tests.test_retention import (  # noqa: F401
    CUSTOMER,
    RAMESH,
    RECIPIENT,
    book,
    delivered_booking,
    erase,
    erase_partner,
    person_id,
    pod_dir,
    rows,
    wa,
)

pytestmark = pytest.mark.db

DOOR = (BETTIAH["lat"], BETTIAH["lng"])
VILLAGE = (26.8, 84.52)
RELAY = (26.81234, 84.50123)  # a Point on the way


def _as_relay(ref: str) -> tuple[int, int]:
    """The delivered booking ``ref`` made a relay: its leg ends at a Point, and a second
    leg takes the parcel from there to the door. (first leg id, second leg id)"""
    with transaction() as s:
        b = s.scalar(select(Booking).where(Booking.reference == ref))
        first = s.scalar(select(Leg).where(Leg.booking_id == b.id))
        point = Point(name="Chanpatia", lat=RELAY[0], lng=RELAY[1], pincode="845449",
                      active=True)
        s.add(point)
        s.flush()
        second = Leg(booking_id=b.id, sequence=2, status=first.status,
                     from_point_id=point.id, from_lat=RELAY[0], from_lng=RELAY[1],
                     to_lat=first.to_lat, to_lng=first.to_lng, distance_m=1000,
                     partner_id=first.partner_id, payout_paise=0)
        first.to_point_id, first.to_lat, first.to_lng = point.id, *RELAY
        s.add(second)
        s.flush()
        return first.id, second.id


def test_recipient_erasure_rounds_her_door_on_the_legs_not_the_relay_points(
        client, live, pod_dir):  # noqa: F811
    seed_demo()
    customer = sign_in(client, CUSTOMER)
    ref, _ = delivered_booking(client, customer)
    first, second = _as_relay(ref)
    with transaction() as s:
        pickup = (s.get(Leg, first).from_lat, s.get(Leg, first).from_lng)
    with transaction() as s:
        done = retention.erase_recipient(s, "098123 00042", actor="ops:1", reason="she called")
    assert done.changed
    with transaction() as s:
        b = s.scalar(select(Booking).where(Booking.reference == ref))
        assert (b.drop_lat, b.drop_lng) == VILLAGE
        one, two = s.get(Leg, first), s.get(Leg, second)
        assert (two.to_lat, two.to_lng) == VILLAGE  # her door: the village only
        # The relay's Point and the sender's pickup are not hers.
        assert (one.to_lat, one.to_lng) == RELAY and (two.from_lat, two.from_lng) == RELAY
        assert (one.from_lat, one.from_lng) == pickup
    # Run again, nothing is left to change.
    with transaction() as s:
        assert not retention.erase_recipient(s, RECIPIENT, actor="ops:1",
                                             reason="again").changed


def test_erasing_an_account_holder_rounds_her_door_on_the_legs_sent_to_her(
        client, live, pod_dir):  # noqa: F811
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    customer = sign_in(client, CUSTOMER)
    ref, leg_id = delivered_booking(client, customer)
    sign_in(client, RECIPIENT)  # she has an account of her own
    with transaction() as s:
        assert (s.get(Leg, leg_id).to_lat, s.get(Leg, leg_id).to_lng) == DOOR
    r = erase(client, ops, person_id(RECIPIENT))
    assert r.status_code == 200 and r.get_json()["erased"], r.get_json()
    with transaction() as s:
        leg = s.get(Leg, leg_id)
        assert (leg.to_lat, leg.to_lng) == VILLAGE
        b = s.scalar(select(Booking).where(Booking.reference == ref))
        assert (b.drop_lat, b.drop_lng) == VILLAGE


def _queued_message(client, body: str, sid: str) -> None:
    """The customer's WhatsApp message, accepted into her Redis inbox, not drained."""
    params = {"MessageSid": sid, "From": f"whatsapp:{CUSTOMER}",
              "To": "whatsapp:+14155238886", "Body": body, "WaId": CUSTOMER[1:],
              "ProfileName": "Meena"}
    assert post_twilio(client, "/webhooks/whatsapp", params).status_code == 200


def _inbox_texts() -> list[str]:
    r = redis_client()
    return [v.decode() for k in r.scan_iter("inbox:*") if CUSTOMER[3:] in k.decode()
            and r.type(k) == b"list" for v in r.lrange(k, 0, -1)]


def test_a_message_queued_before_the_erasure_goes_with_it(client):
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    wa(client, CUSTOMER, "hi")
    wa(client, CUSTOMER, "2")
    pid = person_id(CUSTOMER)
    _queued_message(client, "my house is the blue one behind the temple",
                    "SMs39q0000000000000000001")
    assert any("blue one" in t for t in _inbox_texts())
    r = erase(client, ops, pid)
    assert r.status_code == 200 and r.get_json()["erased"] is True, r.get_json()
    assert r.get_json()["counts"].get("queued_messages") == 1
    assert _inbox_texts() == []
    assert not any(CUSTOMER[3:] in k.decode() for k in redis_client().scan_iter("inbox*"))
    assert not any(CUSTOMER[3:] in m.decode()
                   for m in redis_client().smembers(inbound.INBOXES))
    assert not any(CUSTOMER[3:] in m.decode()
                   for m in redis_client().lrange(inbound.READY, 0, -1))
    run_jobs(("inbound",))
    with transaction() as s:
        assert s.scalar(select(Person).where(Person.phone == CUSTOMER)) is None
    # A message after the erasure is somebody new's, and is handled as usual.
    assert wa(client, CUSTOMER, "hi")
    with transaction() as s:
        fresh = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        assert fresh is not None and fresh.id != pid


def test_with_redis_away_the_erasure_of_a_queued_sender_erases_nothing(client, monkeypatch):
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    wa(client, CUSTOMER, "hi")
    pid = person_id(CUSTOMER)
    _queued_message(client, "behind the temple", "SMs39q0000000000000000002")

    def away(*_args):
        raise RedisConnectionError("Redis blinked")
    monkeypatch.setattr(inbound, "mark_erased", away)
    r = erase(client, ops, pid)
    assert (r.status_code, r.get_json()["error"]["code"]) == (503, "queue_unavailable")
    with transaction() as s:
        assert s.get(Person, pid).phone == CUSTOMER  # nothing committed
    monkeypatch.undo()
    assert erase(client, ops, pid).get_json()["erased"] is True
    assert _inbox_texts() == []


def test_sender_texts_lose_the_erased_recipients_name_and_door(client, live, pod_dir):  # noqa: F811
    seed_demo()
    customer = sign_in(client, CUSTOMER)
    ref, _ = delivered_booking(client, customer)
    r = client.post(f"{API}/bookings/{ref}/rating", headers=customer,
                    json={"stars": 5, "comment": "Gita Kumari got it at her house near the HO"})
    assert r.status_code == 201, r.get_json()
    with transaction() as s:
        b = s.scalar(select(Booking).where(Booking.reference == ref))
        parcel = s.scalar(select(Parcel).where(Parcel.booking_id == b.id))
        parcel.description = "files for GITA, leave them near  the HO"
    with transaction() as s:
        done = retention.erase_recipient(s, "+919812300042", actor="ops:1", reason="she asked")
    assert done.changed
    with transaction() as s:
        assert s.scalar(select(BookingRating.comment)) == \
            "[name] Kumari got it at her house [place]"  # "Kumari": given nowhere
        assert s.scalar(select(Parcel.description).where(Parcel.booking_id == b.id)) == \
            "files for [name], leave them [place]"


def test_an_account_holders_erasure_scrubs_the_comments_on_parcels_to_her(
        client, live, pod_dir):  # noqa: F811
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    customer = sign_in(client, CUSTOMER)
    ref, _ = delivered_booking(client, customer)
    r = client.post(f"{API}/bookings/{ref}/rating", headers=customer,
                    json={"stars": 4, "comment": "Gita was not home, left it near the HO"})
    assert r.status_code == 201, r.get_json()
    sign_in(client, RECIPIENT)
    assert erase(client, ops, person_id(RECIPIENT)).status_code == 200
    with transaction() as s:
        assert s.scalar(select(BookingRating.comment)) == \
            "[name] was not home, left it [place]"
    # The sender's own erasure takes the comment whole, as before.
    assert erase(client, ops, person_id(CUSTOMER)).status_code == 200
    with transaction() as s:
        assert s.scalar(select(BookingRating.comment)) is None


def test_a_partners_erasure_takes_his_name_out_of_the_rating_comments(
        client, live, pod_dir):  # noqa: F811
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    customer = sign_in(client, CUSTOMER)
    ref, _ = delivered_booking(client, customer)
    r = client.post(f"{API}/bookings/{ref}/rating", headers=customer,
                    json={"stars": 1, "comment": "RAMESH was rude, ask Rameshwar instead"})
    assert r.status_code == 201, r.get_json()
    with transaction() as s:
        partner = s.scalar(select(PartnerProfile).where(
            PartnerProfile.person_id == person_id(RAMESH)))
    assert client.put(f"{API}/ops/partners/{partner.id}/kyc", headers=ops,
                      json={"status": "suspended", "note": "asked to leave"}).status_code == 200
    assert erase_partner(client, ops, partner.id).status_code == 200
    with transaction() as s:
        assert s.scalar(select(BookingRating.comment)) == \
            "[name] was rude, ask Rameshwar instead"


def test_places_go_whole_and_their_words_alone_stay():
    said = retention.Said({"Gita"}, {"near the HO"})
    assert said.out_of("The HO is near the ho; gita there") == \
        "The HO is [place]; [name] there"
    assert retention.without_places("nearer the HO", ["near the HO"]) == "nearer the HO"


def test_cancel_reasons_lose_the_erased_recipients_name_and_door(client):
    """The customer's words in the booking's history, and ops' in the audit log's cancel,
    kept for good, lose the names and the landmark the erasure took; the rest stays."""
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    customer = sign_in(client, CUSTOMER)
    mine = book(client, customer, "s39-1")  # to Gita, drop landmark "near the HO"
    theirs = book(client, customer, "s39-2")
    why = "Gita Kumari moved away from the house near the HO"
    r = client.post(f"{API}/bookings/{mine}/cancel", headers=customer,
                    query_string={"reason": why})
    assert r.status_code == 200 and r.get_json()["cancelled"], r.get_json()
    r = client.post(f"{API}/bookings/{theirs}/cancel", headers=ops,
                    query_string={"reason": "customer called: Gita is not at near the HO"})
    assert r.status_code == 200 and r.get_json()["cancelled"], r.get_json()
    with transaction() as s:
        (said,) = s.scalars(select(AuditEntry.details["reason"].astext).where(
            AuditEntry.action == "booking.cancel"))
        assert "Gita" in said  # ops' words, kept as said
    kept = rows("transitions", "audit_log")
    with transaction() as s:
        retention.erase_recipient(s, RECIPIENT, actor="ops:1", reason="she asked")
    with transaction() as s:
        history = s.scalars(select(TransitionLog.reason).where(
            TransitionLog.reason.contains("[name]"))).all()
        (said,) = s.scalars(select(AuditEntry.details["reason"].astext).where(
            AuditEntry.action == "booking.cancel"))
    assert sorted(history) == [
        "cancelled by ops: customer called: [name] is not at [place]",
        "cancelled in the app: [name] Kumari moved away from the house [place]"], history
    assert said == "customer called: [name] is not at [place]"
    # Nothing else of the record changed: each row's other columns, and no row went.
    after = rows("transitions", "audit_log")
    assert [r[:6] for r in after["transitions"]] == [r[:6] for r in kept["transitions"]]
    assert len(after["audit_log"]) == len(kept["audit_log"]) + 1  # the erasure's entry


@pytest.mark.parametrize("statement", [
    "UPDATE transitions SET reason = 'rewritten history'",
    "UPDATE transitions SET reason = '[name]', actor = 'ops:999999'",
    "UPDATE audit_log SET details = details || '{\"reason\": \"[name]\", \"x\": 1}'",
    "UPDATE audit_log SET actor = 'ops:999999', details = details || '{\"reason\": \"[name]\"}'",
    "DELETE FROM transitions",
    "DELETE FROM audit_log",
])
def test_the_record_takes_only_a_scrubbed_reason(client, statement):
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    customer = sign_in(client, CUSTOMER)
    ref = book(client, customer, "s39-3")
    assert client.post(f"{API}/bookings/{ref}/cancel", headers=ops,
                       query_string={"reason": "asked by phone"}).status_code == 200
    kept = rows("transitions", "audit_log")
    with pytest.raises(DBAPIError, match="append-only"):
        with transaction() as s:
            s.execute(text(statement))
    assert rows("transitions", "audit_log") == kept


def test_the_record_check_allows_only_a_scrubbed_reason():
    """tests/test_retention.py's check of the record kept for good (same_record): a
    history reason may lose names and places, nothing else may change."""
    from tests.test_retention import same_record

    row = (1, "booking", 7, "quoted", "cancelled", "customer:3",
           "cancelled in the app: Gita moved", "at")
    before = {"transitions": [row], "audit_log": [(1, "x")]}

    def with_reason(reason: str, **other: object) -> dict[str, list[tuple]]:
        changed = (*row[:6], reason, row[7])
        if other:
            changed = (*row[:5], other["actor"], reason, row[7])
        return {**before, "transitions": [changed]}
    assert same_record(before, before)
    assert same_record(with_reason("cancelled in the app: [name] moved"), before)
    assert not same_record(with_reason("cancelled in the app: Sita moved"), before)
    assert not same_record(with_reason("cancelled: [name] moved"), before)
    assert not same_record(with_reason("cancelled in the app: [name] moved",
                                       actor="ops:1"), before)
    assert not same_record({**before, "audit_log": []}, before)
    assert not same_record({**before, "transitions": []}, before)

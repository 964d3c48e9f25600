"""Erasure by the route for the person's role: a partner is erased by the partner route
(/ops/partners/<partner_id>/erase), never by the customer one (/ops/people/<id>/erase),
which refuses them with a 409 naming that route; a customer goes by the person route as
before. A partner who also sent parcels is erased whole by the partner route: their
bookings as a customer too, and not while one of those is under way."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Booking, PartnerProfile, Person
from core.domain.booking import Actor, BookingStatus
from core.domain.pricing import SpeedTier
from core.services.booking import create_booking, move_booking
from core.services.seed import OPS_PERSON, seed_demo
from tests.test_api import API, sign_in
from tests.test_dispatch import make_partner
from tests.test_payments_support import BAG, BETTIAH, LAXMIPUR

pytestmark = pytest.mark.db

ERASE = {"reason": "asked us by phone to erase their data"}
KAMLA = "+919812355511"


def person_of(partner_id: int) -> int:
    with transaction() as s:
        return s.get(PartnerProfile, partner_id).person_id


def suspend(client, ops: dict[str, str], partner_id: int) -> None:
    assert client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                      json={"status": "suspended", "note": "asked to be erased"}
                      ).status_code == 200


def state(person_id: int) -> tuple:
    """What an erasure would change: the person, their partner profile, their bookings'
    recipients, and the audit log's erasures."""
    with transaction() as s:
        p = s.get(Person, person_id)
        profile = s.scalar(select(PartnerProfile).where(PartnerProfile.person_id == person_id))
        return ((p.name, p.phone, p.preferred_language),
                profile and (profile.first_name, profile.on_duty),
                sorted(s.scalars(select(Booking.recipient_name).where(
                    Booking.customer_id == person_id))),
                s.scalar(select(func.count()).select_from(AuditEntry).where(
                    AuditEntry.action == "person.erase")))


def booking_of(person_id: int, status: BookingStatus) -> int:
    """A booking the person made as a customer, moved to ``status``."""
    with transaction() as s:
        b = create_booking(s, customer_id=person_id, channel="app", pickup=LAXMIPUR,
                           drop=BETTIAH, parcel=BAG, tier=SpeedTier.STANDARD,
                           recipient_name="Sita", recipient_phone="+919812355512",
                           actor=Actor("customer", str(person_id)))
        move_booking(s, b, BookingStatus.AWAITING_PAYMENT, Actor.system(), "link sent")
        if status != BookingStatus.AWAITING_PAYMENT:
            move_booking(s, b, status, Actor.system(), "test")
        return b.id


@pytest.mark.parametrize("blocked", [False, True])
def test_the_person_route_refuses_a_partner_naming_the_partner_route(client, blocked):
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    partner_id, _ = make_partner("Ramesh", (26.88, 84.6))
    person_id = person_of(partner_id)
    if blocked:  # the partner route would erase them now: the person route still not
        suspend(client, ops, partner_id)
    before = state(person_id)

    r = client.post(f"{API}/ops/people/{person_id}/erase", headers=ops, json=ERASE)
    assert r.status_code == 409, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "is_partner"
    assert f"/api/v1/ops/partners/{partner_id}/erase" in error["message"]
    assert f"partner {partner_id}" in error["message"]
    assert state(person_id) == before  # nothing changed, nothing audited

    if blocked:
        r = client.post(f"{API}/ops/partners/{partner_id}/erase", headers=ops, json=ERASE)
        assert r.status_code == 200, r.get_json()
        assert (r.get_json()["person_id"], r.get_json()["partner_id"]) == (person_id,
                                                                         partner_id)


def test_a_customer_is_erased_by_the_person_route_as_before(client):
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    with transaction() as s:
        s.add(Person(phone=KAMLA, name="Kamla", role="customer", preferred_language="hi"))
        s.flush()
        kamla = s.scalar(select(Person.id).where(Person.phone == KAMLA))
    booking_of(kamla, BookingStatus.CANCELLED)
    r = client.post(f"{API}/ops/people/{kamla}/erase", headers=ops, json=ERASE)
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    assert (out["role"], out["partner_id"], out["erased"]) == ("customer", None, True)
    assert out["counts"]["bookings"] == 1
    assert state(kamla)[0] == (None, None, None) and state(kamla)[2] == [None]


def test_a_partner_who_also_books_is_erased_whole_by_the_partner_route(client):
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    partner_id, phone = make_partner("Suresh", (26.88, 84.6))
    person_id = person_of(partner_id)
    suspend(client, ops, partner_id)
    sent = booking_of(person_id, BookingStatus.AWAITING_PAYMENT)  # a parcel they send
    before = state(person_id)

    # Their booking as a customer is under way: refused, as it is for a customer.
    r = client.post(f"{API}/ops/partners/{partner_id}/erase", headers=ops, json=ERASE)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "in_flight"
    assert state(person_id) == before
    # The person route still says: not here, by the partner route.
    r = client.post(f"{API}/ops/people/{person_id}/erase", headers=ops, json=ERASE)
    assert r.get_json()["error"]["code"] == "is_partner"

    with transaction() as s:
        move_booking(s, s.get(Booking, sent), BookingStatus.CANCELLED, Actor.system(), "test")
    r = client.post(f"{API}/ops/partners/{partner_id}/erase", headers=ops, json=ERASE)
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    assert (out["person_id"], out["role"], out["partner_id"], out["erased"]) == (
        person_id, "partner", partner_id, True)
    assert out["phone_masked"] == f"+91******{phone[-4:]}"
    assert out["counts"]["bookings"] == 1  # the customer side goes too
    (person, profile, recipients, erasures) = state(person_id)
    assert person == (None, None, None) and profile == ("", False)
    assert recipients == [None] and erasures == before[3] + 1

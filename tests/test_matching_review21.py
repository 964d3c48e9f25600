"""Review 21, finding riders: the booking's own parties (the sender, the recipient) are
never offered their parcel (dispatch._parties_of), so they count neither when planning
direct-or-relay nor as "a rider free near you" before paying."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import PartnerProfile, Person, Vehicle
from core.domain.pricing import (
    VEHICLE_CAPACITY,
    ParcelCategory,
    SizeBucket,
    VehicleType,
    WeightBucket,
)
from core.services import booking as booking_service
from core.services import dispatch
from tests.test_api import API, BETTIAH, PARCEL, PHONE, sign_in
from tests.test_api import LAXMIPUR as LAXMIPUR_IN
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    frozen,  # noqa: F401  (fixture)
    legs_of,
    make_partner,
    make_point,
    offers,
    paid_booking,
    start,
)

pytestmark = pytest.mark.db

# As in test_dispatch_relay: P -A- 7 km -B- 10 km - D 7 km (straight), 0.01 deg ~ 1 km.
P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)

PICKUP = booking_service.Place(lat=LAXMIPUR[0], lng=LAXMIPUR[1], pincode="845450",
                               post_office="Laxmipur BO")
BAG = booking_service.ParcelSpec(category=ParcelCategory.DOCUMENTS, size=SizeBucket.BAG,
                                 weight=WeightBucket.W5)


def _person_id(phone: str) -> int:
    with transaction() as s:
        pid = s.scalar(select(Person.id).where(Person.phone == phone))
        assert pid is not None
        return pid


def _free(**parties: object) -> bool:
    with transaction() as s:
        return booking_service.rider_free_near(s, PICKUP, BAG, **parties)  # type: ignore[arg-type]


# --- 1. planning: direct or relay ---------------------------------------------------------


def test_customer_who_is_a_partner_does_not_stop_the_relay(live, frozen):  # noqa: F811
    # The customer's own motorcycle near the pickup made plan_legs keep the 31 km trip
    # direct, which no bicycle near could ride and the customer is never offered: the
    # booking failed. Left out of the fleet, the bicycles at the Points relay it.
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    ramesh, _ = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    make_partner("Bala", B, point_id=point_b, max_active_legs=1)
    make_partner("Meena", A, VehicleType.MOTORCYCLE, payload_kg=20, phone=CUSTOMER,
                 point_id=point_a)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)

    legs = legs_of(booking_id)
    assert len(legs) == 3, "planned as a direct trip only the customer's own vehicle could do"
    assert [o.partner_id for o in offers(legs[0].id)] == [ramesh]


def test_recipient_who_is_a_partner_does_not_stop_the_relay(live, frozen):  # noqa: F811
    # The same with the recipient's motorcycle at the Point after the pickup: counted in
    # the fleet, it made the trip look rideable in one go.
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    ramesh, _ = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    make_partner("Bala", B, point_id=point_b, max_active_legs=1)
    make_partner("Sita", A, VehicleType.MOTORCYCLE, payload_kg=20, phone=RECIPIENT,
                 point_id=point_a)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)

    legs = legs_of(booking_id)
    assert len(legs) == 3
    assert [o.partner_id for o in offers(legs[0].id)] == [ramesh]


def test_a_partner_who_is_no_party_still_keeps_the_trip_direct(live, frozen):  # noqa: F811
    # Not a blanket change: another partner's motorcycle near the pickup still means a
    # direct trip, offered to them.
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    make_partner("Bala", B, point_id=point_b, max_active_legs=1)
    ravi, _ = make_partner("Ravi", A, VehicleType.MOTORCYCLE, payload_kg=20, point_id=point_a)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)

    legs = legs_of(booking_id)
    assert len(legs) == 1
    assert [o.partner_id for o in offers(legs[0].id)] == [ravi]


# --- 2. "no rider near you" before paying -------------------------------------------------


def test_no_rider_notice_when_the_only_rider_near_is_the_customer(live, frozen):  # noqa: F811
    # The dialog's rider check (WhatsApp and IVR) must not count the customer's own
    # partner profile. Needs SessionPorts.rider_free to pass the customer (and the
    # recipient) to rider_free_near (core/services/conversation.py).
    from core.services.conversation import SessionPorts

    _, phone = make_partner("Ramesh", LAXMIPUR)
    place = {"lat": LAXMIPUR[0], "lng": LAXMIPUR[1], "pincode": "845450",
             "name": "Laxmipur BO", "landmark": None}
    slots = {"pickup": place, "drop": {**place, "lat": 26.80228, "lng": 84.51522},
             "category": ParcelCategory.DOCUMENTS.value, "size": SizeBucket.BAG.value,
             "weight": WeightBucket.W5.value}
    with transaction() as s:
        me = s.scalar(select(Person).where(Person.phone == phone))
        assert me is not None
        ports = SessionPorts(s, me, None)  # type: ignore[arg-type]
        assert not ports.rider_free(slots)


def test_rider_free_near_leaves_out_the_customer_and_the_recipient(live, frozen):  # noqa: F811
    _, ramesh_phone = make_partner("Ramesh", LAXMIPUR)
    ramesh = _person_id(ramesh_phone)
    # Ramesh sending a parcel of his own: nobody else is near.
    assert not _free(customer_id=ramesh)
    # Someone sending a parcel to Ramesh: he is not offered it either.
    assert not _free(recipient_phone=ramesh_phone)
    # Anyone else's parcel: Ramesh is free for it.
    assert _free()
    assert _free(customer_id=ramesh + 1000, recipient_phone="+919876500099")


def test_another_rider_near_is_free_for_a_partner_s_own_parcel(live, frozen):  # noqa: F811
    _, ramesh_phone = make_partner("Ramesh", LAXMIPUR)
    make_partner("Bala", LAXMIPUR)
    assert _free(customer_id=_person_id(ramesh_phone), recipient_phone=ramesh_phone)


def test_api_quote_says_no_rider_when_the_only_one_near_is_the_customer(client, live, frozen):  # noqa: F811
    headers = sign_in(client)
    body = {"pickup": LAXMIPUR_IN, "drop": BETTIAH, "parcel": PARCEL}
    point = make_point("Bettiah", 26.80228, 84.51522)
    with transaction() as s:  # the customer rides for us too, and is on duty
        me = s.scalar(select(Person).where(Person.phone == PHONE))
        assert me is not None
        partner = PartnerProfile(person_id=me.id, first_name="Meena", home_point_id=point,
                                 on_duty=False, kyc_status="verified",
                                 payout_account_id="acc_Meena0001")
        s.add(partner)
        s.flush()
        bicycle = VehicleType.BICYCLE
        s.add(Vehicle(partner_id=partner.id, type=bicycle.value, payload_kg=20,
                      max_size=VEHICLE_CAPACITY[bicycle].max_size.value))
        dispatch.set_duty(s, partner, True)
    r = client.post(f"{API}/quotes", json=body, headers=headers)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["rider_free_now"] is False

    ravi, _ = make_partner("Ravi", (26.80228, 84.51522), point_id=point, on_duty=False)
    with transaction() as s:  # another rider comes on duty there
        other = s.get(PartnerProfile, ravi)
        assert other is not None
        dispatch.set_duty(s, other, True)
    r = client.post(f"{API}/quotes", json=body, headers=headers)
    assert r.get_json()["rider_free_now"] is True

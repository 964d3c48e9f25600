"""Where a parcel is, as the customer sees it, and the partner positions it comes from:
no position hours old shown as live, a relay's ETA counts the legs still to come, and a
GPS glitch neither hides a partner from dispatch nor blocks their real positions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg
from core.domain.booking import Actor, LegStatus
from core.domain.dispatch import VEHICLE_SPEED_KMH
from core.domain.errors import ValidationError
from core.domain.geo import haversine_m
from core.domain.pricing import VehicleType
from core.services import partner_app, tracking
from core.services.booking import move_leg
from tests.test_dispatch import (  # noqa: F401  (frozen: a fixture)
    BETTIAH,
    LAXMIPUR,
    T0,
    frozen,
    legs_of,
    make_partner,
    make_point,
    offers,
    paid_booking,
    start,
)

pytestmark = pytest.mark.db
MID = (26.8475, 84.5017)  # a Point halfway between Laxmipur and Bettiah


def carrying(partner_id: int, booking_id: int) -> None:
    """The booking's first leg picked up by ``partner_id``, as dispatch would record it."""
    with transaction() as s:
        leg = s.scalar(select(Leg).where(Leg.booking_id == booking_id, Leg.sequence == 1))
        leg.partner_id = partner_id
        for to in (LegStatus.OFFERING, LegStatus.ASSIGNED, LegStatus.PICKED_UP):
            move_leg(s, leg, to, Actor.system(), "as dispatch does")


def whereabouts(booking_id: int) -> tracking.Whereabouts:
    with transaction() as s:
        return tracking.position_and_eta(s, s.get(Booking, booking_id))


def test_a_position_hours_old_is_not_shown_as_where_the_parcel_is(live, frozen):  # noqa: F811
    pid, _ = make_partner("Ramesh", LAXMIPUR, has_app=True)
    partner_app.record_location(pid, *LAXMIPUR, 20, clock.now())
    booking_id = paid_booking()
    carrying(pid, booking_id)
    assert whereabouts(booking_id).position == {"lat": LAXMIPUR[0], "lng": LAXMIPUR[1]}
    clock.freeze(T0 + timedelta(hours=6))  # the app stopped reporting six hours ago
    assert whereabouts(booking_id) == tracking.Whereabouts(position=None, eta_minutes=None)


def test_a_relays_eta_counts_the_legs_still_to_come(live, frozen):  # noqa: F811
    pid, _ = make_partner("Ramesh", LAXMIPUR, has_app=True)
    booking_id = paid_booking()
    point = make_point("Mid Point", *MID)
    with transaction() as s:
        leg = s.scalar(select(Leg).where(Leg.booking_id == booking_id))
        leg.to_point_id, leg.to_lat, leg.to_lng = point, *MID
        leg.distance_m = haversine_m(*LAXMIPUR, *MID)
        s.add(Leg(booking_id=booking_id, sequence=2, status=LegStatus.PENDING.value,
                  from_point_id=point, from_lat=MID[0], from_lng=MID[1], to_lat=BETTIAH[0],
                  to_lng=BETTIAH[1], distance_m=haversine_m(*MID, *BETTIAH),
                  payout_paise=1000, otp_failures=0))
    carrying(pid, booking_id)
    partner_app.record_location(pid, *LAXMIPUR, 20, clock.now())
    with transaction() as s:
        speed = VEHICLE_SPEED_KMH[VehicleType(s.get(Booking, booking_id).vehicle_type)]
    to_drop = haversine_m(*LAXMIPUR, *MID) + haversine_m(*MID, *BETTIAH)
    assert whereabouts(booking_id).eta_minutes == round(to_drop / 1000 / speed * 60)


def test_a_position_outside_india_is_refused(live, frozen):  # noqa: F811
    pid, _ = make_partner("Ramesh", LAXMIPUR, has_app=True)
    for glitch in ((0.0, 0.0), (51.5, -0.12)):  # "null island", London
        with pytest.raises(ValidationError) as refused:
            partner_app.record_location(pid, *glitch, 20, clock.now())
        assert refused.value.code == "bad_location"
    partner_app.record_location(pid, *LAXMIPUR, 20, clock.now())  # the real one is taken


def test_an_old_fix_far_away_does_not_block_a_new_one(live, frozen):  # noqa: F811
    pid, _ = make_partner("Ramesh", LAXMIPUR, has_app=True)
    partner_app.record_location(pid, *LAXMIPUR, 20, clock.now())
    clock.freeze(T0 + timedelta(minutes=10))  # the app was off for a while
    far = (LAXMIPUR[0] + 0.5, LAXMIPUR[1])  # 55 km: impossible in 10 minutes, if it counted
    partner_app.record_location(pid, *far, 20, clock.now())
    clock.freeze(T0 + timedelta(minutes=10, seconds=30))
    with pytest.raises(ValidationError) as refused:  # a recent fix still bounds the next
        partner_app.record_location(pid, *LAXMIPUR, 20, clock.now())
    assert refused.value.code == "impossible_jump"

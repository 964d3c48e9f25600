"""Bookings, pricing and tracking at their edges, each once wrong (the docstrings tell
how): a tracking ETA at the quoted vehicle's speed, an OSRM route shorter than the
straight line, a WhatsApp photo filed with the wrong drop, tracking without Redis, and
low-accuracy fixes walking a partner off at an impossible speed."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import clock
from core.adapters.db import transaction
from core.adapters.distance import road_distance_m
from core.adapters.models import Booking, Leg, PartnerProfile
from core.domain.booking import Actor, LegStatus
from core.domain.dispatch import VEHICLE_SPEED_KMH
from core.domain.errors import ValidationError
from core.domain.geo import haversine_m
from core.domain.pricing import VehicleType
from core.services import dispatch as dispatch_service
from core.services import partner_app, tracking
from core.services.booking import move_leg
from tests.test_dispatch import (  # noqa: F401  (frozen: a fixture)
    BETTIAH,
    LAXMIPUR,
    freeze_at,
    frozen,
    make_partner,
    paid_booking,
)
from tests.test_distance import (  # noqa: F401  (osrm, _osrm_server: fixtures)
    BETTIAH as BETTIAH_HO,
)
from tests.test_distance import (  # noqa: F401
    DETOUR,
    MOTIHARI,
    _osrm_server,
    osrm,
)

pytestmark = pytest.mark.db


def _carrying(partner_id: int, booking_id: int) -> None:
    with transaction() as s:
        leg = s.scalar(select(Leg).where(Leg.booking_id == booking_id, Leg.sequence == 1))
        leg.partner_id = partner_id
        for to in (LegStatus.OFFERING, LegStatus.ASSIGNED, LegStatus.PICKED_UP):
            move_leg(s, leg, to, Actor.system(), "as dispatch does")


def _whereabouts(booking_id: int) -> tracking.Whereabouts:
    with transaction() as s:
        return tracking.position_and_eta(s, s.get(Booking, booking_id))


def test_eta_uses_the_carrying_partners_vehicle_not_the_quoted_one(live, frozen):  # noqa: F811
    # A bag is quoted on a bicycle (cheapest), but dispatch offers it to any vehicle that
    # can carry it: here a motorcycle rider picked it up. The ETA must be at 30 km/h,
    # not the bicycle's 12 km/h (2.5 times too long).
    pid, _ = make_partner("Suresh", LAXMIPUR, VehicleType.MOTORCYCLE, has_app=True)
    booking_id = paid_booking()
    with transaction() as s:
        assert s.get(Booking, booking_id).vehicle_type == VehicleType.BICYCLE.value
    _carrying(pid, booking_id)
    partner_app.record_location(pid, *LAXMIPUR, 20, clock.now())
    to_go = haversine_m(*LAXMIPUR, *BETTIAH)
    expected = max(1, round(to_go / 1000 / VEHICLE_SPEED_KMH[VehicleType.MOTORCYCLE] * 60))
    assert _whereabouts(booking_id).eta_minutes == expected


def test_an_osrm_route_shorter_than_the_straight_line_is_not_priced(osrm):  # noqa: F811
    # OSRM snaps both ends to the nearest mapped road; two villages far from any road can
    # snap to one node and come back "Ok" with a 0 m route. Bettiah -> Motihari is ~42 km
    # in a straight line: a road cannot be shorter, and a 0 m quote is the minimum fare
    # (the trip carried for Rs 25). Such an answer must fall back to the estimate.
    osrm.answer({"code": "Ok", "routes": [{"distance": 0.0, "duration": 0}]})
    got = road_distance_m(BETTIAH_HO, MOTIHARI, detour_factor_bp=DETOUR, osrm_url=osrm.url)
    assert got.metres >= haversine_m(*BETTIAH_HO, *MOTIHARI)


def test_a_whatsapp_photo_right_after_a_drop_is_filed_with_that_drop(live, frozen):  # noqa: F811
    # Bundled jobs: one rider carries two parcels (max_active_legs=2). They hand over A,
    # confirm A's drop, and send the proof photo on WhatsApp. It is filed with B (still on
    # the bike, not yet dropped): A has no proof and B gets a stranger's doorstep.
    pid, _ = make_partner("Ramesh", LAXMIPUR, has_app=True)
    a, b = paid_booking(), paid_booking()
    _carrying(pid, a)
    freeze_at(60)
    _carrying(pid, b)
    freeze_at(1800)
    with transaction() as s:
        leg_a = s.scalar(select(Leg).where(Leg.booking_id == a))
        move_leg(s, leg_a, LegStatus.DELIVERED, Actor.system(), "drop OTP right")
        leg_a_id = leg_a.id
    freeze_at(1830)  # the photo, 30 s after A's drop
    with transaction() as s:
        leg = dispatch_service.pod_leg_of(s, s.get(PartnerProfile, pid))
        assert leg is not None and leg.id == leg_a_id


def test_tracking_without_redis_shows_the_booking_without_a_position(live, frozen,  # noqa: F811
                                                                   monkeypatch):
    # Redis blinks: the quote path says so and goes on (rider_free_near), surge falls back
    # to none; tracking instead raises, so GET /bookings/<ref>/track answers 500 and the
    # customer sees nothing at all of their booking.
    from redis.exceptions import ConnectionError as RedisConnectionError

    pid, _ = make_partner("Ramesh", LAXMIPUR, has_app=True)
    booking_id = paid_booking()
    _carrying(pid, booking_id)

    def down():  # noqa: ANN202
        raise RedisConnectionError("Redis is away")

    monkeypatch.setattr(partner_app, "redis_client", down)
    assert _whereabouts(booking_id) == tracking.Whereabouts(position=None, eta_minutes=None)


def test_fixes_with_a_wide_accuracy_cannot_walk_a_partner_off_at_impossible_speed(
        live, frozen):  # noqa: F811
    # Each fix is checked only against the one before, with that fix's own accuracy as
    # slack: six fixes a second apart, each 5 km further north and "accurate to 5 km",
    # move the partner 30 km in 5 seconds (21600 km/h) and every one is accepted, so
    # dispatch and the customer's map place them 30 km from where they are.
    pid, _ = make_partner("Ramesh", LAXMIPUR, has_app=True)
    partner_app.record_location(pid, *LAXMIPUR, 20, clock.now())
    step = 5000 / 111_195  # degrees of latitude in 5 km
    with pytest.raises(ValidationError) as refused:
        for i in range(1, 7):
            freeze_at(i)
            partner_app.record_location(pid, LAXMIPUR[0] + i * step, LAXMIPUR[1], 5000,
                                        clock.now())
    assert refused.value.code == "impossible_jump"

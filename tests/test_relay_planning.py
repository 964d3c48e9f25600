"""Relay planning: ends at (or a few metres from) a Point, detours, range and leg payouts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.dispatch_models import DispatchOffer as Offer
from core.adapters.models import Booking
from core.adapters.queue import queue
from core.domain import dispatch as d
from core.domain.geo import haversine_m
from core.domain.pricing import VehicleType, split_by_weights
from core.services.payments import GATEWAY_RETRY
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    make_point,
    offers,
    paid_booking,
    sms,
    start,
    take_job,
)

# On one parallel, 0.01 degree of longitude is ~1 km: P -A- 7 km -B- 10 km - D 7 km.
P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)
POINT_A, POINT_B = d.Stop(*A, point_id=1), d.Stop(*B, point_id=2)


def _dist(a: d.Stop, b: d.Stop) -> int:
    return haversine_m(a.lat, a.lng, b.lat, b.lng)


def _east(at: tuple[float, float], metres: int) -> d.Stop:
    """A place ``metres`` east of ``at`` (a degree of longitude is ~99.3 km here)."""
    return d.Stop(at[0], at[1] + metres / 99_300)


# --- ends at a Point ---------------------------------------------------------------------


@pytest.mark.parametrize("metres", [0, 1, 250])
def test_a_pickup_at_or_beside_a_point_starts_the_relay_from_the_customer(metres):
    pickup, drop = _east(A, metres), d.Stop(*D)
    assert abs(_dist(pickup, POINT_A) - metres) <= 2  # the helper's geometry holds
    stops = d.plan_relay(pickup, drop, [POINT_A, POINT_B], _dist)
    assert stops == [pickup, POINT_B, drop]  # no leg to Point A; collected at the door


def test_a_pickup_beyond_the_merge_radius_keeps_its_own_leg():
    pickup = _east(A, -d.RELAY_MERGE_RADIUS_M - 50)
    stops = d.plan_relay(pickup, d.Stop(*D), [POINT_A, POINT_B], _dist)
    assert [s.point_id for s in stops or []] == [None, 1, 2, None]


@pytest.mark.parametrize("metres", [0, 250])
def test_a_drop_at_or_beside_a_point_ends_the_relay_there(metres):
    pickup, drop = d.Stop(*P), _east(B, metres)
    stops = d.plan_relay(pickup, drop, [POINT_A, POINT_B], _dist)
    assert stops == [pickup, POINT_A, drop]  # delivered to the door from Point A


def test_no_relay_when_both_ends_are_at_the_only_points():
    assert d.plan_relay(d.Stop(*A), d.Stop(*B), [POINT_A, POINT_B], _dist) is None


def test_two_points_side_by_side_make_one_handover():
    beside_a = d.Stop(A[0], A[1] + 0.002, point_id=3)  # ~200 m east of Point A
    stops = d.plan_relay(d.Stop(*P), _east(A, 9000), [POINT_A, beside_a],
                         _dist)
    assert [s.point_id for s in stops or []] == [None, 1, None]


@pytest.mark.db
def test_a_booking_picked_up_at_a_point_is_relayed_from_there(live, frozen):  # noqa: F811
    # Pincode / post-office pickups sit on the Point's own coordinates (both are the post
    # office's): the relay starts there instead of being dropped for its 0 m first leg.
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    ramesh, _ = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    make_partner("Bala", B, point_id=point_b, max_active_legs=1)
    booking_id = paid_booking(pickup=A, drop=D)  # ~22 road km: beyond a bicycle's 15 km
    start(booking_id)
    legs = legs_of(booking_id)
    assert [(leg.from_point_id, leg.to_point_id) for leg in legs] == [
        (None, point_b), (point_b, None)]
    assert (legs[0].from_lat, legs[0].from_lng) == A
    assert all(leg.distance_m <= 15_000 for leg in legs)
    assert [o.partner_id for o in offers(legs[0].id)] == [ramesh]


@pytest.mark.db
def test_a_pickup_a_metre_from_a_point_has_no_leg_of_its_own(live, frozen):  # noqa: F811
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    make_partner("Bala", B, point_id=point_b, max_active_legs=1)
    near_a = (A[0], A[1] + 0.00001)  # ~1 m east of Point A
    booking_id = paid_booking(pickup=near_a, drop=D)
    start(booking_id)
    legs = legs_of(booking_id)
    assert [(leg.from_point_id, leg.to_point_id) for leg in legs] == [
        (None, point_b), (point_b, None)]
    # The first rider collects at the customer's door and is paid for the whole way.
    assert (legs[0].from_lat, legs[0].from_lng) == near_a
    assert legs[0].distance_m > 10_000 and legs[0].payout_paise >= 100


# --- length and range --------------------------------------------------------------------


def test_no_relay_the_long_way_round():
    # The only Point is ~16 km off the road: each leg is shorter than the direct 20 km,
    # but the relay is 37 km, more than RELAY_MAX_LENGTH_PCT of the direct trip.
    pickup, drop = d.Stop(26.85, 84.40), d.Stop(26.85, 84.60)
    off_route = d.Stop(26.99, 84.50, point_id=1)
    assert d.plan_relay(pickup, drop, [off_route], _dist) is None
    # A Point 5 km off the road halfway (relay 22 km for a 20 km trip) is a fair relay.
    aside = d.Stop(26.895, 84.50, point_id=2)
    assert d.plan_relay(pickup, drop, [aside], _dist) == [pickup, aside, drop]


def test_every_leg_within_the_vehicles_range():
    pickup, drop = d.Stop(*P), d.Stop(*D)
    longest = _dist(POINT_A, POINT_B)  # ~10 km, the longest of 7 + 10 + 7 km
    assert d.plan_relay(pickup, drop, [POINT_A, POINT_B], _dist, longest) is not None
    assert d.plan_relay(pickup, drop, [POINT_A, POINT_B], _dist, longest - 1) is None


@pytest.mark.db
def test_no_relay_with_a_leg_no_bicycle_around_can_ride(live, frozen):  # noqa: F811
    # Bicycles only (15 km). Points 2 km from each end, 18 km apart (~23 road km): the
    # middle leg could never be taken and the parcel would wait at Point A for good; the
    # booking stays one leg, which fails before pickup and is refunded.
    near_p, near_d = make_point("Near P", 26.85, 84.42), make_point("Near D", 26.85, 84.60)
    make_partner("Ramesh", (26.85, 84.42), point_id=near_p, max_active_legs=1)
    make_partner("Bala", (26.85, 84.60), point_id=near_d, max_active_legs=1)
    booking_id = paid_booking(pickup=(26.85, 84.40), drop=(26.85, 84.62))
    start(booking_id)
    assert [(leg.from_point_id, leg.to_point_id) for leg in legs_of(booking_id)] == [
        (None, None)]


# --- leg payouts -------------------------------------------------------------------------


def test_a_short_leg_is_paid_the_least_the_gateway_transfers():
    # 0.5 km then 60 km: by distance alone the first rider would get 65 paise, a transfer
    # Razorpay refuses, so their payable could never be settled.
    assert split_by_weights(8_000, [500, 60_000])[0] < d.MIN_LEG_PAYOUT_PAISE
    assert d.relay_payouts(8_000, [500, 60_000]) == [100, 7_900]
    # Two equally long legs give up the rupee together; neither falls under it.
    assert d.relay_payouts(300, [1, 1_000, 1_000]) == [100, 100, 100]
    assert d.relay_payouts(301, [1, 1_000, 1_000]) == [100, 101, 100]


def test_no_relay_payouts_when_the_share_cannot_pay_every_leg_a_rupee():
    assert d.relay_payouts(299, [1_000, 1_000, 1_000]) is None
    assert d.relay_payouts(300, [1_000, 1_000, 1_000]) == [100, 100, 100]


@given(share=st.integers(min_value=0, max_value=10_000_000),
       distances=st.lists(st.integers(min_value=301, max_value=200_000), min_size=2,
                          max_size=4))
def test_relay_payouts_sum_to_the_share_and_pay_every_leg_a_rupee(share, distances):
    payouts = d.relay_payouts(share, distances)
    if share < d.MIN_LEG_PAYOUT_PAISE * len(distances):
        assert payouts is None
        return
    assert payouts is not None and sum(payouts) == share
    assert min(payouts) >= d.MIN_LEG_PAYOUT_PAISE
    plain = split_by_weights(share, distances)
    if min(plain) >= d.MIN_LEG_PAYOUT_PAISE:
        assert payouts == plain  # by distance, as long as no leg falls under the minimum


def _set_share(booking_id: int, paise: int) -> None:
    """A fare whose partner share is ``paise`` (the platform keeps the rest)."""
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        booking.partner_share_paise = paise
        booking.commission_paise = booking.total_paise - paise


@pytest.mark.db
def test_a_relay_leg_just_outside_the_merge_radius_is_paid_a_rupee(live, frozen):  # noqa: F811
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=(A[0], A[1] - 0.004), drop=D)  # ~400 m before A
    _set_share(booking_id, 3_000)  # by distance the ~500 road m would earn ~70 paise
    start(booking_id)
    legs = legs_of(booking_id)
    assert [(leg.from_point_id, leg.to_point_id) for leg in legs] == [
        (None, point_a), (point_a, point_b), (point_b, None)]
    assert legs[0].payout_paise == 100
    assert sum(leg.payout_paise for leg in legs) == 3_000


@pytest.mark.db
def test_no_relay_when_the_share_cannot_pay_every_leg_a_rupee(live, frozen):  # noqa: F811
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    _set_share(booking_id, 299)
    start(booking_id)
    assert [(leg.from_point_id, leg.to_point_id) for leg in legs_of(booking_id)] == [
        (None, None)]


# --- releasing a delivered leg's payout ----------------------------------------------------


@pytest.mark.db
def test_a_delivered_legs_release_is_retried_like_every_gateway_job(client, live,
                                                                     frozen):  # noqa: F811
    # One transient failure (the database restarting, a lock timeout) must not leave the
    # rider's payout in escrow for good.
    _, phone = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    leg_id = legs_of(booking_id)[0].id
    sms(client, phone, "1")
    # The payout held for the partner on acceptance is a gateway job too.
    with transaction() as s:
        offer_id = s.scalar(select(Offer.id).where(Offer.leg_id == leg_id,
                                                   Offer.status == "accepted"))
    hold = queue("default").fetch_job(f"hold-{leg_id}-{offer_id}")
    assert hold is not None and hold.retry_intervals == GATEWAY_RETRY.intervals
    sms(client, phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    sms(client, phone, f"DROP {last_code(RECIPIENT)}")
    job = queue("default").fetch_job(f"release-{leg_id}")
    assert job is not None
    assert (job.retries_left, job.retry_intervals) == (GATEWAY_RETRY.max,
                                                       GATEWAY_RETRY.intervals)
    assert job.retries_left >= 1
    take_job(f"release-{leg_id}", "workers.payments.release_leg", leg_id)


def test_a_leg_is_offered_only_to_partners_whose_vehicle_can_ride_all_of_it(
        live, frozen):  # noqa: F811
    # 21 km direct: within a motorcycle's range (60 km), beyond a bicycle's (15 km). The
    # cyclist next door is not offered it; the motorcyclist a little farther is.
    far_drop = (26.70, 84.52)
    cyclist, _ = make_partner("Ramesh", LAXMIPUR)
    rider, _ = make_partner("Suresh", (LAXMIPUR[0] + 0.01, LAXMIPUR[1]), VehicleType.MOTORCYCLE)
    booking_id = paid_booking(drop=far_drop)
    start(booking_id)
    (leg,) = legs_of(booking_id)
    assert 15_000 < leg.distance_m <= 60_000
    with transaction() as s:
        offered = set(s.scalars(select(Offer.partner_id).where(Offer.leg_id == leg.id)))
    assert offered == {rider} and cyclist not in offered


def test_the_customer_is_told_the_vehicle_that_can_ride_the_leg(client, live,
                                                                 frozen):  # noqa: F811
    # A partner with a bicycle (first) and a motorcycle takes a 21 km leg: only the
    # motorcycle has the range, so that is the vehicle the customer hears of.
    from core import i18n
    from core.adapters.models import Vehicle
    from core.domain.pricing import VEHICLE_CAPACITY
    from tests.test_dispatch import bodies_to

    pid, phone = make_partner("Suresh", LAXMIPUR)
    with transaction() as s:
        s.add(Vehicle(partner_id=pid, type=VehicleType.MOTORCYCLE.value, payload_kg=20,
                      max_size=VEHICLE_CAPACITY[VehicleType.MOTORCYCLE].max_size.value))
    booking_id = paid_booking(drop=(26.70, 84.52))
    start(booking_id)
    (leg,) = legs_of(booking_id)
    assert 15_000 < leg.distance_m <= 60_000
    sms(client, phone, "1")
    with transaction() as s:
        ref = s.get(Booking, booking_id).reference
    told = {vt: i18n.t("dispatch.customer_assigned", "hi", ref=ref, name="Suresh",
                       vehicle=i18n.t(f"vehicle.{vt}", "hi"))
            for vt in ("motorcycle", "bicycle")}
    sent = bodies_to(CUSTOMER)
    assert told["motorcycle"] in sent and told["bicycle"] not in sent

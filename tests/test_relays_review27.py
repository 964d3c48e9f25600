"""Review r3: Points (village hubs) and relay planning. Each test asserts what should
happen and fails on the code as reviewed.

The relay of test_dispatch_relay: P -A- 7 km -B- 10 km - D 7 km (straight; x1.35 by road),
bicycles (15 km) unless said otherwise.

1. plan_legs judges "can anyone near ride it direct" (and each relay leg's range) by the
   vehicle types of only the DISPATCH_MAX_CANDIDATES (20) best-ranked partners
   (_fleet -> find_candidates cuts the ranked list): a motorcycle rider ranked 21st near
   the pickup is not seen, and a 32 km trip he could ride goes by three bicycles.
2. The next rider's PICK (the code only the carrier holds, face to face) closes the
   carrier's leg only while it is "picked up" (_handover_proven): a carrier locked by
   wrong DROP codes at the Point keeps a locked leg after the parcel has gone on (and
   Point A stays "in use"); ops unlocking it (as the lock alert asks) put it back to
   "picked up" with a new drop code sent to nobody (the next leg is picked up already):
   never delivered, never paid.
3. Ops' new-code makes a relay leg's drop code (the one the next rider reads out at the
   Point) while the next leg has no rider: a working code nobody should hold, that lets
   the carrier "hand over" to nobody. README: 409 no_rider where the leg takes no code.
4. plan_relay takes the Point nearest the pickup even when it lies behind it (away from
   the drop): a workable relay through the hub ahead is missed, the trip goes direct and
   nobody near can ride it (the quote's _legs_m says too_far the same way).
"""

from __future__ import annotations

import pytest

from core.adapters.db import transaction
from core.domain.pricing import VehicleType
from tests.test_dispatch import (
    frozen,  # noqa: F401  (fixture)
    legs_of,
    make_partner,
    make_point,
    offers,
    paid_booking,
    start,
)
from tests.test_dispatch_relay import A, B, D, P

pytestmark = pytest.mark.db


def test_a_motorcycle_beyond_the_twenty_best_bicycles_still_rides_the_trip_direct(
        live, frozen):  # noqa: F811
    # Moto (60 km range, 30 km/h) rides the 32 road km in about an hour, well within the
    # standard tier's 8: the trip is direct, as it is with 19 bicycles around instead of 20.
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    for i in range(20):
        make_partner(f"Cycle{i}", A, point_id=point_a, rating_x100=500)
    moto, _ = make_partner("Moto", A, VehicleType.MOTORCYCLE, point_id=point_a,
                           rating_x100=100)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    legs = legs_of(booking_id)
    assert len(legs) == 1, [(x.from_point_id, x.to_point_id) for x in legs]
    assert [o.partner_id for o in offers(legs[0].id)] == [moto]


def _carrier_locked_at_point_a(client, *, next_pick_closes: bool = True,
                               monkeypatch=None) -> tuple[int, int, int]:
    """Ramesh carries leg 1 to Point A and locks it there with wrong DROP codes; face to
    face, he reads out the code only he was sent and Asha's PICK takes it: the parcel is
    hers and goes on to Point B. Returns (booking, leg 1, Point A).

    ``next_pick_closes=False``: Asha's PICK as it was before it closed a locked leg (a leg
    locked so before this release, still locked, that ops unlock now)."""
    from core.services import dispatch
    from tests.test_dispatch import CUSTOMER, last_code, sms
    from tests.test_relay_review import GIVE_MARK, PICK_MARK, TAKE_MARK

    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg1 = legs_of(booking_id)[0].id
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    assert "आपका है" in sms(client, a_phone, "1")[0]
    right = last_code(a_phone, TAKE_MARK)
    wrong = f"{(int(right) + 1) % 10000:04d}"
    for _ in range(dispatch.config().otp_max_failures):
        sms(client, r_phone, f"DROP {wrong}")
    assert legs_of(booking_id)[0].status == "locked"
    if not next_pick_closes:
        monkeypatch.setattr(dispatch, "_handover_proven", lambda *_a, **_k: None)
    assert "उठ गया" in sms(client, a_phone, f"PICK {last_code(r_phone, GIVE_MARK)}")[0]
    if not next_pick_closes:
        monkeypatch.undo()
    assert legs_of(booking_id)[1].status == "picked_up"
    return booking_id, leg1, point_a


def test_a_next_riders_pick_closes_a_carriers_leg_locked_at_the_point(
        client, live, frozen):  # noqa: F811
    from core.adapters.queue import queue
    from core.domain.booking import Actor
    from core.domain.errors import Conflict
    from core.services import admin, dispatch

    booking_id, leg1, point_a = _carrier_locked_at_point_a(client)
    # Ramesh handed the parcel over, as the PICK of the code only he held proves: his leg
    # is delivered and paid, not left locked (an active job of his, never paid).
    assert legs_of(booking_id)[0].status == "delivered"
    assert queue("default").fetch_job(f"release-{leg1}") is not None
    # Nothing waits at Point A any more: it may be closed or moved.
    with transaction() as s:
        assert admin.relays_through(s, point_a) == []
    # The lock alert asked ops to unlock it: there is nothing left to unlock.
    with pytest.raises(Conflict) as refused:
        with transaction() as s:
            dispatch.unlock_leg(s, leg1, Actor("ops", "1"))
    assert refused.value.code == "not_locked"


def test_ops_unlocking_a_carriers_leg_the_next_rider_picked_up_since_delivers_it(
        client, live, frozen, monkeypatch):  # noqa: F811
    from core.adapters.queue import queue
    from core.domain.booking import Actor
    from core.services import dispatch

    booking_id, leg1, _ = _carrier_locked_at_point_a(client, next_pick_closes=False,
                                                     monkeypatch=monkeypatch)
    assert legs_of(booking_id)[0].status == "locked"
    # Ops unlock Ramesh's leg, as the lock alert asks them to: he handed the parcel over,
    # so it is delivered and paid, not put back to "picked up" with a drop code that
    # nobody holds (Asha left the Point with the parcel).
    with transaction() as s:
        dispatch.unlock_leg(s, leg1, Actor("ops", "1"))
    assert legs_of(booking_id)[0].status == "delivered"
    assert queue("default").fetch_job(f"release-{leg1}") is not None


def test_ops_make_no_handover_drop_code_while_the_next_leg_has_no_rider(
        client, live, frozen):  # noqa: F811
    from core.domain.booking import Actor
    from core.domain.errors import Conflict
    from core.services import dispatch
    from tests.test_dispatch import CUSTOMER, last_code, sms
    from tests.test_relay_review import PICK_MARK

    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg1, leg2, _ = (leg.id for leg in legs_of(booking_id))
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    assert legs_of(booking_id)[1].partner_id is None  # nobody near Point A for leg 2
    with pytest.raises(Conflict) as refused:
        with transaction() as s:
            dispatch.new_leg_code(s, leg1, "drop", Actor("ops", "1"),
                                  reason="rider asks for his code")
    assert refused.value.code == "no_rider"


def test_a_point_just_behind_the_pickup_does_not_stop_the_relay_ahead(
        live, frozen):  # noqa: F811
    # The sender's own village hub is 1 km west, away from the drop; the hubs on the way
    # are A and B, as in test_dispatch_relay. Bicycles only (15 km): P -> A -> B -> D
    # (9.5, 13.5, 9.5 road km) rides; P -> hub -> B -> D has a 24 road km leg no bicycle
    # rides, and the direct 32 km nobody does.
    make_point("Home hub", 26.85, 84.39)
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    assert [(leg.from_point_id, leg.to_point_id) for leg in legs_of(booking_id)] == [
        (None, point_a), (point_a, point_b), (point_b, None)]

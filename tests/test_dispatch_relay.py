"""A relay booking end to end: pickup -> Point A -> Point B -> drop, one partner per leg,
every handover confirmed by OTP, payouts split by distance, customer told each step."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import Booking
from tests.test_dispatch import (
    CUSTOMER,
    RECIPIENT,
    bodies_to,
    booking_status,
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

pytestmark = pytest.mark.db

# On one parallel, 0.01 degree of longitude is ~1 km: P -A- 7 km -B- 10 km - D 7 km.
P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)


def test_relay_booking_runs_leg_by_leg(client, live, frozen):  # noqa: F811
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    # Bicycles only (15 km range): nobody can ride the 32 road km in one go.
    ramesh, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    asha, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    bala, b_phone = make_partner("Bala", B, point_id=point_b, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)

    legs = legs_of(booking_id)
    assert [(leg.from_point_id, leg.to_point_id) for leg in legs] == [
        (None, point_a), (point_a, point_b), (point_b, None)]
    with transaction() as s:
        share = s.get(Booking, booking_id).partner_share_paise
    assert sum(leg.payout_paise for leg in legs) == share
    assert legs[1].payout_paise > legs[0].payout_paise  # longer leg, larger share
    assert [leg.status for leg in legs] == ["offering", "pending", "pending"]
    leg1, leg2, leg3 = (leg.id for leg in legs)

    # Leg 1: Ramesh collects from the sender.
    assert [o.partner_id for o in offers(leg1)] == [ramesh]
    assert "आपका है" in sms(client, r_phone, "1")[0]
    assert "उठ गया" in sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")[0]
    assert booking_status(booking_id) == "picked_up"

    # Leg 2 is offered as soon as leg 1 is on its way, so its rider waits at Point A.
    assert [o.partner_id for o in offers(leg2)] == [asha]
    assert "आपका है" in sms(client, a_phone, "1")[0]
    # Handover at A: Asha reads her code to Ramesh (his DROP), Ramesh his to Asha (her PICK).
    ramesh_drop = last_code(a_phone, "पार्सल लें")
    asha_pick = last_code(r_phone, "अगले राइडर")
    wrong = f"{(int(ramesh_drop) + 1) % 10000:04d}"
    assert "गलत" in sms(client, r_phone, f"DROP {wrong}")[0]
    assert "पहुँच गया" in sms(client, r_phone, f"DROP {ramesh_drop}")[0]
    take_job(f"release-{leg1}", "workers.payments.release_leg", leg1)
    assert booking_status(booking_id) == "in_transit"
    assert "उठ गया" in sms(client, a_phone, f"PICK {asha_pick}")[0]

    # Leg 3 from Point B to the recipient.
    assert [o.partner_id for o in offers(leg3)] == [bala]
    assert "आपका है" in sms(client, b_phone, "हाँ")[0]
    sms(client, a_phone, f"DROP {last_code(b_phone, 'पार्सल लें')}")
    take_job(f"release-{leg2}", "workers.payments.release_leg", leg2)
    sms(client, b_phone, f"PICK {last_code(a_phone, 'अगले राइडर')}")
    assert booking_status(booking_id) == "in_transit"
    assert "पहुँच गया" in sms(client, b_phone, f"DROP {last_code(RECIPIENT)}")[0]
    take_job(f"release-{leg3}", "workers.payments.release_leg", leg3)

    assert booking_status(booking_id) == "delivered"
    assert [leg.status for leg in legs_of(booking_id)] == ["delivered"] * 3
    assert [leg.partner_id for leg in legs_of(booking_id)] == [ramesh, asha, bala]
    # Only the last leg's drop code went to the recipient, once.
    assert len(bodies_to(RECIPIENT)) == 1
    with transaction() as s:
        ref = s.scalar(select(Booking.reference).where(Booking.id == booking_id))
    customer = bodies_to(CUSTOMER)
    assert any("रास्ते" in m or "on the way" in m for m in customer)
    assert all(ref in m for m in customer)


def test_short_trip_stays_direct_even_with_points_around(live, frozen):  # noqa: F811
    point_a = make_point("Point A", *A)
    make_partner("Ramesh", P, max_active_legs=1)
    make_partner("Asha", A, point_id=point_a)
    booking_id = paid_booking(pickup=P, drop=A)
    start(booking_id)
    assert len(legs_of(booking_id)) == 1


def test_relay_planning_measures_only_the_points_near_each_end(live, frozen,  # noqa: F811
                                                               monkeypatch):
    # Among 600 other active Points (east of the trip, up to 1,000 km away), the relay
    # still goes through the Points nearest each end, and planning measures road distances
    # to the few nearest each end in a straight line, not to every Point.
    import random

    from sqlalchemy import insert

    from core.adapters.models import Point
    from core.adapters.points import CANDIDATES
    from core.services import dispatch

    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    rng = random.Random(3)
    with transaction() as s:
        s.execute(insert(Point), [
            {"name": f"Far {i}", "lat": rng.uniform(26.0, 27.7), "lng": rng.uniform(84.9, 94.0),
             "pincode": "845438", "active": True} for i in range(600)])
    make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    measured: list[tuple] = []
    road = dispatch.road_distance_m

    def counting(a, b, **kwargs):
        measured.append((a, b))
        return road(a, b, **kwargs)

    monkeypatch.setattr(dispatch, "road_distance_m", counting)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    legs = legs_of(booking_id)
    assert [(leg.from_point_id, leg.to_point_id) for leg in legs] == [
        (None, point_a), (point_a, point_b), (point_b, None)]
    pairs = {frozenset((a, b)) for a, b in measured}
    # Each end to the candidates found near either end (at most 2 x CANDIDATES), the
    # direct trip and the relay's legs; the old plan measured both ends to every Point.
    assert len(pairs) <= 4 * CANDIDATES + 4, len(pairs)


def test_relay_finds_the_point_nearest_by_road_beyond_the_nearest_in_a_straight_line(
        live, frozen, monkeypatch):  # noqa: F811
    # Sixteen Points lie closer to each end than A and B in a straight line, but across a
    # river (their roads are 50x longer): the relay still goes through A and B, the
    # nearest by road, though neither is among the 16 nearest in a straight line.
    from sqlalchemy import insert

    from core.adapters.distance import DistanceResult
    from core.adapters.models import Point
    from core.services import dispatch

    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    river = [(26.85 + (-1) ** i * 0.002 * (i % 5), lng)
             for i, lng in enumerate([84.405 + 0.002 * j for j in range(16)]
                                     + [84.605 + 0.002 * j for j in range(16)])]
    with transaction() as s:
        s.execute(insert(Point), [{"name": f"Across {i}", "lat": lat, "lng": lng,
                                   "pincode": "845438", "active": True}
                                  for i, (lat, lng) in enumerate(river)])
    make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    across = set(river)
    road = dispatch.road_distance_m

    def with_river(a, b, **kwargs):
        found = road(a, b, **kwargs)
        if tuple(a) in across or tuple(b) in across:
            return DistanceResult(found.metres * 50, found.source)
        return found

    monkeypatch.setattr(dispatch, "road_distance_m", with_river)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    assert [(leg.from_point_id, leg.to_point_id) for leg in legs_of(booking_id)] == [
        (None, point_a), (point_a, point_b), (point_b, None)]


def test_a_relay_leg_nobody_took_is_searched_again_round_after_round(client, live,
                                                                       frozen):  # noqa: F811
    # Ramesh takes leg 1 and has the parcel; nobody can take leg 2 before the hour's
    # deadline. The parcel cannot go back by itself, so the leg is not failed: ops and the
    # customer hear of it, and the search starts again until someone takes it.
    from datetime import timedelta

    from core import i18n
    from core.adapters.dispatch_models import DispatchSearch
    from core.services import dispatch
    from tests.conftest import release_scheduled, run_jobs
    from tests.test_dispatch import OPS, freeze_at

    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    _, leg2, _ = (leg.id for leg in legs_of(booking_id))
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert offers(leg2) == []  # Ramesh is full, nobody else is near
    freeze_at(60 * 60 + 1)
    release_scheduled(timedelta(minutes=61))
    run_jobs()

    def search() -> tuple[str, int]:
        with transaction() as s:
            row = s.scalar(select(DispatchSearch).where(DispatchSearch.leg_id == leg2))
            return row.status, row.round

    assert search() == ("paused", 1)
    assert legs_of(booking_id)[1].status == "pending"
    assert booking_status(booking_id) == "picked_up"
    with transaction() as s:
        ref = s.get(Booking, booking_id).reference
    assert i18n.t("dispatch.ops_paused", "hi", ref=ref, job=str(leg2)) in bodies_to(OPS)
    assert i18n.t("dispatch.still_searching", "hi", ref=ref) in bodies_to(CUSTOMER)
    # A partner comes on duty at Point A; the next round (after retry_s) offers them.
    asha, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1,
                                 on_duty=False)
    sms(client, a_phone, "ON")
    freeze_at(60 * 60 + 1 + 121)
    release_scheduled(timedelta(minutes=3))
    run_jobs()
    assert search() == ("active", 2)
    assert [o.partner_id for o in offers(leg2)] == [asha]
    assert "आपका है" in sms(client, a_phone, "1")[0]
    # A lost resume job is made up for by the sweep (nothing paused is left here).
    assert dispatch.sweep()["resumed"] == 0


def test_unlocking_a_relay_handover_sends_the_new_code_to_the_next_rider(client, live,
                                                                         frozen):  # noqa: F811
    # Ramesh (leg 1) keys in wrong codes at Point A until the leg locks. Ops unlock it: the
    # codes are new, so Asha (leg 2), who reads hers out to him, must get the new one; the
    # sender, whose parcel was picked up long ago, gets no new pickup code.
    from core.domain.booking import Actor
    from core.services import dispatch

    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg1, leg2, _ = (leg.id for leg in legs_of(booking_id))
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert "आपका है" in sms(client, a_phone, "1")[0]
    old = last_code(a_phone, "पार्सल लें")
    wrong = f"{(int(old) + 1) % 10000:04d}"
    for _ in range(5):
        sms(client, r_phone, f"DROP {wrong}")
    assert legs_of(booking_id)[0].status == "locked"
    to_sender = len(bodies_to(CUSTOMER))
    with transaction() as s:
        dispatch.unlock_leg(s, leg1, Actor("ops", "1"))
    assert legs_of(booking_id)[0].status == "picked_up"
    new = last_code(a_phone, "पार्सल लें")
    assert new != old or len([b for b in bodies_to(a_phone) if "पार्सल लें" in b]) == 2
    assert len(bodies_to(CUSTOMER)) == to_sender  # no pickup code for a picked-up parcel
    assert "पहुँच गया" in sms(client, r_phone, f"DROP {new}")[0]
    assert legs_of(booking_id)[0].status == "delivered"
    assert legs_of(booking_id)[1].id == leg2


def _relay_with_leg2_taken(client):
    """Ramesh has picked the parcel up for leg 1, Asha has taken leg 2 (and got the code
    she reads out to him at Point A)."""
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert "आपका है" in sms(client, a_phone, "1")[0]
    return booking_id, r_phone, a_phone


def test_a_rider_who_gives_a_relay_leg_back_cannot_collect_the_parcel(client, live,
                                                                      frozen):  # noqa: F811
    booking_id, r_phone, a_phone = _relay_with_leg2_taken(client)
    code = last_code(a_phone, "पार्सल लें")
    leg2 = legs_of(booking_id)[1].id
    assert sms(client, a_phone, f"CANCEL {leg2}")[0]  # given back
    assert legs_of(booking_id)[1].status == "offering"
    # The code Asha had no longer hands the parcel over: with nobody on leg 2, Ramesh
    # hears to keep the parcel (no try counted).
    assert "पार्सल संभालकर रखें" in sms(client, r_phone, f"DROP {code}")[0]
    assert legs_of(booking_id)[0].status == "picked_up"


def test_a_rider_holding_the_relay_parcel_cannot_give_the_leg_back(client, live,
                                                                   frozen):  # noqa: F811
    booking_id, r_phone, a_phone = _relay_with_leg2_taken(client)
    assert "पहुँच गया" in sms(client, r_phone, f"DROP {last_code(a_phone, 'पार्सल लें')}")[0]
    leg2 = legs_of(booking_id)[1].id
    from core import i18n
    from core.config import get_settings

    assert sms(client, a_phone, f"CANCEL {leg2}") == [i18n.t(
        "dispatch.cancel_too_late", "hi", job=str(leg2), ops_phone=get_settings().ops_phone)]
    assert legs_of(booking_id)[1].status == "assigned"

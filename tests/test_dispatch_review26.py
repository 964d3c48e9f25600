"""Review r7, dispatch: matching and offers for a leg. Each test shows one defect and
fails on the code as reviewed.

Real PostgreSQL and Redis, the signed SMS webhook and RQ as in tests/test_dispatch.py;
the clock is frozen and moved, never slept.
"""

from __future__ import annotations

import pytest

from core import clock, i18n
from core.config import get_settings
from tests.test_api import sign_in
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    bodies_to,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    make_point,
    offers,
    paid_booking,
    sms,
    start,
)
from tests.test_dispatch_relay import A, B, D, P

pytestmark = pytest.mark.db

PATNA = (25.5941, 85.1376)  # some 150 km from Laxmipur


def test_a_rider_whose_app_puts_him_150_km_away_is_not_offered_a_job_at_his_home(
        client, live, frozen):  # noqa: F811
    """geo_index: "A partner with a fresh live position is found there". Ramesh was
    signed up as an SMS partner (has_app false, placed at his home Point while ON) and
    uses the app now: a minute ago it sent his position, in Patna, 150 km away. A booking
    at his home village is offered to him first, 0 m away: the home set is searched
    apart from the live one, and a fresh live position hides the home entry only when it
    is inside the search radius too (nearby_capped's one entry per partner). He cannot
    be there for hours; the job waits out his offer, and if he says yes the customer
    waits for a rider 150 km away."""
    rider, phone = make_partner("Ramesh", LAXMIPUR, has_app=False)
    headers = sign_in(client, phone)
    fix = {"lat": PATNA[0], "lng": PATNA[1], "accuracy_m": 10,
           "timestamp": clock.now().isoformat()}
    assert client.put("/api/v1/partners/me/location", headers=headers,
                      json=fix).status_code == 200
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    made = [(o.partner_id, o.distance_m) for o in offers(leg.id)]
    assert rider not in [pid for pid, _ in made], made


def test_the_rider_carrying_a_relay_parcel_is_not_offered_its_next_leg(client, live,
                                                                        frozen):  # noqa: F811
    """P -A- B - D (tests/test_dispatch_relay), bicycles only (range 15 km): nobody near
    can ride the 32 road km, so plan_legs splits it at Points A and B (legs of 9.4, 13.4
    and 9.4 road km). Ramesh, who lives at Point A, takes leg 1 and picks the parcel up;
    leg 2 is searched near Point A at once and offered first to Ramesh himself: he is
    "at" A (his home), has room for a second job (max_active_legs 2) and the better
    acceptance record. Saying yes he rides 9.4 + 13.4 km on a bicycle good for 15, the
    very ride the relay was planned to avoid; the answer tells him to collect at Point A
    from "phone <his own number>", and he is sent both handover codes, one to give "to
    the next rider" and one to give "to the rider there": himself. Asha, at Point A for
    exactly this, is not asked."""
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    ramesh, r_phone = make_partner("Ramesh", A, point_id=point_a)
    asha, _ = make_partner("Asha", A, point_id=point_a)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg1, leg2, _ = legs_of(booking_id)
    assert [o.partner_id for o in offers(leg1.id)] == [ramesh]
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert legs_of(booking_id)[0].status == "picked_up"
    offered = [o.partner_id for o in offers(leg2.id)]
    assert offered and ramesh not in offered, (offered, {"ramesh": ramesh, "asha": asha})


def test_the_relay_carrier_hears_when_the_next_rider_gives_the_leg_back(client, live,
                                                                         frozen):  # noqa: F811
    """Ramesh carries the parcel of leg 1 to Point A, where Asha took leg 2: he was sent
    the code to give her there. Asha sends CANCEL: the leg goes back to offering, and the
    code Ramesh holds is made void (_give_back: a new handover code). Ramesh hears
    nothing: he rides on to Point A and waits for a rider who is not coming, with a code
    that no longer works, until someone else takes the leg or, an hour later, the search
    pauses. When the leg is taken back from a rider who did not come
    (point_pickup_late), he is told at once to keep the parcel safe (carrier_wait): a
    rider who gives it back himself leaves the carrier just as alone."""
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    ramesh, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    asha, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg1, leg2, _ = (leg.id for leg in legs_of(booking_id))
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert [o.partner_id for o in offers(leg2)] == [asha]
    sms(client, a_phone, "1")
    assert any("अगले राइडर" in b for b in bodies_to(r_phone))  # the code to give Asha
    before = len(bodies_to(r_phone))
    sms(client, a_phone, f"CANCEL {leg2}")
    assert legs_of(booking_id)[1].status == "offering"
    wait = i18n.t("dispatch.carrier_wait", "hi", job=str(leg1), point="Point A",
                  ops_phone=get_settings().ops_phone)
    told = bodies_to(r_phone)[before:]
    # What point_pickup_late sends him (carrier_wait), or any word that his code is void.
    assert told, f"the carrier heard nothing; e.g. {wait!r}"
    assert told == [wait], told  # once, what a no-show's take-back tells him


def test_the_relay_carrier_hears_when_ops_suspend_the_next_rider(client, live,
                                                                 frozen):  # noqa: F811
    """As above, but ops suspend Asha before the handover (block_partner): the leg is
    taken back from her and the code Ramesh holds is made void all the same (_give_back).
    He must hear it, once, as when she gives the leg back herself."""
    from core.adapters.db import transaction
    from core.domain.booking import Actor
    from core.services import dispatch

    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    ramesh, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    asha, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg1, leg2, _ = (leg.id for leg in legs_of(booking_id))
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    sms(client, a_phone, "1")
    assert legs_of(booking_id)[1].partner_id == asha
    before = len(bodies_to(r_phone))
    with transaction() as s:
        dispatch.block_partner(s, asha, Actor("ops", "1"))
    assert legs_of(booking_id)[1].status == "offering"
    wait = i18n.t("dispatch.carrier_wait", "hi", job=str(leg1), point="Point A",
                  ops_phone=get_settings().ops_phone)
    assert bodies_to(r_phone)[before:] == [wait]

"""Relays through Points: defects a review of the handover and its codes proved (rev7;
each test fails on the code it was written against).

The relay of test_dispatch_relay: P -A- 7 km -B- 10 km - D 7 km, bicycles only, three legs.
At a Point the rider bringing the parcel DROPs with the code the next rider reads out
(dispatch.handover_take, sent to her), and the next rider PICKs with the code he reads out
(dispatch.handover_give, sent to him).

1. The handover confirmed the other way round: the next rider's PICK first (she typed the
   code only the carrier held, face to face, so the parcel is hers), and the carrier never
   sends DROP. His leg stays "picked up" for good: never delivered, never paid, a job in
   his hands forever (his capacity), the customer of the delivered parcel told hours
   later it is late, and ops ending a stuck relay pay and tell him, not the rider who
   holds the parcel.
2. A handover code Twilio could not deliver is made again by nobody and told to nobody
   (a customer's pickup code and a recipient's drop code are: outbox._code_lost): the
   two riders meet at the Point and one of them has no code to read out.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage
from core.adapters.queue import queue
from core.config import get_settings
from core.services import dispatch
from tests.conftest import release_scheduled, run_jobs
from tests.test_dispatch import (
    CUSTOMER,
    OPS,
    RECIPIENT,
    bodies_to,
    booking_status,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    make_point,
    paid_booking,
    sms,
    start,
)
from tests.test_relay_review import GIVE_MARK, PICK_MARK, TAKE_MARK

pytestmark = pytest.mark.db

API = "/api/v1"
P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)


def _ref(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).reference


def _asha_picks_first(client, *, with_bala: bool = True):
    """Ramesh carries leg 1 to Point A, Asha takes leg 2. At Point A Ramesh reads out his
    code and Asha PICKs with it: the parcel is in her hands. Ramesh rides away without
    sending DROP. (booking, Ramesh's phone, Asha's phone, Bala's phone or None)."""
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    b_phone = None
    if with_bala:
        _, b_phone = make_partner("Bala", B, point_id=point_b, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    assert "आपका है" in sms(client, a_phone, "1")[0]
    # The code only Ramesh was sent, read out by him at Point A: the handover is proven.
    assert "उठ गया" in sms(client, a_phone, f"PICK {last_code(r_phone, GIVE_MARK)}")[0]
    return booking_id, r_phone, a_phone, b_phone


def _delivered_by_bala(client, booking_id: int, a_phone: str, b_phone: str) -> None:
    """Bala takes leg 3 at Point B, Asha hands over to him, he delivers to Sita."""
    assert "आपका है" in sms(client, b_phone, "1")[0]
    assert "पहुँच गया" in sms(client, a_phone, f"DROP {last_code(b_phone, TAKE_MARK)}")[0]
    assert "उठ गया" in sms(client, b_phone, f"PICK {last_code(a_phone, GIVE_MARK)}")[0]
    assert "पहुँच गया" in sms(client, b_phone, f"DROP {last_code(RECIPIENT)}")[0]
    assert booking_status(booking_id) == "delivered"


# --- 1. the handover confirmed by the next rider's PICK first ----------------------------


def test_a_handover_the_next_rider_confirmed_first_closes_the_carriers_leg(
        client, live, frozen):  # noqa: F811
    """Asha PICKed at Point A with the code only Ramesh held (he read it out to her, the
    parcel went into her hands); Ramesh, done, rode off without sending DROP. The relay
    went on and was delivered. Ramesh's leg 1 stayed "picked_up" for good: never released
    (he is never paid for the 7 km he rode, his payout held on the payment), and still a
    job in his hands (max_active_legs 1: no other job is ever offered to him; STATUS says
    he is on the way with it). Her PICK proved the handover as his DROP would have (the
    mirror of handed_over_to, where his DROP makes the parcel hers): his leg should be
    delivered and released, whatever order the two confirmations came in."""
    booking_id, r_phone, a_phone, b_phone = _asha_picks_first(client)
    leg1 = legs_of(booking_id)[0].id
    _delivered_by_bala(client, booking_id, a_phone, b_phone)
    statuses = [leg.status for leg in legs_of(booking_id)]
    assert statuses == ["delivered"] * 3, statuses
    assert queue("default").fetch_job(f"release-{leg1}") is not None, \
        "leg 1's payout is never released"
    with transaction() as s:
        _, ramesh = dispatch.find_partner(s, r_phone)
        assert dispatch.active_legs_of(s, ramesh) == []


def test_a_delivered_relay_is_not_reported_late_for_a_handover_left_unconfirmed(
        client, live, frozen):  # noqa: F811
    """As above: Asha PICKed first, Ramesh never sent DROP, Bala delivered to Sita an hour
    later. Eight hours after the pickup (the standard tier's delivery hours) the sweep
    finds Ramesh's leg still "picked_up" and tells Meena, whose parcel was delivered that
    morning, "sorry, your parcel is late ... we will tell you when it is delivered", and
    ops that job 1's parcel "is with the rider". A delivered booking is never late: the
    leg should be closed by the handover (above), and the late-delivery sweep
    (dispatch._LATE_DELIVERIES / delivery_late) should not speak of a delivered one."""
    booking_id, _, a_phone, b_phone = _asha_picks_first(client)
    leg1 = legs_of(booking_id)[0].id
    _delivered_by_bala(client, booking_id, a_phone, b_phone)
    to_customer, to_ops = len(bodies_to(CUSTOMER)), len(bodies_to(OPS))
    freeze_at(8 * 60 * 60 + 120)
    dispatch.sweep()
    late = i18n.t("dispatch.customer_delivery_late", "hi", ref=_ref(booking_id), hours=8)
    assert late not in bodies_to(CUSTOMER)[to_customer:], "a delivered parcel told late"
    ops_late = i18n.t("dispatch.ops_delivery_late", "hi", ref=_ref(booking_id),
                      job=str(leg1), hours=8)
    assert ops_late not in bodies_to(OPS)[to_ops:]


def test_ending_a_stuck_relay_tells_the_rider_who_holds_the_parcel(client, live,
                                                                  frozen):  # noqa: F811
    """Asha PICKed at Point A first, Ramesh never sent DROP; nobody near Point B takes leg
    3, whose search pauses at its deadline. Ops end the stuck relay
    (POST /bookings/<ref>/cancel?reason=...). dispatch.stuck_holder takes the first
    picked-up leg for the holder: Ramesh, who handed the parcel over an hour ago, is told
    "keep the parcel safe and call ops to send it back" and paid leg 1 as the fee, while
    Asha, who has it, hears nothing and her leg 2 stays "picked_up" in a failed booking
    for good (a job in her hands forever). The rider told to keep the parcel must be the
    one holding it."""
    from tests.test_api import sign_in

    booking_id, r_phone, a_phone, _ = _asha_picks_first(client, with_bala=False)
    leg1, leg2, leg3 = (leg.id for leg in legs_of(booking_id))
    freeze_at(60 * 60 + 1)
    release_scheduled(timedelta(minutes=61))
    run_jobs()
    assert legs_of(booking_id)[2].status == "pending"  # leg 3 paused: nobody took it
    to_ramesh, to_asha = len(bodies_to(r_phone)), len(bodies_to(a_phone))
    ops = sign_in(client, OPS)
    r = client.post(f"{API}/bookings/{_ref(booking_id)}/cancel?reason=no+rider+at+B",
                    headers=ops)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["cancelled"] is True
    ops_phone = get_settings().ops_phone
    keep = [b for b in bodies_to(r_phone)[to_ramesh:] if ops_phone in b]
    assert keep == [], f"Ramesh, who handed the parcel over, is told to keep it: {keep}"
    assert bodies_to(a_phone)[to_asha:], "Asha, who holds the parcel, is told nothing"
    assert legs_of(booking_id)[1].status != "picked_up"


# --- 2. a handover code Twilio could not deliver ------------------------------------------


@pytest.mark.parametrize("lost", ["handtake", "handgive"])
def test_a_handover_code_that_never_arrived_is_made_again_or_told(
        client, live, frozen, lost):  # noqa: F811
    """Asha takes leg 2; her SMS with the code she is to read out to Ramesh at Point A
    (handtake), or his with the code he is to read out to her (handgive), is reported
    undelivered by Twilio (phone out of signal, 30003). Nothing happens: no new code, no
    other channel, no word to ops or to either rider, so at the Point one of them has no
    code and the parcel cannot change hands (a missing handtake: Ramesh can never DROP).
    A customer's pickup code and a recipient's drop code lost the same way are made again
    and ops told (dispatch.pickup_code_lost, drop_code_lost, from outbox._code_lost);
    a handover code should be too, at least ops told so they can give one (new-code)."""
    from tests.test_notice_review import cannot_deliver

    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg2 = legs_of(booking_id)[1].id
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    run_jobs()  # the offer of leg 2 reached Asha
    cannot_deliver(a_phone if lost == "handtake" else r_phone, "undelivered", "30003")
    to_ops = len(bodies_to(OPS))
    assert "आपका है" in sms(client, a_phone, "1")[0]
    run_jobs()  # sent; Twilio reports it undelivered
    with transaction() as s:
        row = s.scalar(select(OutboxMessage).where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.dedupe_key.like(f"leg-{leg2}-{lost}-%")))
        assert row is not None and row.status == "undelivered", row and row.status
    ref = _ref(booking_id)
    told = [b for b in bodies_to(OPS)[to_ops:] if ref in b]
    assert told, "nobody holds the handover code and ops are not told"

"""Session 38 (helper hdisp2, from reviewer rdisp's suspicions).

1. The app's accept or decline names an offer by its id. Dispatch answers by the job
   (the leg number), so a retry of a request about an OLD offer of the rider's (expired,
   its answer lost) acted on his NEW open offer of the same job, made when the search
   came round to him again. A request naming offer X acts on X only: X closed, it is
   answered about X (409 offer_expired), the same on every retry; his new offer stays
   open.
2. Tracking: a relay's leg 1 locked by wrong hand-over codes at the Point, the parcel
   still in its carrier's hands, showed the waiting leg-2 rider's live position and ETA
   as the parcel's. The parcel's position is its holder's (dispatch._carrying), or none.
3. The customer's tracking (GET /bookings/<ref>/track) never shows a position older
   than DISPATCH_LOCATION_MAX_AGE_S, nor the rider who handed the parcel over at a Point.

Real PostgreSQL, Redis and RQ; the clock is frozen and moved, never slept.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import clock
from core.adapters.db import transaction
from core.adapters.models import Booking
from core.services import partner_app, tracking
from tests.conftest import release_scheduled, run_jobs
from tests.test_api import sign_in
from tests.test_dispatch import (  # noqa: F401  (frozen: a fixture)
    CUSTOMER,
    LAXMIPUR,
    freeze_at,
    frozen,
    last_code,
    legs_of,
    make_partner,
    make_point,
    offers,
    paid_booking,
    sms,
    start,
)
from tests.test_partner_app_review import _fix, _put_fix
from tests.test_relay_review import PICK_MARK, TAKE_MARK

pytestmark = pytest.mark.db
API = "/api/v1"


# --- 1. an app request names one offer ------------------------------------------------


def _offered_again(client) -> tuple[dict[str, str], int, int, int]:
    """Asha (the app) is offered job L (offer X), lets it expire; nobody else is near, and
    when the search comes round again she is offered L once more (offer Y, open)."""
    _, phone = make_partner("Asha", LAXMIPUR, has_app=True, lang="en")
    h = sign_in(client, phone)
    assert _put_fix(client, h, _fix()).status_code == 200
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0].id
    listed = client.get(f"{API}/partners/me/offers", headers=h).get_json()
    assert [o["leg_id"] for o in listed] == [leg]
    x = listed[0]["id"]
    freeze_at(121)  # X's 90 s and 30 s grace are over: expired, nobody else anywhere
    release_scheduled(timedelta(seconds=121))
    run_jobs()
    assert offers(leg)[0].status == "expired"
    assert _put_fix(client, h, _fix()).status_code == 200
    freeze_at(242)  # the search's retry (120 s later) comes round to her again
    release_scheduled(timedelta(seconds=242))
    run_jobs()
    got = offers(leg)
    assert [o.status for o in got] == ["expired", "open"], got
    assert got[1].id != x
    return h, booking_id, x, got[1].id


@pytest.mark.parametrize("action", ["accept", "decline"])
def test_a_retry_naming_an_expired_offer_never_acts_on_her_new_offer_of_the_job(
        client, live, frozen, action):  # noqa: F811
    h, booking_id, x, y = _offered_again(client)
    leg = legs_of(booking_id)[0].id
    answers = []
    for _ in range(2):  # the retry after a lost answer, and again
        r = client.post(f"{API}/offers/{x}/{action}", headers=h)
        answers.append((r.status_code, r.get_json()))
    assert answers[0][0] == 409, answers[0]
    assert answers[0][1]["error"]["code"] == "offer_expired", answers[0]
    assert answers[1] == answers[0]  # the same answer on retry
    # Her new offer of the job is untouched: still open, the job not hers, not declined.
    assert [(o.id, o.status) for o in offers(leg)] == [(x, "expired"), (y, "open")]
    assert legs_of(booking_id)[0].status == "offering"
    assert legs_of(booking_id)[0].partner_id is None
    # The new offer, named by its own id, is hers to answer.
    r = client.post(f"{API}/offers/{y}/{action}", headers=h)
    assert r.status_code == 200, r.get_json()
    assert offers(leg)[1].status == ("accepted" if action == "accept" else "declined")


def test_an_open_offer_named_by_its_id_is_still_answered(client, live, frozen):  # noqa: F811
    """No newer offer of the job: the request acts on the one it names, as before."""
    _, phone = make_partner("Asha", LAXMIPUR, has_app=True, lang="en")
    h = sign_in(client, phone)
    assert _put_fix(client, h, _fix()).status_code == 200
    booking_id = paid_booking()
    start(booking_id)
    x = client.get(f"{API}/partners/me/offers", headers=h).get_json()[0]["id"]
    assert client.post(f"{API}/offers/{x}/decline", headers=h).status_code == 200
    # A decline sent again is answered "declined" as the first time.
    assert client.post(f"{API}/offers/{x}/decline", headers=h).status_code == 200
    # Changed her mind in time: the job is still free, her yes takes it.
    r = client.post(f"{API}/offers/{x}/accept", headers=h)
    assert r.status_code == 200, r.get_json()
    assert legs_of(booking_id)[0].status == "assigned"
    r = client.post(f"{API}/offers/{x}/accept", headers=h)
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "already_accepted")


# --- 2 and 3. the parcel's position is its holder's -------------------------------------

# As in test_dispatch_relay: P -A- 7 km -B- 10 km - D 7 km (straight), bicycles only.
P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)
RAMESH_AT = (26.851, 84.468)  # at Point A, with the parcel
ASHA_AT = (26.87, 84.50)  # waiting 3.5 km off, on the way to the Point


def _relay_at_point_a(client) -> dict:
    """Ramesh picked the parcel up for leg 1 and brought it to Point A; Asha took leg 2."""
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    ramesh, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    asha, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    sms(client, a_phone, "1")
    legs = legs_of(booking_id)
    assert [leg.status for leg in legs[:2]] == ["picked_up", "assigned"]
    assert (legs[0].partner_id, legs[1].partner_id) == (ramesh, asha)
    partner_app.record_location(ramesh, *RAMESH_AT, 10, clock.now())
    partner_app.record_location(asha, *ASHA_AT, 10, clock.now())
    with transaction() as s:
        ref = s.get(Booking, booking_id).reference
    return {"booking_id": booking_id, "ref": ref, "ramesh": ramesh, "r_phone": r_phone,
            "asha": asha, "a_phone": a_phone}


def _where(booking_id: int) -> tracking.Whereabouts:
    with transaction() as s:
        return tracking.position_and_eta(s, s.get(Booking, booking_id))


def _pos(at: tuple[float, float]) -> dict[str, float]:
    return {"lat": at[0], "lng": at[1]}


def test_a_carrier_locked_at_the_point_holds_the_parcel_not_the_next_rider(
        client, live, frozen):  # noqa: F811
    case = _relay_at_point_a(client)
    bid = case["booking_id"]
    assert _where(bid).position == _pos(RAMESH_AT)  # picked up: his
    right = last_code(case["a_phone"], TAKE_MARK)
    wrong = f"{(int(right) + 1) % 10000:04d}"
    for _ in range(5):
        sms(client, case["r_phone"], f"DROP {wrong}")
    assert [leg.status for leg in legs_of(bid)[:2]] == ["locked", "assigned"]
    where = _where(bid)
    # The parcel is in Ramesh's hands still: never Asha's live position as the parcel's.
    assert where.position == _pos(RAMESH_AT), where
    # His leg is locked until ops free it: no arrival time can be promised.
    assert where.eta_minutes is None
    r = client.get(f"{API}/bookings/{case['ref']}/track", headers=sign_in(client, CUSTOMER))
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["last_position"] == _pos(RAMESH_AT)
    assert r.get_json()["eta_minutes"] is None
    # ... and names him, whose position it is, not the next rider (review, session 38).
    assert r.get_json()["partner_first_name"] == "Ramesh"


def test_the_rider_who_handed_the_parcel_over_is_never_shown(client, live, frozen):  # noqa: F811
    case = _relay_at_point_a(client)
    bid = case["booking_id"]
    # Ramesh gives Asha the parcel at Point A (his DROP takes the code she read out).
    sms(client, case["r_phone"], f"DROP {last_code(case['a_phone'], TAKE_MARK)}")
    assert [leg.status for leg in legs_of(bid)[:2]] == ["delivered", "assigned"]
    freeze_at(600)  # she comes to the Point (his fix, at 0, is still fresh)
    partner_app.record_location(case["asha"], *A, 10, clock.now())
    assert _where(bid).position == _pos(A)  # hers: she holds it
    headers = sign_in(client, CUSTOMER)
    body = client.get(f"{API}/bookings/{case['ref']}/track", headers=headers).get_json()
    assert body["last_position"] == _pos(A) and body["eta_minutes"]


def test_a_position_older_than_the_allowed_age_is_never_shown(client, live, frozen):  # noqa: F811
    from core.services.dispatch import config

    case = _relay_at_point_a(client)
    bid = case["booking_id"]
    max_age = config().location_max_age_s
    headers = sign_in(client, CUSTOMER)
    freeze_at(max_age)  # his fix (at 0) is exactly as old as allowed: still shown
    assert _where(bid).position == _pos(RAMESH_AT)
    freeze_at(max_age + 1)
    assert _where(bid) == tracking.Whereabouts(None, None)
    body = client.get(f"{API}/bookings/{case['ref']}/track", headers=headers).get_json()
    assert (body["last_position"], body["eta_minutes"]) == (None, None)
    # Asha's fresh fix says nothing of where the parcel is: still none.
    partner_app.record_location(case["asha"], *ASHA_AT, 10, clock.now())
    assert _where(bid) == tracking.Whereabouts(None, None)

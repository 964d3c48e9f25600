"""Relay deliveries and proof of delivery: defects a review proved (session 19; each test
failed on the code it was written against).

A relay: rider 1 carries the parcel from the sender to Point A and hands it over (his
DROP takes the code rider 2 reads out), rider 2 PICKs it up there with the code rider 1
reads out, and so on to the recipient. A partner may send a proof-of-delivery photo (app
upload, or a WhatsApp photo fetched by an RQ job).
"""

from __future__ import annotations

import errno
from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock
from core.adapters.db import transaction
from core.adapters.dispatch_models import DispatchSearch
from core.adapters.models import Booking, Leg
from core.domain.booking import Actor
from core.domain.pricing import VehicleType
from core.services import dispatch, partner_app, tracking
from tests.conftest import release_scheduled, run_jobs, send_whatsapp
from tests.test_dispatch import (
    CUSTOMER,
    bodies_to,
    freeze_at,
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

API = "/api/v1"
# As in test_dispatch_relay: P -A- 7 km -B- 10 km - D 7 km (straight), bicycles only.
P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)
PICK_MARK = "पार्सल उठाने"  # the sender's pickup-code SMS (Hindi customer)
GIVE_MARK = "अगले राइडर"  # handover_give: the code the carrier reads out to the next rider
TAKE_MARK = "पार्सल लें"  # handover_take: the code the next rider reads out to the carrier


# --- tracking: no ETA while a leg of the relay has no rider ------------------------------


def test_no_eta_while_the_relays_next_leg_has_no_rider(client, live, frozen):  # noqa: F811
    """Ramesh picked the parcel up for leg 1; nobody took leg 2 before its deadline, so
    its search paused and the customer was told "we are still looking for a rider". The
    track view still promised an arrival in so many minutes (Ramesh's ride to Point A plus
    the legs after it at his speed), as if a rider were waiting at Point A: a parcel whose
    next rider nobody knows has no ETA."""
    from core import i18n

    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    ramesh, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg2 = legs_of(booking_id)[1].id
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    assert offers(leg2) == []  # nobody else near Point A
    freeze_at(60 * 60 + 1)
    release_scheduled(timedelta(minutes=61))
    run_jobs()
    with transaction() as s:
        search = s.scalar(select(DispatchSearch).where(DispatchSearch.leg_id == leg2))
        assert search.status == "paused"
        ref = s.get(Booking, booking_id).reference
    assert i18n.t("dispatch.still_searching", "hi", ref=ref) in bodies_to(CUSTOMER)
    # Ramesh's app reports him at Point A, waiting there with the parcel.
    partner_app.record_location(ramesh, *A, 10, clock.now())
    with transaction() as s:
        where = tracking.position_and_eta(s, s.get(Booking, booking_id))
    assert where.position == {"lat": A[0], "lng": A[1]}  # where the parcel is: fine
    assert where.eta_minutes is None, where


# --- a photo the store cannot take now ---------------------------------------------------


def test_a_photo_the_store_cannot_take_now_is_a_503_to_retry(
        client, live, tmp_path, monkeypatch, frozen):  # noqa: F811
    """The photo store is briefly unusable (disk full, the S3 endpoint unreachable): the
    app's upload got 500 "Something went wrong on our side", which an app does not retry,
    and the drop's proof was lost. It is the store being unavailable: 503 with
    Retry-After, as for the database or Redis, so the app sends the photo again."""
    from core.adapters import storage
    from tests.test_api import carrying_partner

    monkeypatch.setenv("POD_LOCAL_DIR", str(tmp_path))
    storage.reset()
    try:
        headers, (leg_id,) = carrying_partner(client)

        def full(self, key, data, content_type):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(storage.LocalStore, "put", full)
        r = client.post(f"{API}/legs/{leg_id}/photo", data=b"\xff\xd8\xff\xe0" + b"\x01" * 500,
                        headers={**headers, "Content-Type": "image/jpeg"})
        assert r.status_code == 503, (r.status_code, r.get_json())
        assert r.headers.get("Retry-After")
        assert r.get_json()["error"]["code"] != "internal_error"
    finally:
        storage.reset()


# --- planning: every leg's own start decides who can ride it (session 20) ------------------


def test_no_relay_whose_last_leg_no_vehicle_at_its_point_can_ride(live, frozen):  # noqa: F811
    """A 74 road-km trip. Near the sender a motorcyclist (60 km range) at Point A; at
    Point B, 40 km on, only a cyclist (15 km range). Relay P -4 km- A -50 km- B -20 km- D:
    the motorcyclist can ride the first two legs, but nobody near Point B can ride its
    20 km last leg, so the parcel would wait at Point B for good. The plan judged every
    leg by the vehicles near the *pickup*; as test_relay_planning's "no relay with a leg
    no bicycle around can ride" says, such a booking stays one leg (it fails before
    pickup and is refunded) rather than strand the parcel halfway."""
    p, a, b, d = (26.85, 84.40), (26.85, 84.43), (26.85, 84.80), (26.85, 84.95)
    point_a, point_b = make_point("Point A", *a), make_point("Point B", *b)
    make_partner("Ramesh", a, VehicleType.MOTORCYCLE, point_id=point_a, max_active_legs=1)
    make_partner("Bala", b, point_id=point_b, max_active_legs=1)  # a bicycle
    booking_id = paid_booking(pickup=p, drop=d)
    start(booking_id)
    legs = legs_of(booking_id)
    planned = [(leg.from_point_id, leg.to_point_id, leg.distance_m) for leg in legs]
    assert [(leg.from_point_id, leg.to_point_id) for leg in legs] == [(None, None)], planned


# --- handover: ops unlock a leg whose parcel was handed over already ---------------------


def test_unlocking_a_handed_over_leg_tells_the_rider_holding_the_parcel(client, live,
                                                                        frozen):  # noqa: F811
    """At Point A Ramesh handed the parcel over (his DROP took Asha's code: leg 1
    delivered, he rode away). Asha, parcel in hand, mistypes Ramesh's code five times and
    her leg locks. Ops unlocked it: the new pickup code went only to Ramesh, as "at Point
    A give the new code to the next rider" (he left long ago, the handover is done), and
    Asha, who holds the parcel and must send PICK, heard nothing at all. The handover
    proved the parcel is hers: the unlock records it picked up, and she is told to
    deliver it."""
    from core import i18n

    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg1, leg2, _ = (leg.id for leg in legs_of(booking_id))
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    assert "आपका है" in sms(client, a_phone, "1")[0]
    assert "पहुँच गया" in sms(client, r_phone, f"DROP {last_code(a_phone, TAKE_MARK)}")[0]
    take_job(f"release-{leg1}", "workers.payments.release_leg", leg1)
    right = last_code(r_phone, GIVE_MARK)
    wrong = f"{(int(right) + 1) % 10000:04d}"
    for _ in range(5):
        sms(client, a_phone, f"PICK {wrong}")
    assert legs_of(booking_id)[1].status == "locked"
    to_ramesh, to_asha = len(bodies_to(r_phone)), len(bodies_to(a_phone))
    with transaction() as s:
        dispatch.unlock_leg(s, leg2, Actor("ops", "1"))
        to_b = dispatch.place(s, s.get(Booking, booking_id), s.get(Leg, leg2), "to")
    assert legs_of(booking_id)[1].status == "picked_up"
    # Asha, holding the parcel, hears what to do now.
    assert bodies_to(a_phone)[to_asha:] == [
        i18n.t("dispatch.unlocked_handed", "hi", job=str(leg2), drop=to_b)]
    # Ramesh's part is over: no handover code for a parcel he no longer has (he may be
    # offered leg 3, whose search starts now, as any free partner near Point B's road).
    assert not [b for b in bodies_to(r_phone)[to_ramesh:] if GIVE_MARK in b]
    # Her DROP at Point B is not refused for a missing PICK.
    assert "PICK" not in sms(client, a_phone, "DROP 0000")[0]


# --- proof-of-delivery photos on WhatsApp ------------------------------------------------


@pytest.mark.parametrize(("photo", "key"), [
    (b"\xff\xd8\xff\xe0" + b"\x01" * 4000, "dispatch.pod_too_large"),
    (b"%PDF-1.4 not a picture" + b"\x01" * 100, "dispatch.pod_not_photo"),
])
def test_a_whatsapp_photo_that_is_not_kept_is_not_left_as_saved(
        client, live, tmp_path, monkeypatch, frozen, photo, key):  # noqa: F811
    """Ramesh sends the drop's photo on WhatsApp; it is larger than POD_MAX_BYTES (or not
    a picture at all). He was answered at once "Photo saved for job N. Thank you." (the
    download is a job), then the job dropped it without a word: the proof he believes is
    kept does not exist, and he never heard to send a smaller one (or a photo)."""
    from core import i18n
    from core.adapters import storage
    from sandbox.twilio import store_media

    monkeypatch.setenv("POD_LOCAL_DIR", str(tmp_path))
    monkeypatch.setenv("POD_MAX_BYTES", "2048")
    storage.reset()
    try:
        _, phone = make_partner("Ramesh", P)
        booking_id = paid_booking(pickup=P, drop=(26.85, 84.45))
        start(booking_id)
        sms(client, phone, "1")
        sms(client, phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
        job = str(legs_of(booking_id)[0].id)
        params = {"MessageSid": "SMrev7pod", "From": f"whatsapp:{phone}",
                  "To": "whatsapp:+1", "Body": "", "NumMedia": "1",
                  "MediaUrl0": store_media(photo, "image/jpeg"),
                  "MediaContentType0": "image/jpeg", "WaId": phone[1:]}
        assert send_whatsapp(client, params)  # answered at once
        told = len(bodies_to(phone))
        run_jobs()
        assert legs_of(booking_id)[0].pod_photo_url is None  # not kept
        assert bodies_to(phone)[told:] == [i18n.t(key, "hi", job=job)]
    finally:
        storage.reset()

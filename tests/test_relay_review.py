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
from core.adapters.models import Booking
from core.services import partner_app, tracking
from tests.conftest import release_scheduled, run_jobs
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

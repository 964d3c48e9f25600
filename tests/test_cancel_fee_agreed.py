"""The app's cancel agrees on the fee it showed, as the chat's does: a customer looks
(``?dry_run=1``: no fee while nobody has taken the job), a rider takes the job, then the
customer taps cancel: they were charged a fee they never saw. With
``expected_fee_paise`` (the fee shown), another fee now is 409 ``fee_changed`` with the
fee and refund of now, and nothing is cancelled; the same fee cancels."""

from __future__ import annotations

import pytest

from core.adapters.db import transaction
from core.adapters.models import Booking
from core.adapters.queue import enqueue
from core.domain.booking import BookingStatus
from tests.conftest import run_jobs
from tests.test_api import sign_in
from tests.test_dispatch import LAXMIPUR, make_partner, sms
from tests.test_payments_support import paid_booking

pytestmark = pytest.mark.db
CUSTOMER = "+919812340001"  # paid_booking's customer


def _status(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).status


def _looked_then_taken(client) -> tuple[int, str, dict, dict]:
    """(booking id, reference, customer's headers, the dry run's answer): the customer
    looked at the cancel while nobody had the job; then a rider took it."""
    bid = paid_booking()
    with transaction() as s:
        ref = s.get(Booking, bid).reference
    me = sign_in(client, CUSTOMER)
    look = client.post(f"/api/v1/bookings/{ref}/cancel?dry_run=1", headers=me)
    assert look.status_code == 200 and look.get_json()["fee_paise"] == 0, look.get_json()
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    enqueue("workers.dispatch.start_dispatch", bid, job_id=f"dispatch-{bid}")
    run_jobs()
    assert sms(client, rider, "1")
    assert _status(bid) == BookingStatus.ASSIGNED.value
    return bid, ref, me, look.get_json()


def test_a_fee_the_app_did_not_show_cancels_nothing(client, live):
    bid, ref, me, look = _looked_then_taken(client)
    r = client.post(f"/api/v1/bookings/{ref}/cancel?expected_fee_paise={look['fee_paise']}",
                    headers=me)
    assert r.status_code == 409, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "fee_changed" and error["field"] == "expected_fee_paise"
    assert error["fee_paise"] > 0
    now = client.post(f"/api/v1/bookings/{ref}/cancel?dry_run=1", headers=me).get_json()
    assert (error["fee_paise"], error["refund_paise"]) == (now["fee_paise"],
                                                            now["refund_paise"])
    assert _status(bid) == BookingStatus.ASSIGNED.value  # nothing cancelled
    # Agreed to the fee of now, the cancel goes through at it.
    r = client.post(f"/api/v1/bookings/{ref}/cancel?expected_fee_paise={error['fee_paise']}",
                    headers=me)
    assert r.status_code == 200 and r.get_json()["cancelled"], r.get_json()
    assert r.get_json()["fee_paise"] == error["fee_paise"]
    assert _status(bid) == BookingStatus.CANCELLED.value
    run_jobs()


def test_without_the_fee_shown_the_cancel_is_as_before(client, live):
    bid, ref, me, _ = _looked_then_taken(client)
    r = client.post(f"/api/v1/bookings/{ref}/cancel", headers=me)
    assert r.status_code == 200 and r.get_json()["cancelled"] and r.get_json()["fee_paise"] > 0
    assert _status(bid) == BookingStatus.CANCELLED.value
    run_jobs()


def test_the_openapi_document_describes_the_fee_shown(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    params = spec["paths"]["/api/v1/bookings/{ref}/cancel"]["post"]["parameters"]
    assert "expected_fee_paise" in {p["name"] for p in params}


def test_the_fee_sent_in_a_body_the_cancel_does_not_read_is_refused(client, live):
    """The README names expected_fee_paise next to the booking's quoted_total_paise (a
    body field): sent in the cancel's body, it was ignored and the cancel went through
    at a fee never shown. A route that reads no body refuses one with fields, naming
    the query parameter; an empty object (some clients always send one) is fine."""
    bid, ref, me, look = _looked_then_taken(client)
    r = client.post(f"/api/v1/bookings/{ref}/cancel",
                    json={"expected_fee_paise": look["fee_paise"]}, headers=me)
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert (error["code"], error["field"]) == ("unexpected_body", "expected_fee_paise")
    assert "query string" in error["message"]
    assert _status(bid) == BookingStatus.ASSIGNED.value  # nothing cancelled
    r = client.post(f"/api/v1/bookings/{ref}/cancel?dry_run=1", json={}, headers=me)
    assert r.status_code == 200 and r.get_json()["fee_paise"] > 0, r.get_json()
    run_jobs()

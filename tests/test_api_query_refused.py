"""The REST API refuses what it would not read: a query string on a route that takes
none (it would be ignored and the action done), and an id past PostgreSQL's integers in
a query (a 422, not a 500). Found by a review (session 21)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage
from tests.test_api import API, PHONE, _bettiah_point, book, sign_in  # noqa: F401 (autouse Point)

pytestmark = pytest.mark.db

OPERATOR = "+919812388809"


@pytest.mark.parametrize("after", [2**31, 99_999_999_999])
def test_reversed_payouts_page_after_an_id_past_the_largest_is_not_a_500(client, after):
    # Was: GET /ops/reversed-payouts?after=2147483648 answers 500 internal_error: HeldQuery
    # (core/api/ops.py) bounds `after` only below (ge=1), and the value goes to PostgreSQL
    # as an INTEGER parameter (ledger.holding_reversed_payouts), which overflows
    # (NumericValueOutOfRange). Every other id the API takes is bounded by MAX_ID.
    # Now: a precise 4xx naming `after` (le=MAX_ID: 422 validation_error), or an empty
    # page; never a 500.
    ops = sign_in(client, OPERATOR, role="ops")
    r = client.get(f"{API}/ops/reversed-payouts?after={after}", headers=ops)
    assert r.status_code != 500, r.get_json()
    assert r.status_code in (200, 422), r.get_json()
    if r.status_code == 422:
        assert r.get_json()["error"]["field"] == "after"
    else:
        assert r.get_json()["items"] == []


def test_a_query_parameter_a_post_does_not_take_is_refused_not_ignored(client):
    # Was: POST /bookings?dry_run=1 books for real (201, a booking, its payment link sent
    # by SMS). A route declared without a query model (core/api/spec.py: endpoint's view
    # calls parse_query only when `query` is set) ignores any query string, while routes
    # with one refuse an unknown parameter (422 "Extra inputs are not permitted") and a body
    # sent to a route that reads none is refused (refuse_unread_body: "would be ignored, and
    # the request done as if it had not been given"). An app that believes, as for
    # POST /bookings/{ref}/cancel, that dry_run only shows the result, books and is charged.
    # Now: a route without a query model refuses a non-empty query string (422
    # validation_error naming the parameter), and does nothing.
    headers = sign_in(client, PHONE)
    r = client.post(f"{API}/bookings?dry_run=1", json={
        "pickup": {"pincode": "845450", "post_office": "Laxmipur"},
        "drop": {"lat": 26.80228, "lng": 84.51522}, "parcel": {"size": "bag", "weight": "w5"},
        "tier": "standard", "recipient": {"name": "Sita", "phone": "98765 43210"}},
        headers=headers)
    with transaction() as s:
        booked = s.scalar(select(func.count()).select_from(Booking))
        # the payment link's SMS (a message about a booking: not the sign-in code)
        links = s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.booking_id.is_not(None)))
    assert r.status_code == 422, (r.status_code, r.get_json())
    assert r.get_json()["error"]["field"] == "dry_run"
    assert booked == 0
    assert links == 0


def test_a_get_without_a_query_model_refuses_a_query_too(client):
    """/me takes no query: a stray parameter is named, as a route with a query model
    names one it does not know."""
    headers = sign_in(client, PHONE)
    r = client.get(f"{API}/me?language=ta", headers=headers)
    assert r.status_code == 422
    assert r.get_json()["error"]["field"] == "language"
    assert client.get(f"{API}/me", headers=headers).status_code == 200


def test_the_document_says_every_route_may_refuse_a_query_or_a_body(client):
    doc = client.get(f"{API}/openapi.json").get_json()
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            assert {"400", "422"} <= set(op["responses"]), (method, path)

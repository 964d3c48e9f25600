"""Review (rev2) of the REST API's answers to bad input: every route was driven from its
declaration (core/api/spec.py REGISTRY) with malformed JSON, wrong types, huge and
negative numbers, NaN/Infinity, NUL and lone surrogates, over-long strings, unknown
fields, odd methods, headers, path ids and query values. None answered a 500; these are
the answers that are not precise: an error naming no field, or a field the request does
not have, and a body whose meaning depends on which of two values a reader takes."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import PartnerProfile
from tests.test_api import API, sign_in

pytestmark = pytest.mark.db

OPERATOR = "+919812388829"


@pytest.fixture
def ops(client) -> dict[str, str]:
    from core.services.seed import seed_demo

    seed_demo()  # Points and partners
    return sign_in(client, OPERATOR, role="ops")


def _error(r) -> dict:
    assert r.status_code == 422, (r.status_code, r.get_data(as_text=True)[:300])
    return r.get_json()["error"]


@pytest.mark.parametrize(("body", "problem"), [
    ({}, "Field required"),
    ({"body": ""}, "at least 1 character"),
    ({"body": "x" * 1001}, "at most 1000 characters"),
    ({"body": 5}, "valid string"),
])
def test_an_operators_reply_with_a_bad_body_names_the_field_body(client, ops, body, problem):
    """Wrong: POST /ops/handoffs/{id}/reply refuses a missing, empty, too long or
    non-text ``body`` with 422 and ``field`` null, the message without a field name
    ("String should have at most 1000 characters"): spec._field_of drops every loc part
    called "body" or "query" (meant for a request part's name), and ReplyIn's one field
    is called body. A NUL in it is named ("body: must not contain..."), so the same field
    is named in one error and not in the other. Should: field "body", message "body: ..."
    as for every other field (fix in core/api/spec.py:_field_of: drop only a leading
    location part, never a field's own name)."""
    err = _error(client.post(f"{API}/ops/handoffs/1/reply", headers=ops, json=body))
    assert err["code"] == "validation_error"
    assert problem in err["message"]
    assert err.get("field") == "body", err
    assert err["message"].startswith("body: "), err


def _partner_id(client, ops) -> int:
    return client.get(f"{API}/ops/partners", headers=ops).get_json()["items"][0]["id"]


@pytest.mark.parametrize("point", [None, [], {"id": 1}, 1.5])
def test_a_bad_point_is_named_point_not_point_int(client, ops, point):
    """Wrong: PUT /ops/partners/{id}/home-point and POST /ops/partners take ``point`` as an
    id or a name (``int | str``); a value that is neither (null, a list, an object, 1.5)
    is refused with field "point.int" and "point.int: Input should be a valid integer":
    pydantic's union error locations carry the member type tried, and spec._field_of
    joins them as if they were fields. The request has no field "point.int" (a console
    highlighting the field finds none), and the message says only a number will do,
    though the Point's name is what the summary offers first. Should: field "point", and
    a message that says an id or a name (fix in core/api/spec.py:_validation_error /
    _field_of: cut a union member's tag from the location)."""
    pid = _partner_id(client, ops)
    moved = _error(client.put(f"{API}/ops/partners/{pid}/home-point", headers=ops,
                              json={"point": point}))
    added = _error(client.post(f"{API}/ops/partners", headers=ops, json={
        "phone": "+919812300060", "name": "Raju", "language": "hi", "vehicle": "bicycle",
        "payload_kg": 20, "point": point}))
    for err in (moved, added):
        assert err["code"] == "validation_error"
        assert err.get("field") == "point", err
        assert "point.int" not in err["message"], err


@pytest.mark.parametrize(("lat", "lng", "code"), [
    ("51.5", "-0.12", "outside_india"),  # London
    ("0", "0", "outside_india"),  # a GPS fix that failed
])
def test_the_reverse_lookup_names_a_field_it_takes(client, lat, lng, code):
    """Wrong: GET /geo/reverse?lat=51.5&lng=-0.12 answers 422 outside_india with field
    "location": core.adapters.pincode.nearest names the field so for the chat, and
    addressing.reverse passes it on as it is. This route's query has lat and lng only;
    every other API route that takes a position renames it (customer._PART_NAMES: a
    position's errors name its lat, as POST /quotes answers "drop.lat"). Should: field
    "lat" (fix in core/api/addressing.py:reverse, as customer.resolve_place does)."""
    err = _error(client.get(f"{API}/geo/reverse?lat={lat}&lng={lng}"))
    assert err["code"] == code
    assert err.get("field") in ("lat", "lng"), err


def test_a_field_given_twice_in_a_json_body_is_refused_not_read_as_its_last(client, ops):
    """Wrong: PUT /ops/partners/{id}/kyc with {"status": "rejected", ...,
    "status": "suspended"} answers 200 and suspends the partner: json.loads keeps the last
    of two equal keys, while a proxy, a WAF or an audit tap in front of us may read the
    first (RFC 8259: names SHOULD be unique; what a reader does with two is not said). A
    query parameter given twice is refused for exactly this reason (spec.parse_query:
    "?dry_run=false&dry_run=true: we would read the first, a proxy the last"); a body is
    not. Should: 422 validation_error naming "status", and the partner's KYC unchanged
    (fix in core/api/spec.py:parse_body: json.loads with an object_pairs_hook that
    refuses a repeated name, at any depth)."""
    pid = _partner_id(client, ops)
    with transaction() as s:
        before = s.scalar(select(PartnerProfile.kyc_status).where(PartnerProfile.id == pid))
    assert before not in ("rejected", "suspended")
    raw = '{"status": "rejected", "note": "documents expired", "status": "suspended"}'
    r = client.put(f"{API}/ops/partners/{pid}/kyc", data=raw,
                   headers={**ops, "Content-Type": "application/json"})
    with transaction() as s:
        after = s.scalar(select(PartnerProfile.kyc_status).where(PartnerProfile.id == pid))
    assert after == before, f"KYC changed to {after!r} by an ambiguous body"
    err = _error(r)
    assert err.get("field") == "status", err

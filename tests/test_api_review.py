"""What a review of the REST API's customer and operator sides found, as the API answers
now: an OpenAPI document whose references all resolve; one error code for one problem
(an unknown booking, an id that names no row, a Point no id can name); a query parameter
given twice refused, not read as its first; per-IP sign-in limits that count an IPv6
client by its /64; the customer's bookings paged by cursor; the headers HTTP asks of a
405 (Allow), a 401 (WWW-Authenticate) and a 429 (Retry-After); and no next_offset offered
that the list would refuse."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import Booking
from core.services import auth, handoff
from tests.test_api import API, _bettiah_point, book, sign_in  # noqa: F401 (autouse Point)
from tests.test_ops_keyset import CUSTOMER as KEYSET_CUSTOMER
from tests.test_ops_keyset import add_bookings, add_handoffs

pytestmark = pytest.mark.db

OPERATOR = "+919812388809"
CUSTOMER = "+919812388801"


@pytest.fixture
def ops(client) -> dict[str, str]:
    return sign_in(client, OPERATOR, role="ops")


# --- the OpenAPI document ------------------------------------------------------------------


def _refs(node: Any, at: str = "") -> list[tuple[str, str]]:
    """Every ($ref, where) in a JSON document."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.append((value, at))
            else:
                found += _refs(value, f"{at}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _refs(value, f"{at}/{i}")
    return found


def _resolve(doc: dict, ref: str) -> Any:
    """What a local $ref points at in the document; None if at nothing."""
    if not ref.startswith("#/"):
        return None
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def test_every_reference_in_the_openapi_document_resolves(client):
    """The ``status`` filters of /ops/bookings and /ops/legs referred to
    ``#/$defs/BookingStatus`` (LegStatus), which the document does not have: a generated
    client or a validator stopped there. They refer to the components' schemas now."""
    doc = client.get(f"{API}/openapi.json").get_json()
    dangling = sorted({(ref, at) for ref, at in _refs(doc) if _resolve(doc, ref) is None})
    assert dangling == []
    for path, values in (("/ops/bookings", {"quoted", "cancelled", "delivered"}),
                         ("/ops/legs", {"locked", "picked_up"})):
        params = {p["name"]: p for p in doc["paths"][f"{API}{path}"]["get"]["parameters"]}
        refs = [ref for ref, _ in _refs(params["status"]["schema"])]
        assert refs and all(ref.startswith("#/components/schemas/") for ref in refs)
        enums = {v for ref in refs for v in _resolve(doc, ref).get("enum", [])}
        assert values <= enums, (path, enums)


# --- one problem, one error code -----------------------------------------------------------


@pytest.mark.parametrize("point", ["²", "①", "1" * 5000])
def test_a_point_no_id_can_name_is_a_422_unknown_point_not_a_500(client, ops, point):
    """POST /ops/partners with "point": "²" (a superscript, "①", or 5000 ASCII digits:
    str.isdigit() is true of each, int() refuses them) was a 500 internal_error. It is
    422 unknown_point naming the field, as any other point that names no Point."""
    r = client.post(f"{API}/ops/partners", headers=ops, json={
        "phone": "+919812377702", "name": "Sunita", "language": "hi", "vehicle": "bicycle",
        "payload_kg": 10, "point": point})
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["error"]["code"] == "unknown_point"
    assert r.get_json()["error"]["field"] == "point"
    assert len(r.get_json()["error"]["message"]) < 200  # not 5000 digits echoed back


def test_an_unknown_booking_gets_one_error_code_on_every_booking_route(client, ops):
    """A booking that does not exist was 404 ``not_found`` from GET /bookings/{ref} (and
    /track, /cancel) but 404 ``unknown_booking``, with a field "reference" the route has no
    parameter of, from GET /ops/bookings/{ref}/ledger and POST .../refund/retry. Every
    booking route answers 404 not_found now, naming no field."""
    ref = "12345678"
    answers = {
        "GET /bookings/{ref}": client.get(f"{API}/bookings/{ref}", headers=ops),
        "GET /bookings/{ref}/track": client.get(f"{API}/bookings/{ref}/track", headers=ops),
        "POST /bookings/{ref}/cancel": client.post(f"{API}/bookings/{ref}/cancel",
                                                   headers=ops),
        "GET /ops/bookings/{ref}/ledger": client.get(f"{API}/ops/bookings/{ref}/ledger",
                                                     headers=ops),
        "POST /ops/bookings/{ref}/refund/retry": client.post(
            f"{API}/ops/bookings/{ref}/refund/retry", headers=ops),
    }
    got = {route: (r.status_code, r.get_json()["error"]["code"],
                   r.get_json()["error"].get("field")) for route, r in answers.items()}
    assert set(got.values()) == {(404, "not_found", None)}, got


@pytest.mark.parametrize("route", ["/ops/legs/{id}/unlock", "/ops/handoffs/{id}/close",
                                   "/ops/handoffs/{id}/phone"])
def test_an_unknown_id_gets_the_same_code_however_big_it_is(client, ops, route):
    """POST /ops/legs/2147483647/unlock (no such leg) was 404 ``unknown_job`` but
    /ops/legs/2147483648/unlock 404 ``not_found`` (the handoff routes: ``unknown_handoff``
    and ``not_found``): the code hung on whether the id fits a PostgreSQL integer. Both
    name no row: both are not_found, as the partner routes, KYC and erase answer."""
    method = client.get if route.endswith("/phone") else client.post
    small = method(f"{API}{route.format(id=2**31 - 1)}", headers=ops)
    big = method(f"{API}{route.format(id=2**31)}", headers=ops)
    assert small.status_code == big.status_code == 404
    assert small.get_json()["error"]["code"] == big.get_json()["error"]["code"] \
        == "not_found", (small.get_json(), big.get_json())


# --- a query parameter given twice ---------------------------------------------------------


def test_a_repeated_query_parameter_is_refused_not_read_as_its_first(client):
    """POST /bookings/{ref}/cancel?dry_run=false&dry_run=true cancelled the booking (the
    first value read, the second dropped; another server or proxy reads the last). A
    parameter given twice is refused (422 naming it), and the booking left as it was."""
    customer = sign_in(client, CUSTOMER)
    made = book(client, customer)
    assert made.status_code == 201, made.get_json()
    ref = made.get_json()["reference"]
    r = client.post(f"{API}/bookings/{ref}/cancel?dry_run=false&dry_run=true",
                    headers=customer)
    with transaction() as s:
        status = s.scalar(select(Booking.status).where(Booking.reference == ref))
    assert status != "cancelled"
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["error"]["code"] == "validation_error"
    assert r.get_json()["error"]["field"] == "dry_run"


@pytest.mark.parametrize("query, twice", [
    ("/bookings?limit=1&limit=50", "limit"),
    ("/ops/bookings?status=quoted&status=cancelled", "status"),
    ("/ops/legs?limit=5&status=locked&status=locked", "status"),  # even the same value
])
def test_any_endpoints_query_parameter_given_twice_is_a_422_naming_it(client, ops, query,
                                                                       twice):
    headers = sign_in(client, CUSTOMER) if query.startswith("/bookings") else ops
    r = client.get(f"{API}{query}", headers=headers)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["error"]["field"] == twice


# --- per-IP sign-in limits -----------------------------------------------------------------


def _send(client, phone: str, ip: str):
    return client.post(f"{API}/auth/otp", json={"phone": phone},
                       environ_base={"REMOTE_ADDR": ip})


def test_the_per_ip_sign_in_limit_counts_an_ipv6_client_by_its_64(client, monkeypatch):
    """From one IPv6 network (2001:db8:1:2::/64, which a single home or phone gets whole)
    every address had its own budget of sign-in codes: 4 codes to 4 numbers from ::1 to
    ::4 all got 202 with a limit of 2 per client, so the per-IP limit (SMS pumping) did
    nothing against IPv6. The /64 is one client now; another /64 is another client."""
    monkeypatch.setattr(auth, "SENDS_PER_IP", (2, 3600))
    answers = [_send(client, f"+91981238850{i}", f"2001:db8:1:2::{i + 1:x}").status_code
               for i in range(3)]
    answers.append(_send(client, "+919812388504", "2001:db8:1:2:ffff:ffff:ffff:ffff")
                   .status_code)
    assert answers == [202, 202, 429, 429]
    assert _send(client, "+919812388505", "2001:db8:1:3::1").status_code == 202


def test_the_per_ip_verify_limit_counts_an_ipv6_client_by_its_64(client, monkeypatch):
    monkeypatch.setattr(auth, "VERIFY_PER_IP", (2, 3600))
    answers = [client.post(f"{API}/auth/verify",
                           json={"phone": f"+91981238851{i}", "otp": "123456"},
                           environ_base={"REMOTE_ADDR": f"2001:db8:7:8::{i + 1:x}"}
                           ).status_code for i in range(4)]
    assert answers == [401, 401, 429, 429]  # 401: no code was sent to these numbers


def test_an_ipv4_mapped_address_is_counted_as_its_ipv4_address(client, monkeypatch):
    monkeypatch.setattr(auth, "SENDS_PER_IP", (2, 3600))
    assert _send(client, "+919812388521", "203.0.113.7").status_code == 202
    assert _send(client, "+919812388522", "::ffff:203.0.113.7").status_code == 202
    assert _send(client, "+919812388523", "::ffff:cb00:7107").status_code == 429
    assert _send(client, "+919812388524", "203.0.113.8").status_code == 202


# --- the customer's bookings, by cursor ----------------------------------------------------


def test_my_bookings_paged_while_i_book_repeat_no_booking(client):
    """GET /bookings paged by offset only, newest first: a booking made between two page
    reads (in the app, or by WhatsApp on the same number) pushed the last booking of page
    1 onto page 2, and the client was shown it twice. It pages by cursor now, as the ops
    lists do: each booking once, and the new one on no page of this reading."""
    add_bookings(4)  # as the app books them (quoted: several may wait at once)
    customer = sign_in(client, KEYSET_CUSTOMER)
    first = client.get(f"{API}/bookings?limit=2", headers=customer).get_json()
    assert first["next_offset"] == 2 and first["next_after"]
    add_bookings(1)  # booked while reading
    second = client.get(f"{API}/bookings?limit=2&after={first['next_after']}",
                        headers=customer)
    assert second.status_code == 200, second.get_json()
    # The last page: by cursor nobody counts rows, and there is no next one.
    assert second.get_json()["next_offset"] is None
    assert second.get_json()["next_after"] is None
    shown = [b["reference"] for page in (first, second.get_json()) for b in page["items"]]
    with transaction() as s:
        first_four = s.scalars(select(Booking.reference).order_by(Booking.id).limit(4)).all()
    assert shown == list(reversed(first_four))


def test_my_bookings_refuse_a_cursor_of_another_list_or_with_an_offset(client, ops):
    add_bookings(3)
    ops_cursor = client.get(f"{API}/ops/bookings?limit=1", headers=ops).get_json()
    customer = sign_in(client, KEYSET_CUSTOMER)
    mine = client.get(f"{API}/bookings?limit=1", headers=customer).get_json()
    other = client.get(f"{API}/bookings?after={ops_cursor['next_after']}", headers=customer)
    assert other.status_code == 400
    assert other.get_json()["error"]["code"] == "bad_cursor"
    both = client.get(f"{API}/bookings?offset=1&after={mine['next_after']}",
                      headers=customer)
    assert both.status_code == 400
    assert both.get_json()["error"]["code"] == "offset_and_after"


def test_the_api_document_offers_my_bookings_a_cursor(client):
    doc = client.get(f"{API}/openapi.json").get_json()
    op = doc["paths"][f"{API}/bookings"]["get"]
    assert {"after", "offset", "limit"} <= {p["name"] for p in op["parameters"]}
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = _resolve(doc, schema["$ref"])
    assert {"items", "next_offset", "next_after"} <= set(schema["properties"])


# --- no next_offset past the deepest offset a list takes -----------------------------------


def test_no_next_offset_is_offered_past_the_deepest_offset(client, ops, monkeypatch):
    """At offset 100,000 (the deepest a list takes) a page offered next_offset 100,002,
    which the list then refused (422). It offers none past the cap: next_after goes on."""
    add_handoffs(3)
    real = handoff.waiting_list
    # As deep in the list as the cap, without 100,000 rows: the same three rows.
    monkeypatch.setattr(handoff, "waiting_list",
                        lambda session, offset, limit, after=None:
                        real(session, 0, limit, after=after))
    deep = client.get(f"{API}/ops/handoffs?offset=100000&limit=2", headers=ops).get_json()
    assert deep["next_offset"] is None and deep["next_after"], deep
    onward = client.get(f"{API}/ops/handoffs?after={deep['next_after']}&limit=2",
                        headers=ops)
    assert onward.status_code == 200, onward.get_json()
    at_cap = client.get(f"{API}/ops/handoffs?offset=99998&limit=2", headers=ops).get_json()
    assert at_cap["next_offset"] == 100_000  # still one the list takes
    assert client.get(f"{API}/ops/handoffs?offset=100000&limit=2",
                      headers=ops).status_code == 200


# --- the headers HTTP asks of an error -----------------------------------------------------


def test_a_405_says_which_methods_the_route_allows(client):
    """DELETE /api/v1/bookings was 405 method_not_allowed without an Allow header (the
    JSON error replaced werkzeug's answer and dropped its headers); RFC 9110 says a 405
    lists the route's methods in Allow. The body stays our JSON error."""
    r = client.delete(f"{API}/bookings")
    assert r.status_code == 405
    allowed = {m.strip() for m in r.headers.get("Allow", "").split(",") if m.strip()}
    assert {"GET", "POST"} <= allowed, dict(r.headers)
    assert r.mimetype == "application/json"
    assert r.get_json()["error"]["code"] == "method_not_allowed"


def test_a_401_names_the_bearer_scheme(client):
    """GET /api/v1/bookings without a token (or with a bad one) was 401 without a
    WWW-Authenticate header; RFC 9110 says a 401 carries one, so a client knows to send a
    bearer token."""
    for headers in ({}, {"Authorization": "Bearer not-a-token"},
                    {"Authorization": "Basic dXNlcjpwYXNz"}):
        r = client.get(f"{API}/bookings", headers=headers)
        assert r.status_code == 401
        assert r.headers.get("WWW-Authenticate") == "Bearer", dict(r.headers)


def test_a_429_says_when_to_try_again(client, monkeypatch):
    """A sign-in refused by a limit (429) said "please wait" but not how long; it carries
    Retry-After now: the whole seconds until the limit's window frees."""
    monkeypatch.setattr(auth, "SENDS_PER_IP", (1, 3600))
    assert _send(client, "+919812388531", "198.51.100.4").status_code == 202
    by_ip = _send(client, "+919812388532", "198.51.100.4")
    assert by_ip.status_code == 429
    assert 3500 <= int(by_ip.headers["Retry-After"]) <= 3600, dict(by_ip.headers)
    monkeypatch.setattr(auth, "SENDS_PER_IP", (20, 3600))
    for _ in range(3):
        assert _send(client, "+919812388533", "198.51.100.5").status_code == 202
    by_phone = _send(client, "+919812388533", "198.51.100.6")
    assert by_phone.status_code == 429
    assert 500 <= int(by_phone.headers["Retry-After"]) <= 600, dict(by_phone.headers)

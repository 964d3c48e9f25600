"""The REST API's small contract gaps, session 37: the app's retry of a position (its
answer lost) was counted against the rate limit, so the sixth copy of one fix got 429; a
route that reads no body answered 413 to a huge one though the document listed 413 only
for routes with a body; an unknown field whose name held a lone surrogate got a 422
saying some string was not valid, naming nothing; and a UTF-8 byte-order mark before the
JSON was 400 bad_json (RFC 8259 lets a parser ignore one)."""
from __future__ import annotations

import pytest

from core import clock
from tests.test_api import (
    API,
    _bettiah_point,  # noqa: F401 (the service area, autouse)
    sign_in,
)
from tests.test_dispatch import LAXMIPUR, freeze_at, frozen  # noqa: F401 (fixture)
from tests.test_location_s34 import _north, _put
from tests.test_partner_app_review import _app_partner

pytestmark = pytest.mark.db

BOM = b"\xef\xbb\xbf"


def _error(r) -> dict:
    return r.get_json()["error"]


# --- 1. the same fix sent again is answered as the first time, not counted -------------

def test_the_same_fix_sent_again_and_again_is_never_refused_429(client, live,
                                                                frozen):  # noqa: F811
    pid, _, h = _app_partner(client)  # one fix at time 0: counted
    freeze_at(1)
    fix = {"lat": _north(0.01)[0], "lng": _north(0.01)[1], "accuracy_m": 10,
           "timestamp": clock.now().isoformat()}
    first = client.put(f"{API}/partners/me/location", headers=h, json=fix)
    assert first.status_code == 200, first.get_json()
    for i in range(10):  # a weak network: the app sends it again and again
        freeze_at(1.5 + i * 0.5)
        again = client.put(f"{API}/partners/me/location", headers=h, json=fix)
        assert again.status_code == 200, (i, again.get_json())
        assert again.get_json() == first.get_json()
    # The retries took nothing from the window: three more new fixes go through (5 in
    # 10 s), the next is refused as before.
    for i in range(3):
        freeze_at(7 + i * 0.5)
        assert _put(client, h, _north(0.02 + 0.01 * i)).status_code == 200
    freeze_at(9)
    r = _put(client, h, _north(0.06))
    assert r.status_code == 429 and _error(r)["code"] == "rate_limited"


def test_a_retry_of_the_last_fix_is_answered_even_when_the_window_is_full(
        client, live, frozen):  # noqa: F811
    _, _, h = _app_partner(client)  # time 0
    for i in range(1, 5):  # five fixes in 10 s: the window is full
        freeze_at(i * 0.5)
        fix = {"lat": _north(0.01 * i)[0], "lng": LAXMIPUR[1], "accuracy_m": 10,
               "timestamp": clock.now().isoformat()}
        first = client.put(f"{API}/partners/me/location", headers=h, json=fix)
        assert first.status_code == 200, first.get_json()
    freeze_at(2.5)
    again = client.put(f"{API}/partners/me/location", headers=h, json=fix)
    assert again.status_code == 200, again.get_json()
    assert again.get_json() == first.get_json()
    # Any other fix is still refused.
    r = _put(client, h, _north(0.05))
    assert r.status_code == 429 and _error(r)["code"] == "rate_limited"


def test_refused_fixes_still_count_against_the_limit(client, live, frozen):  # noqa: F811
    """Not a retry: same time, another place (out of order), and older ones. A broken app
    sending them in a loop is held back as any other."""
    _, _, h = _app_partner(client)  # time 0
    last = {"lat": LAXMIPUR[0], "lng": LAXMIPUR[1], "accuracy_m": 10,
            "timestamp": clock.now().isoformat()}
    for i in range(1, 5):
        freeze_at(i * 0.5)
        moved = {**last, "lat": _north(0.001 * i)[0]}  # the last fix's time, not its place
        r = client.put(f"{API}/partners/me/location", headers=h, json=moved)
        assert r.status_code == 422 and _error(r)["code"] == "out_of_order", r.get_json()
    freeze_at(2.5)
    r = client.put(f"{API}/partners/me/location", headers=h, json=last)
    assert r.status_code == 200, r.get_json()  # the true retry is answered
    r = _put(client, h, _north(0.05))
    assert r.status_code == 429 and _error(r)["code"] == "rate_limited"


def test_a_retry_of_a_fix_gone_stale_is_refused_and_counted(client, live,
                                                            frozen):  # noqa: F811
    _, _, h = _app_partner(client)  # time 0
    fix = {"lat": LAXMIPUR[0], "lng": LAXMIPUR[1], "accuracy_m": 10,
           "timestamp": clock.now().isoformat()}
    for i in range(5):  # an app stuck resending it long after
        freeze_at(400 + i)
        r = client.put(f"{API}/partners/me/location", headers=h, json=fix)
        assert r.status_code == 422 and _error(r)["code"] == "stale_location", r.get_json()
    freeze_at(405)
    r = client.put(f"{API}/partners/me/location", headers=h, json=fix)
    assert r.status_code == 429 and _error(r)["code"] == "rate_limited"


# --- 2. every route can answer 413, and the document says so ----------------------------

def test_the_document_lists_413_for_every_route(client):
    doc = client.get(f"{API}/openapi.json").get_json()
    missing = [(method, path) for path, methods in doc["paths"].items()
               for method, op in methods.items() if "413" not in op["responses"]]
    assert not missing, missing


@pytest.mark.parametrize(("method", "path"), [("post", "/auth/logout"), ("get", "/me")])
def test_a_huge_body_on_a_route_that_reads_none_is_a_documented_413(client, method, path):
    h = sign_in(client, "+919812337001")
    r = client.open(f"{API}{path}", method=method.upper(), data=b"x" * (20 * 1024 * 1024),
                    content_type="application/json", headers=h)
    assert r.status_code == 413 and r.is_json
    doc = client.get(f"{API}/openapi.json").get_json()
    assert "413" in doc["paths"][API + path][method]["responses"]


# --- 3. a field name that is not text is said to be one ---------------------------------

def test_a_field_name_with_a_lone_surrogate_is_said_not_valid_text(client):
    r = client.post(f"{API}/auth/otp", data='{"phone": "+919812337002", "\\ud800x": 1}',
                    content_type="application/json")
    assert r.status_code == 422
    err = _error(r)
    assert err["code"] == "validation_error"
    assert err["message"].startswith("a field name is not valid text"), err
    assert "field" not in err  # the name itself is not said back
    assert "\ud800" not in r.get_data(as_text=True)


def test_a_nested_field_name_with_a_lone_surrogate_names_its_object(client):
    h = sign_in(client, "+919812337003")
    body = ('{"pickup": {"pincode": "845450", "post_office": "Laxmipur", "\\udc00": 1}, '
            '"drop": {"lat": 26.80228, "lng": 84.51522}, '
            '"parcel": {"category": "documents", "size": "bag", "weight": "w5"}}')
    r = client.post(f"{API}/quotes", data=body, content_type="application/json", headers=h)
    assert r.status_code == 422
    err = _error(r)
    assert err["field"] == "pickup", err
    assert err["message"].startswith("pickup: a field name is not valid text"), err


def test_a_surrogate_pair_in_a_field_name_is_text_and_only_unknown(client):
    # "\ud83d\ude00" is one character (an emoji): an unknown field as any other.
    r = client.post(f"{API}/auth/otp", data='{"phone": "+919812337004", "\\ud83d\\ude00": 1}',
                    content_type="application/json")
    assert r.status_code == 422
    assert "not valid text" not in _error(r)["message"], _error(r)


# --- 4. a byte-order mark before the JSON is let be -------------------------------------

def test_a_body_after_a_byte_order_mark_is_read(client):
    r = client.post(f"{API}/auth/otp", data=BOM + b'{"phone": "+919812337005"}',
                    content_type="application/json")
    assert r.status_code == 202, r.get_json()


def test_an_empty_object_after_a_byte_order_mark_is_no_body(client):
    h = sign_in(client, "+919812337006")
    r = client.post(f"{API}/auth/logout", data=BOM + b"{}", content_type="application/json",
                    headers=h)
    assert r.status_code < 300, r.get_json()
    # A body said after the mark is still refused by a route that reads none.
    h = sign_in(client, "+919812337007")
    r = client.post(f"{API}/auth/logout", data=BOM + b'{"all": true}',
                    content_type="application/json", headers=h)
    assert r.status_code == 400 and _error(r)["code"] == "unexpected_body"


def test_a_byte_order_mark_alone_or_twice_is_still_bad_json(client):
    for data in (BOM, BOM + BOM + b'{"phone": "+919812337008"}'):
        r = client.post(f"{API}/auth/otp", data=data, content_type="application/json")
        assert r.status_code == 400 and _error(r)["code"] == "bad_json", (data, r.get_json())


@pytest.mark.db
def test_a_fix_from_a_phone_a_second_ahead_sent_again_is_answered_not_429(
        client, live, frozen):  # noqa: F811
    """Review (rnew2b): a fix stamped ahead of our clock is kept as of now, so its retry
    (the time the app sent) never matched the fix kept, and each copy was counted: the
    fourth got 429. The time the app sent is kept beside it (LAST_SENT_KEY)."""
    from datetime import timedelta

    pid, _, h = _app_partner(client)
    freeze_at(1)
    fix = {"lat": _north(0.01)[0], "lng": _north(0.01)[1], "accuracy_m": 10,
           "timestamp": (clock.now() + timedelta(seconds=1)).isoformat()}
    first = client.put(f"{API}/partners/me/location", headers=h, json=fix)
    assert first.status_code == 200, first.get_json()
    codes = []
    for i in range(8):
        freeze_at(1.2 + i * 0.1)
        codes.append(client.put(f"{API}/partners/me/location", headers=h, json=fix).status_code)
    assert codes == [200] * 8, codes
    # A new fix at the same place a moment later is a new fix, taken as of its time.
    freeze_at(3)
    moved_on = dict(fix, timestamp=(clock.now() + timedelta(seconds=1)).isoformat())
    again = client.put(f"{API}/partners/me/location", headers=h, json=moved_on)
    assert again.status_code == 200, again.get_json()
    from core.services.partner_app import last_fix
    kept = last_fix(pid)
    assert kept is not None and kept.at == clock.now()

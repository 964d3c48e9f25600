"""What the REST API does with hostile or unusual input: JSON the parser refuses, text
PostgreSQL cannot store, and bodies of every size."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from core.adapters.db import transaction
from core.adapters.models import Booking
from tests.test_api import API, BETTIAH, LAXMIPUR, PARCEL, book, carrying_partner, sign_in

JPEG = b"\xff\xd8\xff\xe0"
MB = 1024 * 1024


def json_post(client, path: str, raw: str, headers: dict[str, str] | None = None):
    return client.post(f"{API}{path}", data=raw.encode(),
                       headers={**(headers or {}), "Content-Type": "application/json"})


@pytest.mark.parametrize("raw", [
    '{"phone": ' + "9" * 5000 + "}",  # past Python's 4300-digit int limit: ValueError
    '{"phone": ' + "[" * 100_000 + "]" * 100_000 + "}",  # RecursionError in the parser
    '{"phone": ' + "{\"a\": " * 50_000 + "1" + "}" * 50_000 + "}",
])
def test_json_the_parser_refuses_is_a_400_even_signed_out(client, raw):
    r = json_post(client, "/auth/otp", raw)
    assert r.status_code == 400, r.get_data(as_text=True)[:200]
    assert r.get_json()["error"]["code"] == "bad_json"


def test_deep_json_the_parser_takes_is_refused_as_invalid(client):
    # Nested just within the parser's reach: the checks after it must not overflow either.
    r = json_post(client, "/auth/otp", '{"phone": ' + "[" * 900 + "]" * 900 + "}")
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "phone"


@pytest.mark.parametrize(("overrides", "field"), [
    ({"recipient": {"name": "Si\u0000ta", "phone": "98765 43210"}}, "recipient.name"),
    ({"parcel": {**PARCEL, "description": "rice\u0000"}}, "parcel.description"),
    ({"pickup": {**LAXMIPUR, "landmark": "\u0000"}}, "pickup.landmark"),
    ({"recipient": {"name": "Sita", "phone": "98765\u000043210"}}, "recipient.phone"),
])
def test_nul_in_text_is_a_precise_422(client, overrides, field):
    headers = sign_in(client)
    body = {"pickup": LAXMIPUR, "drop": BETTIAH, "parcel": PARCEL, "tier": "standard",
            "recipient": {"name": "Sita", "phone": "98765 43210"}, **overrides}
    r = json_post(client, "/bookings", json.dumps(body), headers)  # "\\u0000" escapes
    assert r.status_code == 422, r.get_json()
    err = r.get_json()["error"]
    assert (err["code"], err["field"]) == ("validation_error", field)
    assert err["message"].startswith(f"{field}: ")
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(Booking)) == 0


def test_nul_in_a_key_or_a_query_is_refused(client):
    headers = sign_in(client)
    r = book(client, headers, recipient={"name": "Sita", "phone": "98765 43210", "x\u0000": 1})
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "recipient"
    r = client.get(f"{API}/bookings?limit=%00", headers=headers)
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "limit"


def test_nul_in_a_rating_comment_or_an_operators_note(client):
    from core.services.seed import seed_demo

    seed_demo()  # its Points: the API books only inside the service area
    customer = sign_in(client)
    ref = book(client, customer).get_json()["reference"]
    r = client.post(f"{API}/bookings/{ref}/rating", json={"stars": 5, "comment": "ok\u0000"},
                    headers=customer)
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "comment"

    ops = sign_in(client, "+919000000099")
    partner = client.get(f"{API}/ops/partners", headers=ops).get_json()["items"][0]["id"]
    r = client.put(f"{API}/ops/partners/{partner}/kyc", headers=ops,
                   json={"status": "suspended", "note": "expired\u0000"})
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "note"


def test_proof_of_delivery_photos_up_to_the_storage_limit(client, tmp_path, monkeypatch):
    from core.adapters import storage

    monkeypatch.setenv("POD_LOCAL_DIR", str(tmp_path))
    storage.reset()
    try:
        partner, (leg_id,) = carrying_partner(client)

        def upload(size: int):
            return client.post(f"{API}/legs/{leg_id}/photo", data=JPEG + b"\x01" * (size - 4),
                               headers={**partner, "Content-Type": "image/jpeg"})

        r = upload(3 * MB)  # a phone camera's JPEG: over the 1 MB every other route takes
        assert r.status_code == 201, r.get_json()
        assert r.get_json()["size_bytes"] == 3 * MB
        assert upload(5 * MB).status_code == 201  # POD_MAX_BYTES, the README's 5 MB
        over = upload(5 * MB + 1)
        assert over.status_code == 413
        assert over.get_json()["error"]["code"] == "photo_too_large"
        assert str(5 * MB) in over.get_json()["error"]["message"]

        monkeypatch.setenv("POD_MAX_BYTES", str(2 * MB))  # the setting, not a constant
        storage.reset()
        assert upload(2 * MB).status_code == 201
        assert upload(2 * MB + 1).get_json()["error"]["code"] == "photo_too_large"
    finally:
        storage.reset()


def test_other_routes_keep_the_small_body_limit(client):
    headers = sign_in(client)
    big = json_post(client, "/quotes", '{"x": "' + "a" * (2 * MB) + '"}', headers)
    assert big.status_code == 413 and big.is_json
    r = client.post("/webhooks/razorpay", data=b"{" + b" " * (2 * MB) + b"}",
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413

"""Session 33: the app's answer to a relay carrier at a Point nobody has taken the next
leg from yet (R1): its own code, not the catch-all 409 conflict."""

from __future__ import annotations

import pytest

from core import i18n
from tests.test_api import sign_in
from tests.test_dispatch import (  # noqa: F401
    CUSTOMER,
    frozen,
    last_code,
    legs_of,
    make_partner,
    make_point,
    paid_booking,
    start,
)
from tests.test_partner_app_review import _fix, _put_fix

pytestmark = pytest.mark.db
API = "/api/v1"
P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)


def test_a_drop_at_a_point_before_the_next_rider_is_found_says_so(client, live, frozen):  # noqa: F811
    pa = make_point("Point A", *A)
    make_point("Point B", *B)
    _, phone = make_partner("Ramesh", A, point_id=pa, max_active_legs=1, has_app=True,
                            lang="en")
    h = sign_in(client, phone)
    assert _put_fix(client, h, _fix(where=A)).status_code == 200
    bid = paid_booking(pickup=P, drop=D)
    start(bid)
    offered = client.get(f"{API}/partners/me/offers", headers=h).get_json()
    assert client.post(f"{API}/offers/{offered[0]['id']}/accept", headers=h).status_code == 200
    leg1 = legs_of(bid)[0]
    assert leg1.to_point_id == pa  # a relay: his leg ends at Point A
    r = client.post(f"{API}/legs/{leg1.id}/pickup", headers=h,
                    json={"otp": last_code(CUSTOMER, "पार्सल उठाने")})
    assert r.status_code == 200, r.get_json()
    r = client.post(f"{API}/legs/{leg1.id}/drop", headers=h, json={"otp": "1234"})
    assert r.status_code == 409
    error = r.get_json()["error"]
    assert error["code"] == "next_rider_not_found", error
    # The message is the carrier_wait text in his language, as the SMS says it.
    assert error["message"].startswith(
        i18n.t("dispatch.carrier_wait", "en", job=1, point="Point A",
               ops_phone="x").split(":")[0])
    assert legs_of(bid)[0].status == "picked_up"  # nothing changed: he still holds it


def test_the_openapi_document_names_the_code():
    from core.app import create_app

    doc = create_app().test_client().get(f"{API}/openapi.json").get_json()
    drop = doc["paths"]["/api/v1/legs/{leg_id}/drop"]["post"]
    assert "next_rider_not_found" in drop["summary"]

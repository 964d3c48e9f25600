"""The API keeps what it shows others readable, and a true/false in a JSON body is true
or false: a receiver's name or a landmark with a right-to-left override or a control
character was saved as sent and went into the rider's SMS (the chat has stripped them
since session 25), and ``{"on_duty": 0}`` or ``"no"`` was read as false by pydantic's
lax mode (an app's bug taken for an answer)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import Booking, PartnerProfile
from tests.test_api import API, BETTIAH, book, sign_in
from tests.test_api_edges import bettiah  # noqa: F401 (fixture)

pytestmark = pytest.mark.db


def test_a_receivers_name_and_landmark_are_kept_as_they_read(client, bettiah):  # noqa: F811
    r = book(client, sign_in(client),
             recipient={"name": "Sita\u202e Devi\x07", "phone": "98765 43210"},
             drop={**BETTIAH, "landmark": "near\tthe\u200b  HO\x1b"})
    assert r.status_code == 201, r.get_json()
    with transaction() as s:
        booking = s.scalar(select(Booking))
        assert booking.recipient_name == "Sita Devi"
        assert booking.drop_landmark == "near the HO"


def test_a_name_of_invisible_characters_only_is_refused(client, bettiah):  # noqa: F811
    r = book(client, sign_in(client), recipient={"name": "\u202e\u200b", "phone": "98765 43210"})
    assert r.status_code == 422, r.get_json()
    err = r.get_json()["error"]
    assert err["field"] == "recipient.name"
    assert "no visible characters" in err["message"]
    with transaction() as s:
        assert s.scalar(select(Booking)) is None


@pytest.mark.parametrize("value", [0, 1, "no", "true", None])
def test_on_duty_takes_only_true_or_false(client, value):
    from tests.test_dispatch import LAXMIPUR, make_partner

    partner_id, phone = make_partner("Ramesh", LAXMIPUR, on_duty=True)
    r = client.put(f"{API}/partners/me/duty", json={"on_duty": value},
                   headers=sign_in(client, phone))
    assert r.status_code == 422, (value, r.get_json())
    assert r.get_json()["error"]["field"] == "on_duty"
    with transaction() as s:
        assert s.get(PartnerProfile, partner_id).on_duty is True


def test_a_query_strings_true_or_false_is_still_read(client):
    from core.services.seed import seed_demo

    seed_demo()
    ops = sign_in(client, "+919000000099", role="ops")
    on = client.get(f"{API}/ops/partners?on_duty=true", headers=ops)
    off = client.get(f"{API}/ops/partners?on_duty=false", headers=ops)
    assert on.status_code == off.status_code == 200
    assert {p["on_duty"] for p in on.get_json()["items"]} <= {True}
    assert {p["on_duty"] for p in off.get_json()["items"]} <= {False}
    assert on.get_json()["items"] or off.get_json()["items"]

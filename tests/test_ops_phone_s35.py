"""Operators type or paste a number as customers do: digits of any script, and the
invisible direction marks a number copied from a phone's contacts comes wrapped in, are
read as the chat and the customer API read them (core.api.schemas.PhoneText), in the ops
bookings filter and a new partner's number. What is no phone is still bad_phone."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import Person
from core.services.seed import OPS_PERSON, seed_demo
from tests.test_admin import BODY, operator  # noqa: F401  (fixture)
from tests.test_api import API, sign_in
from tests.test_ops_find import GITA, MEENA, book, found, ops_list

pytestmark = pytest.mark.db

# Meena's +91 98123 66601 in Devanagari digits, and as pasted from Android's contacts.
TYPED = ("९८१२३ ६६६०१", "\u202a+91 98123 66601\u202c")


@pytest.mark.parametrize("typed", TYPED)
def test_ops_find_bookings_by_a_number_typed_in_indian_digits_or_pasted(client, typed):
    seed_demo()
    ref = book(client, sign_in(client, MEENA), GITA)
    ops = sign_in(client, OPS_PERSON[1])
    assert found(client, ops, phone=typed) == [ref]
    r = ops_list(client, ops, phone="९८१२")  # too short to be anyone's number
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "phone"


@pytest.mark.parametrize("typed", TYPED)
def test_ops_add_a_partner_by_a_number_typed_in_indian_digits_or_pasted(
        client, operator, typed):  # noqa: F811
    headers, _ = operator
    r = client.post(f"{API}/ops/partners", headers=headers, json={**BODY, "phone": typed})
    assert r.status_code == 201, r.get_json()
    with transaction() as s:
        assert s.scalar(select(Person.role).where(Person.phone == MEENA)) == "partner"

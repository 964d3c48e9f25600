"""Ops record a parcel as back with its sender (POST /ops/bookings/<ref>/parcel-returned).
Session 26 refused erasing the sender and the rider holding the parcel for 14 days after
ops ended a relay with it in his hands (nothing recorded a return): ops who have it back
can now say so, and the erasure may go ahead at once."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.services import retention
from tests.conftest import run_jobs
from tests.test_dispatch import frozen  # noqa: F401  (fixture)
from tests.test_relay_stuck_cancel import _asha_holds_leg2_nobody_takes_leg3, _ops

pytestmark = pytest.mark.db

API = "/api/v1"


def _ended(client) -> tuple[dict, dict[str, str]]:
    case = _asha_holds_leg2_nobody_takes_leg3(client)
    ops = _ops(client)
    r = client.post(f"{API}/bookings/{case['ref']}/cancel?reason=no+rider+at+Point+B",
                    headers=ops)
    assert r.status_code == 200, r.get_json()
    run_jobs()
    assert client.put(f"{API}/ops/partners/{case['asha']}/kyc", headers=ops,
                      json={"status": "suspended", "note": "asked to leave"}).status_code == 200
    return case, ops


def _returned_entries() -> list[AuditEntry]:
    with transaction() as s:
        return list(s.scalars(select(AuditEntry).where(
            AuditEntry.action == retention.PARCEL_RETURNED)))


def test_the_rider_holding_it_is_erased_once_ops_record_the_parcel_back(
        client, live, frozen):  # noqa: F811
    case, ops = _ended(client)
    erase = {"reason": "asked by phone"}
    refused = client.post(f"{API}/ops/partners/{case['asha']}/erase", headers=ops, json=erase)
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "in_flight"

    r = client.post(f"{API}/ops/bookings/{case['ref']}/parcel-returned", headers=ops,
                    json={"note": "Asha brought it to the sender on Monday"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"reference": case["ref"], "leg_id": case["leg2"], "recorded": True}
    again = client.post(f"{API}/ops/bookings/{case['ref']}/parcel-returned", headers=ops,
                        json={"note": "clicked twice"})
    assert again.status_code == 200 and again.get_json()["recorded"] is False
    [entry] = _returned_entries()
    assert entry.target == f"booking:{case['ref']}" and entry.details["leg"] == case["leg2"]

    r = client.post(f"{API}/ops/partners/{case['asha']}/erase", headers=ops, json=erase)
    assert r.status_code == 200, r.get_json()


def test_a_booking_no_rider_holds_the_parcel_of_is_refused(client, live, frozen):  # noqa: F811
    from tests.test_api import sign_in
    from tests.test_relay_stuck_cancel import _reference, _relay_to_pay

    case, ops = _ended(client)
    r = client.post(f"{API}/ops/bookings/00000000/parcel-returned", headers=ops,
                    json={"note": "no such booking"})
    assert r.status_code == 404
    other = _reference(_relay_to_pay())  # waiting for payment: no parcel out
    r = client.post(f"{API}/ops/bookings/{other}/parcel-returned", headers=ops,
                    json={"note": "wrong booking"})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "no_parcel_out"
    assert client.post(f"{API}/ops/bookings/{case['ref']}/parcel-returned", headers=ops,
                       json={"note": "x"}).status_code == 422
    assert client.post(f"{API}/ops/bookings/{case['ref']}/parcel-returned",
                       headers=sign_in(client, "+919812300072"),
                       json={"note": "not ops"}).status_code in (403, 404)
    assert _returned_entries() == []

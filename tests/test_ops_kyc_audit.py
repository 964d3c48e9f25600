"""A KYC change is audited with the change itself, and the take-back that follows names
every parcel the partner still holds, a leg locked after its pickup too (found by a
review, session 21)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from tests.test_api import API, sign_in
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    OPS,
    RECIPIENT,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    paid_booking,
    sms,
    start,
)

pytestmark = pytest.mark.db


def _wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10000:04d}"


def test_kyc_audit_names_a_parcel_in_hand_on_a_leg_locked_at_the_drop(
        client, live, frozen):  # noqa: F811
    """Was: ops suspend a partner who picked a parcel up and then locked the leg with
    wrong DROP codes. The parcel is in their hands, but the partner.kyc audit entry says
    parcels_in_hand=[]: dispatch.block_partner returns only legs 'picked_up' (or
    'assigned' and handed over), never a 'locked' leg picked up before it locked. Ops,
    who read that entry to know which parcels a suspended rider still holds, are told
    none. Now: the locked leg whose parcel was picked up (as _picked_before tells it) is
    listed, in the take-back's partner.block entry."""
    partner_id, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    sms(client, phone, f"PICK {last_code(CUSTOMER)}")
    assert legs_of(booking_id)[0].status == "picked_up"
    wrong = _wrong(last_code(RECIPIENT))
    for _ in range(5):
        sms(client, phone, f"DROP {wrong}")
    leg = legs_of(booking_id)[0]
    assert leg.status == "locked" and leg.partner_id == partner_id
    ops = sign_in(client, OPS)
    r = client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                   json={"status": "suspended", "note": "fraud report"})
    assert r.status_code == 200, r.get_json()
    with transaction() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "partner.block")).one()
    assert entry.details["parcels_in_hand"] == [leg.id], entry.details


def test_a_kyc_change_whose_take_back_fails_is_neither_undone_nor_audited(
        client, live, frozen, monkeypatch):  # noqa: F811
    """Was: PUT /ops/partners/{id}/kyc commits the new status alone first and writes the
    partner.kyc audit entry only in a second transaction, after block_partner. When that
    second transaction fails (here a lost race on a leg, StaleDataError, which the API
    answers 409 concurrent_update "please retry", i.e. nothing saved), the partner stays
    suspended with no audit entry at all. The operator's retry then audits before=
    'suspended', after='suspended': the log never shows who moved them from 'verified'.
    Now: the status change and its audit entry commit together (the entry written in
    the first transaction, what block_partner did added by the second), or the answer
    says the status was saved."""
    from sqlalchemy.orm.exc import StaleDataError

    from core.adapters.models import PartnerProfile
    from core.services import dispatch

    partner_id, _ = make_partner("Ramesh", LAXMIPUR, lang="en")
    ops = sign_in(client, OPS)

    def lost_race(*args: object, **kwargs: object) -> list[int]:
        raise StaleDataError("a leg changed meanwhile")

    monkeypatch.setattr(dispatch, "block_partner", lost_race)
    r = client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                   json={"status": "suspended", "note": "fraud report"})
    monkeypatch.undo()
    with transaction() as s:
        status = s.get(PartnerProfile, partner_id).kyc_status
        audited = [e.details for e in s.scalars(
            select(AuditEntry).where(AuditEntry.action == "partner.kyc"))]
    assert status == "verified" or any(
        d["before"] == "verified" and d["after"] == "suspended" for d in audited), (
        r.status_code, r.get_json(), status, audited)

"""The audit log, kept for good past any erasure, names people by id only (found by a
review, session 21)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import PartnerProfile
from core.services import retention
from tests.conftest import run_jobs
from tests.test_dispatch import frozen  # noqa: F401  (fixture)
from tests.test_relay_stuck_cancel import _asha_holds_leg2_nobody_takes_leg3, _ops

pytestmark = pytest.mark.db

API = "/api/v1"


def test_an_erased_partners_name_is_not_kept_in_the_audit_log(client, live,
                                                              frozen):  # noqa: F811
    """Was: ops ending a stuck relay (POST /bookings/<ref>/cancel?reason=...) writes the
    booking.cancel audit entry with ``parcel_with_name``: the first name of the rider
    holding the parcel (core/api/customer.py: _parcel_holder). audit_log is append-only
    and kept for good, past any erasure: once that rider asks to be erased
    (POST /ops/partners/<id>/erase), his name stays there, although erasure promises a
    partner's name goes and README says the audit log "holds ids, not names".
    Now: the entry names the rider by partner id (and leg) only; no name in the audit
    log survives the partner's erasure."""
    case = _asha_holds_leg2_nobody_takes_leg3(client)
    ops = _ops(client)
    r = client.post(f"{API}/bookings/{case['ref']}/cancel?reason=no+rider+at+Point+B",
                    headers=ops)
    assert r.status_code == 200, r.get_json()
    run_jobs()  # the refund and Asha's fee paid out: nothing is held for her any more
    # Ops need her number until the parcel she holds is taken as back with its sender
    # (retention.PARCEL_BACK_DAYS: the erasure is refused before).
    clock.freeze(clock.now() + timedelta(days=retention.PARCEL_BACK_DAYS, minutes=1))
    ops = _ops(client)
    assert client.put(f"{API}/ops/partners/{case['asha']}/kyc", headers=ops,
                      json={"status": "suspended", "note": "asked to leave"}).status_code == 200
    r = client.post(f"{API}/ops/partners/{case['asha']}/erase", headers=ops,
                    json={"reason": "asked by phone"})
    assert r.status_code == 200, r.get_json()
    with transaction() as s:
        profile = s.get(PartnerProfile, case["asha"])
        assert profile is not None and profile.first_name == ""  # erased
        kept = [json.dumps(e.details, ensure_ascii=False)
                for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert not [d for d in kept if "Asha" in d], kept

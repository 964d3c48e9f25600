"""A relay stuck with its carrier's leg locked at the Point (session 37, reviewer rrelay).

Ramesh brings the parcel to Point A for leg 1; Asha took leg 2 and waits there. Ramesh
types a wrong hand-over code five times, so his leg locks with the parcel in his hands;
Asha gives leg 2 back and nobody takes it again. The relay is stuck as surely as one
whose carrier's leg is merely picked up (test_relay_stuck_cancel): ops may end it (his
leg fails, he is paid its payout once, the customer gets the rest back), and at the
tier's delivery hours the customer hears the parcel is late. Before, ops were answered
409 already_picked_up and the customer was never told.

P -A- 7 km -B- 10 km - D 7 km, bicycles only: three legs (as in test_dispatch_relay).
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.dispatch_models import DispatchSearch
from core.adapters.models import Booking
from core.config import get_settings
from core.domain.booking import BookingStatus
from core.services import dispatch, ledger
from tests.conftest import release_scheduled, run_jobs
from tests.test_dispatch import (
    CUSTOMER,
    OPS,
    bodies_to,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    make_point,
    sms,
)
from tests.test_relay_review import PICK_MARK, TAKE_MARK
from tests.test_relay_stuck_cancel import _relay_to_pay

pytestmark = pytest.mark.db

API = "/api/v1"
P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)


def _ops(client) -> dict[str, str]:
    from tests.test_api import sign_in

    return sign_in(client, OPS)


def _hour(h: int) -> None:
    """The clock moves to ``h`` hours (and a second) after the start; jobs and sweep run."""
    freeze_at(h * 3600 + 1)
    release_scheduled(timedelta(minutes=61))
    run_jobs()
    dispatch.sweep()
    run_jobs()


def _ramesh_locked_at_a(client) -> dict:
    """Paid by the gateway. Ramesh picked the parcel up for leg 1; Asha took leg 2; his
    DROP codes were wrong five times (leg 1 locked, the parcel in his hands); Asha gave
    leg 2 back; nobody takes it."""
    from tests.test_payments_support import pay

    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    ramesh, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    booking_id = _relay_to_pay()
    run_jobs()
    assert pay(booking_id).status_code == 200
    run_jobs()  # captured, dispatch starts: leg 1 offered to Ramesh
    leg1, leg2 = legs_of(booking_id)[0].id, legs_of(booking_id)[1].id
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    sms(client, a_phone, "1")
    right = last_code(a_phone, TAKE_MARK)
    wrong = f"{(int(right) + 1) % 10000:04d}"
    for _ in range(5):
        sms(client, r_phone, f"DROP {wrong}")
    assert legs_of(booking_id)[0].status == "locked"
    sms(client, a_phone, "CANCEL")
    assert legs_of(booking_id)[1].status == "offering"
    with transaction() as s:
        b = s.get(Booking, booking_id)
        ref, paid = b.reference, ledger.booking_summary(s, booking_id)["captured_paise"]
        assert paid == b.total_paise > 0
    fee = legs_of(booking_id)[0].payout_paise
    assert 0 < fee < paid
    return {"booking_id": booking_id, "ref": ref, "ramesh": ramesh, "r_phone": r_phone,
            "leg1": leg1, "leg2": leg2, "paid": paid, "fee": fee, "refund": paid - fee}


def test_ops_end_a_relay_stuck_with_its_carrier_locked_and_pay_him_once(
        client, live, frozen):  # noqa: F811
    """Ops' dry run offers the stuck relay's numbers (Ramesh's leg payout as the fee, the
    rest back); the cancel fails his leg (not cancelled: a cancelled leg pays nothing),
    stops leg 2's search, pays him his leg once, refunds the customer the rest."""
    case = _ramesh_locked_at_a(client)
    bid = case["booking_id"]
    for h in range(1, 3):  # leg 2's search pauses at its deadline, round after round
        _hour(h)
    with transaction() as s:
        assert s.scalar(select(DispatchSearch.status).where(
            DispatchSearch.leg_id == case["leg2"])) in ("paused", "active")
        assert dispatch.stuck_holder(s, s.get(Booking, bid)).id == case["leg1"]
    r = client.post(f"{API}/bookings/{case['ref']}/cancel?dry_run=1", headers=_ops(client))
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert (body["allowed"], body["reason_code"]) == (True, "stuck_relay"), body
    assert (body["fee_paise"], body["refund_paise"]) == (case["fee"], case["refund"])
    r = client.post(f"{API}/bookings/{case['ref']}/cancel?reason=no+rider+at+Point+A"
                    f"&expected_fee_paise={case['fee']}", headers=_ops(client))
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["fee_paise"], r.get_json()["refund_paise"]) == (
        case["fee"], case["refund"])
    assert [leg.status for leg in legs_of(bid)][:2] == ["failed", "cancelled"]
    with transaction() as s:
        assert s.scalar(select(DispatchSearch.status).where(
            DispatchSearch.leg_id == case["leg2"])) not in ("active", "paused")
        assert ledger.leg_payable(s, case["leg1"]) == case["fee"]
        assert ledger.total(s) == 0
    money = ledger_summary(bid)
    assert (money["fee_paise"], money["refunds_pending_paise"], money["escrow_paise"]) == (
        case["fee"], case["refund"], 0)
    run_jobs()  # the gateway: Ramesh's transfer, the refund made and processed
    _hour(3)  # later sweeps pay nobody again
    _hour(9)
    with transaction() as s:
        assert ledger.leg_payable(s, case["leg1"]) == case["fee"]
        assert ledger.leg_paid_out(s, case["leg1"]) == case["fee"]
        assert ledger.leg_paid_out(s, case["leg2"]) == 0
        assert ledger.total(s) == 0
        assert s.get(Booking, bid).status == BookingStatus.REFUNDED.value
        entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "booking.cancel"))
        assert (entry.details["parcel_with_partner_id"], entry.details["parcel_leg_id"]) == (
            case["ramesh"], case["leg1"])
    money = ledger_summary(bid)
    assert money["refunded_paise"] == case["refund"]
    assert money["escrow_paise"] == money["refunds_pending_paise"] == 0
    assert i18n.t("dispatch.holder_cancelled", "hi", job=dispatch.job_code(legs_of(bid)[0]),
                  fee_paise=case["fee"], ops_phone=get_settings().ops_phone) \
        in bodies_to(case["r_phone"])
    assert i18n.t("dispatch.customer_stuck_cancelled", "hi", ref=case["ref"],
                  refund_paise=case["refund"]) in bodies_to(CUSTOMER)


def ledger_summary(booking_id: int) -> dict[str, int]:
    with transaction() as s:
        return ledger.booking_summary(s, booking_id)


def test_the_customer_hears_a_locked_carriers_parcel_is_late_at_the_tiers_hours(
        client, live, frozen):  # noqa: F811
    """Standard tier, 8 delivery hours: nothing at 7 h; at 8 h the customer hears once that
    the parcel is late, and ops are alerted, as for a carrier merely picked up."""
    case = _ramesh_locked_at_a(client)
    ref = case["ref"]
    late = i18n.t("dispatch.customer_delivery_late", "hi", ref=ref, hours=8)
    for h in range(1, 8):
        _hour(h)
    assert late not in bodies_to(CUSTOMER)
    assert legs_of(case["booking_id"])[0].status == "locked"
    _hour(8)
    assert late in bodies_to(CUSTOMER)
    assert any(ref in m for m in bodies_to(OPS) if "8" in m)
    assert dispatch.delivery_late(case["leg1"]) == "alerted"  # not "stale": in his hands
    _hour(9)
    run_jobs()
    assert bodies_to(CUSTOMER).count(late) == 1  # once for the booking

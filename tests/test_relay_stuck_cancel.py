"""Ops end a relay stuck for want of a rider (reviewer 7's item 8).

A relay parcel is in a rider's hands (picked up) while a later leg has no rider and its
search is past its deadline: it pauses, starts again, pauses, for good. Ops may end such a
booking (``POST /bookings/<ref>/cancel?reason=...``; ``?dry_run=1`` shows the numbers):
the searches stop, the rider holding the parcel is paid his leg's payout (the booking's
cancellation fee) and told to keep the parcel for ops, the customer gets the rest back,
legs delivered before keep their release. The booking fails (its state machine lets no
picked-up booking be cancelled). Any other picked-up booking, and every customer, still
get 409 already_picked_up.

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
from core.adapters.models import Booking, Leg, Person, TransitionLog
from core.config import get_settings
from core.domain.booking import Actor, BookingStatus, cancellation_refund
from core.domain.pricing import ParcelCategory, SizeBucket, SpeedTier, WeightBucket
from core.services import dispatch, ledger, payments
from core.services.booking import ParcelSpec, Place, create_booking
from tests.conftest import release_scheduled, run_jobs
from tests.test_dispatch import (
    CUSTOMER,
    OPS,
    RECIPIENT,
    bodies_to,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    make_point,
    offers,
    paid_booking,
    sms,
    start,
)
from tests.test_relay_review import GIVE_MARK, PICK_MARK, TAKE_MARK

pytestmark = pytest.mark.db

API = "/api/v1"
P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)
_partner = make_partner


def _ops(client) -> dict[str, str]:
    from tests.test_api import sign_in

    return sign_in(client, OPS)


def _reference(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).reference


def _search(leg_id: int) -> tuple[str, int]:
    with transaction() as s:
        row = s.scalar(select(DispatchSearch).where(DispatchSearch.leg_id == leg_id))
        return row.status, row.round


def _ramesh_holds_leg2_nobody_takes(client, *, past_deadline: bool = True
                                    ) -> tuple[int, str, int]:
    """Ramesh picked the parcel up for leg 1; nobody is near Point A for leg 2, whose
    search (with ``past_deadline``) paused at its deadline. (booking, Ramesh's phone,
    leg 2). No money: the booking was paid without the gateway."""
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = _partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg2 = legs_of(booking_id)[1].id
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    if past_deadline:
        freeze_at(60 * 60 + 1)
        release_scheduled(timedelta(minutes=61))
        run_jobs()
        assert _search(leg2) == ("paused", 1)
    return booking_id, r_phone, leg2


# --- the reviewer's test ---------------------------------------------------------------


def test_ops_can_end_a_relay_stuck_at_a_point_for_want_of_a_rider(client, live,
                                                                  frozen):  # noqa: F811
    """Ramesh carried the parcel to Point A; nobody has taken leg 2 for nine hours (past the
    tier's 8 delivery hours). Its search pauses and starts again every hour, for good: ops
    are alerted twice an hour, Ramesh is told hourly to keep the parcel, he may take no
    other job (his one slot is the parcel), and the customer's money for legs nobody will
    ride stays held. Ops cannot end it: cancelling was 409 already_picked_up for them too,
    and there is no other tool. An operator must be able to close such a booking: the
    searches stop, the rider holding the parcel hears what to do with it, and the customer
    is refunded what was not ridden (the policy's "payout already earned is never
    refundable" keeps what Ramesh is owed)."""
    from tests.test_api import sign_in

    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = _partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg2 = legs_of(booking_id)[1].id
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    freeze_at(60 * 60 + 1)
    release_scheduled(timedelta(minutes=61))
    run_jobs()
    freeze_at(9 * 60 * 60)
    with transaction() as s:
        ref = s.get(Booking, booking_id).reference
    to_ramesh = len(bodies_to(r_phone))
    ops = sign_in(client, OPS)
    r = client.post(f"{API}/bookings/{ref}/cancel?reason=no+rider+at+Point+A", headers=ops)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["cancelled"] is True
    with transaction() as s:
        search = s.scalar(select(DispatchSearch).where(DispatchSearch.leg_id == leg2))
        assert search.status not in ("active", "paused")  # no more rounds, no more alerts
    assert legs_of(booking_id)[1].status == "cancelled"
    assert len(bodies_to(r_phone)) > to_ramesh  # told what to do with the parcel


# --- the search, and what is said to whom ----------------------------------------------


def test_the_stuck_search_starts_no_round_again_and_alerts_nobody(client, live,
                                                                  frozen):  # noqa: F811
    """The next round of a paused search already runs (it pauses for two minutes only, then
    searches another hour): still stuck, ops end it. Afterwards neither that round's
    deadline nor the sweep alerts ops or tells the rider to wait, and his slot is free."""
    booking_id, r_phone, leg2 = _ramesh_holds_leg2_nobody_takes(client)
    freeze_at(60 * 60 + 1 + 121)
    release_scheduled(timedelta(minutes=3))
    run_jobs()
    assert _search(leg2) == ("active", 2)  # searching again: not "paused"
    ref = _reference(booking_id)
    r = client.post(f"{API}/bookings/{ref}/cancel?reason=nobody+at+Point+A",
                    headers=_ops(client))
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["reason_code"] == "stuck_relay"
    assert r.get_json()["status"] == BookingStatus.FAILED.value
    assert _search(leg2)[0] == "done"
    to_ops, to_ramesh = len(bodies_to(OPS)), len(bodies_to(r_phone))
    for hours in (2, 3, 4):
        freeze_at(hours * 60 * 60 + 300)
        release_scheduled(timedelta(minutes=70))
        run_jobs()
        dispatch.sweep()
    assert len(bodies_to(OPS)) == to_ops
    assert len(bodies_to(r_phone)) == to_ramesh
    assert [leg.status for leg in legs_of(booking_id)] == ["failed", "cancelled", "cancelled"]
    with transaction() as s:  # the leg in hand: who ended it, and where the parcel goes
        t = s.scalar(select(TransitionLog).where(
            TransitionLog.entity == "leg", TransitionLog.entity_id == legs_of(booking_id)[0].id)
            .order_by(TransitionLog.id.desc()).limit(1))
        ops_id = s.scalar(select(Person.id).where(Person.phone == OPS))
        assert (t.from_status, t.to_status, t.actor) == ("picked_up", "failed", f"ops:{ops_id}")
        assert "back to the sender" in t.reason
        b = s.scalar(select(TransitionLog).where(
            TransitionLog.entity == "booking", TransitionLog.entity_id == booking_id)
            .order_by(TransitionLog.id.desc()).limit(1))
        assert (b.to_status, b.reason) == ("failed", "cancelled by ops: nobody at Point A")
        ramesh = dispatch.active_legs_of(s, dispatch.find_partner(s, r_phone)[1])
        assert ramesh == []  # free to take another job


def test_a_picked_up_booking_that_is_not_stuck_stays_409(client, live,
                                                         frozen):  # noqa: F811
    """Leg 2's search is still in its first hour: not stuck. Ops' cancel (and dry run) is
    409 already_picked_up as before, and nothing changes."""
    booking_id, _, leg2 = _ramesh_holds_leg2_nobody_takes(client, past_deadline=False)
    freeze_at(30 * 60)
    ref, ops = _reference(booking_id), _ops(client)
    look = client.post(f"{API}/bookings/{ref}/cancel?dry_run=1", headers=ops)
    assert look.status_code == 200
    assert (look.get_json()["allowed"], look.get_json()["reason_code"]) == (
        False, "already_picked_up")
    r = client.post(f"{API}/bookings/{ref}/cancel?reason=too+slow", headers=ops)
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["error"]["code"] == "already_picked_up"
    assert _search(leg2)[0] == "active"
    assert [leg.status for leg in legs_of(booking_id)] == ["picked_up", "offering", "pending"]


def test_a_customer_cannot_end_a_stuck_relay(client, live, frozen):  # noqa: F811
    """The exception is for ops: the customer's cancel of the same stuck booking stays
    409 already_picked_up (their dry run says not allowed)."""
    from tests.test_api import sign_in

    booking_id, _, leg2 = _ramesh_holds_leg2_nobody_takes(client)
    ref, me = _reference(booking_id), sign_in(client, CUSTOMER)
    look = client.post(f"{API}/bookings/{ref}/cancel?dry_run=1", headers=me)
    assert look.get_json()["allowed"] is False, look.get_json()
    r = client.post(f"{API}/bookings/{ref}/cancel", headers=me)
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["error"]["code"] == "already_picked_up"
    assert _search(leg2)[0] == "paused"


def test_ops_say_why_they_end_a_stuck_relay(client, live, frozen):  # noqa: F811
    """The parcel is left with a rider: without ?reason= nothing is done (422
    reason_required)."""
    booking_id, _, leg2 = _ramesh_holds_leg2_nobody_takes(client)
    r = client.post(f"{API}/bookings/{_reference(booking_id)}/cancel", headers=_ops(client))
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["error"]["code"] == "reason_required"
    assert _search(leg2)[0] == "paused"
    assert legs_of(booking_id)[0].status == "picked_up"


# --- money: a relay paid through the gateway -------------------------------------------


def _relay_to_pay() -> int:
    """P to D, recipient Sita, the customer (Hindi) sent a payment link."""
    with transaction() as s:
        customer = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        if customer is None:
            customer = Person(phone=CUSTOMER, name="Meena", role="customer",
                              preferred_language="hi")
            s.add(customer)
            s.flush()
        actor = Actor("customer", str(customer.id))
        b = create_booking(
            s, customer_id=customer.id, channel="sms",
            pickup=Place(*P, pincode="845450", post_office="Laxmipur BO"),
            drop=Place(*D, pincode="845438", post_office="Bettiah HO"),
            parcel=ParcelSpec(ParcelCategory.DOCUMENTS, SizeBucket.BAG, WeightBucket.W5,
                              declared_value_paise=50_000),
            tier=SpeedTier.STANDARD, recipient_name="Sita", recipient_phone=RECIPIENT,
            actor=actor)
        payments.request_payment_link(s, b, actor)
        return b.id


def _asha_holds_leg2_nobody_takes_leg3(client) -> dict:
    """Paid by the gateway. Ramesh rode leg 1 and handed the parcel to Asha at Point A
    (leg 1 delivered, released); Asha picked it up for leg 2. Bala took leg 3 (Sita was
    sent the delivery code) and gave it back; nobody else is near Point B, and leg 3's
    search paused at its deadline."""
    from tests.test_payments_support import pay

    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    ramesh, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    asha, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    _, b_phone = make_partner("Bala", B, point_id=point_b, max_active_legs=1)
    booking_id = _relay_to_pay()
    run_jobs()
    assert pay(booking_id).status_code == 200
    run_jobs()  # captured, dispatch starts: leg 1 offered to Ramesh
    leg1, leg2, leg3 = (leg.id for leg in legs_of(booking_id))
    assert [o.partner_id for o in offers(leg1)] == [ramesh]
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    assert [o.partner_id for o in offers(leg2)] == [asha]
    sms(client, a_phone, "1")
    ramesh_drop, asha_pick = last_code(a_phone, TAKE_MARK), last_code(r_phone, GIVE_MARK)
    sms(client, r_phone, f"DROP {ramesh_drop}")
    sms(client, a_phone, f"PICK {asha_pick}")
    sms(client, b_phone, "1")
    run_jobs()  # her code goes out (one withdrawn unsent before the give-back is no code)
    assert bodies_to(RECIPIENT)  # Sita holds a delivery code
    sms(client, b_phone, f"CANCEL {leg3}")
    run_jobs()  # leg 1 released, transfers held
    freeze_at(60 * 60 + 1)
    release_scheduled(timedelta(minutes=61))
    run_jobs()
    assert _search(leg3)[0] == "paused"
    assert [leg.status for leg in legs_of(booking_id)] == ["delivered", "picked_up", "pending"]
    with transaction() as s:
        b = s.get(Booking, booking_id)
        paid = ledger.booking_summary(s, booking_id)["captured_paise"]
        released = ledger.booking_summary(s, booking_id)["released_paise"]
        assert paid == b.total_paise and released > 0
    fee = legs_of(booking_id)[1].payout_paise
    return {"booking_id": booking_id, "ref": _reference(booking_id), "asha": asha,
            "a_phone": a_phone, "leg2": leg2, "leg3": leg3, "paid": paid,
            "released": released, "fee": fee, "refund": paid - released - fee}


def _money(booking_id: int) -> dict[str, int]:
    with transaction() as s:
        return ledger.booking_summary(s, booking_id)


def test_dry_run_shows_the_riders_fee_and_the_refund_and_changes_nothing(
        client, live, frozen):  # noqa: F811
    case = _asha_holds_leg2_nobody_takes_leg3(client)
    before = _money(case["booking_id"])
    r = client.post(f"{API}/bookings/{case['ref']}/cancel?dry_run=1", headers=_ops(client))
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"allowed": True, "cancelled": False, "fee_paise": case["fee"],
                            "refund_paise": case["refund"], "reason_code": "stuck_relay",
                            "status": "in_transit"}
    assert case["fee"] > 0 and case["refund"] > 0
    assert _money(case["booking_id"]) == before
    assert _search(case["leg3"])[0] == "paused"
    # The cancel that follows is at the same numbers.
    r = client.post(f"{API}/bookings/{case['ref']}/cancel?reason=no+rider+at+Point+B"
                    f"&expected_fee_paise={case['fee']}", headers=_ops(client))
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["fee_paise"], r.get_json()["refund_paise"]) == (
        case["fee"], case["refund"])


def test_the_rider_is_paid_his_leg_the_customer_the_rest_and_the_ledger_balances(
        client, live, frozen):  # noqa: F811
    case = _asha_holds_leg2_nobody_takes_leg3(client)
    bid = case["booking_id"]
    r = client.post(f"{API}/bookings/{case['ref']}/cancel?reason=no+rider+at+Point+B",
                    headers=_ops(client))
    assert r.status_code == 200, r.get_json()
    with transaction() as s:  # decided and reserved in the cancel's transaction
        assert ledger.leg_payable(s, case["leg2"]) == case["fee"]
        assert ledger.total(s) == 0
    money = _money(bid)
    assert money["fee_paise"] == case["fee"]
    assert money["released_paise"] == case["released"]  # leg 1 keeps its release
    assert money["refunds_pending_paise"] == case["refund"]
    assert money["escrow_paise"] == 0
    run_jobs()  # the gateway: Asha's transfer released, the refund made and processed
    money = _money(bid)
    assert money["refunded_paise"] == case["refund"]
    assert money["escrow_paise"] == money["refunds_pending_paise"] == 0
    with transaction() as s:
        assert ledger.leg_paid_out(s, case["leg2"]) == case["fee"]
        assert ledger.leg_paid_out(s, case["leg3"]) == 0
        assert ledger.total(s) == 0
        assert s.get(Booking, bid).status == BookingStatus.REFUNDED.value
        entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "booking.cancel"))
        assert entry.target == f"booking:{case['ref']}"
        assert entry.details["parcel_with_partner_id"] == case["asha"]
        assert entry.details["parcel_leg_id"] == case["leg2"]
        assert (entry.details["fee_paise"], entry.details["refund_paise"]) == (
            case["fee"], case["refund"])


def test_the_rider_the_customer_and_the_recipient_each_hear_it(client, live,
                                                               frozen):  # noqa: F811
    case = _asha_holds_leg2_nobody_takes_leg3(client)
    r = client.post(f"{API}/bookings/{case['ref']}/cancel?reason=no+rider+at+Point+B",
                    headers=_ops(client))
    assert r.status_code == 200, r.get_json()
    ref = case["ref"]
    assert i18n.t("dispatch.holder_cancelled", "hi", job=str(case["leg2"]),
                  fee_paise=case["fee"], ops_phone=get_settings().ops_phone) \
        in bodies_to(case["a_phone"])
    assert i18n.t("dispatch.customer_stuck_cancelled", "hi", ref=ref,
                  refund_paise=case["refund"]) in bodies_to(CUSTOMER)
    assert bodies_to(RECIPIENT)[-1] == i18n.t("dispatch.recipient_cancelled", "hi", ref=ref)


# --- the policy, as pure numbers ----------------------------------------------------------


def test_the_policy_pays_the_holders_leg_and_refunds_the_rest() -> None:
    q = cancellation_refund("in_transit", 20_000, 6_000, stuck_leg_payout_paise=5_000)
    assert (q.allowed, q.fee_paise, q.refund_paise, q.reason_code) == (
        True, 5_000, 9_000, "stuck_relay")
    # Never more than is left to refund; without a stuck leg, after pickup is refused.
    assert cancellation_refund("picked_up", 4_000, stuck_leg_payout_paise=5_000).fee_paise \
        == 4_000
    assert not cancellation_refund("picked_up", 4_000).allowed
    assert not cancellation_refund("delivered", 4_000, stuck_leg_payout_paise=1).allowed


def _drop_job(job_id: str) -> None:
    """The job is lost (a Redis failover, a worker killed): the payments sweep makes it
    again later (payments.unreleased_legs)."""
    from core.adapters.queue import QUEUES, queue

    for name in QUEUES:
        job = queue(name).fetch_job(job_id)
        if job is not None:
            job.delete()
            return
    raise AssertionError(f"no job {job_id}")


def test_ending_a_stuck_relay_before_a_delivered_leg_is_released_still_pays_that_leg(
        client, live, frozen):  # noqa: F811
    """Ramesh rode leg 1 and handed the parcel to Asha at Point A (leg 1 delivered); its
    release job was lost, so the ledger shows nothing released yet. Nobody takes leg 3;
    ops end the stuck relay. The refund is "paid less what delivered legs earned", read
    from the ledger's releases: 0, so the customer gets leg 1's payout and commission
    back too. When the sweep releases leg 1 afterwards, escrow is empty: Ramesh, who
    delivered his leg, was never paid (the release failed for want of escrow). Found by
    a review of session 19's later commits."""
    from tests.test_payments_support import pay

    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    ramesh, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    _, b_phone = make_partner("Bala", B, point_id=point_b, max_active_legs=1)
    booking_id = _relay_to_pay()
    run_jobs()
    assert pay(booking_id).status_code == 200
    run_jobs()
    leg1, leg2, leg3 = (leg.id for leg in legs_of(booking_id))
    assert [o.partner_id for o in offers(leg1)] == [ramesh]
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    sms(client, a_phone, "1")
    ramesh_drop, asha_pick = last_code(a_phone, TAKE_MARK), last_code(r_phone, GIVE_MARK)
    sms(client, r_phone, f"DROP {ramesh_drop}")
    sms(client, a_phone, f"PICK {asha_pick}")
    _drop_job(f"release-{leg1}")
    sms(client, b_phone, "1")
    sms(client, b_phone, f"CANCEL {leg3}")
    run_jobs()
    freeze_at(60 * 60 + 1)
    release_scheduled(timedelta(minutes=61))
    run_jobs()
    assert _search(leg3)[0] == "paused"
    assert [leg.status for leg in legs_of(booking_id)] == ["delivered", "picked_up", "pending"]
    with transaction() as s:
        paid = ledger.booking_summary(s, booking_id)["captured_paise"]
        assert ledger.booking_summary(s, booking_id)["released_paise"] == 0  # job lost
        leg1_payout = s.get(Leg, leg1).payout_paise
        fee = s.get(Leg, leg2).payout_paise
    r = client.post(f"{API}/bookings/{_reference(booking_id)}/cancel"
                    f"?reason=no+rider+at+Point+B", headers=_ops(client))
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["reason_code"] == "stuck_relay"
    run_jobs()
    with transaction() as s:  # leg 1's release went with the end, not left to the sweep
        assert leg1 not in payments.unreleased_legs(s)
    payments.sweep()
    run_jobs()
    with transaction() as s:
        money = ledger.booking_summary(s, booking_id)
        leg1_earned = ledger.leg_payable(s, leg1)
        assert ledger.total(s) == 0
    assert leg1_earned == leg1_payout, (
        "Ramesh delivered leg 1 but was never paid: its money was refunded to the customer")
    assert money["refunded_paise"] + money["refunds_pending_paise"] == (
        paid - money["released_paise"] - fee)
    assert r.get_json()["refund_paise"] < paid - fee

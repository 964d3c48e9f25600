"""Reviewer r5 (operators' console and ops REST API): defects an operator meets. Each test
asserts the behaviour the README, the endpoint summaries or the other ops routes promise,
and fails on the code as reviewed."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import PartnerProfile, Person
from core.domain.booking import Actor, BookingStatus
from core.domain.pricing import SpeedTier
from core.services.booking import create_booking, move_booking
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
from tests.test_payments_support import BAG, BETTIAH
from tests.test_payments_support import LAXMIPUR as LAXMIPUR_PLACE

pytestmark = pytest.mark.db


def _audits(action: str) -> list[dict]:
    with transaction() as s:
        return [a.details for a in s.scalars(select(AuditEntry).where(
            AuditEntry.action == action).order_by(AuditEntry.id))]


def _wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10000:04d}"


# --- 1. a repeated KYC status audits a take-back that took nothing -----------------------


def test_the_same_kyc_status_again_audits_nothing_while_a_locked_parcel_is_held(
        client, live, frozen):  # noqa: F811
    """PUT /ops/partners/{id}/kyc promises "the same status again changes nothing" (and
    the other ops changes: nothing audited). Ramesh picked a parcel up and locked the leg
    with wrong DROP codes; ops suspend him: the take-back leaves the parcel with him
    (partner.block names it). An operator clicking "suspend" again (a second operator,
    a retry) runs the take-back again and writes a second partner.block entry for a
    change that never happened, and a third, and so on: _holds_work counts a locked leg
    as work to take back even when its parcel is in his hands, which block_partner never
    takes back. The audit log, append-only, then says he was blocked twice."""
    partner_id, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    sms(client, phone, f"PICK {last_code(CUSTOMER)}")
    wrong = _wrong(last_code(RECIPIENT))
    for _ in range(5):
        sms(client, phone, f"DROP {wrong}")
    assert legs_of(booking_id)[0].status == "locked"
    ops = sign_in(client, OPS)
    first = client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                       json={"status": "suspended", "note": "fraud report"})
    assert first.status_code == 200, first.get_json()
    assert len(_audits("partner.block")) == 1
    again = client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                       json={"status": "suspended", "note": "clicked again"})
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["kyc_status"] == "suspended"
    assert len(_audits("partner.kyc")) == 1
    assert len(_audits("partner.block")) == 1, _audits("partner.block")
    assert legs_of(booking_id)[0].status == "locked"  # the parcel stays his to deliver


# --- 2. a WhatsApp customer on a landline cannot be found by their number ----------------

LANDLINE_WA = "915222345678"  # a shop's WhatsApp Business number: a Lucknow landline


def _landline_customer_booking() -> tuple[int, str]:
    """A booking made on WhatsApp by a business whose WhatsApp number is a landline: the
    service keeps her by her WhatsApp id (no mobile to SMS), as the webhook does."""
    with transaction() as s:
        person = Person(phone=None, wa_id=LANDLINE_WA, name="Gupta Medical",
                        role="customer")
        s.add(person)
        s.flush()
        b = create_booking(s, customer_id=person.id, channel="whatsapp",
                           pickup=LAXMIPUR_PLACE, drop=BETTIAH, parcel=BAG,
                           tier=SpeedTier.STANDARD, recipient_name="Sita",
                           recipient_phone="+919812355512",
                           actor=Actor("customer", str(person.id)))
        move_booking(s, b, BookingStatus.AWAITING_PAYMENT, Actor.system(), "link sent")
        return person.id, b.reference


@pytest.mark.parametrize("typed", ["0522 2345678", "+91 522 234 5678"])
def test_ops_find_a_landline_whatsapp_customers_bookings_by_her_number(client, typed):
    """The service answers WhatsApp Business users on Indian landlines (kept by their
    WhatsApp id, with no mobile number). When the shop calls ops about its parcel and
    gives its number, GET /ops/bookings?phone= ("the customer's or the recipient's
    number, as typed") answers 422 bad_phone "not a phone number we can use", and the
    booking row says customer_phone_masked null, which the console documents as "null
    once they are erased": the operator can neither find her bookings by number nor tell
    her from an erased customer."""
    person_id, ref = _landline_customer_booking()
    ops = sign_in(client, OPS, role="ops")
    r = client.get(f"{API}/ops/bookings", query_string={"phone": typed}, headers=ops)
    assert r.status_code == 200, r.get_json()
    rows = r.get_json()["items"]
    assert [row["reference"] for row in rows] == [ref]
    assert rows[0]["customer_id"] == person_id
    assert rows[0]["customer_phone_masked"] is not None  # she is not erased
    assert rows[0]["customer_phone_masked"].endswith("5678")


# --- 3. an erased partner's KYC can still be "verified" -----------------------------------


def test_an_erased_partners_kyc_cannot_be_changed(client, live):
    """The partner routes refuse an erased partner (409 erased: "a return is a new
    sign-up"): their payout account, their home Point. KYC does not: an operator who
    types the id of a partner erased on their request (or an old id from a note) and
    verifies them gets 200 and an audit entry saying they verified partner N, while the
    partner they meant stays pending; the erased row, nameless, becomes "verified"."""
    ops = sign_in(client, OPS, role="ops")
    partner_id, _ = make_partner("Suresh", LAXMIPUR, on_duty=False, kyc_status="suspended")
    r = client.post(f"{API}/ops/partners/{partner_id}/erase", headers=ops,
                    json={"reason": "asked us by phone to erase his data"})
    assert r.status_code == 200 and r.get_json()["erased"], r.get_json()
    with transaction() as s:
        home = s.get(PartnerProfile, partner_id).home_point_id
    for body, path in (({"point": home}, "home-point"),
                       ({"account_id": "acc_NewAccount01"}, "payout-account")):
        r = client.put(f"{API}/ops/partners/{partner_id}/{path}", headers=ops, json=body)
        assert r.status_code == 409, (path, r.get_json())  # as these promise
        assert r.get_json()["error"]["code"] == "erased"
    r = client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                   json={"status": "verified", "note": "Aadhaar checked"})
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["error"]["code"] == "erased"
    with transaction() as s:
        assert s.get(PartnerProfile, partner_id).kyc_status == "suspended"
    assert _audits("partner.kyc") == []


# --- 4. a job ops take back for a KYC re-check counts as the rider's own cancellation ------


def test_a_job_ops_take_back_for_a_kyc_recheck_does_not_count_against_the_rider(
        client, live, frozen):  # noqa: F811
    """Ramesh, verified, takes a job. Ops put his KYC back to pending (his Aadhaar photo
    must be checked again: "they cannot be paid until it is checked again"), so the job
    goes back to offering, as the README says. He had no say in that, as in an open offer
    ops withdraw, which "leaves their acceptance record" (dispatch._withdraw). But the
    take-back goes through _give_back, written for a rider who gives a job back: his
    acceptance is taken back ("as if they had said no", offers_accepted - 1) and a
    cancelled_after_accept event is recorded. Verified again, he ranks below riders who
    never took that job (the score's acceptance rate), for the operators' paperwork."""
    from core.adapters.dispatch_models import PartnerEvent

    partner_id, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    with transaction() as s:
        p = s.get(PartnerProfile, partner_id)
        record = (p.offers_received, p.offers_accepted)
    assert record == (1, 1)
    ops = sign_in(client, OPS)
    r = client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                   json={"status": "pending", "note": "Aadhaar photo unreadable: re-check"})
    assert r.status_code == 200, r.get_json()
    assert legs_of(booking_id)[0].partner_id is None  # taken back, offered again
    r = client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                   json={"status": "verified", "note": "Aadhaar checked again"})
    assert r.status_code == 200, r.get_json()
    with transaction() as s:
        p = s.get(PartnerProfile, partner_id)
        assert (p.offers_received, p.offers_accepted) == record
        assert s.scalar(select(func.count()).select_from(PartnerEvent).where(
            PartnerEvent.partner_id == partner_id,
            PartnerEvent.kind == "cancelled_after_accept")) == 0

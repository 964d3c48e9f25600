"""Reviewer r5 (an operator's day: the ops REST API and CLI). Each test says what an
operator, a rider or a customer sees go wrong, and what they should see; each fails on
the code as reviewed."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Booking, PartnerProfile
from core.config import get_settings
from core.services import dispatch
from tests.test_api import API, sign_in
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    OPS,
    RECIPIENT,
    bodies_to,
    frozen,  # noqa: F401  (fixture)
    legs_of,
    make_partner,
    paid_booking,
    sms,
    start,
)

pytestmark = pytest.mark.db

OTHER_OPS = "+919000000097"


def _audits(action: str) -> list[AuditEntry]:
    with transaction() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action)
                              .order_by(AuditEntry.id)))


# --- 1. two operators set one partner's KYC at once: verified, yet blocked --------------


def test_a_kyc_verified_meanwhile_is_not_undone_by_the_suspensions_take_back(
        app, client, live, frozen, monkeypatch):  # noqa: F811
    """Two operators act on Ramesh at once: A suspends him (a complaint), B, a moment
    later, verifies him (the papers are fine). PUT /ops/partners/{id}/kyc commits the
    status in one transaction and takes his work back in a second one, which never looks
    at the status again: B's "verified" lands between the two, and A's take-back runs all
    the same. The partner list then says kyc_status "verified", yet Ramesh is put off
    duty, the job he took is taken from him and offered to others ("Job 1 is cancelled.
    Do not go for pickup."), and he is told, falsely, that he can start only "after we
    check your documents and payment account". The audit log says partner.block
    (suspended) for a partner who is verified.

    Expected: the take-back re-reads the KYC under the partner's lock and does nothing
    when it is verified again (the last word): he stays on duty with his job, and is told
    nothing false."""
    partner_id, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")  # he takes the job
    assert legs_of(booking_id)[0].partner_id == partner_id
    a = sign_in(client, OPS)
    b = sign_in(client, OTHER_OPS, role="ops")
    real = dispatch.block_partner
    answers: dict[str, tuple[int, dict]] = {}

    def b_verifies_meanwhile(session, pid, actor):
        # A's status is committed; A's take-back has not started: B's request now.
        if "b" not in answers:
            def run() -> None:
                r = app.test_client().put(f"{API}/ops/partners/{partner_id}/kyc", headers=b,
                                          json={"status": "verified", "note": "papers fine"})
                answers["b"] = (r.status_code, r.get_json())
            t = threading.Thread(target=run)
            t.start()
            t.join(60)
        return real(session, pid, actor)

    monkeypatch.setattr(dispatch, "block_partner", b_verifies_meanwhile)
    r = client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=a,
                   json={"status": "suspended", "note": "complaint from a customer"})
    assert r.status_code == 200, r.get_json()
    assert answers["b"][0] == 200, answers
    with transaction() as s:
        p = s.get(PartnerProfile, partner_id)
        assert p is not None
        kyc, on_duty = p.kyc_status, p.on_duty
    assert kyc == "verified"
    told = bodies_to(phone)
    pending = i18n.t("dispatch.duty_pending_kyc", "en", ops_phone=get_settings().ops_phone)
    assert pending not in told, told
    assert on_duty, "verified, yet put off duty by the suspension's take-back"
    leg = legs_of(booking_id)[0]
    assert (leg.status, leg.partner_id) == ("assigned", partner_id), \
        f"his job was taken back: {leg.status}, partner {leg.partner_id}"


# --- 2. "Call the customer": ops have no way to the customer's number --------------------


def test_ops_can_get_the_number_to_call_about_a_booking(client, live, frozen):  # noqa: F811
    """When a pickup or delivery code reached nobody, ops get an SMS "booking 1234 5678
    job 1: ... Nobody holds a code. Call the customer." (dispatch.ops_pickup_code_unsent,
    ops_drop_code_unsent: "Call the sender"), and README's answer is to make a new code
    with POST /ops/legs/{id}/new-code "to read out on the phone". But no ops route gives
    a booking's numbers: GET /ops/bookings and GET /bookings/{ref} show them masked
    (+91******0010), and the only full number ops can read is that of a person waiting
    in a handoff (GET /ops/handoffs/{id}/phone). The operator cannot make the call the
    alert asks for, and the parcel waits with nobody holding a code.

    Expected: an audited look-up of the full number of a booking's customer (and of its
    recipient), as the handoff's is: GET /ops/bookings/{ref}/phone?whom=customer|recipient
    answering {"phone": "+91..."}, audited booking.phone (no number in the audit log)."""
    partner_id, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    with transaction() as s:
        ref = s.get(Booking, booking_id).reference
    ops = sign_in(client, OPS)
    listed = client.get(f"{API}/ops/bookings", query_string={"reference": ref}, headers=ops)
    assert listed.status_code == 200
    (row,) = listed.get_json()["items"]
    assert CUSTOMER not in str(row) and RECIPIENT not in str(row)  # masked there, rightly
    got = {}
    for whom in ("customer", "recipient"):
        r = client.get(f"{API}/ops/bookings/{ref}/phone", query_string={"whom": whom},
                       headers=ops)
        assert r.status_code == 200, (whom, r.status_code, r.get_json())
        got[whom] = r.get_json()["phone"]
    assert got == {"customer": CUSTOMER, "recipient": RECIPIENT}
    audited = _audits("booking.phone")
    assert len(audited) == 2
    assert all(CUSTOMER not in str(a.details) and RECIPIENT not in str(a.details)
               for a in audited)


def test_a_booking_number_look_up_answers_precisely_and_only_ops(client, live,
                                                                 frozen):  # noqa: F811
    """The look-up's refusals: a booking nobody made (404 not_found), someone to call that
    is no customer or recipient (422), a number not kept (404 no_phone, nothing audited),
    a customer asking (403)."""
    booking_id = paid_booking()
    with transaction() as s:
        b = s.get(Booking, booking_id)
        ref = b.reference
        b.recipient_phone = None  # as an erasure leaves it
    ops = sign_in(client, OPS)

    def ask(ref: str, whom: str, headers: dict[str, str]) -> tuple[int, dict]:
        r = client.get(f"{API}/ops/bookings/{ref}/phone", query_string={"whom": whom},
                       headers=headers)
        return r.status_code, r.get_json()["error"]

    status, error = ask("99999999", "customer", ops)
    assert (status, error["code"]) == (404, "not_found"), error
    status, error = ask(ref, "rider", ops)
    assert status == 422, error
    status, error = ask(ref, "recipient", ops)
    assert (status, error["code"]) == (404, "no_phone"), error
    assert ask(ref, "customer", sign_in(client, CUSTOMER))[0] == 403
    assert _audits("booking.phone") == []

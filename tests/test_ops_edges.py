"""The operators' tools at their edges, each once wrong (the docstrings tell how): unlock
on a leg that is not locked, a suspended partner's locked job, one payout account for
two partners, the partner's audit entry, and an erased customer's number in the stored
answers their rider got."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from core.adapters.db import autocommit, transaction
from core.adapters.models import PartnerProfile
from tests.test_api import API, sign_in
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    OPS,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    paid_booking,
    sms,
    start,
)

pytestmark = pytest.mark.db


def test_unlock_does_not_give_a_suspended_partner_back_a_job_they_may_not_pick_up(
        client, live, frozen):  # noqa: F811
    """A leg locked by wrong PICK codes, then its partner suspended by ops: block_partner
    leaves the locked leg with them (it takes back only 'assigned' legs), and ops' unlock
    puts it back to 'assigned' on the suspended partner, who is refused PICK. The parcel
    is never collected: the job should go back to offering (or unlock refuse)."""
    partner_id, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    pick = last_code(CUSTOMER)
    wrong = f"{(int(pick) + 1) % 10000:04d}"
    for _ in range(5):
        sms(client, phone, f"PICK {wrong}")
    leg = legs_of(booking_id)[0]
    assert leg.status == "locked"
    ops = sign_in(client, OPS)
    r = client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                   json={"status": "suspended", "note": "fraud report"})
    assert r.status_code == 200, r.get_json()
    r = client.post(f"{API}/ops/legs/{leg.id}/unlock", headers=ops)
    after = legs_of(booking_id)[0]
    # The suspended partner may not pick it up, with the right code of before (no new
    # one goes out: the job went back to offering, and the first code's message, never
    # sent here, was withdrawn with it) ...
    refused = sms(client, phone, f"PICK {pick}")[0]
    assert legs_of(booking_id)[0].status != "picked_up", refused
    # ... so the job must not be left on them.
    assert not (after.status == "assigned" and after.partner_id == partner_id), (
        r.status_code, after.status, refused)



from tests.test_admin import BODY, audit_rows, operator  # noqa: E402,F401  (fixture)


def test_ops_cannot_give_a_second_partner_another_partners_payout_account(client, operator):  # noqa: F811
    """POST /ops/partners (and add-partner) take a payout account already linked to
    another partner: nothing is unique about partner_profiles.payout_account_id and
    admin._checked only checks its shape. Partner B's earnings then go to A's bank
    account (a typo or a copy-paste by ops). It should be a 409 naming the field."""
    headers, _ = operator
    first = client.post(f"{API}/ops/partners", headers=headers,
                        json={**BODY, "payout_account": "acc_Sunita0001"})
    assert first.status_code == 201, first.get_json()
    second = client.post(f"{API}/ops/partners", headers=headers,
                         json={**BODY, "phone": "98123 77709", "name": "Ramesh",
                               "payout_account": "acc_Sunita0001"})
    with transaction() as s:
        owners = s.scalars(select(PartnerProfile.id).where(
            PartnerProfile.payout_account_id == "acc_Sunita0001")).all()
    assert second.status_code == 409, (second.status_code, second.get_json(), owners)
    assert len(owners) == 1


def test_unlocking_a_leg_that_is_not_locked_is_refused(client, live, frozen):  # noqa: F811
    """POST /ops/legs/{id}/unlock never checks that the leg is locked: dispatch.unlock_leg
    moves it to 'assigned' (or picked_up) whatever it was. On a leg still 'offering'
    (OFFERING -> ASSIGNED is a legal move: an acceptance) it becomes 'assigned' with no
    partner, the customer gets a pickup code for nobody, and the open offers/search run
    on. An ops click on the wrong row of /ops/legs does this; it should be a 409."""
    make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert leg.status == "offering" and leg.partner_id is None
    ops = sign_in(client, OPS)
    r = client.post(f"{API}/ops/legs/{leg.id}/unlock", headers=ops)
    after = legs_of(booking_id)[0]
    assert r.status_code == 409, (r.status_code, r.get_json(), after.status, after.partner_id)
    assert (after.status, after.partner_id) == ("offering", None)


def test_the_partner_add_audit_entry_says_where_their_money_goes(client, operator):  # noqa: F811
    """admin.add_partner audits phone, person, point, vehicle and payload, but not the
    payout account that every later payout to this partner is transferred to: the audit
    log cannot show which operator linked which bank account."""
    from core.adapters.api_models import AuditEntry

    headers, _ = operator
    r = client.post(f"{API}/ops/partners", headers=headers,
                    json={**BODY, "payout_account": "acc_Sunita0001"})
    assert r.status_code == 201, r.get_json()
    with transaction() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "partner.add")).one()
    assert "acc_Sunita0001" in entry.details.values(), entry.details


def test_an_erased_customer_s_number_leaves_the_answers_their_rider_got(client, live,
                                                                          frozen):  # noqa: F811
    """The rider's "Job .. is yours. Pick up at .., phone <sender's number>" answer to
    their SMS "1" is stored whole (inbound_events.response_body, for Twilio's retries).
    Erasing the sender (POST /ops/people/{id}/erase) leaves it there: erase_person clears
    outbox rows to them or about their bookings, never these stored answers, which the
    daily job only clears after RETENTION_MESSAGE_DAYS (90 days)."""
    from core.adapters.models import InboundEvent, Person
    from tests.test_dispatch import RECIPIENT

    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    assert CUSTOMER in sms(client, phone, "1")[0]  # the sender's number, for the rider
    sms(client, phone, f"PICK {last_code(CUSTOMER)}")
    sms(client, phone, f"DROP {last_code(RECIPIENT)}")
    assert legs_of(booking_id)[0].status == "delivered"
    with transaction() as s:
        pid = s.scalar(select(Person.id).where(Person.phone == CUSTOMER))
    ops = sign_in(client, OPS)
    r = client.post(f"{API}/ops/people/{pid}/erase", headers=ops, json={"reason": "asked"})
    assert r.status_code == 200 and r.get_json()["erased"], r.get_json()
    with transaction() as s:
        kept = [b for b in s.scalars(select(InboundEvent.response_body)) if b
                and CUSTOMER[3:] in b]
    assert kept == []


def test_two_operators_adding_partners_on_one_account_at_once_get_a_409_not_a_500(
        client, operator):  # noqa: F811
    """The check reads before either add commits: the unique index (0021) refuses the
    second, which is answered as the check would answer it."""
    import threading
    import time

    from core.domain.errors import Conflict
    from core.services import admin

    spec = admin.NewPartner(phone="+919812377711", name="Asha", language="hi",
                            vehicle="bicycle", payload_kg=20, point="Laxmipur BO",
                            payout_account="acc_Race000001")
    outcome: list[BaseException | None] = []

    def second() -> None:
        try:
            with transaction() as s:
                admin.add_partner(s, admin.NewPartner(**{**spec.__dict__,
                                                         "phone": "+919812377712"}),
                                  actor="test")
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 (the test looks at it)
            outcome.append(exc)

    with transaction() as first:
        admin.add_partner(first, spec, actor="test")  # flushed, not committed
        racer = threading.Thread(target=second, daemon=True)
        racer.start()
        until = time.monotonic() + 30
        with autocommit() as watch:  # the racer waits on the index for this commit
            while not watch.scalar(text("SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted"
                                        " AND locktype = 'transactionid')")):
                assert racer.is_alive() and time.monotonic() < until, outcome
                time.sleep(0.01)  # a poll interval: the condition above decides
    racer.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], Conflict), outcome
    assert outcome[0].code == "payout_account_taken"
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(PartnerProfile).where(
            PartnerProfile.payout_account_id == "acc_Race000001")) == 1

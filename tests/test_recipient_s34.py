"""The parcel recipient's side, five review findings (R7; H13).

1. A parcel she disowned ("galat number") hid her real one: the last parcel texted about
   was picked, then dropped as not hers.
2. A reference she typed was ignored: "code nahi mila <ref>" renewed another parcel's code.
3. After "wrong number" the rider was still sent to that number (PICK's SMS, the app).
4. Her repeated "code nahi mila" made a new code each time and used up ops' codes.
5. A renewal she asked for that then failed went to nobody (ops told to "read it out").
"""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from core import clock
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage
from core.services import dispatch
from tests.conftest import run_jobs
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    frozen,  # noqa: F401
    make_partner,
    paid_booking,
    sms,
    start,
)
from tests.test_notice_review import customer_speaks, ref_of

pytestmark = pytest.mark.db


def drop_rows(booking_id: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.dedupe_key).where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.dedupe_key.like("leg-%-dropotp-%")).order_by(OutboxMessage.id)))


def two_parcels(client) -> tuple[int, int, str]:
    """Two paid bookings to Sita, both taken by Ramesh (both drop codes sent her)."""
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en", max_active_legs=2)
    first = paid_booking()
    customer_speaks("en")
    start(first)
    assert sms(client, rider, "1")
    second = paid_booking()
    customer_speaks("en")
    start(second)
    assert sms(client, rider, "1")
    run_jobs()
    assert len(drop_rows(first)) == 1 and len(drop_rows(second)) == 1
    return first, second, rider


def later(minutes: float) -> None:
    clock.freeze(clock.now() + timedelta(minutes=minutes))


# --- 1. a disowned parcel hides her real one ---------------------------------------------


def test_a_disowned_parcel_does_not_hide_her_real_one(client, live, frozen):  # noqa: F811
    mine, wrong, _ = two_parcels(client)  # another sender mistyped her number for `wrong`
    assert sms(client, RECIPIENT, f"galat number {ref_of(wrong)}")
    before = len(drop_rows(mine))
    answer = sms(client, RECIPIENT, "code nahi mila")
    assert len(drop_rows(mine)) == before + 1, (
        f"her own parcel's code was not sent again: {answer}")
    assert len(drop_rows(wrong)) == 2  # the disowned one: its code went to its sender once


# --- 2. a reference she types names the parcel -------------------------------------------


def test_she_names_the_first_parcel_and_the_second_code_stays(client, live, frozen):  # noqa: F811
    first, second, _ = two_parcels(client)
    ref = ref_of(first)
    sms(client, RECIPIENT, f"code nahi mila {ref[:4]} {ref[4:]}")
    assert len(drop_rows(second)) == 1, "the second parcel's code (she holds it) was voided"
    assert len(drop_rows(first)) == 2, "the parcel she named got no new code"


def test_galat_number_with_a_reference_disowns_that_parcel(client, live, frozen):  # noqa: F811
    first, second, _ = two_parcels(client)  # the second was texted about last
    sms(client, RECIPIENT, f"galat number {ref_of(first)}")
    with transaction() as s:
        assert dispatch.recipient_said_wrong_number(s, s.get(Booking, first))
        assert not dispatch.recipient_said_wrong_number(s, s.get(Booking, second))


# --- 3. after "wrong number" the rider calls the sender ----------------------------------


def test_after_wrong_number_the_rider_is_sent_to_the_sender(client, live, frozen):  # noqa: F811
    from tests.test_notice_review import assigned_booking, pickup_code

    booking_id, rider = assigned_booking(client)
    assert sms(client, RECIPIENT, "galat number hai")
    run_jobs()
    said = sms(client, rider, f"PICK {pickup_code()}")
    assert any("picked up" in s for s in said), said
    told = "\n".join(said).replace(" ", "")
    assert RECIPIENT[-10:] not in told, f"sent to the number that is not hers: {said}"
    assert any("number was wrong" in s and CUSTOMER in s for s in said), said


def test_after_wrong_number_the_app_gives_the_senders_phone(client, live, frozen):  # noqa: F811
    from tests.test_dispatch import last_code
    from tests.test_partner_app_review import PICK_MARK, _app_partner, _offered

    _, _, headers = _app_partner(client, lang="en")
    _, leg_id, offer_id = _offered(client, headers)
    assert client.post(f"/api/v1/offers/{offer_id}/accept", headers=headers).status_code == 200
    run_jobs()
    assert sms(client, RECIPIENT, "galat number hai")
    r = client.post(f"/api/v1/legs/{leg_id}/pickup", headers=headers,
                    json={"otp": last_code(CUSTOMER, PICK_MARK)})
    assert r.status_code == 200, r.get_json()
    (job,) = client.get("/api/v1/partners/me/jobs", headers=headers).get_json()
    assert (job["drop_phone"], job["drop_phone_is_sender"]) == (CUSTOMER, True), job


# --- 4. her asking again neither voids the code on its way nor uses up ops' codes --------


def test_asking_again_keeps_the_codes_ops_need(client, live, frozen):  # noqa: F811
    from tests.test_notice_review import assigned_booking, leg_of
    from tests.test_ops_codes import new_code, sign_in

    booking_id, _rider = assigned_booking(client)
    for _ in range(5):  # her SMS slow to come, she asks five times in a few minutes
        sms(client, RECIPIENT, "code nahi mila")
    assert drop_rows(booking_id) == ["leg-1-dropotp-o1", "leg-1-dropotp-r1"]
    ops = sign_in(client, "+919000000098")
    r = new_code(client, ops, leg_of(booking_id), "drop")
    assert r.status_code == 200, f"ops can no longer give her a code: {r.get_json()}"
    assert r.get_json()["codes_left"] == dispatch.OPS_CODES_PER_LEG - 1


def test_asking_again_soon_hears_when_the_code_went(client, live, frozen):  # noqa: F811
    from tests.test_notice_review import assigned_booking

    booking_id, _rider = assigned_booking(client)
    assert sms(client, RECIPIENT, "code nahi mila") == []  # the new code is the answer
    later(3)
    sent_at = (clock.now() - timedelta(minutes=3)).astimezone(ZoneInfo("Asia/Kolkata"))
    answer = sms(client, RECIPIENT, "code nahi mila")
    assert len(answer) == 1 and "was sent to you at" in answer[0], answer
    assert f"{sent_at.hour % 12 or 12}:{sent_at.minute:02d}" in answer[0], answer
    assert sms(client, RECIPIENT, "code nahi mila") == []  # told once for that code
    assert drop_rows(booking_id) == ["leg-1-dropotp-o1", "leg-1-dropotp-r1"]
    later(10)  # it is late now: a new one
    sms(client, RECIPIENT, "code nahi mila")
    assert drop_rows(booking_id)[-1] == "leg-1-dropotp-r2"


def test_her_own_codes_are_few(client, live, frozen):  # noqa: F811
    from tests.test_notice_review import assigned_booking, leg_of

    booking_id, _rider = assigned_booking(client)
    for _ in range(dispatch.RECIPIENT_CODES_PER_LEG):
        sms(client, RECIPIENT, "code nahi mila")
        later(11)
    answer = sms(client, RECIPIENT, "code nahi mila")
    assert len(drop_rows(booking_id)) == 1 + dispatch.RECIPIENT_CODES_PER_LEG
    assert answer and "+91" in answer[0], answer  # call us
    with transaction() as s:
        actions = list(s.scalars(select(AuditEntry.action).where(
            AuditEntry.target == f"leg:{leg_of(booking_id)}")))
    assert actions == [dispatch.RECIPIENT_NEW_CODE] * dispatch.RECIPIENT_CODES_PER_LEG


# --- 5. a renewal she asked for that is lost has the usual fallback ----------------------


def test_a_code_she_asked_for_that_never_arrives_goes_to_the_sender(client, live,
                                                                   frozen):  # noqa: F811
    from tests.test_notice_review import assigned_booking, cannot_deliver, passed_on

    booking_id, _rider = assigned_booking(client)
    cannot_deliver(RECIPIENT, "undelivered", "30003")  # her phone goes out of signal
    sms(client, RECIPIENT, "code nahi mila")
    run_jobs()
    run_jobs()
    with transaction() as s:
        rows = [(r.dedupe_key, r.to_addr, r.status) for r in s.scalars(
            select(OutboxMessage).where(OutboxMessage.booking_id == booking_id)
            .order_by(OutboxMessage.id))]
    assert ("leg-1-dropotp-r1", RECIPIENT, "undelivered") in rows, rows
    assert passed_on(booking_id), f"nobody holds a code, the sender was given none: {rows}"
    assert not any("opslost" in key for key, _, _ in rows), rows


def test_a_code_the_service_made_for_her_new_sim_that_is_lost_goes_to_the_sender(
        client, live, frozen):  # noqa: F811
    """Only codes ops made are "read out on the phone": one the service made when the
    recipient's number moved to a new SIM (partner_profile) has the usual fallback too."""
    from tests.test_api import sign_in
    from tests.test_dispatch import OPS
    from tests.test_notice_review import cannot_deliver, passed_on
    from tests.test_partner_phone_s31 import NEW, _move

    pid, old = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    _, rider = make_partner("Suresh", LAXMIPUR, lang="en")
    booking_id = paid_booking(recipient=old)
    customer_speaks("en")
    start(booking_id)
    assert sms(client, rider, "1")
    run_jobs()  # his drop code went to the old SIM
    cannot_deliver(NEW, "undelivered", "30003")
    r = _move(client, sign_in(client, OPS), pid, NEW)
    assert r.status_code == 200, r.get_json()
    run_jobs()
    run_jobs()
    with transaction() as s:
        rows = [(r.dedupe_key, r.to_addr, r.status) for r in s.scalars(
            select(OutboxMessage).where(OutboxMessage.booking_id == booking_id)
            .order_by(OutboxMessage.id))]
    assert ("leg-1-dropotp-ops1", NEW, "undelivered") in rows, rows
    assert passed_on(booking_id), f"nobody holds a code: {rows}"
    assert not any("opslost" in key for key, _, _ in rows), rows

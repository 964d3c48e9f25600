"""Ops' dispatch tools for codes, the late parcel's recipient, and relay photos (review of
ops codes, defects 1 to 4).

1. A pickup or drop code that reached nobody (dispatch.pickup_code_lost, drop_code_lost:
   ops are told "call the customer") left ops no way to give one: unlock works only on
   a locked leg. POST /ops/legs/{id}/new-code makes a new code of one kind (the old one
   void, the other kind's code kept, the tries as for a lost code), answers it once for
   the operator to read out on the phone (never logged nor audited), sends it the usual
   way on request, refuses a leg that takes no such code, and at most a few per leg.
2. A parcel later than its tier promised: the customer heard (35e6a68), the recipient
   waiting for it did not. She hears once, in her language, if we told her of it before.
3. A WhatsApp photo from the rider holding a relay parcel handed over at the Point (her
   PICK not yet sent) was refused or filed under another leg: the app takes it as a
   pickup photo (core.services.partner_app), the chat now too (dispatch.pod_leg_of).
4. The rider's "call ops" message after a lost pickup code said "our SMS" when the lost
   message was a WhatsApp one.
"""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg
from core.adapters.queue import QUEUES
from core.services import dispatch
from tests.conftest import run_jobs
from tests.test_api import API, sign_in
from tests.test_code_delivery import pickup_rows, taken
from tests.test_delivery_notices import photo_on_whatsapp, photo_store, photos_of  # noqa: F401
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    OPS,
    RECIPIENT,
    bodies_to,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    make_point,
    paid_booking,
    sms,
    start,
)
from tests.test_dispatch_relay import A, B, D, P
from tests.test_notice_review import (
    cannot_deliver,
    codes_in,
    customer_speaks,
    leg_of,
    ref_of,
)
from tests.test_relay_review import GIVE_MARK, PICK_MARK, TAKE_MARK

pytestmark = pytest.mark.db

PICK_EN = "at pickup"  # an English customer's pickup-code message


def new_code(client, headers: dict[str, str], leg_id: int, kind: str, *, send: bool = False):
    body: dict[str, object] = {"kind": kind, "reason": "the customer called: no code"}
    if send:
        body["send"] = True
    return client.post(f"{API}/ops/legs/{leg_id}/new-code", headers=headers, json=body)


def audits(leg_id: int) -> list[AuditEntry]:
    with transaction() as s:
        rows = list(s.scalars(select(AuditEntry).where(
            AuditEntry.target == f"leg:{leg_id}").order_by(AuditEntry.id)))
        for r in rows:
            s.expunge(r)
        return rows


def otp_failures(leg_id: int) -> int:
    with transaction() as s:
        return s.get(Leg, leg_id).otp_failures


# --- 1. ops give a new code ---------------------------------------------------------------


def test_ops_give_a_pickup_code_to_read_out_on_the_phone(
        client, live, frozen, caplog):  # noqa: F811
    """Meena calls: no pickup code reached her, Ramesh is at her door after four wrong
    PICKs. The operator gets a new code to read out; the old one is void, the drop code
    Sita holds still works, Ramesh's tries start fresh, and the code is in no log and no
    audit entry. Nothing is sent unless asked."""
    booking_id = paid_booking()
    customer_speaks("en")
    rider = taken(client, booking_id)
    leg_id = leg_of(booking_id)
    old = last_code(CUSTOMER, PICK_EN)
    for n in range(4):
        sms(client, rider, f"PICK {(int(old) + 1 + n) % 10000:04d}")
    assert otp_failures(leg_id) == 4
    drop = last_code(RECIPIENT)
    sent_before = len(bodies_to(CUSTOMER))
    ops = sign_in(client, OPS)
    with caplog.at_level(logging.DEBUG):
        r = new_code(client, ops, leg_id, "pickup")
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    code = out["code"]
    assert len(code) == 4 and code.isdigit()
    assert out["kind"] == "pickup" and out["sent"] is False and out["leg_id"] == leg_id
    assert code not in caplog.text
    (entry,) = audits(leg_id)
    assert entry.action == "leg.new_code" and code not in str(entry.details)
    assert entry.details["kind"] == "pickup"
    assert len(bodies_to(CUSTOMER)) == sent_before  # read out, not sent
    assert otp_failures(leg_id) == 0
    if old != code:
        assert "picked up" not in sms(client, rider, f"PICK {old}")[0]
    assert "picked up" in sms(client, rider, f"PICK {code}")[0]
    assert "delivered" in sms(client, rider, f"DROP {drop}")[0]


def test_ops_can_send_the_new_code_the_usual_way(client, live, frozen):  # noqa: F811
    booking_id = paid_booking()
    customer_speaks("en")
    rider = taken(client, booking_id)
    leg_id = leg_of(booking_id)
    ops = sign_in(client, OPS)
    r = new_code(client, ops, leg_id, "pickup", send=True)
    assert r.status_code == 200, r.get_json()
    code = r.get_json()["code"]
    assert r.get_json()["sent"] is True
    assert bodies_to(CUSTOMER)[-1] == i18n.t("dispatch.pickup_otp_new", "en",
                                             ref=ref_of(booking_id), otp=code)
    assert "picked up" in sms(client, rider, f"PICK {code}")[0]
    # A drop code once under way: to Sita, as her first one was.
    r = new_code(client, ops, leg_id, "drop", send=True)
    assert r.status_code == 200, r.get_json()
    drop = r.get_json()["code"]
    assert last_code(RECIPIENT) == drop
    assert "delivered" in sms(client, rider, f"DROP {drop}")[0]


def test_a_new_code_is_refused_where_the_leg_takes_none(client, live, frozen):  # noqa: F811
    booking_id = paid_booking()
    customer_speaks("en")
    ops = sign_in(client, OPS)
    _, partner_phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    start(booking_id)
    leg_id = leg_of(booking_id)
    r = new_code(client, ops, leg_id, "pickup")
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "no_rider")
    r = new_code(client, ops, leg_id, "drop")
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "no_rider")
    assert sms(client, partner_phone, "1")
    sms(client, partner_phone, f"PICK {last_code(CUSTOMER, PICK_EN)}")
    r = new_code(client, ops, leg_id, "pickup")
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "already_picked_up")
    sms(client, partner_phone, f"DROP {last_code(RECIPIENT)}")
    r = new_code(client, ops, leg_id, "drop")
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "already_delivered")
    assert new_code(client, ops, 10**9, "drop").status_code == 404
    bad = client.post(f"{API}/ops/legs/{leg_id}/new-code", headers=ops,
                      json={"kind": "both", "reason": "x" * 5})
    assert bad.status_code == 422
    assert audits(leg_id) == []


def test_ops_give_a_drop_code_before_the_pickup_and_the_pick_tries_stay(
        client, live, frozen):  # noqa: F811
    """The drop code goes out at the accept, so "the delivery code reached nobody" can
    come before the pickup: ops can give one then. The wrong PICK codes tried so far,
    against the pickup code nobody lost, stay counted; the pickup code still works."""
    booking_id = paid_booking()
    customer_speaks("en")
    rider = taken(client, booking_id)
    leg_id = leg_of(booking_id)
    pick = last_code(CUSTOMER, PICK_EN)
    sms(client, rider, f"PICK {(int(pick) + 1) % 10000:04d}")
    assert otp_failures(leg_id) == 1
    ops = sign_in(client, OPS)
    r = new_code(client, ops, leg_id, "drop")
    assert r.status_code == 200, r.get_json()
    code = r.get_json()["code"]
    assert otp_failures(leg_id) == 1
    assert "picked up" in sms(client, rider, f"PICK {pick}")[0]
    assert "delivered" in sms(client, rider, f"DROP {code}")[0]


def test_no_new_code_for_a_cancelled_booking(client, live, frozen):  # noqa: F811
    booking_id = paid_booking()
    customer_speaks("en")
    taken(client, booking_id)
    leg_id = leg_of(booking_id)
    with transaction() as s:  # closed (a cancel by ops the leg has not seen yet)
        s.get(Booking, booking_id).status = "cancelled"
    ops = sign_in(client, OPS)
    r = new_code(client, ops, leg_id, "pickup")
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "booking_closed")


def test_new_codes_are_bounded_per_leg(client, live, frozen):  # noqa: F811
    """A stolen ops login must not farm working codes: a few per leg, then 409."""
    booking_id = paid_booking()
    customer_speaks("en")
    taken(client, booking_id)
    leg_id = leg_of(booking_id)
    ops = sign_in(client, OPS)
    for _ in range(dispatch.OPS_CODES_PER_LEG):
        assert new_code(client, ops, leg_id, "pickup").status_code == 200
    r = new_code(client, ops, leg_id, "pickup")
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "too_many_codes")
    assert len(audits(leg_id)) == dispatch.OPS_CODES_PER_LEG


def test_a_late_failure_report_does_not_void_the_code_ops_read_out(client, live,
                                                                   frozen):  # noqa: F811
    """Meena calls before Twilio's report of her lost SMS is in; ops read her a new code.
    The report then comes: pickup_code_lost must not make yet another code, which would
    void the one she holds."""
    cannot_deliver(CUSTOMER, "undelivered", "30003")
    booking_id = paid_booking()
    customer_speaks("en")
    rider = taken(client, booking_id, queues=QUEUES)  # Twilio's reports not in yet
    ops = sign_in(client, OPS)
    r = new_code(client, ops, leg_of(booking_id), "pickup")
    assert r.status_code == 200, r.get_json()
    code = r.get_json()["code"]
    run_jobs()  # the report: undelivered
    assert pickup_rows(booking_id)[0].status == "undelivered"
    assert len(pickup_rows(booking_id)) == 1, "a code was made again over the ops one"
    assert "picked up" in sms(client, rider, f"PICK {code}")[0]


# --- 2. the recipient hears the parcel is late --------------------------------------------


def test_the_recipient_hears_once_that_her_parcel_is_late(client, live, frozen):  # noqa: F811
    _, rider = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    customer_speaks("ta")  # Sita is unknown to us: the sender's language
    start(booking_id)
    sms(client, rider, "1")
    freeze_at(10 * 60)
    sms(client, rider, f"PICK {last_code(CUSTOMER)}")
    had = len(bodies_to(RECIPIENT))
    freeze_at(10 * 60 + 8 * 3600 + 60)
    assert dispatch.sweep()["late_deliveries"] == 1
    told = i18n.t("dispatch.recipient_delivery_late", "ta", ref=ref_of(booking_id))
    assert bodies_to(RECIPIENT)[had:] == [told], "the recipient was not told it is late"
    freeze_at(24 * 3600)
    dispatch.sweep()
    assert bodies_to(RECIPIENT)[had:] == [told]


def test_a_recipient_never_told_of_the_parcel_hears_nothing(client, live,
                                                             frozen):  # noqa: F811
    # Guard: her drop code never reached her (it went to the sender): no surprise message.
    cannot_deliver(RECIPIENT, "undelivered", "30003")
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    customer_speaks("en")
    start(booking_id)
    sms(client, rider, "1")
    run_jobs()
    sms(client, rider, f"PICK {last_code(CUSTOMER, PICK_EN)}")
    had = len(bodies_to(RECIPIENT))
    freeze_at(8 * 3600 + 60)
    assert dispatch.sweep()["late_deliveries"] == 1
    assert bodies_to(RECIPIENT)[had:] == []


# --- 3. a relay parcel handed over, photographed before PICK ------------------------------


def test_a_whatsapp_photo_of_a_parcel_handed_over_is_filed_under_its_leg(
        client, live, frozen, photo_store):  # noqa: F811
    """Ramesh handed the parcel to Asha at Point A; she photographs it and sends it on
    WhatsApp before her PICK. The app keeps such a photo with her leg (a pickup photo);
    the chat told her she has no job."""
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    make_partner("Bala", B, point_id=point_b, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    sms(client, a_phone, "1")
    sms(client, r_phone, f"DROP {last_code(a_phone, TAKE_MARK)}")  # in Asha's hands
    leg2 = legs_of(booking_id)[1]
    assert leg2.status == "assigned" and codes_in([last_code(r_phone, GIVE_MARK)])
    photo = b"\xff\xd8\xff\xe0" + b"at-the-point" * 20
    answer = photo_on_whatsapp(client, a_phone, photo, "SMpodh1")
    assert answer == i18n.t("dispatch.pod_received", "hi", job=str(leg2.id)), answer
    run_jobs()
    (kept,) = photos_of(leg2.id)
    assert "/pickup/" in kept.storage_uri
    assert legs_of(booking_id)[1].pod_photo_url is None


# --- 4. the rider's "call ops" text names no channel ---------------------------------------


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_the_riders_lost_code_text_names_no_channel(lang: str) -> None:
    text = i18n.raw("dispatch.pickup_code_lost_rider", lang)
    assert "SMS" not in text and "WhatsApp" not in text, text

"""Session 35: the rider's app side (review HG).

1. An app rider who sent STOP stays on duty (the app brings his offers); made SMS-only by
   ops he could be reached by no offer, yet stayed on duty: he goes OFF, as STOP takes an
   SMS-only rider off.
2. ON in the app said "Job offers will come by SMS": the app's own words now.
3. A job the customer cancelled after the rider took it: PICK, DROP and give-back in the
   app said "no longer yours" (404): 409 job_cancelled, as the offer's accept says it.
4. A suspension put the rider off duty without a duty_off event in his duty history.

Real PostgreSQL and Redis; time frozen.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters import geo_index
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.dispatch_models import DispatchOffer, PartnerEvent
from core.adapters.models import Booking, PartnerProfile
from core.adapters.redis_conn import redis_client
from core.domain.booking import Actor
from core.services import dispatch, partner_profile, payments
from tests.test_api import sign_in
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
from tests.test_partner_app_review import _app_partner, _offered

pytestmark = pytest.mark.db

API = "/api/v1"
PICK_MARK = "पार्सल उठाने"  # the sender's pickup-code SMS (Hindi customer)


def _duty_events(pid: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(PartnerEvent.kind).where(
            PartnerEvent.partner_id == pid,
            PartnerEvent.kind.in_(("duty_on", "duty_off", "auto_off")))
            .order_by(PartnerEvent.id)))


def _partner(pid: int) -> PartnerProfile:
    with transaction() as s:
        p = s.get(PartnerProfile, pid)
        assert p is not None
        return p


# --- 1. made SMS-only after STOP ---------------------------------------------------------


def test_an_app_rider_who_stopped_sms_goes_off_duty_when_made_sms_only(client, live,
                                                                      frozen):  # noqa: F811
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en", has_app=True)  # on duty
    assert sms(client, phone, "STOP") == []
    assert _partner(pid).on_duty  # by design: the app still brings his offers
    ops = sign_in(client, OPS)
    r = client.put(f"{API}/ops/partners/{pid}/app", headers=ops,
                   json={"app": False, "note": "phone broken"})
    assert r.status_code == 200, r.get_json()
    row = r.get_json()
    assert (row["has_app"], row["on_duty"]) == (False, False), row  # said in the answer
    assert _duty_events(pid) == ["duty_off"]  # as set_duty writes it
    assert not redis_client().sismember(geo_index.APP_KEY, str(pid))
    with transaction() as s:
        (entry,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "partner.app"))
        assert entry.details["after"] is False and "off" in entry.details["duty"]
    # No offer could reach him: a job near him goes to nobody, and he stays off.
    booking_id = paid_booking()
    start(booking_id)
    with transaction() as s:
        assert s.scalar(select(DispatchOffer.id).where(DispatchOffer.partner_id == pid)) \
            is None
    # His ON stays refused until he sends START.
    h = sign_in(client, phone)
    r = client.put(f"{API}/partners/me/duty", headers=h, json={"on_duty": True})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "sms_stopped"


def test_the_outcome_says_he_is_off_duty_and_a_rider_who_can_be_texted_stays_on(
        client, live, frozen):  # noqa: F811
    stopped, phone = make_partner("Ramesh", LAXMIPUR, lang="en", has_app=True)
    other, _ = make_partner("Suresh", LAXMIPUR, lang="en", has_app=True)
    sms(client, phone, "STOP")
    with transaction() as s:
        out = partner_profile.set_has_app(s, stopped, False, actor="ops:1")
        kept = partner_profile.set_has_app(s, other, False, actor="ops:1")
    assert out.changed and "OFF duty" in out.message and "START" in out.message, out
    assert "OFF" not in kept.message
    assert not _partner(stopped).on_duty and _partner(other).on_duty
    assert _duty_events(other) == []


# --- 2. ON in the app --------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["en", "hi"])
def test_on_duty_in_the_app_says_offers_appear_in_the_app(client, live, frozen,  # noqa: F811
                                                          lang):
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang=lang, has_app=True, on_duty=False)
    h = sign_in(client, phone)
    r = client.put(f"{API}/partners/me/duty", headers=h, json={"on_duty": True})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["on_duty"] is True
    assert body["message"] == i18n.t("dispatch.app.duty_on", lang)
    assert body["message"] != i18n.t("dispatch.duty_on", lang)
    assert "SMS" not in body["message"]
    # By SMS too, his ON says the offers appear in the app (test_dispatch_s36).
    sms(client, phone, "OFF")
    assert sms(client, phone, "ON") == [i18n.t("dispatch.app.duty_on", lang)]


# --- 3. a job the customer cancelled -----------------------------------------------------


def _cancel(booking_id: int) -> None:
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None
        payments.cancel_booking(s, booking, Actor("customer", "1"),
                                "customer cancelled on whatsapp")


def _accepted_then_cancelled(client) -> tuple[dict[str, str], int, str]:
    _, _, h = _app_partner(client)
    booking_id, leg_id, offer_id = _offered(client, h)
    assert client.post(f"{API}/offers/{offer_id}/accept", headers=h).status_code == 200
    code = last_code(CUSTOMER, PICK_MARK)
    _cancel(booking_id)
    assert legs_of(booking_id)[0].status == "cancelled"
    return h, leg_id, code


@pytest.mark.parametrize("kind", ["pickup", "drop"])
def test_a_pickup_or_drop_of_a_cancelled_job_says_it_is_cancelled(client, live, frozen,  # noqa: F811
                                                                  kind):
    h, leg_id, code = _accepted_then_cancelled(client)
    r = client.post(f"{API}/legs/{leg_id}/{kind}", headers=h, json={"otp": code})
    assert r.status_code == 409, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "job_cancelled", error
    assert error["message"] == i18n.t("dispatch.job_cancelled", "en", job=leg_id)


def test_giving_back_a_cancelled_job_says_it_is_cancelled(client, live, frozen):  # noqa: F811
    h, leg_id, _ = _accepted_then_cancelled(client)
    r = client.post(f"{API}/legs/{leg_id}/give-back", headers=h)
    assert r.status_code == 409, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "job_cancelled", error
    assert error["message"] == i18n.t("dispatch.job_cancelled", "en", job=leg_id)


def test_a_job_taken_back_then_cancelled_says_it_is_cancelled(client, live, frozen):  # noqa: F811
    """Taken off him (ops suspended him, then verified him again), then the customer
    cancelled: the drop and give-back of it say cancelled, not "no longer yours"."""
    pid, _, h = _app_partner(client)
    booking_id, leg_id, offer_id = _offered(client, h)
    assert client.post(f"{API}/offers/{offer_id}/accept", headers=h).status_code == 200
    with transaction() as s:
        s.get(PartnerProfile, pid).kyc_status = "suspended"  # type: ignore[union-attr]
    with transaction() as s:
        dispatch.block_partner(s, pid, Actor("ops", "1"))
    with transaction() as s:
        s.get(PartnerProfile, pid).kyc_status = "verified"  # type: ignore[union-attr]
    assert legs_of(booking_id)[0].partner_id != pid
    _cancel(booking_id)
    for path, body in (("drop", {"otp": "1234"}), ("give-back", None)):
        r = client.post(f"{API}/legs/{leg_id}/{path}", headers=h, json=body)
        assert r.status_code == 409, (path, r.get_json())
        assert r.get_json()["error"]["code"] == "job_cancelled", (path, r.get_json())


def test_a_delivered_job_and_one_not_his_are_answered_as_before(client, live,
                                                                frozen):  # noqa: F811
    """A job that is not his and never was: the bare 404 as ever."""
    _, _, h = _app_partner(client)
    booking_id, leg_id, _ = _offered(client, h)
    _cancel(booking_id)
    r = client.post(f"{API}/legs/{leg_id}/pickup", headers=h, json={"otp": "1234"})
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"


# --- 4. suspension in the duty history ---------------------------------------------------


def test_a_suspension_writes_a_duty_off_event(client, live, frozen):  # noqa: F811
    pid, _ = make_partner("Ramesh", LAXMIPUR, lang="en")  # on duty
    ops = sign_in(client, OPS)
    r = client.put(f"{API}/ops/partners/{pid}/kyc", headers=ops,
                   json={"status": "suspended", "note": "documents forged"})
    assert r.status_code == 200 and r.get_json()["on_duty"] is False, r.get_json()
    assert _duty_events(pid) == ["duty_off"]
    # Run again (ops retry a take-back), nothing is written twice.
    with transaction() as s:
        dispatch.block_partner(s, pid, Actor("ops", "1"))
    assert _duty_events(pid) == ["duty_off"]


def test_a_suspension_of_one_off_duty_writes_no_duty_event(client, live,
                                                           frozen):  # noqa: F811
    pid, _ = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    with transaction() as s:
        s.get(PartnerProfile, pid).kyc_status = "suspended"  # type: ignore[union-attr]
    with transaction() as s:
        dispatch.block_partner(s, pid, Actor("ops", "1"))
    assert _duty_events(pid) == []

"""Session 36: the rider's side of dispatch (review HDISP).

1. PICK <job> <code> by SMS for a job the customer cancelled said "You have no job N" (or,
   the job first, "You have no job for this now"), as if he had typed a wrong number: it
   says job N is cancelled and not to go, in his language. CANCEL N and a code alone too.
2. An app rider's ON by SMS said "Job offers will come by SMS": they appear in his app.
3. Ops' PUT .../app answered without saying the change put the partner OFF duty
   (made SMS-only after STOP): went_off_duty, and the operator's message, say it now.
4. Made SMS-only with his home Point closed, a rider stayed on duty placed at no Point,
   told nothing, and ops read he would be offered jobs by SMS at his home Point. As when
   his Point closes under him (admin.close_point): he stays on duty and is told by SMS
   that no offer can reach him and whom to call; the answer says so (placed_nowhere).

Real PostgreSQL and Redis; time frozen.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.dispatch_models import DispatchOffer, PartnerEvent
from core.adapters.models import Booking, Leg, OutboxMessage, PartnerProfile, Person
from core.config import get_settings
from core.domain.booking import Actor
from core.services import admin, dispatch, partner_profile, payments
from tests.conftest import run_jobs
from tests.test_api import sign_in
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    OPS,
    bodies_to,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    make_point,
    paid_booking,
    sms,
    start,
)

pytestmark = pytest.mark.db

API = "/api/v1"


def _cancel(booking_id: int) -> None:
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None
        payments.cancel_booking(s, booking, Actor("customer", "1"),
                                "customer cancelled on whatsapp")


def _partner(pid: int) -> PartnerProfile:
    with transaction() as s:
        p = s.get(PartnerProfile, pid)
        assert p is not None
        return p


def _taken(client, lang: str) -> tuple[int, str, int, str]:
    """Ramesh (SMS only) took the job and its pickup code went to the customer: (booking,
    his phone, the job, the code)."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang=lang)
    booking_id = paid_booking()
    start(booking_id)
    assert sms(client, phone, "1")
    run_jobs()
    (leg,) = legs_of(booking_id)
    return booking_id, phone, leg.id, last_code(CUSTOMER)


def _taken_then_cancelled(client, lang: str) -> tuple[str, int, str]:
    booking_id, phone, job, code = _taken(client, lang)
    _cancel(booking_id)
    run_jobs()
    assert legs_of(booking_id)[0].status == "cancelled"
    return phone, job, code


def _failures(job: int) -> int:
    with transaction() as s:
        leg = s.get(Leg, job)
        assert leg is not None
        return leg.otp_failures


# --- 1. PICK of a cancelled job ----------------------------------------------------------


@pytest.mark.parametrize("order", ["job_first", "code_first", "code_alone"])
@pytest.mark.parametrize("lang", ["en", "hi"])
def test_pick_of_a_cancelled_job_says_it_is_cancelled(client, live, frozen,  # noqa: F811
                                                      lang, order):
    """Before: "You have no job 1. Send STATUS." (code first), "You have no job for this
    now" (job first: "PICK 1 4821" read 1 as a code typed short), as to a wrong number."""
    phone, job, code = _taken_then_cancelled(client, lang)
    body = {"job_first": f"PICK {job} {code}", "code_first": f"PICK {code} {job}",
            "code_alone": f"PICK {code}"}[order]
    assert sms(client, phone, body) == [i18n.t("dispatch.job_cancelled", lang, job=job)]
    assert _failures(job) == 0  # no try counted


def test_cancel_and_drop_of_a_cancelled_job_say_it_is_cancelled(client, live,
                                                                 frozen):  # noqa: F811
    phone, job, code = _taken_then_cancelled(client, "en")
    said = i18n.t("dispatch.job_cancelled", "en", job=job)
    assert sms(client, phone, f"CANCEL {job}") == [said]
    assert sms(client, phone, f"DROP {code} {job}") == [said]


def test_a_job_taken_back_then_cancelled_is_said_cancelled(client, live,
                                                           frozen):  # noqa: F811
    """Taken off him (ops suspended him, then verified him again), then cancelled: his
    PICK naming it says cancelled, as the app's pickup does (test_partner_app_s35)."""
    booking_id, phone, job, code = _taken(client, "en")
    pid = _partner_of(phone)
    with transaction() as s:
        s.get(PartnerProfile, pid).kyc_status = "suspended"  # type: ignore[union-attr]
    with transaction() as s:
        dispatch.block_partner(s, pid, Actor("ops", "1"))
    with transaction() as s:
        s.get(PartnerProfile, pid).kyc_status = "verified"  # type: ignore[union-attr]
    _cancel(booking_id)
    assert sms(client, phone, f"PICK {code} {job}") == [
        i18n.t("dispatch.job_cancelled", "en", job=job)]


def _partner_of(phone: str) -> int:
    with transaction() as s:
        pid = s.scalar(select(PartnerProfile.id).join(
            Person, Person.id == PartnerProfile.person_id).where(Person.phone == phone))
        assert pid is not None
        return pid


def test_a_wrong_number_and_another_riders_cancelled_job_are_still_no_job(
        client, live, frozen):  # noqa: F811
    """Only his own jobs: a number that is no job of his, or a job cancelled that was
    never his (only offered to him, or another rider's), is answered as before."""
    phone, job, code = _taken_then_cancelled(client, "en")
    assert sms(client, phone, f"PICK {code} {job + 50}") == [
        i18n.t("dispatch.no_such_job", "en", job=str(job + 50))]
    # Suresh was never given the job: its number names nothing of his.
    _, suresh = make_partner("Suresh", LAXMIPUR, lang="en")
    assert sms(client, suresh, f"PICK {code} {job}") == [
        i18n.t("dispatch.no_such_job", "en", job=str(job))]
    assert sms(client, suresh, f"PICK {code}") == [i18n.t("dispatch.no_job", "en")]


def test_a_live_job_is_picked_up_as_ever_beside_a_cancelled_one(client, live,
                                                                frozen):  # noqa: F811
    booking_id, phone, job, code = _taken(client, "en")
    assert "picked up" in sms(client, phone, f"PICK {code} {job}")[0]


# --- 2. ON by SMS from an app rider ------------------------------------------------------


@pytest.mark.parametrize("lang", ["en", "hi"])
def test_an_app_riders_on_by_sms_says_offers_appear_in_the_app(client, live, frozen,  # noqa: F811
                                                               lang):
    """Before: "You are ON duty. Job offers will come by SMS." to a rider with the app."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang=lang, has_app=True, on_duty=False)
    assert sms(client, phone, "ON") == [i18n.t("dispatch.app.duty_on", lang)]
    # An SMS-only rider still hears that offers come by SMS.
    _, sms_only = make_partner("Suresh", LAXMIPUR, lang=lang, on_duty=False)
    assert sms(client, sms_only, "ON") == [i18n.t("dispatch.duty_on", lang)]


def test_the_apps_on_is_unchanged(client, live, frozen):  # noqa: F811
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="hi", has_app=True, on_duty=False)
    h = sign_in(client, phone)
    r = client.put(f"{API}/partners/me/duty", headers=h, json={"on_duty": True})
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"on_duty": True, "message": i18n.t("dispatch.app.duty_on", "hi")}


def test_a_late_answer_still_undoes_an_app_riders_automatic_off(clean_db, frozen):  # noqa: F811
    """_back_on_after_late_answer read set_duty's ON by its key: an app rider's ON has
    its own key now, and still counts as on."""
    pid, _ = make_partner("Ramesh", LAXMIPUR, lang="en", has_app=True, on_duty=False)
    with transaction() as s:
        p = s.get(PartnerProfile, pid)
        assert p is not None
        assert dispatch.set_duty(s, p, True).key in dispatch.DUTY_ON_KEYS


# --- 3. the ops API says the change put him OFF ------------------------------------------


def test_ops_app_answer_says_the_partner_went_off_duty(client, live, frozen):  # noqa: F811
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en", has_app=True)  # on duty
    assert sms(client, phone, "STOP") == []
    ops = sign_in(client, OPS)
    r = client.put(f"{API}/ops/partners/{pid}/app", headers=ops,
                   json={"app": False, "note": "phone broken"})
    assert r.status_code == 200, r.get_json()
    row = r.get_json()
    assert (row["has_app"], row["on_duty"], row["changed"]) == (False, False, True), row
    assert row["went_off_duty"] is True and row["placed_nowhere"] is False, row
    assert "OFF duty" in row["message"] and "START" in row["message"], row
    assert phone not in row["message"]
    # The same again: nothing changed, nothing more said of his duty.
    again = client.put(f"{API}/ops/partners/{pid}/app", headers=ops, json={"app": False})
    assert again.status_code == 200
    assert (again.get_json()["changed"], again.get_json()["went_off_duty"]) == (False, False)


def test_ops_app_answer_of_a_plain_change(client, live, frozen):  # noqa: F811
    pid, _ = make_partner("Ramesh", LAXMIPUR, lang="en")
    ops = sign_in(client, OPS)
    r = client.put(f"{API}/ops/partners/{pid}/app", headers=ops, json={"app": True})
    assert r.status_code == 200, r.get_json()
    row = r.get_json()
    assert (row["has_app"], row["on_duty"], row["went_off_duty"], row["placed_nowhere"]) \
        == (True, True, False, False), row
    assert "has the app now" in row["message"]
    r = client.put(f"{API}/ops/partners/999999/app", headers=ops, json={"app": True})
    assert r.status_code == 404


def test_the_api_document_describes_the_answer(client):
    doc = client.get(f"{API}/openapi.json").get_json()
    put = doc["paths"]["/api/v1/ops/partners/{partner_id}/app"]["put"]
    schema = put["responses"]["200"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    for field in ("on_duty", "went_off_duty", "placed_nowhere", "message", "changed"):
        assert field in schema["properties"], field
    assert "OFF" in schema["properties"]["went_off_duty"]["description"]


# --- 4. made SMS-only with his home Point closed -----------------------------------------


def _closed_home_app_rider(on_duty: bool = True) -> tuple[int, str]:
    home = make_point("Laxmipur", *LAXMIPUR)
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="hi", has_app=True,
                              on_duty=on_duty, point_id=home)
    with transaction() as s:
        admin.close_point(s, home, actor="test")
    return pid, phone


def _point_closed_sms(phone: str) -> list[str]:
    said = i18n.t("dispatch.point_closed", "hi", ops_phone=get_settings().ops_phone)
    return [b for b in bodies_to(phone) if b == said]


def test_made_sms_only_with_his_home_closed_he_is_told_and_ops_read_it(
        client, live, frozen):  # noqa: F811
    """Before: on duty, placed nowhere, told nothing; ops read "found at their home
    Point, offered jobs by SMS while on duty"."""
    pid, phone = _closed_home_app_rider()
    with transaction() as s:  # the app rider was found by his app, so not told at the close
        assert not dispatch.placed_nowhere(s, s.get(PartnerProfile, pid))  # type: ignore[arg-type]
    run_jobs()
    assert _point_closed_sms(phone) == []
    ops = sign_in(client, OPS)
    r = client.put(f"{API}/ops/partners/{pid}/app", headers=ops, json={"app": False})
    assert r.status_code == 200, r.get_json()
    run_jobs()
    assert len(_point_closed_sms(phone)) == 1, bodies_to(phone)  # in his language, once
    row = r.get_json()
    assert (row["on_duty"], row["went_off_duty"], row["placed_nowhere"]) == (True, False, True)
    assert "home-point" in row["message"] and "offered jobs by SMS" not in row["message"]
    with transaction() as s:
        (entry,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "partner.app"))
        assert "no Point" in entry.details["duty"]
        assert s.scalar(select(PartnerEvent.id).where(PartnerEvent.partner_id == pid)) is None
    # STATUS says the same, as after a close.
    assert sms(client, phone, "STATUS") == [
        i18n.t("dispatch.duty_no_point", "hi", ops_phone=get_settings().ops_phone)]
    # A new home Point: found there at once.
    new = make_point("Bettiah", LAXMIPUR[0] + 0.01, LAXMIPUR[1])
    with transaction() as s:
        admin.set_home_point(s, pid, new, actor="test")
    booking_id = paid_booking()
    start(booking_id)
    with transaction() as s:
        assert s.scalar(select(DispatchOffer.id).where(DispatchOffer.partner_id == pid))


def test_made_sms_only_off_duty_with_his_home_closed_hears_nothing(
        client, live, frozen):  # noqa: F811
    pid, phone = _closed_home_app_rider(on_duty=False)
    with transaction() as s:
        out = partner_profile.set_has_app(s, pid, False, actor="ops:1")
    assert out.changed and out.placed_nowhere and not out.went_off_duty
    assert "ON is refused" in out.message
    run_jobs()
    assert _point_closed_sms(phone) == []
    with transaction() as s:
        assert s.scalar(select(OutboxMessage.id).where(
            OutboxMessage.dedupe_key.like(f"partner-{pid}-no-app-%"))) is None
    assert not _partner(pid).on_duty

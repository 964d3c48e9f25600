"""A rider's day with the partner app and SMS (session 30): answers that were wrong for
a rider who did what was asked, only late or at the same time as something else."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import clock, i18n
from core.config import get_settings
from core.domain import dispatch as rules
from tests.conftest import release_scheduled, run_jobs
from tests.test_api import sign_in
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    OPS,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    offers,
    paid_booking,
    sms,
    start,
)
from tests.test_missed_offers import missed_setting, near_and_far, on_duty  # noqa: F401

pytestmark = pytest.mark.db

API = "/api/v1"


def _job_answered_late(client, k: int, near: int, near_phone: str, far_phone: str, *,
                       late: str | None, timer_first: bool) -> int:
    """Job ``k`` offered first to the near partner, who lets its time and grace pass;
    ``late``: then answers anyway ("sms": "1 <job>", "sms-no": "2 <job>", "sms-bare": "1";
    "app": the app's accept), after the offer's timeout ran (``timer_first``) or before it
    could. The far partner takes it."""
    t = k * 300
    freeze_at(t)
    booking_id = paid_booking()
    start(booking_id)
    leg_id = legs_of(booking_id)[0].id
    first = offers(leg_id)[0]
    assert first.partner_id == near
    freeze_at(t + 121)  # the offer's 90 s and its 30 s grace are over
    if timer_first or late is None:
        release_scheduled(timedelta(seconds=121))
        run_jobs()
        assert offers(leg_id)[0].status == rules.OfferStatus.EXPIRED.value
    if late in ("sms", "sms-no"):
        said = "1" if late == "sms" else "2"
        assert f"{leg_id}" in sms(client, near_phone, f"{said} {leg_id}")[0]
    elif late == "sms-bare":  # "1" alone, the offer's timeout just run: no offer open
        assert sms(client, near_phone, "1") == [i18n.t("dispatch.no_offer", "en")]
    elif late == "app":
        r = client.post(f"{API}/offers/{first.id}/accept", headers=sign_in(client, near_phone))
        assert (r.status_code, r.get_json()["error"]["code"]) == (409, "offer_expired")
    if not timer_first:
        release_scheduled(timedelta(seconds=121))
        run_jobs()
    assert offers(leg_id)[0].status == rules.OfferStatus.EXPIRED.value
    if legs_of(booking_id)[0].status == "offering":
        sms(client, far_phone, "1")
    assert legs_of(booking_id)[0].status == "assigned"
    return leg_id


@pytest.mark.parametrize(("late", "timer_first"), [
    ("sms", True), ("app", True), ("app", False), ("sms", False), ("sms-no", True),
    ("sms-bare", True)])
def test_a_late_yes_is_an_answer_not_a_missed_offer(client, live, frozen,  # noqa: F811
                                                     missed_setting, late,  # noqa: F811
                                                     timer_first):
    """A rider's "1" (or the app's accept) a little after the offer's grace: too late for
    the job, which is answered "expired", but the rider answered. It was recorded as an
    offer left unanswered, and two misses later the rider was put OFF duty for "3 job
    offers in a row" they had not ignored."""
    near, near_phone, far_phone = near_and_far()
    _job_answered_late(client, 1, near, near_phone, far_phone, late=None, timer_first=True)
    _job_answered_late(client, 2, near, near_phone, far_phone, late=late,
                       timer_first=timer_first)
    _job_answered_late(client, 3, near, near_phone, far_phone, late=None, timer_first=True)
    assert on_duty(near)  # job 1 and job 3 missed; job 2 answered, late: no run of 3
    _job_answered_late(client, 4, near, near_phone, far_phone, late=None, timer_first=True)
    _job_answered_late(client, 5, near, near_phone, far_phone, late=None, timer_first=True)
    assert not on_duty(near)  # three in a row since the late answer


# --- a job no longer theirs, tapped on a screen still open ---------------------------------


def _app_rider_with_a_job(client, lang: str = "en") -> tuple[int, str, dict[str, str], int]:
    """An app rider who took a job by the app and has not picked it up: (partner id, phone,
    headers, leg id)."""
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang=lang, has_app=True)
    headers = sign_in(client, phone)
    assert client.put(f"{API}/partners/me/location", headers=headers, json={
        "lat": LAXMIPUR[0], "lng": LAXMIPUR[1], "accuracy_m": 10,
        "timestamp": clock.now().isoformat()}).status_code == 200
    booking_id = paid_booking()
    start(booking_id)
    (offer,) = client.get(f"{API}/partners/me/offers", headers=headers).get_json()
    r = client.post(f"{API}/offers/{offer['id']}/accept", headers=headers)
    assert r.status_code == 200, r.get_json()
    return pid, phone, headers, offer["leg_id"]


def test_a_pickup_by_a_rider_suspended_since_says_they_cannot_take_jobs(
        client, live, frozen):  # noqa: F811
    """Ops suspend a rider with a job taken, not picked up: the suspension takes it back.
    At the sender's door the app, still signed in, sends the pickup with the right code.
    It was answered 404 "no such job" (in English, whatever the rider's language), so the
    rider thinks the app broken; PICK by SMS answers that they cannot take jobs now and
    whom to call. The app now says the same, 403 ``duty_blocked``, in their language; and
    to a give-back of it, that the job is no longer theirs (404, in their words too)."""
    pid, phone, headers, leg_id = _app_rider_with_a_job(client, lang="hi")
    code = last_code(CUSTOMER, "पार्सल उठाने")
    r = client.put(f"{API}/ops/partners/{pid}/kyc", headers=sign_in(client, OPS),
                   json={"status": "suspended", "note": "documents expired"})
    assert r.status_code == 200, r.get_json()
    # Since session 35 a suspension also signs him out (a stolen phone's token must not
    # come back with a re-verification): the app asks him to sign in again, and then
    # hears why he cannot take the job.
    r = client.post(f"{API}/legs/{leg_id}/pickup", headers=headers, json={"otp": code})
    assert r.status_code == 401, r.get_json()
    headers = sign_in(client, phone)
    r = client.post(f"{API}/legs/{leg_id}/pickup", headers=headers, json={"otp": code})
    assert r.status_code == 403, r.get_json()
    assert r.get_json()["error"] == {
        "code": "duty_blocked",
        "message": i18n.t("dispatch.duty_blocked", "hi", ops_phone=get_settings().ops_phone)}
    # Giving it back, the job the suspension took: no longer theirs, nothing to do.
    r = client.post(f"{API}/legs/{leg_id}/give-back", headers=headers)
    assert r.status_code == 404, r.get_json()
    assert r.get_json()["error"] == {
        "code": "not_found", "message": i18n.t("dispatch.app.no_such_job", "hi", job=leg_id)}


def test_a_job_given_back_is_said_no_longer_theirs_in_their_words(
        client, live, frozen):  # noqa: F811
    """A rider gives a job back (the app's give-back; or CANCEL by SMS), and the pickup
    screen, still open on a second phone or after a lost answer, sends the pickup. Dispatch
    says of a job taken off a rider "Job N is no longer yours. You need not do anything
    for it." in their language; the app's own check answered "no such job" in English
    first. Still 404 ``not_found``; a leg never theirs stays the bare 404."""
    _, _, headers, leg_id = _app_rider_with_a_job(client, lang="hi")
    assert client.post(f"{API}/legs/{leg_id}/give-back", headers=headers).status_code == 200
    for kind in ("pickup", "drop"):
        r = client.post(f"{API}/legs/{leg_id}/{kind}", headers=headers, json={"otp": "1234"})
        assert r.status_code == 404, r.get_json()
        assert r.get_json()["error"] == {
            "code": "not_found", "message": i18n.t("dispatch.app.no_such_job", "hi", job=leg_id)}
    r = client.post(f"{API}/legs/{leg_id + 1000}/pickup", headers=headers, json={"otp": "1234"})
    assert (r.status_code, r.get_json()["error"]["code"]) == (404, "not_found")
    # A photo of it, from the same open screen, is told so too (it said "no such job").
    photo = {**headers, "Content-Type": "image/jpeg"}
    r = client.post(f"{API}/legs/{leg_id}/photo", headers=photo, data=b"\xff\xd8\xff jpeg")
    assert r.status_code == 404, r.get_json()
    assert r.get_json()["error"] == {
        "code": "not_found", "message": i18n.t("dispatch.app.no_such_job", "hi", job=leg_id)}
    r = client.post(f"{API}/legs/{leg_id + 1000}/photo", headers=photo, data=b"\xff\xd8\xff")
    assert r.get_json()["error"] == {"code": "not_found", "message": "no such job"}


def test_a_job_named_hours_after_its_offer_closed_is_no_answer(client, live, frozen,  # noqa: F811
                                                               missed_setting):  # noqa: F811
    """A late answer counts only just after the offer closed (dispatch.ANSWERED_JUST_AFTER):
    a rider who ignored an offer, then named its job ("2 <job>") an hour later, would
    otherwise undo every miss this way and never be put OFF duty."""
    near, near_phone, far_phone = near_and_far()
    first = _job_answered_late(client, 1, near, near_phone, far_phone, late=None,
                               timer_first=True)
    freeze_at(300 + 121 + 3600)  # an hour after the first offer closed
    assert f"{first}" in sms(client, near_phone, f"2 {first}")[0]
    _job_answered_late(client, 14, near, near_phone, far_phone, late=None, timer_first=True)
    _job_answered_late(client, 15, near, near_phone, far_phone, late=None, timer_first=True)
    assert not on_duty(near)  # three in a row: the hour-late "2" was no answer

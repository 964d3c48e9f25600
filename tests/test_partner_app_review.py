"""Review of the partner app's REST API (core/api/partner.py, core/services/partner_app.py
over core/services/dispatch.py) as the developer of a rider app for low-end phones on flaky
2G/3G would see it: retries after a lost answer, precise error codes, the SMS path and the
app used by one partner."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.dispatch_models import PodPhoto
from core.adapters.models import Booking
from core.domain.booking import Actor
from tests.test_api import sign_in
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
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

pytestmark = pytest.mark.db

API = "/api/v1"
PICK_MARK = "पार्सल उठाने"  # the sender's pickup-code SMS (Hindi customer)
JPEG = b"\xff\xd8\xff\xe0" + b"\x01" * 2000


def _fix(at_seconds_from_now: float = 0, where=LAXMIPUR) -> dict:
    from datetime import timedelta

    return {"lat": where[0], "lng": where[1], "accuracy_m": 10,
            "timestamp": (clock.now() + timedelta(seconds=at_seconds_from_now)).isoformat()}


def _put_fix(client, headers, fix: dict):
    return client.put(f"{API}/partners/me/location", headers=headers, json=fix)


def _app_partner(client, lang: str = "en") -> tuple[int, str, dict[str, str]]:
    """An app partner at Laxmipur, signed in, with a fresh position."""
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang=lang, has_app=True)
    headers = sign_in(client, phone)
    r = _put_fix(client, headers, _fix())
    assert r.status_code == 200, r.get_json()
    return pid, phone, headers


def _offered(client, headers) -> tuple[int, int, int]:
    """A paid booking offered to the signed-in app partner: (booking, leg, offer id)."""
    booking_id = paid_booking()
    start(booking_id)
    got = client.get(f"{API}/partners/me/offers", headers=headers).get_json()
    assert len(got) == 1, got
    return booking_id, got[0]["leg_id"], got[0]["id"]


# --- location ----------------------------------------------------------------------------


def test_a_position_sent_again_after_its_answer_was_lost_is_accepted(client, live,
                                                                     frozen):  # noqa: F811
    """The app PUTs a fix; the 200 is lost on 2G and the app sends the very same PUT again
    (PUT is idempotent by HTTP's rules). It was refused 422 ``out_of_order`` "an equal or
    newer position was already received", which an app logs as a bug or keeps retrying."""
    _, _, headers = _app_partner(client)
    freeze_at(10)
    fix = _fix(-2)
    assert _put_fix(client, headers, fix).status_code == 200
    freeze_at(20)  # the retry, ten seconds on
    again = _put_fix(client, headers, fix)
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["lat"] == fix["lat"]
    # Another position with that same time is no retry: still refused.
    other = {**fix, "lng": fix["lng"] + 0.001}
    refused = _put_fix(client, headers, other)
    assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "out_of_order"


def test_an_sms_partner_who_sent_one_app_position_is_still_found_at_home(client, live,
                                                                         frozen):  # noqa: F811
    """Ramesh works by SMS (no app on his profile: he is found at his home Point while ON).
    He tried the app once and it sent a position. An hour later that position is stale,
    and he was found nowhere: the position put him among app partners
    (geo_index.update_location adds to ``dispatch:geo:has_app``, which the home rebuild
    never takes anyone out of), and app partners are skipped at home. On duty, waiting
    for SMS offers, he got none."""
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en")  # has_app=False, on duty
    headers = sign_in(client, phone)
    assert _put_fix(client, headers, _fix()).status_code == 200
    freeze_at(3600)
    booking_id = paid_booking()
    start(booking_id)
    assert [o.partner_id for o in offers(legs_of(booking_id)[0].id)] == [pid]


def test_an_sms_partner_whose_app_position_came_after_the_home_rebuild_is_still_found(
        client, live, frozen):  # noqa: F811
    """The same, with the home set rebuilt before his position came (a search that
    morning, the job declined): until the next rebuild the position alone had put him
    among app partners, skipped at home."""
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en")  # has_app=False, on duty
    morning = paid_booking()
    start(morning)  # the search rebuilds the home set and finds him there
    assert [o.partner_id for o in offers(legs_of(morning)[0].id)] == [pid]
    sms(client, phone, "2")
    headers = sign_in(client, phone)
    assert _put_fix(client, headers, _fix()).status_code == 200
    freeze_at(3600)
    booking_id = paid_booking()
    start(booking_id)
    assert [o.partner_id for o in offers(legs_of(booking_id)[0].id)] == [pid]


def test_the_home_rebuild_takes_the_app_flag_from_the_profiles(clean_db):
    """The app flag in Redis follows the profiles at each rebuild: one left over (the
    flag turned off in the profile, or set by a position under the old rule) no longer
    hides an SMS partner from dispatch for good."""
    from core.adapters import geo_index

    now = clock.now()
    geo_index.place_at_home(5, *LAXMIPUR, has_app=True)
    geo_index.invalidate_homes()
    assert geo_index.ensure_homes(lambda: [(5, *LAXMIPUR, False)])
    hits = geo_index.nearby(*LAXMIPUR, 3, max_age_s=900, now=now)
    assert [(h.partner_id, h.source) for h in hits] == [(5, "home")]


# --- offers ------------------------------------------------------------------------------


def test_accepting_an_offer_whose_booking_was_cancelled_is_a_precise_409(client, live,
                                                                         frozen):  # noqa: F811
    """The customer cancels while the offer is on the rider's screen; his accept answered
    409 ``conflict`` (the fallback for a reply partner.py does not know), a code that says
    nothing the app can act on. It is the offer being closed (the job cancelled)."""
    from core.services import payments

    _, _, headers = _app_partner(client)
    booking_id, _, offer_id = _offered(client, headers)
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None
        payments.cancel_booking(s, booking, Actor("customer", "1"),
                                "customer cancelled on whatsapp")
    r = client.post(f"{API}/offers/{offer_id}/accept", headers=headers)
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["error"]["code"] in ("job_cancelled", "offer_closed"), r.get_json()


def test_a_decline_sent_again_after_its_answer_was_lost_is_answered_as_declined(
        client, live, frozen):  # noqa: F811
    """The app declines; the answer is lost and it sends the decline again. Over SMS a no
    said twice ("2 57", "2 57") is answered "OK, job 57 skipped." both times; the app's
    retry got 409 ``offer_closed`` with "this offer is no longer open", in English to a
    Hindi-speaking rider, an error dialog for what worked."""
    _, _, headers = _app_partner(client, lang="hi")
    _, leg_id, offer_id = _offered(client, headers)
    first = client.post(f"{API}/offers/{offer_id}/decline", headers=headers)
    assert first.status_code == 200, first.get_json()
    again = client.post(f"{API}/offers/{offer_id}/decline", headers=headers)
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["result"] == "declined"
    assert again.get_json()["message"] == i18n.t("dispatch.declined", "hi", job=str(leg_id))


# --- pickup / drop -----------------------------------------------------------------------


def test_a_wrong_code_sent_again_by_the_apps_retry_costs_one_try(client, live,
                                                                  frozen):  # noqa: F811
    """The rider mistypes the pickup code; the 422 is lost and the app sends the same
    request again. Both counted: one typo cost two of the five tries, and two typos with
    the app's retries lock the job (ops called, the customer waits)."""
    _, _, headers = _app_partner(client)
    booking_id, leg_id, offer_id = _offered(client, headers)
    assert client.post(f"{API}/offers/{offer_id}/accept", headers=headers).status_code == 200
    right = last_code(CUSTOMER, PICK_MARK)
    wrong = "1111" if right != "1111" else "2222"
    first = client.post(f"{API}/legs/{leg_id}/pickup", headers=headers, json={"otp": wrong})
    assert first.status_code == 422 and first.get_json()["error"]["code"] == "otp_wrong"
    freeze_at(15)
    again = client.post(f"{API}/legs/{leg_id}/pickup", headers=headers, json={"otp": wrong})
    assert again.status_code == 422 and again.get_json()["error"]["code"] == "otp_wrong"
    assert legs_of(booking_id)[0].otp_failures == 1
    assert again.get_json()["error"]["message"] == first.get_json()["error"]["message"]


# --- jobs --------------------------------------------------------------------------------


def test_a_job_taken_by_sms_is_listed_in_the_app(client, live, frozen):  # noqa: F811
    """A rider who uses both takes a job by SMS ("1"), or the app was killed after its
    accept (low-end phones do that): the app has no route that lists his jobs (only open
    offers, and earnings), so it cannot show the job nor its leg id to confirm the pickup
    with. GET /partners/me/jobs lists the jobs in hand."""
    _, phone, headers = _app_partner(client)
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    leg = legs_of(booking_id)[0]
    assert leg.status == "assigned"
    r = client.get(f"{API}/partners/me/jobs", headers=headers)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    items = body["items"] if isinstance(body, dict) else body
    assert [(j["leg_id"], j["leg_status"]) for j in items] == [(leg.id, "assigned")]
    assert items[0]["payout_paise"] == leg.payout_paise and items[0]["pickup"]
    doc = client.get(f"{API}/openapi.json").get_json()
    assert "get" in doc["paths"]["/api/v1/partners/me/jobs"]


# --- photo -------------------------------------------------------------------------------


def test_a_photo_for_a_job_not_mine_is_404_not_found_as_on_the_other_leg_routes(
        client, live, frozen):  # noqa: F811
    """POST /legs/<id>/pickup and /drop answer a leg that is not the rider's 404
    ``not_found``; /legs/<id>/photo answered 404 ``unknown_job``: one app, two codes for
    the same thing."""
    _, _, headers = _app_partner(client)
    for route in ("pickup", "drop"):
        r = client.post(f"{API}/legs/987654/{route}", headers=headers, json={"otp": "1234"})
        assert (r.status_code, r.get_json()["error"]["code"]) == (404, "not_found")
    r = client.post(f"{API}/legs/987654/photo", data=JPEG,
                    headers={**headers, "Content-Type": "image/jpeg"})
    assert (r.status_code, r.get_json()["error"]["code"]) == (404, "not_found")


def test_a_photo_uploaded_again_after_a_lost_answer_is_kept_once(client, live, frozen,  # noqa: F811
                                                                tmp_path, monkeypatch):
    """The upload's 201 is lost on a weak network and the app sends the same photo
    again: a second proof-of-delivery row for the same bytes (ops see the photo twice,
    each retry one more)."""
    from core.adapters import storage

    monkeypatch.setenv("POD_LOCAL_DIR", str(tmp_path))
    storage.reset()
    try:
        _, _, headers = _app_partner(client)
        booking_id, leg_id, offer_id = _offered(client, headers)
        assert client.post(f"{API}/offers/{offer_id}/accept",
                           headers=headers).status_code == 200
        r = client.post(f"{API}/legs/{leg_id}/pickup", headers=headers,
                        json={"otp": last_code(CUSTOMER, PICK_MARK)})
        assert r.status_code == 200, r.get_json()
        for _ in range(2):
            r = client.post(f"{API}/legs/{leg_id}/photo", data=JPEG,
                            headers={**headers, "Content-Type": "image/jpeg"})
            assert r.status_code in (200, 201), r.get_json()
        with transaction() as s:
            kept = s.scalar(select(func.count()).select_from(PodPhoto)
                            .where(PodPhoto.leg_id == leg_id))
        assert kept == 1
    finally:
        storage.reset()

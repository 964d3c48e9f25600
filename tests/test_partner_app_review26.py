"""Review r5 of the partner (rider) app's REST API (core/api/partner.py over
core/services/partner_app.py and core/services/dispatch.py), as a rider on a low-end phone
on 2G would use it: answers lost and requests sent again, a tap on a stale screen, going
off duty with a job in hand, an app that keeps uploading photos; and earnings beside the
ledger.

Real PostgreSQL and Redis, the live app; time frozen where the dispatch fixtures are used.
"""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import func, select

from core.adapters.db import transaction
from core.adapters.dispatch_models import PodPhoto
from core.adapters.models import PartnerProfile, Person
from core.services import ledger
from tests.test_api import sign_in
from tests.test_dispatch import (
    CUSTOMER,
    frozen,  # noqa: F401  (fixture)
    last_code,
)
from tests.test_partner_app_review import PICK_MARK, _app_partner, _offered
from tests.test_payments_support import run
from tests.test_reversed_payouts_ops import OPERATOR, resolve, reversed_leg

pytestmark = pytest.mark.db

API = "/api/v1"


def _strings(value: object) -> list[str]:
    """Every text in a JSON answer (whatever fields a fix adds)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _ints(value: object) -> list[int]:
    """Every whole number in a JSON answer (not true/false)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, dict):
        return [i for v in value.values() for i in _ints(v)]
    if isinstance(value, list):
        return [i for v in value for i in _ints(v)]
    return []


def test_a_rider_whose_accept_answer_was_lost_still_learns_whom_to_collect_from(
        client, live, frozen):  # noqa: F811
    """The rider taps Accept; the job is his, and the 200 says where and whom to collect
    from: "Pick up at Laxmipur, phone +91...". On 2G that answer is lost and the app
    sends the accept again: 409 ``already_accepted`` "Job 1 is already yours.", no phone.
    GET /partners/me/jobs has no phone either, and no SMS carries it to an app rider: he
    rides to the pickup without the sender's number (the retry of a decline, by
    contrast, is answered as the first time)."""
    _, _, headers = _app_partner(client)
    _, _, offer_id = _offered(client, headers)
    first = client.post(f"{API}/offers/{offer_id}/accept", headers=headers)
    assert first.status_code == 200, first.get_json()
    assert CUSTOMER in first.get_json()["message"]  # the phone the answer carried

    again = client.post(f"{API}/offers/{offer_id}/accept", headers=headers)  # the retry
    jobs = client.get(f"{API}/partners/me/jobs", headers=headers)
    assert jobs.status_code == 200
    seen = _strings(again.get_json()) + _strings(jobs.get_json())
    assert any(CUSTOMER in s for s in seen), (again.status_code, again.get_json(),
                                              jobs.get_json())


def test_declining_a_job_already_taken_does_not_tell_the_app_rider_to_send_an_sms(
        client, live, frozen):  # noqa: F811
    """The rider accepted (his screen still shows the offer: the answer was slow) and then
    taps Decline: he wants to give the job back. The app answers 409 with the SMS text
    "To give back job 1, send CANCEL 1." - a command the app has not; the app's own way
    is the job's give-back (POST /legs/{id}/give-back), as the other SMS-worded replies
    are re-worded for the app (APP_TEXT)."""
    _, _, headers = _app_partner(client, lang="en")
    _, leg_id, offer_id = _offered(client, headers)
    assert client.post(f"{API}/offers/{offer_id}/accept", headers=headers).status_code == 200
    r = client.post(f"{API}/offers/{offer_id}/decline", headers=headers)
    assert r.status_code == 409, r.get_json()
    message = r.get_json()["error"]["message"]
    assert f"CANCEL {leg_id}" not in message, message


def test_going_off_duty_in_the_app_with_a_job_to_collect_says_the_job_is_still_theirs(
        client, live, frozen):  # noqa: F811
    """Over SMS, OFF with a job taken is answered "You are OFF duty: no new offers. Job 1
    is still yours: go for the pickup, or ...". In the app PUT /partners/me/duty answers
    only ``{"on_duty": false}``: the rider who stops for the day believes he is done, the
    sender waits, and the job is taken back later "not picked up in time", counted
    against him. The reply dispatch.set_duty worked out is thrown away."""
    _, _, headers = _app_partner(client, lang="en")
    _, leg_id, offer_id = _offered(client, headers)
    assert client.post(f"{API}/offers/{offer_id}/accept", headers=headers).status_code == 200
    r = client.put(f"{API}/partners/me/duty", headers=headers, json={"on_duty": False})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["on_duty"] is False
    named = re.compile(rf"(?<!\d){leg_id}(?!\d)")
    assert any(named.search(s) for s in _strings(body)) or leg_id in _ints(body), body


def test_photos_of_one_job_are_bounded(client, live, frozen, tmp_path,  # noqa: F811
                                       monkeypatch):
    """POST /legs/{id}/photo keeps every different photo of a job in hand: a row and a
    file of up to POD_MAX_BYTES (5 MB) each, with no bound per job and no rate limit (the
    WhatsApp path is bounded by the inbound rate limit). An app whose retry loop
    re-encodes the picture, or a stolen rider token, fills the photo store: 60 uploads
    were 60 files kept."""
    from core.adapters import storage

    monkeypatch.setenv("POD_LOCAL_DIR", str(tmp_path))
    storage.reset()
    try:
        _, _, headers = _app_partner(client)
        _, leg_id, offer_id = _offered(client, headers)
        assert client.post(f"{API}/offers/{offer_id}/accept",
                           headers=headers).status_code == 200
        r = client.post(f"{API}/legs/{leg_id}/pickup", headers=headers,
                        json={"otp": last_code(CUSTOMER, PICK_MARK)})
        assert r.status_code == 200, r.get_json()
        answers = []
        for i in range(60):
            photo = b"\xff\xd8\xff\xe0" + i.to_bytes(2, "big") * 1000
            r = client.post(f"{API}/legs/{leg_id}/photo", data=photo,
                            headers={**headers, "Content-Type": "image/jpeg"})
            answers.append(r.status_code)
            assert r.status_code < 500 and r.is_json, r.get_data(as_text=True)
        with transaction() as s:
            kept = s.scalar(select(func.count()).select_from(PodPhoto)
                            .where(PodPhoto.leg_id == leg_id))
        files = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert kept <= 20 and len(files) <= 20, (kept, len(files), json.dumps(answers))
    finally:
        storage.reset()


def test_earnings_leave_out_a_payout_taken_back_and_given_to_the_customer(live, client):
    """A rider's payout for a delivered job was reversed at the gateway (the money left
    his bank account) and ops gave it to the customer as a refund: the ledger has the
    whole payout out of the rider's hands (transfer_reversed, then reversal_refund_asked
    from the booking's reversed payouts; nothing owed to him). GET
    /partners/me/earnings still counts the leg's full payout as earned, today and in
    total (partner_app.earnings sums Leg.payout_paise of delivered legs and reads the
    ledger only for cancellation fees): the rider is shown money he never got."""
    ops = sign_in(client, OPERATOR, role="ops")
    partner_id, bid, leg_id, t, ref = reversed_leg()
    r = resolve(client, ops, ref, leg_id, "refund")
    assert r.status_code == 200, r.get_json()
    run()
    with transaction() as s:
        phone = s.get(Person, s.get(PartnerProfile, partner_id).person_id).phone
        assert ledger.reversed_payouts(s, bid) == 0
        assert ledger.leg_owed(s, leg_id) == 0  # nothing owed to him for it any more
    rider = sign_in(client, phone)
    e = client.get(f"{API}/partners/me/earnings", headers=rider)
    assert e.status_code == 200, e.get_json()
    body = e.get_json()
    assert body["total_paise"] == 0 and body["today_paise"] == 0, (t["amount"], body)


# --- the fixer's tests (f4): the fixes, precisely ---------------------------------------


def test_an_accept_sent_again_is_answered_in_the_first_words_and_the_job_keeps_the_phone(
        client, live, frozen):  # noqa: F811
    """The retry of the rider's own accept, while the job is still to pick up, is 409
    already_accepted as ever (tests/test_api_journey.py) in the first answer's words: where
    and whom to collect from; GET /partners/me/jobs gives that phone until the pickup.
    After it, a retry is "already yours" (the first answer's "pick up at" would be stale)
    and the job has no pickup phone."""
    from core import i18n

    _, _, headers = _app_partner(client, lang="en")
    _, leg_id, offer_id = _offered(client, headers)
    first = client.post(f"{API}/offers/{offer_id}/accept", headers=headers)
    assert first.status_code == 200, first.get_json()
    again = client.post(f"{API}/offers/{offer_id}/accept", headers=headers)
    assert (again.status_code, again.get_json()["error"]) == (409, {
        "code": "already_accepted", "message": first.get_json()["message"]})
    assert first.get_json()["message"] == i18n.t("dispatch.app.accepted", "en",
                                                 job=str(leg_id), pickup="Laxmipur",
                                                 phone=CUSTOMER)
    (job,) = client.get(f"{API}/partners/me/jobs", headers=headers).get_json()
    assert (job["leg_id"], job["pickup_phone"]) == (leg_id, CUSTOMER), job

    r = client.post(f"{API}/legs/{leg_id}/pickup", headers=headers,
                    json={"otp": last_code(CUSTOMER, PICK_MARK)})
    assert r.status_code == 200, r.get_json()
    late = client.post(f"{API}/offers/{offer_id}/accept", headers=headers)
    assert (late.status_code, late.get_json()["error"]) == (409, {
        "code": "already_accepted",
        "message": i18n.t("dispatch.already_yours", "en", job=str(leg_id))})
    (job,) = client.get(f"{API}/partners/me/jobs", headers=headers).get_json()
    assert job["pickup_phone"] is None, job


def test_off_duty_and_decline_after_accept_are_said_in_the_apps_words(
        client, live, frozen):  # noqa: F811
    """Decline on an offer already his points to the app's give-back (not "send CANCEL");
    OFF with the job to collect says it is still his, in the app's words; OFF with the
    parcel in hand says to deliver it and enter the OTP (not "send DROP")."""
    from core import i18n

    _, _, headers = _app_partner(client, lang="en")
    _, leg_id, offer_id = _offered(client, headers)
    assert client.post(f"{API}/offers/{offer_id}/accept", headers=headers).status_code == 200
    r = client.post(f"{API}/offers/{offer_id}/decline", headers=headers)
    assert (r.status_code, r.get_json()["error"]) == (409, {
        "code": "already_accepted",
        "message": i18n.t("dispatch.app.cancel_hint", "en", job=str(leg_id))})

    off = client.put(f"{API}/partners/me/duty", headers=headers, json={"on_duty": False})
    assert off.get_json() == {"on_duty": False, "message": i18n.t(
        "dispatch.app.duty_off_assigned", "en", job=str(leg_id))}, off.get_json()
    r = client.post(f"{API}/legs/{leg_id}/pickup", headers=headers,
                    json={"otp": last_code(CUSTOMER, PICK_MARK)})
    assert r.status_code == 200, r.get_json()
    off = client.put(f"{API}/partners/me/duty", headers=headers, json={"on_duty": False})
    assert off.get_json()["message"] == i18n.t("dispatch.app.duty_off_carrying", "en",
                                               job=str(leg_id)), off.get_json()
    for text in (off.get_json()["message"], r.get_json()["message"]):
        assert "CANCEL" not in text and "DROP" not in text and "send" not in text


def test_photos_over_the_bound_are_409_a_retry_is_not_counted_and_the_proof_has_room(
        client, live, frozen, tmp_path, monkeypatch):  # noqa: F811
    """Ten photos with the parcel in hand are kept; the eleventh is 409 too_many_photos
    (nothing stored), the first sent again is still answered 201 (kept once); after the
    drop, the proof of delivery is kept: the pickup photos did not use up its room."""
    from core.adapters import storage
    from tests.test_dispatch import RECIPIENT

    monkeypatch.setenv("POD_LOCAL_DIR", str(tmp_path))
    storage.reset()
    try:
        _, _, headers = _app_partner(client)
        _, leg_id, offer_id = _offered(client, headers)
        assert client.post(f"{API}/offers/{offer_id}/accept",
                           headers=headers).status_code == 200
        r = client.post(f"{API}/legs/{leg_id}/pickup", headers=headers,
                        json={"otp": last_code(CUSTOMER, PICK_MARK)})
        assert r.status_code == 200, r.get_json()

        def photo(i: int) -> bytes:
            return b"\xff\xd8\xff\xe0" + i.to_bytes(2, "big") * 1000

        def upload(data: bytes):
            return client.post(f"{API}/legs/{leg_id}/photo", data=data,
                               headers={**headers, "Content-Type": "image/jpeg"})

        assert [upload(photo(i)).status_code for i in range(10)] == [201] * 10
        over = upload(photo(10))
        assert over.status_code == 409 and over.get_json()["error"]["code"] == \
            "too_many_photos", over.get_json()
        assert upload(photo(0)).status_code == 201  # sent again: kept once, not refused
        assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 10

        r = client.post(f"{API}/legs/{leg_id}/drop", headers=headers,
                        json={"otp": last_code(RECIPIENT)})
        assert r.status_code == 200, r.get_json()
        proof = upload(photo(11))
        assert proof.status_code == 201 and proof.get_json()["proof_of_delivery"], \
            proof.get_json()
    finally:
        storage.reset()


def test_earnings_leave_out_a_cancellation_fee_reversed_and_given_to_the_customer(
        live, client):
    """The same for a rider's cancellation fee: paid out, reversed at the gateway, and
    refunded by ops to the customer, it is no longer in his fees nor his totals."""
    from core.adapters import razorpay_gateway as gw
    from core.adapters.models import Booking
    from core.services import partner_app, payments
    from sandbox import razorpay as emu
    from tests.test_payments_support import CUSTOMER as PAYER
    from tests.test_payments_support import advance, new_partner, paid_booking
    from tests.test_transfer_reversal import send_reversed_event

    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    with transaction() as s:
        s.get(PartnerProfile, partner).kyc_status = "verified"  # type: ignore[union-attr]
        ref = s.get(Booking, bid).reference  # type: ignore[union-attr]
    with transaction() as s:
        fee = payments.cancel_booking(s, ledger.lock_booking(s, bid), PAYER, "no").fee_paise
    assert fee > 0
    assert payments.refund_booking(bid, "cancelled") == "requested"
    run()
    (t,) = emu._all("transfer")
    with transaction() as s:
        assert ledger.leg_paid_out(s, leg_id) == fee == t["amount"]
        assert partner_app.earnings(s, partner).fees_paise == fee
    gw.client().transfer.reverse(t["id"], {"amount": t["amount"]})
    send_reversed_event(t["id"])
    r = resolve(client, sign_in(client, OPERATOR, role="ops"), ref, leg_id, "refund")
    assert r.status_code == 200, r.get_json()
    run()
    with transaction() as s:
        assert ledger.reversed_payouts(s, bid) == 0 and ledger.leg_owed(s, leg_id) == 0
        e = partner_app.earnings(s, partner)
    assert (e.today_paise, e.week_paise, e.total_paise, e.fees_paise) == (0, 0, 0, 0), (fee, e)

"""The partner app and SMS together: a rider's own yes by the other channel is not
"another partner took it"; ON in the app while his SMS is stopped says why (found by a
review, session 21)."""

from __future__ import annotations

import threading

import pytest

from core.adapters.db import transaction
from core.adapters.dispatch_models import DispatchOffer
from core.services import dispatch
from tests.test_dispatch import (
    frozen,  # noqa: F401  (fixture)
    legs_of,
    paid_booking,
    sms,
    start,
)
from tests.test_partner_app_review import API, _app_partner

pytestmark = pytest.mark.db


def test_an_app_accept_racing_the_riders_own_sms_yes_is_not_told_another_took_it(
        client, live, frozen, monkeypatch):  # noqa: F811
    """Was: Ramesh taps Accept in the app and, the screen being slow on 2G, also
    answers the offer SMS "1". The SMS commits first, while the app's request has read the
    offer (open) and waits for the leg's lock. dispatch.accept then finds its offer
    ACCEPTED (by Ramesh himself) and answers ``_gone`` -> "dispatch.taken": the app shows
    409 ``offer_taken`` ("another partner took job N") for the job that is HIS. He drops
    it and nobody collects the parcel. Now: a job his own other yes took is answered
    as his (200 accepted, or 409 ``already_accepted``), as a later yes naming it is
    (``_pick_offer``'s "dispatch.already_yours"); never "taken"."""
    pid, phone, headers = _app_partner(client)
    booking_id = paid_booking()
    start(booking_id)
    got = client.get(f"{API}/partners/me/offers", headers=headers).get_json()
    assert len(got) == 1, got
    offer_id = got[0]["id"]
    app = client.application
    original = dispatch._pick_offer
    fired: list[list[str]] = []
    started: list[bool] = []

    def pick_then_sms_wins(session, partner, code):
        found = original(session, partner, code)
        if not started:
            started.append(True)
            # The rider's SMS "1", handled meanwhile by another web worker, commits first.
            def other_worker() -> None:
                fired.append(sms(app.test_client(), phone, "1"))

            t = threading.Thread(target=other_worker)
            t.start()
            t.join()
        return found

    monkeypatch.setattr(dispatch, "_pick_offer", pick_then_sms_wins)
    r = client.post(f"{API}/offers/{offer_id}/accept", headers=headers)
    assert fired and fired[0], fired  # the SMS was answered (its yes took the job)
    leg = legs_of(booking_id)[0]
    assert leg.status == "assigned" and leg.partner_id == pid  # his SMS took it
    with transaction() as s:
        assert s.get(DispatchOffer, offer_id).status == "accepted"
    body = r.get_json()
    assert not (r.status_code == 409 and body["error"]["code"] == "offer_taken"), body
    assert r.status_code == 200 or body["error"]["code"] == "already_accepted", body


def test_going_on_duty_in_the_app_while_sms_is_stopped_is_refused_with_the_reason(
        client, live, frozen):  # noqa: F811
    """Was: Ramesh works by SMS (no app on his profile) and once sent STOP; now he opens
    the app and taps "Go on duty". dispatch.set_duty refuses ON (DUTY_SMS_STOPPED: no
    offer could reach him) and changes nothing, but PUT /partners/me/duty
    (core/api/partner.py:put_duty) only turns the duty_blocked / KYC / payout refusals
    into an error: this one answers 200 {"on_duty": false}. The app reports success, the
    switch flips back with no word why, and he waits for offers that never come. Now:
    refused as the other reasons are (a 4xx whose message is dispatch.duty_sms_stopped in
    his language: send START, then ON)."""
    from sqlalchemy import select

    from core import i18n
    from core.adapters.models import PartnerProfile, Person
    from tests.test_api import sign_in
    from tests.test_dispatch import LAXMIPUR, make_partner

    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)  # SMS partner
    headers = sign_in(client, phone)
    with transaction() as s:
        s.scalar(select(Person).where(Person.phone == phone)).sms_opted_out = True
    r = client.put(f"{API}/partners/me/duty", headers=headers, json={"on_duty": True})
    with transaction() as s:
        assert s.get(PartnerProfile, pid).on_duty is False  # set_duty refused the ON
    assert r.status_code != 200, r.get_json()
    assert r.get_json()["error"]["message"] == i18n.t("dispatch.duty_sms_stopped", "en")

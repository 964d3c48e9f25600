"""Dispatch, round 34 (reviewer R5's findings):

1. A no (or a CANCEL) with a number that names no job of the rider's, one offer open
   ("nahi 20 km door hai", "NO busy 5 min", "cancel 10 min"), is his no to that offer,
   as a yes with such a number is his yes (dispatch.stray_number); a clear job number
   keeps its meaning.
2. A yes or a no that crosses the offer's timeout (the timeout commits EXPIRED between
   _pick_offer's read and accept's or decline's lock) is a late answer, not a missed
   offer; if that expiry put him OFF (his third miss in a row), he is put back ON and
   told so. The same for a late answer a second later.
3. ON while on duty (the app's PUT /partners/me/duty retried) and OFF while off record
   no duty event: a duty_on would restart the missed-offer run.
"""
from __future__ import annotations

import threading

import pytest

from core import i18n
from core.services import dispatch
from tests.test_dispatch import (  # noqa: F401
    LAXMIPUR,
    bodies_to,
    freeze_at,
    frozen,
    legs_of,
    make_partner,
    offers,
    paid_booking,
    sms,
    start,
)
from tests.test_missed_offers import (  # noqa: F401
    a_job,
    events,
    missed_setting,
    near_and_far,
    on_duty,
)

pytestmark = pytest.mark.db

OTHER = (26.90, 84.49)  # ~1 km from Laxmipur: offered the job after Ramesh


def _one_offer(lang: str = "hi") -> tuple[int, str, int, int]:
    """Ramesh (and another rider farther off) on duty, Ramesh offered one job:
    (Ramesh's id, his phone, the other's id, the leg id)."""
    ramesh, phone = make_partner("Ramesh", LAXMIPUR, lang=lang)
    other, _ = make_partner("Other", OTHER)
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert [o.partner_id for o in offers(leg.id)] == [ramesh]
    return ramesh, phone, other, leg.id


# --- 1. a no or a CANCEL with a stray number --------------------------------------------


@pytest.mark.parametrize("body", ["nahi 20 km door hai", "NO busy 5 min",
                                  "nahi 10 minute baad"])
def test_a_no_with_a_stray_number_declines_the_one_open_offer(
        client, live, frozen, body):  # noqa: F811
    ramesh, phone, other, leg_id = _one_offer()
    replies = sms(client, phone, body)
    assert replies == [i18n.t("dispatch.declined", "hi", job=leg_id)], replies
    got = {o.partner_id: o.status for o in offers(leg_id)}
    assert got[ramesh] == "declined", got
    assert got.get(other) == "open", got  # the cascade moves on at once


def test_a_no_naming_a_job_is_still_about_that_job(client, live, frozen):  # noqa: F811
    """"nahi 5058" (a job code alone with the no) names a job he was never offered: he is
    asked, as a yes naming one is; "2 <his job>" still skips that job."""
    ramesh, phone, _, leg_id = _one_offer(lang="en")
    stray = str(leg_id + 5000)
    assert sms(client, phone, f"nahi {stray}") == [
        i18n.t("sms.offer_not_that", "en", typed=stray, job=leg_id)]
    assert offers(leg_id)[0].status == "open"
    assert sms(client, phone, f"2 {leg_id}") == [i18n.t("dispatch.declined", "en", job=leg_id)]
    assert offers(leg_id)[0].status == "declined"


def test_cancel_with_a_stray_number_and_no_job_in_hand_is_a_no(client, live, frozen):  # noqa: F811
    ramesh, phone, other, leg_id = _one_offer(lang="en")
    stray = str(leg_id + 5000)
    # A job number alone: it names a job, none of his (as before).
    assert sms(client, phone, f"CANCEL {stray}") == [
        i18n.t("dispatch.no_such_job", "en", job=stray)]
    assert offers(leg_id)[0].status == "open"
    assert sms(client, phone, "cancel 10 min") == [
        i18n.t("dispatch.declined", "en", job=leg_id)]
    got = {o.partner_id: o.status for o in offers(leg_id)}
    assert got[ramesh] == "declined" and got.get(other) == "open", got


# --- 2. a yes or a no crossing the offer's timeout ----------------------------------------


def _timeout_runs_after_the_pick(monkeypatch, offer_id: int) -> None:
    """The offer's timeout job commits right after _pick_offer read the offer open."""
    real_pick = dispatch._pick_offer

    def pick_then_timeout(session, partner, code):  # noqa: ANN001, ANN202
        found = real_pick(session, partner, code)
        t = threading.Thread(target=dispatch.offer_timeout, args=(offer_id,))
        t.start()
        t.join()
        return found

    monkeypatch.setattr(dispatch, "_pick_offer", pick_then_timeout)


@pytest.mark.parametrize("body", ["1", "2"])
def test_an_answer_crossing_the_timeout_is_not_a_missed_offer(client, live, frozen,  # noqa: F811
                                                              monkeypatch, body):
    _, phone, _, leg_id = _one_offer(lang="en")
    (offer,) = offers(leg_id)
    freeze_at(120)  # its time (90 s) and grace (30 s) are up this very second
    _timeout_runs_after_the_pick(monkeypatch, offer.id)
    replies = sms(client, phone, body)
    after = offers(leg_id)[0]
    assert after.status == "expired"
    assert not dispatch._missed(after.status, after.responded_at, after.expires_at), \
        "answered, yet counted as a missed offer"
    assert replies == [i18n.t("dispatch.offer_expired", "en", job=leg_id)], replies


@pytest.mark.parametrize("body", ["1", "2"])
def test_an_answer_crossing_the_third_miss_puts_him_back_on(client, live, frozen,  # noqa: F811
                                                            missed_setting, monkeypatch,  # noqa: F811
                                                            body):
    """Two offers left to expire, then his answer to the third crosses its timeout, which
    puts him OFF: he answered, so he is ON again (a duty_on recorded) and hears it."""
    near, near_phone, far_phone = near_and_far()
    a_job(client, 1, near, near_phone, far_phone)
    a_job(client, 2, near, near_phone, far_phone)
    freeze_at(900)
    booking_id = paid_booking()
    start(booking_id)
    leg_id = legs_of(booking_id)[0].id
    (offer,) = offers(leg_id)
    assert offer.partner_id == near
    freeze_at(1020)
    real_pick = dispatch._pick_offer
    _timeout_runs_after_the_pick(monkeypatch, offer.id)
    replies = sms(client, near_phone, body)
    assert replies == [i18n.t("dispatch.offer_expired", "en", job=leg_id)], replies
    assert on_duty(near)
    assert events(near) == ["duty_off", "auto_off", "duty_on"]
    told = bodies_to(near_phone)
    assert i18n.t("dispatch.auto_off", "en", n=3) in told
    assert told[-1] == i18n.t("dispatch.auto_off_undone", "en", job=leg_id)
    # The run starts again from his answer: one more miss does not put him OFF.
    monkeypatch.setattr(dispatch, "_pick_offer", real_pick)
    a_job(client, 5, near, near_phone, far_phone)
    assert on_duty(near)


def test_a_late_answer_just_after_the_third_miss_puts_him_back_on(client, live, frozen,  # noqa: F811
                                                                  missed_setting):  # noqa: F811
    """The same "1" a second after the timeout put him OFF: late, not missed, ON again."""
    near, near_phone, far_phone = near_and_far()
    for k in (1, 2, 3):
        leg_id = a_job(client, k, near, near_phone, far_phone)
    assert not on_duty(near)
    freeze_at(3 * 300 + 122)
    assert sms(client, near_phone, "1") == [i18n.t("dispatch.no_offer", "en")]
    assert on_duty(near)
    assert events(near) == ["duty_off", "auto_off", "duty_on"]
    assert bodies_to(near_phone)[-1] == i18n.t("dispatch.auto_off_undone", "en", job=leg_id)
    # Sent again: nothing more happens.
    sms(client, near_phone, "1")
    assert events(near) == ["duty_off", "auto_off", "duty_on"]


def test_an_on_sent_after_the_auto_off_is_not_undone_twice(client, live, frozen,  # noqa: F811
                                                           missed_setting):  # noqa: F811
    """He sent ON himself after the automatic OFF: a late answer then changes no duty."""
    near, near_phone, far_phone = near_and_far()
    for k in (1, 2, 3):
        a_job(client, k, near, near_phone, far_phone)
    sms(client, near_phone, "ON")
    sms(client, near_phone, "OFF")
    sms(client, near_phone, "1")
    assert not on_duty(near)
    assert events(near) == ["duty_off", "auto_off", "duty_on", "duty_off"]


# --- 3. ON while on, OFF while off ----------------------------------------------------


def test_on_sent_while_on_duty_does_not_wipe_the_missed_run(client, live, frozen,  # noqa: F811
                                                            missed_setting):  # noqa: F811
    near, near_phone, far_phone = near_and_far()
    a_job(client, 1, near, near_phone, far_phone)
    a_job(client, 2, near, near_phone, far_phone)
    assert on_duty(near)
    assert sms(client, near_phone, "ON") == [i18n.t("dispatch.duty_on", "en")]
    assert events(near) == []
    a_job(client, 3, near, near_phone, far_phone)
    assert not on_duty(near), "3 offers in a row expired unanswered, still on duty"


def test_off_while_off_and_the_apps_duty_retried_record_nothing(client, live, frozen):  # noqa: F811
    from tests.test_api import sign_in
    from tests.test_partner_app_review import API

    ramesh, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    assert sms(client, phone, "OFF") == [i18n.t("dispatch.duty_off", "en")]
    assert sms(client, phone, "OFF") == [i18n.t("dispatch.duty_off", "en")]
    assert events(ramesh) == ["duty_off"]
    app, app_phone = make_partner("Suresh", LAXMIPUR, lang="en", has_app=True,
                                  on_duty=False)
    headers = sign_in(client, app_phone)
    for _ in range(3):  # retried on 2G, or sent at each launch
        r = client.put(f"{API}/partners/me/duty", headers=headers, json={"on_duty": True})
        assert r.status_code == 200 and r.get_json()["on_duty"] is True, r.get_json()
    assert events(app) == ["duty_on"]

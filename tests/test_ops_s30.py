"""Session 30, ops and dispatch follow-ups (helper H1).

1. An offer whose SMS never reached the rider (held back behind an earlier message's
   retry, or failed / undelivered by Twilio) is no missed offer: it neither puts them
   OFF duty nor breaks their run.
2. An ops alert that reached nobody does not hold the next of its kind for the summary.
3. A person nobody answered within the promised reply time (the team's time): ops hear it
   once per handoff, from the dispatch sweep.
4. The recipient's drop code for a job taken at night (21:00-07:00 India time) goes at
   07:00, or at the pickup if that comes first.

Through RQ (run_jobs / release_scheduled), the sandbox Twilio emulator and its status
callbacks; the clock is controlled, never slept.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff
from core.adapters.models import Leg, OutboxMessage
from core.adapters.queue import queue
from core.adapters.redis_conn import redis_client
from core.config import ConfigError, load_settings
from core.domain import dispatch as rules
from core.services import dispatch, handoff, outbox
from sandbox import jobs as twilio_jobs
from sandbox.twilio import FAIL_NEXT_KEY
from tests.conftest import release_scheduled, run_jobs, send_whatsapp
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    OPS,
    RECIPIENT,
    bodies_to,
    booking_status,
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
from tests.test_missed_offers import (
    FAR,
    events,
    missed_setting,  # noqa: F401  (fixture)
    near_and_far,
    on_duty,
)
from tests.test_ops_hours import hours, india  # noqa: F401  (fixture)

pytestmark = pytest.mark.db


# --- 1. an offer never received is no missed offer ----------------------------------------


def offer_sms(offer_id: int) -> OutboxMessage:
    with transaction() as s:
        row = s.scalar(select(OutboxMessage).where(
            OutboxMessage.dedupe_key == f"offer-{offer_id}"))
        s.expunge(row)
        return row


def near_misses(client, k: int, near: int, far_phone: str, *,
                sms_status: str | None = None, app: bool = False) -> None:
    """Job ``k``: offered first to the near partner, who does not answer; once the
    offer's time and grace are over it expires and the far partner takes the job.
    ``sms_status``: what became of the near partner's offer SMS before it expired."""
    t = k * 300
    freeze_at(t)
    booking_id = paid_booking()
    start(booking_id)
    run_jobs()  # the emulator's status callbacks, applied
    leg_id = legs_of(booking_id)[0].id
    first = offers(leg_id)[0]
    assert first.partner_id == near
    if sms_status is not None:
        assert offer_sms(first.id).status == sms_status
    if sms_status == "undelivered" and not app:
        # Never received, it holds the job no longer (session 38): withdrawn at once, not
        # counted against them, and the next partner asked. (The app brings it too.)
        assert offers(leg_id)[0].status == rules.OfferStatus.WITHDRAWN.value
    else:
        freeze_at(t + 121)  # the offer's 90 s and its 30 s grace are over
        release_scheduled(timedelta(seconds=121))
        run_jobs()
        assert offers(leg_id)[0].status == rules.OfferStatus.EXPIRED.value
    assert offers(leg_id)[-1].status == rules.OfferStatus.OPEN.value
    sms(client, far_phone, "1")
    assert legs_of(booking_id)[0].status == "assigned"


def test_an_undelivered_offer_sms_is_not_a_missed_offer(
        client, live, frozen, missed_setting):  # noqa: F811
    near, near_phone, far_phone = near_and_far()
    near_misses(client, 1, near, far_phone, sms_status="delivered")
    near_misses(client, 2, near, far_phone, sms_status="delivered")
    # Twilio could not deliver the third offer to their phone: they never had it.
    redis_client().hset(twilio_jobs.UNDELIVERED_TO_KEY, near_phone, "undelivered:30003")
    near_misses(client, 3, near, far_phone, sms_status="undelivered")
    assert on_duty(near)
    assert "auto_off" not in events(near)
    # Nor does it break the run: the next offer they had and let expire is the third.
    redis_client().hdel(twilio_jobs.UNDELIVERED_TO_KEY, near_phone)
    near_misses(client, 4, near, far_phone, sms_status="delivered")
    assert not on_duty(near)
    assert events(near) == ["duty_off", "auto_off"]


def test_an_offer_sms_held_back_until_it_was_over_is_not_a_missed_offer(
        client, live, frozen, missed_setting):  # noqa: F811
    missed_setting("2")
    near, near_phone, far_phone = near_and_far()
    near_misses(client, 1, near, far_phone, sms_status="delivered")
    # An earlier message to them waits for its retry (Twilio answered 503 once): the
    # offer's SMS is held back behind it, past the offer's time, and never goes.
    freeze_at(500)
    run_jobs()  # job 1's last messages are out: the next create is the earlier message's
    with transaction() as s:
        outbox.queue_message(s, channel="sms", to=near_phone, body="Your payout is on its way",
                             dedupe_key="earlier-to-near", work=True)
    redis_client().set(FAIL_NEXT_KEY, 1)
    run_jobs()
    with transaction() as s:
        earlier = s.scalar(select(OutboxMessage).where(
            OutboxMessage.dedupe_key == "earlier-to-near"))
        assert (earlier.status, earlier.attempts) == ("pending", 1)
    near_misses(client, 2, near, far_phone, sms_status="pending")
    first = offers(legs_of_last_booking())[0]
    row = offer_sms(first.id)
    assert row.status == "failed" and row.last_error == outbox.OFFER_OVER
    assert on_duty(near)
    assert "auto_off" not in events(near)


def legs_of_last_booking() -> int:
    with transaction() as s:
        return s.scalar(select(Leg.id).order_by(Leg.id.desc()).limit(1))


def test_with_the_app_an_offer_counts_whatever_its_sms(
        client, live, frozen, missed_setting):  # noqa: F811
    """The app brings the offer too: a rider with it had it, even if the SMS failed."""
    missed_setting("2")
    near, near_phone = make_partner("Near", LAXMIPUR, lang="en", has_app=True)
    _, far_phone = make_partner("Far", FAR, max_active_legs=50)
    redis_client().hset(twilio_jobs.UNDELIVERED_TO_KEY, near_phone, "undelivered:30003")
    for k in (1, 2):
        assert on_duty(near)
        freeze_at(k * 300)
        dispatch.update_location(near, *LAXMIPUR)  # the app's fix, fresh at the pickup
        near_misses(client, k, near, far_phone, sms_status="undelivered", app=True)
    assert not on_duty(near)
    assert events(near)[-1] == "auto_off"


# --- 2. an ops alert that reached nobody holds nothing back ---------------------------------


OPS_PHONE = "+919000000099"  # OPS_PHONE's sandbox default: ops alerts go to it too


def no_partner_alert(n: int) -> int:
    with transaction() as s:
        return dispatch.alert_ops(s, "dispatch.ops_no_partner", dedupe_key=f"s30-alert-{n}",
                                  ref=f"RC{n}", job=n)


def alert_statuses(n: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.status).where(
            OutboxMessage.dedupe_key.like(f"s30-alert-{n}-%")).order_by(OutboxMessage.id)))


def test_an_ops_alert_that_reached_nobody_does_not_hold_the_next_one(live, frozen):  # noqa: F811
    """Nobody on duty: "no partner yet" for booking RC1, but both operators' phones fail
    (Twilio: undelivered). The next booking's alert must not be held for a summary of a
    problem nobody heard of: it goes at once and the window counts on it instead; the
    summary names RC1 among the bookings with the same problem."""
    for phone in (OPS, OPS_PHONE):
        redis_client().hset(twilio_jobs.UNDELIVERED_TO_KEY, phone, "undelivered:30003")
    assert no_partner_alert(1) == 2
    run_jobs()  # sent; Twilio reports both undelivered
    assert alert_statuses(1) == ["undelivered", "undelivered"]
    for phone in (OPS, OPS_PHONE):  # the phones take SMS again
        redis_client().hdel(twilio_jobs.UNDELIVERED_TO_KEY, phone)
    freeze_at(60)
    assert no_partner_alert(2) == 2  # not held: nobody heard of RC1
    run_jobs()
    assert alert_statuses(2) == ["delivered", "delivered"]
    freeze_at(120)
    assert no_partner_alert(3) == 0  # held: RC2's alert reached them
    assert alert_statuses(3) == []
    freeze_at(15 * 60 + 1)
    release_scheduled(timedelta(minutes=16))
    run_jobs()
    summary = i18n.t("dispatch.ops_more_like", "hi", n=2, first="RC2", refs="RC1, RC3")
    assert bodies_to(OPS)[-1] == summary


# --- 3. a person waiting past the promised reply: ops hear it once --------------------------


CUSTOMER_3 = "+919812300331"
_sid3 = iter(range(1, 10_000))


def say3(client, body: str) -> str:  # noqa: ANN001
    return send_whatsapp(client, {"From": f"whatsapp:{CUSTOMER_3}",
                                  "To": "whatsapp:+14155238886", "Body": body,
                                  "MessageSid": f"SMs30h{next(_sid3):028d}",
                                  "ProfileName": "Sita"})


def asks_for_a_person(client, at) -> int:  # noqa: ANN001
    clock.freeze(at)
    for body in ("hi", "2"):  # English
        say3(client, body)
    say3(client, "4")
    with transaction() as s:
        (h,) = s.scalars(select(Handoff).where(Handoff.status == "waiting")).all()
        return h.id


def dispatch_sweep_at(when) -> None:  # noqa: ANN001
    """The dispatch sweep job at ``when``, through RQ, with the messages it queues."""
    clock.freeze(when)
    queue("default").enqueue("workers.dispatch.sweep")
    run_jobs()


def waiting_alerts() -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.dedupe_key.like("handoff-%-ops-waiting-%"))
            .order_by(OutboxMessage.id)))


def test_ops_hear_once_of_a_person_nobody_answered_in_the_promised_time(
        client, live, hours):  # noqa: F811
    handoff_id = asks_for_a_person(client, india(10, 0))
    dispatch_sweep_at(india(10, 14))
    assert waiting_alerts() == []  # 15 minutes were promised
    dispatch_sweep_at(india(10, 16))
    # To OPS_PHONE (no operator has a phone here), in its default language; the handoff's
    # id as the ops list shows it, how long they waited, and never their number.
    lang = i18n.DEFAULT_LANGUAGE
    assert waiting_alerts() == [i18n.t("handoff.ops_waiting", lang, ref=str(handoff_id),
                                       minutes=16)]
    assert CUSTOMER_3[-4:] not in waiting_alerts()[0]
    dispatch_sweep_at(india(10, 30))
    dispatch_sweep_at(india(11, 30))
    assert len(waiting_alerts()) == 1  # once per handoff


def test_an_answered_handoff_raises_no_alert(client, live, hours):  # noqa: F811
    handoff_id = asks_for_a_person(client, india(10, 0))
    clock.freeze(india(10, 10))
    with transaction() as s:
        handoff.reply(s, handoff_id, "ops:7", "We are looking at it.")
    dispatch_sweep_at(india(10, 20))
    assert waiting_alerts() == []


def test_a_request_at_night_is_due_after_the_team_starts(client, live, hours):  # noqa: F811
    """At 22:00 the person was told when the team starts (08:00), not a reply in 15
    minutes: nothing goes at night, and the alert comes 15 minutes into the team's day."""
    handoff_id = asks_for_a_person(client, india(22, 0))
    dispatch_sweep_at(india(23, 0))
    dispatch_sweep_at(india(8, 10, day=2))
    assert waiting_alerts() == []
    dispatch_sweep_at(india(8, 16, day=2))
    assert waiting_alerts() == [i18n.t("handoff.ops_waiting", i18n.DEFAULT_LANGUAGE,
                                       ref=str(handoff_id), minutes=10 * 60 + 16)]


# --- 4. the recipient's drop code is not sent at night before the pickup --------------------


def _night_setting(monkeypatch, value: str):  # noqa: ANN001, ANN202
    monkeypatch.setenv("DISPATCH_DROP_CODE_NIGHT", value)
    dispatch.reset_config()
    yield
    monkeypatch.delenv("DISPATCH_DROP_CODE_NIGHT", raising=False)
    dispatch.reset_config()


@pytest.fixture
def drop_code_night(monkeypatch):  # noqa: ANN001, ANN201
    """The default night (21:00-07:00 India time), whatever the suite's environment."""
    yield from _night_setting(monkeypatch, "21:00-07:00")


@pytest.fixture
def no_drop_code_night(monkeypatch):  # noqa: ANN001, ANN201
    """Drop codes at any hour: for tests on the wall clock that are not about the night
    (their hour is when the suite runs)."""
    yield from _night_setting(monkeypatch, "off")


def drop_codes_to_recipient() -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == RECIPIENT,
            OutboxMessage.dedupe_key.like("leg-%-dropotp-%")).order_by(OutboxMessage.id)))


def taken_at_night(client) -> tuple[int, int, str]:  # noqa: ANN001
    """A job taken at 23:00 India time: (booking id, leg id, the rider's phone)."""
    _, rider = make_partner("Ramesh", LAXMIPUR)
    clock.freeze(india(23, 0))
    booking_id = paid_booking()
    start(booking_id)
    assert sms(client, rider, "1")
    assert booking_status(booking_id) == "assigned"
    return booking_id, legs_of(booking_id)[0].id, rider


def test_a_drop_code_for_a_job_taken_at_night_goes_at_seven(
        client, live, frozen, drop_code_night):  # noqa: F811
    booking_id, leg_id, rider = taken_at_night(client)
    run_jobs()
    pick = last_code(CUSTOMER, "पार्सल उठाने")  # the sender's code goes at once
    assert drop_codes_to_recipient() == []  # nothing wakes the recipient at 23:00
    assert "PICK" in sms(client, rider, "DROP 1234")[0]  # as before: pick it up first
    clock.freeze(india(6, 59, day=2))
    assert queue("default").fetch_job(f"drop-code-morning-{leg_id}-o{offers(leg_id)[0].id}")
    clock.freeze(india(7, 0, day=2))
    release_scheduled(timedelta(hours=9))
    run_jobs()
    (told,) = drop_codes_to_recipient()
    drop = last_code(RECIPIENT)
    assert drop in told
    assert "उठ गया" in sms(client, rider, f"PICK {pick}")[0]
    assert len(drop_codes_to_recipient()) == 1  # not again at the pickup
    assert "पहुँच गया" in sms(client, rider, f"DROP {drop}")[0]
    assert booking_status(booking_id) == "delivered"


def test_a_pickup_at_night_sends_the_drop_code_then(
        client, live, frozen, drop_code_night):  # noqa: F811
    booking_id, leg_id, rider = taken_at_night(client)
    pick = last_code(CUSTOMER, "पार्सल उठाने")
    clock.freeze(india(23, 30))
    assert "उठ गया" in sms(client, rider, f"PICK {pick}")[0]
    (told,) = drop_codes_to_recipient()  # the rider is on his way to her
    drop = last_code(RECIPIENT)
    clock.freeze(india(7, 0, day=2))
    release_scheduled(timedelta(hours=9))
    run_jobs()
    assert drop_codes_to_recipient() == [told]  # the morning sends nothing more
    assert "पहुँच गया" in sms(client, rider, f"DROP {drop}")[0]
    assert booking_status(booking_id) == "delivered"


def test_a_drop_code_by_day_goes_at_the_accept(
        client, live, frozen, drop_code_night):  # noqa: F811
    _, rider = make_partner("Ramesh", LAXMIPUR)
    clock.freeze(india(7, 0))
    booking_id = paid_booking()
    start(booking_id)
    sms(client, rider, "1")
    assert len(drop_codes_to_recipient()) == 1
    assert legs_of(booking_id)[0].status == "assigned"


def test_the_night_can_be_set_or_turned_off(
        client, live, frozen, no_drop_code_night):  # noqa: F811
    taken_at_night(client)
    assert len(drop_codes_to_recipient()) == 1  # off: at the accept, at any hour


@pytest.mark.parametrize("value", ["22:00", "21:00-21:00", "25:00-07:00", "9pm-7am"])
def test_a_bad_night_is_refused(monkeypatch, value):  # noqa: ANN001
    monkeypatch.setenv("DISPATCH_DROP_CODE_NIGHT", value)
    with pytest.raises(ConfigError, match="DISPATCH_DROP_CODE_NIGHT"):
        load_settings()
    assert rules.from_env({"DISPATCH_DROP_CODE_NIGHT": "22:30-06:00"}).drop_code_night == (
        22 * 60 + 30, 6 * 60)

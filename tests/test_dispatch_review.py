"""Dispatch, as a review found it: a busy Point whose off-duty (or unfit) partners hid the
one who could go, a partner filled up by one job still holding the offer of another, a
sweep run a second early that ended the sweep chain (dispatch's and the outbox's), and a
rider who went OFF with an offer open kept off that job for good; also a yes to a paused
relay leg told "another partner" took it, and a paused relay leg's customer told "still
looking" again at every round."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select

from core import clock, i18n
from core.adapters import geo_index
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, PartnerProfile
from core.adapters.queue import queue
from core.adapters.redis_conn import redis_client
from core.domain.booking import Actor
from core.services import dispatch
from tests.conftest import release_scheduled, run_jobs
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    acceptance_record,
    bodies_to,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    make_point,
    offers,
    paid_booking,
    sms,
    start,
)

pytestmark = pytest.mark.db

NORTH_1KM = (26.9017, 84.48813)  # about 1 km north of LAXMIPUR
P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)  # a relay


def in_home_set(partner_id: int) -> bool:
    return redis_client().zscore(geo_index.HOME_KEY, str(partner_id)) is not None


# --- 1. the nearest partners who cannot go hide the one who can ------------------------


def test_off_duty_partners_at_a_busy_point_do_not_hide_the_one_on_duty(live, frozen):  # noqa: F811
    """A town Point where many SMS partners live (their home), most off duty: the search
    took the nearest 3 x DISPATCH_MAX_CANDIDATES of the geo index before it looked at who
    is on duty, so the one partner on duty 1 km away was never seen, at any radius."""
    busy = make_point("Busy Point", *LAXMIPUR)
    for i in range(61):  # 3 x 20 (the default) and one more
        make_partner(f"Off{i}", LAXMIPUR, point_id=busy, on_duty=False)
    on_duty, _ = make_partner("OnDuty", NORTH_1KM)
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert [o.partner_id for o in offers(leg.id)] == [on_duty]


def test_partners_on_duty_who_may_not_carry_the_parcel_do_not_hide_one_who_may(
        live, frozen):  # noqa: F811
    """The same with partners on duty who may not take this parcel (a new partner's trust
    tier allows up to Rs 1,000; it is worth Rs 2,000): the search asks Redis for more
    until it has enough who may."""
    busy = make_point("Busy Point", *LAXMIPUR)
    for i in range(61):
        make_partner(f"New{i}", LAXMIPUR, point_id=busy, trust_tier=0)
    trusted, _ = make_partner("Trusted", NORTH_1KM, trust_tier=2)
    booking_id = paid_booking(value_paise=2_000_00)
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert [o.partner_id for o in offers(leg.id)] == [trusted]


def test_the_home_set_holds_partners_on_duty_only(client, live, frozen):  # noqa: F811
    """OFF takes an SMS partner out of the home set (so a crowd of partners off duty at
    one Point cannot fill the nearest places), a rebuild leaves out partners off duty, and
    taking a job (which puts them on duty) or ON puts them back; a suspension takes them
    out too."""
    asha, a_phone = make_partner("Asha", LAXMIPUR, lang="en")
    off, _ = make_partner("Off", LAXMIPUR, on_duty=False)
    with transaction() as s:
        assert [row[0] for row in dispatch._home_positions(s)] == [asha]
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert in_home_set(asha) and not in_home_set(off)
    freeze_at(10)
    assert sms(client, a_phone, "OFF") == [i18n.t("dispatch.duty_off", "en")]
    assert not in_home_set(asha)
    # Back from the break within the offer's time, she takes the job after all.
    freeze_at(20)
    assert sms(client, a_phone, f"YES {leg.id}")[0].startswith(f"Job {leg.id} is yours")
    assert in_home_set(asha)
    with transaction() as s:
        assert s.get(PartnerProfile, asha).on_duty is True
        dispatch.block_partner(s, asha, Actor("ops", "1"))
    assert not in_home_set(asha)


# --- 2. a job that fills a partner up ends their other open offer ------------------------


def test_taking_a_job_at_capacity_withdraws_the_other_offer_in_hand(client, live, frozen):  # noqa: F811
    """Ramesh carries one job at a time. He says NO to job A (it goes to Suresh), is then
    offered job B, and changes his mind: "YES <A>" takes A (still free, in time). He was
    then full, yet still held the open offer of B, which he could not take: B waited out
    his whole offer time while Suresh, free again, was not asked, and the offer then
    expired against Ramesh's record."""
    ramesh, r_phone = make_partner("Ramesh", LAXMIPUR, lang="en", max_active_legs=1)
    suresh, _ = make_partner("Suresh", (26.90, 84.49), lang="en")
    job_a = paid_booking()
    start(job_a)
    leg_a = legs_of(job_a)[0]
    assert [o.partner_id for o in offers(leg_a.id)] == [ramesh]
    sms(client, r_phone, "NO")
    assert [o.partner_id for o in offers(leg_a.id) if o.status == "open"] == [suresh]
    job_b = paid_booking()
    start(job_b)
    leg_b = legs_of(job_b)[0]
    assert [o.partner_id for o in offers(leg_b.id)] == [ramesh]  # Suresh holds A's offer
    freeze_at(30)
    assert sms(client, r_phone, f"YES {leg_a.id}")[0].startswith(f"Job {leg_a.id} is yours")
    # Ramesh is full: B's offer to him is over, and B goes to Suresh (free again).
    assert {o.partner_id: o.status for o in offers(leg_b.id)} == {ramesh: "withdrawn",
                                                                  suresh: "open"}
    assert bodies_to(r_phone)[-1] == i18n.t("dispatch.withdrawn", "en", job=str(leg_b.id))
    # Offered A and B, took A: B, taken away, is not held against him.
    assert acceptance_record(ramesh) == {ramesh: (1, 1)}


def test_a_yes_at_capacity_gives_the_offer_up_to_the_next_partner(client, live, frozen):  # noqa: F811
    """Ramesh holds an offer while full (given a job meanwhile): his "1" is answered
    "finish one first", and the offer, which he cannot take, stayed open until its time
    ran out, the next partner not asked. Now it goes, not held against him."""
    ramesh, r_phone = make_partner("Ramesh", LAXMIPUR, lang="en", max_active_legs=1)
    suresh, _ = make_partner("Suresh", (26.90, 84.49), lang="en")
    job_b = paid_booking()
    start(job_b)
    leg_b = legs_of(job_b)[0]
    assert [o.partner_id for o in offers(leg_b.id)] == [ramesh]
    job_a = paid_booking()
    with transaction() as s:  # a job of his (say ops gave it to him)
        leg_a = s.scalar(select(Leg).where(Leg.booking_id == job_a))
        leg_a.partner_id, leg_a.status = ramesh, "assigned"
    assert sms(client, r_phone, "1") == [i18n.t("dispatch.at_capacity", "en", n=1)]
    assert {o.partner_id: o.status for o in offers(leg_b.id)} == {ramesh: "withdrawn",
                                                                  suresh: "open"}
    assert acceptance_record(ramesh) == {ramesh: (0, 0)}


# --- 3. a sweep run a second early by its worker's clock ---------------------------------


def _run_early(name: str, job_id: str) -> None:
    """The scheduler moves the job at minute M by its own clock; this worker's reads
    M - 1 s (DUE_TOLERANCE exists for that skew), or the clock was stepped back."""
    minute = int(job_id.rsplit("-", 1)[1])
    q = queue(name)
    ScheduledJobRegistry(queue=q).remove(job_id)
    job = q.fetch_job(job_id)
    assert job is not None
    q._enqueue_job(job)
    clock.freeze(datetime.fromtimestamp(minute - 1, UTC))
    assert run_jobs((name,)) == 1


def _scheduled(name: str, prefix: str) -> list[str]:
    return [j for j in ScheduledJobRegistry(queue=queue(name)).get_job_ids()
            if j.startswith(prefix)]


def test_a_dispatch_sweep_run_a_second_early_does_not_end_the_sweep_chain(clean_db):
    """The sweep rescheduled itself at the next whole minute of the clock it read: at
    M - 1 s that is M, its own id, which exists, so nothing was scheduled and late
    pickups, relay no-shows and late deliveries were chased by nobody."""
    from workers.dispatch import schedule_sweep

    first = schedule_sweep()
    minute = int(first.rsplit("-", 1)[1])
    _run_early("default", first)
    assert _scheduled("default", "dispatch-sweep-") == [f"dispatch-sweep-{minute + 60}"], \
        "the sweep chain ended"


def test_an_outbox_sweep_run_a_second_early_does_not_end_the_sweep_chain(clean_db):
    """The outbox's sweep had the same flaw: lost message jobs were re-sent by nobody."""
    from workers.outbox import schedule_sweep

    first = schedule_sweep()
    minute = int(first.rsplit("-", 1)[1])
    _run_early("outbox", first)
    assert _scheduled("outbox", "outbox-sweep-") == [f"outbox-sweep-{minute + 60}"], \
        "the sweep chain ended"


# --- 4. going OFF with an offer open ------------------------------------------------------


def test_a_rider_who_went_off_duty_with_the_offer_open_is_asked_again_once_back(
        client, live, frozen):  # noqa: F811
    """Asha, the only rider near the pickup, goes OFF for lunch a few seconds after the
    offer came. Going off answered it "no" for her, and a no keeps a partner off the job
    for all its rounds: back ON half an hour later, well inside the hour the search has,
    she was never asked again and the booking failed. The offer is closed as expired
    now (not as a no): she is asked again in a later pass."""
    asha, a_phone = make_partner("Asha", LAXMIPUR, lang="en")
    booking_id = paid_booking()  # standard: an hour to find a rider
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert [o.partner_id for o in offers(leg.id)] == [asha]
    freeze_at(10)
    sms(client, a_phone, "OFF")
    assert [o.status for o in offers(leg.id)] == ["expired"]
    freeze_at(30 * 60)
    sms(client, a_phone, "ON")
    t = 30 * 60
    while t < 50 * 60:  # the retries every two minutes, for twenty minutes
        t += 130
        freeze_at(t)
        release_scheduled(timedelta(minutes=5))
        run_jobs()
        dispatch.sweep()
    got = [(o.status, o.round, o.pass_no) for o in offers(leg.id) if o.partner_id == asha]
    assert len(got) > 1, f"Asha, on duty again, is never asked again: {got}"


# --- a paused relay leg --------------------------------------------------------------------


def _relay_with_leg2_waiting(client) -> tuple[int, int, int, str]:
    """Ramesh (one job at a time) has picked up leg 1; nobody else at Point A is on duty
    but Asha, off duty now. Returns (booking, leg 2, point A, Asha's phone)."""
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1, lang="en",
                              on_duty=False)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg2 = legs_of(booking_id)[1].id
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    return booking_id, leg2, point_a, a_phone


def _at(t: float) -> None:
    """Time passes to ``t``: what is due by then runs (the sweep finds it all: retries,
    deadlines, paused legs' next rounds)."""
    freeze_at(t)
    dispatch.sweep()
    run_jobs()


def test_a_yes_to_a_paused_relay_leg_is_not_told_another_partner_took_it(
        client, live, frozen):  # noqa: F811
    booking_id, leg2, _, a_phone = _relay_with_leg2_waiting(client)
    sms(client, a_phone, "ON")
    _at(121)  # the search's retry: Asha is asked, and says no
    assert [o.status for o in offers(leg2)] == ["open"]
    sms(client, a_phone, "2")
    _at(60 * 60 + 1)  # the deadline: the leg waits, nobody has it
    assert legs_of(booking_id)[1].status == "pending"
    assert sms(client, a_phone, f"YES {leg2}") == [
        i18n.t("dispatch.withdrawn", "en", job=str(leg2))]  # was "went to another partner"


def test_a_paused_relay_leg_tells_the_customer_still_looking_once_until_something_changes(
        client, live, frozen):  # noqa: F811
    booking_id, leg2, _, a_phone = _relay_with_leg2_waiting(client)
    with transaction() as s:
        ref = s.get(Booking, booking_id).reference
    searching = i18n.t("dispatch.still_searching", "hi", ref=ref)
    _at(60 * 60 + 1)  # round 1 ends: paused, the customer hears we still look
    assert bodies_to(CUSTOMER).count(searching) == 1
    _at(60 * 60 + 1 + 121)  # round 2
    _at(2 * 60 * 60 + 200)  # round 2 ends: paused again, nothing new to say
    assert legs_of(booking_id)[1].status == "pending"
    assert bodies_to(CUSTOMER).count(searching) == 1
    # Asha takes it (the customer hears the parcel moves on), then gives it back: the
    # next pause is news again.
    sms(client, a_phone, "ON")
    _at(2 * 60 * 60 + 400)
    assert sms(client, a_phone, "1")[0].startswith(f"Job {leg2} is yours")
    assert bodies_to(CUSTOMER)[-1] == i18n.t("dispatch.customer_next_rider", "hi", ref=ref)
    sms(client, a_phone, f"CANCEL {leg2}")
    _at(3 * 60 * 60 + 500)
    assert legs_of(booking_id)[1].status == "pending"
    assert bodies_to(CUSTOMER).count(searching) == 2


def test_a_payments_sweep_run_a_second_early_does_not_end_its_chain(clean_db):
    """The payments sweep (unpaid links expired, lost refunds and payouts made again) had
    the same flaw as the dispatch and outbox sweeps."""
    from workers.payments import schedule_periodic

    first = schedule_periodic()[0]
    minute = int(first.rsplit("-", 1)[1])
    _run_early("default", first)
    assert _scheduled("default", "payments-sweep-") == [f"payments-sweep-{minute + 60}"], \
        "the sweep chain ended"

"""Dispatch defects found in review, each with the set-up that showed it.

Going OFF duty while a rival takes the offered job (lock order), a position as old as its
fix, a photo matched by when the drop was confirmed, no "looking for a rider" right after
"we got your payment", and the relay rider holding a parcel nobody is there to take.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import text

from core import clock, i18n
from core.adapters import geo_index
from core.adapters.db import transaction
from core.adapters.models import Booking, PartnerProfile, Person
from core.config import get_settings
from core.domain.booking import LegStatus
from core.services import dispatch, partner_app
from tests.conftest import release_scheduled, run_jobs
from tests.test_dispatch import (
    BETTIAH,
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
    offers,
    paid_booking,
    sms,
    start,
)
from tests.test_dispatch_concurrency import batches_of_two  # noqa: F401  (fixture)

pytestmark = pytest.mark.db


def _reference(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).reference


# --- lock order: OFF duty against a rival's YES ----------------------------------------


def _wait_for_a_lock_waiter(timeout_s: float = 10, done: threading.Event | None = None) -> None:
    """Until some transaction of this test database waits for a row lock, or ``done`` is
    set first (the other side finished without waiting)."""
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if done is not None and done.is_set():
            return
        with transaction() as s:
            if s.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                             "current_database() AND wait_event_type = 'Lock'")):
                return
        time.sleep(0.01)
    raise AssertionError("nobody waited for a lock")


def test_going_off_duty_while_a_rival_takes_the_offered_job_does_not_deadlock(
        client, live, frozen, batches_of_two, monkeypatch):  # noqa: F811
    # Asha and Bala both hold an offer for the leg. Bala says YES: his acceptance locks
    # the leg, then withdraws Asha's offer (writing her row). Asha sends OFF at that
    # moment: she must wait for the leg before her row changes, not hold her row while
    # waiting for the leg (PostgreSQL then kills one of the two as a deadlock).
    asha, _ = make_partner("Asha", LAXMIPUR)
    bala, _ = make_partner("Bala", (26.893, 84.489))
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert {o.partner_id for o in offers(leg.id)} == {asha, bala}

    real = dispatch._lock_leg
    accept_has_leg = threading.Event()

    def lock_leg(session, leg_id):
        caller = sys._getframe(1).f_code.co_name
        if caller == "accept":
            got = real(session, leg_id)
            accept_has_leg.set()
            _wait_for_a_lock_waiter()  # OFF now waits for a lock this acceptance holds
            return got
        if caller in ("set_duty", "lock_open_offers"):  # OFF locks through it
            assert accept_has_leg.wait(10)
        return real(session, leg_id)

    monkeypatch.setattr(dispatch, "_lock_leg", lock_leg)
    answers: dict[str, str] = {}
    errors: list[BaseException] = []

    def run(name: str, partner_id: int, act) -> None:
        try:
            with transaction() as s:
                answers[name] = act(s, s.get(PartnerProfile, partner_id)).key
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=("yes", bala,
                                           lambda s, p: dispatch.accept(s, p, str(leg.id)))),
        threading.Thread(target=run, args=("off", asha,
                                           lambda s, p: dispatch.set_duty(s, p, False))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert answers == {"yes": "dispatch.accepted", "off": "dispatch.duty_off"}
    assert {o.partner_id: o.status for o in offers(leg.id)} == {bala: "accepted",
                                                               asha: "withdrawn"}
    with transaction() as s:
        assert s.get(PartnerProfile, asha).on_duty is False


def test_going_off_duty_still_closes_the_offer_in_hand(client, live, frozen):  # noqa: F811
    asha, a_phone = make_partner("Asha", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    sms(client, a_phone, "OFF")
    # Closed as expired, not declined: a no would keep her off this job for good
    # (tests/test_dispatch_review.py).
    assert [(o.partner_id, o.status) for o in offers(leg.id)] == [(asha, "expired")]


# --- a position is as old as its fix ---------------------------------------------------


def test_a_position_counts_from_when_it_was_taken_not_uploaded(client, live,
                                                               frozen):  # noqa: F811
    pid, _ = make_partner("App", BETTIAH, has_app=True)  # home far away; an app user
    max_age = dispatch.config().location_max_age_s  # 900 s
    # Taken 4.5 minutes ago, uploaded now (patchy network): accepted, it is under 5 min.
    partner_app.record_location(pid, *LAXMIPUR, 20, clock.now() - timedelta(seconds=270))
    found = geo_index.nearby(*LAXMIPUR, 3, max_age_s=max_age, now=clock.now())
    assert pid in [n.partner_id for n in found]
    # 11 minutes on, the fix is 15.5 minutes old: too old to place them here.
    freeze_at(11 * 60)
    found = geo_index.nearby(*LAXMIPUR, 3, max_age_s=max_age, now=clock.now())
    assert pid not in [n.partner_id for n in found]


# --- a photo goes with the drop of the last hour ---------------------------------------


def _deliver(client, phone: str) -> int:
    booking_id = paid_booking()
    start(booking_id)
    assert "आपका है" in sms(client, phone, "1")[0]
    sms(client, phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    sms(client, phone, f"DROP {last_code(RECIPIENT)}")
    leg = legs_of(booking_id)[0]
    assert leg.status == LegStatus.DELIVERED.value
    return leg.id


def test_a_photo_goes_with_the_leg_delivered_last_within_the_hour(client, live,
                                                                  frozen):  # noqa: F811
    ramesh, phone = make_partner("Ramesh", LAXMIPUR)
    first = _deliver(client, phone)
    freeze_at(10 * 60)
    second = _deliver(client, phone)
    with transaction() as s:  # a late photo for the first drop changes that leg again
        dispatch.attach_pod(s, s.get(PartnerProfile, ramesh), first, b"\xff\xd8\xff\xe0x",
                            "image/jpeg")

    def pod_leg() -> int | None:
        with transaction() as s:
            leg = dispatch.pod_leg_of(s, s.get(PartnerProfile, ramesh))
            return leg.id if leg else None

    freeze_at(40 * 60)
    assert pod_leg() == second  # delivered last, though changed first
    freeze_at(10 * 60 + 61 * 60)
    assert pod_leg() is None  # over an hour since the last drop


# --- "we got your payment" is not followed by "looking for a rider" --------------------


def test_the_payment_message_is_the_only_news_when_dispatch_starts(live):
    from tests.test_payments_support import confirmed_booking, pay

    make_partner("Ramesh", LAXMIPUR)
    booking_id = confirmed_booking()
    run_jobs()
    assert pay(booking_id).status_code == 200
    run_jobs()  # payment webhook, then dispatch starts and offers the job
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        customer = s.get(Person, booking.customer_id)
        ref, phone, status = booking.reference, customer.phone, booking.status
        lang = customer.preferred_language
    assert status == "dispatching"
    paid = i18n.raw("payment.received", lang).split("{total}")[0].format(ref=ref)
    sent = bodies_to(phone)
    after = sent[next(i for i, b in enumerate(sent) if b.startswith(paid)):]
    assert len(after) == 1, after
    assert i18n.t("booking.status.dispatching", lang, ref=ref) not in sent


def test_a_job_given_back_tells_the_customer_we_look_again(client, live,
                                                           frozen):  # noqa: F811
    _, r_phone = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    looking = i18n.t("booking.status.dispatching", "hi", ref=_reference(booking_id))
    assert looking not in bodies_to(CUSTOMER)
    leg = legs_of(booking_id)[0]
    sms(client, r_phone, "1")
    sms(client, r_phone, f"CANCEL {leg.id}")
    assert bodies_to(CUSTOMER).count(looking) == 1


# --- the relay rider holding the parcel hears of a pause -------------------------------


def test_the_relay_rider_hears_when_nobody_takes_the_next_leg_and_when_someone_does(
        client, live, frozen):  # noqa: F811
    from tests.test_dispatch_relay import A, B, D, P

    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg1, leg2, _ = (leg.id for leg in legs_of(booking_id))
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    picked = len(bodies_to(r_phone))
    wait = i18n.t("dispatch.carrier_wait", "hi", job=str(leg1), point="Point A",
                  ops_phone=get_settings().ops_phone)
    # Nobody at Point A before the leg's deadline: the leg pauses, Ramesh is told.
    freeze_at(60 * 60 + 1)
    release_scheduled(timedelta(minutes=61))
    run_jobs()
    assert legs_of(booking_id)[1].status == "pending"
    assert i18n.t("dispatch.ops_paused", "hi", ref=_reference(booking_id),
                  job=str(leg2)) in bodies_to(OPS)
    assert bodies_to(r_phone)[picked:] == [wait]
    # Once per pause: the next round runs dry at once, and says nothing new to him ...
    freeze_at(60 * 60 + 1 + 121)
    release_scheduled(timedelta(minutes=3))
    run_jobs()
    dispatch.sweep()
    assert bodies_to(r_phone)[picked:] == [wait]
    # ... until that round pauses too.
    freeze_at(2 * 60 * 60 + 1 + 122)
    release_scheduled(timedelta(minutes=61))
    run_jobs()
    assert bodies_to(r_phone)[picked:] == [wait, wait]
    # Asha comes on duty at Point A and takes the leg: Ramesh gets the code to hand over.
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1,
                              on_duty=False)
    sms(client, a_phone, "ON")
    freeze_at(2 * 60 * 60 + 1 + 122 + 121)
    release_scheduled(timedelta(minutes=3))
    run_jobs()
    assert "आपका है" in sms(client, a_phone, "1")[0]
    handover = bodies_to(r_phone)[picked + 2:]
    assert len(handover) == 1 and handover[0].startswith(
        i18n.raw("dispatch.handover_give", "hi").split("{point}")[0].format(job=leg1))


# --- two searches offering to the same partner at once -----------------------------------


def test_two_searches_at_once_give_a_partner_one_open_offer(
        client, live, frozen, monkeypatch):  # noqa: F811
    """Two bookings paid at the same moment near the same partner: the second search,
    which ranked her before the first committed its offer, skips her row while it is
    locked and leaves her out (a bare "1" must name one job; she may be offered it once
    free), and no search waits on partners' rows, so two such searches cannot deadlock."""
    asha, _ = make_partner("Asha", LAXMIPUR)
    bala, _ = make_partner("Bala", (26.893, 84.489))
    first, second = paid_booking(), paid_booking()

    real = dispatch._sms_partner
    first_offered = threading.Event()

    def sms_partner(session, partner, key, **kw):
        got = real(session, partner, key, **kw)
        if key == "dispatch.offer" and kw.get("booking_id") == first \
                and not first_offered.is_set():
            first_offered.set()
            # The second search now reaches her locked row: it skips it (or, before the
            # skip, waits on another lock): hold this offer uncommitted until then.
            _wait_for_a_lock_waiter(done=second_done)
        return got

    monkeypatch.setattr(dispatch, "_sms_partner", sms_partner)
    errors: list[BaseException] = []
    second_done = threading.Event()

    def run(booking_id: int, wait_first: bool) -> None:
        try:
            if wait_first:
                assert first_offered.wait(10)
            dispatch.start_dispatch(booking_id)
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)
        finally:
            if wait_first:
                second_done.set()

    threads = [threading.Thread(target=run, args=(first, False)),
               threading.Thread(target=run, args=(second, True))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    open_offers = [(o.partner_id, leg.booking_id) for b in (first, second)
                   for leg in legs_of(b) for o in offers(leg.id) if o.status == "open"]
    per_partner = {p: [bk for q, bk in open_offers if q == p] for p in (asha, bala)}
    assert all(len(bookings) <= 1 for bookings in per_partner.values()), per_partner


# --- ops block a partner ----------------------------------------------------------------


def test_a_suspended_partner_cannot_collect_and_loses_the_jobs_not_picked_up(
        client, live, frozen):  # noqa: F811
    """Ops suspend a partner (a theft reported): the job they took is given to someone
    else, their open offer is withdrawn, and they cannot PICK with the customer's code."""
    from tests.test_api import API, sign_in

    ramesh, r_phone = make_partner("Ramesh", LAXMIPUR)
    first = paid_booking()
    start(first)
    assert sms(client, r_phone, "1")  # Ramesh takes the first job
    code = last_code(CUSTOMER, "पार्सल उठाने")
    second = paid_booking()
    start(second)
    (offer,) = offers(legs_of(second)[0].id)
    assert offer.partner_id == ramesh and offer.status == "open"

    ops = sign_in(client, OPS, role="ops")
    r = client.put(f"{API}/ops/partners/{ramesh}/kyc", headers=ops,
                   json={"status": "suspended", "note": "theft reported"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["kyc_status"] == "suspended" and r.get_json()["on_duty"] is False
    leg = legs_of(first)[0]
    assert leg.status == "offering" and leg.partner_id is None
    assert [o.status for o in offers(legs_of(second)[0].id)] == ["withdrawn"]
    assert i18n.t("dispatch.job_cancelled", "hi", job=dispatch.job_code(leg)) in bodies_to(
        r_phone)
    # the old code no longer works for him, nor does any PICK
    reply = " ".join(sms(client, r_phone, f"PICK {code}"))
    assert legs_of(first)[0].status == "offering", reply


def test_a_suspended_partner_may_still_deliver_the_parcel_in_hand(client, live,
                                                                 frozen):  # noqa: F811
    from tests.test_api import API, sign_in

    ramesh, r_phone = make_partner("Ramesh", LAXMIPUR)
    booking = paid_booking()
    start(booking)
    assert sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert legs_of(booking)[0].status == "picked_up"
    ops = sign_in(client, OPS, role="ops")
    r = client.put(f"{API}/ops/partners/{ramesh}/kyc", headers=ops,
                   json={"status": "suspended", "note": "documents expired"})
    assert r.status_code == 200
    assert legs_of(booking)[0].status == "picked_up"  # the parcel stays where it is
    sms(client, r_phone, f"DROP {last_code(RECIPIENT)}")
    assert legs_of(booking)[0].status == "delivered"


def test_a_drops_proof_photo_comes_with_the_drop_not_weeks_later(
        client, live, frozen, tmp_path, monkeypatch):  # noqa: F811
    """The app's upload of a delivered leg's photo: within the hour after the drop, as the
    chat files them; weeks later (a disputed delivery) it may not replace the proof."""
    from core.adapters import storage
    from core.domain.errors import ValidationError

    monkeypatch.setenv("POD_LOCAL_DIR", str(tmp_path))
    storage.reset()
    ramesh, phone = make_partner("Ramesh", LAXMIPUR)
    booking = paid_booking()
    start(booking)
    sms(client, phone, "1")
    sms(client, phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    sms(client, phone, f"DROP {last_code(RECIPIENT)}")
    leg_id = legs_of(booking)[0].id
    photo = b"\xff\xd8\xff\xe0" + b"\x01" * 100
    with transaction() as s:  # at the drop: taken
        first = dispatch.attach_pod(s, s.get(PartnerProfile, ramesh), leg_id, photo,
                                    "image/jpeg").storage_uri
    clock.freeze(clock.now() + timedelta(days=20))
    with transaction() as s, pytest.raises(ValidationError) as refused:
        dispatch.attach_pod(s, s.get(PartnerProfile, ramesh), leg_id, photo + b"2",
                            "image/jpeg")
    assert refused.value.code == "pod_not_now"
    assert legs_of(booking)[0].pod_photo_url == first
    # a WhatsApp photo filed in time whose download ran late is still stored
    with transaction() as s:
        dispatch.attach_pod(s, s.get(PartnerProfile, ramesh), leg_id, photo + b"3",
                            "image/jpeg", filed=True)
    storage.reset()

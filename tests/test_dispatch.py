"""Dispatch end to end: paid booking -> SMS offer -> "1" -> PICK/DROP with OTPs -> delivered.

Through RQ (run_jobs / release_scheduled), the real signed SMS webhook, real PostgreSQL
and Redis; time is controlled with core.clock.freeze, never slept. Payments' jobs
(release_leg, refund_booking) are asserted to be enqueued and then removed, so these tests
do not depend on payments code. The helpers here are shared by the other dispatch tests.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
from sqlalchemy import func, select

from core import clock
from core.adapters.db import transaction
from core.adapters.dispatch_models import DispatchOffer, DispatchSearch, OtpAttempt
from core.adapters.models import (
    Booking,
    Leg,
    OutboxMessage,
    PartnerProfile,
    Person,
    Point,
    TransitionLog,
    Vehicle,
)
from core.adapters.queue import enqueue, queue
from core.domain.booking import Actor, BookingStatus
from core.domain.pricing import (
    VEHICLE_CAPACITY,
    ParcelCategory,
    SizeBucket,
    SpeedTier,
    VehicleType,
    WeightBucket,
)
from core.services.booking import ParcelSpec, Place, create_booking, move_booking
from tests.conftest import post_twilio, release_scheduled, run_jobs, send_whatsapp

pytestmark = pytest.mark.db

# Real places in West Champaran, Bihar: Laxmipur BO to Bettiah HO is ~14 road km.
LAXMIPUR = (26.8927, 84.48813)
BETTIAH = (26.80228, 84.51522)
CUSTOMER = "+919876500010"
OPS = "+919000000098"
RECIPIENT = "+919876500020"
T0 = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)
_sids = count(1)
_phones = count(1)


# --- helpers shared by the dispatch tests ----------------------------------------------


def make_point(name: str, lat: float, lng: float) -> int:
    with transaction() as s:
        p = Point(name=name, lat=lat, lng=lng, pincode="845438", active=True)
        s.add(p)
        s.flush()
        return p.id


def make_partner(name: str, at: tuple[float, float], vehicle: VehicleType = VehicleType.BICYCLE,
                 *, payload_kg: int = 20, lang: str = "hi", on_duty: bool = True,
                 has_app: bool = False, rating_x100: int = 450, trust_tier: int = 1,
                 phone: str | None = None, point_id: int | None = None,
                 max_active_legs: int = 2, kyc_status: str = "verified",
                 payout_account: str | None = "") -> tuple[int, str]:
    """A partner whose home Point is at ``at``; returns (partner id, phone).

    By default one who works: KYC verified and paid to a linked account of their own
    (``acc_d`` and their number's digits; the Razorpay emulator takes any ``acc_`` id).
    ``kyc_status="pending"`` or ``payout_account=None`` make one who cannot be paid yet."""
    # Not +9190000000xx: the ops numbers (OPS, the demo operator) live there.
    phone = phone or f"+9180000{next(_phones):05d}"
    if payout_account == "":
        payout_account = f"acc_d{phone[-10:]}"
    home = point_id or make_point(f"{name} Point", *at)
    with transaction() as s:
        person = Person(phone=phone, name=name, preferred_language=lang, role="partner")
        s.add(person)
        s.flush()
        profile = PartnerProfile(person_id=person.id, first_name=name, home_point_id=home,
                                 on_duty=on_duty, has_app=has_app, rating_x100=rating_x100,
                                 trust_tier=trust_tier, max_active_legs=max_active_legs,
                                 kyc_status=kyc_status, payout_account_id=payout_account)
        s.add(profile)
        s.flush()
        s.add(Vehicle(partner_id=profile.id, type=vehicle.value, payload_kg=payload_kg,
                      max_size=VEHICLE_CAPACITY[vehicle].max_size.value))
        return profile.id, phone


def paid_booking(pickup=LAXMIPUR, drop=BETTIAH, *, size=SizeBucket.BAG, weight=WeightBucket.W5,
                 tier=SpeedTier.STANDARD, value_paise=50_000, recipient=RECIPIENT) -> int:
    """A booking moved to ``paid`` (what payments does), without dispatch enqueued yet."""
    with transaction() as s:
        customer = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        if customer is None:
            customer = Person(phone=CUSTOMER, name="Meena", role="customer",
                              preferred_language="hi")
            s.add(customer)
            s.flush()
        b = create_booking(
            s, customer_id=customer.id, channel="sms",
            pickup=Place(*pickup, pincode="845450", post_office="Laxmipur BO"),
            drop=Place(*drop, pincode="845438", post_office="Bettiah HO"),
            parcel=ParcelSpec(ParcelCategory.DOCUMENTS, size, weight,
                              declared_value_paise=value_paise),
            tier=tier, recipient_name="Sita", recipient_phone=recipient,
            actor=Actor("customer", str(customer.id)))
        move_booking(s, b, BookingStatus.AWAITING_PAYMENT, Actor.system(), "link sent")
        move_booking(s, b, BookingStatus.PAID, Actor.system(), "paid")
        return b.id


def start(booking_id: int) -> None:
    """What payments does when a booking is paid, then let the worker run it."""
    enqueue("workers.dispatch.start_dispatch", booking_id, job_id=f"dispatch-{booking_id}")
    run_jobs()


def sms(client, phone: str, body: str, sid: str | None = None) -> list[str]:
    """Send a signed partner SMS webhook; return the reply texts."""
    params = {"MessageSid": sid or f"SMd{next(_sids):06d}", "From": phone,
              "To": "+15005550006", "Body": body}
    r = post_twilio(client, "/webhooks/sms", params)
    assert r.status_code == 200, r.get_data(as_text=True)
    root = ET.fromstring(r.get_data(as_text=True))
    return [m.text or "" for m in root.iter("Message")]


def bodies_to(phone: str) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr.in_([phone, f"whatsapp:{phone}"]))
            .order_by(OutboxMessage.id)))


def last_code(phone: str, marker: str | None = None) -> str:
    """The 4-digit code in the latest message to ``phone`` (OTPs travel only by message)."""
    for body in reversed(bodies_to(phone)):
        if marker is None or marker in body:
            codes = re.findall(r"(?<!\d)\d{4}(?!\d)", body)
            if codes:
                return codes[-1]
    raise AssertionError(f"no code sent to {phone}")


def booking_status(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).status


def legs_of(booking_id: int) -> list[Leg]:
    with transaction() as s:
        return list(s.scalars(select(Leg).where(Leg.booking_id == booking_id)
                              .order_by(Leg.sequence)))


def offers(leg_id: int) -> list[DispatchOffer]:
    with transaction() as s:
        return list(s.scalars(select(DispatchOffer).where(DispatchOffer.leg_id == leg_id)
                              .order_by(DispatchOffer.id)))


def take_job(job_id: str, func_name: str, *args) -> None:
    """Assert a job for another area (payments) was enqueued, then remove it unrun."""
    job = queue("default").fetch_job(job_id)
    assert job is not None, f"{job_id} was not enqueued"
    assert job.func_name == func_name
    assert tuple(job.args) == args
    job.cancel()
    job.delete()


def freeze_at(seconds: float) -> None:
    clock.freeze(T0 + timedelta(seconds=seconds))


@pytest.fixture
def frozen():
    with transaction() as s:
        s.add(Person(phone=OPS, name="Ops", role="ops", preferred_language="hi"))
    freeze_at(0)
    yield
    clock.freeze(None)


# --- the core path -----------------------------------------------------------------------


def test_paid_booking_is_offered_accepted_picked_up_and_delivered(client, live, frozen):
    ramesh, ramesh_phone = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)

    assert booking_status(booking_id) == "dispatching"
    leg = legs_of(booking_id)[0]
    assert leg.status == "offering"
    offer_sms = bodies_to(ramesh_phone)
    assert len(offer_sms) == 1 and f"जॉब {leg.id}" in offer_sms[0]
    assert "1" in offer_sms[0] and "₹" in offer_sms[0]
    assert queue("default").fetch_job(f"offer-timeout-{offers(leg.id)[0].id}") is not None

    reply = sms(client, ramesh_phone, "1")
    assert reply[0].startswith(f"जॉब {leg.id} आपका है")
    assert CUSTOMER in reply[0]  # whom to collect from
    assert booking_status(booking_id) == "assigned"
    pick = last_code(CUSTOMER, "पार्सल उठाने")
    drop = last_code(RECIPIENT)

    wrong = "0000" if pick != "0000" else "1111"
    assert "गलत" in sms(client, ramesh_phone, f"PICK {wrong}")[0]
    assert "PICK" in sms(client, ramesh_phone, "DROP " + drop)[0]  # not picked up yet
    assert "उठ गया" in sms(client, ramesh_phone, f"pick {pick}")[0]
    assert booking_status(booking_id) == "picked_up"

    reply = sms(client, ramesh_phone, f"DROP {drop}")
    assert "पहुँच गया" in reply[0] and "₹" in reply[0]
    assert booking_status(booking_id) == "delivered"
    assert legs_of(booking_id)[0].status == "delivered"
    take_job(f"release-{leg.id}", "workers.payments.release_leg", leg.id)

    # The customer heard about every step, each with the booking reference.
    with transaction() as s:
        ref = s.get(Booking, booking_id).reference
        history = list(s.scalars(select(TransitionLog.to_status).where(
            TransitionLog.entity == "booking", TransitionLog.entity_id == booking_id)
            .order_by(TransitionLog.id)))
        attempts = s.scalar(select(func.count()).select_from(OtpAttempt))
    assert history[-4:] == ["dispatching", "assigned", "picked_up", "delivered"]
    customer_msgs = bodies_to(CUSTOMER)
    from core import i18n

    for status in ("picked_up", "delivered"):
        assert i18n.t(f"booking.status.{status}", "hi", ref=ref) in customer_msgs
    # "looking for a rider" is in the payment message, not a message of its own
    assert i18n.t("booking.status.dispatching", "hi", ref=ref) not in customer_msgs
    # "assigned" names who is coming and on what.
    assert i18n.t("dispatch.customer_assigned", "hi", ref=ref, name="Ramesh",
                  vehicle=i18n.t("vehicle.bicycle", "hi")) in customer_msgs
    assert all(ref in m for m in customer_msgs)
    assert attempts == 3  # one wrong pickup, one right pickup, one right drop
    run_jobs()  # the outbox delivers everything through the Twilio emulator


def test_start_dispatch_twice_changes_nothing(live, frozen):
    make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    from core.services import dispatch

    assert dispatch.start_dispatch(booking_id) == "already-dispatching"
    assert len(offers(legs_of(booking_id)[0].id)) == 1


def test_retried_webhook_does_not_accept_twice(client, live, frozen):
    _, phone = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    first = sms(client, phone, "YES", sid="SMretry1")
    again = sms(client, phone, "YES", sid="SMretry1")
    assert first == again
    leg = legs_of(booking_id)[0]
    with transaction() as s:
        accepted = s.scalar(select(PartnerProfile.offers_accepted).where(
            PartnerProfile.id == leg.partner_id))
        log = s.scalar(select(func.count()).select_from(TransitionLog).where(
            TransitionLog.entity == "leg", TransitionLog.entity_id == leg.id,
            TransitionLog.to_status == "assigned"))
    assert (accepted, log) == (1, 1)
    # a *new* message saying YES again is told the job is already theirs
    assert str(leg.id) in sms(client, phone, f"YES {leg.id}")[0]


def test_otp_lockout_after_five_wrong_tries_alerts_ops(client, live, frozen):
    _, phone = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    pick = last_code(CUSTOMER, "पार्सल उठाने")
    wrong = f"{(int(pick) + 1) % 10000:04d}"
    replies = [sms(client, phone, f"PICK {wrong}")[0] for _ in range(5)]
    assert "4" in replies[0] and "गलत" in replies[0]
    assert "रोक दिया" in replies[4]
    leg = legs_of(booking_id)[0]
    assert leg.status == "locked"
    ops = bodies_to(OPS)
    assert any("Ops" in b and str(leg.id) in b for b in ops)
    # Even the right code does nothing now.
    assert "रोक दिया" in sms(client, phone, f"PICK {pick}")[0]
    assert legs_of(booking_id)[0].status == "locked"
    # Ops unlock: fresh codes go out and the job continues.
    from core.services import dispatch

    with transaction() as s:
        dispatch.unlock_leg(s, leg.id, Actor("ops", "1"))
    new_pick = last_code(CUSTOMER, "पार्सल उठाने")
    assert "उठ गया" in sms(client, phone, f"PICK {new_pick}")[0]


def test_malformed_otp_is_explained_and_not_counted(client, live, frozen):
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "yes")
    assert "4-digit" in sms(client, phone, "PICK")[0]
    assert "4-digit" in sms(client, phone, "PICK 12")[0]
    assert legs_of(booking_id)[0].otp_failures == 0


# --- cascade, timeouts, widening, failure ------------------------------------------------


def test_decline_moves_the_cascade_to_the_next_batch(client, live, frozen, monkeypatch):
    near, near_phone = make_partner("Near", LAXMIPUR)
    a, a_phone = make_partner("A", (26.90, 84.49))
    b, b_phone = make_partner("B", (26.905, 84.49))
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    first = offers(leg.id)
    assert [o.partner_id for o in first] == [near]  # batch of 1: the nearest first
    assert "छोड़ दिया" in sms(client, near_phone, "2")[0]
    second = [o for o in offers(leg.id) if o.batch_no == 1]
    assert {o.partner_id for o in second} == {a, b}  # then a batch of up to 3
    # The declining partner is not offered this leg again.
    assert "नहीं" in sms(client, near_phone, "1")[0]
    # A accepts; B's offer is withdrawn by SMS and B hears it is taken.
    assert "आपका है" in sms(client, a_phone, f"haan {leg.id}")[0]
    assert any("खाली नहीं" in body for body in bodies_to(b_phone))
    assert "किसी और" in sms(client, b_phone, f"YES {leg.id}")[0]
    statuses = {o.partner_id: o.status for o in offers(leg.id)}
    assert statuses == {near: "declined", a: "accepted", b: "withdrawn"}
    # Offers received / accepted: a decline counts against the record, an offer withdrawn
    # because someone else was quicker does not.
    assert acceptance_record(near, a, b) == {near: (1, 0), a: (1, 1), b: (0, 0)}


def acceptance_record(*partner_ids: int) -> dict[int, tuple[int, int]]:
    with transaction() as s:
        return {pid: (p.offers_received, p.offers_accepted)
                for pid in partner_ids for p in [s.get(PartnerProfile, pid)]}


@pytest.mark.parametrize("change, key", [
    ("vehicle", "dispatch.unfit_vehicle"),
    ("trust", "dispatch.unfit_trust_tier"),
])
def test_acceptance_rechecks_the_partner_in_postgresql(client, live, frozen, change, key):
    # Between the offer and the "1" the partner changed (ops retired the vehicle, or
    # lowered the trust tier): the acceptance is refused by what PostgreSQL says now, and
    # the leg goes to the next partner.
    near, near_phone = make_partner("Near", LAXMIPUR)
    other, _ = make_partner("Other", (26.90, 84.49))
    booking_id = paid_booking(value_paise=2_000_00)  # tier 1 may carry it, tier 0 not
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert [o.partner_id for o in offers(leg.id)] == [near]
    with transaction() as s:
        if change == "vehicle":
            for v in s.scalars(select(Vehicle).where(Vehicle.partner_id == near)):
                v.active = False
        else:
            s.get(PartnerProfile, near).trust_tier = 0
    from core import i18n

    assert sms(client, near_phone, "1") == [i18n.t(key, "hi", job=str(leg.id))]
    assert booking_status(booking_id) == "dispatching"
    assert legs_of(booking_id)[0].partner_id is None
    assert {o.partner_id: o.status for o in offers(leg.id)} == {near: "withdrawn",
                                                                other: "open"}
    # Refused by what the platform knew late: not held against the partner's record.
    assert acceptance_record(near, other) == {near: (0, 0), other: (1, 0)}


def test_offer_expires_and_next_partner_is_offered(live, frozen):
    first, _ = make_partner("First", LAXMIPUR)
    second, _ = make_partner("Second", (26.90, 84.49))
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert [o.partner_id for o in offers(leg.id)] == [first]
    timeout_job = f"offer-timeout-{offers(leg.id)[0].id}"
    # Nothing happens before the offer's time (90 s) and its grace for late replies (30 s)
    # are up: until then "1" still takes it, so the partner gets no other offer meanwhile.
    release_scheduled(timedelta(seconds=100))
    assert queue("default").fetch_job(timeout_job).get_status() == "scheduled"
    freeze_at(121)
    release_scheduled(timedelta(seconds=121))
    assert queue("default").fetch_job(timeout_job).get_status() == "queued"
    run_jobs()
    got = {o.partner_id: o.status for o in offers(leg.id)}
    assert got == {first: "expired", second: "open"}
    assert acceptance_record(first)[first] == (1, 0)  # an offer left to expire counts


def test_timeout_after_acceptance_changes_nothing(client, live, frozen):
    _, phone = make_partner("Ramesh", LAXMIPUR)
    make_partner("Other", (26.90, 84.49))
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    sms(client, phone, "1")
    freeze_at(500)
    release_scheduled(timedelta(seconds=200))
    run_jobs()
    from core.services import dispatch

    offer_id = offers(leg.id)[0].id
    assert dispatch.offer_timeout(offer_id) == "already-accepted"
    assert [o.status for o in offers(leg.id)] == ["accepted"]
    assert legs_of(booking_id)[0].status == "assigned"
    assert booking_status(booking_id) == "assigned"


def test_sweep_expires_offers_whose_timeout_job_was_lost(live, frozen):
    first, _ = make_partner("First", LAXMIPUR)
    second, _ = make_partner("Second", (26.90, 84.49))
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    offer_id = offers(leg.id)[0].id
    # The worker died before the timeout was scheduled: the job is gone.
    queue("default").fetch_job(f"offer-timeout-{offer_id}").delete()
    from core.services import dispatch

    freeze_at(60)
    assert dispatch.sweep()["expired"] == 0  # not yet past its time (+ grace)
    freeze_at(200)
    assert dispatch.sweep()["expired"] == 1
    assert {o.partner_id: o.status for o in offers(leg.id)} == {first: "expired",
                                                                second: "open"}


def test_sweep_starts_a_paid_booking_whose_dispatch_job_was_lost(live, frozen):
    make_partner("First", LAXMIPUR)
    booking_id = paid_booking()  # paid at T0; its start_dispatch job never ran
    from core.services import dispatch

    freeze_at(60)
    assert dispatch.sweep()["started"] == 0  # the job may still be on its way
    assert booking_status(booking_id) == "paid"
    freeze_at(180)
    assert dispatch.sweep()["started"] == 1
    assert booking_status(booking_id) == "dispatching" and offers(legs_of(booking_id)[0].id)
    assert dispatch.sweep()["started"] == 0  # once


def test_search_widens_then_tells_ops_and_customer_then_fails_and_refunds(client, live, frozen):
    # Only partner is 8 km away: outside the first radius (3 km) and the second (6 km).
    far, far_phone = make_partner("Far", (26.96, 84.48813))
    booking_id = paid_booking(tier=SpeedTier.EXPRESS)  # 20 minute search deadline
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert [o.partner_id for o in offers(leg.id)] == [far]
    with transaction() as s:
        search = s.scalar(select(DispatchSearch).where(DispatchSearch.leg_id == leg.id))
        assert search.radius_step == 2  # widened 3 -> 6 -> 10 km
    sms(client, far_phone, "NO")  # nobody left anywhere: ops and customer are told
    assert any("Ops" in b for b in bodies_to(OPS))
    assert any("ढूँढ रहे" in b for b in bodies_to(CUSTOMER))
    assert booking_status(booking_id) == "dispatching"
    # After the tier's deadline the booking fails and payments is asked to refund.
    freeze_at(20 * 60 + 1)
    release_scheduled(timedelta(minutes=21))
    run_jobs_expecting_refund(booking_id)
    assert booking_status(booking_id) == "failed"
    assert legs_of(booking_id)[0].status == "failed"
    assert any("could not" in b or "नहीं पहुँच" in b or "माफ़" in b
               for b in bodies_to(CUSTOMER))


def run_jobs_expecting_refund(booking_id: int) -> None:
    """Run jobs; the refund job for payments must have been enqueued by one of them (it is
    not ours, so whether it succeeds — payments may not be merged yet — is not checked)."""
    run_jobs()
    job = queue("default").fetch_job(f"refund-{booking_id}")
    assert job is not None, "refund was not enqueued"
    assert job.func_name == "workers.payments.refund_booking"
    assert tuple(job.args) == (booking_id, "no_partner")


def test_partner_cancelling_after_accept_redispatches_and_counts_against_them(client, live,
                                                                              frozen):
    quitter, q_phone = make_partner("Quitter", LAXMIPUR, lang="en")
    other, o_phone = make_partner("Other", (26.90, 84.49))
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    sms(client, q_phone, "1")
    with transaction() as s:
        before = s.get(PartnerProfile, quitter).offers_accepted
    assert before == 1
    assert "counts against" in sms(client, q_phone, "CANCEL")[0]
    assert booking_status(booking_id) == "dispatching"
    assert legs_of(booking_id)[0].status == "offering"
    with transaction() as s:
        assert s.get(PartnerProfile, quitter).offers_accepted == 0
    open_now = [o for o in offers(leg.id) if o.status == "open"]
    assert [o.partner_id for o in open_now] == [other]
    assert "yours" not in sms(client, q_phone, f"YES {leg.id}")[0]  # not offered again
    assert "आपका है" in sms(client, o_phone, "1")[0]
    # the customer got a new pickup code for the new partner
    assert booking_status(booking_id) == "assigned"


def test_cancel_after_pickup_is_refused(client, live, frozen):
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    sms(client, phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert "cannot be given back" in sms(client, phone, "cancel")[0]
    assert legs_of(booking_id)[0].status == "picked_up"


def test_ineligible_partners_are_not_offered(live, frozen):
    make_partner("Off", LAXMIPUR, on_duty=False)
    make_partner("Tiny", LAXMIPUR, payload_kg=15)  # a 15 kg bicycle never gets a w20 parcel
    make_partner("Untrusted", LAXMIPUR, VehicleType.MOTORCYCLE, trust_tier=0)
    ok, _ = make_partner("Ok", LAXMIPUR, VehicleType.MOTORCYCLE, trust_tier=2)
    booking_id = paid_booking(size=SizeBucket.BOX, weight=WeightBucket.W20,
                              value_paise=2_000_00)
    start(booking_id)
    assert [o.partner_id for o in offers(legs_of(booking_id)[0].id)] == [ok]


def test_fresh_app_position_counts_and_stale_one_does_not(live, frozen):
    from core.services import dispatch

    app_partner, _ = make_partner("App", BETTIAH, has_app=True)  # home far from pickup
    dispatch.update_location(app_partner, *LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    assert [o.partner_id for o in offers(legs_of(booking_id)[0].id)] == [app_partner]

    # 20 minutes later the same position is stale (limit 15 min): no candidate near.
    freeze_at(20 * 60)
    booking2 = paid_booking()
    start(booking2)
    assert offers(legs_of(booking2)[0].id) == []


def test_status_and_help_and_duty(client, live, frozen):
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    assert "OFF duty" in sms(client, phone, "status")[0]
    assert "ON duty" in sms(client, phone, "चालू")[0]
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert f"Offer {leg.id}" in sms(client, phone, "STATUS")[0]
    sms(client, phone, "1")
    assert f"Job {leg.id}: go to pickup" in sms(client, phone, "status")[0]
    assert "PICK" in sms(client, phone, "help")[0]
    assert "HELP" in sms(client, phone, "what is this")[0]
    assert "OFF duty" in sms(client, phone, "बंद")[0]


def test_proof_of_delivery_photo_is_stored_for_the_partners_leg(client, live, frozen, tmp_path,
                                                                 monkeypatch):
    from core.adapters import storage
    from core.adapters.dispatch_models import PodPhoto
    from core.domain.errors import NotFound, ValidationError
    from core.services import dispatch

    monkeypatch.setenv("POD_LOCAL_DIR", str(tmp_path))
    storage.reset()
    ramesh, phone = make_partner("Ramesh", LAXMIPUR)
    other, _ = make_partner("Other", BETTIAH)
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    leg_id = legs_of(booking_id)[0].id
    photo = b"\xff\xd8\xff\xe0" + b"\x01" * 100
    with transaction() as s:  # not before pickup
        with pytest.raises(ValidationError):
            dispatch.attach_pod(s, s.get(PartnerProfile, ramesh), leg_id, photo, "image/jpeg")
    sms(client, phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    with transaction() as s:  # not someone else's job
        with pytest.raises(NotFound):
            dispatch.attach_pod(s, s.get(PartnerProfile, other), leg_id, photo, "image/jpeg")
    # A photo with the parcel in hand, before the drop, is kept as a pickup photo, not the
    # proof (it was the proof before: a photo taken before the drop code was checked cannot
    # show the parcel reached the door; as the app's upload since fb7d881).
    with transaction() as s:
        dispatch.attach_pod(s, s.get(PartnerProfile, ramesh), leg_id, photo, "image/jpeg")
        assert s.get(Leg, leg_id).pod_photo_url is None
    sms(client, phone, f"DROP {last_code(RECIPIENT)}")
    with transaction() as s:
        saved = dispatch.attach_pod(s, s.get(PartnerProfile, ramesh), leg_id, photo + b"2",
                                    "image/jpeg")
        uri = saved.storage_uri
    assert storage.read_photo(uri) == photo + b"2"
    assert list(tmp_path.rglob("*.jpg"))
    with transaction() as s:
        assert s.get(Leg, leg_id).pod_photo_url == uri
        assert s.scalar(select(func.count()).select_from(PodPhoto)) == 2
    storage.reset()


def test_going_on_duty_puts_an_sms_partner_at_home(client, live, frozen):
    from core.adapters import geo_index

    pid, phone = make_partner("Ramesh", LAXMIPUR, on_duty=False)
    geo_index.ensure_homes(lambda: [])  # index built before this partner existed
    sms(client, phone, "ON")
    hits = geo_index.nearby(*LAXMIPUR, 1, max_age_s=900, now=clock.now())
    assert [(h.partner_id, h.source) for h in hits] == [(pid, "home")]
    booking_id = paid_booking()
    start(booking_id)
    assert [o.partner_id for o in offers(legs_of(booking_id)[0].id)] == [pid]


def test_demo_data_paid_booking_reaches_a_demo_partner(client, live, frozen):
    """What `./run serve` shows: seeded partners (SMS-only ones at their home Point) get
    the offer, and "1" from the demo phone assigns it."""
    from core.services.seed import DEMO_PARTNERS, seed_demo

    seed_demo()
    booking_id = paid_booking()  # Laxmipur -> Bettiah
    start(booking_id)
    leg = legs_of(booking_id)[0]
    (offer,) = offers(leg.id)
    with transaction() as s:
        phone = s.get(Person, s.get(PartnerProfile, offer.partner_id).person_id).phone
    assert phone == DEMO_PARTNERS[0][1]  # Ramesh, bicycle, home Point Laxmipur
    assert "आपका है" in sms(client, phone, "1")[0]
    assert booking_status(booking_id) == "assigned"


def test_partner_photo_on_whatsapp_is_stored_as_proof_of_delivery(client, live, frozen):
    from sandbox.twilio import store_media

    ramesh, ramesh_phone = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    sms(client, ramesh_phone, "1")
    sms(client, ramesh_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    # The photo comes after the drop: one sent before it (the parcel on the bike) is kept
    # as a pickup photo, not the proof (tests/test_delivery_notices.py); it was the proof.
    sms(client, ramesh_phone, f"DROP {last_code(RECIPIENT)}")
    leg = legs_of(booking_id)[0]
    photo = b"\xff\xd8\xff\xe0" + b"proof-jpeg" * 20
    url = store_media(photo, "image/jpeg")
    params = {"MessageSid": "SMpod1", "From": f"whatsapp:{ramesh_phone}", "To": "whatsapp:+1",
              "Body": "", "NumMedia": "1", "MediaUrl0": url, "MediaContentType0": "image/jpeg",
              "WaId": ramesh_phone[1:]}
    assert f"जॉब {leg.id} की फ़ोटो मिल गई" in send_whatsapp(client, params)
    assert legs_of(booking_id)[0].pod_photo_url is None  # fetched by a job, not in the turn
    run_jobs()
    stored = legs_of(booking_id)[0].pod_photo_url
    assert stored
    from core.adapters.dispatch_models import PodPhoto

    with transaction() as s:
        pod = s.scalar(select(PodPhoto).where(PodPhoto.leg_id == leg.id))
        assert pod.size_bytes == len(photo) and pod.content_type == "image/jpeg"


def test_photo_from_a_partner_without_a_parcel_is_answered(client, live, frozen):
    from sandbox.twilio import store_media

    _, phone = make_partner("Ramesh", LAXMIPUR)
    params = {"MessageSid": "SMpod2", "From": f"whatsapp:{phone}", "To": "whatsapp:+1",
              "Body": "", "NumMedia": "1", "MediaUrl0": store_media(b"\xff\xd8x", "image/jpeg"),
              "MediaContentType0": "image/jpeg", "WaId": phone[1:]}
    assert "अभी आपके पास कोई पार्सल नहीं है" in send_whatsapp(client, params)
    assert queue("default").count == 0  # no photo fetch was queued


def test_the_recipient_gets_the_delivery_code_in_the_senders_language(client, live, frozen):
    # The recipient has never used RideChain: no language of their own. They hear the code
    # in the sender's language (English here), not the service default (Hindi).
    _, phone = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        person.preferred_language = "en"
        for made in s.scalars(select(Booking).where(Booking.customer_id == person.id)):
            made.language = "en"  # made in it (a booking keeps its language)
        ref = s.get(Booking, booking_id).reference
    start(booking_id)
    sms(client, phone, "1")
    (body,) = bodies_to(RECIPIENT)
    assert body == i18n_t("dispatch.drop_otp", "en", ref=ref, otp=last_code(RECIPIENT))


def i18n_t(key: str, lang: str, **params: object) -> str:
    from core import i18n

    return i18n.t(key, lang, **params)


def test_a_late_yes_within_the_grace_takes_the_offer_it_answers(client, live, frozen):
    # The offer's 90 s are over but its 30 s of grace are not: the partner's "1" takes
    # this job (not another one offered meanwhile: none is).
    first, phone = make_partner("First", LAXMIPUR, lang="en")
    make_partner("Second", (26.90, 84.49))
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    freeze_at(95)
    release_scheduled(timedelta(seconds=95))
    run_jobs()
    assert {o.partner_id: o.status for o in offers(leg.id)}[first] == "open"
    assert sms(client, phone, "1")[0].startswith(f"Job {leg.id} is yours")

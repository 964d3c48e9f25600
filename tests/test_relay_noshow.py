"""A relay rider who took the next leg and does not come to the Point for the parcel.

Leg 2 starts at a Point, where leg 1's rider brings the parcel and hands it over face to
face (each reads out a code to the other). A leg 2 rider who accepted and never comes
keeps the parcel stuck there: once the parcel is due at the Point (leg 1's pickup plus
its ride at the carrier's vehicle's speed, or the acceptance if later) and a pickup
window has passed without their PICK, they are reminded once; after a second window the
leg is taken back (it counts against them, they are not offered it again) and offered
to others, while the carrier is told to keep the parcel. The sweep finds them.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, update

from core import i18n
from core.adapters.db import transaction
from core.adapters.dispatch_models import PartnerEvent
from core.adapters.models import Booking, OutboxMessage, PartnerProfile, TransitionLog
from core.config import get_settings
from core.domain.booking import Actor
from core.domain.dispatch import VEHICLE_SPEED_KMH
from core.domain.pricing import VehicleType
from core.services import dispatch
from tests.conftest import run_jobs
from tests.test_dispatch import (
    CUSTOMER,
    OPS,
    bodies_to,
    booking_status,
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

# As in test_dispatch_relay: P -A- 7 km -B- 10 km - D 7 km, bicycles only (15 km range).
P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)
BICYCLE_KMH = VEHICLE_SPEED_KMH[VehicleType.BICYCLE]
MIN = 60


class Relay:
    """Ramesh picked the parcel up for leg 1 at t=0; Asha took leg 2 at t=0. Gita, also
    at Point A, comes on duty afterwards (the next one to offer leg 2 to)."""

    def __init__(self, client) -> None:
        self.client = client
        self.point_a = make_point("Point A", *A)
        self.point_b = make_point("Point B", *B)
        self.ramesh, self.r_phone = make_partner("Ramesh", A, point_id=self.point_a,
                                                 max_active_legs=1)
        self.asha, self.a_phone = make_partner("Asha", A, point_id=self.point_a,
                                               max_active_legs=1)
        self.booking_id = paid_booking(pickup=P, drop=D)
        start(self.booking_id)
        self.leg1, self.leg2, self.leg3 = (leg.id for leg in legs_of(self.booking_id))
        assert "आपका है" in sms(client, self.r_phone, "1")[0]
        assert "उठ गया" in sms(client, self.r_phone,
                               f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")[0]
        assert [o.partner_id for o in offers(self.leg2)] == [self.asha]
        assert "आपका है" in sms(client, self.a_phone, "1")[0]
        self.gita, self.g_phone = make_partner("Gita", A, point_id=self.point_a,
                                               max_active_legs=1, on_duty=False)
        sms(client, self.g_phone, "ON")
        # Leg 1's ride to Point A on Ramesh's bicycle: when the parcel is due there.
        self.arrival_s = legs_of(self.booking_id)[0].distance_m * 3600 / (BICYCLE_KMH * 1000)
        with transaction() as s:
            self.ref = s.get(Booking, self.booking_id).reference

    def sent(self) -> tuple[int, ...]:
        return tuple(len(bodies_to(p)) for p in (self.a_phone, self.r_phone, self.g_phone,
                                                 CUSTOMER, OPS))

    def leg(self, n: int):
        return legs_of(self.booking_id)[n - 1]


def _point_counts(done: dict[str, int]) -> tuple[int, int]:
    return done["point_late_pickups"], done["point_taken_back"]


def test_a_next_rider_who_does_not_come_is_reminded_once_then_replaced(client, live,
                                                                       frozen):  # noqa: F811
    relay = Relay(client)
    job = str(relay.leg2)
    assert relay.arrival_s > 30 * MIN  # the ride to Point A takes a while
    taken = relay.sent()

    # A first leg is chased a pickup window after it was taken; this one is not: the
    # parcel is not even at Point A yet, so Asha cannot collect it.
    freeze_at(61 * MIN)
    assert _point_counts(dispatch.sweep()) == (0, 0)
    freeze_at(relay.arrival_s + 59 * MIN)
    assert _point_counts(dispatch.sweep()) == (0, 0)
    assert relay.sent() == taken

    # A pickup window after the parcel was due at the Point: Asha is reminded, in her
    # language, and ops hear of it; the customer and Ramesh are not bothered yet.
    freeze_at(relay.arrival_s + 61 * MIN)
    assert _point_counts(dispatch.sweep()) == (1, 0)
    reminder = i18n.t("dispatch.point_pickup_late", "hi", job=job, point="Point A")
    assert f"CANCEL {job}" in reminder and "Point A" in reminder
    assert bodies_to(relay.a_phone)[taken[0]:] == [reminder]
    minutes = int((relay.arrival_s + 61 * MIN) // MIN)  # since Asha took the job
    assert bodies_to(OPS)[taken[4]:] == [i18n.t(
        "dispatch.ops_pickup_late", "hi", ref=relay.ref, job=job, minutes=minutes)]
    assert relay.sent()[1:4] == taken[1:4]
    reminded = relay.sent()
    for minute in (62, 90, 119):  # once
        freeze_at(relay.arrival_s + minute * MIN)
        assert _point_counts(dispatch.sweep()) == (0, 0)
    assert relay.sent() == reminded
    assert relay.leg(2).status == "assigned"

    # Twice the window: taken back, run by the sweep's job as in production.
    old_code = last_code(relay.a_phone, "पार्सल लें")  # Ramesh's DROP code, from Asha
    freeze_at(relay.arrival_s + 121 * MIN)
    from core.adapters.queue import enqueue

    enqueue("workers.dispatch.sweep", job_id="dispatch-sweep-test")
    run_jobs()
    leg2 = relay.leg(2)
    assert (leg2.status, leg2.partner_id) == ("offering", None)
    assert booking_status(relay.booking_id) == "picked_up"  # the parcel is still on its way
    assert {o.partner_id: o.status for o in offers(relay.leg2)} == {
        relay.asha: "cancelled", relay.gita: "open"}
    assert bodies_to(relay.a_phone)[reminded[0]:] == [
        i18n.t("dispatch.taken_back", "hi", job=job)]
    # Ramesh keeps the parcel and hears why nobody is there yet.
    assert bodies_to(relay.r_phone)[reminded[1]:] == [i18n.t(
        "dispatch.carrier_wait", "hi", job=str(relay.leg1), point="Point A",
        ops_phone=get_settings().ops_phone)]
    with transaction() as s:
        assert s.get(PartnerProfile, relay.asha).offers_accepted == 0
        events = list(s.scalars(select(PartnerEvent.kind).where(
            PartnerEvent.partner_id == relay.asha, PartnerEvent.leg_id == relay.leg2)
            .order_by(PartnerEvent.id)))
        assert events == ["pickup_reminded", "cancelled_after_accept"]
        (moved,) = s.execute(select(TransitionLog.actor, TransitionLog.reason).where(
            TransitionLog.entity == "leg", TransitionLog.entity_id == relay.leg2,
            TransitionLog.from_status == "assigned", TransitionLog.to_status == "offering"))
    assert moved.actor == str(Actor.system()) and "Point" in moved.reason

    # The code Asha had no longer hands the parcel over: with nobody on leg 2, Ramesh
    # hears again to keep the parcel (no try counted).
    assert sms(client, relay.r_phone, f"DROP {old_code}") == [i18n.t(
        "dispatch.carrier_wait", "hi", job=str(relay.leg1), point="Point A",
        ops_phone=get_settings().ops_phone)]
    assert relay.leg(1).status == "picked_up"

    # Run again: nothing more is done or said.
    taken_back = relay.sent()
    freeze_at(relay.arrival_s + 122 * MIN)
    assert _point_counts(dispatch.sweep()) == (0, 0)
    assert relay.sent() == taken_back

    # Gita takes it; the new codes make the handover work.
    assert "आपका है" in sms(client, relay.g_phone, "1")[0]
    assert "पहुँच गया" in sms(client, relay.r_phone,
                              f"DROP {last_code(relay.g_phone, 'पार्सल लें')}")[0]
    assert "उठ गया" in sms(client, relay.g_phone,
                           f"PICK {last_code(relay.r_phone, 'अगले राइडर')}")[0]
    assert relay.leg(2).partner_id == relay.gita
    # Asha is never offered the leg again, even after the offer to Gita.
    assert relay.asha not in {o.partner_id for o in offers(relay.leg2)
                              if o.status != "cancelled"}


def test_a_late_acceptance_has_its_own_window(client, live, frozen):  # noqa: F811
    # The parcel waited at Point A (Ramesh with it) until Asha took leg 2 late: her
    # window runs from her acceptance, as for a first leg.
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg2 = legs_of(booking_id)[1].id
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert offers(leg2) == []  # nobody else near
    freeze_at(50 * MIN)
    asha, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1,
                                 on_duty=False)
    sms(client, a_phone, "ON")
    dispatch.sweep()  # the search runs again (as its retry job would), now with Asha
    assert [o.partner_id for o in offers(leg2)] == [asha]
    assert "आपका है" in sms(client, a_phone, "1")[0]
    accepted_at = 50 * MIN
    # Later than the parcel was due at Point A on Ramesh's bicycle.
    assert legs_of(booking_id)[0].distance_m * 3600 / (BICYCLE_KMH * 1000) < accepted_at
    before = len(bodies_to(a_phone))
    freeze_at(accepted_at + 59 * MIN)
    assert _point_counts(dispatch.sweep()) == (0, 0)
    freeze_at(accepted_at + 61 * MIN)
    assert _point_counts(dispatch.sweep()) == (1, 0)
    assert bodies_to(a_phone)[before:] == [i18n.t(
        "dispatch.point_pickup_late", "hi", job=str(leg2), point="Point A")]
    freeze_at(accepted_at + 121 * MIN)
    assert _point_counts(dispatch.sweep()) == (0, 1)
    assert legs_of(booking_id)[1].status == "offering"


def test_a_parcel_handed_over_without_pick_is_not_a_no_show(client, live,
                                                            frozen):  # noqa: F811
    # Ramesh keyed in Asha's code: the parcel is in her hands, she just did not send PICK.
    # She is not told to come to the Point nor does she lose the job (she only hears the
    # PICK reminder: see the test after this one).
    relay = Relay(client)
    freeze_at(40 * MIN)
    assert "पहुँच गया" in sms(client, relay.r_phone,
                              f"DROP {last_code(relay.a_phone, 'पार्सल लें')}")[0]
    handed = relay.sent()
    for minute in (61, 121, 240):
        freeze_at(relay.arrival_s + minute * MIN)
        assert _point_counts(dispatch.sweep()) == (0, 0)
    job = str(relay.leg2)
    assert bodies_to(relay.a_phone)[handed[0]:] == [
        i18n.t("dispatch.handed_pick_late", "hi", job=job, point="Point A")]
    assert relay.sent()[1:4] == handed[1:4]
    assert (relay.leg(2).status, relay.leg(2).partner_id) == ("assigned", relay.asha)


def _hand_over(client, relay: Relay, at_s: float) -> tuple[int, ...]:
    """Ramesh hands the parcel to Asha at Point A at ``at_s`` (his DROP with her code);
    Asha sends no PICK. Returns the message counts after the handover."""
    freeze_at(at_s)
    assert "पहुँच गया" in sms(client, relay.r_phone,
                              f"DROP {last_code(relay.a_phone, 'पार्सल लें')}")[0]
    assert relay.leg(1).status == "delivered" and relay.leg(2).status == "assigned"
    return relay.sent()


def test_a_rider_handed_the_parcel_who_never_sends_pick_is_reminded_once(
        client, live, frozen):  # noqa: F811
    """Leg 3 is searched for only once Asha sends PICK: a rider who got the parcel at the
    Point and forgot is reminded (in her language) a pickup window after the handover,
    and ops are told, once each; the leg stays hers."""
    relay = Relay(client)
    handed_at = 40 * MIN
    handed = _hand_over(client, relay, handed_at)
    job = str(relay.leg2)

    freeze_at(handed_at + 59 * MIN)  # not before the window
    assert dispatch.sweep()["handed_unpicked"] == 0
    assert dispatch.handed_pickup_late(relay.leg2) == "not-due"
    assert relay.sent() == handed

    freeze_at(handed_at + 61 * MIN)
    assert dispatch.sweep()["handed_unpicked"] == 1
    reminder = i18n.t("dispatch.handed_pick_late", "hi", job=job, point="Point A")
    assert "PICK" in reminder and "Point A" in reminder
    assert bodies_to(relay.a_phone)[handed[0]:] == [reminder]
    assert bodies_to(OPS)[handed[4]:] == [i18n.t(
        "dispatch.ops_handed_pick_late", "hi", ref=relay.ref, job=job, point="Point A",
        minutes=61)]
    assert relay.sent()[1:4] == handed[1:4]  # Ramesh, Gita, the customer: nothing
    reminded = relay.sent()
    for minute in (62, 121, 181):  # once; never taken back
        freeze_at(handed_at + minute * MIN)
        done = dispatch.sweep()
        assert (done["handed_unpicked"], *_point_counts(done)) == (0, 0, 0)
    assert relay.sent() == reminded
    assert (relay.leg(2).status, relay.leg(2).partner_id) == ("assigned", relay.asha)
    assert offers(relay.leg3) == []  # nothing searched for leg 3 until her PICK

    # Her PICK (the code Ramesh gave her) still works, and leg 3's search starts.
    assert "उठ गया" in sms(client, relay.a_phone,
                           f"PICK {last_code(relay.r_phone, 'अगले राइडर')}")[0]
    assert relay.leg(2).status == "picked_up"


def test_a_rider_who_sends_pick_after_the_handover_is_not_reminded(client, live,
                                                                   frozen):  # noqa: F811
    relay = Relay(client)
    _hand_over(client, relay, 40 * MIN)
    freeze_at(45 * MIN)
    assert "उठ गया" in sms(client, relay.a_phone,
                           f"PICK {last_code(relay.r_phone, 'अगले राइडर')}")[0]
    picked = relay.sent()
    for minute in (101, 161):
        freeze_at(minute * MIN)
        assert dispatch.sweep()["handed_unpicked"] == 0
        assert dispatch.handed_pickup_late(relay.leg2) == "stale"
    job = str(relay.leg2)
    assert i18n.t("dispatch.handed_pick_late", "hi", job=job, point="Point A") not in (
        bodies_to(relay.a_phone)[picked[0]:])
    # (Leg 3's search goes on meanwhile, and ops hear nobody is near Point B.)
    with transaction() as s:
        assert not s.scalars(select(OutboxMessage.dedupe_key).where(
            OutboxMessage.booking_id == relay.booking_id,
            OutboxMessage.dedupe_key.like(f"leg-{job}-a%-unpicked-%"))).all()


def test_a_rider_not_handed_the_parcel_gets_no_pick_reminder(client, live,
                                                             frozen):  # noqa: F811
    # No handover yet: the Point chase applies (come and take it), not this one.
    relay = Relay(client)
    freeze_at(relay.arrival_s + 61 * MIN)
    done = dispatch.sweep()
    assert (done["handed_unpicked"], *_point_counts(done)) == (0, 1, 0)
    assert dispatch.handed_pickup_late(relay.leg2) == "stale"


def test_two_sweeps_at_once_send_the_pick_reminder_once(client, live,
                                                        frozen):  # noqa: F811
    relay = Relay(client)
    handed = _hand_over(client, relay, 40 * MIN)
    freeze_at(101 * MIN)
    assert _race(lambda: dispatch.sweep()["handed_unpicked"]) == [0, 1]
    assert _race(dispatch.handed_pickup_late, relay.leg2) == [
        "already-reminded", "already-reminded"]
    assert len(bodies_to(relay.a_phone)) == handed[0] + 1
    assert len(bodies_to(OPS)) == handed[4] + 1
    assert relay.leg(2).status == "assigned"


def test_a_leg_picked_up_at_the_point_is_not_chased(client, live, frozen):  # noqa: F811
    relay = Relay(client)
    freeze_at(40 * MIN)
    assert "उठ गया" in sms(client, relay.a_phone,
                           f"PICK {last_code(relay.r_phone, 'अगले राइडर')}")[0]
    picked = relay.sent()
    for minute in (61, 121):
        freeze_at(relay.arrival_s + minute * MIN)
        assert _point_counts(dispatch.sweep()) == (0, 0)
    # (Leg 3's own search goes on meanwhile, with its messages: nobody is near Point B.)
    job = str(relay.leg2)
    assert not {i18n.t("dispatch.point_pickup_late", "hi", job=job, point="Point A"),
                i18n.t("dispatch.taken_back", "hi", job=job)} & set(
        bodies_to(relay.a_phone)[picked[0]:])
    with transaction() as s:
        assert not s.scalars(select(OutboxMessage.dedupe_key).where(
            OutboxMessage.booking_id == relay.booking_id,
            OutboxMessage.dedupe_key.like(f"leg-{job}-a%-late-%"))).all()
    assert (relay.leg(2).status, relay.leg(2).partner_id) == ("picked_up", relay.asha)


def test_a_rider_who_took_both_legs_is_not_chased_for_the_second(client, live, frozen,  # noqa: F811
                                                                   monkeypatch):
    # Ramesh (two jobs at a time) took leg 1 and leg 2: the parcel is with him all along.
    # No longer offered the next leg of a parcel he carries (_carriers_before), but a leg
    # taken so before that rule must still not be chased.
    monkeypatch.setattr(dispatch, "_carriers_before", lambda session, leg: set())
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    ramesh, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=2)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg2 = legs_of(booking_id)[1].id
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert [o.partner_id for o in offers(leg2)] == [ramesh]
    assert "आपका है" in sms(client, r_phone, f"1 {leg2}")[0]
    for minute in (121, 181, 300):
        freeze_at(minute * MIN)
        assert _point_counts(dispatch.sweep()) == (0, 0)
    assert (legs_of(booking_id)[1].status, legs_of(booking_id)[1].partner_id) == (
        "assigned", ramesh)


def test_a_closed_booking_is_not_chased(client, live, frozen):  # noqa: F811
    # No flow closes a booking whose parcel is on its way today; if one does (ops), its
    # legs are not chased or offered again.
    relay = Relay(client)
    with transaction() as s:
        s.execute(update(Booking).where(Booking.id == relay.booking_id)
                  .values(status="failed"))
    before = relay.sent()
    for minute in (61, 121):
        freeze_at(relay.arrival_s + minute * MIN)
        assert _point_counts(dispatch.sweep()) == (0, 0)
        assert dispatch.point_pickup_late(relay.leg2) == "stale"
    assert relay.sent() == before
    assert relay.leg(2).status == "assigned"


def test_a_suspended_rider_is_not_reminded(client, live, frozen):  # noqa: F811
    relay = Relay(client)
    # Ops suspend Asha: the leg goes back to offering at once (block_partner) and the
    # sweep says nothing more to her.
    with transaction() as s:
        dispatch.block_partner(s, relay.asha, Actor("ops", "1"))
    assert relay.leg(2).status == "offering"
    before = len(bodies_to(relay.a_phone))
    for minute in (61, 121):
        freeze_at(relay.arrival_s + minute * MIN)
        assert _point_counts(dispatch.sweep()) == (0, 0)
    assert len(bodies_to(relay.a_phone)) == before


def test_a_suspended_rider_still_holding_the_job_is_not_told_to_go(client, live,
                                                                   frozen):  # noqa: F811
    # Suspended without block_partner (the row changed by hand): a PICK from her would be
    # refused, so when the parcel is due she is not sent there; the leg is taken back.
    relay = Relay(client)
    with transaction() as s:
        s.execute(update(PartnerProfile).where(PartnerProfile.id == relay.asha)
                  .values(kyc_status="suspended"))
    before = len(bodies_to(relay.a_phone))
    freeze_at(relay.arrival_s + 61 * MIN)
    assert _point_counts(dispatch.sweep()) == (0, 1)
    assert bodies_to(relay.a_phone)[before:] == [
        i18n.t("dispatch.job_cancelled", "hi", job=str(relay.leg2))]
    assert relay.leg(2).status == "offering"
    assert {o.partner_id: o.status for o in offers(relay.leg2)}[relay.asha] == "cancelled"


def test_a_suspended_rider_holding_the_parcel_keeps_the_leg(client, live,
                                                            frozen):  # noqa: F811
    relay = Relay(client)
    sms(client, relay.r_phone, f"DROP {last_code(relay.a_phone, 'पार्सल लें')}")
    with transaction() as s:
        assert dispatch.block_partner(s, relay.asha, Actor("ops", "1")) == [relay.leg2]
    for minute in (61, 121):
        freeze_at(relay.arrival_s + minute * MIN)
        assert _point_counts(dispatch.sweep()) == (0, 0)
    assert (relay.leg(2).status, relay.leg(2).partner_id) == ("assigned", relay.asha)


def test_the_third_leg_of_a_relay_is_chased_the_same_way(client, live,
                                                         frozen):  # noqa: F811
    relay = Relay(client)
    bala, b_phone = make_partner("Bala", B, point_id=relay.point_b, max_active_legs=1,
                                 on_duty=False)
    sms(client, b_phone, "ON")
    # Handover at A at 50 min; Asha picks up leg 2 then, and Bala takes leg 3 (Point B).
    freeze_at(50 * MIN)
    sms(client, relay.r_phone, f"DROP {last_code(relay.a_phone, 'पार्सल लें')}")
    assert "उठ गया" in sms(client, relay.a_phone,
                           f"PICK {last_code(relay.r_phone, 'अगले राइडर')}")[0]
    assert [o.partner_id for o in offers(relay.leg3)] == [bala]
    assert "आपका है" in sms(client, b_phone, "1")[0]
    arrival = 50 * MIN + relay.leg(2).distance_m * 3600 / (BICYCLE_KMH * 1000)
    before = (len(bodies_to(b_phone)), len(bodies_to(relay.a_phone)))
    freeze_at(arrival + 59 * MIN)
    assert _point_counts(dispatch.sweep()) == (0, 0)
    freeze_at(arrival + 61 * MIN)
    assert _point_counts(dispatch.sweep()) == (1, 0)
    assert bodies_to(b_phone)[before[0]:] == [i18n.t(
        "dispatch.point_pickup_late", "hi", job=str(relay.leg3), point="Point B")]
    freeze_at(arrival + 121 * MIN)
    assert _point_counts(dispatch.sweep()) == (0, 1)
    assert (relay.leg(3).status, relay.leg(3).partner_id) == ("offering", None)
    assert relay.leg(2).status == "picked_up"  # Asha still has the parcel ...
    assert bodies_to(relay.a_phone)[before[1]:] == [i18n.t(  # ... and keeps it safe
        "dispatch.carrier_wait", "hi", job=str(relay.leg2), point="Point B",
        ops_phone=get_settings().ops_phone)]


def _race(func, *args) -> list[str]:
    barrier = threading.Barrier(2)
    results: list[str] = []

    def run() -> None:
        barrier.wait()
        results.append(func(*args))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return sorted(results)


def test_two_sweeps_at_once_remind_and_take_back_once(client, live, frozen):  # noqa: F811
    relay = Relay(client)
    taken = relay.sent()
    freeze_at(relay.arrival_s + 61 * MIN)
    assert _race(dispatch.point_pickup_late, relay.leg2) == ["already-reminded", "reminded"]
    assert len(bodies_to(relay.a_phone)) == taken[0] + 1
    assert len(bodies_to(OPS)) == taken[4] + 1
    freeze_at(relay.arrival_s + 121 * MIN)
    assert _race(dispatch.point_pickup_late, relay.leg2) == ["stale", "taken-back"]
    assert bodies_to(relay.a_phone)[-1] == i18n.t("dispatch.taken_back", "hi",
                                                  job=str(relay.leg2))
    assert len(bodies_to(relay.a_phone)) == taken[0] + 2
    assert [o.status for o in offers(relay.leg2)].count("cancelled") == 1
    with transaction() as s:
        assert s.scalar(select(PartnerProfile.offers_accepted).where(
            PartnerProfile.id == relay.asha)) == 0


def test_ops_unlocking_the_carrier_s_handover_does_not_take_the_next_leg_back_at_once(
        client, live, frozen):  # noqa: F811
    """Ramesh reaches Point A on time; the handover codes go wrong and leg 1 locks, so
    nobody can hand over. Ops unlock it a while later and send both riders fresh codes:
    Asha, who is told the new code to read out, must get a window for the handover, not
    lose the job (counted against her) at the very next sweep."""
    relay = Relay(client)
    freeze_at(relay.arrival_s + 5 * MIN)  # Ramesh at Point A, on time
    old = last_code(relay.a_phone, "पार्सल लें")
    wrong = f"{(int(old) + 1) % 10000:04d}"
    for _ in range(5):
        sms(client, relay.r_phone, f"DROP {wrong}")
    assert relay.leg(1).status == "locked"
    freeze_at(relay.arrival_s + 61 * MIN)  # locked: nothing to chase
    assert _point_counts(dispatch.sweep()) == (0, 0)
    freeze_at(relay.arrival_s + 150 * MIN)  # ops get to it
    with transaction() as s:
        dispatch.unlock_leg(s, relay.leg1, Actor("ops", "1"))
    assert relay.leg(1).status == "picked_up"
    before = len(bodies_to(relay.a_phone))
    freeze_at(relay.arrival_s + 151 * MIN)  # the next sweep, a minute later
    done = dispatch.sweep()
    assert (relay.leg(2).status, relay.leg(2).partner_id) == ("assigned", relay.asha), (
        _point_counts(done), bodies_to(relay.a_phone)[before:])

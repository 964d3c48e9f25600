"""Taken jobs that stall: a pickup that does not happen, a delivery past the tier's hours.

The sweep (every minute in production) finds them. The clock is frozen and moved, the
sweep called as its job would; every message is looked for in the outbox, once.
"""

from __future__ import annotations

import pytest

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, PartnerProfile
from core.domain.dispatch import DispatchConfigError
from core.services import dispatch
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    OPS,
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

pytestmark = pytest.mark.db


def _reference(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).reference


def _sent(*phones: str) -> tuple[int, ...]:
    return tuple(len(bodies_to(p)) for p in phones)


@pytest.fixture
def pickup_window(monkeypatch):
    """Sets DISPATCH_PICKUP_MINUTES for one test."""

    def set_to(value: str) -> None:
        monkeypatch.setenv("DISPATCH_PICKUP_MINUTES", value)
        dispatch.reset_config()

    yield set_to
    monkeypatch.delenv("DISPATCH_PICKUP_MINUTES", raising=False)
    dispatch.reset_config()


def test_a_job_not_picked_up_is_chased_once_then_taken_back_and_offered_again(
        client, live, frozen):  # noqa: F811
    ramesh, r_phone = make_partner("Ramesh", LAXMIPUR)
    suresh, _ = make_partner("Suresh", (26.895, 84.49))  # a little farther: offered next
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    job, ref = str(leg.id), _reference(booking_id)
    assert [o.partner_id for o in offers(leg.id)] == [ramesh]
    assert "आपका है" in sms(client, r_phone, "1")[0]
    taken = _sent(r_phone, CUSTOMER, OPS)

    freeze_at(59 * 60)  # DISPATCH_PICKUP_MINUTES defaults to 60
    assert dispatch.sweep()["late_pickups"] == 0
    assert _sent(r_phone, CUSTOMER, OPS) == taken

    freeze_at(61 * 60)
    assert dispatch.sweep()["late_pickups"] == 1
    reminder = i18n.t("dispatch.pickup_late", "hi", job=job)
    assert f"CANCEL {job}" in reminder
    assert bodies_to(r_phone)[taken[0]:] == [reminder]
    assert bodies_to(CUSTOMER)[taken[1]:] == [
        i18n.t("dispatch.customer_rider_late", "hi", ref=ref)]
    assert bodies_to(OPS)[taken[2]:] == [
        i18n.t("dispatch.ops_pickup_late", "hi", ref=ref, job=job, minutes=60)]
    reminded = _sent(r_phone, CUSTOMER, OPS)
    for minute in (62, 90, 119):  # once: later sweeps say nothing more
        freeze_at(minute * 60)
        assert dispatch.sweep()["late_pickups"] == 0
    assert _sent(r_phone, CUSTOMER, OPS) == reminded
    assert legs_of(booking_id)[0].status == "assigned"

    # Twice the window and still not picked up: taken back, as if Ramesh had given it
    # back (it counts against him), and offered to the next partner.
    freeze_at(121 * 60)
    assert dispatch.sweep()["taken_back"] == 1
    leg = legs_of(booking_id)[0]
    assert (leg.status, leg.partner_id) == ("offering", None)
    assert booking_status(booking_id) == "dispatching"
    assert {o.partner_id: o.status for o in offers(leg.id)} == {ramesh: "cancelled",
                                                               suresh: "open"}
    with transaction() as s:
        assert s.get(PartnerProfile, ramesh).offers_accepted == 0
    assert bodies_to(r_phone)[reminded[0]:] == [i18n.t("dispatch.taken_back", "hi", job=job)]
    assert bodies_to(CUSTOMER)[reminded[1]:] == [
        i18n.t("dispatch.customer_rider_replaced", "hi", ref=ref)]
    taken_back = _sent(r_phone, CUSTOMER, OPS)
    freeze_at(122 * 60)
    assert dispatch.sweep()["taken_back"] == 0
    assert _sent(r_phone, CUSTOMER, OPS) == taken_back


def test_a_job_picked_up_in_time_is_not_chased(client, live, frozen):  # noqa: F811
    _, r_phone = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    sms(client, r_phone, "1")
    freeze_at(50 * 60)
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    picked = _sent(r_phone, CUSTOMER, OPS)
    for minute in (61, 121, 240):
        freeze_at(minute * 60)
        done = dispatch.sweep()
        assert (done["late_pickups"], done["taken_back"]) == (0, 0)
    assert _sent(r_phone, CUSTOMER, OPS) == picked
    assert legs_of(booking_id)[0].status == "picked_up"


def test_the_pickup_window_is_a_setting(client, live, frozen, pickup_window):  # noqa: F811
    pickup_window("30")
    _, r_phone = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    sms(client, r_phone, "1")
    freeze_at(31 * 60)
    assert dispatch.sweep()["late_pickups"] == 1
    assert bodies_to(OPS)[-1] == i18n.t("dispatch.ops_pickup_late", "hi", job=str(
        legs_of(booking_id)[0].id), ref=_reference(booking_id), minutes=30)
    freeze_at(61 * 60)
    assert dispatch.sweep()["taken_back"] == 1
    for wrong in ("0", "an hour"):
        pickup_window(wrong)
        with pytest.raises(DispatchConfigError, match="DISPATCH_PICKUP_MINUTES"):
            dispatch.pickup_window()


def test_a_parcel_not_delivered_in_the_tiers_hours_alerts_ops_once(client, live,
                                                                    frozen):  # noqa: F811
    _, r_phone = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()  # standard: DISPATCH_DELIVERY_HOURS standard=8
    start(booking_id)
    sms(client, r_phone, "1")
    freeze_at(10 * 60)
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    leg = legs_of(booking_id)[0]
    picked = _sent(r_phone, CUSTOMER, OPS)
    freeze_at(10 * 60 + 8 * 3600 - 60)
    assert dispatch.sweep()["late_deliveries"] == 0
    assert _sent(r_phone, CUSTOMER, OPS) == picked
    freeze_at(10 * 60 + 8 * 3600 + 60)
    assert dispatch.sweep()["late_deliveries"] == 1
    assert bodies_to(OPS)[picked[2]:] == [i18n.t(
        "dispatch.ops_delivery_late", "hi", ref=_reference(booking_id), job=str(leg.id),
        hours=8)]
    alerted = _sent(r_phone, CUSTOMER, OPS)
    for hours in (9, 24):  # once; the parcel is with Ramesh: no new offer
        freeze_at(hours * 3600)
        assert dispatch.sweep()["late_deliveries"] == 0
    assert _sent(r_phone, CUSTOMER, OPS) == alerted
    assert legs_of(booking_id)[0].status == "picked_up"
    assert [o.status for o in offers(leg.id)] == ["accepted"]

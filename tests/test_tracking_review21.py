"""Review 21 (tracking and the customer's lists): a relay's ETA after its search paused,
a cancellable booking behind eight on the way, and what tracking says of a relay ops
ended with the parcel in a rider's hands. Real PostgreSQL, Redis, RQ, the Razorpay
emulator and the signed webhooks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.dispatch_models import DispatchSearch
from core.adapters.models import Booking
from core.domain.booking import BookingStatus
from core.services import partner_app, tracking
from tests.conftest import release_scheduled, run_jobs
from tests.test_dialog_gaps import Chat
from tests.test_dispatch import (
    CUSTOMER,
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
from tests.test_ivr import phone, prompts, t  # noqa: F401  (fixtures)
from tests.test_ivr_cancel import option, set_status, unpaid_booking

pytestmark = pytest.mark.db

# As in test_dispatch_relay: P -A- 7 km -B- 10 km - D 7 km (straight), bicycles only.
P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)
PICK_MARK = "पार्सल उठाने"


# --- 1. no ETA in the round after a pause ----------------------------------------------


def test_no_eta_in_the_round_after_a_pause_while_the_next_leg_still_has_no_rider(
        client, live, frozen):  # noqa: F811
    """Leg 2's search paused at its deadline ("still looking" told); two minutes later a
    new round is searching ("active"), nobody has the leg still: no arrival time may be
    shown for that round either (tracking._search_paused saw only "paused")."""
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    ramesh, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg2 = legs_of(booking_id)[1].id
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    assert offers(leg2) == []
    # Before the deadline an ETA is shown (the whole relay still to ride).
    partner_app.record_location(ramesh, *A, 10, clock.now())
    with transaction() as s:
        assert tracking.position_and_eta(s, s.get(Booking, booking_id)).eta_minutes
    freeze_at(60 * 60 + 1)
    release_scheduled(timedelta(minutes=61))
    run_jobs()
    with transaction() as s:
        assert s.scalar(select(DispatchSearch.status).where(
            DispatchSearch.leg_id == leg2)) == "paused"
    # The next round starts two minutes later; nobody is around still.
    freeze_at(60 * 60 + 1 + 121)
    release_scheduled(timedelta(minutes=64))
    run_jobs()
    with transaction() as s:
        search = s.scalar(select(DispatchSearch).where(DispatchSearch.leg_id == leg2))
        assert (search.status, search.round) == ("active", 2)
    assert legs_of(booking_id)[1].partner_id is None
    partner_app.record_location(ramesh, *A, 10, clock.now())
    with transaction() as s:
        where = tracking.position_and_eta(s, s.get(Booking, booking_id))
    assert where.position == {"lat": A[0], "lng": A[1]}
    assert where.eta_minutes is None, where


# --- 2. a cancellable booking behind eight on the way ----------------------------------


def _older_waiting_behind_eight_on_the_way(phone_number: str) -> str:
    """The customer's oldest booking waits for payment (cancellable); eight newer ones
    are picked up (not). The waiting one's reference."""
    waiting = unpaid_booking(phone_number)
    for _ in range(8):
        set_status(unpaid_booking(phone_number), "picked_up")
    with transaction() as s:
        s.execute(update(Booking).where(Booking.reference != waiting)
                  .values(created_at=Booking.created_at + timedelta(minutes=1)))
    return waiting


def test_the_phone_menu_offers_an_older_booking_behind_bookings_on_the_way(phone):  # noqa: F811
    """Press 5 on the phone: the list was cut to the 8 newest open bookings before those
    that cannot be cancelled were dropped, so "no booking can be cancelled" was said; a
    caller cannot type a reference. The one that can be cancelled is offered, and goes."""
    waiting = _older_waiting_behind_eight_on_the_way(phone.phone)
    phone.call()
    phone.press("1")  # हिंदी
    heard = phone.press("5")
    assert t("ivr.cancel.none") not in heard.text
    assert option(waiting) in heard.text
    phone.press("1")  # the one offered
    phone.press("1")  # cancel it
    with transaction() as s:
        assert s.scalar(select(Booking.status).where(Booking.reference == waiting)) \
            == BookingStatus.CANCELLED.value


def test_the_chat_cancel_list_shows_an_older_booking_behind_bookings_on_the_way(
        client) -> None:
    """WhatsApp's cancel list (menu 3) lists 8 open bookings: the one that can still be
    cancelled is among them, not left out for eight parcels on the road."""
    from tests.test_payments_support import new_customer

    me = "+919812340001"
    new_customer(me)  # English
    waiting = _older_waiting_behind_eight_on_the_way(me)
    chat = Chat(client, me)
    chat.send("hi")
    listed = chat.send("3")
    assert i18n.t("booking.status.awaiting_payment", "en", ref=waiting) in listed, listed
    chosen = chat.send(waiting[-8:])  # typed, as the list invites
    assert i18n.t("bot.cancel.free", "en", ref=waiting) in chosen, chosen


# --- 3. tracking a relay ops ended with the parcel in a rider's hands ------------------


def test_tracking_a_stuck_relay_ops_ended_says_the_rider_was_paid_and_the_rest_comes_back(
        client, live, frozen):  # noqa: F811
    """Ops ended a relay stuck for want of a rider (booking failed; Asha, holding the
    parcel, paid her leg; the rest refunded). Tracking said "we could not find a rider
    for your parcel; your money will be sent back": untrue, part of it went to the
    rider. It says what happened, before the refund is back and after."""
    from tests.test_relay_stuck_cancel import _asha_holds_leg2_nobody_takes_leg3, _ops

    case = _asha_holds_leg2_nobody_takes_leg3(client)
    ref = case["ref"]
    r = client.post(f"/api/v1/bookings/{ref}/cancel?reason=no+rider+at+Point+B",
                    headers=_ops(client))
    assert r.status_code == 200 and r.get_json()["fee_paise"] == case["fee"] > 0
    assert r.get_json()["refund_paise"] == case["refund"] > 0
    with transaction() as s:
        assert s.get(Booking, case["booking_id"]).status == BookingStatus.FAILED.value
    chat = Chat(client, CUSTOMER)  # Meena, in Hindi
    chat.send("hi")
    listed = chat.send("2")
    tracked = chat.send(ref)
    for said in (listed, tracked):
        assert i18n.t("booking.status.failed", "hi", ref=ref) not in said, said
        assert i18n.t("booking.status.stuck_ended", "hi", ref=ref) in said, said
    run_jobs()  # the gateway: the rest refunded, the booking refunded
    with transaction() as s:
        assert s.get(Booking, case["booking_id"]).status == BookingStatus.REFUNDED.value
    chat.send("2")
    tracked = chat.send(ref)
    assert i18n.t("booking.status.refunded", "hi", ref=ref) not in tracked, tracked
    assert i18n.t("booking.status.stuck_refunded", "hi", ref=ref) in tracked, tracked


def test_a_booking_nobody_took_is_still_said_so(client) -> None:
    """A booking failed for want of a first rider (no leg in a rider's hands) keeps its
    words: nobody found, all the money comes back."""
    from tests.test_payments_support import confirmed_booking

    bid = confirmed_booking("+919812340001")
    with transaction() as s:
        ref = s.get(Booking, bid).reference
    set_status(ref, BookingStatus.FAILED.value)
    chat = Chat(client, "+919812340001")
    chat.send("hi")
    chat.send("2")
    tracked = chat.send(ref)
    assert i18n.t("booking.status.failed", "en", ref=ref) in tracked, tracked

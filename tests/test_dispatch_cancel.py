"""A booking cancelled before pickup stops its legs, and one partner's two acceptances at
once respect their capacity. Real PostgreSQL, Redis and RQ; the clock is frozen."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text

from core import i18n
from core.adapters.db import engine, transaction
from core.adapters.dispatch_models import DispatchOffer, DispatchSearch
from core.adapters.models import Booking, PartnerProfile
from core.domain.booking import Actor
from core.domain.dispatch import OfferStatus
from core.services import dispatch, payments
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
    offers,
    paid_booking,
    sms,
    start,
)

pytestmark = pytest.mark.db


def cancel(booking_id: int) -> None:
    """What the chat, the IVR and the app do when the customer cancels."""
    with transaction() as s:
        payments.cancel_booking(s, s.get(Booking, booking_id), Actor("customer", "1"),
                                "customer cancelled on whatsapp")


def active_legs(partner_id: int) -> int:
    with transaction() as s:
        partner = s.get(PartnerProfile, partner_id)
        return dispatch.partner_facts(s, [partner])[partner_id].active_legs


def test_cancelling_an_assigned_booking_stops_the_leg_and_frees_the_partner(client, live,
                                                                             frozen):  # noqa: F811
    partner, phone = make_partner("Ramesh", LAXMIPUR, lang="en", max_active_legs=1)
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert sms(client, phone, "1")[0].startswith(f"Job {leg.id} is yours")
    pickup_code = last_code(CUSTOMER, "पार्सल उठाने")
    assert active_legs(partner) == 1
    cancel(booking_id)
    assert legs_of(booking_id)[0].status == "cancelled"
    assert bodies_to(phone)[-1] == i18n.t("dispatch.job_cancelled", "en", job=str(leg.id))
    assert active_legs(partner) == 0
    # The cancelled parcel cannot be picked up any more: its code names the job cancelled.
    assert sms(client, phone, f"PICK {pickup_code}") == [
        i18n.t("dispatch.job_cancelled", "en", job=str(leg.id))]
    assert legs_of(booking_id)[0].status == "cancelled"
    # The freed partner gets the next job nearby (max_active_legs=1).
    second = paid_booking()
    start(second)
    assert [o.partner_id for o in offers(legs_of(second)[0].id)] == [partner]


def test_cancelling_while_offering_withdraws_the_offers_and_ends_the_search(client, live,
                                                                            frozen):  # noqa: F811
    near, near_phone = make_partner("Near", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    (offer,) = offers(leg.id)
    cancel(booking_id)
    assert legs_of(booking_id)[0].status == "cancelled"
    assert [o.status for o in offers(leg.id)] == ["withdrawn"]
    assert bodies_to(near_phone)[-1] == i18n.t("dispatch.withdrawn", "hi", job=str(leg.id))
    with transaction() as s:
        search = s.scalar(select(DispatchSearch).where(DispatchSearch.leg_id == leg.id))
        assert (search.status, search.next_try_at) == ("done", None)
    assert acceptance_record(near) == {near: (0, 0)}  # withdrawn: not held against them
    freeze_at(200)
    assert dispatch.offer_timeout(offer.id) == "already-withdrawn"
    assert sms(client, near_phone, "1") == [i18n.t("dispatch.no_offer", "hi")]


def test_one_partner_accepting_two_jobs_at_once_stays_within_capacity(client, live,
                                                                      frozen):  # noqa: F811
    # Two searches that ran at the same time each offered a job to the same partner, who
    # can carry one. Their two "yes" are handled at the same time: one gets the job.
    partner, _ = make_partner("Ramesh", LAXMIPUR, lang="en", max_active_legs=1)
    first, second = paid_booking(), paid_booking()
    start(first)
    start(second)
    leg1, leg2 = legs_of(first)[0], legs_of(second)[0]
    assert [o.partner_id for o in offers(leg1.id)] == [partner]
    assert offers(leg2.id) == []  # the partner had an open offer already
    with transaction() as s:  # what the concurrent search would have written
        s.add(DispatchOffer(leg_id=leg2.id, partner_id=partner, status=OfferStatus.OPEN.value,
                            round=1, pass_no=1, batch_no=0, distance_m=10, score=0.1,
                            offered_at=offers(leg1.id)[0].offered_at,
                            expires_at=offers(leg1.id)[0].expires_at))
    outcome: dict[str, str] = {}
    done = threading.Event()

    def second_yes() -> None:
        try:
            with transaction() as s:
                me = s.get(PartnerProfile, partner)
                outcome["second"] = dispatch.accept(s, me, str(leg2.id)).key
        finally:
            done.set()

    with transaction() as s:
        me = s.get(PartnerProfile, partner)
        outcome["first"] = dispatch.accept(s, me, str(leg1.id)).key
        worker = threading.Thread(target=second_yes)
        worker.start()
        # Hold the first acceptance open until the second either finished (no lock kept
        # it out) or waits on a row lock held by this transaction.
        while not done.is_set() and not _waiting_on_a_lock():
            done.wait(0.01)
    worker.join(timeout=30)
    assert outcome["first"] == "dispatch.accepted"
    # The first job filled him up, which withdrew his other offer (it was "finish one
    # first" while that offer stayed open: tests/test_dispatch_review.py).
    assert outcome["second"] == "dispatch.withdrawn"
    assert [o.status for o in offers(leg2.id)] == ["withdrawn"]
    assert active_legs(partner) == 1


def _waiting_on_a_lock() -> bool:
    with engine().connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'")).scalar())


def test_a_suspended_partner_cannot_go_on_duty_or_take_an_open_offer(client, live,
                                                                      frozen):  # noqa: F811
    # Ops suspend a partner who has an open offer: their "1" is refused (the offer moves
    # on, not held against them), and ON by SMS does not put them back on duty.
    from core.config import get_settings

    partner, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    other, _ = make_partner("Other", (26.90, 84.49))
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert [o.partner_id for o in offers(leg.id)] == [partner]
    with transaction() as s:  # what PUT /ops/partners/<id>/kyc does
        p = s.get(PartnerProfile, partner)
        p.kyc_status, p.on_duty = "suspended", False
    blocked = i18n.t("dispatch.duty_blocked", "en", ops_phone=get_settings().ops_phone)
    assert sms(client, phone, "1") == [blocked]
    assert {o.partner_id: o.status for o in offers(leg.id)} == {partner: "withdrawn",
                                                                other: "open"}
    assert legs_of(booking_id)[0].partner_id is None
    assert sms(client, phone, "ON") == [blocked]
    with transaction() as s:
        assert s.get(PartnerProfile, partner).on_duty is False


def test_a_pickup_code_in_devanagari_digits_is_the_same_code(client, live,
                                                              frozen):  # noqa: F811
    # The partner app passes the code as typed; ४८२१ is 4821, not a wrong try.
    partner, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    code = last_code(CUSTOMER, "पार्सल उठाने")
    devanagari = "".join(chr(0x0966 + int(d)) for d in code)
    with transaction() as s:
        reply = dispatch.confirm(s, s.get(PartnerProfile, partner), "pickup", (devanagari,))
    assert reply.key == "dispatch.picked"
    assert legs_of(booking_id)[0].status == "picked_up"


def test_starting_a_dispatch_locks_the_legs_before_the_booking(live):
    """Cancelling takes the legs' locks, then the booking's: a dispatch starting at the
    same moment must take them in the same order, or each waits on the other."""
    from sqlalchemy import event

    from core.adapters import db

    booking_id = paid_booking()
    locks: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if "FOR UPDATE" in statement:
            locks.append("legs" if "FROM legs" in statement else
                         "bookings" if "FROM bookings" in statement else "other")

    event.listen(db.engine(), "before_cursor_execute", seen)
    try:
        assert dispatch.start_dispatch(booking_id) == "dispatching"
    finally:
        event.remove(db.engine(), "before_cursor_execute", seen)
    assert locks[:2] == ["legs", "bookings"]


def test_going_off_duty_answers_the_offer_in_hand_and_the_next_partner_gets_it(client, live):
    from tests.test_dispatch import make_partner, offers, sms, start

    first, first_phone = make_partner("Ramesh", LAXMIPUR, lang="en", rating_x100=500)
    second, _ = make_partner("Suresh", (LAXMIPUR[0] + 0.01, LAXMIPUR[1]), lang="en",
                             rating_x100=100)
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert [(o.partner_id, o.status) for o in offers(leg.id)] == [(first, "open")]
    assert any("Job" in b for b in bodies_to(first_phone))
    assert "OFF duty" in sms(client, first_phone, "OFF")[0]
    # Expired, not declined: back ON, he may be asked again (tests/test_dispatch_review.py).
    assert {o.partner_id: o.status for o in offers(leg.id)} == {first: "expired",
                                                                second: "open"}


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_the_rider_cancelled_with_a_fee_sms_fits_two_unicode_sms(lang: str) -> None:
    # One SMS says both: do not go, and the fee is theirs. An SMS in an Indic script
    # (UCS-2) holds 70 characters, two of them 134; in English (GSM-7) one holds 160.
    text = i18n.t("dispatch.job_cancelled_fee", lang, job="12345678", fee_paise=123456)
    assert len(text) <= (160 if text.isascii() else 134), f"{lang}: {len(text)} characters"

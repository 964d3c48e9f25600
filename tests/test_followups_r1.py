"""Follow-ups of an end-to-end review's journeys (r1): an unpaid booking tracked gives its
payment link again; an operator's cancel after assignment tells the fee to the customer
and the rider and keeps the operator's reason; a pickup code typed in two parts is read;
a customer texting our SMS number is told how to track or cancel their booking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from core import clock, i18n
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage, Person, TransitionLog
from core.adapters.queue import enqueue
from core.config import get_settings
from core.dialog import spoken
from core.domain.booking import Actor, BookingStatus
from core.domain.dispatch import split_otp_and_job
from core.domain.pricing import SpeedTier
from core.services import payments
from core.services.booking import create_booking, move_booking
from tests.conftest import run_jobs
from tests.test_api import sign_in
from tests.test_dispatch import CUSTOMER as DISPATCH_CUSTOMER
from tests.test_dispatch import LAXMIPUR as DISPATCH_AT
from tests.test_dispatch import booking_status, frozen, last_code, legs_of, make_partner, sms, start  # noqa: F401,E501
from tests.test_dispatch import paid_booking as dispatch_booking
from tests.test_ivr import book_in_hindi, phone, prompts, t  # noqa: F401 (fixtures)
from tests.test_payments_support import BAG, BETTIAH, LAXMIPUR, paid_booking
from tests.test_whatsapp_rating import CUSTOMER as WA_CUSTOMER
from tests.test_whatsapp_rating import chat, wa  # noqa: F401 (fixture)

pytestmark = pytest.mark.db


def unpaid_booking(phone_number: str, channel: str) -> tuple[int, str]:
    """A booking of this customer waiting for payment (its link job queued, not run)."""
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == phone_number))
        actor = Actor("customer", str(person.id))
        b = create_booking(s, customer_id=person.id, channel=channel, pickup=LAXMIPUR,
                           drop=BETTIAH, parcel=BAG, tier=SpeedTier.STANDARD,
                           recipient_name=None, recipient_phone=None, actor=actor)
        payments.request_payment_link(s, b, actor)
        return b.id, b.reference


def link_url(booking_id: int) -> str:
    with transaction() as s:
        url = payments.payment_url(s, s.get(Booking, booking_id))
    assert url
    return url


def sms_bodies(to: str) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == to, OutboxMessage.channel == "sms")
            .order_by(OutboxMessage.id)))


# --- 1. tracking a booking that waits for payment ------------------------------------------


def test_whatsapp_track_of_an_unpaid_booking_gives_its_link(live, chat):  # noqa: F811
    bid, ref = unpaid_booking(WA_CUSTOMER, "whatsapp")
    wa(chat, "2")
    reply = wa(chat, "1")  # the link job has not run yet
    assert i18n.t("booking.status.awaiting_payment", "en", ref=ref) in reply
    assert i18n.t("bot.track.link_coming", "en") in reply
    run_jobs()  # the link is made (and sent once, as always)
    with transaction() as s:
        total = s.get(Booking, bid).total_paise
    wa(chat, "2")
    reply = wa(chat, "1")
    assert i18n.t("bot.track.pay", "en", url=link_url(bid), total_paise=total) in reply
    assert i18n.t("bot.track.link_coming", "en") not in reply


def test_ivr_track_of_an_unpaid_booking_sends_the_link_again_by_sms(live, phone):  # noqa: F811
    book_in_hindi(phone)
    phone.hang_up()
    with transaction() as s:
        bid, ref, total = s.execute(select(Booking.id, Booking.reference,
                                           Booking.total_paise)).one()
    spelled = spoken.spell_digits(ref)
    phone.call()
    phone.press("2")
    heard = phone.press("1")  # no link yet: it is on its way
    assert t("booking.status.awaiting_payment", ref=spelled) in heard.text
    assert t("ivr.track.link_coming") in heard.text and t("ivr.menu") in heard.text
    phone.hang_up()
    run_jobs()  # the link is made and sent by SMS
    with transaction() as s:
        left = payments.minutes_to_pay(s.get(Booking, bid))  # the SMS says it (session 30)
    link_sms = i18n.t("pay.link", "hi", ref=ref, total_paise=total, url=link_url(bid),
                      minutes=left)
    assert sms_bodies(phone.phone).count(link_sms) == 1

    phone.call()
    phone.press("2")
    heard = phone.press("1")
    assert t("ivr.track.link_sent") in heard.text
    assert sms_bodies(phone.phone).count(link_sms) == 2
    phone.press("2")
    heard = phone.press("1")  # again at once: not sent twice, and not said to be
    assert t("ivr.track.link_recent", minutes=10) in heard.text
    assert sms_bodies(phone.phone).count(link_sms) == 2
    phone.hang_up()

    clock.freeze(clock.now() + payments.LINK_AGAIN_EVERY)
    phone.call()
    phone.press("2")
    phone.press("1")
    later = i18n.t("pay.link", "hi", ref=ref, total_paise=total, url=link_url(bid),
                   minutes=left - 10)  # sent 10 minutes later: 10 minutes less to pay
    assert sms_bodies(phone.phone).count(link_sms) == 2
    assert sms_bodies(phone.phone).count(later) == 1
    run_jobs()


# --- 2. an operator cancels after a rider took the job --------------------------------------

OPERATOR = "+919000000098"
REASON = "customer asked by phone"


def assigned_booking(client) -> tuple[int, str, str]:
    """A paid booking a rider (English) has taken: (booking id, reference, rider's phone)."""
    bid = paid_booking()
    _, rider = make_partner("Ramesh", DISPATCH_AT, lang="en")
    enqueue("workers.dispatch.start_dispatch", bid, job_id=f"dispatch-{bid}")
    run_jobs()
    assert sms(client, rider, "1")
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b.status == BookingStatus.ASSIGNED.value
        return bid, b.reference, rider


def cancel_reason(booking_id: int) -> str | None:
    with transaction() as s:
        return s.scalar(select(TransitionLog.reason).where(
            TransitionLog.entity == "booking", TransitionLog.entity_id == booking_id,
            TransitionLog.to_status == "cancelled"))


def test_ops_cancel_after_assignment_tells_the_customer_and_the_rider_the_fee(client, live):
    bid, ref, rider = assigned_booking(client)
    told_rider = len(sms_bodies(rider))
    ops = sign_in(client, OPERATOR, role="ops")
    r = client.post(f"/api/v1/bookings/{ref}/cancel", headers=ops)
    assert r.status_code == 200 and r.get_json()["cancelled"], r.get_json()
    fee, refund = r.get_json()["fee_paise"], r.get_json()["refund_paise"]
    assert fee > 0 and refund > 0
    customer = sms_bodies("+919812340001")  # paid_booking's customer, English, by SMS
    assert customer[-1] == i18n.t("bot.cancel.done_fee", "en", ref=ref, fee_paise=fee,
                                  refund_paise=refund)
    with transaction() as s:
        leg_id = s.scalar(select(func.min(TransitionLog.entity_id)).where(
            TransitionLog.entity == "leg"))
    # One SMS to the rider: do not go, and the fee is theirs.
    assert sms_bodies(rider)[told_rider:] == [
        i18n.t("dispatch.job_cancelled_fee", "en", job=str(leg_id), fee_paise=fee)]
    assert cancel_reason(bid) == "cancelled by ops"  # not "in the app"
    run_jobs()


def test_an_operators_reason_is_kept_in_the_history_and_the_audit_log(client, live):
    bid = paid_booking()
    with transaction() as s:
        ref = s.get(Booking, bid).reference
    ops = sign_in(client, OPERATOR, role="ops")
    r = client.post(f"/api/v1/bookings/{ref}/cancel?reason=ab", headers=ops)
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "reason"
    r = client.post(f"/api/v1/bookings/{ref}/cancel?reason={quote(REASON)}", headers=ops)
    assert r.status_code == 200 and r.get_json()["cancelled"], r.get_json()
    with transaction() as s:
        audit = s.scalar(select(AuditEntry).where(AuditEntry.action == "booking.cancel"))
    assert cancel_reason(bid) == f"cancelled by ops: {REASON}"
    assert audit.details["reason"] == REASON
    run_jobs()


# --- 3. a pickup code typed in two parts ---------------------------------------------------


def test_an_otp_typed_in_parts_is_one_otp_when_no_part_is_a_job_code() -> None:
    assert split_otp_and_job(("62", "04"), ["17"]) == ("6204", None)
    assert split_otp_and_job(("6", "2", "0", "4"), ["17"]) == ("6204", None)
    assert split_otp_and_job(("62", "04", "17"), ["17", "18"]) == ("6204", "17")
    assert split_otp_and_job(("17", "62", "04"), ["17", "18"]) == ("6204", "17")
    # A part that is one of the partner's jobs is that job, as before (the OTP "04" is then
    # too short, and the answer says the right form).
    assert split_otp_and_job(("62", "04"), ["62"]) == ("04", "62")
    # Neither an OTP nor a job of theirs: a malformed OTP (the answer shows the form), not
    # "you have no job 0".
    assert split_otp_and_job(("62", "0"), ["17"]) == ("62", None)
    assert split_otp_and_job(("4821", "99"), ["17"]) == ("4821", "99")  # a job not theirs


def test_pick_with_the_otp_typed_in_two_parts_picks_up(client, live, frozen):  # noqa: F811
    _, rider = make_partner("Ramesh", DISPATCH_AT, lang="en")
    bid = dispatch_booking()
    start(bid)
    assert sms(client, rider, "1")
    job = str(legs_of(bid)[0].id)
    code = last_code(DISPATCH_CUSTOMER, "पार्सल उठाने")
    assert sms(client, rider, "pick 62 0") == [i18n.t("dispatch.otp_format_pick", "en")]
    first, rest = next((code[:i], code[i:]) for i in (2, 1, 3) if job not in (code[:i],
                                                                             code[i:]))
    reply = sms(client, rider, f"pick {first} {rest}")
    assert booking_status(bid) == "picked_up", reply
    assert legs_of(bid)[0].otp_failures == 0


# --- 4. a customer texts our SMS number ----------------------------------------------------


def test_a_customer_with_a_booking_under_way_is_told_how_to_track_or_cancel(client):
    day_one = datetime(2026, 12, 3, 4, 0, tzinfo=UTC)  # 09:30 in India
    clock.freeze(day_one)
    customer = "+919811111115"
    with transaction() as s:
        person = Person(phone=customer, role="customer", preferred_language="hi")
        s.add(person)
        s.flush()
        b = create_booking(s, customer_id=person.id, channel="voice", pickup=LAXMIPUR,
                           drop=BETTIAH, parcel=BAG, tier=SpeedTier.STANDARD,
                           recipient_name=None, recipient_phone=None,
                           actor=Actor("customer", str(person.id)))
        move_booking(s, b, BookingStatus.AWAITING_PAYMENT, Actor.system(), "link sent")
        ref = b.reference
    try:
        told = [i18n.t("sms.customer_help", "hi", ref=ref)]
        assert get_settings().twilio_voice_number in told[0]
        assert "2" in told[0] and "5" in told[0]  # the IVR's track and cancel keys
        assert sms(client, customer, "CANCEL") == told
        assert sms(client, customer, "CANCEL") == []  # once a day, like a stranger
        clock.freeze(day_one + timedelta(days=1))
        assert sms(client, customer, "hello") == told
        with transaction() as s:
            move_booking(s, s.get(Booking, b.id), BookingStatus.EXPIRED, Actor.system(),
                         "not paid")
        clock.freeze(day_one + timedelta(days=2))
        assert sms(client, customer, "hello") == [  # nothing under way: how to book
            i18n.t("sms.not_partner", "hi", ops_phone=get_settings().ops_phone)]
    finally:
        clock.freeze(None)

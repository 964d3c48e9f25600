"""A caller hears again what they need to (k2): the same pickup code, the truth about star,
and no second payment for a parcel booked again.

1. After hearing a new pickup code, a caller could not hear it again: star repeated only
   the menu, and 1 made another new code (one of the MAX_CODES_READ). Now "to hear the
   code again, press 1" repeats the same code; the copy kept for that lives only for the
   call and is gone from the database once the call ends.
2. ``ivr.hint`` promised that star repeats anything, but star repeats only the question
   being asked: the hint now says so.
3. A booking still awaiting payment past its time (the sweep not run yet) was booked again
   while its link could still take a payment: both could be paid. Booking it again now
   closes it first, as the expiry sweep does (its link cancelled), so a late payment of
   the old booking goes back.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from core import clock, i18n
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Booking, Conversation
from core.adapters.payment_models import PaymentLink, Refund
from core.dialog import spoken
from core.domain.booking import BookingStatus
from core.services import ivr, payments
from tests.conftest import release_scheduled
from tests.test_dispatch import sms
from tests.test_ivr import Caller, phone, prompts, t  # noqa: F401  (fixtures)
from tests.test_ivr_more import (  # noqa: F401  (fixtures)
    assigned,
    book_in_hindi,
    frozen,
    heard_code,
    jobs,
    the_booking,
    track_first,
)
from tests.test_notice_review import ref_of

pytestmark = pytest.mark.db


def rows_holding(code: str, ref: str) -> list[str]:
    """The tables with a row whose text holds ``code`` as said on a call ("1 2 3 4") or
    as a JSON string ("1234"); the booking's number, said digit by digit, left aside."""
    spelled = re.escape(" ".join(code))
    pattern = rf"(?<![0-9])(?<![0-9] ){spelled}(?![0-9])(?! [0-9])|\"{code}\""
    found = []
    with transaction() as s:
        tables = s.scalars(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).all()
        for table in tables:
            n = s.scalar(text(
                f'SELECT count(*) FROM "{table}" AS r '
                "WHERE replace(CAST(r AS text), :ref, '') ~ :pattern"),
                {"ref": spoken.spell_digits(ref), "pattern": pattern})
            if n:
                found.append(table)
    return found


def codes_read(booking_id: int) -> int:
    with transaction() as s:
        return int(s.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == ivr.CODE_READ,
            AuditEntry.target == f"booking:{booking_id}")) or 0)


# --- 1. the same pickup code, heard again -------------------------------------------------

def test_a_caller_hears_the_same_code_again_and_the_ended_call_keeps_it_nowhere(
        client, assigned):  # noqa: F811
    booking_id, rider, caller = assigned
    ref = ref_of(booking_id)
    track_first(caller)
    heard = caller.press("1")
    code = heard_code(heard, ref)
    assert t("ivr.code.again_offer", "en") in heard.text, heard.text
    again = caller.press("1")
    assert t("ivr.pickup.ask", "en") not in again.text, "1 started a booking"
    assert heard_code(again, ref) == code, "not the same code"
    assert t("ivr.code.again_offer", "en") in again.text
    assert t("ivr.code.again_offer", "en") in caller.press("*").text
    assert heard_code(caller.press("1"), ref) == code  # a third time
    assert codes_read(booking_id) == 1, "hearing it again made a new code"
    assert rows_holding(code, ref), "the test sees the code where it is kept"
    caller.hang_up()
    assert rows_holding(code, ref) == [], "the code outlived the call"
    assert "picked up" in sms(client, rider, f"PICK {code}")[0]


def test_the_kept_code_goes_when_the_status_callback_never_comes(client, assigned):  # noqa: F811
    booking_id, _, caller = assigned
    ref = ref_of(booking_id)
    track_first(caller)
    code = heard_code(caller.press("1"), ref)
    caller.press("1")
    jobs()
    assert rows_holding(code, ref), "not before its time"
    assert release_scheduled(ivr.CODE_KEPT_FOR_CALL + timedelta(seconds=5)) >= 1
    jobs()
    assert rows_holding(code, ref) == []


def test_a_new_call_does_not_repeat_the_code_of_the_last(client, assigned):  # noqa: F811
    booking_id, _, caller = assigned
    ref = ref_of(booking_id)
    track_first(caller)
    code = heard_code(caller.press("1"), ref)
    heard = caller.call()  # the line dropped without a status callback; they call again
    heard = caller.press("1")  # the menu's 1: a booking, not the last call's code
    assert " ".join(code) not in heard.text and t("ivr.pickup.ask", "en") in heard.text
    assert rows_holding(code, ref) == []


# --- 2. star: what the hint says it does --------------------------------------------------

def test_star_repeats_the_question_as_the_hint_says(phone):  # noqa: F811
    phone.call()
    heard = phone.press("1")  # Hindi: the hint, then the menu
    assert t("ivr.hint") in heard.text
    again = phone.press("*")
    asked = [" ".join(said.split()) for said in again.in_gather()]
    assert asked == [t("ivr.menu")], "star repeats the question, and only it"
    assert i18n.t("ivr.hint", "en").startswith("To hear the question again, press star."), (
        "the hint promises more than star does")


# --- 3. an overdue booking booked again cannot be paid twice -------------------------------

def test_an_overdue_booking_is_booked_again_only_once_the_sweep_closed_it(
        live, phone):  # noqa: F811
    """Half a minute past its time the sweep has not asked the gateway yet (a payment made
    in time may be on its way): the caller is asked to call again, nothing is booked or
    closed. Once the sweep closed it (link cancelled), the same parcel is booked again,
    and a payment the old link took all the same goes back."""
    book_in_hindi(phone)
    phone.hang_up()
    jobs()  # the link is made and sent
    old_id, old_ref = the_booking()
    with transaction() as s:
        old = s.get(Booking, old_id)
        total, expires_at = old.total_paise, old.expires_at
    clock.freeze(expires_at + timedelta(seconds=30))  # the sweep not run yet
    heard = track_first(phone)
    assert t("ivr.rebook.checking") in heard.text and t("ivr.rebook.offer") not in heard.text
    phone.hang_up()
    with transaction() as s:
        assert s.get(Booking, old_id).status == BookingStatus.AWAITING_PAYMENT.value
        assert s.scalar(select(func.count()).select_from(Booking)) == 1
    clock.freeze(expires_at + timedelta(minutes=2))
    assert payments.expire_unpaid() == 1  # the gateway says not paid: closed
    jobs()  # the old link is closed at the gateway (past its expire_by: expired there)
    with transaction() as s:
        assert s.get(Booking, old_id).status == BookingStatus.EXPIRED.value
        link = s.scalar(select(PaymentLink).where(PaymentLink.booking_id == old_id))
        assert link is not None and link.status == "expired"
    heard = track_first(phone)
    assert t("ivr.rebook.offer") in heard.text
    phone.press("1")  # book the same parcel again
    phone.press("1")  # book it
    new_id, _ = the_booking()
    assert new_id != old_id
    phone.hang_up()
    # A payment of the old link the gateway took all the same: given back, not kept.
    assert payments.record_capture(old_id, "pay_late_old", total,
                                   cause="test:late") == "refund-late-payment"
    with transaction() as s:
        assert s.get(Booking, old_id).status == BookingStatus.EXPIRED.value
        assert s.scalar(select(func.count()).select_from(Refund).where(
            Refund.booking_id == old_id)) == 1


def test_a_booking_paid_in_its_last_minute_is_not_offered_again(live, phone):  # noqa: F811
    """Paid in its last seconds, its webhook late: the call past its time offers no new
    booking (the caller is asked to call again), and once the payment is recorded the
    caller hears the booking is paid."""
    book_in_hindi(phone)
    phone.hang_up()
    jobs()
    old_id, old_ref = the_booking()
    with transaction() as s:
        old = s.get(Booking, old_id)
        total = old.total_paise
        clock.freeze(old.expires_at + timedelta(seconds=30))
    heard = track_first(phone)
    assert t("ivr.rebook.checking") in heard.text and t("ivr.rebook.offer") not in heard.text
    phone.hang_up()
    assert payments.record_capture(old_id, "pay_in_time", total, cause="test:late") == "paid"
    heard = track_first(phone)
    assert t("booking.status.paid", ref=spoken.spell_digits(old_ref)) in heard.text
    assert t("ivr.rebook.offer") not in heard.text
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(Booking)) == 1
        conv = s.scalar(select(Conversation).where(Conversation.channel == "voice"))
        assert not (conv.state or {}).get("slots")

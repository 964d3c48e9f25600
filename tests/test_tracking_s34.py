"""Session 34 (H19): what tracking says about an unpaid booking, and the chat's village
list. Each test failed on the code as it was; its docstring says what was wrong."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from bots import whatsapp_text
from core import clock, i18n
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, Person
from core.dialog import spoken
from core.dialog.engine import Choices, DialogState
from core.domain.booking import BookingStatus
from core.services import payments
from core.services.conversation import SessionPorts
from tests.test_dialog import FakePorts, play
from tests.test_ivr import Caller, Heard, phone, prompts, t  # noqa: F401
from tests.test_ivr_cancel import status_of, unpaid_booking
from tests.test_paylink_s34 import booked_in, messages
from tests.test_payments_support import booking, confirmed_booking, failed_jobs, link_of, pay, run


def _tracked(bid: int) -> tuple[str, str]:
    """(what the chat's tracking answers for the booking, its reference)."""
    with transaction() as s:
        b = s.get(Booking, bid)
        person = s.get(Person, b.customer_id)
        return SessionPorts(s, person, None).booking_status(b.reference) or "", b.reference


# --- 1. paid in the last minute, its webhook late -----------------------------------------

@pytest.mark.db
def test_tracking_a_booking_paid_in_time_whose_webhook_is_late_says_we_are_checking(live):
    """She pays in the last minute; the capture webhook's job has not run when her time
    ends. Tracking in the chat said "the time to pay is over" at once, before the sweep
    asked the gateway (which then finds the payment: paid). It should say her time has
    ended and we are checking whether her payment came, as the IVR does."""
    bid = confirmed_booking()
    run()  # the link
    assert pay(bid).status_code == 200  # captured at the gateway; its webhook job waits
    b = booking(bid)
    clock.freeze(b.expires_at + timedelta(seconds=30))
    status, ref = _tracked(bid)
    assert status == "pay_checking", status
    said = i18n.t(f"booking.status.{status}", "en", ref=ref)
    assert "time to pay is over" not in said and "checking" in said, said
    payments.expire_unpaid(b.expires_at + timedelta(minutes=2))
    assert booking(bid).status == BookingStatus.PAID.value  # it was paid in time


@pytest.mark.db
def test_tracking_an_unpaid_booking_before_its_time_ends_still_says_waiting(live):
    bid = confirmed_booking()
    run()
    status, _ = _tracked(bid)
    assert status == BookingStatus.AWAITING_PAYMENT.value


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_the_checking_status_is_told_in_every_language(lang: str) -> None:
    text = i18n.t("booking.status.pay_checking", lang, ref="12345678")
    assert "12345678" in text and text != i18n.t("booking.status.pay_time_over", lang,
                                                 ref="12345678")


# --- 2. a payment link cancelled in Razorpay's dashboard ----------------------------------

@pytest.mark.db
def test_chat_tracking_after_a_dashboard_cancelled_link_says_the_link_was_stopped(live):
    """Support cancels the link in the dashboard: the booking closes and she is told the
    link was stopped (payment.link_cancelled). Tracking in the chat then said "time ran
    out, so it is closed"; it should say the link was stopped."""
    bid = booked_in("en")
    gw.client().payment_link.cancel(link_of(bid).gateway_id)  # as the dashboard does
    run()
    assert not failed_jobs()
    b = booking(bid)
    assert b.status == BookingStatus.EXPIRED.value
    assert messages(bid)[-1] == i18n.t("payment.link_cancelled", "en", ref=b.reference)
    status, ref = _tracked(bid)
    assert status == "link_stopped", status
    said = i18n.t(f"booking.status.{status}", "en", ref=ref)
    assert "time ran out" not in said and "stopped" in said, said


@pytest.mark.db
def test_chat_tracking_a_booking_whose_time_ran_out_still_says_so(live):
    bid = booked_in("en")
    b = booking(bid)
    payments.expire_unpaid(b.expires_at + timedelta(minutes=2))
    assert booking(bid).status == BookingStatus.EXPIRED.value
    status, _ = _tracked(bid)
    assert status == BookingStatus.EXPIRED.value


@pytest.mark.db
def test_ivr_tracking_after_a_dashboard_cancelled_link_says_the_link_was_stopped(
        live, phone):  # noqa: F811
    """The same booking tracked on the phone: the caller heard "time ran out, so it is
    closed", then the offer to book it again. She should hear the link was stopped; the
    offer to book the same parcel again stays."""
    with transaction() as s:
        s.add(Person(phone=phone.phone, role="customer", preferred_language="en"))
    ref = unpaid_booking(phone.phone)
    run()  # the link
    with transaction() as s:
        bid = s.scalar(select(Booking.id).where(Booking.reference == ref))
    gw.client().payment_link.cancel(link_of(bid).gateway_id)
    run()
    assert not failed_jobs()
    assert status_of(ref) == BookingStatus.EXPIRED.value
    phone.call()
    phone.press("2")
    heard = phone.press("1")
    spelled = spoken.spell_digits(ref)
    assert t("booking.status.expired", "en", ref=spelled) not in heard.text, heard.text
    assert t("booking.status.link_stopped", "en", ref=spelled) in heard.text, heard.text
    assert t("ivr.rebook.offer", "en") in heard.text, heard.text


# --- 3. the chat's village list: its last page --------------------------------------------

@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_chat_last_page_of_villages_says_9_starts_again(lang: str) -> None:
    """11 villages: pages of 8 and 3. On the last page 9 starts the list again, but the
    list still offered "9. More" (more names). It should say 9 gives the names from the
    start, as the IVR does (ivr.more_again); the first page still offers more."""
    state, ports = DialogState("pickup"), FakePorts()
    first = play(state, ports, "845438")
    shown_first = "\n".join(whatsapp_text.render(first, lang))
    assert f"9. {i18n.t('bot.more', lang)}" in shown_first, shown_first
    assert i18n.t("bot.more_again", lang) not in shown_first, shown_first
    outs = play(state, ports, "9")  # the last page
    last = [o for o in outs if isinstance(o, Choices)][0]
    assert last.options == ("Village 9", "Village 10", "Village 11")
    shown = "\n".join(whatsapp_text.render(outs, lang))
    assert f"9. {i18n.t('bot.more', lang)}" not in shown, shown
    assert f"3. Village 11\n{i18n.t('bot.more_again', lang)}" in shown, shown
    after = play(state, ports, "9")
    again = [o for o in after if isinstance(o, Choices)][0]
    assert again.options[0] == "Village 1"  # 9 went back to the start

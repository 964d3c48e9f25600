"""A booking paid in time whose webhook is late is not closed and refunded by a call (22909cc).

VoicePorts.close_overdue expires the old booking the moment its time is over, without
asking the gateway (as payments.expire_unpaid does, and without its one-minute grace). A
customer who paid in the link's last minute, whose webhook is still on its way, has the
paid booking expired on the call and the payment sent back (payment.after_expiry): the
sweep documents exactly this case as "recorded as paid, not expired and then refunded".
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core import clock
from core.adapters.db import transaction
from core.adapters.models import Booking
from core.adapters.payment_models import Refund
from core.domain.booking import BookingStatus
from core.services import payments
from sandbox import razorpay as emu
from tests.test_ivr import phone, prompts  # noqa: F401  (fixtures)
from tests.test_ivr_more import book_in_hindi, jobs, the_booking, track_first
from tests.test_payments_support import pay
from tests.test_payments_timing import drop_webhooks

pytestmark = pytest.mark.db


def test_a_booking_paid_in_time_whose_webhook_is_late_is_not_closed_and_refunded_by_a_call(
        live, phone):  # noqa: F811
    book_in_hindi(phone)
    phone.hang_up()
    jobs()  # the link is made and sent
    old_id, _ = the_booking()
    with transaction() as s:
        expires_at = s.get(Booking, old_id).expires_at
    clock.freeze(expires_at - timedelta(seconds=20))
    assert pay(old_id).status_code == 200  # paid in time at the gateway
    drop_webhooks()  # its webhooks are late (lost): only asking the gateway tells
    clock.freeze(expires_at + timedelta(seconds=10))
    track_first(phone)  # its time is over, but the gateway was not asked yet
    phone.press("1")  # at the menu: a new booking, not this one again
    phone.hang_up()
    jobs()
    clock.freeze(expires_at + timedelta(minutes=2))
    payments.expire_unpaid()  # the sweep asks the gateway: paid in time
    jobs()
    with transaction() as s:
        status = s.get(Booking, old_id).status
        refunds = s.scalar(select(func.count()).select_from(Refund).where(
            Refund.booking_id == old_id))
    assert status not in (BookingStatus.EXPIRED.value, BookingStatus.REFUNDED.value), status
    assert refunds == 0, "a booking paid in time was expired by the call and its payment sent back"
    assert emu._all("refund") == []

"""Booking again by phone a parcel whose receiver asked us to forget her.

An overdue booking is offered again on the phone ("book the same parcel again"), with
the old booking's places, receiver and parcel. When the receiver had been erased
(retention.erase_recipient: her name and number gone from the bookings sent to her), the
new booking was made with no receiver's number, and its drop code went to the caller.
Now the caller is asked the receiver's number again before the summary. Signed voice
webhooks, RQ, the sandbox gateway.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import clock
from core.adapters.db import transaction
from core.adapters.models import Booking
from core.services import payments, retention
from tests.test_ivr import book_in_hindi, phone, prompts, t  # noqa: F401  (fixtures)
from tests.test_ivr_more import jobs, the_booking, track_first

pytestmark = pytest.mark.db

RECEIVER = "+919876543210"  # book_in_hindi's
NEW_RECEIVER = "9812345670"


def test_a_booking_again_asks_the_erased_receivers_number(live, phone) -> None:  # noqa: F811
    book_in_hindi(phone)
    phone.hang_up()
    jobs()
    old_id, _ = the_booking()
    with transaction() as s:
        expires_at = s.get(Booking, old_id).expires_at
    clock.freeze(expires_at + timedelta(minutes=2))
    assert payments.expire_unpaid() == 1
    jobs()
    with transaction() as s:
        retention.erase_recipient(s, RECEIVER, actor="ops:1", reason="she asked")
        assert s.get(Booking, old_id).recipient_phone is None

    heard = track_first(phone)
    assert t("ivr.rebook.offer") in heard.text
    heard = phone.press("1")  # book the same parcel again
    assert t("ivr.phone.ask") in heard.text, heard.text
    phone.press(NEW_RECEIVER + "#")
    heard = phone.press("1")  # right
    assert "Laxmipur" in heard.text and t("ivr.confirm.yes") in heard.text, heard.text
    phone.press("1")  # book it
    new_id, _ = the_booking()
    assert new_id != old_id
    with transaction() as s:
        assert s.get(Booking, new_id).recipient_phone == "+91" + NEW_RECEIVER

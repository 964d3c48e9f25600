"""A code whose copy failed too (its WhatsApp message missed the window, and the SMS that
carried it instead never arrived) is lost like any other: made again, rider and ops told
(found by a review, session 21: only a row of the code's own key counted)."""

from __future__ import annotations

import pytest

from tests.test_code_delivery import pickup_rows, rider_told, taken
from tests.test_dispatch import CUSTOMER, frozen, paid_booking, sms  # noqa: F401
from tests.test_notice_review import cannot_deliver, codes_in, customer_speaks, report
from tests.test_outbox_review21 import _by_key, _chats_on_whatsapp

pytestmark = pytest.mark.db


def test_a_pickup_code_whose_sms_copy_never_arrived_is_made_again(
        client, live, frozen):  # noqa: F811
    booking_id = paid_booking()
    customer_speaks("en")
    _chats_on_whatsapp(CUSTOMER)
    cannot_deliver(f"whatsapp:{CUSTOMER}", "undelivered", "63016")
    cannot_deliver(CUSTOMER, "undelivered", "30003")  # and her phone is off
    rider = taken(client, booking_id)
    refused = pickup_rows(booking_id)[0]
    copy = _by_key(f"sms-for-{refused.id}")
    assert copy is not None and copy.channel == "sms" and copy.status == "undelivered"
    (old_code,) = codes_in([copy.body])

    rows = pickup_rows(booking_id)
    assert len(rows) == 2, "the code reached nobody, and no new one was made"
    (new_code,) = codes_in([rows[-1].body])
    assert new_code != old_code
    assert rider_told(rider, booking_id) == 1
    report(client, copy.provider_sid, "undelivered", "30003")  # the report again
    assert len(pickup_rows(booking_id)) == 2  # once
    assert "picked up" in sms(client, rider, f"PICK {new_code}")[0]


def test_a_copy_that_arrived_changes_nothing(client, live, frozen):  # noqa: F811
    booking_id = paid_booking()
    customer_speaks("en")
    _chats_on_whatsapp(CUSTOMER)
    cannot_deliver(f"whatsapp:{CUSTOMER}", "undelivered", "63016")
    rider = taken(client, booking_id)
    (refused,) = pickup_rows(booking_id)
    copy = _by_key(f"sms-for-{refused.id}")
    assert copy is not None
    (code,) = codes_in([copy.body])
    report(client, copy.provider_sid, "delivered", "")
    assert len(pickup_rows(booking_id)) == 1
    assert rider_told(rider, booking_id) == 0
    assert "picked up" in sms(client, rider, f"PICK {code}")[0]

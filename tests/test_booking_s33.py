"""Session 33: the unpaid-cancel limit counts the customer's own cancels only (R3)."""

from __future__ import annotations

import pytest

from core.adapters.db import transaction
from core.domain.booking import Actor
from core.domain.pricing import SpeedTier
from core.services import booking as booking_service
from core.services import payments
from tests.test_payments_support import BAG, BETTIAH, LAXMIPUR, new_customer

pytestmark = pytest.mark.db
OPS = Actor("ops", "99")


def _book(cid: int) -> int:
    with transaction() as s:
        b = booking_service.create_booking(
            s, customer_id=cid, channel="whatsapp", pickup=LAXMIPUR, drop=BETTIAH, parcel=BAG,
            tier=SpeedTier.STANDARD, recipient_name=None, recipient_phone=None,
            actor=Actor("customer", str(cid)))
        payments.request_payment_link(s, b, Actor("customer", str(cid)))
        return b.id


def _cancel(bid: int, actor: Actor) -> None:
    with transaction() as s:
        payments.cancel_booking(s, s.get(booking_service.Booking, bid), actor, "cancelled")


def test_unpaid_bookings_ops_cancelled_do_not_lock_the_customer_out(clean_db):
    """An operator clearing a shop's duplicate bookings is not the shop's book-then-cancel
    loop: its next booking goes through, where before it was refused (too_many_cancelled)."""
    shop = new_customer()
    for _ in range(booking_service.max_cancelled()):
        _cancel(_book(shop), OPS)
    assert _book(shop)


def test_her_own_cancels_still_count_beside_ops_ones(clean_db, monkeypatch):
    monkeypatch.setenv("CANCELLED_BOOKINGS_MAX", "2")
    shop = new_customer()
    _cancel(_book(shop), OPS)
    _cancel(_book(shop), Actor("customer", str(shop)))
    assert _book(shop)  # one of her own: under the limit of two
    for bid in (_book(shop),):
        _cancel(bid, Actor("customer", str(shop)))
    with pytest.raises(booking_service.TooManyCancelled):
        _book(shop)

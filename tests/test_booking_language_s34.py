"""A booking by someone who never chose a language keeps the one it was made in too (R10).

Wrong: such a booking kept no language (NULL, as the rows from before migration 0046), so
its news went in the phone's person's language of the moment: the payment link in the
default language (Hindi), then, once a relative on the same phone chose Tamil on the IVR,
the payment, the rider and the pickup code in Tamil, which she may not read. A booking
now keeps the language its first messages go in: the chosen one, else the default."""

from __future__ import annotations

import pytest

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, Person
from core.domain.booking import BookingStatus
from core.domain.pricing import SpeedTier
from core.services import notify
from core.services.booking import create_booking
from tests.test_booking_language_s30 import PHONE, book, scripts, sent_about, switch_language
from tests.test_payments_support import (
    BAG,
    BETTIAH,
    CUSTOMER,
    LAXMIPUR,
    booking,
    ledger_checked,
    pay,
    run,
)

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def devanagari(text: str) -> bool:
    return any("\u0900" <= ch <= "\u097f" for ch in text)


def never_chose() -> int:
    with transaction() as s:
        p = Person(phone=PHONE, name="Meena", preferred_language=None, role="customer")
        s.add(p)
        s.flush()
        return p.id


def test_an_app_booking_by_someone_who_never_chose_keeps_its_language(live):
    assert i18n.DEFAULT_LANGUAGE == "hi"  # what the scripts below look for
    cid = never_chose()
    bid = book(cid, channel="app")
    assert booking(bid).language == i18n.DEFAULT_LANGUAGE
    run()  # the link, in Hindi
    switch_language(cid, "ta")  # a relative on the same phone, on the IVR
    assert pay(bid).status_code == 200
    run()
    assert booking(bid).status == BookingStatus.PAID.value
    with transaction() as s:
        notify.notify_customer(s, s.get(Booking, bid), "booking.status.delivered",
                               dedupe_key=f"booking-{bid}-delivered-r10")
    told = sent_about(bid)
    assert len(told) >= 3, told  # the link, the payment, the delivery
    ref = booking(bid).reference
    assert told[0].startswith(i18n.t("pay.link", "hi", ref=ref, total_paise=1, url="u",
                                      minutes=1).split(":")[0])
    assert all(devanagari(body) and not scripts(body) for body in told), told

    second = book(cid, channel="app")  # made after the choice: in Tamil
    assert booking(second).language == "ta"


def test_a_booking_from_before_the_column_by_someone_who_never_chose(clean_db):
    """A row from before migration 0046 (NULL) is still told in the person's language of
    now, as README says: the default while she has none, then the one chosen."""
    cid = never_chose()
    with transaction() as s:
        b = create_booking(s, customer_id=cid, channel="app", pickup=LAXMIPUR,
                           drop=BETTIAH, parcel=BAG, tier=SpeedTier.STANDARD,
                           recipient_name=None, recipient_phone=None, actor=CUSTOMER)
        b.language = None  # made before migration 0046
        bid = b.id
    with transaction() as s:
        notify.notify_customer(s, s.get(Booking, bid), "booking.status.delivered",
                               dedupe_key=f"booking-{bid}-old-hi")
    switch_language(cid, "ta")
    with transaction() as s:
        notify.notify_customer(s, s.get(Booking, bid), "booking.status.delivered",
                               dedupe_key=f"booking-{bid}-old-ta")
    first, then = sent_about(bid)
    assert devanagari(first) and not scripts(first), first
    assert scripts(then) == {"ta"}, then

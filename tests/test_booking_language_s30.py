"""A booking keeps the language it was made in: a phone is often a family's, and another
caller on it choosing another language must not change what this booking's customer is
told about it (its link, payment, status, refund). Migration 0046 adds the column."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.dialog_models import WhatsappTemplateSend
from core.adapters.models import Booking, Conversation, OutboxMessage, Person
from core.domain.booking import BookingStatus
from core.domain.pricing import SpeedTier
from core.services import notify, payments
from core.services.booking import create_booking
from tests.test_migrations_live import db, engine, template  # noqa: F401 (fixtures)
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

PHONE = "+919812346030"
NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def scripts(text: str) -> set[str]:
    """The languages whose script ``text`` has letters of (Tamil, Telugu)."""
    found = set()
    for ch in text:
        if "\u0b80" <= ch <= "\u0bff":
            found.add("ta")
        elif "\u0c00" <= ch <= "\u0c7f":
            found.add("te")
    return found


def customer(lang: str) -> int:
    with transaction() as s:
        p = Person(phone=PHONE, name="Meena", preferred_language=lang, role="customer")
        s.add(p)
        s.flush()
        return p.id


def book(customer_id: int, channel: str = "voice") -> int:
    """A booking its customer confirmed (a phone call's, by default): link job enqueued."""
    with transaction() as s:
        b = create_booking(s, customer_id=customer_id, channel=channel, pickup=LAXMIPUR,
                           drop=BETTIAH, parcel=BAG, tier=SpeedTier.STANDARD,
                           recipient_name=None, recipient_phone=None, actor=CUSTOMER)
        payments.request_payment_link(s, b, CUSTOMER)
        return b.id


def switch_language(customer_id: int, lang: str) -> None:
    """Another caller on the same phone chooses her language (IVR's 4, the chat's list):
    what every channel does, on the phone's one person."""
    with transaction() as s:
        person = s.get(Person, customer_id)
        assert person is not None
        person.preferred_language = lang


def sent_about(booking_id: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.to_addr.in_([PHONE, f"whatsapp:{PHONE}"]))
            .order_by(OutboxMessage.id)))


def test_a_booking_is_told_in_its_own_language_after_the_phone_switches(live):
    cid = customer("ta")
    first = book(cid)
    assert booking(first).language == "ta"
    switch_language(cid, "te")  # a Telugu speaker on the family's phone, after the call
    run()  # the link job: the payment link's SMS
    with transaction() as s:  # she calls to track it: the link again
        assert payments.send_link_again(s, s.get(Booking, first), PHONE)
    assert pay(first).status_code == 200
    run()
    assert booking(first).status == BookingStatus.PAID.value
    with transaction() as s:
        b = s.get(Booking, first)
        notify.notify_customer(s, b, "booking.status.delivered",
                               dedupe_key=f"booking-{first}-delivered-s30")
    told = sent_about(first)
    assert len(told) >= 4, told  # the link, again, the payment, the delivery
    ref = booking(first).reference
    assert told[0].startswith(i18n.t("pay.link", "ta", ref=ref, total_paise=1, url="u",
                                      minutes=1).split(":")[0])
    assert all(scripts(body) == {"ta"} for body in told), told

    second = book(cid)  # made after the switch: in Telugu
    assert booking(second).language == "te"
    run()
    told = sent_about(second)
    assert told and all(scripts(body) == {"te"} for body in told), told


def test_a_booking_from_before_the_column_goes_in_the_persons_language(clean_db):
    cid = customer("ta")
    with transaction() as s:
        b = create_booking(s, customer_id=cid, channel="voice", pickup=LAXMIPUR,
                           drop=BETTIAH, parcel=BAG, tier=SpeedTier.STANDARD,
                           recipient_name=None, recipient_phone=None, actor=CUSTOMER)
        b.language = None  # made before migration 0046
        bid = b.id
    switch_language(cid, "te")
    with transaction() as s:
        notify.notify_customer(s, s.get(Booking, bid), "booking.status.delivered")
    assert [scripts(body) for body in sent_about(bid)] == [{"te"}]


def test_the_whatsapp_template_is_the_bookings_languages(clean_db, monkeypatch):
    """Outside the 24-hour window the text goes inside the approved template: the one of
    the language the text is in, the booking's, not the one the phone's person chose."""
    monkeypatch.setenv("WHATSAPP_TEMPLATE_TA", "HX" + "a" * 32)
    monkeypatch.setenv("WHATSAPP_TEMPLATE_TE", "HX" + "e" * 32)
    notify.reset_templates()
    try:
        clock.freeze(NOW)
        cid = customer("ta")
        with transaction() as s:
            s.add(Conversation(channel="whatsapp", contact=PHONE[1:], person_id=cid,
                               step="menu", state={}, misses=0, handoff=False,
                               last_inbound_at=NOW - timedelta(days=2)))
            b = create_booking(s, customer_id=cid, channel="whatsapp", pickup=LAXMIPUR,
                               drop=BETTIAH, parcel=BAG, tier=SpeedTier.STANDARD,
                               recipient_name=None, recipient_phone=None, actor=CUSTOMER)
            bid = b.id
        switch_language(cid, "te")
        with transaction() as s:
            row_id = notify.notify_customer(s, s.get(Booking, bid), "booking.status.delivered")
        with transaction() as s:
            row = s.get(OutboxMessage, row_id)
            tpl = s.scalar(select(WhatsappTemplateSend).where(
                WhatsappTemplateSend.outbox_id == row_id))
            assert row.channel == "whatsapp" and scripts(row.body) == {"ta"}
            assert tpl is not None and tpl.content_sid == "HX" + "a" * 32
    finally:
        notify.reset_templates()


def test_what_is_not_about_a_booking_goes_in_the_persons_language(clean_db):
    cid = customer("ta")
    book(cid)
    switch_language(cid, "te")
    with transaction() as s:
        row_id = notify.notify_phone(s, PHONE, "auth.otp", otp="123456")
    with transaction() as s:
        assert scripts(s.get(OutboxMessage, row_id).body) == {"te"}


def test_0046_adds_the_bookings_language_and_takes_it_back(db, engine):  # noqa: F811
    from alembic import command

    from tests.test_migrations_live import LOCK_TIMEOUT_MS, alembic_config, upgrade, version

    def column() -> tuple[str, str] | None:
        with engine.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT data_type || '(' || character_maximum_length || ')', is_nullable "
                "FROM information_schema.columns "
                "WHERE table_name = 'bookings' AND column_name = 'language'").first()

    upgrade(db, "0045")
    assert column() is None
    upgrade(db, "0046")
    assert tuple(column()) == ("character varying(5)", "YES")
    config = alembic_config(db, LOCK_TIMEOUT_MS, [])
    command.stamp(config, "0045")  # run again from its start: it goes through
    upgrade(db, "0046")
    with engine.connect() as conn:
        assert version(conn) == "0046"
    command.downgrade(config, "0045")
    assert column() is None
    with engine.connect() as conn:
        assert version(conn) == "0045"


def test_who_is_coming_and_the_recipients_guess_follow_the_bookings_language(live):
    """Wrong: the 'rider on the way' message said its body in the booking's language but
    the vehicle in the phone's language of now (a Tamil sentence naming a Telugu
    'auto'), and a recipient we do not know was written to in the phone's language of
    now, not the one the sender booked in."""
    from core.domain import dispatch as rules
    from core.domain.pricing import VehicleType
    from core.services import dispatch
    from tests.test_dispatch import make_partner

    clock.freeze(NOW)
    cid = customer("ta")
    bid = book(cid)
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None
        b.recipient_phone = "+919812346031"  # nobody we know
    switch_language(cid, "te")
    pid, _ = make_partner("Ramesh", (LAXMIPUR.lat, LAXMIPUR.lng), VehicleType.AUTO)
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None
        from core.adapters.models import PartnerProfile

        partner = s.get(PartnerProfile, pid)
        assert partner is not None
        dispatch._assigned_to_customer(s, b, partner, rules.Load(BAG.size, BAG.weight, 0),
                                       "lang-test")
        assert dispatch.recipient_language(s, b) == "ta"
    with transaction() as s:
        (body,) = s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == bid,
            OutboxMessage.dedupe_key == f"booking-{bid}-assigned-lang-test"))
    assert scripts(body) == {"ta"}, body
    assert i18n.t("vehicle.auto", "ta") in body

"""notify picks WhatsApp inside the 24-hour window, a template or SMS outside it; handoffs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from core import clock
from core.adapters.db import transaction
from core.adapters.dialog_models import WhatsappTemplateSend
from core.adapters.models import Conversation, OutboxMessage, Person
from core.services import notify

NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


def _customer(last_inbound: datetime) -> int:
    with transaction() as s:
        person = Person(phone="+919812355555", role="customer", preferred_language="hi",
                        opted_out=False)
        s.add(person)
        s.flush()
        s.add(Conversation(channel="whatsapp", contact="919812355555", person_id=person.id,
                           step="menu", state={}, misses=0, handoff=False,
                           last_inbound_at=last_inbound))
        return person.id


def _send(person_id: int) -> OutboxMessage:
    with transaction() as s:
        person = s.get(Person, person_id)
        row_id = notify.send_to_person(s, person, "बुकिंग 12345678: राइडर आ रहा है।")
    with transaction() as s:
        return s.get(OutboxMessage, row_id)


def test_inside_the_window_is_free_form_whatsapp(clean_db) -> None:
    clock.freeze(NOW)
    row = _send(_customer(NOW - timedelta(hours=23)))
    assert row.channel == "whatsapp" and row.to_addr == "whatsapp:+919812355555"


def test_outside_the_window_without_a_template_falls_back_to_sms(clean_db, monkeypatch) -> None:
    monkeypatch.delenv("WHATSAPP_TEMPLATE_HI", raising=False)
    notify.reset_templates()
    clock.freeze(NOW)
    row = _send(_customer(NOW - timedelta(hours=25)))
    assert row.channel == "sms" and row.to_addr == "+919812355555"


def test_outside_the_window_uses_the_languages_template(clean_db, monkeypatch) -> None:
    monkeypatch.setenv("WHATSAPP_TEMPLATE_HI", "HX0123456789abcdef0123456789abcdef")
    notify.reset_templates()
    try:
        clock.freeze(NOW)
        row = _send(_customer(NOW - timedelta(days=3)))
        assert row.channel == "whatsapp"
        with transaction() as s:
            tpl = s.scalar(select(WhatsappTemplateSend).where(
                WhatsappTemplateSend.outbox_id == row.id))
            assert tpl.content_sid.startswith("HX0123")
            assert tpl.content_variables == {"1": row.body}
    finally:
        monkeypatch.delenv("WHATSAPP_TEMPLATE_HI")
        notify.reset_templates()


def test_a_phone_booking_is_followed_up_by_sms_even_for_a_whatsapp_user(clean_db):
    from sqlalchemy import select

    from core.adapters.db import transaction
    from core.adapters.models import Conversation, OutboxMessage, Person
    from core.domain.booking import Actor
    from core.domain.pricing import ParcelCategory, SizeBucket, SpeedTier, WeightBucket
    from core.services import notify
    from core.services.booking import ParcelSpec, Place, create_booking

    phone = "+919812300077"
    with transaction() as s:
        person = Person(phone=phone, role="customer", preferred_language="hi")
        s.add(person)
        s.flush()
        s.add(Conversation(channel="whatsapp", contact=phone[1:], person_id=person.id,
                           step="menu", state={}, misses=0, last_inbound_at=clock.now()))
        parcel = ParcelSpec(ParcelCategory.OTHER, SizeBucket.BAG, WeightBucket.W5)
        common = dict(customer_id=person.id, pickup=Place(26.8927, 84.48813, "845450"),
                      drop=Place(26.80228, 84.51522, "845438"), parcel=parcel,
                      tier=SpeedTier.STANDARD, recipient_name=None, recipient_phone=None,
                      actor=Actor("customer", str(person.id)))
        by_phone = create_booking(s, channel="voice", **common)
        by_chat = create_booking(s, channel="whatsapp", **common)
        notify.notify_customer(s, by_phone, "booking.status.quoted")
        notify.notify_customer(s, by_chat, "booking.status.quoted")
    with transaction() as s:
        rows = s.execute(select(OutboxMessage.booking_id, OutboxMessage.channel)).all()
    assert dict(rows) == {by_phone.id: "sms", by_chat.id: "whatsapp"}

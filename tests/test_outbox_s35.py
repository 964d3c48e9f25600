"""Review 35 (delivery status and opt-outs), each found by a reviewer:

1. START gets through the inbound rate limit as STOP does, by SMS and on WhatsApp: a
   flood of STOPs (they count on their own, with no limit) neither drops the START after
   it nor the messages after that; a flood of STARTs stays under a limit of its own.
2. A WhatsApp message refused for the closed window (63016) with a template configured,
   to someone who sent STOP on WhatsApp since: the template copy cannot be made, so what
   the booking needs goes by SMS, as notify sends it after a WhatsApp STOP.
3. A failure reported after "delivered" or "read" does not move the row back nor send
   the text again another way (it was read already); an opt-out code in it still closes
   the channel for the address.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import MessageStatusEvent, OutboxMessage, Person
from core.config import get_settings
from core.services import notify, outbox
from core.services.outbox import StatusReport
from tests.conftest import post_twilio, replies_to, run_jobs, send_whatsapp
from tests.test_dispatch import (
    CUSTOMER,
    frozen,  # noqa: F401 (fixture)
    paid_booking,
    sms,
)

pytestmark = pytest.mark.db

WA_CUSTOMER = "+919876500033"


def wa(body: str, sid: str) -> dict[str, str]:
    return {"MessageSid": sid, "From": f"whatsapp:{WA_CUSTOMER}",
            "WaId": WA_CUSTOMER.lstrip("+"), "To": "whatsapp:+14155238886", "Body": body,
            "NumMedia": "0"}


def limit() -> int:
    return get_settings().inbound_rate_limit


def wa_person() -> Person:
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == WA_CUSTOMER))
        assert person is not None
        s.expunge(person)
        return person


# --- 1. START is not rate-limited away --------------------------------------------------


def test_an_sms_start_after_a_flood_of_stops_ends_the_opt_out(client):
    with transaction() as s:
        s.add(Person(phone=CUSTOMER, role="customer", preferred_language="hi"))
    for i in range(limit() + 5):
        sms(client, CUSTOMER, "STOP", sid=f"SMs35stop{i:03d}")
    with transaction() as s:
        assert s.scalar(select(Person.sms_opted_out).where(Person.phone == CUSTOMER))
    assert sms(client, CUSTOMER, "START", sid="SMs35start") == []  # Twilio confirms it
    with transaction() as s:
        assert s.scalar(select(Person.sms_opted_out).where(Person.phone == CUSTOMER)) \
            is False


def test_an_sms_yes_after_a_flood_of_messages_and_stops_ends_the_opt_out(client):
    """YES is one of Twilio's opt-in words too: it passes though the contact's own
    counter is full (other messages, then STOP)."""
    with transaction() as s:
        s.add(Person(phone=CUSTOMER, role="customer", preferred_language="hi"))
    for i in range(limit() + 2):
        sms(client, CUSTOMER, "kab aayega", sid=f"SMs35msg{i:03d}")
    sms(client, CUSTOMER, "STOP", sid="SMs35stop")
    sms(client, CUSTOMER, "YES", sid="SMs35yes")
    with transaction() as s:
        assert s.scalar(select(Person.sms_opted_out).where(Person.phone == CUSTOMER)) \
            is False


def test_a_whatsapp_start_after_a_flood_of_stops_is_answered_and_so_is_the_next(client):
    for i in range(limit() + 5):
        post_twilio(client, "/webhooks/whatsapp", wa("STOP", f"SMw35stop{i:03d}"))
    run_jobs(("inbound",))
    assert wa_person().opted_out
    assert replies_to("SMw35stop000")  # the first STOP is confirmed, the rest are not
    assert not any(replies_to(f"SMw35stop{i:03d}") for i in range(1, limit() + 5))
    started = send_whatsapp(client, wa("START", "SMw35start"))
    assert wa_person().opted_out is False
    too_many = {i18n.t("common.too_many_messages", lang) for lang in i18n.LANGUAGES}
    assert started and started not in too_many
    # The STOPs filled no counter of the contact's: her next message is answered.
    menu = send_whatsapp(client, wa("0", "SMw35menu"))
    assert menu and menu not in too_many


def test_a_flood_of_whatsapp_starts_stays_under_a_limit_of_its_own(client):
    """START is answered each time (the menu): a flood of it is cut at the limit, the
    notice once, as for any message; the contact's other messages still go through."""
    n = limit()
    for i in range(n + 2):
        post_twilio(client, "/webhooks/whatsapp", wa("START", f"SMw35go{i:03d}"))
    run_jobs(("inbound",))
    assert all(replies_to(f"SMw35go{i:03d}") for i in range(n))
    person = wa_person()
    lang = person.preferred_language or i18n.DEFAULT_LANGUAGE
    assert replies_to(f"SMw35go{n:03d}") == [i18n.t("common.too_many_messages", lang)]
    assert replies_to(f"SMw35go{n + 1:03d}") == []
    assert send_whatsapp(client, wa("0", "SMw35after"))


# --- 2. a window refusal after a WhatsApp STOP, with a template configured ---------------


def wa_row(sid: str, booking_id: int | None = None, *, to: str = CUSTOMER,
           body: str = "Your parcel is on the way.", status: str = "queued") -> int:
    with transaction() as s:
        row = OutboxMessage(channel="whatsapp", to_addr=f"whatsapp:{to}",
                            from_addr="whatsapp:+14155238886", body=body, status=status,
                            attempts=1, provider_sid=sid, kind="plain",
                            booking_id=booking_id)
        s.add(row)
        s.flush()
        return row.id


def copies_of(row_id: int) -> list[tuple[str, str, str]]:
    """(channel, to_addr, dedupe_key) of each copy of row ``row_id`` sent another way."""
    with transaction() as s:
        return [(m.channel, m.to_addr, m.dedupe_key or "") for m in s.scalars(
            select(OutboxMessage).where(OutboxMessage.dedupe_key.in_(
                [f"sms-for-{row_id}", f"tpl-for-{row_id}", f"wa-for-{row_id}"]))
            .order_by(OutboxMessage.id))]


@pytest.fixture
def template(monkeypatch):
    monkeypatch.setenv("WHATSAPP_TEMPLATE_HI", "HX" + "a" * 32)
    notify.reset_templates()
    yield
    monkeypatch.delenv("WHATSAPP_TEMPLATE_HI")
    notify.reset_templates()


def _whatsapp_stopped(phone: str) -> None:
    with transaction() as s:
        s.scalar(select(Person).where(Person.phone == phone)).opted_out = True


def test_a_window_refusal_after_her_whatsapp_stop_goes_by_sms_with_a_template(
        client, frozen, template):  # noqa: F811
    booking_id = paid_booking()
    row_id = wa_row("SMt35a", booking_id)
    _whatsapp_stopped(CUSTOMER)  # she sent STOP on WhatsApp after it went
    assert outbox.record_status(outbox_id=row_id, message_sid="SMt35a", status="failed",
                                error_code="63016")
    assert copies_of(row_id) == [("sms", CUSTOMER, f"sms-for-{row_id}")]


def test_a_window_refusal_still_goes_as_the_template_while_her_whatsapp_is_open(
        client, frozen, template):  # noqa: F811
    booking_id = paid_booking()
    row_id = wa_row("SMt35b", booking_id)
    assert outbox.record_status(outbox_id=row_id, message_sid="SMt35b", status="failed",
                                error_code="63016")
    assert copies_of(row_id) == [("whatsapp", f"whatsapp:{CUSTOMER}", f"tpl-for-{row_id}")]


# --- 3. a failure reported after the message reached the person -------------------------


def history(row_id: int) -> list[tuple[str, str | None]]:
    with transaction() as s:
        return [(e.status, e.error_code) for e in s.scalars(
            select(MessageStatusEvent).where(MessageStatusEvent.outbox_id == row_id)
            .order_by(MessageStatusEvent.id))]


def row_state(row_id: int) -> tuple[str, str | None]:
    with transaction() as s:
        row = s.get(OutboxMessage, row_id)
        assert row is not None
        return row.status, row.error_code


@pytest.mark.parametrize("reached", ["delivered", "read"])
@pytest.mark.parametrize("code", ["63016", "63018", "63021"])
def test_a_refusal_reported_after_it_reached_her_sends_no_copy(client, frozen,  # noqa: F811
                                                               reached, code):
    booking_id = paid_booking()
    row_id = wa_row("SMt35c", booking_id)
    assert outbox.record_status(outbox_id=row_id, message_sid="SMt35c", status=reached,
                                error_code=None)
    assert outbox.record_status(outbox_id=row_id, message_sid="SMt35c", status="failed",
                                error_code=code)
    assert row_state(row_id) == (reached, None)  # not moved back
    assert history(row_id) == [(reached, None), ("failed", code)]  # the failure is kept
    assert copies_of(row_id) == []


def test_a_refusal_after_delivered_in_the_same_batch_sends_no_copy(client, frozen):  # noqa: F811
    booking_id = paid_booking()
    row_id = wa_row("SMt35d", booking_id)
    assert outbox.apply_reports([StatusReport(row_id, "SMt35d", "delivered", None),
                                 StatusReport(row_id, "SMt35d", "undelivered", "63016")]) == 2
    assert row_state(row_id) == ("delivered", None)
    assert copies_of(row_id) == []


@pytest.mark.parametrize(("code", "blocked"), [("21610", False), ("63014", True)])
def test_an_opt_out_refusal_after_read_closes_whatsapp_but_sends_no_copy(
        client, frozen, code, blocked):  # noqa: F811
    booking_id = paid_booking()
    row_id = wa_row("SMt35e", booking_id)
    assert outbox.record_status(outbox_id=row_id, message_sid="SMt35e", status="read",
                                error_code=None)
    assert outbox.record_status(outbox_id=row_id, message_sid="SMt35e", status="failed",
                                error_code=code)
    assert row_state(row_id) == ("read", None)
    assert copies_of(row_id) == []  # she read it: no SMS of it
    with transaction() as s:  # but her WhatsApp is closed to us: that is about her number
        person = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        assert (person.opted_out, person.wa_blocked) == (True, blocked)


def test_a_refusal_after_an_out_of_order_delivered_sends_no_copy_when_reported_again(
        client, frozen):  # noqa: F811
    """Failed, then "delivered" (out of order: the failure stays its status), then the
    failure posted again: its history says it arrived, so nothing goes again."""
    booking_id = paid_booking()
    row_id = wa_row("SMt35f", booking_id)
    with transaction() as s:  # the first failure found nothing to send another way
        s.add(MessageStatusEvent(outbox_id=row_id, provider_sid="SMt35f", status="delivered"))
        row = s.get(OutboxMessage, row_id)
        row.status, row.error_code = "failed", "63016"
    assert outbox.record_status(outbox_id=row_id, message_sid="SMt35f", status="failed",
                                error_code="63016")
    assert copies_of(row_id) == []


def test_a_refusal_before_it_reached_her_still_goes_by_sms(client, frozen):  # noqa: F811
    """The control: a window refusal of a message that never arrived goes by SMS."""
    booking_id = paid_booking()
    row_id = wa_row("SMt35g", booking_id)
    assert outbox.record_status(outbox_id=row_id, message_sid="SMt35g", status="sent",
                                error_code=None)
    assert outbox.record_status(outbox_id=row_id, message_sid="SMt35g", status="failed",
                                error_code="63016")
    assert row_state(row_id) == ("failed", "63016")
    assert copies_of(row_id) == [("sms", CUSTOMER, f"sms-for-{row_id}")]

"""Outbound messages (review 21): a repeated refusal report does not void a code that went
by SMS; a code never sent for want of a connection is made again; a partner who stopped
WhatsApp still gets his work SMS; a message held back behind a retry is not overtaken."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
import urllib3
from sqlalchemy import select

from core import clock, i18n
from core.adapters import twilio_gateway
from core.adapters.db import transaction
from core.adapters.models import (
    Conversation,
    OutboxMessage,
    PartnerProfile,
    Person,
    SandboxMessage,
)
from core.adapters.redis_conn import redis_client
from core.config import get_settings
from core.domain.booking import Actor
from core.services import dispatch, outbox
from tests.conftest import release_scheduled, run_jobs
from tests.test_code_delivery import by_phone, pickup_rows, rider_told, taken
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    bodies_to,
    frozen,  # noqa: F401  (fixture)
    make_partner,
    paid_booking,
    sms,
)
from tests.test_notice_review import cannot_deliver, codes_in, customer_speaks, report

pytestmark = pytest.mark.db


def _chats_on_whatsapp(phone: str) -> None:
    """The customer wrote to our WhatsApp just now (the 24-hour window is open)."""
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == phone))
        s.add(Conversation(channel="whatsapp", contact=phone, person_id=person.id,
                           last_inbound_at=clock.now()))


def _by_key(key: str) -> OutboxMessage | None:
    with transaction() as s:
        found = s.scalar(select(OutboxMessage).where(OutboxMessage.dedupe_key == key))
        if found is not None:
            s.expunge(found)
        return found


# --- 1. a repeated 63016 report voids the code the SMS copy carried ------------------------

def test_a_repeated_window_closed_report_does_not_void_the_code_sent_by_sms(
        client, live, frozen):  # noqa: F811
    """Meena chats with us on WhatsApp; her pickup code goes there and WhatsApp
    refuses it (63016, the 24-hour window closed before it went out). The outbox sends
    its text by SMS instead (``sms-for-<id>``): she holds the code. Twilio then sends the
    same "undelivered 63016" callback again (callbacks come twice). The second time
    _by_sms_instead finds its SMS copy already queued (dedupe key taken) and returns None,
    so apply_reports counts the row as lost and calls _code_lost: dispatch makes a NEW
    pickup code, which voids the one in the SMS she already got, texts her another one,
    tells the rider "the customer has no code, call ops" and alerts ops.
    Right: a failure whose text already went another way (its copy exists) is not lost;
    the duplicate report changes nothing and the code in her SMS still works."""
    booking_id = paid_booking()
    customer_speaks("en")
    _chats_on_whatsapp(CUSTOMER)
    cannot_deliver(f"whatsapp:{CUSTOMER}", "undelivered", "63016")
    rider = taken(client, booking_id)
    (lost,) = pickup_rows(booking_id)
    assert lost.channel == "whatsapp" and lost.status == "undelivered"
    copy = _by_key(f"sms-for-{lost.id}")
    assert copy is not None and copy.to_addr == CUSTOMER  # went by SMS: she holds it
    (code,) = codes_in([copy.body])

    report(client, lost.provider_sid, "undelivered", "63016")  # the same callback again

    assert len(pickup_rows(booking_id)) == 1, (
        "a repeated 63016 report made a new pickup code though the first went by SMS")
    assert rider_told(rider, booking_id) == 0
    assert "picked up" in sms(client, rider, f"PICK {code}")[0], (
        "the code Meena received by SMS was voided by a repeated failure report")



def test_a_repeated_stop_report_does_not_void_the_code_sent_on_whatsapp(
        client, live, frozen):  # noqa: F811
    """Meena booked by phone (her news goes by SMS) and also chats with us on WhatsApp.
    Her pickup-code SMS is refused: she sent STOP to our SMS number (21610). Its text goes
    on WhatsApp instead (``wa-for-<id>``): she holds the code. The same callback comes
    again: nothing changes, and the code she got on WhatsApp still works."""
    booking_id = paid_booking()
    customer_speaks("en")
    by_phone(booking_id)
    _chats_on_whatsapp(CUSTOMER)
    cannot_deliver(CUSTOMER, "undelivered", "21610")
    rider = taken(client, booking_id)
    (refused,) = pickup_rows(booking_id)
    assert refused.channel == "sms" and refused.status == "undelivered"
    copy = _by_key(f"wa-for-{refused.id}")
    assert copy is not None and copy.channel == "whatsapp"  # she holds it on WhatsApp
    (code,) = codes_in([copy.body])

    report(client, refused.provider_sid, "undelivered", "21610")  # the same callback again

    assert len(pickup_rows(booking_id)) == 1, (
        "a repeated 21610 report made a new pickup code though the first went on WhatsApp")
    assert rider_told(rider, booking_id) == 0
    assert "picked up" in sms(client, rider, f"PICK {code}")[0], (
        "the code Meena received on WhatsApp was voided by a repeated failure report")

# --- 2. a code that failed for good for want of a connection is silently lost --------------

def _refused_connection() -> requests.exceptions.ConnectionError:
    """What the twilio client raises when no connection could be made (never sent)."""
    cause = urllib3.exceptions.NewConnectionError(None, "Connection refused")
    return requests.exceptions.ConnectionError(
        urllib3.exceptions.MaxRetryError(None, "/Messages.json", cause))


def test_a_pickup_code_never_sent_for_want_of_a_connection_is_made_again(
        client, live, frozen, monkeypatch):  # noqa: F811
    """a pickup code whose every try fails because Twilio cannot be reached (a
    network outage: connection refused each time) ends "failed" and nothing else
    happens: nobody holds a code, the rider is not told, ops are not told. The same code
    whose every try fails with a 503 (Twilio answering but down) is handled: on its last
    try _send calls _code_lost and dispatch makes a new code (pickup_code_lost). The
    ConnectionError branch of outbox._send records the final failure but never calls
    _code_lost. Right: a final failure is a final failure whatever its cause: the code is
    made again (the rider and ops told), as for the 503."""
    booking_id = paid_booking()
    customer_speaks("en")
    by_phone(booking_id)  # her news goes by SMS
    down = {"on": True}
    real_send = twilio_gateway.send_message

    def send(**kw):
        if down["on"] and kw["to"] == CUSTOMER and "give code" in kw["body"]:
            # The pickup code's every try fails; the other messages go.
            raise _refused_connection()
        return real_send(**kw)

    monkeypatch.setattr(twilio_gateway, "send_message", send)
    rider = taken(client, booking_id)
    for wait in (11, 31):  # the retries' back-off (OUTBOX_RETRY_INTERVALS=10,30)
        release_scheduled(timedelta(seconds=wait))
        run_jobs()
    (lost,) = pickup_rows(booking_id)[:1]
    assert lost.body.find("give code") > 0
    assert lost.status == "failed" and lost.attempts == 3, (lost.status, lost.attempts)
    down["on"] = False  # the line is back
    run_jobs()
    rows = pickup_rows(booking_id)
    assert len(rows) == 2, "the pickup code never went out and no new one was made"
    assert rider_told(rider, booking_id) == 1


# --- 3. a partner who stopped WhatsApp as a customer misses a work SMS ---------------------

def test_a_partner_who_stopped_whatsapp_still_hears_why_he_is_off_duty(
        client, live, frozen):  # noqa: F811
    """Ramesh rides for us (SMS, no app) and also books parcels on WhatsApp,
    where he once sent STOP (people.opted_out). Ops suspend him: block_partner takes him
    off duty and texts him why and whom to call (dispatch.duty_blocked, sms_only: a
    partner's work messages go by SMS whatever his customer chat says). The SMS carries
    no booking id, so outbox._opted_out treats it as a message he does not need after a
    WhatsApp STOP and drops it: he just stops getting offers and never hears why.
    Right: a WhatsApp STOP ends the WhatsApp messages; a partner's work SMS (sms_only,
    a channel he did not stop) still goes, as it does for one who never chatted."""
    partner_id, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    with transaction() as s:
        s.scalar(select(Person).where(Person.phone == phone)).opted_out = True  # STOP on WA
        s.get(PartnerProfile, partner_id).kyc_status = "suspended"
    with transaction() as s:
        dispatch.block_partner(s, partner_id, Actor("ops", "1"))
    run_jobs()
    blocked = i18n.t("dispatch.duty_blocked", "en", ops_phone=get_settings().ops_phone)
    assert blocked in bodies_to(phone), "the suspended partner was never told why"


# --- 4. a message held back behind a retry keeps its place --------------------------------

def _to_ramesh(body: str, *, at_once: bool) -> int:
    with transaction() as s:
        row_id = outbox.queue_message(s, channel="sms", to="+919817000021", body=body,
                                      send_after_commit=at_once)
    assert row_id is not None
    return row_id


def _sent_to_ramesh() -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(SandboxMessage.body)
                              .where(SandboxMessage.to_addr == "+919817000021")
                              .order_by(SandboxMessage.id)))


@pytest.mark.parametrize("at_once", [True, False], ids=["sent-after-commit", "by-its-job"])
def test_a_message_held_back_behind_a_retry_is_not_overtaken_by_a_later_one(
        client, live, at_once):
    """Three messages to one person. Twilio refuses the first once (a 503): it waits for
    its retry, and the second waits behind it (given back untried, attempts as before:
    0). The first goes on its retry; the third is written before the second's own job has
    run. The third must wait behind the second, as the second waited behind the first:
    held back with no try made, the second is still a message waiting its turn."""
    from sandbox.twilio import FAIL_NEXT_KEY

    redis_client().set(FAIL_NEXT_KEY, 1)  # the emulator answers 503 once
    first = _to_ramesh("1. Your job is ready.", at_once=at_once)
    run_jobs(("outbox",))
    second = _to_ramesh("2. Pickup at 10:30.", at_once=at_once)
    run_jobs(("outbox",))
    assert _sent_to_ramesh() == []
    with transaction() as s:
        assert s.get(OutboxMessage, second).status == "pending"
    assert outbox.deliver(first) == "sent"  # the first one's retry (its job, run now)
    _to_ramesh("3. Reply DONE when delivered.", at_once=at_once)
    run_jobs(("outbox",))
    for _ in range(4):  # the retries' back-off, until all have gone
        release_scheduled(timedelta(seconds=31))
        run_jobs(("outbox",))
    assert _sent_to_ramesh() == ["1. Your job is ready.", "2. Pickup at 10:30.",
                                 "3. Reply DONE when delivered."], "a later message overtook"

"""STOP on WhatsApp ends the WhatsApp messages we start; what a person needs for a booking
they made or receive, and a sign-in code they asked for, still reaches them, by SMS."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage, Person
from core.domain.booking import Actor
from core.services import notify
from tests.conftest import never_reached, run_jobs, send_whatsapp
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    frozen,  # noqa: F401 (fixture)
    make_partner,
    paid_booking,
    sms,
    start,
)
from tests.test_ivr import book_in_hindi, phone, prompts  # noqa: F401 (fixtures)

pytestmark = pytest.mark.db


def wa(number: str, body: str, sid: str) -> dict[str, str]:
    return {"MessageSid": sid, "From": f"whatsapp:{number}", "WaId": number.lstrip("+"),
            "To": "whatsapp:+14155238886", "Body": body}


def stop_on_whatsapp(client, number: str) -> None:
    send_whatsapp(client, wa(number, "STOP", f"SMstop{number[-4:]}"))
    with transaction() as s:
        assert s.scalar(select(Person.opted_out).where(Person.phone == number))


def messages_to(number: str) -> list[tuple[str, str, str]]:
    """(channel, body, status) of every outbox row to ``number``, on either channel."""
    with transaction() as s:
        return [(m.channel, m.body, m.status) for m in s.scalars(
            select(OutboxMessage).where(OutboxMessage.to_addr.in_(
                [number, f"whatsapp:{number}"])).order_by(OutboxMessage.id))]


def test_a_phone_booking_by_someone_who_sent_stop_on_whatsapp_gets_its_sms(live, phone):  # noqa: F811
    """(Found by a reviewer.) The call promises the payment link and the booking details
    by SMS; a STOP sent to the WhatsApp bot long before must not swallow them."""
    stop_on_whatsapp(phone.client, phone.phone)
    heard = book_in_hindi(phone)
    assert "SMS" in heard.text
    run_jobs()  # the payment link job, the outbox, the emulators
    with transaction() as s:
        ref = s.scalar(select(Booking.reference))
    about = [(ch, status) for ch, body, status in messages_to(phone.phone) if ref in body]
    assert len(about) >= 2, messages_to(phone.phone)  # the details and the payment link
    assert all(ch == "sms" and status in ("queued", "sent", "delivered")
               for ch, status in about), about


def test_a_recipient_who_sent_stop_on_whatsapp_still_gets_the_delivery_code(client, live,
                                                                           frozen):  # noqa: F811
    stop_on_whatsapp(client, RECIPIENT)
    _, rider = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    assert sms(client, rider, "1")  # Ramesh takes it: the codes go out
    run_jobs()
    with transaction() as s:
        codes = list(s.scalars(select(OutboxMessage).where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.dedupe_key.like("leg-%-dropotp-%"))))
    assert [(m.channel, m.to_addr) for m in codes] == [("sms", RECIPIENT)]
    assert codes[0].status in ("queued", "sent", "delivered")


def channel_of(dedupe_key: str) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.channel)
                              .where(OutboxMessage.dedupe_key == dedupe_key)))


def test_after_stop_a_chatting_customer_hears_about_the_booking_by_sms_until_start(
        client, live, frozen):  # noqa: F811
    send_whatsapp(client, wa(CUSTOMER, "hi", "SMhi1"))
    stop_on_whatsapp(client, CUSTOMER)
    booking_id = paid_booking()  # theirs (found by their phone number)
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        person = s.get(Person, booking.customer_id)
        assert person.phone == CUSTOMER and person.opted_out
        notify.notify_customer(s, booking, "booking.status.paid", dedupe_key="t-paid")
        # Nothing that is not about a booking of theirs (an operator's word, say).
        assert notify.send_to_person(s, person, "Hello from the team") is None
    assert channel_of("t-paid") == ["sms"]
    send_whatsapp(client, wa(CUSTOMER, "START", "SMstart1"))
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        notify.notify_customer(s, booking, "booking.status.dispatching", dedupe_key="t-disp")
    assert channel_of("t-disp") == ["whatsapp"]
    run_jobs()
    assert all(status in ("queued", "sent", "delivered", "read")
               for _, _, status in messages_to(CUSTOMER)), messages_to(CUSTOMER)


def test_a_sign_in_code_reaches_someone_who_sent_stop_on_whatsapp(client, live):
    number = "+919812300077"
    stop_on_whatsapp(client, number)
    assert client.post("/api/v1/auth/otp", json={"phone": number}).status_code == 202
    run_jobs()
    codes = [(ch, status) for ch, body, status in messages_to(number)
             if re.search(r"\b\d{6}\b", body)]
    assert len(codes) == 1 and codes[0][0] == "sms", messages_to(number)
    assert codes[0][1] in ("queued", "sent", "delivered")


# Opt-outs are per channel (migration 0021): an SMS opt-out (the word texted to us, or
# Twilio refusing an SMS with 21610) leaves WhatsApp open, and a WhatsApp STOP leaves the
# SMS a person needs about their bookings.

def sms_opted_out(number: str) -> tuple[bool, bool]:
    """(WhatsApp flag, SMS flag) of the person at ``number``."""
    with transaction() as s:
        row = s.execute(select(Person.opted_out, Person.sms_opted_out)
                        .where(Person.phone == number)).one()
    return row.opted_out, row.sms_opted_out


def refused_by_twilio(client, number: str) -> None:
    """An SMS to ``number`` that Twilio reports failed with 21610 (they texted STOP)."""
    from tests.conftest import post_twilio

    with transaction() as s:
        oid = notify.send_to_person(s, s.scalar(select(Person).where(Person.phone == number)),
                                    "Booking news", sms_only=True)
    assert oid is not None
    run_jobs()
    with transaction() as s:
        row = s.get(OutboxMessage, oid)
        assert row.channel == "sms"
        sid = row.provider_sid
    r = post_twilio(client, "/webhooks/twilio/status",
                    {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": "21610"})
    assert r.status_code == 204
    run_jobs()


def test_an_sms_refused_for_stop_leaves_whatsapp_open(client, live, frozen):  # noqa: F811
    send_whatsapp(client, wa(CUSTOMER, "hi", "SMhi21"))
    refused_by_twilio(client, CUSTOMER)
    assert sms_opted_out(CUSTOMER) == (False, True)
    booking_id = paid_booking()
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        notify.notify_customer(s, booking, "booking.status.paid", dedupe_key="t-paid2")
        person = s.get(Person, booking.customer_id)
        assert notify.send_to_person(s, person, "Hello from the team") is not None
    assert channel_of("t-paid2") == ["whatsapp"]
    # Nothing more by SMS: Twilio would refuse it.
    with transaction() as s:
        assert notify.notify_phone(s, CUSTOMER, "booking.status.paid", ref="12345678",
                                   dedupe_key="t-phone") is not None
    assert channel_of("t-phone") == ["whatsapp"]


def test_a_phone_booking_of_someone_who_stopped_sms_is_followed_on_whatsapp(
        client, live, frozen):  # noqa: F811
    """The call promised SMS; an SMS opt-out makes WhatsApp the way, when they chat."""
    send_whatsapp(client, wa(CUSTOMER, "hi", "SMhi22"))
    assert sms(client, CUSTOMER, "STOP") == []  # no answer of ours (Twilio's own)
    assert sms_opted_out(CUSTOMER) == (False, True)
    booking_id = paid_booking()
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        booking.channel = "voice"
        notify.notify_customer(s, booking, "booking.status.paid", dedupe_key="t-voice")
    assert channel_of("t-voice") == ["whatsapp"]
    assert sms(client, CUSTOMER, "start") == []  # Twilio confirms it
    assert sms_opted_out(CUSTOMER) == (False, False)
    with transaction() as s:
        notify.notify_customer(s, s.get(Booking, booking_id), "booking.status.dispatching",
                               dedupe_key="t-voice2")
    assert channel_of("t-voice2") == ["sms"]


def test_a_recipient_who_stopped_sms_gets_the_drop_code_on_whatsapp(client, live,
                                                                     frozen):  # noqa: F811
    send_whatsapp(client, wa(RECIPIENT, "hi", "SMhi23"))
    assert sms(client, RECIPIENT, "Unsubscribe") == []
    _, rider = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    assert sms(client, rider, "1")
    run_jobs()
    with transaction() as s:
        codes = list(s.scalars(select(OutboxMessage).where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.dedupe_key.like("leg-%-dropotp-%"))))
    assert [(m.channel, m.to_addr) for m in codes] == [("whatsapp", f"whatsapp:{RECIPIENT}")]


def test_a_partner_who_stopped_sms_is_not_offered_jobs_on_whatsapp(client, live,
                                                                   frozen):  # noqa: F811
    """Offers are answered by SMS: one on WhatsApp could not be taken (the app brings
    them to a partner who has it)."""
    from core.adapters.models import PartnerProfile
    from core.services import dispatch

    ramesh, rider = make_partner("Ramesh", LAXMIPUR, has_app=True)
    send_whatsapp(client, wa(rider, "hi", "SMhi24"))
    assert sms(client, rider, "STOP") == []
    booking_id = paid_booking()
    with transaction() as s:  # how every job message of a partner's is sent
        dispatch._sms_partner(s, s.get(PartnerProfile, ramesh), "dispatch.duty_on",
                              dedupe_key="t-job", booking_id=booking_id)
    assert channel_of("t-job") == []


def test_both_channels_stopped_nothing_is_sent_but_a_sign_in_code_is_tried(client, live):
    number = "+919812300078"
    stop_on_whatsapp(client, number)
    assert sms(client, number, "stop") == []
    assert sms_opted_out(number) == (True, True)
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == number))
        assert notify.send_to_person(s, person, "Booking news", booking_id=None) is None
    assert client.post("/api/v1/auth/otp", json={"phone": number}).status_code == 202
    run_jobs()
    codes = [ch for ch, body, _ in messages_to(number) if re.search(r"\b\d{6}\b", body)]
    assert codes == ["sms"]


def test_a_stranger_texting_stop_is_not_told_how_to_book(client, live):
    number = "+919812300079"
    with transaction() as s:
        s.add(Person(phone=number, role="customer"))
    assert sms(client, number, "STOP") == []
    assert sms_opted_out(number) == (False, True)
    assert sms(client, number, "hello") != []  # any other word: how to book, as before


def test_recipient_given_the_code_on_whatsapp_hears_the_booking_is_cancelled(
        client, live, frozen):  # noqa: F811
    """A recipient who stopped SMS gets the drop code on WhatsApp (fdcef51). When the
    booking is then cancelled they hold a code for a parcel that will not come: they must
    hear it, as a recipient sent the code by SMS does."""
    send_whatsapp(client, wa(RECIPIENT, "hi", "SMrev17hi1"))
    assert sms(client, RECIPIENT, "STOP") == []
    _, rider = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    assert sms(client, rider, "1")
    with transaction() as s:
        codes = list(s.scalars(select(OutboxMessage.channel).where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.dedupe_key.like("leg-%-dropotp-%"))))
    assert codes == ["whatsapp"]  # the code reached them on WhatsApp
    with transaction() as s:
        from core.services import payments

        payments.cancel_booking(s, s.get(Booking, booking_id), Actor("ops", "1"), "ops")
    with transaction() as s:
        told = list(s.scalars(select(OutboxMessage.channel).where(
            OutboxMessage.dedupe_key == f"cancelled-{booking_id}-recipient")))
    assert told == ["whatsapp"], "the recipient holding the code was not told"


def test_a_recipient_we_never_met_texting_stop_is_not_told_how_to_book(client, live,
                                                                       frozen):  # noqa: F811
    """fdcef51 says a recipient's opt-out word is recorded, no longer answered with how to
    book. A recipient is mostly only a number on a booking (no people row): their STOP is
    still answered, and the next drop code still goes to them by SMS (Twilio refuses it)."""
    number = "+919876500077"
    with transaction() as s:
        assert s.scalar(select(Person.id).where(Person.phone == number)) is None
    assert sms(client, number, "STOP") == []
    _, rider = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking(recipient=number)
    start(booking_id)
    assert sms(client, rider, "1")
    with transaction() as s:
        by_sms = list(s.scalars(select(OutboxMessage.id).where(
            OutboxMessage.booking_id == booking_id, OutboxMessage.to_addr == number)))
    assert by_sms == []


def test_a_drop_code_refused_by_sms_for_stop_goes_on_whatsapp_to_a_chatting_recipient(
        client, live, frozen):  # noqa: F811
    """The recipient texted STOP where we could not see it (another number of the
    messaging service): Twilio refuses the drop code by SMS with 21610. WhatsApp is open
    and they chat with us right now, so the code must go there, as a WhatsApp message
    refused for its window goes by SMS (outbox._by_sms_instead); else the parcel cannot
    be handed over."""
    from tests.conftest import post_twilio, run_jobs

    send_whatsapp(client, wa(RECIPIENT, "hi", "SMrev17hi3"))
    _, rider = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    assert sms(client, rider, "1")
    run_jobs()
    with transaction() as s:
        (row,) = s.scalars(select(OutboxMessage).where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.dedupe_key.like("leg-%-dropotp-%")))
        assert row.channel == "sms"
        sid, body = row.provider_sid, row.body
    never_reached(sid)
    r = post_twilio(client, "/webhooks/twilio/status",
                    {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": "21610"})
    assert r.status_code == 204
    run_jobs()
    with transaction() as s:
        assert s.scalar(select(Person.sms_opted_out).where(Person.phone == RECIPIENT))
        again = list(s.scalars(select(OutboxMessage.channel).where(
            OutboxMessage.booking_id == booking_id, OutboxMessage.body == body,
            OutboxMessage.to_addr == f"whatsapp:{RECIPIENT}")))
    assert again == ["whatsapp"], "the refused drop code never reached the recipient"


def test_a_partner_who_is_a_booking_s_recipient_gets_the_drop_code_on_whatsapp(
        client, live, frozen):  # noqa: F811
    """A partner (with the app) who stopped SMS and chats with us on WhatsApp receives a
    parcel: the drop code is not a job message of theirs (those stay SMS), it is the
    recipient's code, and must reach them where they can be reached, as for a customer."""
    _, asha = make_partner("Asha", (26.95, 84.95), has_app=True)
    send_whatsapp(client, wa(asha, "hi", "SMrev17hi4"))
    assert sms(client, asha, "STOP") == []
    _, rider = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking(recipient=asha)
    start(booking_id)
    assert sms(client, rider, "1")
    with transaction() as s:
        codes = list(s.scalars(select(OutboxMessage.channel).where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.dedupe_key.like("leg-%-dropotp-%"))))
    assert codes == ["whatsapp"]

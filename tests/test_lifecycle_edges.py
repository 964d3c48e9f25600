"""A booking's life across channels and roles: nobody carries a parcel of their own, a
draft confirmed after its area closed, a partner booking as a customer."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import PartnerProfile, Person
from tests.test_api import _bettiah_point  # noqa: F401 (autouse: the area has a Point)
from tests.test_dispatch import (  # noqa: F401 (fixtures)
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    frozen,
    legs_of,
    make_partner,
    offers,
    paid_booking,
    start,
)
from tests.test_ivr import phone, prompts  # noqa: F401 (fixtures)

pytestmark = pytest.mark.db


def test_a_partner_is_not_offered_the_job_of_their_own_booking(client, live, frozen):  # noqa: F811
    # One person, two roles: a partner on duty at Laxmipur sends a parcel from there.
    own, _ = make_partner("Meena", LAXMIPUR, phone=CUSTOMER)
    other, _ = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    with transaction() as s:
        customer = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        assert s.get(PartnerProfile, own).person_id == customer.id
    start(booking_id)
    offered = {o.partner_id for o in offers(legs_of(booking_id)[0].id)}
    # The customer would hold both codes (pickup as the sender, and carry it): no proof.
    assert own not in offered, "the customer was offered their own parcel to carry"
    assert other in offered


def test_a_partner_is_not_offered_a_parcel_addressed_to_them(client, live, frozen):  # noqa: F811
    own, _ = make_partner("Sita", LAXMIPUR, phone=RECIPIENT)
    other, _ = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    offered = {o.partner_id for o in offers(legs_of(booking_id)[0].id)}
    # The drop code goes to the recipient: the rider would confirm their own delivery.
    assert own not in offered, "the recipient was offered the parcel to carry to themselves"
    assert other in offered


def test_a_chat_draft_confirmed_after_its_area_closed_is_not_booked(client, live):
    """The app refuses a trip outside the service area when it books; the chat checks a
    place only when it is typed, so a draft finished later (its Point since closed) is
    booked, paid for, and then waits out its search with no partner to carry it."""
    from sqlalchemy import func, update

    from core.adapters.models import Booking, Point
    from tests.conftest import send_whatsapp
    from tests.test_api import PHONE
    from tests.test_unpaid_cap import HINGLISH_BOOKING

    sids = iter(range(10**6))

    def say(text: str) -> str:
        return send_whatsapp(client, {"MessageSid": f"SMr17a{next(sids):06d}",
                                      "From": f"whatsapp:{PHONE}", "WaId": PHONE[1:],
                                      "To": "whatsapp:+14155238886", "Body": text})

    for text in HINGLISH_BOOKING:
        reply = say(text)
    assert "Ramesh Kumar, +919876512345" in reply  # the confirmation
    with transaction() as s:  # ops close the only Point meanwhile
        s.execute(update(Point).values(active=False))
    say("ha")
    with transaction() as s:
        made = s.scalar(select(func.count()).select_from(Booking))
    assert made == 0, "a booking was made outside the service area (no Point is open)"


def test_a_partner_booking_on_whatsapp_who_sends_a_photo_is_answered_as_a_customer(
        client, live, frozen):  # noqa: F811
    """A partner sending their own parcel is a customer in the chat: a photo sent while
    booking gets the chat's answer ("I cannot open photos", then the question again), not
    the partners' proof-of-delivery reply, which leaves the booking question unasked."""
    from core.i18n import t
    from tests.conftest import send_whatsapp

    _, number = make_partner("Meena", LAXMIPUR)
    sids = iter(range(10**6))

    def send(**form: str) -> str:
        return send_whatsapp(client, {"MessageSid": f"SMr17b{next(sids):06d}",
                                      "From": f"whatsapp:{number}", "WaId": number[1:],
                                      "To": "whatsapp:+14155238886", "NumMedia": "0",
                                      **form})

    send(Body="hi")
    assert t("bot.pickup.ask", "hi") in send(Body="1")  # booking: where from?
    reply = send(Body="", NumMedia="1", MediaContentType0="image/jpeg",
                 MediaUrl0="https://api.twilio.com/fixture-media")
    assert t("dispatch.pod_no_job", "hi") not in reply
    assert t("bot.media.photo", "hi") in reply and t("bot.pickup.ask", "hi") in reply


def test_a_phone_booking_confirmed_after_its_area_closed_asks_for_the_place_again(
        phone):  # noqa: F811
    """The caller's draft reaches the confirmation; the pickup's Point closes meanwhile:
    "1" books nothing, the caller hears we do not go there and keys the pincode again."""
    from sqlalchemy import func, update

    from core.adapters.models import Booking, Point
    from tests.test_ivr import t

    phone.call()
    phone.press("1")  # Hindi
    phone.press("1")  # book
    phone.press("845438#")
    phone.press("2")  # Bettiah
    phone.press("1")
    phone.press("845450#")
    phone.press("7")  # Laxmipur
    phone.press("1")
    phone.press("9876543210#")
    phone.press("1")
    phone.press("1")  # fits in a bag
    phone.press("1")  # up to 5 kg
    heard = phone.press("2")  # standard: the confirmation
    assert "किराया" in heard.text
    with transaction() as s:  # ops close every Point meanwhile
        s.execute(update(Point).values(active=False))
    heard = phone.press("1")
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(Booking)) == 0
    assert t("ivr.place.none") in heard.text and t("ivr.pickup.ask") in heard.text

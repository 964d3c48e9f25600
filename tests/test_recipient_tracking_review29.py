"""Review r7, faults 3 and 4: the recipient tracks the parcel coming to her.

Sita is mostly no customer of ours: the sender booked a parcel to her number and our SMS
gave her its booking number and her code. She asks where it is on WhatsApp (menu "2", or
the booking number typed at the menu) and on the IVR (press 2, key the number). She is
told where the parcel coming to her is, as its recipient (coming, on the way, the code to
give the rider: core.services.conversation.SessionPorts._told_to_you), never the sender's
payment, amounts, link, cancel choices or phone. A number that is neither hers nor
addressed to her number stays "not found".

Through the signed webhooks, real PostgreSQL and Redis, RQ for the jobs; the clock is
frozen, never slept."""

from __future__ import annotations

from itertools import count

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Person
from core.dialog import spoken
from core.domain.booking import Actor, BookingStatus
from core.domain.pricing import ParcelCategory, SizeBucket, SpeedTier, WeightBucket
from core.services.booking import ParcelSpec, Place, create_booking, move_booking
from tests.conftest import run_jobs, send_whatsapp
from tests.test_dispatch import (
    BETTIAH,
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    bodies_to,
    frozen,  # noqa: F401  (fixture)
    sms,
)
from tests.test_ivr import Caller, prompts, t  # noqa: F401  (prompts: fixture)
from tests.test_notice_review import assigned_booking, pickup_code, ref_of

pytestmark = pytest.mark.db

_sids = count(1)
SOMEONE_ELSE = "+919876500077"


def sita_writes(client, *bodies: str, phone: str = RECIPIENT) -> list[str]:
    """Sita's WhatsApp messages, one by one; the bot's answer to each."""
    return [send_whatsapp(client, {"MessageSid": f"SMrt{next(_sids):05d}",
                                   "From": f"whatsapp:{phone}", "To": "whatsapp:+14155238886",
                                   "WaId": phone[1:], "ProfileName": "Sita", "NumMedia": "0",
                                   "Body": body})
            for body in bodies]


def unpaid_booking(customer: str = CUSTOMER, recipient: str = RECIPIENT) -> int:
    """A booking of ``customer`` to ``recipient`` waiting for its payment."""
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == customer))
        if person is None:
            person = Person(phone=customer, name="Meena", role="customer",
                            preferred_language="hi")
            s.add(person)
            s.flush()
        b = create_booking(
            s, customer_id=person.id, channel="sms",
            pickup=Place(*LAXMIPUR, pincode="845450", post_office="Laxmipur BO"),
            drop=Place(*BETTIAH, pincode="845438", post_office="Bettiah HO"),
            parcel=ParcelSpec(ParcelCategory.DOCUMENTS, SizeBucket.BAG, WeightBucket.W5,
                              declared_value_paise=50_000),
            tier=SpeedTier.STANDARD, recipient_name="Sita", recipient_phone=recipient,
            actor=Actor("customer", str(person.id)))
        move_booking(s, b, BookingStatus.AWAITING_PAYMENT, Actor.system(), "link sent")
        return b.id


# --- the reviewer's two tests (tests/test_zz_rev7_recipient.py, faults 3 and 4) ----------


def test_a_recipient_calling_with_the_booking_number_we_sent_her_is_not_told_it_does_not_exist(
        client, live, frozen, prompts):  # noqa: F811
    """Sita presses 2 on our IVR and keys the booking number from her SMS: she hears
    where the parcel coming to her is, not "no such booking for your number"."""
    booking_id, _rider = assigned_booking(client)
    ref = ref_of(booking_id)
    assert ref in bodies_to(RECIPIENT)[0], "setup: her drop code names the booking"
    sita = Caller(client, RECIPIENT)
    sita.call()
    heard = sita.press("1")  # हिन्दी
    assert t("ivr.menu") in heard.text
    heard = sita.press("2")  # where is my parcel
    heard = sita.press(f"{ref}#")
    assert t("ivr.track.not_found") not in heard.text, (
        "the recipient keyed in the booking number we sent her and heard it does not exist")
    assert spoken.spell_digits(ref) in heard.text, heard.text


def test_a_recipient_asking_on_whatsapp_where_her_parcel_is_is_not_told_she_has_none(
        client, live, frozen):  # noqa: F811
    """On WhatsApp, menu "2. where has my parcel got to": she is told of the parcel coming
    to her (by its number), not "you have no booking now"."""
    booking_id, _ = assigned_booking(client)
    ref = ref_of(booking_id)
    said = sita_writes(client, "namaste", "1", "2")
    assert "2. पार्सल कहाँ पहुँचा" in said[1], said[1]  # setup: the menu, in Hindi
    assert ref in said[2], f"asked where her parcel is, she was told: {said[2]}"


# --- what she hears, and what she does not -----------------------------------------------


def test_on_whatsapp_she_is_told_where_it_is_as_its_recipient_and_nothing_of_the_sender(
        client, live, frozen):  # noqa: F811
    """Picked from the list: "a parcel is coming to you, give the rider the code we sent
    you" (her code went to her when the rider took the job), in her language. Nothing of
    the sender's payment (no amount, no link), nor the sender's phone; the cancel option
    has nothing of hers to cancel."""
    booking_id, _ = assigned_booking(client)
    ref = ref_of(booking_id)
    said = sita_writes(client, "namaste", "1", "2", "1", "3")
    told = t("booking.status.to_you_coming_code_sent", ref=ref)
    assert told in said[2], f"the list does not show it as coming to her: {said[2]}"
    assert told in said[3], said[3]
    for answer in said[2:4]:
        assert "₹" not in answer and "http" not in answer, answer
        assert CUSTOMER[-10:] not in answer.replace(" ", ""), "the sender's phone was told"
    assert t("bot.cancel.none") in said[4], f"she was offered to cancel it: {said[4]}"


def test_the_booking_number_typed_at_the_menu_is_tracked(client, live, frozen):  # noqa: F811
    """The booking number from her SMS typed at the WhatsApp menu ("4821 7730") is
    understood: where the parcel coming to her is."""
    booking_id, _ = assigned_booking(client)
    ref = ref_of(booking_id)
    said = sita_writes(client, "namaste", "1", f"{ref[:4]} {ref[4:]}")
    assert t("booking.status.to_you_coming_code_sent", ref=ref) in said[2], said[2]


def test_once_picked_up_she_hears_it_is_on_the_way(client, live, frozen):  # noqa: F811
    booking_id, rider = assigned_booking(client)
    ref = ref_of(booking_id)
    assert "picked up" in sms(client, rider, f"PICK {pickup_code()}")[0]
    said = sita_writes(client, "namaste", "1", ref)
    assert t("booking.status.to_you_on_the_way", ref=ref) in said[2], said[2]


def test_a_parcel_to_another_number_stays_not_found(client, live, frozen,  # noqa: F811
                                                    prompts):  # noqa: F811
    """A booking addressed to someone else is neither listed nor told to Sita, by its
    number typed on WhatsApp or keyed on the IVR."""
    booking_id, _ = assigned_booking(client, recipient=SOMEONE_ELSE)
    ref = ref_of(booking_id)
    sita = Caller(client, RECIPIENT)
    sita.call()
    sita.press("1")  # हिन्दी
    sita.press("2")
    heard = sita.press(f"{ref}#")
    assert t("ivr.track.not_found") in heard.text, heard.text
    said = sita_writes(client, "namaste", "2", ref)  # her language is known now
    assert t("bot.track.none") in said[1], said[1]
    assert t("bot.track.not_found", ref=ref) in said[2], said[2]


def test_a_booking_to_her_not_paid_yet_is_not_told(client, live, frozen):  # noqa: F811
    """Before the sender pays we told her nothing and it may never come: not listed, not
    found by its number (nor the sender's payment state told that way)."""
    ref = ref_of(unpaid_booking())
    said = sita_writes(client, "namaste", "1", "2", ref)
    assert t("bot.track.none") in said[2], said[2]
    assert t("bot.track.not_found", ref=ref) in said[3], said[3]


def test_her_own_bookings_come_first_then_the_parcel_coming_to_her(client, live,  # noqa: F811
                                                                  frozen):  # noqa: F811
    """Sita is a customer too: her own booking is listed, and the parcel coming to her
    after it, as coming to her."""
    coming_id, _ = assigned_booking(client)
    own = ref_of(unpaid_booking(customer=RECIPIENT, recipient=SOMEONE_ELSE))
    coming = ref_of(coming_id)
    said = sita_writes(client, "namaste", "2")  # a customer: her language is known
    listed = said[1]
    assert own in listed and coming in listed, listed
    assert listed.index(own) < listed.index(coming), listed
    assert t("booking.status.to_you_coming_code_sent", ref=coming) in listed, listed


def test_a_number_that_said_wrong_number_hears_nothing_more_of_it(client, live,  # noqa: F811
                                                                 frozen):  # noqa: F811
    """The receiver's number told us "wrong number": the parcel is not hers, and she is
    not told of it on WhatsApp either."""
    booking_id, _ = assigned_booking(client)
    ref = ref_of(booking_id)
    sms(client, RECIPIENT, "wrong number")
    run_jobs()
    said = sita_writes(client, "namaste", "1", "2", ref)
    assert t("bot.track.none") in said[2], said[2]
    assert t("bot.track.not_found", ref=ref) in said[3], said[3]


def test_on_the_ivr_the_parcel_coming_to_her_is_offered_by_its_last_digits(
        client, live, frozen, prompts):  # noqa: F811
    """Press 2: "parcels coming to you", the one by its number's last digits (no place of
    the sender's), picked with one key: where it is."""
    booking_id, _ = assigned_booking(client)
    ref = ref_of(booking_id)
    sita = Caller(client, RECIPIENT)
    sita.call()
    sita.press("1")
    heard = sita.press("2")
    assert t("ivr.track.coming") in heard.text, heard.text
    assert t("ivr.track.option_to_you", digits=spoken.spell_digits(ref[-4:])) in heard.text
    heard = sita.press("1#")
    assert t("booking.status.to_you_coming_code_sent",
             ref=spoken.spell_digits(ref)) in heard.text, heard.text
    assert t("ivr.code.offer") not in heard.text  # a pickup code is the sender's


def test_the_told_texts_are_in_every_language() -> None:
    """Each of what a recipient is told names the booking, in all 8 catalogs."""
    for lang in i18n.LANGUAGES:
        for kind in ("coming", "coming_code_sent", "on_the_way", "on_the_way_no_code",
                     "code_with_sender"):
            assert "12345678" in i18n.t(f"booking.status.to_you_{kind}", lang,
                                        ref="12345678")

"""Review 21 (fixes of review 16): what the recipient of a parcel hears when she texts our
SMS number (core.services.partner_sms._tell_stranger): about the parcel she was told of,
with a code only once one was sent, and a sender receiving her own parcel as the customer.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, Person
from core.services import outbox
from core.services.booking import issue_leg_otps
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    bodies_to,
    booking_status,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    make_point,
    paid_booking,
    sms,
    start,
)
from tests.test_dispatch_relay import A, B, D, P

pytestmark = pytest.mark.db

PICK_MARK = "पार्सल उठाने"  # the Hindi customer's pickup-code SMS


def ref_of(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).reference


def texted_her(booking_id: int, *, dedupe_key: str | None = None) -> None:
    """An SMS to Sita about the booking (its drop code, when ``dedupe_key`` says so)."""
    with transaction() as s:
        assert outbox.queue_message(s, channel="sms", to=RECIPIENT, body="about a parcel",
                                    booking_id=booking_id, dedupe_key=dedupe_key) is not None


def next_day() -> None:
    clock.freeze(clock.now() + timedelta(days=1))  # she is answered once a day


# --- 1. two parcels coming to her ----------------------------------------------------------


def test_a_recipient_of_two_parcels_hears_of_the_one_she_holds_a_code_for(
        client, live, frozen):  # noqa: F811
    # The first parcel is taken and picked up: she holds its drop code. The second is paid
    # minutes later, nothing told to her of it. She asks "kab aayega?": the first.
    _, rider = make_partner("Ramesh", LAXMIPUR)
    first = paid_booking()
    start(first)
    assert sms(client, rider, "1")
    assert "उठ गया" in sms(client, rider, f"PICK {last_code(CUSTOMER, PICK_MARK)}")[0]
    assert booking_status(first) == "picked_up"
    second = paid_booking()  # paid, its dispatch not run yet: nothing told to Sita of it
    assert all(ref_of(second) not in body for body in bodies_to(RECIPIENT))
    assert any(ref_of(first) in body for body in bodies_to(RECIPIENT))  # her drop code

    reply = sms(client, RECIPIENT, "parcel kab aayega?")
    assert reply == [i18n.t("sms.recipient_on_the_way", "hi", ref=ref_of(first))], reply


def test_a_recipient_of_two_parcels_hears_of_the_one_we_last_texted_her(
        client, live, frozen):  # noqa: F811
    # Both parcels were told to her; she answers the SMS she got last, whichever booking
    # is newer.
    first, second = paid_booking(), paid_booking()
    texted_her(second)
    texted_her(first)
    assert sms(client, RECIPIENT, "kab?") == [
        i18n.t("sms.recipient_coming", "hi", ref=ref_of(first))]
    texted_her(second)
    next_day()
    assert sms(client, RECIPIENT, "kab?") == [
        i18n.t("sms.recipient_coming", "hi", ref=ref_of(second))]


# --- 2. on its way on a relay, before her code is sent --------------------------------------


def test_a_relay_recipient_is_not_told_to_use_a_code_never_sent(client, live,
                                                                 frozen):  # noqa: F811
    # Relay P -A- B - D: the parcel is picked up on leg 1, the last leg has no rider yet,
    # so no drop code went to Sita. She hears it is on its way and a code will come; once
    # a drop code went to her, "give the rider the code we sent you".
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    make_partner("Bala", B, point_id=point_b, max_active_legs=1, on_duty=False)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    legs = legs_of(booking_id)
    assert len(legs) == 3
    assert sms(client, r_phone, "1")
    assert "उठ गया" in sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")[0]
    assert booking_status(booking_id) == "picked_up"
    assert bodies_to(RECIPIENT) == [], "no code was sent to her yet"

    ref = ref_of(booking_id)
    reply = sms(client, RECIPIENT, "parcel kab aayega?")
    assert reply == [i18n.t("sms.recipient_on_the_way_no_code", "hi", ref=ref)], reply
    assert reply != [i18n.t("sms.recipient_on_the_way", "hi", ref=ref)]
    assert sms(client, RECIPIENT, "kab?") == []  # once a day, whatever the answer

    with transaction() as s:  # the last leg taken: its codes made (a give-back voids them)
        issue_leg_otps(s.get(Leg, legs[2].id))
    texted_her(booking_id, dedupe_key=f"leg-{legs[2].id}-dropotp-t1")
    next_day()
    assert sms(client, RECIPIENT, "parcel kab aayega?") == [
        i18n.t("sms.recipient_on_the_way", "hi", ref=ref)]


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_no_answer_before_a_code_says_one_was_sent(lang):
    # Catalogs only: the answers given while no drop code went to her do not end as the
    # answer given once one went ("give the rider the code we sent you").
    on_the_way = i18n.t("sms.recipient_on_the_way", lang, ref="48217730")
    code_we_sent = on_the_way.split("48217730", 1)[1]
    code_we_sent = code_we_sent[next(i for i, ch in enumerate(code_we_sent)
                                     if ch in "।.") + 1:].strip()
    for key in ("sms.recipient_coming", "sms.recipient_on_the_way_no_code"):
        text = i18n.t(key, lang, ref="48217730")
        assert code_we_sent and not text.endswith(code_we_sent), (key, text)


# --- 3. before any code, in each language --------------------------------------------------


@pytest.mark.parametrize("lang", ["hi", "bn", "gu", "mr", "ta", "kn", "te"])
def test_a_recipient_told_before_any_code_is_not_told_one_was_sent(
        client, live, frozen, lang):  # noqa: F811
    booking_id = paid_booking()
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        person.preferred_language = lang
        for made in s.scalars(select(Booking).where(Booking.customer_id == person.id)):
            made.language = lang  # made in it (a booking keeps its language)
    assert bodies_to(RECIPIENT) == []
    (reply,) = sms(client, RECIPIENT, "kab aayega?")
    ref = ref_of(booking_id)
    assert reply == i18n.t("sms.recipient_coming", lang, ref=ref)  # the answer for now
    on_the_way = i18n.t("sms.recipient_on_the_way", lang, ref=ref)
    # The on-the-way answer after its first sentence: "give the rider the code we sent".
    code_we_sent = on_the_way.split(ref, 1)[1].split(" ", 1)[1]
    code_we_sent = code_we_sent[next(i for i, ch in enumerate(code_we_sent)
                                     if ch in "।.") + 1:].strip()
    assert code_we_sent and not reply.endswith(code_we_sent), (
        f"no code was sent, and she was told to give the one we sent: {reply!r}")


# --- 4. a sender receiving her own parcel --------------------------------------------------


def test_a_sender_receiving_her_own_parcel_is_told_how_to_track_or_cancel(
        client, live, frozen):  # noqa: F811
    # Meena (no WhatsApp) sends a parcel to her own number; her pickup and drop codes come
    # by SMS. She texts "cancel": she is the customer, told how to track or cancel it.
    _, rider = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking(recipient=CUSTOMER)
    start(booking_id)
    assert sms(client, rider, "1")
    assert len(bodies_to(CUSTOMER)) >= 2  # her codes, by SMS
    reply = sms(client, CUSTOMER, "cancel")
    assert reply == [i18n.t("sms.customer_help", "hi", ref=ref_of(booking_id))], reply


def test_a_sender_with_her_own_parcel_still_hears_of_a_parcel_coming_from_someone_else(
        client, live, frozen):  # noqa: F811
    # Guard: her own booking is no parcel "coming to her"; Sita's parcel to Meena is, and
    # Meena answering its drop code hears of it.
    own = paid_booking(recipient=CUSTOMER)
    parcel = paid_booking(recipient=CUSTOMER)
    with transaction() as s:
        sita = Person(phone=RECIPIENT, name="Sita", role="customer", preferred_language="hi")
        s.add(sita)
        s.flush()
        s.get(Booking, parcel).customer_id = sita.id
    with transaction() as s:
        assert outbox.queue_message(s, channel="sms", to=CUSTOMER, body="her code",
                                    booking_id=parcel) is not None
    assert sms(client, CUSTOMER, "kab?") == [
        i18n.t("sms.recipient_coming", "hi", ref=ref_of(parcel))]
    with transaction() as s:
        assert outbox.queue_message(s, channel="sms", to=CUSTOMER, body="her own news",
                                    booking_id=own) is not None
    next_day()
    assert sms(client, CUSTOMER, "kab?") == [
        i18n.t("sms.customer_help", "hi", ref=ref_of(own))]

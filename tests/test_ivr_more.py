"""IVR gaps (r2): what a caller hears about the payment link when our SMS cannot reach
them, a pickup code heard on the phone when its SMS never came, and a new link for a
booking whose time to pay ran out. Calls go through the real, signed voice webhooks.

1. A caller who stopped our SMS heard "we have sent you the payment link by SMS" (tracking
   an unpaid booking) and "the payment link is coming by SMS" (booking), though nothing
   could go: they now hear how the link reaches them (WhatsApp) or that it cannot, and what
   to do.
2. A customer whose pickup-code SMS never arrived could not get it: tracking a booking whose
   first leg is assigned offers "hear the pickup code", a new code (the old one void), read
   digit by digit, at most MAX_CODES_READ times a booking, ops told once.
3. A booking whose time to pay ran out (payment.expired and after_expiry tell the customer
   to call) could only be booked again key by key: tracking it offers to book the same
   parcel again, with a new payment link.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core import clock, i18n
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Booking, Conversation, OutboxMessage, Person
from core.adapters.queue import QUEUES, queue
from core.dialog import spoken
from core.domain.booking import Actor, BookingStatus
from core.services import ivr, payments
from core.services.booking import move_booking
from ivr_flows import audio
from tests.conftest import run_jobs
from tests.test_code_delivery import by_phone, taken
from tests.test_dispatch import (
    CUSTOMER,
    OPS,
    bodies_to,
    frozen,  # noqa: F401  (fixture)
    paid_booking,
    sms,
)
from tests.test_ivr import Caller, Heard, book_in_hindi, phone, prompts, t  # noqa: F401
from tests.test_notice_review import customer_speaks, leg_of, ref_of

pytestmark = pytest.mark.db


def person_of(number: str) -> Person:
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == number))
        s.expunge(person)
        return person


def stops_sms(number: str) -> None:
    with transaction() as s:
        s.scalar(select(Person).where(Person.phone == number)).sms_opted_out = True


def chats_on_whatsapp(number: str, *, idle: timedelta = timedelta(0)) -> None:
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == number))
        s.add(Conversation(channel="whatsapp", contact=number.lstrip("+"), person_id=person.id,
                           step="menu", state={}, misses=0, handoff=False,
                           last_inbound_at=clock.now() - idle))


def pay_links_to(number: str) -> list[OutboxMessage]:
    with transaction() as s:
        rows = list(s.scalars(select(OutboxMessage).where(
            OutboxMessage.to_addr.in_([number, f"whatsapp:{number}"]),
            OutboxMessage.dedupe_key.like("paylink-%")).order_by(OutboxMessage.id)))
        for row in rows:
            s.expunge(row)
        return rows


def the_booking() -> tuple[int, str]:
    with transaction() as s:
        return s.execute(select(Booking.id, Booking.reference)
                         .order_by(Booking.id.desc()).limit(1)).one()._tuple()


def jobs() -> None:
    """Run the queued jobs, but not the prompt renders (no gTTS here, and no fake one)."""
    for name in QUEUES:
        for job in queue(name).get_jobs():
            if job.func_name == audio.RENDER_JOB:
                job.delete()
    run_jobs()


def track_first(caller: Caller) -> Heard:
    caller.call()
    caller.press("2")
    return caller.press("1")


# --- 1. the payment link, when our SMS cannot reach the caller ---------------------------

def test_tracking_after_sms_stop_does_not_claim_the_link_went_by_sms(live, phone):  # noqa: F811
    book_in_hindi(phone)
    phone.hang_up()
    jobs()  # the link is made and sent by SMS (not stopped yet)
    sent_before = len(pay_links_to(phone.phone))
    stops_sms(phone.phone)
    heard = track_first(phone)
    assert t("ivr.track.link_sent") not in heard.text, heard.text
    assert t("ivr.reach.stopped") in heard.text and t("ivr.menu") in heard.text
    assert len(pay_links_to(phone.phone)) == sent_before  # nothing went, nothing queued


def test_tracking_after_sms_stop_sends_the_link_on_whatsapp_and_says_so(
        live, phone):  # noqa: F811
    book_in_hindi(phone)
    phone.hang_up()
    jobs()
    stops_sms(phone.phone)
    chats_on_whatsapp(phone.phone)
    heard = track_first(phone)
    assert t("ivr.track.link_sent") not in heard.text, heard.text
    assert t("ivr.reach.whatsapp_sent") in heard.text
    assert pay_links_to(phone.phone)[-1].channel == "whatsapp"


def test_tracking_after_sms_stop_with_an_old_chat_says_to_write_on_whatsapp(
        live, phone):  # noqa: F811
    book_in_hindi(phone)
    phone.hang_up()
    jobs()
    sent_before = len(pay_links_to(phone.phone))
    stops_sms(phone.phone)
    chats_on_whatsapp(phone.phone, idle=timedelta(days=3))  # outside the 24-hour window
    heard = track_first(phone)
    assert t("ivr.track.link_sent") not in heard.text, heard.text
    assert t("ivr.reach.stopped_chat") in heard.text
    assert len(pay_links_to(phone.phone)) == sent_before


def test_tracking_with_sms_open_still_says_sms(live, phone):  # noqa: F811
    book_in_hindi(phone)
    phone.hang_up()
    jobs()
    heard = track_first(phone)
    assert t("ivr.track.link_sent") in heard.text and t("ivr.reach.stopped") not in heard.text


def book_from_menu(caller: Caller) -> Heard:
    """book_in_hindi for a caller who already chose Hindi: the call opens at the menu."""
    caller.call()
    caller.press("1")  # book
    caller.press("845438#")
    caller.press("2")  # Bettiah
    caller.press("1")
    caller.press("845450#")
    caller.press("7")  # Laxmipur
    caller.press("1")
    caller.press("9876543210#")
    caller.press("1")
    caller.press("1")  # a bag
    caller.press("1")  # up to 5 kg
    caller.press("2")  # standard
    return caller.press("1")  # book it


def test_booking_after_sms_stop_does_not_promise_an_sms(live, phone):  # noqa: F811
    with transaction() as s:
        s.add(Person(phone=phone.phone, role="customer", preferred_language="hi",
                     sms_opted_out=True))
    heard = book_from_menu(phone)
    _, ref = the_booking()
    digits = spoken.spell_digits(ref)
    assert t("ivr.confirm.done", digits=digits) not in heard.text, heard.text
    assert t("ivr.confirm.booked", digits=digits) in heard.text
    assert t("ivr.reach.stopped") in heard.text


def test_booking_after_sms_stop_by_a_whatsapp_customer_says_whatsapp(
        live, phone):  # noqa: F811
    with transaction() as s:
        s.add(Person(phone=phone.phone, role="customer", preferred_language="hi",
                     sms_opted_out=True))
    chats_on_whatsapp(phone.phone)
    heard = book_from_menu(phone)
    _, ref = the_booking()
    assert t("ivr.confirm.done", digits=spoken.spell_digits(ref)) not in heard.text
    assert t("ivr.reach.whatsapp_coming") in heard.text
    phone.hang_up()
    jobs()
    assert [row.channel for row in pay_links_to(phone.phone)] == ["whatsapp"]


# --- 2. the pickup code, heard on the phone ------------------------------------------------

@pytest.fixture
def assigned(client, live, frozen, prompts):  # noqa: F811
    """Meena (English) booked by phone; Ramesh took the job. (booking id, rider, caller)."""
    booking_id = paid_booking()
    customer_speaks("en")
    by_phone(booking_id)
    rider = taken(client, booking_id)
    return booking_id, rider, Caller(client, CUSTOMER)


CODE_SAID = re.compile(r"\b\d \d \d \d\b")  # a 4-digit code, digit by digit


def heard_code(heard: Heard, ref: str) -> str:
    """The one pickup code the caller heard (said twice), apart from the booking number."""
    found = CODE_SAID.findall(heard.text.replace(spoken.spell_digits(ref), ""))
    assert len(found) == 2 and len(set(found)) == 1, heard.text
    return found[0].replace(" ", "")


def ops_alerts(booking_id: int) -> int:
    text = i18n.t("ivr.sms.ops_code_read", "hi", ref=ref_of(booking_id),
                  job=str(leg_of(booking_id)))
    return bodies_to(OPS).count(text)


def test_a_caller_hears_a_new_pickup_code_and_only_it_works(client, assigned) -> None:
    booking_id, rider, caller = assigned
    ref = ref_of(booking_id)
    old = [c for b in bodies_to(CUSTOMER) for c in re.findall(r"(?<!\d)\d{4}(?!\d)", b)][-1]
    heard = track_first(caller)
    assert t("booking.status.assigned", "en", ref=spoken.spell_digits(ref)) in heard.text
    heard = caller.press("1")
    assert t("ivr.pickup.ask", "en") not in heard.text, "1 started a booking: no code offered"
    code = heard_code(heard, ref)
    assert t("ivr.code.again_offer", "en") in heard.text  # then 1 says it again
    # Read out, never rendered: no prompt with the code went to gTTS or a file.
    texts = [str(job.args) for name in QUEUES for job in queue(name).get_jobs()
             if job.func_name == audio.RENDER_JOB]
    assert not [x for x in texts if " ".join(code) in x]
    assert ops_alerts(booking_id) == 1
    if old != code:
        assert "picked up" not in sms(client, rider, f"PICK {old}")[0]
    assert "picked up" in sms(client, rider, f"PICK {code}")[0]


def test_a_pickup_code_is_read_at_most_three_times_and_ops_hear_once(client, assigned) -> None:
    booking_id, rider, caller = assigned
    ref = ref_of(booking_id)
    codes = []
    for _ in range(ivr.MAX_CODES_READ):
        track_first(caller)
        codes.append(heard_code(caller.press("1"), ref))
        caller.hang_up()
    heard = track_first(caller)
    assert t("ivr.code.offer", "en") not in heard.text  # no more: ops can help (menu 3)
    assert t("ivr.menu", "en") in heard.text
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.target == f"booking:{booking_id}")) == ivr.MAX_CODES_READ
    assert ops_alerts(booking_id) == 1
    assert "picked up" in sms(client, rider, f"PICK {codes[-1]}")[0]


def test_no_pickup_code_is_offered_once_the_parcel_is_picked_up(client, assigned) -> None:
    booking_id, rider, caller = assigned
    code = [c for b in bodies_to(CUSTOMER) for c in re.findall(r"(?<!\d)\d{4}(?!\d)", b)][-1]
    assert "picked up" in sms(client, rider, f"PICK {code}")[0]
    heard = track_first(caller)
    assert t("ivr.code.offer", "en") not in heard.text
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(AuditEntry)) == 0


def test_a_code_chosen_after_the_pickup_happened_is_not_made(client, assigned) -> None:
    booking_id, rider, caller = assigned
    code = [c for b in bodies_to(CUSTOMER) for c in re.findall(r"(?<!\d)\d{4}(?!\d)", b)][-1]
    heard = track_first(caller)
    assert t("ivr.code.offer", "en") in heard.text
    assert "picked up" in sms(client, rider, f"PICK {code}")[0]  # meanwhile
    heard = caller.press("1")
    assert t("ivr.code.not_now", "en") in heard.text
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(AuditEntry)) == 0
    assert ops_alerts(booking_id) == 0


def test_the_ops_alert_fits_two_sms_in_every_language() -> None:
    for lang in i18n.LANGUAGES:
        text = i18n.t("ivr.sms.ops_code_read", lang, ref="48217730", job="123456")
        assert len(text) <= (306 if text.isascii() else 134), (lang, len(text))


# --- 3. a new payment link after the time to pay ran out ---------------------------------

def closed_unpaid(booking_id: int) -> None:
    """The sweep's part: the booking's time to pay ran out."""
    with transaction() as s:
        move_booking(s, s.get(Booking, booking_id), BookingStatus.EXPIRED, Actor.system(),
                     "payment time ran out")


@pytest.mark.parametrize("swept", [True, False])
def test_a_booking_whose_time_to_pay_ran_out_can_be_booked_again_by_keypad(
        live, phone, swept: bool):  # noqa: F811
    book_in_hindi(phone)
    phone.hang_up()
    jobs()
    old_id, old_ref = the_booking()
    if swept:
        closed_unpaid(old_id)
    else:  # closed by the expiry sweep itself, once the gateway said the link is unpaid
        with transaction() as s:
            clock.freeze(s.get(Booking, old_id).expires_at + timedelta(minutes=2))
        assert payments.expire_unpaid() == 1
        jobs()
    heard = track_first(phone)
    assert t("booking.status.expired", ref=spoken.spell_digits(old_ref)) in heard.text
    heard = phone.press("1")
    assert t("ivr.pickup.ask") not in heard.text, "1 started a booking from scratch"
    assert "Bettiah" in heard.text and "Laxmipur" in heard.text  # the same trip, its fare
    assert "किराया" in heard.text
    heard = phone.press("1")  # book it
    new_id, new_ref = the_booking()
    assert new_id != old_id
    assert t("ivr.confirm.done", digits=spoken.spell_digits(new_ref)) in heard.text
    with transaction() as s:
        old, new = s.get(Booking, old_id), s.get(Booking, new_id)
        assert new.status == BookingStatus.AWAITING_PAYMENT.value
        assert (new.pickup_pincode, new.drop_pincode, new.recipient_phone, new.speed_tier) == (
            old.pickup_pincode, old.drop_pincode, old.recipient_phone, old.speed_tier)
        assert [(p.size_bucket, p.weight_bucket) for p in new.parcels] == [
            (p.size_bucket, p.weight_bucket) for p in old.parcels]
    phone.hang_up()
    jobs()
    assert any(new_ref in row.body and "/sandbox/payment_links/" in row.body
               for row in pay_links_to(phone.phone))


def test_a_booking_still_payable_is_not_offered_again(live, phone):  # noqa: F811
    book_in_hindi(phone)
    phone.hang_up()
    jobs()
    heard = track_first(phone)
    assert t("ivr.rebook.offer") not in heard.text and t("ivr.menu") in heard.text

"""Cancelling a booking by phone (IVR main menu, 5), through the real signed voice webhooks:
the chat's cancel rules and ports, said for the ear (core.dialog.voice). A caller told
"pay for one or cancel one first" can now cancel one and finish their booking."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from core.adapters.db import transaction
from core.adapters.models import Booking, Person
from core.dialog import spoken
from core.dialog.voice import amount
from core.domain.booking import Actor
from core.services import payments
from core.services.booking import create_booking
from ivr_flows.twiml import text_of
from tests.test_ivr import book_in_hindi, phone, prompts, step_of, t  # noqa: F401
from tests.test_payments_support import (
    BAG,
    BETTIAH,
    LAXMIPUR,
    advance,
    new_partner,
    paid_booking,
)

pytestmark = pytest.mark.db

DROP = "Bettiah"  # BETTIAH's post office as the caller hears it (without India Post's HO)


def unpaid_booking(phone_number: str) -> str:
    """A booking of this caller waiting for payment (its link job queued); its reference."""
    from core.domain.pricing import SpeedTier

    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == phone_number))
        if person is None:
            person = Person(phone=phone_number, role="customer")  # language asked on the call
            s.add(person)
            s.flush()
        actor = Actor("customer", str(person.id))
        b = create_booking(s, customer_id=person.id, channel="voice", pickup=LAXMIPUR,
                           drop=BETTIAH, parcel=BAG, tier=SpeedTier.STANDARD,
                           recipient_name=None, recipient_phone=None, actor=actor)
        payments.request_payment_link(s, b, actor)
        return b.reference


def status_of(ref: str) -> str:
    with transaction() as s:
        return s.scalar(select(Booking.status).where(Booking.reference == ref))


def set_status(ref: str, status: str) -> None:
    # What a rider's pickup leaves behind, without playing dispatch: the cancel rules look
    # at the booking's status (and its money, none here).
    with transaction() as s:
        s.execute(update(Booking).where(Booking.reference == ref).values(status=status))


def option(ref: str, lang: str = "hi") -> str:
    return t("ivr.cancel.option", lang, place=DROP, digits=spoken.spell_digits(ref[-4:]))


def said(paise: int, lang: str = "en") -> str:
    return text_of(amount(paise, lang), lang)


def test_a_caller_told_to_cancel_one_cancels_one_then_finishes_the_booking(phone):  # noqa: F811
    refs = [unpaid_booking(phone.phone) for _ in range(3)]
    heard = book_in_hindi(phone)
    assert t("ivr.confirm.too_many_unpaid", count=3) in heard.text
    assert t("ivr.menu") in heard.text and "कैंसिल करने के लिए 5 दबाइए" in heard.text

    heard = phone.press("5")
    assert t("ivr.cancel.ask") in heard.text
    for ref in refs:  # each named by where it goes and its number's last four digits
        assert option(ref) in heard.text
        assert spoken.spell_digits(ref) not in heard.text  # not the whole number
    assert heard.text.index(option(refs[2])) < heard.text.index(option(refs[0]))  # newest first
    assert t("ivr.press.3") in heard.text and heard.gather["numDigits"] == "1"
    heard = phone.press("1")
    assert t("ivr.cancel.free", place=DROP) in heard.text
    assert t("ivr.cancel.yes") in heard.text and t("ivr.cancel.no") in heard.text
    heard = phone.press("1")
    assert t("ivr.cancel.done") in heard.text and t("ivr.menu") in heard.text
    assert [status_of(r) for r in refs] == ["awaiting_payment", "awaiting_payment", "cancelled"]

    heard = phone.press("1")  # book: the booking they could not finish is offered
    assert t("ivr.resume.continue") in heard.text
    heard = phone.press("1")
    assert t("ivr.confirm.yes") in heard.text
    heard = phone.press("1")
    assert t("ivr.confirm.done", digits="")[:12] in heard.text
    with transaction() as s:
        waiting = s.scalar(select(func.count()).select_from(Booking).where(
            Booking.status == "awaiting_payment"))
    assert waiting == 3


def test_going_back_keeps_the_booking(phone):  # noqa: F811
    ref = unpaid_booking(phone.phone)
    phone.call()
    phone.press("1")  # हिंदी
    phone.press("5")
    phone.press("1")
    heard = phone.press("2")
    assert t("ivr.cancel.kept") in heard.text and t("ivr.menu") in heard.text
    assert status_of(ref) == "awaiting_payment" and step_of(phone.phone) == "menu"
    heard = phone.press("*")  # the menu again, not the cancel question
    assert t("ivr.menu") in heard.text and t("ivr.cancel.ask") not in heard.text


def test_a_refund_is_said_in_words_and_said_again_if_it_changes(live, phone):  # noqa: F811
    bid = paid_booking(phone.phone)  # an English-speaking caller
    with transaction() as s:
        b = s.get(Booking, bid)
        ref, total = b.reference, b.total_paise
    phone.call()
    heard = phone.press("5")
    assert option(ref, "en") in heard.text
    heard = phone.press("1")
    assert t("ivr.cancel.refund", "en", place=DROP, refund=said(total)) in heard.text
    assert "₹" not in heard.text  # amounts in words, as fares are

    advance(bid, new_partner(), to="assigned")  # a rider takes the job while they listen
    with transaction() as s:
        q = payments.cancellation_preview(s, s.get(Booking, bid))
    assert q.fee_paise > 0
    heard = phone.press("1")
    assert status_of(ref) == "assigned"  # not cancelled at amounts they did not hear
    assert t("ivr.cancel.changed", "en") in heard.text
    assert t("ivr.cancel.fee", "en", place=DROP, fee=said(q.fee_paise),
             refund=said(q.refund_paise)) in heard.text
    heard = phone.press("1")
    assert t("ivr.cancel.done_refund", "en", refund=said(q.refund_paise)) in heard.text
    assert status_of(ref) == "cancelled"


def test_only_bookings_that_can_still_be_cancelled_are_offered(phone):  # noqa: F811
    with transaction() as s:
        s.add(Person(phone=phone.phone, role="customer", preferred_language="hi"))
    on_the_way, waiting = unpaid_booking(phone.phone), unpaid_booking(phone.phone)
    set_status(on_the_way, "picked_up")
    phone.call()
    heard = phone.press("5")
    assert option(waiting) in heard.text and option(on_the_way) not in heard.text
    assert t("ivr.press.2") not in heard.text

    set_status(waiting, "picked_up")  # picked up while the list was read
    heard = phone.press("1")
    assert t("ivr.cancel.picked_up") in heard.text and t("ivr.menu") in heard.text
    assert status_of(waiting) == "picked_up" and step_of(phone.phone) == "menu"
    heard = phone.press("5")  # nothing left to cancel: said, and the menu again
    assert t("ivr.cancel.none") in heard.text and t("ivr.menu") in heard.text
    assert step_of(phone.phone) == "menu"


def test_the_cancel_list_works_out_each_refund_once(phone, monkeypatch):  # noqa: F811
    # Pressing 5 checks there is something to cancel and reads the list out: one refund
    # worked out per booking (each costs several queries), not one for each.
    from core.services.conversation import SessionPorts

    refs = [unpaid_booking(phone.phone) for _ in range(3)]
    phone.call()
    phone.press("1")  # हिंदी
    previewed: list[str] = []
    real = SessionPorts.cancel_preview

    def counting(self, reference):
        previewed.append(reference)
        return real(self, reference)

    monkeypatch.setattr(SessionPorts, "cancel_preview", counting)
    heard = phone.press("5")
    assert all(option(ref) in heard.text for ref in refs)
    assert sorted(previewed) == sorted(refs)

"""Review r6: what a WhatsApp customer does in the chat after booking (paying, tracking,
cancelling, rating, a person, language, repeats). Each test asserts what the customer
should be told or what should be kept, and fails on the code as reviewed."""

from __future__ import annotations

from datetime import timedelta
from itertools import count

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff
from core.adapters.models import Booking, Conversation, Leg, Person
from core.adapters.payment_models import PaymentLink
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.domain.pricing import SpeedTier
from core.services import payments, rating
from core.services.booking import create_booking, move_booking, move_leg
from tests.conftest import send_whatsapp
from tests.test_conversations import START
from tests.test_payments_support import BAG, BETTIAH, LAXMIPUR, new_partner
from tests.test_whatsapp_rating import CUSTOMER as RATING_CUSTOMER
from tests.test_whatsapp_rating import ask, delivered_booking, stars_of

pytestmark = pytest.mark.db

# The rating tests' customer: their delivered_booking / ask / stars_of work on this number.
CUSTOMER = RATING_CUSTOMER
_sids = count(1)


def wa(client, body: str) -> str:
    return send_whatsapp(client, {
        "MessageSid": f"SMrev6{next(_sids):06d}", "AccountSid": "ACtest",
        "From": f"whatsapp:{CUSTOMER}", "To": "whatsapp:+14155238886",
        "WaId": CUSTOMER[1:], "NumMedia": "0", "Body": body})


def t(key: str, **params: object) -> str:
    return i18n.t(key, "en", **params)


@pytest.fixture
def chat(client):
    """A customer chatting in English, at the main menu since a while before START (a
    chat this quiet may be asked to rate a delivery)."""
    clock.freeze(START - rating.QUIET - timedelta(minutes=5))
    with transaction() as s:
        s.add(Person(phone=CUSTOMER, role="customer", preferred_language="en"))
    assert t("menu.main") in wa(client, "hi")
    clock.freeze(START)
    yield client
    clock.freeze(None)


def customer_id() -> int:
    with transaction() as s:
        return s.scalar(select(Person.id).where(Person.phone == CUSTOMER))


def unpaid_booking(*, link: bool = True) -> tuple[int, str]:
    """A WhatsApp booking of the customer waiting for payment, with its link made."""
    cid = customer_id()
    actor = Actor("customer", str(cid))
    with transaction() as s:
        b = create_booking(s, customer_id=cid, channel="whatsapp", pickup=LAXMIPUR,
                           drop=BETTIAH, parcel=BAG, tier=SpeedTier.STANDARD,
                           recipient_name="Sita", recipient_phone=None, actor=actor)
        payments.request_payment_link(s, b, actor)
        s.flush()
        if link:
            s.add(PaymentLink(booking_id=b.id, gateway_id=f"plink_rev6{b.id}",
                              reference_id=b.reference,
                              short_url=f"https://rzp.io/i/rev6{b.id}",
                              amount_paise=b.total_paise, status="created",
                              expire_by=b.expires_at))
        return b.id, b.reference


# --- tracking a booking whose time to pay is over --------------------------------------

def test_tracking_an_unpaid_booking_past_its_time_does_not_say_waiting_for_payment(chat):
    """Its time to pay is over; the sweep has not closed it yet (it asks the gateway
    first: a minute, up to an hour while the gateway is away). The port gives no link
    (SessionPorts.payment_link), so the chat says "waiting for payment" and no link: she
    cannot pay, and is not told why. The phone's dialog says the time ran out
    (IvrPorts.payment_over)."""
    bid, ref = unpaid_booking()
    with transaction() as s:
        expires = s.get(Booking, bid).expires_at
    clock.freeze(expires + timedelta(seconds=20))
    wa(chat, "2")
    reply = wa(chat, "1")
    assert t("booking.status.awaiting_payment", ref=ref) not in reply, reply


def test_tracking_a_booking_whose_link_was_refused_does_not_say_time_ran_out(chat):
    """The gateway refused the link: the booking closes as expired and she is told "we
    could not make your payment link" (payments._close_unlinked: never "the time to pay
    is over"). Tracking it then says "time ran out", which she never had."""
    bid, ref = unpaid_booking(link=False)
    payments._link_refused(bid, "the gateway said no")
    wa(chat, "2")
    reply = wa(chat, "1")
    assert t("booking.status.expired", ref=ref) not in reply, reply


# --- the cancel question asked again after the parcel was picked up -------------------

def paid(booking_id: int) -> None:
    """The customer's payment of the booking is captured (what the webhook does)."""
    with transaction() as s:
        total = s.get(Booking, booking_id).total_paise
    assert payments.record_capture(booking_id, f"pay_rev6{booking_id}", total,
                                   cause="test") == "paid"


def to_status(booking_id: int, partner_id: int, *statuses: str) -> None:
    """Play dispatch's part on the single leg: assigned, picked up..."""
    leg_of = {"dispatching": LegStatus.OFFERING, "assigned": LegStatus.ASSIGNED,
              "picked_up": LegStatus.PICKED_UP, "delivered": LegStatus.DELIVERED}
    with transaction() as s:
        b = s.get(Booking, booking_id)
        leg = s.scalar(select(Leg).where(Leg.booking_id == booking_id))
        for status in statuses:
            if status == "assigned":
                leg.partner_id = partner_id
            move_leg(s, leg, leg_of[status], Actor.system(), "test")
            move_booking(s, b, BookingStatus(status), Actor.system(), "test")


def test_a_cancel_question_asked_again_after_pickup_says_it_cannot_be_cancelled(chat):
    """At "Cancel booking X? ... 1. Yes 2. No" the rider picks the parcel up; the customer
    asks for help (or types a word the step does not take): the question is asked again
    with a fresh quote, which is "not allowed" now, and is told as if support had given
    her money back ("Our team already gave your money back")."""
    bid, ref = unpaid_booking()
    paid(bid)
    partner = new_partner("+919812349061")
    to_status(bid, partner, "dispatching", "assigned")
    wa(chat, "3")
    reply = wa(chat, "1")
    assert t("bot.cancel.fee", ref=ref, fee_paise=1000,
             refund_paise=booking_total(bid) - 1000).split("?")[0] in reply
    to_status(bid, partner, "picked_up")
    reply = wa(chat, "help")
    assert t("bot.cancel.paid_back", ref=ref) not in reply, reply
    assert t("bot.cancel.picked_up", ref=ref) in reply


def booking_total(booking_id: int) -> int:
    with transaction() as s:
        return s.get(Booking, booking_id).total_paise


# --- rating while a request for a person waits on another channel ----------------------

def test_a_rating_asked_while_a_call_waits_for_a_person_is_not_kept_for_the_team(chat):
    """She called and asked for a person (a voice handoff waits); her WhatsApp messages
    are kept for that operator. Asked "how was it? 1 to 5" meanwhile, her "5" goes to the
    team's waiting list ("we have kept your message") instead of rating the rider."""
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        call = Conversation(channel="voice", contact=CUSTOMER, person_id=person.id,
                            step="menu", state={}, misses=0, handoff=True)
        s.add(call)
        s.flush()
        s.add(Handoff(conversation_id=call.id, person_id=person.id, channel="voice",
                      reason="asked", status="waiting", step="menu", created_at=clock.now()))
    bid, _, _ = delivered_booking()
    asked = ask(bid)
    reply = wa(chat, "5")
    assert not asked or stars_of(bid) == [5], reply


# --- changing the language at the rating question --------------------------------------

def test_changing_the_language_at_the_rating_question_keeps_the_question(chat):
    """"language" at the rating question, then Hindi: the menu in Hindi, and the question
    (asked once per booking, never again) is gone; her "5" now is the menu's Help."""
    bid, ref, _ = delivered_booking()
    assert ask(bid)
    wa(chat, "language")
    reply = wa(chat, "1")  # हिंदी
    assert i18n.t("bot.rate.ask", "hi", ref=ref).strip() in reply, reply


# --- "yes, cancel" after the amounts changed -------------------------------------------

def test_a_yes_to_amounts_that_changed_meanwhile_says_nothing_was_cancelled(chat):
    """"Cancel booking X? You will get back ₹N" (no rider yet); a rider takes the job;
    her "1" cancels nothing (the fee is new) and the question comes again with the fee,
    without a word that her yes did not cancel it and that the amounts changed (the
    phone's dialog says "What you get back has changed", ivr.cancel.changed)."""
    bid, ref = unpaid_booking()
    paid(bid)
    to_status(bid, 0, "dispatching")
    total = booking_total(bid)
    wa(chat, "3")
    assert t("bot.cancel.refund", ref=ref, refund_paise=total) in wa(chat, "1")
    to_status(bid, new_partner("+919812349062"), "assigned")
    reply = wa(chat, "1")
    question = t("bot.cancel.fee", ref=ref, fee_paise=1000, refund_paise=total - 1000)
    assert question in reply, reply
    with transaction() as s:
        assert s.get(Booking, bid).status == "assigned"
    told_first = reply.split(question)[0].strip()
    assert told_first, f"asked again with no word that nothing was cancelled: {reply!r}"

"""One-time codes that did not reach the person who reads them out (review of code
delivery, defects 1 to 4).

1. A pickup code Twilio could not deliver (a phone-only customer's SMS never arrived) was
   only recorded: the rider came and nobody had the code. A new code is made (only its hash
   kept, the lost one void) and goes on WhatsApp to a customer who chats with us, else by
   SMS once more, the rider told to call ops if the customer has no code, ops told
   (core.services.dispatch.pickup_code_lost).
2. The ops alert for a lost drop code said the new code went to the sender when the sender
   could not be reached either.
3. A new code in place of a lost one kept the wrong tries made against the lost one: a
   rider who tried four times had one try for the new code. The tries count against a
   code, so a new one starts fresh, but never beyond twice DISPATCH_OTP_MAX_FAILURES wrong
   tries of a kind in one stretch of the leg (losing codes on purpose does not escape a
   lock).
4. On a relay's second (or later) handover the customer heard nothing.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.dispatch_models import OtpAttempt
from core.adapters.models import Booking, Conversation, Leg, OutboxMessage, Person
from core.adapters.queue import QUEUES
from core.config import get_settings
from core.services import dispatch
from tests.conftest import run_jobs
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    bodies_to,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    make_point,
    offers,
    paid_booking,
    sms,
    start,
)
from tests.test_dispatch_relay import A, B, D, P
from tests.test_notice_review import (
    OPS,
    cannot_deliver,
    codes_in,
    customer_speaks,
    leg_of,
    passed_on,
    recipient_code_row,
    ref_of,
    report,
)
from tests.test_relay_review import GIVE_MARK, PICK_MARK, TAKE_MARK

pytestmark = pytest.mark.db


def by_phone(booking_id: int) -> None:
    """The customer booked by calling the IVR: their news is promised by SMS."""
    with transaction() as s:
        s.get(Booking, booking_id).channel = "voice"


def chats_on_whatsapp(phone: str) -> None:
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == phone))
        s.add(Conversation(channel="whatsapp", contact=phone.lstrip("+"),
                           person_id=person.id, last_inbound_at=clock.now()))


def pickup_rows(booking_id: int) -> list[OutboxMessage]:
    """The pickup-code messages to the customer, in order."""
    with transaction() as s:
        rows = list(s.scalars(select(OutboxMessage).where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.dedupe_key.like("leg-%-pickotp-%")).order_by(OutboxMessage.id)))
        for r in rows:
            s.expunge(r)
        return rows


def taken(client, booking_id: int, *, queues: tuple[str, ...] | None = None) -> str:
    """Ramesh (English) takes the booking's job; the jobs of ``queues`` run (default all,
    the Twilio emulator's status reports too). His phone."""
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    start(booking_id)
    assert sms(client, rider, "1")
    run_jobs(queues)
    return rider


def alerts(key: str, booking_id: int) -> int:
    text = i18n.t(key, "hi", ref=ref_of(booking_id), job=str(leg_of(booking_id)))
    return bodies_to(OPS).count(text)


def rider_told(rider: str, booking_id: int) -> int:
    text = i18n.t("dispatch.pickup_code_lost_rider", "en", job=str(leg_of(booking_id)),
                  ops_phone=get_settings().ops_phone)
    return bodies_to(rider).count(text)


# --- 1. a pickup code that did not reach the customer -------------------------------------

def test_a_pickup_code_sms_that_never_arrived_is_made_again(client, live, frozen):  # noqa: F811
    """Meena booked by phone; her pickup-code SMS is reported undelivered (phone off).
    Nobody holds a code when Ramesh comes. A new code goes by SMS once more (she has no
    WhatsApp with us), the lost one is void, Ramesh hears to call ops if she has no code,
    ops are told; once, though Twilio reports it again."""
    cannot_deliver(CUSTOMER, "undelivered", "30003")
    booking_id = paid_booking()
    customer_speaks("en")
    by_phone(booking_id)
    rider = taken(client, booking_id)
    rows = pickup_rows(booking_id)
    assert len(rows) == 2, "the lost pickup code was only recorded: nobody holds a code"
    lost, again = rows
    assert lost.status == "undelivered" and again.to_addr == CUSTOMER
    (old,), (code,) = codes_in([lost.body]), codes_in([again.body])
    assert again.body == i18n.t("dispatch.pickup_otp", "en", ref=ref_of(booking_id), otp=code)
    assert alerts("dispatch.ops_pickup_code_lost", booking_id) == 1
    assert rider_told(rider, booking_id) == 1
    report(client, lost.provider_sid, "undelivered", "30003")  # reported again
    assert len(pickup_rows(booking_id)) == 2
    assert alerts("dispatch.ops_pickup_code_lost", booking_id) == 1
    if old != code:
        assert "picked up" not in sms(client, rider, f"PICK {old}")[0]
    assert "picked up" in sms(client, rider, f"PICK {code}")[0]


def test_a_lost_pickup_code_goes_on_whatsapp_to_a_customer_who_chats_with_us(
        client, live, frozen):  # noqa: F811
    """Meena booked by phone (news by SMS) but chats with us on WhatsApp too: her SMS
    never arrived, the new code goes to her there; nobody else is bothered."""
    cannot_deliver(CUSTOMER, "failed", "30006")
    booking_id = paid_booking()
    customer_speaks("en")
    chats_on_whatsapp(CUSTOMER)
    by_phone(booking_id)
    rider = taken(client, booking_id)
    lost, again = pickup_rows(booking_id)
    assert lost.channel == "sms" and again.to_addr == f"whatsapp:{CUSTOMER}"
    (code,) = codes_in([again.body])
    assert alerts("dispatch.ops_pickup_code_lost", booking_id) == 0
    assert rider_told(rider, booking_id) == 0
    assert "picked up" in sms(client, rider, f"PICK {code}")[0]


def test_a_pickup_code_reported_delivered_survives_a_late_failure_report(
        client, live, frozen):  # noqa: F811
    """Twilio said delivered, then a late failure about the same SMS: Meena holds the
    code; it stays the one that works, and nothing more is sent."""
    booking_id = paid_booking()
    customer_speaks("en")
    by_phone(booking_id)
    rider = taken(client, booking_id)
    (sent,) = pickup_rows(booking_id)
    assert sent.status == "delivered"
    report(client, sent.provider_sid, "undelivered", "30003")
    report(client, sent.provider_sid, "undelivered", "30003")
    assert len(pickup_rows(booking_id)) == 1
    (code,) = codes_in([sent.body])
    assert "picked up" in sms(client, rider, f"PICK {code}")[0]


def test_a_pickup_code_lost_with_the_customer_unreachable_tells_ops_so(
        client, live, frozen):  # noqa: F811
    """The SMS failed and Meena has since sent STOP, no WhatsApp: nothing can carry a new
    code; ops hear that nobody holds one, not that it was sent."""
    cannot_deliver(CUSTOMER, "failed", "30006")
    booking_id = paid_booking()
    customer_speaks("en")
    by_phone(booking_id)
    rider = taken(client, booking_id, queues=QUEUES)  # the status report comes later
    with transaction() as s:
        s.scalar(select(Person).where(Person.phone == CUSTOMER)).sms_opted_out = True
    run_jobs()
    assert len(pickup_rows(booking_id)) == 1
    assert alerts("dispatch.ops_pickup_code_unsent", booking_id) == 1
    assert alerts("dispatch.ops_pickup_code_lost", booking_id) == 0
    assert rider_told(rider, booking_id) == 1


# --- 2. the ops alert says what happened to a lost drop code ------------------------------

def test_ops_hear_a_lost_drop_code_reached_nobody_when_the_sender_is_unreachable(
        client, live, frozen):  # noqa: F811
    """Sita's drop-code SMS failed; Meena (the sender) stopped our SMS and has no
    WhatsApp: the new code went to nobody. Ops were told "a new code went to the
    sender"; they now hear that nobody holds one."""
    cannot_deliver(RECIPIENT, "undelivered", "30003")
    booking_id = paid_booking()
    customer_speaks("en")
    with transaction() as s:
        s.scalar(select(Person).where(Person.phone == CUSTOMER)).sms_opted_out = True
    taken(client, booking_id)
    assert recipient_code_row(booking_id).status == "undelivered"
    assert passed_on(booking_id) == []
    assert alerts("dispatch.ops_drop_code_lost", booking_id) == 0, (
        "ops were told the code went to the sender, who cannot be reached")
    assert alerts("dispatch.ops_drop_code_unsent", booking_id) == 1


# --- 3. a new code starts with fresh tries, bounded ---------------------------------------

def test_a_new_drop_code_after_a_lost_one_starts_with_fresh_tries(client, live,
                                                                   frozen):  # noqa: F811
    """Ramesh at Sita's door: she has no code (her SMS never arrived; Twilio reports it
    late), he tries four codes she guesses. Then the new code goes to the sender; his next
    typo locked the leg, the four tries against the void code counting against it."""
    cannot_deliver(RECIPIENT, "undelivered", "30003")
    booking_id = paid_booking()
    customer_speaks("en")
    rider = taken(client, booking_id, queues=QUEUES)  # reports not yet in
    pick = [c for b in bodies_to(CUSTOMER) if "at pickup" in b for c in codes_in([b])]
    assert "picked up" in sms(client, rider, f"PICK {pick[-1]}")[0]
    job = str(leg_of(booking_id))
    (lost,) = codes_in([recipient_code_row(booking_id).body])
    wrong = [f"{(int(lost) + n) % 10000:04d}" for n in range(1, 6)]
    for n, guess in enumerate(wrong[:4]):
        assert sms(client, rider, f"DROP {guess}") == [
            i18n.t("dispatch.otp_wrong", "en", job=job, left=4 - n)]
    run_jobs()  # Twilio's late report: undelivered
    (code,) = codes_in(passed_on(booking_id))
    typo = next(w for w in wrong if w != code)
    assert sms(client, rider, f"DROP {typo}") == [
        i18n.t("dispatch.otp_wrong", "en", job=job, left=4)], (
        "the tries against the void code counted against the new one")
    assert "delivered" in sms(client, rider, f"DROP {code}")[0]


def test_tries_after_lost_codes_are_bounded(client, live, frozen):  # noqa: F811
    """Codes lost again and again (a recipient's number given wrong on purpose) do not
    buy a guesser endless tries: past one code's worth of wrong tries in the leg's
    stretch, they still count against the new code."""
    booking_id = paid_booking()
    customer_speaks("en")
    rider = taken(client, booking_id)
    pick = [c for b in bodies_to(CUSTOMER) if "at pickup" in b for c in codes_in([b])]
    assert "picked up" in sms(client, rider, f"PICK {pick[-1]}")[0]
    limit = dispatch.config().otp_max_failures
    with transaction() as s:
        leg = s.get(Leg, leg_of(booking_id))
        assert dispatch.tries_after_lost_code(s, leg, "drop") == 0
        for n in range(limit + 3):
            s.add(OtpAttempt(leg_id=leg.id, partner_id=leg.partner_id, kind="drop",
                             ok=False, at=clock.now()))
            s.flush()
            assert dispatch.tries_after_lost_code(s, leg, "drop") == max(0, n + 1 - limit)
        # Pickup tries made before the parcel was picked up are another code's.
        assert dispatch.tries_after_lost_code(s, leg, "pickup") == 0


# --- 4. the customer hears of every handover ----------------------------------------------

def test_the_customer_hears_of_a_relays_second_handover(client, live, frozen):  # noqa: F811
    """P -A- B - D: Ramesh hands to Asha at A (the customer hears the parcel is on the
    way), Asha to Bala at B: the customer heard nothing of it."""
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    _, b_phone = make_partner("Bala", B, point_id=point_b, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    *_, leg3 = (leg.id for leg in legs_of(booking_id))
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    sms(client, a_phone, "1")
    sms(client, r_phone, f"DROP {last_code(a_phone, TAKE_MARK)}")
    sms(client, a_phone, f"PICK {last_code(r_phone, GIVE_MARK)}")
    assert [o.partner_id for o in offers(leg3)]
    sms(client, b_phone, "1")
    before = bodies_to(CUSTOMER)
    assert "पहुँच गया" in sms(client, a_phone, f"DROP {last_code(b_phone, TAKE_MARK)}")[0]
    told = bodies_to(CUSTOMER)[len(before):]
    handed_on = i18n.t("dispatch.customer_handed_on", "hi", ref=ref_of(booking_id),
                       point="Point B")
    assert told == [handed_on], "the customer heard nothing of the second handover"
    sms(client, b_phone, f"PICK {last_code(a_phone, GIVE_MARK)}")
    assert bodies_to(CUSTOMER).count(handed_on) == 1

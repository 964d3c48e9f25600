"""Reviewer r9 (notices the service sends on its own): each test shows one defect and
asserts what should happen instead.

1. A notice that waited for retries past the outbox's 10-minute in-order window is sent
   after the news that replaced it: "picked up" after "delivered", and a pickup code
   made void by a give-back after the new code ("the old code no longer works"), with
   the first rider's name. Sign-in codes are withdrawn when replaced; leg codes are not.
2. A recipient we told of her parcel (she asked us by SMS) is not told when it is late,
   though she is told when it will not come (tell_recipient_not_coming honours the mark,
   dispatch._late_to_recipient looks at outbox rows only).
3. The phone's idea of how a message reaches a caller who stopped our SMS
   (VoicePorts.reach) ignores the default language's WhatsApp template that
   notify.send_to_person uses when her language has none: she is told the link cannot
   come, and her booking details are not sent, while the link does go.
4. WHATSAPP_TEMPLATE_<LANG> is never validated: a value that is no ContentSid (a
   template's name pasted in) starts the service, and every out-of-window notice is then
   refused by Twilio (21655), a final refusal that goes no other way.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, Conversation, OutboxMessage, Person, SandboxMessage
from core.adapters.redis_conn import redis_client
from core.services import dispatch, notify
from sandbox.twilio import FAIL_NEXT_KEY
from tests.conftest import release_scheduled, run_jobs
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    OPS,
    RECIPIENT,
    bodies_to,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    make_point,
    paid_booking,
    sms,
    start,
)
from tests.test_ops_s30 import no_drop_code_night  # noqa: F401  (fixture)

pytestmark = pytest.mark.db


def ref_of(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).reference


def customer_speaks(lang: str) -> None:
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        person.preferred_language = lang
        for made in s.scalars(select(Booking).where(Booking.customer_id == person.id)):
            made.language = lang  # made in it (a booking keeps its language)


def received(address: str) -> list[str]:
    """What Twilio (the emulator) took for ``address``, in the order it took it."""
    with transaction() as s:
        return list(s.scalars(select(SandboxMessage.body).where(
            SandboxMessage.to_addr == address).order_by(SandboxMessage.id)))


@pytest.fixture
def wall_clock():
    """The project clock frozen at the real time: the outbox's in-order window compares
    rows' created_at (PostgreSQL's now()) with the project clock, as in production."""
    with transaction() as s:
        s.add(Person(phone=OPS, name="Ops", role="ops", preferred_language="hi"))
    t0 = datetime.now(UTC).replace(microsecond=0)
    clock.freeze(t0)
    yield t0
    clock.freeze(None)


# --- 1. news that waited past the in-order window is sent after what replaced it ----------


def test_a_picked_up_notice_stuck_in_retries_is_not_sent_after_delivered(
        client, live, wall_clock, no_drop_code_night):  # noqa: F811  (the wall clock's hour)
    """Twilio is down when Ramesh picks the parcel up: "the rider has picked up the
    parcel" waits for its retries. He delivers eleven minutes later, when Twilio works
    again: "delivered" is not held (the earlier row is over IN_ORDER_FOR old) and goes at
    once; then the old notice's retry goes too, so the customer's phone shows "picked
    up" after "delivered". A notice the booking has moved past should not go after the
    newer one (dropped as superseded, or the newer one kept behind it)."""
    t0 = wall_clock
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    customer_speaks("en")
    start(booking_id)
    sms(client, rider, "1")
    run_jobs()
    redis_client().set(FAIL_NEXT_KEY, 1)  # the outage: the next try is refused (503)
    clock.freeze(t0 + timedelta(minutes=1))
    assert "picked up" in sms(client, rider, f"PICK {last_code(CUSTOMER)}")[0]
    run_jobs()  # the notice's first try fails; its retries are scheduled
    ref = ref_of(booking_id)
    picked = i18n.t("booking.status.picked_up", "en", ref=ref)
    delivered = i18n.t("booking.status.delivered", "en", ref=ref)
    with transaction() as s:
        row = s.scalar(select(OutboxMessage).where(OutboxMessage.body == picked))
        assert row is not None and (row.status, row.attempts) == ("pending", 1)
    # (Its retries at +10 s, +40 s and +160 s fail as well while Twilio is down: left
    # unrun here. Twilio is back by the delivery.)
    clock.freeze(t0 + timedelta(minutes=12))
    assert "delivered" in sms(client, rider, f"DROP {last_code(RECIPIENT)}")[0]
    run_jobs()
    clock.freeze(t0 + timedelta(minutes=13))  # the picked-up notice's next retry
    release_scheduled(timedelta(hours=1))
    run_jobs()
    got = [b for b in received(CUSTOMER) if b in (picked, delivered)]
    assert delivered in got
    assert picked not in got[got.index(delivered):], (
        "the customer was told the parcel was picked up after being told it was "
        f"delivered: {got}")


def test_a_pickup_code_made_void_by_a_give_back_is_not_sent_after_the_new_one(
        client, live, wall_clock):
    """Ramesh takes the job while Twilio is down: "Ramesh is coming" and the pickup code
    wait for their retries. Eleven minutes on he gives the job back and Asha takes it:
    "Asha is coming" and "your new pickup code is N, the old code no longer works" go at
    once. Then the old rows' retries go: the last the customer reads is "Ramesh is coming
    ... give code <old> to the rider", a code that no longer works (PICK with it is a
    wrong try, and enough of them lock the leg). A sign-in code replaced by a newer one
    is never sent (outbox.withdraw_sign_in_codes); a leg's replaced code is."""
    t0 = wall_clock
    _, ramesh = make_partner("Ramesh", LAXMIPUR, rating_x100=500, lang="en")
    _, asha = make_partner("Asha", (26.90, 84.49), rating_x100=300, lang="en")
    booking_id = paid_booking()
    customer_speaks("en")
    start(booking_id)
    redis_client().set(FAIL_NEXT_KEY, 1)  # the outage: the next try is refused (503)
    assert "is yours" in sms(client, ramesh, "1")[0]
    run_jobs()  # "Ramesh is coming" fails; the pickup code waits behind it
    # (Their retries at +10 s, +40 s and +160 s fail as well while Twilio is down: left
    # unrun here. Twilio is back by the give-back.)
    old = last_code(CUSTOMER)
    with transaction() as s:
        waiting = list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == CUSTOMER, OutboxMessage.status == "pending")))
    assert any(old in b for b in waiting), waiting
    clock.freeze(t0 + timedelta(minutes=11))
    assert "given back" in sms(client, ramesh, "CANCEL")[0]
    assert "is yours" in sms(client, asha, "1")[0]
    run_jobs()
    new = last_code(CUSTOMER)
    assert new != old
    clock.freeze(t0 + timedelta(minutes=13))  # the old rows' next retry
    release_scheduled(timedelta(hours=1))
    run_jobs()
    codes = [b for b in received(CUSTOMER) if old in b or new in b]
    assert codes and new in codes[-1], (
        "the last pickup code the customer received is the void one: " + repr(codes))
    coming = [b for b in received(CUSTOMER) if "is coming" in b]
    assert coming and "Asha" in coming[-1], (
        "the last rider the customer was told of is the one who gave the job back: "
        + repr(coming))


# --- 2. a recipient we told of her parcel hears it is late ---------------------------------


def test_a_recipient_told_of_her_parcel_by_sms_hears_it_is_late(client, live,
                                                                frozen):  # noqa: F811
    """A relay P -A- B - D: Ramesh picks the parcel up; nobody takes the next leg, so no
    delivery code has gone to Sita yet. She texts "parcel kab aayega?" and we answer her:
    her parcel (booking X) is on its way, give the rider the code we will send. Eight
    hours on it is late: ops and the customer hear it, Sita (who is waiting for it, and
    heard from us) hears nothing. She would have heard had it been cancelled (the answer
    marks the booking: dispatch.mark_recipient_told); _late_to_recipient counts only
    outbox rows as having told her."""
    from tests.test_dispatch_relay import A, B, D, P
    from tests.test_relay_review import PICK_MARK

    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    ref = ref_of(booking_id)
    [answer] = sms(client, RECIPIENT, "parcel kab aayega?")
    assert answer == i18n.t("sms.recipient_on_the_way_no_code", "hi", ref=ref)
    assert bodies_to(RECIPIENT) == []  # the answer was inline (TwiML)
    assert [leg.status for leg in legs_of(booking_id)][0] == "picked_up"
    freeze_at(8 * 3600 + 60)
    assert dispatch.sweep()["late_deliveries"] == 1
    run_jobs()
    late = i18n.t("dispatch.customer_delivery_late", "hi", ref=ref, hours=8)
    assert late in bodies_to(CUSTOMER)  # the customer was told
    told = [b for b in bodies_to(RECIPIENT) if ref in b]
    assert told, "the recipient we told of the parcel was not told it is late"


# --- 3. the phone says how the link comes as notify sends it ------------------------------


def test_the_phone_says_the_link_comes_on_whatsapp_when_the_default_template_carries_it(
        clean_db, monkeypatch):
    """A Tamil caller stopped our SMS and last wrote on WhatsApp two days ago; a
    template is set up for Hindi (the default language) only. notify.send_to_person
    sends her booking's news (the payment link) as the Hindi template, as the README
    says ("the default language's when hers has none and SMS cannot reach her"). The
    phone's reach() (documented as "as notify.send_to_person sends it") answers "chat":
    the caller hears the link cannot come and that she must write to us first, and the
    booking's details (ivr.sms.details_whatsapp) are not sent at all."""
    from core.services.ivr import VoicePorts

    monkeypatch.setenv("WHATSAPP_TEMPLATE_HI", "HX0123456789abcdef0123456789abcdef")
    monkeypatch.delenv("WHATSAPP_TEMPLATE_TA", raising=False)
    notify.reset_templates()
    now = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    clock.freeze(now)
    try:
        with transaction() as s:
            person = Person(phone="+919812355566", role="customer",
                            preferred_language="ta", sms_opted_out=True)
            s.add(person)
            s.flush()
            conv = Conversation(channel="whatsapp", contact="919812355566",
                                person_id=person.id, step="menu", state={}, misses=0,
                                last_inbound_at=now - timedelta(days=2))
            s.add(conv)
            s.flush()
            said = VoicePorts(s, person, conv).reach()
            row_id = notify.send_to_person(s, person, "Booking 12345678: pay here ...",
                                           booking_id=None, sms_only=True)
        with transaction() as s:
            row = s.get(OutboxMessage, row_id) if row_id is not None else None
            assert row is not None and row.channel == "whatsapp"  # notify: the template
        assert said == "whatsapp", (
            f"the phone says {said!r} while notify sends her news on WhatsApp")
    finally:
        clock.freeze(None)
        notify.reset_templates()


# --- 4. a WhatsApp template setting that is no ContentSid stops the start ----------------


@pytest.mark.parametrize("value", ["ridechain_update_hi", "HX123", "hx0123456789abcdef"])
def test_a_whatsapp_template_setting_that_is_no_content_sid_stops_the_start(value):
    """Twilio takes a ContentSid only as ^HX[0-9a-fA-F]{32}$ (error 21655 otherwise, a
    final refusal: not one of outbox.BY_SMS_CODES, so the notice goes no other way).
    README: configuration is "validated once at start ... never silently replaced";
    notify reads WHATSAPP_TEMPLATE_<LANG> straight from the environment, unchecked."""
    from core.config import ConfigError, load_settings

    env = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/ridechain",
           "REDIS_URL": "redis://127.0.0.1:6379/0", "WHATSAPP_TEMPLATE_HI": value}
    with pytest.raises(ConfigError) as refused:
        load_settings(env)
    assert "WHATSAPP_TEMPLATE_HI" in str(refused.value)

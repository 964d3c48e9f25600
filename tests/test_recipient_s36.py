"""The recipient whose drop code reached her only as a copy (task hcopy, session 36).

Her drop-code SMS was refused (Twilio 21610: she had stopped our SMS) and the same code
reached her as its WhatsApp copy (outbox key ``wa-for-<id>``). Session 35 counted that copy
for the give-back's void notice only (dispatch._recipient_code_message); the rest read the
refused SMS alone, so she held a working-looking code and:

1. was told nothing when the booking was cancelled (by ops or the customer) or failed for
   want of a rider (dispatch.tell_recipient_not_coming): she waited for the parcel;
2. was told by tracking (partner_sms.code_holder: the WhatsApp chat, the IVR) to "give
   the rider the code we will send you", though it was on her WhatsApp already;
3. heard, when the parcel was late, the notice for one without a code
   (dispatch._late_to_recipient).

All three now ask dispatch.recipient_holds_code (or, for "a code was sent to her", count
the copies of any drop-code message).
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage, Person
from core.domain.booking import Actor
from core.domain.pricing import SpeedTier
from core.services import dispatch, partner_sms, payments
from core.services.conversation import SessionPorts
from tests.conftest import release_scheduled, run_jobs
from tests.test_dispatch import (
    LAXMIPUR,
    RECIPIENT,
    booking_status,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    make_partner,
    paid_booking,
    run_jobs_expecting_refund,
    sms,
    start,
)
from tests.test_dispatch_s35 import drop_code_rows, sita_on_whatsapp
from tests.test_notice_review import (
    assigned_booking,
    cannot_deliver,
    customer_speaks,
    pickup_code,
    ref_of,
)

pytestmark = pytest.mark.db

WA = f"whatsapp:{RECIPIENT}"


def _copy_only(booking_id: int) -> None:
    """Setup check: her drop-code SMS was refused, its WhatsApp copy reached her."""
    rows = drop_code_rows(booking_id)
    assert [(to, st) for k, to, st in rows if k.startswith("leg-")] == [
        (RECIPIENT, "undelivered")], rows
    assert [to for k, to, st in rows if k.startswith("wa-for-")
            and st not in ("failed", "undelivered")] == [WA], rows


def _setup(client) -> tuple[int, str]:
    """A booking Ramesh took; Sita's code reached her only on WhatsApp. (id, his phone)."""
    sita_on_whatsapp()
    cannot_deliver(RECIPIENT, "undelivered", "21610")
    booking_id, rider = assigned_booking(client)
    _copy_only(booking_id)
    return booking_id, rider


def _to_sita(booking_id: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.to_addr.in_([RECIPIENT, WA]))
            .order_by(OutboxMessage.id)))


# --- 1. she hears the parcel will not come ------------------------------------------------


@pytest.mark.parametrize("who", ["ops", "customer"])
def test_she_is_told_the_parcel_will_not_come_when_it_is_cancelled(client, live, frozen,  # noqa: F811
                                                                    who):
    booking_id, _ = _setup(client)
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        actor = Actor("ops", "1") if who == "ops" else Actor("customer",
                                                                str(booking.customer_id))
        payments.cancel_booking(s, booking, actor, who)
    run_jobs()
    ref = ref_of(booking_id)
    told = _to_sita(booking_id)
    assert i18n.t("dispatch.recipient_cancelled", "en", ref=ref) in told, (
        f"she holds a drop code (its WhatsApp copy reached her) and was not told the "
        f"parcel will not come: {told}")
    assert i18n.t("dispatch.recipient_cancelled_no_code", "en", ref=ref) not in told


def test_she_is_told_when_no_rider_is_found_after_a_give_back(client, live,
                                                              frozen):  # noqa: F811
    """Ramesh takes the job (her code reaches her on WhatsApp only), then gives it back:
    she is told on WhatsApp the code no longer works and a new one comes with the next
    rider (session 35). Nobody takes it before the deadline: she hears it will not come."""
    sita_on_whatsapp()
    cannot_deliver(RECIPIENT, "undelivered", "21610")
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking(tier=SpeedTier.EXPRESS)  # 20 minute search deadline
    customer_speaks("en")
    start(booking_id)
    assert sms(client, rider, "1")
    run_jobs()
    _copy_only(booking_id)
    assert "given back" in sms(client, rider, "CANCEL")[0]
    run_jobs()
    ref = ref_of(booking_id)
    assert i18n.t("dispatch.drop_otp_void", "en", ref=ref) in _to_sita(booking_id)
    freeze_at(20 * 60 + 1)
    release_scheduled(timedelta(minutes=21))
    run_jobs_expecting_refund(booking_id)
    assert booking_status(booking_id) == "failed"
    assert _to_sita(booking_id)[-1] == i18n.t("dispatch.recipient_no_rider", "en", ref=ref), (
        f"she waited for a new code and was not told no rider came: {_to_sita(booking_id)}")


# --- 2. tracking says she has the code -----------------------------------------------------


def test_tracking_tells_her_she_has_the_code(client, live, frozen):  # noqa: F811
    booking_id, _ = _setup(client)
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        assert partner_sms.code_holder(s, booking) == partner_sms.HER
        assert dispatch.recipient_holds_code(s, booking)
        sita = s.scalar(select(Person).where(Person.phone == RECIPIENT))
        told = SessionPorts(s, sita, None).booking_status(ref_of(booking_id))
    # A rider took it and not picked up: "give the rider the code we sent you".
    assert told == "to_you_coming_code_sent", (
        f"{told}: '{i18n.t(f'booking.status.{told}', 'en', ref=ref_of(booking_id))}'")


def test_nobody_holds_the_code_when_the_copy_failed_too(client, live, frozen):  # noqa: F811
    """The other side: no WhatsApp for her (no copy), the SMS refused: no code of hers."""
    cannot_deliver(RECIPIENT, "undelivered", "21610")
    booking_id, _ = assigned_booking(client)
    rows = drop_code_rows(booking_id)
    assert not [k for k, to, st in rows if to in (RECIPIENT, WA)
                and st not in ("failed", "undelivered")], rows
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        assert not dispatch.recipient_holds_code(s, booking)
        assert partner_sms.code_holder(s, booking) != partner_sms.HER


# --- 3. late: she is asked to keep her code ready ----------------------------------------


def test_late_she_is_told_to_keep_the_code_she_holds(client, live, frozen):  # noqa: F811
    booking_id, rider = _setup(client)
    assert "picked up" in sms(client, rider, f"PICK {pickup_code()}")[0]
    freeze_at(8 * 3600 + 60)
    assert dispatch.sweep()["late_deliveries"] == 1
    run_jobs()
    ref = ref_of(booking_id)
    told = _to_sita(booking_id)
    assert i18n.t("dispatch.recipient_delivery_late", "en", ref=ref) in told, told
    assert i18n.t("dispatch.recipient_delivery_late_no_code", "en", ref=ref) not in told

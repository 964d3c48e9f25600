"""What people are told when a booking changes course, end to end through the real SMS
webhook, the customer API and RQ: a recipient holding a delivery code hears when the parcel
will not come (whoever ended the booking), a second code says the first no longer works, a
relay customer told "we are still looking" hears when a rider is found, a booking nobody
took says so, and partners' OFF and HELP answers tell the truth."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage, PartnerProfile, Person
from core.config import get_settings
from core.domain.booking import Actor
from core.domain.dispatch import Kind, parse_command
from core.domain.pricing import SpeedTier
from core.services import dispatch, outbox
from tests.conftest import release_scheduled, run_jobs
from tests.test_api import sign_in
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    bodies_to,
    booking_status,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    make_point,
    offers,
    paid_booking,
    run_jobs_expecting_refund,
    sms,
    start,
)

pytestmark = pytest.mark.db

# One parallel, 0.01 degree of longitude ~1 km: P -A- 7 km -B- 10 km - D 7 km (a relay).
P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)


def ref_of(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).reference


def customer_speaks(lang: str) -> None:
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        person.preferred_language = lang
        for made in s.scalars(select(Booking).where(Booking.customer_id == person.id)):
            made.language = lang  # made in it (a booking keeps its language)


# --- the recipient hears when the parcel will not come ------------------------------------


def test_recipient_hears_the_parcel_is_not_coming_when_the_customer_cancels(client, live,
                                                                            frozen):  # noqa: F811
    # Ramesh takes the job, so Sita (the recipient) holds a delivery code. The customer
    # cancels in the app: the app answered them, Sita must hear it too.
    _, rider = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    customer_speaks("en")
    start(booking_id)
    sms(client, rider, "1")
    assert len(bodies_to(RECIPIENT)) == 1
    to_customer = len(bodies_to(CUSTOMER))
    r = client.post(f"/api/v1/bookings/{ref_of(booking_id)}/cancel",
                    headers=sign_in(client, CUSTOMER))
    assert r.status_code == 200 and r.get_json()["cancelled"], r.get_json()
    run_jobs()
    ref = ref_of(booking_id)
    assert bodies_to(RECIPIENT)[1:] == [i18n.t("dispatch.recipient_cancelled", "en", ref=ref)]
    # The customer was answered by the app: no second "cancelled" message by SMS.
    assert i18n.t("bot.cancel.done", "en", ref=ref) not in bodies_to(CUSTOMER)[to_customer:]


def test_a_recipient_who_is_the_customer_hears_a_cancellation_once(client, live, frozen):  # noqa: F811
    _, rider = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking(recipient=CUSTOMER)
    start(booking_id)
    sms(client, rider, "1")
    before = len(bodies_to(CUSTOMER))
    with transaction() as s:
        from core.services import payments

        payments.cancel_booking(s, s.get(Booking, booking_id), Actor("ops", "1"), "ops")
    # Told once, as the customer (what comes back to them), not again as the recipient.
    assert len(bodies_to(CUSTOMER)) == before + 1


def test_no_rider_after_a_give_back_tells_customer_and_recipient_what_happened(client, live,
                                                                                frozen):  # noqa: F811
    # Ramesh takes the job (Sita gets a code), then gives it back; nobody else is near, so
    # the booking fails at the deadline. The customer hears no rider was found and the
    # money comes back (the parcel never left them); Sita hears it will not come.
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking(tier=SpeedTier.EXPRESS)  # 20 minute search deadline
    customer_speaks("en")
    start(booking_id)
    sms(client, rider, "1")
    run_jobs()  # her code goes out (one withdrawn unsent before the give-back is no code)
    assert len(bodies_to(RECIPIENT)) == 1
    assert "given back" in sms(client, rider, "CANCEL")[0]
    freeze_at(20 * 60 + 1)
    release_scheduled(timedelta(minutes=21))
    run_jobs_expecting_refund(booking_id)
    assert booking_status(booking_id) == "failed"
    ref = ref_of(booking_id)
    # The give-back voided the code she held: she was told at once (dispatch.drop_otp_void).
    assert bodies_to(RECIPIENT)[1:] == [i18n.t("dispatch.drop_otp_void", "en", ref=ref),
                                        i18n.t("dispatch.recipient_no_rider", "en", ref=ref)]
    told = bodies_to(CUSTOMER)[-1]
    assert told == i18n.t("booking.status.failed", "en", ref=ref)
    assert "could not find a rider" in told and "money" in told
    assert "could not be delivered" not in told


def test_a_booking_nobody_took_says_no_rider_was_found_in_every_language() -> None:
    # Only dispatch fails a booking, and only before pickup for want of a rider: the status
    # text (pushed, and shown by tracking) must not say a delivery failed.
    english = i18n.t("booking.status.failed", "en", ref="12345678")
    assert "rider" in english and "money" in english
    assert "delivered" not in english
    for lang in i18n.LANGUAGES:
        assert i18n.t("booking.status.failed", lang, ref="1") != i18n.t(
            "booking.status.delivered", lang, ref="1")


# --- a second code says the first one no longer works ---------------------------------------


def test_a_give_back_sends_codes_that_say_the_old_ones_no_longer_work(client, live, frozen):  # noqa: F811
    _, ramesh = make_partner("Ramesh", LAXMIPUR, rating_x100=500)
    _, asha = make_partner("Asha", (26.90, 84.49), rating_x100=300)
    booking_id = paid_booking()
    start(booking_id)
    sms(client, ramesh, "1")
    first = last_code(RECIPIENT)
    sms(client, ramesh, "CANCEL")
    assert "आपका है" in sms(client, asha, "1")[0]
    ref = ref_of(booking_id)
    to_recipient = bodies_to(RECIPIENT)
    second = last_code(RECIPIENT)
    assert len(to_recipient) == 2
    # The first code's message had not gone out yet (no job ran): it never goes now, and
    # its code is kept by nobody (outbox.withdraw_leg_codes; review r9, session 27).
    assert first != second and first not in to_recipient[0]
    with transaction() as s:
        withdrawn = s.scalars(select(OutboxMessage).where(
            OutboxMessage.to_addr == RECIPIENT).order_by(OutboxMessage.id)).first()
        assert (withdrawn.status, withdrawn.last_error) == ("failed", outbox.LEG_CODE_REPLACED)
    assert to_recipient[1] == i18n.t("dispatch.drop_otp_new", "hi", ref=ref, otp=second)
    pickup = last_code(CUSTOMER, "पार्सल उठाने")
    assert bodies_to(CUSTOMER)[-1] == i18n.t("dispatch.pickup_otp_new", "hi", ref=ref,
                                             otp=pickup)
    # The new codes are the ones that work.
    assert "उठ गया" in sms(client, asha, f"PICK {pickup}")[0]
    assert "पहुँच गया" in sms(client, asha, f"DROP {second}")[0]


def test_an_ops_unlock_sends_the_recipient_a_code_that_replaces_the_old_one(client, live,
                                                                            frozen):  # noqa: F811
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    customer_speaks("en")
    start(booking_id)
    sms(client, rider, "1")
    sms(client, rider, f"PICK {last_code(CUSTOMER)}")
    old = last_code(RECIPIENT)
    wrong = f"{(int(old) + 1) % 10000:04d}"
    for _ in range(dispatch.config().otp_max_failures):
        sms(client, rider, f"DROP {wrong}")
    leg = legs_of(booking_id)[0]
    assert leg.status == "locked"
    with transaction() as s:
        dispatch.unlock_leg(s, leg.id, Actor("ops", "1"))
    new = last_code(RECIPIENT)
    assert bodies_to(RECIPIENT)[1:] == [
        i18n.t("dispatch.drop_otp_new", "en", ref=ref_of(booking_id), otp=new)]
    assert "no longer works" in bodies_to(RECIPIENT)[-1]


def _relay_leg2_taken(client):
    """Ramesh has picked the parcel up for leg 1 and Asha taken leg 2, both at Point A,
    both reading English: each has one handover code. Returns their phones and legs."""
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1, lang="en")
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1, lang="en")
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg1, leg2, _ = (str(leg.id) for leg in legs_of(booking_id))
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert "is yours" in sms(client, a_phone, "1")[0]
    assert bodies_to(r_phone)[-1] == i18n.t("dispatch.handover_give", "en", job=leg1,
                                            point="Point A", otp=last_code(r_phone))
    assert bodies_to(a_phone)[-1] == i18n.t("dispatch.handover_take", "en", job=leg2,
                                            point="Point A", otp=last_code(a_phone))
    return booking_id, r_phone, a_phone, leg1, leg2


def test_a_relay_give_back_sends_a_handover_code_that_replaces_the_old_one(client, live,
                                                                          frozen):  # noqa: F811
    # Asha gives leg 2 back and Bala takes it: Ramesh hears at once to keep the parcel
    # (his code is void), then his code for the next rider is new and says so; Bala never
    # had one, so his is a plain first code.
    booking_id, r_phone, a_phone, leg1, leg2 = _relay_leg2_taken(client)
    to_ramesh = len(bodies_to(r_phone))
    sms(client, a_phone, f"CANCEL {leg2}")
    point_a = legs_of(booking_id)[1].from_point_id
    _, b_phone = make_partner("Bala", A, point_id=point_a, max_active_legs=1, lang="en",
                              on_duty=False)
    sms(client, b_phone, "ON")
    freeze_at(121)  # the search's next round finds Bala
    release_scheduled(timedelta(minutes=3))
    run_jobs()
    assert "is yours" in sms(client, b_phone, "1")[0]
    new = last_code(r_phone)
    assert bodies_to(r_phone)[to_ramesh:] == [
        i18n.t("dispatch.carrier_wait", "en", job=leg1, point="Point A",
               ops_phone=get_settings().ops_phone),
        i18n.t("dispatch.handover_give_new", "en", job=leg1, point="Point A", otp=new)]
    assert "no longer works" in bodies_to(r_phone)[-1]
    assert bodies_to(b_phone)[-1] == i18n.t("dispatch.handover_take", "en", job=leg2,
                                            point="Point A", otp=last_code(b_phone))
    # The new codes are the ones that hand the parcel over.
    assert "delivered" in sms(client, r_phone, f"DROP {last_code(b_phone)}")[0]
    assert "picked up" in sms(client, b_phone, f"PICK {new}")[0]


def test_an_ops_unlock_sends_the_next_rider_a_handover_code_that_replaces_the_old_one(
        client, live, frozen):  # noqa: F811
    booking_id, r_phone, a_phone, leg1, leg2 = _relay_leg2_taken(client)
    old = last_code(a_phone)
    wrong = f"{(int(old) + 1) % 10000:04d}"
    for _ in range(dispatch.config().otp_max_failures):
        sms(client, r_phone, f"DROP {wrong}")
    assert legs_of(booking_id)[0].status == "locked"
    to_asha = len(bodies_to(a_phone))
    with transaction() as s:
        dispatch.unlock_leg(s, int(leg1), Actor("ops", "1"))
    new = last_code(a_phone)
    assert bodies_to(a_phone)[to_asha:] == [
        i18n.t("dispatch.handover_take_new", "en", job=leg2, point="Point A", otp=new)]
    assert "delivered" in sms(client, r_phone, f"DROP {new}")[0]


# --- a relay customer told "still looking" hears when a rider is found ----------------------


def test_relay_customer_hears_of_a_delay_and_when_the_next_rider_is_found(client, live,
                                                                          frozen):  # noqa: F811
    # Ramesh picks the parcel up; nobody can take leg 2 at Point A yet. That is no delay
    # (he is still riding there), so the customer, just told he has the parcel, hears
    # nothing. At the leg's deadline it is one: "we are still looking ... we will tell
    # you". When Asha takes the leg, they are told.
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg2 = legs_of(booking_id)[1].id
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert offers(leg2) == []
    ref = ref_of(booking_id)
    searching = i18n.t("dispatch.still_searching", "hi", ref=ref)
    assert bodies_to(CUSTOMER)[-1] == i18n.t("booking.status.picked_up", "hi", ref=ref)
    freeze_at(60 * 60 + 1)
    release_scheduled(timedelta(minutes=61))
    run_jobs()
    assert legs_of(booking_id)[1].status == "pending"  # paused for want of a rider
    assert bodies_to(CUSTOMER)[-1] == searching
    asha, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1,
                                 on_duty=False)
    sms(client, a_phone, "ON")
    freeze_at(60 * 60 + 1 + 121)
    release_scheduled(timedelta(minutes=3))
    run_jobs()
    assert "आपका है" in sms(client, a_phone, "1")[0]
    assert legs_of(booking_id)[1].partner_id == asha
    found = i18n.t("dispatch.customer_next_rider", "hi", ref=ref)
    assert bodies_to(CUSTOMER)[-1] == found
    assert bodies_to(CUSTOMER).count(searching) == 1


# --- partners: OFF with a job in hand, HELP, a zero for an O --------------------------------


def test_off_duty_with_a_job_in_hand_says_the_job_is_still_theirs(client, live, frozen):  # noqa: F811
    partner_id, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    job = str(legs_of(booking_id)[0].id)
    assert sms(client, phone, "OFF") == [i18n.t("dispatch.duty_off_assigned", "en", job=job)]
    # What it says is what happens: the job stays theirs, only new offers stop.
    assert legs_of(booking_id)[0].partner_id == partner_id
    assert legs_of(booking_id)[0].status == "assigned"
    with transaction() as s:
        assert s.get(PartnerProfile, partner_id).on_duty is False
    sms(client, phone, f"PICK {last_code(CUSTOMER)}")
    assert sms(client, phone, "OFF") == [i18n.t("dispatch.duty_off_carrying", "en", job=job)]
    assert "delivered" in sms(client, phone, f"DROP {last_code(RECIPIENT)}")[0]
    assert sms(client, phone, "OFF") == [i18n.t("dispatch.duty_off", "en")]


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_help_lists_cancel_which_is_a_real_command(lang: str) -> None:
    # Other messages tell partners to send CANCEL (pickup_late, cancel_hint, OFF with a
    # job); HELP's second page ("HELP 2", which HELP names) lists it, and the parser
    # reads it as the give-back command.
    assert "CANCEL" in i18n.t("sms.help_more", lang) and "HELP 2" in i18n.t("sms.help", lang)
    assert parse_command("CANCEL 57") == parse_command("cancel 57")
    assert parse_command("CANCEL 57").kind is Kind.CANCEL


def test_help_by_sms_lists_cancel(client, live, frozen):  # noqa: F811
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    assert "HELP 2" in sms(client, phone, "help")[0]
    assert "CANCEL" in sms(client, phone, "help 2")[0]


@pytest.mark.parametrize(("text", "kind"), [("0n", Kind.ON), ("0N", Kind.ON),
                                            ("0FF", Kind.OFF), ("0ff", Kind.OFF)])
def test_a_zero_typed_for_the_letter_o_is_read_as_on_or_off(text: str, kind: Kind) -> None:
    assert parse_command(text).kind is kind


def test_0n_puts_the_partner_on_duty(client, live, frozen):  # noqa: F811
    partner_id, phone = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    assert sms(client, phone, "0n") == [i18n.t("dispatch.duty_on", "en")]
    with transaction() as s:
        assert s.get(PartnerProfile, partner_id).on_duty is True
    # A real "decline" is still one: "2 57", "n 57".
    assert parse_command("n 57").kind is Kind.DECLINE

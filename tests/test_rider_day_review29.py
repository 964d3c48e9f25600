"""Review r4: a rider's whole day by SMS, played as real partners text.

Each test drives the signed POST /webhooks/sms path with the helpers of tests/test_dispatch
(real PostgreSQL, Redis, RQ; the clock frozen) and fails on the code as reviewed: a
carrier's duplicate "ok", a reply to an old job's number, a bare "chhod do" with a job in
hand and an offer open, the everyday words for "picked up" / "delivered", the relay
carrier at a Point nobody has come to, and the offer SMS's length.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core import i18n
from core.adapters.db import transaction
from core.adapters.dispatch_models import OtpAttempt
from core.adapters.models import Leg, Person
from core.domain.booking import Actor, BookingStatus
from core.domain.pricing import ParcelCategory, SizeBucket, SpeedTier, WeightBucket
from core.services.booking import ParcelSpec, Place, create_booking, move_booking
from tests.test_dispatch import (
    BETTIAH,
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
from tests.test_i18n import sms_parts

pytestmark = pytest.mark.db

PICK_MARK = "पार्सल उठाने"  # the (Hindi) sender's pickup-code SMS
# A relay: P -A- 7 km -B- 10 km - D 7 km, bicycles only (as tests/test_dispatch_relay).
P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)


def _leg(leg_id: int) -> Leg:
    with transaction() as s:
        leg = s.get(Leg, leg_id)
        assert leg is not None
        return leg


def _take_and_deliver(client, phone: str) -> int:
    """A job offered to the partner, taken, picked up and delivered by SMS; its job id."""
    booking_id = paid_booking()
    start(booking_id)
    job = legs_of(booking_id)[0].id
    sms(client, phone, "1")
    sms(client, phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    sms(client, phone, f"DROP {last_code(RECIPIENT)}")
    assert _leg(job).status == "delivered"
    return job


# --- 1. the carrier sends the same "ok" twice -----------------------------------------


def test_a_carrier_duplicate_of_the_yes_is_not_told_there_is_no_offer(client, live,
                                                                      frozen):  # noqa: F811
    """Wrong: Ramesh answers the offer "ok"; his phone (or the carrier) sends the SMS twice,
    with a new MessageSid, seconds apart. The first takes job 57 ("Job 57 is yours"); the
    second is answered "You have no open job offer now". Both arrive at once, often out of
    order on a feature phone: he reads that he has no job and does not go, or calls ops.
    A PICK or DROP sent twice is answered "already picked up / delivered", the app's double
    tap "already yours", but not the SMS yes. Should: a bare yes right after his
    acceptance, with no offer open, is answered that the job is already his."""
    partner, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    job = legs_of(booking_id)[0].id
    first = sms(client, phone, "ok")
    assert _leg(job).partner_id == partner, first
    second = sms(client, phone, "ok")
    assert second != [i18n.t("dispatch.no_offer", "en")], (
        f"the duplicate yes is told there is no offer, right after job {job} became his: "
        f"{first} then {second}")
    assert str(job) in second[0], second


# --- 2. a yes or no naming a job done yesterday ----------------------------------------


@pytest.mark.parametrize("answer", ["YES {old}", "2 {old}"])
def test_a_reply_naming_a_job_he_delivered_does_not_say_it_is_still_his(
        client, live, frozen, answer):  # noqa: F811
    """Wrong: Ramesh delivered job 1 yesterday. Today an offer for job 2 is open and he
    replies in the old thread with the old number, "YES 1". He is told "Job 1 is already
    yours" (false: it was delivered, nothing is his), and "2 1" is told "To give back job
    1, send CANCEL 1", which then answers "already delivered": a false answer and a dead
    end, while the offer for job 2 runs out. Should: a yes or no naming a job he delivered
    says it is delivered (dispatch.already_delivered), never that it is his."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    old = _take_and_deliver(client, phone)
    booking_id = paid_booking()
    start(booking_id)
    new = legs_of(booking_id)[0].id
    assert [o.status for o in offers(new)] == ["open"]
    reply = sms(client, phone, answer.format(old=old))
    wrong = {i18n.t("dispatch.already_yours", "en", job=old),
             i18n.t("dispatch.cancel_hint", "en", job=old)}
    assert not wrong & set(reply), (
        f"{answer.format(old=old)!r} about delivered job {old} is answered {reply}")


# --- 3. a bare "leave it" with a job in hand and an offer open -------------------------


@pytest.mark.parametrize("body", ["chhod do", "CANCEL"])
def test_a_bare_give_back_word_to_a_new_offer_does_not_give_back_the_job_in_hand(
        client, live, frozen, body):  # noqa: F811
    """Wrong: Ramesh (2 jobs at a time) has taken job 1 and is on his way to collect it. An
    offer for job 2 comes; he does not want it and texts "chhod do" (leave it). The bare
    give-back word is taken as giving back job 1: the customer is told the rider is not
    coming and the job is offered again, Ramesh's record is marked, and the offer he
    meant stays open. With no job in hand the same words refuse the one offer; with a
    job AND an offer they may mean either. Should: a bare give-back word never gives back
    a job on a guess when an offer is open too: job 1 stays his (the offer is refused,
    or he is asked which he means)."""
    partner, phone = make_partner("Ramesh", LAXMIPUR, lang="hi", max_active_legs=2)
    first = paid_booking()
    start(first)
    job1 = legs_of(first)[0].id
    sms(client, phone, "1")
    assert _leg(job1).partner_id == partner
    second = paid_booking()
    start(second)
    job2 = legs_of(second)[0].id
    assert [o.status for o in offers(job2)] == ["open"]
    reply = sms(client, phone, body)
    leg = _leg(job1)
    assert (leg.status, leg.partner_id) == ("assigned", partner), (
        f"{body!r} gave back job {job1} he is collecting, offer {job2} left "
        f"{[o.status for o in offers(job2)]}: {reply}")


# --- 4. everyday words for "picked up" and "delivered" ---------------------------------


def _carrying(client, phone: str) -> tuple[int, str]:
    booking_id = paid_booking()
    start(booking_id)
    job = legs_of(booking_id)[0].id
    sms(client, phone, "1")
    return job, last_code(CUSTOMER, PICK_MARK)


@pytest.mark.parametrize(("lang", "body", "kind"), [
    ("hi", "le liya {code}", "pick"),           # "took it", as "लिया" is understood
    ("hi", "parcel le liya {code}", "pick"),
    ("hi", "pahunch gaya {code}", "drop"),      # as "पहुंच गया" is understood
    ("hi", "pahuch gaya {code}", "drop"),
    ("en", "dropped {code}", "drop"),           # as "delivered", "picked" are
    ("en", "delivery {code}", "drop"),          # as "डिलीवरी" is
])
def test_the_everyday_words_for_picked_up_and_delivered_confirm_the_job(
        client, live, frozen, lang, body, kind):  # noqa: F811
    """Wrong: at the door Ramesh texts "pahunch gaya 5678" (reached) or "dropped 5678", at
    the pickup "le liya 4821" (took it). The same words in Devanagari ("पहुंच गया",
    "लिया", "डिलीवरी") and "delivered"/"picked" are understood, these are answered "Not
    understood. Send HELP": the code he read out is not taken, the customer hears
    nothing, and he must learn the English keyword on the spot. DESIGN §6: replies
    accept the common words in the user's script and in romanized form. Should: each
    confirms the pickup or the delivery with the code it carries."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang=lang)
    job, pick = _carrying(client, phone)
    if kind == "pick":
        reply = sms(client, phone, body.format(code=pick))
        assert _leg(job).status == "picked_up", f"{body!r}: {reply}"
        return
    sms(client, phone, f"PICK {pick}")
    reply = sms(client, phone, body.format(code=last_code(RECIPIENT)))
    assert _leg(job).status == "delivered", f"{body!r}: {reply}"


# --- 5. the relay carrier at a Point nobody has come to --------------------------------


def test_a_relay_carrier_at_the_point_before_anyone_took_the_next_leg_loses_no_tries(
        client, live, frozen):  # noqa: F811
    """Wrong: Ramesh carries leg 1 of a relay to Point A; nobody has taken leg 2 yet (its
    search is still on, not paused, so he has had no "keep the parcel" SMS). At the Point
    he texts DROP as he was told ("take it to Point A, then send DROP and the OTP"): bare,
    he hears "Send DROP and the 4-digit OTP"; with a number, "Wrong OTP for job 1. Tries
    left: 4", a try counted against a code that no one was ever sent (leg 1's handover
    code goes only to the next rider, who does not exist yet). A few more and the leg
    locks and ops are alerted of wrong OTPs. Should: while the next leg has no rider, his
    DROP counts no try and tells him to keep the parcel: we are still finding the next
    rider at the Point (as dispatch.carrier_wait says)."""
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1, lang="en")
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg1, leg2, _ = (leg.id for leg in legs_of(booking_id))
    sms(client, phone, "1")
    sms(client, phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    assert _leg(leg2).partner_id is None and _leg(leg2).status == "offering"
    reply = sms(client, phone, "DROP 1234")
    with transaction() as s:
        tries = s.scalar(select(func.count()).select_from(OtpAttempt).where(
            OtpAttempt.leg_id == leg1, OtpAttempt.kind == "drop"))
    assert (tries, _leg(leg1).otp_failures) == (0, 0), (
        f"a DROP at the Point before anyone took leg {leg2} cost a try: {reply}")
    assert "Wrong OTP" not in reply[0], reply


# --- 6. the offer SMS itself -----------------------------------------------------------


def _booking_with_landmarks() -> int:
    """A village booking as customers give it: the office and a short landmark each end."""
    with transaction() as s:
        customer = Person(phone=CUSTOMER, name="Meena", role="customer",
                          preferred_language="hi")
        s.add(customer)
        s.flush()
        b = create_booking(
            s, customer_id=customer.id, channel="sms",
            pickup=Place(*LAXMIPUR, pincode="845450", post_office="Laxmipur BO",
                         landmark="near Hanuman Mandir"),
            drop=Place(*BETTIAH, pincode="845438", post_office="Bettiah HO",
                       landmark="opposite Bus Stand"),
            parcel=ParcelSpec(ParcelCategory.DOCUMENTS, SizeBucket.BAG, WeightBucket.W5,
                              declared_value_paise=50_000),
            tier=SpeedTier.STANDARD, recipient_name="Sita", recipient_phone=RECIPIENT,
            actor=Actor("customer", str(customer.id)))
        move_booking(s, b, BookingStatus.AWAITING_PAYMENT, Actor.system(), "link sent")
        move_booking(s, b, BookingStatus.PAID, Actor.system(), "paid")
        return b.id


@pytest.mark.parametrize("lang", ["hi", "ta"])
def test_a_job_offer_with_ordinary_landmarks_fits_two_sms_parts(live, frozen,  # noqa: F811
                                                                 lang):
    """Wrong: a job from "Laxmipur, near Hanuman Mandir" to "Bettiah, opposite Bus Stand"
    (29 and 27 characters, well inside the 30 place() keeps) is offered in one SMS of 3
    parts in Hindi and Tamil, even as job 1 for ₹80.96 (English goes over too once the job
    code has 5 digits and the pay is ₹1,250: the ₹ sign makes every offer UCS-2, 67
    characters a part). The offer is the SMS sent most (every rider of every batch), and
    the rule is 2 parts
    (tests/test_i18n leaves "dispatch.offer" out of its check). Should: the offer fits 2
    parts, the place names cut as far as that needs (as the IVR's details SMS does)."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang=lang)
    booking_id = _booking_with_landmarks()
    start(booking_id)
    job = legs_of(booking_id)[0].id
    (offer,) = [b for b in bodies_to(phone) if str(job) in b]
    assert sms_parts(offer) <= 2, (sms_parts(offer), len(offer), offer)

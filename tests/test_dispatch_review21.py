"""Dispatch and partner SMS fixes (review round 21): a new pickup code for a relay parcel
handed over already, wrong tries kept when a relay's handover code is made again, an
SMS-only partner who sent STOP kept off offers, a partner's answer to an operator kept,
and a pickup code equal to the job's own code."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text, update

from core import i18n
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff, HandoffMessage
from core.adapters.dispatch_models import PartnerEvent
from core.adapters.models import Conversation, Leg, OutboxMessage, PartnerProfile, Person
from core.domain import dispatch as rules
from core.domain.booking import Actor
from core.services import dispatch, handoff
from core.services.booking import check_leg_otp
from tests.conftest import run_jobs
from tests.test_api import API, sign_in
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
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

pytestmark = pytest.mark.db

# As in test_dispatch_relay: P -A- 7 km -B- 10 km - D 7 km (straight), bicycles only.
P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)
PICK_MARK = "पार्सल उठाने"  # the sender's pickup code (Hindi)
TAKE_MARK = "पार्सल लें"  # handover_take: the code the next rider reads out
GIVE_MARK = "अगले राइडर"  # handover_give: the code the carrier gives the next rider
OPS_AGENT = "+919000000077"


def _relay(*, with_bala: bool = False) -> tuple[int, str, str, str | None]:
    """A three-leg relay P -> A -> B -> D; Ramesh and Asha (and Bala) live at Point A."""
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    b_phone = None
    if with_bala:
        _, b_phone = make_partner("Bala", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    return booking_id, r_phone, a_phone, b_phone


def _wrong_drop(leg_id: int, *avoid: str) -> str:
    """A 4-digit code that is not the leg's current drop code (checked against its hash)
    nor any of ``avoid``."""
    with transaction() as s:
        leg = s.get(Leg, leg_id)
        assert leg is not None
        for n in range(1000, 10000):
            code = f"{n:04d}"
            if code not in avoid and not check_leg_otp(leg, "drop", code):
                return code
    raise AssertionError("no wrong code")


def _failures(leg_id: int) -> int:
    with transaction() as s:
        leg = s.get(Leg, leg_id)
        assert leg is not None
        return leg.otp_failures


# --- 1. ops' new pickup code for a relay leg handed over already -------------------------


def test_a_new_pickup_code_for_a_handed_over_leg_goes_to_the_rider_holding_the_parcel(
        client, live, frozen):  # noqa: F811
    """At Point A Ramesh handed the parcel over (his DROP took Asha's code: leg 1
    delivered, he rode away). Asha has no code for her PICK; ops make a new one with
    "send": it goes to Asha, who holds the parcel, never to Ramesh, and her PICK with it
    takes. (It went to Ramesh as "give the new code to the next rider".)"""
    booking_id, r_phone, a_phone, _ = _relay()
    leg2 = legs_of(booking_id)[1].id
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    assert "आपका है" in sms(client, a_phone, "1")[0]
    assert "पहुँच गया" in sms(client, r_phone, f"DROP {last_code(a_phone, TAKE_MARK)}")[0]
    assert [leg.status for leg in legs_of(booking_id)][:2] == ["delivered", "assigned"]
    to_ramesh, to_asha = len(bodies_to(r_phone)), len(bodies_to(a_phone))
    with transaction() as s:
        made = dispatch.new_leg_code(s, leg2, "pickup", Actor("ops", "1"),
                                     reason="rider has no code", send=True)
        code, sent = made.code, made.sent
    assert [b for b in bodies_to(r_phone)[to_ramesh:] if code in b] == []
    new_to_asha = [b for b in bodies_to(a_phone)[to_asha:] if code in b]
    assert sent and new_to_asha == [i18n.t("dispatch.handed_pick_code", "hi",
                                           job=str(leg2), otp=code)]
    assert "उठ गया" in sms(client, a_phone, f"PICK {code}")[0]
    assert legs_of(booking_id)[1].status == "picked_up"


def test_a_new_pickup_code_before_the_handover_still_goes_to_the_rider_handing_over(
        client, live, frozen):  # noqa: F811
    """Unchanged: before the handover the new code for Asha's PICK goes to Ramesh, who
    still carries the parcel and reads it out to her at the Point."""
    booking_id, r_phone, a_phone, _ = _relay()
    leg2 = legs_of(booking_id)[1].id
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    sms(client, a_phone, "1")
    to_asha = len(bodies_to(a_phone))
    with transaction() as s:
        made = dispatch.new_leg_code(s, leg2, "pickup", Actor("ops", "1"),
                                     reason="code lost", send=True)
        code, sent = made.code, made.sent
    assert sent and code in bodies_to(r_phone)[-1]
    assert [b for b in bodies_to(a_phone)[to_asha:] if code in b] == []


# --- 2. wrong tries kept when the handover code is made again -----------------------------


def test_a_next_rider_taking_the_job_gives_the_carrier_no_fresh_tries(client, live,
                                                                     frozen):  # noqa: F811
    """Ramesh carries leg 1 to Point A. Before anyone takes leg 2 his DROP codes cost no
    try (nobody could have given him one: he hears to keep the parcel, review r4). Asha
    then takes leg 2, which makes the handover code again; four wrong codes after that
    are one short of the lock, and his next wrong DROP locks the leg (send_leg_codes
    used to zero the counter; the give-back test below makes the code again after
    wrong tries)."""
    booking_id, r_phone, a_phone, _ = _relay()
    leg1, leg2, _ = (leg.id for leg in legs_of(booking_id))
    limit = dispatch.config().otp_max_failures
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    assert [o.status for o in offers(leg2)] == ["open"]  # Asha has not answered yet
    wait = i18n.t("dispatch.carrier_wait", "hi", job=str(leg1), point="Point A",
                  ops_phone=dispatch.get_settings().ops_phone)
    for _ in range(limit):
        assert sms(client, r_phone, f"DROP {_wrong_drop(leg1)}") == [wait]
    assert _failures(leg1) == 0
    assert "आपका है" in sms(client, a_phone, "1")[0]
    right = last_code(a_phone, TAKE_MARK)
    for n in range(limit - 1):
        assert sms(client, r_phone, f"DROP {_wrong_drop(leg1, right)}") == [
            i18n.t("dispatch.otp_wrong", "hi", job=str(leg1), left=limit - 1 - n)]
    assert _failures(leg1) == limit - 1
    assert sms(client, r_phone, f"DROP {_wrong_drop(leg1, right)}") == [
        i18n.t("dispatch.otp_locked", "hi", job=str(leg1),
               ops_phone=dispatch.get_settings().ops_phone)]
    assert legs_of(booking_id)[0].status == "locked"


def test_a_next_rider_giving_the_job_back_gives_the_carrier_no_fresh_tries(
        client, live, frozen):  # noqa: F811
    """Asha takes leg 2; Ramesh types four wrong DROP codes; Asha gives the job back (the
    handover code is made again) and Bala takes it (again): the four stay, and Bala's
    code still hands the parcel over."""
    booking_id, r_phone, a_phone, b_phone = _relay(with_bala=True)
    assert b_phone is not None
    leg1, leg2, _ = (leg.id for leg in legs_of(booking_id))
    limit = dispatch.config().otp_max_failures
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    with transaction() as s:  # whoever was offered leg 2 first takes it
        taker = s.scalar(select(Person.phone).join(
            PartnerProfile, PartnerProfile.person_id == Person.id)
            .where(PartnerProfile.id == offers(leg2)[0].partner_id))
    other = b_phone if taker == a_phone else a_phone
    assert "आपका है" in sms(client, taker, "1")[0]
    old = last_code(taker, TAKE_MARK)
    for _ in range(limit - 1):
        sms(client, r_phone, f"DROP {_wrong_drop(leg1, old)}")
    assert _failures(leg1) == limit - 1
    assert sms(client, taker, f"CANCEL {leg2}")[0]
    assert _failures(leg1) == limit - 1  # the code was made again; the tries stay
    run_jobs()
    assert [o.status for o in offers(leg2) if o.status == "open"] == ["open"]
    assert "आपका है" in sms(client, other, "1")[0]
    assert _failures(leg1) == limit - 1
    assert "पहुँच गया" in sms(client, r_phone, f"DROP {last_code(other, TAKE_MARK)}")[0]


def test_an_unlocked_handed_over_leg_starts_its_drop_tries_afresh(client, live,
                                                                  frozen):  # noqa: F811
    """Asha holds the parcel handed over to her, but her PICK codes are wrong until leg 2
    locks. Ops unlock it: recorded as picked up. Once Ramesh takes leg 3 (before that her
    DROP costs no try: nobody holds its code), her first wrong DROP is one try of five,
    not a new lock (the wrong PICKs stayed on the counter)."""
    booking_id, r_phone, a_phone, _ = _relay()
    leg2 = legs_of(booking_id)[1].id
    limit = dispatch.config().otp_max_failures
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    sms(client, a_phone, "1")
    right_pick = last_code(r_phone, GIVE_MARK)
    sms(client, r_phone, f"DROP {last_code(a_phone, TAKE_MARK)}")
    wrong_pick = f"{(int(right_pick) + 1) % 10000:04d}"
    for _ in range(limit):
        sms(client, a_phone, f"PICK {wrong_pick}")
    assert legs_of(booking_id)[1].status == "locked"
    with transaction() as s:
        dispatch.unlock_leg(s, leg2, Actor("ops", "1"))
    assert legs_of(booking_id)[1].status == "picked_up"
    assert "आपका है" in sms(client, r_phone, "1")[0]  # leg 3, offered to him at Point B
    assert sms(client, a_phone, f"DROP {_wrong_drop(leg2)}") == [
        i18n.t("dispatch.otp_wrong", "hi", job=str(leg2), left=limit - 1)]


# --- 3. STOP, then ON: an SMS-only partner nobody can text gets no offer ------------------


def _person_of(partner_id: int) -> Person:
    with transaction() as s:
        profile = s.get(PartnerProfile, partner_id)
        assert profile is not None
        person = s.get(Person, profile.person_id)
        assert person is not None
        return person


def _on_duty(partner_id: int) -> bool:
    with transaction() as s:
        profile = s.get(PartnerProfile, partner_id)
        assert profile is not None
        return profile.on_duty


def test_partner_who_sent_stop_then_on_gets_no_offer_he_can_never_read(
        client, live, frozen):  # noqa: F811
    """Ramesh (SMS only) sends STOP, then ON (no opt-in word: Twilio still refuses every
    SMS to him). He stays off duty, hears nothing (nothing could reach him), and the job
    goes first to Suresh, who can read it."""
    ramesh, r_phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    suresh, _ = make_partner("Suresh", (LAXMIPUR[0] + 0.01, LAXMIPUR[1]), lang="en")
    assert sms(client, r_phone, "STOP") == []
    assert _person_of(ramesh).sms_opted_out is True
    assert sms(client, r_phone, "ON") == []
    assert _on_duty(ramesh) is False
    booking_id = paid_booking()
    start(booking_id)
    (leg,) = legs_of(booking_id)
    assert offers(leg.id)[0].partner_id == suresh
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.to_addr == r_phone)) == 0


def test_set_duty_on_is_refused_with_a_code_for_an_opted_out_sms_only_partner(
        client, live, frozen):  # noqa: F811
    """The app/ops path: set_duty answers DUTY_SMS_STOPPED (a clear key) and records no
    duty_on. A partner with the app goes on duty (offers reach the app); after START,
    the SMS-only partner's ON works again."""
    ramesh, r_phone = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    appy, _ = make_partner("Appy", LAXMIPUR, lang="en", on_duty=False, has_app=True)
    with transaction() as s:
        s.execute(update(Person).where(Person.id.in_(
            select(PartnerProfile.person_id).where(PartnerProfile.id.in_([ramesh, appy]))))
            .values(sms_opted_out=True))
    with transaction() as s:
        profile = s.get(PartnerProfile, ramesh)
        assert profile is not None
        reply = dispatch.set_duty(s, profile, True)
        assert reply.key == dispatch.DUTY_SMS_STOPPED == "dispatch.duty_sms_stopped"
        assert "START" in reply.render("en")
        assert dispatch.set_duty(s, s.get(PartnerProfile, appy), True).key == \
            dispatch.DUTY_ON_APP
    assert _on_duty(ramesh) is False and _on_duty(appy) is True
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(PartnerEvent).where(
            PartnerEvent.partner_id == ramesh, PartnerEvent.kind == "duty_on")) == 0
    sms(client, r_phone, "START")
    assert _person_of(ramesh).sms_opted_out is False
    assert sms(client, r_phone, "ON") == [i18n.t("dispatch.duty_on", "en")]
    assert _on_duty(ramesh) is True


def test_an_opted_out_sms_only_partner_on_duty_from_before_is_offered_nothing(
        client, live, frozen):  # noqa: F811
    """A partner left on duty while his number is opted out (the flag set without the
    outbox taking him off: a record from before) is left out of the batch; the app
    partner whose SMS is stopped is not (the app brings offers)."""
    ramesh, _ = make_partner("Ramesh", LAXMIPUR, lang="en")
    suresh, _ = make_partner("Suresh", (LAXMIPUR[0] + 0.01, LAXMIPUR[1]), lang="en")
    with transaction() as s:
        s.execute(update(Person).where(Person.id == select(PartnerProfile.person_id)
                                       .where(PartnerProfile.id == ramesh)
                                       .scalar_subquery()).values(sms_opted_out=True))
    assert _on_duty(ramesh) is True
    booking_id = paid_booking()
    start(booking_id)
    (leg,) = legs_of(booking_id)
    assert [o.partner_id for o in offers(leg.id)] == [suresh]


# --- 4. a partner waiting for a person --------------------------------------------------


def _partner_waiting_for_a_person(client, lang: str = "en") -> tuple[str, int]:
    """A partner who called and asked for a person; the operator answered by SMS."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang=lang)
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == phone))
        assert person is not None
        conv = Conversation(channel="voice", contact=phone, person_id=person.id,
                            step="menu", state={}, misses=0, handoff=False,
                            last_inbound_at=None)
        s.add(conv)
        s.flush()
        handoff.request(s, conv, "callback")  # the IVR's "talk to a person"
        s.flush()
        hid = s.scalar(select(Handoff.id).where(Handoff.conversation_id == conv.id))
        assert hid is not None
    ops = sign_in(client, OPS_AGENT, role="ops")
    r = client.post(f"{API}/ops/handoffs/{hid}/reply",
                    json={"body": "Which booking is it about? Reply with its number."},
                    headers=ops)
    assert r.status_code == 200, r.get_json()
    with transaction() as s:
        assert s.scalar(select(OutboxMessage.channel).where(
            OutboxMessage.body.like("Which booking%"))) == "sms"
    return phone, hid


def _kept(hid: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(HandoffMessage.body).where(
            HandoffMessage.handoff_id == hid, HandoffMessage.direction == "in")
            .order_by(HandoffMessage.id)))


def test_partner_who_called_for_a_person_has_his_sms_answer_kept_for_the_operator(
        client, live, frozen):  # noqa: F811
    """His free-text answer is kept on the handoff, with no "Not understood" answer."""
    phone, hid = _partner_waiting_for_a_person(client)
    answer = sms(client, phone, "It is booking 48217730, the parcel did not come")
    assert answer == []
    assert any("48217730" in body for body in _kept(hid))


def test_a_waiting_partner_s_yes_with_no_offer_is_kept_and_his_commands_still_work(
        client, live, frozen):  # noqa: F811
    """A bare "1" with no offer open answers the operator ("reply 1 for yes"): kept. A
    command (STATUS) is still answered by the bot and not kept."""
    phone, hid = _partner_waiting_for_a_person(client)
    assert sms(client, phone, "1") == []
    assert _kept(hid)[-1:] == ["1"]
    assert sms(client, phone, "STATUS") == [i18n.t("dispatch.status_none_on", "en")]
    assert _kept(hid) == ["1"]


def test_a_waiting_partner_with_an_offer_open_still_takes_it_with_1(client, live,
                                                                    frozen):  # noqa: F811
    phone, hid = _partner_waiting_for_a_person(client)
    booking_id = paid_booking()
    start(booking_id)
    (leg,) = legs_of(booking_id)
    assert offers(leg.id)[0].status == "open"
    assert "is yours" in sms(client, phone, "1")[0]
    assert _kept(hid) == []


# --- 5. a pickup code equal to the job's code --------------------------------------------


def test_pickup_code_equal_to_the_job_code_picks_up(client, live, frozen,  # noqa: F811
                                                    monkeypatch):
    """Job 4821's pickup code happens to be 4821: "PICK 4821" picks the parcel up (it was
    taken for the job alone and answered with the OTP format)."""
    from core.domain import otp as otp_rules

    with transaction() as s:
        s.execute(text("SELECT setval(pg_get_serial_sequence('legs', 'id'), 4820)"))
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    monkeypatch.setattr(otp_rules, "generate_otp", lambda *a, **k: "4821")  # the draw
    start(booking_id)
    (leg,) = legs_of(booking_id)
    assert leg.id == 4821
    assert "is yours" in sms(client, phone, "1")[0]
    reply = sms(client, phone, "PICK 4821")
    assert "picked up" in reply[0], f"the right pickup code was not taken: {reply}"
    assert legs_of(booking_id)[0].status == "picked_up"


def test_a_lone_job_code_that_is_not_the_code_still_names_the_job_at_no_cost(
        client, live, frozen):  # noqa: F811
    """Unchanged: "PICK 4821" for job 4821 whose code is something else is answered with
    the form (PICK and the code) and costs no try."""
    with transaction() as s:
        s.execute(text("SELECT setval(pg_get_serial_sequence('legs', 'id'), 4820)"))
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    (leg,) = legs_of(booking_id)
    sms(client, phone, "1")
    if last_code(CUSTOMER) == "4821":
        pytest.skip("the draw made the code the job's code")
    assert sms(client, phone, "PICK 4821") == [i18n.t("dispatch.otp_format_pick", "en")]
    assert _failures(leg.id) == 0


def test_lone_code_or_job_rule() -> None:
    assert rules.lone_code_or_job(("4821",), ["4821", "77"]) == "4821"
    assert rules.lone_code_or_job(("77",), ["4821", "77"]) is None  # too short for a code
    assert rules.lone_code_or_job(("4821",), ["77"]) is None  # no job: the OTP already
    assert rules.lone_code_or_job(("4821", "77"), ["4821", "77"]) is None
    assert rules.lone_code_or_job((), ["4821"]) is None


# --- optional: accepting while off duty records the duty_on ------------------------------


def test_accepting_a_job_while_off_duty_records_going_on_duty(client, live,
                                                              frozen):  # noqa: F811
    """Ramesh goes OFF with an offer in hand (closed), then takes the job by its code:
    he is on duty again, and the duty history says so, as after ON."""
    ramesh, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    (leg,) = legs_of(booking_id)
    assert offers(leg.id)[0].partner_id == ramesh
    sms(client, phone, "OFF")
    assert _on_duty(ramesh) is False

    def duty_ons() -> int:
        with transaction() as s:
            return s.scalar(select(func.count()).select_from(PartnerEvent).where(
                PartnerEvent.partner_id == ramesh, PartnerEvent.kind == "duty_on")) or 0

    before = duty_ons()
    assert "is yours" in sms(client, phone, f"1 {leg.id}")[0]
    assert _on_duty(ramesh) is True
    assert duty_ons() == before + 1

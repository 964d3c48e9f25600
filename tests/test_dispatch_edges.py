"""Dispatch at its edges, each once wrong: a relay parcel handed over and never PICKed, a
suspended rider holding one, a suspended rider's old handover code, a partner who sent
STOP, "हो गया" read as yes, a paused relay leg and the rider who went OFF once, CANCEL
on an offer, and Marathi's "होय"."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking
from core.services import dispatch
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    OPS,
    bodies_to,
    freeze_at,
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

P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)


def _ref(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).reference


def test_relay_parcel_handed_over_but_never_picked_up_is_reported(client, live,
                                                                  frozen):  # noqa: F811
    # Ramesh carries leg 1 to Point A and hands the parcel to Asha (his DROP confirmed with
    # the code she read out). Asha never sends PICK: leg 2 stays "assigned" with the parcel
    # in her hands. Neither pickup_late (first legs only) nor delivery_late (picked-up legs
    # only) looks at it, so nobody is ever told, however late it gets.
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert "आपका है" in sms(client, a_phone, "1")[0]
    assert "पहुँच गया" in sms(client, r_phone, f"DROP {last_code(a_phone, 'पार्सल लें')}")[0]
    legs = legs_of(booking_id)
    assert [leg.status for leg in legs[:2]] == ["delivered", "assigned"]
    before = len(bodies_to(OPS))
    # Two days later (standard tier: 8 h), the sweep has run many times.
    for hours in (9, 24, 48):
        freeze_at(hours * 3600)
        dispatch.sweep()
    ref = _ref(booking_id)
    new = bodies_to(OPS)[before:]
    assert any(ref in body for body in new), (
        "leg 2 holds the parcel but is never picked up; ops were never told: "
        f"{new}")


def _relay_with_leg2_taken(client):
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    ramesh, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    asha, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert "आपका है" in sms(client, a_phone, "1")[0]
    return booking_id, (ramesh, r_phone), (asha, a_phone)


def test_blocking_the_relay_rider_who_holds_the_parcel_does_not_reoffer_the_leg(
        client, live, frozen):  # noqa: F811
    # Asha has taken leg 2 and Ramesh has handed her the parcel at Point A (his DROP is
    # confirmed). Ops suspend Asha. The parcel is in her hands, as a picked-up parcel would
    # be (cancel_by_partner refuses the give-back for exactly this case: cancel_too_late),
    # but block_partner treats the "assigned" leg as not collected: it is offered to a new
    # rider, Asha is told "job cancelled, do not go for pickup", Ramesh (who no longer has
    # it) is sent a code to hand it over, and the leg is missing from the in-hand list ops
    # get back.
    from core.domain.booking import Actor

    booking_id, (ramesh, r_phone), (asha, a_phone) = _relay_with_leg2_taken(client)
    assert "पहुँच गया" in sms(client, r_phone, f"DROP {last_code(a_phone, 'पार्सल लें')}")[0]
    leg2 = legs_of(booking_id)[1].id
    with transaction() as s:
        in_hand = dispatch.block_partner(s, asha, Actor("ops", "1"))
    leg = legs_of(booking_id)[1]
    assert (leg.status != "offering", leg.partner_id, leg2 in in_hand) == (True, asha, True), (
        f"leg 2 (parcel with Asha) became {leg.status!r}, partner {leg.partner_id}, "
        f"in_hand={in_hand}")
    # Suspended, she may still record the parcel she holds and carry it on (not a new one).
    sms(client, a_phone, f"PICK {last_code(r_phone, 'अगले राइडर को कोड')}")
    assert legs_of(booking_id)[1].status == "picked_up"


def test_a_blocked_relay_rider_cannot_collect_the_parcel_with_the_old_handover_code(
        client, live, frozen):  # noqa: F811
    # Same as a give-back (test_a_rider_who_gives_a_relay_leg_back_cannot_collect_the_parcel)
    # but ops suspend Asha (say, a theft reported) before the handover: the handover code
    # she holds must stop working, or Ramesh hands the parcel to the suspended rider.
    from core.domain.booking import Actor

    booking_id, (ramesh, r_phone), (asha, a_phone) = _relay_with_leg2_taken(client)
    code = last_code(a_phone, "पार्सल लें")
    with transaction() as s:
        dispatch.block_partner(s, asha, Actor("ops", "1"))
    assert legs_of(booking_id)[1].status == "offering"
    reply = sms(client, r_phone, f"DROP {code}")
    assert legs_of(booking_id)[0].status == "picked_up", (
        f"the suspended rider's handover code still works: {reply}")


def test_a_partner_who_texted_stop_is_not_offered_jobs_by_text(client, live,
                                                               frozen):  # noqa: F811
    # Ramesh (SMS only, no app) texts STOP. Twilio's opt-out handling forwards it to our
    # webhook, which answered "not understood" and left him on duty; from then on Twilio
    # refuses every SMS to him (21610), and the outbox marks him opted out on the first
    # refusal. He is nearest, so each booking's first batch (size 1) goes to him: the
    # offer can never reach him and the parcel waits out its timeout and grace (2 min)
    # before Asha hears of it -- every booking, and relay handover codes to him are lost.
    from core.adapters.models import Person

    ramesh, r_phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    asha, a_phone = make_partner("Asha", (LAXMIPUR[0] + 0.01, LAXMIPUR[1]))
    sms(client, r_phone, "STOP")
    with transaction() as s:  # what outbox does on Twilio's 21610 for the next SMS
        s.query(Person).filter(Person.phone == r_phone).update({"opted_out": True})
    booking_id = paid_booking()
    start(booking_id)
    first = offers(legs_of(booking_id)[0].id)
    assert [o.partner_id for o in first] == [asha], (
        f"the first offer went to the partner who cannot receive it: "
        f"{[(o.partner_id, o.status) for o in first]}")


def test_cancel_on_an_open_offer_refuses_it_instead_of_denying_it_exists(client, live,
                                                                        frozen):  # noqa: F811
    # Ramesh is offered job N and answers "CANCEL N" (the word for giving a job up). He is
    # told "You have no job N. Send STATUS." -- while STATUS lists "Offer N: reply 1 or 2"
    # -- and the offer stays open, so the next partner waits out its timeout and grace.
    _, r_phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0].id
    reply = sms(client, r_phone, f"CANCEL {leg}")
    assert reply == [i18n.t("dispatch.declined", "en", job=str(leg))]
    assert [o.status for o in offers(leg)] == ["declined"]


def test_marathi_hoy_is_yes(client, live, frozen):  # noqa: F811
    # "होय" is the everyday Marathi "yes" (हो is its short form, which is understood).
    # Marathi partners are offered jobs in Marathi; "होय" is answered "not understood".
    from core.domain.dispatch import Kind, parse_command

    assert parse_command("हो").kind is Kind.ACCEPT
    assert parse_command("होय").kind is Kind.ACCEPT


def test_hindi_ho_gaya_done_does_not_take_the_open_offer(client, live, frozen):  # noqa: F811
    # Ramesh is carrying job 1 and has an offer for job 2 open. He texts "डिलीवर हो गया"
    # ("delivered", literally "delivery has happened"). "हो" is Hindi's "be" in every
    # "हो गया" (done), but it is also in the Marathi yes words: with it a short message
    # of otherwise unknown words is read as ACCEPT, and he has just taken job 2, which he
    # never said yes to (giving it back counts against his record).
    ramesh, r_phone = make_partner("Ramesh", LAXMIPUR)
    first = paid_booking()
    start(first)
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    second = paid_booking()
    start(second)
    leg2 = legs_of(second)[0].id
    assert [o.status for o in offers(leg2)] == ["open"]
    reply = sms(client, r_phone, "डिलीवर हो गया")
    assert [o.status for o in offers(leg2)] == ["open"], reply
    assert reply == [i18n.t("dispatch.otp_format_drop", "hi")]  # read as DROP: the code?


def test_a_paused_relay_leg_is_offered_again_to_a_rider_who_went_off_duty_once(
        client, live, frozen):  # noqa: F811
    # Ramesh has picked up (leg 1). Asha, the only rider at Point A, is offered leg 2 and
    # goes OFF duty for lunch: her open offer is answered "no" for her. She comes back ON.
    # Nobody else is around, so leg 2 is paused at its deadline and searched again round
    # after round ("until a partner takes the leg") -- but a declined offer excludes her
    # from that leg for good (_excluded), so every round finds nobody and the parcel waits
    # at Point A for ever although the one rider there is free and on duty.
    from datetime import timedelta

    from tests.conftest import release_scheduled, run_jobs

    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    asha, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    leg2 = legs_of(booking_id)[1].id
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert [(o.partner_id, o.status) for o in offers(leg2)] == [(asha, "open")]
    sms(client, a_phone, "OFF")
    freeze_at(30 * 60)
    sms(client, a_phone, "ON")
    # Past the hour's deadline the leg pauses; two minutes later round 2 starts.
    for t in (60 * 60 + 1, 60 * 60 + 1 + 121, 2 * 60 * 60 + 200, 2 * 60 * 60 + 400):
        freeze_at(t)
        release_scheduled(timedelta(minutes=200))
        run_jobs()
        dispatch.sweep()
    from core.adapters.dispatch_models import DispatchSearch

    with transaction() as s:
        search = s.scalar(select(DispatchSearch).where(DispatchSearch.leg_id == leg2))
        assert search.round >= 2  # the search did run again
    got = [(o.partner_id, o.status, o.round) for o in offers(leg2)]
    assert any(o[2] > 1 for o in got), f"Asha is never asked again: {got}"


def test_stop_takes_a_partner_off_duty_without_an_answer_and_start_brings_them_back(
        client, live, frozen):  # noqa: F811
    from core.adapters.models import PartnerProfile, Person

    ramesh, r_phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    assert sms(client, r_phone, "Stop ") == []  # Twilio answers it, and lets nothing through
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == r_phone))
        assert (person.sms_opted_out, s.get(PartnerProfile, ramesh).on_duty) == (True, False)
        assert person.opted_out is False  # SMS's opt-out: WhatsApp stays open
    assert sms(client, r_phone, "START") == [i18n.t("dispatch.duty_on", "en")]
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == r_phone))
        assert (person.sms_opted_out, s.get(PartnerProfile, ramesh).on_duty) == (False, True)
    # "STOP 57" is no opt-out word of Twilio's: the command's answer as before.
    assert sms(client, r_phone, "STOP 57") == [i18n.t("dispatch.unknown", "en")]


def test_a_partner_twilio_will_not_text_goes_off_duty_and_the_next_is_offered(
        client, live, frozen):  # noqa: F811
    from core.adapters.models import OutboxMessage, PartnerProfile
    from tests.conftest import post_twilio, run_jobs

    ramesh, r_phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    asha, _ = make_partner("Asha", (LAXMIPUR[0] + 0.01, LAXMIPUR[1]))
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0].id
    assert [(o.partner_id, o.status) for o in offers(leg)] == [(ramesh, "open")]
    run_jobs()  # the offer SMS goes out
    with transaction() as s:
        sid = s.scalar(select(OutboxMessage.provider_sid).where(
            OutboxMessage.to_addr == r_phone).order_by(OutboxMessage.id.desc()).limit(1))
    assert sid
    r = post_twilio(client, "/webhooks/twilio/status",
                    {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": "21610"})
    assert r.status_code == 204
    run_jobs()
    with transaction() as s:
        assert s.get(PartnerProfile, ramesh).on_duty is False
    assert [(o.partner_id, o.status) for o in offers(leg)] == [
        (ramesh, "expired"), (asha, "open")]  # as with OFF: not a no


@pytest.mark.parametrize(("text", "kind"), [
    ("haanji", "accept"), ("Hanji 57", "accept"), ("pikup 4821", "pick"),
    ("पिकअप 4821", "pick"), ("पहुँच गया 4821", "drop"), ("पहुंच गया", "drop"),
    ("डिलीवर हो गया", "drop"), ("हो", "accept"), ("होय", "accept")])
def test_words_partners_type(text, kind):
    from core.domain.dispatch import parse_command

    assert parse_command(text).kind.value == kind


def test_cancel_with_two_jobs_asks_which_the_cancel_way(client, live, frozen):  # noqa: F811
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en", max_active_legs=2)
    jobs = []
    for _ in range(2):
        booking_id = paid_booking()
        start(booking_id)
        jobs.append(str(legs_of(booking_id)[0].id))
        sms(client, phone, "1")
    assert sms(client, phone, "CANCEL") == [
        i18n.t("dispatch.which_job_cancel", "en", jobs=" ".join(jobs), job=jobs[0])]


def test_a_yes_to_a_cancelled_booking_says_it_is_cancelled(client, live, frozen):  # noqa: F811
    from tests.test_dispatch_cancel import cancel

    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    for took in (True, False):  # taken, then cancelled; offered, then cancelled
        booking_id = paid_booking()
        start(booking_id)
        job = str(legs_of(booking_id)[0].id)
        if took:
            sms(client, phone, "1")
        cancel(booking_id)
        # Was "already yours", and "went to another partner".
        assert sms(client, phone, f"1 {job}") == [
            i18n.t("dispatch.job_cancelled", "en", job=job)]


def test_stop_from_an_app_partner_does_not_take_them_off_duty(client, live, frozen):  # noqa: F811
    """An app partner who texts STOP to quiet the SMS still sees and takes offers in the
    app: on duty, as the outbox's opt-out path leaves them."""
    from core.adapters.models import PartnerProfile
    from tests.test_dispatch import LAXMIPUR, make_partner, sms

    pid, phone = make_partner("Appwala", LAXMIPUR, lang="en", has_app=True)
    sms(client, phone, "STOP")
    with transaction() as s:
        assert s.get(PartnerProfile, pid).on_duty, "an app partner went off duty on STOP"


def test_a_partner_who_said_no_is_not_offered_the_job_again_when_a_rider_gives_it_back(
        client, live, frozen):  # noqa: F811
    """A no is forgotten only after the leg paused (a relay leg waiting for anyone), not on
    the new round a give-back starts: the partner who said NO minutes ago is not offered
    the same job again ahead of partners never asked."""
    from tests.test_dispatch import sms as psms

    nay, n_phone = make_partner("Nay", LAXMIPUR, lang="en")
    quitter, q_phone = make_partner("Quitter", (26.88, 84.49), lang="en")
    other, _ = make_partner("Other", (26.90, 84.49), lang="en")
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    first = [o.partner_id for o in offers(leg.id) if o.status == "open"]
    assert first == [nay], first
    psms(client, n_phone, "NO")
    assert sorted(o.partner_id for o in offers(leg.id) if o.status == "open") == sorted(
        [quitter, other])
    assert "Quitter" not in "".join(psms(client, q_phone, f"YES {leg.id}"))
    with transaction() as s:
        assert s.get(type(legs_of(booking_id)[0]), leg.id).partner_id == quitter
    psms(client, q_phone, "CANCEL")
    open_now = [o.partner_id for o in offers(leg.id) if o.status == "open"]
    assert nay not in open_now, f"the partner who said no is offered it again: {open_now}"

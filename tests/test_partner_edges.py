"""Partner-facing edges a review found: a PICK/DROP sent again after it worked, the app's
offer of a relay leg, "no problem" as an answer to an offer, a partner who said no and
then yes, OFF/STATUS/CANCEL/DROP for a relay rider handed the parcel (their PICK still to
send), CANCEL of a job locked before pickup, a yes to a job given back, and the app's
answers in the app's words. Partners answer by SMS (core.services.partner_sms over
core.services.dispatch) or in the app (core.api.partner)."""

from __future__ import annotations

import pytest

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import Leg
from core.domain.dispatch import Kind, parse_command
from core.services import dispatch
from tests.test_api import sign_in
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
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

API = "/api/v1"
OPS_PHONE = "+919000000099"  # OPS_PHONE in the test settings
# As in test_dispatch_relay: P -A- 7 km -B- 10 km - D 7 km, bicycles only (15 km range).
P, A, B, D = (26.85, 84.40), (26.85, 84.47), (26.85, 84.57), (26.85, 84.64)
PICK_MARK = "पार्सल उठाने"  # the sender's pickup-code SMS (Hindi customer)


def _at(client, headers, where) -> None:
    """The app reports the partner's live position (app partners are found by it)."""
    r = client.put(f"{API}/partners/me/location", headers=headers, json={
        "lat": where[0], "lng": where[1], "accuracy_m": 10,
        "timestamp": clock.now().isoformat()})
    assert r.status_code == 200, r.get_json()


def _relay_leg1_picked_up(client, *, asha_app: bool = False):
    """A relay P -> Point A -> Point B -> D: Ramesh has picked up leg 1, and leg 2 is
    offered to Asha (English; on the app with ``asha_app``), not taken yet."""
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1, lang="en",
                              has_app=asha_app)
    headers = None
    if asha_app:
        headers = sign_in(client, a_phone)
        _at(client, headers, A)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    sms(client, r_phone, "1")
    assert "उठ गया" in sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")[0]
    return booking_id, r_phone, a_phone, headers


def _leg(leg_id: int) -> Leg:
    with transaction() as s:
        leg = s.get(Leg, leg_id)
        assert leg is not None
        return leg


def _taken_and_picked_up(client, phone: str) -> tuple[int, str]:
    """A paid booking offered to the partner, taken ("1") and picked up with the sender's
    code; returns (leg id, the recipient's drop code)."""
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    assert "picked up" in sms(client, phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")[0]
    return legs_of(booking_id)[0].id, last_code(RECIPIENT)


# --- a PICK or DROP sent again ---------------------------------------------------------


@pytest.mark.db
def test_drop_sent_again_says_delivered_and_costs_the_other_parcel_no_try(
        client, live, frozen):  # noqa: F811
    """Ramesh carries two parcels. He delivers job 1 and, the answer slow to come, sends
    "DROP <code>" again: he hears job 1 is delivered, and job 2 is charged no wrong try
    (before: "Wrong OTP for job 2. Tries left: 4.", five such resends locked it)."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    job1, drop1 = _taken_and_picked_up(client, phone)
    job2, drop2 = _taken_and_picked_up(client, phone)
    assert drop1 != drop2  # two different codes (1 in 10,000 they are not)
    assert "delivered" in sms(client, phone, f"DROP {drop1} {job1}")[0]
    for _ in range(5):
        again = sms(client, phone, f"DROP {drop1}")
        assert again == [i18n.t("dispatch.already_delivered", "en", job=str(job1))]
    leg2 = _leg(job2)
    assert (leg2.status, leg2.otp_failures) == ("picked_up", 0)
    wrong = next(c for c in ("0000", "1111", "2222") if c not in (drop1, drop2))
    assert sms(client, phone, f"DROP {wrong}") == [
        i18n.t("dispatch.otp_wrong", "en", job=str(job2), left=4)]  # a wrong code still counts


@pytest.mark.db
def test_drop_sent_again_with_no_other_job_says_delivered(client, live, frozen):  # noqa: F811
    """With no other job, the same resent DROP was answered "You have no job for this
    now": he should hear that the job is delivered."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    job, drop = _taken_and_picked_up(client, phone)
    assert "delivered" in sms(client, phone, f"DROP {drop}")[0]
    assert sms(client, phone, f"DROP {drop}") == [
        i18n.t("dispatch.already_delivered", "en", job=str(job))]
    assert sms(client, phone, f"DROP {drop} {job}") == [
        i18n.t("dispatch.already_delivered", "en", job=str(job))]


@pytest.mark.db
def test_pick_sent_again_is_no_wrong_try_on_the_job_still_to_collect(
        client, live, frozen):  # noqa: F811
    """Ramesh picked up job 1 and took job 2 (not collected yet). "PICK <job 1's code>"
    sent again is about job 1, picked up already: job 2 is charged no wrong try."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    pick1 = last_code(CUSTOMER, PICK_MARK)
    sms(client, phone, f"PICK {pick1}")
    second = paid_booking()
    start(second)
    sms(client, phone, "1")
    job1, job2 = legs_of(booking_id)[0].id, legs_of(second)[0].id
    if pick1 == last_code(CUSTOMER, PICK_MARK):
        pytest.skip("the two pickup codes are the same (1 in 10,000)")
    assert sms(client, phone, f"PICK {pick1}") == [
        i18n.t("dispatch.already_picked", "en", job=str(job1))]
    leg2 = legs_of(second)[0]
    assert (leg2.id, leg2.status, leg2.otp_failures) == (job2, "assigned", 0)


@pytest.mark.db
def test_app_drop_retried_after_delivery_is_409_already_delivered(client, live,
                                                                   frozen):  # noqa: F811
    """The app confirms a drop, the answer is lost on a weak network, and it sends the
    same POST /legs/<id>/drop again: 409 (as a repeated pickup is) saying the job is
    delivered already, not 404 "You have no job 1"."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en", has_app=True)
    headers = sign_in(client, phone)
    _at(client, headers, LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    offer_id = client.get(f"{API}/partners/me/offers", headers=headers).get_json()[0]["id"]
    assert client.post(f"{API}/offers/{offer_id}/accept", headers=headers).status_code == 200
    leg = legs_of(booking_id)[0].id
    r = client.post(f"{API}/legs/{leg}/pickup", headers=headers,
                    json={"otp": last_code(CUSTOMER, PICK_MARK)})
    assert r.status_code == 200, r.get_json()
    drop = last_code(RECIPIENT)
    r = client.post(f"{API}/legs/{leg}/drop", headers=headers, json={"otp": drop})
    assert r.status_code == 200 and r.get_json()["leg_status"] == "delivered", r.get_json()
    again = client.post(f"{API}/legs/{leg}/drop", headers=headers, json={"otp": drop})
    assert again.status_code == 409, again.get_json()
    assert again.get_json()["error"]["code"] == "invalid_transition"
    assert again.get_json()["error"]["message"] == i18n.t("dispatch.already_delivered", "en",
                                                          job=str(leg))
    assert legs_of(booking_id)[0].otp_failures == 0


# --- offers ----------------------------------------------------------------------------


@pytest.mark.db
def test_app_offer_of_a_relay_leg_names_its_points(client, live, frozen):  # noqa: F811
    """Leg 2 of a relay (Point A to Point B) offered in the app: GET /partners/me/offers
    names the Points, as the offer SMS does (before: pickup null, drop null)."""
    booking_id, _, _, headers = _relay_leg1_picked_up(client, asha_app=True)
    got = client.get(f"{API}/partners/me/offers", headers=headers).get_json()
    leg2 = legs_of(booking_id)[1].id
    mine = [o for o in got if o["leg_id"] == leg2]
    assert len(mine) == 1, got
    assert (mine[0]["pickup"], mine[0]["drop"]) == ("Point A", "Point B"), mine[0]


@pytest.mark.db
def test_no_problem_answer_to_an_offer_leaves_it_open(client, live, frozen):  # noqa: F811
    """"No problem, I will take it" (Indian English for "sure") was read as NO: the offer
    was declined. It is not a no: it is not understood, the offer stays open, and "1"
    then takes the job."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0].id
    assert sms(client, phone, "No problem, I will take it") == [
        i18n.t("dispatch.unknown_offer", "en", job=leg)]
    assert [o.status for o in offers(leg)] == ["open"]
    assert sms(client, phone, "1")[0].startswith(f"Job {leg} is yours.")


@pytest.mark.parametrize("text", ["koi baat nahi", "Koi baat nahin!", "कोई बात नहीं",
                                  "No problem", "काही हरकत नाही", "பிரச்சனை இல்லை",
                                  "సమస్య లేదు", "ತೊಂದರೆ ಇಲ್ಲ"])
def test_no_problem_in_any_language_is_no_decline(text: str) -> None:
    assert parse_command(text).kind is Kind.UNKNOWN


@pytest.mark.parametrize(("text", "kind"), [
    ("koi baat nahi, haan", Kind.ACCEPT), ("no problem 1", Kind.ACCEPT),
    ("ok no problem", Kind.ACCEPT), ("koi baat nahi, nahi aa sakta", Kind.DECLINE)])
def test_what_comes_with_no_problem_decides(text: str, kind: Kind) -> None:
    assert parse_command(text).kind is kind


@pytest.mark.db
def test_partner_who_said_no_and_then_yes_gets_the_job_still_free(client, live,
                                                                  frozen):  # noqa: F811
    """Ramesh answers "2", then at once "1 <job>": nobody took it, yet he was told it
    "went to another partner". While the offer's time runs and the job is free, his yes
    takes it."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0].id
    assert sms(client, phone, "2") == [i18n.t("dispatch.declined", "en", job=str(leg))]
    assert legs_of(booking_id)[0].status == "offering"  # nobody took it
    reply = sms(client, phone, f"1 {leg}")
    assert reply[0].startswith(f"Job {leg} is yours."), reply
    taken = legs_of(booking_id)[0]
    assert taken.status == "assigned" and taken.partner_id is not None
    assert [o.status for o in offers(leg)] == ["accepted"]


@pytest.mark.db
def test_a_no_said_twice_and_a_yes_too_late_are_answered_as_such(client, live,
                                                                 frozen):  # noqa: F811
    """After "2", "2 <job>" again is "skipped" (before: "went to another partner"), and
    a yes after the offer's time is up is "time is up", the job not taken."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0].id
    sms(client, phone, "2")
    assert sms(client, phone, f"2 {leg}") == [i18n.t("dispatch.declined", "en", job=str(leg))]
    freeze_at(600)
    assert sms(client, phone, f"1 {leg}") == [i18n.t("dispatch.offer_expired", "en",
                                                     job=str(leg))]
    assert legs_of(booking_id)[0].partner_id is None


@pytest.mark.db
def test_job_number_with_a_leading_zero_names_the_open_offer(client, live,
                                                             frozen):  # noqa: F811
    """"1 0<job>" on his own open offer was "went to another partner"."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0].id
    reply = sms(client, phone, f"1 0{leg}")
    assert reply[0].startswith(f"Job {leg} is yours."), reply
    assert legs_of(booking_id)[0].status == "assigned"


# --- a relay rider holding the parcel; a locked job ------------------------------------


@pytest.mark.db
def test_relay_rider_handed_the_parcel_hears_to_send_pick_first(client, live,
                                                                frozen):  # noqa: F811
    """Asha took leg 2 and Ramesh handed her the parcel at Point A (his DROP took her
    code). A handover is confirmed from both sides: her PICK, with the code Ramesh gave
    her, records the leg as picked up and starts the search for leg 3; a DROP before it
    is refused. So OFF, STATUS and that DROP tell her to send PICK (before: OFF "deliver
    it, then send DROP", STATUS "on the way", DROP "not picked up yet"), and CANCEL is
    refused as for a parcel in hand. After her PICK, OFF says deliver it."""
    booking_id, r_phone, a_phone, _ = _relay_leg1_picked_up(client)
    _, b_phone = make_partner("Bala", B, lang="en", max_active_legs=1)
    assert "yours" in sms(client, a_phone, "1")[0]
    assert "पहुँच गया" in sms(client, r_phone, f"DROP {last_code(a_phone, 'take the parcel')}")[0]
    leg1, leg2, leg3 = legs_of(booking_id)
    assert (leg1.status, leg2.status, leg3.status) == ("delivered", "assigned", "pending")
    job = str(leg2.id)
    assert sms(client, a_phone, "OFF") == [i18n.t("dispatch.duty_off_handed", "en", job=job)]
    assert sms(client, a_phone, "STATUS") == [i18n.t(
        "dispatch.status_line", "en", job=job,
        state=i18n.t("dispatch.state.handed_over", "en"), pickup="Point A", drop="Point B")]
    assert sms(client, a_phone, "CANCEL") == [
        i18n.t("dispatch.cancel_too_late", "en", job=job, ops_phone=OPS_PHONE)]
    assert sms(client, a_phone, "DROP 1234") == [
        i18n.t("dispatch.pick_first_handed", "en", job=job)]
    assert _leg(leg2.id).otp_failures == 0  # no try counted
    # The next true step works: PICK with the code Ramesh was sent to give her.
    assert sms(client, a_phone, f"PICK {last_code(r_phone, 'अगले राइडर')}") == [
        i18n.t("dispatch.picked", "en", job=job, drop="Point B")]
    assert [leg.status for leg in legs_of(booking_id)] == ["delivered", "picked_up", "offering"]
    assert sms(client, a_phone, "OFF") == [i18n.t("dispatch.duty_off_carrying", "en", job=job)]


@pytest.mark.db
def test_cancel_of_a_job_locked_before_pickup_says_it_is_locked(client, live,
                                                                frozen):  # noqa: F811
    """Five wrong pickup codes locked the job, the parcel still with the sender. CANCEL
    was answered "already picked up and cannot be given back": it is locked, call ops
    (as PICK says)."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    pick = last_code(CUSTOMER, PICK_MARK)
    wrong = "0000" if pick != "0000" else "1111"
    for _ in range(5):
        sms(client, phone, f"PICK {wrong}")
    leg = legs_of(booking_id)[0]
    assert leg.status == "locked"
    locked = [i18n.t("dispatch.otp_locked", "en", job=str(leg.id), ops_phone=OPS_PHONE)]
    assert sms(client, phone, "CANCEL") == locked
    assert sms(client, phone, f"CANCEL {leg.id}") == locked
    assert legs_of(booking_id)[0].status == "locked"


# --- a yes to a job given back ---------------------------------------------------------


@pytest.mark.db
def test_yes_to_a_job_given_back_says_it_was_given_back(client, live, frozen):  # noqa: F811
    """Ramesh takes the job and gives it back (CANCEL); nobody has taken it since (Suresh's
    offer is open). "1 <job>" was answered "went to another partner": he gave it back, and
    is not offered it again (the give-back excludes him from the leg for good), so that is
    what he hears; "2 <job>" the same. The job stays on offer to others."""
    ramesh, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    suresh, _ = make_partner("Suresh", (26.895, 84.49))
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0].id
    assert [o.partner_id for o in offers(leg)] == [ramesh]
    assert sms(client, phone, "1")[0].startswith(f"Job {leg} is yours.")
    assert sms(client, phone, f"CANCEL {leg}") == [
        i18n.t("dispatch.cancelled", "en", job=str(leg))]
    assert {o.partner_id: o.status for o in offers(leg)} == {ramesh: "cancelled",
                                                             suresh: "open"}
    given_back = [i18n.t("dispatch.given_back", "en", job=str(leg))]
    assert sms(client, phone, f"1 {leg}") == given_back
    assert sms(client, phone, f"YES {leg}") == given_back
    assert sms(client, phone, f"2 {leg}") == given_back
    taken = legs_of(booking_id)[0]
    assert (taken.status, taken.partner_id) == ("offering", None)
    assert {o.partner_id: o.status for o in offers(leg)} == {ramesh: "cancelled",
                                                             suresh: "open"}


@pytest.mark.db
def test_yes_to_a_job_taken_back_says_it_was_taken_back(client, live, frozen):  # noqa: F811
    """Ramesh did not pick the job up in time and it was taken back from him: "1 <job>"
    says so (not "you gave it back", nor "went to another partner")."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0].id
    sms(client, phone, "1")
    freeze_at(61 * 60)  # DISPATCH_PICKUP_MINUTES (60): reminded first
    assert dispatch.sweep()["late_pickups"] == 1
    freeze_at(121 * 60)  # a window after the reminder
    assert dispatch.sweep()["taken_back"] == 1
    assert sms(client, phone, f"1 {leg}") == [
        i18n.t("dispatch.taken_from_you", "en", job=str(leg))]
    assert legs_of(booking_id)[0].partner_id is None


@pytest.mark.db
def test_app_accept_of_an_offer_given_back_is_409_offer_closed(client, live,
                                                               frozen):  # noqa: F811
    """In the app, the same: accepting again an offer whose job the partner gave back is
    409 offer_closed saying so (before: 409 offer_taken, "went to another partner")."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en", has_app=True)
    headers = sign_in(client, phone)
    _at(client, headers, LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    offer_id = client.get(f"{API}/partners/me/offers", headers=headers).get_json()[0]["id"]
    assert client.post(f"{API}/offers/{offer_id}/accept", headers=headers).status_code == 200
    leg = legs_of(booking_id)[0].id
    assert sms(client, phone, f"CANCEL {leg}")[0] == i18n.t("dispatch.cancelled", "en",
                                                             job=str(leg))
    again = client.post(f"{API}/offers/{offer_id}/accept", headers=headers)
    assert again.status_code == 409, again.get_json()
    assert again.get_json()["error"]["code"] == "offer_closed"
    assert again.get_json()["error"]["message"] == i18n.t("dispatch.given_back", "en",
                                                          job=str(leg))


# --- a message not understood, one offer open -------------------------------------------


@pytest.mark.db
@pytest.mark.parametrize("text", ["no problem", "koi baat nahi", "kitna door hai"])
def test_message_not_understood_with_one_offer_names_the_job(client, live, frozen,  # noqa: F811
                                                             text: str):
    """With exactly one offer open, a message we cannot read is most likely an answer to
    it: the answer names the job and what 1 and 2 do (before: "Send HELP"). The offer
    stays open. With no offer open there is no job to name: HELP is pointed to."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    assert sms(client, phone, text) == [i18n.t("dispatch.unknown", "en")]
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0].id
    reply = sms(client, phone, text)
    assert reply == [i18n.t("dispatch.unknown_offer", "en", job=leg)]
    assert f"{leg}" in reply[0] and "1" in reply[0] and "2" in reply[0]
    assert [o.status for o in offers(leg)] == ["open"]


# --- the app's answers in the app's words -----------------------------------------------


@pytest.mark.db
def test_app_answers_say_to_confirm_in_the_app_not_to_send_pick(client, live,
                                                                frozen):  # noqa: F811
    """The app's accept answered "Then send PICK and the OTP" (an SMS command) and its
    pickup "send DROP and the OTP": in the app the partner enters the code on the job's
    screen. Its answers say that, as do its refusals (drop before pickup, pickup twice)."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en", has_app=True)
    headers = sign_in(client, phone)
    _at(client, headers, LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    offer_id = client.get(f"{API}/partners/me/offers", headers=headers).get_json()[0]["id"]
    r = client.post(f"{API}/offers/{offer_id}/accept", headers=headers)
    assert r.status_code == 200, r.get_json()
    leg = legs_of(booking_id)[0].id
    body = r.get_json()
    assert body["result"] == "accepted"
    assert body["message"] == i18n.t("dispatch.app.accepted", "en", job=str(leg),
                                     pickup="Laxmipur", phone=CUSTOMER)
    r = client.post(f"{API}/legs/{leg}/drop", headers=headers, json={"otp": "1234"})
    assert r.status_code == 409
    assert r.get_json()["error"]["message"] == i18n.t("dispatch.app.pick_first", "en",
                                                      job=str(leg))
    pick = last_code(CUSTOMER, PICK_MARK)
    r = client.post(f"{API}/legs/{leg}/pickup", headers=headers, json={"otp": pick})
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["result"], r.get_json()["message"]) == (
        "picked", i18n.t("dispatch.app.picked", "en", job=str(leg), drop="Bettiah"))
    r = client.post(f"{API}/legs/{leg}/pickup", headers=headers, json={"otp": pick})
    assert r.status_code == 409
    assert r.get_json()["error"]["message"] == i18n.t("dispatch.app.already_picked", "en",
                                                      job=str(leg))
    for text in (body["message"], r.get_json()["error"]["message"]):
        assert "PICK" not in text and "DROP" not in text and "send" not in text


@pytest.mark.db
def test_app_relay_rider_handed_the_parcel_is_told_to_confirm_the_pickup(
        client, live, frozen):  # noqa: F811
    """Asha, on the app, is handed the parcel at Point A. Her drop before the pickup is
    409 telling her to enter the code the rider gave her (before: "not picked up yet. Send
    PICK and the OTP first"); the pickup then works."""
    booking_id, r_phone, a_phone, headers = _relay_leg1_picked_up(client, asha_app=True)
    leg2 = legs_of(booking_id)[1].id
    mine = [o for o in client.get(f"{API}/partners/me/offers", headers=headers).get_json()
            if o["leg_id"] == leg2]
    r = client.post(f"{API}/offers/{mine[0]['id']}/accept", headers=headers)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["message"] == i18n.t("dispatch.app.accepted", "en", job=str(leg2),
                                             pickup="Point A", phone=r_phone)
    assert "पहुँच गया" in sms(client, r_phone, f"DROP {last_code(a_phone, 'take the parcel')}")[0]
    r = client.post(f"{API}/legs/{leg2}/drop", headers=headers, json={"otp": "1234"})
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["error"]["message"] == i18n.t("dispatch.app.pick_first_handed", "en",
                                                      job=str(leg2))
    r = client.post(f"{API}/legs/{leg2}/pickup", headers=headers,
                    json={"otp": last_code(r_phone, "अगले राइडर")})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["leg_status"] == "picked_up"


@pytest.mark.db
def test_app_accept_of_an_offer_withdrawn_when_full_is_409_offer_closed(client, live,
                                                                       frozen):  # noqa: F811
    """A partner who carries one job at a time takes job A; his open offer of job B is
    withdrawn (he is full). Accepting B in the app then said only 409 "conflict": it is
    409 offer_closed with the words the SMS gets."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en", has_app=True, max_active_legs=1)
    headers = sign_in(client, phone)
    _at(client, headers, LAXMIPUR)
    job_a = paid_booking()
    start(job_a)
    offer_a = client.get(f"{API}/partners/me/offers", headers=headers).get_json()[0]["id"]
    assert client.post(f"{API}/offers/{offer_a}/decline", headers=headers).status_code == 200
    job_b = paid_booking()
    start(job_b)
    offer_b = [o["id"] for o in client.get(f"{API}/partners/me/offers",
                                           headers=headers).get_json() if o["id"] != offer_a]
    assert len(offer_b) == 1
    assert client.post(f"{API}/offers/{offer_a}/accept", headers=headers).status_code == 200
    again = client.post(f"{API}/offers/{offer_b[0]}/accept", headers=headers)
    assert again.status_code == 409, again.get_json()
    assert again.get_json()["error"]["code"] == "offer_closed"
    leg_b = legs_of(job_b)[0].id
    assert again.get_json()["error"]["message"] == i18n.t("dispatch.withdrawn", "en",
                                                          job=str(leg_b))


@pytest.mark.db
def test_app_pickup_of_a_job_cancelled_meanwhile_does_not_say_send_status(
        client, live, frozen):  # noqa: F811
    """Ramesh, on the app, took a job; the customer cancelled it while he rode to the
    pickup. His pickup (or drop) in the app was answered "You have no job N. Send STATUS.",
    an SMS command the app has not: it says the job is no longer his."""
    from core.adapters.models import Booking
    from core.domain.booking import Actor
    from core.services import payments

    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en", has_app=True)
    headers = sign_in(client, phone)
    _at(client, headers, LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    offer_id = client.get(f"{API}/partners/me/offers", headers=headers).get_json()[0]["id"]
    assert client.post(f"{API}/offers/{offer_id}/accept", headers=headers).status_code == 200
    leg = legs_of(booking_id)[0].id
    with transaction() as s:
        payments.cancel_booking(s, s.get(Booking, booking_id), Actor("customer", "1"),
                                "customer cancelled on whatsapp")
    assert legs_of(booking_id)[0].status == "cancelled"
    for kind in ("pickup", "drop"):
        r = client.post(f"{API}/legs/{leg}/{kind}", headers=headers,
                        json={"otp": last_code(CUSTOMER, PICK_MARK)})
        # The job was cancelled, not taken from him: he hears so (409), as at its accept.
        assert r.status_code == 409, r.get_json()
        error = r.get_json()["error"]
        assert (error["code"], error["message"]) == (
            "job_cancelled", i18n.t("dispatch.job_cancelled", "en", job=str(leg)))
        assert "STATUS" not in error["message"] and "Send" not in error["message"]
    # Over SMS the same: cancelled (test_dispatch_s36), not "no job N".
    assert sms(client, phone, f"PICK {last_code(CUSTOMER, PICK_MARK)} {leg}")[0] == i18n.t(
        "dispatch.job_cancelled", "en", job=str(leg))

"""A partner's answer sent twice, or a little late, acts on the job he meant (session 33).

- A bare CANCEL ("chhod do") to an offer skips it; the same word again (the phone resends
  the SMS under a new MessageSid, or he types it again on slow 2G), or one just after the
  offer's time ran out, gave back the job he already held. It is a no to that offer now,
  and he hears how to give his job back if he means to (CANCEL and its number).
- A bare yes (or no) sent twice took (or skipped) the next offer, made in between, which
  he never saw. It is about the job he answered now; he is asked to name the new one.
- Accepting a relay leg writes the leg before it (a new handover code) only once it holds
  that leg's lock, taken in the legs' order before the booking (lock_legs), so a cancel
  of the booking at that moment waits rather than deadlocks.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from core import i18n
from core.adapters.db import transaction
from core.adapters.dispatch_models import DispatchOffer
from core.adapters.models import Leg, PartnerProfile
from core.domain.dispatch import OfferStatus
from core.services import dispatch
from tests.conftest import release_scheduled, run_jobs
from tests.test_dispatch import (  # noqa: F401
    LAXMIPUR,
    freeze_at,
    frozen,
    legs_of,
    make_partner,
    offers,
    paid_booking,
    sms,
    start,
)
from tests.test_partner_app_review import _app_partner, _offered

pytestmark = pytest.mark.db
API = "/api/v1"


def _holds_one_and_is_offered_another(client) -> tuple[int, str, int, int]:
    """An SMS rider who holds job A (taken at 0 s) and is offered job B at 120 s:
    (partner, phone, leg A, leg B)."""
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    held = paid_booking()
    start(held)
    assert sms(client, phone, "1")[0].startswith("Job ")
    leg_a = legs_of(held)[0].id
    freeze_at(120)
    offered = paid_booking()
    start(offered)
    leg_b = legs_of(offered)[0].id
    assert [o.partner_id for o in offers(leg_b)] == [pid]
    return pid, phone, leg_a, leg_b


def _kept(leg_a: int, leg_b: int) -> list[str]:
    return [i18n.t("dispatch.kept_after_no", "en", offered=str(leg_b), job=str(leg_a))]


def legs_of_leg(leg_id: int) -> Leg:
    with transaction() as s:
        leg = s.get(Leg, leg_id)
        assert leg is not None
        return leg


# --- a bare CANCEL sent again, or late ------------------------------------------------


@pytest.mark.parametrize("body", ["CANCEL", "chhod do"])
def test_a_bare_cancel_sent_again_keeps_the_job_in_hand(client, live, frozen,  # noqa: F811
                                                       body):
    pid, phone, leg_a, leg_b = _holds_one_and_is_offered_another(client)
    freeze_at(150)
    assert sms(client, phone, body) == [i18n.t("dispatch.declined", "en", job=str(leg_b))]
    freeze_at(158)  # the same word again, 8 s later
    assert sms(client, phone, body) == _kept(leg_a, leg_b)
    with transaction() as s:
        leg = s.get(Leg, leg_a)
        assert (leg.partner_id, leg.status) == (pid, "assigned")
    # Named, the job is given back at once; bare, once the offer's no is long past.
    freeze_at(150 + dispatch.ANSWERED_JUST_AFTER.total_seconds() + 1)
    assert "counts against" in sms(client, phone, body)[0]
    assert legs_of_leg(leg_a).partner_id is None


def test_a_bare_cancel_just_after_the_offer_expired_keeps_the_job_in_hand(
        client, live, frozen):  # noqa: F811
    """His "chhod do" to the new offer arrives just after its time and grace ran out."""
    pid, phone, leg_a, leg_b = _holds_one_and_is_offered_another(client)
    offer = offers(leg_b)[0]
    freeze_at(120 + 125)  # its 90 s and 30 s grace are over
    dispatch.offer_timeout(offer.id)
    freeze_at(120 + 140)
    assert sms(client, phone, "chhod do") == _kept(leg_a, leg_b)
    assert legs_of_leg(leg_a).partner_id == pid
    after = offers(leg_b)[0]
    # Answered late, not missed (no step toward the automatic OFF).
    assert (after.status, after.responded_at) == (OfferStatus.EXPIRED.value, None)


def test_a_bare_cancel_given_back_job_named_still_works(client, live, frozen):  # noqa: F811
    pid, phone, leg_a, leg_b = _holds_one_and_is_offered_another(client)
    freeze_at(150)
    sms(client, phone, "CANCEL")  # skips job B
    freeze_at(158)
    assert "counts against" in sms(client, phone, f"CANCEL {leg_a}")[0]
    assert legs_of_leg(leg_a).partner_id is None


def test_a_bare_cancel_sent_again_with_no_job_in_hand_names_the_offer(
        client, live, frozen):  # noqa: F811
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking = paid_booking()
    start(booking)
    leg = legs_of(booking)[0].id
    skipped = [i18n.t("dispatch.declined", "en", job=str(leg))]
    assert sms(client, phone, "CANCEL") == skipped
    freeze_at(6)
    assert sms(client, phone, "CANCEL") == skipped


# --- a bare yes or no sent again, a new offer made in between ---------------------------


def _answered_a_then_offered_b(client, answer: str, offered_at: float = 5,
                               ) -> tuple[int, str, int, int]:
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en")  # may hold 2 jobs
    first = paid_booking()
    start(first)
    leg_a = legs_of(first)[0].id
    sms(client, phone, answer)
    freeze_at(offered_at)
    second = paid_booking()
    start(second)
    leg_b = legs_of(second)[0].id
    assert [(o.partner_id, o.status) for o in offers(leg_b)] == [(pid, "open")]
    return pid, phone, leg_a, leg_b


def test_a_yes_sent_twice_does_not_take_the_next_offer(client, live, frozen):  # noqa: F811
    pid, phone, leg_a, leg_b = _answered_a_then_offered_b(client, "1")
    assert legs_of_leg(leg_a).partner_id == pid
    freeze_at(8)  # the same "1" again, 8 s after the first
    assert sms(client, phone, "1") == [i18n.t("dispatch.yours_then_offer", "en",
                                              job=str(leg_a), offered=leg_b)]
    assert legs_of_leg(leg_b).partner_id is None
    assert offers(leg_b)[0].status == "open"
    freeze_at(12)  # his yes to job B, naming it as he was asked
    assert sms(client, phone, f"1 {leg_b}")[0].startswith(f"Job {leg_b} is yours")
    assert legs_of_leg(leg_b).partner_id == pid


def test_a_no_sent_twice_does_not_skip_the_next_offer(client, live, frozen):  # noqa: F811
    _, phone, leg_a, leg_b = _answered_a_then_offered_b(client, "2")
    freeze_at(8)
    assert sms(client, phone, "2") == [i18n.t("dispatch.answered_then_offer", "en",
                                              job=str(leg_a), offered=leg_b)]
    assert offers(leg_b)[0].status == "open"
    freeze_at(10)  # a bare CANCEL is a no too: the same
    assert sms(client, phone, "CANCEL") == [i18n.t("dispatch.answered_then_offer", "en",
                                                   job=str(leg_a), offered=leg_b)]
    assert offers(leg_b)[0].status == "open"
    freeze_at(12)
    assert sms(client, phone, f"2 {leg_b}") == [
        i18n.t("dispatch.declined", "en", job=str(leg_b))]
    assert offers(leg_b)[0].status == "declined"


def test_the_app_accept_then_an_sms_yes_does_not_take_the_next_offer(
        client, live, frozen):  # noqa: F811
    pid, phone, headers = _app_partner(client)
    _, leg_a, offer_a = _offered(client, headers)
    r = client.post(f"{API}/offers/{offer_a}/accept", headers=headers)
    assert r.status_code == 200, r.get_json()
    freeze_at(5)
    second = paid_booking()
    start(second)
    leg_b = legs_of(second)[0].id
    assert [o.partner_id for o in offers(leg_b)] == [pid]
    freeze_at(20)  # he answers job A's offer SMS as well
    assert sms(client, phone, "1") == [i18n.t("dispatch.yours_then_offer", "en",
                                              job=str(leg_a), offered=leg_b)]
    assert legs_of_leg(leg_b).partner_id is None


def test_a_bare_yes_after_the_window_takes_the_new_offer(client, live, frozen):  # noqa: F811
    """Job B offered a minute after his yes to A; his "1" two minutes after that yes (and
    65 s into B's offer) is his yes to B."""
    pid, phone, _, leg_b = _answered_a_then_offered_b(client, "1", offered_at=60)
    freeze_at(dispatch.ANSWERED_JUST_NOW.total_seconds() + 5)
    assert sms(client, phone, "1")[0].startswith(f"Job {leg_b} is yours")
    assert legs_of_leg(leg_b).partner_id == pid


# --- accepting a relay leg locks the leg before it first --------------------------------


def _locked_elsewhere(leg_id: int) -> bool:
    """Whether another transaction holds the leg's row lock (tried without waiting)."""
    try:
        with transaction() as s:
            s.execute(text("SELECT id FROM legs WHERE id = :id FOR UPDATE NOWAIT"),
                      {"id": leg_id})
    except OperationalError:
        return True
    return False


def test_accepting_a_relay_leg_holds_the_leg_before_it_before_writing_it(
        client, live, frozen, monkeypatch):  # noqa: F811
    """Gita takes leg 2 of a relay whose leg 1 Ramesh carries: send_leg_codes writes leg 1
    (a new handover code). Accept held leg 2 and the booking, not leg 1, at that moment: a
    cancel of the booking (lock_legs: leg 1, then leg 2) meanwhile held leg 1 and waited
    for leg 2, and the two deadlocked (the rider's app yes or ops' cancel got a 503)."""
    from tests.test_relay_stuck_cancel import A, _ramesh_holds_leg2_nobody_takes, _search

    booking_id, _, leg2 = _ramesh_holds_leg2_nobody_takes(client)
    leg1 = legs_of(booking_id)[0].id
    point_a = legs_of(booking_id)[1].from_point_id
    gita, g_phone = make_partner("Gita", A, point_id=point_a, max_active_legs=1,
                                 on_duty=False)
    sms(client, g_phone, "ON")
    freeze_at(60 * 60 + 1 + 121)
    release_scheduled(timedelta(minutes=3))
    run_jobs()
    assert _search(leg2) == ("active", 2)
    assert any(o.partner_id == gita and o.status == "open" for o in offers(leg2))
    seen: dict[str, bool] = {}
    original = dispatch.send_leg_codes

    def codes(session, booking, leg, **kwargs):
        if leg.id == leg2:
            seen["leg 1 locked"] = _locked_elsewhere(leg1)
        return original(session, booking, leg, **kwargs)

    monkeypatch.setattr(dispatch, "send_leg_codes", codes)
    with transaction() as s:
        partner = s.get(PartnerProfile, gita)
        assert dispatch.accept(s, partner, None).key == "dispatch.accepted"
    assert seen == {"leg 1 locked": True}
    with transaction() as s:
        assert s.scalar(select(DispatchOffer.status).where(
            DispatchOffer.leg_id == leg2, DispatchOffer.partner_id == gita)) == "accepted"


def test_a_pick_code_without_its_job_holds_the_relay_leg_before_first(
        client, live, frozen, monkeypatch):  # noqa: F811
    """Gita holds relay leg 2 (Ramesh carries leg 1 to the Point) and another job; "PICK
    <code>" without its job tries the code on both (_leg_of_code), whose locks came before
    leg 1's, which a relay PICK then locked (confirm): against the legs' order."""
    from core.services import booking as booking_service
    from tests.test_relay_stuck_cancel import A, _ramesh_holds_leg2_nobody_takes

    booking_id, _, leg2 = _ramesh_holds_leg2_nobody_takes(client)
    leg1 = legs_of(booking_id)[0].id
    point_a = legs_of(booking_id)[1].from_point_id
    gita, g_phone = make_partner("Gita", A, point_id=point_a, max_active_legs=2, lang="en",
                                 on_duty=False)
    sms(client, g_phone, "ON")
    freeze_at(60 * 60 + 1 + 121)
    release_scheduled(timedelta(minutes=3))
    run_jobs()
    assert any(o.partner_id == gita and o.status == "open" for o in offers(leg2))
    assert sms(client, g_phone, f"1 {leg2}")[0].startswith(f"Job {leg2} is yours")
    freeze_at(70 * 60)
    other = paid_booking(pickup=A, drop=(A[0] + 0.01, A[1] + 0.01))
    start(other)
    leg_other = legs_of(other)[0].id
    assert [o.partner_id for o in offers(leg_other)] == [gita]
    assert sms(client, g_phone, f"1 {leg_other}")[0].startswith(f"Job {leg_other} is yours")
    seen: list[bool] = []
    original = booking_service.check_leg_otp

    def check(leg, kind, otp):
        if not seen:
            seen.append(_locked_elsewhere(leg1))
        return original(leg, kind, otp)

    monkeypatch.setattr(booking_service, "check_leg_otp", check)
    freeze_at(71 * 60)
    sms(client, g_phone, "PICK 0000")
    assert seen == [True]

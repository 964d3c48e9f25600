"""A partner's lifecycle: signed up (KYC pending), checked and paid to a linked account,
on duty, suspended, erased. Only a partner whose payouts can reach them works; a
suspension is told and holds even when Redis missed it; an erased partner's payout
account is free for their return. (From a review: each test failed on the code it was
written against.)

Set-ups are those of tests/test_dispatch.py: real PostgreSQL, Redis, RQ and the signed SMS
webhook; time frozen through core.clock.
"""

from __future__ import annotations

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from redis.exceptions import RedisError
from sqlalchemy import text

from core import i18n
from core.adapters import geo_index
from core.adapters.db import transaction
from core.adapters.models import PartnerProfile
from core.config import ROOT, get_settings
from tests.test_api import API, sign_in
from tests.test_dispatch import (
    LAXMIPUR,
    OPS,
    bodies_to,
    frozen,  # noqa: F401  (fixture)
    legs_of,
    make_partner,
    offers,
    paid_booking,
    sms,
    start,
)
from tests.test_migrations_live import (  # noqa: F401  (fixtures)
    db,
    engine,
    template,
    upgrade,
)

pytestmark = pytest.mark.db

NEAR = (26.8960, 84.4900)  # some 400 m from the Laxmipur Point


def _profile(partner_id: int, **values: object) -> None:
    """What an operator's sign-up and KYC decision leave on the partner's row."""
    with transaction() as s:
        p = s.get(PartnerProfile, partner_id)
        assert p is not None
        for name, value in values.items():
            setattr(p, name, value)


def _on_duty(partner_id: int) -> bool:
    with transaction() as s:
        p = s.get(PartnerProfile, partner_id)
        assert p is not None
        return p.on_duty


def _offered_to(booking_id: int) -> list[int]:
    return [o.partner_id for o in offers(legs_of(booking_id)[0].id)]


# --- the lead: a partner who cannot be paid works all the same ----------------------------


@pytest.mark.parametrize("channel", ["sms", "app"])
def test_a_partner_whose_kyc_is_pending_cannot_go_on_duty(client, live, frozen,  # noqa: F811
                                                          channel):
    """Ops sign a partner up: KYC pending, off duty, 'they text ON to start' once ops have
    checked their documents (README). Until then Razorpay will not pay their linked
    account, so ON must not make them a rider: they are told (in their language) that they
    can start once their documents are checked, stay off duty and get no job."""
    partner, phone = make_partner("Sunita", LAXMIPUR, lang="hi", on_duty=False,
                                  kyc_status="pending", payout_account="acc_Sunita0001")
    told = i18n.t("dispatch.duty_pending_kyc", "hi", ops_phone=get_settings().ops_phone)
    if channel == "sms":
        answer = sms(client, phone, "ON")
        assert answer == [told], answer
    else:
        r = client.put(f"{API}/partners/me/duty", headers=sign_in(client, phone),
                       json={"on_duty": True})
        assert r.status_code == 403, r.get_json()
        assert r.get_json()["error"]["code"] == "kyc_pending"
        assert r.get_json()["error"]["message"] == told
    assert _on_duty(partner) is False
    booking = paid_booking()
    start(booking)
    assert partner not in _offered_to(booking)


def test_a_verified_partner_without_a_linked_account_cannot_go_on_duty(
        client, live, frozen):  # noqa: F811
    """KYC checked, but signed up without a payout account: no payout could reach them,
    so ON is refused, in their language, saying the account is what is missing."""
    partner, phone = make_partner("Ravi", LAXMIPUR, lang="ta", on_duty=False,
                                  payout_account=None)
    told = i18n.t("dispatch.duty_no_payout_account", "ta",
                  ops_phone=get_settings().ops_phone)
    assert sms(client, phone, "ON") == [told]
    assert _on_duty(partner) is False


@pytest.mark.parametrize("state", [
    {"kyc_status": "pending", "payout_account_id": "acc_Ramesh0001"},
    {"kyc_status": "verified", "payout_account_id": None},
], ids=["kyc_pending", "no_payout_account"])
def test_a_partner_who_cannot_be_paid_is_never_offered_a_job(client, live, frozen,  # noqa: F811
                                                             state):
    """A partner on duty whose KYC is still pending (their linked account is not active
    until it is checked), or who has no linked account at all, would deliver a parcel
    whose payout cannot be transferred to them (payments leaves it 'pending: partner has
    no linked account', or Razorpay refuses it). Dispatch must pass them over: the job
    goes to the verified partner a little farther away, whose money can reach them."""
    unpaid, _ = make_partner("Ramesh", LAXMIPUR, rating_x100=500)
    _profile(unpaid, **state)
    paid, _ = make_partner("Asha", NEAR, rating_x100=400)
    _profile(paid, kyc_status="verified", payout_account_id="acc_Asha00000001")
    booking = paid_booking()
    start(booking)
    offered = _offered_to(booking)
    assert unpaid not in offered and offered == [paid], offered


# --- suspension ------------------------------------------------------------------------------


def test_a_yes_to_the_offer_a_suspension_withdrew_says_they_cannot_take_jobs(
        client, live, frozen):  # noqa: F811
    """Ops suspend a partner (PUT /ops/partners/<id>/kyc) who has just been offered a job.
    The offer is withdrawn without a word to them, so their '1' a minute later is answered
    'you have no offer', and they keep waiting for jobs. They should hear what
    test_dispatch_cancel expects of a suspended partner's yes: they cannot take jobs now,
    and whom to call."""
    partner, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking = paid_booking()
    start(booking)
    assert _offered_to(booking) == [partner]
    r = client.put(f"{API}/ops/partners/{partner}/kyc", headers=sign_in(client, OPS),
                   json={"status": "suspended", "note": "documents expired"})
    assert r.status_code == 200, r.get_json()
    blocked = i18n.t("dispatch.duty_blocked", "en", ops_phone=get_settings().ops_phone)
    assert sms(client, phone, "1") == [blocked]


def test_a_partner_suspended_while_on_duty_is_told_so(client, live, frozen):  # noqa: F811
    """A partner on duty, waiting for offers, is suspended by ops: they are taken off duty
    in silence (only a job taken back is told), so an SMS-only rider sits at the Point
    all day waiting for offers that cannot come. They should get a message saying they
    cannot take jobs now and whom to call."""
    partner, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    before = len(bodies_to(phone))
    r = client.put(f"{API}/ops/partners/{partner}/kyc", headers=sign_in(client, OPS),
                   json={"status": "suspended", "note": "theft reported"})
    assert r.status_code == 200 and r.get_json()["on_duty"] is False, r.get_json()
    told = bodies_to(phone)[before:]
    assert any(get_settings().ops_phone in body for body in told), told


def test_a_suspended_partner_is_not_offered_a_job_when_redis_missed_the_change(
        client, live, frozen, monkeypatch):  # noqa: F811
    """Redis blinks as ops suspend a partner: the commit's after-actions (drop the cached
    dispatch facts, leave the home set) fail, which the code accepts ('the cached facts
    age out instead'). For the next five minutes every search trusts the cached 'on duty'
    and offers the suspended partner jobs by SMS: offer_next_batch locks the chosen
    partners' rows but never reads their duty or KYC there. PostgreSQL is the truth."""
    make_partner("Asha", LAXMIPUR, rating_x100=500)
    partner, _ = make_partner("Ramesh", NEAR, lang="en", rating_x100=400)
    first = paid_booking()
    start(first)  # offered to Asha; the search cached Ramesh's facts (on duty, free)
    assert partner not in _offered_to(first)

    def down(*args, **kwargs):
        raise RedisError("connection reset")

    monkeypatch.setattr(geo_index, "invalidate_facts", down)
    monkeypatch.setattr(geo_index, "remove_home", down)
    r = client.put(f"{API}/ops/partners/{partner}/kyc", headers=sign_in(client, OPS),
                   json={"status": "suspended", "note": "theft reported"})
    assert r.status_code == 200 and r.get_json()["on_duty"] is False, r.get_json()
    monkeypatch.undo()  # Redis is back

    second = paid_booking()
    start(second)
    assert partner not in _offered_to(second)


# --- erasure ---------------------------------------------------------------------------------


def test_a_partner_erased_on_request_can_sign_up_again_with_their_own_payout_account(
        client, live, frozen):  # noqa: F811
    """A partner leaves and asks to be erased (suspended first, nothing owed: the erasure
    goes through). The erased profile keeps its payout_account_id, and with it the unique
    hold on the linked account. When the same rider comes back months later, ops' sign-up
    with their own linked account is refused 409 payout_account_taken, naming a profile
    with no name and no phone that can never work again; and no route can change or free
    an account. Uniqueness is there so that two working partners are not paid to one
    bank; an erased shell is no such partner."""
    partner, phone = make_partner("Ravi", LAXMIPUR, lang="hi", on_duty=False)
    _profile(partner, payout_account_id="acc_Ravi00000001", kyc_status="suspended")
    ops = sign_in(client, OPS)
    r = client.post(f"{API}/ops/partners/{partner}/erase", headers=ops,
                    json={"reason": "the partner's request, by phone"})
    assert r.status_code == 200 and r.get_json()["erased"] is True, r.get_json()
    r = client.post(f"{API}/ops/partners", headers=ops, json={
        "phone": phone, "name": "Ravi Kumar", "language": "hi", "vehicle": "bicycle",
        "payload_kg": 20, "point": "Ravi Point", "payout_account": "acc_Ravi00000001"})
    assert r.status_code == 201, r.get_json()


def test_partners_erased_before_the_release_free_their_payout_accounts(db, engine):  # noqa: F811
    """0024: profiles erased by the previous release still hold their linked account; the
    upgrade frees those (and only those: a suspended partner who is not erased keeps
    theirs, ops may reinstate them)."""
    before = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_revision(
        "0024").down_revision
    assert isinstance(before, str)
    upgrade(db, before)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO people (id, phone, name, wa_id, role, opted_out) VALUES "
            "(11, NULL, NULL, NULL, 'partner', false), "
            "(12, '+919800000012', 'Asha', NULL, 'partner', false)"))
        conn.execute(text(
            "INSERT INTO partner_profiles (id, person_id, first_name, on_duty, has_app, "
            "rating_x100, offers_received, offers_accepted, trust_tier, max_active_legs, "
            "kyc_status, payout_account_id) VALUES "
            "(11, 11, '', false, false, 450, 0, 0, 1, 2, 'suspended', 'acc_erased0011'), "
            "(12, 12, 'Asha', false, true, 450, 0, 0, 1, 2, 'suspended', 'acc_asha000012')"))
        conn.execute(text("UPDATE partner_profiles SET payout_account_id = 'acc_ravi000001' "
                          "WHERE id = 1"))
    upgrade(db, "0024")
    with engine.connect() as conn:
        accounts = dict(conn.execute(text(
            "SELECT id, payout_account_id FROM partner_profiles ORDER BY id")).all())
    assert accounts == {1: "acc_ravi000001", 11: None, 12: "acc_asha000012"}


def test_a_partner_on_duty_whose_kyc_ops_put_back_to_pending_is_told_and_not_left_on_duty(
        client, live, frozen):  # noqa: F811
    """Ops find a verified rider's documents need checking again (PUT .../kyc pending) while
    he waits on duty at his Point. A pending partner is offered no job (not payable), but
    ops_partner_kyc took only a suspended or rejected partner off duty (block_partner): he
    stayed ON duty, nothing was sent to him, and STATUS answered 'No job now. You are ON
    duty.' (found by a review of session 19's commits). An SMS-only rider waits all day
    for offers that cannot come. He should hear what a pending partner's ON hears
    (duty_pending_kyc), and STATUS must not tell him he is on duty waiting for jobs."""
    partner, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    before = len(bodies_to(phone))
    r = client.put(f"{API}/ops/partners/{partner}/kyc", headers=sign_in(client, OPS),
                   json={"status": "pending", "note": "licence photo unreadable"})
    assert r.status_code == 200, r.get_json()
    booking = paid_booking()
    start(booking)
    assert partner not in [o.partner_id for o in offers(legs_of(booking)[0].id)]
    told = i18n.t("dispatch.duty_pending_kyc", "en", ops_phone=get_settings().ops_phone)
    sent = bodies_to(phone)[before:]
    status = sms(client, phone, "STATUS")
    assert told in sent, sent
    assert status != [i18n.t("dispatch.status_none_on", "en")], status


def test_partners_the_previous_release_left_working_with_kyc_pending_are_not_left_on_duty(
        db, engine):  # noqa: F811
    """Before session 19 'pending partners work, as before': riders signed up with KYC
    pending went ON and took jobs. Without a step for them (migration 0026), after the
    upgrade they were still on duty, every offer pass leaves them out
    (kyc_status = 'verified' is asked), and nobody tells them. A partner who cannot be
    paid should not be left on duty by the upgrade (a verified one with an account is
    untouched)."""
    upgrade(db, "0023")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO people (id, phone, name, role, opted_out) VALUES "
            "(21, '+919800000021', 'Sunita', 'partner', false), "
            "(22, '+919800000022', 'Asha', 'partner', false)"))
        conn.execute(text(
            "INSERT INTO partner_profiles (id, person_id, first_name, on_duty, has_app, "
            "rating_x100, offers_received, offers_accepted, trust_tier, max_active_legs, "
            "kyc_status, payout_account_id) VALUES "
            "(21, 21, 'Sunita', true, false, 450, 3, 3, 1, 2, 'pending', 'acc_sunita00021'), "
            "(22, 22, 'Asha', true, false, 450, 3, 3, 1, 2, 'verified', 'acc_asha0000022')"))
    upgrade(db, "heads")
    with engine.connect() as conn:
        duty = dict(conn.execute(text(
            "SELECT id, on_duty FROM partner_profiles WHERE id IN (21, 22)")).all())
    assert duty == {21: False, 22: True}


# --- b211910: migration 0023 locks the ledger while it validates ----------------------------

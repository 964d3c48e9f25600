"""Offers that never reach their rider, and late answers to an offer that just expired.

1. An SMS-only rider whose offer SMS Twilio cannot deliver (phone off) no longer holds each
   job near him for the offer's time: the offer is withdrawn at Twilio's word (not counted
   against him) and the job goes on at once; UNREACHED_OFFERS_OFF such offers in a row put
   him OFF silently (ops see why in the audit log) until he is heard from again.
2. A bare yes or no come seconds after a new offer was made, when his offer before it
   expired just before that, answers the expired one late: never the new one.

Through RQ (run_jobs / release_scheduled), the signed webhooks and the sandbox's status
callbacks; the clock is frozen, never slept.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.dispatch_models import PartnerEvent
from core.adapters.models import OutboxMessage, PartnerProfile
from core.adapters.redis_conn import redis_client
from core.domain import dispatch as rules
from core.services import dispatch
from tests.conftest import release_scheduled, run_jobs
from tests.test_dispatch import (  # noqa: F401  (frozen: fixture)
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
from tests.test_notice_review import cannot_deliver

pytestmark = pytest.mark.db
FAR = (26.90, 84.49)


def _profile(partner_id: int) -> PartnerProfile:
    with transaction() as s:
        p = s.get(PartnerProfile, partner_id)
        s.expunge(p)
        return p


def _offer_sms_to(phone: str) -> list[OutboxMessage]:
    with transaction() as s:
        rows = list(s.scalars(select(OutboxMessage).where(
            OutboxMessage.to_addr == phone).order_by(OutboxMessage.id)))
        for r in rows:
            s.expunge(r)
        return rows


def _unreached_job(client, near: int, far: int, far_phone: str, t: int) -> int:  # noqa: ANN001
    """A booking near both riders: its first offer goes to ``near``, whose SMS the sandbox
    reports undelivered; the job goes to ``far`` at once, who takes it. The leg's id."""
    freeze_at(t)
    b = paid_booking()
    start(b)  # the offer goes out, and its status callback comes: undelivered
    leg = legs_of(b)[0].id
    first, second = offers(leg)[:2]
    assert first.partner_id == near
    assert first.status == rules.OfferStatus.WITHDRAWN.value
    # Not its 90 s and 30 s grace: at once, the clock not moved.
    assert second.partner_id == far and second.offered_at == first.offered_at
    assert sms(client, far_phone, f"1 {leg}")
    assert legs_of(b)[0].status == "assigned"
    return leg


def test_an_offer_that_never_reached_its_rider_stops_holding_the_job(client, live, frozen):  # noqa: F811
    near, near_phone = make_partner("Near", LAXMIPUR, lang="en")
    far, far_phone = make_partner("Far", FAR, lang="en", max_active_legs=50)
    cannot_deliver(near_phone, "undelivered", "30003")  # his phone is off
    for k in range(dispatch.UNREACHED_OFFERS_OFF - 1):
        _unreached_job(client, near, far, far_phone, k * 300)
        p = _profile(near)
        assert p.on_duty and p.offers_received == 0, "an offer he never had is not his"
    _unreached_job(client, near, far, far_phone, 900)
    p = _profile(near)
    assert not p.on_duty and p.offers_received == 0
    # Told nothing (no SMS reaches him): only the offers went to his number.
    assert all(r.dedupe_key.startswith("offer-") and r.dedupe_key.count("-") == 1
               for r in _offer_sms_to(near_phone))
    with transaction() as s:  # ops see why
        audit = s.scalar(select(AuditEntry).where(
            AuditEntry.action == dispatch.UNREACHED_OFF_AUDIT,
            AuditEntry.target == f"partner:{near}"))
        assert audit is not None and audit.details["offers"] == dispatch.UNREACHED_OFFERS_OFF
        kinds = list(s.scalars(select(PartnerEvent.kind).where(
            PartnerEvent.partner_id == near).order_by(PartnerEvent.id)))
        assert kinds[-2:] == ["duty_off", "auto_off"]
    # Off, he holds up no job: the next one's first offer is Far's.
    freeze_at(1200)
    b = paid_booking()
    start(b)
    assert [o.partner_id for o in offers(legs_of(b)[0].id)] == [far]
    # His phone is back: any SMS from him shows it, and he is ON again (no SMS about it).
    redis_client().hdel("sandbox:twilio:undelivered_to", near_phone)
    freeze_at(1300)
    sms(client, near_phone, "STATUS")
    run_jobs()
    assert _profile(near).on_duty
    b = paid_booking()
    start(b)
    leg = legs_of(b)[0].id
    assert offers(leg)[-1].partner_id == near and offers(leg)[-1].status == "open"


def test_one_unreached_offer_is_not_a_miss_and_a_delivered_one_breaks_the_run(
        client, live, frozen):  # noqa: F811
    near, near_phone = make_partner("Near", LAXMIPUR, lang="en")
    far, far_phone = make_partner("Far", FAR, lang="en", max_active_legs=50)
    cannot_deliver(near_phone, "undelivered", "30003")
    for k in range(dispatch.UNREACHED_OFFERS_OFF - 1):
        _unreached_job(client, near, far, far_phone, k * 300)
    redis_client().hdel("sandbox:twilio:undelivered_to", near_phone)
    freeze_at(900)
    b = paid_booking()
    start(b)  # this one reaches him; he lets it expire
    leg = legs_of(b)[0].id
    assert offers(leg)[0].partner_id == near and offers(leg)[0].status == "open"
    freeze_at(1021)
    release_scheduled(timedelta(seconds=121))
    run_jobs()
    assert offers(leg)[0].status == rules.OfferStatus.EXPIRED.value
    sms(client, far_phone, f"1 {leg}")  # the job went on to Far
    cannot_deliver(near_phone, "undelivered", "30003")
    _unreached_job(client, near, far, far_phone, 1200)
    p = _profile(near)
    assert p.on_duty and p.offers_received == 1  # the one he had


def test_off_sent_while_put_off_unreached_stays_off(client, live, frozen):  # noqa: F811
    near, near_phone = make_partner("Near", LAXMIPUR, lang="en")
    far, far_phone = make_partner("Far", FAR, lang="en", max_active_legs=50)
    cannot_deliver(near_phone, "undelivered", "30003")
    for k in range(dispatch.UNREACHED_OFFERS_OFF):
        _unreached_job(client, near, far, far_phone, k * 300)
    assert not _profile(near).on_duty
    freeze_at(1300)
    sms(client, near_phone, "OFF")  # his own OFF: not undone by his SMS being heard
    run_jobs()
    assert not _profile(near).on_duty
    sms(client, near_phone, "ON")
    run_jobs()
    assert _profile(near).on_duty


def _late_answer_setup(client) -> tuple[int, str, int, int, int]:
    a, a_phone = make_partner("Asha", LAXMIPUR, lang="en")
    b1 = paid_booking()
    start(b1)
    x = legs_of(b1)[0].id
    assert offers(x)[0].partner_id == a
    freeze_at(121)  # offer X's 90 s and 30 s grace are over
    release_scheduled(timedelta(seconds=121))
    run_jobs()
    assert offers(x)[0].status == rules.OfferStatus.EXPIRED.value
    freeze_at(122)
    b2 = paid_booking()
    start(b2)  # another booking: offer Y to Asha, a second after X closed
    y = legs_of(b2)[0].id
    assert offers(y)[-1].partner_id == a and offers(y)[-1].status == "open"
    return a, a_phone, x, y, b2


@pytest.mark.parametrize("word", ["1", "2", "CANCEL"])
def test_a_late_answer_to_an_expired_offer_is_not_taken_for_the_new_one(client, live, frozen,  # noqa: F811
                                                                       word):
    a, a_phone, x, y, b2 = _late_answer_setup(client)
    freeze_at(124)  # Asha's answer to X, typed as its time ran out, arrives now
    reply = sms(client, a_phone, word)
    assert reply == [i18n.t("dispatch.answered_then_offer", "en", job=str(x), offered=y)]
    assert offers(y)[-1].status == "open" and legs_of(b2)[0].status == "offering"
    late = offers(x)[0]  # answered late, not missed
    assert late.status == rules.OfferStatus.EXPIRED.value and late.responded_at is None
    # Naming the new job answers it.
    sms(client, a_phone, f"1 {y}")
    assert legs_of(b2)[0].status == "assigned" and legs_of(b2)[0].partner_id == a


def test_a_bare_yes_after_the_window_takes_the_new_offer(client, live, frozen):  # noqa: F811
    a, a_phone, x, y, b2 = _late_answer_setup(client)
    freeze_at(122 + 31)  # past LATE_BEFORE_NEW (30 s) after Y was made
    sms(client, a_phone, "1")
    assert legs_of(b2)[0].status == "assigned" and legs_of(b2)[0].partner_id == a

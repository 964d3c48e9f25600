"""Session 39: Twilio's refusals of the rider's number itself count as his phone's.

An offer SMS refused because his number is not a valid one (21211), cannot be routed
(21612), cannot take SMS (21614) or is a landline (21635) never reached him, for a reason
of his number, not of our side: UNREACHED_OFFERS_OFF such offers in a row put him OFF as
30003 does (HANDSET_SMS_ERRORS). Our side's failures still put nobody OFF
(test_dispatch_rnew5_s38).

A rider put OFF as unreached was never told (nothing reached him then), and if his phone
came back without his writing to us he stayed OFF for good, waiting for jobs. One SMS
tells him an hour after, and another a day after (UNREACHED_PROBES), never at night,
and none once that OFF no longer holds him."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage, PartnerProfile, Point
from core.adapters.queue import QUEUES
from core.domain import dispatch as rules
from core.domain.booking import Actor
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
from tests.test_dispatch_s38 import _unreached_job
from tests.test_notice_review import cannot_deliver
from tests.test_ops_s30 import drop_code_night  # noqa: F401  (fixture)

pytestmark = pytest.mark.db
FAR = (26.90, 84.49)


@pytest.mark.parametrize("code", ["21211", "21614", "21635"])
def test_a_number_twilio_refuses_puts_its_rider_off(client, live, frozen, code):  # noqa: F811
    near, near_phone = make_partner("Near", LAXMIPUR, lang="en")
    far, far_phone = make_partner("Far", FAR, lang="en", max_active_legs=50)
    cannot_deliver(near_phone, "failed", code)
    for k in range(dispatch.UNREACHED_OFFERS_OFF):
        freeze_at(k * 300)
        b = paid_booking()
        start(b)
        leg = legs_of(b)[0].id
        first = offers(leg)[0]
        assert (first.partner_id, first.status) == (near, rules.OfferStatus.WITHDRAWN.value)
        assert sms(client, far_phone, f"1 {leg}")
    with transaction() as s:
        assert not s.get(PartnerProfile, near).on_duty, f"{code}: still ON"


def _probes(phone: str) -> list[tuple[str, str]]:
    with transaction() as s:
        return [(r.dedupe_key, r.body) for r in s.scalars(
            select(OutboxMessage).where(OutboxMessage.to_addr == phone,
                                        OutboxMessage.dedupe_key.like("unreached-probe-%"))
            .order_by(OutboxMessage.id))]


def _put_off_unreached(client, start_s: int):  # noqa: ANN001, ANN202
    near, near_phone = make_partner("Near", LAXMIPUR, lang="hi")
    far, far_phone = make_partner("Far", FAR, lang="en", max_active_legs=50)
    cannot_deliver(near_phone, "undelivered", "30003")
    for k in range(dispatch.UNREACHED_OFFERS_OFF):
        _unreached_job(client, near, far, far_phone, start_s + k * 300)
    with transaction() as s:
        assert not s.get(PartnerProfile, near).on_duty
    return near, near_phone


def _after(seconds: float) -> None:
    """Let ``seconds`` of the service clock pass, and RQ's scheduler with it."""
    release_scheduled(timedelta(seconds=seconds))
    run_jobs(QUEUES)


def test_a_rider_put_off_unreached_is_told_an_hour_and_a_day_after(client, live, frozen):  # noqa: F811
    near, near_phone = _put_off_unreached(client, 0)  # OFF at 600 s, 12:10 India time
    _after(3300)
    assert _probes(near_phone) == [], "told before the hour"
    freeze_at(600 + 3600)
    _after(3900)
    text = i18n.t("dispatch.off_unreached_probe", "hi")
    assert [b for _, b in _probes(near_phone)] == [text]
    freeze_at(600 + 86400)
    _after(86400 + 600)
    assert [b for _, b in _probes(near_phone)] == [text, text]
    freeze_at(600 + 4 * 86400)
    _after(4 * 86400)
    assert len(_probes(near_phone)) == 2, "told more than twice"
    # His phone works again: his reply puts him back ON (as any SMS of his does).
    from core.adapters.redis_conn import redis_client

    redis_client().hdel("sandbox:twilio:undelivered_to", near_phone)
    sms(client, near_phone, "ON")
    with transaction() as s:
        assert s.get(PartnerProfile, near).on_duty


def test_no_word_once_the_rider_is_back_on(client, live, frozen):  # noqa: F811
    near, near_phone = _put_off_unreached(client, 0)
    freeze_at(1200)
    sms(client, near_phone, "STATUS")  # heard from: back ON
    run_jobs()
    with transaction() as s:
        assert s.get(PartnerProfile, near).on_duty
    freeze_at(600 + 2 * 86400)
    _after(2 * 86400 + 600)
    assert _probes(near_phone) == []


def test_the_word_waits_for_the_morning(client, live, frozen, drop_code_night):  # noqa: F811
    # OFF at 21:40 India time (16:10 UTC): an hour later is night (21:00-07:00).
    night = 10 * 3600
    near, near_phone = _put_off_unreached(client, night)
    _after(2 * 3600)
    assert _probes(near_phone) == [], "woken at night"
    freeze_at(night + 600 + 9 * 3600 + 20 * 60)  # 07:00 India time
    _after(9 * 3600 + 20 * 60 + 120)
    assert len(_probes(near_phone)) == 1


def test_21612_puts_nobody_off(client, live, frozen):  # noqa: F811
    """21612 (not reachable from our sending number) is our sender's set-up as much as his
    number: every rider alike; it frees the job, and counts for nothing."""
    near, near_phone = make_partner("Near", LAXMIPUR, lang="en")
    far, far_phone = make_partner("Far", FAR, lang="en", max_active_legs=50)
    cannot_deliver(near_phone, "failed", "21612")
    for k in range(dispatch.UNREACHED_OFFERS_OFF):
        freeze_at(k * 300)
        b = paid_booking()
        start(b)
        leg = legs_of(b)[0].id
        assert offers(leg)[0].status == rules.OfferStatus.WITHDRAWN.value
        assert sms(client, far_phone, f"1 {leg}")
    with transaction() as s:
        assert s.get(PartnerProfile, near).on_duty


@pytest.mark.parametrize("status", ["suspended", "rejected"])
def test_no_word_to_a_rider_ops_blocked_since(client, live, frozen, status):  # noqa: F811
    """Blocked by ops after the OFF (review rnew1), he keeps the unreached OFF as his last
    duty event; "send ON to get jobs again" would be false (his ON is refused)."""
    near, near_phone = _put_off_unreached(client, 0)
    freeze_at(900)
    with transaction() as s:  # as PUT /ops/partners/<id>/kyc does
        s.get(PartnerProfile, near).kyc_status = status
        dispatch.block_partner(s, near, Actor("ops", "1"))
    freeze_at(600 + 86400)
    _after(86400 + 600)
    assert _probes(near_phone) == []


def test_no_word_while_his_points_are_closed_and_one_once_he_can_go_on(client, live, frozen):  # noqa: F811
    """Review rnew3: his ON is refused with no open Point (placed_nowhere) as it is when
    blocked; no "send ON" then. Ops open a Point again within the day: the day's word
    comes (a skipped word leaves the next one due)."""
    near, near_phone = _put_off_unreached(client, 0)
    freeze_at(900)
    with transaction() as s:
        s.execute(update(Point).values(active=False))
    freeze_at(600 + 3600)
    _after(3900)
    assert _probes(near_phone) == []
    freeze_at(600 + 7200)
    with transaction() as s:
        s.execute(update(Point).values(active=True))
    freeze_at(600 + 86400)
    _after(86400)
    assert [b for _, b in _probes(near_phone)] == [
        i18n.t("dispatch.off_unreached_probe", "hi")]


def test_a_probe_run_that_failed_is_tried_again(client, live, frozen, monkeypatch):  # noqa: F811
    """Review rworker: the next probe is scheduled only by a run of this one, so one failed
    run (PostgreSQL restarting) ended the chain and he was never told. It is retried."""
    from sqlalchemy.exc import OperationalError

    near, near_phone = _put_off_unreached(client, 0)  # OFF at 600 s
    real = dispatch._on_refused
    calls = {"n": 0}

    def blip(session, partner):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return real(session, partner)

    monkeypatch.setattr(dispatch, "_on_refused", blip)
    freeze_at(600 + 3600)
    _after(3900)
    assert calls["n"] == 1 and _probes(near_phone) == []
    freeze_at(600 + 3600 + 60)
    _after(120)  # the retry's 30 s
    assert [b for _, b in _probes(near_phone)] == [
        i18n.t("dispatch.off_unreached_probe", "hi")]

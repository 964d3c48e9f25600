"""A partner who lets DISPATCH_MISSED_OFFERS_OFF offers in a row expire unanswered is put
OFF duty (as if they had sent OFF) and told once by SMS in their language: a partner very
close to every pickup would otherwise get each job's first offer and cost it the offer's
two minutes. Any answer (yes or no) breaks the run; a job in hand stays theirs.

Offers expire through the real paths: the timeout job released with the clock moved, or
the sweep when that job was lost."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.dispatch_models import PartnerEvent
from core.adapters.models import Leg, PartnerProfile
from core.adapters.queue import queue
from core.config import ConfigError, load_settings
from core.domain import dispatch as rules
from core.services import dispatch
from tests.conftest import release_scheduled, run_jobs
from tests.test_dispatch import (
    LAXMIPUR,
    bodies_to,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    legs_of,
    make_partner,
    offers,
    paid_booking,
    sms,
    start,
)

pytestmark = pytest.mark.db

FAR = (26.90, 84.49)  # ~1 km from Laxmipur: offered each job after the near partner


@pytest.fixture
def missed_setting(monkeypatch):
    """Set DISPATCH_MISSED_OFFERS_OFF for one test (None: the default)."""

    def set_to(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv("DISPATCH_MISSED_OFFERS_OFF", raising=False)
        else:
            monkeypatch.setenv("DISPATCH_MISSED_OFFERS_OFF", value)
        dispatch.reset_config()

    set_to(None)
    yield set_to
    monkeypatch.delenv("DISPATCH_MISSED_OFFERS_OFF", raising=False)
    dispatch.reset_config()


def on_duty(partner_id: int) -> bool:
    with transaction() as s:
        return s.get(PartnerProfile, partner_id).on_duty


def events(partner_id: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(PartnerEvent.kind).where(
            PartnerEvent.partner_id == partner_id).order_by(PartnerEvent.id)))


def a_job(client, k: int, near: int, near_phone: str, far_phone: str, *,
          near_says: str | None = None, lost_timeout: bool = False) -> int:
    """Job ``k``: a paid booking offered first to the near partner (if on duty), who lets
    it expire (the timeout job, or the sweep when ``lost_timeout``) or answers
    ``near_says``; the far partner then takes it. Returns the leg id."""
    t = k * 300
    freeze_at(t)
    booking_id = paid_booking()
    start(booking_id)
    leg_id = legs_of(booking_id)[0].id
    first = offers(leg_id)[0]
    if first.partner_id == near:
        if near_says is not None:
            sms(client, near_phone, near_says)
        elif lost_timeout:
            queue("default").fetch_job(f"offer-timeout-{first.id}").delete()
            freeze_at(t + 200)
            assert dispatch.sweep()["expired"] == 1
        else:
            freeze_at(t + 121)  # the offer's 90 s and its 30 s grace are over
            release_scheduled(timedelta(seconds=121))
            run_jobs()
        assert offers(leg_id)[0].status != rules.OfferStatus.OPEN.value
    if legs_of(booking_id)[0].status == "offering":
        assert offers(leg_id)[-1].status == rules.OfferStatus.OPEN.value
        sms(client, far_phone, "1")
        assert legs_of(booking_id)[0].status == "assigned"
    return leg_id


def near_and_far(lang: str = "en") -> tuple[int, str, str]:
    near, near_phone = make_partner("Near", LAXMIPUR, lang=lang)
    _, far_phone = make_partner("Far", FAR, max_active_legs=50)
    return near, near_phone, far_phone


def test_three_offers_left_to_expire_put_the_partner_off_duty(
        client, live, frozen, missed_setting):  # noqa: F811
    near, near_phone, far_phone = near_and_far()
    for k in (1, 2):
        a_job(client, k, near, near_phone, far_phone)
        assert on_duty(near)
    assert not any("OFF duty" in b for b in bodies_to(near_phone))
    a_job(client, 3, near, near_phone, far_phone)
    assert not on_duty(near)
    # As set_duty records an OFF (the duty history), and why, for ops.
    assert events(near) == ["duty_off", "auto_off"]
    told = [b for b in bodies_to(near_phone) if "OFF duty" in b]
    assert told == [i18n.t("dispatch.auto_off", "en", n=3)]
    assert "3 job offers in a row" in told[0] and "Send ON" in told[0]
    # No more offers: the next job goes straight to the far partner, and no second SMS.
    leg_id = a_job(client, 4, near, near_phone, far_phone)
    assert near not in {o.partner_id for o in offers(leg_id)}
    assert len([b for b in bodies_to(near_phone) if "OFF duty" in b]) == 1
    # Back ON, the run starts again: one more miss does not put them off at once.
    assert "ON duty" in sms(client, near_phone, "ON")[0]
    a_job(client, 5, near, near_phone, far_phone)
    assert on_duty(near)


def test_a_no_breaks_the_run(client, live, frozen, missed_setting):  # noqa: F811
    near, near_phone, far_phone = near_and_far()
    a_job(client, 1, near, near_phone, far_phone)
    a_job(client, 2, near, near_phone, far_phone)
    leg_id = a_job(client, 3, near, near_phone, far_phone, near_says="2")
    assert offers(leg_id)[0].status == rules.OfferStatus.DECLINED.value  # not "missed"
    a_job(client, 4, near, near_phone, far_phone)
    a_job(client, 5, near, near_phone, far_phone)
    assert on_duty(near)  # two missed since the no
    a_job(client, 6, near, near_phone, far_phone)
    assert not on_duty(near)


def test_a_yes_breaks_the_run_and_a_job_in_hand_stays_theirs(
        client, live, frozen, missed_setting):  # noqa: F811
    near, near_phone, far_phone = near_and_far()
    a_job(client, 1, near, near_phone, far_phone)
    a_job(client, 2, near, near_phone, far_phone)
    mine = a_job(client, 3, near, near_phone, far_phone, near_says="1")
    with transaction() as s:
        assert s.get(PartnerProfile, near).offers_accepted == 1
    a_job(client, 4, near, near_phone, far_phone)
    a_job(client, 5, near, near_phone, far_phone)
    assert on_duty(near)
    a_job(client, 6, near, near_phone, far_phone)
    assert not on_duty(near)
    with transaction() as s:
        leg = s.get(Leg, mine)
        assert (leg.partner_id, leg.status) == (near, "assigned")  # still theirs
    told = [b for b in bodies_to(near_phone) if "OFF duty" in b]
    assert told == [i18n.t("dispatch.auto_off_job", "en", n=3, job=mine)]
    assert f"Job {mine} is still yours" in told[0]
    # STATUS lists it as theirs.
    assert f"Job {mine}" in sms(client, near_phone, "STATUS")[0]


def test_setting_zero_never_puts_anyone_off(client, live, frozen, missed_setting):  # noqa: F811
    missed_setting("0")
    near, near_phone, far_phone = near_and_far()
    for k in range(1, 6):
        a_job(client, k, near, near_phone, far_phone)
    assert on_duty(near)
    assert "auto_off" not in events(near)
    assert not any("OFF duty" in b for b in bodies_to(near_phone))


def test_the_sweep_expiring_lost_timeouts_counts_too_in_hindi(
        client, live, frozen, missed_setting):  # noqa: F811
    missed_setting("2")
    near, near_phone, far_phone = near_and_far(lang="hi")
    a_job(client, 1, near, near_phone, far_phone, lost_timeout=True)
    assert on_duty(near)
    a_job(client, 2, near, near_phone, far_phone, lost_timeout=True)
    assert not on_duty(near)
    assert events(near) == ["duty_off", "auto_off"]
    told = [b for b in bodies_to(near_phone) if "ON भेजें" in b]
    assert told == [i18n.t("dispatch.auto_off", "hi", n=2)]
    assert "लगातार 2 जॉब" in told[0] and "ड्यूटी से बाहर" in told[0]


@pytest.mark.parametrize("value", ["-1", "x", "101"])
def test_a_bad_setting_is_refused(monkeypatch, missed_setting, value):
    missed_setting(value)
    with pytest.raises(rules.DispatchConfigError):
        dispatch.missed_offers_off()
    with pytest.raises(ConfigError, match="DISPATCH_MISSED_OFFERS_OFF"):
        load_settings()

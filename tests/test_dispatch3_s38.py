"""Session 38 (hdisp3), riders put OFF because our offer SMS never reached them.

1. His first SMS back (STATUS, HELP, anything) answered "you are OFF" while a job put him
   back ON a second later: he is put back ON in the same turn, and his answer says so
   first (dispatch.back_on_reached); his OFF still means OFF.
2. A late "undelivered" for the very offer whose expiry put him OFF for missed offers
   (told by SMS) made that OFF look like an unreached one: any SMS put him back ON.
3. The last offer of an unreached run, reported while he had another offer open, was
   never counted again when that other offer expired without a word of his phone.

Through RQ (run_jobs / release_scheduled), the signed webhooks and the sandbox's status
callbacks; the clock is frozen, never slept.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage
from core.adapters.queue import QUEUES, enqueue
from core.adapters.redis_conn import redis_client
from core.domain import dispatch as rules
from core.domain.text import fits_two_sms_parts
from core.services import dispatch
from sandbox import jobs as twilio_jobs
from sandbox.twilio import STATUS_QUEUE, queue_status_report
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
from tests.test_dispatch_s38 import FAR, _profile, _unreached_job
from tests.test_missed_offers import events, missed_setting  # noqa: F401  (fixture)
from tests.test_notice_review import cannot_deliver

pytestmark = pytest.mark.db
LANGS = ("en", "hi", "bn", "gu", "kn", "mr", "ta", "te")


def _held_off(client, lang: str = "en") -> tuple[int, str, int, str]:
    """Near's offer SMS never reach him, three in a row: OFF, told nothing."""
    near, near_phone = make_partner("Near", LAXMIPUR, lang=lang)
    far, far_phone = make_partner("Far", FAR, lang="en", max_active_legs=50)
    cannot_deliver(near_phone, "undelivered", "30003")
    for k in range(dispatch.UNREACHED_OFFERS_OFF):
        _unreached_job(client, near, far, far_phone, k * 300)
    assert not _profile(near).on_duty
    redis_client().hdel(twilio_jobs.UNDELIVERED_TO_KEY, near_phone)  # his phone is back
    freeze_at(1300)
    return near, near_phone, far, far_phone


@pytest.mark.parametrize("word", ["STATUS", "HELP", "kya haal hai", "UNSTOP"])
def test_his_first_sms_back_is_answered_with_the_truth(client, live, frozen, word):  # noqa: F811
    near, near_phone, _, _ = _held_off(client)
    reply = sms(client, near_phone, word)
    # ON now, in this turn (no job to wait for), and told so first.
    assert _profile(near).on_duty
    assert reply[0] == i18n.t("dispatch.back_on_reached", "en"), reply
    assert i18n.t("dispatch.status_none_off", "en") not in reply
    run_jobs()
    assert _profile(near).on_duty
    # Told once: his next SMS is answered as ever.
    assert sms(client, near_phone, "STATUS") == [i18n.t("dispatch.status_none_on", "en")]


def test_the_back_on_line_in_his_language(client, live, frozen):  # noqa: F811
    near, near_phone, _, _ = _held_off(client, lang="hi")
    reply = sms(client, near_phone, "STATUS")
    assert reply == [i18n.t("dispatch.back_on_reached", "hi")]
    assert _profile(near).on_duty


@pytest.mark.parametrize("lang", LANGS)
def test_the_back_on_line_fits_two_sms_parts(lang):
    text = i18n.t("dispatch.back_on_reached", lang)
    assert text != "dispatch.back_on_reached" and fits_two_sms_parts(text)


def test_his_off_is_still_off_and_told_nothing_else(client, live, frozen):  # noqa: F811
    near, near_phone, _, _ = _held_off(client)
    reply = sms(client, near_phone, "OFF")
    assert i18n.t("dispatch.back_on_reached", "en") not in reply
    run_jobs()
    assert not _profile(near).on_duty


def _offer_sent_report_held(near: int, t: int) -> tuple[int, list[bytes]]:
    """A booking whose first offer goes to ``near``: its SMS is sent, the carrier's
    report held back (the sandbox's queue set aside). (leg, held report sids)."""
    freeze_at(t)
    b = paid_booking()
    enqueue("workers.dispatch.start_dispatch", b, job_id=f"dispatch-{b}")
    run_jobs(QUEUES)
    r = redis_client()
    held = r.lrange(STATUS_QUEUE, 0, -1)
    r.delete(STATUS_QUEUE)
    leg = legs_of(b)[0].id
    assert offers(leg)[0].partner_id == near and offers(leg)[0].status == "open"
    return leg, held


def _expire_first(leg: int, t: int) -> None:
    freeze_at(t + 121)  # its 90 s and 30 s grace are over
    release_scheduled(timedelta(seconds=121))
    run_jobs(QUEUES)
    assert offers(leg)[0].status == rules.OfferStatus.EXPIRED.value


def _report_late(held: list[bytes]) -> None:
    for sid in held:
        queue_status_report(sid.decode())
    run_jobs()


def test_a_late_undelivered_report_keeps_a_missed_offers_off(
        client, live, frozen, missed_setting):  # noqa: F811
    """Three offers reached Near and he let them expire: OFF, told by SMS. Only then
    does the carrier report the third undelivered: his next SMS of any kind (not ON)
    leaves him OFF."""
    near, near_phone = make_partner("Near", LAXMIPUR, lang="en")
    _, far_phone = make_partner("Far", FAR, lang="en", max_active_legs=50)
    n = dispatch.missed_offers_off()
    for k in range(n):
        leg, held = _offer_sent_report_held(near, k * 300)
        _expire_first(leg, k * 300)
        if k < n - 1:
            _report_late(held)  # delivered
        sms(client, far_phone, f"1 {leg}")
    assert not _profile(near).on_duty
    assert events(near)[-1] == "auto_off"
    cannot_deliver(near_phone, "undelivered", "30003")
    _report_late(held)  # the last offer's SMS: undelivered, reported late
    redis_client().hdel(twilio_jobs.UNDELIVERED_TO_KEY, near_phone)
    freeze_at(n * 300 + 100)
    reply = sms(client, near_phone, "STATUS")
    run_jobs()
    assert not _profile(near).on_duty, reply
    assert reply == [i18n.t("dispatch.status_none_off", "en")]
    sms(client, near_phone, "ON")
    assert _profile(near).on_duty


def test_an_unreached_run_closed_while_another_offer_was_open_still_counts(
        client, live, frozen):  # noqa: F811
    """Two offers never reached Near; the third (X) expired with its report not yet in,
    and offer Y went to him. Y's SMS failed on our side (Twilio 30001: no word of his
    phone): Y is withdrawn at once (it frees the job) and neither counts nor breaks the
    run. X's report (undelivered) then comes: the run of three is his, and he is put
    OFF."""
    near, near_phone = make_partner("Near", LAXMIPUR, lang="en")
    far, far_phone = make_partner("Far", FAR, lang="en", max_active_legs=50)
    cannot_deliver(near_phone, "undelivered", "30003")
    for k in range(dispatch.UNREACHED_OFFERS_OFF - 1):
        _unreached_job(client, near, far, far_phone, k * 300)
    redis_client().hdel(twilio_jobs.UNDELIVERED_TO_KEY, near_phone)
    x, held = _offer_sent_report_held(near, 900)
    _expire_first(x, 900)
    sms(client, far_phone, f"1 {x}")
    # Y: its SMS fails on our side at once.
    cannot_deliver(near_phone, "failed", "30001")
    freeze_at(1030)
    b = paid_booking()
    start(b)
    y = legs_of(b)[0].id
    assert offers(y)[0].partner_id == near
    assert offers(y)[0].status == rules.OfferStatus.WITHDRAWN.value  # freed at once
    with transaction() as s:
        row = s.scalar(select(OutboxMessage).where(
            OutboxMessage.dedupe_key == f"offer-{offers(y)[0].id}"))
        assert (row.status, row.error_code) == ("failed", "30001")
    assert _profile(near).on_duty  # our side's failure: no count
    # X's late report.
    cannot_deliver(near_phone, "undelivered", "30003")
    _report_late(held)
    redis_client().hdel(twilio_jobs.UNDELIVERED_TO_KEY, near_phone)
    assert not _profile(near).on_duty, "the run of three unreached offers was lost"
    with transaction() as s:
        from core.adapters.api_models import AuditEntry

        assert s.scalar(select(AuditEntry).where(
            AuditEntry.action == dispatch.UNREACHED_OFF_AUDIT,
            AuditEntry.target == f"partner:{near}")) is not None


@pytest.mark.parametrize("word", ["STOP", "Stop.", "STOP!", "stop please", "CANCEL"])
def test_asking_to_stop_leaves_him_off(client, live, frozen, word):  # noqa: F811
    """Review rnew7: held OFF as unreached, he asks us to stop ("Stop." is no opt-out for
    Twilio: the hint says send STOP alone; a bare CANCEL may be Twilio's): not put back ON,
    nor told he is."""
    near, near_phone, _, _ = _held_off(client)
    reply = sms(client, near_phone, word)
    run_jobs()
    assert not _profile(near).on_duty, reply
    assert i18n.t("dispatch.back_on_reached", "en") not in reply, reply

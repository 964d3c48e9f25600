"""Session 38, review rnew5 of dff861a: offers that never reached the rider.

- An offer SMS our side failed (Twilio 30001: our queue overflowed; 30007: our text
  filtered) counted as never reaching his phone: three such put him OFF, silently, and a
  fleet-wide outage would put every SMS-only rider OFF. Only errors of his handset count.
- A bare "1" to a new offer, when the offer before it expired and its SMS was reported
  undelivered only after, was taken for a late answer to the offer he never had.
"""
from __future__ import annotations

from datetime import timedelta

import pytest

from core.adapters.db import transaction
from core.adapters.models import PartnerProfile
from core.adapters.queue import QUEUES, enqueue
from core.adapters.redis_conn import redis_client
from core.domain import dispatch as rules
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
from tests.test_notice_review import cannot_deliver

pytestmark = pytest.mark.db
FAR = (26.90, 84.49)


def _on(pid):
    with transaction() as s:
        return s.get(PartnerProfile, pid).on_duty


def test_a_yes_to_the_new_offer_is_its_when_the_old_one_never_reached_him(client, live, frozen):  # noqa: F811
    """Offer X's SMS is reported undelivered only after X expired (a late report, common
    on Indian carriers). X never reached Asha; a second later offer Y reaches her and she
    answers "1" 2 s later: it is Y's."""
    a, a_phone = make_partner("Asha", LAXMIPUR, lang="en")
    b1 = paid_booking()
    enqueue("workers.dispatch.start_dispatch", b1, job_id=f"dispatch-{b1}")
    run_jobs(QUEUES)  # offer X sent; the carrier's report not yet in
    x = legs_of(b1)[0].id
    assert offers(x)[0].partner_id == a and offers(x)[0].status == "open"
    freeze_at(121)
    release_scheduled(timedelta(seconds=121))
    run_jobs(QUEUES)
    assert offers(x)[0].status == rules.OfferStatus.EXPIRED.value
    cannot_deliver(a_phone, "undelivered", "30003")
    run_jobs()  # the late report: X's SMS never reached her
    redis_client().hdel("sandbox:twilio:undelivered_to", a_phone)
    assert _on(a)
    freeze_at(122)
    b2 = paid_booking()
    start(b2)  # offer Y: delivered
    y = legs_of(b2)[0].id
    assert offers(y)[-1].partner_id == a and offers(y)[-1].status == "open"
    freeze_at(124)
    reply = sms(client, a_phone, "1")
    # She answered the only offer she ever saw: it should be hers.
    assert legs_of(b2)[0].status == "assigned", reply


def test_our_side_sms_failures_put_nobody_off(client, live, frozen):  # noqa: F811
    """Twilio 30001 (our account's queue overflowed): nothing about his phone; three such
    offers leave him ON duty, as before dff861a."""
    near, near_phone = make_partner("Near", LAXMIPUR, lang="en")
    far, far_phone = make_partner("Far", FAR, lang="en", max_active_legs=50)
    cannot_deliver(near_phone, "failed", "30001")
    for k in range(dispatch.UNREACHED_OFFERS_OFF):
        freeze_at(k * 300)
        b = paid_booking()
        start(b)
        leg = legs_of(b)[0].id
        sms(client, far_phone, f"1 {leg}")
    redis_client().hdel("sandbox:twilio:undelivered_to", near_phone)  # fixed on our side
    freeze_at(1200)
    b = paid_booking()
    start(b)
    assert _on(near), "put OFF for our own sending failure"


# --- review rnew6 of the above: our side's failures still free the job -----------------


@pytest.mark.parametrize("code", ["30003", "30007", "30001"])
def test_an_offer_sms_failed_for_any_reason_frees_the_job(client, live, frozen, code):  # noqa: F811
    """He never had the offer, whoever failed it: it is withdrawn and the next rider is
    asked at once (only his handset's failures count towards putting him OFF)."""
    near, near_phone = make_partner("Near", LAXMIPUR, lang="en")
    far, _ = make_partner("Far", FAR, lang="en", max_active_legs=50)
    cannot_deliver(near_phone, "failed", code)
    freeze_at(0)
    b = paid_booking()
    start(b)
    got = [(o.partner_id, o.status) for o in offers(legs_of(b)[0].id)]
    assert got[0] == (near, rules.OfferStatus.WITHDRAWN.value), got
    assert len(got) > 1 and got[1][0] == far, got

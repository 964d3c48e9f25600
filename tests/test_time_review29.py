"""Review r1: time and deadlines.

Late jobs that act on what changed meanwhile, deadlines that cut across one another, and
one part of the service that judges by its own clock what another judges by the time the
user wrote. The clock is frozen and moved (core.clock); RQ's scheduled jobs are released
as its scheduler would release them; a worker "down for a while" is simply a queue not
run until the clock has moved on.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock
from core.adapters.db import transaction
from core.adapters.dispatch_models import PodPhoto
from core.adapters.models import OutboxMessage
from core.adapters.queue import enqueue
from core.services import dispatch
from tests.conftest import post_twilio, replies_to, run_jobs
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    T0,
    booking_status,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    offers,
    paid_booking,
    sms,
    start,
)

pytestmark = pytest.mark.db

PICK_MARK = "पार्सल उठाने"  # the pickup-code message of a Hindi customer


def _photo_message(phone: str, sid: str, url: str) -> dict[str, str]:
    return {"MessageSid": sid, "From": f"whatsapp:{phone}", "To": "whatsapp:+1", "Body": "",
            "NumMedia": "1", "MediaUrl0": url, "MediaContentType0": "image/jpeg",
            "WaId": phone[1:]}


# --- 1. a doorstep photo drained after a backlog ------------------------------------------


def test_a_doorstep_photo_drained_late_is_the_proof_of_its_own_drop(client, live, frozen):  # noqa: F811
    """Ramesh delivers parcel 1 and at once sends the doorstep photo on WhatsApp. The
    chat's drainer runs late (a worker restarting, a backlog: 12 minutes here), and by
    then he has taken and picked up his next parcel. The photo is judged at the drain's
    time, not at the time he sent it (conversation._partner_photo -> dispatch.pod_leg_of
    uses clock.now(), while whatsapp_turn takes the message's own time for everything
    else): customer 1's doorstep photo is filed as a pickup photo under customer 2's
    booking, and booking 1 has no proof of delivery. It must be filed as it would have
    been when he sent it: the proof of leg 1."""
    from sandbox.twilio import store_media

    _, phone = make_partner("Ramesh", LAXMIPUR)
    first = paid_booking()
    start(first)
    sms(client, phone, "1")
    sms(client, phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    sms(client, phone, f"DROP {last_code(RECIPIENT)}")
    leg1 = legs_of(first)[0]
    assert leg1.status == "delivered"

    freeze_at(60)  # a minute after the drop: the doorstep photo
    photo = b"\xff\xd8\xff\xe0" + b"doorstep-of-booking-1" * 20
    params = _photo_message(phone, "SMrev1pod1", store_media(photo, "image/jpeg"))
    r = post_twilio(client, "/webhooks/whatsapp", params)
    assert r.status_code == 200
    # The drainer does not run yet. Ramesh takes his next job and picks it up.
    second = paid_booking()
    freeze_at(3 * 60)
    enqueue("workers.dispatch.start_dispatch", second, job_id=f"dispatch-{second}")
    run_jobs(("default",))
    leg2 = legs_of(second)[0]
    assert [o.partner_id for o in offers(leg2.id)]
    sms(client, phone, f"1 {leg2.id}")
    sms(client, phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    assert legs_of(second)[0].status == "picked_up"

    freeze_at(12 * 60)  # the drainer gets to the photo now
    run_jobs(("inbound",))
    answer = "\n".join(replies_to("SMrev1pod1"))
    assert f"जॉब {leg1.id} " in answer, answer  # "got the photo of job <leg 1>"
    run_jobs()  # the photo's download job
    with transaction() as s:
        filed = {p.leg_id for p in s.scalars(select(PodPhoto))}
    assert legs_of(first)[0].pod_photo_url, "booking 1 has no proof of delivery"
    assert filed == {leg1.id}, "customer 1's doorstep photo was filed under booking 2"


def test_a_photo_sent_with_the_parcel_in_hand_and_drained_after_the_drop_is_no_proof(
        client, live, frozen):  # noqa: F811
    """The other way round: Ramesh sends a photo while he carries parcel 1, the drainer
    gets to it after his DROP. It was taken before the code was checked, so it is kept as
    a pickup photo of leg 1, not its proof of delivery (attach_pod's rule)."""
    from sandbox.twilio import store_media

    _, phone = make_partner("Ramesh", LAXMIPUR)
    first = paid_booking()
    start(first)
    sms(client, phone, "1")
    sms(client, phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    freeze_at(60)  # on the road, parcel in hand
    photo = b"\xff\xd8\xff\xe0" + b"parcel-on-the-bike" * 20
    params = _photo_message(phone, "SMrev1pick1", store_media(photo, "image/jpeg"))
    assert post_twilio(client, "/webhooks/whatsapp", params).status_code == 200
    freeze_at(5 * 60)
    sms(client, phone, f"DROP {last_code(RECIPIENT)}")
    leg1 = legs_of(first)[0]
    assert leg1.status == "delivered"

    freeze_at(6 * 60)  # the drainer, late
    run_jobs(("inbound",))
    assert f"जॉब {leg1.id} " in "\n".join(replies_to("SMrev1pick1"))
    run_jobs()
    with transaction() as s:
        filed = [p.leg_id for p in s.scalars(select(PodPhoto))]
    assert filed == [leg1.id]
    assert legs_of(first)[0].pod_photo_url is None, "a photo from before the drop is no proof"


# --- 2. the search deadline and an offer still in its time ---------------------------------


def _offer_out_at_the_deadline(client) -> tuple[int, int, int, str, int]:
    """An express booking whose search offers Suresh the job at 19:40 (90 s to answer,
    past its 20-minute deadline): (booking, leg, Suresh, his phone, the offer)."""
    from core.domain.pricing import SpeedTier

    _, ramesh_phone = make_partner("Ramesh", LAXMIPUR)
    suresh, suresh_phone = make_partner("Suresh", (26.895, 84.49), on_duty=False)
    booking_id = paid_booking(tier=SpeedTier.EXPRESS)
    start(booking_id)
    leg = legs_of(booking_id)[0]
    sms(client, ramesh_phone, "NO")  # nobody else near: the search waits for its next try
    assert booking_status(booking_id) == "dispatching"

    freeze_at(19 * 60 + 39)
    sms(client, suresh_phone, "ON")
    freeze_at(19 * 60 + 40)
    assert dispatch.continue_search(leg.id) == "continued"  # the next try finds Suresh
    (offer,) = [o for o in offers(leg.id) if o.partner_id == suresh]
    assert offer.status == "open"
    assert offer.expires_at == T0 + timedelta(minutes=19, seconds=40 + 90)
    return booking_id, leg.id, suresh, suresh_phone, offer.id


def test_the_search_deadline_does_not_take_back_an_offer_still_in_its_time(
        client, live, frozen):  # noqa: F811
    """An express booking (20 minutes to find a rider). The only rider near says no; at
    19:40 Suresh comes on duty and the search's next try offers him the job, telling him
    (SMS, and the app's expires_at / expires_in_s) that he has 90 seconds to answer. At
    20:00 the deadline job fires while his offer is still open: it withdraws the offer
    (dispatch._fail_search), fails the booking and refunds it. Suresh's "1" at 20:30, well
    inside the time he was given, hears the job is cancelled, and the customer, whose
    rider was about to say yes, loses the booking. An offer that is out is honoured for
    the time it gave: the deadline applies when it closes unanswered (_maybe_continue
    already fails the search then), or no offer goes out that would outlive it."""
    booking_id, leg_id, suresh, suresh_phone, _ = _offer_out_at_the_deadline(client)

    freeze_at(20 * 60 + 1)
    dispatch.search_deadline(leg_id, 1)  # as its job dispatch-deadline-<leg>-1 does
    freeze_at(20 * 60 + 30)  # 50 s into the 90 s he was given
    reply = sms(client, suresh_phone, "1")
    leg = legs_of(booking_id)[0]
    assert (leg.status, leg.partner_id) == ("assigned", suresh), reply
    assert booking_status(booking_id) == "assigned"


def test_the_search_fails_when_the_offer_out_at_its_deadline_closes_unanswered(
        client, live, frozen):  # noqa: F811
    """Suresh lets that offer run out: the deadline job that found it open left the search
    to it, and its end (here the sweep's, its timeout job lost) fails the booking, as the
    deadline would have."""
    booking_id, leg_id, suresh, _, offer_id = _offer_out_at_the_deadline(client)
    freeze_at(20 * 60 + 1)
    assert dispatch.search_deadline(leg_id, 1) == "offers-open"
    assert booking_status(booking_id) == "dispatching"

    freeze_at(19 * 60 + 40 + 90 + 30 + 1)  # his 90 s and the grace are over
    assert dispatch.sweep()["expired"] == 1
    assert {o.id: o.status for o in offers(leg_id)}[offer_id] == "expired"
    assert (legs_of(booking_id)[0].status, booking_status(booking_id)) == ("failed", "failed")


# --- 3. an offer's SMS sent after the offer is over ----------------------------------------


def _offer_sms(offer_id: int) -> OutboxMessage:
    with transaction() as s:
        row = s.scalar(select(OutboxMessage).where(
            OutboxMessage.dedupe_key == f"offer-{offer_id}"))
        assert row is not None
        s.expunge(row)
        return row


def test_an_offer_sms_is_not_sent_once_the_offer_s_time_is_over(client, live, frozen):  # noqa: F811
    """The offer SMS ("new job, reply 1 to take it") waits in the outbox while the worker
    is away (a restart, a deploy; or its send failed and waits for a retry: 10 s, 30 s,
    2 min, 10 min, 30 min). When the worker comes back, the outbox queue goes first and
    the SMS goes out minutes after the offer's 90 s and its grace are over (its timeout
    job runs right after, on the default queue). Ramesh reads a job he can no longer
    take, and the offer is counted as one he let expire (it feeds the auto-OFF after
    three). The outbox holds back a sign-in code past its life and booking news that
    newer news replaced; an offer past its time must not go either."""
    ramesh, _ = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    enqueue("workers.dispatch.start_dispatch", booking_id, job_id=f"dispatch-{booking_id}")
    run_jobs(("default",))  # the offer is made; its SMS waits for the outbox worker
    (offer,) = offers(legs_of(booking_id)[0].id)
    assert offer.partner_id == ramesh
    assert _offer_sms(offer.id).status == "pending"

    freeze_at(10 * 60)  # the worker is back ten minutes later
    run_jobs(("outbox",))
    row = _offer_sms(offer.id)
    # Twilio took it ("queued", then sent and delivered), ten minutes late.
    assert row.status not in ("sending", "queued", "sent", "delivered", "read"), (
        "an offer ten minutes past its time was sent to the rider")


def test_an_offer_sms_in_its_time_is_sent(client, live, frozen):  # noqa: F811
    """The same SMS with the offer still open and in its time goes out as ever."""
    booking_id = paid_booking()
    make_partner("Ramesh", LAXMIPUR)
    enqueue("workers.dispatch.start_dispatch", booking_id, job_id=f"dispatch-{booking_id}")
    run_jobs(("default",))
    (offer,) = offers(legs_of(booking_id)[0].id)
    freeze_at(60)  # 30 s before its time is over
    run_jobs(("outbox",))
    assert _offer_sms(offer.id).status in ("sending", "queued", "sent", "delivered")


# --- 4. the app's payment link past the time to pay ----------------------------------------


def test_the_app_is_not_given_a_payment_link_whose_time_to_pay_is_over(client, live):
    """A customer books in the app and does not pay in the 30 minutes. Past the booking's
    time to pay, the chat and the phone say the time is over and give no link
    (conversation.payment_link, ivr.payment_over), and the gateway refuses the link (its
    expire_by is that same moment). GET /bookings/<ref> still answers the link as
    ``payment_url`` (payments.payment_urls looks at the status only) until the sweep
    closes the booking: a minute at least, an hour while the gateway does not answer,
    as long as the workers are away. The app shows a Pay button that leads to "this link
    has expired". Past expires_at the API must not hand out the link."""
    import requests

    from core.adapters.models import Point
    from tests.test_api import API, BETTIAH, LAXMIPUR, PARCEL, sign_in

    with transaction() as s:
        s.add(Point(name="Bettiah", lat=26.80228, lng=84.51522, pincode="845438",
                    active=True))
    t0 = clock.now()
    clock.freeze(t0)
    customer = sign_in(client, "+919812300031")
    made = client.post(f"{API}/bookings", headers={**customer, "Idempotency-Key": "rev1-a"},
                       json={"pickup": LAXMIPUR, "drop": BETTIAH, "parcel": PARCEL,
                             "tier": "standard",
                             "recipient": {"name": "Gita", "phone": "+919812300032"}})
    assert made.status_code == 201, made.get_json()
    ref = made.get_json()["reference"]
    run_jobs()  # the link is made and sent
    url = client.get(f"{API}/bookings/{ref}", headers=customer).get_json()["payment_url"]
    assert url

    clock.freeze(t0 + timedelta(minutes=30, seconds=20))  # past the time to pay
    assert requests.post(url + "/pay", timeout=10).status_code != 200  # the gateway: expired
    shown = client.get(f"{API}/bookings/{ref}", headers=customer).get_json()
    assert shown["payment_url"] is None, "the app is given a link that can no longer be paid"


# --- 5. the sweep back after an outage: a taken job not picked up ----------------------------


def test_a_rider_is_warned_before_his_job_is_taken_back_when_the_sweep_ran_late(
        client, live, frozen):  # noqa: F811
    """Ramesh takes a job at 00:00. DISPATCH_PICKUP_MINUTES is 60: at 01:00 he should be
    reminded ("go now, or send CANCEL"), the customer told the rider is late, and only at
    02:00, an hour after that warning, the job taken from him (it counts against him).
    The workers are away from 00:50 to 02:05 (a bad deploy). The first sweep back finds
    the job past twice the window and takes it back at once (_LATE_PICKUPS: "unless due
    to be taken back"; pickup_late: waited >= 2 x window): Ramesh, who was never warned,
    loses the job and his record takes the hit; the customer hears "a new rider" without
    ever hearing the first one was late. The warning must come first, and the take-back
    a window after it."""
    from core import i18n

    ramesh, phone = make_partner("Ramesh", LAXMIPUR)
    make_partner("Suresh", (26.895, 84.49))
    booking_id = paid_booking()
    start(booking_id)
    assert "आपका है" in sms(client, phone, "1")[0]
    job = str(legs_of(booking_id)[0].id)
    told = len(_bodies(phone))

    freeze_at(125 * 60)  # the first sweep after the outage
    dispatch.sweep()
    leg = legs_of(booking_id)[0]
    assert _bodies(phone)[told:told + 1] == [i18n.t("dispatch.pickup_late", "hi", job=job)], (
        "taken back without the reminder")
    assert (leg.status, leg.partner_id) == ("assigned", ramesh)

    freeze_at(184 * 60)  # not yet a window after the reminder
    assert dispatch.sweep()["taken_back"] == 0
    assert legs_of(booking_id)[0].partner_id == ramesh
    freeze_at(185 * 60)
    assert dispatch.sweep()["taken_back"] == 1
    leg = legs_of(booking_id)[0]
    assert (leg.status, leg.partner_id) == ("offering", None)
    assert _bodies(phone)[told + 1:] == [i18n.t("dispatch.taken_back", "hi", job=job)]


def test_a_reminder_sent_before_reminders_were_dated_still_leads_to_the_take_back(
        client, live, frozen):  # noqa: F811
    """A job reminded by the release before (its messages, no ``pickup_reminded`` event):
    it counts as reminded when it was due, and the job goes back at twice the window."""
    from core.adapters.dispatch_models import PartnerEvent

    ramesh, phone = make_partner("Ramesh", LAXMIPUR)
    make_partner("Suresh", (26.895, 84.49))
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    freeze_at(61 * 60)
    assert dispatch.sweep()["late_pickups"] == 1
    with transaction() as s:  # as the previous release left it
        s.execute(PartnerEvent.__table__.delete().where(
            PartnerEvent.kind == dispatch.PICKUP_REMINDED))
    said = len(_bodies(phone))
    freeze_at(90 * 60)
    done = dispatch.sweep()
    assert (done["late_pickups"], done["taken_back"]) == (0, 0)  # not reminded again
    assert len(_bodies(phone)) == said and legs_of(booking_id)[0].partner_id == ramesh
    freeze_at(121 * 60)
    assert dispatch.sweep()["taken_back"] == 1
    assert legs_of(booking_id)[0].partner_id is None


def _bodies(phone: str) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr.in_([phone, f"whatsapp:{phone}"]))
            .order_by(OutboxMessage.id)))

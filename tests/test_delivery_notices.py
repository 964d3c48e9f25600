"""What customers and recipients are told as a delivery goes (review of delivery notices).

1. A parcel not delivered in the hours its speed tier promised: only ops were told
   (core.services.dispatch.delivery_late); the customer heard nothing. They hear it once,
   in their language, and what happens next.
2. A recipient we do not know who texts our SMS number heard where her parcel is in Hindi,
   though the sender reads another language (and her drop code came in the sender's):
   the booking's rule for the recipient's language holds (her own, else the sender's).
3. A partner's WhatsApp photo sent while carrying the parcel became the leg's proof of
   delivery; as in the app (commit fb7d881) it is kept as a pickup photo, and only a photo
   sent after the drop (within the hour) is the proof, however late its download runs.
4. A lost drop code that could be sent to nobody voided the old one, so the recipient
   whose late SMS arrives after all could not use it (as pickup_code_lost already does,
   the old code stays when nothing can carry a new one).
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.dispatch_models import PodPhoto
from core.adapters.models import Booking, Person
from core.adapters.queue import QUEUES
from core.services import dispatch
from tests.conftest import run_jobs, send_whatsapp
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    OPS,
    RECIPIENT,
    bodies_to,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    make_point,
    paid_booking,
    sms,
    start,
)
from tests.test_dispatch_relay import A, B, D, P
from tests.test_notice_review import (
    cannot_deliver,
    codes_in,
    customer_speaks,
    passed_on,
    recipient_code_row,
)
from tests.test_relay_review import GIVE_MARK, PICK_MARK, TAKE_MARK

pytestmark = pytest.mark.db

PICK_MARK_EN = "at pickup"  # the pickup-code SMS of an English customer


def ref_of(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).reference


def late_notice(booking_id: int, lang: str, hours: int = 8) -> str:
    return i18n.t("dispatch.customer_delivery_late", lang, ref=ref_of(booking_id), hours=hours)


# --- 1. a delivery later than the tier promised -------------------------------------------


def test_the_customer_hears_once_that_the_parcel_is_late(client, live, frozen):  # noqa: F811
    """Meena (Tamil) booked standard (8 hours). Ramesh picked the parcel up and, eight
    hours on, has not delivered it: ops were alerted, Meena heard nothing."""
    _, rider = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    customer_speaks("ta")
    start(booking_id)
    sms(client, rider, "1")
    freeze_at(10 * 60)
    sms(client, rider, f"PICK {last_code(CUSTOMER)}")
    picked = len(bodies_to(CUSTOMER))
    freeze_at(10 * 60 + 8 * 3600 - 60)
    assert dispatch.sweep()["late_deliveries"] == 0
    assert len(bodies_to(CUSTOMER)) == picked  # not yet late: nothing
    freeze_at(10 * 60 + 8 * 3600 + 60)
    assert dispatch.sweep()["late_deliveries"] == 1
    told = late_notice(booking_id, "ta")
    assert bodies_to(CUSTOMER)[picked:] == [told], "the customer was not told it is late"
    assert ref_of(booking_id) in told and "8" in told
    for hours in (9, 24):  # once
        freeze_at(hours * 3600)
        dispatch.sweep()
    assert bodies_to(CUSTOMER)[picked:] == [told]


def test_a_relay_late_on_two_legs_tells_the_customer_once(client, live, frozen):  # noqa: F811
    """P -A- B - D: the parcel is past its hours while Asha holds it, and still when Bala
    does. Ops hear of each leg (each rider is someone to call); the customer, whose
    promise is one, once."""
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    _, b_phone = make_partner("Bala", B, point_id=point_b, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    sms(client, a_phone, "1")
    sms(client, r_phone, f"DROP {last_code(a_phone, TAKE_MARK)}")  # Asha holds it
    freeze_at(8 * 3600 + 60)
    assert dispatch.sweep()["late_deliveries"] == 1
    told = late_notice(booking_id, "hi")
    assert bodies_to(CUSTOMER).count(told) == 1
    sms(client, a_phone, f"PICK {last_code(r_phone, GIVE_MARK)}")
    sms(client, b_phone, "1")
    sms(client, a_phone, f"DROP {last_code(b_phone, TAKE_MARK)}")  # Bala holds it
    freeze_at(8 * 3600 + 120)
    assert dispatch.sweep()["late_deliveries"] == 1
    leg3 = legs_of(booking_id)[2]
    assert i18n.t("dispatch.ops_delivery_late", "hi", ref=ref_of(booking_id),
                  job=str(leg3.id), hours=8) in bodies_to(OPS)
    assert bodies_to(CUSTOMER).count(told) == 1, "the customer was told twice"


# --- 2. a recipient we do not know, in the sender's language ------------------------------


def test_an_unknown_recipient_hears_of_her_parcel_in_the_senders_language(
        client, live, frozen):  # noqa: F811
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    customer_speaks("bn")
    start(booking_id)
    assert sms(client, rider, "1")
    ref = ref_of(booking_id)
    (code_sms,) = bodies_to(RECIPIENT)
    assert code_sms.startswith(i18n.t("dispatch.drop_otp", "bn", ref=ref, otp="0000")[:20])
    coming = i18n.t("sms.recipient_coming_code_sent", "bn", ref=ref)
    assert sms(client, RECIPIENT, "kab?") == [coming]


def test_a_recipient_with_her_own_language_hears_it_in_hers(client, live,
                                                            frozen):  # noqa: F811
    # Guard: her own language, when we know it, comes before the sender's.
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    customer_speaks("bn")
    with transaction() as s:
        s.add(Person(phone=RECIPIENT, role="customer", preferred_language="mr"))
    start(booking_id)
    assert sms(client, rider, "1")
    assert sms(client, RECIPIENT, "kab?") == [
        i18n.t("sms.recipient_coming_code_sent", "mr", ref=ref_of(booking_id))]


# --- 3. a WhatsApp photo before the drop is no proof --------------------------------------


def photo_on_whatsapp(client, phone: str, photo: bytes, sid: str) -> str:
    """Ramesh sends a photo on WhatsApp (its download job is queued, not run)."""
    from sandbox.twilio import store_media

    params = {"MessageSid": sid, "From": f"whatsapp:{phone}", "To": "whatsapp:+1",
              "Body": "", "NumMedia": "1", "MediaUrl0": store_media(photo, "image/jpeg"),
              "MediaContentType0": "image/jpeg", "WaId": phone[1:]}
    return send_whatsapp(client, params)


def photos_of(leg_id: int) -> list[PodPhoto]:
    with transaction() as s:
        rows = list(s.scalars(select(PodPhoto).where(PodPhoto.leg_id == leg_id)
                              .order_by(PodPhoto.id)))
        for r in rows:
            s.expunge(r)
        return rows


@pytest.fixture
def photo_store(tmp_path, monkeypatch):
    from core.adapters import storage

    monkeypatch.setenv("POD_LOCAL_DIR", str(tmp_path))
    storage.reset()
    yield
    storage.reset()


def test_a_whatsapp_photo_while_carrying_is_a_pickup_photo_not_the_proof(
        client, live, frozen, photo_store):  # noqa: F811
    """Ramesh photographs the parcel on his bike and sends it on WhatsApp: it was taken
    as the proof that the parcel reached the door. It is kept (a pickup photo); the photo
    he sends after the drop is the proof."""
    _, rider = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    sms(client, rider, "1")
    sms(client, rider, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    leg_id = legs_of(booking_id)[0].id
    before = b"\xff\xd8\xff\xe0" + b"on-the-bike" * 20
    assert str(leg_id) in photo_on_whatsapp(client, rider, before, "SMpodb1")
    run_jobs()
    (kept,) = photos_of(leg_id)
    assert legs_of(booking_id)[0].pod_photo_url is None, (
        "a photo taken before the drop became the proof of delivery")
    assert "/pickup/" in kept.storage_uri
    sms(client, rider, f"DROP {last_code(RECIPIENT)}")
    freeze_at(20 * 60)
    after = b"\xff\xd8\xff\xe0" + b"at-the-door" * 20
    assert str(leg_id) in photo_on_whatsapp(client, rider, after, "SMpodb2")
    run_jobs()
    proof = photos_of(leg_id)[-1]
    assert legs_of(booking_id)[0].pod_photo_url == proof.storage_uri != kept.storage_uri


def test_a_photo_sent_before_the_drop_and_fetched_after_it_is_no_proof(
        client, live, frozen, photo_store):  # noqa: F811
    """The photo's download job runs after the DROP (the queue is busy, Twilio's media
    slow): it was still taken before the drop."""
    _, rider = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    sms(client, rider, "1")
    sms(client, rider, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    leg_id = legs_of(booking_id)[0].id
    photo_on_whatsapp(client, rider, b"\xff\xd8\xff\xe0" + b"on-the-bike" * 20, "SMpodr1")
    sms(client, rider, f"DROP {last_code(RECIPIENT)}")
    assert legs_of(booking_id)[0].status == "delivered"
    run_jobs()  # the download, after the drop
    assert len(photos_of(leg_id)) == 1
    assert legs_of(booking_id)[0].pod_photo_url is None, (
        "a photo sent before the drop became its proof because it was fetched after it")


# --- 4. a lost drop code that reaches nobody leaves the old one working -------------------


def test_a_drop_code_lost_to_nobody_stays_the_one_that_works(client, live,
                                                             frozen):  # noqa: F811
    """Sita's drop-code SMS is reported undelivered (her phone was off); Meena stopped our
    SMS and has no WhatsApp: a new code can reach nobody. The old one was voided anyway,
    so when Sita's phone comes on and the SMS arrives after all, her code does not work."""
    cannot_deliver(RECIPIENT, "undelivered", "30003")
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    customer_speaks("en")
    start(booking_id)
    assert sms(client, rider, "1")
    run_jobs(QUEUES)  # the codes go out; Twilio's report comes later
    pick = last_code(CUSTOMER, PICK_MARK_EN)
    with transaction() as s:
        s.scalar(select(Person).where(Person.phone == CUSTOMER)).sms_opted_out = True
    run_jobs()  # Twilio's report: undelivered
    row = recipient_code_row(booking_id)
    assert row.status == "undelivered" and passed_on(booking_id) == []
    (old,) = codes_in([row.body])
    assert "picked up" in sms(client, rider, f"PICK {pick}")[0]
    assert "delivered" in sms(client, rider, f"DROP {old}")[0], (
        "the only code anyone may hold was voided for a new one sent to nobody")


def test_a_drop_code_lost_and_passed_on_voids_the_old_one(client, live,
                                                          frozen):  # noqa: F811
    # Guard: when the new code reaches the sender, the lost one is void as before.
    cannot_deliver(RECIPIENT, "undelivered", "30003")
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    customer_speaks("en")
    start(booking_id)
    assert sms(client, rider, "1")
    run_jobs()
    (old,) = codes_in([recipient_code_row(booking_id).body])
    (new,) = codes_in(passed_on(booking_id))
    assert "picked up" in sms(client, rider, f"PICK {last_code(CUSTOMER, PICK_MARK_EN)}")[0]
    if old != new:
        assert "delivered" not in sms(client, rider, f"DROP {old}")[0]
    assert "delivered" in sms(client, rider, f"DROP {new}")[0]

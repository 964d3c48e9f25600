"""A rider's WhatsApp sticker is no proof of delivery.

WhatsApp sends a sticker as an image (image/webp, Twilio's MediaContentType0), and a
photo from the phone's camera as image/jpeg. _partner_photo filed any image from a rider
with a drop as the proof: a thumbs-up sticker after the drop was fetched, stored as the
leg's proof of delivery, and he was told "photo received for job N". Now a sticker is
answered as any media the chat cannot open, and nothing is filed; his camera photo is.
Through the signed WhatsApp webhook, RQ and the sandbox's Twilio media.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core import i18n
from core.adapters.db import transaction
from core.adapters.dispatch_models import PodPhoto
from tests.conftest import run_jobs, send_whatsapp
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    paid_booking,
    sms,
    start,
)

pytestmark = pytest.mark.db


def test_a_sticker_after_the_drop_is_not_filed_as_its_proof(client, live, frozen) -> None:  # noqa: F811
    from sandbox.twilio import store_media

    _, phone = make_partner("Ramesh", LAXMIPUR)
    booking_id = paid_booking()
    start(booking_id)
    sms(client, phone, "1")
    sms(client, phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    sms(client, phone, f"DROP {last_code(RECIPIENT)}")
    leg = legs_of(booking_id)[0]
    filed = i18n.t("dispatch.pod_received", "hi", job=leg.id)

    def send(sid: str, content: bytes, kind: str) -> str:
        return send_whatsapp(client, {
            "MessageSid": sid, "From": f"whatsapp:{phone}", "To": "whatsapp:+1", "Body": "",
            "NumMedia": "1", "MediaUrl0": store_media(content, kind),
            "MediaContentType0": kind, "WaId": phone[1:]})

    said = send("SMsticker1", b"RIFF\x00\x00\x00\x00WEBPVP8 thumbs-up", "image/webp")
    assert filed not in said, said
    run_jobs()
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(PodPhoto)
                        .where(PodPhoto.leg_id == leg.id)) == 0
    assert legs_of(booking_id)[0].pod_photo_url is None

    said = send("SMphoto1", b"\xff\xd8\xff\xe0" + b"proof-jpeg" * 20, "image/jpeg")
    assert filed in said, said  # his camera photo still is
    run_jobs()
    assert legs_of(booking_id)[0].pod_photo_url

"""Review r13: who can see or change what (REST routes, chat and phone paths, partners,
public URLs). Each test asserts the behaviour that should be, and fails on the code as
reviewed.

Checked and sound (no test): every booking route (GET, track, cancel, dry run, rating)
answers another customer's booking exactly as a booking that does not exist (404
not_found, before any idempotency key is kept); the chat's and the phone's track, cancel,
rate, link and pickup-code ports all go through SessionPorts._mine; the partner routes
(offers, accept, decline, give-back, pickup, drop, photo) answer 404 for another rider's
offer or leg; a recipient texting us hears only her parcel's status.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from core import i18n
from core.adapters.db import transaction
from core.adapters.dispatch_models import PodPhoto
from core.adapters.models import OutboxMessage
from core.adapters.queue import QUEUES, queue
from core.dialog import spoken
from core.services import dispatch, outbox
from ivr_flows import audio
from sandbox.twilio import store_media
from tests.conftest import run_jobs, send_whatsapp
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    freeze_at,
    frozen,  # noqa: F401 (fixture)
    last_code,
    legs_of,
    make_partner,
    paid_booking,
    sms,
    start,
)
from tests.test_ivr import Caller, prompts  # noqa: F401 (fixture)
from tests.test_ivr_more import heard_code, jobs, track_first
from tests.test_notice_review import customer_speaks, ref_of

pytestmark = pytest.mark.db


def _pickup_code_rows(booking_id: int) -> list[OutboxMessage]:
    with transaction() as s:
        rows = list(s.scalars(select(OutboxMessage).where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.dedupe_key.like("leg-%-pickotp-%")).order_by(OutboxMessage.id)))
        for row in rows:
            s.expunge(row)
        return rows


def _render_texts() -> list[str]:
    """The texts of the prompt renders queued for gTTS (RQ jobs on the renders' queue)."""
    return [str(job.args) for name in QUEUES for job in queue(name).get_jobs()
            if job.func_name == audio.RENDER_JOB]


# --- 1. a pickup code heard on the phone, then the old one by SMS -------------------------


def test_a_pickup_code_read_on_the_phone_withdraws_the_old_codes_sms_still_waiting(
        client, live, frozen, prompts):  # noqa: F811
    """Meena booked by phone; Ramesh took the job, and the SMS with her pickup code waits
    in the outbox (Twilio slow or away: no worker has sent it yet). She calls, tracks the
    booking and hears a new pickup code ("the old code no longer works"). The waiting SMS
    carries the old, now void code: sent after the call, it tells her "give code <old> to
    the rider", which fails at PICK and costs the rider's tries. A new code made by ops,
    or by send_leg_codes, withdraws the old code's waiting messages first
    (outbox.withdraw_leg_codes); ivr.read_pickup_code does not."""
    booking_id = paid_booking()
    customer_speaks("en")
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en")
    start(booking_id)
    assert sms(client, rider, "1")  # accepted: the pickup code SMS is queued, not sent
    [waiting] = _pickup_code_rows(booking_id)
    assert waiting.status == "pending"
    old = re.findall(r"(?<!\d)\d{4}(?!\d)", waiting.body)[-1]

    caller = Caller(client, CUSTOMER)
    track_first(caller)
    new = heard_code(caller.press("1"), ref_of(booking_id))
    caller.hang_up()
    jobs()  # the worker gets to the outbox after the call (no gTTS renders here)

    with transaction() as s:
        row = s.get(OutboxMessage, waiting.id)
        assert (row.status, row.last_error) == ("failed", outbox.LEG_CODE_REPLACED), (
            f"the SMS with the void code {old} was {row.status} after the caller heard "
            f"{new} on the phone")


# --- 2. part of a booking number rendered by gTTS, kept at a public URL -------------------


def test_the_phones_cancel_list_is_not_rendered_to_a_public_audio_file(
        client, live, frozen, prompts):  # noqa: F811
    """ivr_flows.audio: a prompt that reads back something of the caller's own (a
    booking reference among them) is spoken by <Say>, "never sent to gTTS, queued as a
    job, or kept as a file under a public URL". The cancel list names each booking by its
    village and the last 4 digits of its number ("The booking to Bettiah, number ending
    in 4 8 2 1"): 4 digits are under PERSONAL_DIGITS (7), so the text goes to Google and
    is kept at /ivr/audio/<lang>/<sha256 of the text>.mp3, served to anyone, by a name
    anyone can compute for a guessed village and 4 digits."""
    booking_id = paid_booking()
    customer_speaks("en")
    start(booking_id)  # dispatching: still cancellable
    tail = spoken.spell_digits(ref_of(booking_id)[-4:])
    for name in QUEUES:  # whatever renders the set-up queued
        for job in queue(name).get_jobs():
            if job.func_name == audio.RENDER_JOB:
                job.delete()

    caller = Caller(client, CUSTOMER)
    caller.call()
    heard = caller.press("5")  # cancel: the list of bookings that can be cancelled
    assert tail in heard.text, heard.text  # the list names it by its last digits
    rendered = [text for text in _render_texts() if tail in text]
    assert not rendered, f"queued for gTTS and a public file: {rendered}"


# --- 3. a rider's WhatsApp photo at one customer's pickup becomes another's proof -------


@pytest.fixture
def pod_dir(tmp_path, monkeypatch):
    """Proof-of-delivery photos in a folder of this test's own."""
    from core.adapters import storage

    monkeypatch.setenv("POD_LOCAL_DIR", str(tmp_path / "pod"))
    storage.reset()
    yield tmp_path / "pod"
    storage.reset()


def test_a_whatsapp_photo_before_the_next_pickup_does_not_replace_the_last_drops_proof(
        client, live, frozen, pod_dir):  # noqa: F811
    """Ramesh delivered Meena's parcel A and sent its doorstep photo (A's proof of
    delivery). Twenty minutes later he has taken job B and, at B's sender, before his
    PICK, sends a photo of B's parcel on WhatsApp. The app refuses such a photo (422
    pod_not_now: a photo goes with the parcel in hand). The chat files it with the leg he
    "delivered in the last hour" (dispatch.pod_leg_of): it becomes A's proof of delivery,
    in place of A's doorstep, under A's booking (so B's sender's photo is kept with a
    stranger's booking, and an erasure of B's people does not find it)."""
    _, rider = make_partner("Ramesh", LAXMIPUR)

    def photo(sid: str, content: bytes) -> str:
        return send_whatsapp(client, {
            "MessageSid": sid, "From": f"whatsapp:{rider}", "To": "whatsapp:+1", "Body": "",
            "NumMedia": "1", "MediaUrl0": store_media(content, "image/jpeg"),
            "MediaContentType0": "image/jpeg", "WaId": rider[1:]})

    a = paid_booking()
    start(a)
    sms(client, rider, "1")
    sms(client, rider, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    sms(client, rider, f"DROP {last_code(RECIPIENT)}")
    photo("SMdoorstepA", b"\xff\xd8\xff\xe0" + b"doorstep-of-A" * 20)
    run_jobs()
    proof_a = legs_of(a)[0].pod_photo_url
    assert proof_a

    freeze_at(20 * 60)
    b = paid_booking()
    start(b)
    sms(client, rider, "1")  # job B is his, to pick up
    leg_b = legs_of(b)[0]
    assert leg_b.status == "assigned"
    photo("SMparcelB", b"\xff\xd8\xff\xe0" + b"parcel-at-B-sender" * 20)
    run_jobs()

    assert legs_of(a)[0].pod_photo_url == proof_a, "A's proof of delivery was replaced"
    with transaction() as s:
        under_a = s.scalar(select(func.count()).select_from(PodPhoto)
                           .where(PodPhoto.leg_id == legs_of(a)[0].id))
    assert under_a == 1, "B's parcel photo is kept under A's booking"
    # He is told why (in his language, Hindi here): the photo goes after his PICK.
    with transaction() as s:
        told = s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == f"whatsapp:{rider}").order_by(OutboxMessage.id.desc())
            ).first()
    assert told == i18n.t("dispatch.pod_before_pick", "hi", job=dispatch.job_code(leg_b))

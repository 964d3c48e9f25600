"""Review of the phone (IVR) side (rev4): calls through the real, signed voice webhooks
(the ``Caller`` of tests/test_ivr.py), then the RQ jobs as a worker runs them. Each test
fails on the code as reviewed; its docstring says what is wrong and what should happen."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import requests
from requests.adapters import HTTPAdapter
from rq import SimpleWorker
from rq.serializers import JSONSerializer
from sqlalchemy import select

from core import clock
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage
from core.adapters.queue import QUEUES, SANDBOX_QUEUE, queue
from core.adapters.redis_conn import redis_client
from ivr_flows import audio
from tests.test_ivr import Caller, book_in_hindi, phone, prompts, t  # noqa: F401

pytestmark = pytest.mark.db

GTTS_TIMEOUT = timedelta(seconds=15)  # ivr_flows.audio.render: gTTS(..., timeout=15)
LINK_JOB = "workers.payments.create_payment_link"


@pytest.fixture
def google_drops_packets(monkeypatch):
    """Google's TTS cannot be reached and the connection hangs until gTTS's timeout (a
    firewall that drops the packets): each attempt costs 15 s of the clock. Every other
    HTTP request (the Razorpay and Twilio emulators) goes through as usual."""
    real_send = HTTPAdapter.send
    attempts: list[str] = []

    def send(self, request, **kwargs):
        if "translate.google." not in request.url:
            return real_send(self, request, **kwargs)
        attempts.append(request.url)
        clock.freeze(clock.now() + GTTS_TIMEOUT)
        raise requests.exceptions.ConnectTimeout("no answer from Google")

    monkeypatch.setattr(HTTPAdapter, "send", send)
    for name in ("rq.worker", "ivr_flows.audio"):  # a failed render each: expected here
        monkeypatch.setattr(logging.getLogger(name), "disabled", True)
    return attempts


def work_until(func_name: str) -> tuple[list[str], object]:
    """Run the queued jobs as one RQ worker does (its queues in order, each first in first
    out) until ``func_name`` starts: (the jobs that ran before it, the clock then)."""
    ran: list[str] = []
    seen: dict[str, object] = {}

    class Recording(SimpleWorker):
        def execute_job(self, job, q):  # noqa: ANN001 (RQ's signature)
            if job.func_name == func_name and "at" not in seen:
                seen["at"] = clock.now()
            if "at" not in seen:
                ran.append(job.func_name)
            return super().execute_job(job, q)

    worker = Recording([queue(n) for n in (*QUEUES, SANDBOX_QUEUE)],
                       connection=redis_client(), serializer=JSONSerializer)
    worker.work(burst=True, with_scheduler=False, logging_level="ERROR")
    assert "at" in seen, f"{func_name} never ran; ran: {ran}"
    return ran, seen["at"]


# --- 1. the payment link waits behind the prompt renders -------------------------------

def test_a_phone_bookings_payment_link_does_not_wait_behind_prompt_renders(
        live, phone, google_drops_packets):  # noqa: F811
    """A caller books by keypad and hears "the payment link is coming by SMS" (ivr.confirm.
    done; tracking says "in a minute"). Every prompt of the call that had no audio yet was
    queued for gTTS on RQ's "default" queue (ivr_flows.audio.queue_renders): 64 jobs for
    one Hindi booking on a fresh cache, each asked again every PENDING_TTL_S and retried
    by RQ while Google cannot be reached. The job that makes the payment link goes on the
    same queue, behind all of them (and so do dispatch's offers and their timeouts). While
    Google does not answer (each gTTS attempt waits out its 15 s timeout) the link is
    made a quarter of an hour after the caller was promised it, and every booking call
    adds its renders to the backlog. Renders are cosmetic (a prompt without audio is said
    with <Say>): they should never hold up a booking's link; the link job should start
    first, within a minute of the booking."""
    heard = book_in_hindi(phone)
    assert "SMS" in heard.text  # "पेमेंट का लिंक और बुकिंग की जानकारी SMS से आ रही है"
    booked_at = clock.now()
    phone.hang_up()

    before, started = work_until(LINK_JOB)

    renders = before.count(audio.RENDER_JOB)
    waited = started - booked_at
    assert waited <= timedelta(minutes=1), (
        f"the payment link job started {waited} after the booking, behind {renders} prompt "
        f"renders ({len(google_drops_packets)} gTTS attempts of 15 s)")
    with transaction() as s:
        assert s.scalar(select(OutboxMessage.id).where(
            OutboxMessage.dedupe_key.like("paylink-%"))) is not None  # and it did go


# --- 2. two post offices of one pincode said alike ---------------------------------------

def test_two_offices_sharing_a_name_are_told_apart_in_the_village_list(phone):  # noqa: F811
    """226002 (Lucknow) has two offices India Post calls Arjunganj: Arjunganj BO (a village
    branch office) and Arjunganj SO, 3 km apart. With a Point there, a caller who keys in
    226002 hears "Arjunganj, press 1" on the first page of villages and "Arjunganj, press
    6" on the second, then "Place: Arjunganj, pincode 2 2 6, 0 0 2" for either: the two
    cannot be told apart, so the parcel is collected at whichever the caller guessed, 3 km
    from the other, and priced from there. (The app was fixed for this in db4fe1a: it is
    offered "Arjunganj BO" and "Arjunganj SO"; the keypad list still says the shared
    display name.) Every name the caller hears in one list should pick one office only."""
    from core.adapters import pincode
    from core.adapters.models import Person, Point

    so = next(o for o in pincode.post_offices("226002") if o.office_name == "Arjunganj SO")
    with transaction() as s:
        s.add(Point(name="Arjunganj", lat=so.lat, lng=so.lng, pincode="226002", active=True))
        s.add(Person(phone=phone.phone, role="customer", preferred_language="hi"))
    phone.call()
    phone.press("1")  # send a parcel
    heard = phone.press("226002#")
    assert t("ivr.place.choose") in heard.text, heard.text
    said: list[str] = []
    for _ in range(3):  # every page of the list: 9 = more names
        names = [text for _, text in heard.says
                 if text and not any(text == t(f"ivr.press.{n}") for n in range(1, 10))]
        start = names.index(t("ivr.place.choose")) + 1
        end = names.index(t("ivr.place.reenter"))
        said += names[start:end]
        heard = phone.press("9")
    assert "Arjunganj" in " ".join(said), said
    twice = sorted({name for name in said if said.count(name) > 1})
    assert not twice, f"said for two different offices: {twice} (the list: {said})"

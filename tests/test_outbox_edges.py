"""Outgoing messages at their edges, each once wrong: a connection that broke after the
request went out, Twilio refusing our credentials, and a free-form WhatsApp message that
missed the 24-hour window for someone known only by their WhatsApp id."""

from __future__ import annotations

import socket
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core.adapters.db import transaction
from core.adapters.models import OutboxMessage, Person, SandboxMessage
from core.config import reset_settings
from core.services import notify, outbox
from tests.conftest import never_reached, post_twilio, release_scheduled, run_jobs
from tests.test_dispatch import CUSTOMER, frozen, paid_booking  # noqa: F401 (fixture)

pytestmark = pytest.mark.db


def _row(oid: int) -> OutboxMessage:
    with transaction() as s:
        r = s.get(OutboxMessage, oid)
        assert r is not None
        return r


class _AbortingTwilio:
    """A 'Twilio' that reads the whole create request, then drops the connection without
    an answer: the request reached it (Twilio may well have queued the message)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            data = b""
            conn.settimeout(2)
            try:
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                if b"POST" in head.split(b"\r\n")[0]:
                    self.requests += 1
            except OSError:
                pass
            conn.close()  # no answer at all

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def test_connection_dropped_after_the_request_was_sent_is_not_resent_blindly(
        live, monkeypatch):
    """A connection that breaks after Twilio read the whole request (RemoteDisconnected,
    'Connection aborted.', a reset while waiting for the answer) leaves the outcome
    unknown, like a read timeout: Twilio may have queued the message. The outbox treated
    every ConnectionError but ReadTimeout as "Twilio definitely did not accept it", put
    the row back to pending and sent it again: the customer got it twice."""
    fake = _AbortingTwilio()
    try:
        monkeypatch.setenv("TWILIO_API_BASE", f"http://127.0.0.1:{fake.port}")
        reset_settings()
        with transaction() as s:
            oid = outbox.queue_message(s, channel="sms", to="+919876500071",
                                       body="Your code is 123456")
        run_jobs(("outbox",))
        assert fake.requests == 1  # the create reached "Twilio"
        status = _row(oid).status
        release_scheduled(timedelta(seconds=11))  # the retry's back-off passes
        run_jobs(("outbox",))
        assert fake.requests == 1, f"posted to Twilio {fake.requests} times (row was {status})"
        # Outcome unknown: the row must stay "sending" for the callback / reconcile.
        assert status == "sending"
    finally:
        fake.close()
        monkeypatch.delenv("TWILIO_API_BASE")
        reset_settings()


def test_refused_credentials_do_not_fail_messages_for_good(live, monkeypatch):
    """A 401 (Twilio's 20003: our account SID / auth token refused, e.g. a rotated token
    not yet deployed) says nothing about the message: the same module counts 401/403 as
    an outage for its look-ups (twilio_gateway._is_outage). The send path counts any
    4xx but 429 as a permanent refusal: every OTP and payment link queued while the
    credentials are wrong goes straight to "failed", never retried once they are fixed."""
    from core.adapters import twilio_gateway

    def refused(**_kw):
        raise twilio_gateway.SendRejected(401, "20003", "Authenticate")

    monkeypatch.setattr(twilio_gateway, "send_message", refused)
    with transaction() as s:
        oid = outbox.queue_message(s, channel="sms", to="+919876500072",
                                   body="Your sign-in code is 482913", needed=True)
    run_jobs(("outbox",))
    r = _row(oid)
    assert r.status == "pending", (r.status, r.error_code, r.last_error)
    monkeypatch.undo()  # the token is fixed
    assert release_scheduled(timedelta(seconds=11)) == 1
    run_jobs()
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(SandboxMessage)) == 1


def test_a_free_form_message_that_missed_the_window_reaches_a_whatsapp_id_user(
        client, live, monkeypatch):
    """A free-form WhatsApp message queued inside the 24 hours but refused with 63016
    (a retry or a backlog took it past the window) goes by SMS (_by_sms_instead). A user
    known only by their WhatsApp id has no number: the message is dropped with a warning,
    although the approved template for their language is configured and would carry it
    (notify.send_to_person sends exactly that outside the window). Their payment link /
    booking status never arrives."""
    from core.adapters.dialog_models import WhatsappTemplateSend

    monkeypatch.setenv("WHATSAPP_TEMPLATE_HI", "HX0123456789abcdef0123456789abcdef")
    notify.reset_templates()
    wa_id = "IN.13491234rev16"
    try:
        with transaction() as s:
            s.add(Person(phone=None, wa_id=wa_id, role="customer", preferred_language="hi"))
        with transaction() as s:
            oid = outbox.queue_message(s, channel="whatsapp", to=wa_id,
                                       body="Booking 12345678: pay with this link")
        run_jobs()
        never_reached(_row(oid).provider_sid)
        r = post_twilio(client, "/webhooks/twilio/status",
                        {"MessageSid": _row(oid).provider_sid, "MessageStatus": "failed",
                         "ErrorCode": "63016"})
        assert r.status_code == 204
        run_jobs()
        with transaction() as s:
            again = s.scalars(select(OutboxMessage).where(OutboxMessage.id != oid)).all()
            templated = [m.id for m in again
                         if s.get(WhatsappTemplateSend, m.id) is not None]
        assert again and templated, "the refused message was never sent again"
    finally:
        monkeypatch.delenv("WHATSAPP_TEMPLATE_HI")
        notify.reset_templates()

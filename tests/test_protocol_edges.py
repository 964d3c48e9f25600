"""RideChain against what Twilio and Razorpay document, and the sandbox emulators
against the same documents (an emulator that agrees with a wrong assumption hides it).

Sources (documentation, not code):
- Razorpay, Create a Standard Payment Link, Errors: a repeated reference_id is refused
  with 400 "payment link creation with reference ID already attempted"
  (razorpay/markdown-docs api/payments/payment-links/create-standard.md).
- Twilio error 63021: "Length of the parameters and the template text exceeds the allowed
  length of 1024 for WhatsApp" (twilio.com/docs/api/errors/63021).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from razorpay.errors import BadRequestError
from sqlalchemy import select

from core.adapters import razorpay_gateway as gw
from core.adapters import twilio_gateway
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage, Person
from core.config import get_settings
from core.domain.booking import BookingStatus
from core.services import notify, outbox
from sandbox import razorpay as emu
from tests.conftest import never_reached, post_twilio, release_scheduled, run_jobs
from tests.test_payments_support import booking, confirmed_booking, link_of, run

pytestmark = pytest.mark.db

# Razorpay's documented description of a repeated reference_id (see the module docstring).
DOCUMENTED_DUPLICATE = "payment link creation with reference ID already attempted"
WHATSAPP_TEMPLATE_MAX = 1024  # Twilio 63021: template text plus its parameters


# --- Razorpay: a repeated reference_id ----------------------------------------------------


def test_the_documented_duplicate_reference_refusal_is_recognised():
    """is_duplicate_reference must know Razorpay's own wording: otherwise a link whose
    create answer was lost is taken for a refusal and the booking is closed."""
    assert gw.is_duplicate_reference(BadRequestError(DOCUMENTED_DUPLICATE))


def test_the_emulator_refuses_a_repeated_reference_as_razorpay_does(live):
    """The emulator words the refusal as Razorpay does, so the product is tested against
    the real wording."""
    c = gw.client()
    body = {"amount": 10000, "currency": "INR", "reference_id": "REV17-DUP-1",
            "description": "rev17"}
    c.payment_link.create(body)
    with pytest.raises(BadRequestError) as refused:
        c.payment_link.create(body)
    assert "reference id already attempted" in str(refused.value).lower()


def test_a_lost_link_answer_with_razorpays_wording_still_reaches_the_customer(
        live, monkeypatch):
    """The link was made but its answer was lost (a 503 after the create); the retry
    meets Razorpay's documented duplicate refusal. The booking must get that link, not
    be closed as "the gateway refused the payment link"."""
    real_error = emu._error

    def razorpay_wording(status, description, code="BAD_REQUEST_ERROR", field=None):
        if field == "reference_id" and "already" in description:
            description = DOCUMENTED_DUPLICATE
        return real_error(status, description, code, field)

    monkeypatch.setattr(emu, "_error", razorpay_wording)
    emu.control("lose_next:create_link", 1)
    bid = confirmed_booking()
    run()  # created at the gateway, answer lost: the job fails and is retried
    assert release_scheduled(timedelta(seconds=11)) == 1
    run()
    assert booking(bid).status == BookingStatus.AWAITING_PAYMENT.value
    assert link_of(bid).gateway_id == emu._all("payment_link")[0]["id"]


# --- Twilio: WhatsApp templates are limited to 1,024 characters -----------------------------


def test_the_emulator_refuses_a_whatsapp_template_longer_than_whatsapp_allows(live):
    """Twilio/WhatsApp refuse a template whose text with its parameters is over 1,024
    characters (63021); the emulator does too."""
    s = get_settings()
    with pytest.raises(twilio_gateway.SendRejected):
        twilio_gateway.send_message(
            to="whatsapp:+919812340001", from_=s.twilio_whatsapp_from, body="",
            media_url=None, status_callback=f"{s.public_base_url}/webhooks/twilio/status",
            content_sid="HX0123456789abcdef0123456789abcdef",
            content_variables={"1": "Your booking. " * 80})  # 1,120 characters


def test_a_long_message_that_missed_the_window_is_not_resent_as_an_oversized_template(
        client, live, monkeypatch):
    """A long free-form WhatsApp reply (the dialog sends up to 1,500 characters) refused
    with 63016 is not sent again as the template (over 1,024 characters WhatsApp refuses
    it, 63021, and the customer would get nothing): it goes by SMS."""
    from core.adapters.dialog_models import WhatsappTemplateSend

    monkeypatch.setenv("WHATSAPP_TEMPLATE_EN", "HX0123456789abcdef0123456789abcdef")
    notify.reset_templates()
    try:
        with transaction() as s:
            s.add(Person(phone="+919812340001", role="customer", preferred_language="en"))
        text = "\n".join(f"{n}. Pick-up point number {n} near the bus stand"
                         for n in range(1, 29))
        assert WHATSAPP_TEMPLATE_MAX < len(text) <= 1500
        with transaction() as s:
            oid = outbox.queue_message(s, channel="whatsapp", to="+919812340001", body=text)
        run_jobs()
        with transaction() as s:
            row = s.get(OutboxMessage, oid)
            assert row is not None and row.provider_sid
            sid = row.provider_sid
        never_reached(sid)
        r = post_twilio(client, "/webhooks/twilio/status",
                        {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": "63016"})
        assert r.status_code == 204
        run_jobs()
        with transaction() as s:
            sent = [(m.id, s.get(WhatsappTemplateSend, m.id)) for m in s.scalars(
                select(OutboxMessage).where(OutboxMessage.id != oid))]
        assert sent, "the refused message was not sent again"
        for _row_id, template in sent:
            if template is not None:
                values = [outbox.template_value(str(v))
                          for v in template.content_variables.values()]
                assert sum(map(len, values)) <= WHATSAPP_TEMPLATE_MAX, (
                    "a template WhatsApp refuses (63021) was sent instead of an SMS")
    finally:
        monkeypatch.delenv("WHATSAPP_TEMPLATE_EN")
        notify.reset_templates()


# --- Razorpay: a webhook secret changed ------------------------------------------------------


def test_retries_signed_with_the_webhook_secret_it_replaced_still_verify(monkeypatch):
    """Razorpay signs the retries of events sent before a webhook secret change with the
    old secret: with RAZORPAY_WEBHOOK_SECRET_PREVIOUS set they verify, without it (or with
    another secret) they do not."""
    import hashlib
    import hmac
    import json

    from core.config import reset_settings

    body = json.dumps({"event": "payment.captured", "payload": {}})
    old = "old-webhook-secret-0123456789abcdef"

    def signed(secret: str) -> str:
        return hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()

    try:
        reset_settings()
        assert gw.verify_webhook(body, signed(get_settings().razorpay_webhook_secret))
        assert not gw.verify_webhook(body, signed(old))
        monkeypatch.setenv("RAZORPAY_WEBHOOK_SECRET_PREVIOUS", f"another-one-xyz, {old}")
        reset_settings()
        assert gw.verify_webhook(body, signed(old))
        assert gw.verify_webhook(body, signed(get_settings().razorpay_webhook_secret))
        assert not gw.verify_webhook(body, signed("never-ours-secret-0123456789abcd"))
    finally:
        monkeypatch.delenv("RAZORPAY_WEBHOOK_SECRET_PREVIOUS", raising=False)
        reset_settings()


# --- Razorpay: a refund request whose twin is still in progress ----------------------------


def test_a_refund_answered_in_progress_on_the_last_try_is_not_ended_nor_asked_twice(live):
    """Razorpay answers 409 "another request with the same idempotency key is still in
    progress" while a twin request makes the refund (the SDK raises it as a refusal).
    Ending the attempt on it (as for a refusal on the job's last try) would put the money
    back in escrow and make a second attempt under a new key: a second refund. It is an
    unknown outcome: the attempt stays open and the same key is asked again."""
    from core.adapters.payment_models import Refund
    from core.services import payments
    from tests.test_payments_refunds import attempts, fail_for_no_partner
    from tests.test_payments_support import paid_booking

    bid = paid_booking()
    total = booking(bid).total_paise
    emu.control("in_progress_next:refund", 1)
    fail_for_no_partner(bid)  # dispatch's refund job has no Retry: this try is its last
    run()  # the 409, then the twin's refund.processed webhook
    assert attempts(bid) == [(1, "processed", total)]
    from core import clock

    clock.freeze(clock.now() + timedelta(hours=1))  # past any retry delay
    payments.sweep()
    run()
    assert attempts(bid) == [(1, "processed", total)]  # no second attempt
    assert len(emu._all("refund")) == 1  # one refund at the gateway, not two
    with transaction() as s:
        assert s.scalar(select(Refund.gateway_refund_id)) == emu._all("refund")[0]["id"]


# --- Razorpay behind a proxy: an error page that is not JSON -------------------------------


def test_a_proxy_s_html_error_page_is_a_server_error_not_a_crash(live, monkeypatch):
    """A 502/504 from the proxy in front of Razorpay comes as an HTML page (razorpay-python
    issue 306): the SDK's JSON decoding raised, which no caller takes for the gateway's
    trouble. It is a ServerError, as a 5xx with Razorpay's body is; Razorpay's own
    errors keep their kind."""
    import requests

    real = requests.Session.request
    pages = {"rfnd_html502": (502, b"<html><body>502 Bad Gateway</body></html>"),
             "rfnd_html404": (404, b"<html>Not Found</html>")}

    def request(self, method, url, *args, **kwargs):
        for rid, (status, page) in pages.items():
            if url.endswith(f"/refunds/{rid}"):
                answer = requests.Response()
                answer.status_code = status
                answer.headers["Content-Type"] = "text/html"
                answer._content = page
                return answer
        return real(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", request)
    c = gw.client()
    for rid in pages:
        with pytest.raises(gw.ServerError):
            c.refund.fetch(rid)
    with pytest.raises(gw.BadRequestError):  # Razorpay's own JSON answer: unknown id
        c.refund.fetch("rfnd_unknown01")

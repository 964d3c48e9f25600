"""Review 7: the product against Twilio and Razorpay as their documentation (and their own
sources) say they answer, and the sandbox emulators against the same.

Each test drives the real `twilio` / `razorpay` client the product uses, through the
emulator over HTTP, and asserts what the real service documents:
- Twilio 20500: a 500 on "send an SMS" may still have created the message ("if you retry
  the request, it is possible for a customer to receive multiple messages").
- Twilio 21611: the sender's queue is full (over 10 hours of messages): slow down and try
  again later; it says nothing about the message itself.
- Twilio Message resource: ``error_code`` is "the error code returned if the Message
  status is failed or undelivered".
- Twilio 21910: "Invalid 'From' and 'To' pair. 'From' and 'To' should be of the same
  channel".
- Razorpay: "the amount is deducted from your main account balance when refunding a
  payment" (Route, Refund Payments and Reverse Transfer); too little balance is refused:
  "Your account does not have enough balance to carry out the refund operation" (400).
- Razorpay's rate limit: HTTP 429 with the public code BAD_REQUEST_ERROR ("Request failed.
  Please try after sometime."), which the SDK raises as a BadRequestError.
- Razorpay payment_link.paid payloads: the payment carries the link's notes (as given),
  and no ``plink_id`` note.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import requests
from sqlalchemy import func, select

from core import clock
from core.adapters import razorpay_gateway as gw
from core.adapters import twilio_gateway
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage, SandboxMessage
from core.adapters.payment_models import PaymentLink
from core.adapters.queue import QUEUES
from core.adapters.redis_conn import redis_client
from core.config import get_settings
from core.domain.booking import BookingStatus
from core.services import outbox
from sandbox import jobs as twilio_jobs
from sandbox import razorpay as emu
from tests.conftest import release_scheduled, run_jobs
from tests.test_payments_support import booking, confirmed_booking, run

pytestmark = pytest.mark.db


def _sandbox_count(to: str) -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(SandboxMessage)
                        .where(SandboxMessage.to_addr == to))


def _row(outbox_id: int) -> OutboxMessage:
    with transaction() as s:
        r = s.get(OutboxMessage, outbox_id)
        assert r is not None
        return r


def _queue(channel: str, to: str, body: str) -> int:
    with transaction() as s:
        oid = outbox.queue_message(s, channel=channel, to=to, body=body)
    assert oid is not None
    return oid


def _callback_url() -> str:
    return f"{get_settings().public_base_url}/webhooks/twilio/status?outbox_id=1"


# --- Twilio: a 500 to "send" is an unknown outcome, not "not sent" ------------------------


def test_a_twilio_500_after_the_message_was_taken_does_not_send_it_twice(live, monkeypatch):
    """Twilio 20500 ("Internal Server Error", a timeout in the API): sending an SMS is not
    idempotent, and a retry after a 500 may deliver the message twice. The outbox takes
    every HTTP error answer for "Twilio did not accept it" and sends the row again."""
    to = "+919812300711"
    real = twilio_gateway.send_message
    calls: list[int] = []

    def taken_then_500(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            real(**kwargs)  # Twilio created the message, then its API answered 500
            raise twilio_gateway.SendRejected(500, "20500", "Internal Server Error")
        return real(**kwargs)

    monkeypatch.setattr(twilio_gateway, "send_message", taken_then_500)
    oid = _queue("sms", to, "Your parcel RC-7 is on its way")
    # Twilio holds the message queued (a busy sender: when its API errs, the usual case),
    # so no status callback links it to the row before the retry is due: the emulator's
    # reporting job (its own queue) runs only after.
    run_jobs(QUEUES)
    release_scheduled(timedelta(minutes=2))
    run_jobs(QUEUES)
    run_jobs()
    assert _sandbox_count(to) == 1, "the customer got the same SMS twice"
    assert _row(oid).provider_sid is not None


# --- Twilio: 21611 (the sender's queue is full) is worth a retry ---------------------------


def test_twilio_queue_overflow_21611_is_retried_not_failed_for_good(live, monkeypatch):
    """21611: "This 'From' number has exceeded the maximum number of queued messages"
    (more than 10 hours queued on the sender): slow down and send again. Nothing is wrong
    with this message, yet SendRejected calls every 4xx but 401/403/429 permanent."""
    to = "+919812300712"
    real = twilio_gateway.send_message
    calls: list[int] = []

    def overflow_once(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise twilio_gateway.SendRejected(
                400, "21611", "This 'From' number has exceeded the maximum number of "
                              "queued messages")
        return real(**kwargs)

    monkeypatch.setattr(twilio_gateway, "send_message", overflow_once)
    oid = _queue("sms", to, "Pay Rs 250 for booking RC-8 here: https://rzp.io/x")
    run_jobs()
    assert _row(oid).status == "pending", "a full sender queue failed the message for good"
    release_scheduled(timedelta(minutes=2))
    run_jobs()
    assert _row(oid).status == "delivered"
    assert _sandbox_count(to) == 1


# --- Twilio emulator: a failed message's resource carries its error code -------------------


def _failed_whatsapp(monkeypatch, number: str, setting: str) -> str:
    """Send a WhatsApp message the emulator fails per ``setting``; callbacks dropped."""
    to = f"whatsapp:{number}"
    redis_client().hset(twilio_jobs.UNDELIVERED_TO_KEY, to, setting)
    monkeypatch.setattr(twilio_jobs._Callbacks, "post", lambda self, url, params, headers: 200)
    sent = twilio_gateway.send_message(
        to=to, from_=get_settings().twilio_whatsapp_from, body="Namaste", media_url=None,
        status_callback=_callback_url())
    twilio_jobs.report_statuses()
    return sent.sid


def test_the_emulators_failed_message_shows_its_error_code_as_twilio_does(live, monkeypatch):
    sid = _failed_whatsapp(monkeypatch, "+919812300713", "failed:63016")
    fetched = twilio_gateway.client().messages(sid).fetch()
    assert fetched.status == "failed"
    assert str(fetched.error_code) == "63016"
    (listed,) = twilio_gateway.messages_since(
        to="whatsapp:+919812300713", from_=get_settings().twilio_whatsapp_from,
        since=clock.now() - timedelta(hours=1), limit=10)
    assert (listed.status, listed.error_code) == ("failed", "63016")


def test_a_lost_whatsapp_answer_that_twilio_failed_for_the_window_goes_by_sms(live,
                                                                              monkeypatch):
    """The send's answer is lost (a read timeout), its callbacks too; Twilio failed the
    message with 63016 (outside the 24-hour window). The reconcile adopts the message with
    the status and error code Twilio lists, as the lost callback would have brought them,
    and the text goes by SMS. Against the emulator it cannot: it lists no error code."""
    number = "+919812300714"
    redis_client().hset(twilio_jobs.UNDELIVERED_TO_KEY, f"whatsapp:{number}", "failed:63016")
    monkeypatch.setattr(twilio_jobs._Callbacks, "post", lambda self, url, params, headers: 200)
    real = twilio_gateway.send_message

    def answer_lost(**kwargs):
        real(**kwargs)
        raise requests.exceptions.ReadTimeout("read timed out")

    monkeypatch.setattr(twilio_gateway, "send_message", answer_lost)
    start = clock.now()
    clock.freeze(start)
    try:
        oid = _queue("whatsapp", number, "Your parcel RC-9 was picked up")
        run_jobs()
        assert _row(oid).status == "sending" and _row(oid).provider_sid is None
        clock.freeze(start + outbox.STALE_SENDING + timedelta(minutes=1))
        assert outbox.reconcile(oid) == "adopted"
    finally:
        clock.freeze(None)
    r = _row(oid)
    assert (r.status, r.error_code) == ("failed", "63016")
    with transaction() as s:
        copy = s.scalar(select(OutboxMessage).where(
            OutboxMessage.dedupe_key == f"sms-for-{oid}"))
    assert copy is not None and copy.to_addr == number


# --- Twilio emulator: From and To of different channels ------------------------------------


@pytest.mark.parametrize("to, sender", [
    ("whatsapp:+919812300715", "sms"),
    ("+919812300716", "whatsapp"),
])
def test_the_emulator_refuses_a_from_and_to_of_different_channels(live, to, sender):
    s = get_settings()
    from_ = s.twilio_sms_from if sender == "sms" else s.twilio_whatsapp_from
    with pytest.raises(twilio_gateway.SendRejected) as refused:
        twilio_gateway.send_message(to=to, from_=from_, body="Namaste", media_url=None,
                                    status_callback=_callback_url())
    assert refused.value.code == "21910"
    assert refused.value.permanent
    assert _sandbox_count(to) == 0


# --- Razorpay emulator: a refund is paid out of the platform's balance ---------------------


def test_the_emulator_refuses_a_refund_the_balance_cannot_cover(live):
    """A payment of Rs 100, Rs 90 of it transferred to a partner's linked account (not on
    hold): the platform's balance holds Rs 10. Razorpay pays refunds from that balance and
    refuses a refund of Rs 100 (BAD_REQUEST_REFUND_NOT_ENOUGH_BALANCE, a 400); the
    emulator makes it, so the product's path for it (retry, end the attempt, tell ops)
    never runs in the sandbox. (Session 30: the account holds nothing else here, and
    Razorpay kept its fee of Rs 2.36 on the payment: Rs 7.64 is left.)"""
    emu.control("opening_balance", 0)
    payment = emu.create_payment(10_000)
    assert (payment["fee"], payment["tax"]) == (236, 36)  # 2% and 18% GST on it
    c = gw.client()
    c.payment.transfer(payment["id"], {"transfers": [{
        "account": "acc_rev7partner", "amount": 9_000, "currency": "INR", "on_hold": False}]})
    assert emu.platform_balance() == 764  # what the emulator itself says is left
    with pytest.raises(gw.BadRequestError) as refused:
        c.payment.refund(payment["id"], {"amount": 10_000, "speed": "normal"},
                         headers={"X-Refund-Idempotency": "rev7-balance-refund-1"})
    assert "enough balance" in str(refused.value)
    assert c.payment.fetch(payment["id"])["amount_refunded"] == 0
    # What the balance does cover is refunded.
    made = c.payment.refund(payment["id"], {"amount": 764, "speed": "normal"},
                            headers={"X-Refund-Idempotency": "rev7-balance-refund-2"})
    assert made["amount"] == 764


# --- Razorpay emulator: a link's payment carries the link's notes, as Razorpay's do --------


@pytest.mark.parametrize("fail", [False, True])
def test_a_link_payment_carries_exactly_the_links_notes(live, client, fail):
    """Razorpay's payment of a payment link has the link's notes ({"policy_name": ...} on
    both in its payment_link.paid payloads), and no "plink_id" note: the emulator adds one,
    and the product's payment.failed handler falls back on that key, which never comes."""
    c = gw.client()
    notes = {"booking_id": "41", "reference": "REV7-NOTES"}
    link = c.payment_link.create({
        "amount": 25_000, "currency": "INR", "reference_id": f"REV7-NOTES-{int(fail)}",
        "expire_by": int(clock.now().timestamp()) + 3600, "notes": notes,
        "notify": {"sms": False, "email": False}})
    answer = client.post(f"/sandbox/payment_links/{link['id']}/pay",
                         data={"fail": "1"} if fail else {})
    assert answer.status_code == 200
    payment = c.payment.fetch(answer.get_json()["payment_id"])
    assert payment["notes"] == notes


# --- Razorpay: a rate-limited create is no refusal ----------------------------------------


def _rate_limited_once(monkeypatch, method: str, path_end: str) -> list[str]:
    """Razorpay answers the first ``method`` to a URL ending ``path_end`` as its rate limiter
    does (Razorpay's API: BAD_REQUEST_RATE_LIMIT_EXCEEDED is HTTP 429 with the public code
    BAD_REQUEST_ERROR); every other request goes through. Below the product's session, so
    the product sees the answer as it comes off the wire."""
    real = requests.Session.request
    hits: list[str] = []

    def request(self, verb, url, *args, **kwargs):  # noqa: ANN001 (requests' signature)
        if verb.upper() == method and url.endswith(path_end) and not hits:
            hits.append(url)
            answer = requests.Response()
            answer.status_code = 429
            answer.url = url
            answer.encoding = "utf-8"
            answer.headers["Content-Type"] = "application/json"
            answer._content = json.dumps({"error": {
                "code": "BAD_REQUEST_ERROR",
                "description": "Request failed. Please try after sometime.",
                "source": "NA", "step": "NA", "reason": "NA", "metadata": {}}}).encode()
            return answer
        return real(self, verb, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", request)
    return hits


def test_a_rate_limited_payment_link_create_is_tried_again_not_refused(live, monkeypatch):
    """Razorpay's 429 reaches the product as a BadRequestError, the same class as a real
    refusal: create_payment_link closes the booking ("the gateway refused the payment
    link") and tells the customer to book again, for an answer that says "try after
    sometime"."""
    hits = _rate_limited_once(monkeypatch, "POST", "/v1/payment_links")
    bid = confirmed_booking()
    run()
    assert hits, "the create was not rate-limited"
    assert booking(bid).status == BookingStatus.AWAITING_PAYMENT.value, (
        "a rate-limited create closed the booking")
    release_scheduled(timedelta(minutes=5))
    run()
    with transaction() as s:
        link = s.scalar(select(PaymentLink).where(PaymentLink.booking_id == bid))
    assert link is not None and link.status == "created"
    assert booking(bid).status == BookingStatus.AWAITING_PAYMENT.value


# --- Razorpay: any 409 to an idempotent refund create is "still in progress" ---------------


def test_a_refund_409_in_other_words_is_still_in_progress_not_a_refusal(live, monkeypatch):
    """Razorpay (Create a Normal Refund, Idempotent Request): "if a request is received
    while a prior request is still being processed, the system will return a 409
    Conflict status code. You may retry the request". Its documented words ("Another
    request with the same idempotency key is still in progress") are no contract: in
    other words, the product took the 409 for a refusal, found the payment refunded by
    the twin (nothing left) and cut the attempt, a second attempt following it. Any 409
    to a request with an idempotency key is an unknown outcome: the same key is asked
    again, and the one refund the twin made is the attempt's."""
    from core.adapters.payment_models import Refund
    from core.services import payments
    from tests.test_payments_refunds import attempts, fail_for_no_partner
    from tests.test_payments_support import paid_booking

    real = requests.Session.request

    def reworded(self, method, url, *args, **kwargs):  # noqa: ANN001 (requests' signature)
        answer = real(self, method, url, *args, **kwargs)
        if answer.status_code == 409:
            answer._content = json.dumps({"error": {
                "code": "BAD_REQUEST_ERROR", "description": "Request conflict, retry later",
                "source": "NA", "step": "NA", "reason": "NA", "metadata": {}}}).encode()
        return answer

    monkeypatch.setattr(requests.Session, "request", reworded)
    bid = paid_booking()
    total = booking(bid).total_paise
    emu.control("in_progress_next:refund", 1)  # the twin makes it; this request hears 409
    fail_for_no_partner(bid)  # dispatch's refund job has no Retry: this try is its last
    run()
    clock.freeze(clock.now() + timedelta(hours=1))  # past any retry delay
    try:
        payments.sweep()
        run()
    finally:
        clock.freeze(None)
    assert attempts(bid) == [(1, "processed", total)]
    assert len(emu._all("refund")) == 1  # one refund at the gateway, not two
    with transaction() as s:
        assert s.scalar(select(Refund.gateway_refund_id)) == emu._all("refund")[0]["id"]

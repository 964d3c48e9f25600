"""Security and abuse review (r15): what one contact or one signed-in account can make the
service do (and pay for) without limit. Each test fails on the current code for the reason
in its docstring."""

from __future__ import annotations

from sqlalchemy import func, select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage, Person
from core.config import get_settings
from tests.conftest import post_twilio, run_jobs
from tests.test_api import (  # noqa: F401 (_bettiah_point: the service area, autouse)
    API,
    PHONE,
    _bettiah_point,
    book,
    sign_in,
)
from tests.test_ivr import phone, prompts  # noqa: F401 (fixtures)
from tests.test_webhooks import PHONE as WA_PHONE
from tests.test_webhooks import wa


def _sent_to(address: str, like: str | None = None) -> int:
    """Messages the emulator took for ``address`` (sent or delivered), optionally only
    those whose body contains ``like``."""
    with transaction() as s:
        stmt = select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.to_addr == address,
            OutboxMessage.status.in_(("sent", "delivered", "read")))
        if like is not None:
            stmt = stmt.where(OutboxMessage.body.contains(like))
        return int(s.scalar(stmt) or 0)


def test_a_flood_of_stop_messages_is_not_answered_past_the_rate_limit(client, live):
    """INBOUND_RATE_LIMIT (30 a minute) bounds what one WhatsApp contact can make us do:
    past it a message is dropped. STOP is let through the limit (it must always take
    effect), but each one is also answered with the opt-out confirmation, however many
    come and though she is opted out already. So a script that floods STOP gets one
    outgoing WhatsApp message of ours (paid per message) for every one it sends, with no
    limit at all: 40 STOPs within the minute, 40 confirmations delivered.

    The opt-out must still take effect every time, but the answers to a flood must stay
    within the limit (a repeated STOP from someone already opted out needs no second
    confirmation, or at least none past the limit)."""
    limit = get_settings().inbound_rate_limit
    for i in range(limit + 10):
        r = post_twilio(client, "/webhooks/whatsapp", wa("STOP", f"SMrev15stop{i:04d}"))
        assert r.status_code == 200
        run_jobs()  # a worker drains and sends at once, as in production
    with transaction() as s:
        assert s.scalar(select(Person.opted_out).where(Person.wa_id == WA_PHONE.lstrip("+")))
    confirmations = _sent_to(f"whatsapp:{WA_PHONE}", i18n.t("bot.optout.stopped", "hi"))
    assert confirmations <= limit, (
        f"{limit + 10} STOPs within a minute got {confirmations} confirmations delivered "
        f"(the rate limit is {limit} a minute)")


def test_one_account_cannot_book_and_cancel_in_a_loop_without_limit(client, live):
    """The unpaid-booking cap (3) stops a customer from holding many unpaid bookings, but
    a booking cancelled frees its place at once: POST /bookings then POST .../cancel, in a
    loop, is never refused. Each turn of the loop costs us a Razorpay payment link made
    and cancelled (two gateway API calls, under the merchant account's shared rate limit)
    and an SMS with the link: one signed-in account (any Indian mobile) makes us send 30
    payment-link SMS and 60 gateway calls in a few seconds, and as many as it likes.

    A customer should be refused (a precise 4xx, not a 5xx) once they have made an
    unreasonable number of bookings in a short time; 30 in a few seconds is that."""
    me = sign_in(client, PHONE)
    answers = []
    for _ in range(30):
        made = book(client, me)
        answers.append(made.status_code)
        if made.status_code != 201:
            break
        run_jobs()  # the payment link is made and sent, as a worker does at once
        ref = made.get_json()["reference"]
        assert client.post(f"{API}/bookings/{ref}/cancel", headers=me).status_code == 200
        run_jobs()  # the link is cancelled at the gateway
    assert all(code < 500 for code in answers), answers
    links = _sent_to(PHONE, "/sandbox/payment_links/")
    assert any(code != 201 for code in answers), (
        f"30 bookings made and cancelled in a row, none refused; {links} payment-link SMS "
        "sent to one phone")
    # Refused after CANCELLED_BOOKINGS_MAX cancels within the hour: 429, with when to retry.
    assert answers == [201] * 10 + [429], answers
    assert made.get_json()["error"]["code"] == "too_many_cancelled"
    assert 1 <= int(made.headers["Retry-After"]) <= 3600


def _one_cancelled(client, monkeypatch, number: str) -> None:
    """CANCELLED_BOOKINGS_MAX at 1, and one booking of ``number`` made and cancelled."""
    monkeypatch.setenv("CANCELLED_BOOKINGS_MAX", "1")
    me = sign_in(client, number)
    ref = book(client, me).get_json()["reference"]
    assert client.post(f"{API}/bookings/{ref}/cancel", headers=me).status_code == 200


def test_the_chat_says_so_past_the_cancel_limit_and_keeps_the_draft(client, live, monkeypatch):
    from tests.conftest import read_first, send_whatsapp
    from tests.test_unpaid_cap import HINGLISH_BOOKING

    _one_cancelled(client, monkeypatch, PHONE)
    sids = iter(range(10**6))

    def say(text: str) -> str:
        return send_whatsapp(client, {"MessageSid": f"SMrev15c{next(sids):06d}",
                                      "From": f"whatsapp:{PHONE}", "WaId": PHONE[1:],
                                      "To": "whatsapp:+14155238886", "Body": text})

    for text in HINGLISH_BOOKING:
        say(text)
    read_first(monkeypatch)
    reply = say("ha")
    assert i18n.t("common.too_many_cancelled", "hi") in reply
    assert i18n.t("bot.resume.continue", "hi") in say("ek")  # the draft is kept


def test_the_phone_says_so_past_the_cancel_limit(client, live, phone, monkeypatch):  # noqa: F811
    from tests.test_ivr import book_in_hindi

    _one_cancelled(client, monkeypatch, phone.phone)
    heard = book_in_hindi(phone)
    assert i18n.t("common.too_many_cancelled", "hi") in heard.text

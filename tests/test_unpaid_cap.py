"""A customer may have UNPAID_BOOKINGS_MAX (3) bookings waiting for payment: each costs a
payment link at the gateway and a message, so a loop of bookings is refused, on every
channel, until they pay or cancel one (or it expires)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.adapters.db import transaction
from core.adapters.models import Booking, Person
from core.i18n import t
from tests.test_api import API, PHONE, _bettiah_point, book, sign_in  # noqa: F401
from tests.test_ivr import phone, prompts  # noqa: F401 (fixtures)

pytestmark = pytest.mark.db


def awaiting(number: str) -> int:
    with transaction() as s:
        person = s.scalar(select(Person.id).where(Person.phone == number))
        return int(s.scalar(select(func.count()).select_from(Booking).where(
            Booking.customer_id == person, Booking.status == "awaiting_payment")))


def test_the_api_refuses_a_fourth_unpaid_booking_and_takes_one_once_another_is_cancelled(
        client, live):
    me = sign_in(client, PHONE)
    refs = []
    for _ in range(3):
        r = book(client, me)
        assert r.status_code == 201, r.get_json()
        refs.append(r.get_json()["reference"])
    r = book(client, me)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "too_many_unpaid"
    assert awaiting(PHONE) == 3
    assert client.post(f"{API}/bookings/{refs[0]}/cancel", headers=me).status_code == 200
    assert book(client, me).status_code == 201


def test_the_setting_moves_the_cap(client, live, monkeypatch):
    monkeypatch.setenv("UNPAID_BOOKINGS_MAX", "1")
    me = sign_in(client, PHONE)
    assert book(client, me).status_code == 201
    assert book(client, me).status_code == 409


# hinglish_pincode's booking: Bettiah (845438) to Bariarwa (845453), economy
HINGLISH_BOOKING = ("namaste", "hindi", "ek", "845438", "do", "nahi", "845453", "ek", "1",
                    "Ramesh Kumar", "09876512345", "do", "ek", "ek", "nahi", "do", "teen")


def test_the_chat_says_so_and_keeps_the_booking_as_a_draft(client, live, monkeypatch):
    from tests.conftest import read_first, send_whatsapp

    me = sign_in(client, PHONE)
    refs = [book(client, me).get_json()["reference"] for _ in range(3)]
    sids = iter(range(10**6))

    def say(text: str) -> str:
        return send_whatsapp(client, {"MessageSid": f"SMcap{next(sids):06d}",
                                      "From": f"whatsapp:{PHONE}", "WaId": PHONE[1:],
                                      "To": "whatsapp:+14155238886", "Body": text})

    for text in HINGLISH_BOOKING:
        reply = say(text)
    assert "Ramesh Kumar, +919876512345" in reply
    read_first(monkeypatch)
    reply = say("ha")
    assert t("bot.confirm.too_many_unpaid", "hi", count=3) in reply
    assert awaiting(PHONE) == 3
    # one cancelled in the app: the draft is still there to finish
    assert client.post(f"{API}/bookings/{refs[0]}/cancel", headers=me).status_code == 200
    assert t("bot.resume.continue", "hi") in say("ek")
    assert "Ramesh Kumar, +919876512345" in say("1")
    read_first(monkeypatch)
    assert "बुकिंग हो गई!" in say("ha")
    assert awaiting(PHONE) == 3


def test_the_phone_call_says_so(client, live, phone):  # noqa: F811
    from tests.test_ivr import book_in_hindi

    me = sign_in(client, phone.phone)
    for _ in range(3):
        assert book(client, me).status_code == 201
    heard = book_in_hindi(phone)
    assert t("ivr.confirm.too_many_unpaid", "hi", count=3) in heard.text
    assert awaiting(phone.phone) == 3

"""The price a customer agreed to is the price booked (chat, phone, app), and the amounts a
caller hears for a cancellation add up to what was paid.

The race: "yes" re-checked the fare with one quote, then the booking quoted again; a surge
(or a new rate card) between the two booked a price the customer never saw. Here demand
rises at the moment of booking (inside the port's call), after any re-check."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters import surge
from core.adapters.db import transaction
from core.adapters.models import Booking, Person
from core.dialog.engine import Ctx, DialogState, UserInput, enter, turn
from core.domain.booking import Actor
from core.domain.errors import Conflict
from core.domain.pricing import ParcelCategory, SizeBucket, SpeedTier, WeightBucket
from core.services import booking as booking_service
from ivr_flows.twiml import segments
from tests.conftest import read_first
from tests.test_api import (
    API,
    BETTIAH,
    LAXMIPUR,
    PARCEL,
    PHONE,
    _bettiah_point,  # noqa: F401 (fixture)
    book,
    sign_in,
)
from tests.test_dialog_gaps import Chat
from tests.test_ivr import Caller, prompts, t  # noqa: F401 (fixture)
from tests.test_ivr_gaps import caller  # noqa: F401 (fixture)

SURGED = 15_000  # 1.5x


def surge_as_it_books(monkeypatch, pincode: str) -> None:
    """Demand at ``pincode`` rises the moment a booking is made: after the dialog's last
    look at the fare, inside the port's call, before the booking works its fare out."""
    real = booking_service.create_booking

    def surging(*args: Any, **kwargs: Any) -> Booking:
        surge.set_surge_bp(pincode, SURGED)
        return real(*args, **kwargs)

    monkeypatch.setattr(booking_service, "create_booking", surging)


def count_quotes(monkeypatch) -> list[int]:
    """Every fare worked out from now on adds one to the list."""
    real, calls = booking_service.quote_trip, []

    def counted(*args: Any, **kwargs: Any) -> booking_service.Quote:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(booking_service, "quote_trip", counted)
    return calls


def bookings() -> list[int]:
    with transaction() as s:
        return list(s.scalars(select(Booking.total_paise)))


def chat_total(reply: str) -> int:
    return int(reply.split("Total: ₹")[1].split()[0].replace(",", "")) * 100


# --- the chat ------------------------------------------------------------------------

def chat_at_confirmation(client, number: str) -> tuple[Chat, str]:
    from core.services.seed import seed_demo

    seed_demo()
    chat = Chat(client, number)
    for body in ("hi", "2", "1", "413739", "2", "Near the Hanuman temple", "413720", "1",
                 "skip", "Sunita Patil", "98220 12345", "4", "1", "1", "no", "1"):
        chat.send(body)
    shown = chat.send("2")  # Normal: the confirmation with its total
    assert "Total: ₹" in shown and chat.step() == "confirm"
    return chat, shown


def test_chat_yes_does_not_book_a_price_that_moved_as_it_was_booked(client,
                                                                  monkeypatch) -> None:
    chat, shown = chat_at_confirmation(client, "+919812377501")
    surge_as_it_books(monkeypatch, "413739")
    read_first(monkeypatch)
    again = chat.send("1")
    assert bookings() == []  # nothing booked at a price they never saw
    assert i18n.t("bot.confirm.new_price", "en") in again and chat.step() == "confirm"
    new_total = chat_total(again)
    assert new_total > chat_total(shown)
    read_first(monkeypatch)
    done = chat.send("1")  # yes, to the new price
    assert "Booked!" in done
    assert bookings() == [new_total]


def test_chat_yes_works_the_fare_out_once(client, monkeypatch) -> None:
    chat, shown = chat_at_confirmation(client, "+919812377502")
    quotes = count_quotes(monkeypatch)
    read_first(monkeypatch)
    assert "Booked!" in chat.send("1")
    assert len(quotes) == 1  # the booking's own: no separate re-check before it
    assert bookings() == [chat_total(shown)]


# --- the phone -----------------------------------------------------------------------

def call_at_confirmation(caller: Caller) -> None:  # noqa: F811
    caller.call()
    for keys in ("1", "1", "845438#", "2", "1", "845450#", "9", "9", "7", "1",
                 "9876543210#", "1", "1", "1"):
        caller.press(keys)
    heard = caller.press("2")  # Normal: the summary and its fare
    assert t("ivr.confirm.yes", "hi") in heard.text


def test_ivr_book_it_does_not_book_a_fare_that_moved_as_it_was_booked(
        caller: Caller, monkeypatch) -> None:  # noqa: F811
    call_at_confirmation(caller)
    surge_as_it_books(monkeypatch, "845438")
    quotes = count_quotes(monkeypatch)
    again = caller.press("1")
    assert bookings() == []
    assert t("ivr.confirm.new_price", "hi") in again.text
    assert t("ivr.confirm.yes", "hi") in again.text  # the fare read again, asked again
    assert len(quotes) == 2  # the refused booking's, then the fare read out again
    caller.press("1")  # book it, at the fare just heard
    totals = bookings()
    assert len(totals) == 1
    with transaction() as s:
        b = s.scalar(select(Booking))
        fresh = booking_service.quote_trip(
            s, booking_service.Place(b.pickup_lat, b.pickup_lng, b.pickup_pincode),
            booking_service.Place(b.drop_lat, b.drop_lng, b.drop_pincode),
            booking_service.ParcelSpec(ParcelCategory.OTHER, SizeBucket.BAG,
                                       WeightBucket.W5))
    assert totals == [fresh.fares[SpeedTier.STANDARD].total_paise]  # the surged fare


def test_ivr_book_it_works_the_fare_out_once(caller: Caller,  # noqa: F811
                                             monkeypatch) -> None:
    call_at_confirmation(caller)
    quotes = count_quotes(monkeypatch)
    caller.press("1")
    assert len(bookings()) == 1 and len(quotes) == 1


# --- the service ---------------------------------------------------------------------

def test_create_booking_refuses_a_total_the_customer_did_not_agree_to(clean_db) -> None:
    from tests.test_payments_support import BAG
    from tests.test_payments_support import BETTIAH as DROP
    from tests.test_payments_support import LAXMIPUR as PICKUP

    with transaction() as s:
        person = Person(phone="+919812377503", role="customer")
        s.add(person)
        s.flush()
        pid = person.id
        total = booking_service.quote_trip(s, PICKUP, DROP, BAG).fares[
            SpeedTier.STANDARD].total_paise
    args = dict(channel="app", pickup=PICKUP, drop=DROP, parcel=BAG,
                tier=SpeedTier.STANDARD, recipient_name=None, recipient_phone=None,
                actor=Actor("customer", str(pid)))
    with pytest.raises(Conflict) as refused, transaction() as s:
        booking_service.create_booking(s, customer_id=pid,
                                       agreed_total_paise=total - 100, **args)
    assert refused.value.code == "price_changed"
    assert refused.value.total_paise == total  # type: ignore[attr-defined]
    assert bookings() == []
    with transaction() as s:
        b = booking_service.create_booking(s, customer_id=pid,
                                           agreed_total_paise=total, **args)
        assert b.total_paise == total
    assert bookings() == [total]


# --- the app -------------------------------------------------------------------------

def quoted_total(client, me: dict[str, str]) -> int:
    r = client.post(f"{API}/quotes", json={"pickup": LAXMIPUR, "drop": BETTIAH,
                                           "parcel": PARCEL}, headers=me)
    assert r.status_code == 200, r.get_json()
    return next(f["total_paise"] for f in r.get_json()["fares"] if f["tier"] == "standard")


def test_the_api_books_only_the_total_the_app_showed(client) -> None:
    me = sign_in(client, PHONE)
    shown = quoted_total(client, me)
    surge.set_surge_bp("845450", SURGED)  # Laxmipur, the pickup: demand rises
    now = quoted_total(client, me)
    assert now > shown

    r = book(client, me, key="k-1", quoted_total_paise=shown)
    assert r.status_code == 409, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "price_changed" and error["total_paise"] == now
    assert error["field"] == "quoted_total_paise"
    assert bookings() == []
    # The refusal is not the key's answer (no error is): the app shows the new price and,
    # agreed, sends it with the same key.
    r = book(client, me, key="k-1", quoted_total_paise=now)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["total_paise"] == now
    again = book(client, me, key="k-1", quoted_total_paise=now)  # a retry: replayed
    assert again.status_code == 201 and again.get_json() == r.get_json()
    assert bookings() == [now]


def test_the_api_without_a_quoted_total_books_as_before(client) -> None:
    me = sign_in(client, PHONE)
    surge.set_surge_bp("845450", SURGED)
    now = quoted_total(client, me)
    r = book(client, me, key="k-2")
    assert r.status_code == 201 and r.get_json()["total_paise"] == now
    # A retry of the same body replays; the same key with the total named is another
    # request (the field counts in the fingerprint when it is sent).
    assert book(client, me, key="k-2").get_json() == r.get_json()
    other = book(client, me, key="k-2", quoted_total_paise=now)
    assert other.status_code == 422
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert book(client, me, quoted_total_paise=now).status_code == 201
    assert bookings() == [now, now]


def test_a_quoted_total_is_checked_like_other_fields(client) -> None:
    """A bad value is a 422 naming it; any whole number of paise is taken (and a wrong one
    is told the fare)."""
    me = sign_in(client, PHONE)
    for bad in (-1, 12.5, "abc", True, [100], {"paise": 1}):
        r = book(client, me, quoted_total_paise=bad)
        assert r.status_code == 422, (bad, r.get_json())
        assert r.get_json()["error"]["field"] == "quoted_total_paise", bad
    r = book(client, me, quoted_total_paise=0)
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["error"]["total_paise"] == quoted_total(client, me)
    assert bookings() == []


def test_the_openapi_document_lists_the_field_and_the_new_total() -> None:
    from core.api import PREFIX
    from core.api.spec import openapi_document

    doc = openapi_document(PREFIX)
    fields = doc["components"]["schemas"]["BookingRequest"]["properties"]
    assert "quoted_total_paise" in fields
    assert "total_paise" in doc["components"]["schemas"]["ErrorBody"]["properties"]


# --- what a caller hears when they cancel --------------------------------------------

class Assigned:
    """A paid ₹100 booking a rider has taken: a ₹25.50 fee, ₹74.50 back."""

    preview = {"allowed": True, "refund_paise": 7450, "fee_paise": 2550,
               "reason_code": "cancellation_fee", "status": "assigned", "drop": "Bettiah HO"}

    def cancel_preview(self, ref: str) -> dict[str, Any]:
        return dict(self.preview)

    def cancel(self, ref: str, shown: dict[str, Any]) -> dict[str, Any]:
        assert (shown["refund_paise"], shown["fee_paise"]) == (7450, 2550)
        return {"done": True, "refund_paise": 7450, "fee_paise": 2550}


@pytest.mark.parametrize("lang,fee,refund", [
    ("en", "twenty-five rupees and fifty paise", "seventy-four rupees and fifty paise"),
    ("hi", "पच्चीस रुपये पचास पैसे", "चौहत्तर रुपये पचास पैसे"),
    ("ta", "25 ரூபாய் 50 பைசா", "74 ரூபாய் 50 பைசா"),
])
def test_a_cancellation_fee_and_refund_are_said_to_the_paisa(lang: str, fee: str,
                                                             refund: str) -> None:
    """Each was rounded to whole rupees on its own: "fee 26, refund 75", ₹101 of ₹100."""
    from core.dialog.voice import VOICE_DIALOG

    state, ports = DialogState("menu", {"cancel_ref": "48217730"}), Assigned()
    asked = " ".join(text for _, text in segments(
        enter(VOICE_DIALOG, Ctx(state, ports, lang), "cancel_confirm"), lang))
    assert fee in asked and refund in asked, asked
    done = " ".join(text for _, text in segments(
        turn(VOICE_DIALOG, state, UserInput(text="1"), ports, lang), lang))
    assert refund in done, done


def test_a_whole_rupee_amount_is_said_without_paise() -> None:
    from core.dialog.voice import amount
    from ivr_flows.twiml import text_of

    assert text_of(amount(10000, "hi"), "hi") == "एक सौ रुपये"
    assert text_of(amount(2550, "hi"), "hi") == "पच्चीस रुपये पचास पैसे"  # not "छब्बीस"
    with pytest.raises(ValueError):
        amount(-1, "hi")


def test_every_catalog_says_rupees_and_paise() -> None:
    for lang in i18n.LANGUAGES:
        text = i18n.raw("ivr.amount_paise", lang)
        assert i18n.placeholders(text) == {"rupees", "paise"}, lang
        assert text != i18n.raw("ivr.amount_paise", "en") or lang == "en", lang

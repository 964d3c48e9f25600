"""Two post offices of one pincode sharing a name (fix of tests/test_zz_rev4_ivr.py's
second test): 226002 (Lucknow) has Arjunganj BO, a village branch office, and Arjunganj
SO, 3 km apart, both shown as "Arjunganj". The app is offered the directory's names
(db4fe1a); a caller, and a WhatsApp customer, heard or read "Arjunganj" for either, were
read back the same words whichever they picked, and the booking kept "Arjunganj", which
is all the rider's SMS said of the place. Now each is offered, read back and booked by a
name that picks it (core.domain.office_names)."""

from __future__ import annotations

from itertools import count
from typing import Any

import pytest
from sqlalchemy import select

from bots.whatsapp_text import text_of
from core import i18n
from core.adapters import pincode
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, Person, Point
from core.dialog.engine import Say
from core.domain.office_names import offered_names, told_apart
from core.services import dispatch
from tests.conftest import read_first, send_whatsapp
from tests.test_ivr import Caller, phone, prompts, t  # noqa: F401  (fixtures)

pytestmark = pytest.mark.db

PIN = "226002"
_sid = count(1)


def _arjunganj_point() -> None:
    """A Point at Arjunganj SO: every office of 226002 is served."""
    so = next(o for o in pincode.post_offices(PIN) if o.office_name == "Arjunganj SO")
    with transaction() as s:
        s.add(Point(name="Arjunganj", lat=so.lat, lng=so.lng, pincode=PIN, active=True))


def _booked() -> tuple[str | None, str]:
    """The one booking's pickup post office, and its first leg's start as the rider's SMS
    names it (dispatch.place)."""
    with transaction() as s:
        booking = s.scalars(select(Booking)).one()
        leg = s.scalars(select(Leg).where(Leg.booking_id == booking.id)).one()
        return booking.pickup_post_office, dispatch.place(s, booking, leg, "from")


# --- the phone ----------------------------------------------------------------------------

def test_ivr_each_arjunganj_is_confirmed_in_its_own_words_and_booked_by_them(
        phone: Caller) -> None:  # noqa: F811
    """The caller picks Arjunganj BO (1 on the first page) and hears "Place: Arjunganj
    branch post office"; keys the pincode again and picks Arjunganj SO (6 on the second
    page): "Place: Arjunganj sub post office". (Both were "Place: Arjunganj".) Booked,
    the pickup is "Arjunganj Sub Office", and so the rider reads it."""
    _arjunganj_point()
    with transaction() as s:
        s.add(Person(phone=phone.phone, role="customer", preferred_language="hi"))
    digits = "2 2 6, 0 0 2"
    phone.call()
    phone.press("1")  # send a parcel
    phone.press(f"{PIN}#")
    branch = phone.press("1").text  # Arjunganj BO
    assert t("ivr.place.confirm", place=t("office.branch", name="Arjunganj"),
             digits=digits) in branch, branch
    phone.press("2")  # not that one: key the pincode again
    phone.press(f"{PIN}#")
    phone.press("9")  # the second page
    sub = phone.press("6").text  # Arjunganj SO
    assert t("ivr.place.confirm", place=t("office.sub", name="Arjunganj"),
             digits=digits) in sub, sub
    phone.press("1")  # right
    phone.press(f"{PIN}#")
    phone.press("2")  # Bakkash, 13 km away
    phone.press("1")
    phone.press("9876543210#")
    phone.press("1")
    phone.press("1")  # fits in a bag
    phone.press("1")  # up to 5 kg
    heard = phone.press("2")  # standard
    assert t("office.sub", name="Arjunganj") in heard.text, heard.text  # the summary
    phone.press("1")  # book
    assert _booked() == ("Arjunganj Sub Office", "Arjunganj Sub Office")


# --- the chat -------------------------------------------------------------------------

CUSTOMER = "+919812300177"


def _send(client, text: str) -> str:  # noqa: ANN001
    return send_whatsapp(client, {
        "MessageSid": f"SMsame{next(_sid):06d}", "AccountSid": "ACsame",
        "From": f"whatsapp:{CUSTOMER}", "To": "whatsapp:+14155238886",
        "WaId": CUSTOMER.lstrip("+"), "ProfileName": "Sita", "NumMedia": "0", "Body": text})


def test_chat_lists_each_arjunganj_by_its_own_name_and_books_it_so(client,
                                                                monkeypatch) -> None:
    """The chat's list read "1. Arjunganj" and, on its second page, "5. Arjunganj"; picked,
    either was "Arjunganj, Lucknow (226002)" in the booking's summary and booked as
    "Arjunganj". Now the list says which office each is, the summary and the booking name
    the one picked."""
    _arjunganj_point()
    _send(client, "hi")
    _send(client, "2")  # English
    _send(client, "1")  # send a parcel
    first = _send(client, PIN)
    assert f"1. {i18n.t('office.branch', 'en', name='Arjunganj')}" in first, first
    second = _send(client, "9")
    assert f"5. {i18n.t('office.sub', 'en', name='Arjunganj')}" in second, second
    for text in ("5", "skip", PIN, "2", "skip", "Sunita Patil", "9822012345", "4", "1",
                 "1", "no", "1"):  # Arjunganj SO; Bakkash; the parcel
        _send(client, text)
    summary = _send(client, "2")  # standard
    assert "Arjunganj Sub Office, Lucknow (226002)" in summary, summary
    read_first(monkeypatch)
    _send(client, "1")  # book
    assert _booked() == ("Arjunganj Sub Office", "Arjunganj Sub Office")


# --- the names -----------------------------------------------------------------------------

def _places(pin: str) -> list[dict[str, Any]]:
    """226002's offices as the dialog's ports give them (core.services.conversation)."""
    return [{"lat": o.lat, "lng": o.lng, "pincode": o.pincode, "post_office": o.office_name,
             "name": o.name, "district": o.district, "landmark": None}
            for o in pincode.post_offices(pin) if o.lat is not None]


@pytest.mark.parametrize("pin", [
    "226002",  # Arjunganj BO and SO: a branch and a sub post office
    "203001",  # Dariyapur BO twice, Hathras and Bulandshahr: by district
    "224122",  # Bhupatipur BO twice, one district, 46 km apart: by a village near one of them
    "454446",  # Barda and Barda B.O at one spot: their order (and Khandlai, by a village)
])
def test_every_name_said_in_a_list_picks_one_office(pin: str) -> None:
    """India Post's directory has 67 names shared within a pincode, most alike in kind or
    district too: each list names every office apart, in every language, and writes it
    apart for the booking, without the BO/SO display_name drops."""
    from core.dialog.booking import said_name

    places = told_apart(_places(pin))
    written = [p["name"] for p in places]
    assert len(set(written)) == len(written), written
    assert all(pincode.display_name(name) == name for name in written), written
    for lang in i18n.LANGUAGES:
        said = [text_of(s, lang) if isinstance(s, Say) else s for s in map(said_name, places)]
        assert len(set(said)) == len(said), (lang, said)


def test_the_app_is_still_offered_the_directorys_names() -> None:
    """offered_names, moved to core.domain.office_names, offers what the API takes back."""
    offices = pincode.post_offices(PIN)
    names = offered_names(offices)
    assert names.count("Arjunganj BO") == names.count("Arjunganj SO") == 1
    assert "Arjunganj" not in names and "Bakkash" in names

"""Review r4: a whole keypad booking as a caller hears it, through the signed voice webhooks
(Hindi and English): the details SMS with real long office names, a village deep in a big
pincode's list, and a village told apart by a number said beside another key."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core.adapters.db import transaction
from core.adapters.models import Booking, Conversation, OutboxMessage, Person, Point
from core.adapters.pincode import pincode_centroid, post_offices
from core.services import ivr
from tests.test_i18n import sms_parts
from tests.test_ivr import START, Caller, Heard, phone, prompts, t  # noqa: F401

LANG_KEY = {"hi": "1", "en": "2"}  # the language list's keys


def add_point_at(pin: str, name: str | None = None) -> None:
    """An active Point (ops add them anywhere they start work): at office ``name`` of the
    pincode, or at the pincode's centre."""
    if name is None:
        lat, lng = pincode_centroid(pin)
        office = None
    else:
        office = next(o for o in post_offices(pin) if o.name == name)
        lat, lng = office.lat, office.lng
    with transaction() as s:
        s.add(Point(name=name or f"Point {pin}", lat=lat, lng=lng, pincode=pin,
                    post_office=office.office_name if office else None,
                    district=office.district if office else None,
                    state=office.state if office else None, active=True))


def key_for(heard: Heard, label: str) -> str | None:
    """The key the caller is told to press for ``label`` in a spoken list (None if it is
    not on this page)."""
    texts = [text for _, text in heard.says]
    if label not in texts:
        return None
    return re.search(r"\d", texts[texts.index(label) + 1]).group()


def choose_village(caller: Caller, pin: str, name: str, lang: str) -> Heard:
    """Key the pincode, turn the pages (9) until ``name`` is read out, press its key, and
    say that is right: as a caller who makes no mistake does."""
    heard = caller.press(f"{pin}#")
    pages = 1
    while (key := key_for(heard, name)) is None:
        assert heard.gather is not None, heard.text
        heard = caller.press("9")
        pages += 1
    heard = caller.press(key)
    assert t("ivr.too_long", lang) not in heard.text, (
        f"cut off while choosing {name} on page {pages} of pincode {pin}: {heard.text}")
    return caller.press("1")


def book_by_keypad(caller: Caller, lang: str, pickup: tuple[str, str],
                   drop: tuple[str, str], *, known: bool = False) -> Heard:
    """A whole booking with no mistake: language (unless known), 1 = send a parcel, both
    places, the receiver's number, a bag of up to 5 kg, the first speed offered, book it."""
    caller.call()
    if not known:
        caller.press(LANG_KEY[lang])
    caller.press("1")
    choose_village(caller, *pickup, lang)
    heard = choose_village(caller, *drop, lang)
    assert t("ivr.phone.ask", lang) in heard.text, heard.text
    caller.press("9876543210#")
    caller.press("1")  # that is right
    caller.press("1")  # fits in a bag
    caller.press("1")  # up to 5 kg
    heard = caller.press("1")  # the first speed offered
    assert t("ivr.confirm.yes", lang) in heard.text, heard.text
    return caller.press("1")  # book it


# --- 1. the details SMS with real office names ----------------------------------------

# Two real India Post offices of West and East Champaran, 28 characters each (the
# directory's own names; the phone offers and books them so).
JAGDISHPUR = ("845459", "Jagdishpur SO West Champaran")
SANGRAMPUR = ("845434", "Sangrampur SO East Champaran")


@pytest.mark.parametrize("lang,way", [("hi", "sms"), ("en", "sms"), ("en", "whatsapp")])
def test_the_details_of_a_booking_between_real_long_named_offices_fit_two_sms(
        phone: Caller, lang: str, way: str) -> None:  # noqa: F811
    """The booking's details (ivr.sms.details, or ivr.sms.details_whatsapp for a caller
    who stopped our SMS) name both offices uncut, as the call did (ivr.VoicePorts.confirm):
    with two real 28-character offices they take 3 SMS parts (UCS-2: Devanagari, or the ₹
    of the total even in English), over the 2 parts every SMS text must fit (the
    catalogs' rule; test_i18n holds both keys to it, but only with short names)."""
    add_point_at(*SANGRAMPUR)  # ops serve East Champaran too
    if way == "whatsapp":
        with transaction() as s:
            person = Person(phone=phone.phone, role="customer", preferred_language=lang,
                            sms_opted_out=True)
            s.add(person)
            s.flush()
            s.add(Conversation(channel="whatsapp", contact=phone.phone.removeprefix("+"),
                               person_id=person.id, step="menu", state={}, misses=0,
                               last_inbound_at=START - timedelta(hours=1)))
    heard = book_by_keypad(phone, lang, JAGDISHPUR, SANGRAMPUR, known=way == "whatsapp")
    with transaction() as s:
        booking = s.scalar(select(Booking))
        assert booking is not None, heard.text
        [details] = s.scalars(select(OutboxMessage).where(
            OutboxMessage.dedupe_key == ivr.details_key(booking.id))).all()
        body, channel = details.body, details.channel
    assert channel == way
    assert JAGDISHPUR[1] in body and SANGRAMPUR[1] in body and booking.reference in body
    assert sms_parts(body) <= 2, (
        f"{lang} details by {way}: {sms_parts(body)} SMS parts ({len(body)} characters): "
        f"{body}")


# --- 2. a village deep in a big pincode's list -----------------------------------------

def test_a_caller_choosing_villages_on_late_pages_of_a_big_pincode_is_not_cut_off(
        phone: Caller) -> None:  # noqa: F811
    """791118 (Kurung Kumey) lists 149 offices, 126 of them within the service radius of
    a Point at its centre: 18 pages of 7, turned only by 9, one at a time. Each 9 is one
    of the call's MAX_TURNS (40) answers, so a caller whose pickup (Yumlam) and drop
    (Yorda) are on the last page makes no mistake and is still told 'This call has gone
    on too long' before the booking is made (core/dialog/voice.py office_prompt/
    office_handle, core/services/ivr.py MAX_TURNS)."""
    add_point_at("791118")
    heard = book_by_keypad(phone, "en", ("791118", "Yumlam"), ("791118", "Yorda"))
    assert t("ivr.too_long", "en") not in heard.text, heard.text
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(Booking)) == 1


# --- 3. a village told apart by a number ----------------------------------------------

@pytest.mark.parametrize("lang", ["hi", "en"])
def test_a_village_told_apart_by_a_number_is_not_said_with_a_number_other_than_its_key(
        phone: Caller, lang: str) -> None:  # noqa: F811
    """814103 has two offices named Dumaria, alike in kind, district and nearest office,
    so told_apart names them by number (office.number): the caller hears 'Dumaria, number
    1 - Press 4. Dumaria, number 2 - Press 5.' Two numbers for one choice; a caller who
    presses the 1 or 2 they heard books Bichhia Pahari or Chunjo (core/dialog/voice.py
    office_prompt, core/domain/office_names.py told_apart)."""
    add_point_at("814103")
    phone.call()
    phone.press(LANG_KEY[lang])
    phone.press("1")
    phone.press("814103#")
    heard = phone.press("9")  # the second page
    texts = [text for _, text in heard.says]
    dumarias = [i for i, text in enumerate(texts) if text.startswith("Dumaria")]
    assert len(dumarias) == 2, texts
    for i in dumarias:
        label, key = texts[i], re.search(r"\d", texts[i + 1]).group()
        said = set(re.findall(r"\d", label))
        assert said <= {key}, f"{label!r} is followed by {texts[i + 1]!r}"

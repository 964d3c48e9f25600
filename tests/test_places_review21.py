"""Review 21 (places): two post offices India Post puts at one spot, and two offices of
one pincode sharing a name (the defects of tests/test_zz_rev15_places.py, fixed).

8,301 of 19,586 pincodes have two or more post offices at one position (often the
pincode's centre): two villages there are not one place, but there is no distance to
price the trip by. The chat asks for a location pin (bot.*.pin_needed); a keypad caller
cannot send one, and an app is told so with a code of its own."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters import pincode
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff
from core.adapters.models import Point
from core.api.customer import AmbiguousPincode, _place
from core.api.schemas import PlaceIn
from core.config import get_settings
from tests.test_api import API, PARCEL, sign_in
from tests.test_ivr import Caller, phone, prompts, step_of, t  # noqa: F401  (fixtures)

pytestmark = pytest.mark.db


# --- the phone: two villages at one spot -------------------------------------------------

def _belwa_more_to_briti_matiaria(phone: Caller) -> str:  # noqa: F811
    """Book from Belwa More to Briti Matiaria (845453: one position for both); what the
    caller hears on confirming the drop."""
    spot = {(o.lat, o.lng) for o in pincode.post_offices("845453")
            if o.name in ("Belwa More", "Briti Matiaria")}
    assert len(spot) == 1  # the directory's fact this is about
    phone.call()
    phone.press("2")  # English
    phone.press("1")  # book
    heard = phone.press("845453#")
    assert "Belwa More" in heard.text and "Briti Matiaria" in heard.text
    phone.press("3")  # Belwa More
    phone.press("1")  # right
    phone.press("845453#")  # the drop: same pincode
    phone.press("5")  # Briti Matiaria
    return phone.press("1").text  # right


def test_ivr_two_villages_at_one_spot_are_not_called_the_same_place(
        phone: Caller) -> None:  # noqa: F811
    """Copied from review 15: the caller is not told two villages are one place; they
    hear that our map puts both at one spot, and a way on (a person, a nearby village)."""
    heard = _belwa_more_to_briti_matiaria(phone)
    assert t("ivr.place.same", "en") not in heard, heard
    assert t("ivr.place.one_spot", "en", place="Briti Matiaria", other="Belwa More") in heard
    assert t("ivr.place.spot_person", "en") in heard
    assert t("ivr.place.spot_other", "en") in heard


def test_ivr_one_spot_then_a_nearby_village_books_on(phone: Caller) -> None:  # noqa: F811
    """2 = key the pincode again: a nearby village (Dumara, elsewhere on the map) is taken
    and the booking goes on to the receiver's number."""
    _belwa_more_to_briti_matiaria(phone)
    heard = phone.press("2")
    assert t("ivr.drop.ask", "en") in heard.text, heard.text
    phone.press("845453#")
    phone.press("7")  # Dumara
    heard = phone.press("1")  # right
    assert t("ivr.phone.ask", "en") in heard.text, heard.text


def test_ivr_one_spot_then_a_person_keeps_the_draft(phone: Caller) -> None:  # noqa: F811
    """1 = a person who books it: the caller is put through (on the waiting list first),
    and the pickup they gave is still there to finish when they call again."""
    _belwa_more_to_briti_matiaria(phone)
    heard = phone.press("1")
    assert heard.dial == get_settings().ops_phone, heard.xml
    with transaction() as s:
        assert s.scalar(select(Handoff.reason).where(Handoff.status == "waiting")) == "asked"
    phone.hang_up()
    heard = phone.call()
    assert t("ivr.resume.ask", "en", place="Belwa More") in heard.text, heard.text
    heard = phone.press("1")  # finish that booking
    assert t("ivr.drop.ask", "en") in heard.text, heard.text


def test_ivr_one_village_twice_is_still_the_same_place(phone: Caller) -> None:  # noqa: F811
    """One village as pickup and drop is nothing to carry: said so, the drop asked again."""
    phone.call()
    phone.press("2")  # English
    phone.press("1")  # book
    phone.press("845453#")
    phone.press("3")  # Belwa More
    phone.press("1")
    phone.press("845453#")
    phone.press("3")  # Belwa More again
    heard = phone.press("1")
    assert t("ivr.place.same", "en") in heard.text, heard.text
    assert t("ivr.place.one_spot", "en", place="Belwa More", other="Belwa More") \
        not in heard.text
    assert step_of(phone.phone) == "drop"


# --- the app: two offices at one spot -----------------------------------------------------

def _bettiah_point() -> tuple[pincode.PostOffice, pincode.PostOffice]:
    bettiah = next(o for o in pincode.post_offices("845438") if o.name == "Bettiah")
    chanpatia = next(o for o in pincode.post_offices("845449") if o.name == "Chanpatia R S")
    assert (bettiah.lat, bettiah.lng) == (chanpatia.lat, chanpatia.lng)  # the directory's
    with transaction() as s:
        s.add(Point(name="Bettiah", lat=bettiah.lat, lng=bettiah.lng, pincode="845438",
                    active=True))
    return bettiah, chanpatia


BETTIAH_TO_CHANPATIA = {"pickup": {"pincode": "845438", "post_office": "Bettiah"},
                        "drop": {"pincode": "845449", "post_office": "Chanpatia R S"},
                        "parcel": PARCEL}


def test_api_two_offices_at_one_spot_are_not_refused_as_the_same_place(client,
                                                                       clean_db) -> None:
    """Copied from review 15: Bettiah HO and Chanpatia R S SO (two pincodes, one position)
    are refused with a code of their own naming the drop's position to send."""
    _bettiah_point()
    headers = sign_in(client)
    r = client.post(f"{API}/quotes", headers=headers, json=BETTIAH_TO_CHANPATIA)
    assert r.status_code == 422, r.get_json()
    err = r.get_json()["error"]
    assert err["code"] != "same_place", err
    assert err["code"] == "position_needed" and err["field"] == "drop.lat", err


def test_api_booking_two_offices_at_one_spot_asks_for_a_position(client, clean_db) -> None:
    _bettiah_point()
    headers = sign_in(client)
    r = client.post(f"{API}/bookings", headers={**headers, "Idempotency-Key": "k-spot-1"},
                    json={**BETTIAH_TO_CHANPATIA, "tier": "standard",
                          "recipient": {"name": "Sita", "phone": "98765 43210"}})
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["error"]["code"] == "position_needed", r.get_json()


def test_api_the_position_asked_for_gives_a_quote(client, clean_db) -> None:
    """With the drop's pin (1.5 km off the shared spot) the same trip is quoted."""
    bettiah, _ = _bettiah_point()
    headers = sign_in(client)
    assert bettiah.lat is not None and bettiah.lng is not None
    r = client.post(f"{API}/quotes", headers=headers, json={
        **BETTIAH_TO_CHANPATIA, "drop": {"lat": bettiah.lat + 0.0135, "lng": bettiah.lng}})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["distance_m"] > 1000


def test_api_one_office_twice_is_still_the_same_place(client, clean_db) -> None:
    _bettiah_point()
    headers = sign_in(client)
    r = client.post(f"{API}/quotes", headers=headers, json={
        **BETTIAH_TO_CHANPATIA, "drop": {"pincode": "845438", "post_office": "Bettiah"}})
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["error"]["code"] == "same_place", r.get_json()


# --- the app: two offices of one pincode sharing a name ----------------------------------

def test_api_ambiguous_pincode_offers_names_that_each_pick_one_office(client,
                                                                      clean_db) -> None:
    """Copied from review 15: 226002 has two offices called Arjunganj (BO and SO, 3 km
    apart); the names offered are distinct."""
    headers = sign_in(client)
    r = client.post(f"{API}/quotes", headers=headers, json={
        "pickup": {"pincode": "226002"}, "drop": {"pincode": "226002"}, "parcel": PARCEL})
    assert r.status_code == 422, r.get_json()
    err = r.get_json()["error"]
    assert err["code"] == "ambiguous_pincode"
    offered = err["offices"]
    assert len(offered) == len(set(offered)), offered
    assert "Arjunganj BO" in offered and "Arjunganj SO" in offered, offered
    assert "Bakkash" in offered  # a name no other office has is offered as it is shown


def test_each_offered_name_picks_its_own_office() -> None:
    """Every name offered, sent back as post_office, resolves to a different office, at
    that office's own position."""
    offices = pincode.post_offices("226002")
    with pytest.raises(AmbiguousPincode) as asked:
        _place(PlaceIn(pincode="226002"))
    offered = asked.value.offices
    assert len(offered) == len(offices)
    picked = [_place(PlaceIn(pincode="226002", post_office=name)) for name in offered]
    assert len({p.post_office for p in picked}) == len(offices)
    so = next(o for o in offices if o.office_name == "Arjunganj SO")
    got = _place(PlaceIn(pincode="226002", post_office="Arjunganj SO"))
    assert (got.post_office, got.lat, got.lng) == ("Arjunganj SO", so.lat, so.lng)


def test_api_a_name_two_offices_share_is_asked_about(client, clean_db) -> None:
    """"Arjunganj" alone could be either office, kilometres apart: the app is asked which
    (the two names offered), not priced from the first."""
    headers = sign_in(client)
    r = client.post(f"{API}/quotes", headers=headers, json={
        "pickup": {"pincode": "226002", "post_office": "Arjunganj"},
        "drop": {"pincode": "226002", "post_office": "Bakkash"}, "parcel": PARCEL})
    assert r.status_code == 422, r.get_json()
    err = r.get_json()["error"]
    assert err["code"] == "ambiguous_pincode" and err["field"] == "pickup.post_office", err
    assert sorted(err["offices"]) == ["Arjunganj BO", "Arjunganj SO"], err

"""Ops change what a partner signed up with: vehicle, language, app (review: they could not).

A rider who sold the bicycle for an e-rickshaw, a phone that changed hands to a Marathi
speaker, a rider who got a smartphone: nothing but a new sign-up (refused: the phone is a
partner already) could change these. ``PUT /api/v1/ops/partners/<id>/vehicle|language|app``
change them under the partner's row lock, audited, and dispatch sees the change at the
next search.

Real PostgreSQL and Redis; time frozen.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters import geo_index
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import PartnerProfile, Person, Vehicle
from core.adapters.redis_conn import redis_client
from core.domain import dispatch as rules
from core.domain.pricing import SizeBucket, VehicleType, WeightBucket
from core.services import dispatch
from tests.test_admin import _keep_root_handlers, run  # noqa: F401  (autouse fixture)
from tests.test_api import API, sign_in
from tests.test_dispatch import (
    LAXMIPUR,
    OPS,
    booking_status,
    frozen,  # noqa: F401  (fixture)
    legs_of,
    make_partner,
    offers,
    paid_booking,
    sms,
    start,
)

pytestmark = pytest.mark.db

SACK_50 = rules.Load(SizeBucket.SACK, WeightBucket.W50, 0)  # a bicycle cannot carry it
NEAR_KM = 3


def _found_for(load: rules.Load) -> list[int]:
    with transaction() as s:
        return [r.candidate.partner_id
                for r in dispatch.find_candidates(s, *LAXMIPUR, load, NEAR_KM)]


def _audits(action: str) -> list[dict]:
    with transaction() as s:
        return [dict(a.details, actor=a.actor, target=a.target) for a in s.scalars(
            select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id))]


def _vehicles(pid: int) -> list[tuple[str, int, bool]]:
    with transaction() as s:
        return [(v.type, v.payload_kg, v.active) for v in s.scalars(
            select(Vehicle).where(Vehicle.partner_id == pid).order_by(Vehicle.id))]


def test_a_new_vehicle_is_what_dispatch_fits_parcels_to(client, live, frozen):  # noqa: F811
    pid, phone = make_partner("Ramesh", LAXMIPUR, VehicleType.BICYCLE, lang="en")
    assert pid not in _found_for(SACK_50)  # the facts are now cached in Redis
    ops = sign_in(client, OPS)
    r = client.put(f"{API}/ops/partners/{pid}/vehicle", headers=ops,
                   json={"vehicle": "e_rickshaw", "payload_kg": 150,
                         "note": "bought an e-rickshaw, call +919812388802"})
    assert r.status_code == 200, r.get_json()
    row = r.get_json()
    assert (row["vehicles"], row["payload_kg"]) == (["e_rickshaw"], 150)
    # The bicycle is kept, retired (past legs name it); the new one is in use.
    assert _vehicles(pid) == [("bicycle", 20, False), ("e_rickshaw", 150, True)]
    assert pid in _found_for(SACK_50)  # the cached facts did not hide the change
    (entry,) = _audits("partner.vehicle")
    assert (entry["before"], entry["after"]) == ("bicycle 20 kg", "e_rickshaw 150 kg")
    assert entry["target"] == f"partner:{pid}" and entry["actor"].startswith("ops:")
    assert "9812388802" not in entry["note"] and phone not in str(entry)
    # The same again changes nothing and audits nothing.
    r = client.put(f"{API}/ops/partners/{pid}/vehicle", headers=ops,
                   json={"vehicle": "e_rickshaw", "payload_kg": 150})
    assert r.status_code == 200 and len(_vehicles(pid)) == 2
    assert len(_audits("partner.vehicle")) == 1


def test_an_offer_held_for_a_parcel_the_new_vehicle_cannot_carry_is_refused_at_the_yes(
        client, live, frozen):  # noqa: F811
    pid, phone = make_partner("Ramesh", LAXMIPUR, VehicleType.E_RICKSHAW, payload_kg=150,
                              lang="en")
    booking_id = paid_booking(size=SizeBucket.SACK, weight=WeightBucket.W50)
    start(booking_id)
    leg = legs_of(booking_id)[0]
    assert [o.partner_id for o in offers(leg.id)] == [pid]
    r = client.put(f"{API}/ops/partners/{pid}/vehicle", headers=sign_in(client, OPS),
                   json={"vehicle": "bicycle", "payload_kg": 20, "note": "sold it"})
    assert r.status_code == 200, r.get_json()
    from core import i18n

    assert sms(client, phone, "1") == [i18n.t("dispatch.unfit_vehicle", "en", job=str(leg.id))]
    assert booking_status(booking_id) == "dispatching"
    assert legs_of(booking_id)[0].partner_id is None


def test_a_payload_the_vehicle_cannot_take_is_refused_and_nothing_changes(
        client, live, frozen):  # noqa: F811
    pid, _ = make_partner("Ramesh", LAXMIPUR, VehicleType.BICYCLE, lang="en")
    ops = sign_in(client, OPS)
    for body, code in (({"vehicle": "bicycle", "payload_kg": 200}, "bad_payload"),
                       ({"vehicle": "bicycle", "payload_kg": 2}, "bad_payload"),
                       ({"vehicle": "tractor", "payload_kg": 20}, None)):
        r = client.put(f"{API}/ops/partners/{pid}/vehicle", headers=ops, json=body)
        assert r.status_code == 422, (body, r.get_json())
        if code:
            assert r.get_json()["error"]["code"] == code, r.get_json()
    assert _vehicles(pid) == [("bicycle", 20, True)] and _audits("partner.vehicle") == []
    r = client.put(f"{API}/ops/partners/999999/vehicle", headers=ops,
                   json={"vehicle": "bicycle", "payload_kg": 10})
    assert r.status_code == 404, r.get_json()


def test_a_new_language_is_the_one_their_sms_come_in(client, live, frozen):  # noqa: F811
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="hi", on_duty=False)
    ops = sign_in(client, OPS)
    english_on = sms(client, phone, "ON")
    r = client.put(f"{API}/ops/partners/{pid}/language", headers=ops,
                   json={"language": "en", "note": "the phone is his son's now"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["language"] == "en"
    with transaction() as s:
        person = s.scalar(select(Person).join(PartnerProfile).where(PartnerProfile.id == pid))
        assert person is not None and person.preferred_language == "en"
    # The same command answered in English now, not in the Hindi of before.
    sms(client, phone, "OFF")
    after = sms(client, phone, "ON")
    assert after != english_on and all(ch.isascii() for ch in "".join(after)), after
    (entry,) = _audits("partner.language")
    assert (entry["before"], entry["after"]) == ("hi", "en")
    r = client.put(f"{API}/ops/partners/{pid}/language", headers=ops, json={"language": "xx"})
    assert r.status_code == 422, r.get_json()
    assert len(_audits("partner.language")) == 1


def test_a_rider_who_gets_the_app_leaves_the_home_set(client, live, frozen):  # noqa: F811
    pid, _ = make_partner("Ramesh", LAXMIPUR, lang="en")  # on duty, SMS only
    load = rules.Load(SizeBucket.BAG, WeightBucket.W5, 0)
    assert pid in _found_for(load)  # found at his home Point
    ops = sign_in(client, OPS)
    r = client.put(f"{API}/ops/partners/{pid}/app", headers=ops, json={"app": True})
    assert r.status_code == 200 and r.get_json()["has_app"] is True, r.get_json()
    # With the app he is found by the app's fresh position only, never at home.
    assert redis_client().sismember(geo_index.APP_KEY, str(pid))
    assert pid not in _found_for(load)
    r = client.put(f"{API}/ops/partners/{pid}/app", headers=ops,
                   json={"app": False, "note": "phone broken"})
    assert r.status_code == 200 and r.get_json()["has_app"] is False
    assert not redis_client().sismember(geo_index.APP_KEY, str(pid))
    assert pid in _found_for(load)
    assert [(a["before"], a["after"]) for a in _audits("partner.app")] == [
        (False, True), (True, False)]


def test_an_erased_partner_is_refused(client, live, frozen):  # noqa: F811
    pid, _ = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    with transaction() as s:
        p = s.get(PartnerProfile, pid)
        assert p is not None
        p.first_name = ""  # as an erasure leaves the profile
    ops = sign_in(client, OPS)
    for path, body in (("vehicle", {"vehicle": "bicycle", "payload_kg": 10}),
                       ("language", {"language": "en"}), ("app", {"app": True})):
        r = client.put(f"{API}/ops/partners/{pid}/{path}", headers=ops, json=body)
        assert r.status_code == 409 and r.get_json()["error"]["code"] == "erased", \
            (path, r.get_json())

"""A Point (village hub) closed or moved by ops (review: a Point could be added, never
closed nor moved).

``POST /api/v1/ops/points/<id>/close`` (and ``close-point``) makes a Point inactive:
new relays are planned through other Points, and partners whose home it is keep it as
their home but are no longer placed there (another active Point they serve, else no
home position: the answer lists them, for ops to move). It is refused (409
``point_in_use``, naming the bookings) while a parcel waits at the Point or is on its way
to it. ``PUT /api/v1/ops/points/<id>/position`` (and ``move-point``) moves a Point to a
spot nearby (at most POINT_MOVE_MAX_M), refused in the same case. Both audited, the
same again changes nothing, and the home set in Redis follows at once.

Real PostgreSQL and Redis; time frozen.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Booking, PartnerPoint, Point
from core.domain import dispatch as rules
from core.domain.errors import ValidationError
from core.domain.pricing import SizeBucket, WeightBucket
from core.services import admin, dispatch
from tests.test_admin import _keep_root_handlers, run  # noqa: F401  (autouse fixture)
from tests.test_api import API, sign_in
from tests.test_dispatch import (
    CUSTOMER,
    OPS,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    make_point,
    paid_booking,
    sms,
    start,
)
from tests.test_dispatch_relay import A, B, D, P

pytestmark = pytest.mark.db

LOAD = rules.Load(SizeBucket.BAG, WeightBucket.W5, 0)
NEAR_KM = 3
A2 = (26.85, 84.48)  # 1 km east of Point A
C = (26.95, 84.47)  # 11 km north of Point A


def _near(at: tuple[float, float]) -> list[int]:
    with transaction() as s:
        return [r.candidate.partner_id
                for r in dispatch.find_candidates(s, *at, LOAD, NEAR_KM)]


def _point(point_id: int) -> Point:
    with transaction() as s:
        p = s.get(Point, point_id)
        assert p is not None
        s.expunge(p)
        return p


def _audits(action: str) -> list[dict]:
    with transaction() as s:
        return [dict(a.details, actor=a.actor, target=a.target) for a in s.scalars(
            select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id))]


def _serves(pid: int, point_id: int) -> None:
    with transaction() as s:
        s.add(PartnerPoint(partner_id=pid, point_id=point_id))


def _ref(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).reference


def close(client, ops, point_id: int, **body):
    return client.post(f"{API}/ops/points/{point_id}/close", headers=ops, json=body)


def move(client, ops, point_id: int, lat: float, lng: float, **body):
    return client.put(f"{API}/ops/points/{point_id}/position", headers=ops,
                      json={"lat": lat, "lng": lng, **body})


# --- closing ------------------------------------------------------------------------------


def test_a_closed_point_is_left_out_of_new_relays(client, live, frozen):  # noqa: F811
    point_a, point_a2, point_b = (make_point("Point A", *A), make_point("Point A2", *A2),
                                  make_point("Point B", *B))
    ops = sign_in(client, OPS)
    spec = client.get(f"{API}/openapi.json").get_json()
    assert "post" in spec["paths"][f"{API}/ops/points/{{point_id}}/close"]
    assert "put" in spec["paths"][f"{API}/ops/points/{{point_id}}/position"]
    r = close(client, ops, point_a, note="the shop closed, owner +919812388802")
    assert r.status_code == 200, r.get_json()
    row = r.get_json()
    assert (row["id"], row["active"], row["home_partner_ids"]) == (point_a, False, [])
    assert _point(point_a).active is False
    (entry,) = _audits("point.close")
    assert entry["target"] == f"point:{point_a}" and entry["actor"].startswith("ops:")
    assert "9812388802" not in entry["note"] and "shop closed" in entry["note"]
    make_partner("Ramesh", A2, point_id=point_a2, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    assert [(leg.from_point_id, leg.to_point_id) for leg in legs_of(booking_id)] == [
        (None, point_a2), (point_a2, point_b), (point_b, None)]
    # Closed again: nothing changed, nothing audited.
    r = close(client, ops, point_a)
    assert r.status_code == 200 and r.get_json()["active"] is False
    assert len(_audits("point.close")) == 1
    # By name, a closed Point is none (a partner cannot be given it as home).
    with pytest.raises(ValidationError, match="no active Point"):
        with transaction() as s:
            admin.find_point(s, "Point A")


def test_a_point_closed_while_a_relay_is_planned_is_planned_around(live, frozen,  # noqa: F811
                                                                   monkeypatch):
    point_a, point_a2, point_b = (make_point("Point A", *A), make_point("Point A2", *A2),
                                  make_point("Point B", *B))
    make_partner("Ramesh", A2, point_id=point_a2, max_active_legs=1)
    real = rules.plan_relay
    planned: list[list[int | None]] = []

    def then_closed(*args, **kwargs):
        stops = real(*args, **kwargs)
        planned.append([stop.point_id for stop in stops])
        if len(planned) == 1:  # an operator closes A between the read and the legs
            with transaction() as s:
                admin.close_point(s, point_a, actor="test")
        return stops

    monkeypatch.setattr(rules, "plan_relay", then_closed)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    assert planned == [[None, point_a, point_b, None], [None, point_a2, point_b, None]]
    assert [(leg.from_point_id, leg.to_point_id) for leg in legs_of(booking_id)] == [
        (None, point_a2), (point_a2, point_b), (point_b, None)]


def _relay_with_leg1_taken(client) -> tuple[int, int, int, str, str]:
    """Ramesh took leg 1 (to Point A); (booking, Point A, Point B, his phone, Asha's)."""
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    _, a_phone = make_partner("Asha", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    assert [(leg.from_point_id, leg.to_point_id) for leg in legs_of(booking_id)] == [
        (None, point_a), (point_a, point_b), (point_b, None)]
    assert "आपका है" in sms(client, r_phone, "1")[0]
    return booking_id, point_a, point_b, r_phone, a_phone


def test_a_point_a_parcel_is_heading_to_or_waiting_at_cannot_be_closed(client, live,
                                                                       frozen):  # noqa: F811
    booking_id, point_a, point_b, r_phone, a_phone = _relay_with_leg1_taken(client)
    ref = _ref(booking_id)
    ops = sign_in(client, OPS)
    for point in (point_a, point_b):  # leg 1 is heading to A; the relay goes on to B
        r = close(client, ops, point)
        assert r.status_code == 409, r.get_json()
        assert r.get_json()["error"]["code"] == "point_in_use"
        assert ref in r.get_json()["error"]["message"]
        r = move(client, ops, point, A[0] + 0.001, A[1] if point == point_a else B[1])
        assert r.status_code == 409 and r.get_json()["error"]["code"] == "point_in_use"
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert "आपका है" in sms(client, a_phone, "1")[0]
    assert "पहुँच गया" in sms(client, r_phone, f"DROP {last_code(a_phone, 'पार्सल लें')}")[0]
    # The parcel waits at A for Asha's PICK.
    r = close(client, ops, point_a)
    assert r.status_code == 409 and ref in r.get_json()["error"]["message"]
    assert sms(client, a_phone, f"PICK {last_code(r_phone, 'अगले राइडर')}")
    # It left A: A may close now; B still waits for it.
    assert [leg.status for leg in legs_of(booking_id)][:2] == ["delivered", "picked_up"]
    r = close(client, ops, point_a)
    assert r.status_code == 200, r.get_json()
    assert close(client, ops, point_b).status_code == 409
    assert _point(point_b).active is True
    assert [e["target"] for e in _audits("point.close")] == [f"point:{point_a}"]


def test_partners_at_home_at_a_closed_point_are_placed_at_another_they_serve(
        client, live, frozen):  # noqa: F811
    point_a, point_c = make_point("Point A", *A), make_point("Point C", *C)
    ramesh, _ = make_partner("Ramesh", A, point_id=point_a)  # on duty, no app
    asha, a_phone = make_partner("Asha", A, point_id=point_a, on_duty=False)
    _serves(ramesh, point_a)
    _serves(ramesh, point_c)  # he serves Point C too
    _serves(asha, point_a)
    assert ramesh in _near(A) and ramesh not in _near(C)  # the home set is built
    r = close(client, sign_in(client, OPS), point_a, note="closed")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["home_partner_ids"] == [ramesh, asha]
    # Their home stays A (ops move them); Ramesh is looked for at C, not at A.
    assert ramesh in _near(C) and ramesh not in _near(A)
    # Asha serves no other Point: ON does not place her at the closed one.
    assert sms(client, a_phone, "ON")
    assert asha not in _near(A) and asha not in _near(C)
    with transaction() as s:
        assert dispatch._home_positions(s) == [(ramesh, *C, False)]


def test_a_point_closed_before_places_nobody_at_it(client, live, frozen):  # noqa: F811
    """_home_positions read the home Point whatever its ``active``: a partner whose home
    was closed was still looked for there at each rebuild of the home set."""
    point_a = make_point("Point A", *A)
    ramesh, _ = make_partner("Ramesh", A, point_id=point_a)  # on duty, no app
    with transaction() as s:
        s.execute(update(Point).where(Point.id == point_a).values(active=False))
    with transaction() as s:
        assert dispatch._home_positions(s) == []
    assert ramesh not in _near(A)


def test_closing_and_moving_unknown_points_and_bad_bodies(client, live, frozen):  # noqa: F811
    point_a = make_point("Point A", *A)
    ops = sign_in(client, OPS)
    for missing in (999_999, 2**31, 10**30):
        r = close(client, ops, missing)
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
        r = move(client, ops, missing, *A)
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    r = close(client, ops, point_a, colour="red")
    assert r.status_code in (400, 422)  # Strict: an unknown field is refused
    for lat, lng in ((91, A[1]), (A[0], 181), ("x", A[1])):
        r = move(client, ops, point_a, lat, lng)
        assert r.status_code == 422, (lat, lng, r.get_json())
    r = move(client, ops, point_a, C[0], C[1])  # 11 km: not a spot nearby
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "too_far"
    r = client.post(f"{API}/ops/points/{point_a}/close",
                    headers=sign_in(client, CUSTOMER), json={})
    assert r.status_code == 403
    assert _point(point_a).active is True and (_point(point_a).lat, _point(point_a).lng) == A
    assert _audits("point.close") == [] and _audits("point.move") == []


# --- moving -------------------------------------------------------------------------------


def test_a_moved_point_places_its_partners_and_relays_at_the_new_spot(client, live,
                                                                     frozen):  # noqa: F811
    point_a = make_point("Point A", *A)
    ramesh, _ = make_partner("Ramesh", A, point_id=point_a)  # on duty, no app
    assert ramesh in _near(A)
    spot = (A[0], A[1] + 0.02)  # 2 km east
    assert ramesh not in _near((spot[0], spot[1] + 0.025))
    ops = sign_in(client, OPS)
    r = move(client, ops, point_a, *spot, note="moved to the tea shop")
    assert r.status_code == 200, r.get_json()
    row = r.get_json()
    assert (row["lat"], row["lng"], row["active"]) == (*spot, True)
    assert (_point(point_a).lat, _point(point_a).lng) == spot
    (entry,) = _audits("point.move")
    assert (entry["before"], entry["after"]) == (list(A), list(spot))
    assert entry["distance_m"] > 1900 and entry["note"] == "moved to the tea shop"
    assert ramesh in _near((spot[0], spot[1] + 0.025))  # 2.5 km from the spot, 4.5 from A
    # The same spot again: nothing changed.
    assert move(client, ops, point_a, *spot).status_code == 200
    assert len(_audits("point.move")) == 1


# --- the CLI twins ------------------------------------------------------------------------


def test_the_cli_closes_and_moves_a_point(client, live, frozen, capsys):  # noqa: F811
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    code, out, err = run(capsys, "move-point", "--point", "Point A", "--lat", str(A[0]),
                         "--lng", str(A[1] + 0.01), "--note", "across the road")
    assert code == 0, err
    assert "Point A" in out and _point(point_a).lng == A[1] + 0.01
    code, out, err = run(capsys, "close-point", "--point", str(point_a), "--note", "gone")
    assert code == 0, err
    assert "Point A" in out and _point(point_a).active is False
    assert [e["actor"] for e in _audits("point.move") + _audits("point.close")] == [
        "cli", "cli"]
    code, out, _ = run(capsys, "close-point", "--point", str(point_a))
    assert code == 0 and "nothing changed" in out
    code, _, err = run(capsys, "close-point", "--point", "Nowhere")
    assert code == 2 and "Nowhere" in err
    code, _, err = run(capsys, "move-point", "--point", str(point_b), "--lat", str(C[0]),
                       "--lng", str(C[1]))
    assert code == 2 and "km" in err
    with transaction() as s:
        s.execute(update(Point).where(Point.id == point_b).values(active=True))
    assert _point(point_b).lng == B[1]

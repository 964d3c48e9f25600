"""A Point renamed by ops (brief H2: Points could be added, closed and moved, never
renamed, while the name is what customers read and hear and riders are told to go to).

``PUT /api/v1/ops/points/<id>/name`` (and ``rename-point``) renames one, audited; the
next message says the new name (no cache keeps Point names); 404 for no such Point, 422
``bad_name``, 409 ``name_taken`` for another active Point's name in the same pincode; the
same name again changes nothing.

Real PostgreSQL and Redis; time frozen.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select, text, update

from core.adapters.api_models import AuditEntry
from core.adapters.db import autocommit, transaction
from core.adapters.models import Point
from core.domain.errors import Conflict
from core.services import admin
from core.services.booking import service_areas
from tests.test_admin import _keep_root_handlers, run  # noqa: F401  (autouse fixture)
from tests.test_api import API, sign_in
from tests.test_dispatch import (
    CUSTOMER,
    OPS,
    frozen,  # noqa: F401  (fixture)
    last_code,
    make_point,
    sms,
)
from tests.test_dispatch_relay import A, B
from tests.test_points_lifecycle import _relay_with_leg1_taken

pytestmark = pytest.mark.db

FAR = (26.85, 85.40)  # some 90 km east of Point B: outside the service area


def rename(client, ops, point_id: int, name, **body):
    return client.put(f"{API}/ops/points/{point_id}/name", headers=ops,
                      json={"name": name, **body})


def _name(point_id: int) -> str:
    with transaction() as s:
        return s.get(Point, point_id).name  # type: ignore[union-attr]


def _audits() -> list[dict]:
    with transaction() as s:
        return [dict(a.details, actor=a.actor, target=a.target) for a in s.scalars(
            select(AuditEntry).where(AuditEntry.action == "point.rename")
            .order_by(AuditEntry.id))]


def _other_point(name: str, pincode: str, *, active: bool = True) -> int:
    with transaction() as s:
        p = Point(name=name, lat=A[0] + 0.01, lng=A[1], pincode=pincode, active=active)
        s.add(p)
        s.flush()
        return p.id


def test_a_renamed_point_is_called_so_in_the_next_message(client, live,
                                                          frozen):  # noqa: F811
    """Ramesh carries leg 1 of a relay to Point A; ops rename it. His PICK's answer names
    the Point by its new name, as does the service-area check; the Points list shows it;
    the rename is audited with a masked note."""
    booking_id, point_a, point_b, r_phone, _ = _relay_with_leg1_taken(client)
    ops = sign_in(client, OPS)
    spec = client.get(f"{API}/openapi.json").get_json()
    assert "put" in spec["paths"][f"{API}/ops/points/{{point_id}}/name"]
    r = rename(client, ops, point_a, "  Laxmipur   Chowk ",
               note="villagers call it so, ask +919812388802")
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["id"], r.get_json()["name"]) == (point_a, "Laxmipur Chowk")
    assert _name(point_a) == "Laxmipur Chowk"
    (entry,) = _audits()
    assert (entry["target"], entry["before"], entry["after"]) == (
        f"point:{point_a}", "Point A", "Laxmipur Chowk")
    assert entry["actor"].startswith("ops:") and "9812388802" not in entry["note"]
    listed = client.get(f"{API}/ops/points", headers=ops).get_json()["items"]
    assert {p["id"]: p["name"] for p in listed}[point_a] == "Laxmipur Chowk"
    (picked,) = sms(client, r_phone, f"PICK {last_code(CUSTOMER, 'पार्सल उठाने')}")
    assert "Laxmipur Chowk" in picked and "Point A" not in picked, picked
    rename(client, ops, point_b, "Bairiya Haat")
    with transaction() as s:
        (area,) = service_areas(s, [FAR])
    assert area.point == "Bairiya Haat"
    # The same name again: nothing changed, nothing audited.
    r = rename(client, ops, point_a, "Laxmipur Chowk")
    assert r.status_code == 200 and r.get_json()["name"] == "Laxmipur Chowk"
    assert len(_audits()) == 2


def test_renaming_refuses_a_bad_name_an_unknown_point_and_a_name_taken(
        client, live, frozen):  # noqa: F811
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    closed = _other_point("Chowk", "845438", active=False)
    elsewhere = _other_point("Haat", "845401")
    ops = sign_in(client, OPS)
    for missing in (999_999, 2**31, 10**30):
        r = rename(client, ops, missing, "Chowk")
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    # Digits alone would be read as an id (find_point); no letter, a control character.
    for bad in ("12345", "--- ...", "Chowk\u0007"):
        r = rename(client, ops, point_a, bad)
        assert r.status_code == 422, (bad, r.get_json())
        assert r.get_json()["error"]["code"] == "bad_name"
        assert r.get_json()["error"]["field"] == "name"
    for bad in ("", "   ", "x" * 61, 42, None):
        assert rename(client, ops, point_a, bad).status_code == 422, bad
    r = rename(client, ops, point_a, "point b")  # another active Point's, in its pincode
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["error"]["code"] == "name_taken"
    assert str(point_b) in r.get_json()["error"]["message"]
    with transaction() as s:
        s.execute(update(Point).where(Point.id == point_b).values(post_office="Bairiya BO"))
    assert rename(client, ops, point_a, "Bairiya BO").status_code == 409  # find_point's too
    r = client.put(f"{API}/ops/points/{point_a}/name", headers=sign_in(client, CUSTOMER),
                   json={"name": "Chowk"})
    assert r.status_code == 403
    assert _name(point_a) == "Point A" and _audits() == []
    # A closed Point's name, or one of another pincode, is free; a closed Point is renamed.
    assert rename(client, ops, point_a, "Chowk").status_code == 200
    assert rename(client, ops, point_b, "Haat").status_code == 200
    r = rename(client, ops, closed, "Purana Chowk")
    assert r.status_code == 200 and r.get_json()["active"] is False
    assert [_name(p) for p in (point_a, point_b, closed, elsewhere)] == [
        "Chowk", "Haat", "Purana Chowk", "Haat"]


def test_two_renames_to_one_name_in_a_pincode_take_turns(live, frozen):  # noqa: F811
    """Two operators give two Points of one pincode the same name at the same moment: the
    second waits for the first, then sees its name taken (each checked before either
    wrote would give both)."""
    point_a, point_b = make_point("Point A", *A), make_point("Point B", *B)
    outcome: list[BaseException | None] = []

    def second() -> None:
        try:
            with transaction() as s:
                admin.rename_point(s, point_b, "Chowk", actor="test")
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 (the test looks at it)
            outcome.append(exc)

    with transaction() as first:
        admin.rename_point(first, point_a, "Chowk", actor="test")  # flushed, not committed
        racer = threading.Thread(target=second, daemon=True)
        racer.start()
        until = time.monotonic() + 30
        with autocommit() as watch:  # the racer waits for this one's pincode lock
            while not watch.scalar(text("SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted"
                                        " AND locktype = 'advisory')")):
                assert racer.is_alive() and time.monotonic() < until, outcome
                time.sleep(0.01)  # a poll interval: the condition above decides
    racer.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], Conflict), outcome
    assert outcome[0].code == "name_taken"
    assert (_name(point_a), _name(point_b)) == ("Chowk", "Point B")


def test_the_cli_renames_a_point(client, live, frozen, capsys):  # noqa: F811
    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    code, out, err = run(capsys, "rename-point", "--point", "Point A", "--name",
                         "Laxmipur Chowk", "--note", "new sign board")
    assert code == 0, err
    assert "Laxmipur Chowk" in out and _name(point_a) == "Laxmipur Chowk"
    assert [(e["actor"], e["note"]) for e in _audits()] == [("cli", "new sign board")]
    code, out, _ = run(capsys, "rename-point", "--point", str(point_a), "--name",
                       "Laxmipur Chowk")
    assert code == 0 and "nothing changed" in out
    code, _, err = run(capsys, "rename-point", "--point", str(point_a), "--name", "Point B")
    assert code == 2 and "Point B" in err
    code, _, err = run(capsys, "rename-point", "--point", str(point_a), "--name", "2024")
    assert code == 2 and "letter" in err
    assert len(_audits()) == 1

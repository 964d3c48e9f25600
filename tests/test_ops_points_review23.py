"""Review of 978e35d (rename a Point; a refund retry names its refund), session 23.

- A Point's name is refused when another active Point of its pincode has it (409
  ``name_taken``: people told the name could not tell the two apart), but add-point
  still gives a pincode two active Points of one name: reopening a closed Point whose
  name a rename took meanwhile, or adding the office whose name a rename took.
- A Point's name is free text an operator types; the audit log (kept for good) keeps it
  in full, a phone number in it too (only the note is masked).
- 409 ``which_refund`` answers ``refunds`` to choose from, which the OpenAPI document's
  error body does not list (as it lists ``offices``, ``total_paise`` of the others).
- A name with the zero-width joiner or non-joiner (some Marathi and Bengali spellings) is
  refused as unprintable.

The fix: add-point refuses (409 ``name_taken``) a name another active Point of the
pincode goes by, saying how to give one (``add-point --name``, which also renames a
closed Point it opens again); a Point's name with a phone number is refused (422
``bad_name``).

Real PostgreSQL and Redis; time frozen where the API is used.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Point
from core.domain.errors import Conflict, ValidationError
from core.services import admin
from tests.test_admin import _keep_root_handlers, run  # noqa: F401  (autouse fixture)
from tests.test_api import API, sign_in
from tests.test_dispatch import OPS, frozen, make_point  # noqa: F401  (fixture)
from tests.test_dispatch_relay import A

PIN = "845450"  # Laxmipur BO, Jado Chhapar BO, Gurwalia BO, ... (India Post directory)


def _add(office: str) -> int:
    with transaction() as s:
        return admin.add_point(s, PIN, office, actor="test").id


def _refused_or_done(call) -> None:  # noqa: ANN001 (a callable taking a session)
    """Run ``call`` in a transaction of its own; a refusal (the fix) is fine too."""
    try:
        with transaction() as s:
            call(s)
    except (Conflict, ValidationError):
        pass


def _active_names_held_twice(pincode: str) -> list[tuple[str, int]]:
    with transaction() as s:
        return list(s.execute(
            select(func.lower(Point.name), func.count())
            .where(Point.pincode == pincode, Point.active.is_(True))
            .group_by(func.lower(Point.name)).having(func.count() > 1)).tuples())


@pytest.mark.db
def test_reopening_a_closed_point_does_not_give_its_pincode_two_points_of_one_name(
        clean_db):
    """Jado Chhapar's Point is closed; ops rename Laxmipur's Point "Jado Chhapar" (a closed
    Point's name is free); add-point Jado Chhapar BO opens the closed one again. Was: two
    active Points of 845450 called Jado Chhapar (riders told to go there, find_point and
    add-partner --point cannot tell them apart), the very state name_taken refuses."""
    laxmipur, jado = _add("Laxmipur BO"), _add("Jado Chhapar BO")
    with transaction() as s:
        admin.close_point(s, jado, actor="test")
    _refused_or_done(lambda s: admin.rename_point(s, laxmipur, "Jado Chhapar", actor="test"))
    _refused_or_done(lambda s: admin.add_point(s, PIN, "Jado Chhapar BO", actor="test"))
    assert _active_names_held_twice(PIN) == []


@pytest.mark.db
def test_adding_the_office_a_rename_named_a_point_after_gives_no_second_point_of_it(
        clean_db):
    """Ops rename Laxmipur's Point "Gurwalia" (no Point of 845450 is called so yet); later
    add-point Gurwalia BO makes a Point called Gurwalia (its office's name). Was: two
    active Points of one pincode called Gurwalia."""
    laxmipur = _add("Laxmipur BO")
    _refused_or_done(lambda s: admin.rename_point(s, laxmipur, "Gurwalia", actor="test"))
    _refused_or_done(lambda s: admin.add_point(s, PIN, "Gurwalia BO", actor="test"))
    assert _active_names_held_twice(PIN) == []


@pytest.mark.db
def test_a_phone_number_in_a_new_point_name_is_not_kept_in_the_audit_log(
        client, live, frozen):  # noqa: F811
    """An operator names a Point after the shop and its owner's number. Was: the
    point.rename entry keeps ``after`` (and the next rename ``before``) with the number in
    full, in the append-only audit log (notes are masked, names not). Either refusing such
    a name (422 bad_name) or masking it in the entry would do."""
    point = make_point("Point A", *A)
    ops = sign_in(client, OPS)
    client.put(f"{API}/ops/points/{point}/name", headers=ops,
               json={"name": "Ramesh Kirana 9812345678"})
    client.put(f"{API}/ops/points/{point}/name", headers=ops,
               json={"name": "Ramesh Kirana"})
    with transaction() as s:
        kept = [json.dumps(e.details, ensure_ascii=False) for e in s.scalars(
            select(AuditEntry).where(AuditEntry.action == "point.rename"))]
    assert not [d for d in kept if "9812345678" in d], kept


def test_the_openapi_error_body_lists_which_refunds_refunds() -> None:
    """409 which_refund carries ``refunds`` (attempt, leg, leg_id, amount_paise, reason,
    retry_at); the document's ErrorBody, which lists every other extra field of an error
    (offices, total_paise, fee_paise, refund_paise), does not: a client generated from it
    drops the list ops are told to choose from."""
    from core.api import PREFIX
    from core.api.spec import openapi_document

    doc = openapi_document(PREFIX)
    assert "refunds" in doc["components"]["schemas"]["ErrorBody"]["properties"]


def _audit_actions() -> list[tuple[str, str]]:
    with transaction() as s:
        return [(a.action, a.target) for a in s.scalars(
            select(AuditEntry).order_by(AuditEntry.id))]


def _point(point_id: int) -> Point:
    with transaction() as s:
        p = s.get(Point, point_id)
        assert p is not None
        s.expunge(p)
        return p


@pytest.mark.db
def test_two_offices_shown_as_one_name_are_told_apart_by_add_point_name(clean_db, capsys):
    """226002 has Arjunganj BO and Arjunganj SO, both shown as "Arjunganj". The second
    add-point is refused (409 name_taken) naming the Point that has the name and how to
    give this one another (--name); with it, the Point is added under that name."""
    code, _, err = run(capsys, "add-point", "--pincode", "226002", "--office", "Arjunganj BO")
    assert code == 0, err
    with transaction() as s:
        (bo,) = s.scalars(select(Point)).all()
        assert bo.name == "Arjunganj"
        bo_id = bo.id
    code, _, err = run(capsys, "add-point", "--pincode", "226002", "--office", "Arjunganj SO")
    assert code == 2
    assert f"id {bo_id}" in err and "--name" in err and "'Arjunganj SO'" in err, err
    assert _audit_actions() == [("point.add", f"point:{bo_id}")]
    code, out, err = run(capsys, "add-point", "--pincode", "226002", "--office",
                         "Arjunganj SO", "--name", "Arjunganj SO")
    assert code == 0, err
    with transaction() as s:
        so = s.scalars(select(Point).where(Point.post_office == "Arjunganj SO")).one()
        assert (so.name, so.active) == ("Arjunganj SO", True)
        so_id = so.id
    assert _audit_actions()[-1] == ("point.add", f"point:{so_id}")
    # Run again (the script that set it up): found, nothing changed.
    code, out, _ = run(capsys, "add-point", "--pincode", "226002", "--office",
                       "Arjunganj SO", "--name", "Arjunganj SO")
    assert code == 0 and "already exists" in out and len(_audit_actions()) == 2
    # A name taken by the other, given: refused as taken, to choose another.
    with transaction() as s:
        admin.close_point(s, so_id, actor="test")
    with transaction() as s, pytest.raises(Conflict) as taken:
        admin.add_point(s, "226002", "Arjunganj SO", actor="test", name="arjunganj")
    assert taken.value.code == "name_taken" and "choose another name" in taken.value.message


@pytest.mark.db
def test_a_closed_point_whose_name_was_given_away_opens_again_under_a_name_given(clean_db):
    """Refused under its old name (the message names the holder and says --name); with
    --name it opens again renamed, audited as a rename too (before, after)."""
    laxmipur, jado = _add("Laxmipur BO"), _add("Jado Chhapar BO")
    with transaction() as s:
        admin.close_point(s, jado, actor="test")
    with transaction() as s:
        admin.rename_point(s, laxmipur, "Jado Chhapar", actor="test")
    with transaction() as s, pytest.raises(Conflict) as taken:
        admin.add_point(s, PIN, "Jado Chhapar BO", actor="test")
    assert taken.value.code == "name_taken" and taken.value.field == "name"
    assert f"id {laxmipur}" in taken.value.message and f"(id {jado})" in taken.value.message
    assert "--name" in taken.value.message
    assert not _point(jado).active
    with transaction() as s:
        done = admin.add_point(s, PIN, "Jado Chhapar BO", actor="test", name="Jado Chowk")
    assert done.changed and done.id == jado and "Jado Chowk" in done.message
    assert (_point(jado).name, _point(jado).active) == ("Jado Chowk", True)
    with transaction() as s:
        last = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(2)).all()
        assert [(a.action, a.target) for a in reversed(last)] == [
            ("point.activate", f"point:{jado}"), ("point.rename", f"point:{jado}")]
        assert (last[0].details["before"], last[0].details["after"]) == (
            "Jado Chhapar", "Jado Chowk")


@pytest.mark.db
def test_add_point_refuses_a_pincode_point_called_as_its_office(clean_db):
    """Ops renamed Laxmipur's Point "Gurwalia BO" (no Point was at that office): adding
    Gurwalia BO would give find_point two Points for "Gurwalia BO". Refused, naming the
    one to rename first; no --name helps, so the message does not offer one."""
    laxmipur = _add("Laxmipur BO")
    with transaction() as s:
        admin.rename_point(s, laxmipur, "Gurwalia BO", actor="test")
    for name in (None, "Gurwalia Chowk"):
        with transaction() as s, pytest.raises(Conflict) as taken:
            admin.add_point(s, PIN, "Gurwalia BO", actor="test", name=name)
        assert (taken.value.code, taken.value.field) == ("name_taken", "office")
        assert f"rename-point --point {laxmipur}" in taken.value.message
    assert _active_names_held_twice(PIN) == []


@pytest.mark.db
def test_a_phone_number_in_add_points_name_is_refused_and_nothing_added(clean_db, capsys):
    code, _, err = run(capsys, "add-point", "--pincode", PIN, "--office", "Laxmipur BO",
                       "--name", "Laxmipur 98123 45678")
    assert code == 2 and "phone number" in err and "98123 45678" not in err, err
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(Point)) == 0
    assert _audit_actions() == []


@pytest.mark.db
def test_a_phone_number_in_a_rename_is_a_clear_422(client, live, frozen):  # noqa: F811
    point = make_point("Point A", *A)
    r = client.put(f"{API}/ops/points/{point}/name", headers=sign_in(client, OPS),
                   json={"name": "Ramesh Kirana +91 98123 45678"})
    assert r.status_code == 422, r.get_json()
    error = r.get_json()["error"]
    assert (error["code"], error["field"]) == ("bad_name", "name")
    assert "phone number" in error["message"] and "45678" not in error["message"]
    assert _point(point).name == "Point A"


@pytest.mark.db
def test_a_name_spelt_with_the_zero_width_joiner_or_non_joiner_is_taken(
        client, live, frozen):  # noqa: F811
    """Karad as Marathi often spells it (ka, then ra, virama, ZWJ: the eyelash ra), a
    ZWNJ keeping a Bengali conjunct apart: both are how the name is written, not stray
    controls. Was: 422 bad_name (str.isprintable() refuses both). Other invisible format
    characters stay refused (a zero-width space: two names that look one)."""
    point = make_point("Point A", *A)
    ops = sign_in(client, OPS)
    karad = "\u0915\u0930\u094d\u200d\u0939\u093e\u0921"
    bengali = "\u0995\u09cd\u200c\u09b7\u09c7\u09a4"
    for name in (karad, bengali):
        r = client.put(f"{API}/ops/points/{point}/name", headers=ops, json={"name": name})
        assert r.status_code == 200, (name, r.get_json())
        assert r.get_json()["name"] == name and _point(point).name == name
    r = client.put(f"{API}/ops/points/{point}/name", headers=ops,
                   json={"name": "Chowk\u200bBazar"})
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "bad_name"

"""A partner who moves villages gets a new home Point from ops (review: ops could not).

Only add_partner set ``home_point_id`` (and the Points a partner serves, partner_points);
neither the ops API nor the CLI could change it, so an SMS-only partner who moved was
still looked for at the old village. ``PUT /api/v1/ops/partners/<id>/home-point`` (and
``set-home-point``) moves it: under the partner's row lock, audited, the home set in
Redis following after the commit.

Real PostgreSQL and Redis; time frozen.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from core.adapters import geo_index
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Leg, PartnerPoint, PartnerProfile, Point
from core.adapters.redis_conn import redis_client
from core.domain import dispatch as rules
from core.domain.booking import LegStatus
from core.domain.pricing import SizeBucket, WeightBucket
from core.services import dispatch
from tests.test_admin import _keep_root_handlers, run  # noqa: F401  (autouse fixture)
from tests.test_api import API, sign_in
from tests.test_dispatch import (
    BETTIAH,
    LAXMIPUR,
    OPS,
    frozen,  # noqa: F401  (fixture)
    legs_of,
    make_partner,
    make_point,
    paid_booking,
    sms,
    start,
)

pytestmark = pytest.mark.db

LOAD = rules.Load(SizeBucket.BAG, WeightBucket.W5, 0)
NEAR_KM = 3  # Laxmipur and Bettiah are about 10 km apart


def _near(at: tuple[float, float]) -> list[int]:
    """The partners dispatch finds within NEAR_KM of ``at`` for a bag of 5 kg."""
    with transaction() as s:
        return [r.candidate.partner_id
                for r in dispatch.find_candidates(s, *at, LOAD, NEAR_KM)]


def _audits() -> list[dict]:
    with transaction() as s:
        return [dict(a.details, actor=a.actor, target=a.target) for a in s.scalars(
            select(AuditEntry).where(AuditEntry.action == "partner.home_point")
            .order_by(AuditEntry.id))]


def _home(pid: int) -> tuple[int | None, list[int]]:
    """(home_point_id, ids of the Points they serve, sorted)."""
    with transaction() as s:
        p = s.get(PartnerProfile, pid)
        assert p is not None
        return p.home_point_id, sorted(pt.id for pt in p.points)


def _moved(pid: int, home: int) -> None:
    """A partner as add_partner makes one: serving their home Point."""
    with transaction() as s:
        s.add(PartnerPoint(partner_id=pid, point_id=home))


def _url(pid: int) -> str:
    return f"{API}/ops/partners/{pid}/home-point"


def test_an_on_duty_sms_partner_moved_is_found_near_the_new_point_not_the_old(
        client, live, frozen):  # noqa: F811
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en")  # on duty, no app
    old = _home(pid)[0]
    assert old is not None
    _moved(pid, old)
    new = make_point("Bettiah", *BETTIAH)
    # The home set is built (and not rebuilt for minutes): the move must reach it itself.
    assert pid in _near(LAXMIPUR) and pid not in _near(BETTIAH)
    ops = sign_in(client, OPS)
    spec = client.get(f"{API}/openapi.json").get_json()
    assert "put" in spec["paths"][f"{API}/ops/partners/{{partner_id}}/home-point"]

    r = client.put(_url(pid), headers=ops,
                   json={"point": new, "note": "moved to Bettiah, call +919812388802"})
    assert r.status_code == 200, r.get_json()
    row = r.get_json()
    assert (row["id"], row["home_point_id"], row["on_duty"]) == (pid, new, True)
    assert _home(pid) == (new, [new])  # the new Point took the old one's place
    assert pid in _near(BETTIAH) and pid not in _near(LAXMIPUR)
    (entry,) = _audits()
    assert entry["target"] == f"partner:{pid}" and entry["actor"].startswith("ops:")
    assert (entry["before"], entry["after"]) == (old, new)
    assert "9812388802" not in entry["note"] and "Bettiah" in entry["note"]
    assert phone not in str(entry)


def test_an_off_duty_partner_moved_is_not_placed_until_they_go_on(client, live, frozen):  # noqa: F811
    pid, phone = make_partner("Sunita", LAXMIPUR, lang="en", on_duty=False)
    make_point("Bettiah", *BETTIAH)
    r = client.put(_url(pid), headers=sign_in(client, OPS), json={"point": "bettiah"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["on_duty"] is False
    # Out of the home set, and no candidate anywhere while off duty.
    assert redis_client().zscore(geo_index.HOME_KEY, str(pid)) is None
    assert pid not in _near(BETTIAH)
    sms(client, phone, "ON")  # now at the new Point
    assert pid in _near(BETTIAH) and pid not in _near(LAXMIPUR)


def test_the_same_point_again_changes_nothing(client, live, frozen):  # noqa: F811
    pid, _ = make_partner("Ramesh", LAXMIPUR, lang="en")
    home = _home(pid)[0]
    assert home is not None
    _moved(pid, home)
    ops = sign_in(client, OPS)
    for point in (home, str(home), "Ramesh Point"):  # by id, as text, by name
        r = client.put(_url(pid), headers=ops, json={"point": point, "note": "again"})
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["home_point_id"] == home
    assert _home(pid) == (home, [home]) and _audits() == []


def test_the_point_must_exist_and_be_active(client, live, frozen):  # noqa: F811
    pid, _ = make_partner("Ramesh", LAXMIPUR, lang="en")
    home = _home(pid)[0]
    closed = make_point("Bettiah", *BETTIAH)
    with transaction() as s:
        s.execute(update(Point).where(Point.id == closed).values(active=False))
    ops = sign_in(client, OPS)
    for point in (closed, "Bettiah", 999_999, "Nowhere", "99999999999999999999"):
        r = client.put(_url(pid), headers=ops, json={"point": point})
        assert r.status_code == 422, (point, r.get_json())
        assert r.get_json()["error"]["code"] == "unknown_point"
    r = client.put(_url(999_999), headers=ops, json={"point": home})
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    r = client.put(_url(pid), headers=ops, json={"point": home, "colour": "red"})
    assert r.status_code in (400, 422)  # Strict: an unknown field is refused
    assert _home(pid)[0] == home and _audits() == []
    assert pid in _near(LAXMIPUR)


def test_a_partner_cannot_move_their_own_home(client, live, frozen):  # noqa: F811
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    new = make_point("Bettiah", *BETTIAH)
    r = client.put(_url(pid), headers=sign_in(client, phone), json={"point": new})
    assert r.status_code == 403
    assert _home(pid)[0] != new


def test_an_erased_partner_is_refused(client, live, frozen):  # noqa: F811
    pid, _ = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False)
    home = _home(pid)[0]
    new = make_point("Bettiah", *BETTIAH)
    ops = sign_in(client, OPS)
    r = client.put(f"{API}/ops/partners/{pid}/kyc", headers=ops,
                   json={"status": "suspended", "note": "left us"})
    assert r.status_code == 200
    r = client.post(f"{API}/ops/partners/{pid}/erase", headers=ops,
                    json={"reason": "their request"})
    assert r.status_code == 200 and r.get_json()["erased"] is True, r.get_json()
    r = client.put(_url(pid), headers=ops, json={"point": new})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "erased"
    assert _home(pid)[0] == home and _audits() == []


def test_jobs_in_hand_stay_theirs_and_other_points_served_stay(client, live, frozen):  # noqa: F811
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    old = _home(pid)[0]
    assert old is not None
    _moved(pid, old)
    also = make_point("Chanpatia", 26.95, 84.53)
    _moved(pid, also)  # they serve a second Point too
    booking = paid_booking()
    start(booking)
    assert "is yours" in sms(client, phone, "1")[0]
    new = make_point("Bettiah", *BETTIAH)
    r = client.put(_url(pid), headers=sign_in(client, OPS), json={"point": new})
    assert r.status_code == 200, r.get_json()
    assert _home(pid) == (new, sorted([new, also]))
    (leg,) = legs_of(booking)
    assert (leg.partner_id, leg.status) == (pid, LegStatus.ASSIGNED.value)
    with transaction() as s:
        assert s.scalar(select(Leg.partner_id).where(Leg.id == leg.id)) == pid
    # Moving to a Point they already serve: served once, as home.
    r = client.put(_url(pid), headers=sign_in(client, OPS), json={"point": also})
    assert r.status_code == 200, r.get_json()
    assert _home(pid) == (also, [also])


def test_the_cli_twin_moves_a_partner_by_phone(client, live, frozen, capsys):  # noqa: F811
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    old = _home(pid)[0]
    new = make_point("Bettiah", *BETTIAH)
    code, out, err = run(capsys, "set-home-point", "--phone", phone, "--point", "Bettiah",
                         "--note", "moved")
    assert code == 0, err
    assert phone not in out + err and "Bettiah" in out
    assert _home(pid)[0] == new
    (entry,) = _audits()
    assert (entry["actor"], entry["before"], entry["after"]) == ("cli", old, new)
    code, out, _ = run(capsys, "set-home-point", "--partner", str(pid), "--point", str(new))
    assert code == 0 and "nothing changed" in out and len(_audits()) == 1
    code, _, err = run(capsys, "set-home-point", "--partner", str(pid), "--point", "Nowhere")
    assert code == 2 and "Nowhere" in err
    assert pid in _near(BETTIAH)

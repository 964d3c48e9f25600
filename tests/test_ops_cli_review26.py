"""Ops CLI review 26: a closed Point reached by its name (move-point, rename-point, a
name two closed Points share), and erase-recipient's reason bounded as the API bounds it."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Booking, Point
from core.services.retention import RECIPIENT_ERASED
from tests.test_admin import _keep_root_handlers, run  # noqa: F401  (autouse fixture)
from tests.test_dispatch import RECIPIENT, make_point, paid_booking

pytestmark = pytest.mark.db

SIRISIA = (26.85, 84.47)


def _close(point_id: int) -> None:
    with transaction() as s:
        s.get(Point, point_id).active = False


def test_move_and_rename_reach_a_closed_point_by_its_name(clean_db, capsys):
    point_id = make_point("Sirisia", *SIRISIA)
    _close(point_id)
    code, out, err = run(capsys, "move-point", "--point", "sirisia", "--lat", "26.851",
                         "--lng", "84.47")
    assert code == 0, err
    assert f"id {point_id}" in out and "closed" in out
    code, out, err = run(capsys, "rename-point", "--point", "Sirisia", "--name",
                         "Sirisia Chowk")
    assert code == 0, err
    with transaction() as s:
        p = s.get(Point, point_id)
        assert (p.name, p.lat, p.active) == ("Sirisia Chowk", 26.851, False)


def test_a_name_two_closed_points_share_is_refused_naming_both(clean_db, capsys):
    first, second = make_point("Sirisia", *SIRISIA), make_point("Sirisia", 26.86, 84.48)
    _close(first)
    _close(second)
    code, out, err = run(capsys, "close-point", "--point", "Sirisia")
    assert code == 2, (out, err)
    assert f"id {first}" in err and f"id {second}" in err and "give its id" in err
    # An active Point of that name is the one meant, closed ones aside.
    third = make_point("Sirisia", 26.87, 84.49)
    code, out, err = run(capsys, "close-point", "--point", "Sirisia")
    assert code == 0, err
    assert f"id {third}" in out and "closed:" in out


@pytest.mark.parametrize("reason", ["", "   ", "ok", "x" * 301])
def test_erase_recipient_refuses_a_reason_the_api_would_refuse(clean_db, capsys, reason):
    """POST /ops/recipients/erase takes a reason of 3 to 300 characters (after trimming):
    the command line erased her for good on an empty one, leaving the audit log no why."""
    booking_id = paid_booking()
    with transaction() as s:
        s.get(Booking, booking_id).status = "cancelled"
    code, out, err = run(capsys, "erase-recipient", "--phone", RECIPIENT, "--reason", reason)
    assert code == 2, (out, err)
    assert "reason" in err and "3 to 300" in err
    with transaction() as s:
        assert s.get(Booking, booking_id).recipient_phone == RECIPIENT
        assert s.scalars(select(AuditEntry).where(
            AuditEntry.action == RECIPIENT_ERASED)).all() == []

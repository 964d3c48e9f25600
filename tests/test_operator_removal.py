"""Taking an operator's access away (remove-operator), and a Point left "in use" by a
delivered booking.

1. There was no way to cut an operator off: erasure refuses operators, and a leaked ops
   sign-in kept working for its 30 days. `remove-operator --phone|--person` makes them a
   customer and ends every session of theirs at once (audited), never the last operator.
2. admin.relays_through counted a delivered booking's leftover locked leg (a carrier's
   leg locked at the Point before the next rider's PICK closed such legs) as a parcel on
   its way to the Point: the Point could never be closed or moved.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from sqlalchemy import select

from core.adapters.api_models import ApiSession, AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, Person
from tests.test_admin import REPO, _keep_root_handlers, run  # noqa: F401  (autouse fixture)
from tests.test_api import API, sign_in
from tests.test_dispatch import frozen  # noqa: F401  (fixture)

pytestmark = pytest.mark.db

ASHA = "+919812377711"  # the operator who leaves
RAVI = "+919812377712"  # the one who stays


def _ops_list(client, headers: dict[str, str]) -> int:
    return client.get(f"{API}/ops/bookings", headers=headers).status_code


def _audits(action: str) -> list[AuditEntry]:
    with transaction() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def _role(phone: str) -> str | None:
    with transaction() as s:
        return s.scalar(select(Person.role).where(Person.phone == phone))


def test_a_removed_operator_is_signed_out_everywhere_at_once(client, capsys):
    assert run(capsys, "add-operator", "--phone", RAVI)[0] == 0
    assert run(capsys, "add-operator", "--phone", ASHA, "--name", "Asha")[0] == 0
    laptop, phone = sign_in(client, ASHA), sign_in(client, ASHA)  # two devices (one leaked)
    ravi = sign_in(client, RAVI)
    assert _ops_list(client, laptop) == _ops_list(client, phone) == 200

    code, out, err = run(capsys, "remove-operator", "--phone", "98123 77711",
                         "--note", "left the team; login shared on +919812300001")
    assert code == 0, err
    assert ASHA not in out + err and "+91******7711" in out
    # Both tokens stop working on their next request (401, not only 403: they are signed
    # out), and a new sign-in gives a customer's token, which ops routes refuse.
    assert _ops_list(client, laptop) == _ops_list(client, phone) == 401
    assert _role(ASHA) == "customer"
    assert _ops_list(client, sign_in(client, ASHA)) == 403
    assert _ops_list(client, ravi) == 200  # the other operator is untouched
    (entry,) = _audits("operator.remove")
    with transaction() as s:
        asha_id = s.scalar(select(Person.id).where(Person.phone == ASHA))
    assert (entry.actor, entry.target) == ("cli", f"person:{asha_id}")
    assert entry.details["sessions_ended"] == 2
    assert "+919812300001" not in str(entry.details)  # the note is kept masked


def test_remove_operator_by_person_id_and_run_again_changes_nothing(client, capsys):
    assert run(capsys, "add-operator", "--phone", RAVI)[0] == 0
    assert run(capsys, "add-operator", "--phone", ASHA)[0] == 0
    with transaction() as s:
        asha_id = s.scalar(select(Person.id).where(Person.phone == ASHA))
    assert run(capsys, "remove-operator", "--person", str(asha_id))[0] == 0
    assert _role(ASHA) == "customer"
    code, out, err = run(capsys, "remove-operator", "--person", str(asha_id))
    assert code == 2 and "not an operator" in err and ASHA not in out + err
    assert len(_audits("operator.remove")) == 1
    code, _, err = run(capsys, "remove-operator", "--phone", "+919812377719")  # nobody's
    assert code == 2 and "nobody has" in err


def test_the_last_operator_cannot_be_removed(client, capsys):
    """With nobody left who can sign in to the ops API, nobody could unlock a leg, check a
    KYC or answer a person: the last operator stays until another is added."""
    assert run(capsys, "add-operator", "--phone", ASHA)[0] == 0
    headers = sign_in(client, ASHA)
    code, out, err = run(capsys, "remove-operator", "--phone", ASHA)
    assert code == 2 and "last operator" in err and ASHA not in out + err
    assert _role(ASHA) == "ops" and _ops_list(client, headers) == 200
    assert _audits("operator.remove") == []
    with transaction() as s:
        assert s.scalar(select(ApiSession.revoked_at)) is None


def test_run_passes_remove_operator_to_the_cli(clean_db, capsys):
    """`./run remove-operator ...` works as README says (the supervisor hands it to
    core.cli with the service's URLs, here the test database)."""
    assert run(capsys, "add-operator", "--phone", RAVI)[0] == 0
    assert run(capsys, "add-operator", "--phone", ASHA)[0] == 0
    done = subprocess.run([str(REPO / "run"), "remove-operator", "--phone", ASHA],
                          cwd=REPO, env=os.environ.copy(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ASHA not in done.stdout + done.stderr
    assert _role(ASHA) == "customer" and _role(RAVI) == "ops"


# --- a delivered booking holds nothing at a Point ---------------------------------------


def test_a_delivered_bookings_leftover_locked_leg_leaves_the_point_free(
        client, live, frozen, monkeypatch, capsys):  # noqa: F811
    """Ramesh's leg 1 locked at Point A with wrong DROP codes and stayed locked after Asha
    picked the parcel up there (as a leg locked before the next rider's PICK closed such
    legs does: the test_relays_review27 helper). The parcel went on: legs 2 and 3 were
    delivered, and so the booking (set here directly, the rest of the relay being no
    part of this). Nothing waits at Point A, so it can be closed."""
    from core.services import admin
    from tests.test_relays_review27 import _carrier_locked_at_point_a

    booking_id, leg1, point_a = _carrier_locked_at_point_a(
        client, next_pick_closes=False, monkeypatch=monkeypatch)
    with transaction() as s:
        for leg in s.scalars(select(Leg).where(Leg.booking_id == booking_id,
                                               Leg.id != leg1)):
            leg.status = "delivered"
        s.get(Booking, booking_id).status = "delivered"
    with transaction() as s:
        assert s.get(Leg, leg1).status == "locked"
        assert admin.relays_through(s, point_a) == []
    code, _, err = run(capsys, "close-point", "--point", str(point_a))
    assert code == 0, err

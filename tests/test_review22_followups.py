"""A review of session 22's own changes (one operator per person, a code sent without its
job, closing Points): the defects it found. Each test failed on the code before its fix,
for the reason its docstring gives.
Real PostgreSQL and Redis; time frozen where the dispatch tests freeze it.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Conversation, OutboxMessage, Person, Point
from core.config import get_settings
from core.services import admin, dispatch, ivr
from tests.test_api import API, sign_in
from tests.test_care_review import caller_waiting
from tests.test_dispatch import RECIPIENT, frozen, make_partner, sms  # noqa: F401
from tests.test_drop_two_parcels import _code, _failures, _status, _two_jobs
from tests.test_points_lifecycle import LOAD, NEAR_KM

pytestmark = pytest.mark.db

OPS_A = "+919000000071"
OPS_B = "+919000000072"
CALLER = "+919812300071"


# --- one operator per handoff: a caller an operator answered on the phone ---------------------


def _person_id(phone: str) -> int:
    with transaction() as s:
        found = s.scalar(select(Person.id).where(Person.phone == phone))
        assert found is not None
        return found


def _sent(text: str) -> int:
    with transaction() as s:
        return len(s.scalars(select(OutboxMessage.id).where(OutboxMessage.body == text)).all())


def test_after_a_phone_answer_the_operator_who_writes_has_the_person(client, live):
    """handoff.reply: a handoff an operator took on the IVR's <Dial> (operator "phone")
    keeps "phone" when an operator then writes to the person (``handoff.operator or
    operator``), so nobody ever has them: the list says taken_by null, and a second
    operator's reply goes out too without take_over, the two answers to one question the
    change was made to stop. The first to write after the call should have them."""
    hid = caller_waiting(CALLER)
    with transaction() as s:  # the IVR put the call through to the operators' phone
        conv = s.scalar(select(Conversation).where(Conversation.channel == "voice",
                                                   Conversation.contact == CALLER))
        conv.state = {**conv.state, "dial": {"sid": "CAfollowups22"}}
        conv_id = conv.id
    assert ivr.operator_took(conv_id, "CAfollowups22")  # an operator took it (pressed 1)
    ivr.dial_ended(CALLER, "completed", "en", "CAfollowups22")
    ops_a, ops_b = sign_in(client, OPS_A, role="ops"), sign_in(client, OPS_B, role="ops")
    r = client.post(f"{API}/ops/handoffs/{hid}/reply",
                    json={"body": "Ravi here, as promised on the phone: your refund is on."},
                    headers=ops_a)
    assert r.status_code == 200, r.get_json()
    row = next(h for h in client.get(f"{API}/ops/handoffs", headers=ops_b).get_json()["items"]
               if h["id"] == hid)
    assert row["taken_by"] == _person_id(OPS_A), row  # the list says Ravi has them

    r = client.post(f"{API}/ops/handoffs/{hid}/reply", json={"body": "Hello, Meena here."},
                    headers=ops_b)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "taken_by_other", \
        r.get_json()
    assert _sent("Hello, Meena here.") == 0  # one answer, not two


# --- PICK/DROP with a code and no job number -------------------------------------------------


def test_the_right_code_of_a_locked_job_costs_the_other_job_nothing(client, live, frozen):  # noqa: F811
    """dispatch._leg_of_code: a rider carries two parcels; one job locked after wrong
    codes. The recipient then reads him that job's right code, and he sends it without
    the job number. _choose_leg counts the locked job among his jobs ("which job?"), but
    _leg_of_code tries the code only against the job that is not locked, so the locked
    job's right code is charged as a wrong try on the other, innocent job ("Wrong OTP for
    job <other>"). A few such sends lock him out of both. With the job named, confirm
    answers "locked, call ops" and charges nobody; without it, it should be no different
    (or ask which job), never a wrong try on the other job."""
    rider, bookings, legs = _two_jobs(client, picked=True)
    codes = {_code(RECIPIENT, b, "is coming to you") for b in bookings}
    wrong = [f"{n:04d}" for n in range(10_000) if f"{n:04d}" not in codes]
    most = dispatch.config().otp_max_failures
    for n in range(most):  # job 2 locked: wrong codes sent with its number
        sms(client, rider, f"DROP {wrong[n]} {legs[1]}")
    assert [_status(leg) for leg in legs] == ["picked_up", "locked"]
    assert _failures(legs[0]) == 0

    right = _code(RECIPIENT, bookings[1], "is coming to you")  # job 2's own code
    reply = sms(client, rider, f"DROP {right}")
    assert _failures(legs[0]) == 0, reply  # job 1 was charged a try for job 2's code
    assert reply in (
        [i18n.t("dispatch.otp_locked", "en", job=str(legs[1]),
                ops_phone=get_settings().ops_phone)],
        [i18n.t("dispatch.which_job", "en", jobs=" ".join(map(str, legs)), job=str(legs[0]))],
    ), reply
    assert _status(legs[0]) == "picked_up"


# --- a Point opened again ---------------------------------------------------------------------


def _near(at: tuple[float, float]) -> list[int]:
    with transaction() as s:
        return [r.candidate.partner_id for r in dispatch.find_candidates(s, *at, LOAD, NEAR_KM)]


def test_a_point_opened_again_places_its_partners_there_at_once(live, frozen):  # noqa: F811
    """admin.add_point: closing a Point takes its partners out of the home set at once
    (close_point: geo_index.invalidate_homes after commit), and _home_positions now places
    nobody at a closed Point. Opening it again (add-point at its office, which close-point
    and the API tell ops to use) sets it active but leaves the home set as it was built
    while it was closed: its partners are looked for nowhere (or at another Point) until
    the set is rebuilt by age (HOME_REBUILD_S, 5 minutes), so jobs next to their Point
    are not offered to them. Reopening should invalidate the home set as closing does."""
    with transaction() as s:
        point_id = admin.add_point(s, "845450", "Laxmipur BO", actor="cli").id
    with transaction() as s:
        p = s.get(Point, point_id)
        assert p is not None
        at = (p.lat, p.lng)
    ramesh, _ = make_partner("Ramesh", at, point_id=point_id)  # on duty, no app
    assert ramesh in _near(at)  # the home set is built
    with transaction() as s:
        assert admin.close_point(s, point_id, actor="cli").changed
    assert ramesh not in _near(at)  # rebuilt at once, without him
    with transaction() as s:
        assert admin.add_point(s, "845450", "Laxmipur BO", actor="cli").changed  # open again
    with transaction() as s:
        reopened = s.get(Point, point_id)
        assert reopened is not None and reopened.active is True
        assert dispatch._home_positions(s) == [(ramesh, *at, False)]
    assert ramesh in _near(at), "the Point is open again, but its partner is not placed there"

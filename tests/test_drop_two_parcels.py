"""A rider's codes when they carry two jobs, and ops' new code sent again.

1. Every leg has its own pickup and drop codes (booking.issue_leg_otps: random, kept as
   hashes keyed by the leg). A rider carrying two parcels to the same recipient, who gave
   him one code, sent `DROP <code>` and was asked "which job?" (dispatch._choose_leg),
   though the code named one of his jobs. Now a code that is the right one of exactly one
   of the jobs waiting for it confirms that job. A code of none is a wrong try on each
   (it was tried against each: no free guesses), answered so; a done job's code sent
   again is answered as done. The same for PICK.
2. POST /ops/legs/{id}/new-code took no Idempotency-Key: a retried request (a timeout, a
   double tap) made a second code and sent it again. With a key, a retry answers the
   first answer (its code), makes no new code and sends nothing; the key for another
   request is refused (422 idempotency_key_reused), as POST /ops/handoffs/{id}/reply does.

Real PostgreSQL and Redis through the signed SMS webhook; time frozen.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from core import i18n
from core.adapters.api_models import AuditEntry, IdempotencyRecord
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, OutboxMessage
from core.config import get_settings
from core.services import dispatch
from tests.test_api import API, sign_in
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    OPS,
    RECIPIENT,
    bodies_to,
    frozen,  # noqa: F401  (fixture)
    legs_of,
    make_partner,
    paid_booking,
    sms,
    start,
)
from tests.test_notice_review import customer_speaks

pytestmark = pytest.mark.db

CODE = re.compile(r"(?<!\d)\d{4}(?!\d)")


def _ref(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).reference


def _code(phone: str, booking_id: int, marker: str) -> str:
    """The latest 4-digit code sent to ``phone`` about the booking, in a text with
    ``marker``."""
    ref = _ref(booking_id)
    for body in reversed(bodies_to(phone)):
        if ref in body and marker in body:
            return CODE.findall(body)[-1]
    raise AssertionError(f"no code for booking {ref} sent to {phone}")


def _failures(leg_id: int) -> int:
    with transaction() as s:
        return s.get(Leg, leg_id).otp_failures


def _status(leg_id: int) -> str:
    with transaction() as s:
        return s.get(Leg, leg_id).status


def _two_jobs(client, *, picked: bool, jobs: int = 2) -> tuple[str, list[int], list[int]]:
    """Ramesh (English) took two (``jobs``) bookings from Meena to Sita; picked up too if
    ``picked``. (his phone, booking ids, leg ids)."""
    _, rider = make_partner("Ramesh", LAXMIPUR, lang="en", max_active_legs=jobs + 1)
    bookings, legs = [], []
    for _ in range(jobs):
        booking_id = paid_booking()
        if not bookings:
            customer_speaks("en")
        start(booking_id)
        assert "is yours" in sms(client, rider, "1")[0]
        bookings.append(booking_id)
        legs.append(legs_of(booking_id)[0].id)
    if picked:
        for booking_id, leg_id in zip(bookings, legs, strict=True):
            pick = _code(CUSTOMER, booking_id, "at pickup")
            assert "picked up" in sms(client, rider, f"PICK {pick} {leg_id}")[0]
    return rider, bookings, legs


# --- 1. the code names the job -----------------------------------------------------------


def test_drop_with_the_code_of_one_of_two_parcels_delivers_that_one(client, live, frozen):  # noqa: F811
    rider, bookings, legs = _two_jobs(client, picked=True)
    assert [_status(leg) for leg in legs] == ["picked_up", "picked_up"]
    # Sita has two parcels coming, each with its own code; she reads out the second's.
    second = _code(RECIPIENT, bookings[1], "is coming to you")
    first = _code(RECIPIENT, bookings[0], "is coming to you")
    reply = sms(client, rider, f"DROP {second}")
    assert reply[0].startswith(f"Job {legs[1]} delivered"), reply
    assert [_status(leg) for leg in legs] == ["picked_up", "delivered"]
    assert [_failures(leg) for leg in legs] == [0, 0]
    # One job left: its code delivers it, as before.
    reply = sms(client, rider, f"DROP {first}")
    assert reply[0].startswith(f"Job {legs[0]} delivered"), reply
    assert [_status(leg) for leg in legs] == ["delivered", "delivered"]


def test_a_code_of_neither_parcel_is_a_wrong_try_on_each(client, live, frozen):  # noqa: F811
    """Answered "which job?" at no cost, a code without its job could be guessed again
    and again: now that the code alone may deliver, a wrong one costs a try on each job
    it was tried against, and too many lock them (ops told), as with the job named."""
    rider, bookings, legs = _two_jobs(client, picked=True)
    codes = {_code(RECIPIENT, b, "is coming to you") for b in bookings}
    wrong = [f"{n:04d}" for n in range(10_000) if f"{n:04d}" not in codes]
    most = dispatch.config().otp_max_failures
    jobs = " ".join(str(leg) for leg in legs)
    assert sms(client, rider, f"DROP {wrong[0]}") == [
        i18n.t("dispatch.otp_wrong_jobs", "en", jobs=jobs, left=most - 1)]
    assert [_failures(leg) for leg in legs] == [1, 1]
    assert [_status(leg) for leg in legs] == ["picked_up", "picked_up"]
    # The code with its job still works; a right code resets only its own job's tries.
    code = _code(RECIPIENT, bookings[0], "is coming to you")
    assert sms(client, rider, f"DROP {code} {legs[0]}")[0].startswith(
        f"Job {legs[0]} delivered")
    assert _failures(legs[1]) == 1


def test_wrong_codes_without_a_job_lock_the_jobs_and_tell_ops(client, live, frozen):  # noqa: F811
    rider, bookings, legs = _two_jobs(client, picked=True)
    codes = {_code(RECIPIENT, b, "is coming to you") for b in bookings}
    wrong = [f"{n:04d}" for n in range(10_000) if f"{n:04d}" not in codes]
    most = dispatch.config().otp_max_failures
    before = len(bodies_to(OPS))
    for n in range(most - 1):
        sms(client, rider, f"DROP {wrong[n]}")
    reply = sms(client, rider, f"DROP {wrong[most]}")
    assert reply == [i18n.t("dispatch.otp_locked", "en", job=" ".join(map(str, legs)),
                            ops_phone=get_settings().ops_phone)]
    assert [_status(leg) for leg in legs] == ["locked", "locked"]
    alerts = bodies_to(OPS)[before:]
    assert all(any(_ref(b) in body for body in alerts) for b in bookings), alerts


def test_a_done_jobs_code_sent_again_is_answered_as_done(client, live, frozen):  # noqa: F811
    rider, bookings, legs = _two_jobs(client, picked=True, jobs=3)
    code = _code(RECIPIENT, bookings[2], "is coming to you")
    assert sms(client, rider, f"DROP {code}")[0].startswith(f"Job {legs[2]} delivered")
    # Sent again (the answer was slow): done, and no other job is charged a try.
    assert sms(client, rider, f"DROP {code}") == [
        i18n.t("dispatch.already_delivered", "en", job=str(legs[2]))]
    assert [_failures(leg) for leg in legs] == [0, 0, 0]


def test_pick_with_the_code_of_one_of_two_jobs_picks_that_one(client, live, frozen):  # noqa: F811
    rider, bookings, legs = _two_jobs(client, picked=False)
    assert [_status(leg) for leg in legs] == ["assigned", "assigned"]
    pick = _code(CUSTOMER, bookings[0], "at pickup")
    reply = sms(client, rider, f"PICK {pick}")
    assert reply[0].startswith(f"Job {legs[0]}: picked up"), reply
    assert [_status(leg) for leg in legs] == ["picked_up", "assigned"]


# --- 2. ops' new code, retried ----------------------------------------------------------


def _new_code(client, ops: dict[str, str], leg_id: int, key: str | None, *,
              reason: str = "the customer called: no code", kind: str = "pickup"):
    headers = dict(ops)
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(f"{API}/ops/legs/{leg_id}/new-code", headers=headers,
                       json={"kind": kind, "reason": reason, "send": True})


def _codes_given(leg_id: int) -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == "leg.new_code", AuditEntry.target == f"leg:{leg_id}"))


def _new_code_texts(booking_id: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id, OutboxMessage.to_addr == CUSTOMER,
            OutboxMessage.body.like("%new pickup code%")).order_by(OutboxMessage.id)))


def test_a_retried_new_code_answers_the_first_and_sends_nothing_more(client, live, frozen):  # noqa: F811
    rider, bookings, legs = _two_jobs(client, picked=False)
    booking_id, leg_id = bookings[0], legs[0]
    ops = sign_in(client, OPS)
    first = _new_code(client, ops, leg_id, "code-1")
    assert first.status_code == 200, first.get_json()
    again = _new_code(client, ops, leg_id, "code-1")
    assert again.status_code == 200 and again.get_json() == first.get_json()
    code = first.get_json()["code"]
    assert _codes_given(leg_id) == 1
    assert len(_new_code_texts(booking_id)) == 1 and code in _new_code_texts(booking_id)[0]
    # The code answered twice is the one that works.
    assert "picked up" in sms(client, rider, f"PICK {code} {leg_id}")[0]
    # A retry after the pickup still answers the first answer, not "picked up already".
    late = _new_code(client, ops, leg_id, "code-1")
    assert late.status_code == 200 and late.get_json() == first.get_json()
    fresh = _new_code(client, ops, leg_id, "code-2")
    assert fresh.status_code == 409
    assert fresh.get_json()["error"]["code"] == "already_picked_up"
    assert _codes_given(leg_id) == 1


def test_the_same_key_for_another_request_is_refused(client, live, frozen):  # noqa: F811
    _, bookings, legs = _two_jobs(client, picked=False)
    ops = sign_in(client, OPS)
    assert _new_code(client, ops, legs[0], "k").status_code == 200
    for leg_id, reason, kind in ((legs[1], "the customer called: no code", "pickup"),
                                 (legs[0], "she called again", "pickup"),
                                 (legs[0], "the customer called: no code", "drop")):
        r = _new_code(client, ops, leg_id, "k", reason=reason, kind=kind)
        assert r.status_code == 422, r.get_json()
        assert r.get_json()["error"]["code"] == "idempotency_key_reused"
        assert r.get_json()["error"]["field"] == "Idempotency-Key"
    assert (_codes_given(legs[0]), _codes_given(legs[1])) == (1, 0)
    assert len(_new_code_texts(bookings[1])) == 0


def test_without_a_key_each_request_makes_a_code_as_before(client, live, frozen):  # noqa: F811
    _, bookings, legs = _two_jobs(client, picked=False)
    ops = sign_in(client, OPS)
    for _ in range(2):
        assert _new_code(client, ops, legs[0], None).status_code == 200
    assert _codes_given(legs[0]) == 2 and len(_new_code_texts(bookings[0])) == 2
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0


def test_a_refused_new_code_keeps_no_answer(client, live, frozen):  # noqa: F811
    _, bookings, legs = _two_jobs(client, picked=False)
    ops = sign_in(client, OPS)
    r = _new_code(client, ops, legs[0], "k-drop", kind="pickup", reason="x")
    assert r.status_code == 422  # reason too short: refused before the key is claimed
    r = _new_code(client, ops, 999_999, "k-none")
    assert r.status_code == 404
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0
    assert _new_code(client, ops, legs[0], "k-none").status_code == 200

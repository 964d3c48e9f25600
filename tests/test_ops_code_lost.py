"""A code ops sent that did not arrive is told to ops (review of 1b9741b).

dispatch._ops_code_since compares the ops audit entry's time with the failed message's
``created_at`` by ``>=``. A code ops *sent* ("send": true) is queued in the same
transaction as its audit entry (same now()), so the report of that very message failing
counts as "ops gave a code since": pickup_code_lost / drop_code_lost return None and
nothing happens. The code ops sent reached nobody, and nobody hears of it: no copy on
another way, no alert to ops (who were answered "sent": true). Whatever the fix (spare
the code ops may have read out, but tell ops; or treat the ops message as lost like any
other), ops must hear that it did not arrive.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import Leg, OutboxMessage
from tests.conftest import run_jobs
from tests.test_api import sign_in
from tests.test_code_delivery import pickup_rows, taken
from tests.test_dispatch import (
    CUSTOMER,
    OPS,
    RECIPIENT,
    bodies_to,
    frozen,  # noqa: F401  (fixture)
    last_code,
    paid_booking,
    sms,
)
from tests.test_notice_review import cannot_deliver, customer_speaks, leg_of, ref_of
from tests.test_ops_codes import PICK_EN, new_code

pytestmark = pytest.mark.db


def drop_rows(booking_id: int) -> list[OutboxMessage]:
    with transaction() as s:
        rows = list(s.scalars(select(OutboxMessage).where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.dedupe_key.like("leg-%-dropotp-%")).order_by(OutboxMessage.id)))
        for r in rows:
            s.expunge(r)
        return rows


def _ops_heard_of(ref: str, since: int) -> list[str]:
    return [b for b in bodies_to(OPS)[since:] if ref in b]


def test_ops_hear_when_the_pickup_code_they_sent_did_not_arrive(client, live,
                                                                 frozen):  # noqa: F811
    booking_id = paid_booking()
    customer_speaks("en")
    taken(client, booking_id)  # the first code reached Meena
    leg_id = leg_of(booking_id)
    ops = sign_in(client, OPS)
    cannot_deliver(CUSTOMER, "undelivered", "30003")  # her phone is off from now on
    before = len(bodies_to(OPS))
    r = new_code(client, ops, leg_id, "pickup", send=True)
    assert r.status_code == 200 and r.get_json()["sent"] is True, r.get_json()
    with transaction() as s:
        hashed = s.get(Leg, leg_id).pickup_otp_hash
    run_jobs()  # sent, then Twilio's report: undelivered
    assert pickup_rows(booking_id)[-1].status == "undelivered"
    assert _ops_heard_of(ref_of(booking_id), before), (
        "the code ops sent never arrived and nobody was told: the failure report of the "
        "ops message itself was taken for 'ops gave a code since' (_ops_code_since, >=)")
    # The code ops gave (and may have read out) still works: no other code was made.
    with transaction() as s:
        assert s.get(Leg, leg_id).pickup_otp_hash == hashed


def test_ops_hear_when_the_drop_code_they_sent_did_not_arrive(client, live,
                                                               frozen):  # noqa: F811
    booking_id = paid_booking()
    customer_speaks("en")
    rider = taken(client, booking_id)
    sms(client, rider, f"PICK {last_code(CUSTOMER, PICK_EN)}")
    run_jobs()
    leg_id = leg_of(booking_id)
    ops = sign_in(client, OPS)
    cannot_deliver(RECIPIENT, "undelivered", "30003")
    before = len(bodies_to(OPS))
    r = new_code(client, ops, leg_id, "drop", send=True)
    assert r.status_code == 200 and r.get_json()["sent"] is True, r.get_json()
    run_jobs()  # sent, then Twilio's report: undelivered
    assert [row.status for row in drop_rows(booking_id)][-1] == "undelivered"
    assert _ops_heard_of(ref_of(booking_id), before), (
        "the drop code ops sent to the recipient never arrived: no copy to the sender, "
        "no alert to ops")

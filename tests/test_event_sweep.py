"""The payments sweep re-enqueues stored Razorpay events whose job was lost, at most 200 a
sweep. Events whose handler keeps failing stay unprocessed; taken first by id every
sweep, 200 of them kept every newer lost event (a payment captured, a refund processed)
from ever being re-enqueued. Each sweep now takes up after the last one's page, from the
first again after the last (found by a review of the money path, session 19)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import clock
from core.adapters.db import transaction
from core.adapters.payment_models import GatewayEvent
from core.services import payments

pytestmark = pytest.mark.db


def _stored_events(n: int, tag: str) -> list[int]:
    """``n`` events received 10 minutes ago and never processed (their jobs lost)."""
    with transaction() as s:
        rows = [GatewayEvent(event_id=f"evt_{tag}{i}", event="payment.captured", payload="{}",
                             received_at=clock.now() - timedelta(minutes=10))
                for i in range(n)]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def _sweep_page() -> list[int]:
    with transaction() as s:
        return payments.unprocessed_events(s)


def test_events_that_keep_failing_do_not_keep_a_newer_lost_event_waiting(clean_db):
    stuck = _stored_events(payments.EVENTS_PAGE, "stuck")  # their handler keeps failing
    (newer,) = _stored_events(1, "lost")
    first = _sweep_page()
    assert first == stuck  # oldest first, a page of them
    second = _sweep_page()
    assert newer in second, "a newer lost event never got its turn"
    # The page after the last starts again from the first: every event has its turn.
    assert second[0] == newer and second[1:] == stuck[:payments.EVENTS_PAGE - 1]


def test_fewer_events_than_a_page_are_all_taken_every_sweep(clean_db):
    ids = _stored_events(5, "few")
    assert _sweep_page() == ids
    assert _sweep_page() == ids  # not only those after the last sweep's place

"""A rating folds into the average of each partner who carried the booking: once each,
and without deadlocking against dispatch, which locks partners in id order."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from core.adapters.db import engine, transaction
from core.adapters.models import Booking, Leg
from core.services import rating
from tests.test_payments_support import new_partner
from tests.test_whatsapp_rating import chat, delivered_booking, partner_rating  # noqa: F401

pytestmark = pytest.mark.db


def relay_with(booking_id: int, partner_id: int) -> None:
    """Give the booking a second delivered leg, carried by ``partner_id``: a relay whose
    first leg's partner has the higher id."""
    cols = [c.name for c in Leg.__table__.columns if c.name not in ("id", "sequence",
                                                                    "partner_id")]
    listed = ", ".join(cols)
    with transaction() as s:
        s.execute(text(f"INSERT INTO legs ({listed}, sequence, partner_id) "
                       f"SELECT {listed}, sequence + 1, :partner FROM legs "
                       "WHERE booking_id = :b"), {"partner": partner_id, "b": booking_id})


def waiting_for_a_lock(conn) -> bool:  # noqa: ANN001
    return bool(conn.execute(text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()")).scalar())


def test_a_relay_rated_while_dispatch_locks_its_partners_does_not_deadlock(chat):  # noqa: F811
    early = new_partner("+919812349002", "acc_partner0002")
    bid, _, late = delivered_booking()
    assert early < late
    relay_with(bid, early)  # legs in order: late's, then early's

    failed: list[BaseException] = []

    def rate() -> None:
        try:
            with transaction() as s:
                rating.rate_booking(s, s.get(Booking, bid), 5)
        except BaseException as exc:  # noqa: BLE001 (reported to the test's thread)
            failed.append(exc)

    # Dispatch's order: the lower id first (early), then the other (late).
    with engine().connect() as dispatch, engine().connect() as watch:
        dispatch.execute(text("SELECT 1 FROM partner_profiles WHERE id = :p FOR UPDATE"),
                         {"p": early})
        rater = threading.Thread(target=rate)
        rater.start()
        for _ in range(2000):  # until the rating waits for early's row (bounded)
            if waiting_for_a_lock(watch):
                break
            watch.commit()
        else:
            pytest.fail("the rating never waited for the partner dispatch holds")
        # The old code held late's row by now: this waited for it, a deadlock.
        dispatch.execute(text("SELECT 1 FROM partner_profiles WHERE id = :p FOR UPDATE"),
                         {"p": late})
        dispatch.commit()
        rater.join(timeout=30)
    assert not rater.is_alive()
    assert failed == []
    assert partner_rating(early) == partner_rating(late)


def test_a_partner_who_carried_two_legs_counts_the_rating_once(chat):  # noqa: F811
    bid, _, partner = delivered_booking()
    relay_with(bid, partner)
    before = partner_rating(partner)
    with transaction() as s:
        rating.rate_booking(s, s.get(Booking, bid), 1)
    assert partner_rating(partner) == round(before * 0.9 + 100 * 0.1)

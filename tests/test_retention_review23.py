"""Review of b875a3c (retention walks an index of its own per pass, migration 0036).

The outbox pass leaves the texts of a booking still open: it asks whether the booking is
finished by an EXISTS on bookings, under an OR (or about no booking). PostgreSQL plans it
as a hashed subplan, built from every finished booking the service ever had, once per
batch: the run still reads a year of bookings for each batch of texts it redacts, the
cost the commit set out to remove. Counted as tests/test_retention_scale.py counts
(pg_stat_xact_user_tables), at the same volume.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text

from core import clock
from core.adapters import db
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage
from core.services import retention

pytestmark = pytest.mark.db

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
MANY = 20_000  # finished bookings of the months and years before
FEW = 60  # as in test_retention_scale: the most rows of one table a run may read here
READ = text("SELECT relname, seq_tup_read + coalesce(idx_tup_fetch, 0) "
            "FROM pg_stat_xact_user_tables")


@pytest.fixture(autouse=True)
def _now(clean_db):
    clock.freeze(NOW)
    yield
    clock.freeze(None)


@pytest.fixture
def reads(monkeypatch) -> Counter[str]:
    """Rows the retention run reads, by table, summed over its transactions."""
    counted: Counter[str] = Counter()
    real = retention.transaction

    @contextmanager
    def counting() -> Iterator:
        with real() as session:
            before: Counter[str] = Counter(dict(session.execute(READ).tuples().all()))
            yield session
            after: Counter[str] = Counter(dict(session.execute(READ).tuples().all()))
            counted.update(after - before)

    monkeypatch.setattr(retention, "transaction", counting)
    return counted


def sql(statement: str, **params) -> list:
    with db.engine().begin() as conn:
        result = conn.execute(text(statement), {"now": NOW, "n": MANY, **params})
        return list(result.scalars()) if result.returns_rows else []


def a_year_of_finished_bookings() -> None:
    """MANY delivered bookings, booked over the last 700 days (ids 1..MANY, the oldest
    first)."""
    sql("INSERT INTO people (id, phone, role, opted_out) "
        "VALUES (1, '+919812300001', 'customer', false)")
    sql("INSERT INTO bookings (id, reference, customer_id, channel, status, pickup_lat,"
        " pickup_lng, drop_lat, drop_lng, speed_tier, vehicle_type, distance_m, fare,"
        " total_paise, commission_paise, partner_share_paise, version, created_at)"
        " SELECT g, (70000000 + g)::text, 1, 'whatsapp', 'delivered', 26.8, 84.5, 26.9,"
        " 84.6, 'standard', 'bicycle', 5000, '{}', 10000, 2000, 8000, 1,"
        " :now - interval '700 days' + g * interval '50 minutes'"
        " FROM generate_series(1, :n) g")
    sql("SELECT setval(pg_get_serial_sequence(t, 'id'), 1000000) "
        "FROM unnest(ARRAY['people', 'bookings']) t")


def analyze(*tables: str) -> None:
    with db.engine().begin() as conn:
        for table in tables:
            conn.execute(text(f"ANALYZE {table}"))


def count(entity, *where) -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(entity).where(*where)) or 0


def test_a_nights_redaction_does_not_read_every_finished_booking(reads):
    """A night as any other: the texts of the bookings of long ago redacted, those of the
    last 90 days kept, a day's texts due. Which of those are of a finished booking is a
    look-up by the booking's key each, not a read of the whole bookings table per batch."""
    a_year_of_finished_bookings()
    # One message per booking: redacted long ago, or kept (the last 90 days, 1 in 4).
    sql("INSERT INTO outbox_messages (channel, to_addr, from_addr, body, booking_id, status,"
        " attempts, created_at, sent_at) SELECT 'sms', '+919812300001', '+14155238886',"
        " CASE WHEN at < :now - interval '90 days' THEN '[removed]'"
        " ELSE 'Booking ' || g || ' delivered' END, g, 'delivered', 1, at, at"
        " FROM (SELECT g, :now - interval '700 days' + g * interval '50 minutes' AS at"
        " FROM generate_series(1, :n) g) s")
    due = sql("INSERT INTO outbox_messages (channel, to_addr, from_addr, body, booking_id,"
              " status, attempts, created_at, sent_at) SELECT 'sms', '+919812300001',"
              " '+14155238886', 'Meena: the parcel is at the school gate', g, 'delivered', 1,"
              " :now - interval '90 days 6 hours', :now - interval '90 days 6 hours'"
              " FROM generate_series(1, 5) g RETURNING id")
    analyze("outbox_messages", "bookings")

    done = retention.run(NOW)
    assert done["outbox_messages"] == 5 and done["unfinished"] == 0
    assert count(OutboxMessage, OutboxMessage.id.in_(due),
                 OutboxMessage.body == retention.REDACTED) == 5
    assert reads["bookings"] < FEW, reads


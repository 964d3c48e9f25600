"""The daily retention run at a year's volume: each pass reads the rows it can still change.

The rows stay after their texts are redacted, so a run that walked each table from its
first row read every message since the service began, every night. Here each table holds
many rows the run has nothing to do with (texts redacted long ago, answers and status
events not due yet, messages sent outside the codes' week), a few that are due, and a
few due that it must leave; the tables are analyzed, as autovacuum keeps them in
production. What the run reads is counted by PostgreSQL itself: the table rows its
statements fetched, by scan or by index (pg_stat_xact_user_tables, read as each of its
transactions starts and as it ends). Each test fails on the run that walked by id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import count as numbers

import pytest
from sqlalchemy import func, select, text

from core import clock
from core.adapters import db
from core.adapters.api_models import IdempotencyRecord
from core.adapters.db import transaction
from core.adapters.dialog_models import HandoffMessage
from core.adapters.dispatch_models import PodPhoto
from core.adapters.models import InboundEvent, MessageStatusEvent, OutboxMessage
from core.services import ivr, outbox, retention

pytestmark = pytest.mark.db

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
MANY = 20_000  # rows of one table the run has nothing to do with
FEW = 60  # the most rows of one table a run may read here: the due ones, those left, lookups
REDACTED = retention.REDACTED
CODE_TEXT = "Your pickup code is 4821. Booking 12345678."  # the code at [20, 24]
_serial = numbers(1)

# The rows of each table fetched by this connection's statements since its statistics were
# last reported (between transactions): read as a transaction starts and as it ends.
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
            before = Counter(dict(session.execute(READ).tuples().all()))
            yield session
            counted.update(Counter(dict(session.execute(READ).tuples().all())) - before)

    monkeypatch.setattr(retention, "transaction", counting)
    return counted


def sql(statement: str, **params) -> list:
    with db.engine().begin() as conn:
        result = conn.execute(text(statement), {"now": NOW, "redacted": REDACTED, **params})
        return list(result.scalars()) if result.returns_rows else []


def analyze(*tables: str) -> None:
    with db.engine().begin() as conn:
        for table in tables:
            conn.execute(text(f"ANALYZE {table}"))


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def message(body: str, *, days: float, status: str = "delivered", booking: int | None = None,
            media: str | None = None, sent: bool = True, spans: str | None = None) -> int:
    (row_id,) = sql(
        "INSERT INTO outbox_messages (channel, to_addr, from_addr, body, media_url, booking_id,"
        " status, attempts, created_at, sent_at, code_spans) VALUES ('sms', '+919812300051',"
        " '+14155238886', :body, :media, :booking, :status, 1, :at, :sent_at,"
        " CAST(:spans AS jsonb)) RETURNING id",
        body=body, media=media, booking=booking, status=status, at=ago(days=days),
        sent_at=ago(days=days) if sent else None, spans=spans)
    return row_id


def many_messages(body: str, *, oldest_days: int, newest_days: int) -> None:
    """MANY messages written (and sent a minute later) evenly from ``oldest_days`` ago to
    ``newest_days`` ago."""
    sql("INSERT INTO outbox_messages (channel, to_addr, from_addr, body, status, attempts,"
        " created_at, sent_at) SELECT 'sms', '+919812300051', '+14155238886', :body,"
        " 'delivered', 1, at, at + interval '1 minute' FROM (SELECT :now - :oldest"
        " + (:oldest - :newest) * g / :n AS at FROM generate_series(1, :n) g) s",
        body=body, oldest=timedelta(days=oldest_days), newest=timedelta(days=newest_days),
        n=MANY)


def booking(status: str) -> int:
    (customer,) = sql("INSERT INTO people (phone, role, opted_out) "
                      "VALUES (:phone, 'customer', false) RETURNING id",
                      phone=f"+9198123{next(_serial):05d}")
    (row_id,) = sql(
        "INSERT INTO bookings (reference, customer_id, channel, status, pickup_lat, pickup_lng,"
        " drop_lat, drop_lng, speed_tier, vehicle_type, distance_m, fare, total_paise,"
        " commission_paise, partner_share_paise, version) VALUES (:ref, :customer, 'whatsapp',"
        " :status, 26.8, 84.5, 26.9, 84.6, 'standard', 'bicycle', 5000, '{}', 10000, 2000,"
        " 8000, 1) RETURNING id",
        ref=f"7{customer:07d}", customer=customer, status=status)
    return row_id


def bodies(*ids: int) -> list[str]:
    with transaction() as s:
        found = dict(s.execute(select(OutboxMessage.id, OutboxMessage.body)
                               .where(OutboxMessage.id.in_(ids))).tuples().all())
    return [found[i] for i in ids]


def count(entity, *where) -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(entity).where(*where))


def test_the_redaction_reads_the_texts_not_redacted_yet_not_the_years_redacted(
        reads, monkeypatch):
    many_messages(REDACTED, oldest_days=700, newest_days=100)
    closed = booking("delivered")
    due = [message("Meena: the parcel is at the school gate", days=300),  # runs were missed
           message("Booking 71234567 delivered", days=120, booking=closed),
           message(REDACTED, days=95, media="https://api.twilio.com/photo.jpg")]
    left = [message("Booking 71234568: partner on the way", days=200,
                    booking=booking("assigned")),  # the booking is still open
            message("Your parcel is booked", days=150, status="pending"),  # not sent yet
            message("Meena: thank you", days=10)]
    conv = sql("INSERT INTO conversations (channel, contact, step, state, misses, handoff) "
               "VALUES ('whatsapp', 'whatsapp:+919812300051', 'start', '{}', 0, false) "
               "RETURNING id")[0]
    handoff = {status: sql("INSERT INTO handoffs (conversation_id, channel, reason, status) "
                           "VALUES (:conv, 'whatsapp', 'asked', :status) RETURNING id",
                           conv=conv, status=status)[0] for status in ("closed", "waiting")}
    sql("INSERT INTO handoff_messages (handoff_id, direction, body, created_at) "
        "SELECT :h, 'in', :redacted, :now - interval '100 days' - g * interval '30 minutes' "
        "FROM generate_series(1, :n) g", h=handoff["closed"], n=MANY)

    def said(h: int, body: str, days: int) -> int:
        return sql("INSERT INTO handoff_messages (handoff_id, direction, body, created_at) "
                   "VALUES (:h, 'in', :body, :at) RETURNING id", h=h, body=body,
                   at=ago(days=days))[0]

    said_due = [said(handoff["closed"], "my house is behind the temple", 400),
                said(handoff["closed"], "call me after six", 91)]
    said_left = [said(handoff["waiting"], "still waiting for you", 120),
                 said(handoff["closed"], "thanks", 30)]
    analyze("outbox_messages", "handoff_messages")
    monkeypatch.setattr(retention, "BATCH", 2)  # the walk goes on from batch to batch

    done = retention.run(NOW)
    assert (done["outbox_messages"], done["handoff_messages"], done["unfinished"]) == (3, 2, 0)
    assert bodies(*due) == [REDACTED] * 3
    assert REDACTED not in bodies(*left)
    assert count(OutboxMessage, OutboxMessage.media_url.is_not(None)) == 0
    with transaction() as s:
        texts = dict(s.execute(select(HandoffMessage.id, HandoffMessage.body)).tuples().all())
    assert [texts[i] for i in said_due] == [REDACTED] * 2
    assert REDACTED not in [texts[i] for i in said_left]
    assert reads["outbox_messages"] < FEW and reads["handoff_messages"] < FEW, reads

    # Nothing left to change: the next night reads next to nothing.
    reads.clear()
    again = retention.run(NOW + timedelta(days=1))
    assert not any(again.values()), again
    assert reads["outbox_messages"] < FEW and reads["handoff_messages"] < FEW, reads


def test_the_codes_pass_reads_the_week_it_looks_back_over_not_the_whole_outbox(
        reads, monkeypatch):
    many_messages(REDACTED, oldest_days=700, newest_days=100)
    many_messages("Booking 71234567 delivered. Rate it 1-5.", oldest_days=60, newest_days=9)
    spans = "[[20, 24]]"
    masked = [message(CODE_TEXT, days=3, spans=spans),
              message(CODE_TEXT, days=4, status="failed", sent=False, spans=spans)]
    kept = [message(CODE_TEXT, days=9, spans=spans),  # before the week the run looks back
            message(CODE_TEXT, days=0.5, spans=spans),  # a day is not over yet
            message(CODE_TEXT, days=4, status="pending", sent=False, spans=spans)]
    analyze("outbox_messages")
    monkeypatch.setattr(retention, "BATCH", 1)

    done = retention.run(NOW)
    assert done["codes"] == 2 and done["outbox_messages"] == 0
    assert bodies(*masked) == [CODE_TEXT.replace("4821", outbox.CODE_MASK)] * 2
    assert bodies(*kept) == [CODE_TEXT] * 3
    assert reads["outbox_messages"] < FEW, reads


def test_the_answer_passes_read_the_answers_due_not_the_months_kept(reads, monkeypatch):
    sql("INSERT INTO inbound_events (provider, external_id, channel, response_body, received_at)"
        " SELECT 'twilio-sms', 'SM' || g, 'sms', '<Response><Message>OK</Message></Response>',"
        " :now - interval '80 days' + g * interval '3 minutes' FROM generate_series(1, :n) g",
        n=MANY)  # the last ten weeks' answers, kept for Twilio's retries

    def answer(provider: str, channel: str, body: str, **age: float) -> int:
        return sql("INSERT INTO inbound_events (provider, external_id, channel, response_body,"
                   " received_at) VALUES (:provider, :ext, :channel, :body, :at) RETURNING id",
                   provider=provider, ext=f"CA{next(_serial)}", channel=channel,
                   body=body, at=ago(**age))[0]

    read_out = "<Response><Say>Your code is 4 8 2 1</Say></Response>"
    cleared = answer("twilio-sms", "sms", "<Response/>", days=95)
    blanked = answer(ivr.PROVIDER, ivr.CODE_CHANNEL, read_out, hours=2)
    kept = [answer(ivr.PROVIDER, ivr.CODE_CHANNEL, read_out, days=9),  # before the week
            answer(ivr.PROVIDER, ivr.CODE_CHANNEL, read_out, minutes=10)]  # the call goes on
    analyze("inbound_events")
    monkeypatch.setattr(retention, "BATCH", 1)

    done = retention.run(NOW)
    assert (done["inbound_answers"], done["code_answers"]) == (1, 1)
    with transaction() as s:
        answers = dict(s.execute(select(InboundEvent.id, InboundEvent.response_body))
                       .tuples().all())
    assert answers[cleared] is None and answers[blanked] == ivr.BLANKED_ANSWER
    assert [answers[i] for i in kept] == [read_out] * 2
    assert count(InboundEvent, InboundEvent.response_body.is_not(None)) == MANY + 3
    assert reads["inbound_events"] < FEW, reads


def test_the_deletions_read_the_rows_due_not_the_window_kept(reads, monkeypatch):
    def spread(table: str, columns: str, values: str, at: str, days: int) -> None:
        sql(f"INSERT INTO {table} ({columns}, {at}) SELECT {values}, :now - :days"
            f" + g * interval '1 minute' FROM generate_series(1, :n) g",
            days=timedelta(days=days), n=MANY)

    spread("message_status_events", "provider_sid, status", "'SM' || g, 'delivered'",
           "received_at", 29)
    sql("INSERT INTO message_status_events (provider_sid, status, received_at) "
        "VALUES ('SMold1', 'sent', :a), ('SMold2', 'delivered', :b)",
        a=ago(days=40), b=ago(days=31))
    customer = sql("SELECT customer_id FROM bookings WHERE id = :b", b=booking("delivered"))[0]
    spread("idempotency_records", "person_id, key, request_hash, status, response",
           f"{customer}, 'k' || g, 'h', 201, '{{}}'", "created_at", 89)
    sql("INSERT INTO idempotency_records (person_id, key, request_hash, status, response,"
        " created_at) VALUES (:p, 'old1', 'h', 201, '{}', :a), (:p, 'old2', 'h', 201, '{}', :b)",
        p=customer, a=ago(days=200), b=ago(days=91))

    def leg(status: str, booking_status: str) -> int:
        return sql("INSERT INTO legs (booking_id, sequence, status, from_lat, from_lng, to_lat,"
                   " to_lng, distance_m, otp_failures, payout_paise, version) VALUES (:b, 1,"
                   " :status, 26.8, 84.5, 26.9, 84.6, 5000, 0, 8000, 1) RETURNING id",
                   b=booking(booking_status), status=status)[0]

    done_leg, open_leg = leg("delivered", "delivered"), leg("picked_up", "in_transit")
    photo = "'https://old.example/pod.jpg', 'image/jpeg', 1000, 'x'"
    spread("dispatch_pod_photos", "leg_id, storage_uri, content_type, size_bytes, sha256",
           f"{done_leg}, {photo}", "created_at", 89)
    sql(f"INSERT INTO dispatch_pod_photos (leg_id, storage_uri, content_type, size_bytes,"
        f" sha256, created_at) VALUES (:done, {photo}, :a), (:done, {photo}, :b),"
        f" (:open, {photo}, :a)", done=done_leg, open=open_leg, a=ago(days=150), b=ago(days=91))
    analyze("message_status_events", "idempotency_records", "dispatch_pod_photos")
    monkeypatch.setattr(retention, "BATCH", 1)

    done = retention.run(NOW)
    assert (done["status_events"], done["idempotency_records"], done["pod_photos"]) == (2, 2, 2)
    assert count(MessageStatusEvent) == count(IdempotencyRecord) == MANY
    assert count(PodPhoto) == MANY + 1  # the open booking's photo stays
    assert reads["message_status_events"] < FEW, reads
    assert reads["idempotency_records"] < FEW, reads
    assert reads["dispatch_pod_photos"] < FEW, reads


def test_the_indexes_hold_the_texts_that_are_not_the_redaction_marker(clean_db):
    """The partial indexes name the marker in SQL: another marker would leave every text in
    them, and the redaction query out of them."""
    with db.engine().connect() as conn:
        defs = dict(conn.execute(text("SELECT indexname, indexdef FROM pg_indexes "
                                      "WHERE indexname LIKE '%unredacted%'")).tuples().all())
    assert sorted(defs) == ["ix_handoff_messages_unredacted_created_at",
                            "ix_outbox_messages_unredacted_created_at",
                            "ix_outbox_messages_unredacted_sent_at"]
    assert all(f"body <> '{REDACTED}'::text" in d for d in defs.values()), defs

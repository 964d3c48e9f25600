"""The payments sweep, reconciliation's window and /metrics read the work left, not the
history (migrations 0016 and 0017).

Over a year of generated rows (4,000 bookings, their legs, ledger entries, refunds,
gateway events and messages, with the cases each query tells apart), analyzed as
autovacuum would: the indexes exist, PostgreSQL's own plans for the statements the
service sends use them instead of reading whole tables, and the rewritten queries find
the same ids as the statements they replaced (kept below as the reference).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session

from core import clock
from core.adapters import db
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, PartnerProfile
from core.adapters.payment_models import LedgerPosting, LedgerTransaction, Refund
from core.domain import ledger as rules
from core.domain.booking import BookingStatus, LegStatus
from core.services import payments, reconciliation

pytestmark = pytest.mark.db

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
BOOKINGS = 4000
SPAN = timedelta(days=400)  # the bookings are spread over this, the last one at NOW

# Booking g (1..BOOKINGS) was made at t0 = NOW - SPAN + g * SPAN / BOOKINGS. Every 20th is
# cancelled, the next one failed, the others delivered by their leg, to partner 1 + g % 20
# (partners 5, 10, 15, 20 have no linked account). Each payment is captured (10,000);
# some legs are never released (g % 7 = 3), some released legs never transferred
# (g % 11 = 4) or transferred in part (g % 13 = 5), and some transfers failed 40 days
# later (g % 17 = 6, voided: owed again), so legs delivered before the sweep's window
# have a payable entry in it. Refunds of failed and cancelled bookings (g % 80): settled
# in full (0), still pending (20), failed twice (1), failed then settled (21), none (the
# other half: escrow untouched, but for 40's cancellation fee to its partner, never
# transferred); a second capture partly refunded on a delivered booking (g % 46 = 2:
# escrow still holds money). One event in 50 was never processed. Times never pass NOW.
GENERATE = [
    """INSERT INTO people (id, phone, name, role, opted_out)
       SELECT g, '+91700000' || lpad(g::text, 4, '0'), 'P' || g,
              CASE WHEN g = 1 THEN 'customer' ELSE 'partner' END, false
       FROM generate_series(1, 21) g""",
    """INSERT INTO partner_profiles (id, person_id, first_name, on_duty, has_app, rating_x100,
           offers_received, offers_accepted, trust_tier, max_active_legs, payout_account_id,
           kyc_status)
       SELECT g, g + 1, 'P' || g, true, false, 450, 0, 0, 1, 2,
              CASE WHEN g % 5 <> 0 THEN 'acc_' || g END, 'verified'
       FROM generate_series(1, 20) g""",
    """CREATE TEMP TABLE gen ON COMMIT DROP AS
       SELECT g, t0,
              CASE g % 20 WHEN 0 THEN 'cancelled' WHEN 1 THEN 'failed' ELSE 'delivered' END
                AS status,
              LEAST(t0 + interval '2 hours', CAST(:now AS timestamptz) - interval '1 minute')
                AS delivered_at
       FROM (SELECT g, CAST(:start AS timestamptz) + g * CAST(:step AS interval) AS t0
             FROM generate_series(1, :n) g) s""",
    """INSERT INTO bookings (id, reference, customer_id, channel, status, pickup_lat,
           pickup_lng, drop_lat, drop_lng, speed_tier, vehicle_type, distance_m, fare,
           total_paise, commission_paise, partner_share_paise, version, created_at, updated_at)
       SELECT g, 'R' || lpad(g::text, 7, '0'), 1, 'whatsapp', status, 26.8, 84.5, 26.9, 84.6,
              'standard', 'bicycle', 5000, '{}', 10000, 2000, 8000, 3, t0,
              LEAST(t0 + interval '3 hours', CAST(:now AS timestamptz))
       FROM gen""",
    """INSERT INTO legs (id, booking_id, sequence, status, from_lat, from_lng, to_lat, to_lng,
           distance_m, partner_id, otp_failures, payout_paise, version, created_at,
           updated_at, delivered_at)
       SELECT g, g, 1, CASE WHEN status = 'delivered' THEN 'delivered' ELSE 'cancelled' END,
              26.8, 84.5, 26.9, 84.6, 5000,
              CASE WHEN status = 'delivered' THEN 1 + g % 20 END, 0, 8000, 3, t0,
              LEAST(t0 + interval '3 hours', CAST(:now AS timestamptz)),
              CASE WHEN status = 'delivered' THEN delivered_at END
       FROM gen""",
    "SELECT setval(pg_get_serial_sequence('people', 'id'), 21)",
    "SELECT setval(pg_get_serial_sequence('partner_profiles', 'id'), 20)",
    "SELECT setval(pg_get_serial_sequence('bookings', 'id'), :n)",
    "SELECT setval(pg_get_serial_sequence('legs', 'id'), :n)",
    # (booking, attempt, amount, status, settled at): the refund attempts.
    """CREATE TEMP TABLE gen_refunds ON COMMIT DROP AS
       SELECT g, a.attempt, a.amount, a.status,
              LEAST(t0 + interval '4 hours', CAST(:now AS timestamptz)) AS at
       FROM gen CROSS JOIN LATERAL (VALUES
           (g % 80 = 0, 1, 10000, 'processed'),
           (g % 80 = 20, 1, 5000, 'pending'),
           (g % 80 = 1, 1, 10000, 'failed'), (g % 80 = 1, 2, 10000, 'failed'),
           (g % 80 = 21, 1, 10000, 'failed'), (g % 80 = 21, 2, 10000, 'processed'),
           (status = 'delivered' AND g % 46 = 2, 1, 2000, 'processed'))
         AS a(ok, attempt, amount, status)
       WHERE a.ok""",
    """INSERT INTO payment_refunds (booking_id, attempt, payment_id, amount_paise, fee_paise,
           reason, actor, status, created_at, updated_at)
       SELECT g, attempt, 'pay_' || g, amount, 0, 'cancelled', 'system', status, at, at
       FROM gen_refunds""",
    # (key, kind, booking, gateway ref, at, leg, partner, amount): the ledger entries.
    """CREATE TEMP TABLE gen_entries ON COMMIT DROP AS
       SELECT 'capture:pay_' || g AS key, 'capture' AS kind, g, 'pay_' || g AS ref,
              LEAST(t0 + interval '10 minutes', CAST(:now AS timestamptz)) AS at,
              NULL::int AS leg, NULL::int AS partner, 10000 AS amount
       FROM gen
       UNION ALL
       SELECT 'capture:pay_x' || g, 'capture', g, 'pay_x' || g,
              LEAST(t0 + interval '20 minutes', CAST(:now AS timestamptz)), NULL, NULL, 5000
       FROM gen WHERE status = 'delivered' AND g % 23 = 2
       UNION ALL
       SELECT 'release:leg:' || g, 'release', g, NULL, delivered_at, g, 1 + g % 20, 8000
       FROM gen WHERE status = 'delivered' AND g % 7 <> 3
       UNION ALL
       SELECT 'transfer:trf_' || g || ':processed', 'transfer_processed', g, 'trf_' || g,
              LEAST(delivered_at + interval '1 hour', CAST(:now AS timestamptz)), g,
              1 + g % 20, CASE WHEN g % 13 = 5 THEN 5000 ELSE 8000 END
       FROM gen WHERE status = 'delivered' AND g % 7 <> 3 AND g % 11 <> 4
       UNION ALL
       SELECT 'transfer:trf_' || g || ':failed', 'transfer_failed', g, 'trf_' || g,
              LEAST(delivered_at + interval '40 days', CAST(:now AS timestamptz)), g,
              1 + g % 20, CASE WHEN g % 13 = 5 THEN 5000 ELSE 8000 END
       FROM gen WHERE status = 'delivered' AND g % 7 <> 3 AND g % 11 <> 4 AND g % 17 = 6
       UNION ALL
       SELECT 'fee:booking:' || g, 'cancellation_fee', g, NULL,
              LEAST(t0 + interval '30 minutes', CAST(:now AS timestamptz)), g, 1 + g % 20, 2000
       FROM gen WHERE g % 80 = 40
       UNION ALL
       SELECT 'refund:' || g || '-' || attempt || ':requested', 'refund_requested', g, NULL,
              at - interval '1 minute', NULL, NULL, amount
       FROM gen_refunds WHERE status IN ('processed', 'pending')
       UNION ALL
       SELECT 'refund:' || g || '-' || attempt || ':settled', 'refund_processed', g,
              'rfnd_' || g || '_' || attempt, at, NULL, NULL, amount
       FROM gen_refunds WHERE status = 'processed'""",
    """INSERT INTO ledger_transactions (idempotency_key, kind, booking_id, gateway_ref, actor,
           cause, memo, created_at)
       SELECT key, kind, g, ref, 'test', 'generated', kind, at FROM gen_entries ORDER BY at""",
    """INSERT INTO ledger_postings (transaction_id, account, account_kind, booking_id,
           partner_id, leg_id, amount_paise, created_at)
       SELECT t.id, p.account, p.account_kind, e.g, p.partner, e.leg, p.amount, e.at
       FROM gen_entries e JOIN ledger_transactions t ON t.idempotency_key = e.key
       CROSS JOIN LATERAL (VALUES
         (e.kind = 'capture', 'gateway_clearing', 'gateway_clearing', NULL::int, -e.amount),
         (e.kind = 'capture', 'escrow:b' || e.g, 'escrow', NULL, e.amount),
         (e.kind = 'release', 'escrow:b' || e.g, 'escrow', NULL, -10000),
         (e.kind = 'release', 'partner_payable:p' || e.partner, 'partner_payable', e.partner,
          e.amount),
         (e.kind = 'release', 'platform_commission', 'platform_commission', NULL,
          10000 - e.amount),
         (e.kind = 'transfer_processed', 'partner_payable:p' || e.partner, 'partner_payable',
          e.partner, -e.amount),
         (e.kind = 'transfer_processed', 'gateway_clearing', 'gateway_clearing', NULL,
          e.amount),
         (e.kind = 'transfer_failed', 'gateway_clearing', 'gateway_clearing', NULL, -e.amount),
         (e.kind = 'transfer_failed', 'partner_payable:p' || e.partner, 'partner_payable',
          e.partner, e.amount),
         (e.kind = 'cancellation_fee', 'escrow:b' || e.g, 'escrow', NULL, -e.amount),
         (e.kind = 'cancellation_fee', 'partner_payable:p' || e.partner, 'partner_payable',
          e.partner, e.amount),
         (e.kind = 'refund_requested', 'escrow:b' || e.g, 'escrow', NULL, -e.amount),
         (e.kind = 'refund_requested', 'refunds_pending:b' || e.g, 'refunds_pending', NULL,
          e.amount),
         (e.kind = 'refund_processed', 'refunds_pending:b' || e.g, 'refunds_pending', NULL,
          -e.amount),
         (e.kind = 'refund_processed', 'gateway_clearing', 'gateway_clearing', NULL, e.amount)
       ) AS p(ok, account, account_kind, partner, amount)
       WHERE p.ok ORDER BY t.id""",
    """INSERT INTO razorpay_events (event_id, event, payload, received_at, processed_at,
           outcome)
       SELECT 'evt_' || g, 'payment_link.paid', '{}', at,
              CASE WHEN g % 50 <> 7 THEN at + interval '1 second' END,
              CASE WHEN g % 50 <> 7 THEN 'captured' END
       FROM (SELECT g, LEAST(t0 + interval '10 minutes', CAST(:now AS timestamptz)) AS at
             FROM gen) s""",
]

# Messages: two per booking, long sent (some failed then), and a few recent ones, by the
# database's clock (updated_at is its now() on every change, failed_at on a failure).
MESSAGES = [
    """INSERT INTO outbox_messages (channel, to_addr, from_addr, body, booking_id, status,
           attempts, created_at, updated_at, failed_at)
       SELECT 'whatsapp', 'whatsapp:+917000000001', 'whatsapp:+14155238886', 'Hello', g,
              status, 1, at, at, CASE WHEN status IN ('failed', 'undelivered') THEN at END
       FROM (SELECT g, CASE WHEN k = 1 THEN 'delivered' WHEN g % 25 = 3 THEN 'failed'
                            WHEN g % 25 = 4 THEN 'undelivered' ELSE 'read' END AS status,
                    now() - interval '2 hours' - (:n - g) * interval '1 hour' AS at
             FROM generate_series(1, :n) g CROSS JOIN generate_series(1, 2) k) m""",
    """INSERT INTO outbox_messages (channel, to_addr, from_addr, body, status, attempts,
           created_at, updated_at, failed_at)
       SELECT 'sms', '+917000000001', '+15005550006', 'Hello', status, 1,
              now() - age, now() - age,
              CASE WHEN status IN ('failed', 'undelivered') THEN now() - age END
       FROM (VALUES ('failed', interval '10 minutes'), ('failed', interval '20 minutes'),
                    ('failed', interval '50 minutes'), ('undelivered', interval '30 minutes'),
                    ('failed', interval '2 hours'), ('undelivered', interval '3 hours'),
                    ('pending', interval '1 minute'), ('pending', interval '2 minutes'),
                    ('sending', interval '1 minute'), ('queued', interval '1 minute'),
                    ('sent', interval '1 minute'), ('delivered', interval '1 minute'))
            AS m(status, age)""",
]


def generate(statements: list[str]) -> None:
    values = {"now": NOW, "start": NOW - SPAN, "step": SPAN / BOOKINGS, "n": BOOKINGS}
    with transaction() as s:
        for sql in statements:
            # A string opening with a colon (the end of a ledger key) holds no parameter.
            sql = sql.replace("':", "'\\:")
            s.execute(text(sql), {k: v for k, v in values.items()
                                  if re.search(rf":{k}\b", sql)})
    with db.engine().connect() as conn:  # autovacuum's job, done now: the planner's facts
        conn.execute(text("ANALYZE"))
        conn.commit()


@pytest.fixture
def history(clean_db: None) -> Iterator[None]:
    clock.freeze(NOW)
    generate(GENERATE)
    yield


def g_at(g: int) -> datetime:
    """When booking g was made (as GENERATE spreads them)."""
    return NOW - SPAN + g * (SPAN / BOOKINGS)


def sent(fn: Callable[[Session], Any]) -> list[tuple[str, Any]]:
    """The queries fn sends, with their values."""
    seen: list[tuple[str, Any]] = []

    def note(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            seen.append((statement, parameters))

    event.listen(db.engine(), "before_cursor_execute", note)
    try:
        with transaction() as s:
            fn(s)
    finally:
        event.remove(db.engine(), "before_cursor_execute", note)
    assert seen, "no query sent"
    return seen


def scans(statement: str, parameters: Any) -> list[dict]:
    """The scan nodes of the statement's plan, as PostgreSQL ran it (EXPLAIN ANALYZE)."""
    with db.engine().connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        row = raw.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters).fetchone()
        conn.rollback()
    assert row is not None
    found: list[dict] = []

    def walk(node: dict) -> None:
        if "Scan" in node["Node Type"]:
            found.append(node)
        for child in node.get("Plans", []):
            walk(child)

    walk(row[0][0]["Plan"])
    return found


def assert_reads_by_index(fn: Callable[[Session], Any], table: str, *indexes: str) -> None:
    """fn's queries use ``indexes``, never scan all of ``table``, and read (fetch or
    filter out) under a tenth of its rows in any one scan."""
    with transaction() as s:
        size = s.scalar(text(f"SELECT count(*) FROM {table}"))
    used: set[str] = set()
    for statement, parameters in sent(fn):
        for node in scans(statement, parameters):
            used.add(node.get("Index Name", ""))
            if node.get("Relation Name") != table:
                continue
            assert node["Node Type"] != "Seq Scan", f"all of {table} read by: {statement}"
            read = node["Actual Rows"] * node["Actual Loops"] + node.get(
                "Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
            assert read < size / 10, f"{read} of {size} rows of {table} read by: {statement}"
    assert set(indexes) <= used, f"{sorted(set(indexes) - used)} not used (but {used})"


# --- the indexes -----------------------------------------------------------------------------


MIGRATION_0016 = {
    "ix_ledger_postings_payable_created_at": (
        "ledger_postings", "(created_at)", "partner_payable", "leg_id IS NOT NULL"),
    "ix_ledger_transactions_created_at": ("ledger_transactions", "(created_at)"),
    "ix_razorpay_events_unprocessed": ("razorpay_events", "(id)", "processed_at IS NULL"),
    "ix_legs_delivered_at_with_partner": (
        "legs", "(delivered_at)", "'delivered'", "partner_id IS NOT NULL"),
    # and ix_outbox_messages_failed_updated_at, replaced by 0025's ix_outbox_messages_failed_at
    # (tests/test_ops_runtime.py).
}

MIGRATION_0017 = {
    "ix_ledger_postings_payable_leg_id": (
        "ledger_postings", "(leg_id) INCLUDE (partner_id, amount_paise)", "partner_payable",
        "leg_id IS NOT NULL"),
}


def assert_made(indexes: dict[str, tuple[str, ...]]) -> None:
    with transaction() as s:
        defs = dict(s.execute(text(
            "SELECT indexname, tablename || ' ' || indexdef FROM pg_indexes "
            "WHERE indexname = ANY(:names)"), {"names": list(indexes)}).all())
    assert set(defs) == set(indexes)
    for name, parts in indexes.items():
        assert defs[name].startswith(parts[0] + " ") and all(p in defs[name] for p in parts), (
            defs[name])


def test_migration_0016_made_the_sweeps_indexes(database):
    assert_made(MIGRATION_0016)


def test_migration_0017_made_the_index_of_the_payable_postings_of_legs(database):
    assert_made(MIGRATION_0017)


# --- the plans: what is left to do, not the history ---------------------------------------


def test_unpaid_legs_reads_only_the_postings_of_legs_paid_lately(history):
    assert_reads_by_index(payments.unpaid_legs, "ledger_postings",
                          "ix_ledger_postings_payable_created_at",
                          "ix_ledger_postings_payable_leg_id")


def test_unpaid_legs_reads_neither_the_entries_nor_the_legs_other_postings(history):
    # Looking up each payable posting's entry for its kind, and reading each leg's escrow,
    # commission and gateway postings only to drop them, were 60 to 75% of the pages the
    # query read at a year's volume (200,000 bookings).
    payable = {"ix_ledger_postings_payable_created_at", "ix_ledger_postings_payable_leg_id"}
    for statement, parameters in sent(payments.unpaid_legs):
        for node in scans(statement, parameters):
            assert node.get("Relation Name") != "ledger_transactions", statement
            if node.get("Relation Name") == "ledger_postings":
                assert node.get("Index Name") in payable, node
                assert node.get("Rows Removed by Filter", 0) == 0, node


def test_only_the_payable_kinds_post_to_a_partners_payable():
    """unpaid_legs sums every payable posting of a leg, not only those of entries of
    _PAYABLE_KINDS: the same, as long as no other kind of entry posts to a payable."""
    values = {"booking_id": 1, "leg_id": 2, "partner_id": 3, "payment_id": "pay_1",
              "refund_id": 4, "transfer_id": "trf_1", "gateway_refund_id": "rfnd_1",
              "amount_paise": 5000, "payout_paise": 4000, "commission_paise": 1000,
              "fee_paise": 500, "amount_reversed": 5000}
    to_payable: set[str] = set()
    for kind in rules.EntryKind:
        make = getattr(rules, kind.value)  # each kind's entries are made by its namesake
        entry = make(**{name: values[name] for name, p in inspect.signature(make).parameters.items()
                        if p.default is inspect.Parameter.empty})  # options keep their defaults
        assert entry.kind is kind
        if any(p.account.kind is rules.AccountKind.PARTNER_PAYABLE for p in entry.postings):
            to_payable.add(kind.value)
    assert to_payable == set(payments._PAYABLE_KINDS)


def test_owed_without_account_reads_only_the_postings_of_legs_owed_lately(history):
    assert_reads_by_index(payments.owed_without_account, "ledger_postings",
                          "ix_ledger_postings_payable_created_at",
                          "ix_ledger_postings_payable_leg_id")


def test_waiting_refunds_reads_only_the_postings_of_its_few_bookings(history):
    assert_reads_by_index(payments.waiting_refunds, "ledger_postings",
                          "ix_ledger_postings_booking_id")


def test_unprocessed_events_reads_only_the_events_not_processed(history):
    assert_reads_by_index(payments.unprocessed_events, "razorpay_events",
                          "ix_razorpay_events_unprocessed")


def test_unreleased_legs_reads_only_the_legs_delivered_lately(history):
    assert_reads_by_index(payments.unreleased_legs, "legs",
                          "ix_legs_delivered_at_with_partner")


def test_reconciliation_reads_only_the_entries_of_its_window(history):
    for kind, account in ((rules.EntryKind.CAPTURE, rules.AccountKind.ESCROW),
                          (rules.EntryKind.TRANSFER_PROCESSED,
                           rules.AccountKind.GATEWAY_CLEARING)):
        assert_reads_by_index(
            lambda s, k=kind, a=account: reconciliation._ledger_amounts(
                s, k, a, NOW - reconciliation.WINDOW, NOW),
            "ledger_transactions", "ix_ledger_transactions_created_at")


def test_metrics_count_only_the_outbox_messages_still_to_send_or_failed_lately(history, client):
    from core.web import ops

    generate(MESSAGES)
    assert_reads_by_index(ops.outbox_counts, "outbox_messages",
                          "ix_outbox_messages_failed_at", "ix_outbox_messages_status")
    body = client.get("/metrics").get_data(as_text=True)
    lines = {line for line in body.splitlines() if line.startswith("outbox_")}
    assert lines == {
        'outbox_messages{status="pending"} 2.0', 'outbox_messages{status="sending"} 1.0',
        'outbox_messages{status="queued"} 1.0',
        'outbox_messages_failed_last_hour{status="failed"} 3.0',
        'outbox_messages_failed_last_hour{status="undelivered"} 1.0',
    }


# --- the same answers as the statements they replaced ------------------------------------


def before_unpaid_legs(session: Session, within: timedelta = timedelta(days=30)) -> list[int]:
    """payments.unpaid_legs before migration 0016, the reference."""
    payable = (LedgerPosting.account_kind == rules.AccountKind.PARTNER_PAYABLE.value) & (
        LedgerPosting.leg_id.is_not(None))
    recent = select(LedgerPosting.leg_id).where(
        payable, LedgerPosting.created_at > clock.now() - within)
    can_be_paid = select(PartnerProfile.id).where(PartnerProfile.payout_account_id.is_not(None))
    return list(session.scalars(
        select(LedgerPosting.leg_id)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
        .where(payable, LedgerPosting.leg_id.in_(recent),
               LedgerPosting.partner_id.in_(can_be_paid),
               LedgerTransaction.kind.in_(payments._PAYABLE_KINDS))
        .group_by(LedgerPosting.leg_id).having(func.sum(LedgerPosting.amount_paise) > 0)
        .order_by(LedgerPosting.leg_id).limit(payments.UNPAID_SCAN)))


def before_waiting_refunds(session: Session, within: timedelta = timedelta(days=30)
                           ) -> list[int]:
    """payments.waiting_refunds before migration 0016, the reference."""
    since = clock.now() - within
    open_now = select(Refund.booking_id).where(Refund.status.in_(payments.OPEN_REFUND))
    settled = select(Refund.booking_id).where(Refund.updated_at > since)
    closed = select(Booking.id).where(
        Booking.status.in_((BookingStatus.FAILED.value, BookingStatus.CANCELLED.value)),
        Booking.updated_at > since)
    latest = select(Refund.booking_id, func.max(Refund.attempt).label("attempt")).group_by(
        Refund.booking_id).subquery()
    failed_last = select(Refund.booking_id).join(
        latest, (latest.c.booking_id == Refund.booking_id)
        & (latest.c.attempt == Refund.attempt)).where(Refund.status == "failed")
    return list(session.scalars(
        select(LedgerPosting.booking_id).where(
            LedgerPosting.booking_id.in_(settled) | LedgerPosting.booking_id.in_(closed),
            LedgerPosting.booking_id.not_in(open_now),
            LedgerPosting.booking_id.not_in(failed_last),
            LedgerPosting.account_kind == rules.AccountKind.ESCROW.value)
        .group_by(LedgerPosting.booking_id)
        .having(func.sum(LedgerPosting.amount_paise) > 0)
        .order_by(LedgerPosting.booking_id).limit(100)))


def before_unreleased_legs(session: Session, lookback: timedelta) -> list[int]:
    """payments.unreleased_legs before migration 0016 (its 30 days a parameter)."""
    released = select(LedgerTransaction.id).where(
        LedgerTransaction.idempotency_key == func.concat("release:leg:", Leg.id))
    return list(session.scalars(select(Leg.id).where(
        Leg.status == LegStatus.DELIVERED.value, Leg.partner_id.is_not(None),
        Leg.delivered_at > clock.now() - lookback,
        ~released.exists()).order_by(Leg.id).limit(100)))


def test_unpaid_legs_are_the_same_legs_as_before(history):
    with transaction() as s:
        legs = payments.unpaid_legs(s)
        assert legs == before_unpaid_legs(s)
        for within in (timedelta(days=5), timedelta(days=90), timedelta(days=400)):
            assert payments.unpaid_legs(s, within) == before_unpaid_legs(s, within)
    window = {g for g in range(1, BOOKINGS + 1) if g_at(g) > NOW - timedelta(days=29)}
    owed = set(legs)
    # Never transferred, transferred in part, and delivered before the window but with a
    # failed transfer in it, and cancellation fees; not those whose partner has no linked
    # account.
    assert {g for g in window if g % 20 > 1 and g % 7 != 3 and g % 11 == 4
            and g % 20 not in (4, 9, 14, 19)} <= owed
    assert {g for g in window if g % 80 == 40} <= owed
    assert any(g % 13 == 5 for g in owed)
    assert any(g % 17 == 6 and g_at(g) < NOW - timedelta(days=35) for g in owed)
    assert not any(g % 20 in (4, 9, 14, 19) for g in owed)


def test_waiting_refunds_are_the_same_bookings_as_before(history):
    with transaction() as s:
        found = payments.waiting_refunds(s)
        assert found == before_waiting_refunds(s)
        for within in (timedelta(days=3), timedelta(days=120)):
            assert payments.waiting_refunds(s, within) == before_waiting_refunds(s, within)
    # Failed or cancelled lately with escrow untouched, and a delivered booking whose
    # second payment was refunded in part lately; not one whose refund is still open or
    # whose latest attempt failed, nor one refunded in full.
    assert any(g % 20 in (0, 1) and g % 80 not in (0, 1, 20, 21) for g in found)
    assert any(g % 46 == 2 for g in found)
    assert not any(g % 80 in (0, 1, 20, 21) for g in found)


def test_unreleased_legs_are_the_same_legs_as_before_within_a_week(history):
    with transaction() as s:
        legs = payments.unreleased_legs(s)
        assert legs == before_unreleased_legs(s, payments.RELEASE_LOOKBACK)
        month = before_unreleased_legs(s, timedelta(days=30))
    week = {g for g in range(1, BOOKINGS + 1) if g_at(g) + timedelta(hours=2)
            > NOW - payments.RELEASE_LOOKBACK}
    assert set(legs) == {g for g in week if g % 20 > 1 and g % 7 == 3}
    # A leg delivered 8 to 30 days ago without its release is no longer looked at: the
    # release job's retries end within the hour, and the sweep looks every minute.
    assert set(legs) < set(month)


def test_unprocessed_events_are_those_never_processed_and_not_just_received(history):
    with transaction() as s:
        ids = payments.unprocessed_events(s)
        names = set(s.scalars(text("SELECT event_id FROM razorpay_events WHERE id = ANY(:ids)")
                              .bindparams(ids=ids)))
    assert names == {f"evt_{g}" for g in range(1, BOOKINGS + 1)
                     if g % 50 == 7 and g_at(g) + timedelta(minutes=10)
                     < NOW - timedelta(minutes=5)}


def expected_owed_without_account(within: timedelta, after: int = 0) -> list[int]:
    """owed_without_account's legs as GENERATE makes them: delivered and released for a
    partner with no linked account (1 + g % 20 in 5, 10, 15, 20), still owed (never
    transferred, transferred in part, or a failed transfer voided 40 days on), a payable
    posting of it in ``within``, and last owed a week ago at least; the most lately owed
    first, SETTLE_BATCH of them."""
    waiting: list[tuple[datetime, int]] = []
    for g in range(1, BOOKINGS + 1):
        if g % 20 not in (4, 9, 14, 19) or g % 7 == 3 or g <= after:
            continue
        delivered = min(g_at(g) + timedelta(hours=2), NOW - timedelta(minutes=1))
        postings = [(delivered, 8000)]
        if g % 11 != 4:
            paid = 5000 if g % 13 == 5 else 8000
            postings.append((min(delivered + timedelta(hours=1), NOW), -paid))
            if g % 17 == 6:
                postings.append((min(delivered + timedelta(days=40), NOW), paid))
        if sum(a for _, a in postings) <= 0 or all(at <= NOW - within for at, _ in postings):
            continue
        owed_since = max(at for at, a in postings if a > 0)
        if owed_since <= NOW - payments.OWED_LONG:
            waiting.append((owed_since, g))
    waiting.sort(key=lambda w: w[1])
    return [g for _, g in waiting[:payments.SETTLE_BATCH]]


def test_owed_without_account_takes_the_legs_owed_a_week_oldest_first(history):
    with transaction() as s:
        legs = payments.owed_without_account(s)
        assert legs == expected_owed_without_account(timedelta(days=30))
        # More legs wait than a sweep takes: the oldest come first (the sweep goes on
        # from the last one it took), and legs owed less than a week (told of only then)
        # take no place.
        more = payments.owed_without_account(s, timedelta(days=120))
        assert more == expected_owed_without_account(timedelta(days=120))
        # The next sweep's, after the last leg this one took.
        assert payments.owed_without_account(s, timedelta(days=120), after=more[-1]) \
            == expected_owed_without_account(timedelta(days=120), after=more[-1])
    assert len(more) == payments.SETTLE_BATCH and min(more) < min(legs)
    assert any(g % 17 == 6 for g in more)  # owed again by a transfer failed 40 days on
    young = {g for g in range(1, BOOKINGS + 1) if g % 20 in (4, 9, 14, 19) and g % 7 != 3
             and g % 11 == 4 and g_at(g) > NOW - payments.OWED_LONG}
    assert young and not young & set(more)

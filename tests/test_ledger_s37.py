"""Migration 0052: the ledger's functions plan each query once (a generic plan), not once
per call. On a ledger whose statistics know its large shared accounts (gateway clearing
holds most postings), PL/pgSQL kept planning the balance read (``account = $1``) afresh
with each call's account, in ledger_post() and again in the commit-time check: about a
seventh of a posting's database CPU (session 37, pgbench).

What the server did is read from auto_explain's notices (a PostgreSQL module, loaded in
the test's own session): a plan made for the call's values names the account itself; the
generic plan names a parameter."""

from __future__ import annotations

import json
import re

import psycopg
import pytest
from sqlalchemy import text

from core.adapters.db import engine
from core.config import get_settings
from tests.test_payments_support import confirmed_booking, ledger_checked

pytestmark = pytest.mark.db

FUNCTIONS = ("ledger_post", "ledger_check_posting", "ledger_check_entry")


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def test_the_ledgers_functions_keep_generic_plans(clean_db):
    with engine().connect() as conn:
        config = dict(conn.execute(text(
            "SELECT proname, proconfig FROM pg_proc WHERE proname = ANY(:names) "
            "AND pronamespace = current_schema()::regnamespace"),
            {"names": list(FUNCTIONS)}).all())
    assert set(config) == set(FUNCTIONS)
    for name, settings in config.items():
        assert "plan_cache_mode=force_generic_plan" in (settings or []), (name, settings)


def _skewed_ledger() -> None:
    """20,000 balanced entries written as a restore writes them (replica role: no triggers,
    so no bookings needed), nine in ten between the two shared accounts, then ANALYZE: the
    statistics a ledger in service has, gateway clearing its most common account."""
    with engine().begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(
            "INSERT INTO ledger_transactions (id, idempotency_key, kind, booking_id, actor, "
            "memo, created_at) SELECT 900000 + g, 'skew-' || g, 'capture', NULL, 'test', '', "
            "now() FROM generate_series(1, 20000) g"))
        conn.execute(text(
            "INSERT INTO ledger_postings (transaction_id, account, account_kind, booking_id, "
            "amount_paise, created_at) "
            "SELECT 900000 + g, CASE WHEN g <= 2000 THEN 'escrow:b' || (800000 + g) "
            "ELSE 'platform_commission' END, CASE WHEN g <= 2000 THEN 'escrow' "
            "ELSE 'platform_commission' END, CASE WHEN g <= 2000 THEN 800000 + g END, "
            "100, now() FROM generate_series(1, 20000) g "
            "UNION ALL SELECT 900000 + g, 'gateway_clearing', 'gateway_clearing', NULL, -100, "
            "now() FROM generate_series(1, 20000) g"))
    with engine().connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("ANALYZE ledger_postings"))


def _postings(booking_id: int) -> str:
    return json.dumps([
        {"account": f"escrow:b{booking_id}", "account_kind": "escrow", "booking_id": booking_id,
         "partner_id": None, "leg_id": None, "amount_paise": 100},
        {"account": "gateway_clearing", "account_kind": "gateway_clearing",
         "booking_id": booking_id, "partner_id": None, "leg_id": None, "amount_paise": -100}])


def test_the_balance_read_is_not_planned_again_for_each_posting(clean_db):
    _skewed_ledger()
    booking_id = confirmed_booking()
    notices: list[str] = []
    url = get_settings().database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        for setting in ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                        "SET auto_explain.log_nested_statements = on",
                        "SET auto_explain.log_level = notice"):
            conn.execute(setting)  # type: ignore[arg-type]  (our own constant SQL)
        for n in range(8):  # PL/pgSQL's own choice is made after five calls
            with conn.transaction():
                outcome = conn.execute(
                    "SELECT ledger_post(%s, %s, 'capture', NULL, 'test', NULL, 'capture', "
                    "now(), %s::jsonb, %s::jsonb)",
                    (booking_id, f"s37-plan-{n}", _postings(booking_id),
                     json.dumps({f"escrow:b{booking_id}": 100}))).fetchone()
                assert outcome == ("posted",)
    reads = [line for notice in notices for line in notice.splitlines()
             if re.search(r"Index Cond: \(\(account\)::text = ", line)]
    # Each call reads the escrow's balance in ledger_post() and again in the commit-time
    # check of its escrow posting: 16 reads, none planned for its own account.
    assert len(reads) == 16, notices[-3:]
    planned_for_the_value = [line for line in reads if "'escrow:b" in line]
    assert planned_for_the_value == [], planned_for_the_value[:3]

"""ledger: its functions keep one plan for each of their queries, not one per call

Revision ID: 0052
Revises: 0051

PL/pgSQL prepares each query of a function once per session and, for the first five
calls, plans it again with the call's values (a "custom plan"); from then on it uses the
plan made without them (the "generic plan") only when that plan's estimated cost is not
above the custom plans' average. The balance read of ledger_post() and of the
commit-time check (``SUM(amount_paise) ... WHERE account = $1``) fails that test for
good: the ledger's few large shared accounts (gateway clearing, commission) make the
estimate for an unknown account about twice that for any booking's account, though the
plan is the same (the account index). So each posting's balance read was planned
afresh, in ledger_post() and again at commit for each posting.

Measured (session 37, pgbench, 4 clients, the product's call to ledger_post() and a
commit, on a copy of the benchmark's ledger): 2,500 transactions a second, 3,070 with
these three functions set to ``plan_cache_mode = force_generic_plan``, the same rows
and checks. Every query of the three is an equality on a key (a booking's, an entry's,
an account's) or reads the call's own JSON, for which the generic plan is the plan a
custom one would be; none reads a large shared account's balance (only a booking's
accounts are guarded).

The setting is the function's own (proconfig, as the search_path of 0049): a function a
later migration replaces with CREATE OR REPLACE keeps it only if it says it again
(tests/test_ledger_s37.py checks all three have it). Nothing else changes.
"""

from __future__ import annotations

from alembic import op

revision = "0052"
down_revision = "0051"
branch_labels = None
depends_on = None

FUNCTIONS = (
    "ledger_post(bigint, text, text, text, text, text, text, timestamptz, jsonb, jsonb)",
    "ledger_check_posting()",
    "ledger_check_entry()",
)


def upgrade() -> None:
    for function in FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} SET plan_cache_mode = force_generic_plan")


def downgrade() -> None:
    for function in FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} RESET plan_cache_mode")

"""Ledger: balanced journal transactions per second (capture, release, refund mix) with 1, 4
and 16 concurrent writers, against plain INSERTs of the same rows into an unconstrained
table in the same database; and the time to compute every balance over 100k / 1M postings
(the median of 5 calls after an untimed one).

Each writer is its own process (its own connection, connected and warmed before the clock
starts), posting through the product's code path, core.services.ledger.post(): one call to
ledger_post() that locks the booking row, checks the key and the guarded balances and
inserts the entry with its postings; then the commit, where the database checks again
that the entry balances and escrow stays >= 0. The plain baseline makes the same
transaction the same way: BEGIN, one call with the same arguments (bench_plain_post(),
which only inserts the rows), COMMIT.

Each such transaction pays for its client round trips (BEGIN, the call, COMMIT) as much
as for the ledger's checks, so the database's own cost per entry is measured apart too:
the same entries through ledger_post() in one statement, against the same rows through a
function that only inserts them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time

from sqlalchemy import text

from bench import common

SETUP_SQL = """
INSERT INTO people (id, phone, role, opted_out) VALUES (1, '+917000000001', 'customer', false);
INSERT INTO people (id, phone, role, opted_out)
  SELECT 1 + g, '+9171' || lpad(g::text, 8, '0'), 'partner', false FROM generate_series(1, 100) g;
INSERT INTO partner_profiles (id, person_id, first_name, on_duty, has_app, rating_x100,
    offers_received, offers_accepted, trust_tier, max_active_legs, kyc_status)
  SELECT g, 1 + g, 'P' || g, true, false, 450, 0, 0, 1, 2, 'verified'
  FROM generate_series(1, 100) g;
INSERT INTO bookings (id, reference, customer_id, channel, status, pickup_lat, pickup_lng,
    drop_lat, drop_lng, speed_tier, vehicle_type, distance_m, fare, total_paise,
    commission_paise, partner_share_paise, version)
  SELECT g, (10000000 + g)::text, 1, 'app', 'paid', 26.8, 84.5, 26.9, 84.6, 'standard',
    'bicycle', 5000, '{}'::jsonb, 10000, 1000, 9000, 1
  FROM generate_series(1, :n) g;
INSERT INTO legs (id, booking_id, sequence, status, from_lat, from_lng, to_lat, to_lng,
    distance_m, partner_id, otp_failures, payout_paise, version)
  SELECT g, g, 1, 'delivered', 26.8, 84.5, 26.9, 84.6, 5000, 1 + (g % 100), 0, 9000, 1
  FROM generate_series(1, :n) g;
CREATE TABLE IF NOT EXISTS bench_plain_tx (id bigserial, idempotency_key text,
    kind text, booking_id bigint, actor text, memo text, created_at timestamptz);
CREATE TABLE IF NOT EXISTS bench_plain_postings (transaction_id bigint, account text,
    account_kind text, booking_id bigint, partner_id bigint, leg_id bigint,
    amount_paise bigint, created_at timestamptz);
"""
# The baseline tables are logged like the ledger's (an unlogged table skips the WAL and
# its flush at commit, which would compare durability, not the ledger's checks).

# The plain rows written by a server-side function called like ledger_post(): the same
# call, the same rows, none of the checks (no lock, key, balance, foreign keys, indexes).
PLAIN_FUNCTION = """
CREATE OR REPLACE FUNCTION bench_plain_post(p_booking_id bigint, p_key text, p_kind text,
    p_actor text, p_memo text, p_at timestamptz, p_postings jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    tx_id bigint;
BEGIN
    INSERT INTO bench_plain_tx (idempotency_key, kind, booking_id, actor, memo, created_at)
    VALUES (p_key, p_kind, p_booking_id, p_actor, p_memo, p_at) RETURNING id INTO tx_id;
    INSERT INTO bench_plain_postings
    SELECT tx_id, p.account, p.account_kind, p.booking_id, p.partner_id, p.leg_id,
           p.amount_paise, p_at
    FROM jsonb_to_recordset(p_postings) AS p(account text, account_kind text,
         booking_id bigint, partner_id bigint, leg_id bigint, amount_paise bigint);
    RETURN 'posted';
END $$
"""
# Many entries in one statement: each is still one ledger_post() call with all its checks,
# and the deferred ones run at the commit; only the client round trips are gone.
IN_DATABASE = {
    False: text(
        "SELECT count(*) FILTER (WHERE ledger_post((e->>'booking_id')::bigint, e->>'key', "
        "e->>'kind', e->>'gateway_ref', e->>'actor', e->>'cause', e->>'memo', "
        "(e->>'now')::timestamptz, e->'postings', e->'guarded') = 'posted') "
        "FROM jsonb_array_elements(CAST(:batch AS jsonb)) AS t(e)"),
    True: text(
        "SELECT count(*) FILTER (WHERE bench_plain_post((e->>'booking_id')::bigint, e->>'key', "
        "e->>'kind', e->>'actor', e->>'memo', (e->>'now')::timestamptz, e->'postings') "
        "= 'posted') FROM jsonb_array_elements(CAST(:batch AS jsonb)) AS t(e)"),
}


def _entries(b: int):
    """A booking's money story, as each writer posts it: capture, release, refund."""
    from core.domain import ledger as rules

    return [rules.capture(b, f"pay_{b}", 10_000),
            rules.release(b, b, 1 + b % 100, 8_000, 1_000),
            rules.refund_requested(b, b, 1_000)]


def _writer(database_url: str, warm: tuple[int, int], orders, results) -> None:
    """One process: for each order (ledger or plain, some bookings) post capture, release
    and refund for each booking, and report how many transactions it made.

    Before the first order it connects and posts one booking each way (``warm``), so what
    is timed is the steady state of a process that keeps its pooled connection, as the web
    and the workers do: not the connection's start-up, the PL/pgSQL function's compilation
    in a new backend, or that backend's first reads of the catalog (about 70 ms a writer,
    measured; 16 writers paid over a second of it in a 2-second level)."""
    os.environ["DATABASE_URL"] = database_url
    from core.adapters import db
    from core.config import reset_settings

    reset_settings()
    db.dispose_all()
    _post(warm[0], plain=False)
    _post(warm[1], plain=True)
    results.put(0)
    while (order := orders.get()) is not None:
        plain, bookings = order
        results.put(sum(_post(b, plain) for b in bookings))


def _post(booking: int, plain: bool) -> int:
    """Post a booking's entries, each in its own transaction; how many were posted (an
    entry the ledger already held, ledger.post() False, is not a transaction made)."""
    from core.adapters import db
    from core.services import ledger

    posted = 0
    for entry in _entries(booking):
        with db.transaction() as session:
            if plain:
                posted += _plain_insert(session, entry)
            else:
                posted += ledger.post(session, entry, actor="bench")
    return posted


# The baseline's one statement, sent as ledger.post() sends its own (the driver's cursor on
# the session's connection: ledger.call_function): bench_plain_post() takes the same
# arguments, encoded the same way, and only inserts the rows.
_PLAIN_POST = ("SELECT bench_plain_post(%(booking_id)s, %(key)s, %(kind)s, %(actor)s, %(memo)s, "
               "%(now)s, %(postings)s::jsonb)")


def _plain_insert(session, entry) -> bool:
    """The entry's rows by plain inserts: one round trip, like the ledger's ledger_post()."""
    import json

    from core.services import ledger

    params = ledger.post_arguments(entry, actor="bench")
    return ledger.call_function(session, _PLAIN_POST, dict(
        params, postings=json.dumps(params["postings"]))) == "posted"


SLICES = 3  # ledger and plain alternate, so a drift of the machine hits both alike


def _level(database_url: str, writers: int, warm: list[int], ledger_ids: list[int],
           plain_ids: list[int]) -> dict[bool, tuple[int, float]]:
    """``writers`` processes post ``ledger_ids`` through the ledger and ``plain_ids`` as
    plain inserts, in SLICES alternating slices of each; each slice is timed from the
    order to the last writer's report, with every writer connected and warm before."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    orders = [ctx.Queue() for _ in range(writers)]
    procs = [ctx.Process(target=_writer, args=(database_url, (warm[2 * i], warm[2 * i + 1]),
                                               orders[i], results))
             for i in range(writers)]
    for proc in procs:
        proc.start()
    totals = {False: [0, 0.0], True: [0, 0.0]}
    try:
        for _ in procs:
            results.get(timeout=300)  # connected and warm
        for k in range(SLICES):
            for plain, ids in ((False, ledger_ids), (True, plain_ids)):
                part = ids[k::SLICES]
                t0 = time.perf_counter()
                for i, queue in enumerate(orders):
                    queue.put((plain, part[i::writers]))
                totals[plain][0] += sum(results.get(timeout=600) for _ in procs)
                totals[plain][1] += time.perf_counter() - t0
        for queue in orders:
            queue.put(None)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return {plain: (n, secs) for plain, (n, secs) in totals.items()}


def _in_database(bookings: list[int], plain: bool) -> tuple[int, float]:
    """Post every entry of ``bookings`` in one statement and one transaction (commit and
    its deferred checks included): the database's own cost per entry, no client."""
    import json

    from core.adapters import db
    from core.services import ledger

    batch = json.dumps([ledger.post_arguments(e, actor="bench") for b in bookings
                        for e in _entries(b)], default=str)
    t0 = time.perf_counter()
    with db.engine().begin() as conn:
        posted = conn.execute(IN_DATABASE[plain], {"batch": batch}).scalar_one()
    return posted, time.perf_counter() - t0


BALANCE_REPEATS = 5  # timed calls of each projection, after an untimed one


def _balances(engine, postings: int) -> dict[str, float]:
    """Fill the ledger to ``postings`` rows (bulk, triggers off) and time the projections."""
    from core.adapters import db
    from core.services import ledger

    with engine.begin() as conn:
        have = conn.execute(text("SELECT count(*) FROM ledger_postings")).scalar_one()
        missing = max(0, postings - have) // 2
        if missing:
            # Bulk fill only: replica mode skips the per-row checks that the writers above
            # exercised; the rows are still balanced pairs.
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(text(
                "INSERT INTO ledger_transactions (idempotency_key, kind, booking_id, actor, memo,"
                " created_at) SELECT 'bulk:' || g || ':' || :h, 'capture', 1 + g % 1000, "
                "'bench', 'bulk', now() FROM generate_series(1, :m) g"), {"m": missing,
                                                                          "h": have})
            conn.execute(text(
                "INSERT INTO ledger_postings (transaction_id, account, account_kind, booking_id,"
                " amount_paise, created_at) SELECT t.id, CASE a.kind WHEN 'escrow' THEN "
                # Each booking's own escrow account, as the ledger names it (migration 0023
                # checks the name against the kind); the colon escaped from text()'s binds.
                "'escrow\\:b' || t.booking_id ELSE a.account END, a.kind, t.booking_id, "
                "a.sign * 5000, now() FROM ledger_transactions t CROSS JOIN (VALUES "
                "('gateway_clearing', 'gateway_clearing', -1), ('escrow', 'escrow', 1)) "
                "AS a(account, kind, sign) WHERE t.memo = 'bulk' AND NOT EXISTS (SELECT 1 FROM "
                "ledger_postings p WHERE p.transaction_id = t.id)"))
        conn.execute(text("ANALYZE ledger_postings"))
        rows = conn.execute(text("SELECT count(*) FROM ledger_postings")).scalar_one()
    samples: dict[str, list[float]] = {"balances": [], "sum": []}
    with db.transaction() as session:
        # One untimed call of each first (the pages read into the cache, the plans made),
        # then the median of timed calls taken in turns: a single cold call measured the
        # disk, and made 20k postings slower than 100k.
        balances = ledger.account_balances(session)
        total = ledger.total(session)
        for _ in range(BALANCE_REPEATS):
            t0 = time.perf_counter()
            ledger.account_balances(session)
            samples["balances"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ledger.total(session)
            samples["sum"].append(time.perf_counter() - t0)
    assert total == 0, "the ledger does not sum to zero"
    projection = statistics.median(samples["balances"])
    plain_sum = statistics.median(samples["sum"])
    return {"postings": rows, "accounts": len(balances), "all_balances_s": round(projection, 4),
            "plain_sum_s": round(plain_sum, 4), "repeats": BALANCE_REPEATS,
            "ratio": round(plain_sum / projection, 3) if projection else None}


def measure(quick: bool) -> dict[str, object]:
    per_level = 100 if quick else 2000  # bookings a level, three transactions each
    levels = (1, 4) if quick else (1, 4, 16)  # a smoke run skips spawning 2 x 16 writers
    env = common.bench_env(common.free_port())
    common.reset_database(env)
    with common.pointed_at(env):
        return _measure(quick, per_level, levels, env)


def _measure(quick: bool, per_level: int, levels: tuple[int, ...],
             env: dict[str, str]) -> dict[str, object]:
    from core.adapters import db

    in_db = 300 if quick else 1000  # bookings per half of the in-database comparison
    total_bookings = (per_level + max(levels)) * len(levels) * 2 + 4 * in_db
    db.wipe_all_tables()
    with db.engine().begin() as conn:
        for stmt in SETUP_SQL.split(";\n"):
            if stmt.strip():
                conn.execute(text(stmt), {"n": total_bookings})
        conn.execute(text(PLAIN_FUNCTION))
    db.dispose_all()
    rows, start = [], 1
    for writers in levels:
        ids = iter(range(start, start + 2 * (per_level + writers)))
        start += 2 * (per_level + writers)
        warm = [next(ids) for _ in range(2 * writers)]
        ledger_ids = [next(ids) for _ in range(per_level)]
        runs = _level(env["DATABASE_URL"], writers, warm, ledger_ids, list(ids))
        (n_ledger, t_ledger), (n_plain, t_plain) = runs[False], runs[True]
        rows.append({"writers": writers, "ledger_tx": n_ledger,
                     "ledger_tx_per_s": round(n_ledger / t_ledger, 1),
                     "plain_tx_per_s": round(n_plain / t_plain, 1),
                     "ratio": round((n_ledger / t_ledger) / (n_plain / t_plain), 3)})
    # In the database: two rounds, alternating, so a drift of the machine hits both.
    server = {False: [0, 0.0], True: [0, 0.0]}
    for _ in range(2):
        for plain in (False, True):
            n, secs = _in_database(list(range(start, start + in_db)), plain)
            start += in_db
            server[plain][0] += n
            server[plain][1] += secs
    (n_l, t_l), (n_p, t_p) = server[False], server[True]
    assert n_l == n_p == 3 * 2 * in_db, "an in-database entry was not posted"
    in_database = {"entries": n_l, "ledger_us_per_entry": round(t_l / n_l * 1e6, 1),
                   "plain_us_per_entry": round(t_p / n_p * 1e6, 1),
                   "ledger_entries_per_s": round(n_l / t_l, 1),
                   "plain_entries_per_s": round(n_p / t_p, 1),
                   "ratio": round((n_l / t_l) / (n_p / t_p), 3)}
    with db.engine().connect() as conn:
        assert conn.execute(text("SELECT coalesce(sum(amount_paise), 0) FROM ledger_postings"))\
            .scalar_one() == 0
    sizes = (20_000, 100_000) if quick else (100_000, 1_000_000)
    balance_rows = [_balances(db.engine(), n) for n in sizes]
    db.dispose_all()
    print("\nLedger: balanced transactions/s (product path) vs plain INSERTs of the same rows "
          "(each one statement a transaction, a function call either side; the same writers, "
          f"{SLICES} alternating slices each)")
    print(common.table(["writers", "ledger tx/s", "plain tx/s", "ratio"],
                       [[r["writers"], r["ledger_tx_per_s"], r["plain_tx_per_s"], r["ratio"]]
                        for r in rows]))
    print("\nThe database's own cost per entry (one writer, every entry in one statement and "
          "one transaction: all checks, no client round trips)")
    print(common.table(["entries", "ledger us/entry", "plain us/entry", "ledger entries/s",
                        "plain entries/s", "ratio"],
                       [[in_database["entries"], in_database["ledger_us_per_entry"],
                         in_database["plain_us_per_entry"], in_database["ledger_entries_per_s"],
                         in_database["plain_entries_per_s"], in_database["ratio"]]]))
    print("\nAll balances (GROUP BY account) vs one plain SUM over the same postings (median "
          f"of {BALANCE_REPEATS} calls each, in turns, after an untimed one)")
    print(common.table(["postings", "accounts", "balances ms", "plain sum ms", "ratio"],
                       [[b["postings"], b["accounts"], round(b["all_balances_s"] * 1000, 1),
                         round(b["plain_sum_s"] * 1000, 1), b["ratio"]]
                        for b in balance_rows]))
    result = {"writers": rows, "in_database": in_database, "balances": balance_rows,
              "quick": quick}
    common.save("ledger", result)
    return result

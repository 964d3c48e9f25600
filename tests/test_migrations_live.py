"""Upgrading a database that the running service uses (migrations/README.md).

The release migrates while the previous release still serves. Each test copies a small
database at revision 0012 (ridechain_f4_<what>_<pid>, dropped after), holds the locks a
live service would hold (a long report, a payment in flight), upgrades it in a thread and
meanwhile runs what the web runs, timing it. The old upgrade kept every lock to the end
and waited on any lock for as long as it took: those queries then hit the probes'
statement_timeout. The data is small: the point is the mechanism, not the volume.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import NullPool

from core.config import ROOT, get_settings

pytestmark = pytest.mark.db

LOCK_TIMEOUT_MS = 300  # env.py's lock_timeout, shortened for the tests
WEB_BOUND_S = 2.0  # what a web query may wait here: the lock timeout, and room for CI
PROBE_TIMEOUT = "5s"  # a probe stuck behind the old upgrade's locks gives up after this
BOUND_S = 60  # a bound for a broken run, never a wait the tests rely on
WEB_READ = "SELECT status FROM legs WHERE id = 1"  # tracking a booking
LEGS = 2_502  # two picked up, the rest delivered: more than two of 0013's batches (1,000)

DATA_AT_0012 = f"""
INSERT INTO people (id, phone, role, opted_out)
VALUES (1, '+919800000001', 'partner', false), (2, '+919800000002', 'customer', false);
INSERT INTO partner_profiles (id, person_id, first_name, on_duty, has_app, rating_x100,
    offers_received, offers_accepted, trust_tier, max_active_legs, kyc_status)
VALUES (1, 1, 'Ravi', true, true, 450, 1, 1, 1, 2, 'verified');
INSERT INTO bookings (id, reference, customer_id, channel, status, pickup_lat, pickup_lng,
    drop_lat, drop_lng, speed_tier, vehicle_type, distance_m, fare, total_paise,
    commission_paise, partner_share_paise, version)
VALUES (1, '12345678', 2, 'whatsapp', 'picked_up', 26.8, 84.5, 26.9, 84.6, 'standard',
    'bicycle', 5000, '{{}}', 10000, 2000, 8000, 1);
INSERT INTO legs (id, booking_id, sequence, status, from_lat, from_lng, to_lat, to_lng,
    distance_m, partner_id, otp_failures, payout_paise, version)
SELECT g, 1, g, CASE WHEN g <= 2 THEN 'picked_up' ELSE 'delivered' END, 26.8, 84.5, 26.9,
    84.6, 5000, 1, 0, 8000, 1
FROM generate_series(1, {LEGS}) g;
INSERT INTO transitions (entity, entity_id, from_status, to_status, actor, reason, at)
SELECT 'leg', g, 'picked_up', 'delivered', 'partner:1', 'drop otp ok',
    timestamptz '2026-01-01 00:00+00' + g * interval '1 minute'
FROM generate_series(3, {LEGS}) g;
SELECT setval(pg_get_serial_sequence(t, 'id'), 100000)
FROM unnest(ARRAY['people', 'partner_profiles', 'bookings', 'legs']) t;
"""


def server_url(database: str) -> str:
    """This run's PostgreSQL server, the given database."""
    url = make_url(get_settings().database_url).set(database=database)
    return url.render_as_string(hide_password=False)


def admin(sql: str) -> None:
    engine = create_engine(server_url("postgres"), isolation_level="AUTOCOMMIT",
                           poolclass=NullPool)
    with engine.connect() as conn:
        conn.execute(text(sql))


def alembic_config(url: str, lock_timeout_ms: int, retry_waits: list[float]) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes.update(url=url, lock_timeout_ms=lock_timeout_ms, retry_waits=retry_waits)
    return cfg


def upgrade(url: str, revision: str, *, lock_timeout_ms: int = LOCK_TIMEOUT_MS,
            retry_waits: list[float] | None = None) -> None:
    command.upgrade(alembic_config(url, lock_timeout_ms, retry_waits or []), revision)


class Upgrade(threading.Thread):
    """An upgrade running beside the test (a release); ``error`` is what it raised."""

    def __init__(self, url: str, revision: str, **kw) -> None:
        super().__init__(daemon=True)
        self.args_ = (url, revision)
        self.kw = kw
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            upgrade(*self.args_, **self.kw)
        except BaseException as err:  # noqa: BLE001 (the test looks at it)
            self.error = err

    def finish(self) -> BaseException | None:
        self.join(BOUND_S)
        assert not self.is_alive(), "the upgrade did not end"
        return self.error


@pytest.fixture(scope="module")
def template() -> Iterator[str]:
    """A database at 0012 (the release before delivered_at) with a booking's legs."""
    name = f"ridechain_f4_tpl_{os.getpid()}"
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{name}"')
    try:
        upgrade(server_url(name), "0012")
        engine = create_engine(server_url(name), poolclass=NullPool)
        with engine.begin() as conn:
            conn.exec_driver_sql(DATA_AT_0012)
        yield name
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(template: str, request) -> Iterator[str]:
    """A copy of the template for this test alone (its URL), dropped after."""
    name = f"ridechain_f4_{request.node.name[5:30].lower()}_{os.getpid()}"
    name = "".join(c if c.isalnum() else "_" for c in name)
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield server_url(name)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def engine(db: str) -> Iterator[Engine]:
    engine = create_engine(db, poolclass=NullPool)
    yield engine
    engine.dispose()


def autocommit(engine: Engine) -> Connection:
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def version(conn: Connection) -> str:
    return conn.scalar(text("SELECT version_num FROM alembic_version"))


def wait_until(watch: Connection, condition: str, upgrade: Upgrade) -> None:
    """Until ``condition`` (SQL) holds in the database, while the upgrade runs."""
    until = time.monotonic() + BOUND_S
    while not watch.scalar(text(condition)):
        assert upgrade.is_alive(), f"the upgrade ended first: {upgrade.error!r}"
        assert time.monotonic() < until, f"never saw: {condition}"
        time.sleep(0.01)  # a poll interval: the condition above decides


def waiting_on(table: str) -> str:
    """SQL: someone waits for a lock on ``table``."""
    return (f"SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted "
            f"AND relation = to_regclass('{table}'))")


def timed(engine: Engine, sql: str) -> float:
    """Seconds ``sql`` took (rolled back), what the web would have waited; a probe that hit
    PROBE_TIMEOUT counts as having taken that long."""
    with engine.connect() as conn:
        conn.execute(text(f"SET statement_timeout = '{PROBE_TIMEOUT}'"))
        start = time.monotonic()
        try:
            conn.execute(text(sql))
        except DBAPIError as err:
            if getattr(err.orig, "sqlstate", None) != "57014":  # query_canceled
                raise
        took = time.monotonic() - start
        conn.rollback()
    return took


def test_a_migration_behind_a_long_query_holds_up_the_web_no_longer_than_lock_timeout(
        db, engine):
    """A long report reads legs; 0013's ALTER TABLE waits for it, and every query on legs
    queues behind the ALTER. It gives up after lock_timeout, lets them through, and is run
    again; once the report is over it goes through."""
    with engine.connect() as report, autocommit(engine) as watch:
        report.execute(text("SELECT count(*) FROM legs"))  # its transaction holds legs
        up = Upgrade(db, "0013", retry_waits=[0] * 50)
        up.start()
        wait_until(watch, waiting_on("legs"), up)
        took = timed(engine, WEB_READ)
        report.rollback()
        assert up.finish() is None
        assert version(watch) == "0013"
    assert took < WEB_BOUND_S


def test_each_migration_commits_on_its_own_and_a_blocked_one_gives_up(db, engine):
    """A state change in flight holds transitions (0014 puts a trigger on it). Meanwhile
    0013 is committed: legs is free, and another connection sees revision 0013. 0014 gives
    up after its attempts, and the database stays at 0013."""
    head = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_current_head()
    with engine.connect() as change, autocommit(engine) as watch:
        # An upgrade that waits for ever (the old one did) ends when this holder is ended.
        change.execute(text("SET idle_in_transaction_session_timeout = '10s'"))
        change.execute(text("LOCK TABLE transitions IN ROW EXCLUSIVE MODE"))
        up = Upgrade(db, "heads", retry_waits=[0, 0])
        up.start()
        wait_until(watch, waiting_on("transitions"), up)
        assert timed(engine, WEB_READ) < WEB_BOUND_S
        assert version(watch) == "0013"
        error = up.finish()
        assert isinstance(error, DBAPIError) and error.orig.sqlstate == "55P03", error
        assert version(watch) == "0013" != head


def test_an_index_is_built_while_its_table_takes_writes(db, engine):
    """0015 indexes transitions CONCURRENTLY: it waits for the state change in flight to
    end, but new ones are written meanwhile (a plain CREATE INDEX makes them queue). That
    wait blocks nobody, so it is no lock timeout either (1 ms here)."""
    upgrade(db, "0014")
    insert = ("INSERT INTO transitions (entity, entity_id, from_status, to_status, actor, "
              "reason, at) VALUES ('leg', 1, 'picked_up', 'delivered', 'partner:1', 'x', now())")
    with engine.connect() as change, autocommit(engine) as watch:
        change.execute(text("LOCK TABLE transitions IN ROW EXCLUSIVE MODE"))
        up = Upgrade(db, "0015", lock_timeout_ms=1)
        up.start()
        building = ("SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query ILIKE 'CREATE %INDEX%ix_transitions_entity_entity_id%'")
        wait_until(watch, f"SELECT EXISTS ({building})", up)
        statement = watch.scalar(text(building))
        took = timed(engine, insert)
        change.rollback()
        assert up.finish() is None
        assert version(watch) == "0015"
        assert watch.scalar(text("SELECT indisvalid FROM pg_index "
                                 "WHERE indexrelid = 'ix_transitions_entity_entity_id'::regclass"))
    assert "CONCURRENTLY" in statement
    assert took < WEB_BOUND_S


def test_the_indexes_on_live_tables_are_all_built_concurrently(db):
    statements: list[str] = []

    def record(conn, cursor, statement, *args) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        upgrade(db, "heads")
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    built = [s for s in statements if s.upper().startswith(("CREATE INDEX", "CREATE UNIQUE"))]
    assert len(built) == 29  # 0013, 0015, 0016 (5), 0017, 0018, 0019 (3), 0020, 0021, 0022,
    # 0025, 0028, 0029, 0036 (7), 0038, 0047, 0053, 0056
    assert [s for s in built if "CONCURRENTLY" not in s] == []


def test_an_index_left_invalid_by_a_failed_build_is_built_again(db, engine):
    upgrade(db, "0014")
    with autocommit(engine) as conn:
        with pytest.raises(IntegrityError):  # a build that failed half-way, as one can
            conn.execute(text("CREATE UNIQUE INDEX CONCURRENTLY ix_transitions_entity_entity_id "
                              "ON transitions (entity)"))
        upgrade(db, "0015")
        assert conn.execute(text(
            "SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index "
            "WHERE indexrelid = 'ix_transitions_entity_entity_id'::regclass")).one() == (
            True, "CREATE INDEX ix_transitions_entity_entity_id ON public.transitions "
                  "USING btree (entity, entity_id)")


@pytest.mark.parametrize("revision", ["0013", "0015", "0016", "0017", "0020", "0021", "0022",
                                      "0023", "0025", "0027", "0028", "0029", "0031",
                                      "0047", "0053", "0056"])
def test_a_migration_that_commits_part_way_runs_again(db, engine, revision):
    """These commit before they end (CONCURRENTLY, batches): one stopped part-way (a lock
    timeout, a killed release) is run again from its start, and must go through."""
    down = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_revision(
        revision).down_revision
    assert isinstance(down, str)
    upgrade(db, revision)
    command.stamp(alembic_config(db, LOCK_TIMEOUT_MS, []), down)  # its work done, unrecorded
    upgrade(db, revision)
    with engine.connect() as conn:
        assert version(conn) == revision


def test_the_previous_release_opens_a_refund_at_head(db, engine):
    """The release before 0011 writes refunds without attempt; they are first attempts."""
    upgrade(db, "heads")
    with engine.begin() as conn:
        attempt = conn.scalar(text(
            "INSERT INTO payment_refunds (booking_id, payment_id, amount_paise, fee_paise, "
            "reason, actor, status) VALUES (1, 'pay_1', 1000, 0, 'cancelled', 'ops:1', "
            "'requested') RETURNING attempt"))
    assert attempt == 1


def test_legs_delivered_by_the_previous_release_get_their_delivery_time(db, engine):
    """Legs delivered before the upgrade take the time of their transition; a leg the
    previous release delivers after it (status alone, as it did) gets the time then."""
    upgrade(db, "heads")
    with engine.begin() as conn:
        missing = conn.scalar(text(
            "SELECT count(*) FROM legs l JOIN transitions t ON t.entity_id = l.id "
            "AND t.entity = 'leg' WHERE l.delivered_at IS DISTINCT FROM t.at"))
        assert missing == 0
        assert conn.scalar(text(
            "SELECT count(*) FROM legs WHERE delivered_at IS NOT NULL")) == LEGS - 2
        # The previous release's move to delivered; then this release's, with the time.
        conn.execute(text("UPDATE legs SET status = 'delivered' WHERE id = 1"))
        conn.execute(text("UPDATE legs SET status = 'delivered', "
                          "delivered_at = '2026-02-01 10:00+00' WHERE id = 2"))
        got = dict(conn.execute(text(
            "SELECT id, delivered_at = now() FROM legs WHERE id IN (1, 2)")).all())
        later_photo = conn.execute(text(
            "UPDATE legs SET pod_photo_url = 'https://example.test/pod.jpg' WHERE id = 2 "
            "RETURNING delivered_at = '2026-02-01 10:00+00'")).scalar()
    assert got == {1: True, 2: False}
    assert later_photo is True


def test_messages_failed_under_the_previous_release_get_their_failure_time(db, engine):
    """0025: a failure of the last day takes its updated_at (the metric looks an hour
    back), an older one keeps no time; a message the previous release marks failed after
    the upgrade (status alone) gets the database's now, and a later update keeps it."""
    upgrade(db, "0024")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO outbox_messages (id, channel, to_addr, from_addr, body, status, "
            "attempts, updated_at) VALUES "
            "(1, 'sms', '+919800000001', '+15005550006', 'x', 'failed', 1, "
            " now() - interval '20 minutes'),"
            "(2, 'sms', '+919800000001', '+15005550006', 'x', 'undelivered', 1, "
            " now() - interval '100 days'),"
            "(3, 'sms', '+919800000001', '+15005550006', 'x', 'queued', 1, now())"))
    upgrade(db, "0025")
    with engine.begin() as conn:
        conn.execute(text("UPDATE outbox_messages SET status = 'failed' WHERE id = 3"))
        got = dict(conn.execute(text(
            "SELECT id, CASE WHEN failed_at IS NULL THEN 'none' WHEN failed_at = now() "
            "THEN 'now' WHEN failed_at = updated_at THEN 'updated_at' END "
            "FROM outbox_messages")).all())
        before = dict(conn.execute(text("SELECT id, failed_at FROM outbox_messages")).all())
    with engine.begin() as conn:
        conn.execute(text("UPDATE outbox_messages SET body = '', status = 'undelivered', "
                          "updated_at = now()"))
        after = dict(conn.execute(text("SELECT id, failed_at FROM outbox_messages")).all())
    assert got == {1: "updated_at", 2: "none", 3: "now"}
    assert after == before


def test_an_opt_out_moves_to_sms_for_those_who_never_chatted_on_whatsapp(db, engine):
    """0021: who stopped which channel was not recorded. A person who never chatted with
    us on WhatsApp can only have stopped SMS; one who chatted keeps the WhatsApp flag."""
    upgrade(db, "0020")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO people (id, phone, role, opted_out) VALUES "
            "(3, '+919800000003', 'customer', true), (4, '+919800000004', 'customer', true),"
            " (5, '+919800000005', 'customer', false)"))
        conn.execute(text(
            "INSERT INTO conversations (person_id, channel, contact, step, state, misses, "
            "handoff) "
            "VALUES (4, 'whatsapp', 'whatsapp:+919800000004', 'menu', '{}', 0, false)"))
    upgrade(db, "0021")
    with engine.connect() as conn:
        flags = conn.execute(text("SELECT id, opted_out, sms_opted_out FROM people "
                                  "WHERE id >= 3 ORDER BY id")).all()
    assert [tuple(f) for f in flags] == [(3, False, True), (4, True, False), (5, False, False)]
    with engine.begin() as conn:  # the previous release's insert, without the new column
        conn.execute(text("INSERT INTO people (id, phone, role, opted_out) "
                          "VALUES (6, '+919800000006', 'customer', false)"))
        assert conn.scalar(text("SELECT sms_opted_out FROM people WHERE id = 6")) is False


def test_two_partners_on_one_payout_account_stop_the_migration_naming_them(db, engine):
    upgrade(db, "0020")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO people (id, phone, role, opted_out) VALUES "
            "(7, '+919800000007', 'partner', false)"))
        conn.execute(text(
            "INSERT INTO partner_profiles (id, person_id, first_name, on_duty, has_app, "
            "rating_x100, offers_received, offers_accepted, trust_tier, max_active_legs, "
            "kyc_status, payout_account_id) VALUES "
            "(2, 7, 'Asha', false, true, 450, 0, 0, 1, 2, 'verified', 'acc_shared')"))
        conn.execute(text("UPDATE partner_profiles SET payout_account_id = 'acc_shared' "
                          "WHERE id = 1"))
    with pytest.raises(RuntimeError, match=r"partners \[1, 2\] share one account"):
        upgrade(db, "0021")
    with engine.begin() as conn:  # ops give Asha her own: the migration goes through
        conn.execute(text("UPDATE partner_profiles SET payout_account_id = 'acc_asha' "
                          "WHERE id = 2"))
    upgrade(db, "0021")
    with engine.begin() as conn, pytest.raises(IntegrityError):
        conn.execute(text("UPDATE partner_profiles SET payout_account_id = 'acc_asha' "
                          "WHERE id = 1"))


def test_0023_validates_the_ledger_check_without_holding_the_ledger_locked(db, engine):
    """migrations/README.md: 'add a CHECK NOT VALID, then VALIDATE CONSTRAINT after a
    commit (validating takes no lock that writes wait for)'; run in one transaction
    (transaction_per_migration), the ADD CONSTRAINT's ACCESS EXCLUSIVE lock on
    ledger_postings was still held when VALIDATE read a year of postings, and every
    balance read and ledger_post() of the release still serving queued behind it
    (found by a review of session 19's commits). Probed as VALIDATE starts: a balance
    read (the web's lock_timeout, shortened) must not wait for a lock."""
    upgrade(db, "0022")
    with engine.begin() as conn:  # a few entries the previous release wrote
        conn.execute(text(
            "SELECT ledger_post(1, 'capture:pay_rev9', 'capture', 'pay_rev9', 'test', NULL, "
            "'payment captured', now(), CAST(:p AS jsonb), CAST('{}' AS jsonb))"),
            {"p": '[{"account": "gateway_clearing", "account_kind": "gateway_clearing", '
                  '"booking_id": 1, "partner_id": null, "leg_id": null, '
                  '"amount_paise": -10000}, '
                  '{"account": "escrow:b1", "account_kind": "escrow", "booking_id": 1, '
                  '"partner_id": null, "leg_id": null, "amount_paise": 10000}]'})
    probe = create_engine(db, poolclass=NullPool)
    waited: list[str] = []

    def before_validate(conn, cursor, statement, *args) -> None:
        if "VALIDATE CONSTRAINT" not in statement.upper() or waited:
            return
        with probe.connect() as web:
            web.execute(text("SET lock_timeout = '300ms'"))
            try:
                web.execute(text("SELECT coalesce(sum(amount_paise), 0) FROM ledger_postings "
                                 "WHERE account = 'escrow:b1'"))
                waited.append("no")
            except DBAPIError as err:
                waited.append(getattr(err.orig, "sqlstate", None) or "error")

    event.listen(Engine, "before_cursor_execute", before_validate)
    try:
        upgrade(db, "0023")
    finally:
        event.remove(Engine, "before_cursor_execute", before_validate)
        probe.dispose()
    assert waited == ["no"], f"a balance read waited for 0023's lock: {waited}"


def test_0048_adds_former_phones_to_people_without_rewriting_it_or_holding_up_the_web(
        db, engine):
    """people is read by every message and call. 0048's column is nullable with no
    default: a change to the catalog alone (the table is not rewritten: its file stays),
    under an ACCESS EXCLUSIVE lock that, behind a long transaction on people, gives up
    after lock_timeout (and is run again) instead of queueing every read behind it. The
    previous release's insert, without the column, leaves it NULL."""
    upgrade(db, "0047")
    read = "SELECT id FROM people WHERE phone = '+919800000002'"  # a message comes in
    with engine.connect() as report, autocommit(engine) as watch:
        before = watch.scalar(text("SELECT relfilenode FROM pg_class WHERE relname = 'people'"))
        report.execute(text("SELECT count(*) FROM people"))  # its transaction holds people
        up = Upgrade(db, "0048", retry_waits=[0] * 50)
        up.start()
        wait_until(watch, waiting_on("people"), up)
        took = timed(engine, read)
        report.rollback()
        assert up.finish() is None
        assert version(watch) == "0048"
        assert watch.execute(text(
            "SELECT data_type, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_name = 'people' AND column_name = 'former_phones'")).one() == (
            "jsonb", "YES", None)
        assert watch.scalar(text(
            "SELECT relfilenode FROM pg_class WHERE relname = 'people'")) == before
    assert took < WEB_BOUND_S
    with engine.begin() as conn:  # the previous release's insert, without the column
        conn.execute(text("INSERT INTO people (id, phone, role, opted_out) "
                          "VALUES (8, '+919800000008', 'customer', false)"))
        assert conn.scalar(text("SELECT former_phones FROM people WHERE id = 8")) is None
    command.downgrade(alembic_config(db, LOCK_TIMEOUT_MS, []), "0047")  # the column goes
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM information_schema.columns WHERE "
                                "table_name = 'people' AND column_name = 'former_phones'")) == 0
        assert conn.scalar(text("SELECT count(*) FROM people WHERE id = 8")) == 1

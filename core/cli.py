"""Operator commands: `python -m core.cli migrate|seed|release|worker|sandbox-worker|retention`,
and setting production up: `add-operator|add-point|rate-card --default|add-partner`, and
later `close-point|move-point|rename-point|set-payout-account|clear-payout-account|
set-home-point|remove-operator|sign-out-person`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.pool import NullPool

from core import logs
from core.config import ROOT, ConfigError, get_settings

if TYPE_CHECKING:
    from core.adapters.queue import JobLoggingSimpleWorker, JobLoggingWorker
    from core.adapters.roles import Granted

log = logging.getLogger("core.cli")

# As far below the web as niceness goes. Measured on 2 cores with the drain running under
# a closed loop of webhooks, levels alternating nice 10, 19 and SCHED_IDLE in one run: at
# 19 the web answered 19-32% more messages/s than at 10 in each triple (613 vs 500, 643 vs
# 541, 685 vs 519), about what SCHED_IDLE gave, and the jobs took 0.25-0.30 cores against
# 0.35-0.39. Unlike SCHED_IDLE, 19 keeps a share of a busy core (weight 15 against the
# web's 1024), so a job holding a lock or a contact still finishes while the web is
# saturated.
DEFAULT_WORKER_NICE = 19

CLI_ACTOR = "cli"  # who the audit log says set things up from this command line
# An erasure's reason, trimmed, as POST /api/v1/ops/recipients/erase takes it (EraseIn):
# the audit log keeps why a person's data went, for good.
REASON_MIN, REASON_MAX = 3, 300

# The PostgreSQL advisory lock migrate holds on its database while it upgrades, so that
# releases run at once (two deploys, or one per dyno) upgrade one after the other: "RCmg"
# in ASCII, 1380150631 (pg_locks: locktype advisory, objid 1380150631).
MIGRATE_LOCK_KEY = int.from_bytes(b"RCmg", "big")
# How long one wait for that lock lasts before it is asked for again (migration_lock).
# Below the migrations' own lock timeout (migrations/env.py), which an index built
# CONCURRENTLY while we wait is subject to.
MIGRATE_LOCK_WAIT = "1s"


def _missing_database(err: OperationalError, name: str) -> bool:
    """True if ``err`` is the server's "database does not exist" (SQLSTATE 3D000).

    libpq gives no SQLSTATE for a connection the server refused at start-up, only its
    message, so that is read too (the server's messages in English, its default)."""
    if getattr(err.orig, "sqlstate", None) == "3D000":
        return True
    return f'database "{name}" does not exist' in str(err.orig)


def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if the server lacks it; True if created.

    The target is tried first: a deploying role often may connect only to its own
    database, not to the maintenance database ``postgres``, which is needed only to
    create a missing one.
    """
    target = make_url(url)
    name = target.database
    if not name:
        raise SystemExit("DATABASE_URL names no database")
    probe = create_engine(target, poolclass=NullPool)
    try:
        with probe.connect():
            return False
    except OperationalError as err:
        if not _missing_database(err, name):
            raise
    finally:
        probe.dispose()
    maintenance = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT",
                                poolclass=NullPool)
    try:
        with maintenance.connect() as conn:
            exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if exists:  # created meanwhile by someone else
                return False
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            return True
    except DBAPIError as err:
        # Another release created it since we looked. PostgreSQL checks the name first
        # (42P04, duplicate_database), but one created in between is caught only by
        # pg_database's unique index on the name (23505, unique_violation).
        if getattr(err.orig, "sqlstate", None) in ("42P04", "23505"):
            return False
        reason = str(err.orig).strip().splitlines()[0] if err.orig else type(err).__name__
        raise SystemExit(
            f'database "{name}" does not exist, and it could not be created through the '
            f'maintenance database "postgres" ({reason}). Create it as a database '
            f'administrator (CREATE DATABASE "{name}" OWNER <this role>), then migrate '
            "again.") from None
    finally:
        maintenance.dispose()


@contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """Hold MIGRATE_LOCK_KEY (session-level, on ``url``'s database) while the block runs;
    a second migrate waits for it, then finds the schema upgraded already.

    It waits MIGRATE_LOCK_WAIT at a time, never in one long pg_advisory_lock: a waiting
    statement holds a snapshot, and a CREATE INDEX CONCURRENTLY in the holder's upgrade
    waits for every older snapshot in the database. The two would wait for each other for
    ever, through the holder's process, where PostgreSQL sees no deadlock. Between two
    waits we hold no snapshot, so such an index is held up for one wait at most. The lock's
    own connection runs no transaction, and closing it (NullPool) releases the lock.
    """
    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    key = {"key": MIGRATE_LOCK_KEY}
    try:
        with engine.connect() as conn:
            if not conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), key):
                log.info("waiting for another migrate to finish",
                         extra={"advisory_lock": MIGRATE_LOCK_KEY})
                conn.execute(text(f"SET lock_timeout = '{MIGRATE_LOCK_WAIT}'"))
                while True:
                    try:
                        conn.execute(text("SELECT pg_advisory_lock(:key)"), key)
                        break
                    except OperationalError as err:
                        if getattr(err.orig, "sqlstate", None) != "55P03":  # lock_not_available
                            raise
                        conn.rollback()
            yield
    finally:
        engine.dispose()


def migrate(url: str | None = None) -> None:
    """Bring the schema to the newest Alembic revision, one migrate at a time. A database
    a later release migrated (a rollback: the Procfile's release runs this again) is left
    as it is: its revisions keep this code working, and Alembic cannot locate them."""
    from alembic import command
    from alembic.config import Config

    from core.adapters.schema import code_revisions

    url = url or get_settings().owner_database_url
    if ensure_database(url):
        log.info("created database", extra={"database": make_url(url).database})
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["url"] = url
    with migration_lock(url):
        if _database_versions(url) - code_revisions()[0]:
            log.info("database is ahead of this code; nothing to do")
            return
        command.upgrade(cfg, "heads")


def _database_versions(url: str) -> set[str]:
    """The Alembic revisions ``url``'s database is at (none if never migrated)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            if conn.scalar(text("SELECT to_regclass('alembic_version')")) is None:
                return set()
            return set(conn.scalars(text("SELECT version_num FROM alembic_version")))
    finally:
        engine.dispose()


def _current_user(url: str) -> str:
    """The role a connection to ``url`` runs as (asked, not read from the URL: a pooler's
    user name may be another)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return str(conn.scalar(text("SELECT current_user")))
    finally:
        engine.dispose()


def _service_role(url: str, owner_url: str) -> str:
    """The role ``url`` (DATABASE_URL) connects as, asked as in _current_user. A database
    whose CONNECT was taken from PUBLIC (a common hardening) refuses that role until its
    first grant gives it CONNECT: then, if the owner (``owner_url``) finds that the URL's
    user is a role lacking CONNECT here, that is the service's role. Any other refusal
    (a wrong password, a server away) is raised as it was."""
    try:
        return _current_user(url)
    except OperationalError:
        user = make_url(url).username
        if not user:
            raise
        engine = create_engine(owner_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                lacks = conn.scalar(text(
                    "SELECT NOT has_database_privilege(oid, current_database(), 'CONNECT') "
                    "FROM pg_roles WHERE rolname = :r"), {"r": user})
        finally:
            engine.dispose()
        if not lacks:
            raise
        log.info("the service's role may not connect yet: the grant gives it CONNECT",
                 extra={"role": user})
        return user


def grant_service_role(role: str) -> Granted:
    """As the schema's owner (MIGRATE_DATABASE_URL, else DATABASE_URL), give ``role``
    what the service needs and no more (core.adapters.roles.grant_service_role)."""
    from core.adapters import roles

    engine = create_engine(get_settings().owner_database_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            return roles.grant_service_role(conn, role)
    finally:
        engine.dispose()


def grant_after_migrate() -> bool:
    """With MIGRATE_DATABASE_URL set, `migrate` and `release` grant DATABASE_URL's role
    after upgrading: on every deploy, so tables made before the default privileges and a
    grant changed by hand since are put right, with nothing more to configure. The same
    role in both URLs is warned (one role does all, as without the setting). A role the
    grant refuses (a superuser, the ledger's owner, the database's or schema's owner, a
    member of a CREATEROLE group) fails the release (False): two URLs ask for two roles,
    and the deploy going on would leave the tables of this and later migrations, owned by
    the migrating role, ungranted to the service (permission denied at run time) or the
    service able to turn the checks off. DATABASE_URL's role is asked by connecting as
    it (_service_role), or read from the URL where CONNECT is not yet its."""
    from core.adapters import roles

    settings = get_settings()
    if not settings.migrate_database_url:
        return True
    service = _service_role(settings.database_url, settings.migrate_database_url)
    if service == _current_user(settings.migrate_database_url):
        log.warning("DATABASE_URL and MIGRATE_DATABASE_URL connect as the same role: the "
                    "service owns the schema (README: Setting up production)",
                    extra={"role": service})
        return True
    try:
        # Under migrate's lock: two releases granting at once could fail one of them on
        # the same catalog rows ("tuple concurrently updated").
        with migration_lock(settings.migrate_database_url):
            granted = grant_service_role(service)
    except roles.RoleRefused as err:
        log.error("the service's database role was not granted: the release stops "
                  "(README: Setting up production)", extra={"reason": str(err)})
        return False
    log.info("service role granted", extra={"role": granted.role, "owner": granted.owner,
                                            "schema": granted.schema})
    if granted.left:
        log.warning("the service's database role still may more than it needs: revoke it "
                    "as whoever granted it (a role it belongs to; PUBLIC's, as the "
                    "database's owner), then release again",
                    extra={"role": granted.role, "left": list(granted.left)})
    return True


class SchemaNotReady(RuntimeError):
    """The database of DATABASE_URL lacks the schema this code works on: migrate first."""


def check_schema() -> None:
    """SchemaNotReady unless the database's migrations are this code's (or newer: a later
    release's, which keep this one working), as /readyz reads them: a command on a
    database never migrated, or one behind, would fail part-way on a table or column it
    lacks (README: `./run migrate` is the first step, and `seed` does not migrate)."""
    from core.adapters import db
    from core.adapters.schema import code_revisions, schema_state

    with db.engine().connect() as conn:
        table = conn.scalar(text("SELECT to_regclass('alembic_version')"))
        versions = set(conn.scalars(text("SELECT version_num FROM alembic_version"))) \
            if table is not None else set()
    state = schema_state(versions)
    if state == "ok":
        return
    where = masked_url(os.environ.get("DATABASE_URL") or get_settings().database_url)
    if not versions:
        raise SchemaNotReady(f"the database in DATABASE_URL ({where}) has no schema yet "
                             "(never migrated): run `./run migrate` first")
    raise SchemaNotReady(f"the database in DATABASE_URL ({where}) is at migration "
                         f"{','.join(sorted(versions))}, behind this code's "
                         f"{','.join(sorted(code_revisions()[1]))}: run `./run migrate` "
                         "first")


def seed() -> int:
    """Load the sandbox's demo data; refused (2) in production, where it would add demo
    partners with fake payout accounts and a demo operator who can sign in."""
    if get_settings().is_production:
        print("seed loads demo data (demo partners, Points and a demo operator) and is "
              "for the sandbox only; refused with APP_ENV=production. Set production up "
              "with add-operator, add-point, rate-card --default and add-partner (README: "
              "Setting up production).", file=sys.stderr)
        return 2
    check_schema()
    from core.services.seed import seed_demo

    summary = seed_demo()
    log.info("seed done", extra=summary)
    return 0


def lower_priority() -> int:
    """Run background jobs below the web processes' CPU priority (``WORKER_NICE``, default
    19; 0 keeps it equal); return the niceness now in effect.

    On a small machine the webhooks and the jobs share the cores. A webhook has a caller
    waiting (Twilio gives up after 15 s and retries, adding load); a drained turn or a
    delivery can wait a little. So when the cores are busy the kernel serves the webhooks
    first and the jobs take what is left; when they are not, the jobs run at full speed.
    Where the worker leads a session of its own, that session's scheduling group is
    lowered too, and its PostgreSQL backends follow it (core.adapters.priority).
    """
    raw = os.environ.get("WORKER_NICE", str(DEFAULT_WORKER_NICE)).strip()
    try:
        wanted = int(raw)
    except ValueError:
        raise SystemExit(f"WORKER_NICE must be a number from 0 to 19, not {raw!r}") from None
    if not 0 <= wanted <= 19:
        raise SystemExit(f"WORKER_NICE must be a number from 0 to 19, not {raw!r}")
    from core.adapters import priority

    try:
        return priority.lower(0, wanted)
    except OSError as err:  # the niceness is set; only its session's group could not be
        log.warning("worker's scheduling group keeps its priority",
                    extra={"reason": type(err).__name__})
        return priority.niceness(0)


def join_sweeps() -> None:
    """Join the periodic sweep chains: outbox, dispatch, payments, reconciliation, and the
    daily retention job.

    Each is a job that schedules its next run, so the chains live in Redis only; a Redis
    that lost its data (a flush, a restart without its last writes, a failover) ends them
    while the workers live on. Every worker joins them at start and about once a minute
    after (the ``periodic`` of its class), so they are back within a minute or two.
    Idempotent: the job ids name the slot they run in; a look-up per chain when they run.
    """
    from workers import dispatch as dispatch_jobs
    from workers import outbox as outbox_jobs
    from workers import payments as payment_jobs
    from workers import retention as retention_jobs

    outbox_jobs.schedule_sweep()
    dispatch_jobs.schedule_sweep()
    payment_jobs.schedule_periodic()
    retention_jobs.schedule()


def service_worker(fork: bool = False) -> JobLoggingWorker | JobLoggingSimpleWorker:
    """The service's RQ worker on every queue; it joins the sweep chains as it starts and
    about once a minute after."""
    from rq.serializers import JSONSerializer

    from core.adapters.queue import QUEUES, JobLoggingSimpleWorker, JobLoggingWorker, queue
    from core.adapters.redis_conn import redis_client

    worker_class = JobLoggingWorker if fork else JobLoggingSimpleWorker
    # RQ logs each job's call with its arguments unless told not to: a job's arguments may
    # carry a phone number or a spoken text with one, which must not reach the logs.
    w = worker_class([queue(n) for n in QUEUES], connection=redis_client(),
                     serializer=JSONSerializer, log_job_description=False)
    w.periodic = join_sweeps
    return w


def worker(burst: bool = False) -> None:
    """Run an RQ worker with its scheduler on every queue (the Procfile's `worker`)."""
    from core.adapters.redis_conn import redis_client

    # A Redis away at start is said at once (main), before the directory's warm-up; one
    # lost later is the worker loop's to ride out.
    redis_client().ping()
    from core.adapters.roles import warn_if_overpowered

    warn_if_overpowered(get_settings().database_url, production=get_settings().is_production)
    lower_priority()

    from core.adapters import pincode

    pincode.warm_up()  # jobs look up post offices too; pay the index build once, up front
    w = service_worker(get_settings().rq_fork_per_job)  # "on" too (core.config._flag)
    w.work(with_scheduler=True, burst=burst, logging_level=get_settings().log_level)


def sandbox_worker(burst: bool = False) -> int:
    """Run the emulators' jobs (what Twilio and Razorpay would do on their side), apart
    from the service's workers so that emulation never takes a worker from the service."""
    from rq.serializers import JSONSerializer

    from core.adapters.queue import SANDBOX_QUEUE, JobLoggingSimpleWorker, queue
    from core.adapters.redis_conn import redis_client

    if not get_settings().is_sandbox:
        log.error("sandbox-worker runs only with APP_ENV=sandbox")
        return 2
    lower_priority()  # it stands in for Twilio's and Razorpay's side, not ours
    w = JobLoggingSimpleWorker([queue(SANDBOX_QUEUE)], connection=redis_client(),
                               serializer=JSONSerializer, log_job_description=False)
    # With its scheduler, as the service's workers: the service's take only their own
    # queues, and a Razorpay webhook the web refused waits for its Retry in the sandbox
    # queue's scheduled registry, which nothing else moves to the queue.
    w.work(with_scheduler=True, burst=burst, logging_level=get_settings().log_level)
    return 0


def set_up(args: argparse.Namespace) -> int:
    """Run one set-up command (core.services.admin) in a transaction of its own; print
    what it did or found, or why it refused (2)."""
    from core.adapters.db import transaction
    from core.domain.errors import DomainError
    from core.services import admin as setup

    check_schema()
    try:
        with transaction() as session:
            if args.cmd == "add-operator":
                done = setup.add_operator(session, args.phone, args.name, actor=CLI_ACTOR)
            elif args.cmd == "remove-operator":
                done = setup.remove_operator(session, args.phone, person_id=args.person,
                                             actor=CLI_ACTOR, note=args.note)
            elif args.cmd == "sign-out-person":
                done = setup.sign_out_person(session, args.phone, person_id=args.person,
                                             actor=CLI_ACTOR, note=args.note)
            elif args.cmd == "add-point":
                done = setup.add_point(session, args.pincode, args.office, actor=CLI_ACTOR,
                                       name=args.name)
            elif args.cmd == "rate-card":
                done = setup.activate_default_rate_card(session, actor=CLI_ACTOR)
            elif args.cmd == "set-payout-account":
                done = setup.set_payout_account(session, _partner_id(session, args),
                                                args.account, actor=CLI_ACTOR, note=args.note)
            elif args.cmd == "clear-payout-account":
                done = setup.clear_payout_account(session, _partner_id(session, args),
                                                  actor=CLI_ACTOR, note=args.note)
            elif args.cmd == "set-home-point":
                done = setup.set_home_point(session, _partner_id(session, args), args.point,
                                            actor=CLI_ACTOR, note=args.note)
            elif args.cmd == "close-point":
                done = setup.close_point(session, args.point, actor=CLI_ACTOR, note=args.note)
            elif args.cmd == "erase-recipient":
                done = _erase_recipient(session, args)
            elif args.cmd == "move-point":
                done = setup.move_point(session, args.point, args.lat, args.lng,
                                        actor=CLI_ACTOR, note=args.note)
            elif args.cmd == "rename-point":
                done = setup.rename_point(session, args.point, args.name, actor=CLI_ACTOR,
                                          note=args.note)
            else:
                done = setup.add_partner(session, setup.NewPartner(
                    phone=args.phone, name=args.name, language=args.language,
                    vehicle=args.vehicle, payload_kg=args.payload_kg, point=args.point,
                    payout_account=args.payout_account, has_app=args.app), actor=CLI_ACTOR)
                if not done.changed and args.payout_account is not None:
                    # A partner signed up without one: run again with it, it is filled in
                    # (another account than theirs is refused: set-payout-account).
                    done = setup.set_payout_account(session, done.id, args.payout_account,
                                                    actor=CLI_ACTOR, only_if_missing=True)
    except DomainError as err:  # messages mask phones: they never carry one in full
        print(f"{args.cmd}: {err.message}", file=sys.stderr)
        return 2
    except IntegrityError:  # its text would show the row, phone and all
        print(f"{args.cmd}: another change made the same thing at the same moment; run "
              "the command again to see it", file=sys.stderr)
        return 2
    if args.cmd == "remove-operator" and not done.changed:
        # Nobody's access was taken away (not an operator, or removed already): a script
        # or a runbook that meant to cut someone off must not read it as done. Refused as
        # a number nobody has is (2), in one line (the number masked).
        print(f"{args.cmd}: {done.message}", file=sys.stderr)
        return 2
    print(done.message)
    log.info("set-up done", extra={"command": args.cmd, "changed": done.changed,
                                   "id": done.id})
    return 0


def _erase_recipient(session, args: argparse.Namespace):  # noqa: ANN202 (admin.Outcome)
    """erase-recipient: retention.erase_recipient, told as a set-up command's outcome."""
    from core.domain.errors import ValidationError
    from core.domain.phone import mask_phone, normalize_phone
    from core.services import admin as setup
    from core.services import retention

    reason = args.reason.strip()
    if not REASON_MIN <= len(reason) <= REASON_MAX:
        raise ValidationError(f"give a reason of {REASON_MIN} to {REASON_MAX} characters "
                              "(where her request came from and when, \"her call on 3 Dec\"): "
                              "the audit log keeps it",
                              code="bad_reason", field="reason")
    done = retention.erase_recipient(session, args.phone, actor=CLI_ACTOR, reason=reason)
    masked = mask_phone(normalize_phone(args.phone))
    if not done.changed:
        return setup.Outcome(False, 0, f"nothing kept for recipient {masked} (erased "
                                       "before, or never a recipient)")
    return setup.Outcome(True, 0, f"recipient {masked} erased from "
                                  f"{len(done.booking_ids)} booking(s): {done.counts}")


def _partner_id(session, args: argparse.Namespace) -> int:
    """The partner ``--partner`` (an id) or ``--phone`` names (NotFound if none)."""
    from sqlalchemy import select

    from core.adapters.models import PartnerProfile, Person
    from core.domain.errors import NotFound
    from core.domain.phone import normalize_phone

    if args.partner is not None:
        return int(args.partner)
    found = session.scalar(select(PartnerProfile.id).join(
        Person, Person.id == PartnerProfile.person_id).where(
        Person.phone == normalize_phone(args.phone)))
    if found is None:
        raise NotFound("no partner has that phone (add-partner signs one up)",
                       code="not_found", field="phone")
    return int(found)


# prometheus_client's multiprocess mode (core.web.gunicorn_conf): the web's directory.
METRICS_DIR_SETTING = "PROMETHEUS_MULTIPROC_DIR"


def leave_the_webs_metrics_dir() -> None:
    """Forget PROMETHEUS_MULTIPROC_DIR in this process (and in what it starts: RQ's work
    horses and scheduler), before anything imports prometheus_client.

    The operator may set it for every process (README: Configuration), but only the web
    serves /metrics. A worker's job imports the web's helpers (the inbound drain: the
    bots, their webhook checks, core.web.ops and its module-level Counters), and with the
    setting prometheus_client opens <dir>/counter_<pid>.db at that import: a directory
    gunicorn has not made (a worker's own machine, a worker started first) failed every
    such job with FileNotFoundError, and one it has made got the worker's files, added
    into the web's /metrics. None of these commands serves /metrics: each counts in its
    own memory, as any single process does."""
    os.environ.pop(METRICS_DIR_SETTING, None)


def main(argv: list[str] | None = None) -> int:
    leave_the_webs_metrics_dir()  # first: nothing of prometheus_client is imported yet
    parser = argparse.ArgumentParser(prog="python -m core.cli")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("migrate", help="apply Alembic migrations (creates the database)")
    sub.add_parser("seed", help="load demo data once (idempotent; sandbox only)")
    sub.add_parser("release", help="migrate, then seed in the sandbox (the Procfile's release)")
    w = sub.add_parser("worker", help="RQ worker with scheduler")
    w.add_argument("--burst", action="store_true")
    sw = sub.add_parser("sandbox-worker", help="the emulators' RQ worker (sandbox mode only)")
    sw.add_argument("--burst", action="store_true")
    sub.add_parser("retention", help="run the daily retention job now, once (README: "
                   "Keeping and erasing personal data)")
    op = sub.add_parser("add-operator", help="let a phone sign in as an operator (role ops)")
    op.add_argument("--phone", required=True, help="mobile number, e.g. +919812345678")
    op.add_argument("--name")
    ro = sub.add_parser("remove-operator",
                        help="take an operator's access away (role ops) and sign them out "
                             "everywhere at once (refused, exit 2, for the last operator and "
                             "for someone who is not an operator)")
    who = ro.add_mutually_exclusive_group(required=True)
    who.add_argument("--phone", help="the operator's mobile number, e.g. +919812345678")
    who.add_argument("--person", type=int, help="the operator's person id")
    ro.add_argument("--note", help="why (kept in the audit log, numbers masked)")
    so = sub.add_parser("sign-out-person",
                        help="sign a person (customer, partner or operator) out everywhere "
                             "at once: a lost or stolen phone's sign-in stops working; "
                             "their role stays")
    who = so.add_mutually_exclusive_group(required=True)
    who.add_argument("--phone", help="their mobile number, e.g. +919812345678")
    who.add_argument("--person", type=int, help="their person id")
    so.add_argument("--note", help="why (kept in the audit log, numbers masked)")
    pt = sub.add_parser("add-point", help="open a Point at an India Post office")
    pt.add_argument("--pincode", required=True)
    pt.add_argument("--office", required=True, help='as India Post names it: "Laxmipur BO"')
    pt.add_argument("--name", help="what people read and hear, when not the office's name "
                    'without BO/SO (taken by another Point of the pincode): "Arjunganj SO"')
    rc = sub.add_parser("rate-card", help="activate the built-in rate card if none is active")
    rc.add_argument("--default", action="store_true", required=True,
                    help="the built-in rate card (core.domain.pricing.DEFAULT_RATE_CARD)")
    pa = sub.add_parser("add-partner", help="a partner with a vehicle (KYC pending, off duty)")
    pa.add_argument("--phone", required=True)
    pa.add_argument("--name", required=True)
    pa.add_argument("--language", required=True, help="hi en bn mr ta te gu kn")
    pa.add_argument("--vehicle", required=True,
                    help="bicycle motorcycle e_rickshaw auto pickup cart")
    pa.add_argument("--payload-kg", required=True, type=int)
    pa.add_argument("--point", required=True, help="home Point: its id or name")
    pa.add_argument("--payout-account", help="Razorpay Route linked account (acc_...)")
    pa.add_argument("--app", action="store_true", help="the partner uses the partner app")
    sp = sub.add_parser("set-payout-account",
                        help="give a partner their payout account, or change it (refused "
                             "while they hold a job or a payout on hold)")
    who = sp.add_mutually_exclusive_group(required=True)
    who.add_argument("--partner", type=int, help="the partner's id")
    who.add_argument("--phone", help="the partner's mobile number")
    sp.add_argument("--account", required=True, help="Razorpay Route linked account (acc_...)")
    sp.add_argument("--note", help="why (kept in the audit log, numbers masked)")
    cl = sub.add_parser("clear-payout-account",
                        help="take a partner's payout account away (the bank account "
                             "closed, the linked account suspended, it was another's): "
                             "they go OFF until given a new one; refused while they hold "
                             "a job or a payout on hold")
    who = cl.add_mutually_exclusive_group(required=True)
    who.add_argument("--partner", type=int, help="the partner's id")
    who.add_argument("--phone", help="the partner's mobile number")
    cl.add_argument("--note", help="why (kept in the audit log, numbers masked)")
    hp = sub.add_parser("set-home-point",
                        help="move a partner's home Point (they moved villages); jobs in "
                             "hand stay theirs")
    who = hp.add_mutually_exclusive_group(required=True)
    who.add_argument("--partner", type=int, help="the partner's id")
    who.add_argument("--phone", help="the partner's mobile number")
    hp.add_argument("--point", required=True, help="the new home Point: its id or name")
    hp.add_argument("--note", help="why (kept in the audit log, numbers masked)")
    cp = sub.add_parser("close-point",
                        help="close a Point: no new relay goes through it (refused while a "
                             "parcel is on its way to it or waits at it)")
    cp.add_argument("--point", required=True, help="the Point: its id or name")
    cp.add_argument("--note", help="why (kept in the audit log, numbers masked)")
    mp = sub.add_parser("move-point",
                        help="move a Point to a spot nearby (a few km at most: "
                             "admin.POINT_MOVE_MAX_M; refused while a parcel is on its way "
                             "to it or waits at it)")
    mp.add_argument("--point", required=True, help="the Point: its id or name")
    mp.add_argument("--lat", required=True, type=float, help="its new latitude, e.g. 26.8927")
    mp.add_argument("--lng", required=True, type=float, help="its new longitude, e.g. 84.4881")
    mp.add_argument("--note", help="why (kept in the audit log, numbers masked)")
    rn = sub.add_parser("rename-point",
                        help="rename a Point: the name customers and riders read and hear "
                             "(refused if another active Point of its pincode has it)")
    rn.add_argument("--point", required=True, help="the Point: its id or name")
    rn.add_argument("--name", required=True, help='its new name, e.g. "Laxmipur Chowk"')
    rn.add_argument("--note", help="why (kept in the audit log, numbers masked)")
    er = sub.add_parser("erase-recipient",
                        help="erase a parcel recipient who has no account, by her number, "
                             "on her request (refused while a parcel to her is on its way)")
    er.add_argument("--phone", required=True, help="her number, e.g. +91 98765 43210")
    er.add_argument("--reason", required=True,
                    help="why: where her request came from and when, \"her call on 3 Dec\" "
                         "(audited)")
    sl = sub.add_parser("settle-leg",
                        help="settle one leg now, after an incident: its rider's hold "
                             "released if the leg earned it (delivered, a cancellation "
                             "fee), else given back (no rider has it); through the leg's "
                             "own settle job, so a repeat changes nothing; refused while a "
                             "rider has the leg")
    sl.add_argument("--leg", required=True, type=int, help="the leg's id")
    sl.add_argument("--booking", help="its booking's reference (8 digits), to check it")
    sl.add_argument("--reason", required=True, help="why (audited, numbers masked)")
    args = parser.parse_args(argv)
    garbled = _not_text(args)
    if garbled is not None:
        print(f"{args.cmd}: {garbled} is not valid text (the terminal sent it in another "
              "encoding than UTF-8); set the terminal to UTF-8 and type it again",
              file=sys.stderr)
        return 2
    try:
        logs.configure(get_settings().log_level)
        return run_command(args)
    except ConfigError as err:  # the operator's to fix: what is wrong, not a traceback
        print(err.report(f"{parser.prog} {args.cmd}"), file=sys.stderr)
        return 2
    except SchemaNotReady as err:
        print(f"{parser.prog} {args.cmd}: {err}", file=sys.stderr)
        return 2
    except (OperationalError, InterfaceError, redis.exceptions.RedisError) as err:
        away = service_away(err)
        if away is None:  # a bug, or a statement of ours refused: the traceback says where
            raise
        print(f"{parser.prog} {args.cmd}: {away}", file=sys.stderr)
        return 1


def _not_text(args: argparse.Namespace) -> str | None:
    """The option (``--name``) whose value is not text PostgreSQL can keep: a terminal in
    another encoding than UTF-8 (a Latin-1 one typing 'Ramú') hands Python bytes it keeps
    as lone surrogates, which no check of a name or a phone sees, and psycopg cannot send."""
    for name, value in vars(args).items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "--" + name.replace("_", "-")
    return None


def masked_url(url: str) -> str:
    """``url`` as it may be shown: its password (in the user part, or a ``password=`` of its
    query) replaced by ***."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    except ValueError:
        return "(a URL that cannot be read)"
    query = "&".join("password=***" if pair.split("=", 1)[0].lower() == "password" else pair
                     for pair in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# SQLSTATE classes of a server that cannot serve a connection: 08 (connection exception),
# and an administrator's shutdown, a crash, a server starting up (57P01-57P03).
_AWAY_STATES = ("08", "57P01", "57P02", "57P03")


def service_away(err: BaseException) -> str | None:
    """One line saying that the PostgreSQL of DATABASE_URL, or the Redis of REDIS_URL, cannot
    be reached (or Redis takes no writes), naming the setting and its URL without its
    password; None for any other error.

    libpq gives no SQLSTATE for a connection that failed (refused, timed out, a password
    or database the server refused at start-up), only its message."""
    if isinstance(err, redis.exceptions.RedisError):
        from core.adapters.redis_conn import redis_down

        if not redis_down(err):
            return None
        where = masked_url(os.environ.get("REDIS_URL") or get_settings().redis_url)
        reason = _first_lines(str(err)) or type(err).__name__
        if isinstance(err, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
            return f"the Redis in REDIS_URL ({where}) cannot be reached: {reason}"
        return f"the Redis in REDIS_URL ({where}) takes no writes: {reason}"
    if not isinstance(err, DBAPIError):
        return None
    state = getattr(err.orig, "sqlstate", None)
    if state is not None and not state.startswith(_AWAY_STATES):
        return None
    url = os.environ.get("DATABASE_URL") or get_settings().database_url
    where = masked_url(url)
    name = make_url(get_settings().database_url).database or ""
    if isinstance(err, OperationalError) and name and _missing_database(err, name):
        return (f'the database "{name}" of DATABASE_URL ({where}) does not exist: '
                "`./run migrate` creates it")
    reason = _first_lines(str(err.orig)) or type(err.orig).__name__
    return f"the database in DATABASE_URL ({where}) cannot be reached: {reason}"


def _first_lines(text_: str, limit: int = 300) -> str:
    """A message's lines as one (libpq adds a hint on a line of its own), cut to ``limit``."""
    line = "; ".join(part.strip() for part in text_.splitlines() if part.strip())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def run_command(args: argparse.Namespace) -> int:
    """Run the command ``args`` names; its exit status."""
    settings = get_settings()
    if args.cmd in ("migrate", "release"):
        migrate()
        if not grant_after_migrate():
            return 1
        from core.adapters.roles import warn_if_overpowered

        warn_if_overpowered(settings.database_url, production=settings.is_production)
        if args.cmd == "release" and settings.is_sandbox:
            return seed()
    elif args.cmd == "seed":
        return seed()
    elif args.cmd == "worker":
        worker(burst=args.burst)
    elif args.cmd == "sandbox-worker":
        return sandbox_worker(burst=args.burst)
    elif args.cmd == "retention":
        from core.services import retention

        check_schema()
        try:
            print(json.dumps(retention.run()))
        except retention.RetentionIncomplete as err:
            # Redis away: the database steps ran; one line says so (what failed, what was
            # done), not the traceback of the Redis error and of this one raised from it.
            away = service_away(err.__cause__) if err.__cause__ is not None else None
            print(f"{args.cmd}: {err.message}: {json.dumps(err.done)}"
                  + (f"; {away}" if away else ""), file=sys.stderr)
            return 1
    elif args.cmd in ("add-operator", "remove-operator", "sign-out-person", "add-point",
                      "rate-card", "add-partner", "set-payout-account", "clear-payout-account",
                      "set-home-point", "close-point", "move-point", "rename-point",
                      "erase-recipient"):
        return set_up(args)
    elif args.cmd == "settle-leg":
        return settle_leg(args)
    return 0


def settle_leg(args: argparse.Namespace) -> int:
    """settle-leg: payments.settle_leg_by_hand (the leg's own settle job, audited as done
    from this command line); what it did, or why it refused (2)."""
    from core.adapters.db import transaction
    from core.domain.booking import Actor
    from core.domain.errors import DomainError, NotFound
    from core.domain.reference import normalize_reference
    from core.services import payments

    check_schema()
    try:
        booking_id = None
        if args.booking is not None:
            from sqlalchemy import select

            from core.adapters.models import Booking

            ref = normalize_reference(args.booking)
            with transaction() as session:
                booking_id = session.scalar(select(Booking.id).where(
                    Booking.reference == ref)) if ref else None
            if booking_id is None:
                raise NotFound("no booking has that reference", code="not_found",
                               field="booking")
        done = payments.settle_leg_by_hand(args.leg, Actor("ops", CLI_ACTOR), args.reason,
                                           booking_id=booking_id)
    except DomainError as err:
        print(f"{args.cmd}: {err.code}: {err.message}", file=sys.stderr)
        return 2
    print(f"leg {done.leg_id} of booking {done.reference}: {done.outcome}: {done.message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

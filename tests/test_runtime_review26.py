"""Review r11 (runtime): how the service runs and is operated, as an SRE meets it.

Each test shows one defect on the code as it was reviewed; its docstring says what an
operator or a user sees.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from core.config import get_settings
from tests.conftest import post_twilio
from tests.test_redis_failover import replica_7, wa  # noqa: F401  (fixture)

pytestmark = pytest.mark.db

API = "/api/v1"


@pytest.fixture
def read_only_database(clean_db: None) -> Iterator[None]:
    """The service's database takes no writes, as after a failover whose DATABASE_URL
    still names the old primary, now a standby (or fenced read-only): every transaction
    is read-only (SQLSTATE 25006 on the first write), reads and SELECT 1 still work."""
    from core.adapters import db

    url = make_url(get_settings().database_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT",
                          poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{url.database}" SET '
                          "default_transaction_read_only = on"))
    db.dispose_all()  # the new setting holds for new connections
    try:
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{url.database}" RESET '
                              "default_transaction_read_only"))
        admin.dispose()
        db.dispose_all()


def test_readyz_is_not_ready_while_the_database_refuses_every_write(client,
                                                                     read_only_database):
    """A PostgreSQL failover leaves DATABASE_URL on the demoted primary (a standby now):
    every booking, sign-in and payment webhook fails on its first write, yet /readyz
    answers 200 "ready" with postgres "ok" (core/web/ops.py readiness: db.ping() runs
    SELECT 1, which a read-only server answers). The load balancer keeps the instance in,
    and an alert on readiness never fires."""
    r = client.post(f"{API}/auth/otp", json={"phone": "+919812300001"})
    assert r.status_code >= 500, r.get_json()  # the database really refuses the write
    ready = client.get("/readyz")
    assert ready.status_code == 503, ready.get_json()
    assert ready.get_json()["checks"]["postgres"] != "ok", ready.get_json()


def test_a_database_that_takes_no_writes_is_a_503_not_a_500(client, read_only_database):
    """Same failover: the app asking for a sign-in code gets 500 "internal_error",
    "Something went wrong on our side", and the log a traceback of an "unhandled error",
    where a database away is 503 "database_unavailable" with Retry-After (the promise of
    core/web/errors.py: nothing was saved, retry). psycopg's ReadOnlySqlTransaction is an
    sqlalchemy InternalError, which database_down does not take (only OperationalError and
    InterfaceError)."""
    r = client.post(f"{API}/auth/otp", json={"phone": "+919812300002"})
    assert r.status_code == 503, (r.status_code, r.get_json())
    assert r.get_json()["error"]["code"] == "database_unavailable"
    assert r.headers.get("Retry-After")


def test_readyz_is_not_ready_while_redis_is_a_replica_that_takes_no_writes(
        client, monkeypatch, replica_7):  # noqa: F811
    """A Redis failover leaves REDIS_URL on the demoted primary, now a replica whose
    master is gone: every WhatsApp webhook answers 503 (core.adapters.redis_conn.redis_down
    takes READONLY and MASTERDOWN as Redis away), but /readyz says 200 "ready", redis
    "ok": PING is one of the few commands a stale replica still answers. Nothing tells
    the operator the service is down."""
    from core.services import inbound
    from core.web import ops as web_ops

    replica_7.config_set("replica-serve-stale-data", "no")
    monkeypatch.setattr(inbound, "redis_client", lambda: replica_7)
    monkeypatch.setattr(web_ops, "redis_client", lambda: replica_7)
    hook = post_twilio(client, "/webhooks/whatsapp", wa("+919817170011", "hi", "SMr11ro1"))
    assert hook.status_code == 200  # parked in PostgreSQL (session 34): a 503 is not retried
    ready = client.get("/readyz")
    assert ready.status_code == 503, ready.get_json()
    assert ready.get_json()["checks"]["redis"] != "ok", ready.get_json()


@pytest.mark.parametrize("typed", [
    "+91\u00a098123\u00a045678",  # a number copied from a web page (&nbsp; keeps it whole)
    "98123\u201345678",  # an en dash, as word processors and phones turn a hyphen
])
def test_a_number_the_service_takes_as_a_phone_is_masked_in_an_ops_note(client, typed):
    """An operator pastes the number a partner called from into the KYC note ("called
    from +91 98123 45678, Aadhaar checked"), copied from a web page or a document: the
    spaces are non-breaking (or the hyphen an en dash). The audit log, kept for good past
    any erasure, promises its free text keeps numbers masked (core/api/ops.py audit,
    FREE_TEXT), and logs promise the same (core/logs.py). But mask_phones knows only
    ASCII spaces, hyphens and brackets between digits (_SEP, _E164, re.ASCII), while
    normalize_phone takes the very same text as a phone number (its _NOISE is any
    whitespace and the Unicode dashes): the full number stays in the audit log."""
    from core.adapters.api_models import AuditEntry
    from core.adapters.db import transaction
    from core.domain.phone import normalize_phone
    from tests.test_api import sign_in
    from tests.test_dispatch import LAXMIPUR, OPS, make_partner

    assert normalize_phone(typed) == "+919812345678"  # the service's own reading
    partner, _ = make_partner("Ravi", LAXMIPUR, kyc_status="pending")
    ops = sign_in(client, OPS, role="ops")
    r = client.put(f"{API}/ops/partners/{partner}/kyc", headers=ops,
                   json={"status": "verified", "note": f"called from {typed}, Aadhaar ok"})
    assert r.status_code == 200, r.get_json()
    with transaction() as s:
        kept = [json.dumps(e.details, ensure_ascii=False) for e in s.scalars(
            select(AuditEntry).where(AuditEntry.action == "partner.kyc"))]
    assert kept, "the KYC change was not audited"
    digits = ["".join(ch for ch in d if ch.isdigit()) for d in kept]
    assert not [d for d in digits if "9812345678" in d], kept


# Request ids as the service makes them (uuid4().hex[:16], core/app.py) and as a proxy in
# front passes them (nginx's $request_id: 32 hex digits; a UUID): about 1 in 135, 1 in 60
# and 1 in 50 of them hold ten decimal digits in a row, the first 6-9.
@pytest.mark.parametrize("rid", [
    "3722af7113794544",
    "0c5e8f42a1bc9876543210fe7d6c5b4a",
    "ba6371ab-2971-4289-af5c-9098531634a5",
])
def test_a_request_s_log_lines_carry_the_request_id_it_was_answered_with(client, rid):
    """A Twilio webhook is refused (403): Twilio's debugger shows the answer's
    X-Request-Id, and the operator looks for it in the logs (README: "Logs are JSON lines
    ... with request and job ids"). For some ids there is no such line: the formatter
    masks phone numbers in every field, ids too (core/logs.py JsonFormatter.format ->
    _masked), and an id with ten digits in a row starting 6-9 is taken for a mobile
    number, "3722af7113794544" logged as "3722af******4544". The same goes for RQ's own
    job ids (str(uuid4()), 1 in 50) in the job_id field."""
    import logging

    from core.logs import JsonFormatter

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(JsonFormatter().format(record))

    logger = logging.getLogger("core.web.twilio_request")
    handler = Keep(level=logging.WARNING)
    logger.addHandler(handler)
    try:
        r = post_twilio(client, "/webhooks/sms", {"MessageSid": "SMr11rid", "Body": "ON",
                                                  "From": "+919000000001",
                                                  "To": "+15005550006"},
                        signature="not-the-signature", headers={"X-Request-Id": rid})
    finally:
        logger.removeHandler(handler)
    assert r.status_code == 403
    answered = r.headers["X-Request-Id"]
    assert answered == rid
    logged = [json.loads(line).get("request_id") for line in lines]
    assert logged, "the refusal was not logged"
    assert logged == [answered] * len(logged), (answered, logged)


# Added by the fixer (f10): what the fixes above must keep apart.
@pytest.mark.parametrize(("error", "away"), [
    ("25006", True),  # ReadOnlySqlTransaction (an InternalError): a standby, read-only
    ("25P02", False),  # InFailedSqlTransaction, also an InternalError: our own bug
    ("42P01", False),  # UndefinedTable: a programming error, not a database away
    ("23505", False),  # UniqueViolation: a race, handled as 409
    ("57P03", True),  # CannotConnectNow ("starting up"): an OperationalError
])
def test_which_database_errors_mean_it_is_away(error, away):
    """A read-only server's refusal is a 503 with Retry-After, as a server away is; a
    bad statement stays a 500 with its traceback logged (retrying changes nothing)."""
    import psycopg
    from sqlalchemy.exc import DBAPIError

    from core.adapters.db import database_away

    orig = psycopg.errors.lookup(error)("refused")
    wrapped = DBAPIError.instance("INSERT ...", {}, orig, psycopg.Error)
    assert database_away(wrapped) is away


@pytest.mark.parametrize(("typed", "expected"), [
    ("from +91\u202f98123\u202f45678 ok", "from +91******5678 ok"),  # narrow no-break
    ("from 98123\u201245678 ok", "from ******5678 ok"),  # a figure dash
    ("job 0c5e8f42a1bc9876543210fe7d6c5b4a for 9876543210",
     "job 0c5e8f42a1bc9876543210fe7d6c5b4a for ******3210"),
    ("transfer trf_Kx9812345678Ab to +919812345678",
     "transfer trf_Kx9812345678Ab to +91******5678"),
])
def test_masking_takes_what_normalize_phone_takes_and_leaves_ids_whole(typed, expected):
    from core.logs import mask_phones

    assert mask_phones(typed) == expected

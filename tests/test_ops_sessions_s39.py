"""An operator's sign-in ends after 12 hours unused and 7 days after it was made.

An operator's token sees customers' data, refunds and unlocks legs: it lived 30 days, as
a customer's, however long it lay unused on a shared or lost phone. Now an operator's
session ends after OPS_SESSION_IDLE_HOURS (12) without use and OPS_SESSION_DAYS (7) after
its sign-in, whatever its use; its last use is written at most every 5 minutes
(api_sessions.last_used_at, migration 0054). Customers' and partners' stay 30 days.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, event, select, update
from sqlalchemy.orm import Session

from core import clock
from core.adapters.api_models import ApiSession
from core.adapters.db import transaction
from core.adapters.models import Person
from core.config import ConfigError, load_settings
from core.services import auth
from tests.test_api import API, last_otp
from tests.test_config import sandbox_env

pytestmark = pytest.mark.db

OPERATOR = "+919812300391"
CUSTOMER = "+919812300392"
T0 = datetime(2026, 11, 2, 4, 30, tzinfo=UTC)  # 10:00 in India
OPS_VIEW = f"{API}/ops/handoffs"
CUSTOMER_VIEW = f"{API}/bookings"


@pytest.fixture(autouse=True)
def _frozen(clean_db: None) -> Iterator[None]:
    clock.freeze(T0)
    yield
    clock.freeze(None)


def sign_in(client, phone: str, role: str | None = None) -> tuple[dict[str, str], dict]:
    """(headers, the verify's answer) for a sign-in of ``phone`` (made ``role`` first)."""
    if role is not None:
        with transaction() as s:
            if s.scalar(select(Person).where(Person.phone == phone)) is None:
                s.add(Person(phone=phone, role=role))
    assert client.post(f"{API}/auth/otp", json={"phone": phone}).status_code == 202
    r = client.post(f"{API}/auth/verify", json={"phone": phone, "otp": last_otp(phone)})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    return {"Authorization": f"Bearer {body['token']}"}, body


def at(delta: timedelta) -> None:
    clock.freeze(T0 + delta)


def session_row() -> ApiSession:
    with transaction() as s:
        (row,) = s.scalars(select(ApiSession)).all()
        s.expunge(row)
        return row


def test_an_operator_unused_for_12_hours_signs_in_again(client):
    ops, _ = sign_in(client, OPERATOR, role="ops")
    assert client.get(OPS_VIEW, headers=ops).status_code == 200
    at(timedelta(hours=11, minutes=59))  # 11:59 unused: still in
    assert client.get(OPS_VIEW, headers=ops).status_code == 200
    at(timedelta(hours=23, minutes=59))  # 12 hours after that use
    r = client.get(OPS_VIEW, headers=ops)
    assert r.status_code == 401
    # Said as any ended session says it: a customer's after its 30 days, the same answer.
    cust, _ = sign_in(client, CUSTOMER)
    at(timedelta(hours=23, minutes=59) + auth.SESSION_TTL)
    other = client.get(CUSTOMER_VIEW, headers=cust)
    assert other.status_code == 401
    assert r.get_json() == other.get_json()
    assert r.get_json()["error"]["code"] == "invalid_token"
    assert r.get_json()["error"]["message"] == "sign in again"
    # Signed in again, the operator is in.
    at(timedelta(hours=24))
    again, _ = sign_in(client, OPERATOR)
    assert client.get(OPS_VIEW, headers=again).status_code == 200


def test_an_operator_in_use_is_signed_out_7_days_after_the_sign_in(client):
    ops, _ = sign_in(client, OPERATOR, role="ops")
    used = timedelta()
    while used + timedelta(hours=11) < timedelta(days=7):
        used += timedelta(hours=11)  # never idle for 12 hours
        at(used)
        assert client.get(OPS_VIEW, headers=ops).status_code == 200, used
    at(timedelta(days=7) - timedelta(minutes=1))
    assert client.get(OPS_VIEW, headers=ops).status_code == 200
    at(timedelta(days=7))
    r = client.get(OPS_VIEW, headers=ops)
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "invalid_token"


def test_a_customers_token_still_lives_30_days_unused(client):
    cust, body = sign_in(client, CUSTOMER)
    assert datetime.fromisoformat(body["expires_at"]) == T0 + timedelta(days=30)
    at(timedelta(days=29, hours=23))  # never used since the sign-in
    assert client.get(CUSTOMER_VIEW, headers=cust).status_code == 200
    assert session_row().last_used_at is None  # no write for a customer's use
    at(timedelta(days=30))
    assert client.get(CUSTOMER_VIEW, headers=cust).status_code == 401


def test_a_partners_token_still_lives_30_days(client):
    _, body = sign_in(client, CUSTOMER, role="partner")
    assert body["role"] == "partner"
    assert datetime.fromisoformat(body["expires_at"]) == T0 + timedelta(days=30)


def test_the_expiry_given_at_an_operators_sign_in_is_the_7_day_limit(client, monkeypatch):
    _, body = sign_in(client, OPERATOR, role="ops")
    assert body["role"] == "ops"
    assert datetime.fromisoformat(body["expires_at"]) == T0 + timedelta(days=7)
    monkeypatch.setenv("OPS_SESSION_DAYS", "2")
    at(timedelta(hours=1))
    _, body = sign_in(client, OPERATOR)
    assert datetime.fromisoformat(body["expires_at"]) == T0 + timedelta(days=2, hours=1)


def test_the_settings_shorten_an_operators_sessions(client, monkeypatch):
    monkeypatch.setenv("OPS_SESSION_IDLE_HOURS", "1")
    ops, _ = sign_in(client, OPERATOR, role="ops")
    at(timedelta(minutes=59))
    assert client.get(OPS_VIEW, headers=ops).status_code == 200
    at(timedelta(hours=2))
    assert client.get(OPS_VIEW, headers=ops).status_code == 401
    # A session made when OPS_SESSION_DAYS was longer ends by the shorter one.
    monkeypatch.delenv("OPS_SESSION_IDLE_HOURS")
    ops, _ = sign_in(client, OPERATOR)  # at 2:00, for 7 days
    monkeypatch.setenv("OPS_SESSION_DAYS", "1")
    for hours in (13, 24):
        at(timedelta(hours=hours))
        assert client.get(OPS_VIEW, headers=ops).status_code == 200
    at(timedelta(hours=25, minutes=59))
    assert client.get(OPS_VIEW, headers=ops).status_code == 200  # 23:59 old
    at(timedelta(hours=26))
    assert client.get(OPS_VIEW, headers=ops).status_code == 401


def test_the_last_use_is_written_at_most_every_5_minutes(client):
    ops, _ = sign_in(client, OPERATOR, role="ops")
    assert session_row().last_used_at == T0  # the sign-in is its first use
    writes: list[str] = []

    def record(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith("UPDATE API_SESSIONS"):
            writes.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        for minute in (0, 1, 2, 4):
            at(timedelta(minutes=minute, seconds=59))
            assert client.get(OPS_VIEW, headers=ops).status_code == 200
        assert writes == []
        assert session_row().last_used_at == T0
        at(timedelta(minutes=5))
        assert client.get(OPS_VIEW, headers=ops).status_code == 200
        assert client.get(OPS_VIEW, headers=ops).status_code == 200
        assert len(writes) == 1
        assert session_row().last_used_at == T0 + timedelta(minutes=5)
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    # Idle from its last use written: 12 hours after minute 5, not after the sign-in.
    at(timedelta(hours=12, minutes=4))
    assert client.get(OPS_VIEW, headers=ops).status_code == 200
    at(timedelta(hours=24, minutes=4))
    assert client.get(OPS_VIEW, headers=ops).status_code == 401


def test_an_operators_session_from_before_the_change_ends_by_its_sign_in(client):
    """A session made by the previous release: 30 days' expiry, no last use (NULL). Its
    idle time counts from its sign-in, and it ends 7 days after it."""
    ops, _ = sign_in(client, OPERATOR, role="ops")
    with transaction() as s:
        s.execute(update(ApiSession).values(
            created_at=T0 - timedelta(hours=2), last_used_at=None,
            expires_at=T0 - timedelta(hours=2) + auth.SESSION_TTL))
    assert client.get(OPS_VIEW, headers=ops).status_code == 200
    assert session_row().last_used_at == T0  # its use written from now on
    with transaction() as s:
        s.execute(update(ApiSession).values(created_at=T0 - timedelta(days=7),
                                            last_used_at=None))
    assert client.get(OPS_VIEW, headers=ops).status_code == 401
    with transaction() as s:
        s.execute(update(ApiSession).values(created_at=T0 - timedelta(hours=12),
                                            last_used_at=None))
    assert client.get(OPS_VIEW, headers=ops).status_code == 401


@pytest.mark.parametrize(("name", "value", "says"), [
    ("OPS_SESSION_IDLE_HOURS", "0", "OPS_SESSION_IDLE_HOURS must be >= 1, got 0"),
    ("OPS_SESSION_IDLE_HOURS", "73", "OPS_SESSION_IDLE_HOURS must be <= 72, got 73"),
    ("OPS_SESSION_DAYS", "0", "OPS_SESSION_DAYS must be >= 1, got 0"),
    ("OPS_SESSION_DAYS", "31", "OPS_SESSION_DAYS must be <= 30, got 31"),
    ("OPS_SESSION_DAYS", "a week", "OPS_SESSION_DAYS must be an integer"),
])
def test_a_bad_ops_session_setting_stops_the_start(name, value, says):
    with pytest.raises(ConfigError) as err:
        load_settings(sandbox_env(**{name: value}))
    assert says in str(err.value)


def test_an_ops_session_setting_read_bad_is_an_error_not_its_default(monkeypatch):
    monkeypatch.setenv("OPS_SESSION_DAYS", "-1")
    with pytest.raises(ConfigError, match="OPS_SESSION_DAYS"):
        auth.ops_session_max()
    monkeypatch.setenv("OPS_SESSION_DAYS", "3")
    assert auth.ops_session_max() == timedelta(days=3)
    monkeypatch.setenv("OPS_SESSION_IDLE_HOURS", "5")
    assert auth.ops_session_idle() == timedelta(hours=5)


def test_a_last_use_that_cannot_be_written_does_not_refuse_the_operator(client):
    """A database left read-only (a failover): the session is checked all the same; its
    last use stays as written before (it counts as idle from there)."""
    ops, body = sign_in(client, OPERATOR, role="ops")
    token = body["token"]

    def read_only(session, transaction, connection) -> None:  # noqa: ANN001
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")

    at(timedelta(hours=1))
    event.listen(Session, "after_begin", read_only)
    try:
        assert auth.authenticate(token).role == "ops"
    finally:
        event.remove(Session, "after_begin", read_only)
    assert session_row().last_used_at == T0
    assert client.get(OPS_VIEW, headers=ops).status_code == 200
    assert session_row().last_used_at == T0 + timedelta(hours=1)

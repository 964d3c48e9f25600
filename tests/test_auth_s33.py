"""Sign-in races and limits (s33): two asks for one phone's code at once, one IPv6 home
taking the hour's codes, and a verify retried after its answer was lost."""

from __future__ import annotations

import json
import logging
import re
import threading

import pytest
from sqlalchemy import select, text

from core import clock
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage, Person, Point
from core.adapters.redis_conn import redis_client
from core.services import auth, notify, outbox
from tests.test_api import API, book, last_otp, sign_in

pytestmark = pytest.mark.db
PHONE = "+919812311111"


def _ask(client, phone: str = PHONE, ip: str = "198.51.100.1"):
    return client.post(f"{API}/auth/otp", json={"phone": phone},
                       environ_base={"REMOTE_ADDR": ip})


def _codes_going(phone: str) -> list[str]:
    """The codes in the phone's sign-in SMS that may still go (not withdrawn)."""
    with transaction() as s:
        rows = s.execute(select(OutboxMessage.status, OutboxMessage.body)
                         .where(OutboxMessage.to_addr == phone)
                         .order_by(OutboxMessage.id)).all()
    return [re.search(r"\d{6}", body).group(0) for status, body in rows if status != "failed"]


# --- 1. two asks for one phone's code at once ---------------------------------------------

def _someone_waits_for_the_phone_s_turn() -> bool:
    with transaction() as s:
        return bool(s.scalar(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND classid::bigint = :key AND database = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())"), {"key": auth.SIGN_IN_LOCK_KEY}))


def test_two_asks_at_once_for_one_phone_leave_the_code_sent_the_code_that_works(
        app, monkeypatch):
    """A double tap on "send code": ask A stored its code in Redis, ask B stored its own
    and queued its SMS, then A's transaction withdrew B's SMS (still waiting) and queued
    its own. The phone got A's code while Redis held B's: wrong every time, each try
    counted against the day's wrong codes. Now one ask of a phone goes at a time."""
    orig = outbox.withdraw_sign_in_codes
    a_inside, release_a, b_done = threading.Event(), threading.Event(), threading.Event()

    def withdraw(session, phone):
        if threading.current_thread().name == "ask-A":
            a_inside.set()  # A has stored its code; its transaction is open
            assert release_a.wait(20)
        return orig(session, phone)

    monkeypatch.setattr(outbox, "withdraw_sign_in_codes", withdraw)
    answers: dict[str, int] = {}

    def ask(name: str) -> None:
        answers[name] = _ask(app.test_client()).status_code
        if name == "B":
            b_done.set()

    a = threading.Thread(target=ask, args=("A",), name="ask-A")
    a.start()
    assert a_inside.wait(20)
    b = threading.Thread(target=ask, args=("B",), name="ask-B")
    b.start()
    # B either ends while A is held (its code and SMS slipped in between A's) or waits
    # for the phone's turn: only then may A go on.
    for _ in range(2000):
        if b_done.wait(0.01) or _someone_waits_for_the_phone_s_turn():
            break
    release_a.set()
    a.join(20)
    b.join(20)
    assert answers == {"A": 202, "B": 202}
    going = _codes_going(PHONE)
    assert len(going) == 1, going
    r = app.test_client().post(f"{API}/auth/verify", json={"phone": PHONE, "otp": going[0]})
    assert r.status_code == 200, r.get_json()


def test_an_ask_that_fails_after_storing_its_code_leaves_the_code_before_working(
        client, monkeypatch):
    """The database failed after the new code was stored: nothing was queued, nor was the
    earlier code's SMS withdrawn. The earlier code works still; the new one, which no
    SMS carries, is not kept."""
    assert _ask(client).status_code == 202
    first = last_otp(PHONE)

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(notify, "notify_phone", broken)
    with pytest.raises(RuntimeError):
        auth.request_otp(PHONE, "198.51.100.2")
    monkeypatch.undo()
    assert _codes_going(PHONE) == [first]
    r = client.post(f"{API}/auth/verify", json={"phone": PHONE, "otp": first})
    assert r.status_code == 200, r.get_json()


# --- 2. one IPv6 home and the hour's codes --------------------------------------------------

def test_one_home_s_ipv6_prefix_cannot_take_the_hour_s_codes(client):
    """A home line is delegated a /56 (256 /64s); each /64 was a client of its own with
    20 codes an hour: 30 of them filled SIGNIN_CODES_PER_HOUR (600) and nobody anywhere
    could sign in for the hour. A /56 now gets 40 codes an hour, a /48 100."""
    sent = [_ask(client, f"+9198{i:08d}", f"2001:db8:0:ab0{i // 20}::{i % 20 + 1:x}")
            .status_code for i in range(60)]  # three /64s of one /56, 20 each
    assert sent == [202] * 40 + [429] * 20
    # Another /56 of the same /48 has its own 40; the /48 then has 100.
    more = [_ask(client, f"+9197{i:08d}", f"2001:db8:0:{0xac + i // 20:x}00::{i % 20 + 1:x}")
            .status_code for i in range(80)]  # 4 /56s, 20 each: 60 + 20 refused
    assert more == [202] * 60 + [429] * 20
    assert _ask(client, "+919812399999", "2001:db8:1::1").status_code == 202  # another /48
    assert _ask(client, "+919812399998", "198.51.100.9").status_code == 202


def test_a_refused_ask_takes_nothing_from_the_wider_prefixes(client, monkeypatch):
    monkeypatch.setattr(auth, "SENDS_PER_IP", (2, 3600))
    monkeypatch.setattr(auth, "SENDS_PER_IPV6_56", (3, 3600))
    monkeypatch.setattr(auth, "SENDS_PER_IPV6_48", (5, 3600))
    home = [_ask(client, f"+91981234000{i}", f"2001:db8:7:100::{i + 1}").status_code
            for i in range(4)]
    assert home == [202, 202, 429, 429]  # the /64's limit: the /56 counted 2
    beside = [_ask(client, f"+91981234001{i}", f"2001:db8:7:101::{i + 1}").status_code
              for i in range(3)]
    assert beside == [202, 429, 429]  # the /56's 3
    site = [_ask(client, f"+91981234002{i}", f"2001:db8:7:{0x200 + i:x}::1").status_code
            for i in range(3)]
    assert site == [202, 202, 429]  # the /48's 5
    assert auth._send_limits("198.51.100.7") == [
        (f"otp-send-ip:{auth._ip_tag('198.51.100.7')}", auth.SENDS_PER_IP)]
    assert [k for k, _ in auth._send_limits("[2001:db8:7:1ff:1:2:3:4]:443")] == [
        f"otp-send-ip:{auth._ip_tag(net)}" for net in (
            "2001:db8:7:1ff::/64", "2001:db8:7:100::/56", "2001:db8:7::/48")]


@pytest.fixture
def cap_of_twelve(monkeypatch):
    from core.config import reset_settings

    monkeypatch.setenv("SIGNIN_CODES_PER_HOUR", "12")
    reset_settings()
    yield
    monkeypatch.delenv("SIGNIN_CODES_PER_HOUR")
    reset_settings()


def test_a_flood_of_unknown_numbers_leaves_room_for_the_people_we_know(
        client, cap_of_twelve, caplog):
    """Made-up numbers from many addresses filled SIGNIN_CODES_PER_HOUR, and every
    sign-in everywhere got 429 for the hour: operators', partners', customers'. A
    quarter of the hour's codes is kept for numbers we know."""
    clock.freeze(clock.now())
    customer = "+919812355501"
    with transaction() as s:  # the service area: a Point open at Bettiah (test_api's)
        s.add(Point(name="Bettiah", lat=26.80228, lng=84.51522, pincode="845438",
                    active=True))
    headers = sign_in(client, customer)
    booked = book(client, headers)
    assert booked.status_code == 201, booked.get_json()
    with transaction() as s:
        s.add(Person(phone="+919812355502", role="ops"))
        s.add(Person(phone="+919812355503", role="partner"))
        s.add(Person(phone="+919812355504", role="customer"))  # never booked: unknown
    caplog.set_level(logging.WARNING)
    # 1 code went (the customer's sign-in); unknown numbers may take 9 of the 12.
    flood = [_ask(client, f"+91981236{i:04d}", f"203.0.113.{i + 1}").status_code
             for i in range(10)]
    assert flood == [202] * 8 + [429] * 2
    assert _ask(client, "+919812355504", "203.0.113.200").status_code == 429
    known = [_ask(client, phone, f"198.51.100.{i + 20}").status_code
             for i, phone in enumerate((customer, "+919812355502", "+919812355503"))]
    assert known == [202, 202, 202]
    refused = _ask(client, "+919812355502", "198.51.100.30")  # the whole hour's 12 now
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 3600
    warned = [rec for rec in caplog.records if "SIGNIN_CODES_PER_HOUR" in rec.getMessage()]
    assert len(warned) == 1


# --- 3. a verify retried after its answer was lost -----------------------------------------

def _verify(client, code: str, key: str | None = "k-1", ip: str = "198.51.100.1"):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post(f"{API}/auth/verify", json={"phone": PHONE, "otp": code},
                       headers=headers, environ_base={"REMOTE_ADDR": ip})


def test_a_verify_retried_after_a_lost_answer_gets_the_same_session(client, caplog):
    """POST /auth/verify used the code up and made a session; the same request again (its
    answer lost on rural data) was told 401 otp_invalid, "the code is wrong or has
    expired": the customer asked for another SMS and typed again."""
    caplog.set_level(logging.DEBUG)
    assert _ask(client).status_code == 202
    code = last_otp(PHONE)
    first = _verify(client, code)
    assert first.status_code == 200
    again = _verify(client, code)  # the app's retry, seconds later
    assert again.status_code == 200, again.get_json()
    assert again.get_json() == first.get_json()  # the same token, of the same session
    token = {"Authorization": f"Bearer {again.get_json()['token']}"}
    assert client.get(f"{API}/me", headers=token).status_code == 200
    with transaction() as s:
        assert s.scalar(text("SELECT count(*) FROM api_sessions")) == 1
    logged = json.dumps([vars(rec) for rec in caplog.records], default=str)
    assert code not in logged and first.get_json()["token"] not in logged
    assert PHONE not in logged
    # Kept 2 minutes at most; then the code is simply spent.
    used = auth._used_key(PHONE)
    assert 0 < redis_client().pttl(used) <= 120_000
    redis_client().delete(used)  # 2 minutes later
    late = _verify(client, code)
    assert late.status_code == 401 and late.get_json()["error"]["code"] == "otp_invalid"


def test_a_used_code_alone_gets_no_session(client):
    """The code is in an SMS others may see: a used one gets the session only with the
    first verify's key, from its network; else 401 otp_used, which the app can act on."""
    assert _ask(client).status_code == 202
    code = last_otp(PHONE)
    assert _verify(client, code).status_code == 200
    for other in (dict(key=None), dict(key="k-2"), dict(ip="203.0.113.5"),
                  dict(ip="203.0.113.5", key=None)):
        r = _verify(client, code, **other)
        assert r.status_code == 401 and r.get_json()["error"]["code"] == "otp_used", other
    # Without a key at first, no retry gets the session (test_api: a code works once).
    redis_client().flushdb()
    assert _ask(client).status_code == 202
    code = last_otp(PHONE)
    assert _verify(client, code, key=None).status_code == 200
    for key in (None, "k-1"):
        r = _verify(client, code, key=key)
        assert r.status_code == 401 and r.get_json()["error"]["code"] == "otp_used"


def test_guesses_against_the_used_code_count_as_wrong_codes(client):
    assert _ask(client).status_code == 202
    code = last_otp(PHONE)
    assert _verify(client, code).status_code == 200
    wrong = "000000" if code != "000000" else "111111"
    r = _verify(client, wrong)
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "otp_invalid"
    assert int(redis_client().get(auth._failures_key(PHONE))) == 1
    redis_client().set(auth._failures_key(PHONE), 10, ex=86400)
    r = _verify(client, code)  # the day's wrong codes are spent: no session, even so
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "rate_limited"


def test_a_signed_out_session_is_not_given_back_by_a_retry(client):
    assert _ask(client).status_code == 202
    code = last_otp(PHONE)
    token = {"Authorization": f"Bearer {_verify(client, code).get_json()['token']}"}
    assert client.post(f"{API}/auth/logout", headers=token).status_code == 204
    r = _verify(client, code)
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "otp_used"


def test_a_new_code_ends_the_retry_of_the_last(client):
    assert _ask(client).status_code == 202
    code = last_otp(PHONE)
    assert _verify(client, code).status_code == 200
    assert _ask(client).status_code == 202  # a new sign-in
    assert not redis_client().exists(auth._used_key(PHONE))


@pytest.mark.parametrize("key", ["", " ", "x" * 101, "a\tb"])
def test_a_bad_key_on_verify_is_a_precise_422(client, key):
    r = client.post(f"{API}/auth/verify", json={"phone": PHONE, "otp": "123456"},
                    headers={"Idempotency-Key": key})
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "Idempotency-Key"


def test_verify_declares_its_key(client):
    paths = client.get(f"{API}/openapi.json").get_json()["paths"]
    params = paths[f"{API}/auth/verify"]["post"]["parameters"]
    assert [p["name"] for p in params if p["in"] == "header"] == ["Idempotency-Key"]


def test_a_double_tap_on_verify_gets_one_session_for_both(client, monkeypatch):
    """Two verifies of one code at once: both found it right, one used it first; the
    other was told the code is wrong (and a wrong code of the day was counted)."""
    assert _ask(client).status_code == 202
    code = last_otp(PHONE)
    real = auth.run_script
    other: dict[str, object] = {}

    def racing(r, source, keys, args):
        if source == auth._USE_CODE and not other:
            other["started"] = True
            other["answer"] = _verify(client, code)  # the other tap, done first
        return real(r, source, keys, args)

    monkeypatch.setattr(auth, "run_script", racing)
    second = _verify(client, code)
    first = other["answer"]
    assert first.status_code == 200 and second.status_code == 200, second.get_json()
    assert second.get_json() == first.get_json()
    assert not redis_client().exists(auth._failures_key(PHONE))
    # Without a key, the later of the two is told the code was used, not that it is wrong.
    redis_client().flushdb()
    other.clear()
    assert _ask(client).status_code == 202
    code = last_otp(PHONE)
    second = _verify(client, code, key=None)
    assert other["answer"].status_code == 200
    assert second.status_code == 401 and second.get_json()["error"]["code"] == "otp_used"

"""Session 30 (H5): request ids, sign-in code limits, erasure of contact-only recipients,
landmark cuts in erasure, start-up checks, a Redis loading its dataset, `serve`'s line."""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import urlencode

import pytest

from tests.test_dispatch import frozen  # noqa: F401 (fixture)

_RID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


# 1. X-Request-Id is taken from the caller only when it is a short safe token.
@pytest.mark.parametrize("given", [
    'abc\n{"level": "critical", "msg": "forged"}',
    "x" * 65,
    'req"id',
    "req id with spaces",
    "",
])
def test_an_unsafe_request_id_is_replaced_by_our_own(client, given):
    """A caller's X-Request-Id goes into every log line of the request and back in the
    answer's header: a newline (a forged log line for a plain-text reader), a quote, a
    long value was taken as is (cut to 64). Now our own id is used instead."""
    from core.logs import JsonFormatter

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(JsonFormatter().format(record))

    logger = logging.getLogger("core.web.twilio_request")
    handler = Keep(level=logging.WARNING)
    logger.addHandler(handler)
    params = {"MessageSid": "SMs30rid", "Body": "ON", "From": "+919000000001",
              "To": "+15005550006"}
    try:
        # As the WSGI server passes the header (the test client refuses a newline in one).
        r = client.post("/webhooks/sms", data=urlencode(params),
                        headers={"X-Twilio-Signature": "not-the-signature",
                                 "Content-Type": "application/x-www-form-urlencoded"},
                        environ_overrides={"HTTP_X_REQUEST_ID": given})
    finally:
        logger.removeHandler(handler)
    assert r.status_code == 403
    answered = r.headers["X-Request-Id"]
    assert _RID.fullmatch(answered), answered
    assert answered != given and answered not in given
    logged = [json.loads(line).get("request_id") for line in lines]
    assert logged and logged == [answered] * len(logged), (answered, logged)


@pytest.mark.parametrize("given", ["3722af7113794544", "a" * 64, "lb-1.req:42_x"])
def test_a_safe_request_id_is_kept(client, given):
    r = client.get("/healthz", headers={"X-Request-Id": given})
    assert r.headers["X-Request-Id"] == given


# 2. Sign-in codes: all of them together are capped per hour (SMS pumping).
API = "/api/v1"


def _ask(client, phone: str, ip: str):
    return client.post(f"{API}/auth/otp", json={"phone": phone},
                       environ_base={"REMOTE_ADDR": ip})


@pytest.fixture
def cap_of_three(monkeypatch):
    from core.config import reset_settings

    monkeypatch.setenv("SIGNIN_CODES_PER_HOUR", "3")
    reset_settings()
    yield
    monkeypatch.delenv("SIGNIN_CODES_PER_HOUR")
    reset_settings()


def test_sign_in_codes_over_the_hour_s_cap_are_refused(client, cap_of_three, caplog):
    """Codes to many numbers from many addresses passed every per-phone and per-address
    limit: nothing capped the SMS sent in all (SMS pumping). Over SIGNIN_CODES_PER_HOUR
    a new code is refused (429, Retry-After), with one warning and no phone number."""
    from datetime import timedelta

    from core import clock

    start = clock.now()
    clock.freeze(start)
    caplog.set_level(logging.WARNING)
    answers = [_ask(client, f"+91981230{i:04d}", f"198.51.100.{i + 1}") for i in range(5)]
    assert [r.status_code for r in answers] == [202, 202, 202, 429, 429]
    refused = answers[3]
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    warned = [rec for rec in caplog.records if "SIGNIN_CODES_PER_HOUR" in rec.getMessage()]
    assert len(warned) == 1
    assert not any("98123" in json.dumps(vars(rec), default=str) for rec in caplog.records)
    # The refused asks took nothing: an hour after the first codes, three more go.
    clock.freeze(start + timedelta(seconds=3601))
    assert [_ask(client, f"+91981231{i:04d}", f"198.51.100.{i + 1}").status_code
            for i in range(4)] == [202, 202, 202, 429]


def test_an_ask_the_address_limit_refuses_takes_none_of_the_hour_s_codes(
        client, cap_of_three, monkeypatch):
    from core.services import auth

    monkeypatch.setattr(auth, "SENDS_PER_IP", (1, 3600))
    assert _ask(client, "+919812320001", "2001:db8:5:6::1").status_code == 202
    # The same /64 (an IPv6 client rotates addresses inside it): refused by the address.
    for i in range(4):
        r = _ask(client, f"+91981232001{i}", f"2001:db8:5:6::{i + 2:x}")
        assert r.status_code == 429
    assert [_ask(client, f"+91981232002{i}", f"203.0.113.{i + 1}").status_code
            for i in range(3)] == [202, 202, 429]


# 3. erase-recipient and a row her STOP or her call made.
def test_a_recipient_whose_only_contact_was_a_stop_is_erased_by_her_number(
        client, live, frozen):  # noqa: F811
    """Sita received a parcel and sent STOP: that made a Person row for her number (no
    booking, no partner profile, no sign-in). erase-recipient refused her with 409
    has_account; she holds no account: she is erased, and her STOP stays (a hash)."""
    from sqlalchemy import select

    from core.adapters.db import transaction
    from core.adapters.models import Booking, NumberOptOut, Person
    from core.services import outbox, retention
    from tests.conftest import run_jobs
    from tests.test_dispatch import RECIPIENT as SITA
    from tests.test_dispatch import paid_booking, sms

    booking_id = paid_booking()
    with transaction() as s:
        s.get(Booking, booking_id).status = "cancelled"
    sms(client, SITA, "STOP")
    run_jobs()
    with transaction() as s:
        (pid,) = s.scalars(select(Person.id).where(Person.phone == SITA))
    with transaction() as s:
        done = retention.erase_recipient(s, SITA, actor="ops:1", reason="she asked")
    assert done.changed and done.booking_ids == [booking_id]
    with transaction() as s:
        person = s.get(Person, pid)
        assert (person.phone, person.name, person.role) == (None, None, "customer")
        assert s.get(Booking, booking_id).recipient_phone is None
        kept = s.get(NumberOptOut, outbox.number_hash(SITA))
        assert kept is not None and kept.sms
    with transaction() as s:
        again = retention.erase_recipient(s, SITA, actor="ops:1", reason="asked again")
    assert not again.changed


def test_a_recipient_who_only_called_is_erased_and_an_account_still_refused(client, live):
    from sqlalchemy import select

    from core.adapters.db import transaction
    from core.adapters.models import Conversation, Person
    from core.domain.errors import Conflict
    from core.services import retention
    from tests.test_api import sign_in
    from tests.test_ivr import Caller

    caller = Caller(client, phone="+919812300177")
    caller.call()
    caller.hang_up()
    with transaction() as s:
        (pid,) = s.scalars(select(Person.id).where(Person.phone == caller.phone))
    with transaction() as s:
        done = retention.erase_recipient(s, caller.phone, actor="ops:1", reason="asked")
    assert done.changed and done.booking_ids == []
    with transaction() as s:
        assert s.get(Person, pid).phone is None
        assert not s.scalars(select(Conversation).where(
            Conversation.contact == caller.phone)).all()
    # One who signed in to the app holds an account: erased by their person id.
    sign_in(client, "+919812300178")
    with transaction() as s, pytest.raises(Conflict) as refused:
        retention.erase_recipient(s, "+919812300178", actor="ops:1", reason="asked")
    assert refused.value.code == "has_account"


# 4. Erasure finds a landmark in the SMS that cut it shorter than a rider's SMS does.
def test_the_cuts_an_erasure_looks_for_go_down_to_the_offers_shortest():
    from core.services import dispatch, retention

    whole = "Sitaram Kirana Store behind the water tank"
    cuts = retention._cut_in_sms(None, None, whole)
    # place() cuts it to 30; an offer that does not fit cuts that further, to 12.
    assert "Sitaram Kirana Store behind" in cuts
    shortest = dispatch.short_place_name(dispatch.booked_place_name(None, None, whole),
                                         dispatch.OFFER_PLACE_MIN)
    assert shortest == "Sitaram..." and shortest in cuts
    # Too short to say where a door is, and found in others' texts: not looked for.
    short = retention._cut_in_sms(None, None, "Opp. Government Girls High School")
    assert dispatch.short_place_name("Opp. Government Girls High School", 12) == "Opp...."
    assert "Opp...." not in short
    assert all(len(c.removesuffix(dispatch.CUT_MARK)) >= retention.MIN_PLACE for c in short)
    # With a village, offers drop the landmark rather than cut it below place()'s cut.
    assert retention._cut_in_sms("Bettiah HO", "845438", whole) == {
        "Bettiah, Sitaram Kirana"}


def test_erasure_finds_her_landmark_as_a_job_offer_cut_it(client, live, frozen):  # noqa: F811
    from sqlalchemy import select

    from core.adapters.db import transaction
    from core.adapters.models import Booking, OutboxMessage
    from core.services import retention
    from tests.test_dispatch import RECIPIENT as SITA
    from tests.test_dispatch import paid_booking

    booking_id = paid_booking()
    with transaction() as s:
        b = s.get(Booking, booking_id)
        b.status = "cancelled"
        b.drop_post_office = b.drop_pincode = None  # a place given by its landmark alone
        b.drop_landmark = "Sitaram Kirana Store behind the water tank"
        bodies = {"cut": "Job 71: Laxmipur -> Sitaram... 4.1 km. Reply 1 to take it",
                  "other": "Job 72: Laxmipur -> Opp.... 2.0 km. Reply 1 to take it"}
        for key, body in bodies.items():
            s.add(OutboxMessage(channel="sms", to_addr="+919812399001",
                                from_addr="+15005550006", body=body, status="sent",
                                booking_id=booking_id, dedupe_key=f"s30-{key}"))
    with transaction() as s:
        retention.erase_recipient(s, SITA, actor="ops:1", reason="she asked")
    with transaction() as s:
        kept = dict(s.execute(select(OutboxMessage.dedupe_key, OutboxMessage.body).where(
            OutboxMessage.dedupe_key.like("s30-%"))).tuples().all())
    assert "Sitaram" not in kept["s30-cut"]
    assert kept["s30-other"] == bodies["other"]  # "Opp...." is not hers to erase


# 5. Start-up checks.
def test_production_refuses_a_twilio_account_sid_that_is_not_one():
    from tests.test_config_production import production_env, refusal

    for wrong in ("SK" + "0123456789abcdef" * 2, "AC0123456789abcdef0123", "ACnot-hex" * 4):
        lines = refusal(production_env(TWILIO_ACCOUNT_SID=wrong))
        assert any(line.startswith("TWILIO_ACCOUNT_SID must be the account's SID")
                   for line in lines), lines
        assert not any(wrong in line for line in lines)


@pytest.mark.parametrize(("raw", "fork"), [("on", True), ("ON", True), ("1", True),
                                           ("true", True), ("off", False), ("0", False),
                                           ("false", False), ("", False)])
def test_rq_fork_per_job_takes_on_and_off(raw, fork):
    from core.config import load_settings
    from tests.test_config_production import production_env

    assert load_settings(production_env(RQ_FORK_PER_JOB=raw)).rq_fork_per_job is fork


def test_rq_fork_per_job_refuses_what_it_does_not_understand():
    from tests.test_config_production import production_env, refusal

    lines = refusal(production_env(RQ_FORK_PER_JOB="fork"))
    assert any(line.startswith("RQ_FORK_PER_JOB must be on or off") for line in lines)


def test_a_misspelled_ivr_voice_language_is_refused_by_name():
    from core.config import load_settings
    from tests.test_config_production import production_env, refusal

    lines = refusal(production_env(IVR_VOICE_HN="Google.hi-IN-Wavenet-A",
                                   IVR_VOICE_TA="Google.ta-IN-Standard-B"))
    assert [line for line in lines if "IVR_VOICE" in line] == [
        "IVR_VOICE_HN: no such language; IVR_VOICE_<LANG> takes one of "
        "HI, EN, BN, MR, TA, TE, GU, KN"]
    assert load_settings(production_env(IVR_VOICE_TA="Google.ta-IN-Standard-B"))


def test_the_web_warns_when_the_pools_can_exceed_max_connections(database):
    from core import config

    url = config.get_settings().database_url
    assert config.connection_budget_warning(url, {}) is None  # 4 x (5 + 5)
    big = {"WEB_CONCURRENCY": "64", "WEB_THREADS": "32", "WORKER_PROCESSES": "8"}
    assert config.connections_wanted(big) == 72 * 37
    said = config.connection_budget_warning(url, big)
    assert said is not None and "max_connections" in said and "2664" in said
    # A database that does not answer is /readyz's to say: no warning, no failure.
    assert config.connection_budget_warning(
        "postgresql+psycopg://postgres@127.0.0.1:1/none", big) is None


# 6. A Redis still loading its dataset (after a restart) is away, not ready.
@pytest.fixture
def loading_redis(tmp_path):
    """A redis-server of the test's own, restarted on a dump it loads slowly
    (key-load-delay, Redis's own testing knob): it answers LOADING meanwhile. Stopped
    before it ends loading; nothing waits for a time of the clock under test."""
    import subprocess
    import time

    import redis

    from ops import embedded

    sock = tmp_path / "r.sock"
    base = [embedded.redis_executable(), "--port", "0", "--unixsocket", str(sock),
            "--dir", str(tmp_path), "--appendonly", "no", "--rdbcompression", "no"]

    def start(*extra: str) -> subprocess.Popen:
        server = subprocess.Popen([*base, *extra], stdout=subprocess.DEVNULL)
        for _ in range(500):  # until its socket answers (a state of another process)
            if sock.exists():
                return server
            time.sleep(0.01)
        server.kill()
        pytest.fail("redis-server did not start")

    server = start()
    client = redis.Redis(unix_socket_path=str(sock))
    for _ in range(500):
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.01)
    # 20 MB of dump: a loading server answers clients between its 2 MB reads; at 50 ms a
    # key (20 keys a read), within a second, for the 10 s it takes to load.
    client.execute_command("DEBUG", "POPULATE", 200, "k", 100_000)
    client.save()
    client.close()
    server.terminate()
    server.wait()
    sock.unlink(missing_ok=True)
    server = start("--key-load-delay", "50000")
    # As core.adapters.redis_conn.redis_client makes the service's client.
    loading = redis.Redis.from_url(f"unix://{sock}", socket_connect_timeout=2,
                                   socket_timeout=5, health_check_interval=30)
    with pytest.raises(redis.exceptions.BusyLoadingError):
        loading.set("probe", "1")
    try:
        yield loading
    finally:
        loading.close()
        server.kill()
        server.wait()


def test_a_redis_loading_its_data_is_away_for_webhooks_and_readyz(client, monkeypatch,
                                                                  loading_redis):
    from core.services import inbound
    from core.web import ops as web_ops
    from tests.conftest import post_twilio

    monkeypatch.setattr(inbound, "redis_client", lambda: loading_redis)
    monkeypatch.setattr(web_ops, "redis_client", lambda: loading_redis)
    msg = {"MessageSid": "SMloading1", "AccountSid": "ACsandbox",
           "From": "whatsapp:+919812300075", "To": "whatsapp:+14155238886", "Body": "hi",
           "NumMedia": "0", "WaId": "919812300075", "ProfileName": "Asha"}
    hook = post_twilio(client, "/webhooks/whatsapp", msg)
    assert hook.status_code == 200, hook.get_data(as_text=True)  # parked (session 34)
    ready = client.get("/readyz")
    assert ready.status_code == 503, ready.get_json()
    assert ready.get_json()["checks"]["redis"].startswith("down"), ready.get_json()


# 7. `./run serve` says where it serves, BIND_HOST's address too.
def test_serve_says_it_serves_at_the_bound_address(capsys):
    import http.server
    import os
    import threading
    from pathlib import Path

    from ops import embedded
    from ops.supervisor import Child, Output, Server, web_address

    assert web_address("") == web_address("0.0.0.0") == "127.0.0.1"
    assert web_address("[::]") == "[::1]" and web_address("10.0.0.5") == "10.0.0.5"
    # A web bound to 127.0.0.2 only (BIND_HOST=127.0.0.2): nothing answers on 127.0.0.1.
    httpd = http.server.HTTPServer(("127.0.0.2", 0), http.server.BaseHTTPRequestHandler)
    port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    server = Server(Path("Procfile"))
    server.raise_on_signal = False
    server.output = Output(["web"])
    child = Child.start("web", "sleep 60", dict(os.environ), server.output)
    server.children.append(child)
    out: list[int] = []
    host = web_address("127.0.0.2")
    t = threading.Thread(target=lambda: out.append(server._watch(
        embedded.Services(env={}), port, True, host)), daemon=True)
    said = ""
    try:
        t.start()
        for _ in range(100):  # the loop probes every half second
            said += capsys.readouterr().out
            if "serving at" in said:
                break
            t.join(0.1)
        assert f"RideChain is serving at http://127.0.0.2:{port} " in said, said
    finally:
        server.stop_requested = True
        t.join(5)
        child.kill()
        child.process.wait()
        httpd.shutdown()
        httpd.server_close()

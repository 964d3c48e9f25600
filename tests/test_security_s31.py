"""Session 31, secrets, logs and erasure:

1. An old webhook secret (RAZORPAY_WEBHOOK_SECRET_PREVIOUS, TWILIO_AUTH_TOKEN_SECONDARY)
   verified webhooks for ever once set: it now ends at its <NAME>_UNTIL (the service
   clock), production asks for one, at most 7 days ahead; a webhook signed with it after
   that is refused and counted on /metrics, and the end is warned of once.
2. Logs: a forking worker's job logs JSON whoever started the worker; RQ's DEBUG line
   with a job's return value is not written; a signed S3 URL (Twilio's media redirect)
   never reaches a log line.
3. erase-recipient judges a sign-in by the API sessions' rows: pinned that they outlive
   expiry, sign-out, revocation and retention's runs (no purge deletes them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core import clock
from core.config import ConfigError, get_settings, load_settings, reset_settings
from tests.conftest import post_twilio
from tests.test_config_urls import production_env
from tests.test_twilio_shared_key import PATH, sign, wa

T0 = datetime(2026, 12, 5, 6, 30, tzinfo=UTC)
OLD_HOOK = "old-webhook-secret-0123456789abcdef"
OLD_TOKEN = "f9e8d7c6b5a4938271605f4e3d2c1b0a"
ENDED = "an old webhook secret has ended and verifies nothing now; remove it"


def hook_signature(body: str, secret: str) -> str:
    import hmac

    return hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()


@pytest.fixture
def old_secrets_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Both old secrets set, ending a day after T0 (India time written out); clock at T0."""
    from core.web import old_secrets

    clock.freeze(T0)
    monkeypatch.setenv("RAZORPAY_WEBHOOK_SECRET_PREVIOUS", OLD_HOOK)
    monkeypatch.setenv("RAZORPAY_WEBHOOK_SECRET_PREVIOUS_UNTIL", "2026-12-06T12:00+05:30")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN_SECONDARY", OLD_TOKEN)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN_SECONDARY_UNTIL", "2026-12-06T06:30:00Z")
    reset_settings()
    old_secrets.forget_warnings()
    yield
    monkeypatch.undo()
    reset_settings()
    clock.freeze(None)
    old_secrets.forget_warnings()


def expired_count(client, setting: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    found = re.search(rf'^webhook_expired_secret_total{{setting="{setting}"}} (\S+)$', text,
                      re.M)
    return float(found.group(1)) if found else 0.0


def post_razorpay(client, body: str, secret: str, event_id: str):
    return client.post("/webhooks/razorpay", data=body.encode(), headers={
        "Content-Type": "application/json", "X-Razorpay-Event-Id": event_id,
        "X-Razorpay-Signature": hook_signature(body, secret)})


def ended_warnings(caplog: pytest.LogCaptureFixture, setting: str) -> int:
    return sum(1 for r in caplog.records
               if r.getMessage() == ENDED and getattr(r, "setting", None) == setting)


# --- 1. old secrets end -------------------------------------------------------------------


def test_the_settings_give_the_old_secrets_until_their_end_and_none_after(old_secrets_env):
    s = get_settings()
    assert s.razorpay_webhook_previous == (OLD_HOOK,)
    assert s.twilio_auth_token_secondary == (OLD_TOKEN,)
    clock.freeze(datetime(2026, 12, 6, 6, 29, 59, tzinfo=UTC))  # 11:59:59 India time
    assert s.razorpay_webhook_previous == (OLD_HOOK,)
    assert s.twilio_auth_token_secondary == (OLD_TOKEN,)
    clock.freeze(datetime(2026, 12, 6, 6, 30, tzinfo=UTC))  # both ends, to the second
    assert s.razorpay_webhook_previous == () and s.twilio_auth_token_secondary == ()
    # The current secrets do not end.
    body = json.dumps({"event": "payment.captured", "payload": {}})
    from core.adapters import razorpay_gateway as gw

    assert gw.verify_webhook(body, hook_signature(body, s.razorpay_webhook_secret))
    assert not gw.verify_webhook(body, hook_signature(body, OLD_HOOK))


def test_a_razorpay_webhook_signed_with_the_old_secret_is_refused_after_its_end(
        client, old_secrets_env, caplog):
    body = '{"entity":"event","event":"payment.failed","payload":{"payment":{"entity":' \
           '{"id":"pay_old1","amount":5000,"notes":{}}}}}'
    before = expired_count(client, "RAZORPAY_WEBHOOK_SECRET_PREVIOUS")
    assert post_razorpay(client, body, OLD_HOOK, "evt_old_1").status_code == 200
    assert ended_warnings(caplog, "RAZORPAY_WEBHOOK_SECRET_PREVIOUS") == 0
    clock.freeze(T0 + timedelta(days=1, hours=1))
    with caplog.at_level(logging.WARNING):
        assert post_razorpay(client, body, OLD_HOOK, "evt_old_2").status_code == 403
        assert post_razorpay(client, body, OLD_HOOK, "evt_old_3").status_code == 403
        # The current secret still verifies (a new event id: not a duplicate).
        current = get_settings().razorpay_webhook_secret
        assert post_razorpay(client, body, current, "evt_old_4").status_code == 200
        # Another secret altogether: refused, not counted as the old one's.
        assert post_razorpay(client, body, "not-ours-0123456789abcdef0123", "evt_old_5"
                             ).status_code == 403
    assert expired_count(client, "RAZORPAY_WEBHOOK_SECRET_PREVIOUS") == before + 2
    assert ended_warnings(caplog, "RAZORPAY_WEBHOOK_SECRET_PREVIOUS") == 1  # once
    marked = [r for r in caplog.records if r.getMessage() == "bad razorpay signature"]
    assert [getattr(r, "expired_secret", None) for r in marked] == [
        "RAZORPAY_WEBHOOK_SECRET_PREVIOUS", "RAZORPAY_WEBHOOK_SECRET_PREVIOUS", None]
    assert OLD_HOOK not in caplog.text


def test_a_twilio_webhook_signed_with_the_secondary_token_is_refused_after_its_end(
        client, old_secrets_env, caplog):
    params = wa("hi", "SMold1")
    assert post_twilio(client, PATH, params,
                       signature=sign(OLD_TOKEN, hashlib.sha1, params)).status_code == 200
    before = expired_count(client, "TWILIO_AUTH_TOKEN_SECONDARY")
    clock.freeze(T0 + timedelta(days=2))
    with caplog.at_level(logging.WARNING):
        for sid in ("SMold2", "SMold3"):
            params = wa("hi", sid)
            r = post_twilio(client, PATH, params, signature=sign(OLD_TOKEN, hashlib.sha1,
                                                                 params))
            assert r.status_code == 403
        params = wa("hello", "SMold4")  # the auth token's signature still passes
        assert post_twilio(client, PATH, params).status_code == 200
    assert expired_count(client, "TWILIO_AUTH_TOKEN_SECONDARY") == before + 2
    assert ended_warnings(caplog, "TWILIO_AUTH_TOKEN_SECONDARY") == 1
    assert OLD_TOKEN not in caplog.text


@pytest.mark.parametrize("name", ["RAZORPAY_WEBHOOK_SECRET_PREVIOUS",
                                  "TWILIO_AUTH_TOKEN_SECONDARY"])
def test_production_asks_for_the_old_secrets_end(name):
    value = "old-one-7f6e5d4c3b2a10ff" if name.startswith("RAZORPAY") else OLD_TOKEN
    with pytest.raises(ConfigError) as refused:
        load_settings(production_env(**{name: value}))
    assert str(refused.value).splitlines() == [
        f"{name}_UNTIL is required in production with {name}: when the old secret stops "
        "verifying webhooks, at most 7 days ahead (e.g. 2026-12-12T18:00+05:30)"]
    until = (clock.now() + timedelta(days=2)).isoformat()
    s = load_settings(production_env(**{name: value, f"{name}_UNTIL": until}))
    assert (value,) in (s.razorpay_webhook_previous, s.twilio_auth_token_secondary)
    # Its end alone, without the secret, is nothing to refuse.
    assert load_settings(production_env(**{f"{name}_UNTIL": until}))


@pytest.mark.parametrize(("until", "says"), [
    ("next tuesday", "must be an ISO 8601 date and time with its UTC offset"),
    ("2026-12-07T18:00", "has no UTC offset"),
    ("2026-12-07", "has no UTC offset"),
    ("2026-12-13T00:00+05:30", "is more than 7 days ahead"),
    ("2027-12-06T00:00Z", "is more than 7 days ahead"),
])
@pytest.mark.parametrize("name", ["RAZORPAY_WEBHOOK_SECRET_PREVIOUS",
                                  "TWILIO_AUTH_TOKEN_SECONDARY"])
@pytest.mark.parametrize("app_env", ["production", "sandbox"])
def test_a_bad_end_is_refused_at_start_naming_the_setting(name, until, says, app_env):
    clock.freeze(T0)
    try:
        value = "old-one-7f6e5d4c3b2a10ff" if name.startswith("RAZORPAY") else OLD_TOKEN
        env = {name: value, f"{name}_UNTIL": until}
        env = production_env(**env) if app_env == "production" else {
            **{k: v for k, v in os.environ.items()}, **env}
        with pytest.raises(ConfigError) as refused:
            load_settings(env)
        (line,) = str(refused.value).splitlines()
        assert line.startswith(f"{name}_UNTIL ") and says in line
        assert value not in line
    finally:
        clock.freeze(None)


def test_an_end_already_past_is_taken_the_old_secret_verifying_nothing():
    """A restart after the end must not fail the service: the secret just verifies
    nothing (and the web warns once)."""
    clock.freeze(T0)
    try:
        s = load_settings(production_env(
            RAZORPAY_WEBHOOK_SECRET_PREVIOUS="old-one-7f6e5d4c3b2a10ff",
            RAZORPAY_WEBHOOK_SECRET_PREVIOUS_UNTIL="2026-12-01T00:00+05:30"))
        assert s.razorpay_webhook_previous_keys == ("old-one-7f6e5d4c3b2a10ff",)
        assert s.razorpay_webhook_previous == ()
    finally:
        clock.freeze(None)


def test_sandbox_keeps_an_old_secret_without_an_end():
    env = {**os.environ, "RAZORPAY_WEBHOOK_SECRET_PREVIOUS": OLD_HOOK}
    env.pop("RAZORPAY_WEBHOOK_SECRET_PREVIOUS_UNTIL", None)
    assert load_settings(env).razorpay_webhook_previous == (OLD_HOOK,)


# --- 2. logs ---------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
PHONE = "+919812345678"


def not_json(text: str) -> list[str]:
    bad = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            bad.append(line)
    return bad


def run_worker(args: list[str], **env: str) -> tuple[str, str]:
    done = subprocess.run(args, cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def test_a_forked_jobs_warning_is_a_json_line(clean_db):
    """With RQ_FORK_PER_JOB on, a Python warning raised in a job's process (a library's,
    or the job's own) was printed to stderr as plain text, with whatever it said."""
    from core.adapters.queue import queue

    queue("default").enqueue("warnings.warn", f"photo for {PHONE} is slow")
    queue("default").enqueue("logging.warning", "the job logs %s", "its own line")
    out, err = run_worker([sys.executable, "-m", "core.cli", "worker", "--burst"],
                          RQ_FORK_PER_JOB="1", LOG_LEVEL="INFO")
    assert not_json(out) == [] and not_json(err) == []
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    warned = [r for r in records if r["logger"] == "py.warnings"]
    assert len(warned) == 1 and "is slow" in warned[0]["msg"]
    assert PHONE not in out + err and "+91******5678" in warned[0]["msg"]
    assert any(r["msg"] == "the job logs its own line" and r.get("job_id") for r in records)


def test_a_forking_worker_started_by_rqs_own_command_logs_json(clean_db):
    """Started by RQ's CLI (`rq worker -w core.adapters.queue.JobLoggingWorker`), RQ gave
    its loggers plain-text handlers before our worker started, and every job's forked
    process wrote RQ's lines (and our own ones only through Python's last resort) as plain
    text."""
    from core.adapters.queue import queue

    queue("s31").enqueue("logging.warning", "the job logs %s", PHONE)
    rq = str(Path(sys.executable).parent / "rq")
    out, err = run_worker([rq, "worker", "--burst", "-w", "core.adapters.queue.JobLoggingWorker",
                           "-S", "rq.serializers.JSONSerializer", "-u", os.environ["REDIS_URL"],
                           "s31"], PYTHONPATH=str(ROOT))
    assert not_json(out) == [] and not_json(err) == []
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(r["msg"] == "the job logs +91******5678" and r.get("job_id") for r in records)
    assert any(r["logger"] == "rq.worker" for r in records)


def test_rq_does_not_log_a_jobs_return_value_at_debug(clean_db, caplog):
    """RQ writes "Worker <name>: result: <repr>" at DEBUG after every job: a job's result
    may be a person's details."""
    from rq.serializers import JSONSerializer

    from core.adapters.queue import JobLoggingSimpleWorker, queue
    from core.adapters.redis_conn import redis_client

    queue("s31").enqueue("core.logs.mask_phones", "Sita, behind the water tank, Ward 4")
    worker = JobLoggingSimpleWorker([queue("s31")], connection=redis_client(),
                                    serializer=JSONSerializer, log_job_description=False)
    with caplog.at_level(logging.DEBUG):
        worker.work(burst=True, logging_level="DEBUG")
    assert "Job OK" in caplog.text  # RQ's DEBUG and INFO lines are there
    assert "water tank" not in caplog.text
    assert not [r for r in caplog.records if "result:" in r.getMessage()]


def test_a_signed_s3_url_in_an_error_is_not_logged():
    """Twilio's media URL redirects to a pre-signed S3 URL; requests' error for a refused
    fetch names that URL (its signature and access key id are a key to the photo until it
    expires), and RQ logs the job's exception with it."""
    import requests

    from core.logs import JsonFormatter

    signed = ("https://s3-external-1.amazonaws.com/media.twiliocdn.com/AC123/ab12cd"
              "?X-Amz-Security-Token=IQoJb3JpZ2luX2VjEJr&X-Amz-Algorithm=AWS4-HMAC-SHA256"
              "&X-Amz-Date=20261205T063000Z&X-Amz-SignedHeaders=host&X-Amz-Expires=300"
              "&X-Amz-Credential=ASIAEXAMPLEKEY%2F20261205%2Fus-east-1%2Fs3%2Faws4_request"
              "&X-Amz-Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7")
    response = requests.Response()
    response.status_code, response.url, response.reason = 403, signed, "Forbidden"
    try:
        response.raise_for_status()
    except requests.HTTPError:
        record = logging.getLogger("rq.worker").makeRecord(
            "rq.worker", logging.ERROR, __file__, 1, "Worker w: job failed: %s",
            (f"HTTPError for url: {signed}",), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "5d672d79c15b" not in line and "ASIAEXAMPLEKEY" not in line
    assert "IQoJb3JpZ2lu" not in line
    # What is left still says what failed, and where.
    assert "403 Client Error" in line and "media.twiliocdn.com/AC123/ab12cd" in line
    # A URL without a signature keeps its query.
    plain = logging.makeLogRecord({"msg": "see https://example.in/track?ref=4821"})
    assert "?ref=4821" in JsonFormatter().format(plain)


# --- 3. erase-recipient and a sign-in long past ----------------------------------------------


def test_a_sign_in_long_past_still_makes_an_account_for_erase_recipient(client):
    """erase-recipient judges a sign-in by the person's API sessions' rows: they must
    outlive their expiry, a sign-out, an operator's revocation and retention's runs, or a
    person who signed in would be taken for a contact and erased with the recipient."""
    from sqlalchemy import func, select, update

    from core.adapters.api_models import ApiSession
    from core.adapters.db import transaction
    from core.adapters.models import Person
    from core.domain.errors import Conflict
    from core.services import auth, retention
    from tests.test_api import API, sign_in

    phone = "+919812300177"
    clock.freeze(T0)
    try:
        headers = sign_in(client, phone)
        assert client.post(f"{API}/auth/logout", headers=headers).status_code == 204
        sign_in(client, phone)
        with transaction() as s:
            (pid,) = s.scalars(select(Person.id).where(Person.phone == phone))
            s.execute(update(ApiSession).where(ApiSession.person_id == pid)
                      .values(revoked_at=clock.now()))  # as an operator's removal does
        # Long after every session expired, past every retention period.
        later = T0 + auth.SESSION_TTL + timedelta(days=3651)
        clock.freeze(later)
        retention.run(later)
        with transaction() as s:
            assert s.scalar(select(func.count()).select_from(ApiSession).where(
                ApiSession.person_id == pid)) == 2
        with transaction() as s, pytest.raises(Conflict) as refused:
            retention.erase_recipient(s, phone, actor="ops:1", reason="asked")
        assert refused.value.code == "has_account" and str(pid) in str(refused.value)
        with transaction() as s:
            assert s.get(Person, pid).phone == phone  # nothing was changed
    finally:
        clock.freeze(None)

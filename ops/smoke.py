"""Smoke test of `./run serve` with its embedded defaults (run by .ci/run).

Starts `./run serve` with DATABASE_URL / REDIS_URL unset, a free PORT and a fresh DATA_DIR,
waits for /readyz, sends one signed WhatsApp webhook and waits for the worker's reply at
the Twilio emulator (and sends the same webhook badly signed), then
stops the server with SIGINT and expects a clean exit. Exits non-zero with a message and
the server's output on any failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from twilio.request_validator import RequestValidator

from ops import embedded

REPO_DIR = Path(__file__).resolve().parent.parent
SANDBOX_TWILIO_TOKEN = "sandbox-twilio-auth-token"
READY_TIMEOUT = 240.0
STOP_TIMEOUT = 60.0


class SmokeFailure(Exception):
    """A check failed; the message says which and why."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_env(port: int, data_dir: Path) -> dict[str, str]:
    """The environment of a first-time user: nothing configured but PORT and DATA_DIR."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {
            "DATABASE_URL",
            "MIGRATE_DATABASE_URL",
            "REDIS_URL",
            "PUBLIC_BASE_URL",
            "TWILIO_AUTH_TOKEN",
            "APP_ENV",
            "VIRTUAL_ENV",
        }
    }
    env.update(PORT=str(port), DATA_DIR=str(data_dir))
    return env


def wait_ready(base: str, serve: subprocess.Popen) -> None:
    """Poll GET /readyz until it answers 200 (the server really is starting up)."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer yet"
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise SmokeFailure(f"./run serve exited with code {serve.returncode} before ready")
        try:
            response = requests.get(f"{base}/readyz", timeout=2)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except requests.RequestException as err:
            last = type(err).__name__
        time.sleep(1.0)
    raise SmokeFailure(f"GET /readyz not 200 after {READY_TIMEOUT:.0f} s (last: {last})")


def check_whatsapp_webhook(base: str) -> None:
    """A signed inbound WhatsApp message is accepted and answered by a worker through the
    Twilio API (the emulator); a badly signed one gets 403."""
    url = f"{base}/webhooks/whatsapp"
    params = {
        "MessageSid": "SMsmoke" + secrets.token_hex(13),
        "AccountSid": "ACsandbox",
        "From": "whatsapp:+919876543210",
        "To": "whatsapp:+14155238886",
        "Body": "hi",
        "NumMedia": "0",
        "WaId": "919876543210",
        "ProfileName": "Smoke",
    }
    signature = RequestValidator(SANDBOX_TWILIO_TOKEN).compute_signature(url, params)
    response = requests.post(
        url, data=params, headers={"X-Twilio-Signature": signature}, timeout=30
    )
    content_type = response.headers.get("Content-Type", "")
    if response.status_code != 200:
        raise SmokeFailure(f"signed webhook: HTTP {response.status_code}: {response.text[:500]}")
    if "xml" not in content_type:
        raise SmokeFailure(f"signed webhook: Content-Type {content_type!r}, expected XML")
    if "<Response" not in response.text:
        raise SmokeFailure(f"signed webhook: no TwiML <Response> in {response.text[:500]!r}")
    print(f"smoke: signed webhook accepted {response.text[:200]!r}", flush=True)
    # The reply is sent by a worker through the Twilio API: the sandbox emulator gets it.
    deadline = time.monotonic() + 30
    while True:
        sent = requests.get(f"{base}/sandbox/outbox", params={"to": params["From"]},
                            timeout=10)
        if sent.status_code == 200 and sent.json():
            print(f"smoke: the worker replied {sent.json()[-1]['body'][:60]!r}", flush=True)
            break
        if time.monotonic() > deadline:
            raise SmokeFailure("signed webhook: no reply reached the Twilio emulator in 30 s")
        time.sleep(0.25)

    # Another first character: one signature in 64 starts with "x" already.
    tampered = ("y" if signature.startswith("x") else "x") + signature[1:]
    bad = requests.post(url, data=params, headers={"X-Twilio-Signature": tampered}, timeout=30)
    if bad.status_code != 403:
        raise SmokeFailure(f"badly signed webhook: HTTP {bad.status_code}, expected 403")
    print("smoke: badly signed webhook got 403", flush=True)


def stop_serve(serve: subprocess.Popen) -> None:
    """SIGINT, as Ctrl-C would; the supervisor must stop everything and exit 0 in time."""
    os.killpg(serve.pid, signal.SIGINT)
    try:
        code = serve.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        raise SmokeFailure(
            f"./run serve did not exit within {STOP_TIMEOUT:.0f} s of SIGINT"
        ) from err
    if code != 0:
        raise SmokeFailure(f"./run serve exited with code {code} after SIGINT, expected 0")


def cleanup(serve: subprocess.Popen, data_dir: Path) -> None:
    """Leave nothing running: the serve group, its recorded children, the postmaster."""
    if serve.poll() is None:
        embedded.terminate_group(serve.pid, timeout=10)
        serve.wait()
    embedded.kill_leftovers(data_dir)
    embedded.stop_postgres_in(data_dir / "pg")


def main() -> int:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data_dir = Path(tempfile.mkdtemp(prefix="ridechain-smoke-"))
    log_path = data_dir / "serve.log"
    print(f"smoke: ./run serve on {base}, DATA_DIR={data_dir}", flush=True)
    with open(log_path, "wb") as log:
        serve = subprocess.Popen(
            [str(REPO_DIR / "run"), "serve"],
            cwd=REPO_DIR,
            env=serve_env(port, data_dir),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    ok = False
    try:
        wait_ready(base, serve)
        print(f"smoke: /readyz is 200 on {base}", flush=True)
        check_whatsapp_webhook(base)
        stop_serve(serve)
        print("smoke: ./run serve stopped cleanly after SIGINT", flush=True)
        ok = True
    except SmokeFailure as err:
        print(f"smoke: FAILED: {err}", file=sys.stderr, flush=True)
    except Exception as err:  # an unexpected error is a failure too, with a message
        print(f"smoke: FAILED: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    finally:
        cleanup(serve, data_dir)
        if not ok:
            print("---- ./run serve output ----", file=sys.stderr)
            print(log_path.read_text(errors="replace"), file=sys.stderr)
            print("---- end of ./run serve output ----", file=sys.stderr, flush=True)
        shutil.rmtree(data_dir, ignore_errors=True)
    if ok:
        print("smoke: OK", flush=True)
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())

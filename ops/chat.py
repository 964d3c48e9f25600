"""`./run chat`: talk to a running `./run serve` as a WhatsApp customer would.

Every line you type is sent to POST /webhooks/whatsapp with Twilio's parameters and a
valid X-Twilio-Signature (TWILIO_AUTH_TOKEN, PUBLIC_BASE_URL), exactly as Twilio would.
The service answers the webhook at once and sends its reply (and any follow-ups:
payment links, status updates) through Twilio's API, so this prints what the sandbox
emulator received for you: GET /sandbox/outbox?to=...&since=....

Follow-ups (a payment's receipt, a rider's news) are printed as they arrive while you
type (on a terminal: a background watcher looks every WATCH_EVERY_S seconds).

Commands: /loc <lat> <lng> shares a location; /photo and /voice send media; /wait polls
the outbox for follow-ups; /quit (or Ctrl-D) ends.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import threading
import time
import xml.etree.ElementTree as ET

import requests
from twilio.request_validator import RequestValidator

SANDBOX_TOKEN = "sandbox-twilio-auth-token"
WATCH_EVERY_S = 2.0
HELP = ("type a message and press Enter · /loc 26.80 84.51 shares a location · /photo · "
        "/voice · /wait (follow-up messages) · /quit")


class Chat:
    def __init__(self, base_url: str, phone: str, token: str, name: str) -> None:
        self.base = base_url.rstrip("/")
        self.phone, self.token, self.name = phone, token, name
        self.since = 0
        self.http = requests.Session()
        # One outbox reader at a time: the typed line's answer and the watcher share
        # ``since`` (and the HTTP session, which is not for two threads at once).
        self.lock = threading.Lock()

    def _outbox(self) -> list[dict]:
        r = self.http.get(f"{self.base}/sandbox/outbox",
                          params={"to": f"whatsapp:{self.phone}", "since": str(self.since)},
                          timeout=5)
        r.raise_for_status()
        return r.json()

    def skip_old_messages(self) -> None:
        # The outbox answers a page at a time (oldest first): skip until nothing is left.
        while page := self._outbox():
            self.since = max(self.since, *(int(m["id"]) for m in page))

    def send(self, body: str = "", **extra: str) -> list[str]:
        url = f"{self.base}/webhooks/whatsapp"
        form = {"MessageSid": "SM" + secrets.token_hex(16), "AccountSid": "ACchat",
                "From": f"whatsapp:{self.phone}", "To": "whatsapp:+14155238886",
                "WaId": self.phone.lstrip("+"), "ProfileName": self.name, "Body": body,
                "NumMedia": "0", **extra}
        signature = RequestValidator(self.token).compute_signature(url, form)
        r = self.http.post(url, data=form, headers={"X-Twilio-Signature": signature},
                           timeout=15)
        if r.status_code != 200:
            return [f"[HTTP {r.status_code}] {r.text[:300]}"]
        return [m.text or "" for m in ET.fromstring(r.text).iter("Message")]

    def replies(self, wait_s: float = 10.0) -> list[str]:
        """Messages sent to us, waiting up to ``wait_s`` for the first (the worker answers
        after the webhook), then briefly for follow-ups sent right after it."""
        deadline = time.monotonic() + wait_s
        texts = self.follow_ups()
        while not texts and time.monotonic() < deadline:
            time.sleep(0.2)
            texts = self.follow_ups()
        if texts:
            time.sleep(0.6)
            texts += self.follow_ups()
        return texts

    def follow_ups(self) -> list[str]:
        out = []
        for m in self._outbox():
            self.since = max(self.since, int(m["id"]))
            out.append(m["body"])
        return out


def watch_once(chat: Chat) -> list[str]:
    """One look for follow-ups between typed lines: printed, with the prompt again."""
    if not chat.lock.acquire(blocking=False):
        return []  # a typed line is being answered: its own reading shows them
    try:
        texts = chat.follow_ups()
    except requests.RequestException:
        texts = []  # the service is away for a moment: the next look will tell
    finally:
        chat.lock.release()
    if texts:
        _show("RideChain (message)", texts)
        print("\nyou> ", end="", flush=True)
    return texts


def _watch(chat: Chat, stop: threading.Event) -> None:
    while not stop.wait(WATCH_EVERY_S):
        watch_once(chat)


def _show(who: str, texts: list[str]) -> None:
    for text in texts:
        print(f"\n{who}:")
        for line in text.splitlines():
            print(f"  {line}")
    sys.stdout.flush()


def parse(line: str) -> tuple[str, dict[str, str]] | None:
    """(Body, extra Twilio parameters) for a typed line; None for /quit."""
    if line.startswith("/loc"):
        parts = line.split()
        if len(parts) != 3:
            raise ValueError("usage: /loc <latitude> <longitude>, e.g. /loc 26.80 84.51")
        float(parts[1]), float(parts[2])
        return "", {"Latitude": parts[1], "Longitude": parts[2]}
    if line == "/photo":
        return "", {"NumMedia": "1", "MediaContentType0": "image/jpeg",
                    "MediaUrl0": "https://example.invalid/photo.jpg"}
    if line == "/voice":
        return "", {"NumMedia": "1", "MediaContentType0": "audio/ogg",
                    "MediaUrl0": "https://example.invalid/voice.ogg"}
    if line in {"/quit", "/exit"}:
        return None
    return line, {}


def main(argv: list[str] | None = None) -> int:
    port = os.environ.get("PORT", "8000")
    ap = argparse.ArgumentParser(prog="./run chat", description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("PUBLIC_BASE_URL")
                    or f"http://127.0.0.1:{port}")
    ap.add_argument("--phone", default="+919812399999", help="your WhatsApp number (E.164)")
    ap.add_argument("--name", default="Chat User")
    args = ap.parse_args(argv)
    chat = Chat(args.url, args.phone, os.environ.get("TWILIO_AUTH_TOKEN") or SANDBOX_TOKEN,
                args.name)
    try:
        chat.skip_old_messages()
    except requests.RequestException as exc:
        print(f"./run chat: cannot reach {args.url} ({type(exc).__name__}); is `./run serve` "
              "running?", file=sys.stderr)
        return 1
    print(f"Chatting as whatsapp:{args.phone} with {args.url}\n{HELP}")
    stop = threading.Event()
    if sys.stdin.isatty():  # piped input (a script) reads its answers itself, in order
        threading.Thread(target=_watch, args=(chat, stop), daemon=True).start()
    try:
        return _talk(chat)
    finally:
        stop.set()


def _talk(chat: Chat) -> int:
    while True:
        try:
            line = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line:
            continue
        try:
            parsed = parse(line)
        except ValueError as exc:
            print(exc)
            continue
        if parsed is None:
            return 0
        try:
            with chat.lock:
                if line == "/wait":
                    for _ in range(10):
                        texts = chat.follow_ups()
                        if texts:
                            break
                        time.sleep(0.5)
                    _show("RideChain (message)", texts or ["(nothing new)"])
                    continue
                body, extra = parsed
                _show("RideChain", chat.send(body, **extra))  # only errors come back inline
                _show("RideChain", chat.replies() or ["(no answer yet; /wait looks again)"])
        except requests.RequestException as exc:
            print(f"(the service did not answer: {type(exc).__name__})")


if __name__ == "__main__":
    sys.exit(main())

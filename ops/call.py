"""`./run call`: phone a running `./run serve` as a feature-phone caller would.

It posts Twilio Voice webhooks with a valid X-Twilio-Signature (TWILIO_AUTH_TOKEN,
PUBLIC_BASE_URL): a new call to /webhooks/voice, then your key presses to the URL of the
last <Gather action=...>, exactly as Twilio would. It prints what you would hear: the
texts spoken with <Say> (and their voice), and for <Play> which cached audio would play
(with its text when it is a catalog prompt). SMS the service sends you (booking details,
payment link) are shown from GET /sandbox/outbox.

Type keys and press Enter: `1`, `845438#`, `*` (repeat), `0` (main menu). An empty line
is silence (the Gather timed out). /hangup hangs up (status callback), /call calls again,
/quit (or Ctrl-D) ends.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
import xml.etree.ElementTree as ET

import requests
from twilio.request_validator import RequestValidator

SANDBOX_TOKEN = "sandbox-twilio-auth-token"
HELP = ("keys + Enter (1, 845438#, * repeats, 0 menu) · Enter alone = silence · /hangup · "
        "/call · /quit")


def known_prompts() -> dict[str, str]:
    """Audio file name -> text, for every catalog prompt `./run prompts` renders."""
    try:
        from ivr_flows import audio

        return {f"{lang}/{audio.audio_name(lang, text)}": text
                for lang, text in audio.catalog_prompts()}
    except Exception:  # the simulator still works, showing file names only
        return {}


class Phone:
    def __init__(self, base_url: str, phone: str, token: str) -> None:
        self.base = base_url.rstrip("/")
        self.phone, self.token = phone, token
        self.http = requests.Session()
        self.sid = ""
        self.action: str | None = None
        self.num_digits = 0  # the question waiting: how many keys it takes (0: up to #)
        self.finish_on = "#"
        self.since = 0
        self.prompts = known_prompts()

    def _post(self, path: str, form: dict[str, str]) -> str:
        url = path if "://" in path else self.base + path  # actions are absolute URLs
        signature = RequestValidator(self.token).compute_signature(url, form)
        r = self.http.post(url, data=form, headers={"X-Twilio-Signature": signature},
                           timeout=15)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
        return r.text

    def _form(self, **extra: str) -> dict[str, str]:
        return {"CallSid": self.sid, "AccountSid": "ACcall", "From": self.phone,
                "To": "+15005550006", "Direction": "inbound", **extra}

    def call(self) -> list[str]:
        self.sid = "CA" + secrets.token_hex(16)
        return self.hear(self._post("/webhooks/voice", self._form(CallStatus="ringing")))

    def press(self, keys: str) -> list[str]:
        """Keys as Twilio takes them: a question of N keys (numDigits) takes the first N,
        one that ends on a key (finishOnKey, '#') the keys before it, not sent; the keys
        pressed beyond go to the next question, as a caller who types ahead is heard."""
        if self.action is None:
            return ["(the call has ended: /call to call again)"]
        lines: list[str] = []
        while True:
            if self.num_digits:
                digits, keys = keys[:self.num_digits], keys[self.num_digits:]
            else:
                digits, _, keys = keys.partition(self.finish_on)
            lines += self.hear(self._post(self.action, self._form(CallStatus="in-progress",
                                                                  Digits=digits)))
            if not keys or self.action is None:
                return lines
            lines.append(f"  [keys typed ahead: {keys}]")

    def hang_up(self) -> None:
        if self.sid:
            self._post("/webhooks/voice/status", self._form(CallStatus="completed",
                                                            CallDuration="60"))
        self.action = None

    def hear(self, xml: str) -> list[str]:
        """What the caller hears, line by line, and what the phone waits for next."""
        root = ET.fromstring(xml)
        lines: list[str] = []
        self.action = None
        for verb in root:
            if verb.tag == "Gather":
                lines += [self._line(e) for e in verb]
                self.action = verb.get("action")
                taken = verb.get("numDigits", "")
                self.num_digits = int(taken) if taken.isdigit() else 0
                self.finish_on = verb.get("finishOnKey", "#") or "#"
                if verb.get("numDigits") == "1":
                    lines.append("  [waiting for one key]")
                else:
                    lines.append(f"  [waiting for digits, then {verb.get('finishOnKey', '#')}]")
                break  # what follows a Gather plays only if Twilio never posts the answer
            if verb.tag == "Dial":
                number = (verb.findtext("Number") or verb.text or "").strip()
                lines.append(f"  [call put through to {number}: you hear it ring; that phone"
                             " hears who calls and presses 1 to take you]")
            elif verb.tag == "Hangup":
                lines.append("  [the service hangs up]")
            else:
                lines.append(self._line(verb))
        return lines

    def _line(self, el: ET.Element) -> str:
        if el.tag == "Say":
            return f"  🔊 ({el.get('language', '?')}, Twilio voice) {el.text or ''}"
        if el.tag == "Play":
            url = (el.text or "").strip()
            key = "/".join(url.rsplit("/", 2)[-2:]).removesuffix(".mp3")
            text = self.prompts.get(key)
            return f"  ▶ (audio {key}.mp3) {text}" if text else f"  ▶ (audio) {url}"
        return f"  [{el.tag}]"

    def skip_old_messages(self) -> None:
        # The outbox answers a page at a time (oldest first): skip until nothing is left.
        while self.sms():
            pass

    def sms(self) -> list[str]:
        r = self.http.get(f"{self.base}/sandbox/outbox",
                          params={"to": self.phone, "since": str(self.since)}, timeout=5)
        r.raise_for_status()
        out = []
        for m in r.json():
            self.since = max(self.since, int(m["id"]))
            out.append(f"  ✉ SMS: {m['body']}")
        return out


def _show(lines: list[str]) -> None:
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    port = os.environ.get("PORT", "8000")
    ap = argparse.ArgumentParser(prog="./run call", description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("PUBLIC_BASE_URL")
                    or f"http://127.0.0.1:{port}")
    ap.add_argument("--phone", default="+919812399998", help="your phone number (E.164)")
    args = ap.parse_args(argv)
    phone = Phone(args.url, args.phone, os.environ.get("TWILIO_AUTH_TOKEN") or SANDBOX_TOKEN)
    try:
        phone.skip_old_messages()
        print(f"Calling {args.url} from {args.phone}\n{HELP}\n")
        _show(phone.call())
    except (requests.RequestException, RuntimeError) as exc:
        print(f"./run call: cannot reach {args.url} ({exc}); is `./run serve` running?",
              file=sys.stderr)
        return 1
    while True:
        try:
            line = input("\nkeys> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            phone.hang_up()
            return 0
        try:
            if line in {"/quit", "/exit"}:
                phone.hang_up()
                return 0
            if line == "/hangup":
                phone.hang_up()
                print("  [you hung up: /call to call again]")
                continue
            if line == "/call":
                _show(phone.call())
                continue
            if line and any(ch not in "0123456789*#" for ch in line):
                print("  (a phone keypad has 0-9, * and #)")
                continue
            _show(phone.press(line))
            time.sleep(0.8)  # give the worker a moment to send SMS
            _show(phone.sms())
        except (requests.RequestException, RuntimeError) as exc:
            print(f"  (the service did not answer: {exc})")


if __name__ == "__main__":
    sys.exit(main())

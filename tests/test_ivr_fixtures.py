"""Replay every IVR fixture (conversation_fixtures/*.yaml with ``channel: voice``) through
the real, signed voice webhooks, as Twilio would drive a call: key presses, silence,
retried requests, hang-ups (format: that folder's README)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from core import clock
from core.adapters.db import transaction
from core.adapters.models import Booking, Conversation, Person
from core.dialog import spoken
from tests.test_conversations import START, Replay, _duration
from tests.test_ivr import Caller, Heard

FIXTURES = Path(__file__).resolve().parent.parent / "conversation_fixtures"
VOICE_FILES = sorted(p for p in FIXTURES.glob("*.yaml")
                     if yaml.safe_load(p.read_text(encoding="utf-8")).get("channel") == "voice")
REQUIRED = {"ivr_hindi_booking", "ivr_marathi_booking", "ivr_wrong_keys", "ivr_silence_twice",
            "ivr_hangup_and_call_back", "ivr_track", "ivr_cancel"}


class CallReplay:
    def __init__(self, client: Any, spec: dict[str, Any], name: str) -> None:
        self.spec, self.name = spec, name
        self.phone = spec["phone"]
        self.caller = Caller(client, self.phone)
        self.now = START
        self.previous: Heard | None = None
        clock.freeze(self.now)
        if spec.get("language"):
            with transaction() as s:
                s.add(Person(phone=self.phone, role="customer",
                             preferred_language=spec["language"]))

    def play(self, index: int, turn: dict[str, Any]) -> None:
        where = f"{self.name} turn {index + 1} {turn}"
        if "advance" in turn:
            self.now += _duration(turn["advance"])
            clock.freeze(self.now)
            return
        if "hangup" in turn:
            self.caller.hang_up()
            return
        if "call" in turn:
            heard = self.caller.call(turn.get("sid"))
        elif "press" in turn:
            heard = self.caller.press(str(turn["press"]))
        elif "silence" in turn:
            heard = self.caller.silence()
        elif "repeat" in turn:
            heard = self.caller.repeat()
        else:
            raise AssertionError(f"{where}: unknown turn")
        self.check(where, heard, turn.get("expect") or {})
        self.previous = heard

    def check(self, where: str, heard: Heard, expect: dict[str, Any]) -> None:
        text = heard.text
        for piece in expect.get("hears", []):
            assert str(piece) in text, f"{where}: {piece!r} not heard in:\n{text}"
        for piece in expect.get("not_hears", []):
            assert str(piece) not in text, f"{where}: {piece!r} unexpectedly heard:\n{text}"
        if "hears_ref" in expect:
            with transaction() as s:
                ref = s.scalar(select(Booking.reference).join(
                    Person, Person.id == Booking.customer_id)
                    .where(Person.phone == self.phone).order_by(Booking.id.desc()))
            assert ref, f"{where}: the caller has no booking"
            said = spoken.spell_digits(ref)
            assert text.count(said) == int(expect["hears_ref"]), f"{where}: {said!r} in\n{text}"
        if "keys" in expect:
            assert heard.gather is not None, f"{where}: no Gather"
            if expect["keys"] == "#":
                assert "numDigits" not in heard.gather and heard.gather["finishOnKey"] == "#"
            else:
                assert heard.gather.get("numDigits") == str(expect["keys"]), where
        if "ends" in expect:
            ended = heard.gather is None and heard.hangup
            assert ended == bool(expect["ends"]), f"{where}: ends={ended}\n{heard.xml}"
        if "dial" in expect:
            want = expect["dial"]
            if want == "ops_phone":
                from core.config import get_settings

                want = get_settings().ops_phone
            assert heard.dial == want, f"{where}: dialled {heard.dial!r}"
        if expect.get("same_as_previous"):
            assert self.previous is not None and heard.xml == self.previous.xml, where
        if "step" in expect:
            with transaction() as s:
                step = s.scalar(select(Conversation.step).where(
                    Conversation.channel == "voice", Conversation.contact == self.phone))
            assert step == expect["step"], f"{where}: at step {step!r}"


@pytest.fixture
def empty_prompt_cache(monkeypatch, tmp_path):
    from ivr_flows import audio

    monkeypatch.setattr(audio, "cache_dir", lambda: tmp_path)


@pytest.mark.parametrize("path", VOICE_FILES, ids=lambda p: p.stem)
def test_ivr_fixture(path: Path, client, empty_prompt_cache) -> None:
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    if spec.get("seed", True):
        from core.services.seed import seed_demo

        seed_demo()
    replay = CallReplay(client, spec, path.stem)
    for index, turn in enumerate(spec["turns"]):
        replay.play(index, turn)
    checker = Replay(client, spec, path.stem)  # the WhatsApp replay's database checks
    for check in spec.get("checks", []):
        checker.check_after(check)


def test_every_required_ivr_story_has_a_fixture() -> None:
    names = {p.stem for p in VOICE_FILES}
    assert REQUIRED <= names, f"missing IVR fixtures: {sorted(REQUIRED - names)}"

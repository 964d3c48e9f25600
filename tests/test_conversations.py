"""Replay every scripted conversation in conversation_fixtures/ through the real, signed
WhatsApp webhook and its drain job, and check what the bot answered (the outbox rows that
reply to each message) and did (format: that folder's README)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from core import clock
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff
from core.adapters.models import Booking, Conversation, OutboxMessage, Person
from tests.conftest import post_twilio, replies_to, run_jobs

FIXTURES = Path(__file__).resolve().parent.parent / "conversation_fixtures"
WHATSAPP_FILES = sorted(p for p in FIXTURES.glob("*.yaml")
                        if yaml.safe_load(p.read_text(encoding="utf-8")).get("channel",
                                                                               "whatsapp")
                        == "whatsapp")
START = datetime(2026, 12, 1, 4, 30, tzinfo=UTC)  # 10:00 in India
_DURATION = re.compile(r"^(\d+)\s*([smhd])$")


def _duration(text: str) -> timedelta:
    m = _DURATION.match(str(text).strip())
    assert m, f"bad duration {text!r} (use 30s, 10m, 25h, 2d)"
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
    return timedelta(**{unit: int(m.group(1))})


def _messages(xml: str) -> list[str]:
    root = ET.fromstring(xml)
    return [(m.text or "") for m in root.iter("Message")]


class Replay:
    """One fixture being played: the customer's address, replies by sid, the clock."""

    def __init__(self, client: Any, spec: dict[str, Any], name: str) -> None:
        self.client, self.spec, self.name = client, spec, name
        self.phone = spec["phone"]
        self.now = START
        self.replies: dict[str, str] = {}
        self.params: dict[str, dict[str, str]] = {}
        clock.freeze(self.now)

    def form(self, turn: dict[str, Any], sid: str) -> dict[str, str]:
        form = {"MessageSid": sid, "AccountSid": "ACfixture", "From": f"whatsapp:{self.phone}",
                "To": "whatsapp:+14155238886", "WaId": self.phone.lstrip("+"),
                "ProfileName": self.spec.get("profile_name", "Customer"), "NumMedia": "0",
                "Body": str(turn.get("send", ""))}
        if "location" in turn:
            lat, lng = turn["location"]
            form.update(Latitude=str(lat), Longitude=str(lng), Body="")
        if "media" in turn:
            form.update(NumMedia="1", MediaContentType0=turn["media"],
                        MediaUrl0="https://api.twilio.com/fixture-media")
        return form

    def play(self, index: int, turn: dict[str, Any]) -> None:
        where = f"{self.name} turn {index + 1}"
        if "advance" in turn:
            self.now += _duration(turn["advance"])
            clock.freeze(self.now)
            return
        if "operator_reply" in turn or "operator_close" in turn:
            self.operator(turn)
            return
        if "repeat" in turn:
            sid = turn["repeat"]
            form = self.params[sid]
        else:
            sid = str(turn.get("sid") or f"SM{self.name[:20]}{index:03d}")
            form = self.form(turn, sid)
            self.params[sid] = form
        r = post_twilio(self.client, "/webhooks/whatsapp", form)
        assert r.status_code == 200, f"{where}: HTTP {r.status_code} {r.get_data(as_text=True)}"
        assert _messages(r.get_data(as_text=True)) == [], f"{where}: answered inline"
        run_jobs(("inbound",))  # the contact's drain job, as the worker runs it
        replies = replies_to(sid)
        text = "\n".join(replies)
        expect = turn.get("expect") or {}
        if "same_as" in expect:
            assert text == self.replies[expect["same_as"]], f"{where}: reply differs"
        self.replies[sid] = text
        self.check_reply(where, text, expect)

    def operator(self, turn: dict[str, Any]) -> None:
        from core.services import handoff

        with transaction() as s:
            waiting = handoff.waiting_list(s)
            assert waiting, f"{self.name}: no conversation is waiting for an operator"
            if "operator_reply" in turn:
                handoff.reply(s, waiting[0].id, "ops:fixture", turn["operator_reply"])
            if turn.get("operator_close"):
                handoff.close(s, waiting[0].id, "ops:fixture")

    def latest_reference(self) -> str:
        with transaction() as s:
            ref = s.scalar(select(Booking.reference).join(Person,
                                                          Person.id == Booking.customer_id)
                           .where(Person.phone == self.phone).order_by(Booking.id.desc()))
        assert ref, f"{self.name}: the customer has no booking"
        return ref

    def check_reply(self, where: str, text: str, expect: dict[str, Any]) -> None:
        for piece in expect.get("contains", []):
            assert str(piece) in text, f"{where}: {piece!r} not in reply:\n{text}"
        for piece in expect.get("not_contains", []):
            assert str(piece) not in text, f"{where}: {piece!r} unexpectedly in reply:\n{text}"
        if "matches" in expect:
            assert re.search(expect["matches"], text), f"{where}: no match in:\n{text}"
        if expect.get("contains_ref"):
            ref = self.latest_reference()
            assert ref in text, f"{where}: booking reference {ref} not in reply:\n{text}"
        if "empty" in expect:
            assert (text.strip() == "") == bool(expect["empty"]), f"{where}: reply {text!r}"
        if "step" in expect:
            with transaction() as s:
                step = s.scalar(select(Conversation.step).where(
                    Conversation.contact == self.phone.lstrip("+")))
            assert step == expect["step"], f"{where}: at step {step!r}, not {expect['step']!r}"

    def check_after(self, check: dict[str, Any]) -> None:
        where = f"{self.name} check {check}"
        with transaction() as s:
            person = s.scalar(select(Person).where(Person.phone == self.phone))
            if "booking" in check:
                want = check["booking"]
                rows = s.scalars(select(Booking).where(Booking.customer_id == person.id)).all()
                if "status" in want:
                    rows = [b for b in rows if b.status == want["status"]]
                assert len(rows) == want.get("count", len(rows) or 1) and rows or (
                    want.get("count") == 0 and not rows), f"{where}: found {len(rows)}"
                for field in ("pickup_pincode", "drop_pincode", "recipient_phone",
                              "speed_tier", "channel"):
                    if field in want:
                        assert all(getattr(b, field) == want[field] for b in rows), where
            if "person" in check:
                for field, value in check["person"].items():
                    name = {"language": "preferred_language"}.get(field, field)
                    assert getattr(person, name) == value, f"{where}: {name}"
            if "handoff" in check:
                rows = s.scalars(select(Handoff).where(Handoff.person_id == person.id)).all()
                want = check["handoff"]
                if "status" in want:
                    rows = [h for h in rows if h.status == want["status"]]
                if "reason" in want:
                    rows = [h for h in rows if h.reason == want["reason"]]
                assert len(rows) == want.get("count", 1), f"{where}: found {len(rows)}"
            if "outbox" in check:
                want = check["outbox"]
                to = want.get("to", self.phone)
                rows = s.scalars(select(OutboxMessage).where(
                    OutboxMessage.to_addr.in_([to, "whatsapp:" + to]))).all()
                if "contains" in want:
                    rows = [m for m in rows if want["contains"] in m.body]
                if "channel" in want:
                    rows = [m for m in rows if m.channel == want["channel"]]
                assert len(rows) == want.get("count", len(rows) or 1) and rows or (
                    want.get("count") == 0 and not rows), f"{where}: found {len(rows)}"


@pytest.mark.parametrize("path", WHATSAPP_FILES, ids=lambda p: p.stem)
def test_conversation_fixture(path: Path, client) -> None:
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    if spec.get("seed", True):
        from core.services.seed import seed_demo

        seed_demo()
    replay = Replay(client, spec, path.stem)
    for index, turn in enumerate(spec["turns"]):
        replay.play(index, turn)
    for check in spec.get("checks", []):
        replay.check_after(check)


def test_there_are_fixtures_for_every_required_story() -> None:
    names = {p.stem for p in FIXTURES.glob("*.yaml")}
    required = {"hindi_location_pin", "hinglish_pincode", "tamil_booking", "english_booking",
                "change_before_confirm", "cancel_booking", "track_booking", "out_of_area",
                "three_misses_then_person", "duplicate_webhook", "stop_and_start"}
    assert required <= names, f"missing fixtures: {sorted(required - names)}"


def test_a_whatsapp_turn_writes_its_conversation_once(client) -> None:
    # The dialog's place and the message's time go out in one UPDATE of the row (none
    # left for a flush at the commit), and the next turn reads what this one wrote.
    from sqlalchemy import event

    from core.adapters.db import engine
    from tests.conftest import send_whatsapp

    phone = "+919812300777"

    def form(sid: str, body: str) -> dict[str, str]:
        return {"MessageSid": sid, "AccountSid": "ACtest", "From": f"whatsapp:{phone}",
                "To": "whatsapp:+14155238886", "WaId": phone[1:], "ProfileName": "Asha",
                "NumMedia": "0", "Body": body}

    clock.freeze(START)
    try:
        send_whatsapp(client, form("SMonce1", "hi"))
        send_whatsapp(client, form("SMonce2", "1"))  # Hindi
        updates: list[str] = []

        def seen(conn, cursor, statement, *args) -> None:
            if statement.lstrip().upper().startswith("UPDATE CONVERSATIONS"):
                updates.append(statement)

        clock.freeze(START + timedelta(seconds=40))
        event.listen(engine(), "before_cursor_execute", seen)
        try:
            assert send_whatsapp(client, form("SMonce3", "1"))  # book
        finally:
            event.remove(engine(), "before_cursor_execute", seen)
        assert len(updates) == 1, updates
        with transaction() as s:
            conv = s.scalar(select(Conversation).where(Conversation.channel == "whatsapp",
                                                       Conversation.contact.contains(phone[1:])))
            assert conv.last_inbound_at == START + timedelta(seconds=40)
            assert conv.step not in ("menu", "start", "language")
    finally:
        clock.freeze(None)


def test_a_cancel_no_longer_allowed_by_the_time_of_yes_is_explained(client) -> None:
    # Between "Cancel booking …?" and the customer's "yes" the booking changed (here its
    # payment link expired): the bot says it cannot be cancelled and goes to the menu,
    # instead of an apology on every answer.
    from core.domain.booking import Actor, BookingStatus
    from core.i18n import t
    from core.services.booking import move_booking
    from core.services.seed import seed_demo

    seed_demo()
    spec = yaml.safe_load((FIXTURES / "cancel_booking.yaml").read_text(encoding="utf-8"))
    turns = spec["turns"]
    question = next(i for i, turn in enumerate(turns)
                    if "Nothing was paid" in str(turn.get("expect", "")))
    replay = Replay(client, spec, "cancel_race")
    for index, turn in enumerate(turns[:question + 1]):
        replay.play(index, turn)
    ref = replay.latest_reference()
    with transaction() as s:
        booking = s.scalar(select(Booking).where(Booking.reference == ref))
        move_booking(s, booking, BookingStatus.EXPIRED, Actor.system(), "link expired")
    replay.play(question + 1, {"send": "yes", "expect": {
        "contains": [t("bot.cancel.not_allowed", "en", ref=ref)], "step": "menu"}})
    with transaction() as s:
        assert s.scalar(select(Booking.status).where(Booking.reference == ref)) == "expired"

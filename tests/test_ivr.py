"""The IVR through the real, signed voice webhooks: TwiML shape, keypad rules, dedupe,
call sessions, audio fallback; plus the spoken-number helpers. Fixture replays of whole
calls are in test_ivr_fixtures.py (they use the ``Caller`` below)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, Conversation, InboundEvent, OutboxMessage, Person
from core.config import get_settings
from core.dialog import spoken
from core.services import ivr
from ivr_flows import audio
from tests.conftest import post_twilio, run_jobs, twilio_signature
from tests.test_ivr_audio import FakeGoogle

START = datetime(2026, 12, 1, 4, 30, tzinfo=UTC)  # 10:00 in India
VOICE_VERBS = {"Say", "Play", "Gather", "Dial", "Hangup", "Redirect", "Pause", "Number"}


@dataclass
class Heard:
    """One TwiML answer, as the caller experiences it."""

    xml: str
    says: list[tuple[str, str]] = field(default_factory=list)  # (language, text)
    plays: list[str] = field(default_factory=list)
    gather: dict[str, str] | None = None
    dial: str | None = None
    hangup: bool = False

    @property
    def text(self) -> str:
        return "\n".join(t for _, t in self.says)

    @classmethod
    def parse(cls, xml: str) -> Heard:
        root = ET.fromstring(xml)
        assert root.tag == "Response", xml
        heard = cls(xml)
        for el in root.iter():
            if el is root:
                continue
            assert el.tag in VOICE_VERBS, f"unexpected TwiML verb {el.tag}"
            if el.tag == "Say":
                heard.says.append((el.get("language", ""), el.text or ""))
            elif el.tag == "Play":
                heard.plays.append(el.text or "")
            elif el.tag == "Gather":
                assert heard.gather is None, "one Gather per answer"
                heard.gather = dict(el.attrib)
            elif el.tag == "Dial":
                heard.dial = (el.findtext("Number") or el.text or "").strip()
            elif el.tag == "Hangup":
                heard.hangup = True
        return heard

    def in_gather(self) -> list[str]:
        root = ET.fromstring(self.xml)
        gather = root.find("Gather")
        return [] if gather is None else [(e.text or "") for e in gather]


class Caller:
    """A feature phone calling the service: new calls, key presses, silence, hang-ups,
    each a Twilio-signed request to the URL Twilio would use (the last Gather's action)."""

    def __init__(self, client: Any, phone: str = "+919812300100") -> None:
        self.client, self.phone = client, phone
        self.sid = ""
        self.calls = 0
        self.action: str | None = None
        self.last: tuple[str, dict[str, str]] | None = None

    def _post(self, path: str, form: dict[str, str]) -> Heard:
        path = path.removeprefix(get_settings().public_base_url)  # actions are absolute
        r = post_twilio(self.client, path, form)
        assert r.status_code == 200, f"HTTP {r.status_code}: {r.get_data(as_text=True)}"
        assert r.mimetype == "application/xml"
        heard = Heard.parse(r.get_data(as_text=True))
        self.last = (path, form)
        self.action = heard.gather["action"] if heard.gather else None
        return heard

    def form(self, **extra: str) -> dict[str, str]:
        return {"CallSid": self.sid, "AccountSid": "ACtest", "From": self.phone,
                "To": "+15005550006", "Direction": "inbound", "CallStatus": "in-progress",
                **extra}

    def call(self, sid: str | None = None) -> Heard:
        self.calls += 1
        self.sid = sid or f"CA{self.phone[-6:]}{self.calls:04d}"
        return self._post("/webhooks/voice", self.form(CallStatus="ringing"))

    def press(self, keys: str) -> Heard:
        assert self.action, "the last answer did not ask for keys"
        digits = keys.removesuffix("#")  # Twilio does not pass the finishing '#'
        return self._post(self.action, self.form(Digits=digits))

    def silence(self) -> Heard:
        assert self.action, "the last answer did not ask for keys"
        return self._post(self.action, self.form(Digits=""))

    def repeat(self) -> Heard:
        assert self.last is not None
        path, form = self.last
        return self._post(path, form)

    def hang_up(self, status: str = "completed") -> None:
        r = post_twilio(self.client, "/webhooks/voice/status",
                        self.form(CallStatus=status, CallDuration="42"))
        assert r.status_code == 200
        self.action = None


@pytest.fixture
def prompts(monkeypatch, tmp_path):
    """An empty prompt-audio cache of our own (nothing pre-rendered: every prompt is <Say>)."""
    monkeypatch.setattr(audio, "cache_dir", lambda: tmp_path)
    return tmp_path


@pytest.fixture
def phone(client, prompts):
    from core.services.seed import seed_demo

    seed_demo()
    clock.freeze(START)
    return Caller(client)


def t(key: str, lang: str = "hi", **params: Any) -> str:
    return " ".join(i18n.t(key, lang, **params).split())


def step_of(phone_number: str) -> str:
    with transaction() as s:
        return s.scalar(select(Conversation.step).where(Conversation.channel == "voice",
                                                        Conversation.contact == phone_number))


def book_in_hindi(phone: Caller) -> Heard:
    """The shortest Hindi booking: Bettiah (845438) to Laxmipur (845450)."""
    phone.call()
    phone.press("1")  # Hindi
    phone.press("1")  # book
    heard = phone.press("845438#")
    assert t("ivr.place.pincode", digits="8 4 5, 4 3 8") in heard.text
    phone.press("2")  # Bettiah
    phone.press("1")  # right
    phone.press("845450#")
    phone.press("7")  # Laxmipur
    phone.press("1")
    heard = phone.press("9876543210#")
    assert t("ivr.phone.confirm", digits="9 8 7 6 5, 4 3 2 1 0") in heard.text
    phone.press("1")
    phone.press("1")  # fits in a bag
    heard = phone.press("1")  # up to 5 kg
    assert "रुपये" in heard.text and t("tier.express", hours=3) in heard.text
    heard = phone.press("2")  # standard
    assert "किराया" in heard.text and "Laxmipur" in heard.text
    return phone.press("1")  # confirm


# --- spoken numbers --------------------------------------------------------------------

@pytest.mark.parametrize("n,words", [
    (0, "शून्य"), (45, "पैंतालीस"), (99, "निन्यानवे"), (100, "एक सौ"), (250, "दो सौ पचास"),
    (1000, "एक हज़ार"), (1250, "बारह सौ पचास"), (2050, "दो हज़ार पचास"),
    (12345, "बारह हज़ार तीन सौ पैंतालीस"), (150000, "एक लाख पचास हज़ार"),
])
def test_hindi_amounts_are_said_the_way_people_say_them(n: int, words: str) -> None:
    assert spoken.number_words(n, "hi") == words


def test_other_number_forms() -> None:
    assert spoken.number_words(1250, "en") == "one thousand two hundred and fifty"
    assert spoken.number_words(1250, "ta") == "1250"
    assert spoken.rupees(125050) == 1251 and spoken.rupees(125049) == 1250
    assert spoken.spell_digits("845438") == "8 4 5, 4 3 8"
    assert spoken.spell_digits("+919876543210"[-10:]) == "9 8 7 6 5, 4 3 2 1 0"
    assert spoken.spell_digits("48215673") == "4 8 2 1, 5 6 7 3"


# --- the call flow ---------------------------------------------------------------------

def test_new_caller_hears_every_language_in_its_own_voice(phone: Caller) -> None:
    heard = phone.call()
    assert heard.gather is not None and heard.gather["input"] == "dtmf"
    assert heard.gather["numDigits"] == "1" and heard.gather["actionOnEmptyResult"] == "true"
    assert heard.gather["action"] == \
        f"{get_settings().public_base_url}/webhooks/voice/gather?turn=1&lang=hi"
    for lang in i18n.LANGUAGES:  # each option in its own language and voice
        assert (i18n.SAY_LOCALES[lang], i18n.t("voice.language_option", lang)) in heard.says
    assert heard.hangup  # after the Gather: reached only if Twilio never posts; no loop
    heard = phone.press("4")  # मराठी
    assert t("ivr.menu", "mr") in heard.text
    assert all(lang == "mr-IN" for lang, _ in heard.says if _ != t("voice.goodbye", "mr"))
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == phone.phone))
        assert person.preferred_language == "mr"


def test_a_known_caller_is_greeted_in_their_language(phone: Caller) -> None:
    with transaction() as s:
        s.add(Person(phone=phone.phone, role="customer", preferred_language="ta"))
    heard = phone.call()
    assert t("ivr.welcome", "ta") in heard.text and t("ivr.menu", "ta") in heard.text
    assert t("voice.language_option", "hi") not in heard.text


def test_a_complete_hindi_booking_by_keypad(phone: Caller) -> None:
    heard = book_in_hindi(phone)
    with transaction() as s:
        booking = s.scalar(select(Booking))
        assert booking.status == "awaiting_payment" and booking.channel == "voice"
        assert booking.pickup_pincode == "845438" and booking.drop_pincode == "845450"
        assert booking.recipient_phone == "+919876543210" and booking.speed_tier == "standard"
        ref = booking.reference
        sms = s.scalars(select(OutboxMessage).where(OutboxMessage.to_addr == phone.phone)).all()
    said = spoken.spell_digits(ref)
    assert heard.text.count(said) == 2, heard.text  # the reference, twice
    assert [m.channel for m in sms] == ["sms"] and ref in sms[0].body
    assert "Laxmipur" in sms[0].body
    heard = phone.press("1")  # hear it again
    assert said in heard.text
    heard = phone.silence()  # done: silence ends the call politely, with no reproach
    assert heard.hangup and heard.gather is None and t("ivr.no_answer") not in heard.text
    assert t("voice.goodbye") in heard.text


def test_a_keypad_turn_writes_its_conversation_once(phone: Caller) -> None:
    # The dialog's place and the call's time go out in one UPDATE of the row (since
    # session 31 folded into the statement recording the turn's answer); nothing of the
    # turn is left for a flush at the commit (a second UPDATE), and the next turn reads
    # what this one wrote.
    from sqlalchemy import event

    from core.adapters.db import engine

    phone.call()
    phone.press("1")  # Hindi
    updates: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:
        if "UPDATE CONVERSATIONS" in statement.upper():
            updates.append(statement)

    event.listen(engine(), "before_cursor_execute", seen)
    try:
        clock.freeze(START + timedelta(seconds=30))
        phone.press("1")  # book
    finally:
        event.remove(engine(), "before_cursor_execute", seen)
    assert len(updates) == 1, updates
    with transaction() as s:
        conv = s.scalar(select(Conversation).where(Conversation.contact == phone.phone))
        assert conv.last_inbound_at == START + timedelta(seconds=30)
        assert conv.state["call"]["answered"] == 2 and conv.step != "menu"


def test_star_repeats_and_zero_returns_to_the_menu_keeping_the_draft(phone: Caller) -> None:
    phone.call()
    phone.press("1")
    phone.press("1")
    first = phone.press("845438#")
    again = phone.press("*")
    assert again.text == first.text
    assert t("ivr.place.choose") in again.text and t("ivr.wrong_key") not in again.text
    phone.press("2")
    phone.press("1")
    heard = phone.press("0")
    assert t("ivr.menu") in heard.text and step_of(phone.phone) == "menu"
    heard = phone.press("1")
    assert t("ivr.resume.ask", place="Bettiah") in heard.text
    heard = phone.press("1")
    assert t("ivr.drop.ask") in heard.text


def test_wrong_keys_say_so_and_three_misses_offer_a_person(phone: Caller) -> None:
    phone.call()
    phone.press("1")
    heard = phone.press("7")
    assert t("ivr.wrong_key") in heard.text and t("ivr.menu") in heard.text
    phone.press("8")
    heard = phone.press("9")
    assert t("ivr.offer.ask") in heard.text
    heard = phone.press("1")
    assert heard.dial == get_settings().ops_phone
    assert t("ivr.person.connecting") in heard.text
    assert heard.gather is None and heard.hangup


def test_silence_repeats_twice_then_offers_a_person_then_ends(phone: Caller) -> None:
    phone.call()
    phone.press("1")
    for _ in range(2):
        heard = phone.silence()
        assert t("ivr.silence") in heard.text and t("ivr.menu") in heard.text
    heard = phone.silence()
    assert t("ivr.offer.ask") in heard.text and heard.gather is not None
    heard = phone.silence()
    assert heard.hangup and heard.gather is None and t("ivr.no_answer") in heard.text


def test_a_call_has_a_maximum_number_of_turns(phone: Caller, monkeypatch) -> None:
    monkeypatch.setattr(ivr, "MAX_TURNS", 5)
    phone.call()
    phone.press("1")
    for _ in range(4):
        heard = phone.press("*")
        assert heard.gather is not None
    heard = phone.press("*")
    assert heard.hangup and heard.gather is None and t("ivr.too_long") in heard.text


def test_a_retried_request_is_answered_from_record_and_acts_once(phone: Caller) -> None:
    first = book_in_hindi(phone)  # its last request confirmed the booking
    again = phone.repeat()
    assert again.xml == first.xml
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(Booking)) == 1
        ids = s.scalars(select(InboundEvent.external_id)
                        .where(InboundEvent.provider == "twilio-voice")).all()
    assert f"{phone.sid}:0" in ids and len(ids) == len(set(ids))


def _voice_state(phone_number: str) -> tuple[str, dict[str, Any]]:
    with transaction() as s:
        conv = s.scalar(select(Conversation).where(Conversation.channel == "voice",
                                                   Conversation.contact == phone_number))
        return conv.step, conv.state


def _voice_events() -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(InboundEvent.external_id)
                              .where(InboundEvent.provider == "twilio-voice")))


def test_a_retried_keypress_mid_call_is_answered_from_record_and_changes_nothing(
        phone: Caller, monkeypatch) -> None:
    phone.call()
    phone.press("1")  # Hindi
    first = phone.press("1")  # book: asks for the pickup pincode
    before = _voice_state(phone.phone)
    events = _voice_events()
    real, runs = ivr._answer, []
    monkeypatch.setattr(ivr, "_answer", lambda *a: runs.append(a) or real(*a))

    again = phone.repeat()

    assert again.xml == first.xml
    assert runs == []  # the call's state said this turn was answered: the dialog never ran
    assert _voice_state(phone.phone) == before  # the retry took no turn of its own
    assert _voice_events() == events
    heard = phone.press("845438#")  # and the call goes on from where it was
    assert t("ivr.place.pincode", digits="8 4 5, 4 3 8") in heard.text


def test_a_retry_after_the_call_closed_is_answered_from_record_and_starts_nothing(
        phone: Caller) -> None:
    phone.call()
    phone.press("1")
    phone.press("1")
    first = phone.press("845438#")
    phone.hang_up()  # the status callback closes the call; the draft stays
    step, state = _voice_state(phone.phone)
    assert "call" not in state

    again = phone.repeat()  # Twilio's retry of the last keypress, after the hang-up

    assert again.xml == first.xml
    assert _voice_state(phone.phone) == (step, state)  # no new call was started by it
    assert sorted(_voice_events()) == sorted(set(_voice_events()))


def test_twin_requests_of_one_turn_at_once_take_the_turn_once(
        phone: Caller, app, monkeypatch) -> None:
    """Real threads: the first request holds the caller's row lock until the database
    shows its twin waiting on it; the twin then answers from record."""
    import threading

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from core.adapters import db
    from core.services import conversation

    phone.call()
    phone.press("1")  # Hindi; the menu is next
    assert phone.action
    path = phone.action.removeprefix(get_settings().public_base_url)
    form = phone.form(Digits="1")
    url = make_url(db.engine().url.render_as_string(hide_password=False))
    watcher = create_engine(url, isolation_level="AUTOCOMMIT")
    real = conversation.contact_for
    holding = threading.Event()
    waiters: list[int] = []

    def contact_for_then_wait_for_twin(session, msg):
        found = real(session, msg)  # the conversation row is locked from here
        if not holding.is_set():
            holding.set()
            with watcher.connect() as conn:  # bounded: a twin that never waits fails below
                conn.execute(text(
                    "DO $$ DECLARE deadline timestamptz := clock_timestamp() + "
                    "interval '10 s'; BEGIN WHILE NOT EXISTS (SELECT 1 FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock') "
                    "AND clock_timestamp() < deadline LOOP PERFORM pg_sleep(0.01); "
                    "PERFORM pg_stat_clear_snapshot(); END LOOP; END $$"))
                waiters.append(conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'")).scalar_one())
        return found

    monkeypatch.setattr(ivr, "contact_for", contact_for_then_wait_for_twin)
    answers: list[str] = []

    def post() -> None:
        r = post_twilio(app.test_client(), path, form)
        answers.append(f"{r.status_code} {r.get_data(as_text=True)}")

    first = threading.Thread(target=post)
    first.start()
    assert holding.wait(10)
    twin = threading.Thread(target=post)
    twin.start()
    first.join(20)
    twin.join(20)
    watcher.dispose()

    assert waiters == [1]  # the twin really waited on the lock the first one held
    assert len(answers) == 2 and answers[0] == answers[1] and answers[0].startswith("200 ")
    assert t("ivr.pickup.ask") in " ".join(answers[0].split())  # the turn: book, once
    events = _voice_events()
    assert len(events) == len(set(events)) == 3  # the call, Hindi, and this one turn


def test_a_turn_that_fails_midway_keeps_nothing_and_the_retry_hears_the_same(
        phone: Caller, monkeypatch) -> None:
    from sqlalchemy import text

    real = ivr.VoicePorts.confirm

    def breaks_after_booking(self, slots):
        done = real(self, slots)  # the booking and its SMS are written ...
        self.session.execute(text("SELECT 1 / 0"))  # ... then the database refuses
        return done

    monkeypatch.setattr(ivr.VoicePorts, "confirm", breaks_after_booking)
    heard = book_in_hindi(phone)
    assert heard.hangup and heard.gather is None
    assert t("common.error_try_later") in heard.text
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(Booking)) == 0
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 0
    assert step_of(phone.phone) == "confirm"  # the draft is as it was before the keys
    assert phone.repeat().xml == heard.xml  # answered from record, not run again
    monkeypatch.undo()
    heard = phone.call()  # calling back offers the draft
    assert t("ivr.resume.ask", place="Bettiah") in heard.text


def test_hang_up_keeps_the_draft_and_a_call_back_offers_it_first(phone: Caller) -> None:
    phone.call()
    phone.press("1")
    phone.press("1")
    phone.press("845438#")
    phone.press("2")
    phone.press("1")
    phone.hang_up()
    with transaction() as s:
        conv = s.scalar(select(Conversation).where(Conversation.channel == "voice"))
        assert "call" not in conv.state and conv.state["draft_step"] == "drop"
    clock.freeze(START + timedelta(hours=3))
    heard = phone.call()
    assert t("ivr.resume.ask", place="Bettiah") in heard.text
    assert t("ivr.menu") not in heard.text
    heard = phone.press("1")
    assert t("ivr.drop.ask") in heard.text


def test_a_draft_older_than_a_day_is_not_offered(phone: Caller) -> None:
    phone.call()
    phone.press("1")
    phone.press("1")
    phone.press("845438#")
    phone.press("2")
    phone.press("1")
    phone.hang_up()
    clock.freeze(START + timedelta(hours=25))
    heard = phone.call()
    assert t("ivr.menu") in heard.text and t("ivr.resume.continue") not in heard.text


def test_track_offers_recent_bookings_first(phone: Caller) -> None:
    book_in_hindi(phone)
    phone.hang_up()
    with transaction() as s:
        ref = s.scalar(select(Booking.reference))
    phone.call()
    heard = phone.press("2")
    assert t("ivr.track.recent") in heard.text
    # Named by its place and its number's last 4 digits, as the cancel list names it.
    assert t("ivr.track.option", place="Laxmipur", digits=spoken.spell_digits(ref[-4:])) \
        in heard.text, heard.text
    assert spoken.spell_digits(ref) not in heard.text
    assert heard.gather["finishOnKey"] == "#" and "numDigits" not in heard.gather
    heard = phone.press("1")
    assert t("booking.status.awaiting_payment", ref=spoken.spell_digits(ref)) in heard.text
    assert t("ivr.menu") in heard.text
    phone.press("2")
    heard = phone.press("12345678#")  # a check digit that does not match
    assert t("ivr.track.bad") in heard.text
    heard = phone.press(f"{ref}#")
    assert t("booking.status.awaiting_payment", ref=spoken.spell_digits(ref)) in heard.text


def test_cached_prompts_are_played_and_missing_ones_are_said_and_queued(phone: Caller,
                                                                        prompts) -> None:
    from core.adapters.queue import RENDER_QUEUE, queue

    menu = t("ivr.menu")
    path = audio.audio_path("hi", menu)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"ID3fake")
    with transaction() as s:
        s.add(Person(phone=phone.phone, role="customer", preferred_language="hi"))
    heard = phone.call()
    assert any(u.endswith(f"/ivr/audio/hi/{path.stem}.mp3") for u in heard.plays)
    assert menu not in heard.text  # played, not said
    assert t("ivr.welcome") in heard.text  # not cached: <Say language="hi-IN">
    assert ("hi-IN", t("ivr.welcome")) in heard.says
    queued = {j.args[1] for j in queue(RENDER_QUEUE).get_jobs()
              if j.func_name == audio.RENDER_JOB}
    assert t("ivr.welcome") in queued and menu not in queued


def test_outside_the_service_area_is_said_plainly(phone: Caller) -> None:
    phone.call()
    phone.press("1")
    phone.press("1")
    heard = phone.press("110001#")  # New Delhi: far from every demo Point
    assert t("ivr.place.none") in heard.text or "किलोमीटर" in heard.text
    assert t("ivr.pickup.ask") in heard.text
    heard = phone.press("1234#")
    assert t("ivr.place.bad_pincode") in heard.text


def test_change_before_confirming_returns_to_the_fare(phone: Caller) -> None:
    phone.call()
    for keys in ("1", "1", "845438#", "2", "1", "845450#", "7", "1", "9876543210#", "1",
                 "1", "1", "2"):
        heard = phone.press(keys)
    assert t("ivr.confirm.yes") in heard.text
    heard = phone.press("2")
    assert t("ivr.change.ask") in heard.text
    phone.press("5")  # speed
    heard = phone.press("1")  # express
    assert t("ivr.confirm.summary", pickup="Bettiah", drop="Laxmipur", size=t("ivr.size.bag"),
             tier=t("tier.express", hours=3)) in heard.text
    heard = phone.press("3")  # do not book
    assert t("ivr.confirm.dropped") in heard.text
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(Booking)) == 0


# --- protocol --------------------------------------------------------------------------

def test_unsigned_or_malformed_requests_are_refused(client, prompts) -> None:
    form = {"CallSid": "CAbad1", "From": "+919812300100", "To": "+15005550006"}
    for path in ("/webhooks/voice", "/webhooks/voice/gather?turn=1", "/webhooks/voice/status"):
        r = post_twilio(client, path, form, signature="bad")
        assert r.status_code == 403
    assert post_twilio(client, "/webhooks/voice", {"From": "+919812300100"}).status_code == 400
    assert post_twilio(client, "/webhooks/voice", {"CallSid": "CAx1"}).status_code == 400
    for bad in ("/webhooks/voice/gather", "/webhooks/voice/gather?turn=x",
                "/webhooks/voice/gather?turn=0", "/webhooks/voice/gather?turn=99999"):
        r = post_twilio(client, bad, form)
        assert r.status_code == 400, bad
        assert r.is_json
    body = b"CallSid=CA1&From=\xff"  # not UTF-8
    path = "/webhooks/voice"
    r = client.post(path, data=body, headers={
        "X-Twilio-Signature": twilio_signature(path, {}),
        "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(InboundEvent)) == 0


def test_a_hidden_number_is_told_politely(client, prompts) -> None:
    form = {"CallSid": "CAanon1", "From": "anonymous", "To": "+15005550006"}
    heard = Heard.parse(post_twilio(client, "/webhooks/voice", form).get_data(as_text=True))
    assert heard.hangup and t("ivr.hidden_number") in heard.text


def test_every_answer_is_twiml_the_twilio_library_builds(phone: Caller) -> None:
    heard = phone.call()
    assert heard.xml.startswith('<?xml version="1.0" encoding="UTF-8"?><Response>')
    assert re.search(r'<Gather [^>]*input="dtmf"', heard.xml)


# --- ./run prompts and ./run call ------------------------------------------------------

@pytest.fixture
def google(monkeypatch, tmp_path) -> FakeGoogle:
    """Google's TTS endpoint replaced at the HTTP boundary (gTTS's own code still runs)."""
    from requests.adapters import HTTPAdapter

    fake = FakeGoogle()
    monkeypatch.setattr(HTTPAdapter, "send", lambda self, request, **kw: fake.send(
        self, request, **kw))
    monkeypatch.setattr(audio, "cache_dir", lambda: tmp_path)
    return fake


def test_run_prompts_renders_what_is_missing_or_says_google_is_unreachable(
        clean_db, google, capsys) -> None:
    from ivr_flows import prompts as command

    google.online = False
    assert command.main([]) == 1
    assert "cannot reach Google" in capsys.readouterr().err
    assert not list(audio.cache_dir().rglob("*.mp3"))
    google.online = True
    assert command.main([]) == 0
    assert f"Done: {len(audio.catalog_prompts())} rendered now" in capsys.readouterr().out
    assert command.main([]) == 0
    assert "already rendered" in capsys.readouterr().out


def test_the_call_simulator_books_against_a_live_server(live, prompts) -> None:
    from core.services.seed import seed_demo
    from ops.call import Phone

    seed_demo()
    menu = t("ivr.menu")
    path = audio.audio_path("hi", menu)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"ID3fake")
    sim = Phone(live.base_url, "+919812300299", get_settings().twilio_auth_token)
    lines = "\n".join(sim.call())
    assert "(hi-IN, Twilio voice) नमस्ते!" in lines and "[waiting for one key]" in lines
    lines = "\n".join(sim.press("1"))
    assert f"▶ (audio hi/{path.stem}.mp3) {menu}" in lines  # which audio, and its text
    for keys in ("1", "845438#", "2", "1", "845450#", "7", "1", "9876543210#", "1", "1",
                 "1", "2"):
        lines = "\n".join(sim.press(keys))
    assert "[waiting for one key]" in lines and t("ivr.confirm.yes") in lines
    lines = "\n".join(sim.press("1"))
    assert t("ivr.confirm.done", digits="")[:10] in lines
    from core.adapters.queue import RENDER_QUEUE, queue

    for job in queue(RENDER_QUEUE).get_jobs():  # no gTTS here: this test has no fake Google
        if job.func_name == audio.RENDER_JOB:
            job.delete()
    run_jobs()  # the payment link job, then the SMS, through the sandbox Twilio
    texts = "\n".join(sim.sms())
    assert "✉ SMS: बुकिंग" in texts and "Laxmipur" in texts
    assert "/sandbox/payment_links/" in texts  # the payment link, by SMS
    sim.hang_up()
    assert "(the call has ended" in sim.press("1")[0]


def test_a_number_the_caller_keyed_in_is_never_rendered_or_queued(phone: Caller) -> None:
    # The read-back of the recipient's number is the caller's own data: spoken by <Say>,
    # never sent to gTTS, queued as a job (RQ would log its arguments) or kept as a file.
    from core.adapters.queue import QUEUES, queue
    from ivr_flows.audio import RENDER_JOB

    book_in_hindi(phone)
    texts = [str(job.args) for name in QUEUES for job in queue(name).get_jobs()
             if job.func_name == RENDER_JOB]
    assert texts, "the prompts of the call were queued for rendering"
    assert not [text for text in texts if "9 8 7 6 5" in text or "9876543210" in text]


def operator_takes(client, xml: str, key: str = "1") -> str:  # noqa: ANN001
    """The operators' phone answers the <Dial> in ``xml`` and presses ``key``: Twilio
    requests the <Number>'s url, then the screen's Gather action (each signed). The
    TwiML of that answer (empty: put through)."""
    import xml.etree.ElementTree as ET

    base = get_settings().public_base_url
    number = ET.fromstring(xml).find("Dial/Number")
    assert number is not None and number.get("url"), xml
    form = {"CallSid": "CAopsleg0001", "AccountSid": "ACtest", "From": "+15005550006",
            "To": get_settings().ops_phone, "CallStatus": "in-progress"}
    r = post_twilio(client, number.get("url", "").removeprefix(base), form)
    assert r.status_code == 200, r.get_data(as_text=True)
    gather = ET.fromstring(r.get_data(as_text=True)).find("Gather")
    assert gather is not None, r.get_data(as_text=True)
    r = post_twilio(client, gather.get("action", "").removeprefix(base),
                    dict(form, Digits=key))
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_data(as_text=True)

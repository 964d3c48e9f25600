"""Operator hours (OPS_HOURS, India time, every day): outside them "talk to a person"
still joins the waiting list but says when the team starts, a call is not put through to
an operator's mobile, and the idle close counts from the opening. Through the signed
WhatsApp and voice webhooks, the drain job and the outbox sweep, with the clock frozen."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from core import clock
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff
from core.config import ConfigError, get_settings, load_settings, reset_settings
from core.services import handoff
from tests.conftest import run_jobs, send_whatsapp
from tests.test_config import sandbox_env
from tests.test_ivr import Caller, Heard, prompts, t  # noqa: F401
from tests.test_ivr_gaps import AbsoluteCaller, path_of, post

DAY = "OK. A person from our team will reply here in about 15 minutes."
NIGHT = ("OK. Our team works from 8 am to 9 pm. A person from our team will reply here "
         "after 8 am.")
_sid = iter(range(1, 100_000))


def india(hour: int, minute: int = 0, *, day: int = 1, second: int = 0) -> datetime:
    """A moment of 2026-12-<day> at hour:minute India time (UTC+05:30), as UTC."""
    return (datetime(2026, 12, day, hour, minute, second, tzinfo=UTC)
            - timedelta(hours=5, minutes=30))


@pytest.fixture
def hours(monkeypatch) -> Iterator[Callable[[str], None]]:
    """OPS_HOURS for this test (08:00-21:00 unless it sets another), read afresh."""

    def use(value: str) -> None:
        monkeypatch.setenv("OPS_HOURS", value)
        reset_settings()

    use("08:00-21:00")
    yield use
    monkeypatch.undo()
    reset_settings()
    clock.freeze(None)


# --- the setting -----------------------------------------------------------------------

def test_the_default_is_eight_to_nine_and_24h_is_always():
    assert load_settings(sandbox_env()).ops_hours == (8 * 60, 21 * 60)
    assert load_settings(sandbox_env(OPS_HOURS="24h")).ops_hours is None
    assert load_settings(sandbox_env(OPS_HOURS=" 24H ")).ops_hours is None
    assert load_settings(sandbox_env(OPS_HOURS="9:30 - 18:00")).ops_hours == (570, 1080)
    assert load_settings(sandbox_env(OPS_HOURS="20:00-04:00")).ops_hours == (1200, 240)
    assert load_settings(sandbox_env(OPS_HOURS="08:00-24:00")).ops_hours == (480, 0)


@pytest.mark.parametrize("value", ["8-21", "08:00", "nine to nine", "25:00-21:00",
                                   "08:60-21:00", "08:00-24:30", "08:00-08:00", "always"])
def test_a_bad_value_is_named_in_the_one_refusal(value):
    with pytest.raises(ConfigError) as refused:
        load_settings(sandbox_env(OPS_HOURS=value, PORT="eighty"))
    lines = str(refused.value).splitlines()
    assert any(line.startswith("OPS_HOURS") and repr(value) in line for line in lines), lines
    assert any(line.startswith("PORT") for line in lines), lines  # one message, every problem


def test_open_hours_and_the_next_opening_in_india_time():
    day = (8 * 60, 21 * 60)
    assert handoff.is_open(day, india(20, 59)) and not handoff.is_open(day, india(21, 0))
    assert not handoff.is_open(day, india(7, 59)) and handoff.is_open(day, india(8, 0))
    assert not handoff.is_open(day, india(0, 0))
    night = (20 * 60, 4 * 60)  # a night shift, past midnight
    assert handoff.is_open(night, india(2, 0)) and not handoff.is_open(night, india(4, 0))
    assert handoff.is_open(None, india(3, 0))


def test_only_the_team_s_hours_count_as_waiting_time():
    hour = timedelta(hours=1)
    day = (8 * 60, 21 * 60)
    assert handoff.team_time(day, india(20, 30), india(8, 0, day=2)) == hour / 2
    assert handoff.team_time(day, india(23, 0), india(9, 0, day=2)) == hour
    assert handoff.team_time(day, india(10, 0), india(11, 0)) == hour
    assert handoff.team_time(day, india(10, 0), india(10, 0, day=3)) == 26 * hour
    assert handoff.team_time(day, india(11, 0), india(10, 0)) == 0 * hour
    night = (20 * 60, 4 * 60)
    assert handoff.team_time(night, india(3, 0), india(21, 0)) == 2 * hour  # 03-04, 20-21
    assert handoff.team_time(night, india(12, 0), india(12, 0, day=2)) == 8 * hour
    whole = (0, 24 * 60)
    assert handoff.team_time(whole, india(12, 0), india(12, 0, day=2)) == 24 * hour
    assert handoff.team_time(None, india(23, 0), india(1, 0, day=2)) == 2 * hour


# --- WhatsApp --------------------------------------------------------------------------

def say(client, phone: str, body: str, **extra: str) -> str:  # noqa: ANN001
    return send_whatsapp(client, {"From": f"whatsapp:{phone}", "To": "whatsapp:+14155238886",
                                  "Body": body, "MessageSid": f"SMhrs{next(_sid):029d}",
                                  "ProfileName": "Sita", **extra})


def ask_for_a_person(client, phone: str, at: datetime) -> str:  # noqa: ANN001
    clock.freeze(at)
    for body in ("hi", "2"):  # English
        say(client, phone, body)
    return say(client, phone, "4")


def waiting() -> list[tuple[str, str]]:
    with transaction() as s:
        return [(h.channel, h.reason) for h in s.scalars(
            select(Handoff).where(Handoff.status == "waiting").order_by(Handoff.id))]


@pytest.mark.parametrize(("day_at", "night_at"), [
    # The last minute a reply in 15 minutes is due inside the hours, then one not.
    (india(20, 44), india(20, 50)),
    (india(12, 0), india(21, 0)),  # closed at 21:00
    (india(8, 0, day=2), india(7, 59, day=2)),  # the morning: one minute early, then open
    (india(12, 0), india(0, 0, day=2)),  # midday, midnight
])
def test_whatsapp_outside_the_hours_joins_the_list_and_hears_when_the_team_starts(
        client, live, hours, day_at, night_at):
    day = ask_for_a_person(client, "+919812300041", day_at)
    assert DAY in day and "Our team works" not in day
    night = ask_for_a_person(client, "+919812300042", night_at)
    assert NIGHT in night and "15 minutes" not in night and "call +91" not in night
    assert waiting() == [("whatsapp", "asked"), ("whatsapp", "asked")]  # ops see both


def test_24h_means_a_reply_in_minutes_at_any_hour(client, live, hours):
    assert NIGHT in ask_for_a_person(client, "+919812300043", india(23, 0))
    hours("24h")
    assert DAY in ask_for_a_person(client, "+919812300044", india(23, 30))
    assert DAY in ask_for_a_person(client, "+919812300045", india(3, 0, day=2))


def test_other_hours_are_said_the_way_people_say_them(client, live, hours):
    hours("09:30-18:00")
    said = ask_for_a_person(client, "+919812300046", india(18, 0))
    assert "Our team works from 9:30 am to 6 pm" in said and "after 9:30 am" in said


def test_a_person_offered_after_misses_or_a_voice_note_says_the_hours_at_night(
        client, live, hours):
    phone = "+919812300047"
    clock.freeze(india(22, 15))
    for body in ("hi", "2", "1", "banana", "banana"):  # English, book, then nonsense
        say(client, phone, body)
    assert "Shall I ask a person to help you?" in say(client, phone, "banana")
    assert NIGHT in say(client, phone, "1")
    other = "+919812300048"
    for body in ("hi", "2"):
        say(client, other, body)
    asked = say(client, other, "", NumMedia="1", MediaContentType0="audio/ogg",
                MediaUrl0="https://api.twilio.com/voice-note")
    assert "Shall someone call you back?" in asked
    called = say(client, other, "1")
    assert ("OK. Our team works from 8 am to 9 pm. A person from our team will call you "
            "after 8 am.") in called and "15 minutes" not in called
    assert sorted(waiting()) == [("whatsapp", "callback"), ("whatsapp", "not_understood")]


# --- the idle close --------------------------------------------------------------------

def sweep_at(at: datetime) -> list[str]:
    """The outbox sweep job (which closes idle handoffs) run through RQ at ``at``; the
    handoffs' states, oldest first."""
    from core.adapters.queue import queue

    clock.freeze(at)
    queue("outbox").enqueue("workers.outbox.sweep", job_id=f"sweep-{int(at.timestamp())}")
    run_jobs(("outbox",))
    with transaction() as s:
        return list(s.scalars(select(Handoff.status).order_by(Handoff.id)))


def test_a_request_waits_twelve_hours_of_the_team_s_time(client, live, hours):
    assert handoff.idle_hours() == 12
    ask_for_a_person(client, "+919812300049", india(20, 30))  # 30 minutes before closing
    night = "+919812300050"
    ask_for_a_person(client, night, india(23, 0))
    clock.freeze(india(2, 0, day=2))
    say(client, night, "hello? anyone?")  # at night: the idle time still starts at 08:00
    assert sweep_at(india(8, 31, day=2)) == ["waiting", "waiting"]  # 12 h, but at night
    assert sweep_at(india(19, 29, day=2)) == ["waiting", "waiting"]
    assert sweep_at(india(19, 31, day=2)) == ["closed", "waiting"]  # 30 min + 11 h 30
    assert sweep_at(india(20, 1, day=2)) == ["closed", "closed"]  # 12 h after 08:00


def test_nothing_is_closed_while_the_team_is_away(client, live, hours):
    hours("09:30-18:00")
    assert "15 minutes" in ask_for_a_person(client, "+919812300051", india(17, 30))
    assert sweep_at(india(5, 31, day=2)) == ["waiting"]  # 12 h later, at night
    assert sweep_at(india(9, 29, day=2)) == ["waiting"]
    assert sweep_at(india(20, 59, day=2)) == ["waiting"]  # only 9 h of their time so far
    assert sweep_at(india(12, 29, day=3)) == ["waiting"]
    assert sweep_at(india(12, 31, day=3)) == ["closed"]  # 30 min + 8 h 30 + 3 h


# --- the phone -------------------------------------------------------------------------

@pytest.fixture
def caller(client, prompts, hours) -> Caller:  # noqa: F811
    from core.services.seed import seed_demo

    seed_demo()
    return AbsoluteCaller(client)


def call_for_a_person(caller: Caller, at: datetime) -> Heard:
    clock.freeze(at)
    caller.call()
    caller.press("2")  # English
    return caller.press("3")  # talk to a person


def test_a_night_call_is_not_dialled_to_ops_and_hears_when_we_call_back(caller: Caller):
    heard = call_for_a_person(caller, india(21, 0))
    assert "<Dial" not in heard.xml and heard.dial is None
    said = t("ivr.person.after_hours", "en", open=t("time_of_day.morning", "en", time="8"),
             close=t("time_of_day.night", "en", time="9"))
    assert said == "Our team works from 8 am to 9 pm. We will call you back after 8 am."
    assert said in heard.text and heard.hangup and heard.gather is None
    assert waiting() == [("voice", "asked")]  # on ops' call-back list for the morning
    caller.hang_up()
    clock.freeze(india(20, 59, day=2))  # the next evening, in the hours: put through
    caller.call()
    heard = caller.press("3")  # English is known now: the menu first
    assert heard.dial == get_settings().ops_phone
    assert t("ivr.person.connecting", "en") in heard.text


def test_a_person_offered_after_wrong_keys_at_night_is_not_dialled_either(caller: Caller):
    clock.freeze(india(4, 30))
    caller.call()
    caller.press("2")
    for keys in ("7", "8"):
        caller.press(keys)
    assert t("ivr.offer.ask", "en") in caller.press("9").text
    heard = caller.press("1")
    assert heard.dial is None and "<Dial" not in heard.xml and heard.hangup
    assert "after 8 am" in heard.text
    assert waiting() == [("voice", "not_understood")]


def test_a_call_put_through_just_before_closing_hears_the_hours_if_nobody_answered(
        caller: Caller):
    dial = call_for_a_person(caller, india(20, 59, second=40))
    assert dial.dial == get_settings().ops_phone
    action = path_of(dial_action(dial))
    clock.freeze(india(21, 0, second=10))  # 30 s of ringing later, the team's day is over
    heard = post(caller.client, action, caller.form(DialCallStatus="no-answer"))
    assert "after 8 am" in heard.text and "15 minutes" not in heard.text and heard.hangup
    assert waiting() == [("voice", "asked")]


def dial_action(heard: Heard) -> str:
    import xml.etree.ElementTree as ET

    dial = ET.fromstring(heard.xml).find("Dial")
    assert dial is not None, heard.xml
    return dial.get("action", "")


def test_said_time_uses_the_part_of_the_day():
    from core.dialog.booking import said_time

    keys = [(said_time(m).key.rsplit(".", 1)[1], said_time(m).params["time"])
            for m in (0, 3 * 60 + 59, 8 * 60, 12 * 60 + 30, 16 * 60, 19 * 60, 21 * 60)]
    assert keys == [("late_night", "12"), ("late_night", "3:59"), ("morning", "8"),
                    ("noon", "12:30"), ("afternoon", "4"), ("evening", "7"), ("night", "9")]

"""Session 39 (hwords10, after review rnew4 of 57cceea): rider replies to an open offer that
57cceea left "not understood" (the offer kept holding the job) where they declined before.

1. "2" is the offer's no: "2 shaam ko aaunga" at 17:30, "2, raat ko aaunga" at 21:00
   decline whatever the hour, as a "1" with an evening is a yes (asked again); not "2
   baje" (an hour): core.domain.dispatch._key.
2. A yes-like word ("accha", "sure", "fine", "chalo") only acknowledges beside a no, a
   can't-come, the key "2", a "but" or an "only": "accha, nahi aa sakta, shaam ko aaunga",
   "sure but coming in the evening", "fine, will come in the evening only" decline
   (_only_acknowledged). A yes ("ok", "haan") with a no is asked again, as before.
3. A clock hour said with the time of day decides, not when that time of day begins:
   "shaam 7 baje aaunga" at 16:30 (19:00, two and a half hours on) declines; an hour or
   more after he said it is hours later (_HOURS_LATER), under an hour is asked again, as
   a coming in minutes is (_hours_away, _said_hour).
4. Before dawn only the night words may be now: "shaam ko aaunga" at 03:00 declines,
   "raat ko aaunga" at 03:00 is still asked again.

Webhook set-ups are those of tests/test_rider_words2_s39.py (real PostgreSQL, Redis, RQ,
the signed SMS webhook; time frozen through core.clock)."""

from __future__ import annotations

from datetime import time

import pytest

from core.domain.dispatch import Kind, parse_command
from tests.test_admin import _keep_root_handlers  # noqa: F401  (autouse fixture)
from tests.test_dispatch import (
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    offers,
    sms,
)
from tests.test_partner_sms_s35 import _offered

# --- 1. The key "2" -----------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "at"), [
    ("2 shaam ko aaunga", time(17, 30)),
    ("2, raat ko aaunga", time(21)),
    ("raat ko aaunga, 2", time(21)),
    ("2 raat ko aaunga", time(2)),
    ("2 shaam ko aaunga", time(11)),
    ("accha 2, shaam ko aaunga", time(17, 30)),
])
def test_two_with_a_coming_later_today_declines_whatever_the_hour(body, at):
    assert parse_command(body, at).kind is Kind.DECLINE, (body, at)


@pytest.mark.parametrize(("body", "at"), [
    ("shaam 2 baje aaunga", time(17, 30)),  # an hour gone by, evening begun: asked again
    ("2 baje raat ko aaunga", time(1, 30)),  # 02:00 of this night, half an hour on
    ("2 ok shaam ko aaunga", time(17, 30)),  # a yes and a no
    ("1 shaam ko aaunga", time(17, 30)),
])
def test_two_as_an_hour_or_beside_a_yes_is_no_key(body, at):
    assert parse_command(body, at).kind is Kind.UNKNOWN, (body, at)


# --- 2. A yes-like word beside a no -------------------------------------------------------------


@pytest.mark.parametrize("body", [
    "accha, nahi aa sakta, shaam ko aaunga",
    "accha nahi, shaam ko aaunga",
    "chalo nahi aa sakta shaam ko aaunga",
    "sure, can't come now, will come in the evening",
    "fine, will come in the evening only",
    "sure but coming in the evening",
    "accha lekin shaam ko aaunga",
    "accha shaam ko hi aaunga",
])
def test_a_no_wins_over_a_yes_like_opener(body):
    assert parse_command(body, time(11)).kind is Kind.DECLINE, body


@pytest.mark.parametrize("body", ["accha, nahi aa sakta, shaam ko aaunga",
                                  "accha nahi, shaam ko aaunga"])
def test_a_no_after_a_yes_like_opener_declines_in_the_evening_too(body):
    assert parse_command(body, time(17, 30)).kind is Kind.DECLINE, body


@pytest.mark.parametrize("body", [
    "sure, coming this evening",  # a yes-like word alone with the evening: as 57cceea
    "accha shaam ko aata hu",
    "ok, nahi aa sakta, shaam ko aaunga",  # a yes and a no: asked again, as before
    "haan nahi aa sakta shaam ko aaunga",
    "ok but shaam ko aaunga",
])
def test_a_yes_with_an_evening_is_still_asked_again(body):
    assert parse_command(body, time(11)).kind is Kind.UNKNOWN, body


# --- 3. A clock hour with the time of day -------------------------------------------------------


@pytest.mark.parametrize(("body", "at"), [
    ("shaam 7 baje aaunga", time(16, 30)),
    ("raat 11 baje aaunga", time(20, 15)),
    ("शाम 7 बजे आऊंगा", time(16, 30)),
    ("evening 7 pm aaunga", time(16, 30)),
    ("will come at 7 in the evening", time(16, 30)),
    ("dopahar 3 baje aaunga", time(12, 30)),
    ("7 baje shaam ko aaunga", time(18)),  # exactly an hour on
    ("raat 1 baje aaunga", time(21)),  # 01:00 of this night
    ("raat 2 baje aa jaunga", time(0, 30)),
    ("shaam 7:30 baje aaunga", time(18, 30)),
    ("abhi nahi aa sakta, shaam 7 baje aaunga", time(16, 30)),
])
def test_a_clock_hour_an_hour_or_more_on_declines(body, at):
    assert parse_command(body, at).kind is Kind.DECLINE, (body, at)


@pytest.mark.parametrize(("body", "at"), [
    ("shaam 7 baje aaunga", time(18, 30)),  # half an hour on
    ("shaam 7:30 baje aaunga", time(18, 45)),
    ("shaam 4 baje aaunga", time(15, 30)),  # before the evening begins, but 30 min on
    ("raat 9 baje aaunga", time(20, 30)),
    ("shaam 5 baje aaunga", time(18)),  # gone by, the evening begun: as without an hour
])
def test_a_clock_hour_under_an_hour_on_is_asked_again(body, at):
    assert parse_command(body, at).kind is Kind.UNKNOWN, (body, at)


def test_a_clock_hour_gone_by_falls_back_to_the_time_of_day():
    # 12:00 "in the evening" said at 15:30 reads nothing sure: the evening is to come.
    assert parse_command("shaam 12 baje aaunga", time(15, 30)).kind is Kind.DECLINE


def test_an_hour_alone_is_no_coming():
    assert parse_command("dopahar 3 baje", time(12, 30)).kind is Kind.UNKNOWN


# --- 4. Before dawn ---------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "at"), [
    ("shaam ko aaunga", time(3)),
    ("dopahar ko aaunga", time(4, 30)),
    ("will come in the evening", time(0)),
    ("abhi nahi aa sakta, shaam ko aaunga", time(2)),
])
def test_a_day_time_said_before_dawn_declines(body, at):
    assert parse_command(body, at).kind is Kind.DECLINE, (body, at)


@pytest.mark.parametrize("body", ["raat ko aaunga", "coming tonight"])
def test_the_night_said_before_dawn_is_still_asked_again(body):
    assert parse_command(body, time(3)).kind is Kind.UNKNOWN, body


# --- Through the webhook -----------------------------------------------------------------------


@pytest.mark.db
@pytest.mark.parametrize("body", ["shaam 7 baje aaunga", "2 shaam ko aaunga",
                                  "accha, nahi aa sakta, shaam ko aaunga"])
def test_said_at_half_past_four_declines_the_open_offer(client, live, frozen,  # noqa: F811
                                                        body):
    freeze_at(5 * 3600)  # T0 is 11:30 India time: 16:30, the evening begun
    _, me, job = _offered()
    sms(client, me, body)
    assert [o.status for o in offers(job)] == ["declined"], body


@pytest.mark.db
def test_seven_in_the_evening_said_at_half_past_six_leaves_the_offer_open(
        client, live, frozen):  # noqa: F811
    freeze_at(7 * 3600)  # 18:30 India time
    _, me, job = _offered()
    sms(client, me, "shaam 7 baje aaunga")
    assert [o.status for o in offers(job)] == ["open"]

"""Session 39 (hwords9, after review rnew1): rider words that session 39's hwords8 misread.

1. A clear refusal with its reason was asked again: "nahi aa sakta, raasta kharab hai"
   (can't come, the road is bad), "no, cant come, location is far", "nahi aa sakta, abhi
   khana kha raha hu". Any "not a refusal" clause (a place word, "abhi" with "raha")
   turned its DECLINE into UNKNOWN, so the offer kept holding the job. Only a coming in
   minutes or late ("nahi aa sakta, 10 min me aata hu", "late ho jaunga") is asked again
   now; the rest is read as its words say, as before session 39: its "nahi" declines
   (core.domain.dispatch._parse, _coming_soon).
2. "PICK <code> <job>" is the order our texts teach; two code-long numbers, neither his
   job, are read so again (split_otp_and_job): "you have no job <the job he typed>".
3. "Raat ko aaunga" (I will come at night) sent at 21:00 declined the offer: a time of day
   that has begun (or before dawn) is no "hours later" when the time he sent it is known
   (parse_command(raw, at)): asked again.
4. A yes with a coming later today ("ok shaam ko aaunga" took the offer; "sure, coming
   this evening", "accha shaam ko aata hu" refused it; "chalo shaam ko aata hu" put him
   ON): the offer is for now, so a yes to an evening is neither: asked again. "Bhaiya",
   "sir" are no yes: "bhaiya shaam ko aa jaunga" refuses, as "shaam ko aaunga" does.
5. "job 57 shaam ko aaunga" asks about job 57 (STATUS), as "job 57 kal aaunga" does; it
   declined job 57.
6. "shaam 6 baje tak aa jaunga" refuses as "shaam 5 baje aaunga" does: hours and "tak"
   between the evening and the coming word are no more than "ko". "Shaam ko ghar jaunga"
   (I will go home in the evening) is no coming: "jaunga" is one only after "aa".

Webhook set-ups are those of tests/test_partner_sms_s35.py (real PostgreSQL, Redis, RQ,
the signed SMS webhook; time frozen through core.clock)."""

from __future__ import annotations

from datetime import time

import pytest

from core import i18n
from core.domain.dispatch import Kind, parse_command, split_otp_and_job
from tests.test_admin import _keep_root_handlers  # noqa: F401  (autouse fixture)
from tests.test_dispatch import (
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    offers,
    sms,
)
from tests.test_partner_sms_s35 import _offered

# --- 1. A refusal with its reason declines; minutes or late are asked again -------------------

REFUSALS_WITH_A_REASON = [
    "nahi aa sakta, raasta kharab hai",  # the road is bad
    "nahi aa sakta sir road kharab hai",
    "nahi aa sakta bhai, location door hai",  # the location is far
    "nahi aa sakta, address door hai",
    "no, cant come, location is far",
    "nahi aa sakta, mujhe wahan ka rasta nahi pata",  # I don't know the way there
    "nahi aa sakta, abhi khana kha raha hu",  # I'm eating now
    "nahi aa sakta, gali me pani bhara hai",  # the lane is flooded
    "nahi aa sakta, bahut late ho gaya",  # it has got too late
    "nahi aa sakta, 10 min se khana kha raha hu",  # eating for 10 minutes: no coming
]


@pytest.mark.parametrize("body", REFUSALS_WITH_A_REASON)
def test_a_refusal_with_its_reason_declines(body):
    assert parse_command(body).kind is Kind.DECLINE, body


@pytest.mark.parametrize("body", [
    "nahi aa sakta, 10 min me aata hu",
    "nahi aa sakta, 10 min me aa jaunga",
    "nahi aa sakta, late ho jaunga",
    "nahi aa sakta, thoda late aaunga",
    "no, cant come now, coming in 10",
])
def test_a_coming_in_minutes_or_late_is_asked_again(body):
    assert parse_command(body).kind is Kind.UNKNOWN, body


@pytest.mark.db
@pytest.mark.parametrize("body", ["nahi aa sakta, raasta kharab hai",
                                  "no, cant come, location is far"])
def test_a_refusal_with_its_reason_declines_the_open_offer(client, live, frozen,  # noqa: F811
                                                            body):
    _, me, job = _offered()
    assert sms(client, me, body) == [i18n.t("dispatch.declined", "hi", job=job)]
    assert [o.status for o in offers(job)] == ["declined"]


# --- 2. PICK <code> <job> ---------------------------------------------------------------------


def test_his_code_then_a_mistyped_job_names_the_job():
    """His jobs 9998 and 10021, job 9998 typed 9989 after his code: "no job 9989"."""
    assert split_otp_and_job(("4821", "9989"), ["9998", "10021"]) == ("4821", "9989")
    assert split_otp_and_job(("4821", "9998"), ["9998", "10021"]) == ("4821", "9998")
    assert split_otp_and_job(("9998", "4821"), ["9998", "10021"]) == ("4821", "9998")


# --- 3. The time of day he said it -------------------------------------------------------------


@pytest.mark.parametrize(("body", "at"), [
    ("raat ko aaunga", time(21)),
    ("coming tonight", time(21, 30)),
    ("aaj raat aaunga", time(23)),
    ("raat ko aaunga", time(2)),  # before dawn: still the night
    ("shaam ko aaunga", time(17)),
    ("dopahar tak aa jaunga", time(13)),
    ("abhi nahi aa sakta, raat ko aaunga", time(21)),
])
def test_a_time_of_day_begun_is_asked_again(body, at):
    assert parse_command(body, at).kind is Kind.UNKNOWN, (body, at)


@pytest.mark.parametrize(("body", "at"), [
    ("raat ko aaunga", time(14)),
    ("coming tonight", time(9)),
    ("shaam ko aaunga", time(11)),
    ("abhi nahi aa sakta, raat ko aaunga", time(14)),
    ("raat ko aaunga", None),  # the time unknown: as session 39 read it
])
def test_a_time_of_day_still_to_come_declines(body, at):
    assert parse_command(body, at).kind is Kind.DECLINE, (body, at)


def test_a_cant_come_declines_whatever_the_hour():
    assert parse_command("nahi aa sakta, raat ko aaunga", time(21)).kind is Kind.DECLINE


# --- 4. A yes with a coming later today --------------------------------------------------------


@pytest.mark.parametrize("body", [
    "ok shaam ko aaunga",
    "haan shaam ko aaunga",
    "haan ji raat ko aaunga",
    "sure, coming this evening",
    "accha shaam ko aata hu",
    "chalo shaam ko aata hu",  # was ON
    "ok job 57 shaam ko aaunga",
])
def test_a_yes_to_a_coming_later_today_is_asked_again(body):
    assert parse_command(body).kind is Kind.UNKNOWN, body


@pytest.mark.parametrize("body", ["bhaiya shaam ko aa jaunga", "sir shaam ko aaunga"])
def test_a_word_of_address_is_no_yes(body):
    assert parse_command(body).kind is Kind.DECLINE, body


def test_a_yes_with_another_command_is_that_command():
    assert parse_command("ok off, shaam ko aaunga").kind is Kind.OFF


@pytest.mark.db
def test_ok_this_evening_leaves_the_offer_open(client, live, frozen):  # noqa: F811
    _, me, job = _offered()
    replies = sms(client, me, "ok shaam ko aaunga")
    assert [o.status for o in offers(job)] == ["open"], "taken for an evening"
    assert replies != [i18n.t("dispatch.declined", "hi", job=job)]


# --- 5. A job named -----------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["job 57 shaam ko aaunga", "job 57 kal aaunga"])
def test_a_job_named_with_its_evening_asks_about_it(body):
    assert parse_command(body).kind is Kind.STATUS
    assert parse_command(body).numbers == ("57",)


# --- 6. Hours between the evening and the coming word ------------------------------------------


@pytest.mark.parametrize("body", [
    "shaam 6 baje tak aa jaunga",
    "shaam 5 baje aaunga",
    "raat 9 baje aa jaunga",
    "aaj shaam ko 7 baje tak aa jaunga",
])
def test_hours_beside_the_evening_still_decline(body):
    assert parse_command(body).kind is Kind.DECLINE, body


@pytest.mark.parametrize("body", ["shaam ko ghar jaunga", "abhi aata hu, shaam ko ghar jaunga"])
def test_going_home_in_the_evening_is_no_coming(body):
    assert parse_command(body).kind is not Kind.DECLINE, body


@pytest.mark.db
def test_tonight_said_at_night_leaves_the_offer_open(client, live, frozen):  # noqa: F811
    """The webhook reads the hour he wrote at: "raat ko aaunga" at 21:40 India time (the
    night begun) is asked again, not taken for a refusal; at 11:40 it refuses."""
    freeze_at(10 * 3600 + 600)  # T0 is 11:30 India time: 21:40
    _, me, job = _offered()
    sms(client, me, "raat ko aaunga")
    assert [o.status for o in offers(job)] == ["open"], "refused, said at night"


@pytest.mark.db
def test_tonight_said_in_the_morning_declines(client, live, frozen):  # noqa: F811
    freeze_at(600)  # 11:40 India time
    _, me, job = _offered()
    sms(client, me, "raat ko aaunga")
    assert [o.status for o in offers(job)] == ["declined"]

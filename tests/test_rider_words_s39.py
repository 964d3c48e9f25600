"""Session 39 (hwords8): a rider's free-text answers still misread after session 38.

1. "nahi aa sakta, 10 min me aata hu" (can't come, coming in 10 min) declined the offer:
   its "can't come" was read as no refusal (minutes), and then its first word, "nahi",
   declined. What he says of his coming decides now, whatever word leads: asked again, as
   "abhi nahi aa sakta, 10 min me aata hu" and "can't come now, will be there in 5" are
   (core.domain.dispatch._parse, _cant_come). "nahi aa sakta" alone, and with "kal
   aaunga", still decline.
2. "aaj shaam ko aaunga" (I'll come this evening) was asked again. An offer is for now:
   his coming hours later (evening, night, afternoon, tied to a coming word) refuses it,
   as his coming another day does, unless minutes are said too (_coming_hours_later).
   With a question it is read as before; with a yes ("haan, shaam ko aaunga") it is
   asked again (hwords9: tests/test_rider_words2_s39.py).
3. (Reverted by hwords9.) Two code-long numbers, neither his job, are read in the order
   our texts teach ("Add the job code after the OTP"): the code, then the job. "PICK 4821
   9999" answers "you have no job 9999"; "PICK 9999 4821" answers "you have no job 4821",
   as before session 39. No code is checked either way (no try counted).

Set-ups are those of tests/test_partner_sms_s35.py and tests/test_partner_codes_s38.py
(real PostgreSQL, Redis, RQ, the signed SMS webhook; time frozen through core.clock)."""

from __future__ import annotations

import pytest

from core import i18n
from core.domain.dispatch import Kind, parse_command, split_otp_and_job
from tests.test_admin import _keep_root_handlers  # noqa: F401  (autouse fixture)
from tests.test_dispatch import (
    frozen,  # noqa: F401  (fixture)
    offers,
    sms,
)
from tests.test_dispatch_s36 import _failures
from tests.test_partner_codes_s38 import _mine_and_vijays, _status
from tests.test_partner_sms_s35 import _offered

# --- 1. A leading "nahi aa sakta", then minutes: asked again ---------------------------------


@pytest.mark.parametrize("body", [
    "nahi aa sakta, 10 min me aata hu",
    "nahi aa sakta, 10 me aata hu",
    "nahi aa sakta 5 minute me aaunga",
    "nhi aa skta, 10 min me aata hu",
    "nahi aa sakta, late ho jaunga",  # running late: as "time pe nahi aa sakta, late ..."
    "नहीं आ सकता, 10 मिनट में आता हूँ",
    "abhi nahi aa sakta, 10 min me aata hu",  # as before
    "can't come now, will be there in 5",  # as before
])
def test_cant_come_then_minutes_is_asked_again(body):
    assert parse_command(body).kind is Kind.UNKNOWN, body


@pytest.mark.parametrize("body", [
    "nahi aa sakta",
    "nahi aa sakta, kal aaunga",
    "nahi aa sakta, kal 10 baje aaunga",
    "nahi aa sakta, 2 ghante busy hu",
    "nahi aa sakta, dusra kaam hai",
    "नहीं आ सकता",
])
def test_cant_come_alone_or_another_day_still_declines(body):
    assert parse_command(body).kind is Kind.DECLINE, body


# --- 2. Coming hours later today: a refusal ----------------------------------------------------


@pytest.mark.parametrize("body", [
    "aaj shaam ko aaunga",  # I'll come this evening
    "shaam ko aaunga",
    "aaj raat aaunga",
    "raat ko aaunga",
    "dopahar tak aa jaunga",
    "aaj shaam 5 baje aaunga",
    "aaunga shaam ko",
    "आज शाम को आऊंगा",
    "रात को आऊंगा",
    "will come in the evening",
    "will come tonight",
    "coming in the afternoon",
    "abhi nahi aa sakta, shaam ko aaunga",  # was asked again: "abhi" and "aaunga"
    "nahi, shaam ko aaunga",
])
def test_coming_hours_later_declines(body):
    assert parse_command(body).kind is Kind.DECLINE, body


@pytest.mark.parametrize("body", [
    "shaam ko aaunga, 10 min me",  # minutes said too
    "abhi nahi aa sakta, shaam wala kaam karke 10 min me aata hu",
    "abhi aata hu, shaam ko free hu",  # coming now; the evening is not his coming
    "shaam ko aaunga?",  # a question
    "shaam ka code nahi aaya",
    "1 shaam ko aaunga",  # a yes too
])
def test_minutes_a_question_or_no_coming_later_is_no_refusal(body):
    assert parse_command(body).kind is not Kind.DECLINE, body


def test_a_yes_with_the_evening_is_asked_again():
    """hwords9: a yes to an evening is no yes to an offer for now (was ACCEPT)."""
    assert parse_command("haan shaam ko aaunga").kind is Kind.UNKNOWN


# --- 3. "PICK <code> <4-digit job not his>": the taught order -----------------------------------


def test_two_code_long_numbers_neither_his_job_are_code_then_job():
    assert split_otp_and_job(("4821", "9999"), ["57"]) == ("4821", "9999")
    assert split_otp_and_job(("9999", "4821"), []) == ("9999", "4821")
    # His job among them is his job, wherever it is (as before).
    assert split_otp_and_job(("4821", "5731"), ["5731"]) == ("4821", "5731")
    assert split_otp_and_job(("5731", "4821"), ["5731"]) == ("4821", "5731")
    assert split_otp_and_job(("4821", "99"), ["17"]) == ("4821", "99")  # as before
    assert split_otp_and_job(("4821",), ["17"]) == ("4821", None)


# --- Through the webhook ----------------------------------------------------------------------


@pytest.mark.db
@pytest.mark.parametrize("body", ["nahi aa sakta, 10 min me aata hu",
                                  "nahi aa sakta, 10 me aata hu"])
def test_coming_in_minutes_leaves_the_offer_open(client, live, frozen, body):  # noqa: F811
    _, me, job = _offered()
    replies = sms(client, me, body)
    assert [o.status for o in offers(job)] == ["open"], "a 10-minute delay declined the offer"
    assert replies != [i18n.t("dispatch.declined", "hi", job=job)]


@pytest.mark.db
@pytest.mark.parametrize("body", ["aaj shaam ko aaunga", "nahi aa sakta"])
def test_coming_this_evening_declines_the_open_offer(client, live, frozen,  # noqa: F811
                                                      body):
    _, me, job = _offered()
    assert sms(client, me, body) == [i18n.t("dispatch.declined", "hi", job=job)]
    assert [o.status for o in offers(job)] == ["declined"]


@pytest.mark.db
@pytest.mark.parametrize("command", ["PICK", "DROP"])
def test_a_code_then_a_4_digit_job_not_his_says_no_such_job(client, live, frozen,  # noqa: F811
                                                             command):
    """The taught order, PICK <code> <job>: the job he typed is named back, no code
    checked. (Session 39 read the first as the job: "You have no job <his code>".)"""
    me, mine, my_code, vijays, vijays_code = _mine_and_vijays(client)
    for code in ("4821", my_code, vijays_code):
        assert sms(client, me, f"{command} {code} 9999") == [
            i18n.t("dispatch.no_such_job", "en", job=9999)], code
    assert (_failures(mine), _failures(vijays)) == (0, 0), "a code was checked"
    assert (_status(mine), _status(vijays)) == ("assigned", "assigned")


@pytest.mark.db
@pytest.mark.parametrize("body", ["PICK {code}", "PICK {job} {code}", "PICK {code} {job}"])
def test_his_code_alone_or_with_his_job_still_picks_up(client, live, frozen,  # noqa: F811
                                                       body):
    me, mine, my_code, _, _ = _mine_and_vijays(client)
    sms(client, me, body.format(code=my_code, job=mine))
    assert _status(mine) == "picked_up"

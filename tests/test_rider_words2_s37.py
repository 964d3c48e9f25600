"""Session 37, after review (hwords5 after rnew): rider words 514767c misread.

1. "can't come" / "nahi aa sakta" / "nahi aaunga" anywhere declined his open offer, also
   when the message is about a delay or a problem at a job he holds ("cant come now, will
   come in 10 min", "gate pe guard hai andar nahi aa sakta", "kyu nahi aa sakta"): such a
   message is asked again, as before 514767c (core.domain.dispatch._not_a_refusal).
2. "duty nahi hai" (I am not on duty), "offer nahi hai", "job nahi hai mere liye" (this
   job is not for me) were read as "no work came" (STATUS, the offer left open): only a
   word for work or job before "nahi hai" says that, and not "... mere liye" (_no_work_is).
3. "PICK 57 4821" with job 57 cancelled and 4821 the right code of his live job 60 was
   answered "job 57 is cancelled": the live job is picked up now
   (core.services.dispatch._live_code_beside).

Set-ups are those of tests/test_rider_words_s37.py (real PostgreSQL, Redis, RQ, the signed
SMS webhook; time frozen through core.clock)."""

from __future__ import annotations

import pytest

from core import i18n
from core.domain.dispatch import Kind, parse_command
from tests.conftest import run_jobs
from tests.test_admin import _keep_root_handlers  # noqa: F401  (autouse fixture)
from tests.test_dispatch import (
    CUSTOMER,
    frozen,  # noqa: F401  (fixture)
    last_code,
    offers,
    sms,
)
from tests.test_dispatch_s36 import _failures
from tests.test_partner_sms_s35 import _offered
from tests.test_rider_words_s37 import _cancelled_and_live, _status

# --- 1. "can't come" about a delay, a problem at the door, or asked -------------------------


@pytest.mark.parametrize("body", [
    "cant come now, will come in 10 min", "abhi nahi aa sakta 10 min me aata hu",
    "traffic hai 10 min late, abhi nahi aa sakta", "main aa raha hu late nahi aaunga",
    "abhi nahi aa sakta, baad me aaunga", "main 2 ghante baad aa sakta hu abhi nahi aa sakta",
    "gate pe guard hai andar nahi aa sakta", "address nahi mil raha, aage nahi aa sakta",
    "kyu nahi aa sakta", "why cant come?", "गेट बंद है अंदर नहीं आ सकता",
])
def test_cant_come_about_a_delay_or_a_job_is_asked_again(body):
    assert parse_command(body).kind is Kind.UNKNOWN


@pytest.mark.parametrize("body", [
    "can't come, got another job", "sorry cant come today", "main nahi aa sakta",
    "aaj nahi aa paunga", "nahi aa sakta", "I cannot come now", "nahi aaunga",
    "bike kharab hai nahi aa sakta", "sorry bhai nahi aa sakta", "cant come, raining",
])
def test_cant_come_as_a_refusal_still_declines(body):
    assert parse_command(body).kind is Kind.DECLINE


@pytest.mark.db
@pytest.mark.parametrize("body", ["cant come now, will come in 10 min",
                                  "gate pe guard hai andar nahi aa sakta"])
def test_a_delay_leaves_the_offer_open(client, live, frozen, body):  # noqa: F811
    _, me, job = _offered()
    replies = sms(client, me, body)
    assert [o.status for o in offers(job)] == ["open"], "a delay declined the offer"
    assert replies != [i18n.t("dispatch.declined", "hi", job=job)]


# --- 2. "duty nahi hai", "offer nahi hai", "job nahi hai mere liye": a no ------------------


@pytest.mark.parametrize("body", [
    "duty nahi hai", "ड्यूटी नहीं है", "offer nahi hai", "job nahi hai mere liye",
    "kaam nahi hai mere liye", "job nahi hai for me", "kaam nahi hai mere area me",
])
def test_not_on_duty_or_not_for_me_declines(body):
    assert parse_command(body).kind is Kind.DECLINE


@pytest.mark.parametrize("body", ["aaj duty nahi hai", "meri duty nahi hai aaj"])
def test_no_duty_today_is_read_as_before(body):
    """As before 514767c: asked again (no "no work came" complaint)."""
    assert parse_command(body).kind is Kind.UNKNOWN


@pytest.mark.parametrize("body", ["kaam nahi hai", "job nahi hai", "mere liye kaam nahi hai",
                                  "काम नहीं है", "koi work nahi hai"])
def test_no_work_is_still_a_complaint(body):
    assert parse_command(body).kind is Kind.STATUS


@pytest.mark.db
def test_duty_nahi_hai_declines_the_open_offer(client, live, frozen):  # noqa: F811
    _, me, job = _offered()
    assert sms(client, me, "duty nahi hai") == [i18n.t("dispatch.declined", "hi", job=job)]
    assert [o.status for o in offers(job)] == ["declined"]


# --- 3. A cancelled job named beside the live job's right code ------------------------------


def _live_code() -> str:
    run_jobs()
    return last_code(CUSTOMER)


@pytest.mark.db
@pytest.mark.parametrize("order", ["job_first", "code_first"])
def test_codes_beside_a_cancelled_job_cannot_be_guessed(client, live, frozen, order):  # noqa: F811
    """Review (rnew2a): 047085e picked the live job up when its right code stood beside a
    cancelled job's number, while a wrong one there cost no try: a rider could guess the
    code 10,000 ways without the lock. A code beside a cancelled job's number answers
    "job N is cancelled" whether right or wrong, and picks nothing up."""
    phone, job, code, (live_job,) = _cancelled_and_live(client)
    right = _live_code()
    wrongs = [f"{i:04d}" for i in range(0, 10000, 7) if f"{i:04d}" not in (right, code)][:6]
    for guess in [*wrongs, right]:
        body = f"PICK {job} {guess}" if order == "job_first" else f"PICK {guess} {job}"
        sms(client, phone, body)
    assert _status(live_job) == "assigned"


@pytest.mark.db
def test_a_drop_code_beside_a_cancelled_job_cannot_be_guessed(client, live, frozen):  # noqa: F811
    from tests.test_dispatch import RECIPIENT

    phone, job, code, (live_job,) = _cancelled_and_live(client)
    sms(client, phone, f"PICK {live_job} {_live_code()}")
    assert _status(live_job) == "picked_up"
    run_jobs()
    right = last_code(RECIPIENT)
    for guess in ("0001", "0014", right):
        if guess != code:
            sms(client, phone, f"DROP {job} {guess}")
    assert _status(live_job) == "picked_up"


@pytest.mark.db
def test_a_wrong_code_beside_a_cancelled_job_still_says_cancelled(
        client, live, frozen):  # noqa: F811
    phone, job, code, (live_job,) = _cancelled_and_live(client)
    right = _live_code()
    wrong = next(c for c in ("0000", "1111", "2222") if c not in (right, code))
    assert sms(client, phone, f"PICK {job} {wrong}") == [
        i18n.t("dispatch.job_cancelled", "en", job=job)]
    assert _status(live_job) == "assigned"
    assert _failures(live_job) == 0

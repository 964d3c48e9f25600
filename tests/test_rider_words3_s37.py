"""Session 37, after review (hwords6 after rnew2a of 047085e): rider words 047085e misread.

1. 047085e kept "can't come" from refusing when a delay or question word stood anywhere in
   the message, so clear refusals were asked again and the offer waited for its timeout:
   "aaj nahi aa sakta, kal aaunga" (a "will come" tomorrow), "Sorry I can't come, I will be
   busy" ("will"), "can't come, traffic jam" (his reason), "can't come, busy for 2 hours",
   "main nahi aa sakta, kya karu" ("kya": what can I do). A delay counts only with a word
   for now or minutes ("abhi nahi aa sakta 10 min me aata hu"), "kya" and "will" are no
   question or delay (core.domain.dispatch._not_a_refusal).
2. 047085e read "koi kaam nahi hai mere area me", "koi job nahi hai mere area me" (no work
   comes in my area) and "koi offer nahi hai" (no offer came) as neither: with "koi" (any)
   before the word for work or offer, it is the complaint that no work came (STATUS), as
   before 047085e (_no_work_is, _ANY_WORDS). Without it, "offer nahi hai", "kaam nahi hai
   mere area me" stay a no (tests/test_rider_words2_s37.py).

Set-ups for the webhook cases are those of tests/test_rider_words_s37.py (real PostgreSQL,
Redis, RQ, the signed SMS webhook; time frozen through core.clock)."""

from __future__ import annotations

import pytest

from core import i18n
from core.domain.dispatch import Kind, parse_command
from tests.test_admin import _keep_root_handlers  # noqa: F401  (autouse fixture)
from tests.test_dispatch import (
    frozen,  # noqa: F401  (fixture)
    offers,
    sms,
)
from tests.test_partner_sms_s35 import _offered

# --- 1. "can't come" with its reason: a refusal ---------------------------------------------


@pytest.mark.parametrize("body", [
    "aaj nahi aa sakta, kal aaunga",        # can't come today, will come tomorrow
    "Sorry I can't come, I will be busy",
    "can't come, traffic jam",
    "can't come, busy for 2 hours",
    "main nahi aa sakta, kya karu",         # can't come, what can I do
    "aaj nahi aa sakta, kal aa jaunga",
    "sorry bhai aaj nahi aa paunga, kal milte hai",
    "I cannot come today, will come tomorrow",
])
def test_cant_come_with_a_reason_declines(body):
    assert parse_command(body).kind is Kind.DECLINE


@pytest.mark.parametrize("body", [
    "cant come now, will come in 10 min", "abhi nahi aa sakta 10 min me aata hu",
    "abhi nahi aa sakta, baad me aaunga", "main aa raha hu late nahi aaunga",
    "traffic jam hai, abhi nahi aa sakta 5 min", "can't come now, traffic jam, 10 min",
    "kyu nahi aa sakta", "gate pe guard hai andar nahi aa sakta",
])
def test_not_now_in_a_few_minutes_is_still_asked_again(body):
    assert parse_command(body).kind is Kind.UNKNOWN


@pytest.mark.db
@pytest.mark.parametrize("body", ["aaj nahi aa sakta, kal aaunga", "can't come, traffic jam"])
def test_a_refusal_with_its_reason_declines_the_open_offer(client, live, frozen,  # noqa: F811
                                                           body):
    _, me, job = _offered()
    assert sms(client, me, body) == [i18n.t("dispatch.declined", "hi", job=job)]
    assert [o.status for o in offers(job)] == ["declined"]


# --- 2. "koi kaam / job / offer nahi hai": no work came -------------------------------------


@pytest.mark.parametrize("body", [
    "aaj koi kaam nahi hai mere area me",   # there is no work in my area today
    "koi job nahi hai mere area me",
    "koi offer nahi hai",                   # no offer has come
    "koi bhi kaam nahi hai", "aaj koi offer nahi hai", "koi job nahi hai mere liye",
    "कोई काम नहीं है मेरे एरिया में",
])
def test_no_work_at_all_is_a_complaint(body):
    assert parse_command(body).kind is Kind.STATUS


@pytest.mark.parametrize("body", [
    "offer nahi hai", "kaam nahi hai mere area me", "job nahi hai mere liye",
    "duty nahi hai", "koi baat nahi, job nahi hai mere liye",
])
def test_without_koi_it_is_still_a_no(body):
    assert parse_command(body).kind is Kind.DECLINE


@pytest.mark.db
def test_koi_offer_nahi_hai_keeps_the_offer_and_shows_it(client, live, frozen):  # noqa: F811
    _, me, job = _offered()
    assert sms(client, me, "koi offer nahi hai") == [
        i18n.t("dispatch.status_offer", "hi", job=job)]
    assert [o.status for o in offers(job)] == ["open"]

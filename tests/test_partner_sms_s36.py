"""Session 36: a rider's SMS misread by core.domain.dispatch.parse_command.

1. "kaam nahi mila" (I got no work) declined his open offer: a complaint, no refusal.
   A word for work (kaam, job, offer, কাজ) with one that says it came (mila, aaya,
   received, পাইনি) and no code word is STATUS: he hears whether he is on duty and the
   offer open, with its two choices. "kaam nahi" (the HELP's no) still declines.
2. "please on" was not understood (a short message turns ON/OFF only with a duty word):
   the words of a polite request ("please", "pls", "sir", "kar do") leave ON/OFF as it
   is. "phone band" alone stays not understood (his phone was off? or OFF?): never OFF,
   which would take back his offers; he hears the offer's two choices, or to send HELP.
3. "skip" was not a no, though the offer's SMS says "2 to skip": "skip", "skip it",
   "skip 57" decline; "don't skip", "skip mat karo" are asked again.
4. "Done" (India's "ok") is DROP's word: with an offer open and no parcel in hand it
   was answered "You have no job for this now" and the offer left open as if taken; now
   the offer is named again. With a parcel in hand it asks for the code as before; a DROP
   without the code never delivers.
5. The chat's refusals "nope", "naa", "இல்லீங்க" decline an offer; "aam" (Hindi for
   mango) is no yes.

Set-ups are those of tests/test_dispatch.py (real PostgreSQL, Redis, RQ, the signed SMS
webhook; time frozen through core.clock)."""

from __future__ import annotations

import pytest

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Leg, PartnerProfile
from core.dialog import words
from core.domain.dispatch import WORDS, Kind, parse_command
from tests.test_admin import _keep_root_handlers  # noqa: F401  (autouse fixture)
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    frozen,  # noqa: F401  (fixture)
    last_code,
    make_partner,
    offers,
    sms,
)
from tests.test_partner_sms_s35 import _offered


def _picked_up(client) -> tuple[str, int, str]:
    """A partner with his one job picked up: (phone, job, drop code)."""
    _, me, job = _offered()
    sms(client, me, "1")
    assert [o.status for o in offers(job)] == ["accepted"]
    pick, drop = last_code(CUSTOMER, "पार्सल उठाने"), last_code(RECIPIENT)
    assert "उठ गया" in sms(client, me, f"PICK {pick}")[0]
    assert _leg_status(job) == "picked_up"
    return me, job, drop


def _leg_status(job: int) -> str:
    with transaction() as s:
        return s.get(Leg, job).status


def _on_duty(partner_id: int) -> bool:
    with transaction() as s:
        return s.get(PartnerProfile, partner_id).on_duty


# --- 1. "kaam nahi mila": a complaint, answered with his status ----------------------------


@pytest.mark.db
@pytest.mark.parametrize("body", ["kaam nahi mila", "job nahi mila", "mujhe aaj kaam nahi mila",
                                  "काम नहीं मिला", "kaam nahi mil raha", "no job received"])
def test_no_work_came_keeps_the_offer_and_shows_it(client, live, frozen, body):  # noqa: F811
    _, me, job = _offered()
    replies = sms(client, me, body)
    assert [o.status for o in offers(job)] == ["open"], "the complaint declined the offer"
    assert replies == [i18n.t("dispatch.status_offer", "hi", job=job)]


@pytest.mark.db
def test_no_work_came_without_an_offer_says_he_is_on_duty(client, live, frozen):  # noqa: F811
    _, me = make_partner("Ramesh", LAXMIPUR)
    assert sms(client, me, "kaam nahi mila") == [i18n.t("dispatch.status_none_on", "hi")]
    sms(client, me, "OFF")
    assert sms(client, me, "kaam nahi mila") == [i18n.t("dispatch.status_none_off", "hi")]


@pytest.mark.parametrize(("body", "kind"), [
    ("kaam nahi mila", Kind.STATUS), ("কাজ পাইনি", Kind.STATUS),
    ("काम मिळालं नाही", Kind.STATUS), ("koi offer nahi aaya", Kind.STATUS),
    # what was decided before stays
    ("kaam nahi", Kind.DECLINE), ("काम नहीं", Kind.DECLINE), ("nahi mila", Kind.DECLINE),
    ("job ka code nahi mila", Kind.DECLINE), ("code nahi mila", Kind.DECLINE),
    ("paisa nahi mila", Kind.EARN), ("no, cant come for this job", Kind.DECLINE),
])
def test_no_work_came_is_read_apart_from_a_no(body, kind):
    assert parse_command(body).kind is kind


# --- 2. "please on"; "phone band" ------------------------------------------------------------


@pytest.mark.db
@pytest.mark.parametrize("body", ["please on", "pls on", "please start", "sir on kar do"])
def test_a_polite_on_puts_him_on_duty(client, live, frozen, body):  # noqa: F811
    me_id, me = make_partner("Ramesh", LAXMIPUR, on_duty=False)
    replies = sms(client, me, body)
    assert _on_duty(me_id), replies
    assert replies == [i18n.t("dispatch.duty_on", "hi")]


@pytest.mark.db
def test_a_polite_off_takes_him_off_duty(client, live, frozen):  # noqa: F811
    me_id, me = make_partner("Ramesh", LAXMIPUR)
    replies = sms(client, me, "please off")
    assert not _on_duty(me_id), replies
    assert replies == [i18n.t("dispatch.duty_off", "hi")]


@pytest.mark.db
@pytest.mark.parametrize("body", ["phone band", "Phone band hai", "phone off"])
def test_phone_band_alone_neither_puts_him_off_nor_answers_the_offer(client, live, frozen,  # noqa: F811
                                                                     body):
    me_id, me, job = _offered()
    replies = sms(client, me, body)
    assert _on_duty(me_id), "put off duty"
    assert [o.status for o in offers(job)] == ["open"]
    assert replies == [i18n.t("dispatch.unknown_offer", "hi", job=job)]


@pytest.mark.db
def test_phone_band_without_an_offer_points_to_help(client, live, frozen):  # noqa: F811
    me_id, me = make_partner("Ramesh", LAXMIPUR)
    assert sms(client, me, "phone band") == [i18n.t("dispatch.unknown", "hi")]
    assert _on_duty(me_id)


# --- 3. "skip", as the offer's SMS says it ----------------------------------------------------


@pytest.mark.db
@pytest.mark.parametrize("body", ["skip", "Skip it", "skip {job}", "SKIP", "please skip"])
def test_skip_declines(client, live, frozen, body):  # noqa: F811
    _, me, job = _offered("en")
    replies = sms(client, me, body.format(job=job))
    assert [o.status for o in offers(job)] == ["declined"]
    assert replies == [i18n.t("dispatch.declined", "en", job=job)]


@pytest.mark.db
@pytest.mark.parametrize("body", ["don't skip", "skip mat karo"])
def test_skip_turned_around_is_asked_again(client, live, frozen, body):  # noqa: F811
    _, me, job = _offered("en")
    replies = sms(client, me, body)
    assert [o.status for o in offers(job)] == ["open"]
    assert replies == [i18n.t("dispatch.unknown_offer", "en", job=job)]


def test_the_offer_sms_says_skip():
    """The word read above is the one the offer's SMS tells riders to send."""
    assert "skip" in i18n.t("dispatch.unknown_offer", "en", job=57)


# --- 4. "Done" alone ------------------------------------------------------------------------


@pytest.mark.db
@pytest.mark.parametrize("body", ["Done", "done sir", "Done."])
def test_done_with_an_offer_open_names_the_offer(client, live, frozen, body):  # noqa: F811
    _, me, job = _offered()
    replies = sms(client, me, body)
    assert [o.status for o in offers(job)] == ["open"]
    assert replies == [i18n.t("dispatch.unknown_offer", "hi", job=job)]


@pytest.mark.db
def test_done_with_the_parcel_in_hand_asks_for_the_code(client, live, frozen):  # noqa: F811
    me, job, drop = _picked_up(client)
    assert sms(client, me, "Done") == [i18n.t("dispatch.otp_format_drop", "hi")]
    assert _leg_status(job) == "picked_up", "delivered without the code"
    assert "पहुँच गया" in sms(client, me, f"DONE {drop}")[0]
    assert _leg_status(job) == "delivered"


# --- 5. the chat's refusals; "aam" --------------------------------------------------------


@pytest.mark.db
@pytest.mark.parametrize(("lang", "body"), [("en", "nope"), ("hi", "naa"), ("ta", "இல்லீங்க"),
                                            ("te", "కాదండి")])
def test_the_chats_refusals_decline(client, live, frozen, lang, body):  # noqa: F811
    _, me, job = _offered(lang)
    replies = sms(client, me, body)
    assert [o.status for o in offers(job)] == ["declined"]
    assert replies == [i18n.t("dispatch.declined", lang, job=job)]


@pytest.mark.db
def test_aam_takes_no_job(client, live, frozen):  # noqa: F811
    _, me, job = _offered()
    replies = sms(client, me, "aam")
    assert [o.status for o in offers(job)] == ["open"]
    assert replies == [i18n.t("dispatch.unknown_offer", "hi", job=job)]


def test_every_chat_refusal_is_a_partner_no_and_aam_is_no_yes():
    for refusal in words.NO_WORDS:
        assert parse_command(refusal).kind is Kind.DECLINE, refusal
    assert "aam" not in WORDS[Kind.ACCEPT] and "aam" not in words.YES_WORDS
    assert parse_command("aam").kind is Kind.UNKNOWN
    assert not words.is_yes("aam")

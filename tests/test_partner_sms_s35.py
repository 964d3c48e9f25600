"""Session 35: a rider's SMS misread by core.domain.dispatch.parse_command.

1. "No.57 yes" (No. = number, as India writes it) declined job 57: the leading "No." was
   the command. A "no" right before a number is its sign when the rest names another
   command ("No.57 PICK 4821", "DONE 4567 No.57"); with a yes beside it the message says
   both and is asked again; "No 57" alone is still no to job 57. A no beside PICK/DROP
   never answers CANCEL's hint (cancel_hint).
2. "chalo 1", "chalo theek hai" (alright, OK) put him ON duty and left the offer open:
   "chalo" with a yes is a yes, as "चलो ठीक है" always was; ON/OFF with a yes or a no
   ("on 1", "band 2") is asked again, the offer named.
3. "phone band tha" (my phone was off) put him OFF duty: ON/OFF after an unknown word
   count only with a word for his duty ("duty band", "কাজ বন্ধ").
4. The HELP texts' own words: "काम नको", "काम घ्यायचं", "kaam nahi", "take the job",
   "refuse the job".

Set-ups are those of tests/test_dispatch.py (real PostgreSQL, Redis, RQ, the signed SMS
webhook; time frozen through core.clock)."""

from __future__ import annotations

import pytest

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import PartnerProfile
from core.domain.dispatch import Kind, parse_command
from tests.test_admin import _keep_root_handlers  # noqa: F401  (autouse fixture)
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    offers,
    paid_booking,
    sms,
    start,
)


def _offered(lang: str = "hi") -> tuple[int, str, int]:
    """A partner (in ``lang``) on duty with one offer open: (partner id, phone, job)."""
    me_id, me = make_partner("Ramesh", LAXMIPUR, lang=lang)
    job = paid_booking()
    start(job)
    leg = legs_of(job)[0]
    assert [(o.partner_id, o.status) for o in offers(leg.id)] == [(me_id, "open")]
    return me_id, me, leg.id


def _taken(client) -> tuple[str, int, str, str]:
    """A partner who took his one job: (phone, job, pickup code, drop code)."""
    _, me, job = _offered()
    sms(client, me, "1")
    assert [o.status for o in offers(job)] == ["accepted"]
    return me, job, last_code(CUSTOMER, "पार्सल उठाने"), last_code(RECIPIENT)


def _leg_status(job: int) -> str:
    from core.adapters.models import Leg
    with transaction() as s:
        return s.get(Leg, job).status


def _on_duty(partner_id: int) -> bool:
    with transaction() as s:
        return s.get(PartnerProfile, partner_id).on_duty


# --- 1. "No." as the number's sign ---------------------------------------------------------


@pytest.mark.db
@pytest.mark.parametrize("body", ["No.{job} yes", "No. {job} ok", "No {job} haan",
                                  "No.{job} 1"])
def test_a_number_sign_with_a_yes_is_asked_again(client, live, frozen, body):  # noqa: F811
    _, me, job = _offered()
    replies = sms(client, me, body.format(job=job))
    assert [o.status for o in offers(job)] == ["open"], "No. read as a refusal"
    assert replies == [i18n.t("dispatch.unknown_offer", "hi", job=job)]


@pytest.mark.db
@pytest.mark.parametrize("body", ["No {job}", "no. {job}", "No.{job} 2"])
def test_no_and_the_job_alone_still_declines(client, live, frozen, body):  # noqa: F811
    _, me, job = _offered()
    replies = sms(client, me, body.format(job=job))
    assert [o.status for o in offers(job)] == ["declined"]
    assert replies == [i18n.t("dispatch.declined", "hi", job=job)]


@pytest.mark.db
@pytest.mark.parametrize("body", ["No.{job} PICK {pick}", "PICK {pick} no. {job}"])
def test_a_number_sign_with_pick_picks_up(client, live, frozen, body):  # noqa: F811
    me, job, pick, _ = _taken(client)
    replies = sms(client, me, body.format(job=job, pick=pick))
    assert replies != [i18n.t("dispatch.cancel_hint", "hi", job=job)]
    assert "उठ गया" in replies[0]
    assert _leg_status(job) == "picked_up"


@pytest.mark.db
@pytest.mark.parametrize("body", ["DONE {drop} No.{job}", "No. {job} DROP {drop}"])
def test_a_number_sign_with_drop_delivers(client, live, frozen, body):  # noqa: F811
    me, job, pick, drop = _taken(client)
    assert "उठ गया" in sms(client, me, f"PICK {pick}")[0]
    replies = sms(client, me, body.format(job=job, drop=drop))
    assert "पहुँच गया" in replies[0]
    assert _leg_status(job) == "delivered"


@pytest.mark.db
@pytest.mark.parametrize("body", ["nahi pick {job}", "No {job} PICK nahi", "no drop {job}"])
def test_a_no_beside_pick_or_drop_is_no_cancel_hint(client, live, frozen, body):  # noqa: F811
    me, job, _, _ = _taken(client)
    replies = sms(client, me, body.format(job=job))
    assert replies != [i18n.t("dispatch.cancel_hint", "hi", job=job)]
    assert replies == [i18n.t("dispatch.unknown", "hi")]
    assert _leg_status(job) == "assigned"


# --- 2. "chalo" with a yes; ON/OFF with an answer -------------------------------------------


@pytest.mark.db
@pytest.mark.parametrize("body", ["chalo 1", "1 chalo", "chalo theek hai", "chalo haan",
                                  "haan chalo", "चलो ठीक है"])
def test_chalo_with_a_yes_takes_the_offer(client, live, frozen, body):  # noqa: F811
    _, me, job = _offered()
    sms(client, me, body)
    assert [o.status for o in offers(job)] == ["accepted"]


@pytest.mark.db
@pytest.mark.parametrize("body", ["on 1", "start haan", "band 2", "off nahi", "chalo 2"])
def test_on_or_off_with_an_answer_is_asked_again(client, live, frozen, body):  # noqa: F811
    me_id, me, job = _offered()
    replies = sms(client, me, body)
    assert [o.status for o in offers(job)] == ["open"]
    assert replies == [i18n.t("dispatch.unknown_offer", "hi", job=job)]
    assert _on_duty(me_id)


# --- 3. "band" in a sentence about something else ---------------------------------------------


@pytest.mark.db
@pytest.mark.parametrize("body", ["phone band tha", "network band tha 1", "raasta band hai"])
def test_band_about_something_else_keeps_him_on_duty(client, live, frozen, body):  # noqa: F811
    me_id, me, job = _offered()
    replies = sms(client, me, body)
    assert _on_duty(me_id), "put off duty"
    assert [o.status for o in offers(job)] == ["open"]
    assert replies == [i18n.t("dispatch.unknown_offer", "hi", job=job)]


@pytest.mark.parametrize(("body", "kind"), [
    ("duty band", Kind.OFF), ("meri duty band", Kind.OFF), ("kaam band", Kind.OFF),
    ("mera kaam band", Kind.OFF), ("duty on", Kind.ON), ("কাজ চালু", Kind.ON),
    ("কাজ বন্ধ", Kind.OFF), ("ಕೆಲಸ ಶುರು", Kind.ON), ("band hai phone", Kind.OFF),
    ("chalo", Kind.ON), ("phone band tha", Kind.UNKNOWN), ("light band hai", Kind.UNKNOWN),
])
def test_duty_words_still_read(body, kind):
    assert parse_command(body).kind is kind


# --- 4. the HELP texts' own words ------------------------------------------------------------


@pytest.mark.db
@pytest.mark.parametrize(("lang", "body", "want"), [
    ("mr", "काम नको", "declined"), ("mr", "काम घ्यायचं", "accepted"),
    ("hi", "kaam nahi", "declined"), ("hi", "काम नहीं", "declined"),
    ("en", "take the job", "accepted"), ("en", "refuse the job", "declined"),
])
def test_the_help_texts_words(client, live, frozen, lang, body, want):  # noqa: F811
    _, me, job = _offered(lang)
    sms(client, me, body)
    assert [o.status for o in offers(job)] == [want]


def test_help_words_are_in_the_help_texts():
    """The words read above are the ones the HELP texts tell riders to send."""
    assert "काम नको" in i18n.t("sms.help", "mr") and "काम घ्यायचं" in i18n.t("sms.help", "mr")
    assert "take the job" in i18n.t("sms.help", "en")
    assert "refuse the job" in i18n.t("sms.help", "en")

"""Session 30, chat and SMS: the stranger mark's keyed name, the HELP SMS in two parts,
a reply naming an offer the rider does not have, the chat's landmarks and typed labels."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from core import clock, i18n
from core.adapters.redis_conn import redis_client
from core.config import get_settings
from tests.test_dispatch import (
    LAXMIPUR,
    frozen,  # noqa: F401  (fixture)
    legs_of,
    make_partner,
    offers,
    paid_booking,
    sms,
    start,
)

# --- 1. the once-a-day mark of a stranger names no number ---------------------------------


def test_the_stranger_mark_is_keyed_and_still_answers_once(client):
    """An unkeyed sha256 of a 10-digit Indian mobile is undone by trying them all: the
    mark must not carry it (nor the number), and must still keep the answer to once."""
    stranger = "+919811155501"
    told = [i18n.t("sms.not_partner", i18n.DEFAULT_LANGUAGE,
                   ops_phone=get_settings().ops_phone)]
    clock.freeze(datetime(2026, 12, 3, 4, 0, tzinfo=UTC))
    try:
        assert sms(client, stranger, "hello") == told
        assert sms(client, stranger, "hello again") == []
    finally:
        clock.freeze(None)
    keys = [k.decode() if isinstance(k, bytes) else k
            for k in redis_client().scan_iter(match="sms:stranger-told:*")]
    assert len(keys) == 1, keys
    plain = hashlib.sha256(stranger.encode()).hexdigest()
    for form in (stranger, stranger[1:], stranger[-10:]):
        digest = hashlib.sha256(form.encode()).hexdigest()
        assert digest[:16] not in keys[0], "the mark names an unkeyed hash of the number"
        assert form not in keys[0]
    assert plain[:20] not in keys[0]


# --- 2. who holds a drop code: asked by the chat's tracking too, so public -----------------


def test_code_holder_is_the_modules_public_word():
    from core.services import partner_sms

    assert {"code_holder", "HER", "SENDER"} <= set(partner_sms.__all__)
    assert not hasattr(partner_sms, "_code_holder")


# --- 3. HELP by SMS: two parts at most, in every language; "HELP 2" for the rest ---------


def test_help_by_sms_fits_two_parts_and_help_2_gives_the_rest(client):
    from core.domain.text import fits_two_sms_parts

    for lang, ask_more in (("hi", "मदद 2"), ("ta", "உதவி ௨"), ("en", "HELP 2")):
        _, phone = make_partner(f"Rider {lang}", LAXMIPUR, lang=lang)
        first, more = sms(client, phone, "HELP"), sms(client, phone, ask_more)
        assert first == [i18n.t("sms.help", lang)]
        assert more == [i18n.t("sms.help_more", lang)], lang
        assert fits_two_sms_parts(first[0]) and fits_two_sms_parts(more[0]), lang
        assert "HELP 2" in first[0] and "CANCEL" in more[0], lang


# --- 4. a yes naming a job he was never offered does not take his one open offer ---------


@pytest.mark.parametrize(("body", "lang"), [("ok {n}", "en"), ("1 {n}", "en"),
                                            ("haan {n}", "hi"), ("yes job {n}", "en")])
def test_a_yes_with_a_lone_number_naming_no_offer_asks(client, live, frozen,  # noqa: F811
                                                        body, lang):
    """Wrong: with job 57 offered, "ok 2" or "1 2" takes job 57: the 2 names no job of
    his, so it was dropped as a stray number ("haan ji 5 minute"). He may mean a job 2,
    or no. Should: the offer stays open; he hears there is no offer 2, and how to answer
    the one he has."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang=lang)
    booking_id = paid_booking()
    start(booking_id)
    job = legs_of(booking_id)[0].id
    n = 2 if job != 2 else 3
    reply = sms(client, phone, body.format(n=n))
    assert [o.status for o in offers(job)] == ["open"], reply
    assert reply == [i18n.t("sms.offer_not_that", lang, typed=str(n), job=job)]


def test_a_yes_with_a_number_too_long_for_a_job_is_not_said_back(client, live,
                                                                  frozen):  # noqa: F811
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="hi")
    booking_id = paid_booking()
    start(booking_id)
    job = legs_of(booking_id)[0].id
    reply = sms(client, phone, "haan " + "9" * 40)
    assert [o.status for o in offers(job)] == ["open"], reply
    assert reply == [i18n.t("dispatch.unknown_offer", "hi", job=job)]


@pytest.mark.parametrize("body", ["ok 1", "haan ji 5 minute", "yes 10 min me aata hu"])
def test_a_yes_with_a_number_about_something_else_still_takes_it(client, live,
                                                                 frozen, body):  # noqa: F811
    """A "1" after a yes says yes again; a number with other words is about something
    else (minutes): both still take his one open offer."""
    _, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking_id = paid_booking()
    start(booking_id)
    job = legs_of(booking_id)[0].id
    reply = sms(client, phone, body)
    assert [o.status for o in offers(job)] == ["accepted"], reply


# --- 5. the chat: landmarks in the summary, an option's label typed back -----------------

_PARCEL_STEPS = (("category", "bot.category", "CATEGORIES"), ("size", "size", "SIZES"),
                 ("weight", "bot.weight", "WEIGHTS"))


def _typed_at(step: str, text: str, lang: str = "en"):
    from core.dialog.booking import BOOKING_DIALOG
    from core.dialog.engine import DialogState, UserInput, turn
    from tests.test_dialog import FakePorts

    state = DialogState(step)
    turn(BOOKING_DIALOG, state, UserInput(text=text), FakePorts(), lang)
    return state.slots.get(step), state.step


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_every_languages_option_labels_typed_back_are_taken(lang):
    """Wrong: at "What is in the parcel?" a customer who types "Documents" (or copies
    "बड़ी बोरी" from the list) is asked again: only the number was taken. Should: an
    option's label in any catalog language, typed back, picks that option."""
    from core.dialog import booking

    missed = {}
    for step, prefix, values in _PARCEL_STEPS:
        for value in getattr(booking, values):
            label = i18n.raw(f"{prefix}.{value}", lang)
            for typed in (label, label.upper() if label.isascii() else label):
                got, _ = _typed_at(step, typed)
                if got != value:
                    missed[typed] = (value, got)
    assert not missed, f"{lang}: labels not taken: {missed}"


@pytest.mark.parametrize(("step", "typed", "value"), [
    ("category", "Documents", "documents"), ("category", "kagaz", "documents"),
    ("category", "कागज", "documents"),  # typed without the nukta of "कागज़"
    ("category", "dawai", "medicine"), ("size", "chhota", "bag"),
    ("size", "  बड़ी बोरी ", "sack"), ("size", "பெரிய மூட்டை", "sack"),
    ("weight", "up to 20 kg", "w20"), ("weight", "halka", "w5"),
])
def test_a_labels_part_or_a_common_word_is_taken(step, typed, value):
    assert _typed_at(step, typed)[0] == value


@pytest.mark.parametrize(("step", "typed"), [("size", "bada"), ("category", "banana"),
                                             ("weight", "kilo")])
def test_what_names_no_option_is_asked_again(step, typed):
    assert _typed_at(step, typed) == (None, step)


def test_no_option_word_names_two_options_of_a_question():
    from core.dialog import booking

    for _, prefix, values in _PARCEL_STEPS:
        labels = tuple(f"{prefix}.{v}" for v in getattr(booking, values))
        forms = booking.label_words(labels)
        for i, mine in enumerate(forms):
            for j, other in enumerate(forms):
                assert i == j or not (mine & other), (labels[i], labels[j], mine & other)


def test_the_confirmation_shows_the_landmark_the_rider_is_told(client):
    """Wrong: the pickup's landmark ("Near the Hanuman temple") is asked for and told to
    the rider, yet the confirmation the customer says yes to shows only the village.
    Should: each place with a landmark shows it (short), one without shows none."""
    from core.services.seed import seed_demo
    from tests.test_dialog_gaps import Chat

    seed_demo()
    chat = Chat(client, "+919812377341")
    landmark = "Near the Hanuman temple behind the big banyan tree by the well"
    for body in ("hi", "2", "1", "413739", "2", landmark, "413720", "1", "skip",
                 "Sunita Patil", "98220 12345", "Medicine", "A big sack", "Up to 20 kg",
                 "no", "1"):
        chat.send(body)
    shown = chat.send("2")
    assert chat.step() == "confirm", shown
    assert "(413739), landmark: Near the Hanuman temple behind the big…" in shown, shown
    assert shown.count("landmark:") == 1, shown  # the drop's was skipped
    assert "Parcel: A big sack, Up to 20 kg (a bucket of water)" in shown, shown

"""Rating a delivery on WhatsApp, continued: answers in words as Indian WhatsApp users
type them (romanized Hindi, Tamil, Telugu... from the catalogs' bot.rate.words lists),
and the question asked of a customer who stays busy for hours (core.services.rating: a
back-off until the rating window ends, one waiting try per booking)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage, Person
from core.adapters.queue import queue
from core.dialog import booking as dialog
from core.dialog import words
from core.services import notify, rating
from tests.conftest import run_jobs
from tests.test_conversations import START
from tests.test_whatsapp_rating import (
    CUSTOMER,
    chat,  # noqa: F401  (fixture)
    delivered_booking,
    sent_to_customer,
    stars_of,
    step,
    t,
    wa,
)

# --- words -----------------------------------------------------------------------------


def speaks(lang: str) -> None:
    """The chat fixture's customer chose ``lang`` (their romanized words are read)."""
    with transaction() as s:
        person = s.scalar(select(Person).where(Person.phone == CUSTOMER))
        person.preferred_language = lang
        for made in s.scalars(select(Booking).where(Booking.customer_id == person.id)):
            made.language = lang  # made in it (a booking keeps its language)

# What people write, per language, romanized (and a few in the script), and the stars
# it means: "very good" 5, "good" 4, "OK" 3, "bad" 2, "very bad"/"useless" 1.
SAID = {
    "hi": [("bahut accha", 5), ("accha", 4), ("bahut badiya", 5), ("theek hai", 3),
           ("bura", 2), ("bahut bura", 1), ("bekar", 1), ("service bahut acchi thi", 5),
           ("बहुत अच्छा था", 5), ("ठीक है", 3)],
    "en": [("good", 4), ("very good", 5), ("Not bad", 3), ("terrible", 1)],
    "ta": [("romba nalla", 5), ("nalla", 4), ("mosam", 2), ("romba mosam", 1)],
    "te": [("chala bagundi", 5), ("bagundi", 4), ("baledu", 2), ("parvaledu", 3)],
    "bn": [("khub bhalo", 5), ("bhalo", 4), ("kharap", 2), ("thik ache", 3)],
    "mr": [("khup chhan", 5), ("chhan", 4), ("vait", 2), ("khup vait", 1)],
    "gu": [("khub saras", 5), ("saras", 4), ("kharab", 2), ("khub kharab", 1)],
    "kn": [("tumba chennagide", 5), ("chennagide", 4), ("ketta", 2), ("tumba ketta", 1)],
}


@pytest.mark.parametrize("lang,answer,stars", [
    (lang, answer, stars) for lang, said in SAID.items() for answer, stars in said])
def test_romanized_words_of_every_language_are_stars(lang, answer, stars):
    assert dialog.stars_given(answer, lang) == stars, (lang, answer)


@pytest.mark.parametrize("answer,stars", [
    ("achhaa", 4), ("acha", 4), ("acchhaaa", 4), ("Achha!", 4), ("BAHUTTT ACCHAAA", 5),
    ("theeek hai bhai", 3), ("bekaar", 1), ("accha 👍", 4), ("bahut accha, thanks", 5)])
def test_any_case_and_letters_typed_twice_or_more(answer, stars):
    assert dialog.stars_given(answer, "hi") == stars


@pytest.mark.parametrize("answer", ["saraswati", "kharabi", "acchai", "bhaloi", "nallathai"])
def test_words_are_whole_words(answer):
    for lang in i18n.LANGUAGES:  # "saras" in a name is no 4 stars
        assert dialog.stars_given(answer, lang) is None, lang


@pytest.mark.parametrize("answer,stars", [
    # "Not good" is listed as such (2 stars), like Telugu's one word for it, baledu.
    ("accha nahi", 2), ("accha nahi tha", 2), ("nalla illa", 2), ("not good", 2),
    ("bura nahi", 3),
    # A "no" anywhere else: not read as stars (the customer is asked for a number).
    ("theek nahi", None), ("nahi, accha tha", None), ("bahut accha nahi tha", None),
    ("koi problem nahi, bahut accha", None), ("not very good", None), ("no, good", None)])
def test_a_no_beside_the_words_is_no_high_rating(answer, stars):
    lang = "ta" if "illa" in answer else "hi"  # English's words are read in both
    assert dialog.stars_given(answer, lang) == stars


@pytest.mark.parametrize("answer,stars", [
    ("4 accha", 4), ("5 stars, bahut accha", 5), ("5, accha nahi", None), ("2 bahut accha", None),
    ("accha bura", None),  # two ratings at once
    ("accha, ek aur parcel bhejna hai", None),  # "OK, one more parcel": too long to be one
    ("very good", 5), ("Very bad", 1), ("good", 4)])
def test_digits_and_words_must_agree_and_a_long_message_is_not_read(answer, stars):
    assert dialog.stars_given(answer, "hi") == stars


def test_a_phrase_means_one_number_in_every_catalog_and_is_no_menu_word():
    meaning: dict[tuple[str, ...], set[tuple[str, int]]] = {}
    for lang, stars, phrase in dialog.rating_phrases():
        assert phrase and 1 <= stars <= 5, (lang, stars, phrase)
        meaning.setdefault(phrase, set()).add((lang, stars))
    clashes = {p: m for p, m in meaning.items() if len({s for _, s in m}) > 1}
    assert not clashes
    for lang in SAID:  # nor may two phrases a customer is read by, as they are compared
        read: dict[tuple[str, ...], set[int]] = {}
        for phrase, stars, _squeezed in dialog.phrases_read(lang):
            read.setdefault(tuple(map(dialog._squeezed, phrase)), set()).add(stars)
        assert not {p: n for p, n in read.items() if len(n) > 1}, lang
    # Every language has words for every number of stars, romanized ones among them.
    langs = {(lang, stars) for m in meaning.values() for lang, stars in m}
    assert langs == {(lang, s) for lang in SAID for s in range(1, 6)}
    squeezed = [dialog._squeezed(w) for w in (
        *words.MENU_WORDS, *words.HELP_WORDS, *words.LANGUAGE_WORDS, *words.STOP_WORDS,
        *words.START_WORDS, *dialog.GREETINGS, *dialog.DAY_GREETINGS, *words.NUMBER_WORDS,
        *words.NO_WORDS, *dialog.FILLERS)]
    others = {tuple(w.split()) for w in squeezed}
    assert not others & set(meaning), sorted(others & set(meaning))
    # "No" is no rating, nor a word a rating may carry.
    negations = {dialog._squeezed(w) for w in words.NO_WORDS | {"not", "never", "nahi", "nhi"}}
    assert not [p for p in meaning if set(p) <= negations]
    assert not negations & {dialog._squeezed(w) for w in dialog.FILLERS}


def test_the_more_words_win_and_the_ends_are_far_apart():
    def said(text: str) -> int | None:
        return dialog.stars_given(text, "te" if "baledu" in text else "hi")

    assert (said("accha"), said("bahut accha")) == (4, 5)
    assert (said("theek"), said("bura"), said("bahut bura"), said("bekar")) == (3, 2, 1, 1)
    assert (said("baledu"), said("chala baledu")) == (2, 1)


@pytest.mark.parametrize("lang,answer,stars", [
    ("hi", "bahut accha tha", 5), ("hi", "Theek hai", 3), ("hi", "accha nahi", 2),
    ("ta", "romba nalla", 5), ("en", "very good", 5)])
def test_words_rate_in_the_chat(chat, lang, answer, stars):  # noqa: F811
    speaks(lang)
    bid, ref, _ = delivered_booking()
    with transaction() as s:
        assert rating.ask_after_delivery(s, s.get(Booking, bid))
    thanks = i18n.t("bot.rate.thanks", lang, ref=ref, stars="⭐" * stars)
    assert thanks in wa(chat, answer)
    assert stars_of(bid) == [stars]


def test_a_no_without_a_listed_phrase_gets_the_help(chat):  # noqa: F811
    speaks("hi")
    bid, ref, _ = delivered_booking()
    with transaction() as s:
        assert rating.ask_after_delivery(s, s.get(Booking, bid))
    reply = wa(chat, "theek nahi")
    assert i18n.t("bot.rate.help", "hi") in reply and stars_of(bid) == []
    assert i18n.t("bot.rate.thanks", "hi", ref=ref, stars="⭐⭐") in wa(chat, "2")


# --- a busy customer is asked later, until the window ends ------------------------------


def waiting_asks(booking_id: int) -> list[str]:
    """The ask jobs of the booking still to run (scheduled or queued)."""
    q = queue("default")
    ids = ScheduledJobRegistry(queue=q).get_job_ids() + q.get_job_ids()
    return [i for i in ids if i.startswith(f"rate-ask-{booking_id}-")]


def next_ask(booking_id: int) -> tuple[str, timedelta]:
    """The one waiting ask of the booking, and how long from now it waits (to the
    minute: RQ schedules by the wall clock, a second late, as _ask_later asks)."""
    (job_id,) = waiting_asks(booking_id)
    at = ScheduledJobRegistry(queue=queue("default")).get_scheduled_time(job_id)
    return job_id, timedelta(minutes=round((at - datetime.now(UTC)).total_seconds() / 60))


def run_ask(booking_id: int, at: datetime) -> None:
    """Let the clock reach ``at`` and run the booking's waiting ask through RQ, as RQ's
    scheduler does when its time comes."""
    clock.freeze(at)
    (job_id,) = waiting_asks(booking_id)
    q = queue("default")
    ScheduledJobRegistry(queue=q).remove(job_id)
    q._enqueue_job(q.fetch_job(job_id))
    assert run_jobs(("default",)) >= 1
    assert q.fetch_job(job_id).get_status() == "finished"


def asked(booking_id: int) -> bool:
    with transaction() as s:
        return s.scalar(select(OutboxMessage.id).where(
            OutboxMessage.dedupe_key == f"rate-ask-{booking_id}")) is not None


def deliver_while_chatting(client) -> tuple[int, str, datetime]:  # noqa: ANN001
    """The customer writes at START; their parcel is delivered a minute later, so the
    question is not asked now. (booking id, reference, delivery time)"""
    wa(client, "hi")
    clock.freeze(START + timedelta(minutes=1))
    bid, ref, _ = delivered_booking()
    with transaction() as s:
        assert not rating.ask_after_delivery(s, s.get(Booking, bid))
    return bid, ref, START + timedelta(minutes=1)


def test_a_customer_busy_for_hours_is_asked_once_they_stop(chat):  # noqa: F811
    bid, ref, _ = deliver_while_chatting(chat)
    now = clock.now()
    waits = []
    for _ in range(7):  # more tries than the old limit (6), each further apart
        job_id, wait = next_ask(bid)
        waits.append(wait)
        wa_at = now + wait - timedelta(minutes=1)
        clock.freeze(wa_at)
        wa(chat, "hi")  # still chatting (about something else) when the try comes
        now += wait
        run_ask(bid, now)
        assert not asked(bid) and step() == "menu"
    assert waits == [timedelta(minutes=m) for m in (10, 20, 40, 80, 160, 240, 240)]
    # Quiet now: the next try asks, 17 hours after the delivery, and words rate.
    job_id, wait = next_ask(bid)
    now += wait
    run_ask(bid, now)
    assert asked(bid) and step() == "rate" and waiting_asks(bid) == []
    assert sent_to_customer()[-1] == t("bot.rate.ask", ref=ref)
    assert t("bot.rate.thanks", ref=ref, stars="⭐" * 5) in wa(chat, "excellent")


def test_a_customer_busy_all_window_long_is_tried_one_try_at_a_time_until_it_ends(chat):  # noqa: F811
    bid, _, delivered = deliver_while_chatting(chat)
    ends = delivered + rating.RATING_WINDOW
    now, tries = clock.now(), 1
    while waiting_asks(bid):
        job_id, wait = next_ask(bid)  # one waiting try, never two
        tries += 1
        assert job_id == f"rate-ask-{bid}-{tries}"  # its own id per try
        # 10 minutes, 20, 40... 4 hours at most; the last try a minute before the end.
        backoff = min(timedelta(minutes=10 * 2 ** (tries - 2)), timedelta(hours=4))
        assert wait == min(backoff, ends - timedelta(minutes=1) - now)
        clock.freeze(now + wait - timedelta(seconds=30))
        wa(chat, "hi")
        now += wait
        run_ask(bid, now)
    assert not asked(bid)
    assert now == ends - timedelta(minutes=1)  # the last try, just before the window ends
    assert 6 < tries < rating.ASK_TRIES  # beyond the old six; the window ended it


def test_a_second_call_starts_no_second_chain_of_tries(chat):  # noqa: F811
    bid, _, _ = deliver_while_chatting(chat)
    assert waiting_asks(bid) == [f"rate-ask-{bid}-2"]
    with transaction() as s:  # delivery handled twice, and a stray later try
        b = s.get(Booking, bid)
        assert not rating.ask_after_delivery(s, b)
        assert not rating.ask_after_delivery(s, b, tries=4)
    assert waiting_asks(bid) == [f"rate-ask-{bid}-2"]
    # The waiting try itself, still finding them busy, hands over to the next one.
    _, wait = next_ask(bid)
    clock.freeze(clock.now() + wait - timedelta(minutes=1))
    wa(chat, "hi")
    run_ask(bid, clock.now() + timedelta(minutes=1))
    assert waiting_asks(bid) == [f"rate-ask-{bid}-3"]


def test_a_customer_in_the_middle_of_a_booking_is_asked_once_back_at_the_menu(chat):  # noqa: F811
    assert t("bot.pickup.ask") in wa(chat, "1")  # at START: a new booking
    clock.freeze(START + timedelta(minutes=15))  # quiet, but in the middle of it
    bid, ref, _ = delivered_booking()
    with transaction() as s:
        assert not rating.ask_after_delivery(s, s.get(Booking, bid))
    assert step() == "pickup" and not asked(bid)
    clock.freeze(START + timedelta(minutes=16))
    assert t("menu.main") in wa(chat, "0")  # leaves it for the menu
    _, wait = next_ask(bid)
    assert wait == rating.QUIET
    run_ask(bid, START + timedelta(minutes=25))  # 9 minutes after the "0": not yet
    assert not asked(bid)
    _, wait = next_ask(bid)
    run_ask(bid, START + timedelta(minutes=25) + wait)
    assert asked(bid) and step() == "rate"
    assert t("bot.rate.thanks", ref=ref, stars="⭐" * 4) in wa(chat, "good")


# --- two deliveries: one question at a time --------------------------------------------

OTHER_PARTNER = "+919812349002"  # the second booking's partner


def test_a_second_question_waits_for_the_answer_to_the_first(chat):  # noqa: F811
    first, first_ref, _ = delivered_booking()
    with transaction() as s:
        assert rating.ask_after_delivery(s, s.get(Booking, first))
    clock.freeze(START + timedelta(minutes=1))
    second, second_ref, _ = delivered_booking(partner_phone=OTHER_PARTNER)
    with transaction() as s:  # the first question still stands: "4" is meant for it
        assert not rating.ask_after_delivery(s, s.get(Booking, second))
    assert not asked(second) and step() == "rate"
    assert sent_to_customer()[-1] == t("bot.rate.ask", ref=first_ref)

    clock.freeze(START + timedelta(minutes=3))
    assert t("bot.rate.thanks", ref=first_ref, stars="⭐" * 4) in wa(chat, "4")
    assert stars_of(first) == [4] and stars_of(second) == []
    # The second comes once the chat has been quiet, not at its backed-off time: a new
    # try (the one waiting finds the chat busy and hands over to it).
    new_try = f"rate-ask-{second}-3"
    assert new_try in waiting_asks(second)
    at = ScheduledJobRegistry(queue=queue("default")).get_scheduled_time(new_try)
    assert timedelta(minutes=round((at - datetime.now(UTC)).total_seconds() / 60)) \
        == rating.QUIET
    clock.freeze(START + timedelta(minutes=3) + rating.QUIET + timedelta(seconds=1))
    for job_id in sorted(waiting_asks(second)):  # both run now, the old try first
        q = queue("default")
        ScheduledJobRegistry(queue=q).remove(job_id)
        q._enqueue_job(q.fetch_job(job_id))
    assert run_jobs(("default",)) >= 2
    assert asked(second) and step() == "rate"
    assert sent_to_customer()[-1] == t("bot.rate.ask", ref=second_ref)
    assert t("bot.rate.thanks", ref=second_ref, stars="⭐" * 2) in wa(chat, "2")
    assert stars_of(first) == [4] and stars_of(second) == [2]
    assert waiting_asks(second) == []


def test_the_try_the_answer_replaced_asks_nothing_twice(chat):  # noqa: F811
    first, _, _ = delivered_booking()
    with transaction() as s:
        assert rating.ask_after_delivery(s, s.get(Booking, first))
    second, second_ref, _ = delivered_booking(partner_phone=OTHER_PARTNER)
    with transaction() as s:
        assert not rating.ask_after_delivery(s, s.get(Booking, second))
    (old_try,) = waiting_asks(second)
    clock.freeze(START + timedelta(minutes=9))
    wa(chat, "5")
    assert sorted(waiting_asks(second)) == sorted([old_try, f"rate-ask-{second}-3"])
    # The old try comes first, a minute after the answer: the chat is busy, and the new
    # try is the one that asks.
    q = queue("default")
    ScheduledJobRegistry(queue=q).remove(old_try)
    clock.freeze(START + timedelta(minutes=10, seconds=2))
    q._enqueue_job(q.fetch_job(old_try))
    assert run_jobs(("default",)) >= 1
    assert not asked(second)
    assert waiting_asks(second) == [f"rate-ask-{second}-3"]
    run_ask(second, START + timedelta(minutes=19, seconds=2))
    assert asked(second)
    assert [b for b in sent_to_customer() if b == t("bot.rate.ask", ref=second_ref)] == [
        t("bot.rate.ask", ref=second_ref)]


def test_a_question_left_unanswered_for_the_window_gives_way(chat, monkeypatch):  # noqa: F811
    monkeypatch.setenv("WHATSAPP_TEMPLATE_EN", "HX0123456789abcdef0123456789abcdef")
    notify.reset_templates()  # the customer's last message is days old: by template
    try:
        first, _, _ = delivered_booking()
        with transaction() as s:
            assert rating.ask_after_delivery(s, s.get(Booking, first))
        clock.freeze(START + timedelta(days=1))
        second, second_ref, _ = delivered_booking(partner_phone=OTHER_PARTNER)
        with transaction() as s:  # the first still stands: the second waits
            assert not rating.ask_after_delivery(s, s.get(Booking, second))
        clock.freeze(START + rating.RATING_WINDOW + timedelta(minutes=1))
        with transaction() as s:  # it was never answered and lapsed: the second is asked
            assert rating.ask_after_delivery(s, s.get(Booking, second), tries=2)
        assert sent_to_customer()[-1] == t("bot.rate.ask", ref=second_ref)
        assert t("bot.rate.thanks", ref=second_ref, stars="⭐" * 3) in wa(chat, "3")
        assert stars_of(second) == [3] and stars_of(first) == []
    finally:
        monkeypatch.delenv("WHATSAPP_TEMPLATE_EN")
        notify.reset_templates()


def test_rating_the_first_in_the_app_lets_the_second_question_come(client):  # noqa: F811
    """The chat asked about booking A; the customer rates A in the app instead. A's
    question can no longer take a digit (A is rated), and B's question is not held back
    as if A's still stood."""
    from datetime import timedelta

    from core import clock
    from core.services import rating
    from tests.test_api import API, sign_in
    from tests.test_whatsapp_rating import (
        CUSTOMER,
        START,
        delivered_booking,
        sent_to_customer,
        t,
        wa,
    )

    clock.freeze(START - rating.QUIET - timedelta(minutes=5))
    with transaction() as s:
        s.add(Person(phone=CUSTOMER, role="customer", preferred_language="en"))
    assert t("menu.main") in wa(client, "hi")
    clock.freeze(START)
    try:
        first, first_ref, _ = delivered_booking()
        with transaction() as s:
            assert rating.ask_after_delivery(s, s.get(Booking, first))
        headers = sign_in(client, CUSTOMER)
        r = client.post(f"{API}/bookings/{first_ref}/rating", json={"stars": 5},
                        headers=headers)
        assert r.status_code == 201, r.get_json()
        clock.freeze(START + rating.QUIET + timedelta(minutes=5))
        second, second_ref, _ = delivered_booking(partner_phone="+919812349002")
        with transaction() as s:
            asked = rating.ask_after_delivery(s, s.get(Booking, second))
        assert asked, "B's question waits for A's, already answered in the app"
        assert sent_to_customer()[-1] == t("bot.rate.ask", ref=second_ref)
    finally:
        clock.freeze(None)

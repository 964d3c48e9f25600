"""Session 34: three leftovers of the partner SMS work of session 33.

1. "code nahi mila 57", 57 being the job offered to him, declined that job (a number
   kept the message from _code_while_offered): the offer's own number is the job he asks
   about, so the offer stays open, as for the bare "code nahi mila". A clear no with the
   number ("2 57", "nahi 57", "NO 57 code") still declines it; another number (his job
   in hand's) goes where it went.
2. The everyday refusals of Gujarati ("નથી", "nathi"), Tamil ("முடியாது": cannot),
   Telugu ("రాను", "కుదరదు"), Kannada ("ಆಗಲ್ಲ", "ಬರಲ್ಲ") and Bengali typed as one word
   ("পারবনা") were not no-words: the refusal left the offer to time out against the
   rider, and "હા નથી" (yes, not) or "ஆன் முடியாது" (ON: cannot) was taken as yes / ON.
   Their "no problem" phrases ("વાંધો નથી") stay no refusal.
3. After the last-leg rider gave the job back, code_holder still named the recipient as
   holding the drop code (by the latest drop-code message), though the give-back voided
   it: she was told "give the rider the code we sent you", a code that no longer works,
   and a move of her number alerted ops of a code "still with the old number".

Set-ups are those of tests/test_dispatch.py (real PostgreSQL, Redis, RQ, the signed SMS
webhook; time frozen through core.clock)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage
from core.domain.dispatch import WORDS, Kind, parse_command
from core.services import partner_sms
from tests.conftest import run_jobs
from tests.test_admin import _keep_root_handlers  # noqa: F401  (autouse fixture)
from tests.test_dispatch import (
    LAXMIPUR,
    RECIPIENT,
    frozen,  # noqa: F401  (fixture)
    legs_of,
    make_partner,
    offers,
    paid_booking,
    sms,
    start,
)


def _offered(lang: str, **kw) -> tuple[str, int]:
    """A partner (in ``lang``) with one offer open: (phone, leg id)."""
    me_id, me = make_partner("Ramesh", LAXMIPUR, lang=lang, **kw)
    job = paid_booking()
    start(job)
    leg = legs_of(job)[0]
    assert [(o.partner_id, o.status) for o in offers(leg.id)] == [(me_id, "open")]
    return me, leg.id


# --- 1. the offer's own number with a code asked for --------------------------------------


@pytest.mark.db
@pytest.mark.parametrize(("lang", "body"), [
    ("hi", "code nahi mila {job}"), ("hi", "कोड नहीं मिला {job}"),
    ("hi", "code nahi mila job {job}"), ("hi", "{job} otp nahi aaya"),
    ("en", "no code received for {job}"), ("ta", "கோட் வரவில்லை {job}"),
    ("gu", "કોડ મળ્યો નથી {job}"),
])
def test_a_code_asked_for_naming_the_offer_leaves_it_open(
        client, live, frozen, lang, body):  # noqa: F811
    me, leg_id = _offered(lang)
    replies = sms(client, me, body.format(job=leg_id))
    assert [o.status for o in offers(leg_id)] == ["open"], "his question declined the job"
    assert replies == [i18n.t(partner_sms.OFFER_OPEN_NO_CODE, lang, job=leg_id)]
    sms(client, me, "1")
    assert [o.status for o in offers(leg_id)] == ["accepted"]


@pytest.mark.db
@pytest.mark.parametrize("body", ["2 {job}", "nahi {job}", "NO {job} code", "nahi {job} otp"])
def test_a_clear_no_naming_the_offer_still_declines_it(
        client, live, frozen, body):  # noqa: F811
    me, leg_id = _offered("hi")
    replies = sms(client, me, body.format(job=leg_id))
    assert [o.status for o in offers(leg_id)] == ["declined"]
    assert replies == [i18n.t("dispatch.declined", "hi", job=leg_id)]


@pytest.mark.db
def test_a_code_asked_for_naming_his_job_in_hand_is_not_the_offers_answer(
        client, live, frozen):  # noqa: F811
    """The number is his job's, not the offer's: it is about that job, as before (no
    "job X is still offered"), and the offer is neither taken nor declined by it."""
    me_id, me = make_partner("Ramesh", LAXMIPUR, lang="hi", max_active_legs=2)
    first = paid_booking()
    start(first)
    sms(client, me, "1")
    mine = legs_of(first)[0]
    assert mine.partner_id == me_id
    second = paid_booking()
    start(second)
    leg = legs_of(second)[0]
    replies = sms(client, me, f"code nahi mila {mine.id}")
    assert [o.status for o in offers(leg.id)] == ["open"]
    assert replies != [i18n.t(partner_sms.OFFER_OPEN_CODE, "hi", job=leg.id)]
    assert legs_of(first)[0].partner_id == me_id


# --- 2. the refusals of each language -------------------------------------------------------

REFUSALS = [
    "નથી", "nathi", "ના, નથી જોઈતું", "નહીં આવું", "આવીશ નથી",  # gu
    "முடியாது", "வர முடியாது", "வேணாம்", "மாட்டேன்", "mudiyathu", "முடியல",  # ta
    "రాను", "కుదరదు", "రాలేను", "వద్దండి", "raanu", "kudaradu",  # te
    "ಆಗಲ್ಲ", "ಬರಲ್ಲ", "ಬೇಡಾ", "aagalla", "baralla", "ಇಲ್ಲಾ",  # kn
    "পারবনা", "যাবোনা", "নেবনা", "লাগবেনা", "পারব না", "parbo na", "jabona",  # bn
]
# A negated command: none is taken as said (the partner is asked again).
NEGATED = [
    "હા નથી", "ok nathi", "ON નથી", "પિક નથી 4821",  # gu
    "சரி முடியாது", "ஆன் முடியாது", "ok mudiyathu",  # ta
    "సరే రాను", "ఆన్ కుదరదు", "ok raanu",  # te
    "ಸರಿ ಆಗಲ್ಲ", "ಆನ್ ಬರಲ್ಲ", "ok aagalla",  # kn
    "ওকে পারবনা", "অন লাগবেনা",  # bn
]
# Ordinary words and "no problem" phrases: no refusal.
NOT_REFUSALS = [
    ("વાંધો નથી", Kind.UNKNOWN), ("હા, કોઈ વાંધો નથી", Kind.ACCEPT),
    ("vandho nathi, haa", Kind.ACCEPT), ("ઠીક છે, ચિંતા નથી", Kind.ACCEPT),
    ("ಸರಿ, ತೊಂದರೆ ಆಗಲ್ಲ", Kind.ACCEPT), ("సరే, ఇబ్బంది లేదు", Kind.ACCEPT),
    ("சரி, பிரச்சனை இல்ல", Kind.ACCEPT), ("பரவாயில்லை", Kind.UNKNOWN),
    ("ಪರವಾಗಿಲ್ಲ", Kind.UNKNOWN), ("పర్వాలేదు", Kind.UNKNOWN), ("முடிஞ்சது", Kind.UNKNOWN),
    ("le lunga na", Kind.UNKNOWN), ("Ranu", Kind.UNKNOWN), ("ನಾಥ್", Kind.UNKNOWN),
    ("காவேரி", Kind.UNKNOWN), ("ಬರುತ್ತೇನೆ", Kind.UNKNOWN), ("আসছি", Kind.UNKNOWN),
]


@pytest.mark.parametrize("text", REFUSALS)
def test_each_languages_refusal_is_a_no(text):
    assert parse_command(text).kind is Kind.DECLINE


@pytest.mark.parametrize("text", REFUSALS)
def test_a_refusal_naming_the_job_declines_that_job(text):
    command = parse_command(f"{text} 57")
    assert (command.kind, command.numbers) == (Kind.DECLINE, ("57",))


@pytest.mark.parametrize("text", NEGATED)
def test_a_negated_command_is_not_taken_as_said(text):
    assert parse_command(text).kind is Kind.UNKNOWN


@pytest.mark.parametrize(("text", "kind"), NOT_REFUSALS)
def test_ordinary_words_and_no_problem_are_no_refusal(text, kind):
    assert parse_command(text).kind is kind


def test_the_new_no_words_are_no_word_for_a_code_not_come():
    """A refusal before a code word is a clear no to the offer; the words that say the
    code did not come (RECEIVED_WORDS) stay out of the no-words."""
    for word in WORDS[Kind.DECLINE]:
        assert word not in partner_sms.RECEIVED_WORDS, word


@pytest.mark.db
@pytest.mark.parametrize(("lang", "text"), [("ta", "முடியாது"), ("gu", "નથી"),
                                            ("te", "కుదరదు"), ("kn", "ಬರಲ್ಲ"),
                                            ("bn", "পারবনা")])
def test_a_partners_refusal_in_his_language_declines_the_offer(
        client, live, frozen, lang, text):  # noqa: F811
    me, leg_id = _offered(lang)
    assert sms(client, me, text) == [i18n.t("dispatch.declined", lang, job=leg_id)]
    assert [o.status for o in offers(leg_id)] == ["declined"]


@pytest.mark.db
def test_a_gujarati_no_problem_does_not_decline(client, live, frozen):  # noqa: F811
    me, leg_id = _offered("gu")
    sms(client, me, "વાંધો નથી")
    assert [o.status for o in offers(leg_id)] == ["open"]
    sms(client, me, "હા, કોઈ વાંધો નથી")
    assert [o.status for o in offers(leg_id)] == ["accepted"]


# --- 3. the drop code after a give-back ------------------------------------------------------


def _holder(booking_id: int) -> str | None:
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None
        return partner_sms.code_holder(s, booking)


def _drop_code_messages(booking_id: int) -> list[tuple[str, str]]:
    with transaction() as s:
        return [(row.status, row.to_addr) for row in s.execute(
            select(OutboxMessage.status, OutboxMessage.to_addr).where(
                OutboxMessage.booking_id == booking_id,
                OutboxMessage.dedupe_key.like("leg-%-dropotp-%"))
            .order_by(OutboxMessage.id))]


def _reference(booking_id: int) -> str:
    with transaction() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None
        return booking.reference


@pytest.mark.db
def test_after_a_give_back_nobody_holds_the_drop_code(client, live, frozen):  # noqa: F811
    """Her code went out at the accept; the rider's CANCEL voided it. Until the next
    rider takes the job she holds none: she hears a code will come (not "give the
    code we sent you"); the next accept sends her a new one, which she holds."""
    _, quitter = make_partner("Quitter", LAXMIPUR, lang="en")
    other_id, other = make_partner("Other", (26.90, 84.49), lang="en")
    job = paid_booking()
    start(job)
    sms(client, quitter, "1")
    run_jobs()  # her code goes out (Twilio has it: no withdrawal can take it back)
    assert _drop_code_messages(job) == [("delivered", RECIPIENT)]
    assert _holder(job) == partner_sms.HER
    sms(client, quitter, f"CANCEL {legs_of(job)[0].id}")
    assert legs_of(job)[0].status == "offering"
    assert _holder(job) is None, "her voided code is named as working"
    ref = _reference(job)
    answer = sms(client, RECIPIENT, "where is my parcel?")
    told = {i18n.t("sms.recipient_coming", lang, ref=ref) for lang in i18n.LANGUAGES}
    void = {i18n.t("sms.recipient_coming_code_sent", lang, ref=ref) for lang in i18n.LANGUAGES}
    assert len(answer) == 1 and answer[0] in told and answer[0] not in void, answer
    assert [o.partner_id for o in offers(legs_of(job)[0].id)
            if o.status == "open"] == [other_id]
    sms(client, other, "1")
    assert _holder(job) == partner_sms.HER

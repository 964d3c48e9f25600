"""What phone callers and SMS-only customers are told (r3).

1. The message with a phone booking's details said "payment link in the next SMS" even to a
   caller who stopped our SMS: it went on WhatsApp, as the link does (VoicePorts.reach).
2. A pickup code read out on a call stayed in plain text in the call's stored answer
   (inbound_events, kept for Twilio's retries) for the whole retention window: it is
   blanked once the call ends, or shortly after it was read.
3. Every prompt that lists keys says them in the order they are pressed, and each language
   names the same keys as English.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from datetime import timedelta

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, InboundEvent, OutboxMessage, Person
from core.services import ivr
from tests.conftest import release_scheduled
from tests.test_dispatch import frozen  # noqa: F401  (fixture)
from tests.test_ivr import Caller, Heard, phone, prompts, t  # noqa: F401
from tests.test_ivr_more import (  # noqa: F401  (fixtures)
    assigned,
    book_from_menu,
    chats_on_whatsapp,
    heard_code,
    jobs,
    pay_links_to,
    track_first,
)
from tests.test_notice_review import ref_of

pytestmark = pytest.mark.db


# --- 1. the booking's details say where its payment link goes -----------------------------

def details_to(number: str) -> list[OutboxMessage]:
    with transaction() as s:
        rows = list(s.scalars(select(OutboxMessage).where(
            OutboxMessage.to_addr.in_([number, f"whatsapp:{number}"]),
            OutboxMessage.dedupe_key.like("ivr-details-%")).order_by(OutboxMessage.id)))
        for row in rows:
            s.expunge(row)
        return rows


def test_details_on_whatsapp_do_not_promise_the_link_by_sms(live, phone):  # noqa: F811
    with transaction() as s:
        s.add(Person(phone=phone.phone, role="customer", preferred_language="hi",
                     sms_opted_out=True))
    chats_on_whatsapp(phone.phone)
    book_from_menu(phone)
    phone.hang_up()
    jobs()
    [details] = details_to(phone.phone)
    assert details.channel == "whatsapp"
    assert "SMS" not in details.body, details.body
    assert "WhatsApp" in details.body
    assert [row.channel for row in pay_links_to(phone.phone)] == ["whatsapp"]


def test_details_by_sms_still_say_the_link_comes_by_sms(live, phone):  # noqa: F811
    with transaction() as s:
        s.add(Person(phone=phone.phone, role="customer", preferred_language="hi"))
    chats_on_whatsapp(phone.phone)  # a phone booking's news goes by SMS all the same
    book_from_menu(phone)
    phone.hang_up()
    jobs()
    [details] = details_to(phone.phone)
    with transaction() as s:
        ref = s.scalar(select(Booking.reference))
    assert details.channel == "sms" and ref in details.body and "SMS" in details.body
    assert [row.channel for row in pay_links_to(phone.phone)] == ["sms"]


def test_no_details_go_to_a_caller_nothing_can_reach(live, phone):  # noqa: F811
    with transaction() as s:
        s.add(Person(phone=phone.phone, role="customer", preferred_language="hi",
                     sms_opted_out=True))
    book_from_menu(phone)
    phone.hang_up()
    jobs()
    assert details_to(phone.phone) == []


# --- 2. a pickup code read on a call is not kept --------------------------------------------

def stored_answers() -> list[str]:
    with transaction() as s:
        return [b for b in s.scalars(select(InboundEvent.response_body).where(
            InboundEvent.provider == ivr.PROVIDER)) if b]


def hear_a_code(caller: Caller, booking_id: int) -> tuple[Heard, str]:
    track_first(caller)
    heard = caller.press("1")
    code = heard_code(heard, ref_of(booking_id))
    return heard, " ".join(code)


def test_a_retry_hears_the_code_again_and_the_ended_call_keeps_it_nowhere(
        client, assigned):  # noqa: F811
    booking_id, _, caller = assigned
    heard, said = hear_a_code(caller, booking_id)
    again = caller.repeat()  # Twilio's retry of that webhook, during the call
    assert again.xml == heard.xml
    assert [a for a in stored_answers() if said in a]  # kept while a retry may come
    caller.hang_up()
    assert not [a for a in stored_answers() if said in a]
    assert stored_answers(), "only the answer with the code went, not the call's others"
    late = caller.repeat()  # a retry after the call: answered, never with the code
    assert said not in late.xml and late.hangup


def test_a_code_is_blanked_when_the_caller_hangs_up_after_more_keys(
        client, assigned):  # noqa: F811
    booking_id, _, caller = assigned
    _, said = hear_a_code(caller, booking_id)
    caller.press("2")  # tracks again from the menu
    caller.hang_up("canceled")
    assert not [a for a in stored_answers() if said in a]


def test_a_code_is_blanked_when_the_status_callback_never_comes(
        client, assigned):  # noqa: F811
    booking_id, _, caller = assigned
    _, said = hear_a_code(caller, booking_id)
    jobs()
    assert [a for a in stored_answers() if said in a]  # not before its time
    assert release_scheduled(ivr.CODE_ANSWER_KEPT + timedelta(seconds=5)) >= 1
    jobs()
    assert not [a for a in stored_answers() if said in a]


def test_a_new_call_blanks_the_code_of_the_call_it_replaces(client, assigned):  # noqa: F811
    booking_id, _, caller = assigned
    _, said = hear_a_code(caller, booking_id)
    caller.call()  # the line dropped without a status callback; they call again
    assert not [a for a in stored_answers() if said in a]


# --- 3. keys said in the order they are pressed, the same in every language ------------------

KEYPAD = "123456789*0#"  # the order of the keys on a phone's pad


def test_the_village_list_says_8_before_9(phone):  # noqa: F811
    phone.call()
    phone.press("1")  # Hindi
    phone.press("1")  # book
    heard = phone.press("845450#")  # 11 post offices: a page of 7, then more
    text = heard.text
    assert t("ivr.more") in text and t("ivr.place.reenter") in text
    assert text.index(t("ivr.place.reenter")) < text.index(t("ivr.more")), text


def _catalog(lang: str) -> dict[str, str]:
    out: dict[str, str] = {}

    def flat(table: dict, prefix: str) -> None:
        for k, v in table.items():
            if isinstance(v, dict):
                flat(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    with open(i18n.catalog_dir() / f"{lang}.toml", "rb") as f:
        flat(tomllib.load(f), "")
    return out


# What each language calls the keypad's star and hash keys in the prompts.
STAR = {"en": "star", "hi": "स्टार", "bn": "স্টার", "mr": "स्टार", "ta": "ஸ்டார்",
        "te": "స్టార్", "gu": "સ્ટાર", "kn": "ಸ್ಟಾರ್"}
HASH = {"en": "hash", "hi": "हैश", "bn": "হ্যাশ", "mr": "हॅश", "ta": "ஹேஷ்",
        "te": "హ్యాష్", "gu": "હૅશ", "kn": "ಹ್ಯಾಶ್"}


def keys_named(text: str, lang: str) -> list[str]:
    """The keys a text tells the caller to press, in the order it says them."""
    text = re.sub(r"\{[^}]*\}", "", text)
    star = re.escape(STAR[lang]) + (r"\b" if lang == "en" else "")
    hash_ = re.escape(HASH[lang]) + (r"\b" if lang == "en" else "")
    found = re.finditer(rf"(?P<d>\d)|(?P<s>{star})|(?P<h>{hash_})", text,
                        flags=re.IGNORECASE if lang == "en" else 0)
    return [m["d"] and str(unicodedata.digit(m["d"])) or ("*" if m["s"] else "#")
            for m in found]


PROMPTS = [k for k in _catalog("en") if k.startswith("ivr.") and not k.startswith("ivr.sms.")]
# Texts whose numbers are not keys: lengths of a number to key in ("8 digit"), money and
# days (the cancel and no-rider texts), counts.
NOT_KEYS = re.compile(r"^ivr\.(track\.(ask|ask_other|bad)|pickup\.ask|drop\.ask|place\.bad_"
                      r"pincode|phone\.(ask|bad)|confirm\.(no_rider|too_many_unpaid)|"
                      r"cancel\.done_refund|weight\.w\d+)$")


@pytest.mark.parametrize("key", PROMPTS)
def test_every_language_names_the_keys_english_names(key: str) -> None:
    english = keys_named(_catalog("en")[key], "en")
    for lang in i18n.LANGUAGES:
        assert keys_named(_catalog(lang)[key], lang) == english, (key, lang)


@pytest.mark.parametrize("key", [k for k in PROMPTS if not NOT_KEYS.match(k)])
def test_a_prompt_says_its_keys_in_keypad_order(key: str) -> None:
    named = keys_named(_catalog("en")[key], "en")
    assert named == sorted(named, key=KEYPAD.index), (key, named)


def test_the_language_list_names_its_own_key_in_every_language() -> None:
    for n, lang in enumerate(i18n.LANGUAGES, start=1):
        assert keys_named(_catalog(lang)["voice.language_option"], lang) == [str(n)]

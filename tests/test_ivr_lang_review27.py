"""Review r4: the phone (IVR) in the languages other than Hindi and English.

Calls go through the real, signed voice webhooks (the ``Caller`` of tests/test_ivr.py);
payments through the sandbox gateway. Each test fails on the code as reviewed; its
docstring says what is wrong and what should happen.
"""

from __future__ import annotations

import pytest
from sqlalchemy import update

from core.adapters.db import transaction
from core.adapters.models import Person
from core.dialog import spoken
from tests.test_ivr import Caller, Heard, phone, prompts, t  # noqa: F401
from tests.test_ivr_cancel import unpaid_booking
from tests.test_payments_support import advance, new_partner, paid_booking

pytestmark = pytest.mark.db


def speaks(number: str, lang: str) -> None:
    with transaction() as s:
        s.execute(update(Person).where(Person.phone == number)
                  .values(preferred_language=lang))


# --- 1. a booking made in the app or by SMS is named with India Post's office suffix ------

def test_the_cancel_list_names_an_app_booking_as_people_say_its_place(phone):  # noqa: F811
    """A booking made in the app (or by SMS, or by ops) keeps the directory's office name,
    "Bettiah HO" (core/api/customer._place stores office.office_name). A Tamil caller who
    presses 5 to cancel it hears "Bettiah HO போகும் புக்கிங்..." and again in the cancel
    question: the voice reads out India Post's "HO" (or "BO", "SO"), which no villager
    says. The phone says a place as people say it everywhere else (the village list, the
    confirmation, pincode.display_name; a shared name gets a word, office.*): "Bettiah"."""
    ref = unpaid_booking(phone.phone)  # drop: Bettiah HO, as the API books it
    speaks(phone.phone, "ta")
    phone.call()
    heard = phone.press("5")
    option = t("ivr.cancel.option", "ta", place="Bettiah",
               digits=spoken.spell_digits(ref[-4:]))
    assert "HO" not in heard.text.split(), heard.text
    assert option in heard.text, heard.text
    heard = phone.press("1")
    assert "HO" not in heard.text.split(), heard.text
    assert t("ivr.cancel.free", "ta", place="Bettiah") in heard.text, heard.text


# --- 2. silence after the pickup code was read out -------------------------------------

def test_silence_after_hearing_the_pickup_code_ends_politely(live, phone):  # noqa: F811
    """A Bengali customer whose pickup-code SMS never came calls, tracks her booking and
    hears the new code (then "press 1 to hear it again, 0 for the menu"). She has what she
    called for and writes it down in silence: she hears "no key pressed" twice, then "it
    seems something is not working, do you want to talk to a person?", and the call ends
    with "we did not get an answer, please call again later". After a booking the same
    silence is thanked and the call ends (END_ON_SILENCE has "done"); after the code it
    should end as politely, with no offer of a person and no "call again later"."""
    bid = paid_booking(phone.phone)
    speaks(phone.phone, "bn")
    advance(bid, new_partner(), to="assigned")
    phone.call()
    phone.press("2")
    heard = phone.press("1#")
    assert t("ivr.code.offer", "bn") in heard.text, heard.text
    heard = phone.press("1")
    assert t("ivr.code.again_offer", "bn") in heard.text, heard.text  # the code was read

    said: list[Heard] = []
    for _ in range(6):
        said.append(phone.silence())
        if said[-1].hangup and said[-1].gather is None:
            break
    assert said[-1].gather is None, "the call never ended"
    everything = "\n".join(h.text for h in said)
    assert t("ivr.offer.ask", "bn") not in everything, everything
    assert t("ivr.no_answer", "bn") not in everything, everything
    assert t("voice.goodbye", "bn") in said[-1].text


# --- 3. a withheld number is told only in Hindi ------------------------------------------

def test_a_hidden_caller_is_told_in_english_too(client, prompts):  # noqa: F811
    """A caller with a withheld number hears why we cannot serve them, and goodbye, only in
    Hindi (voice._answer: twiml.hangup_with("ivr.hidden_number")). We cannot know their
    language; for the same reason a caller on a foreign or landline number we do not know
    hears ivr.not_mobile in Hindi and then in English ("the caller may well not be a Hindi
    speaker"). A Tamil or Bengali speaker who hides their number should get at least the
    English sentence too."""
    heard = Caller(client, "+266696687").call()  # Twilio's caller ID for ANONYMOUS
    assert heard.hangup and heard.gather is None
    assert t("ivr.hidden_number", "hi") in heard.text
    assert t("ivr.hidden_number", "en") in heard.text, heard.text



# --- 4. "for more names, press 9" on the last page of the village list -------------------

def test_the_last_page_of_villages_does_not_promise_more_names(phone):  # noqa: F811
    """Pincode 845450 has 11 villages we serve: the list reads 7, "8 to key the pincode
    again", "for more names, press 9"; 9 reads the other 4, and again "for more names,
    press 9". There are none: 9 reads the first 7 again (office_handle wraps to page 0),
    which a Gujarati caller takes for new names. The last page should not promise more
    names (say nothing, or say that 9 starts the list again)."""
    with transaction() as s:
        s.add(Person(phone=phone.phone, role="customer", preferred_language="gu"))
    phone.call()
    phone.press("1")  # book
    first = phone.press("845450#")
    assert "Laxmipur" in first.text and t("ivr.more", "gu") in first.text, first.text
    last = phone.press("9")
    assert "Chuhari" in last.text and "Laxmipur" not in last.text, last.text
    assert t("ivr.more", "gu") not in last.text, last.text
    assert t("ivr.more_again", "gu") in last.text, last.text  # fixer f4: what 9 does now
    again = phone.press("9")
    assert "Laxmipur" in again.text and t("ivr.more", "gu") in again.text, again.text


def test_a_booked_office_sharing_its_name_is_told_apart_as_the_list_tells_it():
    """Fixer f4, for item 1: 226002 has "Arjunganj BO" and "Arjunganj SO" (both shown as
    "Arjunganj"). A booking made in the app keeps "Arjunganj SO"; one made on the phone
    the written form it was offered by ("Arjunganj Sub Office", office_names.written).
    Either is said as the phone's village list says it, with the word for its kind; a
    name the directory does not know loses only India Post's suffix."""
    from core.dialog.booking import said_name
    from core.services.ivr import booked_place
    from ivr_flows.twiml import text_of

    for stored in ("Arjunganj SO", "Arjunganj Sub Office", "arjunganj so"):
        named = booked_place(stored, "226002")
        said = said_name(named)
        assert not isinstance(said, str), named
        assert text_of(said, "ta") == t("office.sub", "ta", name="Arjunganj"), named
    assert booked_place("Arjunganj BO", "226002") != booked_place("Arjunganj SO", "226002")
    assert booked_place("Bettiah HO", "845438") == {"name": "Bettiah"}
    assert booked_place("Gone Away SO", "845438") == {"name": "Gone Away"}
    assert booked_place(None, "845438") == {"name": "845438"}

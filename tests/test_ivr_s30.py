"""Session 30: a phone call's length and its languages.

1. A call has at most ivr.MAX_TURNS answers; a shopkeeper booking three parcels in one call
   (about 15 answers each) was cut in the third, told "call again in a little while" though
   what she keyed was kept. Each thing done (a booking made, cancelled or tracked) now gives
   the call a new budget; a caller going round for ever still ends, told, when a draft is
   kept, that it is and how to go on with it.
2. A call that opens with "finish your booking?" (a draft) said no word in another
   language: the "for Telugu, press 4" lines said at the first menu were missing there,
   and 4 was no key of it.
3. A new caller (no language chosen) who presses * for ever at the language list was cut at
   MAX_TURNS with a Hindi-only goodbye.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, Person
from core.services import ivr
from tests.test_ivr import Caller, Heard, phone, prompts, step_of, t  # noqa: F401

pytestmark = pytest.mark.db

LOCALE = {"hi": "hi-IN", "te": "te-IN", "ta": "ta-IN"}


def bookings_of(number: str) -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(Booking).join(
            Person, Person.id == Booking.customer_id).where(Person.phone == number))


def book_from_menu(caller: Caller) -> Heard:
    """From the menu, the shortest booking (Bettiah 845438 to Laxmipur 845450): 14 answers,
    ending at "booked" (the done step)."""
    caller.press("1")  # book
    heard = caller.press("845438#")
    assert t("ivr.place.pincode", digits="8 4 5, 4 3 8") in heard.text, heard.text
    caller.press("2")  # Bettiah
    caller.press("1")  # right
    caller.press("845450#")
    caller.press("7")  # Laxmipur
    caller.press("1")
    caller.press("9876543210#")
    caller.press("1")
    caller.press("1")  # fits in a bag
    caller.press("1")  # up to 5 kg
    heard = caller.press("2")  # standard
    assert t("ivr.confirm.yes") in heard.text, heard.text
    return caller.press("1")  # book it


def hindi_caller(caller: Caller) -> None:
    with transaction() as s:
        s.add(Person(phone=caller.phone, role="customer", preferred_language="hi"))


# --- 1. the call's budget of answers ------------------------------------------------------

def test_a_shopkeeper_books_three_parcels_in_one_call(phone: Caller) -> None:  # noqa: F811
    """3 x (14 answers + 0 for the menu) = 44 answers, more than MAX_TURNS (40): each
    booking made gives the call its own budget, so the third is made too."""
    assert 3 * 15 > ivr.MAX_TURNS
    hindi_caller(phone)
    phone.call()
    for made in range(1, 4):
        heard = book_from_menu(phone)
        assert t("ivr.too_long") not in heard.text, f"booking {made}: {heard.text}"
        assert step_of(phone.phone) == "done", heard.text
        assert bookings_of(phone.phone) == made
        heard = phone.press("0")  # the menu
        assert t("ivr.menu") in heard.text and heard.gather is not None, heard.text


def test_a_caller_pressing_star_for_ever_after_a_booking_still_ends(phone, monkeypatch  # noqa: F811
                                                                     ) -> None:
    """The budget is new after the booking, not endless: MAX_TURNS more stars end the call."""
    monkeypatch.setattr(ivr, "MAX_TURNS", 20)
    hindi_caller(phone)
    phone.call()
    book_from_menu(phone)  # 14 answers
    for _ in range(20):
        heard = phone.press("*")
        assert heard.gather is not None, heard.text
    heard = phone.press("*")
    assert heard.hangup and heard.gather is None and t("ivr.too_long") in heard.text


def test_tracking_the_same_booking_over_and_over_still_ends(phone, monkeypatch  # noqa: F811
                                                            ) -> None:
    """A track gives a new budget once per booking in a call: a caller going round the
    same one (2, then 1 for it) is still ended."""
    hindi_caller(phone)
    phone.call()
    book_from_menu(phone)
    phone.press("0")
    monkeypatch.setattr(ivr, "MAX_TURNS", 6)
    answers = 0
    for key in ("2", "1#") * 10:  # where is my parcel; the first of its recent bookings
        heard = phone.press(key)
        answers += 1
        if heard.gather is None:
            break
        if key == "1#":
            assert "Laxmipur" not in heard.text and t("ivr.menu") in heard.text, heard.text
    assert heard.gather is None and t("ivr.too_long") in heard.text, heard.text
    # The menu's 0 was answer 1 after the booking; 2 and 1 (3) tracked it: a new budget,
    # the first and only one it gives: 6 answers more, and the 7th ends the call.
    assert answers == 2 + 7, answers


def test_a_cancel_gives_the_call_a_new_budget(phone, monkeypatch) -> None:  # noqa: F811
    """Booked, then cancelled in the same call (the 4th answer after the booking): the
    count starts again there, so MAX_TURNS more answers are taken, and no more."""
    hindi_caller(phone)
    phone.call()
    book_from_menu(phone)
    monkeypatch.setattr(ivr, "MAX_TURNS", 4)
    phone.press("0")
    heard = phone.press("5")
    assert t("ivr.cancel.ask") in heard.text, heard.text
    phone.press("1")
    heard = phone.press("1")  # yes, cancel it
    assert t("ivr.cancel.done") in heard.text and heard.gather is not None, heard.text
    for _ in range(4):
        heard = phone.press("*")
        assert heard.gather is not None, heard.text
    heard = phone.press("*")
    assert heard.gather is None and t("ivr.too_long") in heard.text, heard.text


def test_the_goodbye_at_the_limit_says_the_booking_so_far_is_kept(phone, monkeypatch  # noqa: F811
                                                                  ) -> None:
    """Cut in the middle of a booking, the caller is told it is kept and to call again to
    finish it (not "call again in a little while", as if all was lost); the call back
    offers it."""
    monkeypatch.setattr(ivr, "MAX_TURNS", 6)
    hindi_caller(phone)
    phone.call()
    phone.press("1")
    phone.press("845438#")
    phone.press("2")  # Bettiah
    phone.press("1")  # right: the pickup is in the draft
    phone.press("*")
    phone.press("*")
    heard = phone.press("*")
    assert heard.hangup and heard.gather is None, heard.xml
    assert t("ivr.too_long_kept") in heard.text and t("ivr.too_long") not in heard.text
    phone.hang_up()
    heard = phone.call()
    assert t("ivr.resume.ask", place="Bettiah") in heard.text, heard.text


def test_the_goodbye_at_the_limit_without_a_draft_is_the_usual_one(phone, monkeypatch  # noqa: F811
                                                                   ) -> None:
    monkeypatch.setattr(ivr, "MAX_TURNS", 3)
    hindi_caller(phone)
    phone.call()
    phone.press("1")  # book: the pincode question, nothing kept yet
    phone.press("*")
    phone.press("*")
    heard = phone.press("*")
    assert heard.hangup and t("ivr.too_long") in heard.text
    assert t("ivr.too_long_kept") not in heard.text


# --- 2. "finish your booking?" in another language ---------------------------------------

def leave_a_draft(caller: Caller) -> None:
    """A Tamil caller keys her pickup, then the call drops: a draft."""
    with transaction() as s:
        s.add(Person(phone=caller.phone, role="customer", preferred_language="ta"))
    caller.call()
    caller.press("1")
    caller.press("845438#")
    caller.press("2")  # Bettiah
    caller.press("1")
    caller.hang_up()


def test_a_call_opening_with_a_draft_says_how_to_get_each_other_language(phone  # noqa: F811
                                                                          ) -> None:
    leave_a_draft(phone)
    heard = phone.call()
    assert t("ivr.resume.ask", "ta", place="Bettiah") in heard.text, heard.text
    for lang in i18n.LANGUAGES:
        line = t("ivr.other_language", lang)
        assert (line in heard.text) == (lang != "ta"), (lang, heard.text)


def test_the_key_said_at_a_draft_opens_the_language_list_and_keeps_the_draft(phone  # noqa: F811
                                                                              ) -> None:
    """Her Telugu husband presses 4 at "finish your booking?", picks Telugu (6); the menu
    is in Telugu, and her draft is still offered (in Telugu) on 1."""
    leave_a_draft(phone)
    phone.call()
    heard = phone.press("4")
    assert step_of(phone.phone) == "language", heard.text
    assert {LOCALE["te"], LOCALE["ta"]} <= {lang for lang, _ in heard.says}
    heard = phone.press("6")  # Telugu
    assert t("ivr.menu", "te") in heard.text, heard.text
    heard = phone.press("1")
    assert t("ivr.resume.ask", "te", place="Bettiah") in heard.text, heard.text


# --- 3. lost at the language list for ever ---------------------------------------------

def test_stars_for_ever_at_the_language_list_end_in_every_language(phone, monkeypatch  # noqa: F811
                                                                   ) -> None:
    """A new caller at the language list presses * and a wrong key in turn (neither ends
    the list by itself): at MAX_TURNS the goodbye is in all eight languages, Hindi (whose
    goodbye follows) last."""
    monkeypatch.setattr(ivr, "MAX_TURNS", 6)
    phone.call()
    for key in ("*", "9", "*", "9", "*", "9"):
        heard = phone.press(key)
        assert heard.gather is not None, heard.text
    heard = phone.press("*")
    assert heard.hangup and heard.gather is None, heard.xml
    for lang in i18n.LANGUAGES:
        assert t("ivr.too_long", lang) in heard.text, (lang, heard.text)
    assert heard.says[-2] == (LOCALE["hi"], t("ivr.too_long"))
    assert heard.says[-1] == (LOCALE["hi"], t("voice.goodbye"))

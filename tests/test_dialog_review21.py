"""Review 21 (the WhatsApp booking dialog): a change before the confirmation kept after
"0" sent twice, the hello of every shipped language is no name and no miss, a number
typed with an en dash or a non-breaking hyphen, and tracking a booking cancelled with a
rider's fee once the rest is refunded."""

from __future__ import annotations

import pytest

from core import i18n
from core.dialog import booking as dialog
from core.dialog import words
from core.dialog.engine import DialogState
from tests.conftest import read_first
from tests.test_dialog import PLACE, FakePorts, keys, play
from tests.test_dialog_edges import Chat, english_chat_at_size

# --- 1. a change survives the menu word sent twice ----------------------------------------


@pytest.mark.db
def test_a_change_survives_the_menu_word_sent_twice(client, monkeypatch) -> None:
    # At the confirmation: "2 change, 1 pickup", then "0" (menu) and "0" again. The
    # second "0" (at the menu, a step outside the booking) dropped ``return_to`` while
    # the draft was kept, so "1, 1 continue that booking" asked the drop, the receiver,
    # the parcel, the value and the speed again. The draft is kept as a change.
    from core.services.seed import seed_demo

    seed_demo()
    chat = english_chat_at_size(client, "+919812355001")
    for text in ("1", "1", "no", "1", "2"):  # bag, 5 kg, not fragile, up to ₹500, standard
        chat.send(text)
    assert chat.step() == "confirm"
    read_first(monkeypatch)
    chat.send("2")  # change something
    chat.send("1")  # the pickup place
    assert chat.step() == "pickup"
    chat.send("0")
    chat.send("0")  # the menu again: a second look, nothing else
    chat.send("1")  # send a parcel
    assert chat.step() == "resume"
    chat.send("1")  # continue that booking
    assert chat.step() == "pickup"
    chat.send("413739")
    chat.send("3")  # another village of that pincode
    reply = chat.send("skip")
    assert chat.step() == "confirm", reply


def _changing_pickup() -> DialogState:
    return DialogState("pickup", {"slots": {"pickup": dict(PLACE), "drop": dict(PLACE, lat=26.0)},
                                  "return_to": "confirm"})


@pytest.mark.parametrize("after", [("0",), ("0", "0"), ("0", "help"), ("0", "1", "0")])
def test_menu_words_outside_the_booking_keep_a_change_while_its_draft_is_offered(after) -> None:
    # "0" at the menu, or at "continue that booking?", leaves the draft as it was.
    state = _changing_pickup()
    play(state, FakePorts(), *after)
    assert state.data.get("draft_step") == "pickup"
    assert state.data.get("return_to") == "confirm", state.data


def test_a_change_is_dropped_with_its_draft() -> None:
    # "Start a new booking" clears the draft, and that it was a change with it.
    state = _changing_pickup()
    play(state, FakePorts(), "0", "1", "2")
    assert state.step == "pickup"
    assert "return_to" not in state.data and "draft_step" not in state.data, state.data


# --- 2. the hello of each language -------------------------------------------------------

# Each catalog's own greeting (lang.menu), in its script, and as typed in Latin letters.
HELLOS = ["வணக்கம்", "vanakkam", "Vanakam", "নমস্কার", "nomoshkar", "nomoskar", "నమస్కారం",
          "namaskaram", "ನಮಸ್ಕಾರ", "namaskara", "નમસ્તે", "કેમ છો", "kem cho", "Kem chho ji",
          "नमस्कार", "Vanakkam sir"]


def test_each_catalogs_own_greeting_is_a_greeting() -> None:
    for lang in i18n.LANGUAGES:
        hello = i18n.raw("lang.menu", lang).split("!")[0].strip()
        assert dialog.is_greeting(hello), (lang, hello)


@pytest.mark.parametrize("greeting", HELLOS)
def test_a_greeting_in_the_customers_language_is_not_the_receivers_name(greeting: str) -> None:
    # "What is the mobile number of வணக்கம்?": the hello of their language was taken as
    # the receiver's name. It is asked again, as "hi" is.
    state = DialogState("recipient_name", {"slots": {"pickup": dict(PLACE),
                                                     "drop": dict(PLACE, lat=26.0)}})
    outs = play(state, FakePorts(), greeting)
    assert "recipient_name" not in state.slots, state.slots.get("recipient_name")
    assert "bot.recipient.bad_name" in keys(outs)


@pytest.mark.parametrize("greeting", HELLOS)
def test_a_greeting_in_the_customers_language_at_the_menu_is_no_miss(greeting: str) -> None:
    # The menu again, no "Sorry, I did not understand", no miss towards a person.
    state = DialogState("menu", {})
    outs = play(state, FakePorts(), greeting)
    assert "bot.retry" not in keys(outs) and state.misses == 0, keys(outs)
    assert state.step == "menu"


@pytest.mark.parametrize("name", ["Vanaja", "Namrata", "Kemal", "Cho", "Nomita", "Ram",
                                  "Namasivayam", "Kamala Devi"])
def test_names_like_a_greeting_are_still_names(name: str) -> None:
    state = DialogState("recipient_name", {"slots": {"pickup": dict(PLACE),
                                                     "drop": dict(PLACE, lat=26.0)}})
    play(state, FakePorts(), name)
    assert state.slots.get("recipient_name") == name


def test_no_greeting_is_a_word_of_another_list() -> None:
    # A greeting read as yes, no, a number, a command or a language would be answered as
    # that; "start" (the SMS keyword) was one of both before.
    others = set(words.YES_WORDS | words.NO_WORDS | words.SKIP_WORDS | words.HELP_WORDS
                 | words.MENU_WORDS | words.LANGUAGE_WORDS | words.STOP_WORDS
                 | words.BACK_WORDS | words.NUMBER_WORDS.keys()
                 | words.LANGUAGE_BY_NAME.keys() | dialog.FILLERS)
    for listed in dialog.MENU_WORDS:
        others |= listed
    assert not (dialog.GREETINGS - {"start"}) & others
    assert [g for g in dialog.GREETINGS if words.command(g) or words.language_named(g)] == ["start"]


# --- 3. a number with an en dash or a non-breaking hyphen ---------------------------------

@pytest.mark.parametrize("typed", ["98765–43210", "98765\u201143210", "+91 98765—43210",
                                   "98765\u2010432\u201210"])
def test_a_number_typed_with_a_dash_of_a_phones_keyboard_is_taken(typed: str) -> None:
    # A phone's keyboard (or a copied contact) gives an en dash or a non-breaking hyphen
    # for "-": "98765–43210" was refused as no mobile number, although normalize_phone
    # takes it.
    assert words.only_digits(typed) in ("9876543210", "919876543210")
    state = DialogState("recipient_phone", {"slots": {"pickup": dict(PLACE),
                                                      "drop": dict(PLACE, lat=26.0),
                                                      "recipient_name": "Sunita"}})
    outs = play(state, FakePorts(), typed)
    assert state.slots.get("recipient_phone") == "+919876543210", keys(outs)
    assert state.step == "category"


def test_a_name_with_a_number_typed_with_an_en_dash_is_both() -> None:
    state = DialogState("recipient_name", {"slots": {"pickup": dict(PLACE),
                                                     "drop": dict(PLACE, lat=26.0)}})
    play(state, FakePorts(), "Sunita Patil 98765–43210")
    assert state.slots.get("recipient_name") == "Sunita Patil"
    assert state.slots.get("recipient_phone") == "+919876543210"


def test_words_with_dashes_are_still_no_number() -> None:
    assert words.only_digits("98765–abc") is None
    assert words.only_digits("–") is None


# --- 4. tracking a booking refunded less a rider's cancellation fee -----------------------
# Through RQ, the Razorpay emulator (``live``) and its signed webhooks.

def _cancelled_and_refunded(phone: str, *, assigned: bool) -> str:
    from core.adapters.db import transaction
    from core.domain.booking import BookingStatus
    from core.services import ledger, payments
    from tests.test_payments_support import (
        CUSTOMER,
        advance,
        booking,
        new_partner,
        paid_booking,
        run,
        summary,
    )

    bid = paid_booking(phone)
    if assigned:
        advance(bid, new_partner(), to="assigned")
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "changed my mind")
    run()  # the gateway refunds the rest; the booking is refunded
    assert booking(bid).status == BookingStatus.REFUNDED.value
    assert (summary(bid)["fee_paise"] > 0) is assigned
    return booking(bid).reference


@pytest.mark.db
def test_a_booking_refunded_less_the_riders_fee_is_not_said_all_returned(client, live) -> None:
    # Cancelled after a rider took the job: his fee was kept, the rest refunded. Tracking
    # said "your money has been returned", as if all of it had come back.
    ref = _cancelled_and_refunded("+919812340001", assigned=True)
    chat = Chat(client, "+919812340001")
    chat.send("hi")
    listed = chat.send("2")
    tracked = chat.send("1")
    for said in (listed, tracked):
        assert i18n.t("booking.status.refunded", "en", ref=ref) not in said, said
        assert i18n.t("booking.status.fee_refunded", "en", ref=ref) in said, said


@pytest.mark.db
def test_a_booking_refunded_in_full_is_still_said_returned(client, live) -> None:
    ref = _cancelled_and_refunded("+919812340002", assigned=False)
    chat = Chat(client, "+919812340002")
    chat.send("hi")
    listed = chat.send("2")
    assert i18n.t("booking.status.refunded", "en", ref=ref) in listed, listed
    assert i18n.t("booking.status.fee_refunded", "en", ref=ref) not in listed, listed

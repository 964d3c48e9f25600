"""Session 30: what a keypad turn costs the database (issue 8: an IVR turn carried ~0.15 of
a bare signed endpoint's throughput against a 0.5 target).

The SQL statements of a turn are counted (they are stable where times on a shared host are
not), so a regression fails here rather than only in the benchmark:

1. A menu turn (the caller's keys to the dialog, nothing booked): the contact's row under
   its lock, the dialog's place written, the turn's answer recorded (its duplicate check
   in the same INSERT). Three, no more.
2. The confirm turn ("1": book it) counted the customer's unpaid bookings under their row's
   lock twice (the ports' confirm, then create_booking), read the booking just made again
   by its reference for the call's details SMS, and once more for the done step's payment
   link: 23 statements. The booking's own count is the one kept (the refusal still says
   how many wait for payment), and the booking made is handed on, not read again: 19. The
   details SMS is given the caller's person the turn holds, not read again by phone: 18.
   The done step's question (is it still to be paid?) does not look for the payment link
   of a booking made in this very turn (its job makes it after the commit): 17.
3. Session 31: the turn's place in the dialog is saved by the statement that records its
   answer (a WITH ... UPDATE conversations before the INSERT INTO inbound_events): a menu
   turn 3 -> 2 statements, the confirm turn 17 -> 16. A duplicate answer (the INSERT
   writes nothing) still rolls the turn back whole, its UPDATE with it. The details SMS
   takes the opt-outs of the caller's person the turn holds (outbox.queue_message's
   person): 16 -> 15.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event, func, select

from core.adapters.db import engine, transaction
from core.adapters.models import Booking, OutboxMessage
from core.dialog import spoken
from tests.test_ivr import Caller, phone, prompts, step_of, t  # noqa: F401
from tests.test_ivr_s30 import hindi_caller

pytestmark = pytest.mark.db

MENU_TURN_STATEMENTS = 2  # 3 before session 31
CONFIRM_TURN_STATEMENTS = 15  # 23 before session 30, 17 before session 31: see above


@contextmanager
def statements() -> Iterator[list[str]]:
    """The SQL statements sent to PostgreSQL inside the block, in order."""
    seen: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # noqa: ANN001 (SQLAlchemy's event)
        seen.append(" ".join(statement.split()))

    event.listen(engine(), "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine(), "before_cursor_execute", count)


def to_the_confirmation(caller: Caller) -> None:
    """From the menu to "book it?" (Bettiah 845438 to Laxmipur 845450), as test_ivr_s30's
    book_from_menu, without its last answer."""
    for keys in ("1", "845438#", "2", "1", "845450#", "7", "1", "9876543210#", "1", "1",
                 "1"):
        caller.press(keys)
    heard = caller.press("2")  # standard
    assert t("ivr.confirm.yes") in heard.text, heard.text


def test_a_menu_turn_costs_two_statements(phone: Caller) -> None:  # noqa: F811
    hindi_caller(phone)
    phone.call()
    assert step_of(phone.phone) == "menu"
    with statements() as sql:
        heard = phone.press("1")  # book
    assert heard.gather is not None and step_of(phone.phone) != "menu", heard.text
    assert len(sql) == MENU_TURN_STATEMENTS, "\n".join(sql)
    assert sql[0].startswith("SELECT conversations.") and "FOR UPDATE" in sql[0]
    assert sql[1].startswith("WITH state_saved AS (UPDATE conversations ")
    assert ") INSERT INTO inbound_events " in sql[1]


def test_the_confirm_turn_counts_unpaid_once_and_reads_the_booking_made_never(
        phone: Caller) -> None:  # noqa: F811
    hindi_caller(phone)
    phone.call()
    to_the_confirmation(phone)
    with statements() as sql:
        heard = phone.press("1")  # book it
    assert step_of(phone.phone) == "done", heard.text
    text = "\n".join(sql)
    assert sum(s.startswith("SELECT people.id FROM people") and s.endswith("FOR UPDATE")
               for s in sql) == 1, text
    assert sum(s.startswith("SELECT count(*)") and "FROM bookings" in s for s in sql) == 1, text
    # The booking's reference is looked up once: to be sure a new one is unused.
    assert sum(s.startswith("SELECT bookings.") and "bookings.reference =" in s
               for s in sql) == 1, text
    assert len(sql) == CONFIRM_TURN_STATEMENTS, text
    # What the caller hears and gets is the booking made: its number said, its details
    # queued by SMS once.
    with transaction() as s:
        booking = s.scalar(select(Booking))
        sms = s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.to_addr == phone.phone, OutboxMessage.booking_id == booking.id))
    assert booking.status == "awaiting_payment" and sms == 1
    assert heard.text.count(spoken.spell_digits(booking.reference)) == 2, heard.text


def test_no_turn_reads_the_rate_card_twice(phone: Caller) -> None:  # noqa: F811
    """Session 31: the turns that quote and then look for a free rider near the pickup read
    the active rate card twice (quote_trip, then rider_free_near); once per transaction."""
    hindi_caller(phone)
    phone.call()
    reads = []
    for keys in ("1", "845438#", "2", "1", "845450#", "7", "1", "9876543210#", "1", "1",
                 "1", "2"):
        with statements() as sql:
            phone.press(keys)
        reads.append(sum("FROM rate_cards" in s for s in sql))
    assert max(reads) == 1, reads  # read at all: the counting sees the card's query
    assert step_of(phone.phone) == "confirm"


def test_an_answer_recorded_already_rolls_the_turns_saved_state_back(
        phone: Caller) -> None:  # noqa: F811
    """The turn's state is saved by the statement that records its answer; when that
    answer was recorded already (a twin committed it while the number's call state did
    not say so), the INSERT writes nothing and the turn, its saved state included, rolls
    back: the caller hears the stored answer and the conversation is as it was."""
    from urllib.parse import parse_qs, urlparse

    from core.adapters.models import Conversation, InboundEvent

    hindi_caller(phone)
    phone.call()
    assert phone.action is not None
    turn = int(parse_qs(urlparse(phone.action).query)["turn"][0])
    stored = ('<?xml version="1.0" encoding="UTF-8"?><Response><Say>recorded</Say>'
              "<Hangup/></Response>")

    def row() -> tuple:
        with transaction() as s:
            conv = s.scalar(select(Conversation).where(Conversation.contact == phone.phone,
                                                       Conversation.channel == "voice"))
            return conv.step, conv.state, conv.misses, conv.last_inbound_at, conv.updated_at

    with transaction() as s:
        s.add(InboundEvent(provider="twilio-voice", external_id=f"{phone.sid}:{turn}",
                           channel="voice", response_body=stored))
    before = row()
    with statements() as sql:
        heard = phone.press("1")  # book: would move the dialog on
    assert any(s.startswith("WITH state_saved AS (UPDATE conversations ") for s in sql)
    assert "recorded" in heard.text and heard.gather is None, heard.text
    assert row() == before

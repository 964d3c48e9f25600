"""Erasing a recipient: what others still hold of them while they are not done with it.

A booking half made (a chat's draft kept in the dialog state, a call's draft between
calls) names its recipient; a handoff still waiting for ops may say their number or name.
The erasure takes the recipient from the draft, which asks for one again, and masks the
waiting handoff's texts, which stays open. And the erasure's look-ups of messages by
address are served by an index, not a read of every message.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine

from core import clock, i18n
from core.adapters import db
from core.adapters.db import transaction
from core.adapters.dialog_models import Handoff, HandoffMessage
from core.adapters.models import Booking, Conversation, OutboxMessage, Person
from core.adapters.redis_conn import redis_client
from core.services import retention
from core.services.seed import OPS_PERSON, seed_demo
from tests.conftest import read_first
from tests.test_api import API, sign_in
from tests.test_retention import erase, person_id, wa

pytestmark = pytest.mark.db

SENDER = "+919812300071"
RECIPIENT = "+919812300072"  # keyed in as 9812300072
CALLER = "+919812300073"
OTHER = "+919812300074"
NEW_RECIPIENT = "+919812300079"
NAME = "Kamla Bai"

# A WhatsApp booking in English up to the recipient, and after it up to the confirmation.
TO_THE_RECIPIENT = ("hi", "2", "1", "845438", "2", "1", "845450", "4", "1")
TO_THE_CONFIRMATION = ("1", "1", "1", "no", "1", "2")


@pytest.fixture(autouse=True)
def _clock():
    yield
    clock.freeze(None)


def _a_minute_later() -> None:
    """The inbound rate limit's window (a minute of Redis's own time) starts again: a
    sender may write on without a test waiting for it."""
    r = redis_client()
    for key in r.scan_iter("ratelimit:*"):
        r.delete(key)


def _naming_them() -> list[str]:
    """Every stored text still naming the recipient: outbox messages, dialog states
    (drafts), handoff messages."""
    with transaction() as s:
        texts = [f"{m.to_addr} {m.body}" for m in s.scalars(select(OutboxMessage))]
        texts += [repr(c.state) for c in s.scalars(select(Conversation))]
        texts += [h.body for h in s.scalars(select(HandoffMessage))]
    return [t for t in texts if RECIPIENT[3:] in t or NAME in t]


def _erase_recipient(client, record: Any = None) -> dict[str, Any]:
    """The recipient (who signed in once: a person of ours) is erased; ``record`` listens
    to the erasure's statements."""
    ops = sign_in(client, OPS_PERSON[1])
    sign_in(client, RECIPIENT)
    pid = person_id(RECIPIENT)
    if record is not None:
        event.listen(Engine, "before_cursor_execute", record)
    try:
        r = erase(client, ops, pid)
    finally:
        if record is not None:
            event.remove(Engine, "before_cursor_execute", record)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _draft_to_the_confirmation(phone: str, client) -> str:
    for text in (*TO_THE_RECIPIENT, NAME, RECIPIENT[3:], *TO_THE_CONFIRMATION):
        reply = wa(client, phone, text)
    assert "Please check your booking:" in reply and NAME in reply
    return reply


def _book_then_cancel(client) -> None:
    """The sender books for Sita Devi on WhatsApp, then cancels unpaid."""
    _draft_to_the_confirmation(SENDER, client)
    read_first()  # the clock frozen from here on (_clock lets it run again)
    assert wa(client, SENDER, "1")  # book it
    for text in ("0", "3", "1"):
        wa(client, SENDER, text)
    assert "is cancelled." in wa(client, SENDER, "yes")
    _a_minute_later()


def _new_recipient_then_book(client, reply: str) -> None:
    """Asked for the recipient: another one is given, then the confirmation, then it is
    booked for them."""
    assert i18n.t("bot.recipient.name", "en") in reply, reply
    reply = wa(client, SENDER, "Gita Kumari")
    assert "What is the mobile number of Gita Kumari?" in reply, reply
    reply = wa(client, SENDER, NEW_RECIPIENT[3:])
    assert "Please check your booking:" in reply and "Gita Kumari" in reply, reply
    read_first()
    wa(client, SENDER, "1")
    with transaction() as s:
        (booking,) = s.scalars(select(Booking).where(Booking.status != "cancelled"))
        assert (booking.recipient_name, booking.recipient_phone) == ("Gita Kumari",
                                                                     NEW_RECIPIENT)


# --- chat drafts -----------------------------------------------------------------------------


def test_a_draft_kept_for_later_loses_the_erased_recipient_and_asks_for_one_again(client):
    """The sender got to the confirmation, then went to the menu: the draft is kept (the
    bot offers it again). Erasing its recipient leaves nothing naming them, and the draft
    resumed asks for the recipient, then goes back to the confirmation."""
    seed_demo()
    _draft_to_the_confirmation(SENDER, client)
    wa(client, SENDER, "0")  # the menu: the draft waits
    out = _erase_recipient(client)

    left = _naming_them()
    assert not left, "the erased recipient is still named in:\n" + "\n".join(left)
    assert out["counts"].get("drafts") == 1
    assert "You had started a booking" in wa(client, SENDER, "1")
    _new_recipient_then_book(client, wa(client, SENDER, "1"))  # continue that booking


def test_a_sender_at_the_confirmation_is_not_booked_for_an_erased_recipient(client):
    """The erasure comes while the sender looks at the confirmation: their "yes" makes no
    booking for the erased recipient (it has none now), it asks for one."""
    seed_demo()
    _draft_to_the_confirmation(SENDER, client)
    _erase_recipient(client)

    read_first()
    reply = wa(client, SENDER, "1")  # yes, book it
    with transaction() as s:
        assert s.scalars(select(Booking)).all() == []
    assert i18n.t("bot.recipient.name", "en") in reply, reply
    _new_recipient_then_book(client, reply)


def test_a_sender_retyping_the_name_they_gave_before_is_asked_for_the_recipient_again(client):
    """A sender of an earlier booking to Kamla Bai starts another and types her name: the
    draft has no number yet, only the name the sender gave her before. Erasing her takes
    the name from the draft, and the sender's next words are taken as the recipient's
    name again, not as the number of Kamla Bai."""
    seed_demo()
    _book_then_cancel(client)
    for text in ("1", *TO_THE_RECIPIENT[3:]):  # book (a fresh one), to the recipient
        wa(client, SENDER, text)
    assert f"What is the mobile number of {NAME}?" in wa(client, SENDER, NAME)
    _erase_recipient(client)

    left = _naming_them()
    assert not left, "the erased recipient is still named in:\n" + "\n".join(left)
    assert "What is the mobile number of Ram Kumar?" in wa(client, SENDER, "Ram Kumar")


# --- a call's draft --------------------------------------------------------------------------


def _call_to_the_recipient(client, confirm: bool):
    from tests.test_ivr import Caller

    phone = Caller(client, CALLER)
    phone.call()
    for keys in ("1", "1", "845438#", "2", "1", "845450#", "7", "1"):
        phone.press(keys)
    heard = phone.press(f"{RECIPIENT[3:]}#")
    assert "9 8 1 2 3, 0 0 0 7 2" in heard.text
    if confirm:
        phone.press("1")  # right: on to the parcel's size
    phone.hang_up()  # the draft is kept for the next call
    return phone


@pytest.mark.parametrize("confirm", [True, False], ids=["number_confirmed", "number_keyed"])
def test_a_calls_draft_loses_the_erased_number_and_asks_for_it_again(client, monkeypatch,
                                                                     tmp_path, confirm):
    """A caller keyed in the recipient's number (and said it is right, or hung up
    before), then hung up: the draft waits for their next call. Erasing the recipient
    takes the number from it; the next call's draft asks for the number again."""
    from ivr_flows import audio
    from tests.test_ivr import START

    monkeypatch.setattr(audio, "cache_dir", lambda: tmp_path)  # every prompt is <Say>
    clock.freeze(START)
    seed_demo()
    phone = _call_to_the_recipient(client, confirm)
    _erase_recipient(client)

    with transaction() as s:
        (state,) = s.scalars(select(Conversation.state).where(Conversation.contact == CALLER))
        lang = s.scalar(select(Person.preferred_language).where(Person.phone == CALLER))
    assert RECIPIENT[3:] not in repr(state), state
    phone.call()  # the unfinished booking is offered
    heard = phone.press("1")  # finish it
    assert i18n.t("ivr.phone.ask", lang) in heard.text, heard.text
    heard = phone.press(f"{NEW_RECIPIENT[3:]}#")
    assert "9 8 1 2 3, 0 0 0 7 9" in heard.text


# --- handoffs still waiting ------------------------------------------------------------------


def _waiting_handoff(client, phone: str) -> int:
    wa(client, phone, "4")  # talk to a person
    with transaction() as s:
        return s.scalar(select(Handoff.id).where(Handoff.status == "waiting"))


def _handoff_texts(handoff_id: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(HandoffMessage.body).where(
            HandoffMessage.handoff_id == handoff_id).order_by(HandoffMessage.id)))


@pytest.mark.parametrize("who", ["anyone_by_number", "sender_by_name"])
def test_a_waiting_handoff_loses_the_texts_naming_them_and_stays_open(client, who):
    """Someone waiting for ops wrote the erased person's number (anyone may), or their
    name (a sender of a booking to them): those texts are masked as in a closed handoff,
    the others stay, and the handoff stays open for ops to answer and close."""
    seed_demo()
    if who == "sender_by_name":
        _book_then_cancel(client)
        phone, said = SENDER, f"{NAME} never got the parcel I sent"
    else:
        for text in ("hi", "2"):
            wa(client, OTHER, text)
        phone, said = OTHER, "please send a parcel to my sister on 98123 00072"
    handoff_id = _waiting_handoff(client, phone)
    wa(client, phone, said)
    wa(client, phone, "I am at home until 5")
    _erase_recipient(client)

    assert _handoff_texts(handoff_id) == [retention.REDACTED, "I am at home until 5"]
    with transaction() as s:
        handoff = s.get(Handoff, handoff_id)
        assert handoff.status == "waiting"
        assert s.get(Conversation, handoff.conversation_id).handoff is True
    ops = sign_in(client, OPS_PERSON[1])
    assert client.post(f"{API}/ops/handoffs/{handoff_id}/reply", headers=ops,
                       json={"body": "We are on it"}).status_code == 200
    assert client.post(f"{API}/ops/handoffs/{handoff_id}/close",
                       headers=ops).status_code == 200


# --- the erasure's look-ups of messages ------------------------------------------------------


def _plan_nodes(node: dict[str, Any]):
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def test_the_erasure_finds_messages_by_index_not_by_reading_them_all(client):
    """Every statement the erasure runs on outbox_messages reads it through an index (an
    index condition on every scan of it), and its look-ups by address go by
    ix_outbox_messages_to_addr (migration 0022). Planned as the erasure sent them, with
    sequential scans priced out (enable_seqscan off), so a plan that still reads the
    whole table has no index to use."""
    seed_demo()
    _book_then_cancel(client)
    wa(client, OTHER, "hi")
    sent: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        if "outbox_messages" in statement and not executemany:
            sent.append((statement, parameters))

    _erase_recipient(client, record)

    looked_up = [(s, p) for s, p in sent if s.lstrip().upper().startswith(("UPDATE", "SELECT",
                                                                          "DELETE"))]
    by_address = [s for s, _ in looked_up if "outbox_messages.to_addr IN" in s]
    assert by_address, "the erasure looked no message up by address"
    full_reads, indexes = [], set()
    with db.engine().connect() as conn:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        for statement, parameters in looked_up:
            (plan,) = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement,
                                           parameters).scalar()
            nodes = list(_plan_nodes(plan["Plan"]))
            for node in nodes:
                if node.get("Relation Name") == "outbox_messages" \
                        and node["Node Type"] != "ModifyTable" \
                        and "Index Cond" not in node and "Recheck Cond" not in node:
                    full_reads.append(f"{node['Node Type']}: {statement}")
            if statement in by_address:
                indexes |= {node.get("Index Name") for node in nodes}
        conn.rollback()
    assert not full_reads, "these read every message:\n" + "\n\n".join(full_reads)
    # Those also bounded by status (messages not sent yet) may go by the status index.
    assert "ix_outbox_messages_to_addr" in indexes, indexes

"""Session 39, after review: a WhatsApp message Twilio took before its recipient's number
moved to a new SIM (queued, with a sid) and that WhatsApp refused after the move (63016,
the window closed) was copied by SMS to the OLD number (maybe a stranger's now): the
copy, written after the move, was not seen as written before it. Its copy now follows him
to his new number (_follow_moved). And asking whose number an address was before a move
(people.former_phones ? number, on every retry of a message) reads the index of migration
0056, not every person.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, select, text

from core.adapters import db
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage
from core.services import outbox, partner_profile
from tests.conftest import release_scheduled, run_jobs
from tests.test_dispatch import frozen  # noqa: F401 (fixture)
from tests.test_outbox_s35 import copies_of
from tests.test_outbox_s39 import NEW, _whatsapp_partner, at_twilio

pytestmark = pytest.mark.db
BODY = "Your payout of Rs 812 was sent to acc ending 4455"


def _taken_before_the_move(old: str, sid: str) -> int:
    """A WhatsApp message to ``old`` Twilio took (queued, its sid): its report is to come."""
    with transaction() as s:
        row = OutboxMessage(channel="whatsapp", to_addr=f"whatsapp:{old}",
                            from_addr="whatsapp:+14155238886", body=BODY, status="queued",
                            attempts=1, provider_sid=sid, kind="plain")
        s.add(row)
        s.flush()
        return row.id


def test_a_whatsapp_message_refused_after_a_move_goes_by_sms_to_the_new_number(
        client, live, frozen):  # noqa: F811
    pid, old, _ = _whatsapp_partner()
    row_id = _taken_before_the_move(old, "SMmv1")
    with transaction() as s:
        partner_profile.set_phone(s, pid, NEW, actor="ops:test")
    assert outbox.record_status(outbox_id=row_id, message_sid="SMmv1", status="failed",
                                error_code=outbox.WINDOW_CLOSED_CODE)
    run_jobs()
    for _ in range(3):
        release_scheduled(timedelta(minutes=30))
        run_jobs()
    assert BODY not in at_twilio(old)
    assert at_twilio(NEW)[-1] == BODY  # his new number has no chat with us: by SMS
    assert [(channel, to) for channel, to, _ in copies_of(row_id)] == [("sms", NEW)]
    with transaction() as s:
        copy = s.scalars(select(OutboxMessage).where(
            OutboxMessage.dedupe_key == f"sms-for-{row_id}")).one()
        assert (copy.to_addr, copy.status) == (NEW, "delivered")
    # The same report again sends nothing more.
    assert outbox.record_status(outbox_id=row_id, message_sid="SMmv1", status="failed",
                                error_code=outbox.WINDOW_CLOSED_CODE) is not None
    run_jobs()
    assert at_twilio(NEW).count(BODY) == 1 and BODY not in at_twilio(old)


def test_a_whatsapp_message_refused_before_any_move_goes_by_sms_to_its_number(
        client, live, frozen):  # noqa: F811
    """Nobody moved: the copy goes by SMS to the number it was written to, as before."""
    _, old, _ = _whatsapp_partner()
    row_id = _taken_before_the_move(old, "SMmv2")
    assert outbox.record_status(outbox_id=row_id, message_sid="SMmv2", status="failed",
                                error_code=outbox.WINDOW_CLOSED_CODE)
    run_jobs()
    assert [(channel, to) for channel, to, _ in copies_of(row_id)] == [("sms", old)]
    assert at_twilio(old)[-1] == BODY


def test_whose_number_an_address_was_is_found_by_the_index(client, live, frozen):  # noqa: F811
    """Many people who moved: _moved_from reads ix_people_former_phones (0056), not every
    person, and finds the one who left the number."""
    pid, old, person_id = _whatsapp_partner()
    row_id = _taken_before_the_move(old, "SMmv3")
    with transaction() as s:
        partner_profile.set_phone(s, pid, NEW, actor="ops:test")
        s.execute(text(
            "INSERT INTO people (phone, role, opted_out, former_phones, created_at)"
            " SELECT '+9170' || lpad(g::text, 8, '0'), 'customer', false,"
            " jsonb_build_object('+9171' || lpad(g::text, 8, '0'), now()), now()"
            " FROM generate_series(1, 20000) g"))
    with transaction() as s:
        s.execute(text("ANALYZE people"))
    plans: list[str] = []
    engine = db.engine()

    def explain(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT") and "former_phones ?" in statement:
            cursor.execute("EXPLAIN " + statement, parameters)
            plans.append("\n".join(row[0] for row in cursor.fetchall()))

    event.listen(engine, "before_cursor_execute", explain)
    try:
        with transaction() as s:
            row = s.get(OutboxMessage, row_id)
            assert row is not None
            moved = outbox._moved_from(s, row)
            assert moved is not None and moved.id == person_id
    finally:
        event.remove(engine, "before_cursor_execute", explain)
    assert plans and all("ix_people_former_phones" in p for p in plans), plans

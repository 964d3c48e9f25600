"""Session 37, privacy leftovers of session 36's logs.mask_note.

1. Ops' reasons the audit log keeps for good: a new pickup/drop code's, a leg settled by
   hand's (leg.settle), a recipient's erasure's. A bank account or Aadhaar number typed in
   one was kept in full (phones alone were masked): now cut to its last 4, as ops' notes
   are. Our own 8-digit booking references stay as typed.
2. Messages whose texts the retention run redacted before it masked their last errors
   (session 36) kept Twilio's refusal text with the full number it refused; the run never
   read a redacted text again. It masks those errors now, once: a masked error is not read
   again, and the night's run over a big outbox reads next to nothing.

Real PostgreSQL and Redis (and the Razorpay emulator for the leg's settle).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage
from core.domain.booking import Actor, BookingStatus
from core.services import dispatch, payments, retention
from core.services.booking import move_booking
from tests.test_dispatch import RECIPIENT
from tests.test_dispatch import paid_booking as booking_to_sita
from tests.test_money_s32 import give_back
from tests.test_money_s34 import assigned_leg
from tests.test_payments_support import ledger_checked, run
from tests.test_retention_scale import (
    FEW,
    MANY,
    many_messages,
    reads,  # noqa: F401  (fixture)
    sql,
)
from tests.test_retention_scale import NOW as SCALE_NOW

pytestmark = pytest.mark.db

OPS = Actor("ops", "7")
ACCOUNT = "123456789012"  # a bank account: 12 digits, no mobile's
AADHAAR = "2345 6789 0123"  # as people type it, in fours
PHONE = "+919812345678"


def audited(action: str, target: str | None = None) -> dict:
    with transaction() as s:
        where = [AuditEntry.action == action]
        if target is not None:
            where.append(AuditEntry.target == target)
        (entry,) = s.scalars(select(AuditEntry).where(*where))
        return entry.details


def assert_kept_masked(reason: str) -> None:
    assert "********9012" in reason and ACCOUNT not in reason, reason
    assert "********0123" in reason and "6789" not in reason, reason
    assert PHONE not in reason and "+91******5678" in reason, reason


TYPED = f"she gave a/c {ACCOUNT}, Aadhaar {AADHAAR}, call {PHONE}"


# --- 1. ops' reasons in the audit log ----------------------------------------------------


@pytest.fixture
def ledger_balanced(clean_db):
    yield from ledger_checked()


def test_a_new_codes_reason_keeps_an_account_number_as_its_last_4(live, ledger_balanced):
    bid, leg_id = assigned_leg()
    with transaction() as s:
        ref = s.get(Booking, bid).reference
        dispatch.new_leg_code(s, leg_id, "pickup", OPS,
                              reason=f"booking {ref}: {TYPED}")
    details = audited(dispatch.OPS_NEW_CODE, f"leg:{leg_id}")
    assert_kept_masked(details["reason"])
    assert details["reason"].startswith(f"booking {ref}: ")  # our 8-digit reference stays
    assert details["booking"] == ref


def test_a_leg_settled_by_hand_keeps_an_account_number_as_its_last_4(live, ledger_balanced):
    bid, leg_id = assigned_leg()
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()
    give_back(bid, leg_id)
    done = payments.settle_leg_by_hand(leg_id, OPS, f"  {TYPED}  ")
    assert (done.outcome, done.changed) == ("reversed", True)
    details = audited("leg.settle", f"leg:{leg_id}")
    assert_kept_masked(details["reason"])
    assert details["reason"].startswith("she gave a/c ") and details["outcome"] == "reversed"


def test_a_recipients_erasure_keeps_an_account_number_as_its_last_4(clean_db):
    booking_id = booking_to_sita()
    with transaction() as s:
        b = s.get(Booking, booking_id)
        move_booking(s, b, BookingStatus.CANCELLED, Actor.system(), "customer cancelled")
    with transaction() as s:
        done = retention.erase_recipient(s, RECIPIENT, actor="ops:7",
                                         reason=f"Sita called: {TYPED}")
    assert done.changed and done.booking_ids == [booking_id]
    details = audited(retention.RECIPIENT_ERASED)
    assert_kept_masked(details["reason"])
    assert "Sita" not in details["reason"]  # the names it took, as before


# --- 2. last errors of messages redacted before they were masked ------------------------


REFUSED = (f"twilio 400 21211: The 'To' number {PHONE} is not a valid phone number. "
           "Unable to create record")
MASKED = "twilio 400 21211: The 'To' number +91******5678 is not a valid phone number. " \
         "Unable to create record"


def old_message(body: str, error: str | None, *, status: str = "failed",
                days: int = 400) -> int:
    """A message as rows written before session 36 are: its error as Twilio said it."""
    with transaction() as s:
        row = OutboxMessage(channel="sms", to_addr=PHONE, from_addr="+15005550006",
                            body=body, status=status, attempts=1, error_code="21211",
                            last_error=error, created_at=clock.now() - timedelta(days=days))
        s.add(row)
        s.flush()
        return row.id


def last_errors(*ids: int) -> list[str | None]:
    with transaction() as s:
        return [s.get(OutboxMessage, i).last_error for i in ids]


def test_a_message_redacted_before_its_error_was_masked_has_it_masked_now(clean_db):
    redacted = old_message(retention.REDACTED, REFUSED)
    undelivered = old_message(retention.REDACTED, f"sms to {PHONE[3:]} undelivered",
                              status="undelivered")
    masked = old_message(retention.REDACTED, MASKED)  # redacted since session 36
    plain = old_message(retention.REDACTED, "connection: ConnectTimeout")
    due = old_message("Your booking 4821 7730 is confirmed", REFUSED)  # its text goes now
    done = retention.run(clock.now())
    assert done["outbox_messages"] == 1 and done["redacted_errors"] == 2, done
    assert last_errors(redacted, masked, due) == [MASKED] * 3
    assert last_errors(undelivered, plain) == ["sms to ******5678 undelivered",
                                               "connection: ConnectTimeout"]
    # Again: nothing left to mask, nothing changed.
    again = retention.run(clock.now() + timedelta(days=1))
    assert again["redacted_errors"] == 0 and again["outbox_messages"] == 0, again
    assert last_errors(redacted, undelivered) == [MASKED, "sms to ******5678 undelivered"]


def test_the_masking_of_old_errors_reads_the_failed_messages_not_the_whole_outbox(
        clean_db, reads, monkeypatch):  # noqa: F811
    many_messages(retention.REDACTED, oldest_days=700, newest_days=100)
    # Many failures long redacted and masked since (or never naming a number).
    sql("INSERT INTO outbox_messages (channel, to_addr, from_addr, body, status, attempts,"
        " created_at, last_error) SELECT 'sms', '+919812300051', '+14155238886', :redacted,"
        " 'failed', 1, :now - interval '200 days' - g * interval '1 hour', :error"
        " FROM generate_series(1, :n) g", n=MANY // 4, error=MASKED)
    left = [old_message(retention.REDACTED, REFUSED, days=300) for _ in range(3)]
    sql("ANALYZE outbox_messages")
    monkeypatch.setattr(retention, "BATCH", 2)  # the walk goes on from batch to batch
    done = retention.run(SCALE_NOW)
    assert done["redacted_errors"] == 3 and not done["unfinished"], done
    assert last_errors(*left) == [MASKED] * 3
    # The failed messages alone (by their status), not the years of texts redacted.
    assert reads["outbox_messages"] < MANY // 4 + FEW, reads


@pytest.mark.parametrize("error", [
    f"The 'To' number {PHONE} is not a valid phone number",
    "To=%2B919812345678&Body=...: 400",  # a URL-encoded one, as requests quotes a URL
    "sms to 98123 45678 undelivered",
    'whatsapp refused: {"wa_id": "919812345678"}',
    "DETAIL: Key (to_addr)=(+919812345678) already exists.",
    "403 for url: https://s3.amazonaws.com/m/1.jpg?X-Amz-Signature=abc&X-Amz-Credential=k",
])
def test_the_errors_looked_for_are_those_scrub_masks_and_not_once_masked(clean_db, error):
    """The pass reads an error by what it still shows (retention._UNMASKED_ERROR): each
    that logs.scrub would change, none that it left."""
    from sqlalchemy import literal

    from core.logs import scrub

    def looked_for(text: str) -> bool:
        with transaction() as s:
            return bool(s.scalar(select(literal(text).regexp_match(
                retention._UNMASKED_ERROR_SQL, flags="i"))))

    assert scrub(error) != error and looked_for(error)
    assert not looked_for(scrub(error)), scrub(error)
    assert not looked_for("twilio 400 21211 at 2026-12-06 13:22:07: queue overflow")

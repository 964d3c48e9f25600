"""Session 38 (hivr4): "1 = cancel" pressed, then hung up at once, Twilio's status callback
handled before the Gather's request with his key, through the signed voice webhooks.

The key found the call closed and did nothing: the booking stayed, its refund never
opened, and nobody told the caller, who pressed "cancel". As at "book it?" (test_ivr_s38),
the key of the call's last question counts as it does when the two requests come the
other way round: cancelled at the refund and fee he heard, its refund opened. A Twilio
retry does nothing twice; a new call makes the old call's keys do nothing. The refund or
fee changed since he heard them (a rider took the job): nothing is cancelled (he did not
hear the new amounts), and since no "listen again" reaches a caller who hung up, an SMS
tells him it was not cancelled.

Real PostgreSQL, Redis and RQ; the clock frozen.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, Conversation, OutboxMessage
from core.adapters.payment_models import Refund
from core.services import ivr, payments
from tests.test_ivr import phone, prompts, t  # noqa: F401
from tests.test_ivr_cancel import DROP, said, status_of
from tests.test_payments_support import advance, new_partner, paid_booking

pytestmark = pytest.mark.db


def _to_cancel_confirm(caller, bid: int) -> tuple[str, int]:  # noqa: ANN001
    """Menu, 5, the (only) booking: "cancel it? <refund> goes back"; its reference, total."""
    with transaction() as s:
        b = s.get(Booking, bid)
        ref, total = b.reference, b.total_paise
    caller.call()
    caller.press("5")
    heard = caller.press("1")
    assert t("ivr.cancel.refund", "en", place=DROP, refund=said(total)) in heard.text, heard.text
    return ref, total


def _refunds(bid: int) -> list[Refund]:
    with transaction() as s:
        found = list(s.scalars(select(Refund).where(Refund.booking_id == bid)))
        s.expunge_all()
        return found


def _sms(key_prefix: str) -> list[OutboxMessage]:
    with transaction() as s:
        found = list(s.scalars(select(OutboxMessage).where(
            OutboxMessage.dedupe_key.like(f"{key_prefix}%"))))
        s.expunge_all()
        return found


def _data(number: str) -> dict:
    with transaction() as s:
        conv = s.scalar(select(Conversation).where(Conversation.channel == "voice",
                                                   Conversation.contact == number))
        return dict(conv.state or {})


def _hang_up_first(caller) -> None:  # noqa: ANN001
    """The status callback is handled before the request with his key."""
    action = caller.action
    caller.hang_up()
    assert "call" not in _data(caller.phone)
    caller.action = action


def test_cancel_pressed_then_hung_up_with_the_status_callback_first_cancels(
        live, phone) -> None:  # noqa: ANN001, F811
    bid = paid_booking(phone.phone)
    ref, total = _to_cancel_confirm(phone, bid)
    _hang_up_first(phone)
    heard = phone.press("1")  # "cancel it"
    assert heard.hangup and heard.gather is None and heard.dial is None, heard.text
    assert status_of(ref) == "cancelled"
    (refund,) = _refunds(bid)  # the refund he heard, as on the line
    assert refund.amount_paise == total
    data = _data(phone.phone)
    assert "call" not in data and ivr.LATE_KEYS not in data, data
    assert "cancel_ref" not in data and "cancel_shown" not in data, data
    # Twilio retries the same request: answered from record, nothing done twice.
    again = phone.repeat()
    assert again.xml == heard.xml
    assert len(_refunds(bid)) == 1 and status_of(ref) == "cancelled"
    assert _sms("ivr-not-cancelled-") == []


def test_keep_pressed_late_keeps_it(live, phone) -> None:  # noqa: ANN001, F811
    bid = paid_booking(phone.phone)
    ref, _ = _to_cancel_confirm(phone, bid)
    _hang_up_first(phone)
    assert phone.press("2").hangup
    assert status_of(ref) == "paid" and _refunds(bid) == []


def test_a_new_call_makes_the_old_calls_cancel_key_do_nothing(live, phone) -> None:  # noqa: ANN001, F811
    bid = paid_booking(phone.phone)
    ref, _ = _to_cancel_confirm(phone, bid)
    old_sid, action = phone.sid, phone.action
    phone.hang_up()
    phone.call()  # calls back at once
    new_sid = phone.sid
    phone.sid, phone.action = old_sid, action
    assert phone.press("1").hangup
    assert status_of(ref) == "paid" and _refunds(bid) == []
    assert (_data(phone.phone).get("call") or {}).get("sid") == new_sid


def test_a_late_cancel_key_long_after_the_close_does_nothing(live, phone) -> None:  # noqa: ANN001, F811
    bid = paid_booking(phone.phone)
    ref, _ = _to_cancel_confirm(phone, bid)
    _hang_up_first(phone)
    clock.freeze(clock.now() + ivr.LATE_KEYS_TAKEN + timedelta(seconds=1))
    assert phone.press("1").hangup
    assert status_of(ref) == "paid" and _refunds(bid) == []


def test_a_late_cancel_key_after_the_amount_changed_cancels_nothing_and_says_so_by_sms(
        live, phone) -> None:  # noqa: ANN001, F811
    """He heard "all of it goes back"; a rider took the job before his late key (a fee now,
    less back). Not cancelled on terms he did not hear; told by SMS it was not cancelled,
    and nothing kept of a question he never heard."""
    bid = paid_booking(phone.phone)
    ref, _ = _to_cancel_confirm(phone, bid)
    advance(bid, new_partner(), to="assigned")
    with transaction() as s:
        assert payments.cancellation_preview(s, s.get(Booking, bid)).fee_paise > 0
    _hang_up_first(phone)
    heard = phone.press("1")
    assert heard.hangup and heard.gather is None
    assert status_of(ref) == "assigned" and _refunds(bid) == []
    (sms,) = _sms(f"ivr-not-cancelled-{bid}-")
    assert sms.to_addr.endswith(phone.phone[-10:])
    assert sms.body == i18n.t("ivr.sms.not_cancelled", "en", ref=ref), sms.body
    data = _data(phone.phone)
    assert "cancel_ref" not in data and "cancel_shown" not in data, data
    assert "call" not in data and ivr.LATE_KEYS not in data, data
    # Twilio's retry: no second SMS, still not cancelled.
    phone.repeat()
    assert len(_sms(f"ivr-not-cancelled-{bid}-")) == 1 and status_of(ref) == "assigned"


def test_a_changed_amount_heard_on_the_line_sends_no_sms(live, phone) -> None:  # noqa: ANN001, F811
    """A guard: on the line he hears "the amount changed, listen again": no SMS."""
    bid = paid_booking(phone.phone)
    ref, _ = _to_cancel_confirm(phone, bid)
    advance(bid, new_partner(), to="assigned")
    heard = phone.press("1")
    assert t("ivr.cancel.changed", "en") in heard.text
    assert status_of(ref) == "assigned" and _sms("ivr-not-cancelled-") == []
    assert "call_not_cancelled" not in _data(phone.phone)

"""The customer's cancel question after support refunded her from the Razorpay dashboard.

Support's refund (payments.record_outside_refund) leaves the booking's cancellation
preview with nothing to give back while the customer did pay. The chat then asked
"... so Rs 10 goes to the rider and you get back Rs 0" with a rider on the way, and
"Nothing was paid, so nothing is taken" without one; the phone menu said the same. Now
a rider's fee that leaves nothing is said without a sum of nothing (cancel_kind
"fee_only"), and a paid booking with nothing left to give back is said to have had its
money given back by our team ("paid_back"), with a rider coming too (his fee is then
the platform's to pay: naming it told her Rs 10 "goes to the rider" as if from her money).
The "yes" still cancels at the amounts shown.

Through the signed WhatsApp and voice webhooks, RQ, the real razorpay client, the sandbox
emulator and its webhooks."""

from __future__ import annotations

import pytest

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking
from core.domain.booking import BookingStatus
from core.services import payments
from tests.conftest import read_first
from tests.test_cancel_fee_platform import assigned, full_fee, paid_in_full
from tests.test_dialog_gaps import Chat
from tests.test_ivr import phone, prompts, t  # noqa: F401
from tests.test_ivr_cancel import DROP, said, status_of
from tests.test_payments_support import (
    booking,
    failed_jobs,
    ledger_checked,
    paid_booking,
    run,
)
from tests.test_stuck_relay_platform import dashboard_refund, ours

pytestmark = pytest.mark.db

CUSTOMER = "+919812340001"  # paid_booking's customer (English)
NOTHING = i18n.format_inr(0)


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def refunded_outside(booking_id: int, left: int) -> tuple[str, int]:
    """Support gives back all of the booking's payment but ``left`` paise from the
    dashboard; (reference, total)."""
    b = booking(booking_id)
    dashboard_refund(booking_id, None if left == 0 else b.total_paise - left)
    with transaction() as s:
        q = payments.cancellation_preview(s, s.get(Booking, booking_id))
    assert q.allowed and q.refund_paise == 0, q  # what the question has to say
    return b.reference, b.total_paise


def cancel_question(client, ref: str) -> tuple[Chat, str]:  # noqa: ANN001
    chat = Chat(client, CUSTOMER)
    chat.send("hi")
    chat.send("3")  # cancel
    asked = chat.send("1")  # the only open booking
    assert ref in asked, asked
    return chat, asked


# --- WhatsApp ---------------------------------------------------------------------------


@pytest.mark.parametrize("left", [0, 400], ids=["all", "all_but_rs4"])
def test_chat_with_a_rider_coming_says_our_team_gave_it_back(client, live, left,
                                                             monkeypatch) -> None:
    """A rider is on the way; support gave back all of it (or all but Rs 4, less than
    his fee). The question says our team gave her money back, names no fee (the
    platform pays what her payment lacks of it) and no sum of nothing; "yes" cancels:
    the rider is paid his fee in full, no refund of ours is asked."""
    bid, leg_id, _ = assigned()  # paid_booking(CUSTOMER), his transfer held on it
    ref, total = refunded_outside(bid, left)
    fee = full_fee(total)

    chat, asked = cancel_question(client, ref)
    assert NOTHING not in asked, asked
    assert i18n.format_inr(fee) not in asked, asked
    assert i18n.t("bot.cancel.fee_only", "en", ref=ref, fee_paise=fee) not in asked
    assert i18n.t("bot.cancel.paid_back", "en", ref=ref) in asked, asked

    read_first(monkeypatch)
    done = chat.send("1")
    assert booking(bid).status == BookingStatus.CANCELLED.value, done
    assert i18n.t("bot.cancel.done", "en", ref=ref) in done and NOTHING not in done
    run()
    assert not failed_jobs()
    paid_in_full(leg_id, fee)
    assert ours(bid) == []


def test_chat_without_a_rider_does_not_say_nothing_was_paid(client, live,
                                                            monkeypatch) -> None:
    """No rider yet; support gave back everything. She paid: the question says our team
    gave her money back, not that nothing was paid; "yes" cancels, and nothing more is
    asked of the gateway."""
    bid = paid_booking(CUSTOMER)
    ref, _ = refunded_outside(bid, 0)

    chat, asked = cancel_question(client, ref)
    assert i18n.t("bot.cancel.free", "en", ref=ref) not in asked
    assert i18n.t("bot.cancel.paid_back", "en", ref=ref) in asked, asked
    assert NOTHING not in asked

    read_first(monkeypatch)
    done = chat.send("1")
    assert booking(bid).status == BookingStatus.CANCELLED.value, done
    assert i18n.t("bot.cancel.done", "en", ref=ref) in done and NOTHING not in done
    run()
    assert not failed_jobs()
    assert ours(bid) == []


# --- the phone menu ---------------------------------------------------------------------


def test_a_caller_with_a_rider_coming_hears_our_team_gave_it_back(live, phone) -> None:  # noqa: F811
    bid, leg_id, _ = assigned(paid_booking(phone.phone))  # an English-speaking caller
    ref, total = refunded_outside(bid, 0)
    fee = full_fee(total)

    phone.call()
    phone.press("5")
    heard = phone.press("1")
    assert said(0) not in heard.text, heard.text
    assert said(fee) not in heard.text, heard.text
    assert t("ivr.cancel.paid_back", "en", place=DROP) in heard.text, heard.text

    heard = phone.press("1")
    assert t("ivr.cancel.done", "en") in heard.text
    assert status_of(ref) == BookingStatus.CANCELLED.value
    run()
    paid_in_full(leg_id, fee)
    assert ours(bid) == []


def test_a_caller_without_a_rider_hears_our_team_gave_the_money_back(live, phone) -> None:  # noqa: F811
    bid = paid_booking(phone.phone)
    ref, _ = refunded_outside(bid, 0)

    phone.call()
    phone.press("5")
    heard = phone.press("1")
    assert t("ivr.cancel.free", "en", place=DROP) not in heard.text
    assert t("ivr.cancel.paid_back", "en", place=DROP) in heard.text, heard.text

    heard = phone.press("1")
    assert t("ivr.cancel.done", "en") in heard.text
    assert status_of(ref) == BookingStatus.CANCELLED.value
    run()
    assert ours(bid) == []

"""Review r3 (paylink): the Razorpay payment link lifecycle, as a demanding operator sees it.

Each test shows one defect and fails on the code it was written against.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from sqlalchemy import func, select

from core import clock
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage
from core.adapters.payment_models import GatewayEvent, LedgerTransaction, Refund
from core.adapters.redis_conn import redis_client
from core.domain.booking import BookingStatus
from core.domain.errors import Unavailable
from core.domain.pricing import SpeedTier
from core.services import payments
from core.services.booking import create_booking
from sandbox import razorpay as emu
from tests.conftest import release_scheduled
from tests.test_payments_support import (
    BAG,
    BETTIAH,
    CUSTOMER,
    LAXMIPUR,
    booking,
    confirmed_booking,
    ledger_checked,
    link_of,
    new_customer,
    pay,
    run,
)

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def _outcomes() -> dict[str, str | None]:
    with transaction() as s:
        return {e: o for e, o in s.execute(select(GatewayEvent.event, GatewayEvent.outcome))}


def _messages(booking_id: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id).order_by(OutboxMessage.id)))


# --- 1. another system's link with our reference is taken for our booking's --------------


def test_a_foreign_link_sharing_a_reference_with_our_unlinked_booking_is_not_ours(live):
    """A customer got a quote (booking 1234567-8) and walked away: no link was ever made
    for it, so its 8-digit reference is free at Razorpay. Another system on the same
    account (its invoices are numbered too) makes a link with reference_id that very
    number, and its own customer pays it. Its payment_link.paid was taken for our booking
    by the reference alone (_booking_for_payment): its capture went into our ledger, we
    asked Razorpay to refund the other system's customer (their order stays paid, their
    money gone), and our customer, who paid nothing, was told 'your payment of Rs 123
    came after the booking was cancelled'. Our links always carry our notes (booking id
    and reference); a reference_id alone names no booking of ours, as a booking id alone
    does not (named_bookings)."""
    cid = new_customer()
    with transaction() as s:
        b = create_booking(s, customer_id=cid, channel="sms", pickup=LAXMIPUR, drop=BETTIAH,
                           parcel=BAG, tier=SpeedTier.STANDARD, recipient_name=None,
                           recipient_phone=None, actor=CUSTOMER)
        payments.cancel_booking(s, b, CUSTOMER, "changed my mind")
        bid, ref = b.id, b.reference
    run()
    assert booking(bid).status == BookingStatus.CANCELLED.value
    told_before = len(_messages(bid))

    foreign = gw.client().payment_link.create({
        "amount": 12_300, "currency": "INR", "reference_id": ref,
        "description": "Invoice of another shop", "notes": {"invoice": "INV-77"},
        "expire_by": int((clock.now() + timedelta(minutes=30)).timestamp()),
        "notify": {"sms": False, "email": False}})
    assert requests.post(foreign["short_url"] + "/pay", timeout=10).status_code == 200
    run()

    outcomes = _outcomes()
    assert outcomes.get("payment_link.paid") == "unknown-payment", outcomes
    with transaction() as s:
        captured = s.scalar(select(func.count()).select_from(LedgerTransaction).where(
            LedgerTransaction.booking_id == bid))
        refunds = s.scalar(select(func.count()).select_from(Refund))
    assert captured == 0, "another system's payment went into our booking's escrow"
    assert refunds == 0 and emu._all("refund") == [], \
        "we refunded another system's customer"
    assert len(_messages(bid)) == told_before, _messages(bid)[told_before:]


# --- 2. the emulator never delivers again a webhook the service could not take ------------


def test_the_emulator_delivers_again_a_webhook_the_service_answered_503(live, monkeypatch):
    """Razorpay retries a webhook answered non-2xx (for 24 hours), each delivery on its
    own. The sandbox's deliver_webhooks posts a batch in one RQ job without a retry and
    stops at the first non-2xx: a customer who pays during a restart of the service (or
    a moment the database is away: our 503) is never heard of by webhook, and neither is
    the payment_link.paid behind it. In the sandbox the booking sits 'waiting for payment'
    until the expiry sweep asks the gateway, half an hour after she paid."""
    bid = confirmed_booking()
    run()  # the link is made and sent
    real = payments.receive_webhook
    calls = {"n": 0}

    def away_once(body, signature, event_id):
        calls["n"] += 1
        if calls["n"] == 1:
            raise Unavailable("the database is restarting")
        return real(body, signature, event_id)

    monkeypatch.setattr(payments, "receive_webhook", away_once)
    assert pay(bid).status_code == 200
    run()  # the first delivery is answered 503
    assert calls["n"] >= 1
    for _ in range(3):  # Razorpay's next tries, well within its 24 hours
        release_scheduled(timedelta(hours=2))
        run()
    with transaction() as s:
        stored = sorted(s.scalars(select(GatewayEvent.event)))
    assert stored == ["payment.captured", "payment_link.paid"], stored
    assert booking(bid).status == BookingStatus.PAID.value


# --- 3. a link found from a lost attempt is sent with whatever time it has left -----------


def test_a_link_found_from_a_lost_attempt_still_gives_the_customer_time_to_pay(live):
    """A worker backlog (the project has seen 16 minutes of one): the link job runs 20
    minutes after she confirmed, so it moves her time to pay to 16 minutes from then and
    asks for a link expiring then. Razorpay makes it, but the answer is lost (a 503).
    The retry waits behind the same backlog and runs 15 minutes later: it moves her time
    to pay again (16 minutes from now), is refused the reference, finds the first link
    and sends it as it is, with 1 minute left. She opens it as it expires; the link's
    webhook closes her booking ('the time to pay is over') a minute after she got it,
    though the booking itself says 16 more. The job promises a late customer a link she
    has time to pay (LINK_MIN_LEAD); a found link keeps its old expire_by (Razorpay's
    PATCH /v1/payment_links/{id} takes a new one)."""
    t0 = clock.now()
    clock.freeze(t0)
    bid = confirmed_booking()
    clock.freeze(t0 + timedelta(minutes=20))  # the backlog: the job runs late
    redis_client().set("sandbox:razorpay:lose_next:create_link", 1)
    run()  # made at the gateway, the answer lost: the job will try again
    assert len(emu._all("payment_link")) == 1
    clock.freeze(t0 + timedelta(minutes=35))  # its retry waited behind the backlog too
    assert release_scheduled(timedelta(seconds=11)) == 1
    run()
    link = link_of(bid)
    sent = [m for m in _messages(bid) if link.short_url in m]
    assert sent, "the link was not sent"
    left = link.expire_by - clock.now()
    assert left >= timedelta(minutes=15), \
        f"she was sent a link with {left} left to pay"


# --- fixer f5's tests beside the reviewer's ------------------------------------------------


def test_a_foreign_transfer_naming_only_our_leg_in_its_notes_pays_out_nothing(live):
    """Another system on the same account pays someone by a direct transfer whose notes
    say leg_id (its own numbering: "repay" of its own too), without our booking_id beside
    it. _on_transfer took the leg id alone for ours (the reconciliation does not) and
    posted a payout to our rider who was paid nothing: the ledger says paid, the rider
    waits for money that never comes."""
    from core.domain import ledger as rules
    from tests.test_payments_support import advance, new_partner, paid_booking

    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    run()
    foreign = gw.client().transfer.create({
        "account": "acc_othershop01", "amount": 1_000, "currency": "INR",
        "notes": {"leg_id": str(leg_id), "repay": "1"}})
    run()  # processed at the gateway: transfer.processed
    with transaction() as s:
        outcome = s.scalar(select(GatewayEvent.outcome).where(
            GatewayEvent.event == "transfer.processed"))
        payouts = s.scalar(select(func.count()).select_from(LedgerTransaction).where(
            LedgerTransaction.kind == rules.EntryKind.TRANSFER_PROCESSED.value))
    assert emu.get_object(foreign["id"])["status"] == "processed"
    assert outcome == "unknown-transfer", outcome
    assert payouts == 0, "another system's transfer was posted as our rider's payout"


def _link_found_late(minutes_late: int) -> tuple[int, int]:
    """As in the reviewer's test: the link job runs 20 minutes late and its answer is
    lost; its retry runs ``minutes_late`` minutes after, and Razorpay refuses to edit the
    link it finds. Returns the booking and the link's expire_by as first made."""
    t0 = clock.now()
    clock.freeze(t0)
    bid = confirmed_booking()
    clock.freeze(t0 + timedelta(minutes=20))
    redis_client().set("sandbox:razorpay:lose_next:create_link", 1)
    run()
    (first,) = emu._all("payment_link")
    clock.freeze(t0 + timedelta(minutes=20 + minutes_late))
    emu.control("refuse_next:edit_link", 1)
    assert release_scheduled(timedelta(seconds=11)) == 1
    run()
    return bid, first["expire_by"]


def test_a_found_link_the_gateway_will_not_lengthen_sets_the_booking_s_time_to_pay(live):
    """The edit refused with 10 minutes left on the link: she is sent it, and the booking's
    time to pay is the link's, not 16 minutes the link does not have."""
    bid, expire_by = _link_found_late(6)
    link = link_of(bid)
    assert int(link.expire_by.timestamp()) == expire_by
    assert timedelta(minutes=9) < link.expire_by - clock.now() <= timedelta(minutes=10)
    b = booking(bid)
    assert b.status == BookingStatus.AWAITING_PAYMENT.value
    assert b.expires_at == link.expire_by, (b.expires_at, link.expire_by)
    assert [m for m in _messages(bid) if link.short_url in m]


def test_a_found_link_with_a_minute_left_that_cannot_be_lengthened_is_not_sent(live):
    """The edit refused with a minute left: sending it would have her find it expired. The
    booking closes as one whose link could not be made (she is told to book again, never
    'the time to pay is over'), and the link is cancelled."""
    bid, expire_by = _link_found_late(15)
    link = link_of(bid)
    assert link.expire_by - clock.now() <= timedelta(minutes=1)
    assert booking(bid).status == BookingStatus.EXPIRED.value
    assert not [m for m in _messages(bid) if link.short_url in m], _messages(bid)
    from core import i18n

    assert i18n.t("payment.link_failed", "en", ref=booking(bid).reference) in _messages(bid)
    (gateway_link,) = emu._all("payment_link")
    assert gateway_link["status"] == "cancelled"


def test_the_emulator_edits_a_link_as_razorpay_documents_it(live):
    """PATCH /v1/payment_links/{id}: a later expire_by, 15 minutes away at least; an
    unknown field, a link no longer payable or a too-near expire_by are refused."""
    c = gw.client()
    now = int(clock.now().timestamp())
    made = c.payment_link.create({"amount": 10_000, "currency": "INR",
                                  "reference_id": "F5-EDIT-1", "expire_by": now + 1200})
    assert c.payment_link.edit(made["id"], {"expire_by": now + 3600})["expire_by"] == now + 3600
    assert c.payment_link.fetch(made["id"])["expire_by"] == now + 3600
    for bad in ({"expire_by": now + 600}, {"amount": 5_000}):
        with pytest.raises(gw.BadRequestError):
            c.payment_link.edit(made["id"], bad)
    c.payment_link.cancel(made["id"])
    with pytest.raises(gw.BadRequestError):
        c.payment_link.edit(made["id"], {"expire_by": now + 7200})


def test_the_emulator_gives_up_a_delivery_after_razorpay_s_day_of_retries(live, monkeypatch):
    """A webhook the service never takes is tried again a bounded number of times (within
    Razorpay's 24 hours), each event on its own, and then left failed."""
    from tests.test_payments_support import failed_jobs

    bid = confirmed_booking()
    run()
    calls: list[str] = []

    def away(body, signature, event_id):
        calls.append(event_id)
        raise Unavailable("the database is away for the day")

    monkeypatch.setattr(payments, "receive_webhook", away)
    assert pay(bid).status_code == 200
    run()
    for _ in range(len(emu.WEBHOOK_RETRY_S) + 2):
        release_scheduled(timedelta(hours=24))
        run()
    tries = len(emu.WEBHOOK_RETRY_S) + 1
    assert sorted({calls.count(e) for e in calls}) == [tries] and len(set(calls)) == 2
    assert sum(emu.WEBHOOK_RETRY_S) < 24 * 3600
    assert len([j for j in failed_jobs() if j.startswith("sandbox-rzp-hook")]) == 2

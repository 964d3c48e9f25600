"""Helpers and fixtures shared by the payment tests (no tests of its own).

Jobs run through RQ itself; jobs of the dispatch area are recorded and dropped, never run,
so these tests depend on nothing but payments (they assert the dispatch job was enqueued).
"""

from __future__ import annotations

from collections.abc import Iterator

import requests
from rq import SimpleWorker
from rq.serializers import JSONSerializer
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, PartnerProfile, Person
from core.adapters.payment_models import PaymentLink
from core.adapters.queue import QUEUES, SANDBOX_QUEUE, queue
from core.adapters.redis_conn import redis_client
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.domain.pricing import ParcelCategory, SizeBucket, SpeedTier, WeightBucket
from core.services import ledger, payments
from core.services.booking import ParcelSpec, Place, create_booking, move_booking, move_leg

LAXMIPUR = Place(26.8927, 84.48813, pincode="845450", post_office="Laxmipur BO")
BETTIAH = Place(26.80228, 84.51522, pincode="845438", post_office="Bettiah HO")
BAG = ParcelSpec(ParcelCategory.DOCUMENTS, SizeBucket.BAG, WeightBucket.W5)
CUSTOMER = Actor("customer", "1")
SYSTEM = Actor.system()

SKIPPED: list[str] = []


class PaymentsWorker(SimpleWorker):
    """Runs every job except the dispatch area's, which it records (job id) and drops."""

    def execute_job(self, job, queue):  # type: ignore[override]
        if job.func_name.startswith("workers.dispatch."):
            SKIPPED.append(job.id)
            job.delete()
            return
        super().execute_job(job, queue)


def run() -> int:
    """Run queued jobs (and the jobs they enqueue) through RQ, skipping dispatch's."""
    worker = PaymentsWorker([queue(n) for n in (*QUEUES, SANDBOX_QUEUE)], connection=redis_client(),
                            serializer=JSONSerializer)
    before = worker.successful_job_count + worker.failed_job_count
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
    return worker.successful_job_count + worker.failed_job_count - before


def failed_jobs() -> list[str]:
    from rq.registry import FailedJobRegistry

    return [j for n in (*QUEUES, SANDBOX_QUEUE)
            for j in FailedJobRegistry(queue=queue(n)).get_job_ids()]


def summary(booking_id: int) -> dict[str, int]:
    """The booking's money as the ledger has it (captured, released, refunded ...)."""
    with transaction() as s:
        return ledger.booking_summary(s, booking_id)


def ledger_checked() -> Iterator[None]:
    """Body of each payment test module's autouse fixture (which takes clean_db, so this
    runs before the tables are truncated): the sum of all postings is zero afterwards."""
    SKIPPED.clear()
    yield
    with transaction() as s:
        assert ledger.total(s) == 0, "the ledger does not balance"


def new_customer(phone: str = "+919812340001") -> int:
    with transaction() as s:
        p = Person(phone=phone, name="Sita", preferred_language="en", role="customer")
        s.add(p)
        s.flush()
        return p.id


def new_partner(phone: str = "+919812349001", account: str | None = "") -> int:
    """A partner on duty; by default paid to acc_partner0001, or (another phone) to an
    account of their own: one account is one partner's (migration 0021)."""
    if account == "":
        account = "acc_partner0001" if phone == "+919812349001" else f"acc_p{phone[-10:]}"
    with transaction() as s:
        p = Person(phone=phone, name="Ravi", preferred_language="hi", role="partner")
        s.add(p)
        s.flush()
        prof = PartnerProfile(person_id=p.id, first_name="Ravi", payout_account_id=account,
                              on_duty=True)
        s.add(prof)
        s.flush()
        return prof.id


def confirmed_booking(phone: str = "+919812340001") -> int:
    """A booking the customer confirmed: awaiting payment, link job enqueued."""
    cid = new_customer(phone)
    with transaction() as s:
        b = create_booking(s, customer_id=cid, channel="sms", pickup=LAXMIPUR, drop=BETTIAH,
                           parcel=BAG, tier=SpeedTier.STANDARD, recipient_name=None,
                           recipient_phone=None, actor=CUSTOMER)
        payments.request_payment_link(s, b, CUSTOMER)
        return b.id


def booking(booking_id: int) -> Booking:
    with transaction() as s:
        b = s.get(Booking, booking_id)
        assert b is not None
        return b


def link_of(booking_id: int) -> PaymentLink:
    with transaction() as s:
        link = s.scalar(select(PaymentLink).where(PaymentLink.booking_id == booking_id))
        assert link is not None
        return link


def pay(booking_id: int, **form: str) -> requests.Response:
    """The customer presses Pay on the sandbox page of the booking's link."""
    return requests.post(link_of(booking_id).short_url + "/pay", data=form, timeout=10)


def paid_booking(phone: str = "+919812340001") -> int:
    bid = confirmed_booking(phone)
    run()
    assert pay(bid).status_code == 200
    run()
    assert booking(bid).status == BookingStatus.PAID.value
    return bid


def legs(booking_id: int) -> list[Leg]:
    with transaction() as s:
        return list(s.scalars(select(Leg).where(Leg.booking_id == booking_id)
                              .order_by(Leg.sequence)))


def advance(booking_id: int, partner_id: int, *, to: str) -> int:
    """Play dispatch's part (without its code): assign, pick up, deliver the single leg."""
    with transaction() as s:
        b = s.get(Booking, booking_id)
        leg = s.scalar(select(Leg).where(Leg.booking_id == booking_id))
        assert b is not None and leg is not None
        steps = {
            "assigned": [(BookingStatus.DISPATCHING, LegStatus.OFFERING),
                         (BookingStatus.ASSIGNED, LegStatus.ASSIGNED)],
            "delivered": [(BookingStatus.DISPATCHING, LegStatus.OFFERING),
                          (BookingStatus.ASSIGNED, LegStatus.ASSIGNED),
                          (BookingStatus.PICKED_UP, LegStatus.PICKED_UP),
                          (BookingStatus.DELIVERED, LegStatus.DELIVERED)],
        }[to]
        for bs, ls in steps:
            if ls is LegStatus.ASSIGNED:
                leg.partner_id = partner_id
            move_leg(s, leg, ls, SYSTEM, "test")
            move_booking(s, b, bs, SYSTEM, "test")
        return leg.id

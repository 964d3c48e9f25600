"""A transfer paying a reversed payout again, itself reversed in part afterwards (helper
hrepay), through the ops REST API, RQ, the real razorpay client, the emulator and its
signed webhooks.

Ops paid a rider again (pay_again) after his leg's payout was reversed in full: a direct
transfer t2 was made, processed, its payout posted for the full amount. Then ops reversed
part of t2 in the dashboard (recorded: held for ops again) and chose pay_again for that
part too. The leg's settle posted every earlier repay transfer of the leg again, for what
the gateway shows left on it now: t2's key holds its entry for the full amount, so
ledger_post answered EntryConflict, and the repay job and the sweep's settle of the leg
died the same way on every run; the rider was never paid the part. Now a repay transfer
whose payout is recorded already is left as it is (_payout_differs, as for a leg's own
transfer): the part is paid once by a new transfer. A transfer.processed of a repay
transfer that comes late (a snapshot from before a partial reversal the settle posted the
rest of) posts nothing either."""

from __future__ import annotations

import pytest
from rq.registry import ScheduledJobRegistry
from sqlalchemy import func, select

from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.payment_models import GatewayEvent, LedgerPosting, LedgerTransaction
from core.adapters.queue import QUEUES, queue
from core.domain import ledger as rules
from core.services import ledger, payments
from sandbox import razorpay as emu
from tests.test_api import sign_in
from tests.test_payments_support import failed_jobs, ledger_checked, run
from tests.test_reversed_payouts_ops import OPERATOR, resolve, reversed_leg, whole
from tests.test_transfer_reversal import send_reversed_event

pytestmark = pytest.mark.db
PART = 1000  # paise ops reverse of the repay transfer in the dashboard


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def payouts(leg_id: int) -> list[tuple[str, int]]:
    """The leg's transfer_processed entries: (gateway transfer id, paise paid out)."""
    with transaction() as s:
        return [(str(ref), -int(a)) for ref, a in s.execute(
            select(LedgerTransaction.gateway_ref, LedgerPosting.amount_paise)
            .join(LedgerPosting, LedgerPosting.transaction_id == LedgerTransaction.id)
            .where(LedgerTransaction.kind == rules.EntryKind.TRANSFER_PROCESSED.value,
                   LedgerPosting.leg_id == leg_id,
                   LedgerPosting.account_kind == rules.AccountKind.PARTNER_PAYABLE.value)
            .order_by(LedgerTransaction.id))]


def stuck() -> list[str]:
    """What did not finish: failed jobs, a webhook's or a settle's job waiting for RQ's
    retry (an exception, not an outcome), gateway events not processed."""
    retrying = [j for n in QUEUES for j in ScheduledJobRegistry(queue=queue(n)).get_job_ids()
                if j.startswith(("rzp-event-", "transfer-"))]
    with transaction() as s:
        events = [f"event {e}" for e in s.scalars(
            select(GatewayEvent.event).where(GatewayEvent.processed_at.is_(None)))]
    return failed_jobs() + retrying + events


def outcomes(event: str) -> list[str]:
    with transaction() as s:
        return [str(o) for o in s.scalars(select(GatewayEvent.outcome).where(
            GatewayEvent.event == event).order_by(GatewayEvent.id))]


def entries() -> int:
    with transaction() as s:
        return int(s.scalar(select(func.count(LedgerTransaction.id))) or 0)


def repaid_then_partly_reversed(client) -> tuple[dict, int, int, dict, dict, str]:
    """A leg's payout reversed in full and paid again by a direct transfer t2 (processed,
    posted in full); then PART of t2 reversed in the dashboard and recorded:
    (ops, booking, leg, its first transfer, t2, the booking's ref)."""
    ops = sign_in(client, OPERATOR, role="ops")
    _, bid, leg_id, t, ref = reversed_leg()
    assert resolve(client, ops, ref, leg_id, "pay_again").status_code == 200
    run()
    (t2,) = [x for x in emu._all("transfer") if x["id"] != t["id"]]
    assert (t2["amount"], t2["status"]) == (t["amount"], "processed")
    assert payouts(leg_id) == [(t["id"], t["amount"]), (t2["id"], t["amount"])]
    gw.client().transfer.reverse(t2["id"], {"amount": PART})
    send_reversed_event(t2["id"])
    with transaction() as s:
        assert ledger.reversed_payouts(s, bid) == PART
        assert ledger.leg_owed(s, leg_id) == 0  # held for ops, not owed by itself
    return ops, bid, leg_id, t, t2, ref


def test_a_partly_reversed_repay_transfer_paid_again_pays_the_part_once(live, client):
    """The reviewer's case: the second pay_again's job, the sweep and the leg's settle
    finish; one new transfer pays the part; t2's payout stays as it was recorded."""
    ops, bid, leg_id, t, t2, ref = repaid_then_partly_reversed(client)
    r = resolve(client, ops, ref, leg_id, "pay_again")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["amount_paise"] == PART
    run()
    payments.sweep()  # the sweep's settle of the leg, as a later run would
    run()
    assert payments.settle_leg_transfer(leg_id) == "already-paid"
    (t3,) = [x for x in emu._all("transfer") if x["id"] not in (t["id"], t2["id"])]
    assert (t3["recipient"], t3["amount"], t3["status"]) == (t2["recipient"], PART,
                                                            "processed")
    assert payouts(leg_id) == [(t["id"], t["amount"]), (t2["id"], t["amount"]),
                               (t3["id"], PART)]
    with transaction() as s:
        assert ledger.leg_owed(s, leg_id) == 0  # the part was paid again
        assert ledger.reversed_payouts(s, bid) == 0
    assert whole(bid)["reversed_payouts_paise"] == 0
    assert stuck() == []


def test_retries_of_the_repay_webhooks_and_jobs_change_nothing(live, client):
    """Every webhook delivered twice, t2's transfer.processed (its snapshot: the full
    amount) and transfer.reversed sent again, the leg's settle and the sweep run again:
    no transfer is made, no entry is posted, no job fails."""
    ops, bid, leg_id, t, t2, ref = repaid_then_partly_reversed(client)
    now = emu.get_object(t2["id"])  # as the gateway shows it now: PART reversed
    emu.control("webhook_repeat", 2)
    assert resolve(client, ops, ref, leg_id, "pay_again").status_code == 200
    run()
    emu.control("webhook_repeat", 1)
    made, posted = len(emu._all("transfer")), entries()
    assert made == 3 and payouts(leg_id)[-1][1] == PART
    emu.send_webhooks([emu._event("transfer.processed", {"transfer": t2}),  # as first sent
                       emu._event("transfer.processed", {"transfer": now})])
    run()
    send_reversed_event(t2["id"], times=2)
    for _ in range(2):
        assert payments.settle_leg_transfer(leg_id) == "already-paid"
        payments.sweep()
        run()
    assert (len(emu._all("transfer")), entries()) == (made, posted)
    with transaction() as s:
        assert ledger.leg_owed(s, leg_id) == 0
    whole(bid)
    assert stuck() == []


def test_a_late_processed_event_of_a_repay_transfer_posts_nothing_more(live, client):
    """t2 is slow: processed at the gateway, its webhook late; meanwhile ops reverse PART of
    it and the sweep's settle posts what is left on it. The late transfer.processed (a
    snapshot from before the reversal: the full amount) posts nothing, and its job ends."""
    ops = sign_in(client, OPERATOR, role="ops")
    _, bid, leg_id, t, ref = reversed_leg()
    emu.control("pending_next:transfer", 1)
    assert resolve(client, ops, ref, leg_id, "pay_again").status_code == 200
    run()
    (t2,) = [x for x in emu._all("transfer") if x["id"] != t["id"]]
    assert t2["status"] == "pending"
    emu.settle_transfer(t2["id"])  # processed; its webhook queued, not delivered yet
    gw.client().transfer.reverse(t2["id"], {"amount": PART})
    payments.settle_leg_transfer(leg_id)  # the sweep's: t2 is posted for what is left
    assert payouts(leg_id)[-1] == (t2["id"], t["amount"] - PART)
    run()  # the late transfer.processed
    assert outcomes("transfer.processed")[-1] == "transfer-processed-before"
    assert payouts(leg_id)[-1] == (t2["id"], t["amount"] - PART)
    assert {x["id"] for x in emu._all("transfer")} == {t["id"], t2["id"]}
    assert stuck() == []

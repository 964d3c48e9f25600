"""Session 34, money leftovers: a rider's hold made at the gateway by a job that died (its
worker killed) before our transfer row was committed is recorded by the job's retry (no
twin made), and one whose job never ran again is found by the hourly reconciliation
(GET /payments/{id}/transfers, our leg in the notes) and recorded as the leg's hold or
given back, as its findings say; ops settle one leg by hand (CLI settle-leg, ops API
POST /ops/bookings/<ref>/legs/<leg>/settle) through the leg's own settle job.
Through RQ, the real razorpay client, the emulator and its signed webhooks."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import cli
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import Booking
from core.adapters.payment_models import LegTransfer
from core.adapters.queue import enqueue
from core.domain.booking import Actor
from core.services import ledger, payments, reconciliation
from sandbox import razorpay as emu
from tests.test_admin import _keep_root_handlers  # noqa: F401  (autouse: cli.main's log)
from tests.test_api import API, sign_in
from tests.test_hold_left_s33 import holds_of, late_cancel, nothing_held, partner_of
from tests.test_money_s32 import give_back
from tests.test_money_s33 import deliver
from tests.test_payments_support import (
    advance,
    failed_jobs,
    ledger_checked,
    new_partner,
    paid_booking,
    run,
)
from tests.test_stuck_relay_platform import dashboard_refund

pytestmark = pytest.mark.db
OPERATOR = "+919812300078"


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


class Killed(BaseException):
    """The worker killed under the job (SIGKILL, the OOM killer): nothing after runs."""


def killed_after_the_gateway(monkeypatch, leg_id: int) -> dict:
    """The leg's hold job runs; the gateway makes the transfer; the worker dies before the
    row is committed. The leg's one transfer at the gateway."""
    def die(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(payments, "_save_transfer", die)
        with pytest.raises(Killed):
            payments.hold_leg_transfer(leg_id)
    (t,) = [t for t in emu._all("transfer") if t["notes"].get("leg_id") == str(leg_id)]
    assert t["on_hold"] and row_of(leg_id) is None
    run()  # the gateway processes it
    return t


def row_of(leg_id: int) -> tuple[str | None, str] | None:
    """The leg's transfer row: (the transfer it names, its status), or None."""
    with transaction() as s:
        r = s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        return None if r is None else (r.transfer_id, r.status)


def assigned_leg() -> tuple[int, int]:
    partner = new_partner()
    bid = paid_booking()
    return bid, advance(bid, partner, to="assigned")


def open_findings(gateway_id: str) -> list[str]:
    with transaction() as s:
        return [m["detail"] for m in reconciliation.list_mismatches(s)
                if m["gateway_id"] == gateway_id]


# --- 1. a hold job killed between the gateway's answer and its commit ----------------------


def test_the_retry_of_a_hold_job_killed_after_the_gateway_records_the_hold(live, monkeypatch):
    """The retry found the leg's transfer by its notes and made no twin, but said
    "already-held" and saved nothing: the hold stayed unknown to every sweep, so a cancel
    left it on the payment for good. Now the retry records it; the cancel gives it back."""
    bid, leg_id = assigned_leg()
    t = killed_after_the_gateway(monkeypatch, leg_id)
    enqueue("workers.payments.hold_leg_transfer", leg_id, job_id=f"hold-{leg_id}-7")
    run()
    assert not failed_jobs()
    assert len(holds_of(leg_id)) == 1  # no twin
    assert row_of(leg_id) == (t["id"], "on_hold")
    dashboard_refund(bid)
    late_cancel(bid)
    run()
    assert not failed_jobs()
    assert nothing_held(leg_id), holds_of(leg_id)
    assert row_of(leg_id) == (t["id"], "reversed")


def test_the_reconciliation_gives_back_a_hold_no_row_names_on_a_closed_booking(live,
                                                                             monkeypatch):
    """The job was never run again and the booking closed: the cancel's settle goes by the
    rows and found none, and the reconciliation saw nothing (a hold is no payout). Now the
    hourly run lists the payment's transfers, finds the hold of a leg no rider has, gives
    it back and says so; the next run resolves the finding."""
    bid, leg_id = assigned_leg()
    t = killed_after_the_gateway(monkeypatch, leg_id)
    dashboard_refund(bid)
    late_cancel(bid)
    run()
    assert holds_of(leg_id) == [(t["amount"], True, "processed")]  # left there
    assert reconciliation.run()["mismatches"] == 1
    run()
    assert not failed_jobs()
    assert nothing_held(leg_id), holds_of(leg_id)
    (detail,) = open_findings(t["id"])
    assert "reversed" in detail and f"leg {leg_id}" in detail
    assert reconciliation.run()["mismatches"] == 0
    assert open_findings(t["id"]) == []
    assert len(emu._all("reversal")) == 1


def test_the_reconciliation_records_a_hold_no_row_names_as_its_riders(live, monkeypatch):
    """The leg is still its rider's: the hold is his, so it is recorded as the leg's hold
    (as the dead job would have), said in the findings, and released once he delivers:
    one transfer, paid once."""
    bid, leg_id = assigned_leg()
    t = killed_after_the_gateway(monkeypatch, leg_id)
    assert reconciliation.run()["mismatches"] == 1
    assert row_of(leg_id) == (t["id"], "on_hold")
    (detail,) = open_findings(t["id"])
    assert "recorded as the leg's hold" in detail
    assert reconciliation.run()["mismatches"] == 0  # named by a row now: resolved
    deliver(bid, leg_id)
    assert payments.release_leg(leg_id) == "released"
    run()
    assert not failed_jobs()
    assert holds_of(leg_id) == [(t["amount"], False, "processed")]
    with transaction() as s:
        assert ledger.leg_paid_out(s, leg_id) == t["amount"]
    assert row_of(leg_id) == (t["id"], "released")


# --- 2. ops settle one leg by hand ---------------------------------------------------------


@pytest.fixture
def ops(client) -> dict[str, str]:
    return sign_in(client, OPERATOR, role="ops")


def settle(client, ops, ref: str, leg_id: int, reason: str = "incident 34: job lost"):
    return client.post(f"{API}/ops/bookings/{ref}/legs/{leg_id}/settle", headers=ops,
                       json={"reason": reason})


def reference(bid: int) -> str:
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None
        return b.reference


def audits(leg_id: int) -> list[tuple[str, dict]]:
    with transaction() as s:
        return [(a.actor, a.details) for a in s.scalars(select(AuditEntry).where(
            AuditEntry.action == "leg.settle", AuditEntry.target == f"leg:{leg_id}"))]


def test_ops_give_back_the_hold_of_a_leg_its_rider_gave_back(live, client, ops):
    """The rider gave the job back and no one took it: his hold stays on the payment until
    the next rider's hold job or the booking's close. Ops give it back now, through the
    leg's settle; again changes nothing. A leg its rider has is refused."""
    bid, leg_id = assigned_leg()
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()
    ref = reference(bid)
    r = settle(client, ops, ref, leg_id)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "leg_in_progress"
    give_back(bid, leg_id)
    r = settle(client, ops, ref, leg_id)
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["outcome"], r.get_json()["changed"]) == ("reversed", True)
    assert nothing_held(leg_id) and row_of(leg_id)[1] == "reversed"  # type: ignore[index]
    again = settle(client, ops, ref, leg_id)
    assert again.status_code == 200
    assert (again.get_json()["outcome"], again.get_json()["changed"]) == (
        "already_settled", False)
    assert len(emu._all("reversal")) == 1
    ((actor, details),) = audits(leg_id)
    assert actor.startswith("ops:") and details["outcome"] == "reversed"
    assert settle(client, ops, ref, 999999).status_code == 404
    assert settle(client, ops, ref, 2**31).get_json()["error"]["code"] == "not_found"
    assert settle(client, ops, ref, leg_id, reason="x").status_code == 422
    run()
    assert not failed_jobs()


def test_ops_pay_a_delivered_leg_whose_settle_was_lost_from_the_command_line(live, capsys):
    """A delivered leg whose release and settle jobs were lost: settle-leg posts its
    release as the job would and releases the hold, once; a leg its rider still has is
    refused with the reason."""
    bid, leg_id = assigned_leg()
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()
    args = ["settle-leg", "--leg", str(leg_id), "--reason", "incident 34"]
    assert cli.main(args) == 2
    assert "leg_in_progress" in capsys.readouterr().err
    assert cli.main(["settle-leg", "--leg", str(2**40), "--reason", "incident 34"]) == 2
    assert "not_found" in capsys.readouterr().err
    assert cli.main([*args, "--booking", "12345678"]) == 2  # not its booking
    assert "not_found" in capsys.readouterr().err
    deliver(bid, leg_id)
    assert cli.main([*args, "--booking", reference(bid)]) == 0
    assert ": released:" in capsys.readouterr().out
    run()
    (t,) = emu._all("transfer")
    assert (t["on_hold"], t["status"]) == (False, "processed")
    with transaction() as s:
        assert ledger.leg_paid_out(s, leg_id) == t["amount"]
        assert ledger.partner_balance(s, partner_of(leg_id)) == 0
    assert cli.main(args) == 0
    assert ": already_settled:" in capsys.readouterr().out
    assert [a for a, _ in audits(leg_id)] == [str(Actor("ops", cli.CLI_ACTOR))]
    assert not failed_jobs()

"""Session 35, money leftovers: the hourly job's refund poll failing no longer skips the
reconciliation; a leg's lock left by a killed job does not stand its 300 s against the
job's retries (a live holder still blocks); the emulator's payment-link cancel and a Pay
click at once no longer both succeed."""

from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta

import pytest
import requests
from rq import Retry

from core import clock
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.queue import enqueue
from core.adapters.redis_conn import redis_client
from core.services import payments, reconciliation
from sandbox import razorpay as emu
from tests.conftest import release_scheduled, run_jobs
from tests.test_payments_support import (
    advance,
    failed_jobs,
    ledger_checked,
    new_partner,
    paid_booking,
    run,
)

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


# --- 1. the hourly job: the refund poll failing does not skip the reconciliation ----------

def test_a_refund_poll_the_gateway_refuses_still_lets_the_hour_reconcile(live, monkeypatch,
                                                                          caplog):
    """No connection to the gateway while the poll asks about a refund left pending: the
    poll raised, and workers.payments.reconcile never ran the reconciliation that hour (a
    payment captured behind the ledger's back went unlisted). The reconciliation runs; the
    job still ends failed, its error logged once."""
    from razorpay.resources.refund import Refund

    from tests.test_payments_gaps import refund_left_pending

    t0 = clock.now()
    bid = paid_booking()
    refund_left_pending(bid)
    stray = emu.create_payment(12_300)  # paid at the gateway, unknown to the ledger
    clock.freeze(t0 + payments.REFUND_POLL_AFTER + timedelta(hours=1))
    real_fetch = Refund.fetch
    asked: list[str] = []

    def refused_once(self, refund_id, data=None, **kwargs):
        asked.append(refund_id)
        if len(asked) == 1:  # the poll's question: the connection is refused
            raise requests.ConnectionError("refund fetch refused (test)")
        return real_fetch(self, refund_id, data or {}, **kwargs)

    monkeypatch.setattr(Refund, "fetch", refused_once)
    caplog.set_level(logging.WARNING)
    enqueue("workers.payments.reconcile", job_id="reconcile-s35-1")
    run()
    assert asked, "the poll never asked the gateway"
    assert "reconcile-s35-1" in failed_jobs()  # the failure is seen
    with transaction() as s:
        found = {(m["kind"], m["entity"], m["gateway_id"])
                 for m in reconciliation.list_mismatches(s)}
    assert ("missing_in_ledger", "payment", stray["id"]) in found
    said = [r for r in caplog.records
            if "refund fetch refused (test)" in r.getMessage() + str(r.exc_text or "")
            + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")]
    assert len(said) == 1, [r.getMessage()[:200] for r in said]


def test_the_hourly_job_raises_the_reconciliations_error_with_the_polls(live, monkeypatch):
    """Both parts failing: one failure, the reconciliation's, the poll's chained to it."""
    from workers import payments as payment_jobs

    def poll_fails(*args, **kwargs):
        raise ConnectionError("poll")

    def run_fails(*args, **kwargs):
        raise RuntimeError("reconciliation")

    monkeypatch.setattr(payments, "poll_refunds", poll_fails)
    monkeypatch.setattr(reconciliation, "run", run_fails)
    with pytest.raises(RuntimeError, match="reconciliation") as info:
        payment_jobs.reconcile()
    assert isinstance(info.value.__context__, ConnectionError)


# --- 2. a leg's lock left by a killed job ------------------------------------------------

def _lock_key(leg_id: int) -> str:
    return f"lock:leg-transfer:{leg_id}"


def _killed_inside_the_lock(monkeypatch, leg_id: int) -> dict:
    """The leg's job runs into its lock, and its worker is killed there: what the run
    left in Redis (the lock's value and time left) is kept; the job itself fails (RQ's
    handling of a killed work horse: its Retry, if any, schedules it again)."""
    left: dict = {}

    def killed(leg: int) -> str:
        r = redis_client()
        left.update(value=r.get(_lock_key(leg)), pttl=r.pttl(_lock_key(leg)))
        raise RuntimeError("the worker was killed here (test)")

    monkeypatch.setattr(payments, "_hold_leg_transfer", killed)
    return left


def _as_the_kill_left_it(left: dict, leg_id: int) -> None:
    """The lock back as the killed run left it: nobody released it."""
    assert left["value"] and left["pttl"] > 250_000, left
    redis_client().set(_lock_key(leg_id), left["value"], px=left["pttl"])


@pytest.mark.parametrize("same_job", [True, False])
def test_a_lock_left_by_a_killed_job_does_not_hold_up_the_next_run(live, monkeypatch,
                                                                    same_job):
    """A worker killed while its job held the leg's lock left it for LEG_LOCK_TTL_S (300 s):
    the job's retry (or the next job of the leg) found the leg busy, and each retry within
    those 300 s was spent against it. The lock names the run holding it; a run that ended
    without releasing it no longer holds it."""
    monkeypatch.setattr(payments, "LEG_LOCK_WAIT_S", 0)  # no waiting in a test
    real = payments._hold_leg_transfer
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    left = _killed_inside_the_lock(monkeypatch, leg_id)
    retry = Retry(max=3, interval=[5, 30, 120]) if same_job else None
    enqueue("workers.payments.hold_leg_transfer", leg_id, job_id=f"hold-{leg_id}-1",
            retry=retry)
    run()
    _as_the_kill_left_it(left, leg_id)
    monkeypatch.setattr(payments, "_hold_leg_transfer", real)
    if same_job:  # its retry, 5 s later
        assert release_scheduled(timedelta(seconds=6)) == 1
    else:  # no retry (as dispatch enqueues it): the next offer's hold job
        assert failed_jobs() == [f"hold-{leg_id}-1"]
        enqueue("workers.payments.hold_leg_transfer", leg_id, job_id=f"hold-{leg_id}-2")
    run()
    transfers = emu._all("transfer")
    assert [(t["on_hold"], t["recipient"]) for t in transfers] == [(True, "acc_partner0001")]
    assert redis_client().get(_lock_key(leg_id)) is None  # released by the run that took it
    assert release_scheduled(timedelta(hours=1)) == 0  # no retry is left waiting on it


def test_a_live_job_holding_the_lock_still_keeps_another_out(live, monkeypatch):
    """While one job's run holds the leg's lock (its worker alive), another caller finds
    the leg busy: the run is not taken for dead."""
    monkeypatch.setattr(payments, "LEG_LOCK_WAIT_S", 0)
    real = payments._hold_leg_transfer
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    other: list[object] = []

    def meanwhile(leg: int) -> str:
        def second() -> None:  # another worker's job on the same leg, at the same time
            try:
                other.append(payments.hold_leg_transfer(leg))
            except Exception as exc:  # noqa: BLE001 (what it raised is the answer)
                other.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=30)
        return real(leg)

    monkeypatch.setattr(payments, "_hold_leg_transfer", meanwhile)
    enqueue("workers.payments.hold_leg_transfer", leg_id, job_id=f"hold-{leg_id}-1")
    run_jobs()
    assert len(other) == 1 and isinstance(other[0], payments.LegBusy), other
    assert len(emu._all("transfer")) == 1
    assert not failed_jobs()


def test_a_lock_naming_no_job_run_holds_one_naming_a_gone_job_does_not(live, monkeypatch):
    """A lock whose value names no job run (./run settle-leg, another tool) holds for its
    TTL, as before; one naming a job that is no more (its result expired) does not."""
    monkeypatch.setattr(payments, "LEG_LOCK_WAIT_S", 0)
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    redis_client().set(_lock_key(leg_id), "not-a-job", ex=60)
    with pytest.raises(payments.LegBusy):
        payments.hold_leg_transfer(leg_id)
    gone = {"job": f"hold-{leg_id}-gone", "worker": "w", "started": "x", "token": "t"}
    redis_client().set(_lock_key(leg_id), json.dumps(gone), ex=300)
    assert payments.hold_leg_transfer(leg_id) == "held"
    assert redis_client().get(_lock_key(leg_id)) is None


# --- 3. the emulator: a payment link's cancel and its Pay at once --------------------------

def _new_link(ref: str) -> dict:
    return gw.client().payment_link.create({"amount": 5000, "currency": "INR",
                                            "reference_id": ref})


def _post_cancel(link: dict) -> requests.Response:
    from core.config import get_settings

    s = get_settings()
    base = link["short_url"].split("/sandbox/")[0]
    return requests.post(f"{base}/sandbox/razorpay/v1/payment_links/{link['id']}/cancel",
                         auth=(s.razorpay_key_id, s.razorpay_key_secret), timeout=15)


@pytest.mark.parametrize("first", ["pay", "cancel"])
def test_a_cancel_and_a_pay_click_at_once_do_not_both_succeed(live, monkeypatch, first):
    """The service cancels a link (the booking was cancelled) while the customer presses
    Pay: both read the link "created" and both wrote it; the link ended cancelled AND
    paid (a payment captured, payment_link.cancelled and payment_link.paid both sent). One
    of them wins; the other is a 400, as Razorpay answers a link no longer created."""
    link = _new_link(f"S35-RACE-{first}")
    entered, release = threading.Event(), threading.Event()
    held = {"done": False}
    if first == "pay":  # the click is inside its capture when the cancel comes
        real_attempt = emu._attempt

        def attempt(link_obj, status):
            if not held["done"]:
                held["done"] = True
                entered.set()
                release.wait(timeout=10)
            return real_attempt(link_obj, status)

        monkeypatch.setattr(emu, "_attempt", attempt)
    else:  # the cancel has read the link "created" when the click comes
        from flask import request

        real_read = emu._link_or_error

        def read(plink_id):
            found = real_read(plink_id)
            if request.path.endswith("/cancel") and not held["done"]:
                held["done"] = True
                entered.set()
                release.wait(timeout=10)
            return found

        monkeypatch.setattr(emu, "_link_or_error", read)
    answers: dict[str, requests.Response] = {}

    def do(what: str) -> None:
        answers[what] = (requests.post(link["short_url"] + "/pay", timeout=15)
                         if what == "pay" else _post_cancel(link))

    second = "cancel" if first == "pay" else "pay"
    thread = threading.Thread(target=do, args=(first,))
    thread.start()
    try:
        assert entered.wait(timeout=10), f"the {first} never got there"
        do(second)
    finally:
        release.set()
        thread.join(timeout=15)
    codes = {what: r.status_code for what, r in answers.items()}
    final = emu.get_object(link["id"])["status"]
    captured = [p for p in emu._all("payment") if p["status"] == "captured"]
    winner = [what for what, code in codes.items() if code == 200]
    assert len(winner) == 1, (codes, final)
    if winner == ["pay"]:
        assert final == "paid" and len(captured) == 1
        said = answers["cancel"].json()["error"]["description"]
        assert said == "Payment Link cannot be cancelled in paid state"
    else:
        assert final == "cancelled" and captured == []
        assert answers["pay"].json()["error"]["description"] == "Payment Link is cancelled"
    # Afterwards, each as Razorpay answers a link in that state.
    assert requests.post(link["short_url"] + "/pay", timeout=15).status_code == 400
    assert _post_cancel(link).status_code == 400
    assert emu.get_object(link["id"])["status"] == final


def test_a_cancel_that_claimed_the_link_first_makes_a_pay_click_a_400(live, monkeypatch):
    """The cancel has claimed the link (it is writing it cancelled) when the click comes:
    the click is answered that the link is cancelled, and nothing is captured."""
    link = _new_link("S35-RACE-claimed")
    entered, release = threading.Event(), threading.Event()
    real_put = emu.put_object

    def put(obj):
        if obj.get("entity") == "payment_link" and obj.get("status") == "cancelled" \
                and not entered.is_set():
            entered.set()
            release.wait(timeout=10)
        return real_put(obj)

    monkeypatch.setattr(emu, "put_object", put)
    answers: list[requests.Response] = []
    thread = threading.Thread(target=lambda: answers.append(_post_cancel(link)))
    thread.start()
    try:
        assert entered.wait(timeout=10)
        click = requests.post(link["short_url"] + "/pay", timeout=15)
    finally:
        release.set()
        thread.join(timeout=15)
    assert answers and answers[0].status_code == 200, answers
    assert click.status_code == 400
    assert click.json()["error"]["description"] == "Payment Link is cancelled"
    assert emu.get_object(link["id"])["status"] == "cancelled"
    assert [p for p in emu._all("payment") if p["status"] == "captured"] == []

"""Session 35, money leftovers: the hourly job's refund poll failing no longer skips the
reconciliation (its time running out still ends the job at once); a leg's transfer lock
held by a live job keeps another out (no lock is taken over: RQ can call a live run gone);
the emulator's payment-link cancel and a Pay click at once no longer both succeed, an edit
no longer undoes a Pay, and a claim left by a killed request ends with its TTL."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest
import requests

from core import clock
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.queue import enqueue
from core.adapters.redis_conn import redis_client
from core.services import payments, reconciliation
from sandbox import razorpay as emu
from tests.conftest import run_jobs
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



def test_the_hourly_job_out_of_time_in_the_poll_ends_without_reconciling(live, monkeypatch):
    """RQ's job timeout raised inside the refund poll (JobTimeoutException, an Exception)
    was caught as the poll's failure, and the reconciliation then ran with no time limit
    left (the timeout fires once). It is raised at once; the job ends failed; the next
    hour is still scheduled."""
    from rq.timeouts import JobTimeoutException

    from workers import payments as payment_jobs

    ran: list[str] = []

    def poll_out_of_time(*args, **kwargs):
        raise JobTimeoutException("Task exceeded maximum timeout value (test)")

    monkeypatch.setattr(payments, "poll_refunds", poll_out_of_time)
    monkeypatch.setattr(reconciliation, "run", lambda *a, **k: ran.append("run") or {})
    with pytest.raises(JobTimeoutException):
        payment_jobs.reconcile()
    assert ran == []
    enqueue("workers.payments.reconcile", job_id="reconcile-s35-timeout")
    run()
    assert ran == []
    assert "reconcile-s35-timeout" in failed_jobs()
    assert any(j.startswith("reconcile-") and j != "reconcile-s35-timeout"
               for j in _scheduled_ids()), "the next hour was not scheduled"


def _scheduled_ids() -> list[str]:
    from rq.registry import ScheduledJobRegistry

    from core.adapters.queue import queue

    return ScheduledJobRegistry(queue=queue("default")).get_job_ids()  # schedule_periodic's


# --- 2. a leg's transfer lock: a live holder keeps another job out ----------------------

@pytest.mark.parametrize("rq_says", ["started", "failed"])
def test_a_live_job_holding_the_lock_still_keeps_another_out(live, monkeypatch, rq_says):
    """While one job's run holds the leg's lock, another caller finds the leg busy (and
    RQ's retry runs it later). Nothing takes a held lock over, even when RQ has marked
    the holder's job failed (StartedJobRegistry.cleanup, queue.pending_ids do that to a
    run whose work horse still runs on): the takeover made two transfers for one leg."""
    monkeypatch.setattr(payments, "LEG_LOCK_WAIT_S", 0)
    real = payments._hold_leg_transfer
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    other: list[object] = []
    calls: list[int] = []

    def meanwhile(leg: int) -> str:
        calls.append(leg)
        if len(calls) > 1:  # the other caller got in after all: its own hold, no nesting
            return real(leg)
        if rq_says == "failed":  # as RQ's registry cleanup marks a run it takes for dead
            from rq import get_current_job
            from rq.job import JobStatus

            job = get_current_job()
            assert job is not None
            job.set_status(JobStatus.FAILED)

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


# --- 4. the emulator: an edit of a link and its Pay at once; a claim a kill left ----------

def _patch(link: dict, body: dict) -> requests.Response:
    from core.config import get_settings

    s = get_settings()
    base = link["short_url"].split("/sandbox/")[0]
    return requests.patch(f"{base}/sandbox/razorpay/v1/payment_links/{link['id']}",
                          json=body, auth=(s.razorpay_key_id, s.razorpay_key_secret),
                          timeout=15)


@pytest.mark.parametrize("first", ["edit", "pay"])
def test_an_edit_and_a_pay_click_at_once_do_not_undo_the_payment(live, monkeypatch, first):
    """The service edits a link (a later expire_by) while the customer pays it: the edit
    read the link "created", the Pay made it paid, and the edit wrote its copy back (the
    link "created" again, a payment captured on it). The Pay stands; the edit is answered
    as Razorpay answers an edit of a paid link."""
    link = _new_link(f"S35-EDIT-{first}")
    later = int(clock.now().timestamp()) + 7200
    entered, release = threading.Event(), threading.Event()
    held = {"done": False}
    if first == "edit":  # the edit has read the link "created" when the click comes
        from flask import request

        real_read = emu._link_or_error

        def read(plink_id):
            found = real_read(plink_id)
            if request.method == "PATCH" and not held["done"]:
                held["done"] = True
                entered.set()
                release.wait(timeout=10)
            return found

        monkeypatch.setattr(emu, "_link_or_error", read)
    else:  # the click is inside its capture when the edit comes
        real_attempt = emu._attempt

        def attempt(link_obj, status):
            if not held["done"]:
                held["done"] = True
                entered.set()
                release.wait(timeout=10)
            return real_attempt(link_obj, status)

        monkeypatch.setattr(emu, "_attempt", attempt)
    answers: dict[str, requests.Response] = {}

    def do(what: str) -> None:
        answers[what] = (requests.post(link["short_url"] + "/pay", timeout=15)
                         if what == "pay" else _patch(link, {"expire_by": later}))

    second = "pay" if first == "edit" else "edit"
    thread = threading.Thread(target=do, args=(first,))
    thread.start()
    try:
        assert entered.wait(timeout=10), f"the {first} never got there"
        do(second)  # the click paid while the edit waits; the edit while the click pays
    finally:
        release.set()
        thread.join(timeout=15)
    codes = {what: r.status_code for what, r in answers.items()}
    final = emu.get_object(link["id"])
    captured = [p for p in emu._all("payment") if p["status"] == "captured"]
    assert codes == {"pay": 200, "edit": 400}, (codes, final["status"])
    assert answers["edit"].json()["error"]["description"] \
        == "Payment Link cannot be updated in paid state"
    assert final["status"] == "paid" and len(captured) == 1
    assert final["payments"][0]["payment_id"] == captured[0]["id"]
    assert final["expire_by"] != later  # the refused edit changed nothing
    # Afterwards, as Razorpay answers a paid link.
    assert _patch(link, {"expire_by": later}).status_code == 400
    assert requests.post(link["short_url"] + "/pay", timeout=15).status_code == 400


def test_an_edit_still_applies_when_nothing_else_writes_the_link(live):
    """The edit's discipline changes nothing for an edit alone, nor for a Pay after it."""
    link = _new_link("S35-EDIT-alone")
    later = int(clock.now().timestamp()) + 7200
    answer = _patch(link, {"expire_by": later, "notes": {"k": "v"}})
    assert answer.status_code == 200, answer.text
    assert answer.json()["expire_by"] == later and answer.json()["notes"] == {"k": "v"}
    assert requests.post(link["short_url"] + "/pay", timeout=15).status_code == 200
    final = emu.get_object(link["id"])
    assert (final["status"], final["expire_by"], final["notes"]) == ("paid", later, {"k": "v"})


@pytest.mark.parametrize("how", ["pay", "cancel"])
def test_a_claim_left_by_a_killed_request_does_not_keep_the_link_for_good(live, monkeypatch,
                                                                          how):
    """A Pay (or a cancel) whose worker was killed after it claimed the link left the
    claim with no TTL: the link could never be paid nor cancelled again. The claim ends
    with its TTL (a minute); the link's status, written last, is what survives."""
    link = _new_link(f"S35-CLAIM-{how}")
    key = emu._claim_key(link["id"])
    left: dict = {}
    real_read = emu._link_or_error

    def killed_after_the_claim(plink_id):  # the read after the claim: the kill comes here
        found = real_read(plink_id)
        if redis_client().exists(key) and not left:
            left.update(value=redis_client().get(key), pttl=redis_client().pttl(key))
        return found

    monkeypatch.setattr(emu, "_link_or_error", killed_after_the_claim)
    answer = (requests.post(link["short_url"] + "/pay", timeout=15) if how == "pay"
              else _post_cancel(link))
    assert answer.status_code == 200, answer.text
    assert left, "the request never claimed the link"
    assert 0 < left["pttl"] <= 60_000, left
    # As the kill left it: nobody released it. Others are refused while it stands ...
    redis_client().set(key, left["value"], px=left["pttl"])
    emu.set_fields(link["id"], status="created")
    assert requests.post(link["short_url"] + "/pay", timeout=15).status_code == 400
    assert redis_client().pttl(key) > 0  # ... and it ends on its own

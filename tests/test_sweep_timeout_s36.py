"""Session 36 (review rnew): the outbox's minute sweep, like the payments sweep before
f73311f, caught RQ's job timeout in one part as that part's failure and ran the others
with no time limit left (the timeout fires once), until RQ killed the work horse at
timeout + 60 s, in the middle of a part, and the `finally` that schedules the next run
never ran: the chain ended. The timeout now ends the sweep at once, the next minute's
run still scheduled. The inbound sweep (a part of it) does the same."""

from __future__ import annotations

import pytest
from rq.timeouts import JobTimeoutException

import workers.inbound as wi
import workers.outbox as wo

RAN: list[str] = []


def out_of_time() -> int:
    RAN.append("out_of_time")
    raise JobTimeoutException("Task exceeded maximum timeout value (180 seconds)")


def later() -> int:
    RAN.append("later")
    return 0


def broken() -> int:
    RAN.append("broken")
    raise ConnectionError("database restarting")


def test_the_outbox_sweep_ends_at_a_job_timeout_and_schedules_the_next(monkeypatch):
    RAN.clear()
    monkeypatch.setattr(wo, "_SWEEP_PARTS", ((__name__, "out_of_time"), (__name__, "later")))
    scheduled: list[dict] = []
    monkeypatch.setattr(wo, "schedule_sweep", lambda **kw: scheduled.append(kw))
    with pytest.raises(JobTimeoutException):
        wo.sweep()
    assert RAN == ["out_of_time"]
    assert scheduled, "the next minute's sweep was not scheduled"


def test_an_ordinary_failure_still_lets_the_other_parts_run(monkeypatch):
    RAN.clear()
    monkeypatch.setattr(wo, "_SWEEP_PARTS", ((__name__, "broken"), (__name__, "later")))
    monkeypatch.setattr(wo, "schedule_sweep", lambda **kw: None)
    with pytest.raises(ConnectionError):
        wo.sweep()
    assert RAN == ["broken", "later"]


def test_the_inbound_sweep_ends_at_a_job_timeout(monkeypatch):
    RAN.clear()
    monkeypatch.setattr(wi.inbound, "unpark", out_of_time)
    monkeypatch.setattr(wi.inbound, "sweep_inboxes", later)
    with pytest.raises(JobTimeoutException):
        wi.sweep()
    assert RAN == ["out_of_time"]

"""`./run serve` scales the Procfile's worker type by WORKER_PROCESSES."""

from __future__ import annotations

import pytest

from ops.supervisor import scale

PROCS = {"web": "gunicorn app", "worker": "python -m core.cli worker"}


def test_two_workers_by_default(monkeypatch):
    monkeypatch.delenv("WORKER_PROCESSES", raising=False)
    assert scale(PROCS) == {"web": "gunicorn app", "worker.1": PROCS["worker"],
                            "worker.2": PROCS["worker"]}


def test_worker_processes_sets_the_count_and_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("WORKER_PROCESSES", "1")
    assert scale(PROCS) == PROCS
    monkeypatch.setenv("WORKER_PROCESSES", "3")
    assert [n for n in scale(PROCS) if n.startswith("worker")] == [
        "worker.1", "worker.2", "worker.3"]
    assert scale({"web": "x"}) == {"web": "x"}
    for bad in ("lots", "0", "-1", "2.5"):
        monkeypatch.setenv("WORKER_PROCESSES", bad)
        with pytest.raises(ValueError, match="WORKER_PROCESSES must be a whole number"):
            scale(PROCS)
    monkeypatch.setenv("WORKER_PROCESSES", "")
    assert len(scale(PROCS)) == 3

"""`./run serve` scales the Procfile's worker type by WORKER_PROCESSES."""

from __future__ import annotations

from ops.supervisor import scale

PROCS = {"web": "gunicorn app", "worker": "python -m core.cli worker"}


def test_two_workers_by_default(monkeypatch):
    monkeypatch.delenv("WORKER_PROCESSES", raising=False)
    assert scale(PROCS) == {"web": "gunicorn app", "worker.1": PROCS["worker"],
                            "worker.2": PROCS["worker"]}


def test_worker_processes_sets_the_count_and_bad_values_fall_back(monkeypatch):
    monkeypatch.setenv("WORKER_PROCESSES", "1")
    assert scale(PROCS) == PROCS
    monkeypatch.setenv("WORKER_PROCESSES", "3")
    assert [n for n in scale(PROCS) if n.startswith("worker")] == [
        "worker.1", "worker.2", "worker.3"]
    monkeypatch.setenv("WORKER_PROCESSES", "lots")
    assert len(scale(PROCS)) == 3
    assert scale({"web": "x"}) == {"web": "x"}

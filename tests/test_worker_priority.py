"""Background jobs run below the web processes' CPU priority (WORKER_NICE)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core.config import ROOT

SHOW = "from core.cli import lower_priority; print(lower_priority())"


def _child(nice: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("WORKER_NICE", None)
    if nice is not None:
        env["WORKER_NICE"] = nice
    return subprocess.run([sys.executable, "-c", SHOW], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=60)


def _niceness_of_child(nice: str | None) -> int:
    done = _child(nice)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def test_a_worker_runs_at_the_lowest_niceness_by_default():
    assert _niceness_of_child(None) == 19


def test_worker_nice_sets_how_far_below_the_web_it_runs():
    base = os.nice(0)
    wanted = min(base + 3, 19)
    assert _niceness_of_child(str(wanted)) == wanted


def test_worker_nice_zero_leaves_the_priority_alone():
    assert _niceness_of_child("0") == os.nice(0)


@pytest.mark.parametrize("bad", ["high", "-5", "20"])
def test_a_bad_worker_nice_stops_the_worker_with_a_clear_message(bad: str):
    done = _child(bad)
    assert done.returncode != 0
    assert "WORKER_NICE must be a number from 0 to 19" in done.stderr

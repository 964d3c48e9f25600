"""A worker stopping after its job starts nothing new (review of e877cba, the worker's stop).

1. A warm shutdown (one SIGTERM during a job) stops the worker's scheduler. e877cba keeps
   our own restart (_Periodic._scheduler_due) from starting a new one, but RQ's own
   maintenance still does: after the job, the worker loop runs maintenance before it
   looks at the stop, and when RQ's ten-minute cleaning is due,
   _Periodic.run_maintenance_tasks calls RQ's, which starts a scheduler whose process is
   not alive (``acquire_locks(auto_start=True)``). That new process outlives the worker
   and hangs the stop until SIGKILL, as before the fix, whenever the stop comes in the
   last job of a ten-minute stretch (a retention run is 2 of those 10 minutes).
2. An idle worker's stop is RQ's StopRequested raised out of the signal handler: raised
   inside a log call, logging swallows it ("Logging error") and the worker ran on until
   SIGKILL (CI's smoke test of ./run serve, session 23: the sandbox worker, a job just
   taken being logged).
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

from rq.utils import now


def test_a_stopping_worker_whose_rq_maintenance_is_due_starts_no_scheduler():
    from core.cli import service_worker

    started: list[bool] = []

    class Dead:
        def is_alive(self) -> bool:
            return False

    def acquire_locks(auto_start: bool = False) -> set[str]:
        started.append(auto_start)
        return {"default"}

    w = service_worker()
    w.periodic = None  # the sweeps are not this test's business
    w.scheduler = SimpleNamespace(_process=Dead(), acquire_locks=acquire_locks)
    # RQ's own maintenance (registry cleaning) is due: the last one was 11 minutes ago.
    w.last_cleaned_at = now() - timedelta(seconds=w.maintenance_interval + 60)
    w.clean_registries = lambda: None  # no Redis work: only the scheduler matters here
    w.clean_group_registries = lambda: None
    w._stop_requested = True  # SIGTERM during a job: rq's warm shutdown stopped it
    # The worker loop after the job: maintenance first, then the stop (rq Worker.work).
    if w.should_run_maintenance_tasks:
        w.run_maintenance_tasks()
    assert True not in started, (
        "a worker stopping after its job started its scheduler again (through RQ's own "
        "maintenance): the new process outlives the worker and hangs the stop")


def test_a_stop_swallowed_by_a_log_call_still_stops_the_worker_at_its_next_turn():
    from rq.exceptions import StopRequested

    from core.cli import service_worker

    for w in (service_worker(), service_worker(fork=True)):  # both worker classes
        assert not w._stop_requested
        try:
            w._shutdown()  # idle: RQ raises StopRequested out of the signal handler
        except StopRequested:
            pass  # as logging's emit does when the signal lands in a log call
        # RQ's worker loop looks at this flag before it takes the next job.
        assert w._stop_requested

"""CPU priority of background work, as Linux actually applies it.

On a small machine the webhooks, the background jobs and PostgreSQL share the cores, and
the jobs run below the web (WORKER_NICE). A niceness alone is not always enough:

- With autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``, on by default
  in many kernels) the kernel first shares the CPU equally between sessions, and a
  niceness only ranks the processes inside one session. A worker that leads its own
  session (started with setsid, as a service manager may) competes with the web as an
  equal whatever its niceness; the niceness of its session's group must be set too.
- PostgreSQL starts every backend in a session of its own, at the server's priority. The
  work of a job's statements is done there, so a backlog of jobs takes the cores from
  the webhooks through its backends unless they are lowered as well.

``lower(pid, nice)`` lowers one process (and its session's group when it leads that
session, so no other process is touched). It never raises a priority, and it fails with
OSError where the OS does not allow it (another user's process, one not visible here).
"""

from __future__ import annotations

import os

AUTOGROUP_SWITCH = "/proc/sys/kernel/sched_autogroup_enabled"


def niceness(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def autogroups_on() -> bool:
    try:
        with open(AUTOGROUP_SWITCH, "rb") as f:
            return f.read().strip() == b"1"
    except OSError:
        return False


def leads_own_session(pid: int) -> bool:
    return os.getsid(pid) == pid


def group_niceness(pid: int) -> int | None:
    """The niceness of ``pid``'s autogroup ("/autogroup-12 nice 0"), None without one."""
    try:
        with open(f"/proc/{pid}/autogroup", "rb") as f:
            return int(f.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def lower(pid: int, nice: int) -> int:
    """Run ``pid`` at niceness ``nice`` at least; return the niceness now in effect."""
    pid = pid or os.getpid()
    if niceness(pid) < nice:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    if autogroups_on() and leads_own_session(pid):
        current = group_niceness(pid)
        if current is not None and current < nice:
            with open(f"/proc/{pid}/autogroup", "w") as f:
                f.write(str(nice))
    return niceness(pid)


def process_name(pid: int) -> bytes:
    with open(f"/proc/{pid}/comm", "rb") as f:
        return f.read().strip()

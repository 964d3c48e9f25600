"""CPU priority of background work, as Linux actually applies it.

On a small machine the webhooks, the background jobs and PostgreSQL share the cores, and
the jobs run below the web (WORKER_NICE). A niceness alone is not always enough:

- With autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``, on by default
  in many kernels) the kernel first shares the CPU between sessions, and a niceness only
  ranks the processes inside one. That holds for processes in the root CPU cgroup; in a
  cgroup with a CPU controller (a systemd unit, a container) the cgroup's weight rules
  instead and autogroups do nothing. A worker that leads its own session (started with
  setsid, as a service manager may) competes with the web as an equal whatever its
  niceness; the niceness of its session's group must be set too.
- PostgreSQL starts every backend in a session of its own, at the server's priority. The
  work of a job's statements is done there, so a backlog of jobs takes the cores from
  the webhooks through its backends unless they are lowered as well (core.adapters.db,
  with ``serves_connection`` to make sure the pid the server names is that backend).

``lower(pid, nice)`` lowers one process (and its session's group when it leads that
session, so no other process is touched). It never raises a priority. It fails with
OSError where the OS does not allow it (another user's process without CAP_SYS_NICE, one
not visible here).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time

log = logging.getLogger(__name__)

AUTOGROUP_SWITCH = "/proc/sys/kernel/sched_autogroup_enabled"
# Without CAP_SYS_ADMIN the kernel takes one autogroup niceness change per 100 ms on the
# whole machine and refuses others with EAGAIN: a pool opening four connections at once
# gets one through. The others wait their turn, a few times at most.
GROUP_RETRY_S = 0.11
GROUP_TRIES = 6


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


def _lower_group(pid: int, nice: int) -> None:
    for attempt in range(GROUP_TRIES):
        current = group_niceness(pid)
        if current is None or current >= nice:
            return
        try:
            with open(f"/proc/{pid}/autogroup", "w") as f:
                f.write(str(nice))
            return
        except BlockingIOError:  # another change within the last 100 ms, anywhere
            if attempt == GROUP_TRIES - 1:
                raise
            time.sleep(GROUP_RETRY_S)


def lower(pid: int, nice: int) -> int:
    """Run ``pid`` at niceness ``nice`` at least; return the niceness now in effect."""
    pid = pid or os.getpid()
    if niceness(pid) < nice:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    if autogroups_on() and leads_own_session(pid):
        _lower_group(pid, nice)
    return niceness(pid)


def process_name(pid: int) -> bytes:
    with open(f"/proc/{pid}/comm", "rb") as f:
        return f.read().strip()


def parent(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"PPid:"):
                return int(line.split()[1])
    raise ProcessLookupError(pid)


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    base = f"/proc/{pid}/fd"
    for fd in os.listdir(base):
        try:
            target = os.readlink(f"{base}/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _tcp_table() -> list[tuple[str, str, int]]:
    """(local, remote, inode) of every TCP socket in this network namespace, as the
    kernel writes them in /proc/net/tcp and tcp6."""
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    rows.append((parts[1], parts[2], int(parts[9])))
        except OSError:
            continue
    return rows


def serves_connection(pid: int, fd: int) -> bool:
    """Whether process ``pid`` serves our connected socket ``fd``: the process a local
    server names as our connection's backend is that process here, not one that happens
    to have its number (a server in a container, or behind a tunnel or a pooler,
    numbers its processes apart).

    Over TCP the connection's other end is found in /proc/net/tcp and must be one of
    ``pid``'s open sockets. Over a Unix socket the peer's credentials name the process
    that listens there, which must be ``pid``'s parent: the server we talk to (not a
    pooler, not another server) started it, and a PostgreSQL server names its own
    process for the connection."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        if sock.family == socket.AF_UNIX:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            return parent(pid) == struct.unpack("3i", creds)[0]
        ours = os.fstat(sock.fileno()).st_ino
    finally:
        sock.close()
    table = _tcp_table()
    mine = next(((local, remote) for local, remote, inode in table if inode == ours), None)
    if mine is None:
        return False
    theirs = {inode for local, remote, inode in table if (remote, local) == mine}
    return bool(theirs & _socket_inodes(pid))

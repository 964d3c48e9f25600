"""Background work stays below the web where Linux actually ranks it: a worker leading its
own session lowers that session's scheduling group, and a niced process lowers the
PostgreSQL backends that run its statements (core.adapters.priority, core.adapters.db).

Each case runs in a child process, at the niceness and in the session under test, and
this process reads the outcome from /proc, as the kernel sees it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from core.adapters import priority
from core.config import ROOT

# Connects through the product's engine, says which backend it got, and keeps the
# connection open until told to go.
HOLD_BACKEND = """
import sys
from sqlalchemy import text
from core.adapters import db
with db.engine().connect() as conn:
    print(conn.execute(text("SELECT pg_backend_pid()")).scalar_one(), flush=True)
    print(conn.execute(text("SHOW max_parallel_workers_per_gather")).scalar_one(), flush=True)
    sys.stdin.readline()
"""

# Calls the connect hook with a stand-in for a connection's info, as a remote server's or
# a non-PostgreSQL process's would read.
HOOK_ON = """
import sys
from types import SimpleNamespace
from core.adapters import db
conn = SimpleNamespace(info=SimpleNamespace(host=sys.argv[1], backend_pid=int(sys.argv[2])))
db._backend_at_client_priority(conn, None)
print("done", flush=True)
"""


def _stat_niceness(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


def _autogroup_niceness(pid: int) -> int:
    with open(f"/proc/{pid}/autogroup") as f:
        return int(f.read().split()[-1])


def _python(code: str, *args: str, nice: int = 0, **popen) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", code, *args]
    if nice:
        argv = ["nice", "-n", str(nice), *argv]
    return subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ), text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)


def _backend_of(child: subprocess.Popen[str]) -> int:
    return int(_line(child))


def _line(child: subprocess.Popen[str]) -> str:
    line = child.stdout.readline()
    if not line:
        pytest.fail(child.stderr.read())
    return line.strip()


def _release(child: subprocess.Popen[str]) -> None:
    child.communicate("go\n", timeout=30)
    assert child.returncode == 0


@pytest.fixture
def may_lower_backends(database: str) -> None:
    """The test server's backends can be lowered from here (the server's user, or
    CAP_SYS_NICE): setting a backend's niceness to what it is asks the same permission."""
    child = _python(HOLD_BACKEND)
    try:
        pid = _backend_of(child)
        try:
            os.setpriority(os.PRIO_PROCESS, pid, priority.niceness(pid))
        except PermissionError:
            pytest.skip("the test PostgreSQL runs as another user, and this run may not "
                        "renice others' processes")
    finally:
        _release(child)


def test_a_niced_process_runs_its_backends_at_its_niceness(may_lower_backends: None):
    wanted = min(priority.niceness(0) + 6, 19)
    child = _python(HOLD_BACKEND, nice=wanted - priority.niceness(0))
    try:
        backend = _backend_of(child)
        assert _stat_niceness(backend) == wanted
        # and it starts no parallel workers, which would run at the server's priority
        assert _line(child) == "0"
        if priority.autogroups_on():
            # PostgreSQL starts each backend in a session of its own: its own group.
            assert _autogroup_niceness(backend) == wanted
    finally:
        _release(child)


def test_a_process_at_normal_priority_leaves_its_backends_alone(may_lower_backends: None):
    if priority.niceness(0) > 0:
        pytest.skip("this test run itself is niced")
    child = _python(HOLD_BACKEND)
    try:
        backend = _backend_of(child)
        assert _stat_niceness(backend) == 0
        assert _line(child) != "0"  # the server's setting (2 by default)
    finally:
        _release(child)


def _hook_leaves_alone(host: str, pid: int) -> None:
    before = _stat_niceness(pid)
    child = _python(HOOK_ON, host, str(pid), nice=5)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert out.strip() == "done"
    assert _stat_niceness(pid) == before


@pytest.mark.parametrize("host", ["db.example.net", "10.20.0.5"])
def test_a_remote_servers_backend_pid_is_not_a_process_here(host: str,
                                                             may_lower_backends: None):
    """The pid a remote server reports may name any local process, even a backend of
    the local server: nothing is lowered."""
    other = _python(HOLD_BACKEND)
    try:
        _hook_leaves_alone(host, _backend_of(other))
    finally:
        _release(other)


def test_a_local_process_that_is_not_postgres_is_never_touched():
    bystander = subprocess.Popen(["sleep", "60"], process_group=0)
    try:
        _hook_leaves_alone("127.0.0.1", bystander.pid)
    finally:
        bystander.kill()
        bystander.wait()


# The worker's niceness, then its autogroup's ("None": the init session's root group,
# which has no autogroup and whose /proc file reads empty).
SHOW = ("import os; from core.adapters import priority; from core.cli import lower_priority; "
        "print(lower_priority(), priority.group_niceness(os.getpid()), flush=True)")


@pytest.fixture
def autogroups() -> None:
    if not priority.autogroups_on() or not os.path.exists("/proc/self/autogroup"):
        pytest.skip("this kernel does not schedule by autogroup")


def test_a_worker_leading_its_own_session_lowers_its_group(autogroups: None):
    child = subprocess.run([sys.executable, "-c", SHOW], cwd=ROOT,
                           env=dict(os.environ, WORKER_NICE="7"), text=True,
                           capture_output=True, timeout=60, start_new_session=True)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["7", "7"]


def test_a_worker_sharing_a_session_leaves_the_sessions_group_alone(autogroups: None):
    """Under `./run serve` the worker shares the supervisor's session with the web: its
    group is the web's too, and lowering it would lower the web. (A run started from the
    init session, as CI's is, has no autogroup of its own: then neither has the worker.)"""
    ours = priority.group_niceness(os.getpid())
    child = subprocess.run([sys.executable, "-c", SHOW], cwd=ROOT,
                           env=dict(os.environ, WORKER_NICE="7"), text=True,
                           capture_output=True, timeout=60, process_group=0)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["7", str(ours)]
    assert priority.group_niceness(os.getpid()) == ours


def test_only_the_servers_process_for_a_connection_is_taken_for_its_backend(database: str):
    """What the hook checks before lowering. Over a Unix socket the pid must be a child
    of the process that listens there (the server we talk to: not a pooler, not another
    server); over TCP it must hold the other end of this very connection."""
    import psycopg

    from core.adapters import db

    url = db.engine().url.set(drivername="postgresql").render_as_string(hide_password=False)
    bystander = subprocess.Popen(["sleep", "60"], process_group=0)
    try:
        with psycopg.connect(url) as a, psycopg.connect(url) as b:
            ours, other = a.info.backend_pid, b.info.backend_pid
            try:
                assert priority.serves_connection(ours, a.pgconn.socket)
            except PermissionError:
                pytest.skip("another user's backend: its sockets are not visible from here")
            assert not priority.serves_connection(priority.parent(ours), a.pgconn.socket)
            assert not priority.serves_connection(bystander.pid, a.pgconn.socket)
            with socket.socket(fileno=os.dup(a.pgconn.socket)) as ours_dup:
                over_tcp = ours_dup.family != socket.AF_UNIX
            if over_tcp:
                assert not priority.serves_connection(other, a.pgconn.socket)
    finally:
        bystander.kill()
        bystander.wait()


ACCEPT_ONE = """
import socket, sys
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
print("accepted", flush=True)
sys.stdin.readline()
"""


def test_a_tcp_connection_belongs_to_the_process_that_accepted_it():
    holder = _python(ACCEPT_ONE)
    bystander = subprocess.Popen(["sleep", "60"], process_group=0)
    try:
        port = int(holder.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)) as ours:
            assert holder.stdout.readline().strip() == "accepted"  # its end is its now
            assert priority.serves_connection(holder.pid, ours.fileno())
            assert not priority.serves_connection(bystander.pid, ours.fileno())
            assert not priority.serves_connection(os.getpid(), ours.fileno())
    finally:
        holder.communicate("go\n", timeout=30)
        bystander.kill()
        bystander.wait()


class _FakeGroup:
    """A process's autogroup file, refusing the first ``busy`` writes as the kernel does
    within 100 ms of another change (EAGAIN)."""

    def __init__(self, busy: int) -> None:
        self.nice, self.busy, self.sleeps = 0, busy, []

    def open(self, path: str, mode: str = "r"):  # noqa: ANN201
        import io

        group = self
        if "w" not in mode:
            return io.BytesIO(f"/autogroup-7 nice {self.nice}\n".encode())

        class Writer(io.StringIO):
            def close(self) -> None:
                if not self.closed:
                    value = self.getvalue()
                    super().close()
                    if group.busy:
                        group.busy -= 1
                        raise BlockingIOError(11, "Resource temporarily unavailable")
                    group.nice = int(value)

        return Writer()


def test_a_busy_autogroup_change_is_tried_again(monkeypatch: pytest.MonkeyPatch):
    group = _FakeGroup(busy=2)
    monkeypatch.setattr(priority, "open", group.open, raising=False)
    monkeypatch.setattr(priority.time, "sleep", group.sleeps.append)
    priority._lower_group(4242, 10)
    assert group.nice == 10
    assert group.sleeps == [priority.GROUP_RETRY_S] * 2


def test_an_autogroup_change_that_stays_busy_gives_up(monkeypatch: pytest.MonkeyPatch):
    group = _FakeGroup(busy=priority.GROUP_TRIES)
    monkeypatch.setattr(priority, "open", group.open, raising=False)
    monkeypatch.setattr(priority.time, "sleep", group.sleeps.append)
    with pytest.raises(BlockingIOError):
        priority._lower_group(4242, 10)
    assert group.nice == 0
    assert len(group.sleeps) == priority.GROUP_TRIES - 1


BUSY_WORKER = ("import sys; from core.adapters import priority\n"
               "def busy(pid, nice): raise BlockingIOError(11, 'busy')\n"
               "priority._lower_group = busy\n"
               "from core.cli import lower_priority; print(lower_priority(), flush=True)\n")


def test_a_worker_whose_group_stays_busy_still_starts_at_its_niceness(autogroups: None):
    child = subprocess.run([sys.executable, "-c", BUSY_WORKER], cwd=ROOT,
                           env=dict(os.environ, WORKER_NICE="7"), text=True,
                           capture_output=True, timeout=60, start_new_session=True)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["7"]
    assert "scheduling group keeps its priority" in child.stderr

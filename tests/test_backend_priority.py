"""Background work stays below the web where Linux actually ranks it: a worker leading its
own session lowers that session's scheduling group, and a niced process lowers the
PostgreSQL backends that run its statements (core.adapters.priority, core.adapters.db).

Each case runs in a child process, at the niceness and in the session under test, and
this process reads the outcome from /proc, as the kernel sees it.
"""

from __future__ import annotations

import os
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
    line = child.stdout.readline()
    if not line:
        pytest.fail(child.stderr.read())
    return int(line)


def _release(child: subprocess.Popen[str]) -> None:
    child.communicate("go\n", timeout=30)
    assert child.returncode == 0


@pytest.fixture
def may_lower_backends(database: str) -> None:
    """The test server's backends can be lowered from here (root, or the server's user)."""
    child = _python(HOLD_BACKEND)
    try:
        pid = _backend_of(child)
        if os.geteuid() != 0 and os.stat(f"/proc/{pid}").st_uid != os.geteuid():
            pytest.skip("the test PostgreSQL runs as another user; only root may lower it")
    finally:
        _release(child)


def test_a_niced_process_runs_its_backends_at_its_niceness(may_lower_backends: None):
    wanted = min(priority.niceness(0) + 6, 19)
    child = _python(HOLD_BACKEND, nice=wanted - priority.niceness(0))
    try:
        backend = _backend_of(child)
        assert _stat_niceness(backend) == wanted
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


SHOW = ("import sys; from core.cli import lower_priority; print(lower_priority(), "
        "open('/proc/self/autogroup').read().split()[-1], flush=True)")


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
    group is the web's too, and lowering it would lower the web."""
    ours = _autogroup_niceness(os.getpid())
    child = subprocess.run([sys.executable, "-c", SHOW], cwd=ROOT,
                           env=dict(os.environ, WORKER_NICE="7"), text=True,
                           capture_output=True, timeout=60, process_group=0)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["7", str(ours)]
    assert _autogroup_niceness(os.getpid()) == ours

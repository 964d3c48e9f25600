"""gunicorn settings the command line cannot give (`--config python:core.web.gunicorn_conf`):
one set of request metrics for all the web workers.

Each gunicorn worker is a process with its own counters, so without this a scrape of
/metrics reports whichever worker answered it, and a counter seems to jump back and forth.
In prometheus_client's multiprocess mode every worker writes its metrics to files in
PROMETHEUS_MULTIPROC_DIR and a scrape adds them all up (core.web.ops).

The directory: PROMETHEUS_MULTIPROC_DIR if the operator set one (emptied at start, since
counts left from an earlier run would be added to this one's), or else a new temporary
directory for this gunicorn, removed when it exits. It is chosen here, when the master
loads this module and before it forks a worker, so every worker inherits it and imports
prometheus_client with it already set. Nothing here may import prometheus_client at load
time: a forked worker would inherit a client that decided on single-process mode.
"""

from __future__ import annotations

import atexit as _atexit
import os as _os
import shutil as _shutil
import sys as _sys
import tempfile as _tempfile

# Module globals named like gunicorn settings are settings; the private names are not.
_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
_created: str | None = None
_master = _os.getpid()


def _remove_created() -> None:
    # Workers are forks of the master and inherit this exit handler: only the master,
    # which made the directory, removes it.
    if _created and _os.getpid() == _master:
        _shutil.rmtree(_created, ignore_errors=True)


if not _os.environ.get(_MULTIPROC):
    _created = _tempfile.mkdtemp(prefix="ridechain-metrics-")
    _os.environ[_MULTIPROC] = _created
    # Also when the master stops before serving (a port in use) and on_exit never runs.
    _atexit.register(_remove_created)


def on_starting(server) -> None:  # noqa: ANN001 (gunicorn's hook signature)
    from core.config import ConfigError, get_settings

    try:
        get_settings()
    except ConfigError as err:
        # Said once, here in the master, before any worker boots: each worker would print
        # it at the end of a traceback, and the master then only "Worker failed to boot".
        print(err.report("web"), file=_sys.stderr)
        raise SystemExit(2) from None
    path = _os.environ[_MULTIPROC]
    _os.makedirs(path, exist_ok=True)
    for name in _os.listdir(path):
        if name.endswith(".db"):
            _os.remove(_os.path.join(path, name))


def child_exit(server, worker) -> None:  # noqa: ANN001
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:  # noqa: ANN001
    _remove_created()

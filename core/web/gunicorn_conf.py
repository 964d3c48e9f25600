"""gunicorn settings the command line cannot give (`--config python:core.web.gunicorn_conf`):
one set of request metrics for all the web workers, and JSON log lines (gunicorn's own and
its access lines).

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
import traceback as _traceback
from logging import handlers as _log_handlers

from gunicorn import glogging as _glogging  # type: ignore[import-untyped]

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
    from core.config import ConfigError, connection_budget_warning, get_settings

    try:
        get_settings()
    except ConfigError as err:
        # Said once, here in the master, before any worker boots: each worker would print
        # it at the end of a traceback, and the master then only "Worker failed to boot".
        print(err.report("web"), file=_sys.stderr)
        raise SystemExit(2) from None
    over = connection_budget_warning(get_settings().database_url, dict(_os.environ))
    if over:
        server.log.warning(over)
    # The web writes the ledger too: a role that could turn its checks off is said at the
    # web's start as well as at the release's and each worker's (JSON, production only).
    from core.adapters.roles import warn_if_overpowered

    warn_if_overpowered(get_settings().database_url, production=get_settings().is_production)
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


def _with_pid(record) -> bool:  # noqa: ANN001 (a logging filter)
    """Give a gunicorn error-log record a `pid` field: its text format had the process id,
    which says which worker booted, timed out or failed."""
    record.pid = record.process
    return True


class JsonLogger(_glogging.Logger):
    """gunicorn's logger with its lines as the service's other log lines are: JSON through
    core.logs.JsonFormatter (phone numbers masked).

    Its own messages (the error log, logger `gunicorn.error`, on stderr: starting, workers
    booting or timing out, a bad request) have their level and a `pid`. Its access lines
    (`--access-logfile -`) have the request's id (the X-Request-Id the service answered
    with, which it took from the caller or made), so the line about a request joins the
    application's lines about it. The line holds the method, the path without its query
    string (a query may carry a number, a signature or a token; the formatter masks phone
    numbers in the path), the status, the bytes sent, the time taken and the peer's
    address: no headers, no body. A syslog handler (`--log-syslog`) keeps its own format.
    """

    def setup(self, cfg) -> None:  # noqa: ANN001 (gunicorn's signature)
        from core.logs import JsonFormatter

        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if getattr(handler, "_gunicorn", False) and not isinstance(
                        handler, _log_handlers.SysLogHandler):
                    handler.setFormatter(JsonFormatter())
                    if log is self.error_log and _with_pid not in handler.filters:
                        handler.addFilter(_with_pid)

    def access(self, resp, req, environ, request_time) -> None:  # noqa: ANN001
        if not self.access_log_enabled:
            return
        from core import logs

        try:
            headers = resp.headers.items() if hasattr(resp.headers, "items") else resp.headers
            rid = next((value for name, value in headers if name.lower() == "x-request-id"),
                       None) or environ.get("HTTP_X_REQUEST_ID")
            status = resp.status
            if isinstance(status, str):
                status = status.split(None, 1)[0]
            # A request the app never answered (gunicorn refused it) has only the caller's
            # header: taken only when it is a safe token, as the app does.
            token = logs.request_id.set(logs.accepted_request_id(str(rid)) if rid else None)
            try:
                method, path = environ.get("REQUEST_METHOD", "-"), environ.get("PATH_INFO", "")
                self.access_log.info("%s %s %s", method, path, status, extra={
                    "method": method, "path": path, "status": int(status),
                    "bytes": getattr(resp, "sent", None),
                    "duration_ms": round(request_time.total_seconds() * 1000, 1),
                    "remote_addr": environ.get("REMOTE_ADDR")})
            finally:
                logs.request_id.reset(token)
        except Exception:
            self.error(_traceback.format_exc())


logger_class = JsonLogger

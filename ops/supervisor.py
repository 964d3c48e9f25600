"""The commands behind `./run`: serve the Procfile's processes, run tests, migrate, seed.

`python -m ops.supervisor serve` starts what is missing (embedded PostgreSQL / Redis, see
ops.embedded), runs the Procfile's `release` and waits for it, then starts every other
process type except `actions` (each in its own process group, output prefixed with its
name, like honcho / foreman) and stops everything cleanly on Ctrl-C / SIGTERM.

A process that dies is started again after a pause that doubles with each crash (1 s, 2 s,
4 s, ... at most 30 s); one that crashes RESTART_LIMIT times within RESTART_WINDOW_S
cannot start, and serve then stops everything (exit 1) saying so. A crash while the
external PostgreSQL or Redis (DATABASE_URL, REDIS_URL) does not answer is not counted:
serve waits for the server, starting the process again at the same growing pauses. The
embedded PostgreSQL or Redis dying stops everything at once: nothing works without them.

A stop sends each process group one SIGTERM (RQ's warm shutdown: a worker finishes the job
it is running, then exits; a second SIGTERM would kill the job) and waits up to
STOP_GRACE_S for them, by default longer than the longest job (the daily retention run,
RETENTION_RUN_SECONDS), before SIGKILL. A second Ctrl-C kills at once.
"""

from __future__ import annotations

import http.client
import itertools
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ops import embedded
from ops.embedded import REPO_DIR, EmbeddedError, Services, services_for

# Process types that `serve` does not start: `release` runs once before the others, and
# `actions` (the Rasa action server) is only needed where the lead deploys it.
NOT_SERVED = {"release", "actions"}
SANDBOX_WORKER = "python -m core.cli sandbox-worker"
# Restarts: the first pause, its ceiling, and how many crashes of one process within the
# window make serve give up (the pauses alone add up to 15 s before the fifth). A crash
# while the database or Redis it needs does not answer (_unanswered, asked at every crash)
# is not counted: serve waits for them.
RESTART_DELAY_S = 1.0
RESTART_MAX_DELAY_S = 30.0
RESTART_LIMIT = 5
RESTART_WINDOW_S = 300.0
# Stopping: the grace is the retention run's limit (core.services.retention: it works up to
# RETENTION_RUN_SECONDS, default 120, at most 600, then ends its batch) plus this margin.
STOP_MARGIN_S = 30.0
STOP_GRACE_MAX_S = 3600.0
STOP_NOTICE_S = 3.0  # say who is still finishing after this long
_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
_COLORS = ["36", "33", "32", "35", "34", "31"]

USAGE = """\
usage: ./run <command> [args]

  serve           start RideChain (embedded PostgreSQL/Redis unless DATABASE_URL/REDIS_URL
                  are set), migrate + seed, then web and worker from the Procfile
  test [args]     run the test suite (pytest args are passed through)
  migrate         apply database migrations (python -m core.cli migrate)
  seed            load the demo data (python -m core.cli seed)
  worker          run only the RQ worker
  add-operator, remove-operator, sign-out-person, add-point, rate-card, add-partner,
  set-payout-account, clear-payout-account, set-home-point, close-point, move-point,
  rename-point, erase-recipient, retention, settle-leg [args]
                  production set-up, a recipient's erasure, the retention job and one
                  leg settled by hand (python -m core.cli <command>; README: Setting up
                  production, Keeping and erasing personal data, Money); --help on each
                  says its arguments
  lint [args]     ruff check . (args are passed to ruff), then mypy on core/
  chat [args]     chat with a running `./run serve` as a WhatsApp customer (signed webhooks;
                  /loc <lat> <lng> shares a location; --phone +91... picks your number)
  call [args]     phone a running `./run serve` as a keypad caller (signed voice webhooks;
                  type keys, Enter alone = silence, /hangup; --phone +91... picks your number)
  prompts         render the IVR's missing prompt audio with gTTS (needs internet)
  bench [--quick] run the benchmarks (not part of test); tables on screen, JSON in
                  bench/results/
"""


# Commands that are core.cli's own, run with the same service URLs as `./run serve`.
CLI_COMMANDS = frozenset({"migrate", "seed", "worker", "retention", "add-operator",
                          "remove-operator", "sign-out-person", "add-point", "rate-card",
                          "add-partner", "set-payout-account", "clear-payout-account",
                          "set-home-point", "close-point", "move-point",
                          "rename-point", "erase-recipient", "settle-leg"})


class Interrupted(Exception):
    """SIGINT / SIGTERM arrived while starting up."""


def scale(processes: dict[str, str]) -> dict[str, str]:
    """Run WORKER_PROCESSES copies (default 2) of the `worker` type, as `worker.1`, ...

    RQ workers run one job at a time and spend most of it waiting on PostgreSQL, Twilio
    and Redis; two of them keep a second core busy (on a platform: `ps:scale worker=N`).
    """
    raw = os.environ.get("WORKER_PROCESSES", "").strip() or "2"
    if not (raw.isascii() and raw.isdigit() and int(raw) > 0):
        # Not a silent 2: an operator who wrote 0 or "lots" meant something else.
        raise ValueError(f"WORKER_PROCESSES must be a whole number >= 1, got {raw!r}")
    count = int(raw)
    if "worker" not in processes or count == 1:
        return processes
    scaled: dict[str, str] = {}
    for name, command in processes.items():
        if name == "worker":
            scaled.update({f"worker.{i}": command for i in range(1, count + 1)})
        else:
            scaled[name] = command
    return scaled


def default_stop_grace() -> float:
    """The retention run's limit (RETENTION_RUN_SECONDS as the service reads it, 120 s when
    unset; a bad value is the release's to refuse) plus STOP_MARGIN_S."""
    raw = os.environ.get("RETENTION_RUN_SECONDS", "").strip()
    run_s = int(raw) if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 600 else 120
    return run_s + STOP_MARGIN_S


def stop_grace() -> float:
    """Seconds a stop waits for the processes after SIGTERM (STOP_GRACE_S), then SIGKILL."""
    raw = os.environ.get("STOP_GRACE_S", "").strip()
    if not raw:
        return default_stop_grace()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= STOP_GRACE_MAX_S):
        # Not a silent default: 0 or "long" meant something else.
        raise ValueError(f"STOP_GRACE_S must be a number of seconds above 0 and at most "
                         f"{STOP_GRACE_MAX_S:.0f}, got {raw!r}")
    return value


def parse_procfile(path: Path) -> dict[str, str]:
    """Process types of a Heroku-style Procfile, in file order (`name: command` lines)."""
    processes: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _PROCFILE_LINE.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: expected `name: command`, got {raw!r}")
        processes[match.group(1)] = match.group(2)
    return processes


class Output:
    """Writes lines as `name | text`, padded and coloured per name, one line at a time."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        # Re-entrant: a signal handler runs on the main thread and prints ("SIGHUP received,
        # stopping"); if it lands while that thread is inside line(), a plain Lock would
        # wait for itself forever and the supervisor would never stop.
        self._lock = threading.RLock()
        self._width = max([len(n) for n in names] + [len("system")])
        self._tty = sys.stdout.isatty()
        self._colors: dict[str, str] = {}
        self._palette = itertools.cycle(_COLORS)

    def line(self, name: str, text: str) -> None:
        prefix = f"{time.strftime('%H:%M:%S')} {name.ljust(self._width)} |"
        if self._tty:
            color = self._colors.setdefault(name, next(self._palette))
            prefix = f"\033[{color}m{prefix}\033[0m"
        with self._lock:
            try:
                sys.stdout.write(f"{prefix} {text}\n")
                sys.stdout.flush()
            except OSError:  # the terminal is gone (a hang-up): stopping must go on
                pass

    def system(self, text: str) -> None:
        self.line("system", text)


@dataclass
class Child:
    """One Procfile process running in its own process group, its output pumped to Output."""

    name: str
    command: str
    process: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict, repr=False)  # to start it again
    pump: threading.Thread = field(init=False)

    @classmethod
    def start(cls, name: str, command: str, env: dict[str, str], output: Output) -> Child:
        process = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=REPO_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        child = cls(name, command, process, env)
        child.pump = threading.Thread(target=child._pump, args=(output,), daemon=True)
        child.pump.start()
        return child

    def _pump(self, output: Output) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            output.line(self.name, raw.decode("utf-8", "replace").rstrip("\r\n"))

    def poll(self) -> int | None:
        return self.process.poll()

    def terminate(self) -> None:
        """SIGTERM the child's whole group (gunicorn's workers, sh and what it started)."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def group_alive(self) -> bool:
        if self.process.poll() is None:
            return True
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True


def child_env(services: Services) -> dict[str, str]:
    """The environment of every child: ours, the service URLs, PORT, DATA_DIR, venv PATH."""
    env = dict(os.environ)
    env.update(services.env)
    env.setdefault("PORT", "8000")
    if env.get("APP_ENV", "sandbox").strip().lower() == "sandbox" and not env.get("BIND_HOST"):
        # The sandbox's outbox (/sandbox/outbox) shows every sign-in code: this machine
        # only, unless BIND_HOST says otherwise. Production keeps the Procfile's 0.0.0.0.
        env["BIND_HOST"] = "127.0.0.1"
    env.setdefault("DATA_DIR", str(embedded.data_dir()))
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    if "GUNICORN_CMD_ARGS" not in env:
        # gunicorn's control socket defaults to ~/.gunicorn/gunicorn.ctl: a second RideChain
        # (another data folder, the CI smoke test) would take it over and delete it.
        ctl = Path(env["DATA_DIR"]) / "gunicorn.ctl"
        env["GUNICORN_CMD_ARGS"] = (
            f"--control-socket {shlex.quote(str(ctl))}"
            if len(str(ctl)) <= embedded.MAX_SOCKET_PATH
            else "--no-control-socket"
        )
    return env


def describe_exit(code: int) -> str:
    """'exit code 3' or 'killed by SIGKILL' for a Popen return code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def web_address(bind_host: str) -> str:
    """Where this machine reaches the web gunicorn binds to BIND_HOST, as a URL's host:
    the address itself ("10.0.0.5", "[fd00::5]"), or the loopback one for every address
    (unset, 0.0.0.0, [::])."""
    host = bind_host.strip()
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "[::]":
        return "[::1]"
    return host


def _answers(port: int, host: str = "127.0.0.1") -> bool:
    """True once something answers HTTP on host:port (any status; an IPv6 host in
    brackets, as a URL writes it)."""
    conn = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _unanswered(services: Services) -> list[str]:
    """The servers serve's processes need that run elsewhere (DATABASE_URL, REDIS_URL; not
    the embedded ones, watched as processes) and do not take a connection now. A server
    named by a socket path is not checked."""
    away = []
    for name, key, own, default_port in (("PostgreSQL", "DATABASE_URL", services.postgres, 5432),
                                          ("Redis", "REDIS_URL", services.redis, 6379)):
        url = services.env.get(key) or ""
        if own is not None or not url:
            continue
        parts = urlsplit(url)
        try:
            host, port = parts.hostname, parts.port or default_port
        except ValueError:  # a port that is not a number: the process says so itself
            continue
        if not host:
            continue
        try:
            socket.create_connection((host, port), timeout=1.0).close()
        except OSError:
            away.append(f"{name} at {host}:{port}")
    return away


class Server:
    """`./run serve`: the supervisor's state machine (starting -> running -> stopping)."""

    def __init__(self, procfile: Path) -> None:
        self.procfile = procfile
        self.children: list[Child] = []
        self.stop_requested = False
        # While starting up, a signal aborts the current step (raise Interrupted); later it
        # only sets stop_requested, which the watch loop and the shutdown code look at.
        self.raise_on_signal = True
        self.signals = 0
        self.output = Output()
        self.restart_delay_s = RESTART_DELAY_S
        self.restart_max_delay_s = RESTART_MAX_DELAY_S
        self.restart_limit = RESTART_LIMIT
        self.restart_window_s = RESTART_WINDOW_S
        self._crashes: dict[str, list[float]] = {}  # name -> monotonic times of its crashes
        self._away_crashes: dict[str, list[float]] = {}  # the same, while a server was away
        self._restart_at: dict[str, float] = {}  # name -> when to start it again
        try:
            self.stop_grace_s = stop_grace()
        except ValueError:  # run() refuses it before starting anything
            self.stop_grace_s = default_stop_grace()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals += 1
        if self.signals == 1:
            self.output.system(f"{signal.Signals(signum).name} received, stopping")
        elif self.children:
            self.output.system("second signal: killing the processes now")
            for child in self.children:
                child.kill()
        self.stop_requested = True
        if self.raise_on_signal:
            raise Interrupted

    def run(self) -> int:
        """Serve until asked to stop (exit 0), or until a process keeps crashing or the
        embedded PostgreSQL / Redis dies (exit 1)."""
        try:
            processes = parse_procfile(self.procfile)
        except (OSError, ValueError) as err:
            print(f"./run serve: cannot read the Procfile: {err}", file=sys.stderr)
            return 1
        try:
            served = scale({n: c for n, c in processes.items() if n not in NOT_SERVED})
            self.stop_grace_s = stop_grace()
        except ValueError as err:
            print(f"./run serve: {err}", file=sys.stderr)
            return 1
        if os.environ.get("APP_ENV", "sandbox").strip().lower() == "sandbox":
            # What Twilio and Razorpay do on their side (status callbacks, webhooks) runs
            # in its own worker, never in the service's.
            served["sandbox"] = SANDBOX_WORKER
        if not served:
            print(f"./run serve: {self.procfile} has no process to serve", file=sys.stderr)
            return 1
        self.output = Output([*processes, *served])
        embedded.log = self.output.system
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        # A closed terminal: the children are in process groups of their own, so they
        # would outlive a supervisor killed by SIGHUP, holding the port.
        signal.signal(signal.SIGHUP, self._on_signal)
        try:
            services = embedded.start_services("serve", exclusive=True)
        except embedded.AlreadyRunning as err:
            print(str(err), file=sys.stderr)
            return 1
        except Interrupted:
            return 0
        except EmbeddedError as err:
            print(f"./run serve: {err}", file=sys.stderr)
            return 1
        try:
            return self._serve(services, processes, served)
        except Interrupted:
            return 0
        finally:
            self.raise_on_signal = False  # shutdown is under way: signals only count now
            self._stop_children()
            services.stop()
            self.output.system("stopped")

    def _serve(self, services: Services, processes: dict[str, str], served: dict[str, str]) -> int:
        env = child_env(services)
        if "release" in processes:
            self.output.system("running release (migrate + seed)")
            release = Child.start("release", processes["release"], env, self.output)
            self.children.append(release)
            code = release.process.wait()
            release.pump.join(timeout=2)
            self.children.remove(release)
            if code != 0:
                self.output.system(f"release failed ({describe_exit(code)}); not starting")
                return 1
        for name, command in served.items():
            child = Child.start(name, command, env, self.output)
            self.children.append(child)
            self.output.system(f"started {name} (pid {child.process.pid})")
        services.record_children([embedded.record(c.process, c.name) for c in self.children])
        self.raise_on_signal = False
        if self.stop_requested:  # a signal that landed between two statements above
            return 0
        return self._watch(services, int(env["PORT"]), "web" in served,
                           web_address(env.get("BIND_HOST", "")))

    def _watch(self, services: Services, port: int, has_web: bool,
               host: str = "127.0.0.1") -> int:
        """Watch the children and the embedded servers; say where the web serves once it
        answers there (``host``: web_address of BIND_HOST: the web listens nowhere else)."""
        announced = not has_web
        app_env = os.environ.get("APP_ENV", "sandbox")
        while not self.stop_requested:
            # First: a worker that lost its Redis dies too, and is not the news.
            redis = services.redis
            if redis is not None and redis.process is not None and redis.process.poll() is not None:
                self.output.system(f"embedded Redis died (see {redis.log_path}); stopping")
                return 1
            if services.postgres is not None and not services.postgres.alive():
                self.output.system(
                    f"embedded PostgreSQL died (see {services.postgres.pgdata}/log); stopping")
                return 1
            now = time.monotonic()
            away: list[str] | None = None  # asked once a round, at the first crash
            for child in self.children:
                if child.name in self._restart_at:
                    continue  # dead, waiting for its pause to end
                code = child.poll()
                if code is None:
                    continue
                if away is None:
                    away = _unanswered(services)
                if away:
                    # Not a process that cannot start: one whose server is away (a Redis
                    # restarting, a database failing over). Such a crash is not counted
                    # against the limit (once the server is back, one more crash must not
                    # stop the web too); serve waits for the server instead, trying again
                    # after a pause that grows to the longest.
                    away_delay = self._away_delay(child.name, now)
                    self.output.system(
                        f"{child.name} stopped unexpectedly ({describe_exit(code)}) while "
                        f"{' and '.join(away)} does not answer; starting it again in "
                        f"{away_delay:g} s (serve waits for it)")
                    child.terminate()
                    self._restart_at[child.name] = now + away_delay
                    continue
                delay = self._crash_delay(child.name, now)
                if delay is None:
                    self.output.system(
                        f"{child.name} crashed {len(self._crashes[child.name])} times in "
                        f"{self.restart_window_s:g} s (last: {describe_exit(code)}); "
                        "giving up, stopping all")
                    return 1
                self.output.system(
                    f"{child.name} stopped unexpectedly ({describe_exit(code)}); starting it "
                    f"again in {delay:g} s")
                child.terminate()  # what is left of its group (gunicorn's workers)
                self._restart_at[child.name] = now + delay
            self._restart_due(services, now)
            if not announced and _answers(port, host):
                announced = True
                print(
                    f"RideChain is serving at http://{host}:{port} (APP_ENV={app_env})",
                    flush=True,
                )
            pause = 0.25 if announced else 0.5
            if self._restart_at:
                pause = min(pause, max(0.01, min(self._restart_at.values()) - time.monotonic()))
            time.sleep(pause)
        return 0

    def _crash_delay(self, name: str, now: float) -> float | None:
        """Count a crash of `name` at `now` (monotonic seconds): the pause before starting
        it again, doubling with each crash within the window, or None to give up."""
        recent = [t for t in self._crashes.get(name, []) if now - t < self.restart_window_s]
        recent.append(now)
        self._crashes[name] = recent
        if len(recent) >= self.restart_limit:
            return None
        return min(self.restart_max_delay_s, self.restart_delay_s * 2 ** (len(recent) - 1))

    def _away_delay(self, name: str, now: float) -> float:
        """The pause before starting `name` again after a crash at `now` while a server it
        needs is away: doubling with each such crash within the window, as for any crash,
        up to the longest; never giving up, and not counted against the limit."""
        recent = [t for t in self._away_crashes.get(name, []) if now - t < self.restart_window_s]
        recent.append(now)
        self._away_crashes[name] = recent
        return min(self.restart_max_delay_s, self.restart_delay_s * 2 ** (len(recent) - 1))

    def _restart_due(self, services: Services, now: float) -> None:
        """Start again each crashed child whose pause has ended."""
        for name, due in list(self._restart_at.items()):
            if now < due or self.stop_requested:
                continue
            index, old = next((i, c) for i, c in enumerate(self.children) if c.name == name)
            old.kill()  # a member of its group that ignored the SIGTERM
            old.process.wait()
            old.pump.join(timeout=1)
            child = Child.start(name, old.command, old.env, self.output)
            self.children[index] = child
            del self._restart_at[name]
            services.record_children([embedded.record(child.process, name)])
            self.output.system(f"started {name} again (pid {child.process.pid})")

    def _stop_children(self) -> None:
        """One SIGTERM to every child group, SIGKILL to those still alive after STOP_GRACE_S.

        One only: an RQ worker takes the first as "finish the job, then exit" (warm
        shutdown) and a second as "kill the job now" (cold)."""
        for child in self.children:
            child.terminate()
        grace = self.stop_grace_s
        begun = time.monotonic()
        deadline = begun + grace
        told = False
        while any(c.group_alive() for c in self.children) and time.monotonic() < deadline:
            if not told and time.monotonic() - begun >= STOP_NOTICE_S:
                told = True
                names = ", ".join(c.name for c in self.children if c.group_alive())
                self.output.system(
                    f"waiting for {names} to finish (a job under way?): up to {grace:g} s "
                    "in all (STOP_GRACE_S); Ctrl-C again stops them now")
            time.sleep(0.1)
        for child in self.children:
            if child.group_alive():
                self.output.system(f"{child.name} did not stop in {grace:g} s (STOP_GRACE_S): "
                                   "SIGKILL")
                child.kill()
        for child in self.children:
            child.process.wait()
            child.pump.join(timeout=2)
            self.output.system(f"{child.name} stopped ({describe_exit(child.process.returncode)})")


def run_foreground(command: str, argv: list[str]) -> int:
    """Run argv with the service URLs exported; return its exit code; stop what we started.

    The child stays in our process group so that it gets the terminal's Ctrl-C itself
    (pytest prints its summary); we ignore SIGINT and forward SIGTERM.
    """

    def interrupted(_signum: int, _frame: object) -> None:
        raise Interrupted

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    try:
        with services_for(command) as services:
            env = child_env(services)
            process = subprocess.Popen(argv, cwd=REPO_DIR, env=env)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, lambda *_: process.terminate())
            code = process.wait()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
            return code
    except Interrupted:
        return 130
    except EmbeddedError as err:
        print(f"./run {command}: {err}", file=sys.stderr)
        return 1


def lint(python: str, ruff_args: list[str]) -> int:
    """ruff, then mypy (its files and settings are in pyproject.toml); both must pass.

    mypy runs even when ruff fails, so that one run shows every problem.
    """
    ruff = subprocess.call([python, "-m", "ruff", "check", ".", *ruff_args], cwd=REPO_DIR)
    mypy = subprocess.call([python, "-m", "mypy"], cwd=REPO_DIR)
    return ruff or mypy


def main(args: list[str]) -> int:
    """Dispatch `./run <command> [args]` (the venv is ready by now)."""
    if not args or args[0] in {"-h", "--help", "help"}:
        print(USAGE, end="", file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    python = sys.executable
    if command == "serve":
        return Server(REPO_DIR / "Procfile").run()
    if command == "test":
        return run_foreground("test", [python, "-m", "pytest", *rest])
    if command in CLI_COMMANDS:
        return run_foreground(command, [python, "-m", "core.cli", command, *rest])
    if command == "chat":
        return subprocess.call([python, "-m", "ops.chat", *rest], cwd=REPO_DIR)
    if command == "call":
        return subprocess.call([python, "-m", "ops.call", *rest], cwd=REPO_DIR)
    if command == "prompts":
        # Same settings and prompt cache (DATA_DIR/prompts) as `./run serve`.
        return run_foreground("prompts", [python, "-m", "ivr_flows.prompts", *rest])
    if command == "lint":
        return lint(python, rest)
    if command == "bench":
        # Its own database (<name>_bench) and Redis db on the same servers as `test`.
        return run_foreground("bench", [python, "-m", "bench", *rest])
    print(f"./run: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

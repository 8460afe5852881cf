"""Child processes of ``flixlake demo``: start with a log file, wait until ready, stop by PID.

Every child runs in a session (so a process group) of its own: a terminal's Ctrl-C reaches only
the supervisor, which then stops the children last-started-first. Stopping one child sends its
stop signal where it ends the child cleanly (:data:`SignalTo`): to its whole process group as a
terminal's Ctrl-C would, to the child alone when it stops its own children, or to the Python
driver under spark-submit's JVM. Then the supervisor waits, SIGKILLs whatever is left of the
group, and terminates, then kills, descendants that left the group (Airflow runs each task's
command in a session of its own) and outlived the child.

>>> with Supervisor(Path("var/demo/logs")) as supervisor:  # doctest: +SKIP
...     web = supervisor.start("web", ["python", "-m", "http.server", "8000"])
...     supervisor.wait_ready(web, lambda: not port_free(8000), timeout=10)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import psutil

_LOG_TAIL_CHARS = 3000
_POLL_SECONDS = 0.1

SignalTo = Literal["group", "child", "python"]
"""Who gets a child's stop signal. ``group``: every process in its group, like a terminal's
Ctrl-C. ``child``: the child alone, for one that stops its own children (``airflow standalone``,
whose scheduler waits forever for idle workers when the group signal reaches it twice; uvicorn,
which flushes its telemetry subprocess on the way out). ``python``: the oldest Python process
below the child, i.e. the driver under spark-submit's JVM: it stops its streaming queries
cleanly and the JVM follows, where a JVM hearing Ctrl-C too tears Spark down under the driver."""


class ChildFailedError(RuntimeError):
    """A child exited early or did not get ready in time; the message ends with its log tail."""


@dataclass
class Child:
    """A process the supervisor started; its stdout and stderr go to ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: signal.Signals
    signal_to: SignalTo
    started_at: float  # time.monotonic()
    stop_timeout: float | None = None  # seconds it may take to stop; None: the supervisor's

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        """None while the child runs."""
        return self.process.poll()

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        return log_tail(self.log_path, chars)


@dataclass(frozen=True)
class Stopped:
    """How a child ended: exit code, seconds the stop took, whether anything needed SIGKILL."""

    name: str
    pid: int
    exit_code: int
    seconds: float
    killed: bool  # the child, its group or a stray descendant got SIGKILL
    strays: int  # descendants outside the group that were still alive after the child ended


class Supervisor:
    """Starts children and stops them all, in reverse start order, when the ``with`` block ends."""

    def __init__(
        self,
        log_dir: Path,
        stop_timeout: float = 30.0,
        on_stop: Callable[[Stopped], None] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.stop_timeout = stop_timeout
        self.on_stop = on_stop
        self.children: list[Child] = []

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: signal.Signals = signal.SIGINT,
        signal_to: SignalTo = "group",
        stop_timeout: float | None = None,
    ) -> Child:
        """Start ``command`` in a new session, output to ``<log_dir>/<name>.log`` (truncated)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                list(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_default_stop_signals,
            )
        child = Child(
            name, process, log_path, stop_signal, signal_to, time.monotonic(), stop_timeout
        )
        self.children.append(child)
        return child

    def wait_ready(
        self,
        child: Child,
        check: Callable[[], bool],
        timeout: float,
        interval: float = 0.5,
        what: str = "ready",
    ) -> float:
        """Poll ``check`` (False while not ready) until True; returns the seconds since start.

        Raises ChildFailedError, with the log tail, if the child exits or ``timeout`` passes.
        """
        deadline = time.monotonic() + timeout
        while True:
            code = child.exit_code()
            if code is not None:
                raise ChildFailedError(
                    f"{child.name} exited with code {code} before it was {what}; "
                    f"log {child.log_path}:\n{child.log_tail()}"
                )
            if check():
                return time.monotonic() - child.started_at
            if time.monotonic() >= deadline:
                raise ChildFailedError(
                    f"{child.name} not {what} after {timeout:.0f}s; "
                    f"log {child.log_path}:\n{child.log_tail()}"
                )
            time.sleep(interval)

    def exited(self) -> list[Child]:
        """Children that have ended on their own (nothing has stopped them yet)."""
        return [c for c in self.children if c.exit_code() is not None]

    def stop_all(self) -> list[Stopped]:
        """Stop every child, the last started first; each result also goes to ``on_stop``.

        A child whose stop fails gets its group SIGKILLed; a failing ``on_stop`` (say, the
        terminal is gone) is ignored: either way the remaining children are still stopped.
        """
        results = []
        while self.children:
            child = self.children.pop()
            try:
                result = self.stop(child)
            except Exception:
                _signal_group(child.pid, signal.SIGKILL)
                continue
            if self.on_stop is not None:
                with contextlib.suppress(Exception):
                    self.on_stop(result)
            results.append(result)
        return results

    def stop(self, child: Child) -> Stopped:
        """Stop signal as ``signal_to`` says, wait, SIGKILL what is left, sweep strays."""
        started = time.monotonic()
        timeout = child.stop_timeout or self.stop_timeout
        descendants = _descendants(child.pid)
        killed = False
        if child.exit_code() is None:
            _send_stop_signal(child, descendants)
            try:
                child.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(child.pid, signal.SIGKILL)
                child.process.wait()
                killed = True
        # the leader is gone; the rest of its group gets a moment to follow it
        if not _wait_until(lambda: not _group_members(child.pid), timeout / 3):
            _signal_group(child.pid, signal.SIGKILL)
            _wait_until(lambda: not _group_members(child.pid), timeout / 3)
            killed = True
        strays = [p for p in descendants if _alive(p)]
        for stray in strays:
            with contextlib.suppress(psutil.NoSuchProcess):  # it ended in the meantime
                stray.terminate()
        _, lingering = psutil.wait_procs(strays, timeout=timeout / 3)
        for stray in lingering:
            with contextlib.suppress(psutil.NoSuchProcess):
                stray.kill()
            killed = True
        psutil.wait_procs(lingering, timeout=timeout / 3)
        return Stopped(
            name=child.name,
            pid=child.pid,
            exit_code=int(child.process.returncode),
            seconds=time.monotonic() - started,
            killed=killed,
            strays=len(strays),
        )


def log_tail(path: Path, chars: int = _LOG_TAIL_CHARS) -> str:
    """The end of a log file ("" while it does not exist)."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - chars))
            return log.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _default_stop_signals() -> None:
    """In the child before exec: a shell that started us in the background ignores SIGINT, and
    ignored signals survive exec; the child must still stop on its stop signal."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def port_free(port: int, host: str = "0.0.0.0") -> bool:
    """True when nothing listens on ``port`` (any address by default), so a server can bind it.

    SO_REUSEADDR as servers set it: connections of a server that just stopped do not count.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _is_python(process: psutil.Process) -> bool:
    try:
        return process.name().startswith("python")
    except psutil.Error:  # it ended (or became inaccessible) while we looked
        return False


def _group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and _alive(process):
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def _send_stop_signal(child: Child, descendants: list[psutil.Process]) -> None:
    if child.signal_to == "child":
        child.process.send_signal(child.stop_signal)
        return
    if child.signal_to == "python":
        pythons = [p for p in descendants if _alive(p) and _is_python(p)]
        if pythons:  # the driver starts long before the Python workers Spark forks later
            with contextlib.suppress(psutil.NoSuchProcess):
                min(pythons, key=lambda p: p.create_time()).send_signal(child.stop_signal)
                return
    _signal_group(child.pid, child.stop_signal)  # "group", or no Python process (yet)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(pgid, sig)


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)
    return True

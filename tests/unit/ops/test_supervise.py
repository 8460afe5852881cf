"""The demo's supervisor on cheap child processes: logs, readiness, stop order, SIGKILL, groups."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import psutil
import pytest

from flixlake.ops.supervise import ChildFailedError, SignalTo, Stopped, Supervisor, port_free

# A child that marks itself ready once its handlers are in place, then sleeps. On its stop
# signal it appends its name to ORDER_FILE and exits 0 (or ignores the signal with IGNORE).
SLEEPER = """
import os, signal, sys, time
name, order_file, ignore = sys.argv[1], sys.argv[2], sys.argv[3] == "ignore"
def stop(signum, frame):
    with open(order_file, "a") as f:
        f.write(name + "\\n")
    sys.exit(0)
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, signal.SIG_IGN if ignore else stop)
print(f"{name} up", flush=True)
open(order_file + "." + name + ".ready", "w").close()
while True:
    time.sleep(0.05)
"""

# A child that starts a grandchild (in its own group, or in a new session with "detach"), writes
# the grandchild's pid to a file, and exits 0 on SIGTERM, leaving the grandchild behind.
PARENT = """
import signal, subprocess, sys, time
pid_file, mode = sys.argv[1], sys.argv[2]
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
grandchild = subprocess.Popen([sys.executable, "-c", code], start_new_session=mode == "detach")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(0.3)  # let the grandchild install its handler
with open(pid_file, "w") as f:
    f.write(str(grandchild.pid))
while True:
    time.sleep(0.05)
"""


def _sleeper(supervisor: Supervisor, tmp_path: Path, name: str, ignore: bool = False) -> None:
    order = tmp_path / "order"
    child = supervisor.start(
        name,
        [sys.executable, "-c", SLEEPER, name, str(order), "ignore" if ignore else "obey"],
        stop_signal=signal.SIGTERM,
    )
    ready = tmp_path / f"order.{name}.ready"
    supervisor.wait_ready(child, ready.exists, timeout=20, interval=0.05)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_wait_ready_returns_once_the_check_passes_and_output_goes_to_the_log(
    tmp_path: Path,
) -> None:
    with Supervisor(tmp_path / "logs", stop_timeout=3) as supervisor:
        _sleeper(supervisor, tmp_path, "alpha")
        (alpha,) = supervisor.children
        assert alpha.exit_code() is None
        assert alpha.log_path == tmp_path / "logs" / "alpha.log"
        assert "alpha up" in alpha.log_tail()
        assert supervisor.exited() == []


def test_wait_ready_fails_with_the_exit_code_and_log_tail_when_the_child_dies(
    tmp_path: Path,
) -> None:
    with Supervisor(tmp_path / "logs", stop_timeout=3) as supervisor:
        child = supervisor.start(
            "crasher", [sys.executable, "-c", "print('port 9092 in use'); raise SystemExit(3)"]
        )
        with pytest.raises(ChildFailedError, match=r"crasher exited with code 3") as failure:
            supervisor.wait_ready(child, lambda: False, timeout=20, interval=0.05)
        assert "port 9092 in use" in str(failure.value)
        assert supervisor.exited() == [child]


def test_wait_ready_times_out_with_a_clear_message(tmp_path: Path) -> None:
    with Supervisor(tmp_path / "logs", stop_timeout=3) as supervisor:
        child = supervisor.start("slow", [sys.executable, "-c", "import time; time.sleep(30)"])
        with pytest.raises(ChildFailedError, match=r"slow not healthy after 0s"):
            supervisor.wait_ready(child, lambda: False, timeout=0.3, interval=0.05, what="healthy")


def test_children_stop_in_reverse_start_order_and_each_stop_is_reported(tmp_path: Path) -> None:
    reported: list[Stopped] = []
    with Supervisor(tmp_path / "logs", stop_timeout=5, on_stop=reported.append) as supervisor:
        for name in ("broker", "stream", "service"):
            _sleeper(supervisor, tmp_path, name)
    assert (tmp_path / "order").read_text().split() == ["service", "stream", "broker"]
    assert [(r.name, r.exit_code, r.killed) for r in reported] == [
        ("service", 0, False),
        ("stream", 0, False),
        ("broker", 0, False),
    ]
    assert supervisor.children == []


def test_a_failing_stop_report_does_not_leave_the_other_children_running(
    tmp_path: Path,
) -> None:
    def report(result: Stopped) -> None:
        raise OSError(5, "Input/output error")  # as printing to a closed terminal does

    supervisor = Supervisor(tmp_path / "logs", stop_timeout=5, on_stop=report)
    for name in ("first", "second"):
        _sleeper(supervisor, tmp_path, name)
    pids = [child.pid for child in supervisor.children]
    stopped = supervisor.stop_all()
    assert [r.name for r in stopped] == ["second", "first"]
    assert not any(_alive(pid) for pid in pids)


def test_a_child_that_ignores_its_stop_signal_is_killed(tmp_path: Path) -> None:
    with Supervisor(tmp_path / "logs", stop_timeout=1) as supervisor:
        _sleeper(supervisor, tmp_path, "stubborn", ignore=True)
        (child,) = supervisor.children
        result = supervisor.stop_all()
    assert [(r.name, r.exit_code, r.killed) for r in result] == [
        ("stubborn", -signal.SIGKILL, True)
    ]
    assert not _alive(child.pid)


@pytest.mark.parametrize(("mode", "strays"), [("group", 0), ("detach", 1)])
def test_grandchildren_die_with_the_child_in_or_out_of_its_group(
    tmp_path: Path, mode: str, strays: int
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    with Supervisor(tmp_path / "logs", stop_timeout=1.5) as supervisor:
        child = supervisor.start(
            "parent",
            [sys.executable, "-c", PARENT, str(pid_file), mode],
            stop_signal=signal.SIGTERM,
        )
        supervisor.wait_ready(child, pid_file.exists, timeout=20, interval=0.05)
        grandchild = int(pid_file.read_text())
        assert _alive(grandchild)
        (result,) = supervisor.stop_all()
    assert result.exit_code == 0  # the parent itself obeyed SIGTERM
    assert result.killed  # the grandchild ignored it and needed SIGKILL
    assert result.strays == strays
    assert not _alive(grandchild)


def test_children_stop_on_sigint_even_when_the_supervisor_ignores_it(tmp_path: Path) -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under `make demo &`
    try:
        with Supervisor(tmp_path / "logs", stop_timeout=5) as supervisor:
            child = supervisor.start(
                "napper",
                [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
            )
            supervisor.wait_ready(
                child, lambda: "up" in child.log_tail(), timeout=20, interval=0.05
            )
            (result,) = supervisor.stop_all()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (result.exit_code, result.killed) == (-signal.SIGINT, False)


# On SIGINT or SIGTERM: append which signal to ORDER_FILE, exit 0.
NOTE_SIGNAL = """
import signal, sys, time
who, order_file = sys.argv[1], sys.argv[2]
def note(signum, frame):
    with open(order_file, "a") as f:
        f.write(f"{who} {signal.Signals(signum).name}\\n")
    sys.exit(0)
signal.signal(signal.SIGINT, note)
signal.signal(signal.SIGTERM, note)
open(order_file + "." + who + ".ready", "w").close()
while True:
    time.sleep(0.05)
"""

# Like ``airflow standalone``: on SIGINT, note it, SIGTERM its own child, wait for it, exit 0.
SELF_STOPPING = """
import signal, subprocess, sys, time
order_file, note_signal = sys.argv[1], sys.argv[2]
def stop(signum, frame):
    with open(order_file, "a") as f:
        f.write(f"parent {signal.Signals(signum).name}\\n")
    grandchild.terminate()
    grandchild.wait()
    sys.exit(0)
signal.signal(signal.SIGINT, stop)
grandchild = subprocess.Popen([sys.executable, "-c", note_signal, "grandchild", order_file])
while True:
    time.sleep(0.05)
"""


@pytest.mark.parametrize(
    ("signal_to", "grandchild_heard"),
    [("child", "grandchild SIGTERM"), ("group", "grandchild SIGINT")],  # its parent's, or ours
)
def test_the_stop_signal_goes_to_the_group_or_to_the_child_alone(
    tmp_path: Path, signal_to: SignalTo, grandchild_heard: str
) -> None:
    order = tmp_path / "order"
    with Supervisor(tmp_path / "logs", stop_timeout=5) as supervisor:
        child = supervisor.start(
            "standalone",
            [sys.executable, "-c", SELF_STOPPING, str(order), NOTE_SIGNAL],
            signal_to=signal_to,
        )
        ready = tmp_path / "order.grandchild.ready"
        supervisor.wait_ready(child, ready.exists, timeout=20, interval=0.05)
        (result,) = supervisor.stop_all()
    assert (result.exit_code, result.killed) == (0, False)
    heard = order.read_text().splitlines()
    assert "parent SIGINT" in heard
    assert next(line for line in heard if line.startswith("grandchild")) == grandchild_heard


def test_the_stop_signal_can_go_to_the_python_driver_below_a_launcher(tmp_path: Path) -> None:
    order = tmp_path / "order"
    launcher = '"$0" -c "$1" driver "$2" & wait'  # like spark-submit's JVM: ends with its driver
    with Supervisor(tmp_path / "logs", stop_timeout=5) as supervisor:
        child = supervisor.start(
            "spark-submit",
            ["sh", "-c", launcher, sys.executable, NOTE_SIGNAL, str(order)],
            signal_to="python",
        )
        ready = tmp_path / "order.driver.ready"
        supervisor.wait_ready(child, ready.exists, timeout=20, interval=0.05)
        (result,) = supervisor.stop_all()
    assert (result.exit_code, result.killed) == (0, False)
    assert order.read_text().splitlines() == ["driver SIGINT"]


def test_port_free_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port_free(port) is False
        assert port_free(port, host="127.0.0.1") is False
    assert port_free(port) is True

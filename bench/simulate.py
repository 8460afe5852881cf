"""Benchmark: CPU the simulator uses per line sent, when its users can and cannot fill the rate.

    .venv/bin/python bench/simulate.py
    .venv/bin/python bench/simulate.py --seconds 60 --baseline-src /tmp/main-src

Starts the embedded broker on a free loopback port, then runs ``flixlake simulate`` (the command a
user runs, with its defaults: 2,000 users, 500 movies, real-time minutes) for ``--seconds`` at
two rates: ``--rate 3000``, which that world cannot reach (user-limited: ~2,000 users each send
about one line a minute), and ``--rate 20``, which it can. It reads the process's CPU seconds
(user + system, psutil) and the lines it reports sent after Ctrl-C. A simulator that waits when
user-limited uses about the same CPU per line at both rates; one that polls burns a core.

``--baseline-src DIR``: also run both cases with ``PYTHONPATH=DIR`` (a checkout of another
revision's package, e.g. ``git archive main flixlake | tar -x -C DIR``), in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from flixlake.contract.kafka import free_port
from flixlake.ops.broker import running_broker

FLIXLAKE = Path(sys.executable).parent / "flixlake"


def machine() -> str:
    """Cores and load, so figures are read in context."""
    load = os.getloadavg()
    return (
        f"{platform.node()}: {os.cpu_count()} cpus, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def run_simulator(
    bootstrap: str, rate: float, seconds: float, src: str | None, home: Path
) -> dict[str, Any]:
    """``flixlake simulate`` until ``seconds`` after its first progress report, then Ctrl-C.

    CPU seconds and lines are counted between its first and last progress report, so start-up
    (imports, building the world) is left out.
    """
    env = {**os.environ, "FLIXLAKE_HOME": str(home), "FLIXLAKE_ENV": "local"}
    if src:
        env["PYTHONPATH"] = src
    command = [str(FLIXLAKE), "simulate", "--rate", str(rate), "--bootstrap-servers", bootstrap]
    samples: list[tuple[float, float, int]] = []  # (monotonic, cpu seconds, lines sent)
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.PIPE, text=True)
        ps = psutil.Process(proc.pid)
        assert proc.stderr is not None
        tail: list[str] = []

        def cpu() -> float:
            times = ps.cpu_times()
            return times.user + times.system

        for line in proc.stderr:
            tail = [*tail[-20:], line]
            found = re.search(r"sent ([\d,]+) lines", line)
            if found:
                samples.append((time.monotonic(), cpu(), int(found.group(1).replace(",", ""))))
                if samples[-1][0] - samples[0][0] >= seconds:
                    proc.send_signal(signal.SIGINT)
                    break
        rest = proc.communicate(timeout=120)[1]
        if proc.returncode != 0 or len(samples) < 2:
            raise RuntimeError(f"simulate failed ({proc.returncode}): {''.join(tail)}{rest}")
        out.seek(0)
        text = out.read().decode()
    summary = json.loads(text[text.index("{") :])
    (t0, cpu0, sent0), (t1, cpu1, sent1) = samples[0], samples[-1]
    return {
        "rate": rate,
        "seconds": t1 - t0,
        "cpu_s": cpu1 - cpu0,
        "sent": sent1 - sent0,
        "user_limited": summary["user_limited"],
        "wakeups": summary.get("wakeups"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--baseline-src", default=None, help="PYTHONPATH of a baseline revision")
    args = parser.parse_args()
    print(machine())
    sources: list[tuple[str, str | None]] = [("this revision", None)]
    if args.baseline_src:
        sources.insert(0, (f"baseline ({args.baseline_src})", args.baseline_src))
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_broker(
            free_port(), log_path=Path(tmp) / "broker.log", topic="movielog", partitions=4
        ) as broker,
    ):
        for label, src in sources:
            for rate in (3000.0, 20.0):
                row = run_simulator(broker.bootstrap, rate, args.seconds, src, Path(tmp))
                row["code"] = label
                rows.append(row)
                print(
                    f"{label:<40} --rate {rate:>6g}: {row['sent']:>7,} lines in "
                    f"{row['seconds']:.0f} s, {row['cpu_s']:6.2f} CPU s "
                    f"({100 * row['cpu_s'] / row['seconds']:5.1f} % of a core), "
                    f"{1000 * row['cpu_s'] / max(row['sent'], 1):7.2f} CPU ms per line, "
                    f"user-limited: {row['user_limited']}, wakeups: {row['wakeups']}"
                )
    print(machine())


if __name__ == "__main__":
    main()

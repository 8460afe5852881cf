"""Benchmark: the recommendation service on a 1,000,000-user batch view vs. a naive baseline.

Setup once (bench-only tools, not package dependencies)::

    apt-get install -y wrk
    .venv/bin/pip install flask gunicorn

Run::

    .venv/bin/python bench/serve.py                       # 1M users x top 50, 10 s per wrk run
    .venv/bin/python bench/serve.py --users 100000 --duration 5     # a quicker run

What it does, all in one temporary folder:

1. writes two synthetic batch views (``--users`` x ``--top`` rows each, 27,000 movie slugs,
   Zipf-skewed) into the real Delta table with :meth:`flixlake.lake.Lake.append`, a published
   ``models`` row for the first, ``speed_trending``, and ``speed_user_activity`` for 2 % of the
   users (so the merge path runs);
2. starts ``python -m flixlake.serving.app`` (uvicorn + uvloop + httptools, one process) twice: with
   telemetry shipped to a real embedded broker (tansu), and with telemetry off;
   then once more while the second model is published under wrk load (load + swap);
3. starts the baseline: Flask under gunicorn with 2 sync workers (``--preload``), answering from
   a Python dict of every user's top-20 list of strings, built from the same arrays;
4. for each: startup to the first personalised answer, then wrk at 8 and 32 connections over a
   user-id sequence with 10 % unknown users: throughput, p50/p99, non-2xx, and the memory of
   the process tree (RSS; PSS too, since forked gunicorn workers share pages);
5. prints the machine, the figures and the comparison table.

Targets (issue 4): >= 2x the baseline's throughput at 32 connections, p99 <= 5 ms at 8
connections, <= 600 MB RSS, first answer <= 30 s. On a shared machine the absolute numbers move a
lot between runs; the comparison is made in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa

from flixlake.contract.kafka import create_topic, free_port
from flixlake.lake.store import Lake
from flixlake.lake.tables import SPEED_TRENDING, SPEED_USER_ACTIVITY
from flixlake.ops.broker import start_broker, stop_broker
from flixlake.testing import record_published_model

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MODEL = "als-bench-0001"
NEXT_MODEL = "als-bench-0002"  # published during the swap run
N_MOVIES = 27_000
STEPS = np.array(
    [7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47], dtype=np.int64
)  # coprime to 27000

BASELINE_APP = """
import os
import numpy as np
from flask import Flask, Response

data = np.load(os.environ["BENCH_BASELINE"])
names = data["names"].tolist()
RECS = {
    user: [names[m] for m in row]
    for user, row in zip(data["users"].tolist(), data["items"].tolist())
}
POPULAR = ",".join(names[m] for m in data["popular"].tolist())
del data
app = Flask(__name__)


@app.route("/recommend/<int:user_id>")
def recommend(user_id):
    recs = RECS.get(user_id)
    return Response(",".join(recs) if recs is not None else POPULAR, mimetype="text/plain")
"""

WRK_SCRIPT = """
local counter = 0
local offset = 0
local span = {span}
local thread_id = 0
function setup(thread)
  thread:set("offset", thread_id * 104729)
  thread_id = thread_id + 1
end
request = function()
  counter = counter + 1
  local user = ((counter * 7919 + offset) % span) + 1
  return wrk.format("GET", "/recommend/" .. user)
end
"""


# -- the machine -----------------------------------------------------------------------------------
def machine_info() -> list[str]:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    mem = psutil.virtual_memory()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[
        0
    ]
    versions = []
    for package in ("uvicorn", "uvloop", "httptools", "prometheus_client", "flask", "gunicorn"):
        try:
            from importlib.metadata import version

            versions.append(f"{package} {version(package)}")
        except Exception:
            versions.append(f"{package} ?")
    return [
        f"{platform.node()}: {platform.machine()} {cpu}, {os.cpu_count()} cores, "
        f"{mem.total / 2**30:.0f} GiB RAM ({mem.available / 2**30:.0f} GiB available)",
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) at start",
        f"Python {platform.python_version()}, {wrk_version.strip()}",
        ", ".join(versions),
    ]


def scheduler_noise(seconds: float = 5.0) -> str:
    """How late a 0.5 ms sleep wakes up on this machine right now (the floor under any p99)."""
    lags = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        time.sleep(0.0005)
        lags.append(time.perf_counter() - started - 0.0005)
    lags.sort()
    p99, worst = lags[int(len(lags) * 0.99)] * 1e3, lags[-1] * 1e3
    return f"scheduler noise: a 0.5 ms sleep overshoots by p99 {p99:.2f} ms, max {worst:.1f} ms"


# -- the synthetic lake ----------------------------------------------------------------------------
def movie_names() -> np.ndarray:
    words = ["the", "last", "night", "city", "dark", "love", "star", "river", "king", "road"]
    return np.array(
        [
            f"{words[i % 10]}+{words[(i // 10) % 10]}+{words[(i // 100) % 10]}+{i}+{1950 + i % 70}"
            for i in range(N_MOVIES)
        ]
    )


def user_lists(first: int, count: int, top: int, rng: np.random.Generator) -> np.ndarray:
    """``count x top`` distinct movie indices per user (Zipf-skewed start, coprime stride)."""
    start = (rng.zipf(1.3, count) - 1) % N_MOVIES
    step = STEPS[rng.integers(0, len(STEPS), count)]
    return (start[:, None] + step[:, None] * np.arange(top)[None, :]) % N_MOVIES


def write_batch_view(lake: Lake, version: str, users: int, top: int, seed: int) -> np.ndarray:
    """One model's partition of ``batch_recommendations``; returns every user's top 20."""
    rng = np.random.default_rng(seed)
    dictionary = pa.array(movie_names())
    chunk = 100_000
    top20 = np.zeros((users, 20), dtype=np.int16)
    for first in range(0, users, chunk):
        count = min(chunk, users - first)
        lists = user_lists(first, count, top, rng)
        top20[first : first + count] = lists[:, :20]
        user_ids = np.repeat(np.arange(first + 1, first + count + 1, dtype=np.int64), top)
        ranks = np.tile(np.arange(1, top + 1, dtype=np.int32), count)
        movies = pa.DictionaryArray.from_arrays(
            pa.array(lists.ravel().astype(np.int32)), dictionary
        )
        table = pa.table(
            {
                "user_id": user_ids,
                "rank": ranks,
                "movie_id": movies.cast(pa.string()),
                "score": (1.0 / ranks).astype(np.float32),
                "model_version": pa.array([version] * len(ranks)),
            }
        )
        lake.append("batch_recommendations", table)
        print(f"  {version}: {first + count:,} / {users:,} users written", flush=True)
    return top20


def write_lake(root: Path, users: int, top: int, seed: int = 7) -> dict[str, np.ndarray]:
    """Two batch views (the second published later, for the swap run), a published model,
    trending and some activity; returns the arrays the baseline serves."""
    lake = Lake(root)
    names = movie_names()
    rng = np.random.default_rng(seed)
    now = dt.datetime.now(dt.UTC)
    top20 = write_batch_view(lake, MODEL, users, top, seed)
    write_batch_view(lake, NEXT_MODEL, users, top, seed + 1)
    record_published_model(lake, MODEL, now.date(), now)
    trending = [
        {
            "window": label,
            "window_seconds": seconds,
            "movie_id": str(names[m]),
            "watchers": int(1000 - i),
            "as_of": now,
            "updated_batch": 1,
            "updated_at": now,
        }
        for label, seconds in (("1h", 3600), ("24h", 86400))
        for i, m in enumerate(rng.choice(N_MOVIES, 100, replace=False).tolist())
    ]
    lake.append("speed_trending", pa.Table.from_pylist(trending, schema=SPEED_TRENDING.schema))
    active = rng.choice(np.arange(1, users + 1), max(1, users // 50), replace=False)
    activity = pa.table(
        {
            "user_id": pa.array(active.astype(np.int64)),
            "watched_movies": pa.array(
                [[str(names[m]) for m in top20[u - 1, :5:2].tolist()] for u in active.tolist()]
            ),
            "rated_movies": pa.array([[str(names[top20[u - 1, 1]])] for u in active.tolist()]),
            "first_seen": pa.array([now] * len(active)),
            "last_seen": pa.array([now] * len(active)),
            "since": pa.array([now] * len(active)),
            "model_version": pa.array([MODEL] * len(active)),
            "updated_batch": pa.array([1] * len(active), pa.int64()),
            "updated_at": pa.array([now] * len(active)),
        }
    )
    lake.append("speed_user_activity", activity.cast(SPEED_USER_ACTIVITY.schema))
    counts = np.bincount(top20.ravel(), minlength=N_MOVIES)
    popular = np.argsort(-counts, kind="stable")[:20]
    return {
        "names": names,
        "users": np.arange(1, users + 1, dtype=np.int64),
        "items": top20,
        "popular": popular,
    }


# -- running servers -------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    startup_s: float = float("nan")
    rss_mb: float = float("nan")
    pss_mb: float = float("nan")
    peak_mb: float = float("nan")  # VmHWM of the main process (the batch-view load)
    runs: dict[int, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def tree_memory(pid: int) -> tuple[float, float]:
    """RSS and PSS (MB) of a process and its children."""
    rss = pss = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return float("nan"), float("nan")
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
    return rss / 1e6, pss / 1e6


def peak_rss_mb(pid: int) -> float:
    """The high-water mark of a process's RSS (``VmHWM``), in MB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


_BUCKET = (
    r"flixlake_serving_request_latency_seconds_bucket"
    r'\{endpoint="recommend",le="([^"]+)"\} (\S+)'
)


def in_service_p99_ms(metrics_text: str) -> float:
    """p99 of the service's own request time (upper bound of the histogram bucket)."""
    buckets = []
    for line in metrics_text.splitlines():
        match = re.match(_BUCKET, line)
        if match:
            buckets.append((float(match.group(1)), float(match.group(2))))
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    total = buckets[-1][1]
    return next(le * 1e3 for le, count in buckets if count >= 0.99 * total)


def first_answer(port: int, user: int, want_source: str | None, timeout: float) -> float:
    """Seconds until ``GET /recommend/<user>`` answers 200 (with ``want_source`` if given)."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", f"/recommend/{user}")
            resp = conn.getresponse()
            resp.read()
            conn.close()
            source = resp.getheader("x-recommendation-source")
            if resp.status == 200 and (want_source is None or source == want_source):
                return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"no answer on port {port} within {timeout:.0f}s")


def wrk(port: int, connections: int, duration: int, script: Path) -> dict[str, float]:
    """Run wrk and parse throughput, latency percentiles and errors."""
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
    ).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> dict[str, float]:
    """Throughput, latency percentiles and errors from wrk's ``--latency`` report."""

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            return float("nan")
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]
        return float(match.group(1)) * scale

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {
        "rps": float(rps.group(1)) if rps else float("nan"),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "requests": float(total.group(1)) if total else float("nan"),
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
    }


@contextlib.contextmanager
def process(
    command: list[str], log: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def run_service(
    name: str,
    home: Path,
    conf: Path,
    args: argparse.Namespace,
    script: Path,
    work: Path,
    telemetry: dict[str, str] | None,
) -> Result:
    result = Result(name)
    env_name = "bench_telemetry" if telemetry else "bench_plain"
    lines = [
        "serving:",
        "  telemetry:",
        f"    enabled: {'true' if telemetry else 'false'}",
    ]
    if telemetry:
        lines += [f"    {k}: {v}" for k, v in telemetry.items()]
    (conf / f"{env_name}.yaml").write_text("\n".join(lines) + "\n")
    port = free_port()
    env = {
        **os.environ,
        "FLIXLAKE_CONF_DIR": str(conf),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    command = [PYTHON, "-m", "flixlake.serving.app", "--env", env_name, "--home", str(home)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    spawned = time.monotonic()
    with process(command, work / f"{env_name}.log", env) as proc:
        first_answer(port, 1, "batch", timeout=180)
        result.startup_s = time.monotonic() - spawned
        wrk(port, 8, 2, script)  # warm-up
        for connections in (8, 32):
            result.runs[connections] = wrk(port, connections, args.duration, script)
            print(f"  {name} @ {connections}c: {result.runs[connections]}", flush=True)
        result.rss_mb, result.pss_mb = tree_memory(proc.pid)
        result.peak_mb = peak_rss_mb(proc.pid)
        metrics = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
        result.notes.append(f"in-service p99 (all runs) <= {in_service_p99_ms(text):g} ms")
        for metric in (
            "flixlake_serving_telemetry_dropped_total",
            "flixlake_serving_telemetry_records_total",
            "flixlake_serving_view_load_seconds",
            "flixlake_serving_loaded_users",
        ):
            for line in text.splitlines():
                if line.startswith(metric):
                    result.notes.append(line)
    return result


def run_swap(home: Path, conf: Path, args: argparse.Namespace, script: Path, work: Path) -> Result:
    """wrk at 8 connections while a new model is published: the service loads its 1M-user
    view in the background and swaps; every request must still succeed, and fast."""
    result = Result("flixlake during a swap")
    (conf / "bench_swap.yaml").write_text(
        "serving:\n  model_poll_seconds: 1\n  telemetry:\n    enabled: false\n"
    )
    port = free_port()
    env = {**os.environ, "FLIXLAKE_CONF_DIR": str(conf), "PYTHONPATH": str(PROJECT_ROOT)}
    command = [PYTHON, "-m", "flixlake.serving.app", "--env", "bench_swap", "--home", str(home)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    duration = max(30, args.duration)
    spawned = time.monotonic()
    with process(command, work / "bench_swap.log", env) as proc:
        first_answer(port, 1, "batch", timeout=180)
        result.startup_s = time.monotonic() - spawned
        wrk(port, 8, 2, script)  # warm-up
        runner = subprocess.Popen(
            [
                "wrk",
                "-t2",
                "-c8",
                f"-d{duration}s",
                "--timeout",
                "5s",
                "--latency",
                "-s",
                str(script),
                f"http://127.0.0.1:{port}/",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        now = dt.datetime.now(dt.UTC)
        record_published_model(Lake(home / "lake"), NEXT_MODEL, now.date(), now)
        published = time.monotonic()
        swapped_after = float("nan")
        while time.monotonic() - published < duration:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/recommend/1")
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.getheader("x-model-version") == NEXT_MODEL:
                swapped_after = time.monotonic() - published
                break
            time.sleep(0.2)
        out, _ = runner.communicate(timeout=duration + 60)
        result.runs[8] = parse_wrk(out)
        print(f"  swap @ 8c: {result.runs[8]}, swapped {swapped_after:.1f}s after publishing")
        result.rss_mb, result.pss_mb = tree_memory(proc.pid)
        result.peak_mb = peak_rss_mb(proc.pid)
        result.notes.append(
            f"new model served {swapped_after:.1f}s after its models row was written"
        )
    return result


def run_baseline(arrays_path: Path, args: argparse.Namespace, script: Path, work: Path) -> Result:
    result = Result("Flask+gunicorn(2)+dict")
    app_dir = work / "baseline"
    app_dir.mkdir(exist_ok=True)
    (app_dir / "baseline_app.py").write_text(BASELINE_APP)
    port = free_port()
    gunicorn = str(Path(PYTHON).parent / "gunicorn")
    command = [gunicorn, "-w", "2", "--preload", "-b", f"127.0.0.1:{port}", "--chdir", str(app_dir)]
    command += ["--log-level", "warning", "baseline_app:app"]
    env = {**os.environ, "BENCH_BASELINE": str(arrays_path)}
    spawned = time.monotonic()
    with process(command, work / "baseline.log", env) as proc:
        first_answer(port, 1, None, timeout=300)
        result.startup_s = time.monotonic() - spawned
        wrk(port, 8, 2, script)
        for connections in (8, 32):
            result.runs[connections] = wrk(port, connections, args.duration, script)
            print(f"  baseline @ {connections}c: {result.runs[connections]}", flush=True)
        result.rss_mb, result.pss_mb = tree_memory(proc.pid)
        result.peak_mb = peak_rss_mb(proc.pid)
    return result


def table(results: list[Result], baseline: Result) -> str:
    base32 = baseline.runs.get(32, {}).get("rps", float("nan"))
    rows = [
        f"{'server':<28} {'conn':>4} {'req/s':>9} {'vs base':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'non-2xx':>8} {'errors':>7} {'RSS MB':>8} {'PSS MB':>8} {'peak MB':>8} {'first s':>8}"
    ]
    for r in results:
        for connections, run in sorted(r.runs.items()):
            base = baseline.runs.get(connections, {}).get("rps", base32)
            rows.append(
                f"{r.name:<28} {connections:>4} {run['rps']:>9.0f} {run['rps'] / base:>7.2f}x "
                f"{run['p50_ms']:>8.2f} {run['p99_ms']:>8.2f} {run['non2xx']:>8.0f} "
                f"{run['socket_errors']:>7.0f} {r.rss_mb:>8.0f} {r.pss_mb:>8.0f} "
                f"{r.peak_mb:>8.0f} {r.startup_s:>8.1f}"
            )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--top", type=int, default=50)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--scenarios",
        default="telemetry,plain,swap",
        help="comma-separated flixlake runs: telemetry, plain, swap (the baseline always runs)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        return 2
    if shutil.which("gunicorn", path=str(Path(PYTHON).parent)) is None:
        print("the baseline needs: .venv/bin/pip install flask gunicorn", file=sys.stderr)
        return 2
    print("machine:")
    for line in machine_info():
        print(f"  {line}")
    noise_before = scheduler_noise()
    print(f"  {noise_before}")
    work = Path(tempfile.mkdtemp(prefix="flixlake-bench-serve-"))
    broker = None
    try:
        home = work / "home"
        started = time.monotonic()
        print(f"writing a {args.users:,} x {args.top} batch view under {home} ...", flush=True)
        arrays = write_lake(home / "lake", args.users, args.top)
        print(f"  lake written in {time.monotonic() - started:.0f}s", flush=True)
        arrays_path = work / "baseline.npz"
        np.savez(
            arrays_path,
            names=arrays["names"],
            users=arrays["users"],
            items=arrays["items"],
            popular=arrays["popular"],
        )
        del arrays
        conf = work / "conf"
        conf.mkdir()
        shutil.copy(PROJECT_ROOT / "conf" / "base.yaml", conf / "base.yaml")
        script = work / "users.lua"
        script.write_text(WRK_SCRIPT.format(span=int(args.users * 1.1)))  # 10 % unknown users

        broker = start_broker(free_port(), log_path=work / "tansu.log")
        for topic in ("movielog", "served_recommendations", "service_requests"):
            create_topic(broker.bootstrap, topic, partitions=2)
        results = []
        if "telemetry" in args.scenarios:
            print("flixlake service, telemetry to the embedded broker ...", flush=True)
            telemetry = {"bootstrap_servers": f'"{broker.bootstrap}"'}
            results.append(
                run_service("flixlake (telemetry on)", home, conf, args, script, work, telemetry)
            )
        if "plain" in args.scenarios:
            print("flixlake service, telemetry off ...", flush=True)
            results.append(
                run_service("flixlake (telemetry off)", home, conf, args, script, work, None)
            )
        if "swap" in args.scenarios:
            print("flixlake service while a new model is published ...", flush=True)
            results.append(run_swap(home, conf, args, script, work))
        print("baseline ...", flush=True)
        baseline = run_baseline(arrays_path, args, script, work)
        results.append(baseline)
    finally:
        if broker is not None:
            stop_broker(broker)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print("machine:")
    for line in machine_info():
        print(f"  {line}")
    print(f"  before: {noise_before}")
    print(f"  after:  {scheduler_noise()}")
    print(f"users {args.users:,} x top {args.top}; wrk -t2, {args.duration}s per run, ", end="")
    print("10 % unknown ids")
    print(
        "RSS/PSS: process tree after the wrk runs (flixlake: + telemetry shipper; gunicorn: master"
    )
    print(
        "+ 2 workers, which share pages: PSS is the fair figure); peak: VmHWM of the main process"
    )
    print(table(results, baseline))
    for r in results:
        for note in r.notes:
            print(f"  {r.name}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

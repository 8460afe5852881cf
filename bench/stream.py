"""Benchmark: the speed layer's sustained ingest and its freshness, vs. a plain consumer loop.

    PYSPARK_PYTHON=.venv/bin/python .venv/bin/python bench/stream.py
    PYSPARK_PYTHON=.venv/bin/python .venv/bin/python bench/stream.py --events 200000 --seconds 30

1. Sustained ingest: ``--events`` lines are produced to a fresh topic of Apache Kafka first; the
   speed layer (Spark Structured Streaming with Spark's Kafka source, config ``local``: trigger and
   max events per trigger from ``streaming.*``) drains the backlog into bronze/quarantine and the
   speed views. events/s = lines / (last micro-batch committed - first fetch), where the first
   fetch is the start of the first micro-batch's processing (the executors read Kafka inside it),
   not the query's start.
2. Freshness at ``--rate`` events/s for ``--seconds``: a paced producer runs while the query
   does; freshness of a line = time its micro-batch had updated the speed views - its Kafka
   timestamp (both on this machine's clock). p50/p95 over the lines after a warm-up.
3. Baseline, same two measurements: a plain single-threaded Python loop (kafka-python: assign,
   poll, the same ``parse_batch``, the same two Delta appends with app transactions via delta-rs;
   no speed views).

Targets (issue 10): sustained ingest >= 3x the plain loop in the same run (aiming at >= 100,000
events/s on a quiet machine); freshness p95 <= 2 s at 1,000 events/s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flixlake.config import Settings, load_settings
from flixlake.contract.kafka import create_topic, free_port, produce_lines
from flixlake.contract.logformat import format_rate, format_reco, format_watch
from flixlake.lake.bronze import parse_batch
from flixlake.lake.store import Lake, lake_from_settings
from flixlake.ops.broker import running_broker


def machine() -> str:
    """CPU, memory and load, so figures are read in context."""
    model = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration):
        mem_kb = 0
    load = os.getloadavg()
    return (
        f"{platform.node()}: {os.cpu_count()} cpus ({model}), {mem_kb / 2**20:.0f} GB, "
        f"load avg {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, Python {platform.python_version()}"
    )


def synthetic_lines(n: int, seed: int, users: int = 100_000, movies: int = 5_000) -> list[str]:
    """Valid MLiP lines (92% watch minutes, 6% ratings, 2% reco telemetry) around now."""
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    lines = []
    for i in range(n):
        time_ = now - dt.timedelta(seconds=(n - i) * 0.01)
        user = rng.randint(1, users)
        movie = f"movie+{rng.randint(1, movies)}+{1950 + rng.randint(0, 70)}"
        roll = rng.random()
        if roll < 0.92:
            lines.append(format_watch(time_, user, movie, rng.randint(0, 120)))
        elif roll < 0.98:
            lines.append(format_rate(time_, user, movie, rng.randint(1, 5)))
        else:
            lines.append(format_reco(time_, user, "s1", 200, [movie] * 20, rng.randint(5, 400)))
    return lines


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and its children (JVM, Python workers)."""
    try:
        import psutil
    except ImportError:  # optional: only for the load-independent estimate
        return float("nan")
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class PacedProducer(threading.Thread):
    """Sends ``rate`` lines per second (in 20 ms ticks) until stopped."""

    def __init__(self, bootstrap: str, topic: str, rate: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.rate, self.seconds = bootstrap, topic, rate, seconds
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        from kafka import KafkaProducer

        try:
            producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=2)
            lines = synthetic_lines(int(self.rate * self.seconds) + self.rate, seed=99)
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < self.seconds:
                due = min(len(lines), int(elapsed * self.rate))
                while self.sent < due:
                    producer.send(self.topic, lines[self.sent].encode())
                    self.sent += 1
                producer.flush()
                time.sleep(0.02)
            producer.flush()
            producer.close()
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def bench_speed_layer(
    spark: Any, settings: Settings, bootstrap: str, events: int, rate: int, seconds: float
) -> dict[str, Any]:
    """Backlog throughput, then freshness at ``rate``, through the real streaming query."""
    from flixlake.streaming.harness import BatchReport
    from flixlake.streaming.job import start_speed_layer

    lake = lake_from_settings(settings)
    topic = settings.kafka.topic
    create_topic(bootstrap, topic, settings.kafka.partitions)
    produce_lines(bootstrap, topic, synthetic_lines(events, seed=1), timeout=300)

    reports: list[BatchReport] = []
    started = time.time()
    run = start_speed_layer(spark, settings, lake, bootstrap, on_batch=reports.append, quiet=True)
    try:
        _wait(lambda: bool(reports), 600, run)
        cpu_start = tree_cpu_seconds()
        first_events = reports[0].events
        _wait(lambda: sum(r.events for r in reports) >= events, 1800, run)
        cpu_used = tree_cpu_seconds() - cpu_start
        backlog = list(reports)
        first_start = backlog[0].committed_at - backlog[0].seconds
        ingest = {
            "events": sum(r.events for r in backlog),
            "batches": len(backlog),
            "events_per_s_incl_startup": events / (backlog[-1].committed_at - started),
            "events_per_s_sustained": events / (backlog[-1].committed_at - first_start),
            "driver_seconds_per_batch": sum(r.seconds for r in backlog) / len(backlog),
            "steps": mean_steps(backlog),
            # after the first batch: events per CPU-second of the process tree x cores (None when
            # the whole backlog came in one batch: nothing after the first to measure)
            "events_per_s_cpu_bound": (
                (events - first_events) / cpu_used * (os.cpu_count() or 1) if cpu_used > 0 else None
            ),
        }
        producer = PacedProducer(bootstrap, topic, rate, seconds)
        producer.start()
        producer.join(seconds + 60)
        _wait(lambda: sum(r.events for r in reports) >= events + producer.sent, 120, run)
        if producer.error:
            raise producer.error
    finally:
        if run.query.isActive:
            run.stop()
    fresh = _freshness(reports[len(backlog) :], warmup_s=5.0)
    fresh["steps"] = mean_steps(reports[len(backlog) :])
    return {"ingest": ingest, "freshness": fresh}


def mean_steps(reports: list[Any]) -> str:
    """Mean seconds per step of the micro-batches (from their reports), e.g. ``parse 0.41 ...``."""
    totals: dict[str, float] = {}
    for r in reports:
        for step, seconds in r.steps.items():
            totals[step] = totals.get(step, 0.0) + seconds
    return " ".join(f"{k} {v / max(1, len(reports)):.2f}" for k, v in totals.items())


def _wait(check: Callable[[], bool], timeout: float, run: Any) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if not run.query.isActive:
            raise RuntimeError(f"query died: {run.query.exception()}")
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark stalled")
        time.sleep(0.1)


def _freshness(reports: list[Any], warmup_s: float) -> dict[str, Any]:
    values: list[float] = []
    first_ts = min((min(r.kafka_timestamps_ms.to_pylist()) for r in reports if r.events), default=0)
    for r in reports:
        for ts in r.kafka_timestamps_ms.to_pylist():
            if ts / 1000 >= first_ts / 1000 + warmup_s:
                values.append(r.visible_at - ts / 1000)
    return {
        "events": len(values),
        "batches": len(reports),
        "p50_s": percentile(values, 0.50),
        "p95_s": percentile(values, 0.95),
        "max_s": max(values, default=float("nan")),
    }


def baseline_loop(
    bootstrap: str, topic: str, lake: Lake, events: int, rate: int, seconds: float
) -> dict[str, Any]:
    """The same bronze rows written by a plain kafka-python poll loop (no Spark, no views)."""
    from kafka import KafkaConsumer, TopicPartition

    create_topic(bootstrap, topic, 4)
    produce_lines(bootstrap, topic, synthetic_lines(events, seed=1), timeout=300)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    chunk_index = 0
    commits: list[tuple[float, list[int]]] = []

    def drain_once(max_records: int) -> int:
        nonlocal chunk_index
        polled = consumer.poll(timeout_ms=200, max_records=max_records)
        records = [r for tp in sorted(polled) for r in polled[tp]]
        if not records:
            return 0
        batch = parse_batch(
            [r.value for r in records],
            source=topic,
            offsets=[r.offset for r in records],
            ingest_batch=f"loop:{chunk_index}",
            ingested_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
            partitions=[r.partition for r in records],
        )
        lake.append("quarantine_events", batch.quarantine, "loop", chunk_index)
        lake.append("bronze_events", batch.bronze, "loop", chunk_index)
        chunk_index += 1
        commits.append((time.time(), [r.timestamp for r in records]))
        return len(records)

    started, cpu_start = time.time(), tree_cpu_seconds()
    done = 0
    while done < events:
        done += drain_once(100_000)
    ingest = {
        "events": done,
        "events_per_s_sustained": done / (time.time() - started),
        "events_per_s_cpu_bound": done / (tree_cpu_seconds() - cpu_start) * (os.cpu_count() or 1),
    }
    commits.clear()
    producer = PacedProducer(bootstrap, topic, rate, seconds)
    producer.start()
    while producer.is_alive() or done < events + producer.sent:
        done += drain_once(100_000)
    consumer.close()
    first = min((min(ts) for _, ts in commits), default=0) / 1000
    values = [at - ts / 1000 for at, stamps in commits for ts in stamps if ts / 1000 >= first + 5]
    return {
        "ingest": ingest,
        "freshness": {
            "events": len(values),
            "p50_s": percentile(values, 0.5),
            "p95_s": percentile(values, 0.95),
            "max_s": max(values, default=float("nan")),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Run both measurements for the speed layer and the baseline; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000, help="backlog size for ingest")
    parser.add_argument("--rate", type=int, default=1000, help="events/s for freshness")
    parser.add_argument("--seconds", type=float, default=60, help="freshness run length")
    parser.add_argument("--env", default="local")
    parser.add_argument("--max-events-per-trigger", type=int, default=None, help="override config")
    parser.add_argument("--trigger-seconds", type=float, default=None, help="override config")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args(argv)

    from flixlake.ops.spark import build_spark_session

    home = Path(tempfile.mkdtemp(prefix="flixlake-bench-stream-"))
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    settings = load_settings(
        args.env,
        home=home / "speed",
        overrides={
            "kafka": {"bootstrap_servers": bootstrap, "topic": "bench"},
            "streaming": {
                k: v
                for k, v in {
                    "max_events_per_trigger": args.max_events_per_trigger,
                    "trigger_seconds": args.trigger_seconds,
                }.items()
                if v is not None
            },
            "spark": {"extra_conf": {"spark.ui.showConsoleProgress": "false"}},
        },
    )
    print(f"machine: {machine()}")
    print(
        f"config {args.env}: trigger {settings.streaming.trigger_seconds}s, max "
        f"{settings.streaming.max_events_per_trigger} events/trigger, {settings.kafka.partitions} "
        f"partitions, spark {settings.spark.master}"
    )
    try:
        with running_broker(port, log_dir=home / "kafka"):
            loop = baseline_loop(
                bootstrap,
                "bench-loop",
                Lake(home / "loop" / "lake"),
                args.events,
                args.rate,
                args.seconds,
            )
            spark = build_spark_session(settings, app_name="flixlake-bench-stream")
            try:
                speed = bench_speed_layer(
                    spark, settings, bootstrap, args.events, args.rate, args.seconds
                )
            finally:
                spark.stop()
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    print(f"machine at end: {machine()}")
    print(
        "(CPU-bound estimate: events per CPU-second of the process tree x cores, i.e. the rate\n"
        " if this run had the machine to itself; the wall-clock figures include other load)"
    )
    print()
    print(f"{'':38} {'speed layer':>14} {'plain loop':>14}")
    rows = [
        (
            "sustained ingest, events/s",
            speed["ingest"]["events_per_s_sustained"],
            loop["ingest"]["events_per_s_sustained"],
            "{:>14,.0f}",
        ),
        (
            "  incl. query start, events/s",
            speed["ingest"]["events_per_s_incl_startup"],
            None,
            "{:>14,.0f}",
        ),
        (
            "  CPU-bound estimate, events/s",
            speed["ingest"]["events_per_s_cpu_bound"],
            loop["ingest"]["events_per_s_cpu_bound"],
            "{:>14,.0f}",
        ),
        (
            f"freshness p50 at {args.rate}/s, s",
            speed["freshness"]["p50_s"],
            loop["freshness"]["p50_s"],
            "{:>14.2f}",
        ),
        (
            f"freshness p95 at {args.rate}/s, s",
            speed["freshness"]["p95_s"],
            loop["freshness"]["p95_s"],
            "{:>14.2f}",
        ),
        ("freshness max, s", speed["freshness"]["max_s"], loop["freshness"]["max_s"], "{:>14.2f}"),
    ]
    for label, a, b, fmt in rows:
        shown = [f"{'-':>14}" if v is None else fmt.format(v) for v in (a, b)]
        print(f"{label:38} {shown[0]} {'' if b is None else shown[1]}")
    print()
    print(
        f"speed layer: {speed['ingest']['batches']} backlog batches, "
        f"{speed['ingest']['driver_seconds_per_batch']:.2f}s driver work each; "
        f"freshness over {speed['freshness']['events']} events, "
        f"{speed['freshness']['batches']} batches"
    )
    print(f"  mean seconds per backlog batch step: {speed['ingest']['steps']}")
    print(f"  mean seconds per paced batch step:   {speed['freshness']['steps']}")
    ratio = speed["ingest"]["events_per_s_sustained"] / loop["ingest"]["events_per_s_sustained"]
    ok_ingest = ratio >= 3.0
    ok_fresh = speed["freshness"]["p95_s"] <= 2.0
    print(
        f"targets: ingest >= 3x the plain loop {'met' if ok_ingest else 'NOT met'} "
        f"({ratio:.2f}x); freshness p95 <= 2 s {'met' if ok_fresh else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

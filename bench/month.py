"""Benchmark: a month of the lake in compressed time, with the daily lifecycle and without it.

    .venv/bin/python bench/month.py
    .venv/bin/python bench/month.py --days 30 --users 300 --movies 120 --micro-batches 24 --day-seconds 6
    .venv/bin/python bench/month.py --real-batch --days 30 --users 200 --movies 80 --micro-batches 12

Each simulated day lasts at least ``--day-seconds``: the speed layer's own micro-batch
processors land the day's synthetic log lines (``--micro-batches`` commits of bronze, quarantine,
the user views MERGEd, trending overwritten, served answers landed, its own compaction of today)
while the daily maintenance runs beside them and then a daily batch. With ``--real-batch`` that
is the real pipeline ``flixlake batch`` runs (incremental silver, quality gate, detection, Spark
ALS with a small search, evaluation against the baselines, register, publish gate, batch view),
in the month's SparkSession, from the day the history covers its evaluation windows; without
it, the jobs' write pattern through delta-rs (the day's silver replaced, quality rows, a
published model with factor files, evaluations, its batch-view partition, online evaluations),
which takes a second a day. See :mod:`flixlake.ops.month`.

Retention is counted in simulated days: deleted files 2 days, log 3 days, models: the 3 newest
published and those of the last 2 days, run folders the same. The baseline is the same month
with no daily maintenance (what main does: the stream compacts today's bronze and vacuums the
speed views by wall-clock hour, nothing else).

Printed per table at day 1, 10, 20, 30: data files in the folder (live in the snapshot), MB, and
commit files in the Delta log; then whether every day was green and rollback to the oldest kept
model works.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from flixlake.config import Settings, load_settings
from flixlake.lake.lifecycle import Footprint
from flixlake.lake.registry import PUBLISHED, batch_view_rows, list_models, rollback_to
from flixlake.lake.store import Lake, lake_from_settings
from flixlake.ops.month import DayReport, compressed_lifecycle, simulate_month
from flixlake.ops.spark import build_spark_session


def machine() -> str:
    return (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}"
    )


# the real batch on a tiny world: the test suite's search (conf/test.yaml), two shuffle partitions
TINY_BATCH = {
    "eval_days": 2,
    "validation_days": 2,
    "eval_max_users": 2000,
    "search_max_users": 2000,
    "als": {
        "max_iter": 5,
        "grid": [
            {"rank": 8, "reg_param": 0.1, "alpha": 10.0},
            {"rank": 4, "reg_param": 0.1, "alpha": 10.0},
        ],
        "search": {"trials": 3, "rank": [2, 8]},
    },
}


def run(args: argparse.Namespace, maintain: bool) -> tuple[list[DayReport], Lake, Settings]:
    home = Path(tempfile.mkdtemp(prefix=f"flixlake-month-{'on' if maintain else 'off'}-"))
    overrides: dict[str, Any] = {
        "lifecycle": compressed_lifecycle(args.day_seconds),
        "streaming": {"maintenance_every_batches": max(1, args.micro_batches // 4)},
    }
    if args.real_batch:
        # Retention is compressed to seconds, shorter than one batch run, so delta-spark would
        # refuse the batch's reads of its pinned versions (time travel beyond the deleted-file
        # retention). Nothing it reads is vacuumed meanwhile: the maintenance runs before the
        # batch, and the stream vacuums only the speed views. Off in this session only.
        guard = "spark.databricks.delta.vacuum.enforceTimeTravelWithinDeletedFileRetentionDuration"
        session = {"shuffle_partitions": 2, "extra_conf": {guard: "false"}}
        overrides |= {"batch": TINY_BATCH, "spark": session}
    settings = load_settings("local", home=home, overrides=overrides)
    lake = lake_from_settings(settings)
    started = time.monotonic()
    done: list[DayReport] = []

    def progress(report: DayReport) -> None:
        done.append(report)
        state = "green" if report.green else "RED"
        error = report.stream_error or report.batch_error or report.maintenance_error
        print(
            f"  day {report.day:2d} {report.date} {report.lines:7,} lines  {report.seconds:5.1f}s "
            f"{state} model {report.model_version or '-'} {error or report.batch_note or ''} "
            f"(load {os.getloadavg()[0]:.1f})",
            flush=True,
        )

    spark = build_spark_session(settings, app_name="flixlake-month")
    try:
        simulate_month(
            spark,
            lake,
            settings,
            home / "data",
            args.days,
            users=args.users,
            movies=args.movies,
            seed=args.seed,
            micro_batches=args.micro_batches,
            day_seconds=args.day_seconds,
            maintain=maintain,
            real=args.real_batch,
            on_day=progress,
        )
    except KeyboardInterrupt:  # out of time: report the days that ran
        print(f"  interrupted after day {len(done)}", flush=True)
    finally:
        spark.stop()
    print(f"  {len(done)} days in {time.monotonic() - started:.0f}s, home {home}", flush=True)
    return done, lake, settings


def cell(size: Footprint | None) -> str:
    if size is None:
        return "-"
    return f"{size.files:>5} ({size.live_files:>3}) {size.bytes / 1e6:7.2f} {size.log_files:>5}"


def print_sizes(reports: list[DayReport], days: list[int]) -> None:
    by_day = {r.day: r.sizes for r in reports}
    names = sorted({n for r in reports for n in r.sizes})
    header = "".join(f" | {'day ' + str(d):^26}" for d in days)
    print(f"{'table':<24}{header}")
    print(f"{'':<24}" + " | files (live)      MB   log" * len(days))
    for name in names:
        print(f"{name:<24}" + "".join(f" | {cell(by_day[d].get(name)):>26}" for d in days))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--movies", type=int, default=120)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--micro-batches", type=int, default=24, help="stream commits a day")
    parser.add_argument("--day-seconds", type=float, default=6.0, help="wall time of a day")
    parser.add_argument(
        "--real-batch", action="store_true", help="the real batch pipeline (Spark ALS) each day"
    )
    parser.add_argument(
        "--modes",
        default="on,off",
        help="on: with the daily lifecycle, off: the baseline without it (default both)",
    )
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",")]
    if not modes or not set(modes) <= {"on", "off"}:
        parser.error(f"--modes: give on, off or on,off, got {args.modes!r}")
    print(f"machine: {machine()}")
    print(
        f"{args.days} days, {args.users} users x {args.movies} movies, {args.micro_batches} "
        f"micro-batches a day, a day = {args.day_seconds:g} s: deleted files kept "
        f"{compressed_lifecycle(args.day_seconds)['deleted_file_retention']}, log "
        f"{compressed_lifecycle(args.day_seconds)['log_retention']}; daily batch: "
        + ("the real pipeline" if args.real_batch else "its write pattern through delta-rs")
    )
    results = {}
    chosen = [m == "on" for m in modes]
    for maintain in chosen:
        label = "with the daily lifecycle" if maintain else "baseline: no daily maintenance"
        print(f"\n== {label}", flush=True)
        results[maintain] = run(args, maintain)
    for maintain in chosen:
        reports, lake, settings = results[maintain]
        if not reports:
            continue
        reached = len(reports)
        days = sorted({1, *range(10, reached + 1, 10), reached})
        label = "with the daily lifecycle" if maintain else "baseline: no daily maintenance"
        print(f"\n== {label}: per table, files in the folder (live), MB, Delta log commits")
        print_sizes(reports, days)
        total = {d: sum(s.bytes for s in r.sizes.values()) for r in reports for d in [r.day]}
        print("total MB " + "  ".join(f"day {d}: {total[d] / 1e6:.1f}" for d in days))
        red = [r.day for r in reports if not r.green]
        print(
            f"days green: {len(reports) - len(red)} of {len(reports)}"
            + (f" (red: {red})" if red else "")
        )
    if True in results:
        reports, lake, settings = results[True]
        published = [m["model_version"] for m in list_models(lake) if m["status"] == PUBLISHED]
        keep = settings.lifecycle.keep_models
        kept = [v for v in published if batch_view_rows(lake, v) > 0]
        print(f"\npublished models {len(published)}, with a batch view left: {kept}")
        if len(published) >= 2:
            oldest = published[-min(keep, len(published))]
            print(f"rollback to {oldest}: {rollback_to(lake, oldest)}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

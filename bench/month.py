"""Benchmark: a month of the lake in compressed time, with the daily lifecycle and without it.

    .venv/bin/python bench/month.py
    .venv/bin/python bench/month.py --days 30 --users 300 --movies 120 --micro-batches 24 --day-seconds 6

Each simulated day lasts at least ``--day-seconds``: the speed layer's own micro-batch
processors land the day's synthetic log lines (``--micro-batches`` commits of bronze, quarantine,
the user views MERGEd, trending overwritten, served answers landed, its own compaction of today)
while the daily maintenance runs beside them and then a daily batch with the jobs' write pattern
through delta-rs (silver rewritten in full, quality rows, a published model with factor files,
evaluations, its batch-view partition, online evaluations). See :mod:`flixlake.ops.month`; not
Spark's ALS (a real ``flixlake batch`` takes 3-8 minutes a day on this shared machine).

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


def run(args: argparse.Namespace, maintain: bool) -> tuple[list[DayReport], Lake, Settings]:
    home = Path(tempfile.mkdtemp(prefix=f"flixlake-month-{'on' if maintain else 'off'}-"))
    settings = load_settings(
        "local",
        home=home,
        overrides={
            "lifecycle": compressed_lifecycle(args.day_seconds),
            "streaming": {"maintenance_every_batches": max(1, args.micro_batches // 4)},
        },
    )
    lake = lake_from_settings(settings)
    started = time.monotonic()

    def progress(report: DayReport) -> None:
        state = "green" if report.green else "RED"
        print(
            f"  day {report.day:2d} {report.date} {report.lines:7,} lines  {report.seconds:5.1f}s "
            f"{state} {report.stream_error or report.batch_error or report.maintenance_error or ''}",
            flush=True,
        )

    spark = build_spark_session(settings, app_name="flixlake-month")
    try:
        reports = simulate_month(
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
            on_day=progress,
        )
    finally:
        spark.stop()
    print(f"  {args.days} days in {time.monotonic() - started:.0f}s, home {home}", flush=True)
    return reports, lake, settings


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
    args = parser.parse_args()
    days = sorted({1, *range(10, args.days + 1, 10), args.days})
    print(f"machine: {machine()}")
    print(
        f"{args.days} days, {args.users} users x {args.movies} movies, {args.micro_batches} "
        f"micro-batches a day, a day = {args.day_seconds:g} s: deleted files kept "
        f"{compressed_lifecycle(args.day_seconds)['deleted_file_retention']}, log "
        f"{compressed_lifecycle(args.day_seconds)['log_retention']}"
    )
    results = {}
    for maintain in (True, False):
        label = "with the daily lifecycle" if maintain else "baseline: no daily maintenance"
        print(f"\n== {label}", flush=True)
        results[maintain] = run(args, maintain)
    for maintain in (True, False):
        reports, lake, settings = results[maintain]
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
    reports, lake, settings = results[True]
    published = [m["model_version"] for m in list_models(lake) if m["status"] == PUBLISHED]
    keep = settings.lifecycle.keep_models
    kept = [v for v in published if batch_view_rows(lake, v) > 0]
    print(f"\npublished models {len(published)}, with a batch view left: {kept}")
    oldest = published[-keep]
    print(f"rollback to {oldest}: {rollback_to(lake, oldest)}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

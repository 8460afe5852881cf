"""Does the drift audit see a real shift and stay quiet without one? A synthetic history, one
audited day as generated and the same day with a shift injected into its log lines.

The history (``flixlake generate``: 3,000 users x 600 movies, seeded) is ingested up to the day
before the audited one; each variant of the audited day is then ingested into its own copy of
that lake and its drift computed with the settings of ``conf/base.yaml`` (daily window, 7
reference days):

* ``as generated`` -- the day itself: nothing should drift;
* ``rating inflation`` -- half of the day's ratings become 5 stars;
* ``taste drift`` -- half of the users' watches of the most watched genre's movies go to
  movies of another genre (a whole session moves together);
* ``push attack`` -- 300 new accounts each watch one long-tail movie for 30 minutes and rate
  it 5 stars;
* ``request outage`` -- 80 % of the recommendation requests are gone.

    .venv/bin/python bench/audit_drift.py [--users 3000] [--movies 600] [--seed 7]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flixlake.audit.drift import DriftWindows, drift_rows, input_counts
from flixlake.batch.ingest import ingest_paths
from flixlake.config import load_settings
from flixlake.lake.store import Lake, lake_from_settings
from flixlake.ops.spark import build_spark_session
from flixlake.sim.generate import generate_history

DAY = dt.date(2026, 11, 22)
WATCH = re.compile(r"^([^,]+),(\d+),GET /data/m/([^/]+)/(\d+)\.mpg$")
RATE = re.compile(r"^([^,]+),(\d+),GET /rate/([^=]+)=(\d+)$")
Shift = Callable[[list[str], dict[str, list[str]], random.Random], list[str]]


def as_generated(lines: list[str], genres: dict[str, list[str]], rng: random.Random) -> list[str]:
    return lines


def rating_inflation(lines: list[str], genres: dict[str, list[str]], rng: random.Random) -> list[str]:  # fmt: skip
    out = []
    for line in lines:
        m = RATE.match(line)
        if m and m.group(4) in "12345" and rng.random() < 0.5:
            line = f"{m.group(1)},{m.group(2)},GET /rate/{m.group(3)}=5"
        out.append(line)
    return out


def taste_drift(lines: list[str], genres: dict[str, list[str]], rng: random.Random) -> list[str]:
    counts: dict[str, int] = {}
    for line in lines:
        m = WATCH.match(line)
        if m:
            for g in genres.get(m.group(3), []):
                counts[g] = counts.get(g, 0) + 1
    source = max(counts, key=lambda g: counts[g])
    target = min(counts, key=lambda g: counts[g])
    targets = sorted(m for m, gs in genres.items() if target in gs and source not in gs)
    moved: dict[tuple[str, str], str | None] = {}
    out = []
    for line in lines:
        m = WATCH.match(line)
        if m and source in genres.get(m.group(3), []):
            key = (m.group(2), m.group(3))
            if key not in moved:
                moved[key] = rng.choice(targets) if rng.random() < 0.5 else None
            if moved[key] is not None:
                line = f"{m.group(1)},{m.group(2)},GET /data/m/{moved[key]}/{m.group(4)}.mpg"
        out.append(line)
    return out


def push_attack(lines: list[str], genres: dict[str, list[str]], rng: random.Random) -> list[str]:
    watched: dict[str, int] = {}
    for line in lines:
        m = WATCH.match(line)
        if m:
            watched[m.group(3)] = watched.get(m.group(3), 0) + 1
    target = sorted(genres, key=lambda movie: (watched.get(movie, 0), movie))[len(genres) // 4]
    out = list(lines)
    for account in range(300):
        user = 10_000_000 + account
        start = dt.datetime.combine(DAY, dt.time(10)) + dt.timedelta(seconds=37 * account)
        for minute in range(30):
            at = start + dt.timedelta(minutes=minute)
            out.append(f"{at:%Y-%m-%dT%H:%M:%S},{user},GET /data/m/{target}/{minute}.mpg")
        out.append(f"{start + dt.timedelta(minutes=31):%Y-%m-%dT%H:%M:%S},{user},GET /rate/{target}=5")  # fmt: skip
    return out


def request_outage(lines: list[str], genres: dict[str, list[str]], rng: random.Random) -> list[str]:  # fmt: skip
    return [ln for ln in lines if "recommendation request" not in ln or rng.random() >= 0.8]


VARIANTS: dict[str, Shift] = {
    "as generated": as_generated,
    "rating inflation": rating_inflation,
    "taste drift": taste_drift,
    "push attack": push_attack,
    "request outage": request_outage,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--movies", type=int, default=600)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} "
        f"at start; {args.users:,} users x {args.movies:,} movies, seed {args.seed}"
    )
    with tempfile.TemporaryDirectory(prefix="flixlake-audit-bench-") as tmp:
        root = Path(tmp)
        data = root / "data"
        generate_history(data, args.users, args.movies, days=8, seed=args.seed, end=DAY)
        day_file = data / f"events-{DAY.isoformat()}.log"
        day_lines = day_file.read_text().splitlines()
        day_file.rename(root / day_file.name)
        genres = {
            row["movie_id"]: row["genres"] or []
            for row in map(json.loads, (data / "movies.jsonl").read_text().splitlines())
        }
        base = root / "base"
        settings = load_settings("local", home=base)
        ingest_paths(lake_from_settings(settings), [data])
        spark = build_spark_session(settings, app_name="bench-audit-drift")
        cfg = settings.audit.drift
        windows = DriftWindows(DAY, cfg.window_seconds, cfg.reference_days)
        results: dict[str, dict[str, dict[str, object]]] = {}
        seconds: dict[str, float] = {}
        try:
            for name, shift in VARIANTS.items():
                home = root / name.replace(" ", "-")
                shutil.copytree(base / "lake", home / "lake")
                variant = home / "day" / day_file.name
                variant.parent.mkdir(parents=True)
                variant.write_text("\n".join(shift(day_lines, genres, random.Random(args.seed))) + "\n")  # fmt: skip
                lake = Lake(home / "lake")
                ingest_paths(lake, [variant])
                started = time.perf_counter()
                counts, _ = input_counts(spark, lake, windows)
                rows = drift_rows(counts, windows, cfg, dt.datetime.now(dt.UTC))
                seconds[name] = time.perf_counter() - started
                results[name] = {str(r["input"]): r for r in rows}
        finally:
            spark.stop()
    inputs = list(next(iter(results.values())))
    print("\ndrift distance of 2026-11-22 against the 7 days before (threshold; * = drifted)")
    header = f"{'':<18}" + "".join(f"{i:>17}" for i in inputs) + f"{'seconds':>9}"
    print(header)
    limits = {i: cfg.limit(i) for i in inputs}
    print(f"{'threshold':<18}" + "".join(f"{(limits[i].max_distance if limits[i] else 0):>17.2f}" for i in inputs))  # fmt: skip
    for name, rows in results.items():
        cells = []
        for i in inputs:
            r = rows[i]
            distance = r["distance"]
            text = "n/a" if distance is None else f"{distance:.3f}"
            limit = limits[i]
            if r["volume_ratio"] is not None and limit is not None and limit.max_volume_change:
                text += f" v{r['volume_ratio']:.2f}"
            cells.append(f"{text + ('*' if r['drifted'] else ' '):>17}")
        print(f"{name:<18}" + "".join(cells) + f"{seconds[name]:>9.1f}")
    print("\nlargest shift per drifted input:")
    for name, rows in results.items():
        for i, r in rows.items():
            if r["drifted"]:
                print(f"  {name}: {i}: {r['largest_shift']}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

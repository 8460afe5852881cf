"""Benchmark: does the feedback loop tighten across retrains, and what does exploration change?

    .venv/bin/python bench/feedback_loop.py
    .venv/bin/python bench/feedback_loop.py --cycles 5 --events 60000 --explore-percent 20
    .venv/bin/python bench/feedback_loop.py --arms baseline,debias

Three arms from the same starting point (a synthetic history ending yesterday and the first model
trained on it), with the same seeds: *baseline*, where every user gets the current model;
*debias*, where every retrain's batch view is re-ranked against popularity with weight
``--popularity-weight`` (:mod:`flixlake.batch.debias`; the shared first model is not, so cycle
0 is the same in every arm and the mitigation acts from cycle 1); and *explore*, where
``--explore-percent`` of users get uniform random answers from the catalog (a mitigation of the
data the next model learns from, and the control group). Each arm starts the broker, the speed layer and the
service the way a user does, then for each cycle runs ``flixlake simulate --serve-url ...
--minute-seconds ... --events N``, waits until the speed layer has landed every line and answer,
and retrains in this process (``run_batch``) on everything so far; the service swaps the new
model in before the next cycle (:mod:`flixlake.ops.feedback_loop`). Then the feedback-loop audit
(:mod:`flixlake.audit.feedback`) prints, per cycle, the concentration and popularity of what was
served and what was newly watched, for the model's users and for everyone, and the trend per
cycle (least squares). Figures go to ``<out>/results.json`` as well.

The machine is shared: the run prints the load average at start and end; the figures are counts
from the simulated world, not timings, so load changes how long it takes, not what it measures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

from flixlake.audit.feedback import (
    ALL_USERS,
    KINDS,
    PERSONALISED,
    SERVED,
    WATCHED,
    FeedbackAudit,
    trend,
)
from flixlake.config import PROJECT_ROOT, load_settings
from flixlake.ops.feedback_loop import CONTROL, EXPLORE_VARIANT, ArmResult, LoopOptions, run_arm
from flixlake.ops.spark import build_spark_session

MEASURES = ("gini", "coverage", "long_tail_share", "avg_popularity")
ARMS = ("baseline", "debias", "explore")
# the batch settings of every retrain: one ALS setting (the search is not what is studied here)
BATCH = {
    "eval_days": 2,
    "validation_days": 2,
    "als": {
        "max_iter": 8,
        "grid": [{"rank": 16, "reg_param": 0.1, "alpha": 10.0}],
        "search": {"trials": 1},
    },
}


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.node()}: {os.cpu_count()} cpus, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def print_arm(arm: ArmResult) -> None:
    audit = arm.audit
    print(
        f"\n== arm {arm.name}: {arm.explore_percent:g}% exploration, popularity weight "
        f"{arm.popularity_weight:g}, {len(arm.cycles)} cycles, "
        f"{arm.seconds / 60:.1f} min; reference: {audit.reference_users:,} users before the "
        f"first model, short head {audit.head_size} of {audit.catalog_size} movies"
    )
    groups = [CONTROL, *([EXPLORE_VARIANT] if arm.explore_percent else []), ALL_USERS]
    header = (
        f"{'cycle':>5} {'model':<22} {'group':<8} {'kind':<12} {'n':>7} {'users':>6} "
        f"{'gini':>6} {'cover':>6} {'tail':>6} {'pop':>6} {'reco':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in sorted(
        audit.rows, key=lambda r: (r.cycle, groups.index(r.group), KINDS.index(r.kind))
    ):
        print(
            f"{row.cycle:>5} {row.model_version:<22} {row.group:<8} {row.kind:<12} {row.n:>7,} "
            f"{row.users:>6,} {fmt(row.gini):>6} {fmt(row.coverage):>6} "
            f"{fmt(row.long_tail_share):>6} {fmt(row.avg_popularity):>6} "
            f"{fmt(row.recommended_share):>6}"
        )
    print("trend per cycle (least squares):")
    for group in groups:
        for kind in (SERVED, WATCHED):
            slopes = "  ".join(f"{m} {trend(audit.series(group, kind, m)):+.4f}" for m in MEASURES)
            print(f"  {group:<8} {kind:<8} {slopes}")


def compare(arms: dict[str, ArmResult]) -> None:
    if "baseline" not in arms or len(arms) < 2:
        return
    base = arms["baseline"].audit
    others = {n: a.audit for n, a in arms.items() if n != "baseline"}
    print("\n== before (baseline) and after each mitigation, same seeds: first -> last cycle")
    for group, kind in (
        (CONTROL, SERVED),
        (CONTROL, PERSONALISED),
        (CONTROL, WATCHED),
        (ALL_USERS, SERVED),
        (ALL_USERS, WATCHED),
    ):
        for m in MEASURES:
            b = base.series(group, kind, m)
            line = f"  {group:<8} {kind:<12} {m:<16} baseline {fmt(b[0])} -> {fmt(b[-1])} "
            line += f"({trend(b):+.4f}/cycle)"
            for name, audit in others.items():
                e = audit.series(group, kind, m)
                line += f"   {name} {fmt(e[0])} -> {fmt(e[-1])} ({trend(e):+.4f}/cycle)"
            print(line)
    if "explore" in arms:
        mitigated = arms["explore"].audit
        gap = [
            c - x
            for c, x in zip(
                mitigated.series(CONTROL, WATCHED, "avg_popularity"),
                mitigated.series(EXPLORE_VARIANT, WATCHED, "avg_popularity"),
                strict=True,
            )
        ]
        print(
            "  watched popularity, model users minus explorers (what the loop adds), per cycle: "
            + " ".join(fmt(g) for g in gap)
        )


def as_json(arm: ArmResult) -> dict[str, Any]:
    audit: FeedbackAudit = arm.audit
    return {
        "explore_percent": arm.explore_percent,
        "popularity_weight": arm.popularity_weight,
        "minutes": round(arm.seconds / 60, 1),
        "cycles": [
            {
                "index": c.index,
                "model_version": c.model_version,
                "sent": c.simulated["sent"],
                "reco_requests": c.simulated["reco_requests"],
                "landed_lines": c.landed_lines,
                "landed_answers": c.landed_answers,
                "simulate_seconds": round(c.simulate_seconds, 1),
                "retrain_seconds": None
                if c.retrain_seconds is None
                else round(c.retrain_seconds, 1),
            }
            for c in arm.cycles
        ],
        "rows": audit.to_arrow().to_pylist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = LoopOptions()
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--movies", type=int, default=defaults.movies)
    parser.add_argument("--days", type=int, default=defaults.days, help="history days")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--cycles", type=int, default=defaults.cycles)
    parser.add_argument("--events", type=int, default=defaults.events, help="lines per cycle")
    parser.add_argument("--rate", type=float, default=defaults.rate)
    parser.add_argument("--minute-seconds", type=float, default=defaults.minute_seconds)
    parser.add_argument("--explore-percent", type=float, default=20.0)
    parser.add_argument(
        "--popularity-weight", type=float, default=0.5, help="the debias arm's re-ranking weight"
    )
    parser.add_argument(
        "--arms",
        default=",".join(ARMS),
        help=f"comma-separated, in this order: {','.join(ARMS)}",
    )
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "var-bench" / "feedback-loop")
    args = parser.parse_args()
    wanted = [a for a in ARMS if a in args.arms.split(",")]
    if not wanted:
        parser.error(f"--arms: name one or more of {', '.join(ARMS)}")
    options = LoopOptions(
        users=args.users,
        movies=args.movies,
        days=args.days,
        seed=args.seed,
        cycles=args.cycles,
        events=args.events,
        rate=args.rate,
        minute_seconds=args.minute_seconds,
        extra={
            "spark": {"driver_memory": "2g", "shuffle_partitions": 4},
            "batch": BATCH,
        },
    )
    print(f"start: {machine()}")
    print(f"options: {options}")
    root = args.out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    settings = load_settings(options.base_env, home=root, overrides=dict(options.extra))
    spark = build_spark_session(settings, app_name="flixlake-bench-feedback-loop")
    began = time.monotonic()

    def say(text: str) -> None:
        print(f"  {(time.monotonic() - began) / 60:5.1f} min  {text}", flush=True)

    settings_of = {
        "baseline": (0.0, 0.0),
        "debias": (0.0, args.popularity_weight),
        "explore": (args.explore_percent, 0.0),
    }
    arms: dict[str, ArmResult] = {}
    results = root / "results.json"
    try:
        for name in wanted:
            percent, weight = settings_of[name]
            arms[name] = run_arm(root, name, options, percent, spark, say, weight)
            say(f"arm {name} done; {machine()}")
            print_arm(arms[name])  # each arm as soon as it is done: a stop keeps what ran
            results.write_text(
                json.dumps(
                    {"options": str(options), "arms": {n: as_json(a) for n, a in arms.items()}},
                    default=str,
                    indent=1,
                )
            )
    finally:
        spark.stop()
    compare(arms)
    print(
        f"\nend: {machine()}; {(time.monotonic() - began) / 60:.1f} min; figures in {root / 'results.json'}"
    )


if __name__ == "__main__":
    main()

"""Benchmark: attacks on the model, detected and mitigated, measured on labelled injections.

    .venv/bin/python bench/attacks.py                       # 3,000 users x 600 movies x 30 days
    .venv/bin/python bench/attacks.py --scenarios push,flood --users 2000

Each scenario is its own history of the same world (same seed: the same genuine users and lines)
with one kind of attack injected by the simulator (:mod:`flixlake.sim.attacks`), run through the
real batch steps (ingest, compact, detect, train; :mod:`flixlake.ops.attack_drill`):

* detection: attackers, detected, recall, precision (false positives are genuine accounts the
  step suspected in that history) -- exact per kind, since each history holds one attack;
* the target's exposure in the top-20 lists the final model gives (up to) 5,000 genuine users:
  share of lists containing it and its mean rank, in the clean history (the baseline, no
  attack), with the attack and no mitigation, and with the suspects excluded from training.

``stealth`` spreads 20 bandwagon, 20 average and 20 push accounts over five days (fewer than
``burst_min_accounts`` a day): the burst rule cannot see them, only the profile outlier rule.
ALS is trained with the first setting of ``conf/base.yaml``'s grid (rank 16, reg 0.05, alpha 10,
10 iterations) and no search, on the ``test`` environment's small Spark (2 shuffle partitions):
the comparison needs the same model in every run, not the best one, and this keeps the bench
within half an hour on a busy 2-core machine. Prints the machine and its load: figures from a
busy machine take longer, not differently.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from flixlake.config import load_settings
from flixlake.ops.attack_drill import run_attack_drill
from flixlake.ops.spark import build_spark_session
from flixlake.sim.attacks import parse_attack

ALS = {  # one fit per model: the grid's one point, no search beyond it, no time budget cut
    "batch": {
        "als": {
            "max_iter": 10,
            "grid": [{"rank": 16, "reg_param": 0.05, "alpha": 10.0}],
            "search": {"trials": 1, "rank": [8, 64]},  # the test env's range stops at 8
            "fit_budget_seconds": 3600,
        },
    }
}
MIXED = {**ALS, "attacks": {"mitigation": {"max_excluded_fraction": 0.3}}}
SCENARIOS: dict[str, list[str]] = {
    "push": ["push:accounts=40"],
    "nuke": ["nuke:accounts=40"],
    "bandwagon": ["bandwagon:accounts=40,filler=12"],
    "average": ["average:accounts=40,filler=12"],
    "flood": ["flood:accounts=3,requests=400"],
    # every kind in one history (quickest: one compact, one detect, two fits); targets differ by
    # kind (an obscure movie for pushes, a hit for the nuke); each kind's precision counts all
    # genuine suspects; more than 10 % of accounts are attackers, so the step's refusal is raised
    "mixed": [
        "push:accounts=20",
        "nuke:accounts=20,day=2",
        "bandwagon:accounts=20,filler=12,day=3",
        "average:accounts=20,filler=12,day=4",
        "flood:accounts=3,requests=400,day=5",
    ],
    "stealth": [
        "bandwagon:accounts=20,day=5,hour=0,hours=120",
        "average:accounts=20,day=5,hour=0,hours=120",
        "push:accounts=20,day=5,hour=0,hours=120",
    ],
}


def machine() -> str:
    load = os.getloadavg()
    mem = psutil.virtual_memory()
    return (
        f"{platform.node()}: {platform.machine()}, {os.cpu_count()} cores, "
        f"{mem.total / 2**30:.0f} GiB; load average {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (1/5/15 min)"
    )


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _exposure(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "—"
    rank = entry["mean_rank"]
    return f"{_pct(entry['share'])}" + (f" (rank {rank:.1f})" if rank is not None else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--movies", type=int, default=600)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--scenarios", default=",".join(s for s in SCENARIOS if s != "mixed"))
    parser.add_argument("--env", default="test", help="config environment (thresholds, Spark)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs (temp)")
    parser.add_argument("--json", type=Path, default=None, help="write all figures here")
    args = parser.parse_args()
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")

    root = args.out or Path(tempfile.mkdtemp(prefix="flixlake-attacks-"))
    print(machine())
    print(
        f"world: {args.users:,} users x {args.movies} movies x {args.days} days, seed {args.seed}; "
        f"config env {args.env!r}; runs under {root}"
    )
    spark = build_spark_session(load_settings(args.env, home=root / "spark"), "bench-attacks")
    results: dict[str, Any] = {}
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        home = root / name
        shutil.rmtree(home, ignore_errors=True)
        results[name] = run_attack_drill(
            spark,
            home,
            users=args.users,
            movies=args.movies,
            days=args.days,
            seed=args.seed,
            env=args.env,
            attacks=[parse_attack(a) for a in SCENARIOS[name]],
            models=() if name == "flood" else (False, True),
            overrides=MIXED if name == "mixed" else ALS,
        )
        print(f"  {name}: {time.perf_counter() - t0:.0f} s  {results[name]['timings']}")
        print(f"    detection {json.dumps(results[name]['detection'], default=str)}")
        print(f"    exposure {json.dumps(results[name]['exposure'], default=str)}", flush=True)
    targets = [m for r in results.values() for m in r["exposure"]]
    t0 = time.perf_counter()
    results["clean"] = run_attack_drill(
        spark,
        root / "clean",
        users=args.users,
        movies=args.movies,
        days=args.days,
        seed=args.seed,
        env=args.env,
        attacks=[],
        targets=targets,
        models=(True,) if targets else (),
        overrides=ALS,
    )
    print(f"  clean: {time.perf_counter() - t0:.0f} s  {results['clean']['timings']}")
    spark.stop()

    print()
    print("detection (one history per scenario; precision counts every genuine suspect in it)")
    print(
        f"{'scenario':10} {'kind':10} {'attackers':>9} {'detected':>8} {'recall':>8} "
        f"{'precision':>9} {'false pos.':>10}  rules that fired (flagged/attackers)"
    )
    for name in [*names, "clean"]:
        det = results[name]["detection"]
        rules = ", ".join(
            f"{rule} {v['flagged']}/{v['attackers']}" for rule, v in det["by_rule"].items()
        )
        kinds = det["kinds"] or {"—": None}
        for kind, k in kinds.items():
            if k is None:
                print(
                    f"{name:10} {'none':10} {0:>9} {0:>8} {'—':>8} {'—':>9} "
                    f"{det['false_positives']:>10}  {rules or '—'}"
                )
                continue
            print(
                f"{name:10} {kind:10} {k['attackers']:>9} {k['detected']:>8} "
                f"{_pct(k['recall']):>8} {_pct(k['precision']):>9} "
                f"{det['false_positives']:>10}  {rules}"
            )
    print()
    print("target exposure in genuine users' top-20 lists: share of lists (mean rank)")
    print(f"{'scenario':10} {'target':32} {'clean':>18} {'attacked':>18} {'mitigated':>18}")
    clean = results["clean"]["exposure"]
    for name in names:
        for movie, entry in results[name]["exposure"].items():
            print(
                f"{name:10} {movie:32} {_exposure((clean.get(movie) or {}).get('mitigated')):>18} "
                f"{_exposure(entry.get('unmitigated')):>18} {_exposure(entry.get('mitigated')):>18}"
            )
    print(f"\ntotal {time.perf_counter() - started:.0f} s; {machine()}")
    if args.json:
        for r in results.values():
            r["labels"] = r["labels"].model_dump(mode="json")
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How often each way of reading an hourly-refreshed A/B report calls a difference: simulated
experiments with users who ask many times (flixlake.testing.clustered_arm), seeded.

For an A/A test (no difference) the rate is the false-positive rate and must stay at or below
the level (5 %); for an A/B test with a real lift it is the power. The analyses:

* ``always_valid``: what ``flixlake experiment report`` does, the per-user mSPRT at every
  hourly look (flixlake.experiments.stats);
* ``per_user_once``: the per-user (delta-method) z-test read once, at the planned end;
* ``per_user_every_hour``: the same z-test read at every hourly look (peeking);
* ``per_answer_once``: the old analysis, answers as independent trials, read once.

    .venv/bin/python bench/experiment_stats.py [--runs 2000] [--users 400] [--hours 24]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np

from flixlake.testing import simulated_verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="simulated experiments per row")
    parser.add_argument("--users", type=int, default=400, help="users per arm")
    parser.add_argument("--hours", type=int, default=24, help="hourly looks")
    parser.add_argument("--tau", type=float, default=0.03, help="online.mixture_sd")
    parser.add_argument("--min-users", type=int, default=100, help="online.min_users")
    parser.add_argument("--seed", type=int, default=20261122)
    args = parser.parse_args()
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}; {args.runs} experiments per row, "
        f"{args.users} users per arm, {args.hours} hourly looks, level 5 %"
    )
    names = ["always_valid", "per_user_once", "per_user_every_hour", "per_answer_once"]
    print(f"{'true lift':>10}  " + "  ".join(f"{n:>19}" for n in names))
    started = time.monotonic()
    for lift in (0.0, 0.05, 0.10):
        rng = np.random.default_rng(args.seed)
        outcomes = [
            simulated_verdicts(rng, args.users, args.hours, lift, args.tau, args.min_users, 0.05)
            for _ in range(args.runs)
        ]
        rates = {n: float(np.mean([o[n] for o in outcomes])) for n in names}
        se = math.sqrt(0.05 * 0.95 / args.runs)
        print(f"{lift:>10.2f}  " + "  ".join(f"{rates[n]:>19.3f}" for n in names))
    print(f"(binomial standard error of a 5 % rate: {se:.3f}; {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()

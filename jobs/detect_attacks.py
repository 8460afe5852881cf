"""Score the run's active accounts for attacks; record suspects in suspected_accounts.

spark-submit jobs/detect_attacks.py --run-date 2026-11-22 [--env local]
"""

import sys

from flixlake.batch.detect import run_detect
from flixlake.ops.jobs import run_job

if __name__ == "__main__":
    sys.exit(
        run_job(run_detect, "Detect attacker accounts on the silver versions pinned by compact")
    )

"""Bronze -> silver for one run date: watch sessions, latest ratings, reco telemetry, movie ids.

spark-submit jobs/compact_silver.py --run-date 2026-11-22 [--env local]
"""

import sys

from flixlake.batch.silver import run_compact
from flixlake.ops.jobs import run_job

if __name__ == "__main__":
    sys.exit(run_job(run_compact, "compact bronze_events into the silver tables up to --run-date"))

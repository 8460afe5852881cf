"""Quality gate on the silver tables of one run date; exit code 3 stops the batch run.

spark-submit jobs/quality_gate.py --run-date 2026-11-22 [--env local]
"""

import sys

from flixlake.batch.quality import run_quality_gate
from flixlake.ops.jobs import run_job

if __name__ == "__main__":
    sys.exit(run_job(run_quality_gate, "check the silver tables compacted for --run-date"))

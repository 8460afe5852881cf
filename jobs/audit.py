"""Audit one day: drift of every input, fairness and exposure per model version.

spark-submit jobs/audit.py --run-date 2026-11-22 [--env local]
"""

import sys

from flixlake.audit.job import run_audit
from flixlake.ops.jobs import run_job

if __name__ == "__main__":
    sys.exit(run_job(run_audit, "Audit: input drift, fairness and exposure per model version"))

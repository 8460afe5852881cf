"""Evaluate the run's ALS model offline against popularity, per user segment, on the test window.

spark-submit jobs/evaluate_model.py --run-date 2026-11-22 [--env local]
"""

import sys

from flixlake.batch.evaluation import run_evaluate
from flixlake.ops.jobs import run_job

if __name__ == "__main__":
    sys.exit(run_job(run_evaluate, "Evaluate ALS vs. popularity @k on the held-out window"))

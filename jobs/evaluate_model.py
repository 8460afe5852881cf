"""Evaluate ALS, popularity, item-kNN and EASE per user segment on the test window; choose one.

spark-submit jobs/evaluate_model.py --run-date 2026-11-22 [--env local]
"""

import sys

from flixlake.batch.evaluation import run_evaluate
from flixlake.ops.jobs import run_job

if __name__ == "__main__":
    sys.exit(run_job(run_evaluate, "Evaluate ALS and the baselines @k; choose the one to serve"))

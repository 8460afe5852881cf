"""Train the run's ALS model (search on sampled users, eval fit, final refit) on pinned silver.

spark-submit jobs/train_model.py --run-date 2026-11-22 [--env local]
"""

import sys

from flixlake.batch.training import run_train
from flixlake.ops.jobs import run_job

if __name__ == "__main__":
    sys.exit(run_job(run_train, "Train implicit ALS on the silver versions pinned by compact"))

"""Publish the run's chosen recommender (ALS or a baseline) as the batch view if the gate passes (else exit 3).

spark-submit jobs/publish_batch_view.py --run-date 2026-11-22 [--env local]
"""

import sys

from flixlake.batch.publish import run_publish
from flixlake.ops.jobs import run_job

if __name__ == "__main__":
    sys.exit(run_job(run_publish, "Gate the chosen recommender and publish its top-N batch view"))

"""Publish the run's model as the batch view only if it passes the publication gate (else exit 3).

spark-submit jobs/publish_batch_view.py --run-date 2026-11-22 [--env local]
"""

import sys

from flixlake.batch.publish import run_publish
from flixlake.ops.jobs import run_job

if __name__ == "__main__":
    sys.exit(run_job(run_publish, "Gate the model and publish its top-N batch view"))

"""Record the run's model with its provenance (inputs, code, libraries) and write its report.

spark-submit jobs/register_model.py --run-date 2026-11-22 [--env local]
"""

import sys

from flixlake.batch.register import run_register
from flixlake.ops.jobs import run_job

if __name__ == "__main__":
    sys.exit(run_job(run_register, "Register the trained model with its provenance"))

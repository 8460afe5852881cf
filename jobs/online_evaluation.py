"""Watch-through of served recommendations per served hour, model version and variant.

spark-submit jobs/online_evaluation.py --until 2026-11-22T10:00:00+00:00 [--env local]
"""

import sys

from flixlake.experiments.online import run_online_evaluation
from flixlake.ops.jobs import run_job

if __name__ == "__main__":
    sys.exit(
        run_job(
            run_online_evaluation,
            "Online evaluation: answers followed by a watch of a recommended movie",
            until=True,
        )
    )

"""Audit one day: drift of every input, fairness and exposure per model version.

spark-submit jobs/audit.py --run-date 2026-11-22 [--env local]

The day's gauges go to ``$FLIXLAKE_HOME/metrics/audit.prom`` and, when
``monitoring.pushgateway_url`` is set, to the Pushgateway as ``job=flixlake_audit``.
"""

import datetime as dt
import sys
from typing import Any

from pyspark.sql import SparkSession

from flixlake.audit.job import run_audit
from flixlake.config import Settings
from flixlake.lake.store import Lake
from flixlake.monitoring.push import push_audit_gauges
from flixlake.ops.jobs import run_job


def audit(spark: SparkSession, lake: Lake, settings: Settings, run_date: dt.date) -> dict[str, Any]:
    summary = run_audit(spark, lake, settings, run_date)
    summary["gauges_pushed"] = push_audit_gauges(settings.monitoring, lake)
    return summary


if __name__ == "__main__":
    sys.exit(run_job(audit, "Audit: input drift, fairness and exposure per model version"))

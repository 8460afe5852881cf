"""The daily audit: drift of every input, fairness and exposure per model version.

One task, ``spark-submit <repo>/jobs/audit.py --run-date <day>``: it audits the last complete
day before the run's logical time (the run due 2026-11-23 05:00 audits 2026-11-22; a manual run
without a logical date audits the day before it was triggered), after the nightly
``flixlake_batch`` run (``airflow.schedule``, 03:00) has published that day's model. It replaces
the day's rows of ``audit_drift``, ``audit_fairness`` and ``audit_requirements``, writes the
gauges for the alerts and the HTML report, so retries and reruns are safe. A drifted input or an
unmet requirement is a finding, not a failure: the task fails only when it cannot measure.

Parsing stays cheap, as in ``flixlake_batch``: the YAML config and environment variables only
(:mod:`flixlake.ops.dag_tasks`).
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, CronTriggerTimetable

from flixlake.ops.dag_tasks import (
    RUN_DATE_TEMPLATE,
    TIMEZONE,
    dag_args,
    dag_setup,
    spark_submit_command,
)

SETUP = dag_setup(__file__)  # the repository, the tasks' environment and settings

with DAG(
    dag_id="flixlake_audit",
    description="input drift, fairness and exposure per model version -> audit tables, metrics, report",
    schedule=CronTriggerTimetable(SETUP.settings.airflow.audit_schedule, timezone=TIMEZONE),
    dagrun_timeout=dt.timedelta(hours=3),
    tags=["flixlake", "audit", "spark"],
    doc_md=__doc__,
    **dag_args(SETUP.settings.airflow),  # start date, no catch-up, retries, run callbacks
) as dag:
    BashOperator(
        task_id="audit",
        bash_command=spark_submit_command(
            SETUP.repo / "jobs" / "audit.py",
            SETUP.settings.spark.driver_memory,
            f"--run-date {RUN_DATE_TEMPLATE}",
        ),
        env=SETUP.task_env,
        append_env=True,
        doc_md="Drift, fairness and exposure of one day (`flixlake.audit.job:run_audit`)",
    )

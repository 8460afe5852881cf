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
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, CronTriggerTimetable

from flixlake.config import ENV_VAR, HOME_VAR, load_settings
from flixlake.ops.dag_tasks import (
    RUN_DATE_TEMPLATE,
    TIMEZONE,
    default_args,
    push_dag_run,
    spark_submit_command,
    task_env,
)

REPO = Path(__file__).resolve().parent.parent
TASK_ENV = task_env(REPO)

settings = load_settings(TASK_ENV[ENV_VAR], home=TASK_ENV[HOME_VAR])

with DAG(
    dag_id="flixlake_audit",
    description="input drift, fairness and exposure per model version -> audit tables, metrics, report",
    schedule=CronTriggerTimetable(settings.airflow.audit_schedule, timezone=TIMEZONE),
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(settings.airflow),
    dagrun_timeout=dt.timedelta(hours=3),
    tags=["flixlake", "audit", "spark"],
    doc_md=__doc__,
    on_success_callback=push_dag_run,  # outcome and duration to the Pushgateway (monitoring)
    on_failure_callback=push_dag_run,
) as dag:
    BashOperator(
        task_id="audit",
        bash_command=spark_submit_command(
            REPO / "jobs" / "audit.py",
            settings.spark.driver_memory,
            f"--run-date {RUN_DATE_TEMPLATE}",
        ),
        env=TASK_ENV,
        append_env=True,
        doc_md="Drift, fairness and exposure of one day (`flixlake.audit.job:run_audit`)",
    )

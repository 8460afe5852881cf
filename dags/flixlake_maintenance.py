"""The daily table lifecycle: retention, compaction, vacuum, log cleanup, pruning.

One task, ``flixlake maintain --run-date <day>`` (delta-rs only, no Spark): for every table of
the registry it sets the Delta retention properties from ``lifecycle`` in the config, drops the
``batch_recommendations`` partitions of models no longer kept for rollback, compacts small files
(closed days only where the stream appends), vacuums files removed longer ago than the
retention, writes a checkpoint and deletes expired commits; old run folders go too. Each table
gets a ``maintenance_runs`` row (files, bytes and log length before and after).

``<day>`` is the last complete day before the run's logical time, as in ``flixlake_batch``: the
run due 2026-11-23 01:30 treats 2026-11-22 as closed. It runs before the nightly batch run
(``airflow.maintenance_schedule``, default 01:30) so it never prunes beside a publish. Every
step is idempotent, so retries and reruns are safe; the task fails when a table's maintenance
failed (the others still ran, the row has the error).

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
    flixlake_command,
    push_dag_run,
    task_env,
)

REPO = Path(__file__).resolve().parent.parent
TASK_ENV = task_env(REPO)

settings = load_settings(TASK_ENV[ENV_VAR], home=TASK_ENV[HOME_VAR])

with DAG(
    dag_id="flixlake_maintenance",
    description="table lifecycle: retention, compaction, vacuum, log cleanup, rollback pruning",
    schedule=CronTriggerTimetable(settings.airflow.maintenance_schedule, timezone=TIMEZONE),
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(settings.airflow),
    dagrun_timeout=dt.timedelta(hours=2),
    tags=["flixlake", "maintenance"],
    doc_md=__doc__,
    on_success_callback=push_dag_run,  # outcome and duration to the Pushgateway (monitoring)
    on_failure_callback=push_dag_run,
) as dag:
    BashOperator(
        task_id="maintain",
        bash_command=flixlake_command(f"maintain --run-date {RUN_DATE_TEMPLATE}"),
        env=TASK_ENV,
        append_env=True,
        doc_md="Lifecycle of every table and the artifacts (`flixlake.lake.lifecycle:run_maintenance`)",
    )

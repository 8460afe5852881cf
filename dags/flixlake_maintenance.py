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

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, CronTriggerTimetable

from flixlake.ops.dag_tasks import (
    RUN_DATE_TEMPLATE,
    TIMEZONE,
    dag_args,
    dag_setup,
    flixlake_command,
)

SETUP = dag_setup(__file__)  # the repository, the tasks' environment and settings

with DAG(
    dag_id="flixlake_maintenance",
    description="table lifecycle: retention, compaction, vacuum, log cleanup, rollback pruning",
    schedule=CronTriggerTimetable(SETUP.settings.airflow.maintenance_schedule, timezone=TIMEZONE),
    dagrun_timeout=dt.timedelta(hours=2),
    tags=["flixlake", "maintenance"],
    doc_md=__doc__,
    **dag_args(SETUP.settings.airflow),  # start date, no catch-up, retries, run callbacks
) as dag:
    BashOperator(
        task_id="maintain",
        bash_command=flixlake_command(f"maintain --run-date {RUN_DATE_TEMPLATE}"),
        env=SETUP.task_env,
        append_env=True,
        doc_md="Lifecycle of every table and the artifacts (`flixlake.lake.lifecycle:run_maintenance`)",
    )

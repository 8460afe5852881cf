"""What the DAG files share: their tasks' environment, spark-submit command, default args and
the templates that turn a run's logical time into what the jobs take.

Both DAGs use Airflow 3's cron *trigger* timetable explicitly (not whatever
``[scheduler] create_cron_data_intervals`` selects): a scheduled run's logical date is the moment
it is due, e.g. 2026-11-23T03:00 for the nightly batch run. So a job never reads ``{{ ds }}``
directly; it gets what is complete at that moment:

- ``--run-date`` (:data:`RUN_DATE_TEMPLATE`): the last complete day, the day before the logical
  date: the run due 2026-11-23T03:00 processes 2026-11-22. The same rule holds for a manual run
  (``airflow dags test flixlake_batch 2026-11-23`` or a trigger with that logical date) and, for
  a manual run without a logical date, for the day it was triggered.
- ``--until`` (:data:`UNTIL_TEMPLATE`): the logical time itself: the hourly run due 13:00
  evaluates the hours served before 13:00.

Airflow calls these while it parses a DAG file, so they only read environment variables:
``FLIXLAKE_HOME`` (default ``<repo>/var``), ``FLIXLAKE_ENV`` (default ``local``),
``FLIXLAKE_SPARK_SUBMIT`` (default: ``spark-submit`` beside this Python, i.e. the venv's) and
``PYSPARK_PYTHON`` (default: this Python). No Airflow import, no Spark, no lake access.

:func:`push_dag_run` is both DAGs' run callback (success and failure): it pushes the run's
outcome and duration to the Pushgateway (``monitoring.pushgateway_url``), group
``job=flixlake_dag, dag_id=<id>``, which the DAG-failure alert reads.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flixlake.config import (
    ENV_VAR,
    HOME_VAR,
    PROJECT_ROOT,
    AirflowConfig,
    ConfigError,
    load_settings,
)
from flixlake.monitoring.push import dag_registry, push

log = logging.getLogger(__name__)

SPARK_SUBMIT_VAR = "FLIXLAKE_SPARK_SUBMIT"
TIMEZONE = "UTC"  # log times are UTC, so days and hours of the schedules are too

# a run's logical time: when it was due (scheduled), the time it was given (manual), or the time
# it was triggered (a manual run without a logical date, which Airflow 3 allows)
_LOGICAL_TIME = "(logical_date if logical_date is defined else dag_run.run_after)"
RUN_DATE_TEMPLATE = "{{ macros.ds_add(" + _LOGICAL_TIME + " | ds, -1) }}"
UNTIL_TEMPLATE = "{{ " + _LOGICAL_TIME + ".isoformat() }}"


def task_env(repo: Path) -> dict[str, str]:
    """Environment every task runs with, so jobs load the same settings the DAG was parsed with."""
    python = os.environ.get("PYSPARK_PYTHON") or sys.executable  # not resolved: keep the venv path
    return {
        HOME_VAR: os.environ.get(HOME_VAR) or str(repo / "var"),
        ENV_VAR: os.environ.get(ENV_VAR) or "local",
        "PYSPARK_PYTHON": python,
        "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON") or python,
    }


def spark_submit_command(job: Path, driver_memory: str, job_args: str) -> str:
    """A job's shell command; driver memory must be given here (the JVM starts first).

    ``job_args`` is appended as is, so it may hold Airflow templates (``--run-date {{ ds }}``).
    """
    spark_submit = os.environ.get(SPARK_SUBMIT_VAR) or str(
        Path(sys.executable).parent / "spark-submit"
    )
    return (
        f"{shlex.quote(spark_submit)} --driver-memory {shlex.quote(driver_memory)} "
        f"{shlex.quote(str(job))} {job_args}"
    )


def default_args(airflow: AirflowConfig) -> dict[str, Any]:
    """Owner and retry policy of every flixlake task (retries are safe: jobs are idempotent)."""
    return {
        "owner": "flixlake",
        "retries": airflow.retries,
        "retry_delay": dt.timedelta(minutes=airflow.retry_delay_minutes),
    }


def push_dag_run(context: Mapping[str, Any]) -> None:
    """A DAG run ended (Airflow's ``on_success_callback``/``on_failure_callback``): push it."""
    dag_run = context.get("dag_run")
    if dag_run is None:
        return
    ok = str(getattr(dag_run, "state", "")).lower().endswith("success")
    started, ended = getattr(dag_run, "start_date", None), getattr(dag_run, "end_date", None)
    finished = ended.timestamp() if ended is not None else time.time()
    seconds = finished - started.timestamp() if started is not None else None
    env = task_env(PROJECT_ROOT)
    try:
        settings = load_settings(env[ENV_VAR], home=env[HOME_VAR])
    except ConfigError as exc:
        log.warning("DAG run metrics not pushed: %s", exc)
        return
    push(
        settings.monitoring,
        "flixlake_dag",
        {"dag_id": str(getattr(dag_run, "dag_id", "unknown"))},
        dag_registry(str(getattr(dag_run, "dag_id", "")), ok, seconds, finished),
    )

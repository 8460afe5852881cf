"""What the DAG files share: their settings and tasks' environment (:func:`dag_setup`), the
``DAG(...)`` arguments they have in common (:func:`dag_args`), the spark-submit command (and the
``flixlake`` CLI's, for tasks without Spark such as ``flixlake maintain``) and the templates that
turn a run's logical time into what the jobs take.

Every DAG uses Airflow 3's cron *trigger* timetable explicitly (not whatever
``[scheduler] create_cron_data_intervals`` selects): a scheduled run's logical date is the moment
it is due, e.g. 2026-11-23T03:00 for the nightly batch run. So a job never reads ``{{ ds }}``
directly; it gets what is complete at that moment:

- ``--run-date`` (:data:`RUN_DATE_TEMPLATE`): the last complete day, the day before the logical
  date: the run due 2026-11-23T03:00 processes 2026-11-22. The same rule holds for a manual run
  (``airflow dags test flixlake_batch 2026-11-23`` or a trigger with that logical date) and, for
  a manual run without a logical date, for the day it was triggered.
- ``--until`` (:data:`UNTIL_TEMPLATE`): the logical time itself: the hourly run due 13:00
  evaluates the hours served before 13:00.

Airflow calls these while it parses a DAG file, so they only read the YAML config
(:func:`dag_setup`) and environment variables:
``FLIXLAKE_HOME`` (default ``<repo>/var``), ``FLIXLAKE_ENV`` (default ``local``),
``FLIXLAKE_SPARK_SUBMIT`` (default: ``spark-submit`` beside this Python, i.e. the venv's) and
``PYSPARK_PYTHON`` (default: this Python), and list the jar folder ``make`` resolved
``jvm/pom.xml`` into (:mod:`flixlake.ops.jvm`). No Airflow import, no Spark, no lake access.

:func:`push_dag_run` is every DAG's run callback (success and failure): it pushes the run's
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flixlake.config import (
    ENV_VAR,
    HOME_VAR,
    PROJECT_ROOT,
    AirflowConfig,
    ConfigError,
    Settings,
    load_settings,
)
from flixlake.monitoring.push import dag_registry, push
from flixlake.ops.jvm import spark_jars_option

log = logging.getLogger(__name__)

SPARK_SUBMIT_VAR = "FLIXLAKE_SPARK_SUBMIT"
TIMEZONE = "UTC"  # log times are UTC, so days and hours of the schedules are too
START_DATE = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)

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


def spark_submit_argv(job: Path, driver_memory: str) -> list[str]:
    """spark-submit with what must be known before its JVM starts: driver memory, the jars.

    ``--jars`` (delta-spark, Spark's Kafka source) puts them on the driver's classpath; the
    session's ``spark.jars`` would come too late under spark-submit.
    """
    spark_submit = os.environ.get(SPARK_SUBMIT_VAR) or str(
        Path(sys.executable).parent / "spark-submit"
    )
    return [
        spark_submit,
        "--driver-memory",
        driver_memory,
        "--jars",
        spark_jars_option(),
        str(job),
    ]


def spark_submit_command(job: Path, driver_memory: str, job_args: str) -> str:
    """A job's shell command (:func:`spark_submit_argv`, quoted) followed by its arguments.

    ``job_args`` is appended as is, so it may hold Airflow templates (``--run-date {{ ds }}``).
    """
    return f"{shlex.join(spark_submit_argv(job, driver_memory))} {job_args}"


def flixlake_command(args: str) -> str:
    """A task that needs no Spark: the ``flixlake`` CLI beside this Python (the venv's).

    ``args`` is appended as is, so it may hold Airflow templates (``--run-date {{ ds }}``).
    """
    return f"{shlex.quote(str(Path(sys.executable).parent / 'flixlake'))} {args}"


@dataclass(frozen=True)
class DagSetup:
    """What a DAG file starts from: the repository, its tasks' environment, their settings."""

    repo: Path
    task_env: dict[str, str]
    settings: Settings


def dag_setup(dag_file: str) -> DagSetup:
    """For the DAG file at ``dag_file`` (in ``<repo>/dags/``): the settings its tasks will load."""
    repo = Path(dag_file).resolve().parent.parent
    env = task_env(repo)
    return DagSetup(repo, env, load_settings(env[ENV_VAR], home=env[HOME_VAR]))


def default_args(airflow: AirflowConfig) -> dict[str, Any]:
    """Owner and retry policy of every flixlake task (retries are safe: jobs are idempotent)."""
    return {
        "owner": "flixlake",
        "retries": airflow.retries,
        "retry_delay": dt.timedelta(minutes=airflow.retry_delay_minutes),
    }


def dag_args(airflow: AirflowConfig) -> dict[str, Any]:
    """The ``DAG(...)`` arguments every flixlake DAG shares (``**dag_args(...)``).

    No catch-up and one run at a time (a run processes what is complete at its logical time, and
    runs of one DAG write the same tables), the task defaults of :func:`default_args`, and
    :func:`push_dag_run` as the run's success and failure callback (monitoring).
    """
    return {
        "start_date": START_DATE,
        "catchup": False,
        "max_active_runs": 1,
        "default_args": default_args(airflow),
        "on_success_callback": push_dag_run,
        "on_failure_callback": push_dag_run,
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

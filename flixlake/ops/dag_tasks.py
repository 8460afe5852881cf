"""What the DAG files share: their tasks' environment, spark-submit command and default args.

Airflow calls these while it parses a DAG file, so they only read environment variables:
``FLIXLAKE_HOME`` (default ``<repo>/var``), ``FLIXLAKE_ENV`` (default ``local``),
``FLIXLAKE_SPARK_SUBMIT`` (default: ``spark-submit`` beside this Python, i.e. the venv's) and
``PYSPARK_PYTHON`` (default: this Python), and list the jar folder ``make`` resolved
``jvm/pom.xml`` into (:mod:`flixlake.ops.jvm`). No Airflow import, no Spark, no lake access.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from flixlake.config import ENV_VAR, HOME_VAR, AirflowConfig
from flixlake.ops.jvm import spark_jars_option

SPARK_SUBMIT_VAR = "FLIXLAKE_SPARK_SUBMIT"


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


def default_args(airflow: AirflowConfig) -> dict[str, Any]:
    """Owner and retry policy of every flixlake task (retries are safe: jobs are idempotent)."""
    return {
        "owner": "flixlake",
        "retries": airflow.retries,
        "retry_delay": dt.timedelta(minutes=airflow.retry_delay_minutes),
    }

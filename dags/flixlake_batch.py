"""The flixlake batch layer on a schedule: one spark-submit job per step, in pipeline order.

compact_silver -> quality_gate -> train_model -> evaluate_model -> register_model ->
publish_batch_view, each ``spark-submit <repo>/jobs/<task>.py --run-date {{ ds }}``. Every job is
idempotent for its run date, so Airflow retries and manual reruns are safe; a failed gate
(exit code 3) fails its task and nothing downstream runs.

Parsing stays cheap: this file reads the YAML config (schedule, retries, driver memory) and
the step list, nothing else — no Spark, no lake access. Environment at parse time:
``FLIXLAKE_HOME`` (default ``<repo>/var``), ``FLIXLAKE_ENV`` (default ``local``),
``FLIXLAKE_SPARK_SUBMIT`` (default: ``spark-submit`` beside this Python, i.e. the venv's),
``PYSPARK_PYTHON`` (default: this Python); all are passed to the tasks.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import sys
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, chain

from flixlake.config import ENV_VAR, HOME_VAR, load_settings
from flixlake.pipeline import BATCH_STEPS

REPO = Path(__file__).resolve().parent.parent
JOBS_DIR = REPO / "jobs"
PYTHON = os.environ.get("PYSPARK_PYTHON") or sys.executable  # not resolved: keep the venv path
SPARK_SUBMIT = os.environ.get("FLIXLAKE_SPARK_SUBMIT") or str(
    Path(sys.executable).parent / "spark-submit"
)
TASK_ENV = {
    HOME_VAR: os.environ.get(HOME_VAR) or str(REPO / "var"),
    ENV_VAR: os.environ.get(ENV_VAR) or "local",
    "PYSPARK_PYTHON": PYTHON,
    "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON") or PYTHON,
}

settings = load_settings(TASK_ENV[ENV_VAR], home=TASK_ENV[HOME_VAR])


def spark_submit_command(task_id: str) -> str:
    """The shell command of one step; driver memory must be given here (the JVM starts first)."""
    job = JOBS_DIR / f"{task_id}.py"
    return (
        f"{shlex.quote(SPARK_SUBMIT)} --driver-memory {shlex.quote(settings.spark.driver_memory)} "
        f"{shlex.quote(str(job))} --run-date {{{{ ds }}}}"
    )


with DAG(
    dag_id="flixlake_batch",
    description="bronze -> silver -> ALS -> evaluation -> registry -> gated batch view",
    schedule=settings.airflow.schedule,
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args={
        "owner": "flixlake",
        "retries": settings.airflow.retries,
        "retry_delay": dt.timedelta(minutes=settings.airflow.retry_delay_minutes),
    },
    dagrun_timeout=dt.timedelta(hours=6),
    tags=["flixlake", "batch", "spark"],
    doc_md=__doc__,
) as dag:
    chain(
        *[
            BashOperator(
                task_id=step.task_id,
                bash_command=spark_submit_command(step.task_id),
                env=TASK_ENV,
                append_env=True,
                doc_md=f"{step.description} (`{step.function}`)",
            )
            for step in BATCH_STEPS
        ]
    )

"""The flixlake batch layer on a schedule: one spark-submit job per step, in pipeline order.

compact_silver -> quality_gate -> detect_attacks -> train_model -> evaluate_model ->
register_model -> publish_batch_view, each ``spark-submit <repo>/jobs/<task>.py --run-date <day>``. Every job is
idempotent for its run date, so Airflow retries and manual reruns are safe. Exit codes
(:mod:`flixlake.ops.jobs`): 0 done; 2 a user error (bad date, missing table or step); 3 a gate
refused (the quality gate, the attack detector suspecting too many accounts, or publish: the chosen candidate regresses from the current model);
4 training could not fit any ALS candidate (one-line reason; traces in
``runs/<day>/train.log``); 1 anything else. Any non-zero code fails its task and nothing
downstream runs, so the current model keeps serving.

evaluate_model measures ALS, popularity, item-kNN and EASE on the same users and window and
chooses the one to serve (:mod:`flixlake.batch.gate`); publish_batch_view writes that
candidate's top-N for every user -- ALS or a baseline, the same ``batch_recommendations``
schema.

**Which day a run processes: the last complete day before its logical date.** The schedule
(``airflow.schedule``, default ``0 3 * * *`` UTC) is a cron *trigger* timetable: the run due at
2026-11-23 03:00 has that logical date and processes 2026-11-22 (``--run-date 2026-11-22``; the
three hours leave late lines time to land). The same holds for manual runs: to (re)process
2026-11-22, trigger with logical date 2026-11-23 (``airflow dags test flixlake_batch
2026-11-23``); a manual run without a logical date processes the day before it was triggered. A
run never processes a day that is not over.

Parsing stays cheap: this file reads the YAML config (schedule, retries, driver memory) and
the step list, nothing else — no Spark, no lake access. Environment at parse time:
``FLIXLAKE_HOME`` (default ``<repo>/var``), ``FLIXLAKE_ENV`` (default ``local``),
``FLIXLAKE_SPARK_SUBMIT`` (default: ``spark-submit`` beside this Python, i.e. the venv's),
``PYSPARK_PYTHON`` (default: this Python); all are passed to the tasks.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, CronTriggerTimetable, chain

from flixlake.batch.pipeline import BATCH_STEPS
from flixlake.ops.dag_tasks import (
    RUN_DATE_TEMPLATE,
    TIMEZONE,
    dag_args,
    dag_setup,
    spark_submit_command,
)

SETUP = dag_setup(__file__)  # the repository, the tasks' environment and settings
JOBS_DIR = SETUP.repo / "jobs"


with DAG(
    dag_id="flixlake_batch",
    description="bronze -> silver -> ALS + baselines -> evaluation -> registry -> best one's batch view",
    schedule=CronTriggerTimetable(SETUP.settings.airflow.schedule, timezone=TIMEZONE),
    dagrun_timeout=dt.timedelta(hours=6),
    tags=["flixlake", "batch", "spark"],
    doc_md=__doc__,
    **dag_args(SETUP.settings.airflow),  # start date, no catch-up, retries, run callbacks
) as dag:
    chain(
        *[
            BashOperator(
                task_id=step.task_id,
                bash_command=spark_submit_command(
                    JOBS_DIR / f"{step.task_id}.py",
                    SETUP.settings.spark.driver_memory,
                    f"--run-date {RUN_DATE_TEMPLATE}",
                ),
                env=SETUP.task_env,
                append_env=True,
                doc_md=f"{step.description} (`{step.function}`)",
            )
            for step in BATCH_STEPS
        ]
    )

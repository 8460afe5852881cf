"""Online evaluation every hour: did users watch what the service recommended to them?

One task, ``spark-submit <repo>/jobs/online_evaluation.py --until <logical time>``: it
recomputes each user's served and converted answers for the last ``online.lookback_hours``
complete served hours before that time (an hour is complete once the watch window after it has
passed) and replaces those hours' rows in ``online_evaluations``, so retries, reruns and late
data are safe.

The schedule (``airflow.online_schedule``, default ``@hourly`` UTC) is a cron *trigger* timetable:
the run due at 13:00 has logical date 13:00 and evaluates up to 13:00 (``--until
2026-11-22T13:00:00+00:00``); a manual run without a logical date, up to when it was triggered.

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
    TIMEZONE,
    UNTIL_TEMPLATE,
    default_args,
    push_dag_run,
    spark_submit_command,
    task_env,
)

REPO = Path(__file__).resolve().parent.parent
TASK_ENV = task_env(REPO)

settings = load_settings(TASK_ENV[ENV_VAR], home=TASK_ENV[HOME_VAR])

with DAG(
    dag_id="flixlake_online",
    description="served answers + watch events -> watch-through per hour, variant, model and user",
    schedule=CronTriggerTimetable(settings.airflow.online_schedule, timezone=TIMEZONE),
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(settings.airflow),
    on_success_callback=push_dag_run,  # outcome and duration to the Pushgateway (monitoring)
    on_failure_callback=push_dag_run,
    dagrun_timeout=dt.timedelta(hours=1),
    tags=["flixlake", "online", "spark"],
    doc_md=__doc__,
) as dag:
    BashOperator(
        task_id="online_evaluation",
        bash_command=spark_submit_command(
            REPO / "jobs" / "online_evaluation.py",
            settings.spark.driver_memory,
            f'--until "{UNTIL_TEMPLATE}"',
        ),
        env=TASK_ENV,
        append_env=True,
        doc_md="Watch-through of served answers (`flixlake.experiments.online:run_online_evaluation`)",
    )

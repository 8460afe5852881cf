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

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, CronTriggerTimetable

from flixlake.ops.dag_tasks import (
    TIMEZONE,
    UNTIL_TEMPLATE,
    dag_args,
    dag_setup,
    spark_submit_command,
)

SETUP = dag_setup(__file__)  # the repository, the tasks' environment and settings

with DAG(
    dag_id="flixlake_online",
    description="served answers + watch events -> watch-through per hour, variant, model and user",
    schedule=CronTriggerTimetable(SETUP.settings.airflow.online_schedule, timezone=TIMEZONE),
    dagrun_timeout=dt.timedelta(hours=1),
    tags=["flixlake", "online", "spark"],
    doc_md=__doc__,
    **dag_args(SETUP.settings.airflow),  # start date, no catch-up, retries, run callbacks
) as dag:
    BashOperator(
        task_id="online_evaluation",
        bash_command=spark_submit_command(
            SETUP.repo / "jobs" / "online_evaluation.py",
            SETUP.settings.spark.driver_memory,
            f'--until "{UNTIL_TEMPLATE}"',
        ),
        env=SETUP.task_env,
        append_env=True,
        doc_md="Watch-through of served answers (`flixlake.experiments.online:run_online_evaluation`)",
    )

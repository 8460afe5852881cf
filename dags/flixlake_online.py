"""Online evaluation every hour: did users watch what the service recommended to them?

One task, ``spark-submit <repo>/jobs/online_evaluation.py --until {{ data_interval_end }}``: it
recomputes watch-through for the last ``online.lookback_hours`` complete served hours before the
end of the data interval (an hour is complete once the watch window after it has passed) and
replaces those hours' rows in ``online_evaluations``, so retries, reruns and late data are safe.

Parsing stays cheap, as in ``flixlake_batch``: the YAML config and environment variables only
(:mod:`flixlake.ops.dag_tasks`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

from flixlake.config import ENV_VAR, HOME_VAR, load_settings
from flixlake.ops.dag_tasks import default_args, push_dag_run, spark_submit_command, task_env

REPO = Path(__file__).resolve().parent.parent
TASK_ENV = task_env(REPO)

settings = load_settings(TASK_ENV[ENV_VAR], home=TASK_ENV[HOME_VAR])

with DAG(
    dag_id="flixlake_online",
    description="served answers + watch events -> watch-through per hour, model and variant",
    schedule=settings.airflow.online_schedule,
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
            '--until "{{ data_interval_end }}"',
        ),
        env=TASK_ENV,
        append_env=True,
        doc_md="Watch-through of served answers (`flixlake.experiments.online:run_online_evaluation`)",
    )

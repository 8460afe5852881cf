"""The online DAG parses cleanly and runs the online evaluation hourly up to the interval end."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def test_online_dag_loads_without_import_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert {"flixlake_batch", "flixlake_online"} <= set(dagbag.dag_ids)


def test_schedule_and_run_policy_come_from_the_config(dagbag: Any) -> None:
    dag = dagbag.dags["flixlake_online"]
    assert dag.schedule == "@hourly"  # conf/base.yaml airflow.online_schedule
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert "online" in dag.tags
    assert dag.task_ids == ["online_evaluation"]
    task = dag.get_task("online_evaluation")
    assert task.retries == 0  # conf/test.yaml overrides base's 2
    assert task.retry_delay == dt.timedelta(minutes=5)


def test_task_spark_submits_the_job_up_to_the_interval_end(dagbag: Any) -> None:
    task = dagbag.dags["flixlake_online"].get_task("online_evaluation")
    command = task.bash_command
    assert command.startswith("/opt/spark/bin/spark-submit ")  # FLIXLAKE_SPARK_SUBMIT wins
    assert "--driver-memory 2g" in command  # conf/test.yaml
    assert command.endswith(
        f'{REPO}/jobs/online_evaluation.py --until "{{{{ data_interval_end }}}}"'
    )
    assert task.append_env is True
    assert task.env["FLIXLAKE_ENV"] == "test"
    assert os.path.isabs(task.env["PYSPARK_PYTHON"])


def test_job_rejects_a_bad_until_before_starting_spark() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "online_evaluation.py"), "--until", "yesterday"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FLIXLAKE_ENV": "test"},
    )
    assert done.returncode == 2
    assert "--until must be an ISO-8601 time" in done.stderr

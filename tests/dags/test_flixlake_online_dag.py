"""The online DAG parses cleanly and runs the online evaluation hourly up to the interval end."""

from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from flixlake.ops.jobs import parse_until

REPO = Path(__file__).resolve().parents[2]


def test_online_dag_loads_without_import_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert {"flixlake_batch", "flixlake_online"} <= set(dagbag.dag_ids)


def test_schedule_and_run_policy_come_from_the_config(dagbag: Any) -> None:
    dag = dagbag.dags["flixlake_online"]
    # conf/base.yaml airflow.online_schedule (@hourly), as a trigger timetable
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert dag.timetable.expression == "0 * * * *"
    assert str(dag.timetable.timezone) == "UTC"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert "online" in dag.tags
    assert dag.task_ids == ["online_evaluation"]
    task = dag.get_task("online_evaluation")
    assert task.retries == 0  # conf/test.yaml overrides base's 2
    assert task.retry_delay == dt.timedelta(minutes=5)


def test_task_spark_submits_the_job_up_to_the_runs_logical_time(dagbag: Any) -> None:
    task = dagbag.dags["flixlake_online"].get_task("online_evaluation")
    command = task.bash_command
    assert command.startswith("/opt/spark/bin/spark-submit ")  # FLIXLAKE_SPARK_SUBMIT wins
    assert "--driver-memory 2g" in command  # conf/test.yaml
    assert f'{REPO}/jobs/online_evaluation.py --until "{{{{ ' in command
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


def _until(command: str) -> dt.datetime:
    """The job's own reading of the rendered ``--until`` argument."""
    (value,) = shlex.split(command.split("--until", 1)[1])
    return parse_until(value)


def test_a_scheduled_run_evaluates_up_to_the_hour_it_is_due(
    dagbag: Any, scheduled_run: Any, render_command: Any
) -> None:
    dag = dagbag.dags["flixlake_online"]
    run = scheduled_run(dag, after=dt.datetime(2026, 11, 22, 12, 20, tzinfo=dt.UTC))
    assert run["run_after"] == dt.datetime(2026, 11, 22, 13, 0, tzinfo=dt.UTC)
    command = render_command(dag.get_task("online_evaluation"), run)
    assert command.endswith('--until "2026-11-22T13:00:00+00:00"')
    assert _until(command) == dt.datetime(2026, 11, 22, 13, 0, tzinfo=dt.UTC)


def test_a_manual_run_evaluates_up_to_its_logical_time_or_its_trigger(
    dagbag: Any, manual_run: Any, render_command: Any
) -> None:
    dag = dagbag.dags["flixlake_online"]
    task = dag.get_task("online_evaluation")
    given = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)
    later = dt.datetime(2026, 11, 22, 13, 25, 10, tzinfo=dt.UTC)
    assert _until(render_command(task, manual_run(dag, later, given))) == given
    assert _until(render_command(task, manual_run(dag, later, None))) == later

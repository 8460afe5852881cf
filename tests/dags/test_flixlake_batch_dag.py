"""The batch DAG parses cleanly and wires the seven spark-submit jobs in pipeline order."""

from __future__ import annotations

import datetime as dt
import itertools
import os
from pathlib import Path
from typing import Any

import pytest

from flixlake.lake.runs import parse_run_date

REPO = Path(__file__).resolve().parents[2]
ORDER = [
    "compact_silver",
    "quality_gate",
    "detect_attacks",
    "train_model",
    "evaluate_model",
    "register_model",
    "publish_batch_view",
]


def test_dag_folder_has_no_import_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert "flixlake_batch" in dagbag.dag_ids


def test_schedule_and_run_policy_come_from_the_test_config(dagbag: Any) -> None:
    dag = dagbag.dags["flixlake_batch"]
    # conf/base.yaml, as a trigger timetable whatever create_cron_data_intervals says
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert dag.timetable.expression == "0 3 * * *"
    assert str(dag.timetable.timezone) == "UTC"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert "flixlake" in dag.tags
    for task in dag.tasks:
        assert task.retries == 0  # conf/test.yaml overrides base's 2
        assert task.retry_delay == dt.timedelta(minutes=5)


def test_tasks_run_in_pipeline_order(dagbag: Any) -> None:
    dag = dagbag.dags["flixlake_batch"]
    assert sorted(dag.task_ids) == sorted(ORDER)
    for upstream, downstream in itertools.pairwise(ORDER):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    assert dag.get_task("compact_silver").upstream_task_ids == set()
    assert dag.get_task("publish_batch_view").downstream_task_ids == set()


@pytest.mark.parametrize("task_id", ORDER)
def test_each_task_spark_submits_its_job_for_the_logical_date(dagbag: Any, task_id: str) -> None:
    task = dagbag.dags["flixlake_batch"].get_task(task_id)
    command = task.bash_command
    assert command.startswith("/opt/spark/bin/spark-submit ")  # FLIXLAKE_SPARK_SUBMIT wins
    assert "--driver-memory 2g" in command  # conf/test.yaml
    assert f"{REPO}/jobs/{task_id}.py --run-date {{{{ " in command
    assert task.append_env is True
    assert task.env["FLIXLAKE_ENV"] == "test"
    assert task.env["FLIXLAKE_HOME"].endswith("flixlake")
    assert os.path.isabs(task.env["PYSPARK_PYTHON"])


@pytest.mark.parametrize("task_id", ORDER)
def test_every_task_has_its_job_file(task_id: str) -> None:
    assert (REPO / "jobs" / f"{task_id}.py").is_file()


@pytest.mark.parametrize("task_id", ORDER)
def test_a_scheduled_run_processes_the_day_that_just_ended(
    dagbag: Any, scheduled_run: Any, render_command: Any, task_id: str
) -> None:
    """The nightly run due 2026-11-23T03:00 (its logical date) processes all of 2026-11-22."""
    dag = dagbag.dags["flixlake_batch"]
    run = scheduled_run(dag, after=dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC))
    assert run["run_after"] == dt.datetime(2026, 11, 23, 3, 0, tzinfo=dt.UTC)
    assert run["logical_date"] == run["run_after"]  # Airflow 3's trigger timetable
    command = render_command(dag.get_task(task_id), run)
    assert command.endswith(f"{REPO}/jobs/{task_id}.py --run-date 2026-11-22")
    assert parse_run_date(command.rsplit(" ", 1)[1]) == dt.date(2026, 11, 22)  # the job's parser


def test_a_run_due_just_after_midnight_still_processes_the_day_before(
    dagbag: Any, scheduled_run: Any, render_command: Any
) -> None:
    """Whatever the cron time: a year boundary, a run at 00:00 — never the day not yet over."""
    dag = dagbag.dags["flixlake_batch"]
    run = scheduled_run(dag, after=dt.datetime(2026, 12, 31, 3, 30, tzinfo=dt.UTC))
    assert run["run_after"] == dt.datetime(2027, 1, 1, 3, 0, tzinfo=dt.UTC)
    assert render_command(dag.get_task("compact_silver"), run).endswith("--run-date 2026-12-31")


@pytest.mark.parametrize(
    ("logical_date", "run_after", "run_date"),
    [
        # `airflow dags test flixlake_batch 2026-11-23`, or the demo's trigger for 2026-11-22
        (
            dt.datetime(2026, 11, 23, tzinfo=dt.UTC),
            dt.datetime(2026, 11, 28, 9, tzinfo=dt.UTC),
            "2026-11-22",
        ),
        # a UI trigger at 10:30 with the logical date "now": yesterday, not the unfinished today
        (
            dt.datetime(2026, 11, 28, 10, 30, tzinfo=dt.UTC),
            dt.datetime(2026, 11, 28, 10, 30, tzinfo=dt.UTC),
            "2026-11-27",
        ),
        # a manual run without a logical date (Airflow 3 allows it): the day before the trigger
        (None, dt.datetime(2026, 11, 28, 0, 5, tzinfo=dt.UTC), "2026-11-27"),
    ],
)
def test_a_manual_run_processes_the_last_day_complete_at_its_logical_time(
    dagbag: Any,
    manual_run: Any,
    render_command: Any,
    logical_date: dt.datetime | None,
    run_after: dt.datetime,
    run_date: str,
) -> None:
    dag = dagbag.dags["flixlake_batch"]
    command = render_command(dag.get_task("train_model"), manual_run(dag, run_after, logical_date))
    assert command.endswith(f"--run-date {run_date}")

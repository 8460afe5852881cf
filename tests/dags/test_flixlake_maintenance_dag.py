"""The maintenance DAG parses cleanly, runs the flixlake CLI (no Spark) daily before the batch
run, and treats the day before each run's logical time as closed."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import pytest


def test_daily_schedule_before_the_batch_run_from_the_config(dagbag: Any) -> None:
    from airflow.sdk import CronTriggerTimetable

    assert dagbag.import_errors == {}
    dag = dagbag.dags["flixlake_maintenance"]
    assert isinstance(dag.timetable, CronTriggerTimetable)
    assert dag.timetable.expression == "30 1 * * *"  # conf/base.yaml maintenance_schedule
    batch = dagbag.dags["flixlake_batch"].timetable.expression
    assert batch == "0 3 * * *"  # so maintenance never prunes beside a publish
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.task_ids == ["maintain"]
    task = dag.get_task("maintain")
    assert task.append_env is True
    assert task.env["FLIXLAKE_ENV"] == "test"


def test_the_task_runs_flixlake_maintain_beside_this_python(dagbag: Any) -> None:
    command = dagbag.dags["flixlake_maintenance"].get_task("maintain").bash_command
    assert command.startswith(f"{Path(sys.executable).parent / 'flixlake'} maintain --run-date ")
    assert "spark-submit" not in command


@pytest.mark.parametrize(
    ("after", "closed"),
    [
        (dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC), "2026-11-22"),  # due 23rd 01:30
        (dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.UTC), "2026-11-23"),  # due 24th 01:30
    ],
)
def test_a_scheduled_run_treats_the_day_before_as_closed(
    dagbag: Any, scheduled_run: Any, render_command: Any, after: dt.datetime, closed: str
) -> None:
    dag = dagbag.dags["flixlake_maintenance"]
    run = scheduled_run(dag, after)
    assert run["logical_date"].hour == 1 and run["logical_date"].minute == 30
    assert render_command(dag.get_task("maintain"), run).endswith(f"--run-date {closed}")

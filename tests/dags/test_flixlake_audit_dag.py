"""The audit DAG parses cleanly and audits the day before each run's logical time, daily."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_audit_dag_loads_without_import_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert {"flixlake_batch", "flixlake_online", "flixlake_audit"} <= set(dagbag.dag_ids)


def test_daily_schedule_after_the_batch_run_from_the_config(dagbag: Any) -> None:
    from airflow.sdk import CronTriggerTimetable

    dag = dagbag.dags["flixlake_audit"]
    assert isinstance(dag.timetable, CronTriggerTimetable)
    assert dag.timetable.expression == "0 5 * * *"  # conf/base.yaml airflow.audit_schedule
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert "audit" in dag.tags
    assert dag.task_ids == ["audit"]
    task = dag.get_task("audit")
    assert task.retries == 0  # conf/test.yaml overrides base's 2
    assert task.append_env is True
    assert task.env["FLIXLAKE_ENV"] == "test"


def test_the_task_spark_submits_the_audit_job(dagbag: Any) -> None:
    command = dagbag.dags["flixlake_audit"].get_task("audit").bash_command
    assert command.startswith("/opt/spark/bin/spark-submit --driver-memory 2g ")
    assert f"{REPO}/jobs/audit.py --run-date {{{{ macros.ds_add(" in command


@pytest.mark.parametrize(
    ("logical_date", "run_after", "audited"),
    [
        (dt.datetime(2026, 11, 23, 5, 0, tzinfo=dt.UTC), None, "2026-11-22"),  # scheduled
        (None, dt.datetime(2026, 11, 23, 14, 7, tzinfo=dt.UTC), "2026-11-22"),  # manual, no date
    ],
)
def test_a_run_audits_the_day_before_its_logical_time(
    dagbag: Any, logical_date: dt.datetime | None, run_after: dt.datetime | None, audited: str
) -> None:
    from airflow.sdk.execution_time import macros

    task = dagbag.dags["flixlake_audit"].get_task("audit")
    context: dict[str, Any] = {"macros": macros, "dag_run": {"run_after": run_after}}
    if logical_date is not None:
        context["logical_date"] = logical_date
    rendered = task.render_template(task.bash_command, context)
    assert rendered.endswith(f"jobs/audit.py --run-date {audited}")


def test_the_job_rejects_a_bad_run_date_before_starting_spark() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "audit.py"), "--run-date", "yesterday"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FLIXLAKE_ENV": "test"},
    )
    assert done.returncode == 2
    assert "error:" in done.stderr

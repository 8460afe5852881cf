"""The batch DAG parses cleanly and wires the six spark-submit jobs in pipeline order."""

from __future__ import annotations

import datetime as dt
import itertools
import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ORDER = [
    "compact_silver",
    "quality_gate",
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
    assert dag.schedule == "0 3 * * *"  # conf/base.yaml
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
    assert f"{REPO}/jobs/{task_id}.py --run-date {{{{ ds }}}}" in command
    assert task.append_env is True
    assert task.env["FLIXLAKE_ENV"] == "test"
    assert task.env["FLIXLAKE_HOME"].endswith("flixlake")
    assert os.path.isabs(task.env["PYSPARK_PYTHON"])


@pytest.mark.parametrize("task_id", ORDER)
def test_every_task_has_its_job_file(task_id: str) -> None:
    assert (REPO / "jobs" / f"{task_id}.py").is_file()

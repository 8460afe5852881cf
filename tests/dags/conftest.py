"""The DagBag of dags/, parsed once per test module with a throwaway Airflow home, and the
templates of a task rendered for a run the way a worker renders them."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Parse dags/ with a throwaway AIRFLOW_HOME (set before airflow is first imported)."""
    home = tmp_path_factory.mktemp("airflow-home")
    patch = pytest.MonkeyPatch()
    patch.setenv("AIRFLOW_HOME", str(home))
    patch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    patch.setenv("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
    # unit-test mode turns cron data intervals on; a deployed Airflow 3.3 has them off, so the
    # DAGs are parsed as the scheduler parses them
    patch.setenv("AIRFLOW__SCHEDULER__CREATE_CRON_DATA_INTERVALS", "False")
    # airflow configures root logging at import; at INFO, py4j's shutdown message would then
    # hit pytest's closed capture stream when Spark tests share the process
    patch.setenv("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    patch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home}/airflow.db")
    patch.setenv("FLIXLAKE_ENV", "test")
    patch.setenv("FLIXLAKE_HOME", str(home / "flixlake"))
    patch.setenv("FLIXLAKE_SPARK_SUBMIT", "/opt/spark/bin/spark-submit")
    from airflow.dag_processing.dagbag import DagBag

    # Airflow 3.3's DagBag has no include_examples (examples are a separate bundle); it reads
    # only dag_folder. dags[...] instead of get_dag(): that one asks the metadata DB.
    yield DagBag(dag_folder=str(DAGS_DIR))
    patch.undo()


def _scheduled_run(dag: Any, after: dt.datetime) -> dict[str, Any]:
    """The first run the scheduler creates after ``after``: its timetable, as the scheduler sees
    the DAG (serialized), decides the logical date, data interval and when it runs."""
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    timetable = DagSerialization.from_dict(DagSerialization.to_dict(dag)).timetable
    info = timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=pendulum.instance(after), latest=None, catchup=True),
    )
    assert info is not None
    return {
        "run_type": "scheduled",
        "logical_date": info.logical_date,
        "data_interval_start": info.data_interval.start,
        "data_interval_end": info.data_interval.end,
        "run_after": info.run_after,
    }


def _manual_run(
    dag: Any, run_after: dt.datetime, logical_date: dt.datetime | None
) -> dict[str, Any]:
    """A manually triggered run (UI, REST API, ``airflow dags test``), with or without a logical
    date; its data interval inferred by the DAG's timetable as the API server infers it."""
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization

    timetable = DagSerialization.from_dict(DagSerialization.to_dict(dag)).timetable
    interval = (
        timetable.infer_manual_data_interval(run_after=pendulum.instance(logical_date))
        if logical_date
        else None
    )
    return {
        "run_type": "manual",
        "logical_date": logical_date,
        "data_interval_start": interval.start if interval else None,
        "data_interval_end": interval.end if interval else None,
        "run_after": run_after,
    }


def _render_command(task: Any, run: dict[str, Any]) -> str:
    """``task.bash_command`` rendered with the context a worker builds for ``run`` (the Task SDK's
    own ``get_template_context``, the DAG's Jinja environment, macros and filters)."""
    from airflow.sdk.api.datamodels._generated import DagRun, TIRunContext
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    dag_run = DagRun(
        dag_id=task.dag_id,
        run_id=f"{run['run_type']}__test",
        start_date=run["run_after"],
        end_date=None,
        state="running",
        consumed_asset_events=[],
        partition_key=None,
        **run,
    )
    ti = RuntimeTaskInstance.model_construct(
        id=uuid.uuid4(),
        task_id=task.task_id,
        dag_id=task.dag_id,
        run_id=dag_run.run_id,
        try_number=1,
        dag_version_id=uuid.uuid4(),
        map_index=-1,
        task=task,
        start_date=run["run_after"],
        max_tries=0,
        _ti_context_from_server=TIRunContext(dag_run=dag_run, max_tries=0),
    )
    return str(task.render_template(task.bash_command, ti.get_template_context()))


@pytest.fixture
def scheduled_run() -> Any:
    return _scheduled_run


@pytest.fixture
def manual_run() -> Any:
    return _manual_run


@pytest.fixture
def render_command() -> Any:
    return _render_command

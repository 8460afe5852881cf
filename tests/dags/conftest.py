"""The DagBag of dags/, parsed once per test module with a throwaway Airflow home."""

from __future__ import annotations

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

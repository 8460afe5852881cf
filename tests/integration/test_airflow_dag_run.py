"""A real Airflow DAG run: `airflow dags test flixlake_batch <day after>` runs the seven spark-submit
jobs for the day before its logical date.

This is what the scheduler does every night, minus the scheduler: SQLite metadata DB in a temp
AIRFLOW_HOME, every task a real spark-submit of jobs/<task>.py against a small ingested lake.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flixlake.batch.ingest import ingest_paths
from flixlake.config import load_settings
from flixlake.lake.store import Lake
from flixlake.sim.generate import generate_history

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_airflow_dags_test_runs_the_whole_pipeline(tmp_path: Path) -> None:
    home = tmp_path / "flixlake"
    settings = load_settings("test", home=home)
    lake = Lake(settings.lake_root)
    generated = generate_history(tmp_path / "data", n_users=300, n_movies=100, days=12, seed=5)
    ingest_paths(lake, [tmp_path / "data"])
    run_date = str(generated["last_date"])
    # a run processes the last day complete at its logical date: the day before it
    logical_date = (dt.date.fromisoformat(run_date) + dt.timedelta(days=1)).isoformat()

    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "FLIXLAKE_HOME": str(home),
        "FLIXLAKE_ENV": "test",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    airflow = str(bin_dir / "airflow")
    subprocess.run(
        [airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300
    )
    run = subprocess.run(
        [airflow, "dags", "test", "flixlake_batch", logical_date],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]

    models = lake.read("models").to_pylist()
    assert len(models) == 1 and models[0]["status"] == "published"
    assert str(models[0]["run_date"]) == run_date
    version = models[0]["model_version"]
    n_recs = lake.sql(
        f"SELECT count(*) AS n FROM batch_recommendations WHERE model_version = '{version}'"
    ).to_pylist()[0]["n"]
    assert n_recs > 0
    for step in ("compact", "quality", "train", "evaluate", "register", "publish"):
        assert (settings.artifacts_root / "runs" / run_date / f"{step}.json").exists(), step

"""Shared fixtures: one SparkSession per test session, a fresh lake per test."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flixlake.config import Settings, load_settings
from flixlake.lake.store import Lake

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Test settings rooted in a per-test home folder."""
    return load_settings("test", home=tmp_path / "home")


@pytest.fixture
def lake(settings: Settings) -> Lake:
    return Lake(settings.lake_root)


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:  # noqa: F821
    """One local Spark for the whole run: 2 cores, few partitions, no UI."""
    from flixlake.ops.spark import build_spark_session

    home = tmp_path_factory.mktemp("spark-home")
    session_settings = load_settings(
        "test",
        home=home,
        overrides={"spark": {"extra_conf": {"spark.ui.showConsoleProgress": "false"}}},
    )
    session = build_spark_session(session_settings, app_name="flixlake-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def prometheus_tools() -> None:
    """Prometheus, promtool, Alertmanager and the Pushgateway: installed, or a failure that says
    how (never a skip: .ci/run installs them)."""
    import shutil

    from flixlake.ops.monitoring_stack import INSTALL_HINT, missing_binaries

    missing = missing_binaries() + [b for b in ("promtool", "amtool") if not shutil.which(b)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run `{INSTALL_HINT}` (Debian packages)")

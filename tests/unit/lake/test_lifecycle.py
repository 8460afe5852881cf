"""Table lifecycle: retention properties, compaction that keeps exactly-once, vacuum that keeps
what readers may still open, log cleanup, pruning that keeps rollback working, the run's rows."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyspark.sql import SparkSession

from flixlake.config import FILE_RETENTION, LOG_RETENTION, ConfigError, Settings, load_settings
from flixlake.lake.bronze import parse_batch
from flixlake.lake.lifecycle import (
    ARTIFACTS,
    MaintenanceError,
    footprint,
    interval,
    run_maintenance,
)
from flixlake.lake.registry import REJECTED, rollback_to, set_model_status
from flixlake.lake.spark_io import ensure_table
from flixlake.lake.store import Lake, lake_from_settings
from flixlake.lake.tables import BATCH_RECOMMENDATIONS, BRONZE_EVENTS, MAINTENANCE_RUNS
from flixlake.testing import record_published_model

DAY = dt.date(2026, 11, 20)
APP = "stream:speed_layer"


def _short(tmp_path: Path, **lifecycle: Any) -> Settings:
    """Settings whose retention lets a test see vacuum and log cleanup within seconds."""
    values = {"min_retention": "1s", "log_retention": "1s", "deleted_file_retention": "1s"}
    return load_settings(
        "test", home=tmp_path / "home", overrides={"lifecycle": values | lifecycle}
    )


def _micro_batch(lake: Lake, batch_id: int, day: dt.date) -> bool:
    """What the speed layer commits per micro-batch: a few lines, app transaction = batch id."""
    lines = [
        f"{day.isoformat()}T{h:02d}:{batch_id % 60:02d}:00,{batch_id + 1},GET /data/m/m{h}/{h}.mpg"
        for h in range(3)
    ]
    parsed = parse_batch(
        lines,
        "movielog",
        [batch_id * 10 + i for i in range(3)],
        f"stream:{batch_id}",
        dt.datetime.now(dt.UTC),
    )
    return lake.append(BRONZE_EVENTS.name, parsed.bronze, app_id=APP, txn_version=batch_id)


def _stream_days(lake: Lake, days: int, per_day: int) -> None:
    for d in range(days):
        for b in range(per_day):
            _micro_batch(lake, d * per_day + b, DAY + dt.timedelta(days=d))


def _batch_view(lake: Lake, version: str, users: int = 3) -> None:
    rows = [
        {"user_id": u, "rank": 1, "movie_id": "m1", "score": 1.0, "model_version": version}
        for u in range(users)
    ]
    lake.replace_where(
        BATCH_RECOMMENDATIONS.name,
        pa.Table.from_pylist(rows, schema=BATCH_RECOMMENDATIONS.schema),
        f"model_version = '{version}'",
    )


# -- config --------------------------------------------------------------------------------------
def test_retention_below_the_floor_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tables\.bronze_events\.deleted_file_retention: 30m"):
        load_settings(
            "test",
            home=tmp_path,
            overrides={
                "lifecycle": {"tables": {"bronze_events": {"deleted_file_retention": "30m"}}}
            },
        )
    with pytest.raises(ConfigError, match=r"lifecycle\.log_retention"):
        load_settings("test", home=tmp_path, overrides={"lifecycle": {"log_retention": "0s"}})
    with pytest.raises(ConfigError, match=r"lifecycle\.keep_models"):
        load_settings("test", home=tmp_path, overrides={"lifecycle": {"keep_models": 1}})


def test_a_misspelt_table_in_the_overrides_stops_the_run(tmp_path: Path) -> None:
    settings = load_settings(
        "test",
        home=tmp_path,
        overrides={"lifecycle": {"tables": {"bronze_event": {"log_retention": "2d"}}}},
    )
    with pytest.raises(ConfigError, match=r"lifecycle\.tables\.bronze_event: unknown table"):
        run_maintenance(lake_from_settings(settings), settings, DAY)


def test_intervals_are_written_in_the_largest_exact_unit() -> None:
    assert interval(7 * 86400) == "interval 7 days"
    assert interval(3600) == "interval 1 hours"
    assert interval(90) == "interval 90 seconds"


def test_the_defaults_keep_removed_files_and_set_the_properties(
    lake: Lake, settings: Settings
) -> None:
    _stream_days(lake, days=2, per_day=4)
    run_maintenance(lake, settings, DAY + dt.timedelta(days=1))
    config = lake.table(BRONZE_EVENTS.name).metadata().configuration
    assert config[LOG_RETENTION] == "interval 7 days"
    assert config[FILE_RETENTION] == "interval 2 days"
    # compacted, but the 8 micro-batch files stay on disk for readers of older snapshots
    after = footprint(lake, BRONZE_EVENTS.name)
    assert after.live_files == 2
    assert after.files == 10
    assert lake.read(BRONZE_EVENTS.name, version=8).num_rows == 24


def _metadata_commits(lake: Lake, name: str, after: int) -> list[int]:
    """Versions after ``after`` whose commit changes the table's metadata (a ``metaData``
    action: what fails a concurrent stream micro-batch's commit)."""
    log = Path(lake.path(name)) / "_delta_log"
    versions = []
    for commit in sorted(log.glob("*.json")):
        version = int(commit.stem)
        actions = [json.loads(line) for line in commit.read_text().splitlines() if line]
        if version > after and any("metaData" in action for action in actions):
            versions.append(version)
    return versions


def test_tables_get_their_retention_at_creation_and_maintenance_then_commits_no_metadata(
    spark: SparkSession, tmp_path: Path
) -> None:
    settings = load_settings(
        "test",
        home=tmp_path / "home",
        overrides={"lifecycle": {"tables": {"ratings": {"log_retention": "14d"}}}},
    )
    lake = lake_from_settings(settings)
    wanted = {LOG_RETENTION: "interval 7 days", FILE_RETENTION: "interval 2 days"}
    lake.ensure("movies")  # delta-rs creates it
    ensure_table(spark, lake, "ratings")  # delta-spark creates it, with the table's override
    movies = lake.table("movies").metadata().configuration
    assert {k: movies.get(k) for k in wanted} == wanted
    ratings = lake.table("ratings").metadata().configuration  # beside Delta's protocol defaults
    assert {k: ratings.get(k) for k in wanted} == {**wanted, LOG_RETENTION: "interval 14 days"}

    _stream_days(lake, days=2, per_day=3)  # bronze created by the stream's appends
    first = lake.version(BRONZE_EVENTS.name)
    assert first is not None
    run_maintenance(lake, settings, DAY)
    run_maintenance(lake, settings, DAY + dt.timedelta(days=1))
    for name in (BRONZE_EVENTS.name, "movies", "ratings"):
        assert _metadata_commits(lake, name, after=0) == [], name
    assert lake.version(BRONZE_EVENTS.name) > first  # maintenance did commit (compaction)


def test_a_table_created_without_them_gets_one_metadata_commit_then_none(
    lake: Lake, settings: Settings
) -> None:
    _stream_days(lake, days=1, per_day=3)  # a plain Lake: no properties at creation
    assert LOG_RETENTION not in lake.table(BRONZE_EVENTS.name).metadata().configuration
    created = lake.version(BRONZE_EVENTS.name)
    assert created is not None
    run_maintenance(lake, settings, DAY)
    changed = _metadata_commits(lake, BRONZE_EVENTS.name, after=created)
    assert len(changed) == 1
    second_run_from = lake.version(BRONZE_EVENTS.name)
    assert second_run_from is not None
    run_maintenance(lake, settings, DAY)
    assert _metadata_commits(lake, BRONZE_EVENTS.name, after=second_run_from) == []


# -- exactly-once and compaction -----------------------------------------------------------------
def test_compaction_and_log_cleanup_keep_the_streams_app_transactions(tmp_path: Path) -> None:
    settings = _short(tmp_path)
    lake = lake_from_settings(settings)
    _stream_days(lake, days=3, per_day=5)
    rows_before = lake.read(BRONZE_EVENTS.name).num_rows
    closed = DAY + dt.timedelta(days=2)
    (first,) = run_maintenance(lake, settings, closed, tables=[BRONZE_EVENTS.name])
    assert first["status"] == "ok"
    assert first["files_compacted"] == 15
    assert first["live_files_after"] == 3  # one file per day
    # commits are deleted up to the newest checkpoint older than the retention: the next run's
    time.sleep(1.2)
    (second,) = run_maintenance(lake, settings, closed, tables=[BRONZE_EVENTS.name])
    assert second["log_files_after"] <= 3 < first["log_files_before"] == 16
    assert lake.txn_version(BRONZE_EVENTS.name, APP) == 14
    assert _micro_batch(lake, 14, DAY) is False  # a replayed micro-batch is still refused
    assert _micro_batch(lake, 15, DAY + dt.timedelta(days=3)) is True
    assert lake.read(BRONZE_EVENTS.name).num_rows == rows_before + 3


def test_only_closed_days_of_a_streamed_table_are_compacted(tmp_path: Path) -> None:
    settings = _short(tmp_path)
    lake = lake_from_settings(settings)
    _stream_days(lake, days=3, per_day=4)
    run_maintenance(lake, settings, DAY, tables=[BRONZE_EVENTS.name])  # only DAY is closed
    files = pa.table(lake.table(BRONZE_EVENTS.name).get_add_actions(flatten=True))
    per_day = {
        str(d): files["partition.event_date"].to_pylist().count(d)
        for d in set(files["partition.event_date"].to_pylist())
    }
    assert per_day == {str(DAY): 1, str(DAY + dt.timedelta(1)): 4, str(DAY + dt.timedelta(2)): 4}


def test_vacuum_removes_old_files_but_never_the_current_snapshots(tmp_path: Path) -> None:
    settings = _short(tmp_path)
    lake = lake_from_settings(settings)
    _stream_days(lake, days=2, per_day=4)
    run_maintenance(lake, settings, DAY + dt.timedelta(days=1), tables=[BRONZE_EVENTS.name])
    time.sleep(1.2)  # the compacted-away files are now older than the 1 s retention
    (row,) = run_maintenance(
        lake, settings, DAY + dt.timedelta(days=1), tables=[BRONZE_EVENTS.name]
    )
    assert row["files_vacuumed"] == 8
    assert row["files_after"] == row["live_files_after"] == 2
    assert lake.read(BRONZE_EVENTS.name).num_rows == 24


# -- pruning and rollback ------------------------------------------------------------------------
def _models(lake: Lake, settings: Settings, n: int) -> list[str]:
    """n published models, one a day before DAY + n, each with a batch view and a run folder."""
    versions = []
    for i in range(n):
        run_date = DAY + dt.timedelta(days=i)
        version = f"als-{run_date:%Y%m%d}-0000000{i}"
        record_published_model(lake, version, run_date)
        folder = settings.artifacts_root / "runs" / run_date.isoformat()
        (folder / "model" / "final").mkdir(parents=True)
        (folder / "model" / "final" / "part-0.parquet").write_bytes(b"x" * 100)
        (folder / "train.json").write_text(json.dumps({"model_version": version}))
        lake.upsert(
            "models",
            lake.read("models", filters=[("model_version", "=", version)]).set_column(
                lake.read("models").schema.get_field_index("artifact_path"),
                "artifact_path",
                pa.array([str(folder / "model")]),
            ),
        )
        _batch_view(lake, version)
        versions.append(version)
    return versions


def test_old_model_versions_are_pruned_and_rollback_to_a_kept_one_works(tmp_path: Path) -> None:
    settings = _short(tmp_path, keep_models=3, keep_run_days=2)
    lake = lake_from_settings(settings)
    versions = _models(lake, settings, 6)  # DAY .. DAY+5
    set_model_status(lake, versions[4], REJECTED, "worse than the incumbent")  # recent, rejected
    _batch_view(lake, "not-in-the-registry")
    run_date = DAY + dt.timedelta(days=5)
    rows = {r["table_name"]: r for r in run_maintenance(lake, settings, run_date)}
    # kept: the 3 newest published (1 rejected between them) and any model of the last 2 days
    assert rows[BATCH_RECOMMENDATIONS.name]["pruned"] == versions[:2]
    left = set(lake.read(BATCH_RECOMMENDATIONS.name)["model_version"].to_pylist())
    assert left == {*versions[2:], "not-in-the-registry"}
    assert sorted(rows[ARTIFACTS]["pruned"]) == [
        f"runs/{DAY.isoformat()}",
        f"runs/{(DAY + dt.timedelta(days=1)).isoformat()}",
    ]
    assert (settings.artifacts_root / "runs" / (DAY + dt.timedelta(2)).isoformat()).is_dir()
    assert rollback_to(lake, versions[2])["current"] == versions[2]
    with pytest.raises(ValueError, match="batch view is empty or gone"):
        rollback_to(lake, versions[0])


def test_a_model_an_experiment_names_is_kept(tmp_path: Path) -> None:
    variants = [
        {"name": "control", "model": "current", "percent": 50},
        {"name": "old", "model": f"als-{DAY:%Y%m%d}-00000000", "percent": 50},
    ]
    settings = load_settings(
        "test",
        home=tmp_path,
        overrides={
            "lifecycle": {"keep_models": 2, "keep_run_days": 1},
            "serving": {"experiment": {"variants": variants}},
        },
    )
    lake = lake_from_settings(settings)
    versions = _models(lake, settings, 4)
    run_maintenance(lake, settings, DAY + dt.timedelta(days=3))
    left = set(lake.read(BATCH_RECOMMENDATIONS.name)["model_version"].to_pylist())
    assert left == {versions[0], versions[2], versions[3]}


# -- the run's record ----------------------------------------------------------------------------
def test_each_run_writes_a_row_per_table_and_a_failure_is_recorded(
    lake: Lake, settings: Settings
) -> None:
    _stream_days(lake, days=1, per_day=2)
    _batch_view(lake, "m1")
    run_maintenance(lake, settings, DAY)
    first = lake.read(MAINTENANCE_RUNS.name).to_pylist()
    assert {r["table_name"] for r in first} == {
        BRONZE_EVENTS.name,
        BATCH_RECOMMENDATIONS.name,
        ARTIFACTS,
    }
    assert all(r["status"] == "ok" for r in first)
    # a table whose newest commit is garbage cannot be opened: its row says so, the others run
    log = Path(lake.path(BATCH_RECOMMENDATIONS.name)) / "_delta_log"
    newest = max(int(p.stem) for p in log.glob("*.json"))
    (log / f"{newest + 1:020d}.json").write_text("not json\n")
    with pytest.raises(MaintenanceError, match="batch_recommendations"):
        run_maintenance(lake, settings, DAY)
    second = [r for r in lake.read(MAINTENANCE_RUNS.name).to_pylist() if r not in first]
    status = {r["table_name"]: r["status"] for r in second}
    assert status == {
        BRONZE_EVENTS.name: "ok",
        BATCH_RECOMMENDATIONS.name: "failed",
        MAINTENANCE_RUNS.name: "ok",
        ARTIFACTS: "ok",
    }


def test_flixlake_maintain_reports_each_table_and_refuses_a_bad_date(
    lake: Lake, settings: Settings
) -> None:
    from typer.testing import CliRunner

    from flixlake.ops.cli import app

    _stream_days(lake, days=1, per_day=3)
    common = ["--home", str(settings.home), "--env", "test"]
    done = CliRunner().invoke(
        app, ["maintain", "--run-date", DAY.isoformat(), *common], env={"COLUMNS": "200"}
    )
    assert done.exit_code == 0, done.output
    assert "bronze_events" in done.output and "3 -> 4 (1 live)" in done.output
    assert lake.read(MAINTENANCE_RUNS.name).num_rows == 2  # bronze_events + the artifacts
    bad = CliRunner().invoke(app, ["maintain", "--run-date", "yesterday", *common])
    assert bad.exit_code == 2
    assert "--run-date must be YYYY-MM-DD" in bad.output
    unknown = CliRunner().invoke(
        app, ["maintain", "--run-date", DAY.isoformat(), "--table", "bronze", *common]
    )
    assert unknown.exit_code == 2
    assert "unknown table 'bronze'" in unknown.output

"""The lake module: exactly-once appends, MERGE, time travel, SQL, Spark reads and executor writes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest
from chispa import assert_df_equality
from deltalake.exceptions import CommitFailedError
from pyspark.sql import SparkSession

from flixlake.config import Settings
from flixlake.lake.spark_io import (
    compact_table,
    read_table,
    register_views,
    spark_schema,
    write_table,
)
from flixlake.lake.store import COMMIT_ATTEMPTS, Lake, MissingTableError, recommitting
from flixlake.lake.tables import RATINGS, WATCH_SESSIONS
from flixlake.testing import record_published_model

T = dt.datetime(2026, 11, 22, 8, 0)


def _sessions(*rows: tuple[int, str, int, dt.date]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "user_id": u,
                "movie_id": m,
                "movie_idx": i,
                "minutes_watched": 1,
                "max_minute": 0,
                "first_time": T,
                "last_time": T,
                "event_date": d,
            }
            for u, m, i, d in rows
        ],
        schema=WATCH_SESSIONS.schema,
    )


def test_app_transaction_makes_append_exactly_once(lake: Lake) -> None:
    rows = _sessions((1, "a", 0, T.date()))
    assert lake.append("watch_sessions", rows, app_id="job", txn_version=0) is True
    assert lake.append("watch_sessions", rows, app_id="job", txn_version=0) is False
    assert lake.append("watch_sessions", rows, app_id="job", txn_version=1) is True
    assert lake.read("watch_sessions").num_rows == 2


def test_upsert_updates_matches_and_inserts_new(lake: Lake) -> None:
    def rating(user: int, movie: str, stars: int) -> dict[str, object]:
        return {"user_id": user, "movie_id": movie, "movie_idx": 0, "rating": stars, "rated_at": T}

    lake.upsert("ratings", pa.Table.from_pylist([rating(1, "a", 2)], schema=RATINGS.schema))
    lake.upsert(
        "ratings",
        pa.Table.from_pylist([rating(1, "a", 5), rating(2, "a", 3)], schema=RATINGS.schema),
    )
    got = sorted((r["user_id"], r["rating"]) for r in lake.read("ratings").to_pylist())
    assert got == [(1, 5), (2, 3)]


def test_pinned_version_reads_the_old_snapshot(lake: Lake) -> None:
    lake.append("watch_sessions", _sessions((1, "a", 0, T.date())))
    v0 = lake.version("watch_sessions")
    lake.append("watch_sessions", _sessions((2, "b", 1, T.date())))
    assert lake.read("watch_sessions", version=v0).num_rows == 1
    assert lake.read("watch_sessions").num_rows == 2


def test_missing_table_error_names_the_table_and_its_owner(lake: Lake) -> None:
    with pytest.raises(MissingTableError, match=r"ratings.*compact_silver"):
        lake.read("ratings")


def test_sql_over_tables_by_name(lake: Lake) -> None:
    lake.append(
        "watch_sessions",
        _sessions((1, "a", 0, T.date()), (2, "a", 0, T.date()), (2, "b", 1, T.date())),
    )
    result = lake.sql(
        "SELECT movie_id, count(*) AS n FROM watch_sessions GROUP BY movie_id ORDER BY movie_id"
    )
    assert result.to_pylist() == [{"movie_id": "a", "n": 2}, {"movie_id": "b", "n": 1}]
    assert result.schema.field("movie_id").type == pa.string()  # not DataFusion's string_view


def test_flixlake_sql_prints_every_format(lake: Lake, settings: Settings) -> None:
    from typer.testing import CliRunner

    from flixlake.ops.cli import app

    lake.append("watch_sessions", _sessions((1, "a", 0, T.date()), (2, "b", 1, T.date())))
    query = "SELECT user_id, movie_id FROM watch_sessions ORDER BY user_id"
    outputs = {}
    for output in ("csv", "json", "table"):
        result = CliRunner().invoke(
            app,
            ["sql", query, "--format", output, "--home", str(settings.home), "--env", "test"],
            env={"COLUMNS": "120"},
        )
        assert result.exit_code == 0, result.output
        outputs[output] = result.output
    assert outputs["csv"].splitlines() == ['"user_id","movie_id"', '1,"a"', '2,"b"']
    assert json.loads(outputs["json"]) == [
        {"user_id": 1, "movie_id": "a"},
        {"user_id": 2, "movie_id": "b"},
    ]
    assert "movie_id" in outputs["table"] and "b" in outputs["table"]


def test_spark_reads_partition_values_from_the_log(spark: SparkSession, lake: Lake) -> None:
    d1, d2 = dt.date(2026, 11, 21), dt.date(2026, 11, 22)
    lake.append("watch_sessions", _sessions((1, "a", 0, d1), (2, "b", 1, d2)))
    df = read_table(spark, lake, "watch_sessions")
    assert [(f.name, f.dataType) for f in df.schema] == [
        (f.name, f.dataType) for f in spark_schema(WATCH_SESSIONS)
    ]
    assert sorted((r.user_id, r.event_date) for r in df.collect()) == [(1, d1), (2, d2)]


def test_spark_read_skips_files_of_other_partitions(spark: SparkSession, lake: Lake) -> None:
    d1, d2, d3 = dt.date(2026, 11, 20), dt.date(2026, 11, 21), dt.date(2026, 11, 22)
    lake.append("watch_sessions", _sessions((1, "a", 0, d1), (2, "b", 1, d2), (3, "c", 2, d3)))
    df = read_table(spark, lake, "watch_sessions", partition_filter="event_date >= '2026-11-21'")
    assert len(df.inputFiles()) == 2  # d1's file is not even opened
    assert sorted((r.user_id, r.event_date) for r in df.collect()) == [(2, d2), (3, d3)]
    nothing = read_table(
        spark, lake, "watch_sessions", partition_filter="event_date > '2026-11-22'"
    )
    assert nothing.count() == 0


def test_a_pruned_read_through_a_symlinked_lake_finds_its_files(
    spark: SparkSession, lake: Lake, tmp_path: Path
) -> None:
    d1, d2 = dt.date(2026, 11, 21), dt.date(2026, 11, 22)
    lake.append("watch_sessions", _sessions((1, "a", 0, d1), (2, "b", 1, d2)))
    link = tmp_path / "lake-link"
    link.symlink_to(lake.root, target_is_directory=True)
    df = read_table(
        spark, Lake(link), "watch_sessions", partition_filter="event_date >= '2026-11-22'"
    )
    assert [(r.user_id, r.event_date) for r in df.collect()] == [(2, d2)]


def test_executor_write_commits_and_replaces_one_partition(spark: SparkSession, lake: Lake) -> None:
    d1, d2 = dt.date(2026, 11, 21), dt.date(2026, 11, 22)
    lake.append("watch_sessions", _sessions((1, "a", 0, d1), (2, "b", 1, d2)))
    replacement = spark.createDataFrame([(9, "z", 5, 1, 0, T, T, d2)], spark_schema(WATCH_SESSIONS))
    n = write_table(
        replacement,
        lake,
        "watch_sessions",
        mode="overwrite",
        replace_partitions={"event_date": "2026-11-22"},
    )
    assert n == 1
    got = sorted((r["user_id"], r["event_date"]) for r in lake.read("watch_sessions").to_pylist())
    assert got == [(1, d1), (9, d2)]
    # the same rows through Spark, and as a SQL view
    expected = spark.createDataFrame(
        [(1, "a", 0, 1, 0, T, T, d1), (9, "z", 5, 1, 0, T, T, d2)], spark_schema(WATCH_SESSIONS)
    )
    assert_df_equality(
        read_table(spark, lake, "watch_sessions"),
        expected,
        ignore_row_order=True,
        ignore_nullable=True,
    )
    assert "watch_sessions" in register_views(spark, lake)
    assert spark.sql("SELECT count(*) AS n FROM watch_sessions").first()["n"] == 2
    # by name, with time travel: version 1 was delta-rs's append, before the replacement
    first = spark.sql("SELECT user_id FROM watch_sessions VERSION AS OF 1 ORDER BY user_id")
    assert [r.user_id for r in first.collect()] == [1, 2]
    history = spark.sql("DESCRIBE HISTORY watch_sessions").orderBy("version").collect()
    assert [h.operation for h in history][-1] == "WRITE"  # delta-spark's replaceWhere


def test_empty_table_reads_as_empty_dataframe(spark: SparkSession, lake: Lake) -> None:
    lake.ensure("ratings")
    assert read_table(spark, lake, "ratings").count() == 0


def test_compact_days_merges_small_files_and_keeps_failed_days_for_later(
    spark: SparkSession, lake: Lake
) -> None:
    from flixlake.streaming.harness import compact_days

    def compact(table: str, column: str, day: dt.date) -> object:
        return compact_table(spark, lake, table, {column: day})

    d1, d2 = dt.date(2026, 11, 21), dt.date(2026, 11, 22)
    for user in range(3):  # three micro-batches: three small files per day
        lake.append("watch_sessions", _sessions((user, "a", 0, d1), (user, "b", 1, d2)))
    assert len(lake.file_uris("watch_sessions")) == 6
    assert compact_days(compact, "watch_sessions", "event_date", {d1}) == set()
    assert len(lake.file_uris("watch_sessions")) == 4  # d1: one file, d2 untouched
    assert lake.read("watch_sessions").num_rows == 6
    assert compact_days(compact, "ratings", "event_date", {d1, d2}) == {d1, d2}  # no such table


def test_a_filtered_read_of_a_merged_file_of_many_rows(lake: Lake) -> None:
    """MERGE writes string_view columns; pyarrow cannot compare those, the read still filters."""
    for i in range(3):
        record_published_model(lake, f"m{i}", dt.date(2026, 11, 20 + i))
    lake.compact("models")  # one file of three rows: its statistics no longer decide the filter
    record_published_model(lake, "m1", dt.date(2026, 11, 21))  # rewritten by MERGE, views
    rows = lake.read("models", columns=["model_version"], filters=[("model_version", "=", "m1")])
    assert rows.to_pylist() == [{"model_version": "m1"}]
    assert rows.schema.field("model_version").type == pa.string()


def test_a_write_that_lost_a_commit_race_is_redone_a_few_times() -> None:
    attempts: list[int] = []

    def loses_twice() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise CommitFailedError("Metadata changed since last commit")
        return "committed"

    assert recommitting(loses_twice) == "committed"
    assert len(attempts) == 3

    def always_loses() -> str:
        attempts.append(1)
        raise CommitFailedError("Metadata changed since last commit")

    attempts.clear()
    with pytest.raises(CommitFailedError):
        recommitting(always_loses)
    assert len(attempts) == COMMIT_ATTEMPTS

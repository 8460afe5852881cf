"""delta-spark and delta-rs on the same tables, both ways: every write of one engine is read (and
written on) by the other, and the tables stay at the protocol both support."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
from pyspark.sql import SparkSession

from flixlake.lake.bronze import parse_batch
from flixlake.lake.spark_io import (
    append_once,
    compact_table,
    ensure_table,
    merge_table,
    read_table,
    spark_schema,
    vacuum_table,
    warm_state,
    write_table,
)
from flixlake.lake.store import Lake
from flixlake.lake.tables import BRONZE_STATS_COLUMNS, RATINGS, WATCH_SESSIONS

T = dt.datetime(2026, 11, 22, 8, 0, tzinfo=dt.UTC)
D1, D2 = dt.date(2026, 11, 21), dt.date(2026, 11, 22)


def ratings(*rows: tuple[int, str, int]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {"user_id": u, "movie_id": m, "movie_idx": 0, "rating": r, "rated_at": T}
            for u, m, r in rows
        ],
        schema=RATINGS.schema,
    )


def sessions(*rows: tuple[int, str, dt.date]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "user_id": u,
                "movie_id": m,
                "movie_idx": 0,
                "minutes_watched": 1,
                "max_minute": 0,
                "first_time": T,
                "last_time": T,
                "event_date": d,
            }
            for u, m, d in rows
        ],
        schema=WATCH_SESSIONS.schema,
    )


def by_rs(lake: Lake, name: str, version: int | None = None) -> set[tuple]:
    """What delta-rs reads: (user, movie, rating or day) per row."""
    last = "rating" if name == "ratings" else "event_date"
    rows = lake.read(name, version, columns=["user_id", "movie_id", last]).to_pylist()
    return {(r["user_id"], r["movie_id"], r[last]) for r in rows}


def by_spark(spark: SparkSession, lake: Lake, name: str, version: int | None = None) -> set[tuple]:
    """What delta-spark reads, the same way."""
    last = "rating" if name == "ratings" else "event_date"
    df = read_table(spark, lake, name, version).select("user_id", "movie_id", last)
    return {tuple(r) for r in df.collect()}


def protocol(lake: Lake, name: str) -> tuple[int, int]:
    p = lake.table(name).protocol()
    return p.min_reader_version, p.min_writer_version


def test_both_engines_append_merge_overwrite_and_time_travel_on_one_table(
    spark: SparkSession, lake: Lake
) -> None:
    schema = spark_schema(RATINGS)
    lake.append("ratings", ratings((1, "a", 3), (2, "b", 4)))  # v0 create, v1 append (delta-rs)
    assert by_spark(spark, lake, "ratings") == {(1, "a", 3), (2, "b", 4)}

    spark_rows = spark.createDataFrame([(3, "c", 0, 5, T)], schema)
    assert write_table(spark_rows, lake, "ratings") == 1  # delta-spark append
    assert by_rs(lake, "ratings") == {(1, "a", 3), (2, "b", 4), (3, "c", 5)}

    merged = spark.createDataFrame([(1, "a", 0, 1, T), (4, "d", 0, 2, T)], schema)
    metrics = merge_table(merged, lake, "ratings")  # delta-spark MERGE
    assert (metrics["numTargetRowsUpdated"], metrics["numTargetRowsInserted"]) == (1, 1)
    assert by_rs(lake, "ratings") == {(1, "a", 1), (2, "b", 4), (3, "c", 5), (4, "d", 2)}

    lake.upsert("ratings", ratings((2, "b", 5), (5, "e", 1)))  # delta-rs MERGE
    assert by_spark(spark, lake, "ratings") == {
        (1, "a", 1),
        (2, "b", 5),
        (3, "c", 5),
        (4, "d", 2),
        (5, "e", 1),
    }
    before_overwrite = lake.version("ratings")

    write_table(spark.createDataFrame([(9, "z", 0, 4, T)], schema), lake, "ratings", "overwrite")
    assert by_rs(lake, "ratings") == {(9, "z", 4)}
    lake.overwrite("ratings", ratings((8, "y", 2)))
    assert by_spark(spark, lake, "ratings") == {(8, "y", 2)}

    # time travel: each engine reads the other's old versions
    assert by_spark(spark, lake, "ratings", 1) == {(1, "a", 3), (2, "b", 4)}
    assert by_rs(lake, "ratings", 2) == {(1, "a", 3), (2, "b", 4), (3, "c", 5)}
    assert by_spark(spark, lake, "ratings", before_overwrite) == by_rs(
        lake, "ratings", before_overwrite
    )
    assert protocol(lake, "ratings") == (1, 2)  # nothing either engine cannot write


def test_partition_replace_optimize_and_vacuum_work_across_engines(
    spark: SparkSession, lake: Lake
) -> None:
    for day in (D1, D2, D2):  # three small files, two of them in D2
        lake.append("watch_sessions", sessions((1, f"m{day.day}", day)))
    lake.append("watch_sessions", sessions((2, "x", D2)))
    replacement = spark.createDataFrame([(7, "r", 0, 1, 0, T, T, D2)], spark_schema(WATCH_SESSIONS))
    written = write_table(
        replacement,
        lake,
        "watch_sessions",
        mode="overwrite",
        replace_partitions={"event_date": D2.isoformat()},
    )
    assert written == 1
    assert by_rs(lake, "watch_sessions") == {(1, "m21", D1), (7, "r", D2)}
    lake.replace_where("watch_sessions", sessions((6, "q", D1)), "event_date = '2026-11-21'")
    assert by_spark(spark, lake, "watch_sessions") == {(6, "q", D1), (7, "r", D2)}

    for user in (10, 11, 12):
        lake.append("watch_sessions", sessions((user, "s", D2)))
    files = len(lake.file_uris("watch_sessions"))
    compact_table(spark, lake, "watch_sessions", {"event_date": D2})  # Spark OPTIMIZE
    assert len(lake.file_uris("watch_sessions")) == files - 3  # 4 files of D2 -> 1
    vacuum_table(spark, lake, "watch_sessions", 0)  # Spark VACUUM
    rows = {(6, "q", D1), (7, "r", D2), (10, "s", D2), (11, "s", D2), (12, "s", D2)}
    assert by_rs(lake, "watch_sessions") == rows

    append_once(replacement, lake, "watch_sessions", "spark-job", 3)
    lake.compact("watch_sessions")  # delta-rs OPTIMIZE and VACUUM on the Spark-written files
    lake.vacuum("watch_sessions", 0)
    assert by_spark(spark, lake, "watch_sessions") == rows  # (7, "r") twice: a set
    assert read_table(spark, lake, "watch_sessions").count() == 6
    assert protocol(lake, "watch_sessions") == (1, 2)


def test_app_transactions_are_shared_by_both_engines(spark: SparkSession, lake: Lake) -> None:
    schema = spark_schema(RATINGS)
    row = spark.createDataFrame([(1, "a", 0, 3, T)], schema)
    append_once(row, lake, "ratings", "stream:q", 7)
    assert lake.table("ratings").transaction_version("stream:q") == 7  # delta-rs sees Spark's
    assert lake.append("ratings", ratings((2, "b", 4)), "stream:q", 7) is False  # skipped
    lake.append("ratings", ratings((3, "c", 5)), "ingest:f", 0)
    version = lake.version("ratings")
    append_once(row, lake, "ratings", "ingest:f", 0)  # Spark skips what delta-rs committed
    assert write_table(row, lake, "ratings", app_id="stream:q", txn_version=7) == 0
    assert lake.version("ratings") == version
    assert by_spark(spark, lake, "ratings") == {(1, "a", 3), (3, "c", 5)}


def jobs_run(spark: SparkSession, group: str, action: Callable[[], object]) -> int:
    """How many Spark jobs ``action`` ran (``group``: a job group name not used before)."""
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup(group, "jobs of one action")
    try:
        action()
    finally:
        spark.sparkContext.setJobGroup("", "")
    return len(tracker.getJobIdsForGroup(group))


def test_an_idempotent_append_after_warm_state_runs_only_its_write(
    spark: SparkSession, lake: Lake
) -> None:
    row = spark.createDataFrame([(1, "a", 0, 3, T)], spark_schema(RATINGS))
    append_once(row, lake, "ratings", "stream:q", 0)

    cold = jobs_run(
        spark, "cold", lambda: append_once(row, lake, "ratings", "stream:q", 1, ensure=False)
    )
    warm_state(spark, lake, "ratings")
    warmed = jobs_run(
        spark, "warmed", lambda: append_once(row, lake, "ratings", "stream:q", 2, ensure=False)
    )

    assert cold > warmed == 1  # Delta's state reconstruction was done ahead: only the write ran
    assert lake.table("ratings").transaction_version("stream:q") == 2
    assert lake.read("ratings").num_rows == 3


def test_a_table_spark_creates_has_the_registry_schema(spark: SparkSession, lake: Lake) -> None:
    """NOT NULL columns and partitioning as registered, whichever engine writes first."""
    rows = spark.createDataFrame([(1, "a", 0, 1, 0, T, T, D1)], spark_schema(WATCH_SESSIONS))
    write_table(rows, lake, "watch_sessions", mode="overwrite")
    append_once(
        spark.createDataFrame([(1, "a", 0, 3, T)], spark_schema(RATINGS)), lake, "ratings", "q", 0
    )
    for spec in (WATCH_SESSIONS, RATINGS):
        table = lake.table(spec.name)
        assert pa.schema(table.schema().to_arrow()) == spec.schema
        assert table.metadata().partition_columns == list(spec.partition_by)


def stats_columns_per_commit(lake: Lake, name: str) -> list[list[set[str]]]:
    """Per commit that adds files, per file: the columns its Delta statistics cover (null counts)."""
    commits = []
    for commit in sorted((Path(lake.root) / name / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in commit.read_text().splitlines()]
        adds = [a["add"] for a in actions if "add" in a]
        if adds:
            commits.append([set(json.loads(a["stats"]).get("nullCount", {})) for a in adds])
    return commits


def test_bronze_files_get_statistics_only_for_the_filtered_columns(
    spark: SparkSession, lake: Lake
) -> None:
    """Both engines honour bronze's stats columns, on a table delta-rs created."""
    lines = ["2026-11-22T08:00:00,7,GET /rate/the+matrix+1999=4", "garbage"]
    batch = parse_batch(lines, "movielog", [0, 1], "b", T).bronze
    lake.append("bronze_events", batch)  # delta-rs creates it, with the registry's properties
    ensure_table(spark, lake, "bronze_events")  # the speed layer's start: nothing to change
    config = lake.table("bronze_events").metadata().configuration
    assert config["delta.dataSkippingStatsColumns"] == ",".join(BRONZE_STATS_COLUMNS)
    append_once(spark.createDataFrame(batch), lake, "bronze_events", "stream:q", 0)
    lake.append("bronze_events", batch, "ingest:f", 0)
    files = [
        columns for commit in stats_columns_per_commit(lake, "bronze_events") for columns in commit
    ]
    assert len(files) >= 3  # the delta-rs creation's append, Spark's append, delta-rs's append
    for columns in files:
        assert {"user_id", "event_time", "source_offset"} <= columns
        assert columns <= set(BRONZE_STATS_COLUMNS)  # no raw, movie_id, reco_*
    assert protocol(lake, "bronze_events") == (1, 2)
    assert read_table(spark, lake, "bronze_events").count() == 3 * len(lines)

"""Bronze -> silver: sessions, latest ratings, dedupe across batches, the cutoff, reruns."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql.types import (
    ArrayType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from flixlake.batch.silver import (
    SILVER_TABLES,
    NothingToCompactError,
    dedupe_events,
    events_until,
    latest_ratings_df,
    parsed_events,
    reco_requests_df,
    run_compact,
    watch_sessions_df,
)
from flixlake.config import Settings, load_settings
from flixlake.lake.bronze import parse_batch
from flixlake.lake.runs import read_manifest, run_dir
from flixlake.lake.spark_io import spark_schema
from flixlake.lake.store import Lake, MissingTableError
from flixlake.lake.tables import RATINGS, RECO_REQUESTS, WATCH_SESSIONS

UTC = dt.UTC
D19, D20, D21 = dt.date(2026, 11, 19), dt.date(2026, 11, 20), dt.date(2026, 11, 21)


def _t(day: int, hh: int, mm: int, ss: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hh, mm, ss, tzinfo=UTC)


WATCH_SCHEMA = StructType(
    [
        StructField("user_id", LongType()),
        StructField("movie_id", StringType()),
        StructField("minute", IntegerType()),
        StructField("event_time", TimestampType()),
        StructField("event_date", DateType()),
    ]
)
RATE_SCHEMA = StructType(
    [
        StructField("user_id", LongType()),
        StructField("movie_id", StringType()),
        StructField("rating", IntegerType()),
        StructField("event_time", TimestampType()),
    ]
)
MOVIES_SCHEMA = StructType(
    [StructField("movie_id", StringType(), False), StructField("movie_idx", IntegerType(), False)]
)


def _nullable(schema: StructType) -> StructType:
    return StructType([StructField(f.name, f.dataType, True) for f in schema.fields])


# -- pure transforms ---------------------------------------------------------------------------
def test_watch_sessions_count_distinct_minutes_per_user_movie_and_day(spark: SparkSession) -> None:
    watch = spark.createDataFrame(
        [
            (1, "heat", 0, _t(19, 20, 0), D19),
            (1, "heat", 1, _t(19, 20, 1), D19),
            (1, "heat", 1, _t(20, 8, 0), D20),  # next day: its own session
            (1, "heat", 2, _t(20, 8, 1), D20),
            (1, "heat", 1, _t(20, 8, 5), D20),  # minute 1 again: counts once, moves last_time
            (1, "heat", 2, _t(20, 8, 1), D20),  # the same line re-sent: changes nothing
            (2, "heat", 7, _t(20, 9, 0), D20),
            (2, "gone", 3, _t(20, 9, 30), D20),  # slug missing from movies: null index
        ],
        WATCH_SCHEMA,
    )
    movies = spark.createDataFrame([("heat", 4), ("up", 9)], MOVIES_SCHEMA)
    expected = spark.createDataFrame(
        [
            (1, "heat", 4, 2, 1, _t(19, 20, 0), _t(19, 20, 1), D19),
            (1, "heat", 4, 2, 2, _t(20, 8, 0), _t(20, 8, 5), D20),
            (2, "heat", 4, 1, 7, _t(20, 9, 0), _t(20, 9, 0), D20),
            (2, "gone", None, 1, 3, _t(20, 9, 30), _t(20, 9, 30), D20),
        ],
        _nullable(spark_schema(WATCH_SESSIONS)),
    )
    assert_df_equality(
        watch_sessions_df(watch, movies), expected, ignore_row_order=True, ignore_nullable=True
    )


def test_latest_rating_wins_and_a_same_second_tie_goes_to_the_higher(spark: SparkSession) -> None:
    rates = spark.createDataFrame(
        [
            (2, "heat", 2, _t(20, 9, 0)),
            (2, "heat", 4, _t(20, 10, 0)),  # later: wins
            (2, "heat", 5, _t(19, 10, 0)),  # earlier, though higher
            (3, "up", 1, _t(20, 11, 0)),
            (3, "up", 3, _t(20, 11, 0)),  # same instant: the higher one, every time
        ],
        RATE_SCHEMA,
    )
    movies = spark.createDataFrame([("heat", 4), ("up", 9)], MOVIES_SCHEMA)
    expected = spark.createDataFrame(
        [(2, "heat", 4, 4, _t(20, 10, 0)), (3, "up", 9, 3, _t(20, 11, 0))],
        spark_schema(RATINGS),
    )
    assert_df_equality(
        latest_ratings_df(rates, movies), expected, ignore_row_order=True, ignore_nullable=True
    )


def test_dedupe_and_parsed_events_and_the_cutoff(spark: SparkSession) -> None:
    schema = StructType(
        [
            StructField("parse_status", StringType()),
            StructField("raw", StringType()),
            StructField("event_type", StringType()),
            StructField("event_time", TimestampType()),
            StructField("user_id", LongType()),
            StructField("movie_id", StringType()),
            StructField("minute", IntegerType()),
            StructField("rating", IntegerType()),
            StructField("reco_server", StringType()),
            StructField("reco_status", IntegerType()),
            StructField("reco_results", ArrayType(StringType())),
            StructField("reco_response_ms", DoubleType()),
            StructField("event_date", DateType()),
        ]
    )
    watch = ("watch", _t(20, 8, 0), 1, "heat", 3, None, None, None, None, None, D20)
    rows = [
        ("ok", "line-a", *watch),
        ("ok", "line-a", *watch),  # the same line from a second ingest batch
        ("ok", "line-b", "watch", _t(20, 8, 1), 1, "heat", 4, None, None, None, None, None, D20),
        ("ok", "line-c", "rate", _t(21, 1, 0), 1, "heat", None, 5, None, None, None, None, D21),
        ("rejected", "garbage", *([None] * 10), D20),
    ]
    bronze = spark.createDataFrame(rows, schema)
    kept = bronze.transform(events_until(D20)).transform(parsed_events).transform(dedupe_events)
    assert sorted((r["event_type"], r["minute"]) for r in kept.collect()) == [
        ("watch", 3),
        ("watch", 4),
    ]


def test_reco_requests_keep_what_was_served(spark: SparkSession) -> None:
    schema = StructType(
        [
            StructField("event_time", TimestampType()),
            StructField("user_id", LongType()),
            StructField("reco_server", StringType()),
            StructField("reco_status", IntegerType()),
            StructField("reco_results", ArrayType(StringType())),
            StructField("reco_response_ms", DoubleType()),
            StructField("event_date", DateType()),
        ]
    )
    reco = spark.createDataFrame(
        [
            (_t(20, 11, 0), 2, "srv:8082", 200, ["heat", "up"], 120.0, D20),
            (_t(20, 11, 5), 3, "srv:8082", 500, None, 800.0, D20),
        ],
        schema,
    )
    expected = spark.createDataFrame(
        [
            (_t(20, 11, 0), 2, "srv:8082", 200, ["heat", "up"], 2, 120.0, D20),
            (_t(20, 11, 5), 3, "srv:8082", 500, None, 0, 800.0, D20),
        ],
        spark_schema(RECO_REQUESTS),
    )
    assert_df_equality(
        reco_requests_df(reco), expected, ignore_row_order=True, ignore_nullable=True
    )


# -- run_compact on a real bronze table --------------------------------------------------------
RECO = (
    "2026-11-20T11:00:00,2,recommendation request srv1:8082, status 200, "
    "result: heat+1995, up+2009, 120 ms"
)
BATCH_1 = [
    "2026-11-19T20:00:00,1,GET /data/m/heat+1995/0.mpg",
    "2026-11-19T20:01:00,1,GET /data/m/heat+1995/1.mpg",
    "2026-11-20T08:00:00,1,GET /data/m/heat+1995/1.mpg",
    "2026-11-20T08:01:00,1,GET /data/m/heat+1995/2.mpg",
    "2026-11-20T08:05:00,1,GET /data/m/heat+1995/1.mpg",
    "2026-11-20T09:00:00,2,GET /rate/heat+1995=2",
    "2026-11-20T10:00:00,2,GET /rate/heat+1995=4",
    RECO,
    RECO,  # repeated inside the batch: ingest rejects it as a duplicate
    "garbage",
    "2026-11-21T07:00:00,3,GET /data/m/future+2030/0.mpg",  # after the run date
    "2026-11-21T07:00:00,2,GET /rate/heat+1995=1",  # after the run date
]
BATCH_2 = [
    "2026-11-20T08:01:00,1,GET /data/m/heat+1995/2.mpg",  # re-sent across batches
    RECO,  # re-sent across batches
    "2026-11-20T12:00:00,3,GET /data/m/up+2009/7.mpg",
    "2026-11-20T12:00:00,3,GET /rate/up+2009=9",  # rejected: bad rating
]


def ingest(lake: Lake, lines: list[str], batch: str, first_offset: int = 0) -> None:
    """Append lines to bronze/quarantine the way file ingest does."""
    parsed = parse_batch(
        lines,
        source=f"/logs/{batch}.log",
        offsets=range(first_offset, first_offset + len(lines)),
        ingest_batch=batch,
        ingested_at=dt.datetime(2026, 11, 21, 3, 0),
    )
    lake.append("quarantine_events", parsed.quarantine)
    lake.append("bronze_events", parsed.bronze)


def _rows(lake: Lake, name: str) -> list[tuple[Any, ...]]:
    return sorted(tuple(r.values()) for r in lake.read(name).to_pylist())


def test_compact_builds_silver_up_to_the_run_date(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    ingest(lake, BATCH_1, "b1")
    ingest(lake, BATCH_2, "b2")
    summary = run_compact(spark, lake, settings, D20)

    movies = {r["movie_id"]: r for r in lake.read("movies").to_pylist()}
    assert sorted(movies) == ["heat+1995", "up+2009"]  # not future+2030, nor served-only ids
    assert (movies["heat+1995"]["movie_idx"], movies["up+2009"]["movie_idx"]) == (0, 1)
    assert (movies["heat+1995"]["first_seen"], movies["up+2009"]["first_seen"]) == (D19, D20)

    assert _rows(lake, "watch_sessions") == [
        (1, "heat+1995", 0, 2, 1, _t(19, 20, 0), _t(19, 20, 1), D19),
        (1, "heat+1995", 0, 2, 2, _t(20, 8, 0), _t(20, 8, 5), D20),
        (3, "up+2009", 1, 1, 7, _t(20, 12, 0), _t(20, 12, 0), D20),
    ]
    assert _rows(lake, "ratings") == [(2, "heat+1995", 0, 4, _t(20, 10, 0))]
    assert _rows(lake, "reco_requests") == [
        (_t(20, 11, 0), 2, "srv1:8082", 200, ["heat+1995", "up+2009"], 2, 120.0, D20)
    ]

    assert summary["bronze_version"] == lake.version("bronze_events") == 2
    assert summary["output_versions"] == {
        name: lake.version(name)
        for name in ("watch_sessions", "ratings", "reco_requests", "movies")
    }
    assert summary["rows"] == {"watch_sessions": 3, "ratings": 1, "reco_requests": 1}
    # 16 lines: 3 rejected (garbage, bad rating, in-batch duplicate), 2 dated after the run
    # date, 11 parsed up to it; of those, 2 are re-sent copies (a watch and a reco line).
    assert summary["lines"] == {
        "total": 14,
        "parsed": 11,
        "quarantined": 2,
        "duplicate_rejects": 1,
        "duplicates_dropped": 2,
        "unique_events": 9,
        "later": 2,
    }
    assert summary["events"] == {"watch": 6, "rate": 2, "reco": 1}
    assert read_manifest(settings, D20, "compact") == summary


def test_the_run_date_is_the_cutoff(spark: SparkSession, lake: Lake, settings: Settings) -> None:
    ingest(lake, BATCH_1, "b1")
    early = run_compact(spark, lake, settings, D19)
    assert _rows(lake, "watch_sessions") == [
        (1, "heat+1995", 0, 2, 1, _t(19, 20, 0), _t(19, 20, 1), D19)
    ]
    assert _rows(lake, "ratings") == [] and _rows(lake, "reco_requests") == []
    assert early["lines"]["parsed"] == 2 and early["lines"]["later"] == 8

    late = run_compact(spark, lake, settings, D21)
    assert _rows(lake, "ratings") == [(2, "heat+1995", 0, 1, _t(21, 7, 0))]  # the 21st's wins
    assert [r["movie_id"] for r in lake.read("movies").to_pylist()].count("future+2030") == 1
    # incremental: the days the moved cutoff lets in are built, the 19th is left as it was
    assert (late["mode"], late["days"]) == ("incremental", ["2026-11-20", "2026-11-21"])
    assert late["rows"]["watch_sessions"] == 2 and len(_rows(lake, "watch_sessions")) == 3
    assert early["output_versions"]["watch_sessions"] < late["output_versions"]["watch_sessions"]


def test_rerunning_compaction_gives_identical_tables(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    ingest(lake, BATCH_1, "b1")
    ingest(lake, BATCH_2, "b2")
    tables = ("watch_sessions", "ratings", "reco_requests", "movies")
    first = run_compact(spark, lake, settings, D20)
    before = {name: _rows(lake, name) for name in tables}

    # nothing moved: the rerun is a no-op, so downstream steps see the very same versions
    assert run_compact(spark, lake, settings, D20) == first
    assert {n: lake.version(n) for n in tables} == first["output_versions"]

    # forced rebuild (no manifest): new Delta versions, the same rows
    (run_dir(settings, D20) / "compact.json").unlink()
    rebuilt = run_compact(spark, lake, settings, D20)
    assert rebuilt["output_versions"]["watch_sessions"] > first["output_versions"]["watch_sessions"]
    assert rebuilt["output_versions"]["movies"] == first["output_versions"]["movies"]
    assert {name: _rows(lake, name) for name in tables} == before
    assert rebuilt["lines"] == first["lines"] and rebuilt["rows"] == first["rows"]


BATCH_3 = [  # arrives after the 20th's run: late lines of earlier days, copies, the 21st
    "2026-11-19T20:02:00,1,GET /data/m/heat+1995/2.mpg",  # late: a session of the 19th grows
    "2026-11-19T21:00:00,4,GET /data/m/up+2009/0.mpg",  # late: a new session on the 19th
    "2026-11-20T08:01:00,1,GET /data/m/heat+1995/2.mpg",  # a copy, the third time
    RECO,  # a copy, the third time
    "2026-11-19T23:00:00,2,GET /rate/heat+1995=5",  # late, but older than the 20th's 4: loses
    "2026-11-20T09:30:00,3,GET /rate/up+2009=3",  # late, a new pair
    "2026-11-21T09:00:00,1,GET /data/m/up+2009/3.mpg",
    "2026-11-21T09:00:00,3,GET /rate/up+2009=5",  # later than the late 3: wins
]


def test_incremental_compaction_equals_a_full_rebuild(
    spark: SparkSession, lake: Lake, settings: Settings, tmp_path: Path
) -> None:
    ingest(lake, BATCH_1, "b1")
    first = run_compact(spark, lake, settings, D19)
    ingest(lake, BATCH_2, "b2", first_offset=100)
    second = run_compact(spark, lake, settings, D20)
    lake.compact("watch_sessions")  # the daily maintenance in between changes no row
    ingest(lake, BATCH_3, "b3", first_offset=200)
    third = run_compact(spark, lake, settings, D21)
    assert [(r["mode"], r["days"]) for r in (first, second, third)] == [
        ("full", None),
        ("incremental", ["2026-11-20"]),  # let in by the cutoff
        ("incremental", ["2026-11-19", "2026-11-20", "2026-11-21"]),  # late lines, copies, new
    ]
    assert third["rows"]["watch_sessions"] == 6  # the three days' sessions, not the history's
    incremental = {name: _rows(lake, name) for name in SILVER_TABLES}
    assert (4, "up+2009", 1, 1, 0, _t(19, 21, 0), _t(19, 21, 0), D19) in incremental[
        "watch_sessions"
    ]
    assert incremental["ratings"] == [
        (2, "heat+1995", 0, 1, _t(21, 7, 0)),
        (3, "up+2009", 1, 5, _t(21, 9, 0)),
    ]

    repair = load_settings(
        "test", home=tmp_path / "repair", overrides={"batch": {"silver_full_rebuild": True}}
    )
    full = run_compact(spark, lake, repair, D21)
    assert full["mode"] == "full"
    assert {name: _rows(lake, name) for name in SILVER_TABLES} == incremental


def test_rows_deleted_from_bronze_make_the_next_compaction_full(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    ingest(lake, BATCH_1, "b1")
    run_compact(spark, lake, settings, D20)
    lake.delete("bronze_events", "user_id = 2")  # what ``flixlake forget`` does
    again = run_compact(spark, lake, settings, D20)
    assert again["mode"] == "full" and "DELETE" in again["plan"]
    assert _rows(lake, "ratings") == [] and _rows(lake, "reco_requests") == []


def test_missing_or_empty_bronze_is_a_clear_error(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    with pytest.raises(MissingTableError, match="bronze_events"):
        run_compact(spark, lake, settings, D20)
    ingest(lake, BATCH_1, "b1")
    with pytest.raises(NothingToCompactError, match=r"nothing to compact.*2026-11-18"):
        run_compact(spark, lake, settings, dt.date(2026, 11, 18))
    assert issubclass(NothingToCompactError, ValueError)
    assert not lake.exists("watch_sessions")


def test_failure_telemetry_and_unicode_ids_reach_silver(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    ingest(
        lake,
        [
            "2026-11-20T09:00:00,4,GET /data/m/léon+the+professional+1994/0.mpg",
            "2026-11-20T09:00:30,4,GET /rate/léon+the+professional+1994=5",
            "2026-11-20T11:00:00,5,recommendation request 17645-team01.isri.cmu.edu:8082, "
            "status 0, result: java.net.SocketTimeoutException: Read timed out, 800 ms",
        ],
        "b1",
    )
    assert lake.read("quarantine_events").num_rows == 0
    run_compact(spark, lake, settings, D20)
    assert [r["movie_id"] for r in lake.read("movies").to_pylist()] == [
        "léon+the+professional+1994"
    ]
    assert [(r["user_id"], r["rating"]) for r in lake.read("ratings").to_pylist()] == [(4, 5)]
    assert _rows(lake, "reco_requests") == [
        (_t(20, 11, 0), 5, "17645-team01.isri.cmu.edu:8082", 0, None, 0, 800.0, D20)
    ]

"""The quality gate: passes on good silver, fails (rows written, GateFailedError) on bad data."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pytest
from pyspark.sql import SparkSession
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType
from pyspark.sql.types import TimestampType as Ts

from flixlake.batch.catalog import upsert_movies
from flixlake.batch.errors import GateFailedError
from flixlake.batch.quality import run_quality_gate
from flixlake.batch.silver import run_compact
from flixlake.config import Settings, load_settings
from flixlake.lake.bronze import parse_batch
from flixlake.lake.runs import read_manifest, write_manifest
from flixlake.lake.spark_io import table_location
from flixlake.lake.store import Lake
from flixlake.lake.tables import QUALITY_REPORTS, WATCH_SESSIONS

D20 = dt.date(2026, 11, 20)
T = dt.datetime(2026, 11, 20, 8, 0, tzinfo=dt.UTC)

# schema x4 (3 silver + movies), null_keys x3, value_ranges x3, known_movies x2 (not reco),
# duplicate_keys x2 (reco_requests has no key), duplicate + quarantine fraction, daily volume
# (bronze), volume x3 (silver)
N_CHECKS = 4 + 3 + 3 + 2 + 2 + 1 + 1 + 1 + 3


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
    RECO,  # in-batch duplicate: rejected by ingest
    "garbage",  # quarantined
    "2026-11-21T07:00:00,3,GET /data/m/future+2030/0.mpg",  # after the run date
    "2026-11-21T07:00:00,2,GET /rate/heat+1995=1",  # after the run date
]
BATCH_2 = [
    "2026-11-20T08:01:00,1,GET /data/m/heat+1995/2.mpg",  # re-sent: duplicate
    RECO,  # re-sent: duplicate
    "2026-11-20T12:00:00,3,GET /data/m/up+2009/7.mpg",
    "2026-11-20T12:00:00,3,GET /rate/up+2009=9",  # quarantined: bad rating
]
# Dated 11-20 (the gate's run day): 9 parsed lines + 3 rejects (the garbage and the bad rating
# take the day of the lines around them) = 12 lines; 2 quarantined, 3 repeats (1 + 2 re-sent).
# Silver: 3 watch sessions, 1 rating, 1 reco request.


def ingest(
    lake: Lake,
    lines: list[str],
    batch: str,
    ingested_at: dt.datetime = dt.datetime(2026, 11, 21, 3, 0),
) -> None:
    """Append lines to bronze/quarantine the way file ingest does."""
    parsed = parse_batch(
        lines,
        source=f"/logs/{batch}.log",
        offsets=range(len(lines)),
        ingest_batch=batch,
        ingested_at=ingested_at,
    )
    lake.append("quarantine_events", parsed.quarantine)
    lake.append("bronze_events", parsed.bronze)


def _relaxed(settings: Settings, **quality: float) -> Settings:
    """The same home, with quality thresholds changed (the sample data repeats 3 of 14 lines)."""
    limits: dict[str, Any] = {"max_duplicate_fraction": 0.3, **quality}
    return load_settings("test", home=settings.home, overrides={"batch": {"quality": limits}})


def _reports(lake: Lake) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {
        (str(r["run_date"]), r["table_name"], r["check_name"]): r
        for r in lake.read("quality_reports").to_pylist()
    }


def test_gate_passes_on_good_data_and_records_every_check(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    settings = _relaxed(settings)
    ingest(lake, BATCH_1, "b1")
    ingest(lake, BATCH_2, "b2")
    run_compact(spark, lake, settings, D20)

    summary = run_quality_gate(spark, lake, settings, D20)
    assert summary["passed"] is True and summary["failed"] == []
    rows = _reports(lake)
    assert len(rows) == len(summary["checks"]) == N_CHECKS
    assert all(r["passed"] for r in rows.values())
    quarantine = rows[("2026-11-20", "bronze_events", "quarantine_fraction")]
    assert quarantine["observed"] == pytest.approx(2 / 12) and quarantine["threshold"] == 0.2
    duplicates = rows[("2026-11-20", "bronze_events", "duplicate_fraction")]
    assert duplicates["observed"] == pytest.approx(3 / 12) and duplicates["threshold"] == 0.3
    assert "3 of 12 lines dated 2026-11-20" in duplicates["details"]
    daily = rows[("2026-11-20", "bronze_events", "daily_volume")]
    # 12 lines on the 20th vs the 2 of the 19th, the only day with lines in the week before
    assert (daily["observed"], daily["threshold"]) == (12.0, 1.0)
    volume = rows[("2026-11-20", "watch_sessions", "volume")]
    assert volume["observed"] == 3.0 and volume["threshold"] is None
    assert "first run" in volume["details"]
    assert read_manifest(settings, D20, "quality")["passed"] is True

    run_quality_gate(spark, lake, settings, D20)  # a rerun replaces its rows
    assert len(_reports(lake)) == N_CHECKS


def test_too_many_quarantined_lines_fail_the_gate_after_writing_the_report(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    settings = _relaxed(settings)
    ingest(lake, BATCH_1, "b1")
    ingest(lake, BATCH_2, "b2")
    # a feed of garbage on the 20th, streamed in that day: 12 of 22 lines quarantined
    ingest(lake, [f"garbage {i}" for i in range(10)], "b3", dt.datetime(2026, 11, 20, 23, 0))
    run_compact(spark, lake, settings, D20)

    with pytest.raises(GateFailedError, match=r"bronze_events\.quarantine_fraction"):
        run_quality_gate(spark, lake, settings, D20)
    rows = _reports(lake)
    assert len(rows) == N_CHECKS
    failed = [key for key, r in rows.items() if not r["passed"]]
    assert failed == [("2026-11-20", "bronze_events", "quarantine_fraction")]
    assert rows[failed[0]]["observed"] == pytest.approx(12 / 22)
    manifest = read_manifest(settings, D20, "quality")
    assert manifest["passed"] is False
    assert manifest["failed"] == ["bronze_events.quarantine_fraction"]


def test_a_volume_drop_against_the_last_passing_run_fails(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    settings = _relaxed(settings)
    ingest(lake, BATCH_1, "b1")
    ingest(lake, BATCH_2, "b2")
    run_compact(spark, lake, settings, D20)

    def row(day: int, table: str, check: str, passed: bool, observed: float) -> dict[str, Any]:
        return {
            "run_date": dt.date(2026, 11, day),
            "table_name": table,
            "check_name": check,
            "passed": passed,
            "observed": observed,
            "threshold": None,
            "details": "",
            "checked_at": T,
        }

    history = [
        row(18, "watch_sessions", "volume", True, 100.0),  # the last passing run
        row(18, "ratings", "volume", True, 2.0),
        row(19, "watch_sessions", "volume", True, 1.0),  # the 19th failed: not a baseline
        row(19, "bronze_events", "quarantine_fraction", False, 0.9),
        row(21, "watch_sessions", "volume", True, 9999.0),  # later runs are not "previous"
    ]
    lake.append("quality_reports", pa.Table.from_pylist(history, schema=QUALITY_REPORTS.schema))

    with pytest.raises(GateFailedError, match=r"watch_sessions\.volume") as failure:
        run_quality_gate(spark, lake, settings, D20)
    assert "ratings.volume" not in str(failure.value)
    rows = _reports(lake)
    volume = rows[("2026-11-20", "watch_sessions", "volume")]
    assert (volume["passed"], volume["observed"], volume["threshold"]) == (False, 3.0, 50.0)
    assert "2026-11-18" in volume["details"]
    ratings = rows[("2026-11-20", "ratings", "volume")]
    assert (ratings["passed"], ratings["threshold"]) == (True, 1.0)  # 1 row >= 0.5 x 2
    assert read_manifest(settings, D20, "quality")["failed"] == ["watch_sessions.volume"]


def test_bad_silver_rows_fail_range_key_null_and_movie_checks(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    upsert_movies(lake, ["heat"])  # movie_idx 0
    ingest(lake, BATCH_1[2:8], "b1")  # clean lines on the 20th: the bronze checks pass
    sessions = [
        (1, "heat", 0, 0, 0),  # 0 minutes watched
        (2, "heat", 0, 3, 5),
        (2, "heat", 0, 4, 5),  # the same (user, movie, day) twice
        (3, "heat", 7, 1, 0),  # movie_idx 7 is not in movies
    ]
    lake.append(
        "watch_sessions",
        pa.Table.from_pylist(
            [
                {
                    "user_id": u,
                    "movie_id": m,
                    "movie_idx": i,
                    "minutes_watched": n,
                    "max_minute": top,
                    "first_time": T,
                    "last_time": T,
                    "event_date": D20,
                }
                for u, m, i, n, top in sessions
            ],
            schema=WATCH_SESSIONS.schema,
        ),
    )
    schema = StructType(
        [
            StructField("user_id", LongType()),
            StructField("movie_id", StringType()),
            StructField("movie_idx", IntegerType()),
            StructField("rating", IntegerType()),
            StructField("rated_at", Ts()),
        ]
    )
    ratings = spark.createDataFrame([(1, "heat", 0, 7, T), (2, "heat", None, 3, T)], schema)
    # a table some other writer made without the registry's NOT NULL (a plain DataFrame writer):
    # delta-spark's write_table would refuse the null key, the gate must still catch it
    ratings.write.format("delta").mode("overwrite").save(table_location(lake, "ratings"))
    lake.ensure("reco_requests")
    names = ("watch_sessions", "ratings", "reco_requests", "movies")
    lines = {"total": 10, "parsed": 10, "quarantined": 0, "duplicate_rejects": 0}
    lines |= {"duplicates_dropped": 0}
    write_manifest(
        settings,
        D20,
        "compact",
        {
            "bronze_version": lake.version("bronze_events"),
            "output_versions": lake.versions(names),
            "lines": lines,
        },
    )

    with pytest.raises(GateFailedError):
        run_quality_gate(spark, lake, settings, D20)
    rows = _reports(lake)
    failed = {(t, c) for (_, t, c), r in rows.items() if not r["passed"]}
    assert failed == {
        ("watch_sessions", "value_ranges"),
        ("watch_sessions", "duplicate_keys"),
        ("watch_sessions", "known_movies"),
        ("ratings", "schema"),  # its columns lost the registry's NOT NULL
        ("ratings", "null_keys"),
        ("ratings", "value_ranges"),
        ("ratings", "known_movies"),
    }
    assert rows[("2026-11-20", "watch_sessions", "duplicate_keys")]["observed"] == 1.0
    assert rows[("2026-11-20", "watch_sessions", "value_ranges")]["observed"] == 1.0
    assert rows[("2026-11-20", "ratings", "null_keys")]["observed"] == pytest.approx(0.5)
    assert "movie_idx: 1" in rows[("2026-11-20", "ratings", "null_keys")]["details"]
    assert rows[("2026-11-20", "ratings", "known_movies")]["observed"] == 1.0


def _day(day: int, n: int) -> list[str]:
    """``n`` distinct watch lines on 2026-11-``day`` (users 1..n, one minute each)."""
    return [
        f"2026-11-{day}T10:{u % 60:02d}:00,{u},GET /data/m/heat+1995/{u}.mpg"
        for u in range(1, n + 1)
    ]


def _gate(spark: SparkSession, lake: Lake, settings: Settings, day: int) -> dict[str, Any]:
    """Compact and gate run date 2026-11-``day``; the failed checks' labels."""
    run_date = dt.date(2026, 11, day)
    run_compact(spark, lake, settings, run_date)
    try:
        return run_quality_gate(spark, lake, settings, run_date)
    except GateFailedError:
        return read_manifest(settings, run_date, "quality")


def test_a_day_with_10_percent_repeats_fails_its_gate_and_no_later_one(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    """History clean, the 20th re-sends 4 of its 40 lines: its gate fails (over all of bronze
    it would be 4 of 160, 2.5 %, under the 5 % limit); the clean 21st passes again."""
    for day in (18, 19, 21):
        ingest(lake, _day(day, 40), f"d{day}")
    ingest(lake, _day(20, 36), "d20")
    ingest(lake, _day(20, 36)[:4], "d20-replayed")

    failed = _gate(spark, lake, settings, 20)
    assert failed["passed"] is False
    assert failed["failed"] == ["bronze_events.duplicate_fraction"]
    duplicates = _reports(lake)[("2026-11-20", "bronze_events", "duplicate_fraction")]
    assert duplicates["observed"] == pytest.approx(0.1) and duplicates["threshold"] == 0.05
    assert "0 within an ingest batch, 4 across batches" in duplicates["details"]
    later = _gate(spark, lake, settings, 21)
    assert later["passed"] is True, later["failed"]
    assert _reports(lake)[("2026-11-21", "bronze_events", "duplicate_fraction")]["observed"] == 0


def test_the_run_days_since_the_last_gate_are_judged_and_a_day_without_lines_fails(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    """Gated on the 17th, next on the 20th: the 18th-20th are the run's days; the 19th has
    no lines at all (a dead feed), against a median of 40 a day before."""
    for day in (15, 16, 17, 18, 20):
        ingest(lake, _day(day, 40), f"d{day}")
    gated = {
        "run_date": dt.date(2026, 11, 17),
        "table_name": "bronze_events",
        "check_name": "daily_volume",
        "passed": True,
        "observed": 40.0,
        "threshold": 20.0,
        "details": "",
        "checked_at": T,
    }
    lake.append("quality_reports", pa.Table.from_pylist([gated], schema=QUALITY_REPORTS.schema))
    failed = _gate(spark, lake, settings, 20)
    assert failed["failed"] == ["bronze_events.daily_volume"]
    volume = _reports(lake)[("2026-11-20", "bronze_events", "daily_volume")]
    assert (volume["observed"], volume["threshold"]) == (0.0, 20.0)
    assert "0 lines on 2026-11-19" in volume["details"]
    assert "on 3 days of 2026-11-11..2026-11-17" in volume["details"]  # 7 days before the 18th

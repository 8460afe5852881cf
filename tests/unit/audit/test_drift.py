"""Drift per input and window: transformations on tiny frames, and a shifted day that crosses
its threshold while an unshifted one does not (real Spark, a real lake)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from flixlake.audit.drift import (
    DriftWindows,
    by_window,
    count_bin,
    drift_rows,
    event_mix,
    input_counts,
    per_user_bins,
    with_event_kind,
)
from flixlake.audit.export import drift_summary
from flixlake.config import DriftConfig, DriftLimit
from flixlake.lake.store import Lake
from flixlake.lake.tables import BRONZE_EVENTS

UTC = dt.UTC
DAY = dt.date(2026, 11, 21)


def bronze(
    when: dt.datetime | None,
    kind: str,
    user: int,
    movie: str | None = None,
    rating: int | None = None,
    status: int | None = None,
    offset: int = 0,
    ingested: dt.datetime | None = None,
) -> dict[str, Any]:
    """One ``bronze_events`` row; ``kind`` ``rejected`` is a bad line (no parsed fields)."""
    ok = kind != "rejected"
    at = ingested or when or dt.datetime(2026, 11, 21, tzinfo=UTC)
    return {
        "source": "test",
        "source_partition": 0,
        "source_offset": offset,
        "raw": "line",
        "parse_status": "ok" if ok else "rejected",
        "reject_reason": None if ok else "bad_rating",
        "event_type": kind if ok else None,
        "event_time": when if ok else None,
        "user_id": user if ok else None,
        "movie_id": movie,
        "minute": 1 if kind == "watch" else None,
        "rating": rating,
        "reco_server": None,
        "reco_status": status,
        "reco_results": None,
        "reco_response_ms": None,
        "ingest_batch": "b",
        "ingested_at": at,
        "event_date": (when or at).date(),
    }


def frame(spark: SparkSession, rows: list[dict[str, Any]]) -> Any:
    return spark.createDataFrame(pa.Table.from_pylist(rows, schema=BRONZE_EVENTS.schema))


def at(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=UTC)


# -- transformations -----------------------------------------------------------------------------
def test_events_get_a_kind_and_a_slice_of_the_time_axis(spark: SparkSession) -> None:
    windows = DriftWindows(DAY, 86400, reference_days=2)  # slices: 11-19 = 0, 11-20 = 1, 11-21 = 2
    d = dt.timedelta(days=1)
    rows = [
        bronze(at(DAY - 2 * d), "watch", 1, "m1"),
        bronze(at(DAY - d), "rate", 1, "m1", rating=4),
        bronze(at(DAY), "reco", 2, status=200),
        bronze(at(DAY), "reco", 2, status=0),  # a failed request
        bronze(None, "rejected", 0, ingested=at(DAY, 3)),  # placed at its ingest time
        bronze(at(DAY - 3 * d), "watch", 9, "m9"),  # before the reference: not audited
        bronze(at(DAY + d), "watch", 9, "m9"),  # after the day
    ]
    got = with_event_kind(frame(spark, rows), windows).select("slice", "kind", "user_id")
    expected = spark.createDataFrame(
        [
            (0, "watch", 1),
            (1, "rate", 1),
            (2, "reco", 2),
            (2, "reco_error", 2),
            (2, "rejected", None),
        ],
        "slice long, kind string, user_id long",
    )
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)
    mix = by_window(event_mix(with_event_kind(frame(spark, rows), windows)), windows)
    assert {(r["window"], r["category"]): r["weight"] for r in mix.collect()} == {
        (-1, "watch"): 1.0,
        (-1, "rate"): 1.0,
        (0, "reco"): 1.0,
        (0, "reco_error"): 1.0,
        (0, "rejected"): 1.0,
    }


def test_counts_fall_in_log2_bins(spark: SparkSession) -> None:
    counts = spark.createDataFrame([(n,) for n in (1, 2, 3, 4, 7, 8, 1023, 1024, 5000)], "n long")
    got = [r["bin"] for r in counts.select(count_bin(F.col("n")).alias("bin")).collect()]
    assert got == ["1", "2-3", "2-3", "4-7", "4-7", "8-15", "512-1023", "1024+", "1024+"]


def test_per_user_bins_count_users_per_slice_and_keep_the_events(spark: SparkSession) -> None:
    events = spark.createDataFrame(
        [(0, 1), (0, 1), (0, 1), (0, 2), (1, 1)], "slice long, user_id long"
    )  # slice 0: user 1 three events, user 2 one; slice 1: user 1 one
    got = {
        (r["slice"], r["category"]): (r["weight"], r["events"])
        for r in per_user_bins(events).collect()
    }
    assert got == {(0, "2-3"): (1.0, 3), (0, "1"): (1.0, 1), (1, "1"): (1.0, 1)}


# -- the verdict ---------------------------------------------------------------------------------
CFG = DriftConfig(
    reference_days=2,
    min_expected=5,
    min_events=200,
    inputs={
        "ratings": DriftLimit(max_distance=0.1),
        "event_mix": DriftLimit(max_distance=0.1, max_volume_change=3.0),
    },
)
NOW = dt.datetime(2026, 11, 22, 5, tzinfo=UTC)


def ratings_day(day: dt.date, per_star: dict[int, int], start: int) -> list[dict[str, Any]]:
    rows, i = [], start
    for stars, n in per_star.items():
        for _ in range(n):
            rows.append(bronze(at(day, i % 24), "rate", i, f"m{i % 50}", rating=stars, offset=i))
            i += 1
    return rows


def audit(spark: SparkSession, lake: Lake, day: dt.date) -> dict[str, dict[str, Any]]:
    windows = DriftWindows(day, 86400, CFG.reference_days)
    counts, _ = input_counts(spark, lake, windows)
    return {r["input"]: r for r in drift_rows(counts, windows, CFG, NOW)}


def test_a_shifted_day_crosses_the_threshold_and_an_unshifted_one_does_not(
    spark: SparkSession, lake: Lake
) -> None:
    usual = {1: 60, 2: 60, 3: 60, 4: 60, 5: 60}
    days = [DAY - dt.timedelta(days=k) for k in (3, 2, 1)]  # 11-18, 11-19, 11-20: usual
    rows = [r for i, d in enumerate(days) for r in ratings_day(d, usual, 1000 * i)]
    rows += ratings_day(DAY, {1: 15, 2: 15, 3: 15, 4: 15, 5: 240}, 9000)  # 11-21: five stars
    lake.append("bronze_events", pa.Table.from_pylist(rows, schema=BRONZE_EVENTS.schema))

    unshifted = audit(spark, lake, DAY - dt.timedelta(days=1))["ratings"]
    assert unshifted["judged"] and not unshifted["drifted"]
    assert unshifted["observations"] == 300 and unshifted["reference_observations"] == 600
    assert unshifted["distance"] == pytest.approx(0.0)

    shifted = audit(spark, lake, DAY)
    ratings = shifted["ratings"]
    assert ratings["judged"] and ratings["drifted"]
    assert ratings["distance"] > 0.3 > ratings["max_distance"]
    assert ratings["largest_shift"] == "5: 0.200 -> 0.800"
    assert ratings["psi"] > 0.25  # a major shift by the credit-scoring rule of thumb too
    assert shifted["event_mix"]["volume_ratio"] == pytest.approx(1.0)
    assert not shifted["event_mix"]["drifted"]  # same volume, only ratings


def _counts(window: dict[str, float], reference: dict[str, float]) -> list[dict[str, Any]]:
    return [
        *[{"window": 0, "category": k, "weight": v, "events": int(v)} for k, v in window.items()],
        *[
            {"window": -1, "category": k, "weight": v, "events": int(v)}
            for k, v in reference.items()
        ],
    ]


def test_a_volume_collapse_drifts_even_with_nothing_left_to_compare() -> None:
    windows = DriftWindows(DAY, 86400, 2)
    reference = {"watch": 1800.0, "rate": 200.0}  # 1,000 events a day
    quiet = drift_rows({"event_mix": _counts({}, reference)}, windows, CFG, NOW)[0]
    assert quiet["volume_ratio"] == 0.0 and not quiet["judged"] and quiet["drifted"]
    busy = drift_rows(
        {"event_mix": _counts({"watch": 2700.0, "rate": 300.0}, reference)}, windows, CFG, NOW
    )[0]
    assert busy["volume_ratio"] == pytest.approx(3.0) and not busy["drifted"]  # at the limit
    burst = drift_rows(
        {"event_mix": _counts({"watch": 2800.0, "rate": 300.0}, reference)}, windows, CFG, NOW
    )[0]
    assert burst["volume_ratio"] > 3.0 and burst["drifted"]
    summary = drift_summary([quiet, busy])
    assert summary["event_mix"]["drifted"] == 1 and summary["event_mix"]["volume_ratio"] == 0.0


def test_hourly_windows_tile_the_day_and_compare_with_hours_of_the_reference() -> None:
    windows = DriftWindows(DAY, 3600, 7)
    assert len(windows.windows) == 24 and windows.reference_slices == 7 * 24
    assert windows.windows[5] == (at(DAY, 5), at(DAY, 6))
    # 100 events from 00:00 to 01:00 and 700 in that hour of the 7 reference days: as usual;
    # 100 from 01:00 to 02:00 after 2,100 in that hour before: a third of the usual volume
    counts = {
        "event_mix": [
            {"window": 0, "category": "watch", "weight": 100.0, "events": 100},
            {"window": -1, "category": "watch", "weight": 700.0, "events": 700},
            {"window": 1, "category": "watch", "weight": 100.0, "events": 100},
            {"window": -2, "category": "watch", "weight": 2100.0, "events": 2100},
        ]
    }
    rows = {r["window_start"]: r for r in drift_rows(counts, windows, CFG, NOW)}
    assert rows[at(DAY, 0)]["volume_ratio"] == pytest.approx(1.0)
    assert rows[at(DAY, 1)]["volume_ratio"] == pytest.approx(1 / 3)

"""Drift of every input: each window of the run date against the reference days before it.

The run date D is cut into windows of ``audit.drift.window`` (1 h .. 1 d); the reference is the
``audit.drift.reference_days`` days before D, ``[D - days, D)``, at the same time of day (the
13:00 window against 13:00-14:00 of each reference day: the daily cycle is not drift). Each input becomes a
distribution over categories per window, and :func:`flixlake.audit.distances.measure` says how
far each window's is from the reference's:

=================  ====================================================  =====================
input              what is counted (the categories)                      from
=================  ====================================================  =====================
event_mix          log lines by kind: watch, rate, reco, reco_error      bronze_events
                   (a request that failed), rejected (bad lines)
movie_activity     watches (distinct user, movie) per movie              bronze_events
genre_activity     the same watches spread over their movies' genres     bronze_events, movies
user_activity      users by their number of events in a window (log2     bronze_events
                   bins: 1, 2-3, 4-7, ...)
ratings            ratings by stars                                      bronze_events
request_volume     users by their number of recommendation requests in  bronze_events
                   a window (log2 bins), and the requests' volume
answer_sources     the service's answers by source: batch,               served_recommendations
                   batch_filtered, batch_filled, fallback (unknown:
                   records from before answers carried it)
=================  ====================================================  =====================

Per-user inputs count (user, window-length slice) pairs in the reference too, so a day's
activity is compared with days', not with a week's. Every input also gets its volume ratio
(events per hour in the window / in the reference); where ``max_volume_change`` is set (event
mix, request volume) a window whose volume is off by more than that factor either way drifts
as well -- an empty window then counts (an outage is drift), while its distance, with fewer
than ``min_events`` observations, is not judged.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from dataclasses import dataclass
from functools import reduce
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from flixlake.audit.distances import measure
from flixlake.batch.fairness import movie_genre_weights
from flixlake.config import DRIFT_INPUTS, DriftConfig
from flixlake.lake.spark_io import read_table
from flixlake.lake.store import Lake
from flixlake.lake.tables import BRONZE_EVENTS, MOVIES, SERVED_RECOMMENDATIONS

DAY = dt.timedelta(days=1)
# after the final aggregation, window i of the run date is label i and its reference (the same
# time of day on every reference day) is label reference_label(i) = -1 - i
MAX_BIN = 10  # per-user counts of 2^10 and more share the last bin
VOLUME_INPUTS = {"event_mix": BRONZE_EVENTS.name, "request_volume": BRONZE_EVENTS.name}


@dataclass(frozen=True)
class DriftWindows:
    """The run date's windows and the reference before it, as slices of one time axis."""

    run_date: dt.date
    window_seconds: int
    reference_days: int

    @property
    def reference_start(self) -> dt.datetime:
        return _midnight(self.run_date - self.reference_days * DAY)

    @property
    def day_start(self) -> dt.datetime:
        return _midnight(self.run_date)

    @property
    def day_end(self) -> dt.datetime:
        return _midnight(self.run_date + DAY)

    @property
    def reference_slices(self) -> int:
        return self.reference_days * self.per_day

    @property
    def per_day(self) -> int:
        return 86400 // self.window_seconds

    @property
    def windows(self) -> list[tuple[dt.datetime, dt.datetime]]:
        step = dt.timedelta(seconds=self.window_seconds)
        return [
            (self.day_start + i * step, self.day_start + (i + 1) * step)
            for i in range(self.per_day)
        ]

    def slice_of(self, time: Column) -> Column:
        """Window-length slice index of a time, 0 at the reference's start."""
        start = int(self.reference_start.timestamp())
        return F.floor((F.unix_seconds(time) - F.lit(start)) / F.lit(self.window_seconds))

    def in_range(self, time: Column) -> Column:
        return (time >= F.lit(self.reference_start)) & (time < F.lit(self.day_end))


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)


# -- transformations: rows with a slice -> (slice, category, weight, events) --------------------
def with_event_kind(bronze_df: DataFrame, windows: DriftWindows) -> DataFrame:
    """Bronze rows of the audited range as ``(slice, kind, user_id, movie_id, rating)``.

    A rejected line has no event time: it is placed at its ingest time, which is on its
    ``event_date`` by construction.
    """
    time = F.coalesce(F.col("event_time"), F.col("ingested_at"))
    kind = (
        F.when(F.col("parse_status") != "ok", "rejected")
        .when(
            (F.col("event_type") == "reco") & (F.coalesce(F.col("reco_status"), F.lit(0)) != 200),
            "reco_error",
        )
        .otherwise(F.col("event_type"))
    )
    return bronze_df.where(windows.in_range(time)).select(
        windows.slice_of(time).alias("slice"),
        kind.alias("kind"),
        "user_id",
        "movie_id",
        "rating",
    )


def _counted(df: DataFrame, category: Column) -> DataFrame:
    return df.groupBy("slice", category.alias("category")).agg(
        F.count(F.lit(1)).cast("double").alias("weight"),
        F.count(F.lit(1)).alias("events"),
    )


def event_mix(events_df: DataFrame) -> DataFrame:
    """Log lines per kind."""
    return _counted(events_df, F.col("kind"))


def watch_pairs(events_df: DataFrame) -> DataFrame:
    """Distinct ``(slice, user_id, movie_id)`` watches: a watched movie counts once per slice,
    not once per logged minute."""
    return (
        events_df.where(F.col("kind") == "watch").select("slice", "user_id", "movie_id").distinct()
    )


def movie_activity(pairs_df: DataFrame) -> DataFrame:
    """Watches per movie."""
    return _counted(pairs_df, F.col("movie_id"))


def genre_activity(pairs_df: DataFrame, genre_weights_df: DataFrame) -> DataFrame:
    """Watches spread over genres (a movie adds 1/|genres| to each of its genres)."""
    return (
        pairs_df.join(genre_weights_df, "movie_id")
        .groupBy("slice", F.col("genre").alias("category"))
        .agg(F.sum("weight").alias("weight"))
        .withColumn("events", F.round("weight").cast("long"))  # a watch adds 1 over its genres
    )


def count_bin(count: Column) -> Column:
    """Log2 bin label of a positive count: ``1``, ``2-3``, ``4-7``, ..., ``1024+``."""
    b = F.least(F.floor(F.log2(count)), F.lit(MAX_BIN)).cast("int")
    low = F.pow(F.lit(2), b).cast("long")
    high = low * 2 - 1
    return (
        F.when(b >= MAX_BIN, F.concat(low.cast("string"), F.lit("+")))
        .when(b == 0, F.lit("1"))
        .otherwise(F.concat(low.cast("string"), F.lit("-"), high.cast("string")))
    )


def per_user_bins(events_df: DataFrame) -> DataFrame:
    """Users (per slice) by their number of events, in log2 bins; events = their sum."""
    per_user = events_df.groupBy("slice", "user_id").agg(F.count(F.lit(1)).alias("n"))
    return per_user.groupBy("slice", count_bin(F.col("n")).alias("category")).agg(
        F.count(F.lit(1)).cast("double").alias("weight"), F.sum("n").alias("events")
    )


def user_activity(events_df: DataFrame) -> DataFrame:
    """Parsed events per user and slice."""
    return per_user_bins(events_df.where(F.col("kind") != "rejected"))


def rating_mix(events_df: DataFrame) -> DataFrame:
    """Ratings per star value."""
    rated = events_df.where(F.col("kind") == "rate")
    return _counted(rated, F.col("rating").cast("string"))


def request_volume(events_df: DataFrame) -> DataFrame:
    """Recommendation requests (answered or failed) per user and slice."""
    return per_user_bins(events_df.where(F.col("kind").isin("reco", "reco_error")))


def answer_sources(served_df: DataFrame, windows: DriftWindows) -> DataFrame:
    """The service's answers (once per request id) by source; a failed answer is ``error``."""
    answers = served_df.where(windows.in_range(F.col("served_at"))).dropDuplicates(["request_id"])
    source = (
        F.when(F.col("status") != 200, "error")
        .when(F.col("answer_source").isNull(), "unknown")
        .otherwise(F.col("answer_source"))
    )
    return _counted(answers.withColumn("slice", windows.slice_of(F.col("served_at"))), source)


def reference_label(window: int) -> int:
    """The label of window ``window``'s reference rows: the same time of day before the day."""
    return -1 - window


def by_window(counts_df: DataFrame, windows: DriftWindows) -> DataFrame:
    """Slices -> the run date's window index (0, 1, ...) or, for a reference slice, the label
    of the window at the same time of day (:func:`reference_label`): an hour is compared with
    that hour of the reference days, so the daily cycle is not drift."""
    r, per_day = windows.reference_slices, windows.per_day
    position = F.col("slice") % per_day  # the time of day (0 for daily windows)
    label = F.when(F.col("slice") < r, -1 - position).otherwise(F.col("slice") - r)
    return counts_df.groupBy(label.cast("int").alias("window"), "category").agg(
        F.sum("weight").alias("weight"), F.sum("events").cast("long").alias("events")
    )


# -- the step's part ----------------------------------------------------------------------------
def _between_dates(column: str, first: dt.date, last: dt.date) -> str:
    """A partition predicate (inclusive) for :func:`~flixlake.lake.spark_io.read_table`."""
    return f"{column} >= '{first.isoformat()}' AND {column} <= '{last.isoformat()}'"


def input_counts(
    spark: SparkSession, lake: Lake, windows: DriftWindows
) -> tuple[dict[str, Any], list[str]]:
    """Counts per input, window (``-1`` = reference) and category, collected; and notes on
    inputs that could not be measured."""
    first, last = windows.reference_start.date(), windows.run_date
    bronze = read_table(
        spark, lake, BRONZE_EVENTS.name, partition_filter=_between_dates("event_date", first, last)
    )
    events = with_event_kind(bronze, windows).persist(StorageLevel.MEMORY_AND_DISK)
    pairs = watch_pairs(events).persist(StorageLevel.MEMORY_AND_DISK)
    parts: dict[str, DataFrame] = {
        "event_mix": event_mix(events),
        "movie_activity": movie_activity(pairs),
        "user_activity": user_activity(events),
        "ratings": rating_mix(events),
        "request_volume": request_volume(events),
    }
    notes: list[str] = []
    if lake.exists(MOVIES.name):
        movies = read_table(spark, lake, MOVIES.name)
        parts["genre_activity"] = genre_activity(pairs, movie_genre_weights(movies))
    else:
        notes.append("genre_activity: no movies table yet")
    served = SERVED_RECOMMENDATIONS.name
    if lake.exists(served):
        served_df = read_table(
            spark, lake, served, partition_filter=_between_dates("served_date", first, last)
        )
        parts["answer_sources"] = answer_sources(served_df, windows)
    else:
        notes.append(f"answer_sources: no {served} table yet (the service's answers land there)")
    every = reduce(
        DataFrame.unionByName,
        [by_window(part, windows).withColumn("input", F.lit(name)) for name, part in parts.items()],
    )
    try:
        collected = every.toArrow().to_pylist()  # one job for all inputs
    finally:
        pairs.unpersist()
        events.unpersist()
    counts: dict[str, list[dict[str, Any]]] = {name: [] for name in parts}
    for row in collected:
        counts[row["input"]].append(row)
    return counts, notes


def drift_rows(
    counts: dict[str, list[dict[str, Any]]],
    windows: DriftWindows,
    cfg: DriftConfig,
    computed_at: dt.datetime,
) -> list[dict[str, Any]]:
    """``audit_drift`` rows: every measured input x every window of the run date."""
    rows = []
    for name in (n for n in DRIFT_INPUTS if n in counts):
        by: dict[int, dict[str, float]] = defaultdict(dict)
        events: dict[int, int] = defaultdict(int)
        for row in counts[name]:
            by[row["window"]][row["category"]] = float(row["weight"])
            events[row["window"]] += int(row["events"])
        limit = cfg.limit(name)
        for i, (start, end) in enumerate(windows.windows):
            reference = reference_label(i)
            m = measure(by.get(i, {}), by.get(reference, {}), cfg.min_expected)
            ratio = _volume_ratio(events[i], events[reference], windows)
            judged = min(m.observations, m.reference_observations) >= cfg.min_events
            drifted = limit is not None and judged and m.distance > limit.max_distance
            x = limit.max_volume_change if limit is not None else None
            if x is not None and ratio is not None and events[reference] >= cfg.min_events:
                drifted = drifted or not (1 / x <= ratio <= x)
            rows.append(
                {
                    "run_date": windows.run_date,
                    "input": name,
                    "window_start": start,
                    "window_end": end,
                    "reference_start": windows.reference_start,
                    "reference_end": windows.day_start,
                    "observations": m.observations,
                    "reference_observations": m.reference_observations,
                    "events": events[i],
                    "reference_events": events[reference],
                    "volume_ratio": ratio,
                    "categories": m.categories,
                    "js_distance": _finite(m.js_distance),
                    "expected_noise": m.expected_noise,
                    "distance": _finite(m.distance),
                    "psi": _finite(m.psi),
                    "largest_shift": m.largest_shift,
                    "max_distance": limit.max_distance if limit else None,
                    "max_volume_change": limit.max_volume_change if limit else None,
                    "judged": judged,
                    "drifted": drifted,
                    "computed_at": computed_at,
                }
            )
    return rows


def _volume_ratio(events: int, reference_events: int, windows: DriftWindows) -> float | None:
    """Events per hour in the window over the reference's (None without reference events)."""
    if reference_events <= 0:
        return None
    return events * windows.reference_days / reference_events


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None

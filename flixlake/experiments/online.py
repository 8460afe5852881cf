"""Online evaluation: did users watch what the service recommended to them?

An *answer* is a served recommendation with status 200 and at least one item, counted once per
request id (a producer retry can land a record twice). It *converts* when the same user has a
watch event (``bronze_events``; MLiP logs one per watched minute, any minute counts) of any of
its items with ``served_at <= event_time <= served_at + online.watch_window``, where served_at is
cut to whole seconds, the precision of log times (a watch logged in the same second as the
answer came after it: the user clicked a movie they were shown). Watch-through is
converted / served. ``online_evaluations`` stores served and converted answers per served hour,
experiment, model version, variant *and user*: experiments randomise users, so the statistics
(:mod:`flixlake.experiments.stats`) need each user's totals; hourly totals are sums of the rows.

``run_online_evaluation(spark, lake, settings, until)`` (``jobs/online_evaluation.py``, the
hourly ``flixlake_online`` DAG, ``flixlake experiment evaluate``) recomputes the newest
``online.lookback_hours`` complete served hours -- hour ``H`` is complete when
``H + 1h + window <= until`` -- and replaces exactly those hours' rows: reruns never duplicate,
and answers or watches that land late are counted by the following runs.

Comparing variants over a range of hours (``flixlake experiment report``): per-user
(delta-method) intervals and an always-valid sequential test of each variant against the control
(:mod:`flixlake.experiments.stats`). Variants are compared, not model versions: users are
assigned to variants (:mod:`flixlake.experiments.routing`), and a variant may serve several versions.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flixlake.config import Settings
from flixlake.contract.logformat import as_utc
from flixlake.experiments.stats import ONLINE
from flixlake.lake.spark_io import read_table, spark_schema, with_schema
from flixlake.lake.store import Lake, MissingTableError
from flixlake.lake.tables import BRONZE_EVENTS, ONLINE_EVALUATIONS, SERVED_RECOMMENDATIONS

log = logging.getLogger(__name__)
HOUR = dt.timedelta(hours=1)
SERVED = SERVED_RECOMMENDATIONS.name
BRONZE = BRONZE_EVENTS.name
GROUP = ("served_hour", "experiment", "model_version", "variant")
PER_USER = (*GROUP, "user_id")


def evaluation_hours(
    until: dt.datetime, window_seconds: int, lookback_hours: int
) -> list[dt.datetime]:
    """Served hours a run at ``until`` evaluates: the newest ``lookback_hours`` complete ones.

    >>> [h.hour for h in evaluation_hours(dt.datetime(2026, 11, 22, 10, 30), 3600, 3)]
    [6, 7, 8]
    """
    latest = as_utc(until) - dt.timedelta(seconds=window_seconds) - HOUR
    latest = latest.replace(minute=0, second=0, microsecond=0)
    return [latest - i * HOUR for i in reversed(range(lookback_hours))]


# -- transformations -----------------------------------------------------------------------------
def answers_between(served: DataFrame, start: dt.datetime, end: dt.datetime) -> DataFrame:
    """Answers served in ``[start, end)`` with status 200 and items, one row per request id."""
    return (
        served.where(
            (F.col("served_at") >= F.lit(start))
            & (F.col("served_at") < F.lit(end))
            & (F.col("status") == 200)
            & (F.size("items") > 0)
        )
        .dropDuplicates(["request_id"])
        .withColumn("served_hour", F.date_trunc("hour", "served_at"))
        .select("request_id", "user_id", "served_at", "items", *GROUP)
    )


def watch_events_between(bronze: DataFrame, start: dt.datetime, end: dt.datetime) -> DataFrame:
    """Parsed watch events with ``start <= event_time <= end``: who watched which movie, when."""
    return bronze.where(
        (F.col("parse_status") == "ok")
        & (F.col("event_type") == "watch")
        & (F.col("event_time") >= F.lit(start))
        & (F.col("event_time") <= F.lit(end))
    ).select("user_id", "movie_id", "event_time")


def with_converted(answers: DataFrame, watches: DataFrame, window_seconds: int) -> DataFrame:
    """Add ``converted`` (1/0): the user watched one of the answer's items within the window."""
    items = answers.select(
        "request_id", "user_id", "served_at", F.explode("items").alias("movie_id")
    ).alias("a")
    window_end = F.col("a.served_at") + F.make_dt_interval(secs=F.lit(window_seconds))
    converted = (
        items.join(
            watches.alias("w"),
            (F.col("a.user_id") == F.col("w.user_id"))
            & (F.col("a.movie_id") == F.col("w.movie_id"))
            & (F.col("w.event_time") >= F.date_trunc("second", F.col("a.served_at")))
            & (F.col("w.event_time") <= window_end),
            "left_semi",
        )
        .select("request_id")
        .distinct()
        .withColumn("converted", F.lit(1))
    )
    return answers.join(converted, "request_id", "left").fillna(0, subset=["converted"])


def per_user_watch_through(flagged: DataFrame) -> DataFrame:
    """Served and converted answers per served hour, experiment, model version, variant and user."""
    return flagged.groupBy(*PER_USER).agg(
        F.count(F.lit(1)).alias("served"), F.sum("converted").cast("long").alias("converted")
    )


# -- the job ---------------------------------------------------------------------------------------
def _between(column: str, low: Any, high: Any) -> str:
    """A SQL range predicate (inclusive) for delta-rs: dates and UTC times as ISO strings."""

    def literal(value: Any) -> str:
        if isinstance(value, dt.datetime):
            return f"'{as_utc(value):%Y-%m-%dT%H:%M:%S.%fZ}'"
        return f"'{value.isoformat()}'"

    return f"{column} >= {literal(low)} AND {column} <= {literal(high)}"


def run_online_evaluation(
    spark: SparkSession, lake: Lake, settings: Settings, until: dt.datetime
) -> dict[str, Any]:
    """Recompute watch-through of the complete served hours before ``until``; replace their rows."""
    window = settings.online.window_seconds
    hours = evaluation_hours(until, window, settings.online.lookback_hours)
    start, end = hours[0], hours[-1] + HOUR
    watch_end = end + dt.timedelta(seconds=window)
    summary: dict[str, Any] = {
        "until": as_utc(until).isoformat(),
        "window_seconds": window,
        "first_hour": start.isoformat(),
        "last_hour": hours[-1].isoformat(),
        "hours": len(hours),
    }
    if not lake.exists(SERVED):
        message = (
            f"nothing to evaluate: table {SERVED!r} does not exist yet under {lake.root} "
            f"(written by {SERVED_RECOMMENDATIONS.owner})"
        )
        log.warning(message)
        return {**summary, "rows": 0, "served": 0, "converted": 0, "skipped": message}
    if lake.exists(ONLINE) and "user_id" not in lake.table(ONLINE).schema().to_arrow().names:
        raise MissingTableError(
            f"table {ONLINE!r} under {lake.root} has the old hourly schema (no user_id): delete "
            "that folder and run again; it is derived from served_recommendations and bronze"
        )
    versions = {SERVED: lake.table(SERVED).version(), BRONZE: lake.table(BRONZE).version()}
    served = read_table(
        spark,
        lake,
        SERVED,
        versions[SERVED],
        partition_filter=_between("served_date", start.date(), hours[-1].date()),
    )
    bronze = read_table(
        spark,
        lake,
        BRONZE,
        versions[BRONZE],
        partition_filter=_between("event_date", start.date(), watch_end.date()),
    )
    computed_at = dt.datetime.now(dt.UTC)  # bookkeeping only; no result depends on it
    hourly = (
        served.transform(answers_between, start, end)
        .transform(with_converted, watch_events_between(bronze, start, watch_end), window)
        .transform(per_user_watch_through)
        .withColumn("window_seconds", F.lit(window).cast("long"))
        .withColumn("computed_at", F.lit(computed_at))
        .withColumn("served_date", F.to_date("served_hour"))
    )
    rows = with_schema(hourly, spark_schema(ONLINE_EVALUATIONS)).toArrow()
    predicate = (
        f"{_between('served_date', start.date(), hours[-1].date())} AND "
        f"{_between('served_hour', start, hours[-1])}"
    )
    lake.replace_where(ONLINE, rows, predicate)
    served_total = pc.sum(rows["served"]).as_py() or 0
    converted_total = pc.sum(rows["converted"]).as_py() or 0
    return {
        **summary,
        "rows": rows.num_rows,
        "users": len(pc.unique(rows["user_id"])),
        "served": served_total,
        "converted": converted_total,
        "watch_through": converted_total / served_total if served_total else None,
        "input_versions": versions,
        "output_version": lake.version(ONLINE),
    }

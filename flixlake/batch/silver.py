"""Bronze -> silver compaction: watch sessions, latest ratings and reco telemetry for a run date.

The run date is the cutoff: only bronze rows with ``event_date <= run_date`` reach silver, so
nothing later leaks into training. Silver is built from a pinned bronze version; downstream steps
read the exact versions recorded in the ``compact`` manifest. When neither bronze nor any output
moved since this date's last run, a rerun is a no-op (same versions, so downstream model
versions stay the same too).

A run is **incremental** when it can be (:func:`plan_compaction`): it rebuilds only the event-date
partitions of ``watch_sessions`` and ``reco_requests`` whose bronze changed since the last
compaction (files added or removed, a late line of an old day included) plus the days the moved
cutoff newly lets in (``replaceWhere`` on those days), and MERGEs the latest rating of each pair
rated on those days into ``ratings`` (a later rating wins, as in a full build). Sessions and
telemetry are functions of one day's bronze and the latest rating is a maximum, so the result
equals a full rebuild row for row (a test compares the two). Anything else -- no earlier
compaction, a run date before the last one, bronze rows deleted or rewritten (``flixlake
forget``), silver written by someone else, a log already cleaned up -- rebuilds in full, as does
``batch.silver_full_rebuild: true`` (a repair).

A line counts once however often it reached bronze: the ingest rejects repeats inside one batch
as ``duplicate``; repeats across batches or Kafka offsets are collapsed here, on the parsed event
(which the raw line determines), so the raw text is never shuffled. Rejected lines never reach
silver (they live in ``quarantine_events``); their counts go into the manifest.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from flixlake.batch.catalog import upsert_movies
from flixlake.config import Settings
from flixlake.contract.logformat import EventType, RejectReason
from flixlake.lake.runs import MissingStepError, read_manifest, write_manifest
from flixlake.lake.spark_io import merge_table, read_table, sql_literal, write_table
from flixlake.lake.store import Lake, MissingTableError
from flixlake.lake.tables import WATCH_SESSIONS

log = logging.getLogger(__name__)

SILVER_TABLES = ("watch_sessions", "ratings", "reco_requests")

# Commits after which bronze still holds every row it held (appends, compaction, upkeep) ...
BRONZE_APPEND_ONLY = frozenset(
    {
        "WRITE Append",
        "STREAMING UPDATE",
        "OPTIMIZE",
        "VACUUM START",
        "VACUUM END",
        "SET TBLPROPERTIES",
    }
)
# ... and after which a silver table still holds what the last compaction wrote.
SILVER_UNCHANGED = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES"})
# A later rating of a pair wins; a same-instant tie goes to the higher rating (as a full build).
LATER_RATING = "s.rated_at > t.rated_at OR (s.rated_at = t.rated_at AND s.rating > t.rating)"

# A parsed event: everything silver needs, and (being a function of the raw line) its identity.
# Bronze's source bookkeeping and the raw text itself are left behind.
EVENT_COLUMNS = (
    "event_type",
    "event_time",
    "user_id",
    "movie_id",
    "minute",
    "rating",
    "reco_server",
    "reco_status",
    "reco_results",
    "reco_response_ms",
    "event_date",
)


class NothingToCompactError(MissingTableError, ValueError):
    """Bronze holds no parsed line up to the run date: nothing to build silver from.

    A kind of missing input, so ``run_job`` reports it as a user error (exit code 2).
    """


# -- pure transforms ---------------------------------------------------------------------------
def events_until(run_date: dt.date) -> Callable[[DataFrame], DataFrame]:
    """Keep rows dated on or before the run date: the cutoff keeps the future out of training."""

    def transform(df: DataFrame) -> DataFrame:
        return df.filter(F.col("event_date") <= F.lit(run_date))

    return transform


def parsed_events(bronze_df: DataFrame) -> DataFrame:
    """Only lines that parsed (rejects stay in quarantine), narrowed to the columns silver uses."""
    return bronze_df.filter(F.col("parse_status") == "ok").select(*EVENT_COLUMNS)


def dedupe_events(df: DataFrame) -> DataFrame:
    """One row per distinct event: a line re-sent across ingest batches or offsets counts once.

    Deduplicates on the parsed event (every parsed column, which the raw line determines), so
    an exact copy of a line always collapses, and the 60-byte raw text is never shuffled.
    """
    return df.dropDuplicates(list(EVENT_COLUMNS))


def events_of_type(event_type: EventType) -> Callable[[DataFrame], DataFrame]:
    """Rows of one event type (watch, rate or reco)."""

    def transform(df: DataFrame) -> DataFrame:
        return df.filter(F.col("event_type") == event_type.value)

    return transform


def with_movie_idx(movies_df: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Attach the stable integer index of each movie slug (null when the slug is unknown).

    A left join, so an unknown slug shows up as a null ``movie_idx`` for the quality gate
    instead of silently dropping the row. ``movies`` is small and broadcast.
    """
    index = F.broadcast(movies_df.select("movie_id", "movie_idx"))

    def transform(df: DataFrame) -> DataFrame:
        return df.join(index, on="movie_id", how="left")

    return transform


def watch_session_stats_df(watch_df: DataFrame) -> DataFrame:
    """Per user, movie and day: distinct minutes, last minute, first/last time, distinct events.

    Minutes are collapsed per (user, movie, day, minute), so a minute watched twice counts once
    and a re-sent line changes nothing; ``watch_events`` counts the distinct (minute, time)
    events. All three aggregation levels share a single shuffle on (user, movie, day).
    """
    keys = ["user_id", "movie_id", "event_date"]
    per_minute = (
        watch_df.repartition(*keys)
        .select(*keys, "minute", "event_time")
        .distinct()
        .groupBy(*keys, "minute")
        .agg(
            F.min("event_time").alias("first_time"),
            F.max("event_time").alias("last_time"),
            F.count(F.lit(1)).alias("events"),
        )
    )
    return per_minute.groupBy(*keys).agg(
        F.count(F.lit(1)).cast("int").alias("minutes_watched"),
        F.max("minute").cast("int").alias("max_minute"),
        F.min("first_time").alias("first_time"),
        F.max("last_time").alias("last_time"),
        F.sum("events").alias("watch_events"),
    )


def watch_sessions_df(watch_df: DataFrame, movies_df: DataFrame) -> DataFrame:
    """One row per user, movie and day in the ``watch_sessions`` shape (movie index attached)."""
    return (
        watch_df.transform(watch_session_stats_df)
        .transform(with_movie_idx(movies_df))
        .select(*WATCH_SESSIONS.columns)
    )


def latest_ratings_df(rate_df: DataFrame, movies_df: DataFrame) -> DataFrame:
    """The latest rating per user and movie; a same-instant tie goes to the higher rating."""
    latest = rate_df.groupBy("user_id", "movie_id").agg(
        F.max(F.struct("event_time", "rating")).alias("latest")
    )
    return latest.transform(with_movie_idx(movies_df)).select(
        "user_id",
        "movie_id",
        "movie_idx",
        F.col("latest.rating").cast("int").alias("rating"),
        F.col("latest.event_time").alias("rated_at"),
    )


def reco_requests_df(reco_df: DataFrame) -> DataFrame:
    """One row per answered recommendation request, as served (with the result count)."""
    return reco_df.select(
        "event_time",
        "user_id",
        F.col("reco_server").alias("server"),
        F.col("reco_status").cast("int").alias("status"),
        F.col("reco_results").alias("results"),
        F.when(F.col("reco_results").isNull(), 0)
        .otherwise(F.size("reco_results"))
        .cast("int")
        .alias("n_results"),
        F.col("reco_response_ms").alias("response_ms"),
        "event_date",
    )


def _count_if(condition: Column) -> Column:
    return F.sum(F.when(condition, 1).otherwise(0))


def line_counts_df(bronze_df: DataFrame, run_date: dt.date) -> DataFrame:
    """One row of line counts for the run's manifest, over all of bronze (not only the cutoff).

    Every reject counts, whatever its date (one that did not parse is dated by the lines around
    it, see :mod:`flixlake.lake.bronze`). Parsed lines count up to the run date; ``later`` are
    parsed lines left for later runs. (The quality gate counts the run's days itself.)
    """
    ok = F.col("parse_status") == "ok"
    dup = F.col("reject_reason").eqNullSafe(RejectReason.DUPLICATE.value)
    in_window = F.col("event_date") <= F.lit(run_date)
    return bronze_df.agg(
        _count_if(~ok | in_window).alias("lines"),
        _count_if(ok & in_window).alias("parsed"),
        _count_if(~ok & ~dup).alias("quarantined"),
        _count_if(~ok & dup).alias("duplicate_rejects"),
        _count_if(ok & ~in_window).alias("later"),
    )


def movie_first_seen_df(events_df: DataFrame) -> DataFrame:
    """Every movie slug watched or rated, with the first day it appeared."""
    return (
        events_df.filter(F.col("event_type").isin(EventType.WATCH.value, EventType.RATE.value))
        .groupBy("movie_id")
        .agg(F.min("event_date").alias("first_seen"))
    )


# -- the batch step ----------------------------------------------------------------------------
def _as_int(value: Any) -> int:
    return int(value or 0)


def unchanged_compaction(
    lake: Lake, settings: Settings, run_date: dt.date, bronze_version: int
) -> dict[str, Any] | None:
    """This run date's last compact summary if neither bronze nor any output moved since.

    Rebuilding would write the same rows as new Delta versions, and downstream steps key
    model versions on input versions: so an unchanged rerun is a no-op. (Delete the manifest
    to force a rebuild.)
    """
    try:
        previous = read_manifest(settings, run_date, "compact")
    except MissingStepError:
        return None
    outputs = previous.get("output_versions") or {}
    if previous.get("bronze_version") != bronze_version:
        return None
    if any(lake.version(name) != outputs.get(name) for name in (*SILVER_TABLES, "movies")):
        return None
    return previous


@dataclass(frozen=True)
class CompactionPlan:
    """What a run rebuilds: every day (``days is None``) or only ``days``, and why."""

    days: tuple[dt.date, ...] | None
    reason: str

    @property
    def incremental(self) -> bool:
        return self.days is not None


def _latest_compaction(settings: Settings) -> dict[str, Any] | None:
    """The compact manifest of the run that last wrote silver (the newest watch_sessions)."""
    runs = settings.artifacts_root / "runs"
    latest: dict[str, Any] | None = None
    for path in runs.glob("*/compact.json") if runs.is_dir() else []:
        try:
            manifest = json.loads(path.read_text())
            written = int(manifest["output_versions"]["watch_sessions"])
        except (ValueError, KeyError, TypeError):
            continue  # an older manifest shape: not a base for an incremental run
        if latest is None or written > int(latest["output_versions"]["watch_sessions"]):
            latest = manifest
    return latest


def plan_compaction(
    lake: Lake, settings: Settings, run_date: dt.date, bronze_version: int
) -> CompactionPlan:
    """Which event days this run must rebuild, from the Delta logs alone (no data read).

    Incremental only when the last compaction is a sound base: its run date is not after this
    one, silver saw nothing since but compaction and upkeep, and bronze only had rows appended
    (or compacted). The days are those of bronze files added or removed since, plus the days in
    (last run date, run date] the cutoff now lets in; none after the run date.
    """
    if settings.batch.silver_full_rebuild:
        return CompactionPlan(None, "batch.silver_full_rebuild is set")
    previous = _latest_compaction(settings)
    if previous is None:
        return CompactionPlan(None, "no earlier compaction")
    previous_date = dt.date.fromisoformat(str(previous["run_date"]))
    if previous_date > run_date:
        return CompactionPlan(None, f"the last compaction was for a later day ({previous_date})")
    for name in SILVER_TABLES:
        written = previous["output_versions"].get(name)
        if written is None or not lake.exists(name):
            return CompactionPlan(None, f"{name} is missing")
        since = lake.operations_since(name, int(written))
        if since is None or not set(since) <= SILVER_UNCHANGED:
            return CompactionPlan(None, f"{name} changed since the last compaction: {since}")
    previous_bronze = int(previous["bronze_version"])
    since = lake.operations_since("bronze_events", previous_bronze)
    if since is None or not set(since) <= BRONZE_APPEND_ONLY:
        return CompactionPlan(None, f"bronze_events was not only appended to: {since}")
    try:
        before = lake.file_partitions("bronze_events", "event_date", previous_bronze)
    except Exception as exc:  # that snapshot's log is gone: rebuild rather than guess
        return CompactionPlan(None, f"bronze_events version {previous_bronze}: {exc}")
    now = lake.file_partitions("bronze_events", "event_date", bronze_version)
    moved = {now[f] for f in now.keys() - before.keys()} | {
        before[f] for f in before.keys() - now.keys()
    }
    let_in = {d for d in now.values() if d and previous_date.isoformat() < d}
    # a file without a date holds only lines that did not parse: nothing of silver's
    touched = {d for d in moved | let_in if d is not None}
    days = sorted(dt.date.fromisoformat(d) for d in touched if d <= run_date.isoformat())
    return CompactionPlan(tuple(days), f"since bronze v{previous_bronze} ({previous_date})")


def _days_predicate(days: tuple[dt.date, ...]) -> str:
    return f"event_date IN ({', '.join(sql_literal(d) for d in days)})"


def run_compact(
    spark: SparkSession, lake: Lake, settings: Settings, run_date: dt.date
) -> dict[str, Any]:
    """Bring silver up to the run date: the changed days, or all of it (see the module doc)."""
    bronze_version = lake.table("bronze_events").version()  # MissingTableError names the owner
    previous = unchanged_compaction(lake, settings, run_date, bronze_version)
    if previous is not None:
        log.info("compact %s: bronze v%s and silver unchanged", run_date, bronze_version)
        return previous
    plan = plan_compaction(lake, settings, run_date, bronze_version)
    log.info(
        "compact %s: %s days %s (%s)",
        run_date,
        "incremental" if plan.incremental else "all",
        plan.days,
        plan.reason,
    )
    if plan.days is not None and not plan.days:
        return _summary(lake, settings, run_date, bronze_version, plan, {}, _NO_LINES, {}, 0, None)
    day_filter = _days_predicate(plan.days) if plan.days else None
    bronze = read_table(spark, lake, "bronze_events", bronze_version, partition_filter=day_filter)
    row = line_counts_df(bronze, run_date).first()
    counts = {k: _as_int(v) for k, v in (row.asDict() if row else {}).items()}
    if counts.get("parsed", 0) == 0 and not plan.incremental:
        raise NothingToCompactError(
            f"nothing to compact: bronze_events (version {bronze_version}) holds no parsed line "
            f"dated on or before {run_date} ({counts.get('quarantined', 0)} lines quarantined, "
            f"{counts.get('later', 0)} dated later); ingest logs for that period first"
        )

    parsed = bronze.transform(events_until(run_date)).transform(parsed_events)
    first_seen = {
        r["movie_id"]: r["first_seen"]
        for r in movie_first_seen_df(parsed).collect()  # one row per movie: ~27k at most
    }
    known = (
        set(lake.read("movies", columns=["movie_id"])["movie_id"].to_pylist())
        if lake.exists("movies")
        else set()
    )
    new_movies = [
        {"movie_id": m, "first_seen": first_seen[m]} for m in sorted(set(first_seen) - known)
    ]
    movies_added = (
        upsert_movies(lake, [m["movie_id"] for m in new_movies], new_movies) if new_movies else 0
    )
    movies_version = lake.ensure("movies").version()
    movies = read_table(spark, lake, "movies", movies_version)

    # Both are small next to bronze (sessions, not minutes; ratings and telemetry are ~5% of
    # lines) and each is used twice: for the table and for the manifest's counts.
    sessions = (
        parsed.transform(events_of_type(EventType.WATCH))
        .transform(watch_session_stats_df)
        .transform(with_movie_idx(movies))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    rated_and_served = (
        parsed.filter(F.col("event_type").isin(EventType.RATE.value, EventType.RECO.value))
        .transform(dedupe_events)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    # an incremental run replaces its days and merges their ratings; a full one overwrites all
    by_day: dict[str, Any] = (
        {"mode": "overwrite", "replace_where": day_filter}
        if day_filter is not None
        else {"mode": "overwrite"}
    )
    try:
        rows = {"watch_sessions": write_table(sessions, lake, "watch_sessions", **by_day)}
        per_type = {
            r["event_type"]: _as_int(r["count"])
            for r in rated_and_served.groupBy("event_type").count().collect()
        }
        watch_events = sessions.agg(F.sum("watch_events").alias("n")).first()
        per_type[EventType.WATCH.value] = _as_int(watch_events["n"] if watch_events else 0)
        latest = latest_ratings_df(
            rated_and_served.transform(events_of_type(EventType.RATE)), movies
        )
        if plan.incremental:
            rows["ratings"] = 0
            if per_type.get(EventType.RATE.value, 0):
                merged = merge_table(latest, lake, "ratings", matched_condition=LATER_RATING)
                rows["ratings"] = merged.get("numTargetRowsInserted", 0) + merged.get(
                    "numTargetRowsUpdated", 0
                )
        else:
            rows["ratings"] = write_table(latest, lake, "ratings", mode="overwrite")
        rows["reco_requests"] = write_table(
            reco_requests_df(rated_and_served.transform(events_of_type(EventType.RECO))),
            lake,
            "reco_requests",
            **by_day,
        )
    finally:
        sessions.unpersist()
        rated_and_served.unpersist()
    return _summary(
        lake,
        settings,
        run_date,
        bronze_version,
        plan,
        rows,
        counts,
        per_type,
        movies_added,
        len(known) + movies_added,
    )


_NO_LINES = {"lines": 0, "parsed": 0, "quarantined": 0, "duplicate_rejects": 0, "later": 0}


def _summary(
    lake: Lake,
    settings: Settings,
    run_date: dt.date,
    bronze_version: int,
    plan: CompactionPlan,
    rows: dict[str, int],
    counts: dict[str, int],
    per_type: dict[str, int],
    movies_added: int,
    movies_known: int | None,
) -> dict[str, Any]:
    """The ``compact`` manifest (written): versions, rows written, and the line counts of the
    days rebuilt (all of bronze for a full run)."""
    parsed_lines = counts["parsed"]
    unique_events = sum(per_type.values())
    if movies_known is None:
        movies_known = (
            lake.read("movies", columns=["movie_id"]).num_rows if lake.exists("movies") else 0
        )
    summary: dict[str, Any] = {
        "run_date": run_date.isoformat(),
        "bronze_version": bronze_version,
        "mode": "incremental" if plan.incremental else "full",
        "days": None if plan.days is None else [d.isoformat() for d in plan.days],
        "plan": plan.reason,
        "output_versions": {
            **{name: lake.version(name) for name in SILVER_TABLES},
            "movies": lake.version("movies"),
        },
        "rows": {name: rows.get(name, 0) for name in SILVER_TABLES},
        "lines": {
            "total": counts["lines"],
            "parsed": parsed_lines,
            "quarantined": counts["quarantined"],
            "duplicate_rejects": counts["duplicate_rejects"],
            "duplicates_dropped": parsed_lines - unique_events,
            "unique_events": unique_events,
            "later": counts["later"],
        },
        "events": {t.value: per_type.get(t.value, 0) for t in EventType},
        "movies_added": movies_added,
        "movies_known": movies_known,
    }
    write_manifest(settings, run_date, "compact", summary)
    return summary

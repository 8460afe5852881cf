"""The table registry: every Delta table of the lake, its owner, schema and partitioning.

Analysts query these by name (``flixlake sql``, ``flixlake spark-sql``); jobs read and write them
only through :mod:`flixlake.lake.store` (delta-rs) and :mod:`flixlake.lake.spark_io` (delta-spark).
Each table names its ``owner``, the one process kind that writes it, and the ``engine`` that
process writes it with. Both engines read every table; the only tables two engines write are
bronze and quarantine, append-only with app transactions from each (the stream with delta-spark,
file ingest with delta-rs), which ``tests/unit/lake/test_interop.py`` checks both ways. Importing
this module never imports pyspark, so the service can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")  # log times are UTC without a zone suffix


SPARK = "delta-spark"  # executors write, Delta commits (flixlake.lake.spark_io)
RS = "delta-rs"  # the process writes Arrow from one place (flixlake.lake.store)
STREAM_AND_INGEST = "delta-spark (stream), delta-rs (file ingest)"


@dataclass(frozen=True)
class Lifecycle:
    """What the daily maintenance (:mod:`flixlake.lake.lifecycle`) does to a table.

    Every table gets its retention properties, a checkpoint with expired-log cleanup and a
    vacuum (retention from ``lifecycle`` in the config). ``compact``: bin-pack small files --
    not for tables the stream MERGEs or overwrites every second (a concurrent rewrite would
    fail the stream's commit; the stream keeps those small itself). ``compact_closed_days``:
    only day partitions before the run date (``partition_by[0]`` is a date), where the stream no
    longer appends nor compacts. ``prune``: ``model_versions`` drops the partitions of models no
    longer kept for rollback (``lifecycle.keep_models``, ``keep_run_days``).
    """

    compact: bool = True
    compact_closed_days: bool = False
    prune: Literal["none", "model_versions"] = "none"


@dataclass(frozen=True)
class TableSpec:
    name: str
    owner: str  # the process kind that writes the table
    description: str
    schema: pa.Schema
    partition_by: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()  # natural key used by MERGE
    engine: str = RS  # what the owner writes it with
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    # Integer columns holding a user id, or () for a table that holds no user data. None means
    # undeclared: a unit test refuses it, so no table can be left out of ``flixlake forget``.
    user_columns: tuple[str, ...] | None = None
    # Raw log text whose user field (the 2nd comma field) may name a user, e.g. a rejected line.
    raw_line_columns: tuple[str, ...] = ()
    # Lists of user ids (e.g. the accounts of an alert): forget removes the user from the list,
    # and the row when the list is left empty.
    user_list_columns: tuple[str, ...] = ()
    # Delta table properties of the table itself, whatever the config (e.g. which columns get
    # file statistics); the lake's retention properties come on top (lifecycle config).
    properties: tuple[tuple[str, str], ...] = ()

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    @property
    def holds_user_data(self) -> bool:
        """Whether ``flixlake forget`` must look in this table (see :mod:`flixlake.lake.forget`)."""
        return bool(self.user_columns or self.raw_line_columns or self.user_list_columns)


def _f(name: str, type_: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


STREAMED_BY_DAY = Lifecycle(compact=True, compact_closed_days=True)  # the stream appends today
STREAM_VIEW = Lifecycle(compact=False)  # merged/overwritten by the stream every second

_SOURCE = [
    _f("source", pa.string(), False),  # file path or kafka topic
    _f("source_partition", pa.int32(), False),  # kafka partition; 0 for files
    _f("source_offset", pa.int64(), False),  # kafka offset; line number for files
]

# Bronze's columns with Delta file statistics (min/max/null count): the ones readers filter on
# (event_date is the partition). Statistics cost work per row and column on every append; for
# the free text and per-kind columns (raw, movie_id, reco_*) no reader filters on, they were
# ~11% of a streaming batch's CPU (README, "Performance"). A predicate on a column without
# statistics reads every file of the chosen days. delta-spark and delta-rs both honour this.
BRONZE_STATS_COLUMNS = (
    "source_partition",
    "source_offset",
    "parse_status",
    "event_type",
    "event_time",
    "user_id",
    "ingest_batch",
    "ingested_at",
)

BRONZE_EVENTS = TableSpec(
    name="bronze_events",
    owner="streaming.speed_layer (Kafka) and flixlake ingest (files)",
    engine=STREAM_AND_INGEST,
    description="Every raw log line exactly once, with its source position and parse status.",
    schema=pa.schema(
        [
            *_SOURCE,
            _f("raw", pa.string(), False),
            _f("parse_status", pa.string(), False),  # ok | rejected
            _f("reject_reason", pa.string()),
            _f("event_type", pa.string()),  # watch | rate | reco
            _f("event_time", TS),
            _f("user_id", pa.int64()),
            _f("movie_id", pa.string()),
            _f("minute", pa.int32()),
            _f("rating", pa.int32()),
            _f("reco_server", pa.string()),
            _f("reco_status", pa.int32()),
            _f("reco_results", pa.list_(pa.string())),
            _f("reco_response_ms", pa.float64()),
            _f("ingest_batch", pa.string(), False),
            _f("ingested_at", TS, False),
            _f("event_date", pa.date32(), False),  # event day (bad lines: see lake.bronze)
        ]
    ),
    partition_by=("event_date",),
    lifecycle=STREAMED_BY_DAY,
    user_columns=("user_id",),
    raw_line_columns=("raw",),
    properties=(("delta.dataSkippingStatsColumns", ",".join(BRONZE_STATS_COLUMNS)),),
)

QUARANTINE_EVENTS = TableSpec(
    name="quarantine_events",
    owner="streaming.speed_layer (Kafka) and flixlake ingest (files)",
    engine=STREAM_AND_INGEST,
    description="Lines that failed parsing or were duplicates, with the reason.",
    schema=pa.schema(
        [
            *_SOURCE,
            _f("raw", pa.string(), False),
            _f("reason", pa.string(), False),
            _f("ingest_batch", pa.string(), False),
            _f("ingested_at", TS, False),
        ]
    ),
    user_columns=(),
    raw_line_columns=("raw",),
)

MOVIES = TableSpec(
    name="movies",
    owner="jobs.compact_silver (+ movies.jsonl from flixlake ingest)",
    engine=RS,
    description="Stable integer index for each movie-id slug, plus catalog metadata.",
    schema=pa.schema(
        [
            _f("movie_idx", pa.int32(), False),
            _f("movie_id", pa.string(), False),
            _f("title", pa.string()),
            _f("year", pa.int32()),
            _f("genres", pa.list_(pa.string())),
            _f("first_seen", pa.date32()),
        ]
    ),
    keys=("movie_id",),
    user_columns=(),
)

USERS = TableSpec(
    name="users",
    owner="flixlake ingest (users.jsonl)",
    engine=RS,
    description="User attributes used for evaluation segments (age, gender, occupation).",
    schema=pa.schema(
        [
            _f("user_id", pa.int64(), False),
            _f("age", pa.int32()),
            _f("gender", pa.string()),
            _f("occupation", pa.string()),
        ]
    ),
    keys=("user_id",),
    user_columns=("user_id",),
)

WATCH_SESSIONS = TableSpec(
    name="watch_sessions",
    owner="jobs.compact_silver",
    engine=SPARK,
    description="One row per user, movie and day: distinct minutes watched, first/last time.",
    schema=pa.schema(
        [
            _f("user_id", pa.int64(), False),
            _f("movie_id", pa.string(), False),
            _f("movie_idx", pa.int32(), False),
            _f("minutes_watched", pa.int32(), False),
            _f("max_minute", pa.int32(), False),
            _f("first_time", TS, False),
            _f("last_time", TS, False),
            _f("event_date", pa.date32(), False),
        ]
    ),
    partition_by=("event_date",),
    keys=("user_id", "movie_id", "event_date"),
    user_columns=("user_id",),
)

RATINGS = TableSpec(
    name="ratings",
    owner="jobs.compact_silver",
    engine=SPARK,
    description="Latest rating per user and movie.",
    schema=pa.schema(
        [
            _f("user_id", pa.int64(), False),
            _f("movie_id", pa.string(), False),
            _f("movie_idx", pa.int32(), False),
            _f("rating", pa.int32(), False),
            _f("rated_at", TS, False),
        ]
    ),
    keys=("user_id", "movie_id"),
    user_columns=("user_id",),
)

RECO_REQUESTS = TableSpec(
    name="reco_requests",
    owner="jobs.compact_silver",
    engine=SPARK,
    description="Served-recommendation telemetry from the log (one row per answered request).",
    schema=pa.schema(
        [
            _f("event_time", TS, False),
            _f("user_id", pa.int64(), False),
            _f("server", pa.string(), False),
            _f("status", pa.int32(), False),
            _f("results", pa.list_(pa.string())),
            _f("n_results", pa.int32(), False),
            _f("response_ms", pa.float64(), False),
            _f("event_date", pa.date32(), False),
        ]
    ),
    partition_by=("event_date",),
    user_columns=("user_id",),
)

QUALITY_REPORTS = TableSpec(
    name="quality_reports",
    owner="jobs.quality_gate",
    engine=RS,
    description="One row per quality check per run; a failed check stops the batch run.",
    schema=pa.schema(
        [
            _f("run_date", pa.date32(), False),
            _f("table_name", pa.string(), False),
            _f("check_name", pa.string(), False),
            _f("passed", pa.bool_(), False),
            _f("observed", pa.float64()),
            _f("threshold", pa.float64()),
            _f("details", pa.string()),
            _f("checked_at", TS, False),
        ]
    ),
    keys=("run_date", "table_name", "check_name"),
    user_columns=(),
)

MODELS = TableSpec(
    name="models",
    owner="jobs.register_model / jobs.publish_batch_view (+ flixlake rollback)",
    engine=RS,
    description="Every trained model with provenance, metrics and publication status.",
    schema=pa.schema(
        [
            _f("model_version", pa.string(), False),
            _f("run_date", pa.date32(), False),
            _f("algorithm", pa.string(), False),
            _f("params", pa.string(), False),  # JSON
            _f("metrics", pa.string(), False),  # JSON (headline metrics on the eval window)
            _f("input_versions", pa.string(), False),  # JSON table -> Delta version
            _f("git_commit", pa.string()),
            _f("library_versions", pa.string(), False),  # JSON
            _f("artifact_path", pa.string(), False),
            _f("status", pa.string(), False),  # registered | published | rejected
            _f("status_reason", pa.string()),
            _f("registered_at", TS, False),
            _f("published_at", TS),
        ]
    ),
    keys=("model_version",),
    user_columns=(),
)

MODEL_EVALUATIONS = TableSpec(
    name="model_evaluations",
    owner="jobs.evaluate_model",
    engine=RS,
    description="Offline ranking metrics @k per model, baseline and user segment.",
    schema=pa.schema(
        [
            _f("model_version", pa.string(), False),
            _f("run_date", pa.date32(), False),
            _f("recommender", pa.string(), False),  # als | popularity
            _f("segment", pa.string(), False),  # all, activity=heavy, gender=F, ...
            _f("metric", pa.string(), False),
            _f("value", pa.float64(), False),
            _f("n_users", pa.int64(), False),
        ]
    ),
    keys=("model_version", "recommender", "segment", "metric"),
    user_columns=(),
)

BATCH_RECOMMENDATIONS = TableSpec(
    name="batch_recommendations",
    owner="jobs.publish_batch_view",
    engine=SPARK,
    description="Top-N movies per user for each published model version (the batch view).",
    schema=pa.schema(
        [
            _f("user_id", pa.int64(), False),
            _f("rank", pa.int32(), False),
            _f("movie_id", pa.string(), False),
            _f("score", pa.float32(), False),
            _f("model_version", pa.string(), False),
        ]
    ),
    partition_by=("model_version",),
    lifecycle=Lifecycle(prune="model_versions"),
    user_columns=("user_id",),
)

_SPEED_STAMP = [
    _f("since", TS),  # cutoff: oldest run date of the served models; null without a model
    _f("model_version", pa.string()),  # the newest published model (null when none)
    _f("updated_batch", pa.int64(), False),  # micro-batch id of the last change
    _f("updated_at", TS, False),
]

SPEED_USER_ACTIVITY = TableSpec(
    name="speed_user_activity",
    owner="streaming.speed_layer",
    engine=RS,
    description=(
        "Per user since the cutoff (the oldest served model's run date): movies watched and "
        "rated, first/last seen."
    ),
    schema=pa.schema(
        [
            _f("user_id", pa.int64(), False),
            _f("watched_movies", pa.list_(pa.string())),
            _f("rated_movies", pa.list_(pa.string())),
            _f("first_seen", TS, False),
            _f("last_seen", TS, False),
            *_SPEED_STAMP,
        ]
    ),
    keys=("user_id",),
    lifecycle=STREAM_VIEW,
    user_columns=("user_id",),
)

SPEED_TRENDING = TableSpec(
    name="speed_trending",
    owner="streaming.speed_layer",
    engine=RS,
    description="Per movie and window (1h, 24h, ...): distinct watchers up to stream time as_of.",
    schema=pa.schema(
        [
            _f("window", pa.string(), False),  # label from streaming.trending_windows
            _f("window_seconds", pa.int64(), False),
            _f("movie_id", pa.string(), False),
            _f("watchers", pa.int64(), False),
            _f("as_of", TS, False),  # newest event time seen (never ahead of the wall clock)
            _f("updated_batch", pa.int64(), False),
            _f("updated_at", TS, False),
        ]
    ),
    keys=("window", "movie_id"),
    lifecycle=STREAM_VIEW,
    user_columns=(),
)

SPEED_NEW_USERS = TableSpec(
    name="speed_new_users",
    owner="streaming.speed_layer",
    engine=RS,
    description="Users active since the batch cutoff who are not in the published batch view.",
    schema=pa.schema(
        [
            _f("user_id", pa.int64(), False),
            _f("first_seen", TS, False),
            _f("last_seen", TS, False),
            *_SPEED_STAMP,
        ]
    ),
    keys=("user_id",),
    lifecycle=STREAM_VIEW,
    user_columns=("user_id",),
)

SERVED_RECOMMENDATIONS = TableSpec(
    name="served_recommendations",
    owner="streaming.speed_layer (served-recommendations query)",
    engine=SPARK,
    description="Every answer the service gave: request id, user, variant, model version, items.",
    schema=pa.schema(
        [
            *_SOURCE,
            _f("request_id", pa.string(), False),
            _f("served_at", TS, False),
            _f("user_id", pa.int64(), False),
            _f("experiment", pa.string(), False),
            _f("variant", pa.string(), False),
            _f("model_version", pa.string(), False),  # "" when no model was loaded
            _f("items", pa.list_(pa.string()), False),  # movie ids, best first
            _f("status", pa.int32(), False),
            _f("latency_ms", pa.float64(), False),
            _f("server", pa.string(), False),
            _f("ingest_batch", pa.string(), False),
            _f("ingested_at", TS, False),
            _f("served_date", pa.date32(), False),
            # batch | batch_filtered | batch_filled | fallback | explore; null in records from
            # before it
            _f("answer_source", pa.string()),
        ]
    ),
    partition_by=("served_date",),
    lifecycle=STREAMED_BY_DAY,
    user_columns=("user_id",),
)

ONLINE_EVALUATIONS = TableSpec(
    name="online_evaluations",
    owner="jobs.online_evaluation",
    engine=RS,
    description=(
        "Watch-through per served hour, experiment, variant, model version and user: answers "
        "followed by a watch of a recommended movie within the configured window. Per user "
        "because users are what experiments randomise (sum the rows for hourly totals)."
    ),
    schema=pa.schema(
        [
            _f("served_hour", TS, False),  # start of the hour the answers were served in
            _f("experiment", pa.string(), False),
            _f("model_version", pa.string(), False),
            _f("variant", pa.string(), False),
            _f("user_id", pa.int64(), False),
            _f("served", pa.int64(), False),  # the user's answers (status 200) in the hour
            _f("converted", pa.int64(), False),  # of those, followed by a watch of an item
            _f("window_seconds", pa.int64(), False),
            _f("computed_at", TS, False),
            _f("served_date", pa.date32(), False),
        ]
    ),
    partition_by=("served_date",),
    keys=("served_hour", "experiment", "model_version", "variant", "user_id"),
    user_columns=("user_id",),
)

AUDIT_DRIFT = TableSpec(
    name="audit_drift",
    owner="jobs.audit",
    description=(
        "Drift of each input per window of a run date against the reference days before it: "
        "distances (Jensen-Shannon, PSI), volume ratio and the verdict."
    ),
    schema=pa.schema(
        [
            _f("run_date", pa.date32(), False),
            _f("input", pa.string(), False),  # event_mix, movie_activity, ... (audit.drift.inputs)
            _f("window_start", TS, False),
            _f("window_end", TS, False),
            _f("reference_start", TS, False),
            _f("reference_end", TS, False),
            _f("observations", pa.float64(), False),  # what the distribution counts, in the window
            _f("reference_observations", pa.float64(), False),
            _f("events", pa.int64(), False),  # underlying events (lines, requests, answers)
            _f("reference_events", pa.int64(), False),
            _f("volume_ratio", pa.float64()),  # events per hour vs the reference's
            _f("categories", pa.int32(), False),  # after pooling rare ones
            _f("js_distance", pa.float64()),  # raw Jensen-Shannon distance, base 2
            _f("expected_noise", pa.float64()),  # what sampling alone gives at these counts
            _f("distance", pa.float64()),  # sqrt(max(0, js^2 - noise^2)): judged
            _f("psi", pa.float64()),
            _f("largest_shift", pa.string()),  # "<category>: <reference share> -> <window share>"
            _f("max_distance", pa.float64()),
            _f("max_volume_change", pa.float64()),
            _f("judged", pa.bool_(), False),  # enough observations to judge
            _f("drifted", pa.bool_(), False),
            _f("computed_at", TS, False),
        ]
    ),
    keys=("run_date", "input", "window_start"),
    user_columns=(),
)

AUDIT_FAIRNESS = TableSpec(
    name="audit_fairness",
    owner="jobs.audit",
    description=(
        "Per run date and model version: hit rate per user segment with intervals (offline, "
        "online), exposure and calibration of its batch view and of what was served."
    ),
    schema=pa.schema(
        [
            _f("run_date", pa.date32(), False),
            _f("model_version", pa.string(), False),
            _f("scope", pa.string(), False),  # offline | online | batch_view | served
            _f("segment", pa.string(), False),  # all, gender=F, activity=heavy, ...
            _f(
                "metric", pa.string(), False
            ),  # hit_rate, long_tail_share, gini, calibration_kl, ...
            _f("value", pa.float64()),
            _f("ci_low", pa.float64()),  # interval at audit.confidence (hit rates only)
            _f("ci_high", pa.float64()),
            _f("n_users", pa.int64(), False),
            _f("computed_at", TS, False),
        ]
    ),
    keys=("run_date", "model_version", "scope", "segment", "metric"),
    user_columns=(),
)

AUDIT_REQUIREMENTS = TableSpec(
    name="audit_requirements",
    owner="jobs.audit",
    description=(
        "The system (long-tail exposure) and model (hit rate per segment) requirements, per run "
        "date, model version and evidence: met or not, observed value and threshold."
    ),
    schema=pa.schema(
        [
            _f("run_date", pa.date32(), False),
            _f("model_version", pa.string(), False),
            _f("requirement", pa.string(), False),  # system | model
            _f("evidence", pa.string(), False),  # batch_view | served | offline | online
            _f("passed", pa.bool_(), False),
            _f("observed", pa.float64()),
            _f("threshold", pa.float64(), False),
            _f("details", pa.string(), False),
            _f("computed_at", TS, False),
        ]
    ),
    keys=("run_date", "model_version", "requirement", "evidence"),
    user_columns=(),
)

FORGET_REQUESTS = TableSpec(
    name="forget_requests",
    owner="flixlake forget",
    description=(
        "What each `flixlake forget` request removed, per table and model: rows, files, log "
        "entries. Never the user's id or data (the request id is the requester's receipt)."
    ),
    schema=pa.schema(
        [
            _f("request_id", pa.string(), False),
            _f("requested_at", TS, False),
            _f("target", pa.string(), False),  # a table name, or the model version of factors
            _f("kind", pa.string(), False),  # table | model_factors
            _f("rows_removed", pa.int64(), False),
            _f("files_removed", pa.int64(), False),  # data files vacuumed or factor files rewritten
            _f("log_files_removed", pa.int64()),  # old commits/checkpoints (tables on a local lake)
            _f("table_version", pa.int64()),  # the table's version afterwards (tables only)
            _f("error", pa.string()),  # null when done; else the exception type (run it again)
            _f("completed_at", TS, False),
        ]
    ),
    keys=("request_id", "target"),
    user_columns=(),
)

MAINTENANCE_RUNS = TableSpec(
    name="maintenance_runs",
    owner="flixlake maintain (dags/flixlake_maintenance.py)",
    description=(
        "One row per table per maintenance run: data files, bytes and Delta log length before "
        "and after, and what compaction, vacuum, log cleanup and pruning did."
    ),
    schema=pa.schema(
        [
            _f("run_id", pa.string(), False),  # <run date>T<start time>: one maintenance run
            _f("run_date", pa.date32(), False),
            _f("table_name", pa.string(), False),
            _f("status", pa.string(), False),  # ok | failed
            _f("version_before", pa.int64()),
            _f("version_after", pa.int64()),
            _f("files_before", pa.int64(), False),  # data files in the folder (live or not)
            _f("files_after", pa.int64(), False),
            _f("live_files_after", pa.int64(), False),  # files of the current snapshot
            _f("bytes_before", pa.int64(), False),
            _f("bytes_after", pa.int64(), False),
            _f("log_files_before", pa.int64(), False),  # commit files (NNN.json) in _delta_log
            _f("log_files_after", pa.int64(), False),
            _f("files_compacted", pa.int64(), False),  # small files rewritten by optimize
            _f("files_vacuumed", pa.int64(), False),
            _f("pruned", pa.list_(pa.string())),  # model versions whose partition was dropped
            _f("details", pa.string()),  # the error of a failed step
            _f("seconds", pa.float64(), False),
            _f("started_at", TS, False),
        ]
    ),
    user_columns=(),
)

SUSPECTED_ACCOUNTS = TableSpec(
    name="suspected_accounts",
    owner="jobs.detect_attacks",
    description=(
        "Accounts the batch attack detector suspects on a run date: which rule fired, the "
        "isolation-forest anomaly score, a readable reason, the profile features, and whether "
        "training excludes the account's events."
    ),
    schema=pa.schema(
        [
            _f("run_date", pa.date32(), False),
            _f("user_id", pa.int64(), False),
            _f("kind", pa.string(), False),  # rating_burst | profile_outlier | request_flood
            _f("score", pa.float64(), False),  # anomaly score in [0, 1], higher = odder
            _f("reason", pa.string(), False),
            _f("features", pa.string(), False),  # JSON: the account's profile features
            _f("excluded", pa.bool_(), False),  # training leaves the account's events out
            _f("first_seen", TS),
            _f("last_seen", TS),
            _f("detected_at", TS, False),
        ]
    ),
    keys=("run_date", "user_id"),
    user_columns=("user_id",),
)

ATTACK_ALERTS = TableSpec(
    name="attack_alerts",
    owner="streaming.speed_layer (rules of flixlake.audit.stream)",
    description=(
        "Stream alerts per micro-batch: accounts over a rate limit, request floods, and movies "
        "that many new accounts rate alike within a window."
    ),
    schema=pa.schema(
        [
            _f("rule", pa.string(), False),  # account_rate | request_rate | rating_burst
            _f("user_id", pa.int64()),  # account rules
            _f("movie_id", pa.string()),  # rating_burst
            _f("window_start", TS, False),
            _f("window_end", TS, False),
            _f("observed", pa.int64(), False),
            _f("threshold", pa.int64(), False),
            _f("accounts", pa.list_(pa.int64())),  # rating_burst: the new accounts in it
            _f("details", pa.string(), False),
            _f("batch_id", pa.int64(), False),
            _f("detected_at", TS, False),
        ]
    ),
    user_columns=("user_id",),
    user_list_columns=("accounts",),
)

ALL_TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        BRONZE_EVENTS,
        QUARANTINE_EVENTS,
        MOVIES,
        USERS,
        WATCH_SESSIONS,
        RATINGS,
        RECO_REQUESTS,
        QUALITY_REPORTS,
        MODELS,
        MODEL_EVALUATIONS,
        BATCH_RECOMMENDATIONS,
        SPEED_USER_ACTIVITY,
        SPEED_TRENDING,
        SPEED_NEW_USERS,
        SERVED_RECOMMENDATIONS,
        ONLINE_EVALUATIONS,
        AUDIT_DRIFT,
        AUDIT_FAIRNESS,
        AUDIT_REQUIREMENTS,
        MAINTENANCE_RUNS,
        SUSPECTED_ACCOUNTS,
        ATTACK_ALERTS,
        FORGET_REQUESTS,
    )
}


def table_spec(name: str) -> TableSpec:
    """Look a table up by name, with a helpful error for typos."""
    try:
        return ALL_TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known tables: {sorted(ALL_TABLES)}") from None

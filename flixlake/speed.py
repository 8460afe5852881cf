"""The speed layer: Kafka micro-batches -> exactly-once bronze/quarantine -> fresh speed views.

Per micro-batch (``foreachBatch``) the records are collected to the driver (micro-batches are
bounded by ``streaming.max_events_per_trigger``), parsed by the shared parser
(:func:`flixlake.bronze.parse_batch`) and appended to ``quarantine_events`` then
``bronze_events`` with the Delta app transaction ``(stream:<query>, batch id)``: Spark replays a
batch with the same id and offsets after a crash, and a replay commits nothing twice.

Then the speed views are brought up to date. Every view value is a set union, a minimum or a
maximum of event fields, so applying a batch again changes nothing (the views are idempotent per
batch by construction, and record the batch id that last changed them):

* ``speed_user_activity`` — MERGE of the batch's per-user movies watched/rated and first/last
  seen since the *cutoff* (the run date of the newest published model);
* ``speed_new_users`` — the same users minus those in that model's batch view;
* ``speed_trending`` — distinct watchers per movie over each configured window ending at the
  stream time ``as_of`` (newest event time seen, never ahead of the wall clock), recomputed from
  an in-memory ``(movie, user) -> last watch`` state that is rebuilt from bronze on start.

When a newer model is published the cutoff moves: the user views are rebuilt from bronze since
the new cutoff (bronze already holds the current batch), which resets their window.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from flixlake.bronze import parse_batch
from flixlake.config import Settings, StreamingConfig, duration_seconds
from flixlake.lake import Lake
from flixlake.tables import (
    SPEED_NEW_USERS,
    SPEED_TRENDING,
    SPEED_USER_ACTIVITY,
    TS,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger(__name__)

BRONZE = "bronze_events"
QUARANTINE = "quarantine_events"
SPEED_TABLES = (SPEED_USER_ACTIVITY.name, SPEED_NEW_USERS.name, SPEED_TRENDING.name)
_EVENT_COLUMNS = ["user_id", "event_type", "movie_id", "event_time"]
_NO_STRING = pa.scalar(None, pa.string())
_DISTINCT = pc.CountOptions(mode="only_valid")

# MERGE rules of the user views: set union, earliest first seen, latest last seen (idempotent).
ACTIVITY_UPDATES = {
    "watched_movies": "array_union(t.watched_movies, s.watched_movies)",
    "rated_movies": "array_union(t.rated_movies, s.rated_movies)",
    "first_seen": "least(t.first_seen, s.first_seen)",
    "last_seen": "greatest(t.last_seen, s.last_seen)",
    "since": "s.since",
    "model_version": "s.model_version",
    "updated_batch": "s.updated_batch",
    "updated_at": "s.updated_at",
}
NEW_USER_UPDATES = {k: v for k, v in ACTIVITY_UPDATES.items() if not k.endswith("_movies")}


class SpeedLayerError(RuntimeError):
    """The speed layer cannot start or continue safely; the message says what to do."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- the cutoff ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cutoff:
    """Where the speed views' window starts: the newest published model's run date (or never)."""

    since: dt.datetime | None = None
    model_version: str | None = None


def current_cutoff(lake: Lake) -> Cutoff:
    """The run date (00:00 UTC) of the model the service serves; no cutoff without one."""
    from flixlake.registry import current_published_model

    if not lake.exists("models"):
        return Cutoff()
    model = current_published_model(lake)
    if model is None:
        return Cutoff()
    run_date: dt.date = model["run_date"]
    since = dt.datetime.combine(run_date, dt.time(), tzinfo=dt.UTC)
    return Cutoff(since=since, model_version=str(model["model_version"]))


def model_users(lake: Lake, model_version: str | None) -> pa.Array:
    """The user ids in a published model's batch view (empty without a model)."""
    if model_version is None or not lake.exists("batch_recommendations"):
        return pa.array([], pa.int64())
    users = lake.read(
        "batch_recommendations",
        columns=["user_id"],
        filters=[("model_version", "=", model_version)],
    )["user_id"]
    return pc.unique(users.combine_chunks()).cast(pa.int64())


# -- pure view functions (Arrow in, Arrow out) --------------------------------------------------
def ok_events(bronze: pa.Table) -> pa.Table:
    """The parsed events of a bronze batch (rejected lines never reach a view)."""
    ok = bronze.filter(pc.equal(bronze["parse_status"], "ok"))
    return ok.select(_EVENT_COLUMNS)


def user_activity(events: pa.Table, since: dt.datetime | None) -> pa.Table:
    """Per user active at or after ``since``: distinct movies watched and rated, first/last seen."""
    if since is not None:
        events = events.filter(pc.greater_equal(events["event_time"], pa.scalar(since, TS)))
    kind = events["event_type"]
    events = events.append_column(
        "watched", pc.if_else(pc.equal(kind, "watch"), events["movie_id"], _NO_STRING)
    ).append_column("rated", pc.if_else(pc.equal(kind, "rate"), events["movie_id"], _NO_STRING))
    grouped = events.group_by("user_id", use_threads=False).aggregate(
        [
            ("watched", "distinct", _DISTINCT),
            ("rated", "distinct", _DISTINCT),
            ("event_time", "min"),
            ("event_time", "max"),
        ]
    )
    return pa.table(
        {
            "user_id": grouped["user_id"].cast(pa.int64()),
            "watched_movies": grouped["watched_distinct"],
            "rated_movies": grouped["rated_distinct"],
            "first_seen": grouped["event_time_min"].cast(TS),
            "last_seen": grouped["event_time_max"].cast(TS),
        }
    ).sort_by("user_id")


def combine_activity(parts: Sequence[pa.Table]) -> pa.Table:
    """Merge per-user activity tables the way the MERGE does (union, min, max)."""
    if not parts:
        return user_activity(pa.Table.from_pylist([], _event_schema()), None)
    table = pa.concat_tables(parts)
    pieces = []
    for column, kind in (("watched_movies", "watch"), ("rated_movies", "rate")):
        lists = table[column].combine_chunks()
        movies = pc.list_flatten(lists)
        users = pc.take(table["user_id"], pc.list_parent_indices(lists))
        pieces.append(
            pa.table(
                {
                    "user_id": users,
                    "event_type": pa.array([kind] * len(movies), pa.string()),
                    "movie_id": movies,
                    "event_time": pa.nulls(len(movies), TS),
                }
            )
        )
    for column in ("first_seen", "last_seen"):
        pieces.append(
            pa.table(
                {
                    "user_id": table["user_id"],
                    "event_type": pa.nulls(table.num_rows, pa.string()),
                    "movie_id": pa.nulls(table.num_rows, pa.string()),
                    "event_time": table[column],
                }
            )
        )
    return user_activity(pa.concat_tables(pieces), None)


def new_users(activity: pa.Table, known_users: pa.Array) -> pa.Table:
    """The active users the batch view does not know (they get trending, not personal picks)."""
    unknown = pc.invert(pc.is_in(activity["user_id"], value_set=known_users))
    return activity.filter(unknown).select(["user_id", "first_seen", "last_seen"])


def watch_pairs(events: pa.Table) -> pa.Table:
    """``(movie_id, user_id) -> last_watch`` of the watch events."""
    watches = events.filter(pc.equal(events["event_type"], "watch"))
    grouped = watches.group_by(["movie_id", "user_id"], use_threads=False).aggregate(
        [("event_time", "max")]
    )
    return pa.table(
        {
            "movie_id": grouped["movie_id"],
            "user_id": grouped["user_id"].cast(pa.int64()),
            "last_watch": grouped["event_time_max"].cast(TS),
        }
    )


def stream_time(
    as_of: dt.datetime | None, events: pa.Table, now: dt.datetime
) -> dt.datetime | None:
    """Advance the stream clock to the newest event time that is not in the future."""
    times = events["event_time"]
    times = times.filter(pc.less_equal(times, pa.scalar(now, TS)))
    newest = pc.max(times).as_py() if len(times) else None
    if newest is None:
        return as_of
    return newest if as_of is None else max(as_of, newest)


def merge_pairs(pairs: pa.Table, more: pa.Table, horizon: dt.datetime | None) -> pa.Table:
    """Union of two pair tables keeping the latest watch, minus pairs at or before ``horizon``."""
    both = pa.concat_tables([pairs, more]) if more.num_rows else pairs
    if more.num_rows:
        grouped = both.group_by(["movie_id", "user_id"], use_threads=False).aggregate(
            [("last_watch", "max")]
        )
        both = grouped.rename_columns(["movie_id", "user_id", "last_watch"]).select(
            ["movie_id", "user_id", "last_watch"]
        )
    if horizon is not None:
        both = both.filter(pc.greater(both["last_watch"], pa.scalar(horizon, TS)))
    return both


def trending_counts(
    pairs: pa.Table, as_of: dt.datetime | None, windows: dict[str, int]
) -> pa.Table:
    """Distinct watchers per movie in each window ``(as_of - length, as_of]``, most first."""
    empty = pa.Table.from_pylist([], SPEED_TRENDING.schema).drop_columns(
        ["updated_batch", "updated_at"]
    )
    if as_of is None or pairs.num_rows == 0:
        return empty
    last = pairs["last_watch"]
    not_after = pc.less_equal(last, pa.scalar(as_of, TS))
    flags = {
        f"w{i}": pc.and_(
            not_after, pc.greater(last, pa.scalar(as_of - dt.timedelta(seconds=s), TS))
        ).cast(pa.int64())
        for i, s in enumerate(windows.values())
    }
    table = pa.table({"movie_id": pairs["movie_id"], **flags})
    counts = table.group_by("movie_id", use_threads=False).aggregate(  # one pass, all windows
        [(name, "sum") for name in flags]
    )
    parts = []
    for i, (label, seconds) in enumerate(windows.items()):
        watchers = counts[f"w{i}_sum"]
        part = pa.table({"movie_id": counts["movie_id"], "watchers": watchers}).filter(
            pc.greater(watchers, 0)
        )
        part = part.sort_by([("watchers", "descending"), ("movie_id", "ascending")])
        n = part.num_rows
        parts.append(
            pa.table(
                {
                    "window": pa.repeat(pa.scalar(label, pa.string()), n),
                    "window_seconds": pa.repeat(pa.scalar(seconds, pa.int64()), n),
                    "movie_id": part["movie_id"],
                    "watchers": part["watchers"],
                    "as_of": pa.repeat(pa.scalar(as_of, TS), n),
                }
            )
        )
    return pa.concat_tables(parts) if parts else empty


def stamped(table: pa.Table, batch_id: int, now: dt.datetime, cutoff: Cutoff | None) -> pa.Table:
    """Add the provenance columns every speed view carries."""
    n = table.num_rows
    if cutoff is not None:
        table = table.append_column(
            "since", pa.repeat(pa.scalar(cutoff.since, TS), n)
        ).append_column("model_version", pa.repeat(pa.scalar(cutoff.model_version, pa.string()), n))
    return table.append_column(
        "updated_batch", pa.repeat(pa.scalar(batch_id, pa.int64()), n)
    ).append_column("updated_at", pa.repeat(pa.scalar(now, TS), n))


def _event_schema() -> pa.Schema:
    return pa.schema(
        [
            ("user_id", pa.int64()),
            ("event_type", pa.string()),
            ("movie_id", pa.string()),
            ("event_time", TS),
        ]
    )


def window_lengths(config: StreamingConfig) -> dict[str, int]:
    """``{"1h": 3600, "24h": 86400}`` from ``streaming.trending_windows``."""
    return {label: duration_seconds(label) for label in config.trending_windows}


# -- reading bronze back (start-up and cutoff resets) -------------------------------------------
def bronze_days(lake: Lake) -> list[dt.date]:
    """The ``event_date`` partitions bronze holds, oldest first."""
    if not lake.exists(BRONZE):
        return []
    days = {p["event_date"] for p in lake.table(BRONZE).partitions()}
    return sorted(dt.date.fromisoformat(d) for d in days if d)


def bronze_events_of_day(lake: Lake, day: dt.date) -> pa.Table:
    """The parsed events of one ``event_date`` partition."""
    table = lake.read(
        BRONZE,
        columns=_EVENT_COLUMNS,
        filters=[("event_date", "=", day), ("parse_status", "=", "ok")],
    )
    return table.select(_EVENT_COLUMNS).cast(_event_schema())


def activity_from_bronze(lake: Lake, since: dt.datetime | None) -> pa.Table:
    """Per-user activity since ``since`` recomputed from bronze, one day partition at a time."""
    parts = [
        user_activity(bronze_events_of_day(lake, day), since)
        for day in bronze_days(lake)
        if since is None or day >= since.date()
    ]
    return combine_activity(parts)


def trending_state_from_bronze(
    lake: Lake, as_of: dt.datetime | None, horizon_seconds: int
) -> pa.Table:
    """The ``(movie, user) -> last watch`` pairs of the ``horizon_seconds`` before ``as_of``."""
    pairs = watch_pairs(pa.Table.from_pylist([], _event_schema()))
    if as_of is None:
        return pairs
    horizon = as_of - dt.timedelta(seconds=horizon_seconds)
    for day in bronze_days(lake):
        if horizon.date() <= day <= as_of.date():
            pairs = merge_pairs(pairs, watch_pairs(bronze_events_of_day(lake, day)), horizon)
    return pairs.filter(pc.less_equal(pairs["last_watch"], pa.scalar(as_of, TS)))


def stream_time_from_lake(lake: Lake, now: dt.datetime) -> dt.datetime | None:
    """Where the stream clock stood: the trending view's ``as_of``, else bronze's newest event."""
    if lake.exists(SPEED_TRENDING.name):
        as_of = pc.max(lake.read(SPEED_TRENDING.name, columns=["as_of"])["as_of"]).as_py()
        if as_of is not None:
            return as_of
    for day in reversed([d for d in bronze_days(lake) if d <= now.date()]):
        as_of = stream_time(None, bronze_events_of_day(lake, day), now)
        if as_of is not None:
            return as_of
    return None


# -- the stateful per-batch processor ------------------------------------------------------------
@dataclass
class BatchReport:
    """What one micro-batch did (printed as progress, passed to ``on_batch``)."""

    batch_id: int
    events: int
    rejected: int
    written: bool  # False: a replayed batch whose bronze/quarantine commits already existed
    seconds: float
    lag_seconds: float | None  # now - oldest Kafka timestamp in the batch, at commit
    committed_at: float  # epoch seconds when the views were up to date
    kafka_timestamps_ms: pa.Array = field(repr=False)
    rebuilt: bool = False

    @classmethod
    def committed_now(
        cls,
        records: pa.Table,
        batch_id: int,
        started: float,
        events: int,
        rejected: int,
        written: bool,
        rebuilt: bool = False,
    ) -> BatchReport:
        """The report of a batch of Kafka ``records`` whose commits just finished.

        ``started`` is the ``time.monotonic()`` when processing began; lag is measured from the
        oldest Kafka timestamp in the batch.
        """
        stamps_ms = pc.divide(records["timestamp"].cast(pa.int64()), 1000).combine_chunks()
        committed = time.time()
        lag = committed - pc.min(stamps_ms).as_py() / 1000 if len(stamps_ms) else None
        return cls(
            batch_id=batch_id,
            events=events,
            rejected=rejected,
            written=written,
            seconds=time.monotonic() - started,
            lag_seconds=lag,
            committed_at=committed,
            kafka_timestamps_ms=stamps_ms,
            rebuilt=rebuilt,
        )

    def line(self, query_name: str) -> str:
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        lag = "-" if self.lag_seconds is None else f"{self.lag_seconds:.1f}s"
        note = "" if self.written else " (replay: already committed)"
        return (
            f"[{query_name}] batch {self.batch_id}: {self.events} events "
            f"({self.rejected} rejected) in {self.seconds:.2f}s = {rate:,.0f} events/s, "
            f"lag {lag}{note}"
        )


class SpeedLayer:
    """Driver-side state of the events query: what each micro-batch writes to the lake."""

    tables: tuple[str, ...] = (
        BRONZE,
        QUARANTINE,
    )  # what a fresh checkpoint must not find batches of

    def __init__(
        self,
        lake: Lake,
        config: StreamingConfig,
        topic: str,
        query_name: str | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        cutoff_check_seconds: float = 5.0,
    ) -> None:
        self.lake = lake
        self.config = config
        self.topic = topic
        self.query_name = query_name or config.query_name
        self.clock = clock
        self.cutoff_check_seconds = cutoff_check_seconds
        self._cutoff_checked = 0.0  # monotonic time of the last look at the models table
        self.windows = window_lengths(config)
        self.cutoff: Cutoff | None = None
        self.known_users = pa.array([], pa.int64())
        self.as_of: dt.datetime | None = None
        self.pairs = watch_pairs(pa.Table.from_pylist([], _event_schema()))
        self.batches_since_maintenance = 0
        self.days_since_maintenance: set[dt.date] = set()
        self.started = False

    @property
    def app_id(self) -> str:
        return f"stream:{self.query_name}"

    def start(self) -> None:
        """Rebuild in-memory state from the lake (after a restart the views continue seamlessly)."""
        now = self.clock()
        self.as_of = stream_time_from_lake(self.lake, now)
        self.pairs = trending_state_from_bronze(self.lake, self.as_of, max(self.windows.values()))
        cutoff = current_cutoff(self.lake)
        if self._views_cutoff() != cutoff:
            self._reset_user_views(cutoff, batch_id=-1)
        else:
            self._set_cutoff(cutoff)
        self.started = True

    def _views_cutoff(self) -> Cutoff | None:
        name = SPEED_USER_ACTIVITY.name
        if not self.lake.exists(name):
            return None
        marks = self.lake.read(name, columns=["since", "model_version"])
        if marks.num_rows == 0:
            return None
        pairs = {
            (r["since"], r["model_version"])
            for r in marks.group_by(["since", "model_version"], use_threads=False)
            .aggregate([])
            .to_pylist()
        }
        if len(pairs) != 1:
            return None
        since, version = pairs.pop()
        return Cutoff(since=since, model_version=version)

    def _set_cutoff(self, cutoff: Cutoff) -> None:
        if self.cutoff is None or cutoff.model_version != self.cutoff.model_version:
            self.known_users = model_users(self.lake, cutoff.model_version)
        self.cutoff = cutoff

    def _reset_user_views(self, cutoff: Cutoff, batch_id: int) -> None:
        """A new cutoff: recompute the user views from bronze since it (resets their window)."""
        self._set_cutoff(cutoff)
        now = self.clock()
        activity = activity_from_bronze(self.lake, cutoff.since)
        self.lake.overwrite(SPEED_USER_ACTIVITY.name, stamped(activity, batch_id, now, cutoff))
        self.lake.overwrite(
            SPEED_NEW_USERS.name,
            stamped(new_users(activity, self.known_users), batch_id, now, cutoff),
        )
        print(
            f"[{self.query_name}] speed views reset at cutoff {cutoff.since} "
            f"(model {cutoff.model_version}): {activity.num_rows} active users",
            flush=True,
        )

    def process(self, records: pa.Table, batch_id: int) -> BatchReport:
        """Write one micro-batch (columns partition, offset, timestamp, value) exactly once."""
        if not self.started:
            self.start()
        started = time.monotonic()
        records = records.sort_by([("partition", "ascending"), ("offset", "ascending")])
        now = self.clock()
        values = [b"" if v is None else v for v in records["value"].to_pylist()]  # tombstones
        parsed = parse_batch(
            values,
            source=self.topic,
            offsets=records["offset"].to_pylist(),
            ingest_batch=f"{self.app_id}:{batch_id}",
            ingested_at=now.replace(tzinfo=None),
            partitions=records["partition"].to_pylist(),
        )
        # quarantine first: if we die in between, the replay still writes bronze exactly once.
        # (No rejects, no commit: the replay parses the same lines and finds none either.)
        wrote_q = parsed.n_rejected > 0 and self.lake.append(
            QUARANTINE, parsed.quarantine, self.app_id, batch_id
        )
        wrote_b = self.lake.append(BRONZE, parsed.bronze, self.app_id, batch_id)
        self.days_since_maintenance.update(
            pc.unique(parsed.bronze["event_date"]).to_pylist() if parsed.n_lines else []
        )
        rebuilt = self.update_views(ok_events(parsed.bronze), batch_id)
        self.batches_since_maintenance += 1
        if self.batches_since_maintenance >= self.config.maintenance_every_batches:
            self.maintain()
        return BatchReport.committed_now(
            records,
            batch_id,
            started,
            events=parsed.n_lines,
            rejected=parsed.n_rejected,
            written=wrote_b or wrote_q,
            rebuilt=rebuilt,
        )

    def update_views(self, events: pa.Table, batch_id: int) -> bool:
        """Bring the three speed views up to date with a batch's events; True if reset."""
        now = self.clock()
        rebuilt = False
        cutoff = self.cutoff or Cutoff()
        if time.monotonic() - self._cutoff_checked >= self.cutoff_check_seconds:
            cutoff = current_cutoff(self.lake)  # a newer published model resets the window
            self._cutoff_checked = time.monotonic()
        if cutoff != self.cutoff:
            self._reset_user_views(cutoff, batch_id)  # bronze already holds this batch
            rebuilt = True
        elif events.num_rows:
            activity = user_activity(events, cutoff.since)
            if activity.num_rows:
                self.lake.upsert(
                    SPEED_USER_ACTIVITY.name,
                    stamped(activity, batch_id, now, cutoff),
                    updates=ACTIVITY_UPDATES,
                )
                fresh = new_users(activity, self.known_users)
                if fresh.num_rows:
                    self.lake.upsert(
                        SPEED_NEW_USERS.name,
                        stamped(fresh, batch_id, now, cutoff),
                        updates=NEW_USER_UPDATES,
                    )
        if events.num_rows or not self.lake.exists(SPEED_TRENDING.name):
            self.as_of = stream_time(self.as_of, events, now)
            horizon = None
            if self.as_of is not None:
                horizon = self.as_of - dt.timedelta(seconds=max(self.windows.values()))
            self.pairs = merge_pairs(self.pairs, watch_pairs(events), horizon)
            counts = trending_counts(self.pairs, self.as_of, self.windows)
            self.lake.overwrite(SPEED_TRENDING.name, stamped(counts, batch_id, now, None))
        return rebuilt

    def maintain(self) -> None:
        """Compact the small bronze files the stream wrote; drop old speed-view files."""
        self.batches_since_maintenance = 0
        self.days_since_maintenance = compact_days(
            self.lake, BRONZE, "event_date", self.days_since_maintenance
        )
        try:
            if self.lake.exists(QUARANTINE):
                self.lake.compact(QUARANTINE)
            for name in SPEED_TABLES:
                if self.lake.exists(name):
                    self.lake.vacuum(name, self.config.vacuum_retention_hours)
        except Exception as exc:  # maintenance is an optimisation: report it, keep streaming
            log.warning("speed-layer maintenance failed (will retry later): %s", exc)


def compact_days(lake: Lake, table: str, column: str, days: Iterable[dt.date]) -> set[dt.date]:
    """Compact the small files of each day partition; returns the days to retry next time.

    Compaction is an optimisation: a failure is reported and kept for later, never raised.
    """
    failed = set()
    for day in sorted(days):
        try:
            lake.compact(table, [(column, "=", day.isoformat())])
        except Exception as exc:
            log.warning(
                "compacting %s %s=%s failed (will retry later): %s", table, column, day, exc
            )
            failed.add(day)
    return failed


# -- the streaming query ------------------------------------------------------------------------
def kafka_stream(
    spark: SparkSession,
    settings: Settings,
    bootstrap_servers: str | None = None,
    topic: str | None = None,
) -> DataFrame:
    """A topic (default ``kafka.topic``) as a streaming DataFrame via the ``flixlake_kafka`` source."""
    from flixlake.kafka_source import SOURCE_NAME, register_kafka_source

    register_kafka_source(spark)
    conf = settings.streaming
    return (
        spark.readStream.format(SOURCE_NAME)
        .option("bootstrapServers", bootstrap_servers or settings.kafka.bootstrap_servers)
        .option("topic", topic or settings.kafka.topic)
        .option("maxEventsPerTrigger", conf.max_events_per_trigger)
        .option("startingOffsets", conf.starting_offsets)
        .option("readTimeoutSeconds", conf.read_timeout_seconds)
        .load()
    )


def checkpoint_dir(settings: Settings, query_name: str | None = None) -> Path:
    """``$FLIXLAKE_HOME/checkpoints/<query>``: offsets and commits of one query."""
    return settings.checkpoint_root / (query_name or settings.streaming.query_name)


def check_checkpoint(lake: Lake, checkpoint: Path, app_id: str, tables: Iterable[str]) -> None:
    """Refuse a fresh checkpoint for a query that already wrote batches (they would be skipped).

    ``tables``: those the query appends to with ``app_id`` transactions (its ``tables``).
    """
    offsets = checkpoint / "offsets"
    if offsets.exists() and any(offsets.iterdir()):
        return
    for table in tables:
        if lake.applied(table, app_id, 0):
            version = lake.table(table).transaction_version(app_id)
            raise SpeedLayerError(
                f"{table} already holds micro-batches 0..{version} of {app_id!r}, but the "
                f"checkpoint {checkpoint} is empty: batch ids would restart at 0 and be skipped "
                "as already written. Restore the checkpoint, or give the query a new "
                "streaming.query_name."
            )


class BatchProcessor(Protocol):
    """What a streaming query of this job does per micro-batch (events, or served records)."""

    lake: Lake
    query_name: str
    tables: tuple[str, ...]  # tables it appends to with app transactions

    @property
    def app_id(self) -> str: ...

    def start(self) -> None: ...

    def process(self, records: pa.Table, batch_id: int) -> BatchReport: ...


class SpeedLayerRun:
    """A running query: stop it gracefully (between batches) or abruptly."""

    def __init__(
        self, query: StreamingQuery, processor: BatchProcessor, lock: threading.Lock
    ) -> None:
        self.query = query
        self.processor = processor
        self.reports: list[BatchReport] = []
        self._lock = lock
        self._stopping = threading.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self, graceful: bool = True, timeout: float = 120.0) -> None:
        """Stop the query; graceful lets the batch in flight finish first, abrupt does not wait.

        Either way no further batch starts writing (it fails and is replayed on the next start).
        """
        self.request_stop()
        idle = self.wait_idle(timeout) if graceful else True
        self.query.stop()
        if not idle:
            raise SpeedLayerError(f"a micro-batch did not finish within {timeout:.0f}s")

    def request_stop(self) -> None:
        """From now on no batch starts writing (it fails and is replayed on the next start)."""
        self._stopping.set()

    def wait_idle(self, timeout: float = 120.0) -> bool:
        """Wait until no batch code runs in this process (after an abrupt stop)."""
        if self._lock.acquire(timeout=timeout):
            self._lock.release()
            return True
        return False

    def failure(self) -> BaseException | None:
        """The exception that ended the query, unless it was our own stop."""
        error = self.query.exception()
        if error is None or (self.stopping and not self.query.isActive):
            return None
        return error


def start_query(
    spark: SparkSession,
    settings: Settings,
    processor: BatchProcessor,
    topic: str,
    bootstrap_servers: str | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    quiet: bool = False,
) -> SpeedLayerRun:
    """Start a ``foreachBatch`` query of ``topic`` into ``processor`` (non-blocking).

    Its checkpoint is ``$FLIXLAKE_HOME/checkpoints/<processor.query_name>``.
    """
    checkpoint = checkpoint_dir(settings, processor.query_name)
    check_checkpoint(processor.lake, checkpoint, processor.app_id, processor.tables)
    processor.start()
    lock = threading.Lock()
    holder: list[SpeedLayerRun] = []

    def foreach_batch(batch_df: DataFrame, batch_id: int) -> None:
        with lock:
            if holder and holder[0].stopping:
                # do not let Spark mark this batch done: it is replayed on the next start
                raise SpeedLayerError(f"{processor.query_name} stopping; batch left for next run")
            report = processor.process(batch_df.toArrow(), batch_id)
        if holder:
            holder[0].reports.append(report)
        if not quiet and report.events:
            print(report.line(processor.query_name), flush=True)
        if on_batch is not None:
            on_batch(report)

    query = (
        kafka_stream(spark, settings, bootstrap_servers, topic)
        .writeStream.queryName(processor.query_name)
        .option("checkpointLocation", str(checkpoint))
        .trigger(processingTime=f"{int(settings.streaming.trigger_seconds * 1000)} milliseconds")
        .foreachBatch(foreach_batch)
        .start()
    )
    run = SpeedLayerRun(query, processor, lock)
    holder.append(run)
    return run


def start_speed_layer(
    spark: SparkSession,
    settings: Settings,
    lake: Lake,
    bootstrap_servers: str | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    quiet: bool = False,
) -> SpeedLayerRun:
    """Start the events query (log topic -> bronze -> speed views); see :func:`run_speed_layer`."""
    layer = SpeedLayer(lake, settings.streaming, settings.kafka.topic)
    return start_query(
        spark, settings, layer, settings.kafka.topic, bootstrap_servers, on_batch, quiet
    )


def run_speed_layer(
    spark: SparkSession,
    settings: Settings,
    lake: Lake,
    until: threading.Event | None = None,
    timeout: float | None = None,
    bootstrap_servers: str | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> dict[str, Any]:
    """Run the speed layer until ``until`` is set, ``timeout`` seconds pass, or Ctrl-C.

    Two queries run side by side: the events query, and (with ``streaming.land_served``) the one
    landing the service's served records (:mod:`flixlake.served`). Raises the first query error;
    returns a summary of the batches each ran.
    """
    from flixlake.served import start_served_landing

    runs: dict[str, SpeedLayerRun] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    stop_errors: list[str] = []
    try:
        runs["events"] = start_speed_layer(spark, settings, lake, bootstrap_servers, on_batch)
        if settings.streaming.land_served:
            runs["served"] = start_served_landing(spark, settings, lake, bootstrap_servers)
        while all(run.query.isActive for run in runs.values()):
            if until is not None and until.is_set():
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            runs["events"].query.awaitTermination(1)
    except KeyboardInterrupt:
        pass
    finally:  # also when the second query failed to start: never leave the first running
        for run in runs.values():
            run.request_stop()  # no new batch of any query starts writing from here on
        for name, run in runs.items():
            if run.query.isActive:
                try:
                    run.stop(graceful=True)
                except SpeedLayerError as exc:
                    stop_errors.append(f"{name}: {exc}")
    for name, run in runs.items():
        error = run.failure()
        if error is not None:
            raise SpeedLayerError(f"speed layer {name} query failed: {error}") from error
    if stop_errors:
        raise SpeedLayerError("; ".join(stop_errors))
    summary = summarize(runs["events"].reports)
    if "served" in runs:
        summary["served"] = summarize(runs["served"].reports)
    return summary


def summarize(reports: Iterable[BatchReport]) -> dict[str, Any]:
    """Totals over batch reports (for the CLI and the bench)."""
    reports = list(reports)
    return {
        "batches": len(reports),
        "events": sum(r.events for r in reports),
        "rejected": sum(r.rejected for r in reports),
        "replayed_batches": sum(1 for r in reports if not r.written and r.events),
        "seconds_in_batches": round(sum(r.seconds for r in reports), 3),
    }

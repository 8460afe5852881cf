"""The events query's processor: log lines -> exactly-once bronze/quarantine -> fresh speed views.

Per micro-batch the records are parsed on the executors by the shared parser
(:mod:`flixlake.streaming.parse`) and appended with delta-spark to ``quarantine_events`` then
``bronze_events`` with the Delta app transaction ``(stream:<query>, batch id)`` (writer options
``txnAppId``/``txnVersion``): Spark replays a batch with the same id and offsets after a crash,
and a replay commits nothing twice. Then the speed views are brought up to date from the batch's
parsed events (a few columns, collected to the driver as Arrow; the views are small tables the
service re-reads every second, written with delta-rs):

* ``speed_user_activity`` — MERGE of the batch's per-user movies watched/rated and first/last
  seen since the *cutoff*: the run date of the newest published model, or of an older one the
  service's experiment still serves (``model_refs``, e.g. ``previous``), whichever is older
  (:func:`flixlake.streaming.state.current_cutoff`);
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
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
from pyspark import inheritable_thread_target

from flixlake.config import StreamDetectionConfig, StreamingConfig
from flixlake.lake.registry import CURRENT
from flixlake.lake.spark_io import append_once, compact_table, ensure_table, warm_state
from flixlake.lake.store import Lake
from flixlake.lake.tables import (
    SPEED_NEW_USERS,
    SPEED_TRENDING,
    SPEED_USER_ACTIVITY,
)
from flixlake.streaming.alerts import StreamAlerts
from flixlake.streaming.harness import (
    BatchReport,
    ReplayCheck,
    StepTimer,
    compact_days,
    count_reasons,
)
from flixlake.streaming.parse import KAFKA_MS, parse_records, quarantine_rows
from flixlake.streaming.state import (
    activity_from_bronze,
    current_cutoff,
    model_users,
    stream_time_from_lake,
    trending_state_from_bronze,
)
from flixlake.streaming.views import (
    ACTIVITY_UPDATES,
    EVENT_COLUMNS,
    NEW_USER_UPDATES,
    Cutoff,
    event_schema,
    merge_pairs,
    new_users,
    stamped,
    stream_time,
    trending_counts,
    user_activity,
    watch_pairs,
    window_lengths,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)
BRONZE = "bronze_events"
QUARANTINE = "quarantine_events"
SPEED_TABLES = (SPEED_USER_ACTIVITY.name, SPEED_NEW_USERS.name, SPEED_TRENDING.name)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Fresh:
    """When a micro-batch's speed views showed it (epoch seconds), and whether they were reset."""

    at: float
    rebuilt: bool


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
        model_refs: Sequence[str] = (CURRENT,),
        attack_rules: StreamDetectionConfig | None = None,
    ) -> None:
        self.lake = lake
        self.config = config
        self.topic = topic
        self.query_name = query_name or config.query_name
        self.clock = clock
        self.cutoff_check_seconds = cutoff_check_seconds
        self.model_refs = tuple(model_refs)  # the models the service serves (the cutoff's)
        self._cutoff_checked = 0.0  # monotonic time of the last look at the models table
        self.windows = window_lengths(config)
        self.cutoff: Cutoff | None = None
        self.known_users = pa.array([], pa.int64())
        self.as_of: dt.datetime | None = None
        self.pairs = watch_pairs(pa.Table.from_pylist([], event_schema()))
        self.batches_since_maintenance = 0
        self.days_since_maintenance: set[dt.date] = set()
        self.replays = ReplayCheck(lake, BRONZE, self.app_id)
        self.started = False
        # the quarantine append runs beside the bronze append (see process)
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"speed-{self.query_name}"
        )
        # the appended tables' next state, computed between micro-batches (see warm_state)
        self._warm = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"warm-{self.query_name}")
        self.tables_ready = False  # bronze and quarantine exist with the registry's schema
        # attacks.stream's rules over each batch's events, alerts to attack_alerts (None: off)
        self.alerts = (
            None if attack_rules is None else StreamAlerts(lake, attack_rules, self.app_id, clock)
        )

    @property
    def app_id(self) -> str:
        return f"stream:{self.query_name}"

    def start(self) -> None:
        """Rebuild in-memory state from the lake (after a restart the views continue seamlessly)."""
        now = self.clock()
        self.as_of = stream_time_from_lake(self.lake, now)
        self.pairs = trending_state_from_bronze(self.lake, self.as_of, max(self.windows.values()))
        cutoff = current_cutoff(self.lake, self.model_refs)
        if self._views_cutoff() != cutoff:
            self._reset_user_views(cutoff, batch_id=-1)
        else:
            self._set_cutoff(cutoff)
        if self.alerts is not None:
            self.alerts.start(self.as_of, self.known_users)
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

    def process(self, records: DataFrame, batch_id: int) -> BatchReport:
        """Write one micro-batch of Kafka source rows exactly once; bring the views up to date.

        Three Spark jobs, none with a shuffle: the parse (cached; the driver gets back the
        columns the views need), the quarantine append (only when the batch has rejects) and
        the bronze append, both reading the cache. Each write is idempotent on its own (the
        appends by their app transaction, the views by their MERGE of unions and the in-memory
        trending state), so their order does not matter for a replay. The views (delta-rs on
        the driver, ~0.1 s for 1,000 events alone but several times that beside Spark's write
        on two cores) go first, right after the parse; then the two appends run at the same
        time. Only a view reset at a new cutoff waits for bronze, which it is rebuilt from.
        """
        steps = StepTimer()
        spark = records.sparkSession
        if not self.started:
            self.start()
        if not self.tables_ready:  # once, not per batch: the appends below skip the check
            for table in self.tables:
                ensure_table(spark, self.lake, table)
            self.tables_ready = True
        now = self.clock()
        parsed = parse_records(records, self.topic, f"{self.app_id}:{batch_id}", now).persist()
        quarantined: Future[None] | None = None
        try:
            summary = parsed.select(
                "parse_status", "reject_reason", "event_date", *EVENT_COLUMNS, KAFKA_MS
            ).toArrow()
            steps.lap("parse")
            status = summary["parse_status"]
            lines = summary.num_rows
            rejected = (
                lines - pc.sum(pc.equal(status, "ok").cast(pa.int64())).as_py() if lines else 0
            )
            replay = self.replays.check(batch_id)  # for the report: Delta skips a replay itself
            ok = summary.filter(pc.equal(status, "ok"))
            events = ok.select(EVENT_COLUMNS).cast(event_schema())
            cutoff = self._due_cutoff()
            # the views go first, unless the cutoff moved: a reset is rebuilt from bronze, so it
            # waits for this batch's bronze append (below)
            fresh = None if cutoff != self.cutoff else self._views(events, batch_id, cutoff, steps)
            if rejected:  # no rejects, no commit: a replay parses the same lines, finds none
                quarantined = self._pool.submit(
                    inheritable_thread_target(spark)(steps.timed("quarantine", append_once)),
                    quarantine_rows(parsed).coalesce(1),
                    self.lake,
                    QUARANTINE,
                    self.app_id,
                    batch_id,
                    ensure=False,
                )
            if lines:  # a file per task and day (maintenance compacts them)
                rows = parsed.drop(KAFKA_MS).coalesce(spark.sparkContext.defaultParallelism)
                steps.timed("bronze", append_once)(
                    rows, self.lake, BRONZE, self.app_id, batch_id, ensure=False
                )
        finally:
            if quarantined is not None:
                wait([quarantined])  # done (or failed) before the cache goes
            parsed.unpersist()
        if quarantined is not None:
            quarantined.result()  # a failed quarantine write fails the batch: Spark replays it
        if lines:
            written = (BRONZE, QUARANTINE) if rejected else (BRONZE,)
            self._warm.submit(inheritable_thread_target(spark)(self._warm_tables), spark, written)
        if fresh is None:  # bronze holds this batch now: the reset can read it
            fresh = self._views(events, batch_id, cutoff, steps)
        self.days_since_maintenance.update(pc.unique(summary["event_date"]).to_pylist())
        self.batches_since_maintenance += 1
        if self.batches_since_maintenance >= self.config.maintenance_every_batches:
            steps.timed("maintenance", self.maintain)(spark)
        return BatchReport.committed_now(
            ok[KAFKA_MS].combine_chunks() if ok.num_rows else pa.array([], pa.int64()),
            batch_id,
            steps.started,
            events=lines,
            rejected=rejected,
            written=not replay,
            rebuilt=fresh.rebuilt,
            rejected_by_reason=count_reasons(summary["reject_reason"]) if rejected else None,
            steps=steps.seconds,
            fresh_at=fresh.at,
        )

    def _warm_tables(self, spark: SparkSession, tables: Sequence[str]) -> None:
        """Compute the appended tables' state for their next append (an optimisation only)."""
        for table in tables:
            try:
                warm_state(spark, self.lake, table)
            except Exception as exc:  # the next append computes it itself
                log.warning("could not compute the state of %s ahead: %s", table, exc)

    def _due_cutoff(self) -> Cutoff:
        """The cutoff the views should have now (the models table is read every few seconds)."""
        cutoff = self.cutoff or Cutoff()
        if time.monotonic() - self._cutoff_checked >= self.cutoff_check_seconds:
            cutoff = current_cutoff(self.lake, self.model_refs)  # a newer model resets the window
            self._cutoff_checked = time.monotonic()
        return cutoff

    def _views(self, events: pa.Table, batch_id: int, cutoff: Cutoff, steps: StepTimer) -> Fresh:
        """The views (and the alerts on them) brought up to date; when, and whether reset."""
        rebuilt = steps.timed("views", self.update_views)(events, batch_id, cutoff)
        fresh = Fresh(at=time.time(), rebuilt=rebuilt)
        if self.alerts is not None:
            steps.timed("alerts", self.alerts.process)(events, batch_id, self.known_users)
        return fresh

    def update_views(self, events: pa.Table, batch_id: int, cutoff: Cutoff) -> bool:
        """Bring the three speed views up to date with a batch's events at ``cutoff``.

        A new cutoff rebuilds the user views from bronze, which must hold the batch already;
        returns whether it did.
        """
        now = self.clock()
        rebuilt = cutoff != self.cutoff
        if rebuilt:
            self._reset_user_views(cutoff, batch_id)
        elif events.num_rows:
            activity = user_activity(events, cutoff.since)
            if activity.num_rows:
                self.lake.upsert(
                    SPEED_USER_ACTIVITY.name,
                    stamped(activity, batch_id, now, cutoff),
                    updates=ACTIVITY_UPDATES,
                )
                newcomers = new_users(activity, self.known_users)
                if newcomers.num_rows:
                    self.lake.upsert(
                        SPEED_NEW_USERS.name,
                        stamped(newcomers, batch_id, now, cutoff),
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

    def maintain(self, spark: SparkSession) -> None:
        """Compact the small bronze files the stream wrote (OPTIMIZE); drop old view files."""
        self.batches_since_maintenance = 0
        self.days_since_maintenance = compact_days(
            lambda table, column, day: compact_table(spark, self.lake, table, {column: day}),
            BRONZE,
            "event_date",
            self.days_since_maintenance,
        )
        try:
            if self.lake.exists(QUARANTINE):
                compact_table(spark, self.lake, QUARANTINE)
            for name in SPEED_TABLES:
                if self.lake.exists(name):
                    self.lake.vacuum(name, self.config.vacuum_retention_hours)
        except Exception as exc:  # maintenance is an optimisation: report it, keep streaming
            log.warning("speed-layer maintenance failed (will retry later): %s", exc)

"""The query harness shared by both queries of the speed-layer job: start, report, stop.

A query reads one Kafka topic with Spark's own Kafka source (``format("kafka")``: offsets in the
query's checkpoint, ``failOnDataLoss`` on unless configured otherwise, ``maxOffsetsPerTrigger``
from ``streaming.max_events_per_trigger``) and hands each micro-batch, as a DataFrame, to a
:class:`BatchProcessor` (the events processor or the served-records landing), which commits it
exactly once with Delta app transactions. The harness owns the checkpoint, the stop protocol, the
per-batch report, and turns Kafka's data-loss failure into a message naming the lost range.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from flixlake.config import Settings
from flixlake.contract.kafka import BrokerError, create_topic
from flixlake.lake.store import Lake

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery


log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


class SpeedLayerError(RuntimeError):
    """The speed layer cannot start or continue safely; the message says what to do."""


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
    committed_at: float  # epoch seconds when every write of the batch had committed
    kafka_timestamps_ms: pa.Array = field(repr=False)
    rebuilt: bool = False
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step (some overlap)
    fresh_at: float | None = None  # epoch seconds when the speed views showed the batch

    @property
    def visible_at(self) -> float:
        """When the batch's records were visible to readers: its freshness is measured here."""
        return self.committed_at if self.fresh_at is None else self.fresh_at

    @classmethod
    def committed_now(
        cls,
        kafka_timestamps_ms: pa.Array,
        batch_id: int,
        started: float,
        events: int,
        rejected: int,
        written: bool,
        rebuilt: bool = False,
        rejected_by_reason: dict[str, int] | None = None,
        steps: dict[str, float] | None = None,
        fresh_at: float | None = None,
    ) -> BatchReport:
        """The report of a batch whose commits just finished.

        ``kafka_timestamps_ms``: the Kafka timestamps of the records the report measures lag and
        freshness by; ``started`` is the ``time.monotonic()`` when processing began;
        ``fresh_at`` when the speed views showed the batch, if before every commit finished.
        """
        stamps_ms = kafka_timestamps_ms.cast(pa.int64())
        committed = time.time()
        oldest = pc.min(stamps_ms).as_py() if len(stamps_ms) else None
        lag = None if oldest is None else committed - oldest / 1000
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
            rejected_by_reason=rejected_by_reason or {},
            steps=dict(steps or {}),
            fresh_at=fresh_at,
        )

    def line(self, query_name: str) -> str:
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        lag = "-" if self.lag_seconds is None else f"{self.lag_seconds:.1f}s"
        note = "" if self.written else " (replay: already committed)"
        steps = " ".join(f"{name} {seconds:.2f}" for name, seconds in self.steps.items())
        return (
            f"[{query_name}] batch {self.batch_id}: {self.events} events "
            f"({self.rejected} rejected) in {self.seconds:.2f}s = {rate:,.0f} events/s, "
            f"lag {lag}{note}" + (f" [{steps}]" if steps else "")
        )


class StepTimer:
    """Wall seconds per named step of a micro-batch (in the report, the log and the metrics).

    Sequential steps close with :meth:`lap`; steps that run at the same time, on other threads,
    are wrapped with :meth:`timed` and each gets its own wall time (so they may overlap).
    """

    def __init__(self) -> None:
        self.started = self._last = time.monotonic()
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def _add(self, step: str, seconds: float) -> None:
        with self._lock:
            self.seconds[step] = self.seconds.get(step, 0.0) + seconds

    def lap(self, step: str) -> None:
        """Close ``step``: the time since the previous lap (or the start) is its."""
        now = time.monotonic()
        self._add(step, now - self._last)
        self._last = now

    def timed(self, step: str, fn: Callable[P, R]) -> Callable[P, R]:
        """``fn`` that adds its own wall time to ``step`` when called (from any thread)."""

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            began = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(step, time.monotonic() - began)

        return run


class ReplayCheck:
    """Whether a micro-batch is Spark's replay of one the table already committed.

    Only for the report: Delta skips a replayed ``(app_id, batch)`` append by itself. Spark
    replays only the last planned batch of a run that stopped before recording it, so only the
    first batch a processor sees, or one not after the last it saw, can be a replay: the others
    are known fresh without reading the table's log.
    """

    def __init__(self, lake: Lake, table: str, app_id: str) -> None:
        self.lake, self.table, self.app_id = lake, table, app_id
        self.last: int | None = None

    def check(self, batch_id: int) -> bool:
        maybe = self.last is None or batch_id <= self.last
        self.last = batch_id if self.last is None else max(self.last, batch_id)
        return maybe and self.lake.applied(self.table, self.app_id, batch_id)


def compact_days(
    compact: Callable[[str, str, dt.date], object],
    table: str,
    column: str,
    days: Iterable[dt.date],
) -> set[dt.date]:
    """Compact the small files of each day partition; returns the days to retry next time.

    ``compact(table, column, day)`` does one partition (with the engine that owns the table).
    Compaction is an optimisation: a failure is reported and kept for later, never raised.
    """
    failed = set()
    for day in sorted(days):
        try:
            compact(table, column, day)
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
    """A topic (default ``kafka.topic``) as a streaming DataFrame from Spark's Kafka source.

    Columns ``key, value, topic, partition, offset, timestamp, timestampType``. No consumer group
    commits anything: the offsets of each batch are in the query's checkpoint.
    """
    conf = settings.streaming
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap_servers or settings.kafka.bootstrap_servers)
        .option("subscribe", topic or settings.kafka.topic)
        .option("startingOffsets", conf.starting_offsets)
        .option("failOnDataLoss", "true" if conf.fail_on_data_loss else "false")
        .option("maxOffsetsPerTrigger", str(conf.max_events_per_trigger))
    )
    for key, value in conf.kafka_options.items():
        reader = reader.option(key, value)
    return reader.load()


_LOST = re.compile(r"Some data may have been lost")
_REASON = re.compile(r"Reason: (.+?)(?:\n|$)", re.MULTILINE)
_OFFSETS = re.compile(r"Current (Committed|Available) Offsets: (.+)")


def data_loss_message(error: BaseException | str, topic: str | None = None) -> str | None:
    """A clear account of Kafka's ``failOnDataLoss`` failure, or None for any other error.

    Spark's message says offsets the checkpoint expects are gone (topic deleted and recreated,
    or retention removed them before they were read); this names the range and what to do.
    """
    text = str(error)
    if not _LOST.search(text):
        return None
    reason = _REASON.search(text)
    offsets = {kind.lower(): value.strip() for kind, value in _OFFSETS.findall(text)}
    lines = [
        f"data loss on Kafka topic {topic or '?'}: records the query had not read yet are no "
        "longer in Kafka, so the query stopped instead of skipping them (failOnDataLoss).",
        f"  lost range: {reason.group(1).strip() if reason else 'see the Spark error below'}",
    ]
    if offsets:
        lines.append(f"  checkpointed offsets: {offsets.get('committed', '?')}")
        lines.append(f"  offsets Kafka has now: {offsets.get('available', '?')}")
    lines.append(
        "  cause: the topic was deleted and recreated, or retention removed records before the "
        "speed layer read them. Restore the topic's data and restart, or give the query a new "
        "streaming.query_name to start over from streaming.starting_offsets (the lost records "
        "stay lost); setting streaming.fail_on_data_loss: false skips such ranges silently."
    )
    return "\n".join(lines)


def checkpoint_dir(settings: Settings, query_name: str | None = None) -> Path:
    """``$FLIXLAKE_HOME/checkpoints/<query>``: offsets and commits of one query."""
    return settings.checkpoint_root / (query_name or settings.streaming.query_name)


def _batch_ids(folder: Path) -> list[int]:
    """The micro-batch ids Spark logged in a checkpoint folder (``offsets/`` or ``commits/``)."""
    if not folder.is_dir():
        return []
    return [int(p.name) for p in folder.iterdir() if p.name.isdigit()]


def check_checkpoint(lake: Lake, checkpoint: Path, app_id: str, tables: Iterable[str]) -> None:
    """Refuse a checkpoint that is behind what the tables record for ``app_id``.

    ``tables``: those the query appends to with ``app_id`` transactions (its ``tables``). A table
    that recorded batch ``V`` while the checkpoint never planned batch ``V`` (an empty, older or
    foreign checkpoint) would have the next batches, ids ``<= V`` with other offsets, skipped as
    already written: data lost without a sign. So the job stops here with a message instead.
    """
    planned = _batch_ids(checkpoint / "offsets")
    last_planned = max(planned) if planned else None
    for table in tables:
        recorded = lake.txn_version(table, app_id)
        if recorded is None or (last_planned is not None and recorded <= last_planned):
            continue
        where = (
            "is empty"
            if last_planned is None
            else f"has planned only up to micro-batch {last_planned}"
        )
        raise SpeedLayerError(
            f"{table} already holds micro-batches 0..{recorded} of {app_id!r}, but the "
            f"checkpoint {checkpoint} {where}: the next batch ids would be skipped as already "
            "written. Restore the checkpoint that wrote them, or give the query a new "
            "streaming.query_name."
        )


class CheckpointLock:
    """One writer per query: an exclusive lock on its checkpoint while the query runs.

    Two speed layers with one query name would share a checkpoint and an app id; the second is
    refused at start, before it reads or writes anything. ``flock`` is released by the kernel
    when the holder dies (``kill -9`` included), so a crash never leaves a stale lock.
    """

    FILE = "writer.lock"

    def __init__(self, checkpoint: Path, query_name: str) -> None:
        checkpoint.mkdir(parents=True, exist_ok=True)
        self.path = checkpoint / self.FILE
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            self._fd = None
            raise SpeedLayerError(
                f"query {query_name!r} is already running ({holder}; lock {self.path}): a second "
                "writer with the same query name and app id is refused. Stop the other one, or "
                "give this one another streaming.query_name."
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        """Let the next writer start (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock


class BatchProcessor(Protocol):
    """What a streaming query of this job does per micro-batch (events, or served records)."""

    lake: Lake
    query_name: str
    topic: str
    tables: tuple[str, ...]  # tables it appends to with app transactions

    @property
    def app_id(self) -> str: ...

    def start(self) -> None: ...

    def process(self, records: DataFrame, batch_id: int) -> BatchReport: ...


class SpeedLayerRun:
    """A running query: stop it gracefully (between batches) or abruptly."""

    def __init__(
        self,
        query: StreamingQuery,
        processor: BatchProcessor,
        lock: threading.Lock,
        writer_lock: CheckpointLock | None = None,
    ) -> None:
        self.query = query
        self.processor = processor
        self.writer_lock = writer_lock
        self.reports: list[BatchReport] = []
        self._lock = lock
        self._stopping = threading.Event()
        self._ended_on_its_own = False  # the query had terminated when a stop was requested

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
        self.wait_idle(0)  # frees the checkpoint now unless a batch is still in flight
        if not idle:
            raise SpeedLayerError(f"a micro-batch did not finish within {timeout:.0f}s")

    def request_stop(self) -> None:
        """From now on no batch starts writing (it fails and is replayed on the next start)."""
        if not self._stopping.is_set():
            self._ended_on_its_own = not self.query.isActive
        self._stopping.set()

    def wait_idle(self, timeout: float = 120.0) -> bool:
        """Wait until no batch code runs in this process (after an abrupt stop).

        Once idle and stopped, the checkpoint is free for the next writer.
        """
        if self._lock.acquire(timeout=timeout) if timeout > 0 else self._lock.acquire(False):
            self._lock.release()
            self.release()
            return True
        return False

    def release(self) -> None:
        """Free the query's checkpoint for the next writer (once the query no longer runs)."""
        if self.writer_lock is not None and not self.query.isActive:
            self.writer_lock.release()

    def failure(self) -> BaseException | None:
        """The exception that ended the query, unless it was our own stop."""
        error = self.query.exception()
        if error is None or (self.stopping and not self._ended_on_its_own):
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

    Its checkpoint is ``$FLIXLAKE_HOME/checkpoints/<processor.query_name>``, locked for this one
    writer (:class:`CheckpointLock`) and checked against the progress the tables record
    (:func:`check_checkpoint`); either refusal raises :class:`SpeedLayerError` before any read.
    """
    checkpoint = checkpoint_dir(settings, processor.query_name)
    writer_lock = CheckpointLock(checkpoint, processor.query_name)
    try:
        check_checkpoint(processor.lake, checkpoint, processor.app_id, processor.tables)
        return _start_foreach_batch(
            spark,
            settings,
            processor,
            topic,
            checkpoint,
            writer_lock,
            bootstrap_servers,
            on_batch,
            quiet,
        )
    except BaseException:
        writer_lock.release()
        raise


def _start_foreach_batch(
    spark: SparkSession,
    settings: Settings,
    processor: BatchProcessor,
    topic: str,
    checkpoint: Path,
    writer_lock: CheckpointLock,
    bootstrap_servers: str | None,
    on_batch: Callable[[BatchReport], None] | None,
    quiet: bool,
) -> SpeedLayerRun:
    bootstrap = bootstrap_servers or settings.kafka.bootstrap_servers
    try:  # Spark's source fails on a topic that does not exist; the broker may not be up yet
        create_topic(bootstrap, topic, settings.kafka.partitions, timeout=10)
    except BrokerError as exc:
        log.warning("could not make sure topic %s exists at %s: %s", topic, bootstrap, exc)
    processor.start()
    lock = threading.Lock()
    holder: list[SpeedLayerRun] = []

    def foreach_batch(batch_df: DataFrame, batch_id: int) -> None:
        with lock:
            if holder and holder[0].stopping:
                # do not let Spark mark this batch done: it is replayed on the next start
                raise SpeedLayerError(f"{processor.query_name} stopping; batch left for next run")
            report = processor.process(batch_df, batch_id)
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
    run = SpeedLayerRun(query, processor, lock, writer_lock)
    holder.append(run)
    return run


def count_reasons(reasons: pa.Array) -> dict[str, int]:
    """How many rejected lines per reason (nulls, i.e. accepted lines, not counted)."""
    counts = pc.value_counts(pc.drop_null(reasons))
    return {str(v["values"]): int(v["counts"]) for v in counts.to_pylist()}


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

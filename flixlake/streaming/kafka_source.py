"""A Spark streaming data source for Kafka built on kafka-python (no JVM connector needed).

``spark.readStream.format("flixlake_kafka")`` yields ``topic, partition, offset, timestamp,
value`` rows. Offsets are ``{"<partition>": <next offset>}`` dicts that Spark keeps in the
query's checkpoint; no consumer group is used (partitions are assigned by hand), so there are no
rebalances and nothing is committed to the broker.

How far a micro-batch reads is decided on the driver by *fetching*, never by trusting the
broker's reported end offset (tansu 0.6 reports the base offset of the last record batch + 1):
the reported end is only a hint of where to look, and the planned end of a partition is one past
the last offset actually returned by a fetch (capped by ``maxEventsPerTrigger``, shared fairly
among partitions). Executors then read exactly ``[start, end)`` (big ranges cut into several
tasks, small ones packed into one), retrying until they got there; so a replayed batch reads the
same records, and nothing is skipped or read twice. A broker that is down while planning makes
the trigger empty; while reading, the read retries until ``readTimeoutSeconds``.

>>> register_kafka_source(spark)                                              # doctest: +SKIP
>>> spark.readStream.format("flixlake_kafka").option("bootstrapServers", "127.0.0.1:9092") \\
...     .option("topic", "movielog").option("maxEventsPerTrigger", 100000).load()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows
from pyspark.sql.types import (
    BinaryType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import SparkSession

SOURCE_NAME = "flixlake_kafka"
SCHEMA = StructType(
    [
        StructField("topic", StringType()),
        StructField("partition", IntegerType()),
        StructField("offset", LongType()),
        StructField("timestamp", TimestampType()),  # the record's Kafka timestamp (UTC)
        StructField("value", BinaryType()),
    ]
)
_ARROW_CHUNK_ROWS = 50_000
_MAX_POLL_RECORDS = 1_000_000

log = logging.getLogger(__name__)


class KafkaSourceError(RuntimeError):
    """The source cannot do what the query asked (bad option, unreadable planned range)."""


@dataclass(frozen=True)
class KafkaSourceOptions:
    """Validated reader options (names as passed to ``.option(...)``)."""

    bootstrap_servers: str
    topic: str
    max_events_per_trigger: int | None = None
    starting_offsets: str = "earliest"
    read_timeout_seconds: float = 120.0
    probe_timeout_ms: int = 100
    bootstrap_timeout_ms: int = 5000
    max_records_per_split: int = 200_000
    min_records_per_split: int = 50_000

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> KafkaSourceOptions:
        """Options from Spark (case-insensitive keys, string values), with errors naming them."""
        opts = {k.lower(): v for k, v in options.items()}

        def number(key: str, default: float | None, kind: type = int) -> Any:
            raw = opts.get(key.lower())
            if raw is None or raw == "":
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise KafkaSourceError(f"option {key}={raw!r}: expected a number") from None
            if value <= 0:
                raise KafkaSourceError(f"option {key}={raw!r}: must be greater than 0")
            return value

        for required in ("bootstrapServers", "topic"):
            if not opts.get(required.lower()):
                raise KafkaSourceError(f"{SOURCE_NAME}: option {required!r} is required")
        starting = opts.get("startingoffsets", "earliest").lower()
        if starting not in ("earliest", "latest"):
            raise KafkaSourceError(f"option startingOffsets={starting!r}: use earliest or latest")
        max_split = number("maxRecordsPerSplit", 200_000)
        min_split = number("minRecordsPerSplit", 50_000)
        if min_split > max_split:
            raise KafkaSourceError(
                f"option minRecordsPerSplit={min_split} exceeds maxRecordsPerSplit={max_split}"
            )
        return cls(
            bootstrap_servers=opts["bootstrapservers"],
            topic=opts["topic"],
            max_events_per_trigger=number("maxEventsPerTrigger", None),
            starting_offsets=starting,
            read_timeout_seconds=number("readTimeoutSeconds", 120.0, float),
            probe_timeout_ms=number("probeTimeoutMs", 100),
            bootstrap_timeout_ms=number("bootstrapTimeoutMs", 5000),
            max_records_per_split=max_split,
            min_records_per_split=min_split,
        )


@dataclass(frozen=True)
class KafkaRange:
    """Offsets ``[start, end)`` of one topic partition."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class KafkaSplit(InputPartition):
    """What one Spark task reads: ranges of distinct partitions, with one consumer."""

    ranges: tuple[KafkaRange, ...]


# -- pure planning helpers ----------------------------------------------------------------------
def offsets_of(offset: Mapping[str, Any]) -> dict[int, int]:
    """A checkpointed offset dict ``{"0": 12}`` as ``{0: 12}``."""
    return {int(p): int(o) for p, o in offset.items()}


def offset_dict(offsets: Mapping[int, int]) -> dict[str, int]:
    """``{0: 12}`` as the JSON-friendly dict Spark stores (string keys, sorted)."""
    return {str(p): int(offsets[p]) for p in sorted(offsets)}


def allocate(available: Mapping[int, int], limit: int | None) -> dict[int, int]:
    """Share ``limit`` events fairly among partitions (water-filling); no limit takes all.

    >>> allocate({0: 900, 1: 50, 2: 600}, 1000)
    {0: 475, 1: 50, 2: 475}
    """
    wanted = {p: max(0, n) for p, n in available.items()}
    if limit is None or sum(wanted.values()) <= limit:
        return dict(wanted)
    granted = {p: 0 for p in wanted}
    left = limit
    open_parts = sorted(p for p, n in wanted.items() if n > 0)
    while left > 0 and open_parts:
        share, extra = divmod(left, len(open_parts))
        next_open = []
        for i, p in enumerate(open_parts):
            give = min(wanted[p] - granted[p], share + (1 if i < extra else 0))
            granted[p] += give
            left -= give
            if granted[p] < wanted[p]:
                next_open.append(p)
        if next_open == open_parts and share == 0 and extra == 0:
            break
        open_parts = next_open
    return granted


def split_ranges(
    topic: str, start: Mapping[int, int], end: Mapping[int, int], max_records: int
) -> list[KafkaRange]:
    """Each partition's new range, cut into pieces of at most ``max_records`` offsets."""
    ranges = []
    for p in sorted(end):
        lo, hi = start.get(p, 0), end[p]
        while lo < hi:
            ranges.append(KafkaRange(topic, p, lo, min(hi, lo + max_records)))
            lo += max_records
    return ranges


def plan_splits(
    topic: str,
    start: Mapping[int, int],
    end: Mapping[int, int],
    max_records: int,
    min_records: int,
) -> list[KafkaSplit]:
    """The tasks of a micro-batch: big ranges cut, small ones packed (a task costs a consumer).

    A split never holds two ranges of one partition, so each task reads a partition once.
    """
    splits: list[KafkaSplit] = []
    current: list[KafkaRange] = []
    for rng in split_ranges(topic, start, end, max_records):
        if current and (
            sum(r.size for r in current) >= min_records
            or any(r.partition == rng.partition for r in current)
        ):
            splits.append(KafkaSplit(tuple(current)))
            current = []
        current.append(rng)
    if current:
        splits.append(KafkaSplit(tuple(current)))
    return splits


class _Consumer(Protocol):  # the part of kafka.KafkaConsumer the planner uses (fakes in tests)
    def assign(self, partitions: list[Any]) -> None: ...
    def seek(self, partition: Any, offset: int) -> None: ...
    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]: ...
    def position(self, partition: Any) -> int: ...
    def end_offsets(
        self, partitions: list[Any], timeout_ms: int | None = None
    ) -> dict[Any, int]: ...
    def pause(self, *partitions: Any) -> None: ...
    def resume(self, *partitions: Any) -> None: ...


def probe_ends(
    consumer: _Consumer,
    starts: Mapping[Any, int],
    cap: int | None,
    poll_timeout_ms: int,
    deadline: float,
) -> dict[Any, int]:
    """How far each partition can be read right now, established by fetching.

    For each partition (key: a TopicPartition) the reported end offset is only a hint: the probe
    seeks just before ``min(hint, start + cap)`` and fetches forward until a fetch comes back
    empty, ``start + cap`` is reached, or it reached the high-watermark of its first fetch (so a
    busy producer is not chased until the deadline). The result is one past the last offset a
    fetch actually returned (``start`` when none), so every planned offset is known to exist.
    """
    tps = list(starts)
    if not tps:
        return {}
    consumer.assign(tps)
    hints = consumer.end_offsets(tps, timeout_ms=max(poll_timeout_ms, 1000))
    targets = {tp: None if cap is None else starts[tp] + cap for tp in tps}
    ends = dict(starts)
    for tp in tps:
        hint = int(hints.get(tp, starts[tp]))
        target = targets[tp]
        look = hint if target is None else min(hint, target)
        consumer.seek(tp, max(starts[tp], look - 1))
    rescanned: set[Any] = set()
    stop_at: dict[Any, int] = {}  # the fetch high-watermark first seen: don't chase new data
    active = set(tps)
    while active and time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=poll_timeout_ms, max_records=_MAX_POLL_RECORDS)
        finished = set()
        for tp in active:
            if batch.get(tp):
                ends[tp] = max(ends[tp], consumer.position(tp))
                target = targets[tp]
                if tp not in stop_at:
                    stop_at[tp] = _highwater(consumer, tp)
                if target is not None and ends[tp] >= target:
                    ends[tp] = target
                    finished.add(tp)
                elif ends[tp] >= stop_at[tp]:
                    finished.add(tp)  # caught up with what existed when we looked
            elif (
                ends[tp] == starts[tp]
                and tp not in rescanned
                and consumer.position(tp) > starts[tp]
            ):
                # the hint pointed past what a fetch returns: look again from the start
                rescanned.add(tp)
                consumer.seek(tp, starts[tp])
            else:
                finished.add(tp)
        if finished:
            consumer.pause(*finished)
        active -= finished
    consumer.resume(*tps)
    return ends


def _highwater(consumer: Any, tp: Any) -> int:
    """The end a fetch response reported (a hint for when to stop probing; may be missing)."""
    try:
        mark = consumer.highwater(tp)
    except Exception:  # fakes and old clients: no hint, probe until an empty fetch
        return 2**62
    return 2**62 if mark is None else int(mark)


# -- the data source ----------------------------------------------------------------------------
def _consumer_config(options: KafkaSourceOptions, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap_servers": options.bootstrap_servers,
        "group_id": None,
        "enable_auto_commit": False,
        "allow_auto_create_topics": False,
        "auto_offset_reset": "earliest",  # below the log start (retention): start at the log start
        "bootstrap_timeout_ms": options.bootstrap_timeout_ms,
        "request_timeout_ms": 10_000,
        "reconnect_backoff_max_ms": 1000,
        "metadata_max_age_ms": 10_000,
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        "fetch_max_wait_ms": 100,
        "client_id": "flixlake-stream",
    }
    config.update(overrides)
    return config


class KafkaStreamReader(DataSourceStreamReader):
    """Plans micro-batches on the driver (by probing) and reads ranges on executors."""

    def __init__(self, options: KafkaSourceOptions) -> None:
        self.options = options
        self._consumer: Any = None  # driver-side planner consumer, created lazily
        self._told_missing = False  # "topic not found" is said once, not every trigger

    def __getstate__(self) -> dict[str, Any]:
        return {"options": self.options, "_consumer": None, "_told_missing": False}

    # driver side ----------------------------------------------------------------------------
    def _planner(self) -> Any:
        if self._consumer is None:
            from kafka import KafkaConsumer

            # small fetches: the planner only needs to see that offsets exist, not the data
            self._consumer = KafkaConsumer(
                **_consumer_config(
                    self.options,
                    fetch_max_wait_ms=20,
                    max_partition_fetch_bytes=256 * 1024,
                    fetch_max_bytes=1024 * 1024,
                    client_id="flixlake-planner",
                )
            )
        return self._consumer

    def _drop_planner(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close(autocommit=False, timeout_ms=1000)
            except Exception as exc:  # closing a broken client must not mask the real problem
                log.debug("closing planner consumer failed: %s", exc)

    def _topic_partitions(self) -> list[int]:
        partitions = self._planner().partitions_for_topic(self.options.topic)
        return sorted(partitions or [])

    def initialOffset(self) -> dict[str, int]:
        """``{}`` (earliest: every partition from its first offset) or the probed ends (latest)."""
        if self.options.starting_offsets == "earliest":
            return {}
        deadline = time.monotonic() + self.options.read_timeout_seconds
        while True:
            try:
                parts = self._topic_partitions()
                if parts:
                    from kafka import TopicPartition

                    tps = {TopicPartition(self.options.topic, p): 0 for p in parts}
                    ends = probe_ends(
                        self._planner(), tps, None, self.options.probe_timeout_ms, deadline
                    )
                    return offset_dict({tp.partition: o for tp, o in ends.items()})
            except Exception as exc:
                log.warning("startingOffsets=latest: broker not reachable yet: %s", exc)
                self._drop_planner()
            if time.monotonic() >= deadline:
                raise KafkaSourceError(
                    f"startingOffsets=latest needs the broker at {self.options.bootstrap_servers} "
                    f"(topic {self.options.topic!r}); none answered within "
                    f"{self.options.read_timeout_seconds:.0f}s"
                )
            time.sleep(1.0)

    def getDefaultReadLimit(self) -> ReadLimit:
        """``maxEventsPerTrigger`` as Spark's row limit."""
        if self.options.max_events_per_trigger is None:
            return ReadAllAvailable()
        return ReadMaxRows(self.options.max_events_per_trigger)

    def latestOffset(self, start: dict[str, int], limit: ReadLimit) -> dict[str, int]:
        """The next micro-batch's end, proven by fetching; ``start`` when nothing is readable."""
        from kafka import TopicPartition

        current = offsets_of(start or {})
        cap = limit.max_rows if isinstance(limit, ReadMaxRows) else None
        try:
            parts = self._topic_partitions()
            if not parts:
                if not self._told_missing:
                    log.warning(
                        "topic %r not found at %s; waiting for it",
                        self.options.topic,
                        self.options.bootstrap_servers,
                    )
                self._told_missing = True
                return dict(start or {})
            self._told_missing = False
            tps = {TopicPartition(self.options.topic, p): current.get(p, 0) for p in parts}
            deadline = time.monotonic() + max(2.0, self.options.probe_timeout_ms / 1000 * 10)
            ends = probe_ends(self._planner(), tps, cap, self.options.probe_timeout_ms, deadline)
        except Exception as exc:  # broker down or unreachable: an empty trigger, never a crash
            log.warning(
                "Kafka at %s not reachable, no new data this trigger: %s",
                self.options.bootstrap_servers,
                exc,
            )
            self._drop_planner()
            return dict(start or {})
        available = {tp.partition: ends[tp] - tps[tp] for tp in tps}
        granted = allocate(available, cap)
        result = dict(current)
        for tp, first in tps.items():
            result[tp.partition] = first + granted[tp.partition]
        return offset_dict(result)

    def partitions(self, start: dict[str, int], end: dict[str, int]) -> list[KafkaSplit]:
        """The micro-batch's tasks: large ranges cut so all cores work, small ones packed."""
        return plan_splits(
            self.options.topic,
            offsets_of(start or {}),
            offsets_of(end),
            self.options.max_records_per_split,
            self.options.min_records_per_split,
        )

    def commit(self, end: dict[str, int]) -> None:
        """Nothing to do: offsets live in Spark's checkpoint, not in a consumer group."""

    def stop(self) -> None:
        self._drop_planner()

    # executor side --------------------------------------------------------------------------
    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        """Exactly the records of the split's ranges, as Arrow batches."""
        assert isinstance(partition, KafkaSplit)
        return read_ranges(self.options, partition.ranges)


def _open_consumer(options: KafkaSourceOptions, deadline: float) -> Any:
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    while True:
        try:
            return KafkaConsumer(**_consumer_config(options))
        except KafkaError as exc:
            if time.monotonic() >= deadline:
                raise KafkaSourceError(
                    f"cannot reach Kafka at {options.bootstrap_servers} to read a planned range: "
                    f"{exc}"
                ) from exc
            log.warning("Kafka at %s not reachable, retrying: %s", options.bootstrap_servers, exc)
            time.sleep(0.5)


def read_ranges(
    options: KafkaSourceOptions, ranges: Sequence[KafkaRange]
) -> Iterator[pa.RecordBatch]:
    """Fetch each ``[start, end)`` (distinct partitions), retrying until ``readTimeoutSeconds``."""
    import pyarrow as pa
    from kafka import TopicPartition
    from pyspark.sql.pandas.types import to_arrow_schema

    if len({r.partition for r in ranges}) != len(ranges):
        raise KafkaSourceError(f"a split must not hold one partition twice: {ranges}")
    ranges = [r for r in ranges if r.size > 0]
    if not ranges:
        return
    schema = to_arrow_schema(SCHEMA, timezone="UTC")
    deadline = time.monotonic() + options.read_timeout_seconds
    consumer = _open_consumer(options, deadline)
    wanted = {TopicPartition(r.topic, r.partition): r for r in ranges}
    columns: dict[str, list[Any]] = {n: [] for n in SCHEMA.fieldNames()}

    def chunk() -> pa.RecordBatch:
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array(columns["topic"], pa.string()),
                pa.array(columns["partition"], pa.int32()),
                pa.array(columns["offset"], pa.int64()),
                pa.array(columns["timestamp"], pa.int64())
                .cast(pa.timestamp("ms"))
                .cast(schema.field("timestamp").type),
                pa.array(columns["value"], pa.binary()),
            ],
            schema=schema,
        )
        for values in columns.values():
            values.clear()
        return batch

    try:
        consumer.assign(list(wanted))
        for tp, rng in wanted.items():
            consumer.seek(tp, rng.start)
        pending = dict(wanted)
        while pending:
            if time.monotonic() >= deadline:
                where = {f"{tp.topic}[{tp.partition}]": consumer.position(tp) for tp in pending}
                raise KafkaSourceError(
                    f"reading planned offsets timed out after {options.read_timeout_seconds:.0f}s "
                    f"at {where}, ranges {list(pending.values())} (broker unreachable, or it "
                    "lost data it had served while planning)"
                )
            polled = consumer.poll(timeout_ms=500, max_records=_MAX_POLL_RECORDS)
            for tp, records in polled.items():
                rng = wanted[tp]
                for record in records:
                    if rng.start <= record.offset < rng.end:
                        columns["topic"].append(rng.topic)
                        columns["partition"].append(rng.partition)
                        columns["offset"].append(record.offset)
                        columns["timestamp"].append(record.timestamp)
                        columns["value"].append(record.value)
            done = [tp for tp in pending if consumer.position(tp) >= pending[tp].end]
            if done:
                consumer.pause(*done)
                for tp in done:
                    del pending[tp]
            if len(columns["offset"]) >= _ARROW_CHUNK_ROWS:
                yield chunk()
        if columns["offset"]:
            yield chunk()
    finally:
        consumer.close(autocommit=False, timeout_ms=1000)


def read_range(options: KafkaSourceOptions, rng: KafkaRange) -> Iterator[pa.RecordBatch]:
    """Fetch ``[rng.start, rng.end)`` of one partition (see :func:`read_ranges`)."""
    return read_ranges(options, [rng])


class KafkaDataSource(DataSource):
    """``format("flixlake_kafka")``: options bootstrapServers, topic, maxEventsPerTrigger, ..."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> StructType:
        return SCHEMA

    def streamReader(self, schema: StructType) -> KafkaStreamReader:
        return KafkaStreamReader(KafkaSourceOptions.parse(self.options))


def register_kafka_source(spark: SparkSession) -> None:
    """Make ``format("flixlake_kafka")`` available in this session."""
    spark.dataSource.register(KafkaDataSource)

"""Kafka records -> bronze rows on the executors, with the one parser.

Each executor task runs :func:`flixlake.lake.bronze.parse_batch` (which calls
:func:`flixlake.contract.logformat.parse_line`) over Arrow batches of its Kafka offset range
(``mapInArrow``), so the speed layer and file ingest parse with the same code. A task carries the
set of lines it has seen across its Arrow batches, so a line identical to an earlier one of the
same Kafka partition in the micro-batch is rejected as a ``duplicate``, in one pass with no
shuffle. Lines are keyed by user id (the simulator and the service's telemetry both key them), so
identical lines land on the same partition; a copy on another partition or in another
micro-batch stays in bronze and silver removes it, as it removes copies across ingested files.

Why ``mapInArrow`` and not Spark SQL expressions in the JVM: measured with ``bench/parse.py``
(README, "Performance"): the regex-heavy grammar as Spark expressions ran at a quarter of the
Python parser's rate in the Python workers, and a JVM fast path for provably valid lines (with
the Python parser for the rest) at less than half, besides being a second parser to keep in sync.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StructField, StructType

from flixlake.lake.bronze import parse_batch
from flixlake.lake.spark_io import spark_schema
from flixlake.lake.tables import BRONZE_EVENTS, QUARANTINE_EVENTS

KAFKA_MS = "kafka_ms"  # the record's Kafka timestamp, epoch milliseconds (lag and freshness)
PARSED_SCHEMA = StructType([*spark_schema(BRONZE_EVENTS).fields, StructField(KAFKA_MS, LongType())])


def parse_arrow(
    topic: str, ingest_batch: str, ingested_at: dt.datetime
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The per-task function: Arrow batches of ``value, partition, offset, kafka_ms`` -> bronze."""

    def parse(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        seen: set[str] = set()  # this task's (one Kafka partition's) valid lines so far
        for batch in batches:
            values = [b"" if v is None else v for v in batch.column("value").to_pylist()]
            parsed = parse_batch(
                values,
                source=topic,
                offsets=batch.column("offset").to_pylist(),
                ingest_batch=ingest_batch,
                ingested_at=ingested_at,
                partitions=batch.column("partition").to_pylist(),
                seen=seen,
            )
            yield from parsed.bronze.append_column(
                KAFKA_MS, batch.column(KAFKA_MS).cast(pa.int64())
            ).to_batches()

    return parse


def parse_records(
    records: DataFrame, topic: str, ingest_batch: str, ingested_at: dt.datetime
) -> DataFrame:
    """Kafka source rows -> bronze rows (+ ``kafka_ms``), parsed on the executors."""
    kafka = records.select(
        "value",
        "partition",
        "offset",
        F.unix_millis(F.col("timestamp")).alias(KAFKA_MS),
    )
    naive = ingested_at.astimezone(dt.UTC).replace(tzinfo=None)
    return kafka.mapInArrow(parse_arrow(topic, ingest_batch, naive), PARSED_SCHEMA)


def quarantine_rows(parsed: DataFrame) -> DataFrame:
    """The rejected lines of a parsed batch as ``quarantine_events`` rows."""
    return parsed.where(F.col("parse_status") == "rejected").select(
        *[
            F.col("reject_reason").alias("reason") if c == "reason" else F.col(c)
            for c in QUARANTINE_EVENTS.columns
        ]
    )

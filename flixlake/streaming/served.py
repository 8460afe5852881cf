"""Landing the service's served-recommendation records (Kafka, JSON) in ``served_recommendations``.

A second streaming query of the speed-layer job reads the served topic and, per micro-batch,
validates every record (:class:`~flixlake.contract.served_record.ServedRecord`) on the driver
(one answer of the service is one small record) and appends, with delta-spark, the good ones to
``served_recommendations`` and the bad ones to ``quarantine_events`` with the reason, both with
the Delta app transaction ``(served:<query>, batch id)`` — so a replayed batch writes nothing
twice, like the events query. A request id seen twice in one batch (a producer retry) is
quarantined as a duplicate; across batches, readers count distinct request ids.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError
from pyspark.sql import functions as F

from flixlake.contract.logformat import as_utc
from flixlake.contract.served_record import ServedRecord, validation_reason
from flixlake.lake.spark_io import append_once, compact_table
from flixlake.lake.store import Lake
from flixlake.lake.tables import QUARANTINE_EVENTS, SERVED_RECOMMENDATIONS
from flixlake.streaming.harness import (
    BatchReport,
    ReplayCheck,
    compact_days,
    count_reasons,
    start_query,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from flixlake.config import Settings, StreamingConfig
    from flixlake.streaming.harness import BatchReport, SpeedLayerRun


SERVED = SERVED_RECOMMENDATIONS.name
QUARANTINE = QUARANTINE_EVENTS.name
SERVED_QUERY_SUFFIX = "_served"


@dataclass(frozen=True)
class LandedBatch:
    """The two tables one micro-batch of served records becomes."""

    served: pa.Table
    quarantine: pa.Table


def land_records(
    values: Sequence[bytes | None],
    source: str,
    partitions: Sequence[int],
    offsets: Sequence[int],
    ingest_batch: str,
    ingested_at: dt.datetime,
) -> LandedBatch:
    """Validate raw served records into ``served_recommendations`` rows and quarantine rows."""
    rows: list[dict[str, object]] = []
    bad: list[dict[str, object]] = []
    seen: set[str] = set()
    for value, partition, offset in zip(values, partitions, offsets, strict=True):
        position = {"source": source, "source_partition": partition, "source_offset": offset}
        raw = (value or b"").decode("utf-8", errors="replace")
        try:
            record = ServedRecord.model_validate_json(value or b"")
        except ValidationError as exc:
            bad.append({**position, "raw": raw, "reason": validation_reason(exc)})
            continue
        if record.request_id in seen:
            bad.append({**position, "raw": raw, "reason": "duplicate"})
            continue
        seen.add(record.request_id)
        served_at = as_utc(record.time)
        rows.append(
            {
                **position,
                **record.model_dump(exclude={"time"}),
                "served_at": served_at,
                "served_date": served_at.date(),
            }
        )
    stamp = {"ingest_batch": ingest_batch, "ingested_at": ingested_at}
    return LandedBatch(
        served=pa.Table.from_pylist(
            [{**r, **stamp} for r in rows], schema=SERVED_RECOMMENDATIONS.schema
        ),
        quarantine=pa.Table.from_pylist(
            [{**r, **stamp} for r in bad], schema=QUARANTINE_EVENTS.schema
        ),
    )


class ServedLanding:
    """Driver-side processor of the served-records query (what each micro-batch writes)."""

    def __init__(
        self,
        lake: Lake,
        config: StreamingConfig,
        topic: str,
        query_name: str,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.lake = lake
        self.config = config
        self.topic = topic
        self.query_name = query_name
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.batches_since_maintenance = 0
        self.days: set[dt.date] = set()
        self.replays = ReplayCheck(lake, SERVED, self.app_id)

    tables: tuple[str, ...] = (
        SERVED,
        QUARANTINE,
    )  # what a fresh checkpoint must not find batches of

    @property
    def app_id(self) -> str:
        return f"served:{self.query_name}"

    def start(self) -> None:
        """Nothing to rebuild: landing keeps no state beyond the checkpoint and the lake."""

    def process(self, records: DataFrame, batch_id: int) -> BatchReport:
        """Write one micro-batch of Kafka source rows exactly once."""
        started = time.monotonic()
        spark = records.sparkSession
        kafka = (
            records.select(
                "value", "partition", "offset", F.unix_millis("timestamp").alias("kafka_ms")
            )
            .toArrow()
            .sort_by([("partition", "ascending"), ("offset", "ascending")])
        )
        landed = land_records(
            kafka["value"].to_pylist(),
            source=self.topic,
            partitions=kafka["partition"].to_pylist(),
            offsets=kafka["offset"].to_pylist(),
            ingest_batch=f"{self.app_id}:{batch_id}",
            ingested_at=self.clock(),
        )
        replay = self.replays.check(batch_id)  # for the report
        # quarantine first, as in the events query: a replay finds the same rejects
        if landed.quarantine.num_rows:
            append_once(
                spark.createDataFrame(landed.quarantine),
                self.lake,
                QUARANTINE,
                self.app_id,
                batch_id,
            )
        if kafka.num_rows:
            served = spark.createDataFrame(landed.served) if landed.served.num_rows else None
            if served is not None:
                append_once(served, self.lake, SERVED, self.app_id, batch_id)
        self.days.update(pc.unique(landed.served["served_date"]).to_pylist())
        self.batches_since_maintenance += 1
        if self.batches_since_maintenance >= self.config.maintenance_every_batches:
            self.maintain(spark)
        return BatchReport.committed_now(
            kafka["kafka_ms"].combine_chunks(),
            batch_id,
            started,
            events=kafka.num_rows,
            rejected=landed.quarantine.num_rows,
            written=not replay,
            rejected_by_reason=count_reasons(landed.quarantine["reason"]),
        )

    def maintain(self, spark: SparkSession) -> None:
        """Compact the small files the query wrote into the days it touched (OPTIMIZE)."""
        self.batches_since_maintenance = 0
        self.days = compact_days(
            lambda table, column, day: compact_table(spark, self.lake, table, {column: day}),
            SERVED,
            "served_date",
            self.days,
        )


def served_query_name(settings: Settings) -> str:
    """``<streaming.query_name>_served``: the served query's name, app id and checkpoint."""
    return settings.streaming.query_name + SERVED_QUERY_SUFFIX


def start_served_landing(
    spark: SparkSession,
    settings: Settings,
    lake: Lake,
    bootstrap_servers: str | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    quiet: bool = False,
) -> SpeedLayerRun:
    """Start the query landing ``serving.telemetry.served_topic`` (non-blocking)."""
    topic = settings.serving.telemetry.served_topic
    landing = ServedLanding(lake, settings.streaming, topic, served_query_name(settings))
    return start_query(spark, settings, landing, topic, bootstrap_servers, on_batch, quiet)

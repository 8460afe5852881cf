"""Landing served records: the service's own encoding in, exact rows and reasons out, once."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from flixlake.config import Settings
from flixlake.lake.store import Lake
from flixlake.serving.telemetry import encode_answer
from flixlake.streaming.served import ServedLanding, land_records

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
WHEN = dt.datetime(2026, 11, 23, 11, 59, 58, 250_000, tzinfo=dt.UTC).timestamp()


def shipped(request_id: str, user: int = 7, body: bytes = b"m1,m2,m3") -> bytes:
    """A served record exactly as the service's telemetry shipper encodes it."""
    return encode_answer(
        WHEN, user, 200, 1.234, request_id, "canary", "als-1", body, "reco-1:8082", "exp-a"
    )[2]


def land(values: list[bytes | None]) -> tuple[pa.Table, pa.Table]:
    n = len(values)
    landed = land_records(
        values,
        source="served",
        partitions=[0] * n,
        offsets=list(range(n)),
        ingest_batch="served:q:0",
        ingested_at=NOW,
    )
    return landed.served, landed.quarantine


def test_a_shipped_record_lands_with_every_field() -> None:
    served, quarantine = land([shipped("r-1")])
    assert quarantine.num_rows == 0
    (row,) = served.to_pylist()
    assert row["request_id"] == "r-1"
    assert row["user_id"] == 7
    assert row["experiment"] == "exp-a" and row["variant"] == "canary"
    assert row["model_version"] == "als-1"
    assert row["items"] == ["m1", "m2", "m3"]
    assert row["status"] == 200 and row["latency_ms"] == 1.234
    assert row["server"] == "reco-1:8082"
    assert row["served_at"] == dt.datetime(2026, 11, 23, 11, 59, 58, 250_000, tzinfo=dt.UTC)
    assert row["served_date"] == dt.date(2026, 11, 23)
    assert (row["source"], row["source_partition"], row["source_offset"]) == ("served", 0, 0)


def test_bad_records_are_quarantined_with_a_reason_and_nothing_is_lost() -> None:
    good = json.loads(shipped("r-ok"))
    values: list[bytes | None] = [
        shipped("r-ok"),
        b"not json",
        None,  # a tombstone
        json.dumps({**good, "request_id": "r-2", "user_id": -5}).encode(),
        json.dumps(
            {k: v for k, v in good.items() if k != "items"} | {"request_id": "r-3"}
        ).encode(),
        json.dumps({**good, "request_id": "r-4", "time": "yesterday"}).encode(),
        shipped("r-ok"),  # a producer retry within the batch
        shipped("r-5", body=b""),  # an empty answer is still an answer
    ]
    served, quarantine = land(values)
    assert served["request_id"].to_pylist() == ["r-ok", "r-5"]
    assert served["items"].to_pylist() == [["m1", "m2", "m3"], []]
    offsets, why = quarantine["source_offset"].to_pylist(), quarantine["reason"].to_pylist()
    reasons = dict(zip(offsets, why, strict=True))
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6]
    assert reasons[1].startswith("served_record: record: ")  # the JSON itself is broken
    assert reasons[3].startswith("served_record: user_id: ")
    assert reasons[4].startswith("served_record: items: ")
    assert reasons[5].startswith("served_record: time: ")
    assert reasons[6] == "duplicate"
    assert quarantine["raw"].to_pylist()[0] == "not json"
    assert served.num_rows + quarantine.num_rows == len(values)


def kafka_rows(spark: SparkSession, table: pa.Table) -> DataFrame:
    """Rows as Spark's Kafka source gives them to a micro-batch."""
    return spark.createDataFrame(table.append_column("topic", pa.array(["served"] * len(table))))


def test_a_replayed_batch_writes_nothing_twice(
    spark: SparkSession, settings: Settings, lake: Lake
) -> None:
    landing = ServedLanding(lake, settings.streaming, "served", "q_served", clock=lambda: NOW)
    records = pa.table(
        {
            "partition": pa.array([1, 0, 0], pa.int32()),
            "offset": pa.array([0, 1, 0], pa.int64()),
            "timestamp": pa.array([NOW, NOW, NOW], pa.timestamp("us", tz="UTC")),
            "value": [shipped("r-b"), b"{}", shipped("r-a")],
        }
    )
    first = landing.process(kafka_rows(spark, records), batch_id=0)
    again = landing.process(kafka_rows(spark, records), batch_id=0)  # replayed after a crash
    assert first.written and not again.written
    assert (first.events, first.rejected) == (3, 1)
    rows = lake.read("served_recommendations").sort_by("source_partition")
    assert rows["request_id"].to_pylist() == ["r-a", "r-b"]
    assert rows["ingest_batch"].to_pylist() == ["served:q_served:0"] * 2
    assert lake.read("quarantine_events")["source_offset"].to_pylist() == [1]


def test_a_batch_replayed_after_a_crash_between_its_two_commits_completes_once(
    spark: SparkSession, settings: Settings, lake: Lake
) -> None:
    landing = ServedLanding(lake, settings.streaming, "served", "q_served", clock=lambda: NOW)
    records = pa.table(
        {
            "partition": pa.array([0, 0], pa.int32()),
            "offset": pa.array([0, 1], pa.int64()),
            "timestamp": pa.array([NOW, NOW], pa.timestamp("us", tz="UTC")),
            "value": [shipped("r-a"), b"oops"],
        }
    )
    # the first attempt died after committing the quarantine, before served_recommendations
    first = land(records["value"].to_pylist())
    lake.append("quarantine_events", first[1], landing.app_id, 3)
    replay = landing.process(kafka_rows(spark, records), batch_id=3)
    assert replay.written
    assert lake.read("served_recommendations")["request_id"].to_pylist() == ["r-a"]
    assert lake.read("quarantine_events")["raw"].to_pylist() == ["oops"]

"""The speed layer's executor-side parsing: the one parser's verdict per line, duplicates within
a Kafka partition's part of the micro-batch, every column a bronze row needs."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from flixlake.streaming.parse import KAFKA_MS, PARSED_SCHEMA, parse_records, quarantine_rows

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
T = "2026-11-22T08:54:03"
VALID = [
    f"{T},42,GET /data/m/the+matrix+1999/17.mpg",
    f"{T}.5,42,GET /data/m/the+matrix+1999/0.mpg",  # fractions of 1, 6 and 9 digits
    f"{T}.123456,7,GET /rate/heat+1995=4",
    f"{T}.123456789,7,GET /rate/heat+1995=1",
    f"{T},007,GET /rate/heat+1995=5",  # leading zeros
    f"{T},2147483647,GET /data/m/x/10000.mpg",  # the largest user id and minute
    f"{T},3,GET /data/m/x/-0.mpg",
    f"{T},9,recommendation request s1:8082, status 200, result: heat+1995, up+2009, 231 ms",
    f"{T},9,recommendation request s1, status 504, result: , 800 ms",  # nothing served
    f"{T},9,recommendation request s1, status 200, result: a,  b ,c, 12.5ms",
    "2024-02-29T23:59:59,5,GET /data/m/leap+day/1.mpg",
    f"{T},11,GET /data/m/o'neil+(2001)!&x/3.mpg",
]
INVALID: list[tuple[str | bytes | None, str]] = [
    (b"\xff\xfe1,1,GET /rate/a=3", "invalid_utf8"),
    (None, "empty"),  # a tombstone
    ("", "empty"),
    ("   ", "empty"),
    ("x" * 9000, "too_long"),
    (f"{T},42", "field_count"),
    ("2026-13-45T10:00:00,1,GET /data/m/a/1.mpg", "bad_time"),
    ("2026-02-29T10:00:00,1,GET /data/m/a/1.mpg", "bad_time"),  # no such day
    (f"{T[:11]}24:00:00,1,GET /data/m/a/1.mpg", "bad_time"),
    (f"{T},abc,GET /data/m/a/1.mpg", "bad_user"),
    (f"{T},0,GET /data/m/a/1.mpg", "bad_user"),
    (f"{T},2147483648,GET /data/m/a/1.mpg", "bad_user"),
    (f"{T},1,POST /x/1", "unknown_verb"),
    (f"{T},1,GET /data/m/#bad/1.mpg", "bad_movie"),
    (f"{T},1,GET /data/m/a/-1.mpg", "bad_minute"),
    (f"{T},1,GET /data/m/a/10001.mpg", "bad_minute"),
    (f"{T},1,GET /rate/a=7", "bad_rating"),
    (f"{T},1,recommendation request s1, status 2000, result: a, 5 ms", "bad_reco"),
    (f"{T},1,recommendation request s1, status 200, result: a, b#c, 5 ms", "bad_reco"),
    (f"{T},1,GET /data/m/a/1.mpg\x00", "invalid_utf8"),
]


def kafka_rows(
    spark: SparkSession, values: list[str | bytes | None], partitions: int = 3
) -> DataFrame:
    """Lines as Spark's Kafka source gives them, round-robin over ``partitions``.

    As the source does, one Spark partition holds one Kafka partition's records in offset order.
    """
    encoded = [v.encode() if isinstance(v, str) else v for v in values]
    n = len(encoded)
    table = pa.table(
        {
            "value": pa.array(encoded, pa.binary()),
            "partition": pa.array([i % partitions for i in range(n)], pa.int32()),
            "offset": pa.array([i // partitions for i in range(n)], pa.int64()),
            "timestamp": pa.array([NOW] * n, pa.timestamp("us", tz="UTC")),
        }
    )
    rows = table.to_pylist()
    by_partition = {p: [r for r in rows if r["partition"] == p] for p in range(partitions)}
    spread = spark.sparkContext.parallelize(range(partitions), partitions)
    schema = spark.createDataFrame(table.slice(0, 0)).schema
    return spark.createDataFrame(spread.flatMap(lambda p: by_partition[p]), schema)


def parsed_rows(spark: SparkSession, values: list[str | bytes | None]) -> dict[tuple, dict]:
    df = parse_records(kafka_rows(spark, values), "movielog", "stream:q:0", NOW)
    assert df.schema == PARSED_SCHEMA
    return {(r["source_partition"], r["source_offset"]): r.asDict() for r in df.collect()}


def test_each_line_gets_the_one_parsers_verdict(spark: SparkSession) -> None:
    lines: list[str | bytes | None] = [*VALID, *(line for line, _ in INVALID)]
    got = parsed_rows(spark, lines)
    assert len(got) == len(lines)
    for index, line in enumerate(lines):
        row = got[(index % 3, index // 3)]
        assert row["source"] == "movielog" and row[KAFKA_MS] == int(NOW.timestamp() * 1000)
        if index < len(VALID):
            assert (row["parse_status"], row["reject_reason"], row["raw"]) == ("ok", None, line)
            assert row["event_date"] == row["event_time"].date()
        else:
            assert row["parse_status"] == "rejected"
            assert row["reject_reason"] == INVALID[index - len(VALID)][1], line
    fraction = got[(1, 0)]  # VALID[1]: half a second
    assert fraction["event_time"] == dt.datetime(2026, 11, 22, 8, 54, 3, 500_000)
    reco = got[(1, 2)]  # VALID[7]
    assert (reco["event_type"], reco["reco_server"], reco["reco_status"]) == (
        "reco",
        "s1:8082",
        200,
    )
    assert reco["reco_results"] == ["heat+1995", "up+2009"]
    assert reco["reco_response_ms"] == 231.0


def test_identical_lines_of_one_partition_keep_the_first(spark: SparkSession) -> None:
    watch = VALID[0]
    lines: list[str | bytes | None] = [watch, "b", watch, watch, VALID[2], VALID[2], watch]
    lines += [VALID[2], "x" * 9000, watch, "x" * 9000]  # an identical reject stays what it was
    # partition 0: watch at offsets 0, 1, 2 and 3; partition 1: VALID[2] at 1 and 2, "x"*9000 at 3
    # partition 2: watch at 0, VALID[2] at 1 (other partitions' lines: kept; silver removes them)
    got = parsed_rows(spark, lines)
    duplicates = {pos for pos, r in got.items() if r["reject_reason"] == "duplicate"}
    assert duplicates == {(0, 1), (0, 2), (0, 3), (1, 2)}
    assert got[(0, 0)]["parse_status"] == "ok" and got[(1, 1)]["parse_status"] == "ok"
    assert got[(2, 1)]["parse_status"] == "ok"  # the same line as (1, 1), on another partition
    dup = got[(0, 2)]
    assert (dup["event_type"], dup["user_id"], dup["event_time"]) == (None, None, None)
    assert dup["event_date"] == dt.date(2026, 11, 22)  # its event's day, as file ingest dates it
    assert {got[(1, 3)]["reject_reason"], got[(2, 2)]["reject_reason"]} == {"too_long"}


def test_quarantine_rows_are_the_rejects_with_their_reason(spark: SparkSession) -> None:
    lines: list[str | bytes | None] = [VALID[0], "", VALID[1], VALID[0]]
    parsed = parse_records(kafka_rows(spark, lines), "t", "q:1", NOW)
    quarantine = {
        (r.source_partition, r.source_offset, r.reason) for r in quarantine_rows(parsed).collect()
    }
    assert quarantine == {(1, 0, "empty"), (0, 1, "duplicate")}

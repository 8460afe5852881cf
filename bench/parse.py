"""Benchmark: how the speed layer parses on the executors — the Python parser via mapInArrow, or
Spark SQL expressions in the JVM — on the same Kafka-shaped rows, in the same Spark.

    PYSPARK_PYTHON=.venv/bin/python .venv/bin/python bench/parse.py [--lines 400000] [--rounds 3]

1. ``mapInArrow``: :func:`flixlake.streaming.parse.parse_arrow`, i.e. the one parser
   (:func:`flixlake.lake.bronze.parse_batch` -> :func:`flixlake.contract.logformat.parse_line`)
   in the Python workers, Arrow in and out (what the speed layer runs);
2. JVM expressions: a prototype of the same grammar as Spark SQL expressions (the regexes of
   ``logformat``, ``try_to_timestamp``, a CASE cascade for the reject reason), written here only
   to measure what the JVM path would cost. It is NOT the parser: it skips details the Python
   parser has (Unicode whitespace and digits, exact replacement of invalid UTF-8, ...).

Both write every parsed column to Spark's ``noop`` sink (the full parse runs, nothing is stored);
lines/s = lines / wall time of that action, best of ``--rounds`` after a warm-up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from flixlake.config import load_settings
from flixlake.contract import logformat
from flixlake.ops.spark import build_spark_session
from flixlake.streaming.parse import KAFKA_MS, PARSED_SCHEMA, parse_arrow

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream import machine, synthetic_lines


def kafka_rows(spark: SparkSession, lines: list[str], partitions: int) -> DataFrame:
    """The lines as the Kafka source gives them (value, partition, offset, timestamp), cached."""
    n = len(lines)
    now = dt.datetime.now(dt.UTC)
    table = pa.table(
        {
            "value": pa.array([line.encode() for line in lines], pa.binary()),
            "partition": pa.array([i % partitions for i in range(n)], pa.int32()),
            "offset": pa.array([i // partitions for i in range(n)], pa.int64()),
            "timestamp": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        }
    )
    df = spark.createDataFrame(table).repartition(partitions, "partition").cache()
    df.count()
    return df


def python_parse(records: DataFrame) -> DataFrame:
    """What the speed layer runs: the one parser in the Python workers."""
    kafka = records.select(
        "value", "partition", "offset", F.unix_millis("timestamp").alias(KAFKA_MS)
    )
    return kafka.mapInArrow(
        parse_arrow("bench", "bench:0", dt.datetime(2026, 11, 22)), PARSED_SCHEMA
    )


def _full(pattern: str) -> str:
    return f"^(?:{pattern})$"


def jvm_parse(records: DataFrame) -> DataFrame:
    """A Spark SQL prototype of the same grammar (for the measurement only)."""
    movie = logformat._MOVIE
    line = F.regexp_replace(F.col("value").cast("string"), r"[\r\n]+$", "")
    head = F.regexp_extract(line, r"^([^,]*),([^,]*),(.*)$", 1)
    user_text = F.regexp_extract(line, r"^([^,]*),([^,]*),(.*)$", 2)
    request = F.regexp_extract(line, r"^([^,]*),([^,]*),(.*)$", 3)
    event_time = F.expr("try_to_timestamp(t, \"yyyy-MM-dd'T'HH:mm:ss[.SSSSSS]\")")
    watch = _full(rf"GET /data/m/({movie})/(-?\d{{1,9}})\.mpg")
    rate = _full(rf"GET /rate/({movie})=(-?\d{{1,9}})")
    reco = _full(
        r"recommendation request ([^,\s]+), status (\d{3}), result: (.*), (\d+(?:\.\d+)?) ?ms"
    )
    df = records.select(
        F.col("partition").alias("source_partition"),
        F.col("offset").alias("source_offset"),
        F.is_valid_utf8("value").alias("utf8"),
        line.alias("raw"),
        head.alias("t"),
        user_text.alias("u"),
        request.alias("req"),
    ).withColumn("event_time", event_time)
    user = F.col("u").try_cast("bigint")
    results = F.transform(F.split(F.regexp_extract("req", reco, 3), ","), lambda x: F.trim(x))
    kind: Column = (
        F.when(F.col("req").rlike(watch), "watch")
        .when(F.col("req").rlike(rate), "rate")
        .when(F.col("req").rlike(reco), "reco")
    )
    minute = F.regexp_extract("req", watch, 2).try_cast("int")
    rating = F.regexp_extract("req", rate, 2).try_cast("int")
    reason = (
        F.when(~F.col("utf8"), "invalid_utf8")
        .when(F.trim("raw") == "", "empty")
        .when(F.length("raw") > logformat.MAX_LINE_CHARS, "too_long")
        .when(F.col("t") == "", "field_count")
        .when(F.col("event_time").isNull(), "bad_time")
        .when(~F.col("u").rlike(r"^\d{1,10}$") | (user <= 0), "bad_user")
        .when(kind.isNull(), "unknown_verb")
        .when((kind == "watch") & ~minute.between(0, logformat.MAX_MINUTE), "bad_minute")
        .when((kind == "rate") & ~rating.between(1, 5), "bad_rating")
        .when((kind == "reco") & ~F.forall(results, lambda x: x.rlike(_full(movie))), "bad_reco")
    )
    return df.select(
        "source_partition",
        "source_offset",
        "raw",
        F.when(reason.isNull(), "ok").otherwise("rejected").alias("parse_status"),
        reason.alias("reject_reason"),
        kind.alias("event_type"),
        "event_time",
        user.alias("user_id"),
        F.coalesce(
            F.nullif(F.regexp_extract("req", watch, 1), F.lit("")),
            F.nullif(F.regexp_extract("req", rate, 1), F.lit("")),
        ).alias("movie_id"),
        minute.alias("minute"),
        rating.alias("rating"),
        F.regexp_extract("req", reco, 1).alias("reco_server"),
        F.regexp_extract("req", reco, 2).alias("reco_status"),
        results.alias("reco_results"),
        F.regexp_extract("req", reco, 4).alias("reco_response_ms"),
        F.to_date("event_time").alias("event_date"),
    )


def timed(df: DataFrame) -> float:
    started = time.perf_counter()
    df.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4, help="Kafka partitions")
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="flixlake-bench-parse-"))
    settings = load_settings("local", home=home)
    print(f"machine: {machine()}")
    spark = build_spark_session(settings, app_name="flixlake-bench-parse")
    try:
        records = kafka_rows(spark, synthetic_lines(args.lines, seed=3), args.partitions)
        paths = {"mapInArrow + Python parser": python_parse, "JVM expressions": jvm_parse}
        best = {}
        for name, build in paths.items():
            timed(build(records))  # warm-up: Python workers, JIT
            best[name] = min(timed(build(records)) for _ in range(args.rounds))
            print(f"{name:30} {args.lines / best[name]:>12,.0f} lines/s", flush=True)
    finally:
        spark.stop()
    py, jvm = best["mapInArrow + Python parser"], best["JVM expressions"]
    print(f"machine at end: {machine()}")
    print(f"JVM expressions / mapInArrow: {py / jvm:.2f}x ({spark_cores()} cores)")
    return 0


def spark_cores() -> str:
    return str(os.cpu_count())


if __name__ == "__main__":
    sys.exit(main())

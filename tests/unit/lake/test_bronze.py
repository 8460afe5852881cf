"""Every line becomes one bronze row; rejects (and in-batch duplicates) also land in quarantine."""

from __future__ import annotations

import datetime as dt

from flixlake.lake.bronze import parse_batch
from flixlake.lake.tables import BRONZE_EVENTS, QUARANTINE_EVENTS

NOW = dt.datetime(2026, 11, 23, 1, 0, 0)
GOOD = "2026-11-22T08:54:03,42,GET /data/m/heat+1995/3.mpg"


def test_every_line_in_bronze_and_only_rejects_in_quarantine() -> None:
    lines = [GOOD, "garbage", GOOD, b"\xff\xfe", "2026-11-21T10:00:00,1,GET /rate/up+2009=5"]
    batch = parse_batch(
        lines, source="t", offsets=[10, 11, 12, 13, 14], ingest_batch="b1", ingested_at=NOW
    )
    assert batch.bronze.schema == BRONZE_EVENTS.schema
    assert batch.quarantine.schema == QUARANTINE_EVENTS.schema
    assert batch.bronze["source_offset"].to_pylist() == [10, 11, 12, 13, 14]
    assert batch.bronze["parse_status"].to_pylist() == [
        "ok",
        "rejected",
        "rejected",
        "rejected",
        "ok",
    ]
    assert batch.quarantine["source_offset"].to_pylist() == [11, 12, 13]
    assert batch.quarantine["reason"].to_pylist() == ["field_count", "duplicate", "invalid_utf8"]
    # parsed rows (the duplicate too) keep their event day; unparseable ones the day of the
    # parsed line before them, not the ingest day (2026-11-23)
    assert batch.bronze["event_date"].to_pylist() == [
        dt.date(2026, 11, 22),
        dt.date(2026, 11, 22),
        dt.date(2026, 11, 22),
        dt.date(2026, 11, 22),
        dt.date(2026, 11, 21),
    ]


def test_unparseable_lines_take_the_nearest_parsed_day_else_the_ingest_day() -> None:
    leading = parse_batch(
        ["garbage", "", GOOD, "more garbage"], "t", range(4), "b", ingested_at=NOW
    )
    assert leading.bronze["event_date"].to_pylist() == [dt.date(2026, 11, 22)] * 4
    only_bad = parse_batch(["garbage", b"\xff"], "t", range(2), "b", ingested_at=NOW)
    assert only_bad.bronze["event_date"].to_pylist() == [NOW.date()] * 2


def test_kafka_partitions_are_kept_per_line() -> None:
    batch = parse_batch(
        [GOOD, "x"],
        source="movielog",
        offsets=[5, 5],
        ingest_batch="b",
        ingested_at=NOW,
        partitions=[0, 1],
    )
    assert batch.bronze["source_partition"].to_pylist() == [0, 1]
    assert batch.quarantine["source_partition"].to_pylist() == [1]

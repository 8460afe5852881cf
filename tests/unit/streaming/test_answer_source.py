"""Each answer's source (batch, batch_filtered, batch_filled, fallback) travels from the service's
telemetry record to ``served_recommendations``; a table from before the column gets it added."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
from deltalake import write_deltalake

from flixlake.lake.store import Lake
from flixlake.lake.tables import SERVED_RECOMMENDATIONS
from flixlake.serving.telemetry import messages
from flixlake.streaming.served import land_records

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
LINE = b"1800000000.0\t7\t200\t1.5\tr-%d\tcontrol\tals-1\t%s\tm1,m2"


def land(values: list[bytes]) -> tuple[pa.Table, pa.Table]:
    landed = land_records(values, "served", [0] * len(values), list(range(len(values))), "b", NOW)
    return landed.served, landed.quarantine


def test_the_source_of_each_answer_lands_beside_the_kafka_source() -> None:
    records = [
        messages(LINE % (i, source.encode()), "s", "default")[2]
        for i, source in enumerate(["batch", "batch_filtered", "batch_filled", "fallback"])
    ]
    assert json.loads(records[3])["answer_source"] == "fallback"
    served, quarantine = land(records)
    assert quarantine.num_rows == 0
    assert served["answer_source"].to_pylist() == [
        "batch",
        "batch_filtered",
        "batch_filled",
        "fallback",
    ]
    assert served["source"].to_pylist() == ["served"] * 4  # the topic, as before
    assert served["items"].to_pylist()[0] == ["m1", "m2"]


def test_a_record_without_a_source_lands_with_null_and_a_bad_one_is_quarantined() -> None:
    old = messages(b"1800000000.0\t7\t200\t1.5\tr-1\tcontrol\tals-1\tm1,m2", "s", "default")[2]
    assert "answer_source" not in json.loads(old)
    bad = json.dumps({**json.loads(old), "request_id": "r-2", "answer_source": "magic"}).encode()
    served, quarantine = land([old, bad])
    assert served["answer_source"].to_pylist() == [None]
    assert served["items"].to_pylist() == [["m1", "m2"]]
    (reason,) = quarantine["reason"].to_pylist()
    assert reason.startswith("served_record: answer_source:")


def test_a_served_table_from_before_the_column_gets_it_and_keeps_its_rows(
    lake: Lake,
) -> None:
    old_schema = pa.schema([f for f in SERVED_RECOMMENDATIONS.schema if f.name != "answer_source"])
    old = messages(b"1800000000.0\t7\t200\t1.5\tr-1\tcontrol\tals-1\tm1", "s", "default")[2]
    rows, _ = land([old])
    write_deltalake(  # as an older flixlake wrote it
        lake.path("served_recommendations"),
        rows.drop_columns(["answer_source"]).cast(old_schema),
        partition_by=["served_date"],
    )

    new, _ = land([messages(LINE % (2, b"batch"), "s", "default")[2]])
    lake.append("served_recommendations", new)  # evolves the table, then appends
    table = lake.read("served_recommendations").sort_by("request_id")
    assert table["request_id"].to_pylist() == ["r-1", "r-2"]
    assert table["answer_source"].to_pylist() == [None, "batch"]

"""Turn raw lines into bronze and quarantine rows: shared by file ingest and the stream.

Every line becomes one bronze row (``parse_status`` ok or rejected); every rejected line also
becomes one quarantine row with its reason. A line identical to an earlier line of the same
batch is a duplicate and is rejected as such.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from flixlake.contract.logformat import ParsedEvent, RejectReason, parse_line
from flixlake.lake.tables import BRONZE_EVENTS, QUARANTINE_EVENTS


@dataclass(frozen=True)
class ParsedBatch:
    bronze: pa.Table
    quarantine: pa.Table

    @property
    def n_lines(self) -> int:
        return self.bronze.num_rows

    @property
    def n_rejected(self) -> int:
        return self.quarantine.num_rows


def parse_batch(
    lines: Sequence[str | bytes],
    source: str,
    offsets: Sequence[int],
    ingest_batch: str,
    ingested_at: dt.datetime,
    partitions: Sequence[int] | int = 0,
) -> ParsedBatch:
    """Parse ``lines`` (one per source offset) into bronze and quarantine Arrow tables."""
    if len(lines) != len(offsets):
        raise ValueError("lines and offsets differ in length")
    parts = [partitions] * len(lines) if isinstance(partitions, int) else list(partitions)
    seen: set[str] = set()
    events: list[ParsedEvent] = []
    for line in lines:
        event = parse_line(line)
        if event.ok:
            if event.raw in seen:
                event = ParsedEvent(raw=event.raw, reject_reason=RejectReason.DUPLICATE)
            else:
                seen.add(event.raw)
        events.append(event)
    ingest_day = ingested_at.date()
    ok = [e.ok for e in events]
    bronze = pa.table(
        {
            "source": pa.array([source] * len(events), pa.string()),
            "source_partition": pa.array(parts, pa.int32()),
            "source_offset": pa.array(offsets, pa.int64()),
            "raw": pa.array([e.raw for e in events], pa.string()),
            "parse_status": pa.array(["ok" if o else "rejected" for o in ok], pa.string()),
            "reject_reason": pa.array(
                [None if e.reject_reason is None else e.reject_reason.value for e in events],
                pa.string(),
            ),
            "event_type": pa.array(
                [None if e.event_type is None else e.event_type.value for e in events], pa.string()
            ),
            "event_time": pa.array(
                [e.event_time for e in events], BRONZE_EVENTS.schema.field("event_time").type
            ),
            "user_id": pa.array([e.user_id for e in events], pa.int64()),
            "movie_id": pa.array([e.movie_id for e in events], pa.string()),
            "minute": pa.array([e.minute for e in events], pa.int32()),
            "rating": pa.array([e.rating for e in events], pa.int32()),
            "reco_server": pa.array([e.reco_server for e in events], pa.string()),
            "reco_status": pa.array([e.reco_status for e in events], pa.int32()),
            "reco_results": pa.array(
                [None if e.reco_results is None else list(e.reco_results) for e in events],
                pa.list_(pa.string()),
            ),
            "reco_response_ms": pa.array([e.reco_response_ms for e in events], pa.float64()),
            "ingest_batch": pa.array([ingest_batch] * len(events), pa.string()),
            "ingested_at": pa.array(
                [ingested_at] * len(events), BRONZE_EVENTS.schema.field("ingested_at").type
            ),
            "event_date": pa.array(
                [e.event_time.date() if e.ok and e.event_time else ingest_day for e in events],
                pa.date32(),
            ),
        },
        schema=BRONZE_EVENTS.schema,
    )
    rejects = bronze.take(pa.array([i for i, o in enumerate(ok) if not o], pa.int64()))
    quarantine = pa.table(
        {
            "source": rejects["source"],
            "source_partition": rejects["source_partition"],
            "source_offset": rejects["source_offset"],
            "raw": rejects["raw"],
            "reason": rejects["reject_reason"],
            "ingest_batch": rejects["ingest_batch"],
            "ingested_at": rejects["ingested_at"],
        },
        schema=QUARANTINE_EVENTS.schema,
    )
    return ParsedBatch(bronze=bronze, quarantine=quarantine)

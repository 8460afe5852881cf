"""Turn raw lines into bronze and quarantine rows: shared by file ingest and the stream.

Every line becomes one bronze row (``parse_status`` ok or rejected); every rejected line also
becomes one quarantine row with its reason. A line identical to an earlier line of the same
batch is a duplicate and is rejected as such.

A row's ``event_date`` (bronze's partition) is the day of its event, a duplicate's too. A line
that did not parse has no event time: it takes the day of the nearest parsed line before it in
its batch (after it, when none is before), and the ingest day only when no line of the batch
parsed. Logs and topics are in time order, so a bad line is counted on the day it belongs to,
also when a day's file is ingested the morning after (the quality gate judges days).
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


def _event_dates(own: Sequence[dt.date | None], ingest_day: dt.date) -> list[dt.date]:
    """Each line's own event day, or its nearest earlier (else later) dated line's in the batch."""
    known = [d for d in own if d is not None]
    last = known[0] if known else ingest_day
    dates: list[dt.date] = []
    for day in own:
        last = day if day is not None else last
        dates.append(last)
    return dates


def parse_batch(
    lines: Sequence[str | bytes],
    source: str,
    offsets: Sequence[int],
    ingest_batch: str,
    ingested_at: dt.datetime,
    partitions: Sequence[int] | int = 0,
    seen: set[str] | None = None,
) -> ParsedBatch:
    """Parse ``lines`` (one per source offset) into bronze and quarantine Arrow tables.

    ``seen``: the valid lines of earlier parts of the same batch (a caller parsing one batch in
    parts passes the same set each time, and it grows); a line already in it is a duplicate.
    """
    if len(lines) != len(offsets):
        raise ValueError("lines and offsets differ in length")
    parts = [partitions] * len(lines) if isinstance(partitions, int) else list(partitions)
    seen = set() if seen is None else seen
    events: list[ParsedEvent] = []
    own_dates: list[dt.date | None] = []
    for line in lines:
        event = parse_line(line)
        own_dates.append(event.event_time.date() if event.ok and event.event_time else None)
        if event.ok:
            if event.raw in seen:
                event = ParsedEvent(raw=event.raw, reject_reason=RejectReason.DUPLICATE)
            else:
                seen.add(event.raw)
        events.append(event)
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
            "event_date": pa.array(_event_dates(own_dates, ingested_at.date()), pa.date32()),
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

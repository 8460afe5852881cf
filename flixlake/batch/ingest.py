"""File ingest: log files into ``bronze_events``/``quarantine_events`` exactly once.

A file is identified by the SHA-256 of its bytes and cut into chunks of ``chunk_lines`` lines;
chunk *i* is committed to each table with the Delta app transaction ``(ingest:<sha>, i)``. So
re-ingesting a file adds nothing, and a crash mid-file resumes at the first missing chunk.
Metadata files written by ``flixlake generate`` (``movies.jsonl``, ``users.jsonl``) are merged
into the ``movies`` and ``users`` tables.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from flixlake.batch.catalog import upsert_movies
from flixlake.lake.bronze import parse_batch
from flixlake.lake.store import Lake
from flixlake.lake.tables import USERS

LOG_SUFFIXES = (".log", ".txt")
MOVIES_FILE = "movies.jsonl"
USERS_FILE = "users.jsonl"


@dataclass
class IngestSummary:
    files: int = 0
    lines: int = 0
    parsed: int = 0
    rejected: int = 0
    skipped_chunks: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    movies_added: int = 0
    users_merged: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "lines": self.lines,
            "parsed": self.parsed,
            "rejected": self.rejected,
            "skipped_chunks": self.skipped_chunks,
            "reasons": dict(self.reasons),
            "movies_added": self.movies_added,
            "users_merged": self.users_merged,
        }


def expand_paths(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Split inputs into log files and metadata files; directories are searched (sorted)."""
    logs: list[Path] = []
    meta: list[Path] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no such file or directory: {path}")
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for p in candidates:
            if p.name in (MOVIES_FILE, USERS_FILE):
                meta.append(p)
            elif p.suffix in LOG_SUFFIXES or not path.is_dir():
                logs.append(p)
    return logs, meta


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def iter_line_chunks(path: Path, chunk_lines: int) -> Iterator[tuple[int, list[bytes]]]:
    """Yield ``(first_line_number, lines)`` chunks; a final line without newline counts."""
    chunk: list[bytes] = []
    start = 0
    with path.open("rb") as fh:
        for number, line in enumerate(fh):
            if not chunk:
                start = number
            chunk.append(line.rstrip(b"\n"))
            if len(chunk) >= chunk_lines:
                yield start, chunk
                chunk = []
    if chunk:
        yield start, chunk


def ingest_log_file(
    lake: Lake,
    path: Path,
    chunk_lines: int,
    summary: IngestSummary,
    ingested_at: dt.datetime | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> None:
    """Ingest one log file chunk by chunk, each chunk exactly once."""
    sha = file_sha256(path)
    app_id = f"ingest:{sha}"
    source = str(path.resolve())
    summary.files += 1
    for index, (start, lines) in enumerate(iter_line_chunks(path, chunk_lines)):
        if lake.applied("bronze_events", app_id, index) and lake.applied(
            "quarantine_events", app_id, index
        ):
            summary.skipped_chunks += 1
            if on_chunk:
                on_chunk(len(lines))
            continue
        batch = parse_batch(
            lines,
            source=source,
            offsets=range(start, start + len(lines)),
            ingest_batch=f"{app_id[:23]}:{index}",
            ingested_at=ingested_at or dt.datetime.now(dt.UTC).replace(tzinfo=None),
        )
        # quarantine first: if we crash in between, the retry still writes bronze once.
        lake.append("quarantine_events", batch.quarantine, app_id=app_id, txn_version=index)
        lake.append("bronze_events", batch.bronze, app_id=app_id, txn_version=index)
        summary.lines += batch.n_lines
        summary.rejected += batch.n_rejected
        summary.parsed += batch.n_lines - batch.n_rejected
        summary.reasons.update(batch.quarantine["reason"].to_pylist())
        if on_chunk:
            on_chunk(len(lines))


def ingest_metadata(lake: Lake, path: Path, summary: IngestSummary) -> None:
    """Merge ``movies.jsonl`` / ``users.jsonl`` rows into their tables."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if path.name == MOVIES_FILE:
        for row in rows:
            if row.get("first_seen"):
                row["first_seen"] = dt.date.fromisoformat(row["first_seen"])
        summary.movies_added += upsert_movies(lake, [r["movie_id"] for r in rows], rows)
    else:
        incoming = pa.Table.from_pylist(rows, schema=USERS.schema)
        if lake.exists("users"):  # only rows that differ: a re-ingest must not bump the version
            known = {tuple(r.values()) for r in lake.read("users").to_pylist()}
            keep = [i for i, r in enumerate(incoming.to_pylist()) if tuple(r.values()) not in known]
            incoming = incoming.take(pa.array(keep, pa.int64()))
        if incoming.num_rows:
            lake.upsert("users", incoming)
        summary.users_merged += incoming.num_rows


def ingest_paths(
    lake: Lake,
    paths: list[Path],
    chunk_lines: int = 500_000,
    ingested_at: dt.datetime | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> IngestSummary:
    """Ingest log and metadata files; safe to repeat (already-ingested chunks are skipped)."""
    logs, meta = expand_paths(paths)
    summary = IngestSummary()
    for path in meta:
        ingest_metadata(lake, path, summary)
    for path in logs:
        ingest_log_file(lake, path, chunk_lines, summary, ingested_at, on_chunk)
    return summary

"""File ingest: log files into ``bronze_events``/``quarantine_events``, each line exactly once.

A log file is identified by its path and ingested by byte range: the lake records how many of
its bytes are in bronze, so a file that grew (a capture appended to with ``>>``) ingests only its
new lines, and one that was changed in place is refused. Only complete lines are taken: a last
line without its newline waits for the next ingest (``pending_bytes`` in the summary).

The record lives in bronze's Delta log, in the same commit as the rows: two app transactions
per file, whatever its size or the number of ingests, so the log's transaction set stays small:

- ``ingest:<path key>`` at version *n*: the file's first *n* bytes are in bronze;
- ``ingest-prefix:<path key>`` at version *f*: what they were, *f* being the first 56 bits of
  their SHA-256 (:func:`prefix_fingerprint`; Delta only stores the latest version per app id).

Before ingesting, the first *n* bytes are hashed again; if the fingerprint differs, the file
changed in place (or shrank) and :class:`ChangedLogFileError` refuses it, naming the file, before
anything is written. New lines are cut into chunks of ``chunk_lines``; a chunk's quarantine rows
are committed first (app transaction ``ingest:<path key>`` at the chunk's end byte, rows already
there skipped), then its bronze rows with both records. A crash between two commits, or
anywhere else, leaves a state the next ingest continues from: no line lost, none twice.

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
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flixlake.batch.catalog import upsert_movies
from flixlake.lake.bronze import parse_batch
from flixlake.lake.store import Lake
from flixlake.lake.tables import USERS

LOG_SUFFIXES = (".log", ".txt")
MOVIES_FILE = "movies.jsonl"
USERS_FILE = "users.jsonl"
_BLOCK = 1 << 20


class ChangedLogFileError(ValueError):
    """A log file whose already-ingested bytes changed (or that shrank): ingesting it again would
    duplicate or lose lines, so it is refused."""


@dataclass
class IngestSummary:
    files: int = 0
    lines: int = 0  # new lines ingested by this call
    parsed: int = 0
    rejected: int = 0
    already_ingested_lines: int = 0  # lines of these files that earlier ingests took
    pending_bytes: int = 0  # a last line still without its newline: taken once it is complete
    reasons: Counter[str] = field(default_factory=Counter)
    movies_added: int = 0
    users_merged: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "lines": self.lines,
            "parsed": self.parsed,
            "rejected": self.rejected,
            "already_ingested_lines": self.already_ingested_lines,
            "pending_bytes": self.pending_bytes,
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


def file_key(source: str) -> str:
    """A log file's identity in the lake's records: a hash of its absolute path."""
    return hashlib.sha256(source.encode("utf-8", errors="surrogateescape")).hexdigest()[:32]


def ingest_app_id(key: str) -> str:
    """App transaction whose version is the number of the file's bytes in the table."""
    return f"ingest:{key}"


def prefix_app_id(key: str) -> str:
    """App transaction whose version fingerprints the file's bytes ingested so far."""
    return f"ingest-prefix:{key}"


def prefix_fingerprint(prefix: Any) -> int:
    """The first 56 bits of a SHA-256 (a Delta app transaction version is a signed 64-bit int)."""
    return int.from_bytes(prefix.digest()[:7], "big")


@dataclass
class LogFileState:
    """How much of one log file the lake holds, checked against the file's bytes."""

    path: Path
    source: str  # absolute path, the ``source`` column
    key: str
    ingested_bytes: int  # bytes [0, ingested_bytes) are in bronze
    ingested_lines: int  # ... which are this many lines (the next line's number)
    prefix: Any  # hashlib SHA-256 of those bytes, to continue over the new ones


def check_log_file(lake: Lake, path: Path) -> LogFileState:
    """Read what the lake holds of ``path`` and verify those bytes are still the file's.

    Raises :class:`ChangedLogFileError` when the file shrank or its ingested bytes differ.
    """
    source = str(path.resolve())
    key = file_key(source)
    done = lake.txn_version("bronze_events", ingest_app_id(key)) or 0
    prefix = hashlib.sha256()
    lines = 0
    if done:
        size = path.stat().st_size
        if size < done:
            raise ChangedLogFileError(
                f"{path}: the lake already holds its first {done:,} bytes, but it now has "
                f"{size:,}: it was truncated or replaced. Refusing it; to ingest a new file "
                "of that name, give it a new name (the path is its identity)."
            )
        with path.open("rb") as fh:
            remaining = done
            while remaining:
                block = fh.read(min(_BLOCK, remaining))
                prefix.update(block)
                lines += block.count(b"\n")
                remaining -= len(block)
        recorded = lake.txn_version("bronze_events", prefix_app_id(key))
        if recorded != prefix_fingerprint(prefix):
            raise ChangedLogFileError(
                f"{path}: its first {done:,} bytes ({lines:,} lines) differ from the bytes "
                "already ingested from it: the file was changed in place. Refusing it, since "
                "its lines in bronze no longer match; to ingest it as a new file, give it a "
                "new name (the path is its identity)."
            )
    return LogFileState(path, source, key, done, lines, prefix)


def iter_new_lines(state: LogFileState, chunk_lines: int) -> Iterator[tuple[int, list[bytes], int]]:
    """Yield ``(start byte, complete lines with their newline, end byte)`` chunks after the
    ingested bytes; a last line without its newline is left for a later ingest."""
    chunk: list[bytes] = []
    position = start = state.ingested_bytes
    with state.path.open("rb") as fh:
        fh.seek(position)
        for line in fh:
            if not line.endswith(b"\n"):
                break  # a partial line: its writer has not finished it
            chunk.append(line)
            position += len(line)
            if len(chunk) >= chunk_lines:
                yield start, chunk, position
                chunk, start = [], position
    if chunk:
        yield start, chunk, position


def ingest_log_file(
    lake: Lake,
    state: LogFileState,
    chunk_lines: int,
    summary: IngestSummary,
    ingested_at: dt.datetime | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> None:
    """Ingest the lines ``state`` says are new, chunk by chunk, each exactly once."""
    app_id = ingest_app_id(state.key)
    summary.files += 1
    summary.already_ingested_lines += state.ingested_lines
    # quarantine rows of a crashed run's chunk may be in, its bronze rows not: skip those rows
    quarantined_to = lake.txn_version("quarantine_events", app_id) or 0
    line_number = state.ingested_lines
    end = state.ingested_bytes
    for start, raw_lines, end in iter_new_lines(state, chunk_lines):
        state.prefix.update(b"".join(raw_lines))
        first = line_number
        line_number += len(raw_lines)
        batch = parse_batch(
            [line[:-1] for line in raw_lines],
            source=state.source,
            offsets=range(first, line_number),
            ingest_batch=f"{app_id[:23]}@{start}",
            ingested_at=ingested_at or dt.datetime.now(dt.UTC).replace(tzinfo=None),
        )
        quarantine = batch.quarantine
        if quarantined_to > start:  # lines starting before it are already in quarantine
            skip, byte = 0, start
            while skip < len(raw_lines) and byte < quarantined_to:
                byte += len(raw_lines[skip])
                skip += 1
            quarantine = quarantine.filter(
                pc.greater_equal(quarantine["source_offset"], pa.scalar(first + skip, pa.int64()))
            )
        if quarantine.num_rows:
            lake.append("quarantine_events", quarantine, app_id=app_id, txn_version=end)
        lake.append(
            "bronze_events",
            batch.bronze,
            app_id=app_id,
            txn_version=end,
            also_record={prefix_app_id(state.key): prefix_fingerprint(state.prefix)},
        )
        summary.lines += batch.n_lines
        summary.rejected += batch.n_rejected
        summary.parsed += batch.n_lines - batch.n_rejected
        summary.reasons.update(batch.quarantine["reason"].to_pylist())
        if on_chunk:
            on_chunk(len(raw_lines))
    summary.pending_bytes += max(0, state.path.stat().st_size - end)


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
    """Ingest log and metadata files; safe to repeat (only lines not yet in bronze are added).

    Every log file is checked first: if one changed in place, :class:`ChangedLogFileError`
    names each such file and nothing is written.
    """
    logs, meta = expand_paths(paths)
    unique = list({str(p.resolve()): p for p in logs}.values())  # a file given twice, once
    states: list[LogFileState] = []
    refused: list[str] = []
    for path in unique:
        try:
            states.append(check_log_file(lake, path))
        except ChangedLogFileError as exc:
            refused.append(str(exc))
    if refused:
        raise ChangedLogFileError("\n".join(refused))
    summary = IngestSummary()
    for path in meta:
        ingest_metadata(lake, path, summary)
    for state in states:
        ingest_log_file(lake, state, chunk_lines, summary, ingested_at, on_chunk)
    return summary

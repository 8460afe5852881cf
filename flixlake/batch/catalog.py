"""The movie catalog: a stable integer index per movie-id slug (ALS needs integer ids)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flixlake.lake.store import Lake
from flixlake.lake.tables import MOVIES


def upsert_movies(
    lake: Lake, movie_ids: Iterable[str], metadata: list[dict[str, Any]] | None = None
) -> int:
    """Give every unseen slug the next free index; fill in metadata. Returns how many were new.

    Existing indices never change, so models and batch views stay valid across runs; nothing
    is written when nothing changed, so downstream steps see the same Delta version.
    """
    existing = lake.read("movies") if lake.exists("movies") else MOVIES.schema.empty_table()
    known: dict[str, dict[str, Any]] = {r["movie_id"]: r for r in existing.to_pylist()}
    next_idx = (pc.max(existing["movie_idx"]).as_py() + 1) if existing.num_rows else 0
    meta_by_id = {m["movie_id"]: m for m in metadata or []}
    changed: list[dict[str, Any]] = []
    new = 0
    for movie_id in sorted(set(movie_ids) | set(meta_by_id)):
        before = row = known.get(movie_id)
        meta = meta_by_id.get(movie_id)
        if row is None:
            row = {
                "movie_idx": next_idx,
                "movie_id": movie_id,
                "title": None,
                "year": None,
                "genres": None,
                "first_seen": None,
            }
            next_idx += 1
            new += 1
        elif meta is None:
            continue
        if meta is not None:
            row = {
                **row,
                **{k: meta.get(k, row.get(k)) for k in ("title", "year", "genres", "first_seen")},
            }
        if row != before:  # unchanged metadata writes nothing: re-ingest keeps table versions
            changed.append(row)
    if changed:
        lake.upsert("movies", pa.Table.from_pylist(changed, schema=MOVIES.schema))
    return new

"""The service's in-memory views as numpy arrays, read from the lake through delta-rs.

A million users with their top 50 fit in about 110 MB: the batch view is a sorted ``int64`` array
of user ids (found with ``np.searchsorted``) and a ``users x width`` matrix of movie indices
(``int16`` while the catalog has fewer than 32,767 movies, else ``int32``; ``-1`` pads short
rows), and every movie id is stored once, pre-encoded, in the shared :class:`MovieCatalog`.
Loading streams the table twice (user ids first, then the rows) so the peak stays near the
final size, and works in chunks so request threads keep getting the GIL.

* :func:`load_batch_view` — one model's partition of ``batch_recommendations``;
* :func:`activity_from_table` — ``speed_user_activity`` as per-user sets of seen movies (CSR);
* :func:`trending_order` — ``speed_trending`` as one ranked list (shortest window first);
* :class:`TableWatcher` — follows a table's Delta version cheaply, to re-read only on change.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pa_fs
from deltalake import DeltaTable

from flixlake.lake.store import Lake, table_dir
from flixlake.lake.tables import (
    BATCH_RECOMMENDATIONS,
    MOVIES,
    SPEED_TRENDING,
    SPEED_USER_ACTIVITY,
)

log = logging.getLogger(__name__)

BATCH_VIEW = BATCH_RECOMMENDATIONS.name
ACTIVITY_VIEW = SPEED_USER_ACTIVITY.name
TRENDING_VIEW = SPEED_TRENDING.name
MOVIES_TABLE = MOVIES.name
_INT16_MAX = np.iinfo(np.int16).max
_SCAN_ROWS = 1 << 16  # rows per scanned batch while loading (bigger: +55 MB peak)
_READAHEAD = 1  # batches decoded ahead (pyarrow's default, 16 x 4 files, costs ~1 GB here)
_CHUNK_ROWS = 1 << 16  # users per normalisation step (keeps each GIL hold short)


class MovieCatalog:
    """Append-only movie-id table shared by all views: index -> id (``str`` and UTF-8 bytes).

    Only the lake's catalog (the ``movies`` table) and published batch views add movies, and at
    most ``capacity``: what the stream feeds (speed views) is looked up, never added, so a flood
    of made-up movie ids can neither grow the service's memory nor reach an answer.

    Indices never change, so a view built earlier stays valid; request threads read ``names``
    without a lock (list appends are atomic and an index is handed out only after its append).
    """

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._index: dict[str, int] = {}
        self.ids: list[str] = []
        self.names: list[bytes] = []
        self.refused = 0  # ids not added because the catalog was full
        self._arrow = pa.array([], pa.string())

    def __len__(self) -> int:
        return len(self.names)

    def indices(self, movie_ids: pa.Array | pa.ChunkedArray, add: bool = False) -> np.ndarray:
        """The catalog index of every string; -1 for null and (unless ``add``) unknown ids.

        ``add=True`` (the movies table, batch views) appends unknown ids while there is room.
        """
        if isinstance(movie_ids, pa.ChunkedArray):
            movie_ids = movie_ids.combine_chunks()
        if pa.types.is_dictionary(movie_ids.type):
            mapping = self.indices(movie_ids.dictionary, add)
            codes = movie_ids.indices.fill_null(-1).to_numpy(zero_copy_only=False)
            out = np.where(codes >= 0, mapping[np.maximum(codes, 0)], -1)
            return out.astype(np.int32, copy=False)
        if movie_ids.type != pa.string():
            movie_ids = movie_ids.cast(pa.string())
        with self._lock:
            found = pc.index_in(movie_ids, value_set=self._arrow)
            if add and found.null_count > movie_ids.null_count:
                new = pc.unique(
                    movie_ids.filter(pc.and_(pc.is_null(found), pc.is_valid(movie_ids)))
                )
                added = []
                for movie_id in new.to_pylist():
                    if movie_id in self._index:
                        continue
                    if len(self.names) >= self.capacity:
                        self.refused += 1
                        continue
                    added.append(movie_id)
                    self.ids.append(movie_id)
                    self.names.append(movie_id.encode("utf-8"))
                    self._index[movie_id] = len(self.names) - 1
                if added:
                    self._arrow = pa.concat_arrays([self._arrow, pa.array(added, pa.string())])
                    found = pc.index_in(movie_ids, value_set=self._arrow)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)

    def join(self, indices: list[int]) -> bytes:
        """The comma-separated answer for these movie indices."""
        names = self.names
        return b",".join([names[i] for i in indices])


def load_catalog(lake: Lake, catalog: MovieCatalog, table: DeltaTable | None = None) -> np.ndarray:
    """Add the ``movies`` table to ``catalog``; returns its static list (catalog indices).

    The static list is the fallback of last resort, so that an answer is never empty while the
    catalog has movies: movies with metadata (the real catalog) before ids only seen in logs,
    each in catalog order (``movie_idx``).
    """
    if table is None:
        if not lake.exists(MOVIES_TABLE):
            return np.zeros(0, np.int32)
        table = lake.table(MOVIES_TABLE)
    data = read_view(lake, MOVIES_TABLE, table, ["movie_idx", "movie_id", "title"])
    if data.num_rows == 0:
        return np.zeros(0, np.int32)
    no_title = pc.is_null(data["title"])
    ordered = data.append_column("no_title", no_title).sort_by(
        [("no_title", "ascending"), ("movie_idx", "ascending")]
    )
    indices = catalog.indices(ordered["movie_id"], add=True)
    return indices[indices >= 0].astype(np.int32, copy=False)


@dataclass(frozen=True, eq=False)
class BatchView:
    """One published model's top-N per user, in memory."""

    model_version: str
    users: np.ndarray  # int64, sorted, unique
    items: np.ndarray  # (users, width) int16/int32 catalog indices, best first, -1 padded
    lengths: np.ndarray  # valid entries per row
    popular: np.ndarray  # int32 catalog indices, most frequent in the served lists first
    rows: int  # rows read from the table
    load_seconds: float
    loaded_at: float  # epoch seconds

    @property
    def n_users(self) -> int:
        return int(self.users.shape[0])

    @property
    def nbytes(self) -> int:
        return int(
            self.users.nbytes + self.items.nbytes + self.lengths.nbytes + self.popular.nbytes
        )

    def row(self, user_id: int) -> list[int] | None:
        """The user's ranked movie indices, or None for a user the model does not know."""
        users = self.users
        i = int(users.searchsorted(user_id))
        if i < users.shape[0] and users[i] == user_id:
            return self.items[i, : self.lengths[i]].tolist()
        return None


def local_filesystem(lake: Lake, name: str) -> pa_fs.FileSystem | None:
    """pyarrow's native filesystem rooted at a local table, else None (delta-rs's default).

    delta-rs's default is a Python-implemented filesystem: every file read runs Python code and
    holds the GIL, which stalls request handling while a 1M-user view loads.
    """
    if "://" in lake.root and not lake.root.startswith("file://"):
        return None
    return pa_fs.SubTreeFileSystem(table_dir(lake, name), pa_fs.LocalFileSystem())


def read_view(lake: Lake, name: str, table: DeltaTable, columns: list[str]) -> pa.Table:
    """A whole (small) table snapshot, read without holding the GIL on a local lake."""
    dataset = table.to_pyarrow_dataset(filesystem=local_filesystem(lake, name))
    return dataset.to_table(columns=columns)


def _batch_dataset(lake: Lake, table: DeltaTable, model_version: str) -> ds.Dataset:
    return table.to_pyarrow_dataset(
        file_pruning_predicate=[("model_version", "=", model_version)],
        parquet_read_options=ds.ParquetReadOptions(dictionary_columns={"movie_id"}),
        filesystem=local_filesystem(lake, BATCH_VIEW),
    )


def _scan(dataset: ds.Dataset, model_version: str, columns: list[str]) -> ds.Scanner:
    return dataset.scanner(
        columns=columns,
        filter=ds.field("model_version") == model_version,
        batch_size=_SCAN_ROWS,
        batch_readahead=_READAHEAD,
        fragment_readahead=1,
        use_threads=False,  # threaded decoding is ~30 % faster but doubles the peak memory
        memory_pool=pa.system_memory_pool(),  # returned to the OS by release_memory()
        fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False),  # -60 MB peak
    )


def load_batch_view(
    lake: Lake,
    model_version: str,
    catalog: MovieCatalog,
    width: int = 50,
    popular_depth: int = 20,
    popular_size: int = 200,
) -> BatchView | None:
    """Load a model's partition of the batch view; None when it has no rows (or no table).

    Keeps ranks ``first .. first + width - 1`` of each user; within them, missing ranks are
    closed up and repeated movies dropped (the publish step writes contiguous, distinct ranks).
    """
    started = time.monotonic()
    if not lake.exists(BATCH_VIEW):
        return None
    dataset = _batch_dataset(lake, lake.table(BATCH_VIEW), model_version)

    # pass 1: the distinct users and the first rank (ranks may start at 0 or 1)
    uniques: list[np.ndarray] = []
    pending = 0
    first_rank: int | None = None
    for batch in _scan(dataset, model_version, ["user_id", "rank"]).to_batches():
        if batch.num_rows == 0:
            continue
        users = _run_heads(batch.column(0).to_numpy(zero_copy_only=False))
        uniques.append(users)
        pending += users.shape[0]
        low = pc.min(batch.column(1)).as_py()
        if low is not None:
            first_rank = low if first_rank is None else min(first_rank, low)
        if pending > 16 * _SCAN_ROWS:
            uniques = [_sorted_distinct(np.concatenate(uniques))]
            pending = uniques[0].shape[0]
    if not uniques or first_rank is None:
        return None
    all_users = _sorted_distinct(np.concatenate(uniques)).astype(np.int64, copy=False)
    del uniques
    release_memory()  # the scan's buffers, before the matrix is allocated

    # pass 2: place every (user, rank) cell; later duplicates of a cell win
    items = np.full((all_users.shape[0], width), -1, dtype=np.int16)
    decoder = _DictionaryDecoder(catalog)
    rows = 0
    scanner = _scan(dataset, model_version, ["user_id", "rank", "movie_id"])
    for batch in scanner.to_batches():
        if batch.num_rows == 0:
            continue
        rows += batch.num_rows
        movies = decoder.indices(batch.column(2))
        if len(catalog) > _INT16_MAX and items.dtype == np.int16:
            items = items.astype(np.int32)
        cols = batch.column(1).to_numpy(zero_copy_only=False).astype(np.int64) - first_rank
        keep = (cols < width) & (movies >= 0)
        user_ids = batch.column(0).to_numpy(zero_copy_only=False)[keep]
        items[_positions(all_users, user_ids), cols[keep]] = movies[keep]

    lengths, popular_counts = _normalise(items, popular_depth, len(catalog))
    popular = _most_frequent(popular_counts, catalog, popular_size)
    seconds = time.monotonic() - started
    log.info(
        "loaded batch view %s: %d users, %d rows, %.1f MB in %.1fs",
        model_version,
        all_users.shape[0],
        rows,
        (all_users.nbytes + items.nbytes) / 1e6,
        seconds,
    )
    release_memory()
    return BatchView(
        model_version=model_version,
        users=all_users,
        items=items,
        lengths=lengths,
        popular=popular,
        rows=rows,
        load_seconds=seconds,
        loaded_at=time.time(),
    )


def _run_heads(values: np.ndarray) -> np.ndarray:
    """``values`` without consecutive repeats (a batch holds each user's rows together)."""
    if values.shape[0] < 2:
        return values
    keep = np.empty(values.shape[0], dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def _sorted_distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sort + run heads; numpy's sort runs without the GIL)."""
    return _run_heads(np.sort(values))


def _positions(sorted_users: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
    """Row of each user id in ``sorted_users``, searching once per run of equal ids."""
    if user_ids.shape[0] == 0:
        return np.zeros(0, np.intp)
    starts = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]])
    found = np.searchsorted(sorted_users, user_ids[starts])
    return np.repeat(found, np.diff(np.r_[starts, user_ids.shape[0]]))


class _DictionaryDecoder:
    """Catalog indices of dictionary-encoded batches, reusing the mapping while the parquet
    reader hands out the same dictionary (it does for every batch of a row group)."""

    def __init__(self, catalog: MovieCatalog) -> None:
        self.catalog = catalog
        self._dictionary: pa.Array | None = None
        self._mapping = np.zeros(0, np.int32)

    def indices(self, column: pa.Array) -> np.ndarray:
        if not pa.types.is_dictionary(column.type):
            return self.catalog.indices(column, add=True)
        dictionary = column.dictionary
        if self._dictionary is None or not (
            dictionary is self._dictionary or dictionary.equals(self._dictionary)
        ):
            self._dictionary = dictionary
            self._mapping = self.catalog.indices(dictionary, add=True)
        codes = column.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        return np.where(codes >= 0, self._mapping[np.maximum(codes, 0)], -1).astype(np.int32)


def release_memory() -> None:
    """Give freed memory back to the OS after a load (glibc keeps it in per-thread arenas)."""
    pa.default_memory_pool().release_unused()
    pa.system_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _normalise(items: np.ndarray, depth: int, catalog_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Close rank gaps and drop duplicate movies in place; returns row lengths and the counts
    of each movie among the first ``depth`` entries (for the popular list)."""
    n_users, width = items.shape
    lengths = np.zeros(n_users, dtype=np.int16 if width <= _INT16_MAX else np.int32)
    counts = np.zeros(max(catalog_size, 1), dtype=np.int64)
    for start in range(0, n_users, _CHUNK_ROWS):
        block = items[start : start + _CHUNK_ROWS]
        valid = block >= 0
        gaps = (~valid[:, :-1] & valid[:, 1:]).any(axis=1)
        ordered = np.sort(block, axis=1)
        dups = ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(axis=1)
        for i in np.flatnonzero(gaps | dups):
            fixed = [m for m in dict.fromkeys(block[i].tolist()) if m >= 0]
            block[i] = -1
            block[i, : len(fixed)] = fixed
        lengths[start : start + block.shape[0]] = (block >= 0).sum(axis=1)
        head = block[:, :depth].ravel()
        counts += np.bincount(head[head >= 0], minlength=counts.shape[0])[: counts.shape[0]]
    return lengths, counts


def _most_frequent(counts: np.ndarray, catalog: MovieCatalog, size: int) -> np.ndarray:
    """Movie indices by count (descending), ties by movie id, at most ``size``."""
    present = np.flatnonzero(counts)
    ids = catalog.ids
    names = np.array([ids[m] for m in present.tolist()], dtype=str)
    order = np.lexsort((names, -counts[present]))  # numpy sorts without holding the GIL
    return present[order[:size]].astype(np.int32)


@dataclass(frozen=True, eq=False)
class SpeedActivity:
    """Per user active since the batch cutoff: the movies watched or rated (CSR arrays)."""

    users: np.ndarray  # int64, sorted, unique
    offsets: np.ndarray  # int64, len(users) + 1
    movies: np.ndarray  # int32 catalog indices, grouped by user
    version: int | None = None  # Delta version read
    newest_update: float | None = None  # epoch seconds of the newest updated_at
    cutoff_model: str | None = None

    @property
    def n_users(self) -> int:
        return int(self.users.shape[0])

    def seen(self, user_id: int) -> set[int] | None:
        """Movies the user watched or rated since the cutoff; None for a user with no activity."""
        users = self.users
        i = int(users.searchsorted(user_id))
        if i < users.shape[0] and users[i] == user_id:
            return set(self.movies[self.offsets[i] : self.offsets[i + 1]].tolist())
        return None


EMPTY_ACTIVITY = SpeedActivity(
    users=np.zeros(0, np.int64), offsets=np.zeros(1, np.int64), movies=np.zeros(0, np.int32)
)


def _epoch(value: pa.Scalar) -> float | None:
    stamp = value.as_py()
    return stamp.timestamp() if stamp is not None else None


def activity_from_table(
    table: pa.Table,
    catalog: MovieCatalog,
    version: int | None = None,
    max_users: int | None = None,
    max_seen: int | None = None,
) -> SpeedActivity:
    """``speed_user_activity`` rows -> :class:`SpeedActivity` (watched and rated merged).

    Bounded: at most ``max_users`` users (the most recently seen, when ``last_seen`` is read)
    and ``max_seen`` catalog movies per user; movies not in the catalog are dropped.
    """
    if table.num_rows == 0:
        return SpeedActivity(
            EMPTY_ACTIVITY.users, EMPTY_ACTIVITY.offsets, EMPTY_ACTIVITY.movies, version
        )
    if max_users is not None and table.num_rows > max_users:
        if "last_seen" in table.column_names:
            table = table.sort_by([("last_seen", "descending"), ("user_id", "ascending")])
        table = table.slice(0, max_users)
    user_ids = table["user_id"].to_numpy().astype(np.int64, copy=False)
    users, row_user = np.unique(user_ids, return_inverse=True)
    movie_parts: list[np.ndarray] = []
    owner_parts: list[np.ndarray] = []
    for column in ("watched_movies", "rated_movies"):
        lists = table[column].combine_chunks()
        flat = pc.list_flatten(lists)
        if len(flat) == 0:
            continue
        movie_parts.append(catalog.indices(flat))
        owner_parts.append(row_user[pc.list_parent_indices(lists).to_numpy()])
    if movie_parts:
        movies = np.concatenate(movie_parts)
        owners = np.concatenate(owner_parts)
        keep = movies >= 0
        movies, owners = movies[keep], owners[keep]
        order = np.lexsort((movies, owners))
        movies, owners = movies[order], owners[order]
        if movies.shape[0]:  # a movie both watched and rated counts once
            distinct = np.r_[True, (movies[1:] != movies[:-1]) | (owners[1:] != owners[:-1])]
            movies, owners = movies[distinct], owners[distinct]
    else:
        movies, owners = np.zeros(0, np.int32), np.zeros(0, np.int64)
    offsets = np.searchsorted(owners, np.arange(users.shape[0] + 1)).astype(np.int64)
    if max_seen is not None and movies.shape[0]:
        rank = np.arange(movies.shape[0]) - offsets[owners]
        keep = rank < max_seen
        if not keep.all():
            movies, owners = movies[keep], owners[keep]
            offsets = np.searchsorted(owners, np.arange(users.shape[0] + 1)).astype(np.int64)
    newest = _epoch(pc.max(table["updated_at"])) if "updated_at" in table.column_names else None
    cutoff = None
    if "model_version" in table.column_names and table.num_rows:
        cutoff = pc.max(table["model_version"]).as_py()
    return SpeedActivity(
        users, offsets, movies.astype(np.int32, copy=False), version, newest, cutoff
    )


def trending_order(table: pa.Table, catalog: MovieCatalog, limit: int | None = None) -> np.ndarray:
    """One ranked list of catalog movies: the shortest window first, each by watchers (desc),
    ties by movie id; at most ``limit``. Ids the catalog does not know are never served."""
    if table.num_rows == 0:
        return np.zeros(0, np.int32)
    ordered = table.sort_by(
        [("window_seconds", "ascending"), ("watchers", "descending"), ("movie_id", "ascending")]
    )
    movies = catalog.indices(ordered["movie_id"])
    movies = movies[movies >= 0]
    _, first = np.unique(movies, return_index=True)
    ranked = movies[np.sort(first)].astype(np.int32, copy=False)
    return ranked if limit is None else ranked[:limit]


def newest_update(table: pa.Table) -> float | None:
    """Epoch seconds of the newest ``updated_at`` in a speed view (None when empty)."""
    if table.num_rows == 0 or "updated_at" not in table.column_names:
        return None
    return _epoch(pc.max(table["updated_at"]))


class TableWatcher:
    """Follows one table's Delta version with incremental log reads (cheap to poll often)."""

    def __init__(self, lake: Lake, name: str) -> None:
        self.lake = lake
        self.name = name
        self._table: DeltaTable | None = None
        self.version: int | None = None  # last version the caller processed (``done``)

    def changed(self) -> DeltaTable | None:
        """The table when its version differs from the last one marked ``done``; None if
        unchanged or missing. Raises when the lake cannot be read (the caller counts it)."""
        if self._table is None:
            if not self.lake.exists(self.name):
                return None
            self._table = self.lake.table(self.name)
        else:
            try:
                self._table.update_incremental()
            except Exception:
                self._table = None  # reopen next time (table recreated, storage hiccup, ...)
                raise
        if self._table.version() == self.version:
            return None
        return self._table

    def done(self, version: int | None) -> None:
        """Mark ``version`` as processed (a failed read is retried on the next poll)."""
        self.version = version

    def exists(self) -> bool:
        return self._table is not None or self.lake.exists(self.name)

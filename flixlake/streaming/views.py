"""Pure speed-view maths, Arrow in and Arrow out: per-user activity, new users, trending.

Every view value is a set union, a minimum or a maximum of event fields, so applying a batch
again changes nothing: the views are idempotent per batch by construction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from flixlake.config import StreamingConfig, duration_seconds
from flixlake.lake.tables import (
    SPEED_TRENDING,
    TS,
)

EVENT_COLUMNS = ["user_id", "event_type", "movie_id", "rating", "event_time"]  # rating: alerts
_NO_STRING = pa.scalar(None, pa.string())
_DISTINCT = pc.CountOptions(mode="only_valid")


# MERGE rules of the user views: set union, earliest first seen, latest last seen (idempotent).
ACTIVITY_UPDATES = {
    "watched_movies": "array_union(t.watched_movies, s.watched_movies)",
    "rated_movies": "array_union(t.rated_movies, s.rated_movies)",
    "first_seen": "least(t.first_seen, s.first_seen)",
    "last_seen": "greatest(t.last_seen, s.last_seen)",
    "since": "s.since",
    "model_version": "s.model_version",
    "updated_batch": "s.updated_batch",
    "updated_at": "s.updated_at",
}


NEW_USER_UPDATES = {k: v for k, v in ACTIVITY_UPDATES.items() if not k.endswith("_movies")}


# -- the cutoff ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cutoff:
    """Where the speed views' window starts: the newest published model's run date (or never)."""

    since: dt.datetime | None = None
    model_version: str | None = None


# -- pure view functions (Arrow in, Arrow out) --------------------------------------------------
def ok_events(bronze: pa.Table) -> pa.Table:
    """The parsed events of a bronze batch (rejected lines never reach a view)."""
    ok = bronze.filter(pc.equal(bronze["parse_status"], "ok"))
    return ok.select(EVENT_COLUMNS)


def user_activity(events: pa.Table, since: dt.datetime | None) -> pa.Table:
    """Per user active at or after ``since``: distinct movies watched and rated, first/last seen."""
    if since is not None:
        events = events.filter(pc.greater_equal(events["event_time"], pa.scalar(since, TS)))
    kind = events["event_type"]
    events = events.append_column(
        "watched", pc.if_else(pc.equal(kind, "watch"), events["movie_id"], _NO_STRING)
    ).append_column("rated", pc.if_else(pc.equal(kind, "rate"), events["movie_id"], _NO_STRING))
    grouped = events.group_by("user_id", use_threads=False).aggregate(
        [
            ("watched", "distinct", _DISTINCT),
            ("rated", "distinct", _DISTINCT),
            ("event_time", "min"),
            ("event_time", "max"),
        ]
    )
    return pa.table(
        {
            "user_id": grouped["user_id"].cast(pa.int64()),
            "watched_movies": grouped["watched_distinct"],
            "rated_movies": grouped["rated_distinct"],
            "first_seen": grouped["event_time_min"].cast(TS),
            "last_seen": grouped["event_time_max"].cast(TS),
        }
    ).sort_by("user_id")


def combine_activity(parts: Sequence[pa.Table]) -> pa.Table:
    """Merge per-user activity tables the way the MERGE does (union, min, max)."""
    if not parts:
        return user_activity(pa.Table.from_pylist([], event_schema()), None)
    table = pa.concat_tables(parts)
    pieces = []
    for column, kind in (("watched_movies", "watch"), ("rated_movies", "rate")):
        lists = table[column].combine_chunks()
        movies = pc.list_flatten(lists)
        users = pc.take(table["user_id"], pc.list_parent_indices(lists))
        pieces.append(
            pa.table(
                {
                    "user_id": users,
                    "event_type": pa.array([kind] * len(movies), pa.string()),
                    "movie_id": movies,
                    "event_time": pa.nulls(len(movies), TS),
                }
            )
        )
    for column in ("first_seen", "last_seen"):
        pieces.append(
            pa.table(
                {
                    "user_id": table["user_id"],
                    "event_type": pa.nulls(table.num_rows, pa.string()),
                    "movie_id": pa.nulls(table.num_rows, pa.string()),
                    "event_time": table[column],
                }
            )
        )
    return user_activity(pa.concat_tables(pieces), None)


def new_users(activity: pa.Table, known_users: pa.Array) -> pa.Table:
    """The active users the batch view does not know (they get trending, not personal picks)."""
    unknown = pc.invert(pc.is_in(activity["user_id"], value_set=known_users))
    return activity.filter(unknown).select(["user_id", "first_seen", "last_seen"])


def watch_pairs(events: pa.Table) -> pa.Table:
    """``(movie_id, user_id) -> last_watch`` of the watch events."""
    watches = events.filter(pc.equal(events["event_type"], "watch"))
    grouped = watches.group_by(["movie_id", "user_id"], use_threads=False).aggregate(
        [("event_time", "max")]
    )
    return pa.table(
        {
            "movie_id": grouped["movie_id"],
            "user_id": grouped["user_id"].cast(pa.int64()),
            "last_watch": grouped["event_time_max"].cast(TS),
        }
    )


def stream_time(
    as_of: dt.datetime | None, events: pa.Table, now: dt.datetime
) -> dt.datetime | None:
    """Advance the stream clock to the newest event time that is not in the future."""
    times = events["event_time"]
    times = times.filter(pc.less_equal(times, pa.scalar(now, TS)))
    newest = pc.max(times).as_py() if len(times) else None
    if newest is None:
        return as_of
    return newest if as_of is None else max(as_of, newest)


def merge_pairs(pairs: pa.Table, more: pa.Table, horizon: dt.datetime | None) -> pa.Table:
    """Union of two pair tables keeping the latest watch, minus pairs at or before ``horizon``."""
    both = pa.concat_tables([pairs, more]) if more.num_rows else pairs
    if more.num_rows:
        grouped = both.group_by(["movie_id", "user_id"], use_threads=False).aggregate(
            [("last_watch", "max")]
        )
        both = grouped.rename_columns(["movie_id", "user_id", "last_watch"]).select(
            ["movie_id", "user_id", "last_watch"]
        )
    if horizon is not None:
        both = both.filter(pc.greater(both["last_watch"], pa.scalar(horizon, TS)))
    return both


def trending_counts(
    pairs: pa.Table, as_of: dt.datetime | None, windows: dict[str, int]
) -> pa.Table:
    """Distinct watchers per movie in each window ``(as_of - length, as_of]``, most first."""
    empty = pa.Table.from_pylist([], SPEED_TRENDING.schema).drop_columns(
        ["updated_batch", "updated_at"]
    )
    if as_of is None or pairs.num_rows == 0:
        return empty
    last = pairs["last_watch"]
    not_after = pc.less_equal(last, pa.scalar(as_of, TS))
    flags = {
        f"w{i}": pc.and_(
            not_after, pc.greater(last, pa.scalar(as_of - dt.timedelta(seconds=s), TS))
        ).cast(pa.int64())
        for i, s in enumerate(windows.values())
    }
    table = pa.table({"movie_id": pairs["movie_id"], **flags})
    counts = table.group_by("movie_id", use_threads=False).aggregate(  # one pass, all windows
        [(name, "sum") for name in flags]
    )
    parts = []
    for i, (label, seconds) in enumerate(windows.items()):
        watchers = counts[f"w{i}_sum"]
        part = pa.table({"movie_id": counts["movie_id"], "watchers": watchers}).filter(
            pc.greater(watchers, 0)
        )
        part = part.sort_by([("watchers", "descending"), ("movie_id", "ascending")])
        n = part.num_rows
        parts.append(
            pa.table(
                {
                    "window": pa.repeat(pa.scalar(label, pa.string()), n),
                    "window_seconds": pa.repeat(pa.scalar(seconds, pa.int64()), n),
                    "movie_id": part["movie_id"],
                    "watchers": part["watchers"],
                    "as_of": pa.repeat(pa.scalar(as_of, TS), n),
                }
            )
        )
    return pa.concat_tables(parts) if parts else empty


def stamped(table: pa.Table, batch_id: int, now: dt.datetime, cutoff: Cutoff | None) -> pa.Table:
    """Add the provenance columns every speed view carries."""
    n = table.num_rows
    if cutoff is not None:
        table = table.append_column(
            "since", pa.repeat(pa.scalar(cutoff.since, TS), n)
        ).append_column("model_version", pa.repeat(pa.scalar(cutoff.model_version, pa.string()), n))
    return table.append_column(
        "updated_batch", pa.repeat(pa.scalar(batch_id, pa.int64()), n)
    ).append_column("updated_at", pa.repeat(pa.scalar(now, TS), n))


def event_schema() -> pa.Schema:
    return pa.schema(
        [
            ("user_id", pa.int64()),
            ("event_type", pa.string()),
            ("movie_id", pa.string()),
            ("rating", pa.int32()),
            ("event_time", TS),
        ]
    )


def window_lengths(config: StreamingConfig) -> dict[str, int]:
    """``{"1h": 3600, "24h": 86400}`` from ``streaming.trending_windows``."""
    return {label: duration_seconds(label) for label in config.trending_windows}

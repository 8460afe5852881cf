"""Speed-view state read back from the lake: the cutoff, the batch view's users, bronze by day.

Used on start-up (the trending pairs and stream clock) and when a newer published model moves the
cutoff (the user views are rebuilt from bronze since it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from flixlake.lake.registry import CURRENT, resolve_model_refs
from flixlake.lake.store import Lake
from flixlake.lake.tables import (
    SPEED_TRENDING,
    TS,
)
from flixlake.streaming.views import (
    EVENT_COLUMNS,
    Cutoff,
    combine_activity,
    event_schema,
    merge_pairs,
    stream_time,
    user_activity,
    watch_pairs,
)

BRONZE = "bronze_events"


def current_cutoff(lake: Lake, model_refs: Iterable[str] = (CURRENT,)) -> Cutoff:
    """Where the user views start: the oldest run date (00:00 UTC) among the current model and
    the models the service's experiment serves (``model_refs``: current, previous, versions).

    A variant serving an older model (the previous one in an A/B test) must drop what its users
    watched since *its* run date; the newer models' batch views already exclude the movies a user
    watched before their own run dates (publish drops everything seen in silver), so one view
    since the oldest cutoff serves every variant. ``model_version`` stays the current model (new
    users are those its batch view lacks). No cutoff without a published model.
    """
    if not lake.exists("models"):
        return Cutoff()
    served = resolve_model_refs(lake, {CURRENT, *model_refs})
    current = served[CURRENT]
    if current is None:
        return Cutoff()
    oldest: dt.date = min(row["run_date"] for row in served.values() if row is not None)
    since = dt.datetime.combine(oldest, dt.time(), tzinfo=dt.UTC)
    return Cutoff(since=since, model_version=str(current["model_version"]))


def model_users(lake: Lake, model_version: str | None) -> pa.Array:
    """The user ids in a published model's batch view (empty without a model)."""
    if model_version is None or not lake.exists("batch_recommendations"):
        return pa.array([], pa.int64())
    users = lake.read(
        "batch_recommendations",
        columns=["user_id"],
        filters=[("model_version", "=", model_version)],
    )["user_id"]
    return pc.unique(users.combine_chunks()).cast(pa.int64())


# -- reading bronze back (start-up and cutoff resets) -------------------------------------------
def bronze_days(lake: Lake) -> list[dt.date]:
    """The ``event_date`` partitions bronze holds, oldest first."""
    if not lake.exists(BRONZE):
        return []
    days = {p["event_date"] for p in lake.table(BRONZE).partitions()}
    return sorted(dt.date.fromisoformat(d) for d in days if d)


def bronze_events_of_day(lake: Lake, day: dt.date) -> pa.Table:
    """The parsed events of one ``event_date`` partition."""
    table = lake.read(
        BRONZE,
        columns=EVENT_COLUMNS,
        filters=[("event_date", "=", day), ("parse_status", "=", "ok")],
    )
    return table.select(EVENT_COLUMNS).cast(event_schema())


def activity_from_bronze(lake: Lake, since: dt.datetime | None) -> pa.Table:
    """Per-user activity since ``since`` recomputed from bronze, one day partition at a time."""
    parts = [
        user_activity(bronze_events_of_day(lake, day), since)
        for day in bronze_days(lake)
        if since is None or day >= since.date()
    ]
    return combine_activity(parts)


def trending_state_from_bronze(
    lake: Lake, as_of: dt.datetime | None, horizon_seconds: int
) -> pa.Table:
    """The ``(movie, user) -> last watch`` pairs of the ``horizon_seconds`` before ``as_of``."""
    pairs = watch_pairs(pa.Table.from_pylist([], event_schema()))
    if as_of is None:
        return pairs
    horizon = as_of - dt.timedelta(seconds=horizon_seconds)
    for day in bronze_days(lake):
        if horizon.date() <= day <= as_of.date():
            pairs = merge_pairs(pairs, watch_pairs(bronze_events_of_day(lake, day)), horizon)
    return pairs.filter(pc.less_equal(pairs["last_watch"], pa.scalar(as_of, TS)))


def stream_time_from_lake(lake: Lake, now: dt.datetime) -> dt.datetime | None:
    """Where the stream clock stood: the trending view's ``as_of``, else bronze's newest event."""
    if lake.exists(SPEED_TRENDING.name):
        as_of = pc.max(lake.read(SPEED_TRENDING.name, columns=["as_of"])["as_of"]).as_py()
        if as_of is not None:
            return as_of
    for day in reversed([d for d in bronze_days(lake) if d <= now.date()]):
        as_of = stream_time(None, bronze_events_of_day(lake, day), now)
        if as_of is not None:
            return as_of
    return None

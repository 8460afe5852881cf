"""Attack alerts over the speed layer's micro-batches: rate windows and new-account bursts.

Three rules (``attacks.stream`` in the config), each over tumbling windows of event time, so a
replayed batch counts into the same windows:

* ``account_rate`` — an account with more than ``max_events_per_minute`` events (watched
  minutes, ratings, requests) in one minute: a script, not a person;
* ``request_rate`` — an account with more than ``max_requests_per_hour`` recommendation
  requests in one hour (a request flood; the service's limiter answers it with 429);
* ``rating_burst`` — a movie that at least ``burst_min_accounts`` *new* accounts rate with the
  same stars within one ``burst_window``, making up at least ``burst_min_share`` of the movie's
  raters in that window. New: unknown to the batch layer (``known_users``) and first seen in the
  stream less than ``new_account_hours`` before the rating.

Each window alerts once. The per-batch work is Arrow aggregation (:func:`window_counts`,
:func:`rating_groups`); :class:`StreamDetector` keeps the small state between batches: counts of
the open windows, the first-seen time of accounts the batch layer does not know, and which
windows already alerted. Windows older than twice their length behind the stream time are
dropped. The state is rebuilt after a restart by feeding it the last ``burst_window`` of bronze.

This module only computes; wiring it into the speed layer (append the alerts to
``attack_alerts`` with the batch's app transaction) is the speed layer's job.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from flixlake.config import StreamDetectionConfig, duration_seconds
from flixlake.lake.tables import ATTACK_ALERTS

EVENT_COLUMNS = ("user_id", "event_type", "movie_id", "rating", "event_time")
MINUTE, HOUR = 60, 3600
ACCOUNT_RATE, REQUEST_RATE, RATING_BURST = "account_rate", "request_rate", "rating_burst"


def stream_events(bronze: pa.Table) -> pa.Table:
    """The parsed events of a bronze micro-batch with the columns the rules need."""
    ok = bronze.filter(pc.equal(bronze["parse_status"], "ok"))
    return ok.select(list(EVENT_COLUMNS))


def epoch_seconds(times: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Event times as whole seconds since 1970 (int64)."""
    return pc.divide(times.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()), 1_000_000)


def window_counts(events: pa.Table, seconds: int) -> pa.Table:
    """Events per ``(user_id, window)``: ``window`` is the tumbling window's start (epoch s)."""
    start = pc.multiply(pc.divide(epoch_seconds(events["event_time"]), seconds), seconds)
    table = pa.table({"user_id": events["user_id"], "window": start})
    grouped = table.group_by(["user_id", "window"], use_threads=False).aggregate(
        [("user_id", "count")]
    )
    return grouped.rename_columns(["user_id", "window", "events"])


def rating_groups(ratings: pa.Table, seconds: int) -> pa.Table:
    """Distinct raters per ``(movie_id, rating, window)`` as lists of user ids."""
    start = pc.multiply(pc.divide(epoch_seconds(ratings["event_time"]), seconds), seconds)
    table = pa.table(
        {
            "movie_id": ratings["movie_id"],
            "rating": ratings["rating"],
            "window": start,
            "user_id": ratings["user_id"],
        }
    )
    grouped = table.group_by(["movie_id", "rating", "window"], use_threads=False).aggregate(
        [("user_id", "distinct")]
    )
    return grouped.rename_columns(["movie_id", "rating", "window", "users"])


@dataclass
class StreamDetector:
    """The rules plus the state they need between micro-batches."""

    config: StreamDetectionConfig
    known_users: frozenset[int] = frozenset()  # accounts the batch layer has history for
    event_counts: dict[tuple[int, int], int] = field(default_factory=dict)
    request_counts: dict[tuple[int, int], int] = field(default_factory=dict)
    raters: dict[tuple[str, int], dict[int, set[int]]] = field(default_factory=dict)
    first_seen: dict[int, int] = field(default_factory=dict)  # epoch s, unknown accounts only
    alerted: set[tuple[str, str, int]] = field(default_factory=set)
    as_of: int | None = None  # newest event time seen (epoch s)

    @property
    def burst_seconds(self) -> int:
        return duration_seconds(self.config.burst_window)

    def with_known_users(self, users: Iterable[int]) -> None:
        """A new batch view: its users are no longer new (and need no first-seen entry)."""
        self.known_users = frozenset(int(u) for u in users)
        for user in list(self.first_seen):
            if user in self.known_users:
                del self.first_seen[user]

    def process(self, events: pa.Table, batch_id: int, now: dt.datetime) -> pa.Table:
        """Fold one micro-batch's events (:data:`EVENT_COLUMNS`) in; return its new alerts."""
        if events.num_rows == 0:
            return pa.Table.from_pylist([], ATTACK_ALERTS.schema)
        events = events.filter(
            pc.and_(pc.is_valid(events["user_id"]), pc.is_valid(events["event_time"]))
        )
        seconds = epoch_seconds(events["event_time"])
        newest = pc.max(seconds).as_py()
        if newest is not None:
            self.as_of = newest if self.as_of is None else max(self.as_of, newest)
        self._note_first_seen(events, seconds)
        alerts: list[dict[str, object]] = []
        cfg = self.config
        alerts += self._count_rule(
            ACCOUNT_RATE,
            window_counts(events, MINUTE),
            MINUTE,
            self.event_counts,
            cfg.max_events_per_minute,
            "events in one minute",
        )
        requests = events.filter(pc.equal(events["event_type"], "reco"))
        alerts += self._count_rule(
            REQUEST_RATE,
            window_counts(requests, HOUR),
            HOUR,
            self.request_counts,
            cfg.max_requests_per_hour,
            "recommendation requests in one hour",
        )
        ratings = events.filter(
            pc.and_(pc.equal(events["event_type"], "rate"), pc.is_valid(events["rating"]))
        )
        alerts += self._burst_rule(ratings)
        self._evict()
        for alert in alerts:
            alert["batch_id"] = batch_id
            alert["detected_at"] = now
        return pa.Table.from_pylist(alerts, ATTACK_ALERTS.schema)

    # -- rules ------------------------------------------------------------------------------------
    def _count_rule(
        self,
        rule: str,
        counts: pa.Table,
        seconds: int,
        state: dict[tuple[int, int], int],
        limit: int,
        what: str,
    ) -> list[dict[str, object]]:
        alerts = []
        for user, window, n in zip(
            counts["user_id"].to_pylist(),
            counts["window"].to_pylist(),
            counts["events"].to_pylist(),
            strict=True,
        ):
            key = (int(user), int(window))
            total = state.get(key, 0) + int(n)
            state[key] = total
            marker = (rule, str(user), int(window))
            if total > limit and marker not in self.alerted:
                self.alerted.add(marker)
                alerts.append(
                    _alert(
                        rule,
                        int(window),
                        seconds,
                        total,
                        limit,
                        user_id=int(user),
                        details=f"account {user}: {total} {what} (limit {limit})",
                    )
                )
        return alerts

    def _burst_rule(self, ratings: pa.Table) -> list[dict[str, object]]:
        cfg = self.config
        seconds = self.burst_seconds
        new_limit = cfg.new_account_hours * HOUR
        touched: set[tuple[str, int]] = set()
        groups = rating_groups(ratings, seconds)
        for movie, stars, window, users in zip(
            groups["movie_id"].to_pylist(),
            groups["rating"].to_pylist(),
            groups["window"].to_pylist(),
            groups["users"].to_pylist(),
            strict=True,
        ):
            by_stars = self.raters.setdefault((movie, int(window)), {})
            by_stars.setdefault(int(stars), set()).update(int(u) for u in users)
            touched.add((movie, int(window)))
        alerts: list[dict[str, object]] = []
        for movie, window in sorted(touched):
            by_stars = self.raters[(movie, window)]
            everyone = set().union(*by_stars.values())
            for stars, users in sorted(by_stars.items()):
                new = sorted(
                    u
                    for u in users
                    if u not in self.known_users
                    and u in self.first_seen
                    and window - self.first_seen[u] < new_limit
                )
                marker = (RATING_BURST, f"{movie}={stars}", window)
                if (
                    len(new) >= cfg.burst_min_accounts
                    and len(new) >= cfg.burst_min_share * len(everyone)
                    and marker not in self.alerted
                ):
                    self.alerted.add(marker)
                    alerts.append(
                        _alert(
                            RATING_BURST,
                            window,
                            seconds,
                            len(new),
                            cfg.burst_min_accounts,
                            movie_id=movie,
                            accounts=new,
                            details=(
                                f"{len(new)} new accounts rated {movie} {stars} stars within "
                                f"{cfg.burst_window} ({len(everyone)} raters in the window)"
                            ),
                        )
                    )
        return alerts

    # -- state ------------------------------------------------------------------------------------
    def _note_first_seen(self, events: pa.Table, seconds: pa.Array) -> None:
        table = pa.table({"user_id": events["user_id"], "t": seconds})
        firsts = table.group_by("user_id", use_threads=False).aggregate([("t", "min")])
        for user, first in zip(
            firsts["user_id"].to_pylist(), firsts["t_min"].to_pylist(), strict=True
        ):
            user = int(user)
            if user in self.known_users:
                continue
            if user not in self.first_seen or first < self.first_seen[user]:
                self.first_seen[user] = int(first)

    def _evict(self) -> None:
        """Forget windows more than twice their length behind the stream time."""
        if self.as_of is None:
            return
        now = self.as_of
        burst = self.burst_seconds
        self.event_counts = {k: v for k, v in self.event_counts.items() if k[1] >= now - 2 * MINUTE}
        self.request_counts = {
            k: v for k, v in self.request_counts.items() if k[1] >= now - 2 * HOUR
        }
        self.raters = {k: v for k, v in self.raters.items() if k[1] >= now - 2 * burst}
        horizon = now - 2 * max(HOUR, burst)
        self.alerted = {m for m in self.alerted if m[2] >= horizon}


def _alert(
    rule: str,
    window: int,
    seconds: int,
    observed: int,
    threshold: int,
    *,
    details: str,
    user_id: int | None = None,
    movie_id: str | None = None,
    accounts: list[int] | None = None,
) -> dict[str, object]:
    start = dt.datetime.fromtimestamp(window, dt.UTC)
    return {
        "rule": rule,
        "user_id": user_id,
        "movie_id": movie_id,
        "window_start": start,
        "window_end": start + dt.timedelta(seconds=seconds),
        "observed": observed,
        "threshold": threshold,
        "accounts": accounts,
        "details": details,
    }

"""Attack alerts in the events query: the stream rules of :mod:`flixlake.audit.stream`, wired in.

:class:`StreamAlerts` runs a :class:`~flixlake.audit.stream.StreamDetector` over each
micro-batch's parsed events (after the speed views) and appends its alerts to ``attack_alerts``
with the batch's Delta app transaction ``(stream:<query>, batch id)``: a replayed batch commits
nothing twice. The detector's state is rebuilt on start from the last
``2 * max(1h, burst_window)`` of bronze (the windows it keeps), with the accounts the batch view
knows and the first-seen times ``speed_new_users`` holds for the others. A crash after bronze
committed a batch but before its alerts did would lose them (the replay finds its windows
already counted), so the alerts the rebuild raises that ``attack_alerts`` lacks are written on
start (``batch_id`` -1). An alert's identity there is ``(rule, user_id, movie_id,
window_start)``.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from flixlake.audit.stream import EVENT_COLUMNS, HOUR, StreamDetector
from flixlake.config import StreamDetectionConfig
from flixlake.lake.store import Lake
from flixlake.lake.tables import ATTACK_ALERTS, SPEED_NEW_USERS, TS
from flixlake.streaming.state import bronze_days, bronze_events_of_day

IDENTITY = ("rule", "user_id", "movie_id", "window_start")


class StreamAlerts:
    """The attack rules of one events query: detector state, and exactly-once alert writes."""

    def __init__(
        self,
        lake: Lake,
        config: StreamDetectionConfig,
        app_id: str,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.lake = lake
        self.config = config
        self.app_id = app_id
        self.clock = clock
        self.detector = StreamDetector(config)
        self._known: pa.Array | None = None
        self.written: Counter[str] = Counter()  # alerts this process committed, by rule

    @property
    def horizon_seconds(self) -> int:
        """How far back the detector keeps windows (and the rebuild reads bronze)."""
        return 2 * max(HOUR, self.detector.burst_seconds)

    def _know(self, known_users: pa.Array) -> None:
        if known_users is not self._known:  # the speed layer loads a new array per new model
            self.detector.with_known_users(known_users.to_pylist())
            self._known = known_users

    def start(self, as_of: dt.datetime | None, known_users: pa.Array) -> int:
        """A fresh detector fed the recent bronze; write the alerts it raises that are missing.

        Returns how many alerts it wrote (those of a batch whose alert commit a crash lost).
        """
        self.detector = StreamDetector(self.config)
        self._known = None
        self._know(known_users)
        if as_of is None:
            return 0
        since = as_of - dt.timedelta(seconds=self.horizon_seconds)
        if self.lake.exists(SPEED_NEW_USERS.name):
            seen = self.lake.read(SPEED_NEW_USERS.name, columns=["user_id", "first_seen"])
            known = self.detector.known_users
            for user, first in zip(
                seen["user_id"].to_pylist(), seen["first_seen"].to_pylist(), strict=True
            ):
                if user is not None and first is not None and user not in known:
                    self.detector.first_seen[int(user)] = int(first.timestamp())
        parts = [
            bronze_events_of_day(self.lake, day)
            for day in bronze_days(self.lake)
            if since.date() <= day <= as_of.date()
        ]
        if not parts:
            return 0
        events = pa.concat_tables(parts)
        events = events.filter(pc.greater_equal(events["event_time"], pa.scalar(since, TS)))
        raised = self.detector.process(events.select(list(EVENT_COLUMNS)), -1, self.clock())
        missing = self._missing(raised, since)
        if missing.num_rows:
            self.lake.append(ATTACK_ALERTS.name, missing)
            self.written.update(missing["rule"].to_pylist())
        return missing.num_rows

    def _missing(self, alerts: pa.Table, since: dt.datetime) -> pa.Table:
        """The alerts whose identity ``attack_alerts`` does not hold yet."""
        if alerts.num_rows == 0 or not self.lake.exists(ATTACK_ALERTS.name):
            return alerts
        old = self.lake.read(
            ATTACK_ALERTS.name,
            columns=list(IDENTITY),
            filters=[("window_end", ">=", since)],
        )
        have = {tuple(r[c] for c in IDENTITY) for r in old.to_pylist()}
        keep = [tuple(r[c] for c in IDENTITY) not in have for r in alerts.to_pylist()]
        return alerts.filter(pa.array(keep, pa.bool_()))

    def process(self, events: pa.Table, batch_id: int, known_users: pa.Array) -> int:
        """Fold one micro-batch's parsed events in; append its alerts once. Returns the count
        written (0 for a replay whose alerts are committed)."""
        self._know(known_users)
        alerts = self.detector.process(events.select(list(EVENT_COLUMNS)), batch_id, self.clock())
        if alerts.num_rows == 0:
            return 0
        if not self.lake.append(ATTACK_ALERTS.name, alerts, self.app_id, batch_id):
            return 0
        by_rule = Counter(alerts["rule"].to_pylist())
        self.written.update(by_rule)
        rules = ", ".join(f"{rule} {n}" for rule, n in sorted(by_rule.items()))
        print(
            f"[{self.app_id}] batch {batch_id}: attack alerts {rules} (attack_alerts)", flush=True
        )
        return alerts.num_rows

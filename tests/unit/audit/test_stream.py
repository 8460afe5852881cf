"""Stream alert rules on hand-made micro-batches: thresholds, new accounts, once per window."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from flixlake.audit.stream import StreamDetector, rating_groups, stream_events, window_counts
from flixlake.config import StreamDetectionConfig
from flixlake.lake.tables import ATTACK_ALERTS, TS

T0 = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)  # a whole hour
NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
CONFIG = StreamDetectionConfig(
    max_events_per_minute=5,
    max_requests_per_hour=4,
    burst_window="1h",
    burst_min_accounts=3,
    burst_min_share=0.5,
    new_account_hours=24,
)
SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("event_type", pa.string()),
        ("movie_id", pa.string()),
        ("rating", pa.int32()),
        ("event_time", TS),
    ]
)


def events(rows: list[tuple[int | None, str, str | None, int | None, float]]) -> pa.Table:
    """Rows of (user, kind, movie, stars, seconds after T0)."""
    return pa.Table.from_pylist(
        [
            {
                "user_id": u,
                "event_type": k,
                "movie_id": m,
                "rating": r,
                "event_time": T0 + dt.timedelta(seconds=s),
            }
            for u, k, m, r, s in rows
        ],
        SCHEMA,
    )


def rules(alerts: pa.Table) -> list[tuple[str, int | None, str | None, int]]:
    return [(a["rule"], a["user_id"], a["movie_id"], a["observed"]) for a in alerts.to_pylist()]


def test_window_counts_group_by_account_and_tumbling_window() -> None:
    table = events([(1, "watch", "a", None, s) for s in (0, 30, 59, 60)] + [(2, "rate", "a", 4, 5)])
    got = sorted(window_counts(table, 60).to_pylist(), key=lambda r: (r["user_id"], r["window"]))
    start = int(T0.timestamp())
    assert got == [
        {"user_id": 1, "window": start, "events": 3},
        {"user_id": 1, "window": start + 60, "events": 1},
        {"user_id": 2, "window": start, "events": 1},
    ]


def test_rating_groups_list_distinct_raters_per_movie_stars_and_window() -> None:
    table = events([(1, "rate", "a", 5, 0), (1, "rate", "a", 5, 10), (2, "rate", "a", 5, 20)])
    (row,) = rating_groups(table, 3600).to_pylist()
    assert (row["movie_id"], row["rating"], sorted(row["users"])) == ("a", 5, [1, 2])


def test_an_account_over_the_minute_limit_alerts_once_across_batches() -> None:
    detector = StreamDetector(CONFIG)
    first = detector.process(events([(7, "watch", "a", None, s) for s in range(3)]), 1, NOW)
    assert first.num_rows == 0  # 3 events: under the limit of 5
    second = detector.process(events([(7, "watch", "a", None, 3 + s) for s in range(3)]), 2, NOW)
    assert rules(second) == [("account_rate", 7, None, 6)]  # 6 > 5, counted over both batches
    assert second.schema == ATTACK_ALERTS.schema
    assert second["batch_id"].to_pylist() == [2]
    third = detector.process(events([(7, "watch", "a", None, 10)]), 3, NOW)
    assert third.num_rows == 0  # that minute already alerted
    fourth = detector.process(events([(7, "watch", "a", None, 60 + s) for s in range(5)]), 4, NOW)
    assert fourth.num_rows == 0  # a new minute, exactly at the limit


def test_a_request_flood_alerts_on_the_hour_window() -> None:
    detector = StreamDetector(CONFIG)
    flood = [(9, "reco", None, None, 600 * i) for i in range(5)]  # 5 requests in one hour
    other = [(8, "reco", None, None, 600 * i) for i in range(4)]  # 4: at the limit
    alerts = detector.process(events(flood + other), 1, NOW)
    assert rules(alerts) == [("request_rate", 9, None, 5)]
    (alert,) = alerts.to_pylist()
    assert alert["window_start"] == T0 and alert["window_end"] == T0 + dt.timedelta(hours=1)


def test_a_burst_of_new_accounts_rating_alike_alerts_with_its_accounts() -> None:
    detector = StreamDetector(CONFIG)
    detector.with_known_users([1, 2])
    batch = events(
        [
            (1, "rate", "m", 5, 100),  # known (batch) accounts do not count as new
            (2, "rate", "m", 5, 200),
            (50, "watch", "m", None, 300),
            (50, "rate", "m", 5, 400),
            (51, "rate", "m", 5, 500),
            (52, "rate", "m", 4, 600),  # other stars: not alike
        ]
    )
    assert detector.process(batch, 1, NOW).num_rows == 0  # 2 new alike < 3
    alerts = detector.process(events([(53, "rate", "m", 5, 700)]), 2, NOW)
    assert rules(alerts) == [("rating_burst", None, "m", 3)]
    (alert,) = alerts.to_pylist()
    assert alert["accounts"] == [50, 51, 53]
    assert "3 new accounts rated m 5 stars within 1h (6 raters in the window)" in alert["details"]


def test_a_burst_needs_its_share_of_the_movies_raters() -> None:
    detector = StreamDetector(CONFIG)
    detector.with_known_users(range(1, 6))
    old = [(u, "rate", "m", 5, 10 * u) for u in range(1, 6)]  # 5 known raters
    new = [(u, "rate", "m", 5, 100 + u) for u in (60, 61, 62, 63)]  # 4 new: 4/9 < 50 %
    assert detector.process(events(old + new), 1, NOW).num_rows == 0


def test_an_account_seen_long_before_is_not_new() -> None:
    detector = StreamDetector(CONFIG)
    detector.process(events([(u, "watch", "x", None, -2 * 86400) for u in (70, 71, 72)]), 1, NOW)
    late = events([(u, "rate", "m", 5, 10) for u in (70, 71, 72)])
    assert detector.process(late, 2, NOW).num_rows == 0  # first seen two days before


def test_old_windows_are_forgotten_and_rows_without_account_are_ignored() -> None:
    detector = StreamDetector(CONFIG)
    detector.process(events([(7, "watch", "a", None, 0), (None, "watch", "a", None, 1)]), 1, NOW)
    assert len(detector.event_counts) == 1
    detector.process(events([(8, "watch", "a", None, 3 * 3600)]), 2, NOW)
    assert set(detector.event_counts) == {(8, int(T0.timestamp()) + 3 * 3600)}


def test_stream_events_keeps_the_parsed_lines_and_needed_columns() -> None:
    bronze = pa.table(
        {
            "parse_status": ["ok", "rejected"],
            "user_id": pa.array([1, None], pa.int64()),
            "event_type": ["rate", None],
            "movie_id": ["m", None],
            "rating": pa.array([5, None], pa.int32()),
            "event_time": pa.array([T0, None], TS),
            "raw": ["...", "garbage"],
        }
    )
    got = stream_events(bronze)
    assert got.column_names == ["user_id", "event_type", "movie_id", "rating", "event_time"]
    assert got.num_rows == 1

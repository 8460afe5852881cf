"""Speed-layer views and per-batch writes, on tiny inline data and a real (delta-rs) lake."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyspark.sql import DataFrame, SparkSession

from flixlake.config import Settings
from flixlake.lake.store import Lake
from flixlake.lake.tables import TS
from flixlake.streaming import events as events_module
from flixlake.streaming.events import SpeedLayer
from flixlake.streaming.harness import CheckpointLock, SpeedLayerError, check_checkpoint
from flixlake.streaming.views import (
    merge_pairs,
    new_users,
    stream_time,
    trending_counts,
    user_activity,
    watch_pairs,
)
from flixlake.testing import record_published_model

UTC = dt.UTC
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
EVENTS = pa.schema(
    [
        ("user_id", pa.int64()),
        ("event_type", pa.string()),
        ("movie_id", pa.string()),
        ("event_time", TS),
    ]
)


def t(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def events(rows: list[tuple[int, str, str | None, dt.datetime]]) -> pa.Table:
    return pa.Table.from_pylist(
        [dict(zip(EVENTS.names, r, strict=True)) for r in rows], schema=EVENTS
    )


def by_user(table: pa.Table) -> dict[int, dict]:
    return {
        r["user_id"]: {
            "watched": set(r["watched_movies"]),
            "rated": set(r["rated_movies"]),
            "first": r["first_seen"],
            "last": r["last_seen"],
        }
        for r in table.to_pylist()
    }


def test_user_activity_has_distinct_movies_and_first_last_seen() -> None:
    table = events(
        [
            (1, "watch", "a", t(22, 8)),
            (1, "watch", "a", t(22, 9)),
            (1, "rate", "b", t(22, 10)),
            (2, "reco", None, t(22, 7)),  # telemetry: activity, but no movie
            (1, "watch", "c", t(21, 23)),
        ]
    )
    assert by_user(user_activity(table, None)) == {
        1: {"watched": {"a", "c"}, "rated": {"b"}, "first": t(21, 23), "last": t(22, 10)},
        2: {"watched": set(), "rated": set(), "first": t(22, 7), "last": t(22, 7)},
    }
    since = by_user(user_activity(table, t(22, 0)))
    assert since[1] == {"watched": {"a"}, "rated": {"b"}, "first": t(22, 8), "last": t(22, 10)}


def test_new_users_are_the_active_users_the_batch_view_lacks() -> None:
    activity = user_activity(
        events(
            [(1, "watch", "a", t(22, 8)), (2, "watch", "a", t(22, 9)), (3, "rate", "b", t(22, 9))]
        ),
        None,
    )
    fresh = new_users(activity, pa.array([2, 99], pa.int64()))
    assert sorted(fresh["user_id"].to_pylist()) == [1, 3]
    assert fresh.column_names == ["user_id", "first_seen", "last_seen"]


def test_trending_counts_distinct_watchers_inside_each_window() -> None:
    pairs = watch_pairs(
        events(
            [
                (1, "watch", "a", t(22, 11, 30)),
                (1, "watch", "a", t(22, 11, 40)),  # same user twice: one watcher
                (2, "watch", "a", t(22, 2)),  # only in 24h
                (3, "watch", "b", t(22, 11, 59)),
                (4, "watch", "b", t(21, 11, 0)),  # exactly 24h before as_of: outside
                (5, "rate", "b", t(22, 11, 59)),  # ratings are not watches
            ]
        )
    )
    counts = trending_counts(pairs, t(22, 12), {"1h": 3600, "24h": 86400})
    got = {(r["window"], r["movie_id"]): r["watchers"] for r in counts.to_pylist()}
    assert got == {("1h", "a"): 1, ("1h", "b"): 1, ("24h", "a"): 2, ("24h", "b"): 1}
    assert set(counts["as_of"].to_pylist()) == {t(22, 12)}


def test_merge_pairs_keeps_the_latest_watch_and_drops_expired_pairs() -> None:
    old = watch_pairs(events([(1, "watch", "a", t(22, 1)), (2, "watch", "a", t(20, 1))]))
    more = watch_pairs(events([(1, "watch", "a", t(22, 5))]))
    merged = merge_pairs(old, more, horizon=t(21, 0))
    assert merged.to_pylist() == [{"movie_id": "a", "user_id": 1, "last_watch": t(22, 5)}]


def test_stream_time_advances_but_ignores_future_events() -> None:
    table = events([(1, "watch", "a", t(22, 8)), (1, "watch", "a", t(30, 8))])
    assert stream_time(None, table, NOW) == t(22, 8)
    assert stream_time(t(23, 1), table, NOW) == t(23, 1)  # never goes back
    assert stream_time(None, events([]), NOW) is None


# -- SpeedLayer.process against a real lake -----------------------------------------------------
GOOD = [
    "2026-11-22T08:00:00,1,GET /data/m/a/0.mpg",
    "2026-11-22T08:01:00,1,GET /data/m/a/1.mpg",
    "2026-11-22T09:00:00,2,GET /rate/b=4",
    "2026-11-21T10:00:00,3,GET /data/m/b/7.mpg",
]
BAD = ["2026-11-22T08:00:00,1,GET /rate/a=9", "garbage", ""]


def records(
    spark: SparkSession, lines: list[str], first_offset: int = 0, partition: int = 0
) -> DataFrame:
    """Rows as Spark's Kafka source gives them to a micro-batch."""
    n = len(lines)
    return spark.createDataFrame(
        pa.table(
            {
                "key": pa.nulls(n, pa.binary()),
                "value": pa.array([line.encode() for line in lines], pa.binary()),
                "topic": pa.array(["movielog"] * n),
                "partition": pa.array([partition] * n, pa.int32()),
                "offset": pa.array(range(first_offset, first_offset + n), pa.int64()),
                "timestamp": pa.array([NOW] * n, TS),
                "timestampType": pa.array([0] * n, pa.int32()),
            }
        )
    )


def layer(lake: Lake, settings: Settings, **options: Any) -> SpeedLayer:
    """The events processor of query ``q`` at ``NOW``, checking the models table every batch."""
    return SpeedLayer(
        lake,
        settings.streaming,
        "movielog",
        "q",
        clock=lambda: NOW,
        cutoff_check_seconds=0,
        **options,
    )


def view_rows(lake: Lake, name: str) -> list[dict]:
    rows = lake.read(name).drop_columns(["updated_at"]).to_pylist()
    for row in rows:
        for key in ("watched_movies", "rated_movies"):
            if key in row:
                row[key] = sorted(row[key])
    return sorted(rows, key=lambda r: sorted((k, str(v)) for k, v in r.items()))


def test_a_replayed_batch_changes_nothing(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    speed = layer(lake, settings)
    first = speed.process(records(spark, GOOD + BAD), batch_id=0)
    assert (first.events, first.rejected, first.written) == (7, 3, True)
    snapshot = {n: view_rows(lake, n) for n in ("speed_user_activity", "speed_trending")}
    versions = lake.versions(["bronze_events", "quarantine_events"])

    replay = layer(lake, settings).process(
        records(spark, GOOD + BAD), batch_id=0
    )  # after a restart

    assert replay.written is False
    assert lake.versions(["bronze_events", "quarantine_events"]) == versions
    assert lake.read("bronze_events").num_rows == 7
    assert lake.read("quarantine_events").num_rows == 3
    assert {n: view_rows(lake, n) for n in snapshot} == snapshot


def test_bronze_and_quarantine_get_the_registry_schema_when_the_query_starts_the_layer(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    speed = layer(lake, settings)
    speed.start()  # as the query harness does before the first micro-batch
    speed.process(records(spark, GOOD + BAD), batch_id=0)
    for name in ("bronze_events", "quarantine_events"):
        schema = lake.table(name).schema().to_arrow()
        assert not schema.field("source").nullable, name  # a DataFrame writer makes it nullable
        assert not schema.field("raw").nullable, name


def test_the_views_show_a_batch_while_its_bronze_append_is_still_committing(
    spark: SparkSession, lake: Lake, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer(lake, settings).process(records(spark, GOOD[:1]), batch_id=0)  # tables and views exist
    seen_during_bronze: list[set[int]] = []
    real_append = events_module.append_once

    def bronze_waits_for_the_views(df: DataFrame, lake_: Lake, name: str, *args: Any, **kw: Any):
        if name == "bronze_events":  # the views must not wait for this commit
            deadline = time.monotonic() + 60
            users: set[int] = set()
            while time.monotonic() < deadline and 3 not in users:
                users = set(lake.read("speed_user_activity")["user_id"].to_pylist())
                time.sleep(0.05)
            seen_during_bronze.append(users)
        return real_append(df, lake_, name, *args, **kw)

    monkeypatch.setattr(events_module, "append_once", bronze_waits_for_the_views)
    report = layer(lake, settings).process(records(spark, GOOD + BAD, first_offset=1), batch_id=1)

    assert seen_during_bronze == [{1, 2, 3}]
    assert report.fresh_at is not None and report.visible_at <= report.committed_at
    assert lake.read("bronze_events").num_rows == 1 + 7  # every line, rejects too
    assert lake.read("quarantine_events").num_rows == 3


def test_a_failed_view_write_fails_the_batch_and_its_replay_completes_it_once(
    spark: SparkSession, lake: Lake, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("object store unavailable")

    monkeypatch.setattr(lake, "upsert", broken)
    with pytest.raises(OSError, match="object store unavailable"):
        layer(lake, settings).process(records(spark, GOOD + BAD), batch_id=0)
    monkeypatch.undo()

    replay = layer(lake, settings).process(records(spark, GOOD + BAD), batch_id=0)

    assert lake.read("bronze_events").num_rows == 7  # once, by the replay
    assert lake.read("quarantine_events").num_rows == 3
    assert set(by_user(lake.read("speed_user_activity"))) == {1, 2, 3}
    assert replay.events == 7


def test_views_accumulate_across_batches_and_survive_a_restart(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    layer(lake, settings).process(records(spark, GOOD), batch_id=0)
    later = ["2026-11-22T09:30:00,1,GET /rate/c=5", "2026-11-22T09:40:00,4,GET /data/m/a/3.mpg"]
    layer(lake, settings).process(
        records(spark, later, first_offset=4), batch_id=1
    )  # a new process

    activity = by_user(lake.read("speed_user_activity"))
    assert activity[1] == {
        "watched": {"a"},
        "rated": {"c"},
        "first": t(22, 8),
        "last": t(22, 9, 30),
    }
    assert set(activity) == {1, 2, 3, 4}
    trending = {
        (r["window"], r["movie_id"]): r["watchers"] for r in lake.read("speed_trending").to_pylist()
    }
    # as_of = 2026-11-22 09:40; user 3 watched b on 11-21 10:00 (inside 24h)
    assert trending == {("1h", "a"): 1, ("24h", "a"): 2, ("24h", "b"): 1}
    assert set(lake.read("speed_new_users")["user_id"].to_pylist()) == {1, 2, 3, 4}


def test_views_start_at_the_cutoff_and_reset_when_a_newer_model_is_published(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    record_published_model(lake, "m1", dt.date(2026, 11, 22), t(22, 3))
    recos = [{"user_id": 1, "rank": 1, "movie_id": "x", "score": 1.0, "model_version": "m1"}]
    lake.append("batch_recommendations", pa.Table.from_pylist(recos))
    speed = layer(lake, settings)
    speed.process(records(spark, GOOD), batch_id=0)

    activity = by_user(lake.read("speed_user_activity"))
    assert set(activity) == {1, 2}  # user 3 was only active before the cutoff (11-21)
    assert set(lake.read("speed_new_users")["user_id"].to_pylist()) == {2}  # 1 is in m1's view
    assert set(lake.read("speed_user_activity")["model_version"].to_pylist()) == {"m1"}

    record_published_model(lake, "m2", dt.date(2026, 11, 23), t(23, 3))
    report = speed.process(
        records(spark, ["2026-11-23T01:00:00,5,GET /data/m/z/1.mpg"], first_offset=4), batch_id=1
    )
    assert report.rebuilt
    assert set(by_user(lake.read("speed_user_activity"))) == {5}
    assert set(lake.read("speed_new_users")["user_id"].to_pylist()) == {5}
    assert lake.read("speed_user_activity")["since"].to_pylist() == [t(23, 0)]


def test_views_start_at_the_oldest_cutoff_the_experiment_serves(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    """An A/B test of the previous model against the current one: the previous model's users
    must not get back what they watched since its run date, so the views start there."""
    record_published_model(lake, "m1", dt.date(2026, 11, 21), t(21, 3))
    record_published_model(lake, "m2", dt.date(2026, 11, 22), t(22, 3))
    current_only = layer(lake, settings)
    current_only.process(records(spark, GOOD), batch_id=0)
    assert set(by_user(lake.read("speed_user_activity"))) == {1, 2}  # not 3 (11-21 10:00)

    speed = layer(lake, settings, model_refs=("previous", "current"))
    speed.start()  # a restart with the experiment: the views are rebuilt from m1's run date
    activity = by_user(lake.read("speed_user_activity"))
    assert activity[3] == {"watched": {"b"}, "rated": set(), "first": t(21, 10), "last": t(21, 10)}
    assert set(activity) == {1, 2, 3}
    marks = lake.read("speed_user_activity", columns=["since", "model_version"]).to_pylist()
    assert {(r["since"], r["model_version"]) for r in marks} == {(t(21, 0), "m2")}

    record_published_model(lake, "m3", dt.date(2026, 11, 23), t(23, 3))  # m2 is now previous
    report = speed.process(
        records(spark, ["2026-11-23T01:00:00,5,GET /data/m/z/1.mpg"], first_offset=4), batch_id=1
    )
    assert report.rebuilt
    assert set(by_user(lake.read("speed_user_activity"))) == {1, 2, 5}
    assert set(lake.read("speed_user_activity")["since"].to_pylist()) == {t(22, 0)}


# -- attack alerts from the events query ---------------------------------------------------------
# twelve accounts the batch view does not know rate one movie 5 stars within the hour; users 1 and
# 2 (in the batch view) rate it too: 12 of 14 raters are new, over the 10 the rule needs
BURST = [f"2026-11-22T10:{i:02d}:00,{100 + i},GET /rate/target=5" for i in range(12)] + [
    "2026-11-22T10:20:00,1,GET /rate/target=3",
    "2026-11-22T10:21:00,2,GET /rate/target=4",
    "2026-11-22T10:22:00,1,GET /data/m/a/0.mpg",
]


def alerting_layer(lake: Lake, settings: Settings) -> SpeedLayer:
    return layer(lake, settings, attack_rules=settings.attacks.stream)


def with_model_knowing_users_1_and_2(lake: Lake) -> None:
    record_published_model(lake, "m1", dt.date(2026, 11, 22), t(22, 3))
    recos = [
        {"user_id": u, "rank": 1, "movie_id": "x", "score": 1.0, "model_version": "m1"}
        for u in (1, 2)
    ]
    lake.append("batch_recommendations", pa.Table.from_pylist(recos))


def burst_alerts(lake: Lake) -> list[dict]:
    rows = lake.read("attack_alerts").to_pylist()
    return [
        {k: r[k] for k in ("rule", "movie_id", "accounts", "observed", "window_start", "batch_id")}
        for r in rows
    ]


def test_a_burst_of_new_accounts_alerts_once_and_a_replay_adds_nothing(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    with_model_knowing_users_1_and_2(lake)
    alerting_layer(lake, settings).process(records(spark, BURST), batch_id=0)
    expected = [
        {
            "rule": "rating_burst",
            "movie_id": "target",
            "accounts": list(range(100, 112)),
            "observed": 12,
            "window_start": t(22, 10),
            "batch_id": 0,
        }
    ]
    assert burst_alerts(lake) == expected
    version = lake.version("attack_alerts")

    restarted = alerting_layer(lake, settings)  # after a crash: Spark replays batch 0
    report = restarted.process(records(spark, BURST), batch_id=0)
    assert report.written is False
    assert lake.version("attack_alerts") == version
    # two more new accounts in the same hour: the window already alerted
    more = [f"2026-11-22T10:{40 + i}:00,{200 + i},GET /rate/target=5" for i in range(2)]
    restarted.process(records(spark, more, first_offset=len(BURST)), batch_id=1)
    assert burst_alerts(lake) == expected
    assert restarted.alerts is not None and restarted.alerts.written == {}


def test_alerts_a_crash_lost_after_bronze_committed_are_written_on_restart(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    with_model_knowing_users_1_and_2(lake)
    layer(lake, settings).process(records(spark, BURST), batch_id=0)  # bronze, views, no alerts
    assert not lake.exists("attack_alerts")

    restarted = alerting_layer(lake, settings)
    restarted.start()  # the detector is fed the last hours of bronze
    rows = burst_alerts(lake)
    assert [(r["rule"], r["accounts"], r["batch_id"]) for r in rows] == [
        ("rating_burst", list(range(100, 112)), -1)
    ]
    restarted.process(records(spark, BURST), batch_id=0)  # the replay of the lost batch
    assert len(burst_alerts(lake)) == 1
    alerting_layer(lake, settings).start()  # another restart finds nothing missing
    assert len(burst_alerts(lake)) == 1


def test_a_fresh_checkpoint_for_a_query_that_already_wrote_is_refused(
    spark: SparkSession, lake: Lake, settings: Settings, tmp_path: Path
) -> None:
    tables = SpeedLayer.tables
    check_checkpoint(lake, tmp_path / "cp", "stream:q", tables)  # nothing written yet: fine
    layer(lake, settings).process(records(spark, GOOD), batch_id=0)
    with pytest.raises(SpeedLayerError, match="checkpoint"):
        check_checkpoint(lake, tmp_path / "cp", "stream:q", tables)
    (tmp_path / "cp" / "offsets").mkdir(parents=True)
    (tmp_path / "cp" / "offsets" / "0").write_text("{}")
    check_checkpoint(lake, tmp_path / "cp", "stream:q", tables)  # the real checkpoint: fine


def test_a_checkpoint_behind_the_tables_recorded_progress_is_refused(
    spark: SparkSession, lake: Lake, settings: Settings, tmp_path: Path
) -> None:
    """The tables recorded batch 2 but the checkpoint planned only batch 0 (an older copy): the
    next batch ids 1 and 2 would carry other offsets and be skipped as already written."""
    speed = layer(lake, settings)
    for batch in range(3):
        speed.process(records(spark, GOOD[batch : batch + 1], first_offset=batch), batch)
    offsets = tmp_path / "cp" / "offsets"
    offsets.mkdir(parents=True)
    (offsets / "0").write_text("{}")
    with pytest.raises(SpeedLayerError, match="planned only up to micro-batch 0"):
        check_checkpoint(lake, tmp_path / "cp", "stream:q", SpeedLayer.tables)
    for batch in (1, 2):
        (offsets / str(batch)).write_text("{}")
    check_checkpoint(lake, tmp_path / "cp", "stream:q", SpeedLayer.tables)  # caught up: fine


HOLD_LOCK = """
import sys, time
from pathlib import Path
from flixlake.streaming.harness import CheckpointLock
CheckpointLock(Path(sys.argv[1]), "q")
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_writer_of_one_query_is_refused_until_the_first_dies(tmp_path: Path) -> None:
    checkpoint = tmp_path / "cp"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(checkpoint)], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        with pytest.raises(SpeedLayerError, match=f"already running \\(pid {holder.pid} "):
            CheckpointLock(checkpoint, "q")
        os.kill(holder.pid, signal.SIGKILL)  # a crashed writer leaves no stale lock
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    lock = CheckpointLock(checkpoint, "q")
    with pytest.raises(SpeedLayerError, match="already running"):  # also within one process
        CheckpointLock(checkpoint, "q")
    lock.release()
    CheckpointLock(checkpoint, "q").release()


def test_maintenance_compacts_the_streams_small_bronze_files(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    config = settings.streaming.model_copy(update={"maintenance_every_batches": 3})
    speed = SpeedLayer(lake, config, "movielog", "q", clock=lambda: NOW)
    lines = [f"2026-11-22T08:00:{i:02d},{i + 1},GET /data/m/a/{i}.mpg" for i in range(6)]
    files = 0
    for batch in range(3):
        speed.process(
            records(spark, lines[2 * batch : 2 * batch + 2], first_offset=2 * batch), batch
        )
        if batch < 2:  # each batch adds its own small files (at most one per task and day)
            assert files < len(lake.file_uris("bronze_events")) <= files + 2
            files = len(lake.file_uris("bronze_events"))

    assert len(lake.file_uris("bronze_events")) == 1
    assert sorted(lake.read("bronze_events")["source_offset"].to_pylist()) == list(range(6))

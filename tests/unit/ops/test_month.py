"""A few compressed days of the lake: the stream, the maintenance beside it and a daily batch.
The counts stop growing once the lifecycle starts, exactly-once holds, rollback still works."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from flixlake.config import load_settings
from flixlake.lake.bronze import parse_batch
from flixlake.lake.lifecycle import ARTIFACTS
from flixlake.lake.registry import PUBLISHED, batch_view_rows, list_models, rollback_to
from flixlake.lake.store import lake_from_settings
from flixlake.ops.month import compressed_lifecycle, simulate_month

pytestmark = pytest.mark.month

DAYS = 8
MICRO_BATCHES = 4
# tables whose size the lifecycle bounds whatever the history's length: rewritten, merged, or
# one partition per model with only the kept ones left (their file counts must stop moving)
BOUNDED = [
    "movies",
    "ratings",
    "quality_reports",
    "models",
    "model_evaluations",
    "batch_recommendations",
    "maintenance_runs",
    ARTIFACTS,
]


def test_a_compressed_week_stays_flat_and_rollback_still_works(
    spark: SparkSession, tmp_path: Path
) -> None:
    day_seconds = 2.0  # retention of one simulated day = 2 s: never longer than a day lasts
    settings = load_settings(
        "test",
        home=tmp_path / "home",
        overrides={
            "lifecycle": compressed_lifecycle(day_seconds, file_days=1, log_days=1),
            "streaming": {"maintenance_every_batches": MICRO_BATCHES},
        },
    )
    lake = lake_from_settings(settings)
    reports = simulate_month(
        spark,
        lake,
        settings,
        tmp_path / "data",
        DAYS,
        users=60,
        movies=40,
        micro_batches=MICRO_BATCHES,
        day_seconds=day_seconds,
    )
    assert [(r.day, r.stream_error, r.batch_error, r.maintenance_error) for r in reports] == [
        (day, None, None, None) for day in range(1, DAYS + 1)
    ]
    sizes = {r.day: r.sizes for r in reports}
    for name in BOUNDED:
        assert sizes[DAYS][name].files == sizes[DAYS - 2][name].files, name
    # every log holds about two days of commits; without maintenance bronze and the speed views
    # hold every micro-batch's since day 1 (DAYS x MICRO_BATCHES and more)
    busiest_day = MICRO_BATCHES + 4  # the stream's commits + a maintenance's + a view reset
    for name, size in sizes[DAYS].items():
        assert size.log_files <= 2 * busiest_day, (name, size)
    assert sizes[DAYS]["bronze_events"].live_files == DAYS  # one compacted file per day

    # exactly-once after a week of compaction and log cleanup: a replayed micro-batch is refused
    last_batch = DAYS * MICRO_BATCHES - 1
    line = b"2026-11-22T10:00:00,1,GET /data/m/a/1.mpg"
    replay = parse_batch([line], "movielog", [0], "replay", dt.datetime(2026, 11, 22))
    assert lake.append("bronze_events", replay.bronze, "stream:month", last_batch) is False

    # rollback: the kept models still have their batch view, the pruned ones do not
    published = [m["model_version"] for m in list_models(lake) if m["status"] == PUBLISHED]
    kept = published[-settings.lifecycle.keep_models :]
    assert all(batch_view_rows(lake, v) > 0 for v in kept)
    assert rollback_to(lake, kept[0])["rolled_back"] == kept[1:]
    assert batch_view_rows(lake, published[0]) == 0
    with pytest.raises(ValueError, match="batch view is empty or gone"):
        rollback_to(lake, published[0])

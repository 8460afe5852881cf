"""The training filter: which suspected accounts stay out, and what is recorded about it."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession

from flixlake.batch.errors import GateFailedError
from flixlake.batch.screening import (
    Exclusions,
    exclusions_df,
    load_exclusions,
    without_accounts,
)
from flixlake.config import Settings, load_settings
from flixlake.lake import runs
from flixlake.lake.store import Lake
from flixlake.lake.tables import SUSPECTED_ACCOUNTS

D = dt.date(2026, 11, 22)
NOW = dt.datetime(2026, 11, 23, 3, tzinfo=dt.UTC)


def suspects(rows: list[tuple[dt.date, int, str, bool]]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "run_date": day,
                "user_id": user,
                "kind": kind,
                "score": 0.7,
                "reason": "because",
                "features": json.dumps({}),
                "excluded": excluded,
                "first_seen": None,
                "last_seen": None,
                "detected_at": NOW,
            }
            for day, user, kind, excluded in rows
        ],
        SUSPECTED_ACCOUNTS.schema,
    )


def detected(settings: Settings, lake: Lake, passed: bool = True) -> None:
    runs.write_manifest(
        settings,
        D,
        "detect",
        {"passed": passed, "table_version": lake.version("suspected_accounts"),
         "suspected": 3, "scored_accounts": 10},
    )  # fmt: skip


def test_without_a_detect_step_nothing_is_excluded_and_that_is_recorded(
    settings: Settings, lake: Lake
) -> None:
    got = load_exclusions(lake, settings, D)
    assert got.user_ids == ()
    assert got.record() == {
        "screened": False,
        "excluded_accounts": 0,
        "by_kind": {},
        "suspected_accounts_version": None,
        "note": "detect has not run for 2026-11-22: nothing excluded",
    }


def test_suspects_of_this_and_earlier_runs_are_excluded_not_later_or_kept_ones(
    settings: Settings, lake: Lake
) -> None:
    earlier = D - dt.timedelta(days=3)
    lake.append(
        "suspected_accounts",
        suspects(
            [
                (earlier, 5, "rating_burst", True),  # caught before: stays out
                (D, 6, "request_flood", True),
                (D, 5, "profile_outlier", True),  # again: counted once, latest kind
                (D, 7, "profile_outlier", False),  # suspected but not excluded
                (D + dt.timedelta(days=1), 8, "rating_burst", True),  # a later run
            ]
        ),
    )
    detected(settings, lake)
    got = load_exclusions(lake, settings, D)
    assert got.user_ids == (5, 6)
    assert got.by_kind == {"profile_outlier": 1, "request_flood": 1}
    assert got.version == lake.version("suspected_accounts")
    assert got.record()["screened"] is True


def test_mitigation_off_excludes_nothing_but_says_why(settings: Settings, lake: Lake) -> None:
    lake.append("suspected_accounts", suspects([(D, 5, "rating_burst", True)]))
    detected(settings, lake)
    off = load_settings(
        "test",
        home=settings.home,
        overrides={"attacks": {"mitigation": {"exclude_from_training": False}}},
    )
    got = load_exclusions(lake, off, D)
    assert got.user_ids == ()
    assert "exclude_from_training is off" in got.note


def test_a_refused_detect_stops_training(settings: Settings, lake: Lake) -> None:
    lake.append("suspected_accounts", suspects([(D, 5, "rating_burst", True)]))
    detected(settings, lake, passed=False)
    with pytest.raises(GateFailedError, match="detect refused run date 2026-11-22"):
        load_exclusions(lake, settings, D)


def test_without_accounts_drops_only_their_rows(spark: SparkSession) -> None:
    ratings = spark.createDataFrame(
        [(1, 10, 5), (2, 10, 4), (2, 11, 3), (3, 12, 1), (None, 13, 2)],
        "user_id long, movie_idx int, rating int",
    )
    excluded = exclusions_df(spark, Exclusions(user_ids=(2, 9)))
    expected = spark.createDataFrame(
        [(1, 10, 5), (3, 12, 1), (None, 13, 2)], "user_id long, movie_idx int, rating int"
    )
    assert_df_equality(
        without_accounts(ratings, excluded), expected, ignore_row_order=True, ignore_nullable=True
    )

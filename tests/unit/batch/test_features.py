"""Implicit confidences, windows and samples, checked on tiny hand-made frames."""

from __future__ import annotations

import datetime as dt
from math import log

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import (
    DateType,
    FloatType,
    IntegerType,
    LongType,
    StructField,
    StructType,
    TimestampType,
)

from flixlake.batch.features import (
    TimeWindows,
    between_dates,
    deterministic_sample,
    interactions_df,
    new_liked_pairs,
    user_window_summary,
    watch_popularity,
    window_interactions,
    windowed_interactions,
    with_rating_date,
)
from flixlake.config import ConfidenceConfig, load_settings

D1, D2 = dt.date(2026, 11, 20), dt.date(2026, 11, 21)
T1 = dt.datetime(2026, 11, 20, 8, 0, tzinfo=dt.UTC)
T2 = dt.datetime(2026, 11, 21, 9, 0, tzinfo=dt.UTC)

WATCH_SCHEMA = StructType(
    [
        StructField("user_id", LongType()),
        StructField("movie_idx", IntegerType()),
        StructField("minutes_watched", IntegerType()),
        StructField("event_date", DateType()),
    ]
)
RATING_SCHEMA = StructType(
    [
        StructField("user_id", LongType()),
        StructField("movie_idx", IntegerType()),
        StructField("rating", IntegerType()),
        StructField("rated_at", TimestampType()),
    ]
)
INTERACTION_SCHEMA = StructType(
    [
        StructField("user_id", IntegerType()),
        StructField("movie_idx", IntegerType()),
        StructField("confidence", FloatType()),
    ]
)
PAIR_SCHEMA = StructType(
    [StructField("user_id", IntegerType()), StructField("movie_idx", IntegerType())]
)


def test_confidence_from_watch_time_and_ratings(spark: SparkSession) -> None:
    watches = spark.createDataFrame(
        [
            (1, 0, 30, D1),
            (1, 0, 20, D2),  # 50 minutes over two days
            (1, 1, 500, D1),  # capped at 120
            (2, 0, 10, D1),  # plus 5 stars
            (2, 2, 60, D1),  # but rated 1 star
            (None, 3, 10, D1),  # null user: dropped
        ],
        WATCH_SCHEMA,
    )
    ratings = spark.createDataFrame(
        [
            (2, 0, 5, T1),
            (2, 2, 1, T1),
            (3, 1, 4, T1),  # rated without watching
            (3, 2, 2, T1),
            (4, 0, 1, T1),
            (4, 0, 5, T2),  # a later rating of the same movie wins
        ],
        RATING_SCHEMA,
    )
    got = interactions_df(watches, ratings, ConfidenceConfig(minutes_cap=120, rating_weight=1.0))
    expected = spark.createDataFrame(
        [
            (1, 0, log(51)),
            (1, 1, log(121)),
            (2, 0, log(11) + 3),
            (2, 2, -2.0),
            (3, 1, 2.0),
            (3, 2, -1.0),
            (4, 0, 3.0),
        ],
        INTERACTION_SCHEMA,
    )
    assert_approx_df_equality(
        got.orderBy("user_id", "movie_idx"), expected, precision=1e-5, ignore_nullable=True
    )


def test_rating_weight_scales_both_directions(spark: SparkSession) -> None:
    watches = spark.createDataFrame([(1, 0, 9, D1)], WATCH_SCHEMA)
    ratings = spark.createDataFrame([(1, 0, 4, T1), (1, 1, 1, T1)], RATING_SCHEMA)
    got = interactions_df(watches, ratings, ConfidenceConfig(minutes_cap=5, rating_weight=0.5))
    expected = spark.createDataFrame([(1, 0, log(6) + 1.0), (1, 1, -1.0)], INTERACTION_SCHEMA)
    assert_approx_df_equality(
        got.orderBy("movie_idx"), expected, precision=1e-5, ignore_nullable=True
    )


def test_between_dates_is_inclusive_and_rating_dates_come_from_rated_at(
    spark: SparkSession,
) -> None:
    ratings = spark.createDataFrame([(1, 0, 4, T1), (1, 1, 4, T2)], RATING_SCHEMA)
    dated = ratings.transform(with_rating_date)
    assert [r.movie_idx for r in dated.transform(between_dates, D2, D2).collect()] == [1]
    assert dated.transform(between_dates, None, D2).count() == 2
    assert [r.movie_idx for r in dated.transform(between_dates, None, D1).collect()] == [0]


def test_windows_relative_to_the_run_date() -> None:
    settings = load_settings(
        "test",
        home="/tmp/unused",
        overrides={"batch": {"eval_days": 3, "validation_days": 2, "history_days": 30}},
    )
    windows = TimeWindows.for_run_date(dt.date(2026, 11, 22), settings.batch)
    assert windows.to_dict() == {
        "history_start": "2026-10-24",
        "validation_start": "2026-11-18",
        "validation_end": "2026-11-19",
        "test_start": "2026-11-20",
        "test_end": "2026-11-22",
        "search_train_end": "2026-11-17",
        "eval_train_end": "2026-11-19",
        "final_train_end": "2026-11-22",
    }
    assert TimeWindows.from_dict(windows.to_dict()) == windows


def _windowed(spark: SparkSession) -> DataFrame:
    watches = spark.createDataFrame(
        [
            (1, 0, 30, D1),
            (1, 0, 20, D2),
            (2, 1, 10, D2),
            (3, 0, 5, D2),
            (3, None, 5, D2),  # null movie: dropped
        ],
        WATCH_SCHEMA,
    )
    ratings = spark.createDataFrame([(1, 0, 5, T2), (2, 2, 1, T1)], RATING_SCHEMA)
    windows = {"early": (None, D1), "late": (D2, D2), "all": (None, None)}
    return windowed_interactions(watches, ratings, ConfidenceConfig(), windows)


def test_windowed_interactions_split_watches_and_ratings_by_day(spark: SparkSession) -> None:
    got = {(r.user_id, r.movie_idx): r.asDict() for r in _windowed(spark).collect()}
    assert set(got) == {(1, 0), (2, 1), (2, 2), (3, 0)}
    expected = {  # (early, late, all) confidences; None = no activity in the window
        (1, 0): (log(31), log(21) + 3, log(51) + 3),  # the 5-star rating is on D2
        (2, 1): (None, log(11), log(11)),
        (2, 2): (-2.0, None, -2.0),  # a 1-star rating without watching
        (3, 0): (None, log(6), log(6)),
    }
    for pair, (early, late, whole) in expected.items():
        row = got[pair]
        for window, value in (("early", early), ("late", late), ("all", whole)):
            if value is None:
                assert row[f"confidence_{window}"] is None, (pair, window)
            else:
                assert row[f"confidence_{window}"] == pytest.approx(value, rel=1e-6), (pair, window)
    assert [got[(1, 0)]["watched_early"], got[(2, 2)]["watched_early"]] == [True, False]
    assert [got[(2, 2)]["watched_all"], got[(3, 0)]["watched_late"]] == [False, True]


def test_window_interactions_and_new_likes(spark: SparkSession) -> None:
    pairs = _windowed(spark)
    late = window_interactions(pairs, "late").orderBy("user_id", "movie_idx")
    expected = spark.createDataFrame(
        [(1, 0, log(21) + 3), (2, 1, log(11)), (3, 0, log(6))], INTERACTION_SCHEMA
    )
    assert_approx_df_equality(late, expected, precision=1e-5, ignore_nullable=True)
    new = new_liked_pairs(pairs, "late", "early").orderBy("user_id")
    assert_df_equality(
        new, spark.createDataFrame([(2, 1), (3, 0)], PAIR_SCHEMA), ignore_nullable=True
    )


def test_user_summary_and_popularity(spark: SparkSession) -> None:
    pairs = _windowed(spark)
    summary = sorted(tuple(r) for r in user_window_summary(pairs, "late", "early").collect())
    assert summary == [(1, 1, 0), (2, 1, 1), (3, 0, 1)]  # (user, n_movies, n_relevant)
    late = sorted(tuple(r) for r in watch_popularity(pairs, "late").collect())
    assert late == [(0, 2), (1, 1)]
    assert sorted(tuple(r) for r in watch_popularity(pairs, "early").collect()) == [(0, 1)]


def test_deterministic_sample_is_stable_and_bounded(spark: SparkSession) -> None:
    users = spark.createDataFrame([(u,) for u in range(50)] + [(7,)], "user_id long")
    first = [r.user_id for r in deterministic_sample(users, 10, 42).collect()]
    again = [
        r.user_id
        for r in deterministic_sample(users.orderBy("user_id", ascending=False), 10, 42).collect()
    ]
    assert len(set(first)) == 10
    assert sorted(first) == sorted(again)
    assert sorted(first) != list(range(10))  # hash order, not the first ids
    assert deterministic_sample(users, 100, 42).count() == 50  # duplicates removed


@pytest.mark.parametrize("seed", [1, 2])
def test_sample_depends_on_the_seed(spark: SparkSession, seed: int) -> None:
    users = spark.createDataFrame([(u,) for u in range(200)], "user_id long")
    a = {r.user_id for r in deterministic_sample(users, 20, seed).collect()}
    b = {r.user_id for r in deterministic_sample(users, 20, seed + 10).collect()}
    assert a != b

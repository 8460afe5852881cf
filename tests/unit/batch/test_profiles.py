"""Profile features on tiny hand-made frames, each expected value worked out by hand."""

from __future__ import annotations

import datetime as dt

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import (
    DateType,
    IntegerType,
    LongType,
    StructField,
    StructType,
    TimestampType,
)

from flixlake.batch.profiles import (
    account_activity_df,
    burst_accounts_df,
    degree_of_similarity_df,
    rating_bursts_df,
    rating_deviation_df,
    request_peaks_df,
)

T0 = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
RATINGS = StructType(
    [
        StructField("user_id", LongType()),
        StructField("movie_idx", IntegerType()),
        StructField("rating", IntegerType()),
        StructField("rated_at", TimestampType()),
    ]
)
SESSIONS = StructType(
    [
        StructField("user_id", LongType()),
        StructField("movie_idx", IntegerType()),
        StructField("minutes_watched", IntegerType()),
        StructField("first_time", TimestampType()),
        StructField("last_time", TimestampType()),
        StructField("event_date", DateType()),
    ]
)
REQUESTS = StructType(
    [StructField("user_id", LongType()), StructField("event_time", TimestampType())]
)


def _at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def _ratings(spark: SparkSession, rows: list[tuple[int, int, int, float]]) -> DataFrame:
    return spark.createDataFrame([(u, m, r, _at(t)) for u, m, r, t in rows], RATINGS)


def test_rating_deviation_from_mean_agreement(spark: SparkSession) -> None:
    # movie 1: ratings 5, 1, 3 -> mean 3 over 3 ratings; movie 2: 4, 4 -> mean 4 over 2
    ratings = _ratings(
        spark, [(1, 1, 5, 0), (2, 1, 1, 0), (3, 1, 3, 0), (1, 2, 4, 0), (2, 2, 4, 0)]
    )
    expected = spark.createDataFrame(
        [
            # user 1: |5-3|/3 and |4-4|/2 -> rdma (2/3 + 0)/2; wdma (2/9 + 0)/2; mean dev 1
            (1, 1 / 3, 1 / 9, 1.0, 0.5),
            (2, 1 / 3, 1 / 9, 1.0, 0.5),
            (3, 0.0, 0.0, 0.0, 0.0),
        ],
        "user_id long, rdma double, wdma double, mean_deviation double, extreme_share double",
    )
    assert_approx_df_equality(
        rating_deviation_df(ratings).orderBy("user_id"), expected, 1e-9, ignore_nullable=True
    )


def test_degree_of_similarity_is_the_mean_of_the_top_k(spark: SparkSession) -> None:
    # (movie, stars): 1 {(1,5),(2,4)}  2 {(1,1),(2,4)}  3 {(1,3)}  4 {(1,5),(2,4)}  5 {(1,5)}
    ratings = _ratings(
        spark,
        [
            (1, 1, 5, 0),
            (1, 2, 4, 0),
            (2, 1, 1, 0),
            (2, 2, 4, 0),
            (3, 1, 3, 0),
            (4, 1, 5, 0),
            (4, 2, 4, 0),
            (5, 1, 5, 0),
            (6, 1, 5, 0),  # not a scored account: no pairs with it
        ],
    )
    scored = spark.createDataFrame([(u,) for u in range(1, 6)], "user_id long")
    got = degree_of_similarity_df(ratings, scored, neighbours=2, max_per_group=100, seed=1)
    # sim(1,4) = 2/sqrt(2*2) = 1, sim(1,2) = sim(2,4) = 1/2, sim(1,5) = sim(4,5) = 1/sqrt(2)
    expected = spark.createDataFrame(
        [
            (1, (1 + 2**-0.5) / 2),
            (2, (0.5 + 0.5) / 2),
            (3, 0.0),
            (4, (1 + 2**-0.5) / 2),
            (5, (2**-0.5 + 2**-0.5) / 2),
        ],
        "user_id long, degsim double",
    )
    assert_approx_df_equality(got.orderBy("user_id"), expected, 1e-9, ignore_nullable=True)


def test_similarity_pairs_keep_at_most_the_group_cap(spark: SparkSession) -> None:
    ratings = _ratings(spark, [(u, 1, 5, 0) for u in range(1, 6)])
    scored = spark.createDataFrame([(u,) for u in range(1, 6)], "user_id long")
    got = degree_of_similarity_df(ratings, scored, neighbours=4, max_per_group=3, seed=1)
    degsim = sorted(r["degsim"] for r in got.collect())
    # 3 kept raters are similar (1.0) to 2 others each: (1 + 1) / 4; the 2 left out have none
    assert degsim == [0.0, 0.0, 0.5, 0.5, 0.5]


def test_account_activity_spans_every_table(spark: SparkSession) -> None:
    sessions = spark.createDataFrame(
        [(1, 7, 30, _at(10), _at(40), T0.date()), (1, 8, 5, _at(50), _at(55), T0.date())],
        SESSIONS,
    )
    ratings = _ratings(spark, [(1, 7, 4, 41), (2, 7, 5, 5)])
    requests = spark.createDataFrame([(1, _at(0)), (3, _at(90)), (3, _at(95))], REQUESTS)
    got = account_activity_df(sessions, ratings, requests).orderBy("user_id")
    expected = spark.createDataFrame(
        [
            (1, _at(0), _at(55), 2, 35, 1, 1),
            (2, _at(5), _at(5), 0, 0, 1, 0),
            (3, _at(90), _at(95), 0, 0, 0, 2),
        ],
        "user_id long, first_seen timestamp, last_seen timestamp, n_watched long, "
        "minutes_watched long, n_ratings long, n_requests long",
    )
    assert_df_equality(got, expected, ignore_nullable=True)


@pytest.fixture
def burst_world(spark: SparkSession) -> tuple[DataFrame, DataFrame]:
    """Accounts 10-13 are new (first seen at their rating) and rate movie 7 five stars within
    40 minutes; account 1 (old) rates it 3; account 14 (new) rates it 5 three hours later;
    account 15 (new) rates movie 8 five stars alone."""
    ratings = _ratings(
        spark,
        [
            (10, 7, 5, 0),
            (11, 7, 5, 10),
            (12, 7, 5, 20),
            (13, 7, 5, 40),
            (1, 7, 3, 30),
            (14, 7, 5, 200),
            (15, 8, 5, 30),
        ],
    )
    first = {10: 0, 11: 10, 12: 20, 13: 40, 1: -60 * 24 * 30, 14: 200, 15: 30}
    activity = spark.createDataFrame(
        [(u, _at(t)) for u, t in first.items()], "user_id long, first_seen timestamp"
    )
    return ratings, activity


def test_a_rating_burst_needs_enough_new_accounts_and_share(
    spark: SparkSession, burst_world: tuple[DataFrame, DataFrame]
) -> None:
    ratings, activity = burst_world
    since = T0 - dt.timedelta(days=1)

    def bursts(min_accounts: int, min_share: float) -> list[tuple[int, int, int, int]]:
        df = rating_bursts_df(
            ratings, activity, {"1h": 3600}, 86400, min_accounts, min_share, since
        )
        return sorted(
            {(r["movie_idx"], r["rating"], r["new_accounts"], r["raters"]) for r in df.collect()}
        )

    # the 1h windows (sliding by 15 min) holding all four new raters also hold account 1
    assert (7, 5, 4, 5) in bursts(4, 0.5)
    assert bursts(5, 0.5) == []  # never five new accounts in one hour
    assert bursts(4, 0.9) == []  # four of five raters is below 90 %


def test_burst_accounts_are_the_new_raters_inside_a_burst(
    spark: SparkSession, burst_world: tuple[DataFrame, DataFrame]
) -> None:
    ratings, activity = burst_world
    since = T0 - dt.timedelta(days=1)
    bursts = rating_bursts_df(ratings, activity, {"1h": 3600}, 86400, 4, 0.5, since)
    got = burst_accounts_df(ratings, activity, bursts, 86400).orderBy("user_id").collect()
    assert [r["user_id"] for r in got] == [10, 11, 12, 13]  # not the old one, not the late one
    assert {(r["burst_movie_idx"], r["burst_rating"], r["burst_new_accounts"]) for r in got} == {
        (7, 5, 4)
    }


def test_request_peaks_count_the_busiest_hour(spark: SparkSession) -> None:
    requests = spark.createDataFrame(
        [(1, _at(m)) for m in (0, 5, 10, 20, 50)] + [(1, _at(200)), (2, _at(0))], REQUESTS
    )
    got = request_peaks_df(requests, T0 - dt.timedelta(hours=1)).orderBy("user_id")
    expected = spark.createDataFrame([(1, 5), (2, 1)], "user_id long, max_requests_per_hour long")
    assert_df_equality(got, expected, ignore_nullable=True)
    nothing_since = request_peaks_df(requests, T0 + dt.timedelta(days=1))
    assert nothing_since.count() == 0


def test_features_ignore_a_row_without_stars(spark: SparkSession) -> None:
    schema = StructType([*RATINGS.fields[:2], StructField("rating", IntegerType()), RATINGS[3]])
    ratings = spark.createDataFrame([(1, 1, 4, _at(0)), (2, 1, None, _at(0))], schema)
    got = {r["user_id"]: r for r in rating_deviation_df(ratings).collect()}
    assert got[1]["mean_deviation"] == 0.0
    assert got[2]["mean_deviation"] is None  # no usable rating: no deviation, not a zero

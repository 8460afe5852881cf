"""Fairness and exposure measures and the two requirements, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession

from flixlake.batch.fairness import (
    Exposure,
    calibration_per_user,
    catalog_exposure,
    check_model_requirement,
    check_system_requirement,
    exposure,
    genre_mix,
    gini,
    hellinger,
    kl_miscalibration,
    lists_exposure,
    movie_genre_weights,
    segment_qualities,
    short_head,
    shown_counts,
    shown_lists,
    wilson_interval,
)
from flixlake.config import ModelRequirement, SystemRequirement


# -- pure measures -------------------------------------------------------------------------------
def test_wilson_interval_matches_the_tables() -> None:
    low, high = wilson_interval(8, 10, 0.95)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    low, high = wilson_interval(0, 10, 0.95)
    assert low == pytest.approx(0.0) and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0, 0.95) == (0.0, 1.0)


def test_gini_of_hand_made_exposures() -> None:
    assert gini(np.array([1, 1, 1, 1])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 10])) == pytest.approx(0.75)  # (n - 1) / n: one gets all
    # sorted 1, 2, 3, 4: sum((2i - n - 1) x_i) / (n sum x) = (-3 - 2 + 3 + 12) / 40
    assert gini(np.array([4, 1, 3, 2])) == pytest.approx(0.25)
    assert math.isnan(gini(np.array([0, 0])))


def test_short_head_is_the_most_watched_share_of_the_catalog() -> None:
    head = short_head(np.array([5, 1, 9, 1, 0]), 0.4)  # 2 of 5 movies
    assert head.tolist() == [True, False, True, False, False]
    assert short_head(np.array([3, 3, 3, 3]), 0.5).tolist() == [True, True, False, False]


def test_exposure_of_a_hand_made_catalog() -> None:
    shown = np.array([4, 0, 2, 2])  # slots per movie: 8
    popularity = np.array([0.5, 0.25, 0.1, 0.0])  # share of users who watched it
    head = np.array([True, False, False, False])
    got = exposure(shown, popularity, head)
    assert got.slots == 8 and got.movies_shown == 3 and got.catalog_size == 4
    assert got.coverage == pytest.approx(0.75)
    assert got.long_tail_share == pytest.approx(0.5)  # 4 of 8 slots outside the head
    assert got.avg_popularity == pytest.approx((4 * 0.5 + 2 * 0.1) / 8)  # 0.275
    assert got.gini == pytest.approx(0.375)  # sorted 0, 2, 2, 4: (-2 + 2 + 12) / 32


def test_catalog_exposure_counts_unshown_movies_and_takes_popularity_from_the_history() -> None:
    shown = pa.table({"movie_id": ["a", "c"], "shown": [3, 1]})
    watchers = pa.table({"movie_id": ["a", "b"], "watchers": [4, 2]})
    got = catalog_exposure(shown, watchers, ["a", "b", "c", "d"], history_users=8, head_share=0.25)
    # head: a (4 watchers); tail: b, c, d. popularity a 0.5, c 0
    assert got.catalog_size == 4 and got.coverage == pytest.approx(0.5)
    assert got.long_tail_share == pytest.approx(0.25)
    assert got.avg_popularity == pytest.approx(3 * 0.5 / 4)


def test_steck_kl_miscalibration_and_hellinger() -> None:
    p, q = np.array([0.5, 0.5, 0.0]), np.array([1.0, 0.0, 0.0])
    # q~ = 0.99 q + 0.01 p = (0.995, 0.005, 0): 0.5 ln(0.5 / 0.995) + 0.5 ln(0.5 / 0.005)
    assert kl_miscalibration(p, q, 0.01) == pytest.approx(1.958517774, abs=1e-9)
    assert kl_miscalibration(p, p, 0.01) == pytest.approx(0.0)
    assert hellinger(p, q) == pytest.approx(math.sqrt(1 - math.sqrt(0.5)))  # 0.5411961
    assert hellinger(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)


# -- requirements --------------------------------------------------------------------------------
def _exposure(long_tail: float, slots: int = 100) -> Exposure:
    return Exposure(slots, 10, 20, 0.5, 0.4, long_tail, 0.1)


def test_system_requirement_is_a_floor_on_the_long_tail_share() -> None:
    cfg = SystemRequirement(min_long_tail_share=0.2)
    assert check_system_requirement(_exposure(0.2), cfg, "served").passed
    failed = check_system_requirement(_exposure(0.19), cfg, "served")
    assert not failed.passed and failed.observed == pytest.approx(0.19)
    assert failed.describe().startswith(
        "system requirement NOT met (served): long-tail share 0.190 < 0.2 of 100 slots"
    )
    assert not check_system_requirement(_exposure(math.nan, slots=0), cfg, "served").passed


def test_model_requirement_fails_only_a_segment_surely_below_the_ratio() -> None:
    cfg = ModelRequirement(
        attributes=("gender", "age"), min_quality_ratio=0.8, min_segment_users=30
    )
    qualities = segment_qualities(
        [
            ("all", 1000, 500),  # overall 0.5; the floor is 0.4
            ("gender=F", 400, 140),  # 0.35, upper bound 0.397 < 0.4: fails
            ("gender=M", 600, 360),
            ("age=55+", 20, 2),  # far worse but too few users to judge
            ("occupation=writer", 100, 10),  # not a judged attribute
        ],
        0.95,
    )
    check = check_model_requirement(qualities, cfg, "offline")
    assert not check.passed
    assert "below: gender=F" in check.details and "age=55+" not in check.details
    assert check.observed == pytest.approx(qualities[1].high / 0.5)
    # 150 of 400 (0.375): the upper bound 0.424 reaches the floor, so no evidence of harm
    qualities[1] = segment_qualities([("gender=F", 400, 150)], 0.95)[0]
    assert check_model_requirement(qualities, cfg, "offline").passed


def test_model_requirement_without_measurements_fails_and_says_why() -> None:
    cfg = ModelRequirement()
    check = check_model_requirement([], cfg, "offline")
    assert not check.passed and check.details == "no overall hit rate measured"
    nobody = check_model_requirement(segment_qualities([("all", 50, 20)], 0.95), cfg, "online")
    assert nobody.passed and "no segment" in nobody.details


# -- Spark transformations -----------------------------------------------------------------------
MOVIES = "movie_id string, genres array<string>"


def test_genre_weights_spread_one_over_distinct_genres(spark: SparkSession) -> None:
    movies = spark.createDataFrame(
        [("m1", ["Drama", "Comedy"]), ("m2", ["Drama", "Drama"]), ("m3", []), ("m4", None)],
        MOVIES,
    )
    expected = spark.createDataFrame(
        [("m1", "Drama", 0.5), ("m1", "Comedy", 0.5), ("m2", "Drama", 1.0)],
        "movie_id string, genre string, weight double",
    )
    assert_df_equality(
        movie_genre_weights(movies), expected, ignore_row_order=True, ignore_nullable=True
    )


def test_calibration_per_user_by_hand(spark: SparkSession) -> None:
    movies = spark.createDataFrame(
        [("m1", ["Drama", "Comedy"]), ("m2", ["Drama"]), ("m3", ["Horror"])], MOVIES
    )
    weights = movie_genre_weights(movies)
    pairs = "user_id long, movie_id string"
    history = spark.createDataFrame([(1, "m1"), (1, "m2"), (2, "m1"), (3, "m3")], pairs)
    lists = spark.createDataFrame([(1, "m2"), (1, "m3"), (3, "m3"), (4, "m1")], pairs)
    got = {
        r["user_id"]: (r["kl"], r["hellinger"])
        for r in calibration_per_user(
            genre_mix(history, weights), genre_mix(lists, weights), 0.01
        ).collect()
    }
    assert set(got) == {1, 3}  # 2 has no list, 4 no history
    # user 1: p = Drama 0.75, Comedy 0.25; q = Drama 0.5, Horror 0.5
    # q~ = Drama 0.5025, Comedy 0.0025, Horror 0.495
    # KL = 0.75 ln(0.75 / 0.5025) + 0.25 ln(0.25 / 0.0025) = 1.4516507
    # Hellinger = sqrt(1 - sqrt(0.75 x 0.5)) = 0.6226015
    assert got[1][0] == pytest.approx(1.4516507, abs=1e-6)
    assert got[1][1] == pytest.approx(0.6225974, abs=1e-6)
    assert got[3] == (pytest.approx(0.0), pytest.approx(0.0))  # shown exactly their mix


def test_shown_counts_take_the_top_results_of_each_list(spark: SparkSession) -> None:
    view = spark.createDataFrame(
        [(1, 1, "a"), (1, 2, "b"), (1, 3, "c"), (2, 1, "a"), (2, 2, "c"), (3, 1, None)],
        "user_id long, rank int, movie_id string",
    )
    got = {r["movie_id"]: r["shown"] for r in shown_counts(shown_lists(view, 2)).collect()}
    assert got == {"a": 2, "b": 1, "c": 1, None: 1}


def test_lists_exposure_counts_the_shown_part_of_each_list_against_the_head() -> None:
    from_lists = lists_exposure(
        [np.array([0, 1, 4, 3]), np.array([0, 2]), np.array([], dtype=np.int64)],
        watchers=np.array([9.0, 8.0, 1.0, 0.0, 0.0]),  # head_share 0.4 of 5 movies: 0 and 1
        history_users=10,
        head_share=0.4,
        results=3,  # movie 3, fourth in the first list, is not shown
    )
    assert from_lists.slots == 5 and from_lists.movies_shown == 4
    assert from_lists.long_tail_share == pytest.approx(2 / 5)  # movies 4 and 2
    assert from_lists.avg_popularity == pytest.approx((0.9 + 0.8 + 0.0 + 0.9 + 0.1) / 5)

"""Popularity re-ranking on hand-computed cases.

User 1's candidates: movie 10 (score 2.0, the most watched: 4 users), 11 (1.8, 1 user), 12 (0.0,
nobody). Normalised scores 1.0, 0.9, 0.0; relative popularity 1.0, 0.25, 0.0. Weight 0.5:
adjusted 0.5, 0.775, 0.0 -> 11, 10, 12. Weight 0.05: 0.95, 0.8875, 0.0 -> the model's order.
User 2 has one candidate (tied scores normalise to 1) and keeps it.
"""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import (
    FloatType,
    IntegerType,
    LongType,
    StructField,
    StructType,
)

from flixlake.batch.debias import relative_popularity, rerank_rows, with_popularity_penalty
from flixlake.config import DebiasConfig

CANDIDATES = StructType(
    [
        StructField("user_id", LongType(), False),
        StructField("rank", IntegerType(), False),
        StructField("movie_idx", IntegerType(), False),
        StructField("score", FloatType(), False),
    ]
)
SESSIONS = StructType(
    [StructField("user_id", LongType(), True), StructField("movie_idx", IntegerType(), True)]
)


def _candidates(spark: SparkSession) -> DataFrame:
    rows = [(1, 1, 10, 2.0), (1, 2, 11, 1.8), (1, 3, 12, 0.0), (2, 1, 12, 0.3)]
    return spark.createDataFrame(rows, CANDIDATES)


def _sessions(spark: SparkSession) -> DataFrame:
    # movie 10 by users 1-4 (user 1 twice: counts once), 11 by user 5, a null row
    rows = [(1, 10), (1, 10), (2, 10), (3, 10), (4, 10), (5, 11), (None, 11)]
    return spark.createDataFrame(rows, SESSIONS)


def _ranked(df: DataFrame) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for r in sorted(df.collect(), key=lambda r: (r["user_id"], r["rank"])):
        out.setdefault(r["user_id"], []).append(r["movie_idx"])
    return out


def test_relative_popularity_counts_distinct_watchers(spark: SparkSession) -> None:
    got = {
        r["movie_idx"]: r["relative_popularity"]
        for r in relative_popularity(_sessions(spark)).collect()
    }
    assert got == {10: pytest.approx(1.0), 11: pytest.approx(0.25)}


def test_a_strong_penalty_lifts_the_less_watched_candidate(spark: SparkSession) -> None:
    popularity = relative_popularity(_sessions(spark))
    reranked = with_popularity_penalty(_candidates(spark), popularity, 0.5)
    assert _ranked(reranked) == {1: [11, 10, 12], 2: [12]}
    assert reranked.columns == ["user_id", "rank", "movie_idx", "score"]
    scores = {(r["user_id"], r["movie_idx"]): r["score"] for r in reranked.collect()}
    assert scores[(1, 10)] == pytest.approx(2.0)  # the model's score is kept


def test_a_weak_penalty_or_none_keeps_the_models_order(spark: SparkSession) -> None:
    popularity = relative_popularity(_sessions(spark))
    for weight in (0.0, 0.05):
        reranked = with_popularity_penalty(_candidates(spark), popularity, weight)
        assert _ranked(reranked) == {1: [10, 11, 12], 2: [12]}


def test_a_negative_weight_is_refused(spark: SparkSession) -> None:
    with pytest.raises(ValueError, match="popularity_weight"):
        with_popularity_penalty(_candidates(spark), relative_popularity(_sessions(spark)), -1)
    with pytest.raises(ValueError, match="popularity_weight"):
        DebiasConfig(popularity_weight=-0.1)


def test_rerank_rows_matches_the_hand_computed_cases_on_the_driver() -> None:
    # the module's cases as padded rows (-1: no movie); relative popularity by movie index
    relpop = np.zeros(13)
    relpop[10], relpop[11] = 1.0, 0.25
    movies = np.array([[10, 11, 12], [11, -1, -1]])
    scores = np.array([[2.0, 1.8, 0.0], [0.7, -np.inf, -np.inf]])
    assert rerank_rows(movies, scores, relpop, 0.5).tolist() == [[11, 10, 12], [11, -1, -1]]
    assert rerank_rows(movies, scores, relpop, 0.05).tolist() == [[10, 11, 12], [11, -1, -1]]
    # a movie beyond the popularity array counts as unwatched (1 - 2 x 1 < 0 - 0); an empty row
    # stays empty
    far = np.array([[10, 40], [-1, -1]])
    assert rerank_rows(far, np.array([[1.0, 0.9], [0, 0]]), relpop, 2.0).tolist() == [
        [40, 10],
        [-1, -1],
    ]
    with pytest.raises(ValueError, match="popularity_weight"):
        rerank_rows(movies, scores, relpop, -1.0)

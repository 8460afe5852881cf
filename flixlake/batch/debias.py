"""Popularity debiasing: re-rank each user's top-N candidates against the movies' popularity.

A mitigation of the feedback loop (issue 13 item 3): a model trained on what earlier models made
users watch favours what is already popular, and the next model learns from that. Re-ranking
each user's candidates (the ``batch.top_n`` best unseen movies the model scored, of which the
service shows the first ``serving.results``) by

    adjusted = normalised score - popularity_weight x relative popularity

moves less-watched movies the model also likes up the list, while never showing a movie the
model did not put among the user's candidates. The *normalised score* is the model's score
min-max scaled within the user's own candidates (1 for the best, 0 for the last; 1 for all when
they are tied), so the weight means the same for every user whatever the scale of ALS scores;
the *relative popularity* is the share of users who watched the movie divided by the largest
share in the catalog (1 for the most-watched movie, 0 for a movie nobody watched). With weight
1, the most-watched movie trades places with a candidate whose score sits a whole candidate
range lower; 0 turns the re-ranking off. A linear penalty on the scores is the simplest
post-processing form of popularity debiasing; it needs nothing but the scores the batch view
already has and one number per movie.

The rows keep the model's ``score``; only ``rank`` changes. Configured by
``batch.debias.popularity_weight`` (``conf/base.yaml``: 0, off). The evaluate step re-ranks each
candidate's top-N the same way (:func:`rerank_rows`) before it measures NDCG and the fairness
requirements, so the gate judges the lists that would be served.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


def relative_popularity(watch_sessions_df: DataFrame) -> DataFrame:
    """``(movie_idx, relative_popularity)``: distinct watchers / the most-watched movie's."""
    watchers = (
        watch_sessions_df.where(F.col("user_id").isNotNull() & F.col("movie_idx").isNotNull())
        .groupBy("movie_idx")
        .agg(F.countDistinct("user_id").alias("watchers"))
    )
    most = watchers.agg(F.max("watchers").alias("most"))
    return watchers.crossJoin(most).select(
        "movie_idx", (F.col("watchers") / F.col("most")).alias("relative_popularity")
    )


def with_popularity_penalty(
    candidates_df: DataFrame, popularity_df: DataFrame, weight: float
) -> DataFrame:
    """Re-rank ``(user_id, rank, movie_idx, score)`` rows per user by normalised score minus
    ``weight`` x relative popularity (``popularity_df``: ``(movie_idx, relative_popularity)``;
    a movie missing there counts as 0). Ties keep the model's order."""
    if weight < 0:
        raise ValueError(f"popularity_weight must be >= 0, got {weight}")
    per_user = Window.partitionBy("user_id")
    low, high = F.min("score").over(per_user), F.max("score").over(per_user)
    normalised = F.when(high > low, (F.col("score") - low) / (high - low)).otherwise(F.lit(1.0))
    adjusted = normalised - F.lit(float(weight)) * F.coalesce(
        F.col("relative_popularity"), F.lit(0.0)
    )
    order = Window.partitionBy("user_id").orderBy(F.col("adjusted").desc(), F.col("rank").asc())
    return (
        candidates_df.join(F.broadcast(popularity_df), "movie_idx", "left")
        .withColumn("adjusted", adjusted)
        .withColumn("rank", F.row_number().over(order).cast("int"))
        .select(*candidates_df.columns)
    )


def rerank_rows(
    movies: np.ndarray, scores: np.ndarray, relative_popularity: np.ndarray, weight: float
) -> np.ndarray:
    """The driver-side twin of :func:`with_popularity_penalty` for the evaluation's lists.

    ``movies``/``scores``: one row per user, best first, absent places as movie -1 (any score);
    ``relative_popularity`` by movie index (beyond its end: 0). Returns the rows re-ordered by
    normalised score - ``weight`` x relative popularity (ties keep the model's order), -1 last.
    """
    if weight < 0:
        raise ValueError(f"popularity_weight must be >= 0, got {weight}")
    movies = np.asarray(movies)
    valid = movies >= 0
    if movies.size == 0:
        return movies.copy()
    s = np.where(valid, np.asarray(scores, np.float64), np.nan)
    any_valid = valid.any(axis=1, keepdims=True)
    low = np.nanmin(np.where(any_valid, s, 0.0), axis=1, keepdims=True)
    high = np.nanmax(np.where(any_valid, s, 0.0), axis=1, keepdims=True)
    span = high - low
    normalised = np.where(span > 0, (s - low) / np.where(span > 0, span, 1.0), 1.0)
    relpop = np.asarray(relative_popularity, np.float64)
    idx = np.where(valid, movies, 0).astype(np.int64)
    known = valid & (idx < relpop.size)
    penalty = np.zeros(movies.shape, np.float64)
    penalty[known] = relpop[idx[known]]
    adjusted = np.where(valid, normalised - float(weight) * penalty, -np.inf)
    order = np.argsort(-adjusted, axis=1, kind="stable")
    return np.take_along_axis(movies, order, axis=1)
